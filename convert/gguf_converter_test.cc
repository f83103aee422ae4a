#include "convert/gguf_converter.h"

#include <sys/stat.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/file.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/ggml_blocks.h"
#include "format/gguf.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

class GgufConverterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    model_dir_ = new std::string(MakeTestTempDir("converter") + "/tiny");
    TinyLlamaOptions options;
    ASSERT_TRUE(WriteTinyLlama(*model_dir_, options).ok());
  }
  static void TearDownTestSuite() { delete model_dir_; }

  std::unique_ptr<GgufReader> Convert(const std::string& mix) {
    ConvertOptions options;
    options.model_dir = *model_dir_;
    options.output_path = MakeTestTempDir("converter") + "/out.gguf";
    options.mix = *ParseQuantMix(mix);
    int progress_calls = 0;
    options.on_progress = [&](const ConvertProgress& p) {
      ++progress_calls;
      EXPECT_EQ(p.tensor_index, progress_calls);
      EXPECT_LE(p.input_bytes_done, p.input_bytes_total);
    };
    auto result = ConvertToGguf(options);
    EXPECT_TRUE(result.ok()) << result.status();
    if (!result.ok()) return nullptr;
    EXPECT_EQ(progress_calls, result->tensor_count);
    auto reader = GgufReader::Open(options.output_path);
    EXPECT_TRUE(reader.ok()) << reader.status();
    return reader.ok() ? *std::move(reader) : nullptr;
  }

  static std::vector<float> SourceRows(const std::string& hf_name) {
    auto checkpoint = SafetensorsCheckpoint::Open(*model_dir_);
    auto view = (*checkpoint)->Get(hf_name);
    return *view->ToFloatVector();
  }

  static std::string* model_dir_;
};

std::string* GgufConverterTest::model_dir_ = nullptr;

uint64_t MetaUint(const GgufReader& gguf, const std::string& key) {
  const GgufValue* value = gguf.Find(key);
  EXPECT_NE(value, nullptr) << key;
  return value == nullptr ? 0 : *value->AsUint();
}

TEST_F(GgufConverterTest, MetadataDescribesTheModel) {
  auto gguf = Convert("F16");
  ASSERT_NE(gguf, nullptr);
  EXPECT_EQ(*gguf->Find("general.architecture")->AsString(), "llama");
  EXPECT_EQ(MetaUint(*gguf, "general.file_type"), 1u);
  EXPECT_EQ(MetaUint(*gguf, "general.quantization_version"), 2u);
  EXPECT_EQ(MetaUint(*gguf, "llama.block_count"), 2u);
  EXPECT_EQ(MetaUint(*gguf, "llama.embedding_length"), 256u);
  EXPECT_EQ(MetaUint(*gguf, "llama.feed_forward_length"), 768u);
  EXPECT_EQ(MetaUint(*gguf, "llama.attention.head_count"), 4u);
  EXPECT_EQ(MetaUint(*gguf, "llama.attention.head_count_kv"), 2u);
  EXPECT_EQ(MetaUint(*gguf, "llama.rope.dimension_count"), 64u);
  EXPECT_EQ(MetaUint(*gguf, "llama.context_length"), 2048u);
  EXPECT_FLOAT_EQ(*gguf->Find("llama.rope.freq_base")->AsFloat(), 10000.0f);
  EXPECT_EQ(*gguf->Find("tokenizer.ggml.model")->AsString(), "gpt2");
  const uint64_t vocab = MetaUint(*gguf, "llama.vocab_size");
  EXPECT_EQ(gguf->Find("tokenizer.ggml.tokens")->array().size(), vocab);
  EXPECT_EQ(gguf->Find("tokenizer.ggml.token_type")->array().size(), vocab);
  // 1 embedding + 9 per block + final norm + output.
  EXPECT_EQ(gguf->tensors().size(), 1u + 2u * 9u + 2u);
  const GgufTensorInfo* embd = gguf->FindTensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->dims, (std::vector<uint64_t>{256, vocab}));
  EXPECT_EQ(gguf->FindTensor("blk.1.attn_norm.weight")->type, GgmlType::kF32);
  EXPECT_EQ(gguf->FindTensor("blk.1.ffn_down.weight")->dims,
            (std::vector<uint64_t>{768, 256}));
}

