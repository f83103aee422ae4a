#include "quant/gguf_head.h"

#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "gtest/gtest.h"
#include "kernels/cpu/quantize_rows.h"

namespace quant {
namespace {

// The rows the file holds are the type's encoding of the tensor, row by row.
TEST(GgufHeadTest, EncodedRowsAreTheTypesOwn) {
  const std::string dir = MakeTestTempDir("gguf_head");
  ASSERT_TRUE(WriteTinyLlama(dir + "/model", TinyLlamaOptions()).ok());
  auto model = SafetensorsCheckpoint::Open(dir + "/model");
  ASSERT_TRUE(model.ok());
  const std::map<std::string, GgmlType> types = {
      {"model.embed_tokens.weight", GgmlType::kQ4_K},
      {"lm_head.weight", GgmlType::kQ6_K},
      {"model.norm.weight", GgmlType::kF32}};
  const std::string path = GgufHeadPath(dir);
  EXPECT_EQ(path, dir + "/head.safetensors");
  ASSERT_TRUE(WriteGgufHead(**model, types, path).ok());
  auto head = SafetensorsFile::Open(path);
  ASSERT_TRUE(head.ok());
  ASSERT_EQ((*head)->tensors().size(), 3u);
  for (const auto& [name, type] : types) {
    const TensorView source = *(*model)->Get(name);
    const std::vector<float> values = *source.ToFloatVector();
    const int64_t cols = source.shape.back();
    const int64_t rows = source.num_elements() / cols;
    const uint64_t row_bytes = *GgmlRowBytes(type, cols);
    std::vector<uint8_t> want(rows * row_bytes);
    ASSERT_TRUE(
        QuantizeRows(type, values.data(), rows, cols, want.data(), 1).ok());
    const TensorView* got = (*head)->Find(name);
    ASSERT_NE(got, nullptr) << name;
    EXPECT_EQ(got->dtype, SafetensorsDType::kU8);
    ASSERT_EQ(got->nbytes, want.size()) << name;
    EXPECT_EQ(std::memcmp(got->data, want.data(), want.size()), 0) << name;
  }
  // A tensor the checkpoint lacks: NotFound naming it, nothing written.
  const std::string other = dir + "/other.safetensors";
  const absl::Status missing =
      WriteGgufHead(**model, {{"model.nope.weight", GgmlType::kF16}}, other);
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.message().find("model.nope.weight"),
            absl::string_view::npos);
  EXPECT_FALSE(SafetensorsFile::Open(other).ok());
}

// What a worker sends as a head is checked before it is committed.
TEST(GgufHeadTest, CheckRefusesHeadsThatAreNotTheTypesEncoding) {
  const std::string dir = MakeTestTempDir("gguf_head");
  ASSERT_TRUE(WriteTinyLlama(dir + "/model", TinyLlamaOptions()).ok());
  auto model = SafetensorsCheckpoint::Open(dir + "/model");
  ASSERT_TRUE(model.ok());
  const std::map<std::string, GgmlType> types = {
      {"model.embed_tokens.weight", GgmlType::kQ4_K},
      {"model.norm.weight", GgmlType::kF32}};
  const std::string path = dir + "/head.safetensors";
  ASSERT_TRUE(WriteGgufHead(**model, types, path).ok());
  EXPECT_TRUE(CheckGgufHead(path, **model, types).ok());

  // Another type's rows, a tensor too many, one missing, not safetensors.
  std::map<std::string, GgmlType> other = types;
  other["model.embed_tokens.weight"] = GgmlType::kQ8_0;
  absl::Status status = CheckGgufHead(path, **model, other);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("model.embed_tokens.weight holds"),
            absl::string_view::npos)
      << status;
  status =
      CheckGgufHead(path, **model, {{"model.norm.weight", GgmlType::kF32}});
  EXPECT_NE(status.message().find("is not a head tensor"),
            absl::string_view::npos)
      << status;
  other = types;
  other["lm_head.weight"] = GgmlType::kQ6_K;
  status = CheckGgufHead(path, **model, other);
  EXPECT_NE(status.message().find("lm_head.weight is missing"),
            absl::string_view::npos)
      << status;
  const std::string junk = dir + "/junk.safetensors";
  FILE* f = std::fopen(junk.c_str(), "wb");
  std::fputs("not safetensors", f);
  std::fclose(f);
  EXPECT_FALSE(CheckGgufHead(junk, **model, types).ok());
}

}  // namespace
}  // namespace quant
