#include "quant/packing.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/test_data.h"
#include "format/half.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;
using ::testing::Not;

#define ASSERT_OK(expr)                                       \
  do {                                                        \
    const absl::Status assert_ok_status_ = (expr);            \
    ASSERT_TRUE(assert_ok_status_.ok()) << assert_ok_status_; \
  } while (0)

int32_t Word(uint32_t bits) { return static_cast<int32_t>(bits); }

// Levels and zero points uniform over their range (zero points from
// `min_zero`), fp16-exact scales, and groups of `group_size` columns; with
// `act_order` the columns join groups in a random order (desc_act).
QuantizedLinear RandomLinear(int64_t rows, int64_t cols, int bits,
                             int group_size, bool act_order, int min_zero,
                             uint32_t seed) {
  std::mt19937 rng(seed);
  const int64_t size = group_size == -1 ? cols : group_size;
  const int64_t groups = (cols + size - 1) / size;
  QuantizedLinear l;
  l.rows = rows;
  l.cols = cols;
  l.bits = bits;
  l.group_size = group_size;
  std::uniform_int_distribution<int32_t> level(0, (1 << bits) - 1);
  std::uniform_int_distribution<int32_t> zero(min_zero, (1 << bits) - 1);
  std::uniform_real_distribution<float> scale(1e-3f, 0.1f);
  for (int64_t i = 0; i < rows * cols; ++i) l.q.push_back(level(rng));
  for (int64_t i = 0; i < groups * rows; ++i) {
    l.zeros.push_back(zero(rng));
    l.scales.push_back(HalfToFloat(FloatToHalf(scale(rng))));
  }
  std::vector<int64_t> order(cols);
  std::iota(order.begin(), order.end(), 0);
  if (act_order) std::shuffle(order.begin(), order.end(), rng);
  l.g_idx.assign(cols, 0);
  for (int64_t k = 0; k < cols; ++k) {
    l.g_idx[order[k]] = static_cast<int32_t>(k / size);
  }
  return l;
}

void ExpectSameLinear(const QuantizedLinear& got, const QuantizedLinear& want) {
  EXPECT_EQ(got.rows, want.rows);
  EXPECT_EQ(got.cols, want.cols);
  EXPECT_EQ(got.bits, want.bits);
  EXPECT_EQ(got.group_size, want.group_size);
  EXPECT_EQ(got.q, want.q);
  EXPECT_EQ(got.zeros, want.zeros);
  EXPECT_EQ(got.scales, want.scales);
  EXPECT_EQ(got.g_idx, want.g_idx);
}

// ---------------------------------------------------------------------------
// Round trips.

struct Shape {
  int64_t rows, cols;
  int group_size;
  bool act_order;
};

TEST(GptqV1Test, RoundTripsEveryWidthAndShape) {
  uint32_t seed = 1;
  for (int bits : {2, 3, 4, 8}) {
    for (const Shape& s : std::vector<Shape>{{32, 32, -1, false},
                                             {64, 128, 32, true},
                                             {96, 256, 64, false},
                                             {32, 64, 16, true},
                                             {160, 96, 40, true}}) {
      SCOPED_TRACE(absl::StrCat(bits, " bits, ", s.rows, "x", s.cols, " group ",
                                s.group_size, " act-order ", s.act_order));
      const QuantizedLinear l = RandomLinear(s.rows, s.cols, bits, s.group_size,
                                             s.act_order, 1, seed++);
      absl::StatusOr<PackedGptqV1> packed = PackGptqV1(l);
      ASSERT_TRUE(packed.ok()) << packed.status();
      EXPECT_EQ(packed->groups, l.groups());
      EXPECT_THAT(packed->qweight_shape(),
                  ElementsAre(s.cols / 32 * bits, s.rows));
      EXPECT_THAT(packed->qzeros_shape(),
                  ElementsAre(l.groups(), s.rows * bits / 32));
      EXPECT_EQ(static_cast<int64_t>(packed->qweight.size()),
                s.cols / 32 * bits * s.rows);
      EXPECT_EQ(static_cast<int64_t>(packed->qzeros.size()),
                l.groups() * s.rows * bits / 32);
      EXPECT_EQ(packed->g_idx, l.g_idx);
      absl::StatusOr<QuantizedLinear> back =
          UnpackGptqV1(*packed, s.group_size);
      ASSERT_TRUE(back.ok()) << back.status();
      ExpectSameLinear(*back, l);
    }
  }
}

