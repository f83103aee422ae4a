#include "quant/packing.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "format/half.h"

namespace quant {
namespace {

bool GptqBitsSupported(int bits) {
  return bits == 2 || bits == 3 || bits == 4 || bits == 8;
}

// Writes `n` levels as an LSB-first bit stream: level i at bit bits * i,
// word k at words[k * stride]. The words must start zeroed. This is
// AutoGPTQ's layout for every width: for 3 bits its three-word scheme is
// exactly this stream cut into 32-bit words.
void PackStream(const uint32_t* levels, int64_t n, int bits, int32_t* words,
                int64_t stride) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits;
    const int64_t word = bit / 32;
    const int offset = static_cast<int>(bit % 32);
    uint32_t low = static_cast<uint32_t>(words[word * stride]);
    low |= levels[i] << offset;
    words[word * stride] = static_cast<int32_t>(low);
    if (offset + bits > 32) {  // Straddles into the next word.
      uint32_t high = static_cast<uint32_t>(words[(word + 1) * stride]);
      high |= levels[i] >> (32 - offset);
      words[(word + 1) * stride] = static_cast<int32_t>(high);
    }
  }
}

// The inverse of PackStream: `n` fields of `bits` bits.
void UnpackStream(const int32_t* words, int64_t stride, int64_t n, int bits,
                  uint32_t* levels) {
  const uint32_t mask = (1u << bits) - 1u;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t bit = i * bits;
    const int64_t word = bit / 32;
    const int offset = static_cast<int>(bit % 32);
    uint32_t value = static_cast<uint32_t>(words[word * stride]) >> offset;
    if (offset + bits > 32) {
      value |= static_cast<uint32_t>(words[(word + 1) * stride])
               << (32 - offset);
    }
    levels[i] = value & mask;
  }
}

// Sizes, ranges and fp16 scales of `linear` with `bits` already checked as
// supported by the caller's format. `what` names the format in messages.
absl::Status CheckLinear(const QuantizedLinear& linear, const char* what) {
  const int64_t rows = linear.rows, cols = linear.cols;
  if (rows <= 0 || cols <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": shape [", rows, ", ", cols, "] must be positive"));
  }
  if (static_cast<int64_t>(linear.q.size()) != rows * cols) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": q has ", linear.q.size(), " levels, shape [",
                     rows, ", ", cols, "] needs ", rows * cols));
  }
  if (linear.scales.empty() ||
      static_cast<int64_t>(linear.scales.size()) % rows != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": scales has ", linear.scales.size(),
                     " values, not a positive multiple of rows ", rows));
  }
  if (linear.zeros.size() != linear.scales.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": zeros has ", linear.zeros.size(),
                     " values, scales ", linear.scales.size()));
  }
  if (static_cast<int64_t>(linear.g_idx.size()) != cols) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": g_idx has ", linear.g_idx.size(), " entries, cols ", cols));
  }
  const int64_t groups = linear.groups();
  for (int64_t c = 0; c < cols; ++c) {
    if (linear.g_idx[c] < 0 || linear.g_idx[c] >= groups) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": g_idx[", c, "] = ", linear.g_idx[c],
                       " is outside [0, ", groups, ")"));
    }
  }
  const int32_t levels = 1 << linear.bits;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int32_t q = linear.q[r * cols + c];
      if (q >= levels) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": level q[", r, ", ", c, "] = ", q, " is outside [0, ",
            levels, ") for ", linear.bits, " bits"));
      }
    }
  }
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t zero = linear.zeros[g * rows + r];
      if (zero < 0 || zero >= levels) {
        return absl::InvalidArgumentError(absl::StrCat(
            what, ": zero point [", g, ", ", r, "] = ", zero,
            " is outside [0, ", levels, ") for ", linear.bits, " bits"));
      }
      const float scale = linear.scales[g * rows + r];
      if (!IsFiniteHalf(FloatToHalf(scale))) {
        return absl::InvalidArgumentError(
            absl::StrCat(what, ": scale [", g, ", ", r, "] = ", scale,
                         " is not finite in fp16"));
      }
    }
  }
  return absl::OkStatus();
}

std::vector<uint16_t> HalfScales(const std::vector<float>& scales) {
  std::vector<uint16_t> out(scales.size());
  for (size_t i = 0; i < scales.size(); ++i) out[i] = FloatToHalf(scales[i]);
  return out;
}

std::vector<float> FloatScales(const std::vector<uint16_t>& scales) {
  std::vector<float> out(scales.size());
  for (size_t i = 0; i < scales.size(); ++i) out[i] = HalfToFloat(scales[i]);
  return out;
}

