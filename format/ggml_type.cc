#include "format/ggml_type.h"

#include <limits>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace quant {

absl::StatusOr<GgmlType> ParseGgmlType(absl::string_view name) {
  for (const GgmlTypeTraits& traits : kAllGgmlTypes) {
    if (absl::EqualsIgnoreCase(name, traits.name)) return traits.type;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown GGML tensor type '", name, "'"));
}

absl::StatusOr<uint64_t> GgmlRowBytes(GgmlType type, int64_t elements) {
  const GgmlTypeTraits& traits = GetGgmlTypeTraits(type);
  if (elements < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "row of ", elements, " elements: the count must not be negative"));
  }
  if (elements % traits.block_size != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("row of ", elements, " elements is not a multiple of the ",
                     traits.name, " block size ", traits.block_size));
  }
  const uint64_t blocks = static_cast<uint64_t>(elements / traits.block_size);
  if (blocks > std::numeric_limits<uint64_t>::max() /
                   static_cast<uint64_t>(traits.type_size)) {
    return absl::InvalidArgumentError("tensor byte size overflows 64 bits");
  }
  return blocks * static_cast<uint64_t>(traits.type_size);
}

}  // namespace quant