TEST(AwqGemmTest, RoundTrips) {
  uint32_t seed = 100;
  for (const Shape& s : std::vector<Shape>{{8, 1, -1, false},
                                           {8, 8, 4, false},
                                           {64, 128, 32, false},
                                           {24, 96, -1, false},
                                           {40, 256, 128, false}}) {
    SCOPED_TRACE(absl::StrCat(s.rows, "x", s.cols, " group ", s.group_size));
    // AWQ stores the zero point itself: 0 is fine.
    const QuantizedLinear l =
        RandomLinear(s.rows, s.cols, 4, s.group_size, false, 0, seed++);
    absl::StatusOr<PackedAwqGemm> packed = PackAwqGemm(l);
    ASSERT_TRUE(packed.ok()) << packed.status();
    EXPECT_THAT(packed->qweight_shape(), ElementsAre(s.cols, s.rows / 8));
    EXPECT_THAT(packed->qzeros_shape(), ElementsAre(l.groups(), s.rows / 8));
    EXPECT_THAT(packed->scales_shape(), ElementsAre(l.groups(), s.rows));
    absl::StatusOr<QuantizedLinear> back = UnpackAwqGemm(*packed, s.group_size);
    ASSERT_TRUE(back.ok()) << back.status();
    ExpectSameLinear(*back, l);
  }
}

// ---------------------------------------------------------------------------
// Words computed by hand from the published layouts.

// One group (group_size -1), all scales 0.5, zero points `zeros`.
QuantizedLinear Linear(int64_t rows, int64_t cols, int bits,
                       const std::function<int32_t(int64_t, int64_t)>& q,
                       std::vector<int32_t> zeros) {
  QuantizedLinear l;
  l.rows = rows;
  l.cols = cols;
  l.bits = bits;
  l.group_size = -1;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) l.q.push_back(q(r, c));
  }
  l.scales.assign(rows, 0.5f);
  l.zeros = std::move(zeros);
  l.g_idx.assign(cols, 0);
  return l;
}

TEST(GptqV1Test, FourBitWordsByHand) {
  // q[r][c] = (c + r) % 16; zero points r % 15 + 1, stored as r % 15.
  std::vector<int32_t> zeros(32);
  for (int r = 0; r < 32; ++r) zeros[r] = r % 15 + 1;
  const QuantizedLinear l = Linear(
      32, 32, 4, [](int64_t r, int64_t c) { return (c + r) % 16; }, zeros);
  absl::StatusOr<PackedGptqV1> p = PackGptqV1(l);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->qweight.size(), 4u * 32u);  // [32 / 32 * 4, 32]
  // Word k of output column r holds input rows 8k..8k+7, the first lowest.
  auto at = [&](int k, int r) { return p->qweight[k * 32 + r]; };
  EXPECT_EQ(at(0, 0), Word(0x76543210));
  EXPECT_EQ(at(1, 0), Word(0xFEDCBA98));
  EXPECT_EQ(at(2, 0), Word(0x76543210));
  EXPECT_EQ(at(3, 0), Word(0xFEDCBA98));
  EXPECT_EQ(at(0, 1), Word(0x87654321));
  EXPECT_EQ(at(1, 1), Word(0x0FEDCBA9));
  EXPECT_EQ(at(0, 7), Word(0xEDCBA987));
  // [1, 32 * 4 / 32]: output r at bits 4 (r % 8) of word r / 8, zero - 1.
  EXPECT_THAT(p->qzeros, ElementsAre(Word(0x76543210), Word(0x0EDCBA98),
                                     Word(0x87654321), Word(0x10EDCBA9)));
  EXPECT_THAT(p->scales, ElementsAreArray(std::vector<uint16_t>(32, 0x3800)));
  EXPECT_THAT(p->g_idx, ElementsAreArray(std::vector<int32_t>(32, 0)));
}

