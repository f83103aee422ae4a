#include "model/llama_forward.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "format/half.h"

namespace quant {
namespace {

absl::StatusOr<std::vector<float>> LoadTensor(
    const SafetensorsCheckpoint& checkpoint, const std::string& name,
    const std::vector<int64_t>& shape) {
  ASSIGN_OR_RETURN(const TensorView view, checkpoint.Get(name));
  if (view.shape != shape) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " has shape [", absl::StrJoin(view.shape, ", "),
        "], expected [", absl::StrJoin(shape, ", "), "]"));
  }
  absl::StatusOr<std::vector<float>> values = view.ToFloatVector();
  checkpoint.Release(view);
  return values;
}

absl::StatusOr<LinearWeights> LoadLinear(
    const SafetensorsCheckpoint& checkpoint, const std::string& prefix,
    int64_t rows, int64_t cols, bool bias) {
  LinearWeights linear;
  linear.rows = rows;
  linear.cols = cols;
  ASSIGN_OR_RETURN(linear.weight,
                   LoadTensor(checkpoint, prefix + ".weight", {rows, cols}));
  if (bias) {
    ASSIGN_OR_RETURN(linear.bias,
                     LoadTensor(checkpoint, prefix + ".bias", {rows}));
  }
  return linear;
}

float Silu(float x) { return x / (1.0f + std::exp(-x)); }

}  // namespace

void ApplyLinear(const LinearWeights& linear, const float* x, int64_t n,
                 float* y) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(n),
              static_cast<int>(linear.rows), static_cast<int>(linear.cols),
              1.0f, x, static_cast<int>(linear.cols), linear.weight.data(),
              static_cast<int>(linear.cols), 0.0f, y,
              static_cast<int>(linear.rows));
  if (linear.bias.empty()) return;
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    float* row = y + t * linear.rows;
    for (int64_t r = 0; r < linear.rows; ++r) row[r] += linear.bias[r];
  }
}

void RmsNorm(const float* x, const float* weight, int64_t n, int64_t dim,
             double eps, float* y) {
#pragma omp parallel for schedule(static)
  for (int64_t t = 0; t < n; ++t) {
    const float* in = x + t * dim;
    double sum_squares = 0;
    for (int64_t i = 0; i < dim; ++i) sum_squares += double{in[i]} * in[i];
    const float inverse = static_cast<float>(
        1.0 / std::sqrt(sum_squares / static_cast<double>(dim) + eps));
    float* out = y + t * dim;
    for (int64_t i = 0; i < dim; ++i) out[i] = weight[i] * (in[i] * inverse);
  }
}

absl::StatusOr<DecoderBlockWeights> LoadDecoderBlock(
    const SafetensorsCheckpoint& checkpoint, const ModelSpec& spec, int layer) {
  if (layer < 0 || layer >= spec.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", layer, " is outside the model's ", spec.num_layers));
  }
  const std::string p = absl::StrCat("model.layers.", layer, ".");
  const int64_t hidden = spec.hidden_size;
  const int64_t q_rows = spec.num_heads * spec.head_dim;
  const int64_t kv_rows = spec.num_kv_heads * spec.head_dim;
  const int64_t ffn = spec.intermediate_size;
  const bool bias = spec.attention_bias;
  DecoderBlockWeights block;
  ASSIGN_OR_RETURN(
      block.attn_norm,
      LoadTensor(checkpoint, p + "input_layernorm.weight", {hidden}));
  ASSIGN_OR_RETURN(
      block.ffn_norm,
      LoadTensor(checkpoint, p + "post_attention_layernorm.weight", {hidden}));
  ASSIGN_OR_RETURN(block.q, LoadLinear(checkpoint, p + "self_attn.q_proj",
                                       q_rows, hidden, bias));
  ASSIGN_OR_RETURN(block.k, LoadLinear(checkpoint, p + "self_attn.k_proj",
                                       kv_rows, hidden, bias));
  ASSIGN_OR_RETURN(block.v, LoadLinear(checkpoint, p + "self_attn.v_proj",
                                       kv_rows, hidden, bias));
  ASSIGN_OR_RETURN(
      block.o, LoadLinear(checkpoint, p + "self_attn.o_proj", hidden, q_rows,
                          HasOutputProjectionBias(spec)));
  ASSIGN_OR_RETURN(block.gate, LoadLinear(checkpoint, p + "mlp.gate_proj", ffn,
                                          hidden, false));
  ASSIGN_OR_RETURN(
      block.up, LoadLinear(checkpoint, p + "mlp.up_proj", ffn, hidden, false));
  ASSIGN_OR_RETURN(block.down, LoadLinear(checkpoint, p + "mlp.down_proj",
                                          hidden, ffn, false));
  return block;
}

