// The planner: a model and a recipe -> the job's tasks and their
// dependencies (the task graph of DESIGN.md).
//
// - sequential, calibrated: embed -> block 0 -> block 1 -> ...; each block
//   is calibrated on what the quantized block before it output.
// - parallel, calibrated: embed -> forward 0 -> forward 1 -> ... (the FP
//   model's activations at every block boundary), and block b needs only
//   the activations entering it (embed for b = 0, else forward b-1): the
//   block solves are independent of each other.
// - data-free (RTN without calibration): one task per block, no
//   dependencies.
// - sequential, calibrated, with recipe calibration_shards S > 1 (GPTQ,
//   RTN): data-parallel calibration. S embed tasks, one per shard of the
//   calibration windows; per block, per calibration stage (GPTQ
//   true-sequential: 4, else 1), S capture tasks (a shard's statistics of
//   what the stage reads, on the block with the stages before solved) and a
//   solve task (the stage solved on every shard's statistics merged in
//   shard order); then, before the last block, S forward tasks run the
//   quantized block over their shards. The block's result equals the block
//   task's with the same recipe, bit for bit. With the recipe's
//   shards_in_task the plan is the sequential one instead: each block task
//   computes its shards itself (across the GPUs of its worker's slot).
// GGUF output adds a head task (no dependencies, leased after the others
// that are ready): the embeddings, final norm and output head encoded in
// their GGUF types. GPTQ and AWQ directories keep those tensors as the
// checkpoint has them; the assembler copies them.
//
// Where each task's inputs come from and its outputs go is a function of
// the plan and the task alone, so a restarted coordinator recomputes it.
#ifndef COORDINATOR_PLANNER_H_
#define COORDINATOR_PLANNER_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coordinator/job_store.h"
#include "proto/quant/v1/recipe.pb.h"
#include "quant/quantize_model.h"

namespace quant {

inline constexpr char kEmbedTask[] = "embed";
inline constexpr char kForwardTask[] = "forward";
inline constexpr char kBlockTask[] = "block";
inline constexpr char kHeadTask[] = "head";
inline constexpr char kCaptureTask[] = "capture";
inline constexpr char kSolveTask[] = "solve";

// What the coordinator keeps of a plan (as JSON in the job store).
struct JobPlan {
  v1::Mode mode = v1::MODE_SEQUENTIAL;
  // The job's directory (its durable per-task files), set by the
  // coordinator before the job is committed.
  std::string job_dir;
  int num_layers = 0;
  int64_t sequences = 0;  // Calibration windows; 0: data-free.
  int64_t seq_len = 0;
  // Data-parallel calibration: shards (1: none), the sequences of a pass
  // (the shards are whole passes) and the calibration stages of a block.
  int64_t calibration_shards = 1;
  // The shards stay inside each block task (Recipe.shards_in_task).
  bool shards_in_task = false;
  int64_t sequences_per_pass = 1;
  int calibration_stages = 0;
  std::string norm_dtype;  // Of the checkpoint's norms.
  // Per block, the GGUF type names of its linears (empty lists unless GGUF).
  std::vector<std::vector<std::string>> linear_types;
  // GGUF: the type names of the tensors outside the blocks, by HF name.
  std::map<std::string, std::string> head_types;
  // Estimated peak memory of a task of each kind on a worker, bytes.
  int64_t embed_bytes = 0;
  int64_t forward_bytes = 0;
  int64_t block_bytes = 0;
  // Of each: the calibration activations in and out (all sequences).
  int64_t activation_bytes = 0;

  std::string ToJson() const;
  static absl::StatusOr<JobPlan> FromJson(const std::string& json);
};

struct PlannedJob {
  JobPlan plan;
  std::vector<TaskRow> tasks;  // job_id left 0.
};

// `options` and `engine_plan` come from the recipe (OptionsFromRecipe,
// PlanQuantization), as do `mode` and `shards_in_task`.
absl::StatusOr<PlannedJob> PlanJob(v1::Mode mode,
                                   const QuantizeModelOptions& options,
                                   const QuantizationPlan& engine_plan,
                                   bool shards_in_task = false);

// Whether the plan calibrates each block data-parallel over workers
// (capture, solve and forward tasks per shard; not when the shards stay in
// the block task).
bool DataParallel(const JobPlan& plan);
// The calibration shard a task computes (embed, capture and forward tasks
// of a data-parallel plan), else -1; the calibration stage of a capture or
// solve task, else -1.
int TaskShard(const JobPlan& plan, const TaskRow& task);
int TaskStage(const JobPlan& plan, const TaskRow& task);
// The sequences a task computes: its shard's, or the whole set's.
SequenceRange TaskSequences(const JobPlan& plan, const TaskRow& task);

// The output tensors the task's worker uploads (proto/task_tensors.h).
std::vector<std::string> TaskOutputs(const JobPlan& plan, const TaskRow& task);
// Where a committed output lives in the job directory.
std::string OutputPath(const JobPlan& plan, const std::string& job_dir,
                       const TaskRow& task, const std::string& output);
// Whether output `name` of `task` is read by the assembly (a block's
// result, the GGUF head) rather than by other tasks only.
bool AssembledOutput(const JobPlan& plan, const TaskRow& task,
                     const std::string& name);
// True when the task reads the activations entering block task.layer
// (ActivationsInputPath).
bool ReadsActivations(const JobPlan& plan, const TaskRow& task);
std::string ActivationsInputPath(const JobPlan& plan,
                                 const std::string& job_dir,
                                 const TaskRow& task);
// The block result a data-parallel task reads (the stages solved before a
// capture's or solve's, the quantized block a forward task runs), "" when
// it reads none; and a solve task's shards' statistics, in shard order.
std::string ResultInputPath(const JobPlan& plan, const std::string& job_dir,
                            const TaskRow& task);
std::vector<std::string> StatisticsInputPaths(const JobPlan& plan,
                                              const std::string& job_dir,
                                              const TaskRow& task);
// The job-directory files a task reads that nothing needs once their
// readers are done (activations, statistics, partial results).
std::vector<std::string> IntermediateInputs(const JobPlan& plan,
                                            const std::string& job_dir,
                                            const TaskRow& task);
// The index of the task that writes the activations `task` reads (one of
// its dependencies), or -1 when it reads none.
int32_t ActivationsMaker(const JobPlan& plan, const std::vector<TaskRow>& tasks,
                         const TaskRow& task);
// The digest (hex) recorded at the commit of `task`'s output `name`; ""
// when the task is not done or its record lacks one.
std::string CommittedDigest(const TaskRow& task, const std::string& name);
// The worker that holds `task`'s output `name`, committed by its digest
// and not uploaded yet (a deferred commit); "" once it is on the
// coordinator's disk, or for any other record.
std::string DeferredHolder(const TaskRow& task, const std::string& name);
// True when some output of `task` is committed but held by its worker.
bool HoldsDeferredOutputs(const JobPlan& plan, const TaskRow& task);
// Bytes a task of this kind needs on a worker.
int64_t TaskMemoryBytes(const JobPlan& plan, const TaskRow& task);

}  // namespace quant

#endif  // COORDINATOR_PLANNER_H_
