#include "quant/block_store.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>

#include "common/test_data.h"
#include "format/safetensors.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

constexpr int kGgufLinear = 5;
constexpr int kKeptLinear = 6;  // Left in floating point.

BlockResult RandomResult() {
  std::mt19937 rng(4);
  BlockResult r;
  for (int i = 0; i < kBlockLinears; ++i) {
    const int64_t rows = 8 + i, cols = 64;
    absl::StatusOr<QuantizedLinear> q;
    std::vector<float> w(rows * cols);
    std::normal_distribution<float> normal;
    for (float& x : w) x = normal(rng);
    LinearWeights& linear = BlockLinear(r.weights, i);
    linear.rows = rows, linear.cols = cols;
    r.reports[i].name = std::string(kBlockLinearNames[i]);
    if (i == kKeptLinear) {
      linear.weight = w;
      r.reports[i].kept_fp = "72 columns do not pack";
      continue;
    }
    if (i == kGgufLinear) {  // Solved on Q4_0's grid: rows of blocks.
      std::vector<double> h(cols * cols, 0.0);
      for (int64_t j = 0; j < cols; ++j) h[j * cols + j] = 1.0 + j;
      absl::StatusOr<GptqResult> solved = GptqQuantizeGguf(
          w.data(), rows, cols, h, GgmlType::kQ4_0, GptqOptions());
      q = std::move(solved->quantized);
    } else {
      q = RtnQuantize(w.data(), rows, cols, 3, 32, false);
    }
    linear.weight = q->Dequantize();
    if (i < 3) linear.bias.assign(rows, 0.5f * i);
    r.importance[i].assign(cols, 1.5f);
    r.reports[i].bits = 3;
    r.reports[i].group_size = 32;
    r.reports[i].proxy_loss = i == 0 ? std::nan("") : 0.25 * i;
    r.quantized[i] = *std::move(q);
  }
  r.weights.attn_norm.assign(64, 1.25f);
  r.weights.ffn_norm.assign(64, 0.75f);
  r.awq_ratios = {0.35, 0.5};
  r.seconds = 2.5;
  r.backend = "cpu";
  r.kernel = "OpenBLAS 0.3.21 Haswell, 16 threads";
  return r;
}

// `path` with its metadata entry `key` set to `value` (the tensors as
// they were): the header rewritten, the data after it unchanged.
void RewriteMetadata(const std::string& path, const std::string& key,
                     const std::string& value) {
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  uint64_t length = 0;
  std::memcpy(&length, bytes.data(), 8);
  nlohmann::json header = nlohmann::json::parse(bytes.substr(8, length));
  header["__metadata__"][key] = value;
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');
  const std::string data = bytes.substr(8 + length);
  length = text.size();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(&length), 8);
  out << text << data;
}

TEST(BlockStoreTest, BlockResultRoundTrips) {
  const std::string path =
      MakeTestTempDir("block_store") + "/block-0.safetensors";
  const BlockResult r = RandomResult();
  ASSERT_TRUE(SaveBlockResult(path, r).ok());
  const auto back = LoadBlockResult(path);
  ASSERT_TRUE(back.ok()) << back.status();
  for (int i = 0; i < kBlockLinears; ++i) {
    EXPECT_EQ(back->quantized[i].q, r.quantized[i].q);
    EXPECT_EQ(back->quantized[i].scales, r.quantized[i].scales);
    EXPECT_EQ(back->quantized[i].zeros, r.quantized[i].zeros);
    EXPECT_EQ(back->quantized[i].g_idx, r.quantized[i].g_idx);
    EXPECT_EQ(back->quantized[i].bits, r.quantized[i].bits);
    EXPECT_EQ(back->quantized[i].gguf_type, r.quantized[i].gguf_type);
    EXPECT_EQ(back->quantized[i].gguf_rows, r.quantized[i].gguf_rows);
    EXPECT_EQ(BlockLinear(back->weights, i).weight,
              BlockLinear(r.weights, i).weight);
    EXPECT_EQ(BlockLinear(back->weights, i).bias,
              BlockLinear(r.weights, i).bias);
    EXPECT_EQ(back->importance[i], r.importance[i]);
  }
  EXPECT_EQ(back->quantized[kGgufLinear].gguf_type, GgmlType::kQ4_0);
  EXPECT_EQ(back->quantized[kGgufLinear].gguf_rows.size(), 13u * 2 * 18);
  EXPECT_EQ(back->quantized[0].bits, 3);
  EXPECT_TRUE(std::isnan(back->reports[0].proxy_loss));
  EXPECT_EQ(back->reports[2].proxy_loss, 0.5);
  EXPECT_EQ(back->weights.ffn_norm, r.weights.ffn_norm);
  EXPECT_EQ(back->awq_ratios, r.awq_ratios);
  EXPECT_EQ(back->reports[kKeptLinear].kept_fp, "72 columns do not pack");
  EXPECT_EQ(back->quantized[kKeptLinear].rows, 0);
  EXPECT_EQ(BlockLinear(back->weights, kKeptLinear).rows, 14);
  EXPECT_EQ(back->kernel, r.kernel);
  EXPECT_EQ(back->backend, "cpu");
  EXPECT_EQ(*LoadBlockReport(path), BlockReportJson(r));
}

