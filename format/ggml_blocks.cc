#include "format/ggml_blocks.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "format/half.h"

namespace quant {
namespace {

// x86 cvttss2si: truncate toward zero; NaN or a value outside int32 gives
// INT32_MIN. Written without undefined behaviour.
int32_t TruncToInt32X86(float v) {
  // -2147483904 is the float below -2^31; 2147483648 is 2^31.
  if (!(v > -2147483904.0f && v < 2147483648.0f)) return INT32_MIN;
  return static_cast<int32_t>(v);
}

// What `(int8_t)v` compiles to on x86: cvttss2si, then the low byte.
int32_t FloatToInt8X86(float v) {
  const int32_t low =
      static_cast<int32_t>(static_cast<uint32_t>(TruncToInt32X86(v)) & 0xffu);
  return low >= 128 ? low - 256 : low;
}

// `dst` need not be aligned for Block: blocks are built on the stack and
// copied out.
template <typename Block, int64_t kBlockElements,
          void (*kQuantize)(const float*, Block*)>
void QuantizeBlocks(const float* src, int64_t n, void* dst) {
  uint8_t* out = static_cast<uint8_t*>(dst);
  for (int64_t i = 0; i < n / kBlockElements; ++i) {
    Block block;
    kQuantize(src + i * kBlockElements, &block);
    std::memcpy(out + i * sizeof(Block), &block, sizeof(Block));
  }
}

}  // namespace

void QuantizeBlockQ8_0Reference(const float* x, BlockQ8_0* y) {
  float amax = 0.0f;
  for (int j = 0; j < kQk8_0; ++j) {
    const float a = std::fabs(x[j]);
    amax = amax > a ? amax : a;  // llama.cpp's MAX(amax, fabsf(v)).
  }
  const float d = amax / 127.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = FloatToHalf(d);
  for (int j = 0; j < kQk8_0; ++j) {
    const float scaled = x[j] * id;
    y->qs[j] = static_cast<int8_t>(FloatToInt8X86(std::round(scaled)));
  }
}

void QuantizeBlockQ4_0Reference(const float* x, BlockQ4_0* y) {
  float amax = 0.0f;
  float max = 0.0f;  // The first value of largest magnitude, with its sign.
  for (int j = 0; j < kQk4_0; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  const float d = max / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  y->d = FloatToHalf(d);
  for (int j = 0; j < kQk4_0 / 2; ++j) {
    const float x0 = x[j] * id;
    const float x1 = x[j + kQk4_0 / 2] * id;
    const int32_t s0 = FloatToInt8X86(x0 + 8.5f);
    const int32_t s1 = FloatToInt8X86(x1 + 8.5f);
    const uint8_t q0 = static_cast<uint8_t>(s0 < 15 ? s0 : 15);
    const uint8_t q1 = static_cast<uint8_t>(s1 < 15 ? s1 : 15);
    y->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void DequantizeBlockQ8_0Reference(const BlockQ8_0& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int j = 0; j < kQk8_0; ++j) {
    y[j] = static_cast<float>(block.qs[j]) * d;
  }
}

void DequantizeBlockQ4_0Reference(const BlockQ4_0& block, float* y) {
  const float d = HalfToFloat(block.d);
  for (int j = 0; j < kQk4_0 / 2; ++j) {
    const int q0 = (block.qs[j] & 0x0f) - 8;
    const int q1 = (block.qs[j] >> 4) - 8;
    y[j] = static_cast<float>(q0) * d;
    y[j + kQk4_0 / 2] = static_cast<float>(q1) * d;
  }
}

bool IsQuantizeSupported(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
    case GgmlType::kF16:
    case GgmlType::kBF16:
    case GgmlType::kQ8_0:
    case GgmlType::kQ4_0:
      return true;
    default:
      return false;
  }
}

absl::Status CheckQuantizeArgs(GgmlType type, int64_t n,
                               const float* importance) {
  if (!IsQuantizeSupported(type)) {
    return absl::UnimplementedError(absl::StrCat(
        "(de)quantization to ", GgmlTypeName(type), " is not supported yet"));
  }
  if (importance != nullptr && type == GgmlType::kQ4_0) {
    return absl::UnimplementedError(
        "importance-weighted q4_0 quantization is not supported yet");
  }
  return GgmlRowBytes(type, n).status();
}

int64_t FindNonFinite(const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if ((FloatBits(x[i]) & 0x7fffffffu) >= 0x7f800000u) return i;
  }
  return -1;
}

namespace {

std::string Position(int64_t row, int64_t column) {
  return row < 0 ? absl::StrCat("element ", column)
                 : absl::StrCat("row ", row, ", column ", column);
}

std::string BlockPosition(int64_t row, int64_t first, int64_t size) {
  const std::string columns = absl::StrCat(first, "..", first + size - 1);
  return row < 0
             ? absl::StrCat("the block of elements ", columns)
             : absl::StrCat("the block at row ", row, ", columns ", columns);
}

bool IsHalfInfOrNan(uint16_t h) { return (h & 0x7fffu) >= 0x7c00u; }
bool IsBf16InfOrNan(uint16_t h) { return (h & 0x7fffu) >= 0x7f80u; }

}  // namespace

absl::Status CheckRepresentable(GgmlType type, const float* x, int64_t n,
                                int64_t row) {
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  const int64_t block = traits.block_size;
  for (int64_t first = 0; first + block <= n; first += block) {
    const int64_t bad = FindNonFinite(x + first, block);
    if (bad >= 0) {
      const float v = x[first + bad];
      return absl::InvalidArgumentError(
          absl::StrCat(traits.name, " cannot represent ",
                       std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf"), " at ",
                       Position(row, first + bad)));
    }
    bool overflows = false;
    float amax = 0.0f;
    switch (type) {
      case GgmlType::kF16:
        overflows = IsHalfInfOrNan(FloatToHalf(x[first]));
        break;
      case GgmlType::kBF16:
        overflows = IsBf16InfOrNan(FloatToBf16(x[first]));
        break;
      case GgmlType::kQ8_0:
      case GgmlType::kQ4_0:
        for (int64_t j = 0; j < block; ++j) {
          amax = std::max(amax, std::fabs(x[first + j]));
        }
        // The scale is amax / 127 (Q8_0) or +-amax / 8 (Q4_0).
        overflows = IsHalfInfOrNan(
            FloatToHalf(type == GgmlType::kQ8_0 ? amax / 127.0f : amax / 8.0f));
        break;
      default:
        break;
    }
    if (!overflows) continue;
    if (block == 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(traits.name, " cannot represent ", x[first], " at ",
                       Position(row, first), ": it rounds to infinity"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        traits.name, " cannot represent ", BlockPosition(row, first, block),
        ": its largest magnitude ", amax, " makes the fp16 scale infinite"));
  }
  return absl::OkStatus();
}

absl::Status QuantizeRowReference(GgmlType type, const float* src, int64_t n,
                                  void* dst, const float* importance) {
  const absl::Status args = CheckQuantizeArgs(type, n, importance);
  if (!args.ok()) return args;
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("null source or destination buffer");
  }
  const absl::Status representable = CheckRepresentable(type, src, n, -1);
  if (!representable.ok()) return representable;
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16: {
      uint8_t* out = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToHalf(src[i]);
        std::memcpy(out + 2 * i, &h, sizeof(h));
      }
      return absl::OkStatus();
    }
    case GgmlType::kBF16: {
      uint8_t* out = static_cast<uint8_t*>(dst);
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = FloatToBf16(src[i]);
        std::memcpy(out + 2 * i, &h, sizeof(h));
      }
      return absl::OkStatus();
    }
    case GgmlType::kQ8_0:
      QuantizeBlocks<BlockQ8_0, kQk8_0, QuantizeBlockQ8_0Reference>(src, n,
                                                                    dst);
      return absl::OkStatus();
    case GgmlType::kQ4_0:
      QuantizeBlocks<BlockQ4_0, kQk4_0, QuantizeBlockQ4_0Reference>(src, n,
                                                                    dst);
      return absl::OkStatus();
    default:
      break;
  }
  return absl::InternalError("unreachable: type passed CheckQuantizeArgs");
}