// The GGUF row for head h, pair index i, half j is the HF row for head h,
// half j, index i: HF keeps the two rotary halves apart, llama.cpp
// interleaves them.
TEST_F(GgufConverterTest, QueryAndKeyRowsArePermutedForLlamaRope) {
  auto gguf = Convert("F32");
  ASSERT_NE(gguf, nullptr);
  const int64_t cols = 256, head_dim = 64;
  for (const auto& [hf, gg] : std::vector<std::pair<std::string, std::string>>{
           {"model.layers.0.self_attn.q_proj.weight", "blk.0.attn_q.weight"},
           {"model.layers.1.self_attn.k_proj.weight", "blk.1.attn_k.weight"},
           {"model.layers.1.self_attn.v_proj.weight", "blk.1.attn_v.weight"}}) {
    const std::vector<float> source = SourceRows(hf);
    const GgufTensorInfo* info = gguf->FindTensor(gg);
    ASSERT_NE(info, nullptr);
    const float* written =
        reinterpret_cast<const float*>(gguf->TensorData(*info));
    const int64_t rows = static_cast<int64_t>(source.size()) / cols;
    const bool permuted = gg.find("attn_v") == std::string::npos;
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t h = row / head_dim, i = (row % head_dim) / 2, j = row % 2;
      const int64_t from =
          permuted ? h * head_dim + j * (head_dim / 2) + i : row;
      ASSERT_EQ(std::memcmp(written + row * cols, source.data() + from * cols,
                            cols * sizeof(float)),
                0)
          << gg << " row " << row;
    }
  }
}

// Quantized tensors are byte-identical to the scalar reference quantizer
// applied to the (permuted) source rows.
TEST_F(GgufConverterTest, QuantizedTensorsMatchTheReferenceQuantizer) {
  for (const std::string mix : {"Q8_0", "Q4_0", "BF16", "Q4_K_M", "Q2_K"}) {
    auto gguf = Convert(mix);
    ASSERT_NE(gguf, nullptr);
    const GgmlType base = ParseQuantMix(mix)->base;
    EXPECT_EQ(gguf->FindTensor("blk.0.ffn_up.weight")->type, base);
    EXPECT_EQ(gguf->FindTensor("output_norm.weight")->type, GgmlType::kF32);
    EXPECT_EQ(gguf->FindTensor("output.weight")->type,
              mix == "Q8_0" || mix == "BF16" ? base : GgmlType::kQ6_K);
    EXPECT_EQ(MetaUint(*gguf, "general.file_type"),
              ParseQuantMix(mix)->file_type);
    for (const auto& [hf, gg] :
         std::vector<std::pair<std::string, std::string>>{
             {"model.layers.0.mlp.up_proj.weight", "blk.0.ffn_up.weight"},
             {"model.layers.0.mlp.down_proj.weight", "blk.0.ffn_down.weight"},
             {"lm_head.weight", "output.weight"},
             {"model.embed_tokens.weight", "token_embd.weight"}}) {
      const std::vector<float> source = SourceRows(hf);
      const GgufTensorInfo* info = gguf->FindTensor(gg);
      std::vector<uint8_t> expected(info->nbytes);
      ASSERT_TRUE(QuantizeRowReference(info->type, source.data(),
                                       static_cast<int64_t>(source.size()),
                                       expected.data())
                      .ok());
      EXPECT_EQ(std::memcmp(gguf->TensorData(*info), expected.data(),
                            expected.size()),
                0)
          << gg << " as " << GgmlTypeName(info->type) << " in " << mix;
    }
  }
}

