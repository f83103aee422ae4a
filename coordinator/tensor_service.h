// The tensor service: a task's inputs as views into mapped files (the
// model's safetensors, the job's calibration windows and the activations
// entering the block), streamed to the worker in checksummed chunks; and
// the receiving end of a worker's results, written to temporary files in
// the job directory and checked chunk by chunk and tensor by tensor.
//
// Nothing is read into memory: a stream walks the mappings and hands each
// sent range's pages back to the kernel, so the coordinator's memory does
// not grow with the model.
#ifndef COORDINATOR_TENSOR_SERVICE_H_
#define COORDINATOR_TENSOR_SERVICE_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/chunk_stream.h"
#include "common/file.h"
#include "coordinator/job_store.h"
#include "coordinator/planner.h"
#include "format/safetensors.h"
#include "proto/quant/v1/common.pb.h"

namespace quant {

// The calibration windows of a job, I32 [samples, seq_len].
std::string WindowsPath(const std::string& job_dir);

class TaskInputs {
 public:
  // Maps what `task` reads: from `model_dir` the embedding (embed), the
  // block's tensors (forward, block, capture, solve) or the tensors outside
  // the blocks (head), from `job_dir` the windows (the task's shard of
  // them), the activations entering the block, and a data-parallel task's
  // block result and shards' statistics (whole files, as U8).
  // `held_hidden_size` > 0: the activations are held by the worker that
  // made them (a deferred commit), not here: described as F32 [sequences,
  // seq_len, held_hidden_size] and never sent.
  static absl::StatusOr<std::unique_ptr<TaskInputs>> Open(
      const std::string& model_dir, const std::string& job_dir,
      const JobPlan& plan, const TaskRow& task, int64_t held_hidden_size = 0);

  // In stream order.
  const std::vector<v1::TensorInfo>& infos() const { return infos_; }
  uint64_t total_bytes() const;

  // Streams every input from `tensor` at byte `offset` (empty: from the
  // start) but those in `skip` (held by the worker). NotFound for an
  // unknown tensor, InvalidArgument for an unknown name in `skip`,
  // Unavailable for activations that only their maker holds.
  absl::Status Stream(const std::string& tensor, uint64_t offset,
                      const std::set<std::string>& skip, size_t chunk_bytes,
                      const std::function<bool(const v1::Chunk&)>& emit,
                      const std::function<void(size_t)>& sent = {}) const;

 private:
  TaskInputs() = default;

  std::unique_ptr<SafetensorsCheckpoint> model_;
  // Windows or activations; whole files sent as bytes.
  std::vector<std::unique_ptr<SafetensorsFile>> job_files_;
  std::vector<std::unique_ptr<MappedFile>> raw_files_;
  std::vector<v1::TensorInfo> infos_;
  std::vector<TensorView> views_;  // Parallel to infos_.
};

// The checks of an output an upload declares (InvalidArgument): one the
// task outputs (`expected`), not declared before in the upload, of at most
// `max_output_bytes` (what the task could need at all).
absl::Status CheckDeclaredOutput(const std::string& name, uint64_t size,
                                 bool declared_before,
                                 const std::vector<std::string>& expected,
                                 uint64_t max_output_bytes);
// FailedPrecondition naming an output of `expected`, not in `optional`,
// that the upload lacks (`has` false).
absl::Status CheckNoOutputMissing(
    const std::vector<std::string>& expected,
    const std::set<std::string>& optional,
    const std::function<bool(const std::string&)>& has);

// One upload: the outputs a task must produce, each written to
// <dir>/<name> as its chunks arrive.
class UploadReceiver {
 public:
  // Each output declares its size in its first chunk: at most
  // `max_output_bytes` (what the task could need at all), so that a worker
  // cannot make the coordinator write without end. Outputs in `optional`
  // may be missing (activations the worker commits deferred).
  UploadReceiver(std::string dir, std::vector<std::string> expected,
                 uint64_t max_output_bytes,
                 std::set<std::string> optional = {});
  ~UploadReceiver();

  // DataLoss for a damaged or out-of-order stream; InvalidArgument for a
  // tensor that was not asked for or one larger than max_output_bytes.
  absl::Status Accept(const v1::Chunk& chunk);
  // Commits (fsyncs) every file; FailedPrecondition naming an output that
  // never arrived whole.
  absl::Status Finish();

  struct Received {
    std::string path;
    uint64_t bytes = 0;
    std::string digest;  // Raw.
  };
  // After Finish: by output name.
  const std::map<std::string, Received>& received() const { return received_; }
  uint64_t bytes() const { return bytes_; }

 private:
  const std::string dir_;
  const std::vector<std::string> expected_;
  const std::set<std::string> optional_;
  const uint64_t max_output_bytes_;
  std::unique_ptr<ChunkVerifier> verifier_;
  std::unique_ptr<AtomicFileWriter> writer_;
  std::map<std::string, Received> received_;
  uint64_t bytes_ = 0;
};

}  // namespace quant

#endif  // COORDINATOR_TENSOR_SERVICE_H_
