// Hugging Face -> GGUF tensor plan for the Llama family (GGUF arch "llama"
// for Llama and Mistral, "qwen2" for Qwen2): GGUF names, order, which tensors
// stay F32, and the row permutation llama.cpp's rotary embedding needs.
#ifndef FORMAT_LLAMA_TENSOR_MAP_H_
#define FORMAT_LLAMA_TENSOR_MAP_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "format/model_config.h"

namespace quant {

enum class RowPermutation {
  kNone,
  kRopeQ,  // Permute rows with n_head = num_heads.
  kRopeK,  // Permute rows with n_head = num_kv_heads.
};

struct GgufTensorPlan {
  std::string hf_name;    // "model.layers.0.self_attn.q_proj.weight".
  std::string gguf_name;  // "blk.0.attn_q.weight".
  RowPermutation permutation = RowPermutation::kNone;
  bool keep_f32 = false;          // Norms and biases: never quantized.
  int layer = -1;                 // Decoder block, or -1 if not per-layer.
  std::vector<int64_t> hf_shape;  // Row-major; GGUF dims are the reverse.
};

// The GGUF tensors for `spec`, in writing order: token_embd.weight, then
// blk.0.* ... blk.{n-1}.*, then output_norm.weight and output.weight (absent
// when tie_word_embeddings). Runs ValidateTensorShapes first (NotFound for a
// missing tensor, InvalidArgument for a wrong shape). This overload cannot
// see tensors that the checkpoint has beyond the expected ones.
absl::StatusOr<std::vector<GgufTensorPlan>> PlanGgufTensors(
    const ModelSpec& spec, const TensorShapeFn& shape_of);

// As above, and also rejects (InvalidArgument, naming the tensor) any tensor
// in `checkpoint_tensors` the architecture does not use, except known
// ignorable ones: "*.rotary_emb.inv_freq" buffers and lm_head.weight when the
// embeddings are tied.
absl::StatusOr<std::vector<GgufTensorPlan>> PlanGgufTensors(
    const ModelSpec& spec, const std::vector<std::string>& checkpoint_tensors,
    const TensorShapeFn& shape_of);

// The n_head to pass to PermuteRowsForRope for `permutation` (0 for kNone).
int64_t RopePermutationHeads(const ModelSpec& spec, RowPermutation permutation);

// llama.cpp's rotary embedding pairs dimensions (2i, 2i+1) of each head
// where Hugging Face pairs (i, i + head_dim/2), so Q and K rows (and their
// biases) are reordered, as convert_hf_to_gguf.py's `permute` does: a
// [n_head * head_dim, cols] matrix viewed as [n_head, 2, head_dim/2, cols]
// has axes 1 and 2 swapped -> [n_head, head_dim/2, 2, cols]. Output row
// h*head_dim + 2*i + j is input row h*head_dim + j*head_dim/2 + i.
//
// Works on rows of any byte size (`row_bytes` = cols * element size, so it
// is independent of dtype). `in` and `out` must not overlap. InvalidArgument
// unless n_head > 0, rows > 0 and rows is a multiple of 2 * n_head.
absl::Status PermuteRowsForRope(const void* in, void* out, int64_t rows,
                                int64_t row_bytes, int64_t n_head);

// Float convenience form: a row-major [rows, cols] float matrix.
absl::Status PermuteRowsForRope(const float* in, float* out, int64_t rows,
                                int64_t cols, int64_t n_head);

}  // namespace quant

#endif  // FORMAT_LLAMA_TENSOR_MAP_H_