// A partial result keeps the linears solved so far; the rest stay as the
// reader's started result has them, and a full read refuses the file.
TEST(BlockStoreTest, PartialResultFillsOnlySolvedLinears) {
  const std::string path =
      MakeTestTempDir("block_store") + "/partial.safetensors";
  BlockResult r = RandomResult();
  const int pending[] = {3, 4};
  for (int i : pending) {
    r.quantized[i] = QuantizedLinear();
    r.importance[i].clear();
    ASSERT_FALSE(LinearSolved(r, i));
  }
  ASSERT_TRUE(SaveBlockResult(path, r).ok());
  EXPECT_TRUE(CheckPartialBlockResult(path).ok());
  const absl::Status full = CheckBlockResult(path);
  EXPECT_EQ(full.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(full.message().find("self_attn.o_proj is not solved yet"),
            std::string::npos)
      << full;
  EXPECT_FALSE(LoadBlockResult(path).ok());

  BlockResult started;  // As StartBlockResult leaves the FP block.
  for (int i = 0; i < kBlockLinears; ++i) {
    LinearWeights& linear = BlockLinear(started.weights, i);
    linear = BlockLinear(r.weights, i);
    linear.weight.assign(linear.rows * linear.cols, 9.0f);
  }
  ASSERT_TRUE(LoadSolvedLinears(path, started).ok());
  for (int i = 0; i < kBlockLinears; ++i) {
    const bool is_pending = i == 3 || i == 4;
    EXPECT_EQ(LinearSolved(started, i), !is_pending) << i;
    if (is_pending) {
      EXPECT_EQ(BlockLinear(started.weights, i).weight[0], 9.0f);
    } else {
      EXPECT_EQ(BlockLinear(started.weights, i).weight,
                BlockLinear(r.weights, i).weight)
          << i;
      EXPECT_EQ(started.quantized[i].q, r.quantized[i].q);
      EXPECT_EQ(started.importance[i], r.importance[i]);
    }
  }
  EXPECT_EQ(started.weights.attn_norm, r.weights.attn_norm);
  // A "pending" that is not true (a worker's upload may say anything) is a
  // linear to read, and this one is not there: an error, not a crash.
  nlohmann::json formats = nlohmann::json::parse(
      (*SafetensorsFile::Open(path))->metadata().at("formats"));
  formats[3] = {{"pending", "yes"}};
  RewriteMetadata(path, "formats", formats.dump());
  const absl::Status status = CheckPartialBlockResult(path);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("self_attn.o_proj"), std::string::npos)
      << status;
}

