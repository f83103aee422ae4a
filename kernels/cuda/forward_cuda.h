// The Llama-family decoder block forward on the GPU, for calibration: the
// computation of model/llama_forward.h (RMSNorm, rotary embeddings with the
// same tables, grouped-query causal attention, SwiGLU, biases) with the
// matrix products on tensor cores: BF16 weights and BF16 inputs, FP32
// accumulation, FP32 outputs; the residual stream, norms, softmax and
// rotations in FP32. The inputs of the linears are handed to an observer as
// the BF16 matrices the products read, where the Hessian accumulation
// (hessian_cuda.h) takes them without leaving the device.
#ifndef KERNELS_CUDA_FORWARD_CUDA_H_
#define KERNELS_CUDA_FORWARD_CUDA_H_

#include <cstdint>
#include <functional>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cuda/cuda_context.h"
#include "model/llama_forward.h"

namespace quant::cuda {

struct DeviceLinear {
  int64_t rows = 0, cols = 0;
  DeviceBuffer weight;  // bfloat16 [rows, cols].
  DeviceBuffer bias;    // float [rows], or empty.
};

struct DeviceBlockWeights {
  DeviceBuffer attn_norm, ffn_norm;  // float [hidden].
  DeviceLinear q, k, v, o, gate, up, down;
};

// The block's weights on the device; the matrices rounded to BF16 (exact for
// a BF16 checkpoint).
absl::StatusOr<DeviceBlockWeights> UploadBlock(
    const CudaContext& context, const DecoderBlockWeights& block);

// Replaces a linear's weight with device float [rows, cols] values (a
// quantized solution's dequantized weights), rounded to BF16.
absl::Status SetLinearWeight(const CudaContext& context, const float* weight,
                             DeviceLinear& linear);

// y (device float [n, rows]) = x (device bfloat16 [n, cols]) W^T, without
// the bias, on tensor cores with FP32 accumulation.
absl::Status ApplyLinearOnDevice(const CudaContext& context,
                                 const DeviceLinear& linear, const uint16_t* x,
                                 int64_t n, float* y);

// Sees each linear input x (device bfloat16 [tokens, width]) during a pass;
// returning false ends the pass there.
using DeviceInputObserver = std::function<absl::StatusOr<bool>(
    BlockInput input, const uint16_t* x, int64_t tokens, int64_t width)>;

class CudaForward {
 public:
  // `forward` supplies the spec and the rotary tables.
  static absl::StatusOr<std::unique_ptr<CudaForward>> Create(
      const CudaContext& context, const LlamaForward& forward);

  // Runs the block in place on `hidden` (device float [sequences * seq_len,
  // hidden_size]), each sequence starting at position 0. Scratch memory
  // grows to what `sequences` sequences need; a caller bounds it by passing
  // fewer sequences per call. InvalidArgument when seq_len exceeds the
  // rotary tables or the weights do not fit the spec.
  absl::Status ForwardBlock(const DeviceBlockWeights& block, int64_t sequences,
                            int64_t seq_len, float* hidden,
                            const DeviceInputObserver& observer = {});

  // The sublayers without their residual connections or output biases, as
  // LlamaForward's: out (device float [sequences * seq_len, hidden]) =
  // o(attention(q, k, v)) of the normalized input `normed` (device bfloat16
  // [sequences * seq_len, hidden]), and down(silu(gate) * up). False when
  // `observer` ended the pass (before o or down ran).
  absl::StatusOr<bool> Attention(const DeviceBlockWeights& block,
                                 int64_t sequences, int64_t seq_len,
                                 const uint16_t* normed, float* out,
                                 const DeviceInputObserver& observer = {});
  absl::StatusOr<bool> Mlp(const DeviceBlockWeights& block, int64_t sequences,
                           int64_t seq_len, const uint16_t* normed, float* out,
                           const DeviceInputObserver& observer = {});

  // Device bytes of scratch a pass of `sequences` x `seq_len` tokens needs.
  int64_t ScratchBytes(int64_t sequences, int64_t seq_len) const;

 private:
  CudaForward(const CudaContext& context, const ModelSpec& spec,
              int64_t max_positions)
      : context_(&context), spec_(spec), max_positions_(max_positions) {}
  // Checks the shapes, activates the device, grows the scratch.
  absl::Status CheckBlock(const DeviceBlockWeights& block, int64_t sequences,
                          int64_t seq_len);
  absl::Status Reserve(int64_t sequences, int64_t seq_len);

  const CudaContext* context_;
  ModelSpec spec_;
  int64_t max_positions_;
  DeviceBuffer cos_, sin_;  // float [max_positions, head_dim / 2].
  int64_t reserved_tokens_ = 0, reserved_seq_len_ = 0;
  // Scratch: normed input (bf16), q / k / v (float, then bf16 rotated),
  // attention scores and probabilities of one sequence, the attended heads
  // (bf16), a sublayer's output (float), gate / up (float), the MLP's
  // product (bf16).
  DeviceBuffer normed_, q_, k_, v_, q16_, k16_, v16_, scores_, probs_,
      attended_, sublayer_, gate_, up_, act_;
};

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_FORWARD_CUDA_H_
