#include "format/tokenizer_import.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/string_view.h"
#include "common/file.h"
#include "common/json_util.h"
#include "common/sentencepiece.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace quant {
namespace {

using json = nlohmann::json;

// Token ids beyond this are rejected when no vocab_size bounds them.
constexpr int64_t kMaxTokens = int64_t{1} << 24;

// Split regexes of the tokenizer.json pre-tokenizers llama.cpp knows by name.
constexpr char kLlama3Regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
constexpr char kQwen2Regex[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

bool FileExists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

absl::Status Malformed(const std::string& path, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", what));
}

absl::Status WrongType(const std::string& path, absl::string_view field,
                       absl::string_view want, const json& got) {
  return Malformed(path, absl::StrCat("`", field, "` must be ", want, ", got ",
                                      DescribeJson(got)));
}

// Reads and parses an optional JSON file; nullopt when it does not exist.
absl::StatusOr<std::optional<json>> ReadOptionalJson(const std::string& path) {
  if (!FileExists(path)) return std::optional<json>();
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  ASSIGN_OR_RETURN(json j, ParseJsonStrict(text, path));
  if (!j.is_object()) {
    return Malformed(
        path, absl::StrCat("must hold a JSON object, got ", DescribeJson(j)));
  }
  return std::optional<json>(std::move(j));
}

const json* Member(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// A non-negative integer id that fits int64.
std::optional<int64_t> AsId(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return std::nullopt;
    }
    return static_cast<int64_t>(u);
  }
  if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    if (i >= 0) return i;
  }
  return std::nullopt;
}

// A special token in tokenizer_config.json: "<s>", {"content": "<s>", ...}
// (the AddedToken form), or null.
absl::StatusOr<std::optional<std::string>> SpecialTokenString(
    const json& config, const char* key, const std::string& path) {
  const json* v = Member(config, key);
  if (v == nullptr) return std::optional<std::string>();
  if (v->is_string()) return std::optional<std::string>(v->get<std::string>());
  if (v->is_object()) {
    const json* content = Member(*v, "content");
    if (content != nullptr && content->is_string()) {
      return std::optional<std::string>(content->get<std::string>());
    }
  }
  return WrongType(path, key, "a string or {\"content\": string}", *v);
}

