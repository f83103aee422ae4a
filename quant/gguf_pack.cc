#include "quant/gguf_pack.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "format/ggml_blocks.h"
#include "format/half.h"

namespace quant {
namespace {

constexpr int64_t kGroup = 32;

}  // namespace

bool IsSymmetricGroupOf32Type(GgmlType type) {
  return type == GgmlType::kQ4_0 || type == GgmlType::kQ5_0 ||
         type == GgmlType::kQ8_0;
}

absl::StatusOr<WeightFormat> SolveFormatOfGgmlType(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_0:
      return WeightFormat{4, 32, true};
    case GgmlType::kQ4_1:
      return WeightFormat{4, 32, false};
    case GgmlType::kQ5_0:
      return WeightFormat{5, 32, true};
    case GgmlType::kQ5_1:
      return WeightFormat{5, 32, false};
    case GgmlType::kQ8_0:
      return WeightFormat{8, 32, true};
    case GgmlType::kQ2_K:
      return WeightFormat{2, 16, false};
    case GgmlType::kQ3_K:
      return WeightFormat{3, 16, true};
    case GgmlType::kQ4_K:
      return WeightFormat{4, 32, false};
    case GgmlType::kQ5_K:
      return WeightFormat{5, 32, false};
    case GgmlType::kQ6_K:
      return WeightFormat{6, 16, true};
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF type ", GgmlTypeName(type),
                       " is not a quantized type a linear can be solved for"));
  }
}

bool FitsGgufTypeExactly(const QuantizedLinear& linear, GgmlType type) {
  if (!IsSymmetricGroupOf32Type(type)) return false;
  const int bits = SolveFormatOfGgmlType(type)->bits;
  if (linear.bits != bits || linear.cols % kGroup != 0 ||
      linear.groups() != linear.cols / kGroup) {
    return false;
  }
  for (int64_t c = 0; c < linear.cols; ++c) {
    if (linear.g_idx[c] != c / kGroup) return false;
  }
  for (int32_t zero : linear.zeros) {
    if (zero != 1 << (bits - 1)) return false;
  }
  return true;
}

absl::StatusOr<std::vector<uint8_t>> PackGgufRows(const QuantizedLinear& linear,
                                                  GgmlType type) {
  if (!FitsGgufTypeExactly(linear, type)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", linear.bits, "-bit linear with groups of ", linear.group_size,
        " is not exactly a ", GgmlTypeName(type),
        " tensor (that needs symmetric groups of 32 columns in order)"));
  }
  const int64_t rows = linear.rows, cols = linear.cols;
  const int64_t blocks = cols / kGroup;
  auto level = [&](int64_t r, int64_t c) { return linear.q[r * cols + c]; };
  auto scale = [&](int64_t r, int64_t g) {
    return FloatToHalf(linear.scales[g * rows + r]);
  };
  std::vector<uint8_t> out;
  switch (type) {
    case GgmlType::kQ4_0: {
      std::vector<BlockQ4_0> b(static_cast<size_t>(rows * blocks));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < blocks; ++g) {
          BlockQ4_0& block = b[r * blocks + g];
          block.d = scale(r, g);
          for (int j = 0; j < 16; ++j) {
            block.qs[j] = static_cast<uint8_t>(
                level(r, g * kGroup + j) | level(r, g * kGroup + j + 16) << 4);
          }
        }
      }
      out.resize(b.size() * sizeof(BlockQ4_0));
      std::memcpy(out.data(), b.data(), out.size());
      break;
    }
    case GgmlType::kQ5_0: {
      std::vector<BlockQ5_0> b(static_cast<size_t>(rows * blocks));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < blocks; ++g) {
          BlockQ5_0& block = b[r * blocks + g];
          block.d = scale(r, g);
          uint32_t high = 0;
          for (int j = 0; j < 16; ++j) {
            const int32_t lo = level(r, g * kGroup + j);
            const int32_t hi = level(r, g * kGroup + j + 16);
            block.qs[j] = static_cast<uint8_t>((lo & 0xF) | (hi & 0xF) << 4);
            high |= static_cast<uint32_t>((lo >> 4) & 1) << j;
            high |= static_cast<uint32_t>((hi >> 4) & 1) << (j + 16);
          }
          std::memcpy(block.qh, &high, sizeof(high));  // Little-endian.
        }
      }
      out.resize(b.size() * sizeof(BlockQ5_0));
      std::memcpy(out.data(), b.data(), out.size());
      break;
    }
    default: {  // Q8_0.
      std::vector<BlockQ8_0> b(static_cast<size_t>(rows * blocks));
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t g = 0; g < blocks; ++g) {
          BlockQ8_0& block = b[r * blocks + g];
          block.d = scale(r, g);
          for (int j = 0; j < kGroup; ++j) {
            block.qs[j] = static_cast<int8_t>(level(r, g * kGroup + j) - 128);
          }
        }
      }
      out.resize(b.size() * sizeof(BlockQ8_0));
      std::memcpy(out.data(), b.data(), out.size());
    }
  }
  return out;
}

}  // namespace quant