absl::StatusOr<OutputHeadWeights> LoadOutputHead(
    const SafetensorsCheckpoint& checkpoint, const ModelSpec& spec) {
  OutputHeadWeights head;
  ASSIGN_OR_RETURN(head.norm, LoadTensor(checkpoint, "model.norm.weight",
                                         {spec.hidden_size}));
  const std::string name =
      spec.tie_word_embeddings ? "model.embed_tokens" : "lm_head";
  ASSIGN_OR_RETURN(head.lm_head, LoadLinear(checkpoint, name, spec.vocab_size,
                                            spec.hidden_size, false));
  return head;
}

LlamaForward::LlamaForward(const ModelSpec& spec, int64_t max_positions,
                           ProductPrecision precision)
    : spec_(spec),
      max_positions_(std::max<int64_t>(max_positions, 0)),
      precision_(precision) {
  const int64_t half = spec_.head_dim / 2;
  std::vector<float> divisors(static_cast<size_t>(half), 1.0f);
  if (spec_.rope_scaling.type == "llama3") {
    divisors = Llama3RopeFactors(spec_);
  } else if (spec_.rope_scaling.type == "linear") {
    std::fill(divisors.begin(), divisors.end(),
              static_cast<float>(spec_.rope_scaling.factor));
  }
  cos_.resize(static_cast<size_t>(max_positions_ * half));
  sin_.resize(cos_.size());
  for (int64_t i = 0; i < half; ++i) {
    // As transformers: 1 / theta^(2i / head_dim) in float32.
    const float inverse_frequency =
        1.0f /
        std::pow(
            static_cast<float>(spec_.rope_theta),
            static_cast<float>(2 * i) / static_cast<float>(spec_.head_dim)) /
        divisors[static_cast<size_t>(i)];
    for (int64_t p = 0; p < max_positions_; ++p) {
      const float angle = static_cast<float>(p) * inverse_frequency;
      cos_[p * half + i] = std::cos(angle);
      sin_[p * half + i] = std::sin(angle);
    }
  }
}

absl::Status LlamaForward::Embed(const SafetensorsCheckpoint& checkpoint,
                                 absl::Span<const int32_t> tokens,
                                 float* hidden) const {
  ASSIGN_OR_RETURN(const TensorView view,
                   checkpoint.Get("model.embed_tokens.weight"));
  const int64_t dim = spec_.hidden_size;
  if (view.shape != std::vector<int64_t>{spec_.vocab_size, dim}) {
    return absl::InvalidArgumentError(
        "model.embed_tokens.weight does not have shape [vocab_size, "
        "hidden_size]");
  }
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (tokens[t] < 0 || tokens[t] >= spec_.vocab_size) {
      return absl::InvalidArgumentError(
          absl::StrCat("token ", tokens[t], " at position ", t,
                       " is outside the vocabulary of ", spec_.vocab_size));
    }
  }
  RETURN_IF_ERROR(view.ToFloat(0, 0, nullptr));  // The dtype converts.
  // Rows side by side: 128 x 2048 tokens of a 70B model are 8.6 GB.
  const int64_t count = static_cast<int64_t>(tokens.size());
  int64_t failed = 0;
#pragma omp parallel for schedule(static) reduction(+ : failed)
  for (int64_t t = 0; t < count; ++t) {
    failed +=
        !view.ToFloat(int64_t{tokens[t]} * dim, dim, hidden + t * dim).ok();
  }
  if (failed > 0) {
    return absl::InternalError(absl::StrCat(
        failed, " rows of model.embed_tokens.weight did not convert"));
  }
  return absl::OkStatus();
}

void LlamaForward::RoundForProducts(float* x, int64_t n) const {
  if (precision_ != ProductPrecision::kBfloat16) return;
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = Bf16ToFloat(FloatToBf16(x[i]));
}

