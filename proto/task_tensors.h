// Names of the tensors a task's inputs and outputs travel under (besides
// the model's own tensors, which keep their Hugging Face names).
#ifndef PROTO_TASK_TENSORS_H_
#define PROTO_TASK_TENSORS_H_

namespace quant {

// Input of EMBED: the calibration windows, I32 [samples, seq_len].
inline constexpr char kWindowsTensor[] = "windows";
// Input of FORWARD and calibrated BLOCK, output of EMBED, FORWARD and
// sequential BLOCK: the activations at a block boundary as a safetensors
// file (quant/block_store.h's SaveActivations; U8 when uploaded, its F32
// "hidden" tensor when fetched).
inline constexpr char kActivationsTensor[] = "activations";
// Output of BLOCK: the block result file (SaveBlockResult), U8.
inline constexpr char kResultTensor[] = "result";
// Output of HEAD: a safetensors file of the encoded non-block tensors, U8.
inline constexpr char kHeadTensor[] = "head";

}  // namespace quant

#endif  // PROTO_TASK_TENSORS_H_