// A mix whose type has no quantizer fails before anything is published.
TEST_F(GgufConverterTest, TypesWithoutAQuantizerFailCleanly) {
  ConvertOptions options;
  options.model_dir = *model_dir_;
  options.output_path = MakeTestTempDir("converter") + "/out.gguf";
  options.mix = {"Q8_K", 99, GgmlType::kQ8_K};
  const auto result = ConvertToGguf(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(result.status().message().find("q8_K"), std::string::npos);
  EXPECT_FALSE(Exists(options.output_path));
}

TEST_F(GgufConverterTest, BadInputFailsCleanlyAndKeepsTheOldOutput) {
  const std::string dir = MakeTestTempDir("converter");
  const std::string out = dir + "/out.gguf";
  ASSERT_TRUE(WriteFileAtomically(out, "previous output").ok());
  ConvertOptions options;
  options.output_path = out;

  options.model_dir = dir + "/no-such-model";
  auto result = ConvertToGguf(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(result.status().message().find("config.json"), std::string::npos);

  // A model whose second shard is cut short.
  const std::string broken = dir + "/broken";
  TinyLlamaOptions tiny;
  ASSERT_TRUE(WriteTinyLlama(broken, tiny).ok());
  const std::string shard = broken + "/model-00002-of-00002.safetensors";
  auto bytes = ReadFileToString(shard);
  ASSERT_TRUE(bytes.ok());
  ASSERT_TRUE(
      WriteFileAtomically(shard, bytes->substr(0, bytes->size() / 2)).ok());
  options.model_dir = broken;
  result = ConvertToGguf(options);
  EXPECT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("model-00002-of-00002"),
            std::string::npos)
      << result.status();

  // A config that lies about the shapes.
  const std::string liar = dir + "/liar";
  ASSERT_TRUE(WriteTinyLlama(liar, tiny).ok());
  auto config = ReadFileToString(liar + "/config.json");
  std::string edited = *config;
  const std::string from = "\"intermediate_size\": 768";
  ASSERT_NE(edited.find(from), std::string::npos);
  edited.replace(edited.find(from), from.size(), "\"intermediate_size\": 512");
  ASSERT_TRUE(WriteFileAtomically(liar + "/config.json", edited).ok());
  options.model_dir = liar;
  result = ConvertToGguf(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("intermediate_size"),
            std::string::npos)
      << result.status();

  EXPECT_EQ(*ReadFileToString(out), "previous output");
}

// A replacement produced a chunk of rows at a time must be the tensor's
// shape (a worker's block result is checked against the model here, before
// any row is decoded into the converter's buffers); one that is writes
// what it produces.
TEST_F(GgufConverterTest, RowReplacementsMustHaveTheTensorsShape) {
  const std::string name = "model.layers.0.mlp.down_proj.weight";
  const std::vector<float> source = SourceRows(name);
  auto shape = (*SafetensorsCheckpoint::Open(*model_dir_))->Shape(name);
  ASSERT_TRUE(shape.ok());
  const int64_t rows = (*shape)[0], cols = (*shape)[1];
  for (const int64_t wrong_cols : {cols, cols + 32}) {
    ConvertOptions options;
    options.model_dir = *model_dir_;
    options.output_path = MakeTestTempDir("converter") + "/rows.gguf";
    options.mix = *ParseQuantMix("F32");
    options.tensor_source = [&](const std::string& hf_name)
        -> absl::StatusOr<std::optional<TensorOverride>> {
      if (hf_name != name) return std::nullopt;
      TensorOverride tensor;
      tensor.rows_count = rows;
      tensor.rows_width = wrong_cols;
      tensor.rows = [&](int64_t first, int64_t count, float* out) {
        for (int64_t i = 0; i < count * cols; ++i) {
          out[i] = 2 * source[first * cols + i];
        }
        return absl::OkStatus();
      };
      return tensor;
    };
    const auto result = ConvertToGguf(options);
    if (wrong_cols != cols) {
      EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_NE(result.status().message().find(name), std::string::npos)
          << result.status();
      continue;
    }
    ASSERT_TRUE(result.ok()) << result.status();
    auto reader = GgufReader::Open(options.output_path);
    ASSERT_TRUE(reader.ok()) << reader.status();
    const GgufTensorInfo* info = (*reader)->FindTensor("blk.0.ffn_down.weight");
    ASSERT_NE(info, nullptr);
    const float* written =
        reinterpret_cast<const float*>((*reader)->TensorData(*info));
    for (int64_t i = 0; i < rows * cols; i += 97) {
      ASSERT_EQ(written[i], 2 * source[i]) << i;
    }
  }
}

// Q/K biases must move exactly like the rows of their weights. The source of
// each GGUF row is found by its contents, not by the permutation formula.
TEST(GgufConverterModelTest, BiasesFollowTheirPermutedRows) {
  const std::string dir = MakeTestTempDir("converter");
  TinyLlamaOptions tiny;
  tiny.num_layers = 1;
  tiny.attention_bias = true;
  ASSERT_TRUE(WriteTinyLlama(dir + "/model", tiny).ok());
  ConvertOptions options;
  options.model_dir = dir + "/model";
  options.output_path = dir + "/out.gguf";
  options.mix = *ParseQuantMix("F32");
  auto result = ConvertToGguf(options);
  ASSERT_TRUE(result.ok()) << result.status();
  auto gguf = GgufReader::Open(options.output_path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  auto checkpoint = SafetensorsCheckpoint::Open(options.model_dir);
  ASSERT_TRUE(checkpoint.ok());
  const int64_t cols = tiny.hidden_size;
  for (const std::string proj : {"q", "k", "v", "output"}) {
    const std::string hf = std::string("model.layers.0.self_attn.") +
                           (proj == "output" ? "o" : proj) + "_proj.";
    const std::string gg = "blk.0.attn_" + proj + ".";
    const std::vector<float> weight =
        *(*checkpoint)->Get(hf + "weight")->ToFloatVector();
    const std::vector<float> bias =
        *(*checkpoint)->Get(hf + "bias")->ToFloatVector();
    const GgufTensorInfo* w = (*gguf)->FindTensor(gg + "weight");
    const GgufTensorInfo* b = (*gguf)->FindTensor(gg + "bias");
    ASSERT_NE(w, nullptr) << gg;
    ASSERT_NE(b, nullptr) << gg;
    EXPECT_EQ(b->type, GgmlType::kF32);
    const float* w_out =
        reinterpret_cast<const float*>((*gguf)->TensorData(*w));
    const float* b_out =
        reinterpret_cast<const float*>((*gguf)->TensorData(*b));
    const int64_t rows = static_cast<int64_t>(bias.size());
    int64_t moved = 0;
    for (int64_t row = 0; row < rows; ++row) {
      int64_t from = -1;
      for (int64_t candidate = 0; candidate < rows && from < 0; ++candidate) {
        if (std::memcmp(w_out + row * cols, weight.data() + candidate * cols,
                        cols * sizeof(float)) == 0) {
          from = candidate;
        }
      }
      ASSERT_GE(from, 0) << gg << " row " << row << " is no source row";
      EXPECT_EQ(b_out[row], bias[from]) << gg << " row " << row;
      moved += from != row;
    }
    // Q and K are permuted for llama.cpp's rope; V and O are not.
    EXPECT_EQ(moved > 0, proj == "q" || proj == "k") << gg;
  }
}

// A failure after the output has been started (a value Q8_0 cannot hold, in
// the last tensor) leaves neither the output nor a temporary file.
TEST(GgufConverterModelTest, FailureMidStreamLeavesNoFiles) {
  const std::string dir = MakeTestTempDir("converter");
  TinyLlamaOptions tiny;
  tiny.num_layers = 1;
  tiny.num_shards = 1;
  ASSERT_TRUE(WriteTinyLlama(dir + "/model", tiny).ok());
  const std::string shard = dir + "/model/model.safetensors";
  std::string bytes = *ReadFileToString(shard);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), sizeof(header_size));
  const size_t at = bytes.find("\"lm_head.weight\"");
  ASSERT_NE(at, std::string::npos);
  const size_t offsets = bytes.find("data_offsets", at);
  const uint64_t begin =
      std::stoull(bytes.substr(bytes.find('[', offsets) + 1));
  const uint16_t bf16_inf = 0x7f80;
  std::memcpy(&bytes[8 + header_size + begin + 2 * 1000], &bf16_inf, 2);
  ASSERT_TRUE(WriteFileAtomically(shard, bytes).ok());

  ConvertOptions options;
  options.model_dir = dir + "/model";
  options.output_path = dir + "/out.gguf";
  options.mix = *ParseQuantMix("Q8_0");
  int written = 0;
  options.on_progress = [&](const ConvertProgress&) { ++written; };
  const auto result = ConvertToGguf(options);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(result.status().message().find("inf"), std::string::npos)
      << result.status();
  EXPECT_GT(written, 5) << "the failure must come after tensors were written";
  std::vector<std::string> left;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    left.push_back(entry.path().filename().string());
  }
  EXPECT_EQ(left, std::vector<std::string>{"model"});
}