// A shard's statistics stored and read back merge to the very bits of the
// statistics merged in memory.
TEST(BlockStoreTest, StatisticsRoundTripExactly) {
  const std::string dir = MakeTestTempDir("block_store");
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  BlockStatistics stats;
  for (int input : {0, 3}) {
    const int64_t columns = input == 0 ? 13 : 29;
    std::vector<float> x(31 * columns);
    for (float& v : x) v = normal(rng);
    stats[input].emplace(columns);
    stats[input]->Add(x.data(), 31);
  }
  ASSERT_TRUE(SaveBlockStatistics(dir + "/s.safetensors", stats).ok());
  absl::StatusOr<BlockStatistics> back =
      LoadBlockStatistics(dir + "/s.safetensors");
  ASSERT_TRUE(back.ok()) << back.status();
  for (int input = 0; input < kBlockInputs; ++input) {
    ASSERT_EQ(back->at(input).has_value(), stats[input].has_value()) << input;
    if (!stats[input]) continue;
    EXPECT_EQ(back->at(input)->samples(), 31);
    EXPECT_EQ(back->at(input)->sum_xxt(), stats[input]->sum_xxt());
    EXPECT_EQ(back->at(input)->sum_abs(), stats[input]->sum_abs());
  }
  // Merged into statistics of other inputs: refused by name.
  BlockStatistics other;
  other[0].emplace(13);
  const absl::Status merged =
      MergeBlockStatisticsFile(dir + "/s.safetensors", other);
  EXPECT_EQ(merged.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(merged.message().find("other inputs"), std::string::npos) << merged;
  // A file that is not statistics says so.
  ASSERT_TRUE(SaveActivations(dir + "/a.safetensors", {1, 2}, 1, 1, 2).ok());
  const absl::StatusOr<BlockStatistics> wrong =
      LoadBlockStatistics(dir + "/a.safetensors");
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.status().message().find("samples"), std::string::npos)
      << wrong.status();
}

// The assembly reads a saved result a linear at a time: each linear as
// LoadBlockResult reads it, its rows decoded a chunk at a time equal to
// the whole dequantized weight.
TEST(BlockStoreTest, SavedResultReadsOneLinearAtATime) {
  const std::string path =
      MakeTestTempDir("block_store_saved") + "/block-0.safetensors";
  const BlockResult r = RandomResult();
  ASSERT_TRUE(SaveBlockResult(path, r).ok());
  const auto saved = SavedBlockResult::Open(path);
  ASSERT_TRUE(saved.ok()) << saved.status();
  EXPECT_EQ((*saved)->attn_norm(), r.weights.attn_norm);
  EXPECT_EQ((*saved)->ffn_norm(), r.weights.ffn_norm);
  EXPECT_EQ((*saved)->report(), BlockReportJson(r));
  for (int i = 0; i < kBlockLinears; ++i) {
    SCOPED_TRACE(kBlockLinearNames[i]);
    const auto linear = (*saved)->Linear(i);
    ASSERT_TRUE(linear.ok()) << linear.status();
    const LinearWeights& want = BlockLinear(r.weights, i);
    EXPECT_EQ(linear->weights.rows, want.rows);
    EXPECT_EQ(linear->weights.cols, want.cols);
    EXPECT_EQ(linear->weights.bias, want.bias);
    EXPECT_EQ(*(*saved)->Bias(i), want.bias);
    EXPECT_EQ(linear->importance, r.importance[i]);
    EXPECT_EQ(linear->report.kept_fp, r.reports[i].kept_fp);
    if (i == kKeptLinear) {
      EXPECT_EQ(linear->weights.weight, want.weight);
      continue;
    }
    EXPECT_TRUE(linear->weights.weight.empty());  // Not dequantized.
    EXPECT_EQ(linear->quantized.q, r.quantized[i].q);
    EXPECT_EQ(linear->quantized.gguf_rows, r.quantized[i].gguf_rows);
    // Rows 1..rows-1 in chunks of 3 (an uneven last chunk).
    const int64_t cols = want.cols;
    std::vector<float> rows((want.rows - 1) * cols);
    for (int64_t row = 1; row < want.rows; row += 3) {
      const int64_t count = std::min<int64_t>(3, want.rows - row);
      linear->quantized.DequantizeRows(row, count,
                                       rows.data() + (row - 1) * cols);
    }
    EXPECT_EQ(rows, std::vector<float>(want.weight.begin() + cols,
                                       want.weight.end()));
  }
}