absl::Status DequantizeRowReference(GgmlType type, const void* src, int64_t n,
                                    float* dst) {
  const absl::Status args = CheckQuantizeArgs(type, n, nullptr);
  if (!args.ok()) return args;
  if (n == 0) return absl::OkStatus();
  if (src == nullptr || dst == nullptr) {
    return absl::InvalidArgumentError("null source or destination buffer");
  }
  const uint8_t* in = static_cast<const uint8_t*>(src);
  switch (type) {
    case GgmlType::kF32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return absl::OkStatus();
    case GgmlType::kF16:
    case GgmlType::kBF16:
      for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * i, sizeof(h));
        dst[i] = type == GgmlType::kF16 ? HalfToFloat(h) : Bf16ToFloat(h);
      }
      return absl::OkStatus();
    case GgmlType::kQ8_0:
      for (int64_t i = 0; i < n / kQk8_0; ++i) {
        BlockQ8_0 block;
        std::memcpy(&block, in + i * sizeof(block), sizeof(block));
        DequantizeBlockQ8_0Reference(block, dst + i * kQk8_0);
      }
      return absl::OkStatus();
    case GgmlType::kQ4_0:
      for (int64_t i = 0; i < n / kQk4_0; ++i) {
        BlockQ4_0 block;
        std::memcpy(&block, in + i * sizeof(block), sizeof(block));
        DequantizeBlockQ4_0Reference(block, dst + i * kQk4_0);
      }
      return absl::OkStatus();
    default:
      break;
  }
  return absl::InternalError("unreachable: type passed CheckQuantizeArgs");
}

}  // namespace quant
