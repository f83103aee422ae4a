#include "kernels/cuda/random_block.h"

#include <cmath>

#include "format/half.h"

namespace quant::cuda {
namespace {

LinearWeights RandomLinear(std::mt19937& rng, int64_t rows, int64_t cols,
                           bool bias) {
  LinearWeights l;
  l.rows = rows, l.cols = cols;
  l.weight = RandomBf16Values(rng, rows * cols,
                              1.0f / std::sqrt(static_cast<float>(cols)));
  if (bias) l.bias = RandomBf16Values(rng, rows, 0.1f);
  return l;
}

}  // namespace

std::vector<float> RandomBf16Values(std::mt19937& rng, int64_t n, float scale,
                                    float offset) {
  std::normal_distribution<float> normal;
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = Bf16ToFloat(FloatToBf16(offset + scale * normal(rng)));
  return v;
}

DecoderBlockWeights RandomBf16Block(const ModelSpec& s, uint32_t seed,
                                    bool attention_biases) {
  std::mt19937 rng(seed);
  const int64_t q = s.num_heads * s.head_dim, kv = s.num_kv_heads * s.head_dim;
  const bool bias = attention_biases;
  DecoderBlockWeights b;
  b.attn_norm = RandomBf16Values(rng, s.hidden_size, 0.1f, 1.0f);
  b.ffn_norm = RandomBf16Values(rng, s.hidden_size, 0.1f, 1.0f);
  b.q = RandomLinear(rng, q, s.hidden_size, bias);
  b.k = RandomLinear(rng, kv, s.hidden_size, bias);
  b.v = RandomLinear(rng, kv, s.hidden_size, bias);
  b.o = RandomLinear(rng, s.hidden_size, q, bias);
  b.gate = RandomLinear(rng, s.intermediate_size, s.hidden_size, false);
  b.up = RandomLinear(rng, s.intermediate_size, s.hidden_size, false);
  b.down = RandomLinear(rng, s.hidden_size, s.intermediate_size, false);
  return b;
}

}  // namespace quant::cuda
