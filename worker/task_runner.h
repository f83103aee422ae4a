// A worker's executor: runs one task of the worker protocol on inputs
// fetched into a local safetensors file, writing each output as a file.
// The same engine calls as quantctl quantize, so a block computed here is
// bit for bit the block computed there.
#ifndef WORKER_TASK_RUNNER_H_
#define WORKER_TASK_RUNNER_H_

#include <functional>
#include <future>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "format/safetensors.h"
#include "kernels/cpu/compute_kernel.h"
#include "proto/quant/v1/worker_service.pb.h"
#include "quant/block_backend.h"

namespace quant {

struct TaskRunResult {
  // (output tensor name, file under the output directory), in the order of
  // TaskSpec.outputs.
  std::vector<std::pair<std::string, std::string>> outputs;
  double seconds = 0;
  // Of `seconds`, the time spent reading the inputs (activations, the
  // block's weights) and writing (and hashing) the outputs.
  double input_seconds = 0;
  double output_seconds = 0;
  ComputeKernel kernel;  // What computed it.
  // Raw digests of the outputs hashed as they were written (activations,
  // which a worker may commit by their digest; block results, which a
  // striped upload names up front).
  std::map<std::string, std::string> digest;
  // The activations output (an embed, forward or block task's), as the
  // F32 values written to their file: a worker may keep them in memory
  // for the next block.
  std::shared_ptr<std::vector<float>> activations;
  // Without LocalInputs::write_activations: their file is not written yet
  // (its digest is known, from `activations`), and will be this size.
  bool activations_unwritten = false;
  uint64_t activations_file_bytes = 0;
};

// `inputs_path` holds every tensor of spec.inputs under its name; outputs go
// to `output_dir` (which exists). Block and forward tasks compute on
// `backend` (null: the CPU engine); a recipe the backend does not offer
// runs on the CPU engine, and the result says which ran it. Errors are the
// task's own faults (bad input, a numerical failure; InvalidArgument names
// what is wrong) except ResourceExhausted and Unavailable: the device or
// the machine failed, not the task.
// Inputs the worker has without fetching them, read instead of those in
// `inputs_path`:
struct LocalInputs {
  // Activations this worker made and holds (SaveActivations' format).
  std::string held_activations;
  // The same activations' values, kept in memory: read there instead. A
  // block or forward task moves them out (it overwrites them); a capture
  // task reads them in place.
  std::shared_ptr<std::vector<float>> held_in_memory;
  // Valid while the file of held_in_memory is still being written from
  // them (on another thread): a task waits for it before overwriting them.
  std::shared_future<absl::Status> held_written;
  // Not an input: false leaves the activations output's file unwritten,
  // for the caller to write from TaskRunResult::activations (in the
  // background; its digest, computed from memory, is in the result).
  bool write_activations = true;
  // The model (on a shared volume), whose tensors the caller verified
  // against their recorded digest through this very mapping: the weights
  // are read there.
  std::shared_ptr<const SafetensorsCheckpoint> model;
};
absl::StatusOr<TaskRunResult> RunTask(const v1::TaskSpec& spec,
                                      const std::string& inputs_path,
                                      const std::string& output_dir,
                                      BlockBackend* backend = nullptr,
                                      const LocalInputs& local = {});

}  // namespace quant

#endif  // WORKER_TASK_RUNNER_H_
