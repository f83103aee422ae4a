#include "quant/gguf_pack.h"

#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/quantize_rows.h"

namespace quant {
namespace {

std::vector<float> RandomWeights(int64_t rows, int64_t cols) {
  std::mt19937 rng(2);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<float> w(rows * cols);
  for (float& x : w) x = normal(rng);
  return w;
}

TEST(GgufPackTest, SymmetricGroupsOf32AreExactlyQ4_0Q5_0Q8_0) {
  const int64_t rows = 5, cols = 96;
  const std::vector<float> w = RandomWeights(rows, cols);
  for (const auto& [type, bits] :
       {std::pair{GgmlType::kQ4_0, 4}, std::pair{GgmlType::kQ5_0, 5},
        std::pair{GgmlType::kQ8_0, 8}}) {
    const auto q = RtnQuantize(w.data(), rows, cols, bits, 32, /*sym=*/true);
    ASSERT_TRUE(q.ok()) << q.status();
    ASSERT_TRUE(FitsGgufTypeExactly(*q, type)) << GgmlTypeName(type);
    const auto packed = PackGgufRows(*q, type);
    ASSERT_TRUE(packed.ok()) << packed.status();
    ASSERT_EQ(packed->size(), rows * *GgmlRowBytes(type, cols));
    // llama.cpp's dequantization of the blocks gives the solution exactly.
    std::vector<float> back(rows * cols);
    ASSERT_TRUE(
        DequantizeRows(type, packed->data(), rows, cols, back.data(), 1).ok());
    EXPECT_EQ(back, q->Dequantize()) << GgmlTypeName(type);
  }
}

TEST(GgufPackTest, OtherFormatsAreRefused) {
  const std::vector<float> w = RandomWeights(4, 64);
  const auto asym = RtnQuantize(w.data(), 4, 64, 4, 32, /*sym=*/false);
  EXPECT_FALSE(FitsGgufTypeExactly(*asym, GgmlType::kQ4_0));
  EXPECT_EQ(PackGgufRows(*asym, GgmlType::kQ4_0).status().code(),
            absl::StatusCode::kInvalidArgument);
  const auto wide = RtnQuantize(w.data(), 4, 64, 4, 64, /*sym=*/true);
  EXPECT_FALSE(FitsGgufTypeExactly(*wide, GgmlType::kQ4_0));
  const auto sym = RtnQuantize(w.data(), 4, 64, 4, 32, /*sym=*/true);
  EXPECT_FALSE(FitsGgufTypeExactly(*sym, GgmlType::kQ8_0));
  EXPECT_FALSE(FitsGgufTypeExactly(*sym, GgmlType::kQ4_K));
}

}  // namespace
}  // namespace quant
