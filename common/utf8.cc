#include "common/utf8.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace quant {
namespace {

// Length of the well-formed UTF-8 sequence starting at `s[i]`, or 0 when the
// bytes there are not one (bad lead byte, cut short, bad continuation byte,
// overlong form, surrogate, beyond U+10FFFF).
size_t SequenceLength(absl::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  const unsigned char c = p[i];
  if (c < 0x80) return 1;
  size_t len = 0;
  uint32_t cp = 0;
  uint32_t min_cp = 0;
  if ((c & 0xe0) == 0xc0) {
    len = 2;
    cp = c & 0x1f;
    min_cp = 0x80;
  } else if ((c & 0xf0) == 0xe0) {
    len = 3;
    cp = c & 0x0f;
    min_cp = 0x800;
  } else if ((c & 0xf8) == 0xf0) {
    len = 4;
    cp = c & 0x07;
    min_cp = 0x10000;
  } else {
    return 0;  // A continuation byte, or 0xf8..0xff.
  }
  if (n - i < len) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((p[i + k] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i + k] & 0x3f);
  }
  if (cp < min_cp || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) {
    return 0;
  }
  return len;
}

void AppendHexByte(unsigned char c, std::string* out) {
  constexpr char kHex[] = "0123456789abcdef";
  out->append("\\x");
  out->push_back(kHex[c >> 4]);
  out->push_back(kHex[c & 0xf]);
}

}  // namespace

bool IsValidUtf8(absl::string_view s, size_t* bad_offset) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = SequenceLength(s, i);
    if (len == 0) {
      if (bad_offset != nullptr) *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

std::string QuoteForMessage(absl::string_view s, size_t max_bytes) {
  std::string out = "'";
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = SequenceLength(s, i);
    const size_t take = len == 0 ? 1 : len;
    if (i + take > max_bytes) break;
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (len > 1) {
      out.append(s.data() + i, len);
    } else if (len == 0) {
      AppendHexByte(c, &out);
    } else if (c == '\'' || c == '\\') {
      out.push_back('\\');
      out.push_back(static_cast<char>(c));
    } else if (c == '\n') {
      out.append("\\n");
    } else if (c == '\r') {
      out.append("\\r");
    } else if (c == '\t') {
      out.append("\\t");
    } else if (c < 0x20 || c == 0x7f) {
      AppendHexByte(c, &out);
    } else {
      out.push_back(static_cast<char>(c));
    }
    i += take;
  }
  if (i < s.size()) out.append("...");
  out.push_back('\'');
  return out;
}

std::string BoundedText(absl::string_view s, size_t max_bytes) {
  const bool plain = s.size() <= max_bytes && IsValidUtf8(s) &&
                     std::none_of(s.begin(), s.end(), [](char ch) {
                       const unsigned char c = static_cast<unsigned char>(ch);
                       return (c < 0x20 && c != '\n' && c != '\t') || c == 0x7f;
                     });
  if (plain) return std::string(s);
  return absl::StrCat(QuoteForMessage(s, max_bytes), " (", s.size(), " bytes)");
}

}  // namespace quant