absl::Status CheckSize(const char* what, const char* name, size_t size,
                       int64_t expected) {
  if (static_cast<int64_t>(size) != expected) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", name, " has ", size, " elements, expected ", expected));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<PackedGptqV1> PackGptqV1(const QuantizedLinear& linear) {
  constexpr char kWhat[] = "GPTQ v1 pack";
  const int bits = linear.bits;
  if (!GptqBitsSupported(bits)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": ", bits, " bits is unsupported (2, 3, 4 or 8)"));
  }
  RETURN_IF_ERROR(CheckLinear(linear, kWhat));
  const int64_t rows = linear.rows, cols = linear.cols;
  if (cols % 32 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": in_features (cols) ", cols,
                     " must be a multiple of 32 to pack qweight"));
  }
  if (rows % 32 != 0) {
    // AutoGPTQ and GPTQModel allocate qzeros as [groups, out // 32 * bits]:
    // other widths would not load there even where they pack whole words.
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": out_features (rows) ", rows,
                     " must be a multiple of 32 to pack qzeros"));
  }

  PackedGptqV1 out;
  out.rows = rows;
  out.cols = cols;
  out.bits = bits;
  out.groups = linear.groups();
  out.qweight.assign(cols * bits / 32 * rows, 0);
  out.qzeros.assign(out.groups * (rows * bits / 32), 0);
  out.scales = HalfScales(linear.scales);
  out.g_idx = linear.g_idx;

  // qweight: column r of [cols * bits / 32, rows] is row r of q as a stream.
  std::vector<uint32_t> levels(static_cast<size_t>(std::max(rows, cols)));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      levels[c] = static_cast<uint32_t>(linear.q[r * cols + c]);
    }
    PackStream(levels.data(), cols, bits, out.qweight.data() + r, rows);
  }
  // qzeros: row g holds (zero - 1) & mask of every output, as a stream.
  const uint32_t mask = (1u << bits) - 1u;
  const int64_t zero_words = rows * bits / 32;
  for (int64_t g = 0; g < out.groups; ++g) {
    for (int64_t r = 0; r < rows; ++r) {
      levels[r] = static_cast<uint32_t>(linear.zeros[g * rows + r] - 1) & mask;
    }
    PackStream(levels.data(), rows, bits, out.qzeros.data() + g * zero_words,
               1);
  }
  return out;
}

absl::StatusOr<QuantizedLinear> UnpackGptqV1(const PackedGptqV1& packed,
                                             int group_size) {
  constexpr char kWhat[] = "GPTQ v1 unpack";
  const int bits = packed.bits;
  if (!GptqBitsSupported(bits)) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": ", bits, " bits is unsupported (2, 3, 4 or 8)"));
  }
  const int64_t rows = packed.rows, cols = packed.cols, groups = packed.groups;
  if (rows <= 0 || cols <= 0 || groups <= 0 || cols % 32 != 0 ||
      rows % 32 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWhat, ": rows ", rows, ", cols ", cols, ", groups ", groups,
        " are not a GPTQ v1 shape (multiples of 32, groups > 0)"));
  }
  RETURN_IF_ERROR(CheckSize(kWhat, "qweight", packed.qweight.size(),
                            cols * bits / 32 * rows));
  RETURN_IF_ERROR(CheckSize(kWhat, "qzeros", packed.qzeros.size(),
                            groups * (rows * bits / 32)));
  RETURN_IF_ERROR(
      CheckSize(kWhat, "scales", packed.scales.size(), groups * rows));
  RETURN_IF_ERROR(CheckSize(kWhat, "g_idx", packed.g_idx.size(), cols));
  for (int64_t c = 0; c < cols; ++c) {
    if (packed.g_idx[c] < 0 || packed.g_idx[c] >= groups) {
      return absl::InvalidArgumentError(
          absl::StrCat(kWhat, ": g_idx[", c, "] = ", packed.g_idx[c],
                       " is outside [0, ", groups, ")"));
    }
  }

  QuantizedLinear out;
  out.rows = rows;
  out.cols = cols;
  out.bits = bits;
  out.group_size = group_size;
  out.q.resize(rows * cols);
  out.zeros.resize(groups * rows);
  out.scales = FloatScales(packed.scales);
  out.g_idx = packed.g_idx;
  std::vector<uint32_t> levels(static_cast<size_t>(std::max(rows, cols)));
  for (int64_t r = 0; r < rows; ++r) {
    UnpackStream(packed.qweight.data() + r, rows, cols, bits, levels.data());
    for (int64_t c = 0; c < cols; ++c) {
      out.q[r * cols + c] = static_cast<int32_t>(levels[c]);
    }
  }
  const int64_t zero_words = rows * bits / 32;
  for (int64_t g = 0; g < groups; ++g) {
    UnpackStream(packed.qzeros.data() + g * zero_words, 1, rows, bits,
                 levels.data());
    for (int64_t r = 0; r < rows; ++r) {
      out.zeros[g * rows + r] = static_cast<int32_t>(levels[r]) + 1;
    }
  }
  return out;
}

int64_t GptqV1UnrepresentableZeros(const QuantizedLinear& linear) {
  int64_t count = 0;
  for (const int32_t zero : linear.zeros) count += zero == 0 ? 1 : 0;
  return count;
}