// Llama 3.1 rope scaling becomes llama.cpp's rope_freqs.weight: factor 1 for
// the high frequencies, `factor` for the low ones, rising in between.
TEST(GgufConverterModelTest, Llama3RopeScalingWritesRopeFreqs) {
  const std::string dir = MakeTestTempDir("converter");
  TinyLlamaOptions tiny;
  tiny.num_layers = 1;
  ASSERT_TRUE(WriteTinyLlama(dir + "/model", tiny).ok());
  std::string config = *ReadFileToString(dir + "/model/config.json");
  config.insert(
      config.find('{') + 1,
      "\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, "
      "\"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0, "
      "\"original_max_position_embeddings\": 1024},");
  ASSERT_TRUE(WriteFileAtomically(dir + "/model/config.json", config).ok());
  ConvertOptions options;
  options.model_dir = dir + "/model";
  options.output_path = dir + "/out.gguf";
  int64_t reported = 0;
  options.on_progress = [&](const ConvertProgress& p) {
    reported = p.tensor_index;
    EXPECT_EQ(p.tensor_count, 13);
  };
  auto result = ConvertToGguf(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tensor_count, 13);  // 12 + rope_freqs.
  EXPECT_EQ(reported, 13);
  auto gguf = GgufReader::Open(options.output_path);
  ASSERT_TRUE(gguf.ok());
  const GgufTensorInfo* freqs = (*gguf)->FindTensor("rope_freqs.weight");
  ASSERT_NE(freqs, nullptr);
  EXPECT_EQ(freqs->type, GgmlType::kF32);
  ASSERT_EQ(freqs->dims, std::vector<uint64_t>{32});  // head_dim / 2.
  const float* f = reinterpret_cast<const float*>((*gguf)->TensorData(*freqs));
  EXPECT_EQ(f[0], 1.0f);
  EXPECT_EQ(f[31], 8.0f);
  for (int i = 1; i < 32; ++i) EXPECT_GE(f[i], f[i - 1]) << i;
}

