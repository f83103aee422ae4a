#include "common/json_util.h"

#include <algorithm>
#include <cstddef>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace quant {
namespace {

using json = nlohmann::json;

// Longest parser explanation quoted in a message (nlohmann quotes the last
// token read, which may be a whole unterminated string).
constexpr size_t kMaxParseErrorBytes = 200;

// The longest prefix of `s` that is at most `max_bytes` long and valid UTF-8.
std::string Utf8Prefix(absl::string_view s, size_t max_bytes) {
  s = s.substr(0, max_bytes);
  size_t bad = 0;
  if (!IsValidUtf8(s, &bad)) s = s.substr(0, bad);
  return std::string(s);
}

// A first pass over the text that builds nothing: checks nesting depth and
// duplicate keys, and keeps the parser's explanation of a syntax error.
// Returning false from any event stops the parse at once.
class StrictValidator : public json::json_sax_t {
 public:
  explicit StrictValidator(absl::string_view what) : what_(what) {}

  const absl::Status& status() const { return status_; }

  bool null() override { return true; }
  bool boolean(bool /*val*/) override { return true; }
  bool number_integer(number_integer_t /*val*/) override { return true; }
  bool number_unsigned(number_unsigned_t /*val*/) override { return true; }
  bool number_float(number_float_t /*val*/,
                    const string_t& /*literal*/) override {
    return true;
  }
  bool string(string_t& /*val*/) override { return true; }
  bool binary(binary_t& /*val*/) override { return true; }

  bool start_object(std::size_t /*elements*/) override {
    if (!Enter()) return false;
    open_objects_.emplace_back();
    return true;
  }
  bool key(string_t& val) override {
    if (open_objects_.empty()) return true;  // Cannot happen for JSON text.
    if (open_objects_.back().contains(val)) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat(what_, " has duplicate key ", QuoteForMessage(val)));
      return false;
    }
    open_objects_.back().insert(std::move(val));
    return true;
  }
  bool end_object() override {
    if (!open_objects_.empty()) open_objects_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t /*elements*/) override { return Enter(); }
  bool end_array() override {
    --depth_;
    return true;
  }

  bool parse_error(std::size_t position, const std::string& /*last_token*/,
                   const json::exception& ex) override {
    // "[json.exception.parse_error.101] parse error at line 1, column 5: ..."
    absl::string_view detail = ex.what();
    const size_t tag_end = detail.find("] ");
    if (!detail.empty() && detail[0] == '[' &&
        tag_end != absl::string_view::npos) {
      detail.remove_prefix(tag_end + 2);
    }
    std::string text = Utf8Prefix(detail, kMaxParseErrorBytes);
    if (text.size() < detail.size()) text += "...";
    status_ = absl::InvalidArgumentError(absl::StrCat(
        what_, " is not well-formed JSON: ", text, " (byte ", position, ")"));
    return false;
  }

 private:
  bool Enter() {
    if (++depth_ > kMaxJsonDepth) {
      status_ = absl::InvalidArgumentError(
          absl::StrCat(what_, " nests deeper than ", kMaxJsonDepth, " levels"));
      return false;
    }
    return true;
  }

  const absl::string_view what_;
  absl::Status status_;
  int depth_ = 0;
  std::vector<absl::flat_hash_set<std::string>> open_objects_;
};

// ---- DescribeJson ----

// Bytes of preview shown; nesting levels shown before "[...]" / "{...}".
constexpr size_t kPreviewBytes = 64;
constexpr int kPreviewDepth = 8;

// Collects at most kPreviewBytes bytes; anything beyond marks it cut.
class Preview {
 public:
  bool cut() const { return cut_; }
  bool elided() const { return elided_; }
  void Elide() { elided_ = true; }
  void Cut() { cut_ = true; }

  void Append(absl::string_view s) {
    if (cut_) return;
    const size_t room = kPreviewBytes - out_.size();
    if (s.size() <= room) {
      out_.append(s.data(), s.size());
    } else {
      out_.append(s.data(), room);
      cut_ = true;
    }
  }

  // The preview, ending in "..." when it was cut (never mid-sequence).
  std::string Finish() && {
    if (cut_) {
      out_ = Utf8Prefix(out_, out_.size());
      out_ += "...";
    }
    return std::move(out_);
  }

 private:
  std::string out_;
  bool cut_ = false;
  bool elided_ = false;
};

// A JSON string literal for `s`, of at most about kPreviewBytes of `s`: the
// whole string is never copied or escaped.
void RenderString(const std::string& s, Preview* p) {
  size_t take = std::min(s.size(), kPreviewBytes);
  // Do not split a UTF-8 sequence (continuation bytes are 10xxxxxx).
  for (int back = 0; back < 3 && take > 0 && take < s.size() &&
                     (static_cast<unsigned char>(s[take]) & 0xc0) == 0x80;
       ++back) {
    --take;
  }
  std::string literal =
      json(s.substr(0, take))
          .dump(-1, ' ', false, json::error_handler_t::replace);
  if (take < s.size()) {
    literal.pop_back();  // The closing quote: the string goes on.
    p->Append(literal);
    p->Cut();
    return;
  }
  p->Append(literal);
}