TEST(BlockStoreTest, ActivationsRoundTripAndShapesAreChecked) {
  const std::string path =
      MakeTestTempDir("block_store_act") + "/activations-3.safetensors";
  std::vector<float> hidden(2 * 5 * 8);
  for (size_t i = 0; i < hidden.size(); ++i) hidden[i] = 0.1f * i - 3;
  std::string digest;
  ASSERT_TRUE(
      SaveActivations(path, hidden, 2, 5, 8, Durability::kScratch, &digest)
          .ok());
  EXPECT_EQ(*LoadActivations(path, 2, 5, 8), hidden);
  // Known without the file, as written (one thread or several).
  EXPECT_EQ(*ActivationsFileDigest(hidden, 2, 5, 8, 1), digest);
  uint64_t bytes = 0;
  EXPECT_EQ(*ActivationsFileDigest(hidden, 2, 5, 8, 3, &bytes), digest);
  EXPECT_EQ(bytes, std::filesystem::file_size(path));
  EXPECT_EQ(ActivationsFileDigest(hidden, 2, 5, 7, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
  const absl::Status wrong = LoadActivations(path, 2, 4, 8).status();
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.message().find("expected F32 [2, 4, 8]"), std::string::npos)
      << wrong;
}

TEST(BlockStoreTest, DamagedFilesAreErrors) {
  const std::string dir = MakeTestTempDir("block_store_bad");
  const std::string path = dir + "/block-0.safetensors";
  ASSERT_TRUE(SaveBlockResult(path, RandomResult()).ok());
  // Truncated.
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  {
    std::ofstream out(dir + "/short.safetensors", std::ios::binary);
    out << bytes.substr(0, bytes.size() - 100);
  }
  EXPECT_FALSE(LoadBlockResult(dir + "/short.safetensors").ok());
  // A result without its metadata.
  ASSERT_TRUE(SaveActivations(dir + "/act.safetensors", {1, 2}, 1, 1, 2).ok());
  const absl::Status no_meta =
      LoadBlockResult(dir + "/act.safetensors").status();
  EXPECT_EQ(no_meta.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(no_meta.message().find("metadata"), std::string::npos) << no_meta;
}

// A worker's upload may say anything in its metadata: each kind of lie is
// an InvalidArgument naming what is wrong, from the full reader, the check
// before commit and the report reader alike (never an exception).
TEST(BlockStoreTest, MetadataThatLiesIsRefused) {
  const std::string dir = MakeTestTempDir("block_store_lies");
  const BlockResult good = RandomResult();
  const std::string good_path = dir + "/good.safetensors";
  ASSERT_TRUE(SaveBlockResult(good_path, good).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> good_file =
      SafetensorsFile::Open(good_path);
  ASSERT_TRUE(good_file.ok()) << good_file.status();
  const nlohmann::json formats =
      nlohmann::json::parse((*good_file)->metadata().at("formats"));
  nlohmann::json wide_bits = formats, few_bits = formats;
  wide_bits[0]["bits"] = 100;
  few_bits[1]["bits"] = 2;  // Its levels are 3-bit.
  nlohmann::json linears_as_numbers = BlockReportJson(good);
  linears_as_numbers["linears"] = {1, 2, 3, 4, 5, 6, 7};
  nlohmann::json kept_as_number = BlockReportJson(good);
  kept_as_number["linears"][2]["kept_fp"] = 5;
  const struct {
    const char* key;
    std::string value;
    const char* named;
  } lies[] = {
      {"report", "1", "report metadata"},
      {"report", "[]", "report metadata"},
      {"report", linears_as_numbers.dump(), "report metadata"},
      {"report", kept_as_number.dump(), "malformed metadata"},
      {"report", "{\"linears\": ", "report"},
      {"formats", "{}", "formats metadata"},
      {"formats", wide_bits.dump(), "100-bit levels"},
      {"formats", few_bits.dump(), "of 2 bits"},
  };
  for (const auto& lie : lies) {
    const std::string path = dir + "/lie.safetensors";
    ASSERT_TRUE(SaveBlockResult(path, good).ok());
    RewriteMetadata(path, lie.key, lie.value);
    const absl::Status loaded = LoadBlockResult(path).status();
    EXPECT_EQ(loaded.code(), absl::StatusCode::kInvalidArgument)
        << lie.key << " = " << lie.value << ": " << loaded;
    EXPECT_NE(loaded.message().find(lie.named), std::string::npos) << loaded;
    EXPECT_EQ(CheckBlockResult(path).code(), absl::StatusCode::kInvalidArgument)
        << lie.value;
    if (std::string(lie.key) == "report" &&
        std::string(lie.named) == "report metadata") {
      EXPECT_EQ(LoadBlockReport(path).status().code(),
                absl::StatusCode::kInvalidArgument);
    }
  }
  // The untouched file passes every reader.
  EXPECT_TRUE(CheckBlockResult(good_path).ok());
  EXPECT_TRUE(LoadBlockReport(good_path).ok());
}

}  // namespace
}  // namespace quant