// Qwen2: its own GGUF architecture, q/k/v biases kept as they are (NeoX rope
// needs no permutation), and no output.weight when embeddings are tied.
TEST(GgufConverterModelTest, Qwen2WithTiedEmbeddings) {
  const std::string dir = MakeTestTempDir("converter");
  TinyLlamaOptions tiny;
  tiny.num_layers = 1;
  tiny.architecture = "qwen2";
  tiny.tie_word_embeddings = true;
  ASSERT_TRUE(WriteTinyLlama(dir + "/model", tiny).ok());
  ConvertOptions options;
  options.model_dir = dir + "/model";
  options.output_path = dir + "/out.gguf";
  options.mix = *ParseQuantMix("F32");
  auto result = ConvertToGguf(options);
  ASSERT_TRUE(result.ok()) << result.status();
  auto gguf = GgufReader::Open(options.output_path);
  ASSERT_TRUE(gguf.ok());
  EXPECT_EQ(*(*gguf)->Find("general.architecture")->AsString(), "qwen2");
  EXPECT_EQ(MetaUint(**gguf, "qwen2.block_count"), 1u);
  EXPECT_EQ((*gguf)->Find("llama.block_count"), nullptr);
  EXPECT_EQ((*gguf)->FindTensor("output.weight"), nullptr);
  EXPECT_EQ((*gguf)->FindTensor("blk.0.attn_output.bias"), nullptr);
  auto checkpoint = SafetensorsCheckpoint::Open(options.model_dir);
  for (const std::string proj : {"q", "k", "v"}) {
    const std::string hf = "model.layers.0.self_attn." + proj + "_proj.";
    const std::string gg = "blk.0.attn_" + proj + ".";
    for (const std::string part : {"weight", "bias"}) {
      const std::vector<float> source =
          *(*checkpoint)->Get(hf + part)->ToFloatVector();
      const GgufTensorInfo* info = (*gguf)->FindTensor(gg + part);
      ASSERT_NE(info, nullptr) << gg + part;
      ASSERT_EQ(info->nbytes, source.size() * sizeof(float));
      EXPECT_EQ(
          std::memcmp((*gguf)->TensorData(*info), source.data(), info->nbytes),
          0)
          << gg + part << " must not be permuted for qwen2";
    }
  }
}

TEST(GgufConverterRealModelTest, SharedLlamaConvertsWithItsTokenizer) {
  const std::string data = SharedDataDir();
  if (data.empty()) GTEST_SKIP() << "../shared/data is absent";
  ConvertOptions options;
  options.model_dir = data + "/llama-29m-books";
  options.output_path = MakeTestTempDir("converter") + "/books-q8_0.gguf";
  options.mix = *ParseQuantMix("Q8_0");
  auto result = ConvertToGguf(options);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tensor_count, 75);
  auto gguf = GgufReader::Open(options.output_path);
  ASSERT_TRUE(gguf.ok()) << gguf.status();
  EXPECT_EQ(MetaUint(**gguf, "llama.block_count"), 8u);
  EXPECT_EQ(MetaUint(**gguf, "llama.attention.head_count_kv"), 4u);
  EXPECT_EQ(MetaUint(**gguf, "llama.vocab_size"), 4096u);
  EXPECT_EQ(*(*gguf)->Find("tokenizer.ggml.model")->AsString(), "llama");
  EXPECT_EQ(MetaUint(**gguf, "tokenizer.ggml.bos_token_id"), 1u);
  EXPECT_EQ((*gguf)->Find("tokenizer.ggml.scores")->array().size(), 4096u);
  EXPECT_EQ((*gguf)->FindTensor("output.weight")->type, GgmlType::kQ8_0);
}

}  // namespace
}  // namespace quant
