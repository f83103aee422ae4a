// The tensor types of GGUF files, with llama.cpp's numeric ids and block
// geometry. This table is the one place block sizes are stated; the block
// structs in format/ggml_blocks.h static_assert against it (hence constexpr).
#ifndef FORMAT_GGML_TYPE_H_
#define FORMAT_GGML_TYPE_H_

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace quant {

enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kBF16 = 30,
};

struct GgmlTypeTraits {
  GgmlType type;
  const char* name;    // As llama.cpp prints it: "q4_0", "q4_K", "bf16", ...
  int64_t block_size;  // Elements per block (1 for plain types).
  int64_t type_size;   // Bytes per block.
};

// Every type this project knows.
inline constexpr GgmlTypeTraits kAllGgmlTypes[] = {
    {GgmlType::kF32, "f32", 1, 4},       {GgmlType::kF16, "f16", 1, 2},
    {GgmlType::kQ4_0, "q4_0", 32, 18},   {GgmlType::kQ4_1, "q4_1", 32, 20},
    {GgmlType::kQ5_0, "q5_0", 32, 22},   {GgmlType::kQ5_1, "q5_1", 32, 24},
    {GgmlType::kQ8_0, "q8_0", 32, 34},   {GgmlType::kQ8_1, "q8_1", 32, 36},
    {GgmlType::kQ2_K, "q2_K", 256, 84},  {GgmlType::kQ3_K, "q3_K", 256, 110},
    {GgmlType::kQ4_K, "q4_K", 256, 144}, {GgmlType::kQ5_K, "q5_K", 256, 176},
    {GgmlType::kQ6_K, "q6_K", 256, 210}, {GgmlType::kQ8_K, "q8_K", 256, 292},
    {GgmlType::kI8, "i8", 1, 1},         {GgmlType::kI16, "i16", 1, 2},
    {GgmlType::kI32, "i32", 1, 4},       {GgmlType::kI64, "i64", 1, 8},
    {GgmlType::kF64, "f64", 1, 8},       {GgmlType::kBF16, "bf16", 1, 2},
};

namespace ggml_type_internal {

[[noreturn]] inline void DieUnknownGgmlType(uint32_t id) {
  std::fprintf(stderr, "GetGgmlTypeTraits: %u is not a GgmlType enumerator\n",
               id);
  std::abort();
}

}  // namespace ggml_type_internal

// Traits of a known type, or nullptr for an id GGUF does not define (or one
// this project cannot size, such as the removed Q4_2 ids). Use this for ids
// read from files.
constexpr const GgmlTypeTraits* FindGgmlType(uint32_t id) {
  for (const GgmlTypeTraits& traits : kAllGgmlTypes) {
    if (static_cast<uint32_t>(traits.type) == id) return &traits;
  }
  return nullptr;
}

// Traits of an enumerator. A value that is not one (a bad static_cast) is a
// programming error: it aborts at run time and fails to compile in a constant
// expression.
constexpr const GgmlTypeTraits& GetGgmlTypeTraits(GgmlType type) {
  const GgmlTypeTraits* traits = FindGgmlType(static_cast<uint32_t>(type));
  if (traits == nullptr) {
    ggml_type_internal::DieUnknownGgmlType(static_cast<uint32_t>(type));
  }
  return *traits;
}

inline absl::string_view GgmlTypeName(GgmlType type) {
  return GetGgmlTypeTraits(type).name;
}

// Parses "Q4_0", "q8_0", "F16", "bf16", "Q4_K", ... (case-insensitive).
absl::StatusOr<GgmlType> ParseGgmlType(absl::string_view name);

// Bytes of a row of `elements` values. Fails when `elements` is negative or
// not a multiple of the type's block size, or the size overflows.
absl::StatusOr<uint64_t> GgmlRowBytes(GgmlType type, int64_t elements);

}  // namespace quant

#endif  // FORMAT_GGML_TYPE_H_