TEST(GptqV1Test, ThreeBitWordsFollowAutoGptqScheme) {
  // Per output column 32 input levels fill 3 words: levels 0-9 at bits 3j of
  // word 0, level 10 split (low 2 bits at 30-31 of word 0, top bit at bit 0
  // of word 1), levels 11-20 at 3j + 1 of word 1, level 21 split (bit 31 of
  // word 1, bits 0-1 of word 2), levels 22-31 at 3j + 2 of word 2.
  std::vector<int32_t> zeros(32);
  for (int r = 0; r < 32; ++r) zeros[r] = r % 7 + 1;
  const QuantizedLinear l = Linear(
      32, 32, 3, [](int64_t r, int64_t c) { return (c + r) % 8; }, zeros);
  absl::StatusOr<PackedGptqV1> p = PackGptqV1(l);
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->qweight.size(), 3u * 32u);
  auto at = [&](int k, int r) { return p->qweight[k * 32 + r]; };
  // Column 0: levels 0,1,..,7,0,1 | 2 = 0b010 split as 0b10 | 0b0 | ...
  EXPECT_EQ(at(0, 0), Word(0x88FAC688));
  EXPECT_EQ(at(1, 0), Word(0xC688FAC6));
  EXPECT_EQ(at(2, 0), Word(0xFAC688FA));
  EXPECT_EQ(at(0, 1), Word(0xD11F58D1));
  EXPECT_EQ(at(1, 1), Word(0x58D11F58));
  EXPECT_EQ(at(2, 1), Word(0x1F58D11F));
  EXPECT_EQ(at(0, 5), Word(0xF58D11F5));
  EXPECT_EQ(at(1, 5), Word(0x11F58D11));
  EXPECT_EQ(at(2, 5), Word(0x8D11F58D));
  // qzeros [1, 3]: zero - 1 = r % 7 along the outputs, same scheme.
  EXPECT_THAT(p->qzeros, ElementsAre(Word(0xD11AC688), Word(0x6B1A2358),
                                     Word(0x688D6344)));
}

TEST(GptqV1Test, TwoAndEightBitWordsByHand) {
  {
    // 16 levels per word: 0,1,2,3 repeated = 0b11100100 per byte.
    const QuantizedLinear l = Linear(
        32, 32, 2, [](int64_t, int64_t c) { return c % 4; },
        std::vector<int32_t>(32, 2));
    absl::StatusOr<PackedGptqV1> p = PackGptqV1(l);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_EQ(p->qweight.size(), 2u * 32u);
    EXPECT_EQ(p->qweight[0], Word(0xE4E4E4E4));
    EXPECT_EQ(p->qweight[32], Word(0xE4E4E4E4));
    // 16 fields of 2 - 1 per word.
    EXPECT_THAT(p->qzeros, ElementsAre(Word(0x55555555), Word(0x55555555)));
  }
  {
    // 4 levels per word, one per byte.
    std::vector<int32_t> zeros(32, 1);
    zeros[1] = 2;
    zeros[2] = 3;
    zeros[3] = 128;
    zeros[31] = 255;
    const QuantizedLinear l = Linear(
        32, 32, 8, [](int64_t r, int64_t c) { return r == 1 ? 255 - c : c; },
        zeros);
    absl::StatusOr<PackedGptqV1> p = PackGptqV1(l);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_EQ(p->qweight.size(), 8u * 32u);
    EXPECT_EQ(p->qweight[0 * 32 + 0], Word(0x03020100));
    EXPECT_EQ(p->qweight[1 * 32 + 0], Word(0x07060504));
    EXPECT_EQ(p->qweight[7 * 32 + 0], Word(0x1F1E1D1C));
    EXPECT_EQ(p->qweight[0 * 32 + 1], Word(0xFCFDFEFF));
    EXPECT_THAT(p->qzeros, ElementsAre(Word(0x7F020100), 0, 0, 0, 0, 0, 0,
                                       Word(0xFE000000)));
  }
}