absl::StatusOr<std::optional<bool>> OptionalBool(const json& obj,
                                                 const char* key,
                                                 const std::string& path) {
  const json* v = Member(obj, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return WrongType(path, key, "a boolean", *v);
  return std::optional<bool>(v->get<bool>());
}

// ---- SentencePiece (tokenizer.model) ----

// Reads a protobuf varint at bytes[*pos]; false when cut short.
bool ReadVarint(absl::string_view bytes, size_t* pos, uint64_t* value) {
  *value = 0;
  for (int shift = 0; shift < 64 && *pos < bytes.size(); shift += 7) {
    const uint8_t b = static_cast<uint8_t>(bytes[(*pos)++]);
    *value |= static_cast<uint64_t>(b & 0x7f) << shift;
    if ((b & 0x80) == 0) return true;
  }
  return false;
}

// Calls visit(field, wire_type, payload) for each field of a protobuf
// message (payload: the bytes of a length-delimited field, else empty);
// false when the bytes are not a well-formed message of such fields.
template <typename Visit>
bool ForEachProtoField(absl::string_view bytes, Visit visit) {
  size_t pos = 0;
  while (pos < bytes.size()) {
    uint64_t key, n;
    if (!ReadVarint(bytes, &pos, &key)) return false;
    absl::string_view payload;
    switch (key & 7) {
      case 0:
        if (!ReadVarint(bytes, &pos, &n)) return false;
        break;
      case 1:
      case 5:
        n = (key & 7) == 1 ? 8 : 4;
        if (bytes.size() - pos < n) return false;
        pos += n;
        break;
      case 2:
        if (!ReadVarint(bytes, &pos, &n) || bytes.size() - pos < n) {
          return false;
        }
        payload = bytes.substr(pos, n);
        pos += n;
        break;
      default:
        return false;  // Groups: not in sentencepiece_model.proto.
    }
    visit(key >> 3, key & 7, payload);
  }
  return true;
}

// libsentencepiece 0.1.97 (Debian 12's) rejects an empty piece but puts
// the pieces into its tries as C strings: a piece that starts with a NUL
// byte makes Darts throw ("zero-length key"), and the exception ends the
// process (found by tests/fuzz/tokenizer_model_fuzz). This look at the
// ModelProto's pieces (field 1, each with its text in field 1) rejects empty
// pieces and any piece holding a NUL before the library sees the file. Bytes
// that are not a well-formed message are left to the library's own parser.
absl::Status CheckPieces(const std::string& path) {
  ASSIGN_OR_RETURN(std::string bytes, ReadFileToString(path));
  int64_t index = 0;
  int64_t bad = -1;
  ForEachProtoField(
      bytes, [&](uint64_t field, int wire_type, absl::string_view payload) {
        if (field != 1 || wire_type != 2) return;
        absl::string_view piece;  // An absent piece is the empty string.
        ForEachProtoField(payload, [&](uint64_t f, int w, absl::string_view p) {
          if (f == 1 && w == 2) piece = p;
        });
        const bool ok = !piece.empty() && piece.find('\0') == piece.npos;
        if (!ok && bad < 0) bad = index;
        ++index;
      });
  if (bad >= 0) {
    return Malformed(path, absl::StrCat("not a SentencePiece model: piece ",
                                        bad, " is empty or holds a NUL byte"));
  }
  return absl::OkStatus();
}

absl::Status ImportSentencePiece(const std::string& path, GgufTokenizer* out) {
  RETURN_IF_ERROR(CheckPieces(path));
  absl::StatusOr<std::unique_ptr<SentencePieceModel>> loaded =
      SentencePieceModel::Load(path);
  if (loaded.status().code() == absl::StatusCode::kInvalidArgument) {
    return Malformed(path, absl::StrCat("not a SentencePiece model: ",
                                        loaded.status().message()));
  }
  if (!loaded.ok()) return loaded.status();
  const SentencePieceModel& sp = **loaded;
  const int n = sp.PieceSize();
  out->model = "llama";
  out->pre = "default";
  out->tokens.reserve(n);
  out->scores.reserve(n);
  out->token_types.reserve(n);
  for (int id = 0; id < n; ++id) {
    out->tokens.push_back(sp.IdToPiece(id));
    out->scores.push_back(sp.Score(id));
    int32_t type = kTokenTypeNormal;
    if (sp.IsUnknown(id)) {
      type = kTokenTypeUnknown;
    } else if (sp.IsControl(id)) {
      type = kTokenTypeControl;
    } else if (sp.IsUnused(id)) {
      type = kTokenTypeUnused;
    } else if (sp.IsByte(id)) {
      type = kTokenTypeByte;
    }
    out->token_types.push_back(type);
  }
  if (sp.bos_id() >= 0) out->bos_id = sp.bos_id();
  if (sp.eos_id() >= 0) out->eos_id = sp.eos_id();
  if (sp.unk_id() >= 0) out->unk_id = sp.unk_id();
  if (sp.pad_id() >= 0) out->pad_id = sp.pad_id();
  return absl::OkStatus();
}

// ---- tokenizer.json (byte-level BPE) ----

// True when a pre_tokenizer / decoder tree contains a node of `type`.
bool ContainsType(const json& node, absl::string_view type, int depth = 0) {
  if (depth > 16) return false;
  if (node.is_object()) {
    const json* t = Member(node, "type");
    if (t != nullptr && t->is_string() && t->get<std::string>() == type) {
      return true;
    }
    for (const auto& item : node.items()) {
      if (ContainsType(item.value(), type, depth + 1)) return true;
    }
  } else if (node.is_array()) {
    for (const json& item : node) {
      if (ContainsType(item, type, depth + 1)) return true;
    }
  }
  return false;
}

// The Split regexes in a pre_tokenizer tree.
void CollectSplitRegexes(const json& node, std::vector<std::string>* out,
                         int depth = 0) {
  if (depth > 16) return;
  if (node.is_object()) {
    const json* t = Member(node, "type");
    const json* pattern = Member(node, "pattern");
    if (t != nullptr && t->is_string() && t->get<std::string>() == "Split" &&
        pattern != nullptr) {
      const json* regex = Member(*pattern, "Regex");
      if (regex != nullptr && regex->is_string()) {
        out->push_back(regex->get<std::string>());
      }
    }
    for (const auto& item : node.items()) {
      CollectSplitRegexes(item.value(), out, depth + 1);
    }
  } else if (node.is_array()) {
    for (const json& item : node) CollectSplitRegexes(item, out, depth + 1);
  }
}

std::string PreTokenizerName(const json& root) {
  const json* pre = Member(root, "pre_tokenizer");
  if (pre == nullptr) return "default";
  std::vector<std::string> regexes;
  CollectSplitRegexes(*pre, &regexes);
  for (const std::string& r : regexes) {
    if (r == kLlama3Regex) return "llama-bpe";
    if (r == kQwen2Regex) return "qwen2";
  }
  return "default";
}

// The special tokens a TemplateProcessing post-processor puts first and last
// around a single sequence ("" when that end is not a special token).
void TemplateEnds(const json& root, std::string* first, std::string* last) {
  const json* post = Member(root, "post_processor");
  if (post == nullptr) return;
  std::vector<const json*> candidates = {post};
  if (const json* procs = Member(*post, "processors")) {
    if (procs->is_array()) {
      for (const json& p : *procs) candidates.push_back(&p);
    }
  }
  for (const json* p : candidates) {
    const json* type = Member(*p, "type");
    if (type == nullptr || !type->is_string() ||
        type->get<std::string>() != "TemplateProcessing") {
      continue;
    }
    const json* single = Member(*p, "single");
    if (single == nullptr || !single->is_array() || single->empty()) return;
    auto special_id = [](const json& item) -> std::string {
      const json* st = Member(item, "SpecialToken");
      if (st == nullptr) return "";
      const json* id = Member(*st, "id");
      return id != nullptr && id->is_string() ? id->get<std::string>() : "";
    };
    *first = special_id(single->front());
    *last = special_id(single->back());
    return;
  }
}

// What the BPE import needs beyond the token lists.
struct BpeExtras {
  std::optional<std::string> unk_token;
  std::string template_first, template_last;
};

absl::Status ImportBpeJson(const std::string& path, int64_t vocab_size,
                           GgufTokenizer* out, BpeExtras* extras) {
  ASSIGN_OR_RETURN(std::optional<json> parsed, ReadOptionalJson(path));
  if (!parsed.has_value()) {
    return absl::NotFoundError(absl::StrCat(path, " does not exist"));
  }
  const json& root = *parsed;
  const json* model = Member(root, "model");
  if (model == nullptr || !model->is_object()) {
    return Malformed(path, "missing object `model`");
  }
  if (const json* type = Member(*model, "type")) {
    if (!type->is_string())
      return WrongType(path, "model.type", "a string", *type);
    if (type->get<std::string>() != "BPE") {
      return absl::UnimplementedError(
          absl::StrCat(path, ": `model.type` \"", type->get<std::string>(),
                       "\" is not supported (only BPE)"));
    }
  }
  ASSIGN_OR_RETURN(std::optional<bool> byte_fallback,
                   OptionalBool(*model, "byte_fallback", path));
  const json* pre = Member(root, "pre_tokenizer");
  const json* decoder = Member(root, "decoder");
  if (byte_fallback.value_or(false) ||
      (pre != nullptr && ContainsType(*pre, "Metaspace")) ||
      (decoder != nullptr && ContainsType(*decoder, "Metaspace"))) {
    return absl::UnimplementedError(absl::StrCat(
        path,
        ": a SentencePiece-style BPE (byte_fallback / Metaspace) needs its "
        "tokenizer.model, which the directory lacks"));
  }

  // id -> token from model.vocab, then added_tokens (which take precedence).
  const json* vocab = Member(*model, "vocab");
  if (vocab == nullptr || !vocab->is_object()) {
    return Malformed(path, "`model.vocab` must be an object of token -> id");
  }
  const json* added = Member(root, "added_tokens");
  if (added != nullptr && !added->is_array()) {
    return WrongType(path, "added_tokens", "an array", *added);
  }
  // Ids are bounded by the model's vocab_size or, without one, by the entry
  // count (a few unassigned ids are normal; millions are not).
  const int64_t entries = static_cast<int64_t>(
      vocab->size() + (added != nullptr ? added->size() : 0));
  const int64_t limit =
      vocab_size > 0 ? vocab_size : std::min(kMaxTokens, 2 * entries + 1024);
  std::vector<std::optional<std::string>> by_id;
  std::vector<int32_t> types;
  auto assign = [&](int64_t id, const std::string& token, int32_t type,
                    bool override_existing) -> absl::Status {
    if (id >= limit) {
      if (vocab_size > 0) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": token \"", token, "\" has id ", id,
                         ", so the tokenizer has at least ", id + 1,
                         " tokens but the model's vocab_size is ", vocab_size));
      }
      return Malformed(path, absl::StrCat("token \"", token, "\" has id ", id,
                                          ", far beyond the ", entries,
                                          " entries of the vocabulary"));
    }
    if (static_cast<size_t>(id) >= by_id.size()) {
      by_id.resize(id + 1);
      types.resize(id + 1, kTokenTypeUnused);
    }
    if (by_id[id].has_value() && !override_existing) {
      return Malformed(path, absl::StrCat("tokens \"", *by_id[id], "\" and \"",
                                          token, "\" share id ", id));
    }
    by_id[id] = token;
    types[id] = type;
    return absl::OkStatus();
  };
  for (const auto& item : vocab->items()) {
    const std::optional<int64_t> id = AsId(item.value());
    if (!id.has_value()) {
      return WrongType(path, absl::StrCat("model.vocab[\"", item.key(), "\"]"),
                       "a non-negative integer id", item.value());
    }
    RETURN_IF_ERROR(assign(*id, item.key(), kTokenTypeNormal, false));
  }
  if (added != nullptr) {
    for (size_t i = 0; i < added->size(); ++i) {
      const json& t = (*added)[i];
      const json* id = Member(t, "id");
      const json* content = Member(t, "content");
      const std::optional<int64_t> id_value =
          id != nullptr ? AsId(*id) : std::nullopt;
      if (!id_value.has_value() || content == nullptr ||
          !content->is_string()) {
        return WrongType(path, absl::StrCat("added_tokens[", i, "]"),
                         "{\"id\": integer, \"content\": string, ...}", t);
      }
      ASSIGN_OR_RETURN(std::optional<bool> special,
                       OptionalBool(t, "special", path));
      RETURN_IF_ERROR(assign(
          *id_value, content->get<std::string>(),
          special.value_or(false) ? kTokenTypeControl : kTokenTypeUserDefined,
          /*override_existing=*/true));
    }
  }
  out->model = "gpt2";
  out->pre = PreTokenizerName(root);
  out->tokens.reserve(by_id.size());
  for (size_t id = 0; id < by_id.size(); ++id) {
    out->tokens.push_back(
        by_id[id].has_value() ? *by_id[id] : absl::StrCat("[PAD", id, "]"));
  }
  out->token_types = std::move(types);

  // Merges: "a b" strings or ["a", "b"] pairs (tokenizers >= 0.20).
  const json* merges = Member(*model, "merges");
  if (merges == nullptr) return Malformed(path, "missing `model.merges`");
  if (!merges->is_array()) {
    return WrongType(path, "model.merges", "an array", *merges);
  }
  out->merges.reserve(merges->size());
  for (size_t i = 0; i < merges->size(); ++i) {
    const json& m = (*merges)[i];
    if (m.is_string()) {
      std::string s = m.get<std::string>();
      const size_t space = s.size() > 1 ? s.find(' ', 1) : std::string::npos;
      if (space == std::string::npos || space + 1 >= s.size()) {
        return Malformed(path, absl::StrCat("model.merges[", i, "] \"", s,
                                            "\" is not of the form \"a b\""));
      }
      out->merges.push_back(std::move(s));
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() &&
               m[1].is_string() && !m[0].get<std::string>().empty() &&
               !m[1].get<std::string>().empty()) {
      // A space inside a part would make "a b" ambiguous: write it as the
      // byte-level character for 0x20 (U+0120), as gguf-py does.
      auto part = [](const json& p) {
        return absl::StrReplaceAll(p.get<std::string>(), {{" ", "\xC4\xA0"}});
      };
      out->merges.push_back(absl::StrCat(part(m[0]), " ", part(m[1])));
    } else {
      return WrongType(path, absl::StrCat("model.merges[", i, "]"),
                       "\"a b\" or [\"a\", \"b\"]", m);
    }
  }

  if (const json* unk = Member(*model, "unk_token")) {
    if (unk->is_string()) extras->unk_token = unk->get<std::string>();
  }
  TemplateEnds(root, &extras->template_first, &extras->template_last);
  return absl::OkStatus();
}

