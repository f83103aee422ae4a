// Hugging Face config.json -> model spec for the Llama family (Llama 1/2/3,
// Mistral, Qwen2), and the checkpoint tensors that spec implies.
//
// Error codes: InvalidArgument for malformed or inconsistent configs and for
// tensors whose shape disagrees with the config (the message names the JSON
// field involved); Unimplemented for well-formed configs this service does
// not handle (other architectures, rope scaling other than linear/llama3,
// mlp_bias); NotFound when config.json or a required tensor is absent.
#ifndef FORMAT_MODEL_CONFIG_H_
#define FORMAT_MODEL_CONFIG_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quant {

struct RopeScaling {
  // "" (none), "linear" or "llama3". ("dynamic" and "yarn" are recognised by
  // the parser but rejected as Unimplemented.)
  std::string type;
  double factor = 1;
  double low_freq_factor = 1;                    // llama3 only.
  double high_freq_factor = 4;                   // llama3 only.
  int64_t original_max_position_embeddings = 0;  // llama3 only.
};

struct ModelSpec {
  std::string architecture;  // "LlamaForCausalLM", "MistralForCausalLM",
                             // "Qwen2ForCausalLM".
  std::string model_type;    // "llama", "mistral", "qwen2".
  std::string gguf_arch;     // "llama" for llama/mistral, "qwen2" for qwen2.

  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;  // 0 when the config has none.

  double rms_norm_eps = 1e-6;
  double rope_theta = 10000;
  RopeScaling rope_scaling;

  bool tie_word_embeddings = false;
  // Bias on the attention projections: q/k/v for qwen2 (always), q/k/v/o for
  // llama when the config says `attention_bias: true`.
  bool attention_bias = false;

  std::string torch_dtype;  // "bfloat16" etc. (`torch_dtype` or `dtype`).

  std::optional<int64_t> bos_token_id;
  std::optional<int64_t> eos_token_id;  // First of eos_token_ids.
  std::optional<int64_t> pad_token_id;
  std::vector<int64_t> eos_token_ids;  // All of them (config may list many).

  // Mistral's sliding-window attention (null -> none); for qwen2 only when
  // `use_sliding_window` is true.
  std::optional<int64_t> sliding_window;
};

// Parses the text of a config.json.
absl::StatusOr<ModelSpec> ParseModelConfig(absl::string_view json_text);

// Reads and parses `model_dir`/config.json.
absl::StatusOr<ModelSpec> LoadModelConfig(const std::string& model_dir);

// Returns a tensor's shape, or std::nullopt when the checkpoint lacks it.
using TensorShapeFn =
    std::function<std::optional<std::vector<int64_t>>(const std::string&)>;

// One tensor the architecture needs, with the shape the config implies.
struct ExpectedTensor {
  std::string name;            // Hugging Face name.
  std::vector<int64_t> shape;  // Hugging Face (row-major) order.
  // For each dimension, the config fields it comes from, e.g.
  // "num_key_value_heads=8 x head_dim=64".
  std::vector<std::string> shape_source;
  int layer = -1;  // Decoder block, or -1 for embeddings / final norm / head.
};

// Every tensor of the architecture in a fixed order: embeddings, then per
// layer (norms, attention, MLP), then the final norm and lm_head (absent when
// tie_word_embeddings). Attention biases appear when attention_bias is set.
std::vector<ExpectedTensor> ExpectedHfTensors(const ModelSpec& spec);

// Just the names of ExpectedHfTensors(spec).
std::vector<std::string> ExpectedHfTensorNames(const ModelSpec& spec);

// Checks that every tensor the architecture needs exists with the shape the
// config implies. Errors: NotFound for a missing tensor (for a missing
// lm_head.weight the message also names tie_word_embeddings); InvalidArgument
// for a shape mismatch, naming the config fields that disagree, e.g.
// "model.layers.0.self_attn.k_proj.weight has shape [256,512] but config
// num_key_value_heads=8 x head_dim=64 implies [512,512]".
absl::Status ValidateTensorShapes(const ModelSpec& spec,
                                  const TensorShapeFn& shape_of);

// Llama 3.1's rope scaling ("llama3"): per rotary pair i (head_dim / 2 of
// them), the divisor of its base frequency 1 / theta^(2i / head_dim) --
// 1 for high frequencies, `factor` for low ones, smoothly between. llama.cpp
// reads these as the rope_freqs.weight tensor; the HF forward divides.
std::vector<float> Llama3RopeFactors(const ModelSpec& spec);

// Whether o_proj has a bias: Llama's attention_bias covers q, k, v and o;
// Qwen2's biases are q, k and v only.
bool HasOutputProjectionBias(const ModelSpec& spec);

}  // namespace quant

#endif  // FORMAT_MODEL_CONFIG_H_