TEST(AwqGemmTest, NibbleOrderByHand) {
  // Input row 0 holds output r's level r; nibble i holds output
  // kAwqOrder[i] = 0, 2, 4, 6, 1, 3, 5, 7.
  std::vector<int32_t> zeros(8);
  std::iota(zeros.begin(), zeros.end(), 0);
  const QuantizedLinear l = Linear(
      8, 2, 4, [](int64_t r, int64_t c) { return c == 0 ? r : 15 - r; }, zeros);
  absl::StatusOr<PackedAwqGemm> p = PackAwqGemm(l);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_THAT(p->qweight, ElementsAre(Word(0x75316420), Word(0x8ACE9BDF)));
  EXPECT_THAT(p->qzeros, ElementsAre(Word(0x75316420)));  // zero itself
  EXPECT_THAT(p->scales, ElementsAreArray(std::vector<uint16_t>(8, 0x3800)));
}

TEST(GptqV1Test, ZeroPointZeroWrapsInItsOwnField) {
  std::vector<int32_t> zeros(32, 8);
  zeros[0] = 0;
  zeros[7] = 0;
  const QuantizedLinear l = Linear(
      32, 32, 4, [](int64_t, int64_t) { return 3; }, zeros);
  EXPECT_EQ(GptqV1UnrepresentableZeros(l), 2);
  absl::StatusOr<PackedGptqV1> p = PackGptqV1(l);
  ASSERT_TRUE(p.ok()) << p.status();
  // (0 - 1) & 0xF = 0xF, no borrow from or into the neighbours' 7s.
  EXPECT_THAT(p->qzeros, ElementsAre(Word(0xF777777F), Word(0x77777777),
                                     Word(0x77777777), Word(0x77777777)));
  // Read back as v1 loaders do: field + 1.
  absl::StatusOr<QuantizedLinear> back = UnpackGptqV1(*p, -1);
  ASSERT_TRUE(back.ok()) << back.status();
  std::vector<int32_t> want(32, 8);
  want[0] = 16;
  want[7] = 16;
  EXPECT_EQ(back->zeros, want);
}

// ---------------------------------------------------------------------------
// Bad input.