absl::StatusOr<PackedAwqGemm> PackAwqGemm(const QuantizedLinear& linear) {
  constexpr char kWhat[] = "AWQ GEMM pack";
  if (linear.bits != 4) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWhat, ": ", linear.bits, " bits is unsupported (only 4)"));
  }
  RETURN_IF_ERROR(CheckLinear(linear, kWhat));
  const int64_t rows = linear.rows, cols = linear.cols;
  const int64_t groups = linear.groups();
  if (rows % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        kWhat, ": out_features (rows) ", rows, " must be a multiple of 8"));
  }
  const int64_t group_size =
      linear.group_size == -1 ? cols : static_cast<int64_t>(linear.group_size);
  if (group_size <= 0 || cols % group_size != 0 ||
      cols / group_size != groups) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": group_size ", linear.group_size, " with cols ",
                     cols, " does not give the ", groups, " groups of scales"));
  }
  for (int64_t c = 0; c < cols; ++c) {
    if (linear.g_idx[c] != c / group_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          kWhat, ": g_idx[", c, "] = ", linear.g_idx[c], " is not ", c, " / ",
          group_size, " (AWQ has no act-order)"));
    }
  }

  PackedAwqGemm out;
  out.rows = rows;
  out.cols = cols;
  out.groups = groups;
  const int64_t packs = rows / 8;
  out.qweight.assign(cols * packs, 0);
  out.qzeros.assign(groups * packs, 0);
  out.scales = HalfScales(linear.scales);
  for (int64_t p = 0; p < packs; ++p) {
    for (int i = 0; i < 8; ++i) {
      const int64_t r = p * 8 + kAwqOrder[i];
      const uint8_t* q_row = linear.q.data() + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        uint32_t word = static_cast<uint32_t>(out.qweight[c * packs + p]);
        word |= static_cast<uint32_t>(q_row[c]) << (4 * i);
        out.qweight[c * packs + p] = static_cast<int32_t>(word);
      }
      for (int64_t g = 0; g < groups; ++g) {
        uint32_t word = static_cast<uint32_t>(out.qzeros[g * packs + p]);
        word |= static_cast<uint32_t>(linear.zeros[g * rows + r]) << (4 * i);
        out.qzeros[g * packs + p] = static_cast<int32_t>(word);
      }
    }
  }
  return out;
}

absl::StatusOr<QuantizedLinear> UnpackAwqGemm(const PackedAwqGemm& packed,
                                              int group_size) {
  constexpr char kWhat[] = "AWQ GEMM unpack";
  const int64_t rows = packed.rows, cols = packed.cols, groups = packed.groups;
  if (rows <= 0 || cols <= 0 || groups <= 0 || rows % 8 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": rows ", rows, ", cols ", cols, ", groups ",
                     groups, " are not a packable shape (rows % 8 == 0)"));
  }
  const bool group_ok = group_size == -1
                            ? groups == 1
                            : group_size > 0 && group_size * groups == cols;
  if (!group_ok) {
    return absl::InvalidArgumentError(
        absl::StrCat(kWhat, ": group_size ", group_size, " with cols ", cols,
                     " does not give ", groups, " groups"));
  }
  const int64_t packs = rows / 8;
  RETURN_IF_ERROR(
      CheckSize(kWhat, "qweight", packed.qweight.size(), cols * packs));
  RETURN_IF_ERROR(
      CheckSize(kWhat, "qzeros", packed.qzeros.size(), groups * packs));
  RETURN_IF_ERROR(
      CheckSize(kWhat, "scales", packed.scales.size(), groups * rows));

  QuantizedLinear out;
  out.rows = rows;
  out.cols = cols;
  out.bits = 4;
  out.group_size = group_size;
  out.q.resize(rows * cols);
  out.zeros.resize(groups * rows);
  out.scales = FloatScales(packed.scales);
  out.g_idx.resize(cols);
  const int64_t columns_per_group = cols / groups;
  for (int64_t c = 0; c < cols; ++c) {
    out.g_idx[c] = static_cast<int32_t>(c / columns_per_group);
  }
  for (int64_t p = 0; p < packs; ++p) {
    for (int i = 0; i < 8; ++i) {
      const int64_t r = p * 8 + kAwqOrder[i];
      uint8_t* q_row = out.q.data() + r * cols;
      for (int64_t c = 0; c < cols; ++c) {
        q_row[c] = static_cast<uint8_t>(
            (static_cast<uint32_t>(packed.qweight[c * packs + p]) >> (4 * i)) &
            0xfu);
      }
      for (int64_t g = 0; g < groups; ++g) {
        out.zeros[g * rows + r] = static_cast<int32_t>(
            (static_cast<uint32_t>(packed.qzeros[g * packs + p]) >> (4 * i)) &
            0xfu);
      }
    }
  }
  return out;
}

}  // namespace quant
