// UTF-8 validation and a safe rendering of untrusted byte strings (names read
// from files) for error messages.
#ifndef COMMON_UTF8_H_
#define COMMON_UTF8_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace quant {

// True when `s` is well-formed UTF-8 (no overlong forms, no surrogates, at
// most U+10FFFF). On failure, `*bad_offset` (if given) is the offset of the
// first byte of the offending sequence.
bool IsValidUtf8(absl::string_view s, size_t* bad_offset = nullptr);

// `s` rendered for an error message, in single quotes: printable ASCII and
// well-formed multi-byte UTF-8 sequences are kept as they are; quote and
// backslash are escaped (\' and \\), \n \r \t as such, every other control
// byte and every byte that is not part of a well-formed UTF-8 sequence as
// \xNN. At most `max_bytes` bytes of `s` are rendered (never splitting a
// sequence); a longer `s` ends in "..." inside the quotes. The result is
// always valid UTF-8, e.g. QuoteForMessage("bad\xff") == "'bad\\xff'".
std::string QuoteForMessage(absl::string_view s, size_t max_bytes = 128);

// Text from another process (an error a worker reports, the name of its
// kernel) as it may be stored and shown: `s` itself when it is well-formed
// UTF-8 of at most `max_bytes` with no control bytes but \n and \t; else
// QuoteForMessage(s, max_bytes) followed by " (N bytes)".
std::string BoundedText(absl::string_view s, size_t max_bytes);

}  // namespace quant

#endif  // COMMON_UTF8_H_
