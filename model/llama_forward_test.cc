#include "model/llama_forward.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/half.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;

// A direct float64 transcription of transformers' LlamaDecoderLayer, one
// sequence at a time and one loop per formula: the oracle.
class NaiveLlama {
 public:
  explicit NaiveLlama(const ModelSpec& spec) : spec_(spec) {}

  std::vector<double> Linear(const LinearWeights& l,
                             const std::vector<double>& x) const {
    std::vector<double> y(static_cast<size_t>(l.rows));
    for (int64_t r = 0; r < l.rows; ++r) {
      double sum = l.bias.empty() ? 0.0 : l.bias[r];
      for (int64_t c = 0; c < l.cols; ++c)
        sum += l.weight[r * l.cols + c] * x[c];
      y[r] = sum;
    }
    return y;
  }

  std::vector<double> Norm(const std::vector<double>& x,
                           const std::vector<float>& w) const {
    double ms = 0;
    for (double v : x) ms += v * v;
    ms /= static_cast<double>(x.size());
    std::vector<double> y(x.size());
    for (size_t i = 0; i < x.size(); ++i) {
      y[i] = w[i] * (x[i] / std::sqrt(ms + spec_.rms_norm_eps));
    }
    return y;
  }

  void Rope(std::vector<double>& x, int64_t position) const {
    const int64_t d = spec_.head_dim;
    std::vector<float> divisors(d / 2, 1.0f);
    if (spec_.rope_scaling.type == "llama3")
      divisors = Llama3RopeFactors(spec_);
    for (size_t h = 0; h < x.size() / d; ++h) {
      std::vector<double> e(x.begin() + h * d, x.begin() + (h + 1) * d);
      for (int64_t i = 0; i < d / 2; ++i) {
        const double angle =
            position / std::pow(spec_.rope_theta, 2.0 * i / d) / divisors[i];
        x[h * d + i] = e[i] * std::cos(angle) - e[i + d / 2] * std::sin(angle);
        x[h * d + i + d / 2] =
            e[i + d / 2] * std::cos(angle) + e[i] * std::sin(angle);
      }
    }
  }

  // hidden: seq_len rows of hidden_size, updated in place.
  void Block(const DecoderBlockWeights& w,
             std::vector<std::vector<double>>& hidden) const {
    const int64_t n = static_cast<int64_t>(hidden.size());
    const int64_t d = spec_.head_dim;
    std::vector<std::vector<double>> q(n), k(n), v(n);
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> x = Norm(hidden[t], w.attn_norm);
      q[t] = Linear(w.q, x);
      k[t] = Linear(w.k, x);
      v[t] = Linear(w.v, x);
      Rope(q[t], t);
      Rope(k[t], t);
    }
    const int64_t group = spec_.num_heads / spec_.num_kv_heads;
    for (int64_t t = 0; t < n; ++t) {
      std::vector<double> attended(static_cast<size_t>(spec_.num_heads * d));
      for (int64_t h = 0; h < spec_.num_heads; ++h) {
        const int64_t kvh = h / group;
        std::vector<double> p(static_cast<size_t>(t + 1));
        double largest = -1e300, total = 0;
        for (int64_t j = 0; j <= t; ++j) {
          double dot = 0;
          for (int64_t i = 0; i < d; ++i)
            dot += q[t][h * d + i] * k[j][kvh * d + i];
          p[j] = dot / std::sqrt(static_cast<double>(d));
          largest = std::max(largest, p[j]);
        }
        for (double& e : p) total += (e = std::exp(e - largest));
        for (int64_t j = 0; j <= t; ++j) {
          for (int64_t i = 0; i < d; ++i) {
            attended[h * d + i] += p[j] / total * v[j][kvh * d + i];
          }
        }
      }
      const std::vector<double> o = Linear(w.o, attended);
      for (size_t i = 0; i < o.size(); ++i) hidden[t][i] += o[i];
    }
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> x = Norm(hidden[t], w.ffn_norm);
      std::vector<double> g = Linear(w.gate, x);
      const std::vector<double> u = Linear(w.up, x);
      for (size_t i = 0; i < g.size(); ++i)
        g[i] = g[i] / (1 + std::exp(-g[i])) * u[i];
      const std::vector<double> down = Linear(w.down, g);
      for (size_t i = 0; i < down.size(); ++i) hidden[t][i] += down[i];
    }
  }

 private:
  ModelSpec spec_;
};

