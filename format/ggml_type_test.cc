#include "format/ggml_type.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;

// The traits are usable in constant expressions (ggml_blocks.h relies on it).
static_assert(GetGgmlTypeTraits(GgmlType::kQ4_K).type_size == 144, "");
static_assert(FindGgmlType(4) == nullptr, "");

struct Expected {
  uint32_t id;
  const char* name;
  int64_t block_size;
  int64_t type_size;
};

// From llama.cpp's ggml.h enum and ggml.c type_traits.
constexpr Expected kExpected[] = {
    {0, "f32", 1, 4},       {1, "f16", 1, 2},       {2, "q4_0", 32, 18},
    {3, "q4_1", 32, 20},    {6, "q5_0", 32, 22},    {7, "q5_1", 32, 24},
    {8, "q8_0", 32, 34},    {9, "q8_1", 32, 36},    {10, "q2_K", 256, 84},
    {11, "q3_K", 256, 110}, {12, "q4_K", 256, 144}, {13, "q5_K", 256, 176},
    {14, "q6_K", 256, 210}, {15, "q8_K", 256, 292}, {24, "i8", 1, 1},
    {25, "i16", 1, 2},      {26, "i32", 1, 4},      {27, "i64", 1, 8},
    {28, "f64", 1, 8},      {30, "bf16", 1, 2},
};

TEST(GgmlTypeTest, TraitsMatchLlamaCpp) {
  for (const Expected& e : kExpected) {
    const GgmlTypeTraits* traits = FindGgmlType(e.id);
    ASSERT_NE(traits, nullptr) << e.id;
    EXPECT_EQ(static_cast<uint32_t>(traits->type), e.id);
    EXPECT_STREQ(traits->name, e.name);
    EXPECT_EQ(traits->block_size, e.block_size) << e.name;
    EXPECT_EQ(traits->type_size, e.type_size) << e.name;
    EXPECT_EQ(&GetGgmlTypeTraits(traits->type), traits);
    EXPECT_EQ(GgmlTypeName(traits->type), e.name);
  }
  EXPECT_EQ(sizeof(kAllGgmlTypes) / sizeof(kAllGgmlTypes[0]),
            sizeof(kExpected) / sizeof(kExpected[0]));
}

TEST(GgmlTypeTest, UnknownIdsAreNull) {
  // 4 and 5 were Q4_2 / Q4_3 (removed), 16..23 are i-quants, 29 is IQ1_M,
  // 31+ are later or removed types this project does not size.
  for (uint32_t id : {4u, 5u, 16u, 23u, 29u, 31u, 39u, 1000u, 0xffffffffu}) {
    EXPECT_EQ(FindGgmlType(id), nullptr) << id;
  }
}

TEST(GgmlTypeTest, ParseIsCaseInsensitive) {
  EXPECT_EQ(*ParseGgmlType("Q4_0"), GgmlType::kQ4_0);
  EXPECT_EQ(*ParseGgmlType("q8_0"), GgmlType::kQ8_0);
  EXPECT_EQ(*ParseGgmlType("F16"), GgmlType::kF16);
  EXPECT_EQ(*ParseGgmlType("bf16"), GgmlType::kBF16);
  EXPECT_EQ(*ParseGgmlType("BF16"), GgmlType::kBF16);
  EXPECT_EQ(*ParseGgmlType("Q4_K"), GgmlType::kQ4_K);
  EXPECT_EQ(*ParseGgmlType("q4_k"), GgmlType::kQ4_K);
  EXPECT_EQ(*ParseGgmlType("q6_K"), GgmlType::kQ6_K);
  for (const GgmlTypeTraits& traits : kAllGgmlTypes) {
    const absl::StatusOr<GgmlType> parsed = ParseGgmlType(traits.name);
    ASSERT_TRUE(parsed.ok()) << traits.name;
    EXPECT_EQ(*parsed, traits.type);
  }
}

TEST(GgmlTypeTest, ParseRejectsUnknownNames) {
  for (const char* name : {"q4_2", "", "q4", "Q4_K_M", "f32 ", "iq2_xxs"}) {
    const absl::StatusOr<GgmlType> parsed = ParseGgmlType(name);
    ASSERT_FALSE(parsed.ok()) << name;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(
        std::string(parsed.status().message()),
        HasSubstr(std::string("unknown GGML tensor type '") + name + "'"));
  }
}

TEST(GgmlTypeTest, RowBytes) {
  EXPECT_EQ(*GgmlRowBytes(GgmlType::kF32, 3), 12u);
  EXPECT_EQ(*GgmlRowBytes(GgmlType::kBF16, 5), 10u);
  EXPECT_EQ(*GgmlRowBytes(GgmlType::kQ4_0, 64), 36u);
  EXPECT_EQ(*GgmlRowBytes(GgmlType::kQ8_0, 4096), 128u * 34u);
  EXPECT_EQ(*GgmlRowBytes(GgmlType::kQ6_K, 512), 420u);
  EXPECT_EQ(*GgmlRowBytes(GgmlType::kQ4_K, 0), 0u);
  // The largest row that fits: 2^63 - 1 bytes of i8.
  EXPECT_EQ(*GgmlRowBytes(GgmlType::kI8, std::numeric_limits<int64_t>::max()),
            static_cast<uint64_t>(std::numeric_limits<int64_t>::max()));
}

TEST(GgmlTypeTest, RowBytesErrors) {
  const absl::StatusOr<uint64_t> partial = GgmlRowBytes(GgmlType::kQ8_0, 33);
  ASSERT_FALSE(partial.ok());
  EXPECT_EQ(partial.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(
      std::string(partial.status().message()),
      HasSubstr(
          "row of 33 elements is not a multiple of the q8_0 block size 32"));

  const absl::StatusOr<uint64_t> k_quant = GgmlRowBytes(GgmlType::kQ4_K, 4000);
  ASSERT_FALSE(k_quant.ok());
  EXPECT_THAT(std::string(k_quant.status().message()),
              HasSubstr("q4_K block size 256"));

  const absl::StatusOr<uint64_t> negative = GgmlRowBytes(GgmlType::kF32, -4);
  ASSERT_FALSE(negative.ok());
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(negative.status().message()),
              HasSubstr("row of -4 elements: the count must not be negative"));

  const absl::StatusOr<uint64_t> overflow =
      GgmlRowBytes(GgmlType::kF64, std::numeric_limits<int64_t>::max());
  ASSERT_FALSE(overflow.ok());
  EXPECT_EQ(overflow.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(overflow.status().message()),
              HasSubstr("overflows 64 bits"));
}

TEST(GgmlTypeDeathTest, GetTraitsOfANonEnumeratorAborts) {
  EXPECT_DEATH(GetGgmlTypeTraits(static_cast<GgmlType>(4)),
               "4 is not a GgmlType enumerator");
}

}  // namespace
}  // namespace quant
