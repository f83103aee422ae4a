// Strict, bounded JSON parsing of untrusted files (safetensors headers and
// indexes, config.json, tokenizer files) and bounded descriptions of JSON
// values for error messages.
#ifndef COMMON_JSON_UTIL_H_
#define COMMON_JSON_UTIL_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace quant {

// Deepest nesting of arrays and objects ParseJsonStrict accepts: `[]` and
// `{}` are one level, `[[1]]` two. Real headers and configs use fewer than
// ten; the bound keeps every later recursive walk (dump(), destruction,
// comparisons) far away from the stack limit.
inline constexpr int kMaxJsonDepth = 64;

// Parses `text` as one JSON value. Stricter than nlohmann's defaults:
// InvalidArgument, each message starting with `what`, when the text
//  - is not valid UTF-8 ("<what> is not valid UTF-8 at byte N (near '...')"),
//  - holds a NUL byte ("<what> is not well-formed JSON: NUL byte at offset N"),
//  - is not one well-formed JSON value ("<what> is not well-formed JSON: parse
//    error at line L, column C: ..."),
//  - nests deeper than kMaxJsonDepth ("<what> nests deeper than 64 levels"),
//  - repeats a key within one object, at any depth ("<what> has duplicate key
//    'k'"; nlohmann would silently keep the last).
// Never throws. Work and memory are linear in the size of the text; deeply
// nested input is rejected as soon as the limit is crossed.
absl::StatusOr<nlohmann::json> ParseJsonStrict(absl::string_view text,
                                               absl::string_view what);

// A short rendering of a JSON value for error messages: its type name and a
// compact preview, e.g. `number 5`, `string "64"`, `array [1,2]`,
// `object {"a":1}`, `null`. Previews are cut to about 64 bytes ("..."); a cut
// container says how many elements it has (`array of 100000 elements
// [0,1,2,...`) and a cut string how many bytes (`string "aaa..." (5000
// bytes)`). Time and stack are bounded whatever the size or depth of `v`:
// nothing is serialised beyond what is shown. Never throws; the result is
// valid UTF-8.
std::string DescribeJson(const nlohmann::json& v);

}  // namespace quant

#endif  // COMMON_JSON_UTIL_H_
