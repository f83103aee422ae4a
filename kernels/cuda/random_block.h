// Random decoder blocks for the GPU tests: BF16-valued weights (so that the
// GPU's BF16 copies are exact and backends differ only in arithmetic),
// unit-ish norms, optional q/k/v/o biases.
#ifndef KERNELS_CUDA_RANDOM_BLOCK_H_
#define KERNELS_CUDA_RANDOM_BLOCK_H_

#include <cstdint>
#include <random>
#include <vector>

#include "model/llama_forward.h"

namespace quant::cuda {

// n values offset + scale * N(0, 1), rounded to BF16.
std::vector<float> RandomBf16Values(std::mt19937& rng, int64_t n, float scale,
                                    float offset = 0);

// A block of `spec`'s shapes; linears scaled by 1 / sqrt(in_features).
DecoderBlockWeights RandomBf16Block(const ModelSpec& spec, uint32_t seed,
                                    bool attention_biases);

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_RANDOM_BLOCK_H_