struct Model {
  ModelSpec spec;
  std::unique_ptr<SafetensorsCheckpoint> checkpoint;
};

Model MakeTinyModel(const std::string& arch, bool bias, bool tied) {
  const std::string dir =
      MakeTestTempDir("llama_forward") + "/" + arch + (bias ? "_bias" : "");
  TinyLlamaOptions options;
  options.architecture = arch;
  options.attention_bias = bias;
  options.tie_word_embeddings = tied;
  options.hidden_size = 128;
  options.intermediate_size = 320;
  options.num_heads = 4;
  options.num_kv_heads = 2;
  options.num_layers = 2;
  const absl::Status written = WriteTinyLlama(dir, options);
  EXPECT_TRUE(written.ok()) << written;
  Model model;
  absl::StatusOr<ModelSpec> spec = LoadModelConfig(dir);
  EXPECT_TRUE(spec.ok()) << spec.status();
  model.spec = *spec;
  auto checkpoint = SafetensorsCheckpoint::Open(dir);
  EXPECT_TRUE(checkpoint.ok()) << checkpoint.status();
  model.checkpoint = *std::move(checkpoint);
  return model;
}

// Every block and the head, against the oracle, for 2 sequences of an odd
// length.
void ExpectMatchesOracle(const Model& model) {
  const ModelSpec& spec = model.spec;
  const int64_t sequences = 2, seq_len = 13, dim = spec.hidden_size;
  std::mt19937 rng(3);
  std::vector<int32_t> tokens(sequences * seq_len);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng() % spec.vocab_size);
  LlamaForward forward(spec, 64);
  std::vector<float> hidden(tokens.size() * dim);
  ASSERT_TRUE(forward.Embed(*model.checkpoint, tokens, hidden.data()).ok());
  std::vector<std::vector<std::vector<double>>> oracle(sequences);
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const float* row = hidden.data() + (s * seq_len + t) * dim;
      oracle[s].emplace_back(row, row + dim);
    }
  }
  NaiveLlama naive(spec);
  for (int layer = 0; layer < spec.num_layers; ++layer) {
    absl::StatusOr<DecoderBlockWeights> block =
        LoadDecoderBlock(*model.checkpoint, spec, layer);
    ASSERT_TRUE(block.ok()) << block.status();
    ASSERT_TRUE(
        forward.ForwardBlock(*block, sequences, seq_len, hidden.data()).ok());
    for (auto& sequence : oracle) naive.Block(*block, sequence);
  }
  absl::StatusOr<OutputHeadWeights> head =
      LoadOutputHead(*model.checkpoint, spec);
  ASSERT_TRUE(head.ok()) << head.status();
  std::vector<float> logits(tokens.size() * spec.vocab_size);
  ASSERT_TRUE(
      forward.Logits(*head, hidden.data(), tokens.size(), logits.data()).ok());
  double worst = 0;
  for (int64_t s = 0; s < sequences; ++s) {
    for (int64_t t = 0; t < seq_len; ++t) {
      const std::vector<double> x = naive.Norm(oracle[s][t], head->norm);
      const std::vector<double> expected = naive.Linear(head->lm_head, x);
      double scale = 0, error = 0;
      for (int64_t i = 0; i < spec.vocab_size; ++i) {
        scale = std::max(scale, std::fabs(expected[i]));
        error = std::max(
            error, std::fabs(expected[i] -
                             logits[(s * seq_len + t) * spec.vocab_size + i]));
      }
      worst = std::max(worst, error / scale);
    }
  }
  EXPECT_LT(worst, 2e-5) << spec.model_type;
}

TEST(LlamaForwardTest, LlamaMatchesTheOracle) {
  ExpectMatchesOracle(MakeTinyModel("llama", false, false));
}

