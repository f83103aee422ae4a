#include "format/model_config.h"

#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "common/file.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace quant {
namespace {

using json = nlohmann::json;

// Sanity bounds: far above any real model, low enough that shape products
// cannot overflow int64 and that per-layer tables stay small.
constexpr int64_t kMaxDim = int64_t{1} << 24;
constexpr int64_t kMaxLayers = 4096;

struct ArchInfo {
  const char* architecture;
  const char* model_type;
  const char* gguf_arch;
};

constexpr ArchInfo kArchs[] = {
    {"LlamaForCausalLM", "llama", "llama"},
    {"MistralForCausalLM", "mistral", "llama"},
    {"Qwen2ForCausalLM", "qwen2", "qwen2"},
};

absl::Status WrongType(absl::string_view field, absl::string_view want,
                       const json& got) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: `", field,
                                                 "` must be ", want, ", got ",
                                                 DescribeJson(got)));
}

// Member `key` of `obj`, or nullptr when absent or null.
const json* Member(const json& obj, const char* key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<int64_t> AsInt(const json& v, absl::string_view field) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: `", field, "` is out of range: ", u));
    }
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    // Some exporters write integers as 4096.0; accept exact integers.
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) <= 9.0e15) {
      return static_cast<int64_t>(d);
    }
  }
  return WrongType(field, "an integer", v);
}

absl::StatusOr<std::optional<int64_t>> GetInt(const json& obj, const char* key,
                                              absl::string_view field) {
  const json* v = Member(obj, key);
  if (v == nullptr) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(int64_t value, AsInt(*v, field));
  return std::optional<int64_t>(value);
}

absl::StatusOr<std::optional<double>> GetDouble(const json& obj,
                                                const char* key,
                                                absl::string_view field) {
  const json* v = Member(obj, key);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) return WrongType(field, "a number", *v);
  const double d = v->get<double>();
  if (!std::isfinite(d)) return WrongType(field, "a finite number", *v);
  return std::optional<double>(d);
}

absl::StatusOr<std::optional<bool>> GetBool(const json& obj, const char* key,
                                            absl::string_view field) {
  const json* v = Member(obj, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return WrongType(field, "a boolean", *v);
  return std::optional<bool>(v->get<bool>());
}

absl::StatusOr<std::optional<std::string>> GetString(const json& obj,
                                                     const char* key,
                                                     absl::string_view field) {
  const json* v = Member(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return WrongType(field, "a string", *v);
  return std::optional<std::string>(v->get<std::string>());
}

absl::Status CheckRange(int64_t value, int64_t lo, int64_t hi,
                        absl::string_view field) {
  if (value < lo || value > hi) {
    return absl::InvalidArgumentError(absl::StrCat("config.json: `", field,
                                                   "` must be in [", lo, ", ",
                                                   hi, "], got ", value));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> GetRequiredDim(const json& obj, const char* key,
                                       int64_t max) {
  ASSIGN_OR_RETURN(std::optional<int64_t> v, GetInt(obj, key, key));
  if (!v.has_value()) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: missing required field `", key, "`"));
  }
  RETURN_IF_ERROR(CheckRange(*v, 1, max, key));
  return *v;
}

// A token id field: an integer, null, or absent. Negative ids (some old
// conversions write -1) mean "none".
absl::StatusOr<std::optional<int64_t>> GetTokenId(const json& obj,
                                                  const char* key) {
  ASSIGN_OR_RETURN(std::optional<int64_t> v, GetInt(obj, key, key));
  if (v.has_value() && *v < 0) v.reset();
  return v;
}

absl::Status ParseRopeScaling(const json& obj, absl::string_view where,
                              RopeScaling* out) {
  const std::string type_field = absl::StrCat(where, ".rope_type");
  std::optional<std::string> type;
  ASSIGN_OR_RETURN(type, GetString(obj, "rope_type", type_field));
  if (!type.has_value()) {
    ASSIGN_OR_RETURN(type,
                     GetString(obj, "type", absl::StrCat(where, ".type")));
  }
  RopeScaling rs;
  if (!type.has_value() || *type == "default" || type->empty()) {
    *out = rs;
    return absl::OkStatus();
  }
  rs.type = *type;
  auto get_double = [&](const char* key, double* dst) -> absl::Status {
    ASSIGN_OR_RETURN(std::optional<double> v,
                     GetDouble(obj, key, absl::StrCat(where, ".", key)));
    if (v.has_value()) *dst = *v;
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(get_double("factor", &rs.factor));
  RETURN_IF_ERROR(get_double("low_freq_factor", &rs.low_freq_factor));
  RETURN_IF_ERROR(get_double("high_freq_factor", &rs.high_freq_factor));
  const std::string orig_field =
      absl::StrCat(where, ".original_max_position_embeddings");
  ASSIGN_OR_RETURN(std::optional<int64_t> orig,
                   GetInt(obj, "original_max_position_embeddings", orig_field));
  if (orig.has_value()) rs.original_max_position_embeddings = *orig;

  if (rs.type != "linear" && rs.type != "llama3") {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: ", type_field, " \"", rs.type,
        "\" is not supported (supported: default, linear, llama3)"));
  }
  if (!(rs.factor > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: `", where, ".factor` must be > 0, got ", rs.factor));
  }
  if (rs.type == "llama3") {
    if (rs.original_max_position_embeddings <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("config.json: `", orig_field,
                       "` must be a positive integer for rope_type llama3"));
    }
    if (!(rs.low_freq_factor > 0) ||
        !(rs.high_freq_factor > rs.low_freq_factor)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: `", where, ".low_freq_factor`=", rs.low_freq_factor,
          " and `", where, ".high_freq_factor`=", rs.high_freq_factor,
          " must satisfy 0 < low < high"));
    }
  }
  *out = rs;
  return absl::OkStatus();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

}  // namespace

