// Names of the tensors a task's inputs and outputs travel under (besides
// the model's own tensors, which keep their Hugging Face names).
#ifndef PROTO_TASK_TENSORS_H_
#define PROTO_TASK_TENSORS_H_

#include <string>

namespace quant {

// Input of EMBED: the calibration windows, I32 [samples, seq_len].
inline constexpr char kWindowsTensor[] = "windows";
// Input of FORWARD and calibrated BLOCK, output of EMBED, FORWARD and
// sequential BLOCK: the activations at a block boundary as a safetensors
// file (quant/block_store.h's SaveActivations; U8 when uploaded, its F32
// "hidden" tensor when fetched).
inline constexpr char kActivationsTensor[] = "activations";
// Output of BLOCK and SOLVE: the block result file (SaveBlockResult), U8;
// input of a data-parallel job's CAPTURE, SOLVE and FORWARD.
inline constexpr char kResultTensor[] = "result";
// Output of CAPTURE, a shard's calibration statistics (SaveBlockStatistics),
// U8; input k of SOLVE is kStatisticsTensor + "." + k.
inline constexpr char kStatisticsTensor[] = "statistics";
// Output of HEAD: a safetensors file of the encoded non-block tensors, U8.
inline constexpr char kHeadTensor[] = "head";

// Whether an input comes from the job (windows, activations, a block
// result, statistics) rather than from the model's tensors.
inline bool IsJobTensor(const std::string& name) {
  return name == kWindowsTensor || name == kActivationsTensor ||
         name == kResultTensor || name.rfind(kStatisticsTensor, 0) == 0;
}

}  // namespace quant

#endif  // PROTO_TASK_TENSORS_H_