std::optional<int64_t> FindToken(const GgufTokenizer& t,
                                 const std::string& token) {
  for (size_t i = 0; i < t.tokens.size(); ++i) {
    if (t.tokens[i] == token) return static_cast<int64_t>(i);
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<GgufTokenizer> ImportTokenizer(const std::string& model_dir,
                                              int64_t vocab_size) {
  if (vocab_size < 0 || vocab_size > kMaxTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("ImportTokenizer: vocab_size ", vocab_size,
                     " is out of range [0, ", kMaxTokens, "]"));
  }
  const std::string spm_path = model_dir + "/tokenizer.model";
  const std::string json_path = model_dir + "/tokenizer.json";
  const std::string config_path = model_dir + "/tokenizer_config.json";
  const std::string model_config_path = model_dir + "/config.json";

  GgufTokenizer tok;
  BpeExtras extras;
  const bool is_spm = FileExists(spm_path);
  if (is_spm) {
    RETURN_IF_ERROR(ImportSentencePiece(spm_path, &tok));
  } else if (FileExists(json_path)) {
    RETURN_IF_ERROR(ImportBpeJson(json_path, vocab_size, &tok, &extras));
  } else {
    return absl::NotFoundError(
        absl::StrCat("no tokenizer.model or tokenizer.json in ", model_dir));
  }
  const std::string& source = is_spm ? spm_path : json_path;

  // Size against the model's embedding rows.
  const int64_t n = static_cast<int64_t>(tok.tokens.size());
  if (vocab_size > 0 && n > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": the tokenizer has ", n,
                     " tokens but the model's vocab_size is ", vocab_size));
  }
  for (int64_t id = n; id < vocab_size; ++id) {
    tok.tokens.push_back(absl::StrCat("[PAD", id, "]"));
    tok.token_types.push_back(kTokenTypeUnused);
    if (is_spm) tok.scores.push_back(-1000.0f);
  }

  ASSIGN_OR_RETURN(std::optional<json> config, ReadOptionalJson(config_path));
  ASSIGN_OR_RETURN(std::optional<json> model_config,
                   ReadOptionalJson(model_config_path));
  const json empty = json::object();
  const json& tc = config.has_value() ? *config : empty;
  const json& mc = model_config.has_value() ? *model_config : empty;

  // Added tokens a SentencePiece model does not know about (tokenizer.json
  // already lists its own).
  if (is_spm) {
    if (const json* decoder = Member(tc, "added_tokens_decoder")) {
      if (!decoder->is_object()) {
        return WrongType(config_path, "added_tokens_decoder", "an object",
                         *decoder);
      }
      for (const auto& item : decoder->items()) {
        int64_t id = 0;
        const json* content = Member(item.value(), "content");
        if (!absl::SimpleAtoi(item.key(), &id) || id < 0 ||
            content == nullptr || !content->is_string()) {
          return WrongType(
              config_path,
              absl::StrCat("added_tokens_decoder[\"", item.key(), "\"]"),
              "an entry keyed by id with a string `content`", item.value());
        }
        if (id >= static_cast<int64_t>(tok.tokens.size())) continue;
        const std::string text = content->get<std::string>();
        const int32_t old_type = tok.token_types[id];
        if (tok.tokens[id] == text &&
            (old_type == kTokenTypeUnknown || old_type == kTokenTypeControl)) {
          continue;  // Already what SentencePiece says.
        }
        ASSIGN_OR_RETURN(std::optional<bool> special,
                         OptionalBool(item.value(), "special", config_path));
        tok.tokens[id] = text;
        tok.token_types[id] =
            special.value_or(false) ? kTokenTypeControl : kTokenTypeUserDefined;
        tok.scores[id] = -1000.0f;
      }
    }
  }

  // Special token ids: tokenizer_config.json strings, then config.json ids,
  // then what the tokenizer itself declares.
  const int64_t size = static_cast<int64_t>(tok.tokens.size());
  auto resolve = [&](const char* token_key, const char* id_key,
                     std::optional<int64_t>* slot) -> absl::Status {
    ASSIGN_OR_RETURN(std::optional<std::string> text,
                     SpecialTokenString(tc, token_key, config_path));
    if (text.has_value()) {
      std::optional<int64_t> id = FindToken(tok, *text);
      if (id.has_value()) {
        *slot = id;
        return absl::OkStatus();
      }
    }
    if (id_key != nullptr) {
      if (const json* v = Member(mc, id_key)) {
        const json& first = v->is_array() && !v->empty() ? (*v)[0] : *v;
        std::optional<int64_t> id = AsId(first);
        if (id.has_value()) {
          if (*id >= size) {
            return Malformed(
                model_config_path,
                absl::StrCat("`", id_key, "` ", *id,
                             " is not below the vocabulary size ", size));
          }
          *slot = id;
          return absl::OkStatus();
        }
      }
    }
    return absl::OkStatus();  // Keep the tokenizer's own value, if any.
  };
  RETURN_IF_ERROR(resolve("bos_token", "bos_token_id", &tok.bos_id));
  RETURN_IF_ERROR(resolve("eos_token", "eos_token_id", &tok.eos_id));
  RETURN_IF_ERROR(resolve("pad_token", "pad_token_id", &tok.pad_id));
  RETURN_IF_ERROR(resolve("unk_token", nullptr, &tok.unk_id));
  if (!tok.unk_id.has_value() && extras.unk_token.has_value()) {
    tok.unk_id = FindToken(tok, *extras.unk_token);
  }
  for (const std::optional<int64_t>* id :
       {&tok.bos_id, &tok.eos_id, &tok.pad_id, &tok.unk_id}) {
    if (id->has_value() && **id >= size) {
      return Malformed(source, absl::StrCat("special token id ", **id,
                                            " is not below the vocabulary "
                                            "size ",
                                            size));
    }
  }

  // add_bos / add_eos: explicit settings win; otherwise SentencePiece adds
  // BOS, and a BPE tokenizer does what its post-processor template does.
  ASSIGN_OR_RETURN(std::optional<bool> add_bos,
                   OptionalBool(tc, "add_bos_token", config_path));
  ASSIGN_OR_RETURN(std::optional<bool> add_eos,
                   OptionalBool(tc, "add_eos_token", config_path));
  auto is_token = [&](const std::string& text,
                      const std::optional<int64_t>& id) {
    return !text.empty() && id.has_value() && tok.tokens[*id] == text;
  };
  if (add_bos.has_value()) {
    tok.add_bos = *add_bos;
  } else if (is_spm) {
    tok.add_bos = true;
  } else {
    tok.add_bos = is_token(extras.template_first, tok.bos_id) ||
                  (tok.pre == "llama-bpe" && tok.bos_id.has_value());
  }
  if (add_eos.has_value()) {
    tok.add_eos = *add_eos;
  } else {
    tok.add_eos = !is_spm && is_token(extras.template_last, tok.eos_id);
  }
  if (tok.add_bos && !tok.bos_id.has_value()) {
    return Malformed(source,
                     "the tokenizer adds a BOS token but none is defined "
                     "(no bos_token in tokenizer_config.json, no bos_token_id "
                     "in config.json)");
  }
  if (tok.add_eos && !tok.eos_id.has_value()) {
    return Malformed(source,
                     "the tokenizer adds an EOS token but none is defined");
  }

  // Chat template: tokenizer_config.json, else chat_template.jinja.
  if (const json* tmpl = Member(tc, "chat_template")) {
    if (tmpl->is_string()) {
      tok.chat_template = tmpl->get<std::string>();
    } else if (tmpl->is_array()) {
      // [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
      for (const json& entry : *tmpl) {
        const json* name = Member(entry, "name");
        const json* text = Member(entry, "template");
        if (text == nullptr || !text->is_string()) {
          return WrongType(config_path, "chat_template[]",
                           "{\"name\": string, \"template\": string}", entry);
        }
        const bool is_default = name != nullptr && name->is_string() &&
                                name->get<std::string>() == "default";
        if (!tok.chat_template.has_value() || is_default) {
          tok.chat_template = text->get<std::string>();
        }
        if (is_default) break;
      }
    } else {
      return WrongType(config_path, "chat_template",
                       "a string or a list of named templates", *tmpl);
    }
  } else if (FileExists(model_dir + "/chat_template.jinja")) {
    ASSIGN_OR_RETURN(std::string text,
                     ReadFileToString(model_dir + "/chat_template.jinja"));
    tok.chat_template = std::move(text);
  }
  return tok;
}

}  // namespace quant