TEST(GptqV1Test, RejectsBadInput) {
  const QuantizedLinear good = RandomLinear(32, 64, 4, 32, false, 1, 7);
  ASSERT_TRUE(PackGptqV1(good).ok());
  struct Case {
    std::string what;
    std::function<void(QuantizedLinear&)> mutate;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"level 16", [](QuantizedLinear& l) { l.q[5] = 16; },
       "level q[0, 5] = 16 is outside [0, 16)"},
      {"level 255", [](QuantizedLinear& l) { l.q[64] = 255; },
       "level q[1, 0] = 255"},
      {"zero 16", [](QuantizedLinear& l) { l.zeros[3] = 16; },
       "zero point [0, 3] = 16"},
      {"bits 5", [](QuantizedLinear& l) { l.bits = 5; },
       "5 bits is unsupported"},
      {"rows not multiple",
       [](QuantizedLinear& l) { l = RandomLinear(12, 64, 4, 32, false, 1, 8); },
       "out_features (rows) 12 must be a multiple of 32"},
      // Whole qzeros words, but not the [groups, out // 32 * bits] buffer
      // that AutoGPTQ and GPTQModel load into.
      {"rows 40",
       [](QuantizedLinear& l) { l = RandomLinear(40, 64, 4, 32, false, 1, 8); },
       "out_features (rows) 40 must be a multiple of 32 to pack qzeros"},
      {"3-bit rows",
       [](QuantizedLinear& l) { l = RandomLinear(16, 64, 3, 32, false, 1, 9); },
       "out_features (rows) 16 must be a multiple of 32"},
      {"cols not multiple",
       [](QuantizedLinear& l) {
         l = RandomLinear(32, 48, 4, 16, false, 1, 10);
       },
       "in_features (cols) 48 must be a multiple of 32"},
      {"q size", [](QuantizedLinear& l) { l.q.pop_back(); }, "q has 2047"},
      {"zeros size", [](QuantizedLinear& l) { l.zeros.pop_back(); },
       "zeros has 63 values, scales 64"},
      {"g_idx size", [](QuantizedLinear& l) { l.g_idx.pop_back(); },
       "g_idx has 63 entries, cols 64"},
      {"g_idx range", [](QuantizedLinear& l) { l.g_idx[9] = 2; },
       "g_idx[9] = 2 is outside [0, 2)"},
      {"scale overflow", [](QuantizedLinear& l) { l.scales[1] = 1e6f; },
       "not finite in fp16"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    QuantizedLinear bad = good;
    c.mutate(bad);
    absl::StatusOr<PackedGptqV1> p = PackGptqV1(bad);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(p.status().message()), HasSubstr(c.message));
  }
}