absl::StatusOr<ModelSpec> ParseModelConfig(absl::string_view json_text) {
  ASSIGN_OR_RETURN(const json root, ParseJsonStrict(json_text, "config.json"));
  if (!root.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json must hold a JSON object, got ", DescribeJson(root)));
  }
  ModelSpec spec;

  // Architecture and model_type.
  ASSIGN_OR_RETURN(std::optional<std::string> model_type,
                   GetString(root, "model_type", "model_type"));
  std::optional<std::string> architecture;
  if (const json* archs = Member(root, "architectures")) {
    if (!archs->is_array() || archs->empty() || !(*archs)[0].is_string()) {
      return WrongType("architectures", "a non-empty list of strings", *archs);
    }
    architecture = (*archs)[0].get<std::string>();
  }
  const ArchInfo* info = nullptr;
  if (architecture.has_value()) {
    for (const ArchInfo& a : kArchs) {
      if (*architecture == a.architecture) info = &a;
    }
    if (info == nullptr) {
      return absl::UnimplementedError(
          absl::StrCat("config.json: `architectures` is \"", *architecture,
                       "\"; supported: LlamaForCausalLM, MistralForCausalLM, "
                       "Qwen2ForCausalLM"));
    }
  } else if (model_type.has_value()) {
    for (const ArchInfo& a : kArchs) {
      if (*model_type == a.model_type) info = &a;
    }
    if (info == nullptr) {
      return absl::UnimplementedError(absl::StrCat(
          "config.json: no `architectures` and `model_type` \"", *model_type,
          "\" is not supported (supported: llama, mistral, qwen2)"));
    }
  } else {
    return absl::InvalidArgumentError(
        "config.json: missing required field `architectures`");
  }
  if (model_type.has_value() && *model_type != info->model_type) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: `model_type` \"", *model_type,
                     "\" does not match `architectures` \"", info->architecture,
                     "\" (expected \"", info->model_type, "\")"));
  }
  spec.architecture = info->architecture;
  spec.model_type = info->model_type;
  spec.gguf_arch = info->gguf_arch;

  // Dimensions.
  ASSIGN_OR_RETURN(spec.hidden_size,
                   GetRequiredDim(root, "hidden_size", kMaxDim));
  ASSIGN_OR_RETURN(spec.num_layers,
                   GetRequiredDim(root, "num_hidden_layers", kMaxLayers));
  ASSIGN_OR_RETURN(spec.num_heads,
                   GetRequiredDim(root, "num_attention_heads", kMaxDim));
  ASSIGN_OR_RETURN(spec.intermediate_size,
                   GetRequiredDim(root, "intermediate_size", kMaxDim));
  ASSIGN_OR_RETURN(spec.vocab_size,
                   GetRequiredDim(root, "vocab_size", kMaxDim));

  ASSIGN_OR_RETURN(std::optional<int64_t> kv,
                   GetInt(root, "num_key_value_heads", "num_key_value_heads"));
  spec.num_kv_heads = kv.value_or(spec.num_heads);
  RETURN_IF_ERROR(
      CheckRange(spec.num_kv_heads, 1, kMaxDim, "num_key_value_heads"));
  if (spec.num_heads % spec.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: num_key_value_heads=", spec.num_kv_heads,
                     " does not divide num_attention_heads=", spec.num_heads));
  }

  ASSIGN_OR_RETURN(std::optional<int64_t> head_dim,
                   GetInt(root, "head_dim", "head_dim"));
  if (head_dim.has_value()) {
    RETURN_IF_ERROR(CheckRange(*head_dim, 1, kMaxDim, "head_dim"));
    spec.head_dim = *head_dim;
  } else {
    if (spec.hidden_size % spec.num_heads != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "config.json: hidden_size=", spec.hidden_size,
          " is not divisible by num_attention_heads=", spec.num_heads,
          " and there is no `head_dim`"));
    }
    spec.head_dim = spec.hidden_size / spec.num_heads;
  }
  if (spec.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config.json: head_dim=", spec.head_dim,
                     " must be even for rotary embeddings"));
  }

  ASSIGN_OR_RETURN(
      std::optional<int64_t> max_pos,
      GetInt(root, "max_position_embeddings", "max_position_embeddings"));
  if (max_pos.has_value()) {
    RETURN_IF_ERROR(CheckRange(*max_pos, 1, std::numeric_limits<int32_t>::max(),
                               "max_position_embeddings"));
    spec.max_position_embeddings = *max_pos;
  }

  // Norm epsilon.
  ASSIGN_OR_RETURN(std::optional<double> eps,
                   GetDouble(root, "rms_norm_eps", "rms_norm_eps"));
  spec.rms_norm_eps = eps.value_or(1e-6);
  if (!(spec.rms_norm_eps > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: `rms_norm_eps` must be > 0, got ", spec.rms_norm_eps));
  }

  // RoPE: top-level rope_theta / rope_scaling (transformers 4.x) or
  // rope_parameters (transformers 5).
  const json* rope_params = Member(root, "rope_parameters");
  if (rope_params != nullptr && !rope_params->is_object()) {
    return WrongType("rope_parameters", "an object", *rope_params);
  }
  ASSIGN_OR_RETURN(std::optional<double> theta,
                   GetDouble(root, "rope_theta", "rope_theta"));
  if (!theta.has_value() && rope_params != nullptr) {
    ASSIGN_OR_RETURN(theta, GetDouble(*rope_params, "rope_theta",
                                      "rope_parameters.rope_theta"));
  }
  spec.rope_theta = theta.value_or(10000.0);
  if (!(spec.rope_theta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: rope theta must be > 0, got ", spec.rope_theta));
  }
  if (const json* scaling = Member(root, "rope_scaling")) {
    if (!scaling->is_object()) {
      return WrongType("rope_scaling", "an object or null", *scaling);
    }
    RETURN_IF_ERROR(
        ParseRopeScaling(*scaling, "rope_scaling", &spec.rope_scaling));
  } else if (rope_params != nullptr) {
    RETURN_IF_ERROR(
        ParseRopeScaling(*rope_params, "rope_parameters", &spec.rope_scaling));
  }

  // Embeddings and biases.
  ASSIGN_OR_RETURN(std::optional<bool> tie,
                   GetBool(root, "tie_word_embeddings", "tie_word_embeddings"));
  spec.tie_word_embeddings = tie.value_or(false);
  ASSIGN_OR_RETURN(std::optional<bool> attn_bias,
                   GetBool(root, "attention_bias", "attention_bias"));
  ASSIGN_OR_RETURN(std::optional<bool> mlp_bias,
                   GetBool(root, "mlp_bias", "mlp_bias"));
  if (spec.model_type == "qwen2") {
    spec.attention_bias = true;  // Qwen2 always has q/k/v biases.
  } else if (spec.model_type == "llama") {
    spec.attention_bias = attn_bias.value_or(false);
  }
  if (mlp_bias.value_or(false)) {
    return absl::UnimplementedError(
        "config.json: `mlp_bias` true is not supported");
  }

  // dtype.
  ASSIGN_OR_RETURN(std::optional<std::string> dtype,
                   GetString(root, "torch_dtype", "torch_dtype"));
  if (!dtype.has_value()) {
    ASSIGN_OR_RETURN(dtype, GetString(root, "dtype", "dtype"));
  }
  spec.torch_dtype = dtype.value_or("");

  // Special tokens.
  ASSIGN_OR_RETURN(spec.bos_token_id, GetTokenId(root, "bos_token_id"));
  ASSIGN_OR_RETURN(spec.pad_token_id, GetTokenId(root, "pad_token_id"));
  if (const json* eos = Member(root, "eos_token_id")) {
    if (eos->is_array()) {
      for (size_t i = 0; i < eos->size(); ++i) {
        ASSIGN_OR_RETURN(
            int64_t id,
            AsInt((*eos)[i], absl::StrCat("eos_token_id[", i, "]")));
        if (id >= 0) spec.eos_token_ids.push_back(id);
      }
    } else {
      ASSIGN_OR_RETURN(std::optional<int64_t> id,
                       GetTokenId(root, "eos_token_id"));
      if (id.has_value()) spec.eos_token_ids.push_back(*id);
    }
    if (!spec.eos_token_ids.empty()) {
      spec.eos_token_id = spec.eos_token_ids.front();
    }
  }

  // Sliding window.
  bool use_sliding_window = spec.model_type == "mistral";
  if (spec.model_type == "qwen2") {
    ASSIGN_OR_RETURN(std::optional<bool> use,
                     GetBool(root, "use_sliding_window", "use_sliding_window"));
    use_sliding_window = use.value_or(false);
  }
  if (use_sliding_window) {
    ASSIGN_OR_RETURN(spec.sliding_window,
                     GetInt(root, "sliding_window", "sliding_window"));
    if (spec.sliding_window.has_value()) {
      RETURN_IF_ERROR(CheckRange(*spec.sliding_window, 1,
                                 std::numeric_limits<int32_t>::max(),
                                 "sliding_window"));
    }
  }
  return spec;
}

absl::StatusOr<ModelSpec> LoadModelConfig(const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  absl::StatusOr<ModelSpec> spec = ParseModelConfig(text);
  if (!spec.ok()) {
    // Messages start with "config.json"; name the actual file instead.
    absl::string_view message = spec.status().message();
    absl::ConsumePrefix(&message, "config.json");
    return absl::Status(spec.status().code(), absl::StrCat(path, message));
  }
  return spec;
}

std::vector<ExpectedTensor> ExpectedHfTensors(const ModelSpec& spec) {
  const int64_t h = spec.hidden_size;
  const int64_t q = spec.num_heads * spec.head_dim;
  const int64_t kv = spec.num_kv_heads * spec.head_dim;
  const int64_t inter = spec.intermediate_size;
  const std::string hs = absl::StrCat("hidden_size=", h);
  const std::string qs = absl::StrCat("num_attention_heads=", spec.num_heads,
                                      " x head_dim=", spec.head_dim);
  const std::string kvs = absl::StrCat(
      "num_key_value_heads=", spec.num_kv_heads, " x head_dim=", spec.head_dim);
  const std::string is = absl::StrCat("intermediate_size=", inter);
  const std::string vs = absl::StrCat("vocab_size=", spec.vocab_size);
  const bool qkv_bias = spec.attention_bias;
  const bool o_bias = HasOutputProjectionBias(spec);

  std::vector<ExpectedTensor> out;
  out.reserve(3 + spec.num_layers * 13);
  auto add = [&out](std::string name, std::vector<int64_t> shape,
                    std::vector<std::string> source, int layer) {
    out.push_back(
        {std::move(name), std::move(shape), std::move(source), layer});
  };
  add("model.embed_tokens.weight", {spec.vocab_size, h}, {vs, hs}, -1);
  for (int64_t l = 0; l < spec.num_layers; ++l) {
    const int layer = static_cast<int>(l);
    const std::string p = absl::StrCat("model.layers.", l, ".");
    add(p + "input_layernorm.weight", {h}, {hs}, layer);
    add(p + "self_attn.q_proj.weight", {q, h}, {qs, hs}, layer);
    if (qkv_bias) add(p + "self_attn.q_proj.bias", {q}, {qs}, layer);
    add(p + "self_attn.k_proj.weight", {kv, h}, {kvs, hs}, layer);
    if (qkv_bias) add(p + "self_attn.k_proj.bias", {kv}, {kvs}, layer);
    add(p + "self_attn.v_proj.weight", {kv, h}, {kvs, hs}, layer);
    if (qkv_bias) add(p + "self_attn.v_proj.bias", {kv}, {kvs}, layer);
    add(p + "self_attn.o_proj.weight", {h, q}, {hs, qs}, layer);
    if (o_bias) add(p + "self_attn.o_proj.bias", {h}, {hs}, layer);
    add(p + "post_attention_layernorm.weight", {h}, {hs}, layer);
    add(p + "mlp.gate_proj.weight", {inter, h}, {is, hs}, layer);
    add(p + "mlp.up_proj.weight", {inter, h}, {is, hs}, layer);
    add(p + "mlp.down_proj.weight", {h, inter}, {hs, is}, layer);
  }
  add("model.norm.weight", {h}, {hs}, -1);
  if (!spec.tie_word_embeddings) {
    add("lm_head.weight", {spec.vocab_size, h}, {vs, hs}, -1);
  }
  return out;
}

std::vector<std::string> ExpectedHfTensorNames(const ModelSpec& spec) {
  std::vector<std::string> names;
  for (ExpectedTensor& t : ExpectedHfTensors(spec)) {
    names.push_back(std::move(t.name));
  }
  return names;
}

absl::Status ValidateTensorShapes(const ModelSpec& spec,
                                  const TensorShapeFn& shape_of) {
  for (const ExpectedTensor& t : ExpectedHfTensors(spec)) {
    const std::optional<std::vector<int64_t>> shape = shape_of(t.name);
    if (!shape.has_value()) {
      if (t.name == "lm_head.weight") {
        return absl::NotFoundError(
            "checkpoint has no tensor lm_head.weight and config "
            "tie_word_embeddings is false");
      }
      return absl::NotFoundError(absl::StrCat("checkpoint has no tensor ",
                                              t.name, " (required by ",
                                              spec.architecture, ")"));
    }
    if (*shape == t.shape) continue;
    std::vector<std::string> reasons;
    if (shape->size() != t.shape.size()) {
      reasons = t.shape_source;
    } else {
      for (size_t d = 0; d < t.shape.size(); ++d) {
        if ((*shape)[d] != t.shape[d]) reasons.push_back(t.shape_source[d]);
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(
        t.name, " has shape ", ShapeString(*shape), " but config ",
        absl::StrJoin(reasons, " and "), " implies ", ShapeString(t.shape)));
  }
  return absl::OkStatus();
}

std::vector<float> Llama3RopeFactors(const ModelSpec& spec) {
  const RopeScaling& s = spec.rope_scaling;
  const double low_wavelen =
      s.original_max_position_embeddings / s.low_freq_factor;
  const double high_wavelen =
      s.original_max_position_embeddings / s.high_freq_factor;
  std::vector<float> factors;
  for (int64_t i = 0; i < spec.head_dim; i += 2) {
    const double freq =
        1.0 / std::pow(spec.rope_theta, static_cast<double>(i) /
                                            static_cast<double>(spec.head_dim));
    const double wavelen = 2 * M_PI / freq;
    double factor;
    if (wavelen < high_wavelen) {
      factor = 1;
    } else if (wavelen > low_wavelen) {
      factor = s.factor;
    } else {
      const double smooth =
          (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
          (s.high_freq_factor - s.low_freq_factor);
      factor = 1 / ((1 - smooth) / s.factor + smooth);
    }
    factors.push_back(static_cast<float>(factor));
  }
  return factors;
}

bool HasOutputProjectionBias(const ModelSpec& spec) {
  return spec.attention_bias && spec.model_type == "llama";
}

}  // namespace quant