TEST(LlamaForwardTest, LlamaWithAttentionBiasMatchesTheOracle) {
  ExpectMatchesOracle(MakeTinyModel("llama", true, false));
}

TEST(LlamaForwardTest, Qwen2TiedMatchesTheOracle) {
  ExpectMatchesOracle(MakeTinyModel("qwen2", false, true));  // q/k/v biases.
}

TEST(LlamaForwardTest, BadInput) {
  const Model model = MakeTinyModel("llama", false, false);
  LlamaForward forward(model.spec, 8);
  std::vector<float> hidden(16 * model.spec.hidden_size);
  const std::vector<int32_t> bad = {1, 2, 100000};
  const absl::Status status =
      forward.Embed(*model.checkpoint, bad, hidden.data());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      std::string(status.message()),
      HasSubstr("token 100000 at position 2 is outside the vocabulary"));
  absl::StatusOr<DecoderBlockWeights> block =
      LoadDecoderBlock(*model.checkpoint, model.spec, 0);
  ASSERT_TRUE(block.ok());
  EXPECT_EQ(forward.ForwardBlock(*block, 1, 16, hidden.data()).code(),
            absl::StatusCode::kInvalidArgument);  // Beyond 8 positions.
  EXPECT_EQ(LoadDecoderBlock(*model.checkpoint, model.spec, 5).status().code(),
            absl::StatusCode::kInvalidArgument);
  DecoderBlockWeights broken = *block;
  broken.attn_norm.pop_back();
  EXPECT_EQ(forward.ForwardBlock(broken, 1, 4, hidden.data()).code(),
            absl::StatusCode::kInvalidArgument);
}

// kBfloat16 rounds every product's input (the observers see them) and
// moves the outputs by BF16's rounding, no more; the GPU's own forward is
// compared with it in kernels/cuda/block_backend_cuda_test.cc.
TEST(LlamaForwardTest, Bf16ProductsRoundTheProductsInputs) {
  const Model model = MakeTinyModel("llama", true, false);
  const ModelSpec& spec = model.spec;
  const int64_t sequences = 2, seq_len = 11;
  absl::StatusOr<DecoderBlockWeights> block =
      LoadDecoderBlock(*model.checkpoint, spec, 0);
  ASSERT_TRUE(block.ok()) << block.status();
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> fp32(sequences * seq_len * spec.hidden_size);
  for (float& x : fp32) x = normal(rng);
  std::vector<float> bf16 = fp32;
  const LlamaForward full(spec, seq_len);
  const LlamaForward rounded(spec, seq_len, ProductPrecision::kBfloat16);
  EXPECT_EQ(rounded.precision(), ProductPrecision::kBfloat16);
  int seen = 0;
  int64_t unrounded = 0;
  const BlockInputObserver check = [&](BlockInput, const float* x,
                                       int64_t tokens, int64_t width) {
    ++seen;
    for (int64_t i = 0; i < tokens * width; ++i) {
      unrounded += Bf16ToFloat(FloatToBf16(x[i])) != x[i];
    }
    return true;
  };
  ASSERT_TRUE(
      rounded.ForwardBlock(*block, sequences, seq_len, bf16.data(), check)
          .ok());
  EXPECT_EQ(seen, 4);
  EXPECT_EQ(unrounded, 0);
  ASSERT_TRUE(full.ForwardBlock(*block, sequences, seq_len, fp32.data()).ok());
  double num = 0, den = 0;
  for (size_t i = 0; i < fp32.size(); ++i) {
    num += (double{bf16[i]} - fp32[i]) * (double{bf16[i]} - fp32[i]);
    den += double{fp32[i]} * fp32[i];
  }
  const double relative = std::sqrt(num / den);
  EXPECT_GT(relative, 1e-6);  // It does round ...
  EXPECT_LT(relative, 1e-2);  // ... by BF16's steps, 2^-9 relative.
}