void LlamaForward::Linear(const LinearWeights& linear, const float* x,
                          int64_t n, float* y) const {
  if (precision_ != ProductPrecision::kBfloat16) {
    ApplyLinear(linear, x, n, y);
    return;
  }
  LinearWeights rounded = linear;  // A copy per call: the oracle's cost.
  RoundForProducts(rounded.weight.data(), linear.rows * linear.cols);
  ApplyLinear(rounded, x, n, y);
}

absl::Status LlamaForward::CheckBlock(const DecoderBlockWeights& block,
                                      int64_t seq_len) const {
  const int64_t dim = spec_.hidden_size, head_dim = spec_.head_dim;
  if (seq_len > max_positions_) {
    return absl::InvalidArgumentError(
        absl::StrCat("sequences of ", seq_len, " tokens exceed the ",
                     max_positions_, " positions prepared"));
  }
  if (block.q.cols != dim || block.q.rows != spec_.num_heads * head_dim ||
      block.k.rows != spec_.num_kv_heads * head_dim ||
      block.v.rows != spec_.num_kv_heads * head_dim || block.o.rows != dim ||
      block.o.cols != block.q.rows || block.down.rows != dim ||
      block.gate.rows != block.down.cols || block.up.rows != block.down.cols ||
      static_cast<int64_t>(block.attn_norm.size()) != dim ||
      static_cast<int64_t>(block.ffn_norm.size()) != dim) {
    return absl::InvalidArgumentError(
        "decoder block weights do not match the model spec");
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> LlamaForward::Attention(
    const DecoderBlockWeights& block, int64_t sequences, int64_t seq_len,
    const float* normed, float* out, const BlockInputObserver& observer) const {
  RETURN_IF_ERROR(CheckBlock(block, seq_len));
  const int64_t heads = spec_.num_heads, kv_heads = spec_.num_kv_heads;
  const int64_t head_dim = spec_.head_dim, half = head_dim / 2;
  const int64_t tokens = sequences * seq_len;
  const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim;
  std::vector<float> q(static_cast<size_t>(tokens * q_width));
  std::vector<float> k(static_cast<size_t>(tokens * kv_width));
  std::vector<float> v(static_cast<size_t>(tokens * kv_width));
  Linear(block.q, normed, tokens, q.data());
  Linear(block.k, normed, tokens, k.data());
  Linear(block.v, normed, tokens, v.data());

  // Rotary embeddings, HF convention: element i pairs with i + head_dim / 2.
  auto rotate = [&](float* x, int64_t width) {
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tokens; ++t) {
      const float* c = cos_.data() + (t % seq_len) * half;
      const float* s = sin_.data() + (t % seq_len) * half;
      for (int64_t h = 0; h < width / head_dim; ++h) {
        float* e = x + t * width + h * head_dim;
        for (int64_t i = 0; i < half; ++i) {
          const float a = e[i], b = e[i + half];
          e[i] = a * c[i] - b * s[i];
          e[i + half] = b * c[i] + a * s[i];
        }
      }
    }
  };
  rotate(q.data(), q_width);
  rotate(k.data(), kv_width);
  RoundForProducts(q.data(), tokens * q_width);
  RoundForProducts(k.data(), tokens * kv_width);
  RoundForProducts(v.data(), tokens * kv_width);

  // Causal attention per sequence and head; each query head reads key/value
  // head h / (heads / kv_heads).
  std::vector<float> attended(static_cast<size_t>(tokens * q_width));
  std::vector<float> scores(static_cast<size_t>(seq_len * seq_len));
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const int64_t group = heads / kv_heads;
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q.data() + s * seq_len * q_width + h * head_dim;
      const float* kh =
          k.data() + s * seq_len * kv_width + (h / group) * head_dim;
      const float* vh =
          v.data() + s * seq_len * kv_width + (h / group) * head_dim;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans,
                  static_cast<int>(seq_len), static_cast<int>(seq_len),
                  static_cast<int>(head_dim), scale, qh,
                  static_cast<int>(q_width), kh, static_cast<int>(kv_width),
                  0.0f, scores.data(), static_cast<int>(seq_len));
#pragma omp parallel for schedule(static)
      for (int64_t i = 0; i < seq_len; ++i) {
        float* row = scores.data() + i * seq_len;
        float largest = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j <= i; ++j) largest = std::max(largest, row[j]);
        double total = 0;
        for (int64_t j = 0; j <= i; ++j) {
          row[j] = std::exp(row[j] - largest);
          total += row[j];
        }
        const float inverse = static_cast<float>(1.0 / total);
        for (int64_t j = 0; j <= i; ++j) row[j] *= inverse;
        for (int64_t j = i + 1; j < seq_len; ++j) row[j] = 0.0f;
      }
      RoundForProducts(scores.data(), seq_len * seq_len);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
                  static_cast<int>(seq_len), static_cast<int>(head_dim),
                  static_cast<int>(seq_len), 1.0f, scores.data(),
                  static_cast<int>(seq_len), vh, static_cast<int>(kv_width),
                  0.0f, attended.data() + s * seq_len * q_width + h * head_dim,
                  static_cast<int>(q_width));
    }
  }
  q = {};
  k = {};
  v = {};
  RoundForProducts(attended.data(), tokens * q_width);
  if (observer && !observer(BlockInput::kAttentionOutput, attended.data(),
                            tokens, q_width)) {
    return false;
  }
  Linear(block.o, attended.data(), tokens, out);
  return true;
}