TEST(GptqV1Test, UnpackRejectsInconsistentTensors) {
  absl::StatusOr<PackedGptqV1> p =
      PackGptqV1(RandomLinear(32, 64, 4, 32, false, 1, 11));
  ASSERT_TRUE(p.ok()) << p.status();
  PackedGptqV1 bad = *p;
  bad.qweight.pop_back();
  EXPECT_THAT(std::string(UnpackGptqV1(bad, 32).status().message()),
              HasSubstr("qweight has 255 elements, expected 256"));
  bad = *p;
  bad.g_idx[0] = 5;
  EXPECT_THAT(std::string(UnpackGptqV1(bad, 32).status().message()),
              HasSubstr("g_idx[0] = 5"));
  bad = *p;
  bad.bits = 5;
  EXPECT_EQ(UnpackGptqV1(bad, 32).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AwqGemmTest, RejectsBadInput) {
  const QuantizedLinear good = RandomLinear(16, 64, 4, 32, false, 0, 12);
  ASSERT_TRUE(PackAwqGemm(good).ok());
  QuantizedLinear bad = good;
  bad.bits = 3;
  EXPECT_THAT(std::string(PackAwqGemm(bad).status().message()),
              HasSubstr("3 bits is unsupported (only 4)"));
  bad = RandomLinear(16, 64, 4, 32, true, 0, 13);  // act-order
  EXPECT_THAT(std::string(PackAwqGemm(bad).status().message()),
              HasSubstr("AWQ has no act-order"));
  bad = RandomLinear(12, 64, 4, 32, false, 0, 14);
  EXPECT_THAT(std::string(PackAwqGemm(bad).status().message()),
              HasSubstr("out_features (rows) 12 must be a multiple of 8"));
  bad = good;
  bad.q[0] = 16;
  EXPECT_THAT(std::string(PackAwqGemm(bad).status().message()),
              HasSubstr("level q[0, 0] = 16"));
  bad = good;
  bad.group_size = 16;  // 4 groups, but only 2 groups of scales
  EXPECT_THAT(std::string(PackAwqGemm(bad).status().message()),
              HasSubstr("does not give the 2 groups"));

  absl::StatusOr<PackedAwqGemm> p = PackAwqGemm(good);
  ASSERT_TRUE(p.ok());
  EXPECT_THAT(std::string(UnpackAwqGemm(*p, 16).status().message()),
              HasSubstr("group_size 16 with cols 64 does not give 2 groups"));
  PackedAwqGemm short_zeros = *p;
  short_zeros.qzeros.pop_back();
  EXPECT_THAT(std::string(UnpackAwqGemm(short_zeros, 32).status().message()),
              HasSubstr("qzeros has 3 elements, expected 4"));
}

// ---------------------------------------------------------------------------
// The independent numpy reader (quant/testdata/quant_checkpoint_reader.py).

struct Tensor {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
Tensor MakeTensor(std::string name, SafetensorsDType dtype,
                  std::vector<int64_t> shape, const std::vector<T>& values) {
  Tensor t{std::move(name), dtype, std::move(shape), {}};
  t.bytes.resize(values.size() * sizeof(T));
  if (!values.empty())
    std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

struct Checkpoint {
  std::vector<Tensor> tensors;
  std::vector<std::pair<std::string, std::string>> metadata;
  std::vector<std::string> names;
};

// What the reader compares against: the levels, zero points and fp32 scales
// before packing, and the weights a loader must dequantize (fp16 scales).
void AddExpected(Checkpoint& ckpt, const std::string& name,
                 const QuantizedLinear& l) {
  QuantizedLinear rounded = l;
  for (float& s : rounded.scales) s = HalfToFloat(FloatToHalf(s));
  ckpt.tensors.push_back(
      MakeTensor(name + ".expect.q", SafetensorsDType::kI32, {l.rows, l.cols},
                 std::vector<int32_t>(l.q.begin(), l.q.end())));
  ckpt.tensors.push_back(MakeTensor(name + ".expect.zeros",
                                    SafetensorsDType::kI32,
                                    {l.groups(), l.rows}, l.zeros));
  ckpt.tensors.push_back(MakeTensor(name + ".expect.scales",
                                    SafetensorsDType::kF32,
                                    {l.groups(), l.rows}, l.scales));
  ckpt.tensors.push_back(MakeTensor(name + ".expect.weight",
                                    SafetensorsDType::kF32, {l.rows, l.cols},
                                    rounded.Dequantize()));
}

void AddGptq(Checkpoint& ckpt, const std::string& name,
             const QuantizedLinear& l, const PackedGptqV1& p) {
  ckpt.names.push_back(name);
  ckpt.metadata.emplace_back(name + ".format", "gptq_v1");
  ckpt.metadata.emplace_back(name + ".bits", std::to_string(p.bits));
  ckpt.tensors.push_back(MakeTensor(name + ".qweight", SafetensorsDType::kI32,
                                    p.qweight_shape(), p.qweight));
  ckpt.tensors.push_back(MakeTensor(name + ".qzeros", SafetensorsDType::kI32,
                                    p.qzeros_shape(), p.qzeros));
  ckpt.tensors.push_back(MakeTensor(name + ".scales", SafetensorsDType::kF16,
                                    p.scales_shape(), p.scales));
  ckpt.tensors.push_back(MakeTensor(name + ".g_idx", SafetensorsDType::kI32,
                                    p.g_idx_shape(), p.g_idx));
  AddExpected(ckpt, name, l);
}

void AddAwq(Checkpoint& ckpt, const std::string& name, const QuantizedLinear& l,
            const PackedAwqGemm& p) {
  ckpt.names.push_back(name);
  ckpt.metadata.emplace_back(name + ".format", "awq_gemm");
  ckpt.metadata.emplace_back(name + ".bits", "4");
  ckpt.tensors.push_back(MakeTensor(name + ".qweight", SafetensorsDType::kI32,
                                    p.qweight_shape(), p.qweight));
  ckpt.tensors.push_back(MakeTensor(name + ".qzeros", SafetensorsDType::kI32,
                                    p.qzeros_shape(), p.qzeros));
  ckpt.tensors.push_back(MakeTensor(name + ".scales", SafetensorsDType::kF16,
                                    p.scales_shape(), p.scales));
  AddExpected(ckpt, name, l);
}

absl::Status WriteCheckpoint(const std::string& path, const Checkpoint& ckpt) {
  absl::StatusOr<std::unique_ptr<SafetensorsWriter>> writer =
      SafetensorsWriter::Create(path);
  if (!writer.ok()) return writer.status();
  std::string names;
  for (const std::string& n : ckpt.names) {
    absl::StrAppend(&names, names.empty() ? "" : ",", n);
  }
  (*writer)->SetMetadata("linears", names);
  for (const auto& [key, value] : ckpt.metadata) {
    (*writer)->SetMetadata(key, value);
  }
  for (const Tensor& t : ckpt.tensors) {
    absl::Status s = (*writer)->AddTensor(t.name, t.dtype, t.shape);
    if (!s.ok()) return s;
  }
  for (const Tensor& t : ckpt.tensors) {
    absl::Status s =
        (*writer)->WriteTensorData(t.name, t.bytes.data(), t.bytes.size());
    if (!s.ok()) return s;
  }
  return (*writer)->Finish();
}

// Bazel runs tests in the runfiles tree of the workspace (data = [...]);
// CMake passes the source folder as QS_SOURCE_DIR.
std::string ReaderScript() {
  const std::string rel = "quant/testdata/quant_checkpoint_reader.py";
  std::vector<std::string> candidates;
  const char* srcdir = std::getenv("TEST_SRCDIR");
  const char* workspace = std::getenv("TEST_WORKSPACE");
  if (srcdir != nullptr && workspace != nullptr) {
    candidates.push_back(absl::StrCat(srcdir, "/", workspace, "/", rel));
  }
#ifdef QS_SOURCE_DIR
  candidates.push_back(absl::StrCat(QS_SOURCE_DIR, "/", rel));
#endif
  candidates.push_back(rel);
  for (const std::string& c : candidates) {
    if (std::filesystem::is_regular_file(c)) return c;
  }
  return "";
}

struct RunResult {
  int exit_code = -1;
  std::string output;
};

RunResult RunCommand(const std::string& command) {
  RunResult result;
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof(buffer), pipe)) > 0) {
    result.output.append(buffer, n);
  }
  const int status = ::pclose(pipe);
  if (status != -1 && WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  return result;
}

constexpr char kPython[] = "/usr/bin/python3";

class ReaderTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!std::filesystem::exists(kPython) ||
        RunCommand(absl::StrCat(kPython, " -c 'import numpy'")).exit_code !=
            0) {
      GTEST_SKIP() << kPython << " with numpy is not available";
    }
    script_ = ReaderScript();
    ASSERT_FALSE(script_.empty())
        << "quant/testdata/quant_checkpoint_reader.py not found (Bazel: "
           "data dependency; CMake: QS_SOURCE_DIR)";
    dir_ = MakeTestTempDir("packing_reader");

    gptq_linears_.push_back(RandomLinear(64, 128, 2, 32, true, 1, 21));
    gptq_linears_.push_back(RandomLinear(64, 128, 3, 32, true, 1, 22));
    gptq_linears_.push_back(RandomLinear(96, 256, 4, 64, false, 1, 23));
    gptq_linears_.push_back(RandomLinear(32, 96, 8, -1, false, 1, 24));
    awq_linear_ = RandomLinear(40, 128, 4, 32, false, 0, 25);
    // Scales that fp16 must round, so that the reader checks the rounding.
    for (QuantizedLinear* l :
         {&gptq_linears_[0], &gptq_linears_[2], &awq_linear_}) {
      for (float& s : l->scales) s *= 1.0001f;
    }
    for (const QuantizedLinear& l : gptq_linears_) {
      absl::StatusOr<PackedGptqV1> p = PackGptqV1(l);
      ASSERT_TRUE(p.ok()) << p.status();
      gptq_packed_.push_back(*std::move(p));
    }
    absl::StatusOr<PackedAwqGemm> p = PackAwqGemm(awq_linear_);
    ASSERT_TRUE(p.ok()) << p.status();
    awq_packed_ = *std::move(p);
  }

  Checkpoint Build(const std::vector<PackedGptqV1>& gptq,
                   const PackedAwqGemm& awq) const {
    Checkpoint ckpt;
    for (size_t i = 0; i < gptq.size(); ++i) {
      AddGptq(ckpt, absl::StrCat("gptq", gptq[i].bits), gptq_linears_[i],
              gptq[i]);
    }
    AddAwq(ckpt, "awq4", awq_linear_, awq);
    return ckpt;
  }

  RunResult RunReader(const std::string& file, const Checkpoint& ckpt) const {
    const std::string path = absl::StrCat(dir_, "/", file);
    const absl::Status s = WriteCheckpoint(path, ckpt);
    EXPECT_TRUE(s.ok()) << s;
    return RunCommand(absl::StrCat(kPython, " ", script_, " ", path));
  }

  std::string script_, dir_;
  std::vector<QuantizedLinear> gptq_linears_;
  std::vector<PackedGptqV1> gptq_packed_;
  QuantizedLinear awq_linear_;
  PackedAwqGemm awq_packed_;
};