// A .npy file of `descr` elements ('<f4', '<i4') and `rank` dimensions, as
// numpy writes it (version 1 header, C order).
template <typename T>
std::vector<T> ReadNpy(const std::string& path, const std::string& descr,
                       std::vector<int64_t>& shape) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)),
                    std::istreambuf_iterator<char>());
  if (bytes.size() < 10 || bytes.compare(0, 6, "\x93NUMPY") != 0) return {};
  const size_t header_len =
      static_cast<uint8_t>(bytes[8]) | static_cast<uint8_t>(bytes[9]) << 8;
  const std::string header = bytes.substr(10, header_len);
  if (header.find("'descr': '" + descr + "'") == std::string::npos ||
      header.find("'fortran_order': False") == std::string::npos) {
    return {};
  }
  const size_t open = header.find('(', header.find("'shape'"));
  const size_t close = header.find(')', open);
  shape.clear();
  for (absl::string_view dim : absl::StrSplit(
           header.substr(open + 1, close - open - 1), ',', absl::SkipEmpty())) {
    int64_t n = 0;
    if (absl::SimpleAtoi(absl::StripAsciiWhitespace(dim), &n))
      shape.push_back(n);
  }
  std::vector<T> values((bytes.size() - 10 - header_len) / sizeof(T));
  std::memcpy(values.data(), bytes.data() + 10 + header_len,
              values.size() * sizeof(T));
  return values;
}

// The data README's reference: transformers (eval mode, FP32) on the first
// 64 tokens of heldout_stories as one sequence from position 0. A correct
// forward pass matches to ~1e-5; the tolerance is 1e-4 of the largest logit.
TEST(LlamaForwardTest, LogitsMatchTransformersOnTheSharedModel) {
  const std::string data = SharedDataDir();
  const std::string model = data + "/llama-29m-books";
  const std::string tokens_path =
      model + "/reference/ref_tokens_stories_first64.npy";
  const std::string logits_path =
      model + "/reference/ref_logits_stories_first64.npy";
  if (data.empty() || !std::filesystem::exists(logits_path)) {
    GTEST_SKIP() << "the shared model's reference logits are absent";
  }
  std::vector<int64_t> token_shape, logit_shape;
  const std::vector<int32_t> tokens =
      ReadNpy<int32_t>(tokens_path, "<i4", token_shape);
  const std::vector<float> expected =
      ReadNpy<float>(logits_path, "<f4", logit_shape);
  ASSERT_EQ(token_shape, std::vector<int64_t>{64});
  ASSERT_EQ(logit_shape, (std::vector<int64_t>{64, 4096}));
  ASSERT_EQ(tokens.size(), 64u);
  ASSERT_EQ(expected.size(), 64u * 4096u);

  const ModelSpec spec = *LoadModelConfig(model);
  const auto checkpoint = *SafetensorsCheckpoint::Open(model);
  const LlamaForward forward(spec, 64);
  std::vector<float> hidden(64 * spec.hidden_size);
  ASSERT_TRUE(forward.Embed(*checkpoint, tokens, hidden.data()).ok());
  for (int layer = 0; layer < spec.num_layers; ++layer) {
    const absl::StatusOr<DecoderBlockWeights> block =
        LoadDecoderBlock(*checkpoint, spec, layer);
    ASSERT_TRUE(block.ok()) << block.status();
    ASSERT_TRUE(forward.ForwardBlock(*block, 1, 64, hidden.data()).ok());
  }
  const absl::StatusOr<OutputHeadWeights> head =
      LoadOutputHead(*checkpoint, spec);
  ASSERT_TRUE(head.ok()) << head.status();
  std::vector<float> logits(expected.size());
  ASSERT_TRUE(forward.Logits(*head, hidden.data(), 64, logits.data()).ok());
  double deviation = 0, largest = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    deviation = std::max(deviation, std::fabs(double{logits[i]} - expected[i]));
    largest = std::max(largest, std::fabs(double{expected[i]}));
  }
  EXPECT_LT(deviation / largest, 1e-4)
      << "max |ours - transformers| " << deviation << ", largest " << largest;
  std::printf(
      "logits vs transformers: max deviation %.3g of the largest %.3g "
      "(%.3g relative)\n",
      deviation, largest, deviation / largest);
}

}  // namespace
}  // namespace quant
