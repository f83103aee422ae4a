// Writes a small random-weight Llama (or Qwen2) checkpoint in the Hugging Face
// layout (config.json, sharded bf16 safetensors with an index, a byte-level BPE
// tokenizer.json, tokenizer_config.json), so the quick start and the tests
// run end to end without downloading a model.
#ifndef CONVERT_TINY_LLAMA_H_
#define CONVERT_TINY_LLAMA_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace quant {

struct TinyLlamaOptions {
  // Multiples of 256 so that every GGUF block type (k-quants included)
  // applies to every matrix.
  int64_t hidden_size = 256;
  int64_t intermediate_size = 768;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;  // Grouped-query attention, as in Llama 3.
  int64_t max_position_embeddings = 2048;
  // Most byte-level BPE merges to learn from a built-in text (it supports
  // 253); the vocabulary is 256 byte tokens + the merges + 2 special tokens.
  int64_t num_merges = 254;
  // "llama" or "qwen2" (Qwen2ForCausalLM: q/k/v biases, NeoX rope).
  std::string architecture = "llama";
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // Llama only: q/k/v/o biases.
  // Embedding and head rows; 0: the tokenizer's size. More rows than the
  // tokenizer has tokens are ids it never produces (importers pad them).
  int64_t vocab_size = 0;
  double rope_theta = 10000.0;
  int num_shards = 2;
  // > 0: shards filled in tensor order up to this many bytes each, as
  // transformers' max_shard_size does (overrides num_shards).
  int64_t max_shard_bytes = 0;
  uint64_t seed = 1;
};

// Llama-3-70B's shapes (hidden 8192, 64 query / 8 key-value heads,
// intermediate 28672, vocabulary 128256, rope theta 500000, shards of at
// most 5 GB) with `num_layers` decoder blocks of random weights.
TinyLlamaOptions Llama3_70BShapes(int64_t num_layers);

// Creates `dir` if needed and writes the checkpoint into it. Fails if `dir`
// already holds a config.json (never overwrites a model).
absl::Status WriteTinyLlama(const std::string& dir,
                            const TinyLlamaOptions& options);

}  // namespace quant

#endif  // CONVERT_TINY_LLAMA_H_
