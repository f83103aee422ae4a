// The assembler: a completed task's uploaded, verified files become the
// job's durable per-task files (renamed into the job directory, fsynced,
// committed in the store by the scheduler); once every task is done, the
// final GGUF file or safetensors directory is written from them, with the
// quality report beside it (staged in a hidden directory beside the
// output, fsynced, renamed into place).
#ifndef COORDINATOR_ASSEMBLER_H_
#define COORDINATOR_ASSEMBLER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coordinator/job_store.h"
#include "coordinator/planner.h"
#include "coordinator/tensor_service.h"
#include "proto/quant/v1/quantization_service.pb.h"

namespace quant {

// Checks each uploaded output (a readable safetensors file; a block result
// the assembly can read; activations of the planned shape; a GGUF head of
// the planned tensors and types, sized as `model_dir`'s) and renames it
// to its place in `job_dir`. Returns the outputs as JSON for the store
// ({"name": {"path", "bytes", "digest"}}). Again after the store could not
// record a commit (a full disk): an output already in its place with the
// upload's size and digest stays there.
//
// `deferred` outputs (activations only) are committed by their digest and
// size alone, recorded as held by worker `holder` (their "held_by"), and
// uploaded later (CommitDeferredOutput).
struct DeferredOutput {
  std::string digest;  // Hex.
  uint64_t bytes = 0;
};
absl::StatusOr<std::string> CommitTaskOutputs(
    const std::string& job_dir, const JobPlan& plan, const TaskRow& task,
    int64_t hidden_size, const std::string& model_dir,
    const std::map<std::string, UploadReceiver::Received>& received,
    const std::map<std::string, DeferredOutput>& deferred = {},
    const std::string& holder = "");

// The upload of a deferred output of done task `task` (as committed),
// checked as CommitTaskOutputs checks it and against the committed digest,
// moved to its place. The caller then records it there
// (Scheduler::MarkDurable).
absl::Status CommitDeferredOutput(const std::string& job_dir,
                                  const JobPlan& plan, const TaskRow& task,
                                  int64_t hidden_size,
                                  const std::string& model_dir,
                                  const std::string& name,
                                  const UploadReceiver::Received& received);

// Removes the intermediate files (activations at block boundaries, a
// data-parallel job's statistics and partial results) that no unfinished
// task reads any more (`tasks` as committed).
void DropConsumedInputs(const std::string& job_dir, const JobPlan& plan,
                        const std::vector<TaskRow>& tasks);

// Where the upload of a task's outputs under lease `epoch` is written.
std::string UploadDir(const std::string& job_dir, int32_t task_index,
                      int64_t epoch);
// The complete outputs found in an upload directory (a coordinator that
// restarted between a worker's upload and its CompleteTask finds them
// there; each file was committed whole after its digest was checked, and
// the digest is computed again here). FailedPrecondition naming an output
// that is not there.
absl::StatusOr<std::map<std::string, UploadReceiver::Received>> ReadUploads(
    const std::string& dir, const std::vector<std::string>& expected);
// Removes the upload directories of every lease of a task.
void DropUploads(const std::string& job_dir, int32_t task_index);

// Removes what an interrupted coordinator left in `job_dir`: temporary
// files of writes that never finished. (Uploads complete on disk stay, for
// ReadUploads.)
void CleanJobDir(const std::string& job_dir);

// Done tasks to compute again before the job can be assembled: those whose
// committed files the assembly reads (block results, the GGUF head) are
// gone or differ from the size and digest recorded at their commit, and,
// transitively, the done tasks that made activations such a task reads
// once those are gone too (dropped after use, or damaged). Each comes with
// the reason. Empty when every file is as committed.
struct TaskToRedo {
  int32_t index = 0;
  std::string reason;
};
std::vector<TaskToRedo> TasksToRedo(const JobPlan& plan,
                                    const std::vector<TaskRow>& tasks);

// True once the job's output was moved into place (an assembly that a
// restart interrupted after that point is not done again).
bool Assembled(const v1::JobSpec& spec, const std::string& job_dir);

// Writes the job's output from the block results in `job_dir` and returns
// the path of its quality report (JSON). `submitted_ms` (Unix time) starts
// the report's clock.
// `cancelled` is asked before each block: when it says yes, the assembly
// stops with Cancelled and leaves nothing at the output's name (a
// coordinator shutting down; the next one assembles again).
absl::StatusOr<std::string> AssembleJob(
    const v1::JobSpec& spec, const std::string& job_dir, int64_t submitted_ms,
    const std::function<void(const std::string&)>& log,
    const std::function<bool()>& cancelled = nullptr);

// Where the report of `spec`'s output is written.
std::string ReportPath(const v1::JobSpec& spec);

}  // namespace quant

#endif  // COORDINATOR_ASSEMBLER_H_