TEST_F(ReaderTest, NumpyReaderDecodesEveryLayout) {
  const RunResult r =
      RunReader("good.safetensors", Build(gptq_packed_, awq_packed_));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_THAT(r.output, HasSubstr("5 linears OK"));
  for (const char* name : {"gptq2", "gptq3", "gptq4", "gptq8", "awq4"}) {
    EXPECT_THAT(r.output, HasSubstr(absl::StrCat(name, ": ok"))) << r.output;
  }
}

TEST_F(ReaderTest, NumpyReaderRejectsCorruptedLayouts) {
  {  // AWQ nibbles in plain order 0..7 instead of 0, 2, 4, 6, 1, 3, 5, 7.
    PackedAwqGemm plain = awq_packed_;
    for (int32_t& word : plain.qweight) {
      const uint32_t packed = static_cast<uint32_t>(word);
      uint32_t out = 0;
      for (int i = 0; i < 8; ++i) {
        out |= ((packed >> (4 * i)) & 0xfu) << (4 * kAwqOrder[i]);
      }
      word = static_cast<int32_t>(out);
    }
    const RunResult r =
        RunReader("awq_order.safetensors", Build(gptq_packed_, plain));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr("MISMATCH awq4"));
    EXPECT_THAT(r.output, Not(HasSubstr("MISMATCH gptq")));
  }
  {  // 3-bit words of each triple swapped.
    std::vector<PackedGptqV1> swapped = gptq_packed_;
    PackedGptqV1& p = swapped[1];
    ASSERT_EQ(p.bits, 3);
    for (int64_t k = 0; k + 2 < p.qweight_shape()[0]; k += 3) {
      for (int64_t r = 0; r < p.rows; ++r) {
        std::swap(p.qweight[(k + 1) * p.rows + r],
                  p.qweight[(k + 2) * p.rows + r]);
      }
    }
    const RunResult r =
        RunReader("gptq3_words.safetensors", Build(swapped, awq_packed_));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr("MISMATCH gptq3"));
  }
  {  // 4-bit zero points stored as zero instead of zero - 1 (v2 layout).
    std::vector<PackedGptqV1> v2 = gptq_packed_;
    PackedGptqV1& p = v2[2];
    ASSERT_EQ(p.bits, 4);
    for (int32_t& word : p.qzeros) {
      word = static_cast<int32_t>(static_cast<uint32_t>(word) + 0x11111111u);
    }
    const RunResult r =
        RunReader("gptq4_v2.safetensors", Build(v2, awq_packed_));
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_THAT(r.output, HasSubstr("MISMATCH gptq4"));
  }
}

}  // namespace
}  // namespace quant