bool LlamaForward::Mlp(const DecoderBlockWeights& block, int64_t tokens,
                       const float* normed, float* out,
                       const BlockInputObserver& observer) const {
  const int64_t ffn = block.gate.rows;
  std::vector<float> gate(static_cast<size_t>(tokens * ffn));
  std::vector<float> up(static_cast<size_t>(tokens * ffn));
  Linear(block.gate, normed, tokens, gate.data());
  Linear(block.up, normed, tokens, up.data());
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < tokens * ffn; ++i) gate[i] = Silu(gate[i]) * up[i];
  RoundForProducts(gate.data(), tokens * ffn);
  if (observer && !observer(BlockInput::kMlpOutput, gate.data(), tokens, ffn)) {
    return false;
  }
  Linear(block.down, gate.data(), tokens, out);
  return true;
}

absl::Status LlamaForward::ForwardBlock(
    const DecoderBlockWeights& block, int64_t sequences, int64_t seq_len,
    float* hidden, const BlockInputObserver& observer) const {
  RETURN_IF_ERROR(CheckBlock(block, seq_len));
  const int64_t dim = spec_.hidden_size;
  const int64_t tokens = sequences * seq_len;
  std::vector<float> normed(static_cast<size_t>(tokens * dim));
  std::vector<float> sublayer(static_cast<size_t>(tokens * dim));
  RmsNorm(hidden, block.attn_norm.data(), tokens, dim, spec_.rms_norm_eps,
          normed.data());
  RoundForProducts(normed.data(), tokens * dim);
  if (observer &&
      !observer(BlockInput::kAttention, normed.data(), tokens, dim)) {
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(const bool attended,
                   Attention(block, sequences, seq_len, normed.data(),
                             sublayer.data(), observer));
  if (!attended) return absl::OkStatus();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < tokens * dim; ++i) hidden[i] += sublayer[i];

  RmsNorm(hidden, block.ffn_norm.data(), tokens, dim, spec_.rms_norm_eps,
          normed.data());
  RoundForProducts(normed.data(), tokens * dim);
  if (observer && !observer(BlockInput::kMlp, normed.data(), tokens, dim)) {
    return absl::OkStatus();
  }
  if (!Mlp(block, tokens, normed.data(), sublayer.data(), observer)) {
    return absl::OkStatus();
  }
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < tokens * dim; ++i) hidden[i] += sublayer[i];
  return absl::OkStatus();
}

absl::Status LlamaForward::Logits(const OutputHeadWeights& head,
                                  const float* hidden, int64_t tokens,
                                  float* logits) const {
  const int64_t dim = spec_.hidden_size;
  if (static_cast<int64_t>(head.norm.size()) != dim ||
      head.lm_head.cols != dim) {
    return absl::InvalidArgumentError(
        "output head weights do not match the model spec");
  }
  std::vector<float> normed(static_cast<size_t>(tokens * dim));
  RmsNorm(hidden, head.norm.data(), tokens, dim, spec_.rms_norm_eps,
          normed.data());
  RoundForProducts(normed.data(), tokens * dim);
  Linear(head.lm_head, normed.data(), tokens, logits);
  return absl::OkStatus();
}

}  // namespace quant