// Appends a compact rendering of `v` until the preview is full. Recursion
// stops at kPreviewDepth, and every call appends at least one byte, so both
// stack and time are bounded by the preview size.
void Render(const json& v, int depth, Preview* p) {
  if (p->cut()) return;
  switch (v.type()) {
    case json::value_t::string:
      RenderString(v.get_ref<const std::string&>(), p);
      return;
    case json::value_t::array: {
      if (v.empty()) {
        p->Append("[]");
        return;
      }
      if (depth >= kPreviewDepth) {
        p->Append("[...]");
        p->Elide();
        return;
      }
      p->Append("[");
      bool first = true;
      for (const json& element : v) {
        if (p->cut()) return;
        if (!first) p->Append(",");
        first = false;
        Render(element, depth + 1, p);
      }
      p->Append("]");
      return;
    }
    case json::value_t::object: {
      if (v.empty()) {
        p->Append("{}");
        return;
      }
      if (depth >= kPreviewDepth) {
        p->Append("{...}");
        p->Elide();
        return;
      }
      p->Append("{");
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (p->cut()) return;
        if (!first) p->Append(",");
        first = false;
        RenderString(it.key(), p);
        p->Append(":");
        Render(it.value(), depth + 1, p);
      }
      p->Append("}");
      return;
    }
    case json::value_t::binary:
      p->Append("<binary>");
      return;
    case json::value_t::discarded:
      p->Append("<discarded>");
      return;
    default:  // null, boolean, numbers: short.
      p->Append(v.dump());
      return;
  }
}

}  // namespace

absl::StatusOr<json> ParseJsonStrict(absl::string_view text,
                                     absl::string_view what) {
  size_t bad = 0;
  if (!IsValidUtf8(text, &bad)) {
    // Up to 16 bytes either side, starting on a character boundary (all
    // bytes before `bad` are valid UTF-8).
    size_t begin = bad >= 16 ? bad - 16 : 0;
    while (begin < bad &&
           (static_cast<unsigned char>(text[begin]) & 0xc0) == 0x80) {
      ++begin;
    }
    const size_t end = std::min(text.size(), bad + 16);
    return absl::InvalidArgumentError(
        absl::StrCat(what, " is not valid UTF-8 at byte ", bad, " (near ",
                     QuoteForMessage(text.substr(begin, end - begin)), ")"));
  }
  // nlohmann stops at a NUL byte and would ignore whatever follows it.
  const size_t nul = text.find('\0');
  if (nul != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " is not well-formed JSON: NUL byte at offset ", nul));
  }
  try {
    StrictValidator validator(what);
    const bool ok = json::sax_parse(text.begin(), text.end(), &validator);
    if (!validator.status().ok()) return validator.status();
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " is not well-formed JSON"));
    }
    json parsed = json::parse(text.begin(), text.end(), nullptr,
                              /*allow_exceptions=*/false);
    if (parsed.is_discarded()) {  // The validator accepted it: cannot happen.
      return absl::InvalidArgumentError(
          absl::StrCat(what, " is not well-formed JSON"));
    }
    return parsed;
  } catch (const std::exception& e) {  // nlohmann should not throw here.
    return absl::InternalError(
        absl::StrCat(what, ": JSON parser failed: ", e.what()));
  }
}

std::string DescribeJson(const json& v) {
  switch (v.type()) {
    case json::value_t::null:
      return "null";
    case json::value_t::binary:
      return absl::StrCat("binary of ", v.get_binary().size(), " bytes");
    case json::value_t::discarded:
      return "discarded value";
    case json::value_t::string: {
      Preview p;
      Render(v, 0, &p);
      const bool cut = p.cut();
      std::string text = std::move(p).Finish();
      if (!cut) return absl::StrCat("string ", text);
      return absl::StrCat("string ", text, " (",
                          v.get_ref<const std::string&>().size(), " bytes)");
    }
    case json::value_t::array:
    case json::value_t::object: {
      Preview p;
      Render(v, 0, &p);
      const bool partial = p.cut() || p.elided();
      std::string text = std::move(p).Finish();
      if (!partial) return absl::StrCat(v.type_name(), " ", text);
      const size_t n = v.size();
      const char* unit = v.is_array() ? (n == 1 ? " element " : " elements ")
                                      : (n == 1 ? " member " : " members ");
      return absl::StrCat(v.type_name(), " of ", n, unit, text);
    }
    default:  // boolean, numbers.
      return absl::StrCat(v.type_name(), " ", v.dump());
  }
}

}  // namespace quant
