// The Llama-family decoder forward pass on the CPU (Llama 2/3/3.1, Mistral,
// Qwen2), one decoder block at a time, as Hugging Face transformers computes
// it: RMSNorm, rotary embeddings in the HF convention (the two halves of
// each head rotated together; Llama 3.1's "llama3" scaling), grouped-query
// causal attention, SwiGLU MLP, optional q/k/v biases, final norm and
// lm_head (or the tied embeddings). Float32 math with float64 reductions;
// matrix products through BLAS (OpenBLAS).
//
// Memory is one block's weights plus the activations: a caller loads a
// block, runs it over every sequence, drops it and loads the next.
#ifndef MODEL_LLAMA_FORWARD_H_
#define MODEL_LLAMA_FORWARD_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "format/model_config.h"
#include "format/safetensors.h"

namespace quant {

// y = x W^T + b for row-major W [rows = outputs, cols = inputs].
struct LinearWeights {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> weight;  // rows * cols.
  std::vector<float> bias;    // rows, or empty.
};

struct DecoderBlockWeights {
  std::vector<float> attn_norm;  // input_layernorm, hidden_size.
  std::vector<float> ffn_norm;   // post_attention_layernorm, hidden_size.
  LinearWeights q, k, v, o, gate, up, down;
};

struct OutputHeadWeights {
  std::vector<float> norm;  // model.norm, hidden_size.
  LinearWeights lm_head;    // [vocab, hidden] (the embeddings when tied).
};

// Reads the weights of decoder block `layer` (HF tensor names) as float32.
// Errors: NotFound for a missing tensor, InvalidArgument for a wrong shape.
absl::StatusOr<DecoderBlockWeights> LoadDecoderBlock(
    const SafetensorsCheckpoint& checkpoint, const ModelSpec& spec, int layer);
absl::StatusOr<OutputHeadWeights> LoadOutputHead(
    const SafetensorsCheckpoint& checkpoint, const ModelSpec& spec);

// The inputs of a block's linears, in the order the forward pass reaches
// them.
enum class BlockInput {
  kAttention,        // input_layernorm output: q, k, v.
  kAttentionOutput,  // attention heads, concatenated: o.
  kMlp,              // post_attention_layernorm output: gate, up.
  kMlpOutput,        // silu(gate) * up: down.
};

// Sees each linear input x [tokens, width] during a forward pass (to
// accumulate calibration statistics); returning false ends the pass there.
using BlockInputObserver = std::function<bool(BlockInput input, const float* x,
                                              int64_t tokens, int64_t width)>;

// What the matrix products read. kFloat32: FP32 values, as transformers'
// FP32 forward. kBfloat16: the GPU backend's numerics (kernels/cuda/
// forward_cuda.h), for the CPU to be its oracle: the linears' weights and
// inputs (the normed hidden states, the attended heads, the SwiGLU product),
// the rotated queries and keys, the values and the attention probabilities
// rounded to BF16 before the products, which still sum in FP32; observers see
// the rounded inputs. The GPU's results are chaotic functions of these
// roundings (GPTQ feeds each column's error forward), so only a CPU that
// rounds where the GPU does can agree with it level for level.
enum class ProductPrecision { kFloat32, kBfloat16 };

class LlamaForward {
 public:
  // Precomputes the rotary tables for positions below `max_positions`.
  LlamaForward(const ModelSpec& spec, int64_t max_positions,
               ProductPrecision precision = ProductPrecision::kFloat32);

  const ModelSpec& spec() const { return spec_; }
  ProductPrecision precision() const { return precision_; }
  // The rotary tables, [max_positions, head_dim / 2] (the GPU forward
  // uploads these, so that both backends rotate by the same angles).
  int64_t max_positions() const { return max_positions_; }
  const std::vector<float>& rotary_cos() const { return cos_; }
  const std::vector<float>& rotary_sin() const { return sin_; }

  // hidden [tokens.size(), hidden_size] = the embeddings of `tokens`.
  // InvalidArgument for a token outside the vocabulary.
  absl::Status Embed(const SafetensorsCheckpoint& checkpoint,
                     absl::Span<const int32_t> tokens, float* hidden) const;

  // Runs one decoder block in place on `hidden`: `sequences` sequences of
  // `seq_len` tokens, back to back ([sequences * seq_len, hidden_size]),
  // each starting at position 0. InvalidArgument when seq_len exceeds the
  // rotary tables or the weights do not fit the spec. When `observer` ends
  // the pass early, `hidden` holds a partial result.
  absl::Status ForwardBlock(const DecoderBlockWeights& block, int64_t sequences,
                            int64_t seq_len, float* hidden,
                            const BlockInputObserver& observer = {}) const;

  // The sublayers without their residual connections: out [tokens, dim] =
  // o(attention(q, k, v)) of the normalized input `normed`, and
  // down(silu(gate) * up). False when `observer` ended the pass (before o or
  // down ran).
  absl::StatusOr<bool> Attention(const DecoderBlockWeights& block,
                                 int64_t sequences, int64_t seq_len,
                                 const float* normed, float* out,
                                 const BlockInputObserver& observer = {}) const;
  bool Mlp(const DecoderBlockWeights& block, int64_t tokens,
           const float* normed, float* out,
           const BlockInputObserver& observer = {}) const;

  // y[n, rows] = x[n, cols] W^T + b in this forward's precision (x is
  // taken as given: in kBfloat16 the callers' inputs are already rounded).
  void Linear(const LinearWeights& linear, const float* x, int64_t n,
              float* y) const;

  // logits [tokens, vocab] from the final hidden states [tokens, hidden].
  absl::Status Logits(const OutputHeadWeights& head, const float* hidden,
                      int64_t tokens, float* logits) const;

 private:
  absl::Status CheckBlock(const DecoderBlockWeights& block,
                          int64_t seq_len) const;
  // Rounds x [n] to BF16 in place in kBfloat16; nothing in kFloat32.
  void RoundForProducts(float* x, int64_t n) const;

  ModelSpec spec_;
  int64_t max_positions_;
  ProductPrecision precision_;
  std::vector<float> cos_, sin_;  // [max_positions, head_dim / 2].
};

// y[n, rows] = x[n, cols] W^T + b, through BLAS.
void ApplyLinear(const LinearWeights& linear, const float* x, int64_t n,
                 float* y);

// y = x / sqrt(mean(x^2) + eps) * weight, row by row ([n, dim]); in place
// allowed.
void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim,
             double eps, float* y);

}  // namespace quant

#endif  // MODEL_LLAMA_FORWARD_H_
