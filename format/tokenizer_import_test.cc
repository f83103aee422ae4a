#include "format/tokenizer_import.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file.h"
#include "common/test_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

void Write(const std::string& path, const std::string& text) {
  ASSERT_TRUE(WriteFileAtomically(path, text).ok()) << path;
}

void ExpectError(const absl::StatusOr<GgufTokenizer>& result,
                 absl::StatusCode code, const std::string& substring) {
  ASSERT_FALSE(result.ok()) << "expected an error containing: " << substring;
  EXPECT_EQ(result.status().code(), code) << result.status();
  EXPECT_THAT(std::string(result.status().message()), HasSubstr(substring));
}

// ---- SentencePiece: the real test model ----

std::string RealModelDir() {
  const std::string dir = SharedDataDir();
  return dir.empty() ? "" : dir + "/llama-29m-books";
}

TEST(ImportTokenizerSpmTest, RealTokenizer) {
  const std::string dir = RealModelDir();
  if (dir.empty()) GTEST_SKIP() << "shared data (../shared/data) is absent";
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 4096);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->model, "llama");
  EXPECT_EQ(tok->pre, "default");
  ASSERT_EQ(tok->tokens.size(), 4096u);
  ASSERT_EQ(tok->scores.size(), 4096u);
  ASSERT_EQ(tok->token_types.size(), 4096u);
  EXPECT_TRUE(tok->merges.empty());

  EXPECT_EQ(tok->tokens[0], "<unk>");
  EXPECT_EQ(tok->token_types[0], kTokenTypeUnknown);
  EXPECT_EQ(tok->tokens[1], "<s>");
  EXPECT_EQ(tok->token_types[1], kTokenTypeControl);
  EXPECT_EQ(tok->tokens[2], "</s>");
  EXPECT_EQ(tok->token_types[2], kTokenTypeControl);

  // Byte fallback: the 256 pieces <0x00>..<0xFF>, consecutive, type byte.
  const auto first_byte =
      std::find(tok->tokens.begin(), tok->tokens.end(), "<0x00>");
  ASSERT_NE(first_byte, tok->tokens.end());
  const size_t base = first_byte - tok->tokens.begin();
  ASSERT_LE(base + 256, tok->tokens.size());
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(tok->tokens[base + b], absl::StrFormat("<0x%02X>", b));
    EXPECT_EQ(tok->token_types[base + b], kTokenTypeByte);
  }
  EXPECT_EQ(std::count(tok->token_types.begin(), tok->token_types.end(),
                       kTokenTypeByte),
            256);
  EXPECT_EQ(std::count(tok->token_types.begin(), tok->token_types.end(),
                       kTokenTypeUnknown),
            1);
  EXPECT_EQ(std::count(tok->token_types.begin(), tok->token_types.end(),
                       kTokenTypeControl),
            2);
  // Ordinary pieces: normal, with the dummy-prefix marker U+2581 in use.
  EXPECT_EQ(tok->token_types[4095], kTokenTypeNormal);
  EXPECT_TRUE(std::any_of(
      tok->tokens.begin(), tok->tokens.end(),
      [](const std::string& t) { return t.rfind("\xE2\x96\x81", 0) == 0; }));
  // SentencePiece BPE scores decrease with the piece id.
  EXPECT_GT(tok->scores[base + 256], tok->scores[4095]);

  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->eos_id, 2);
  EXPECT_EQ(tok->unk_id, 0);
  EXPECT_FALSE(tok->pad_id.has_value());
  EXPECT_TRUE(tok->add_bos);
  EXPECT_FALSE(tok->add_eos);
  EXPECT_FALSE(tok->chat_template.has_value());
}

TEST(ImportTokenizerSpmTest, PadsToLargerEmbedding) {
  const std::string dir = RealModelDir();
  if (dir.empty()) GTEST_SKIP() << "shared data (../shared/data) is absent";
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 4100);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_EQ(tok->tokens.size(), 4100u);
  ASSERT_EQ(tok->scores.size(), 4100u);
  ASSERT_EQ(tok->token_types.size(), 4100u);
  for (int id = 4096; id < 4100; ++id) {
    EXPECT_EQ(tok->tokens[id], absl::StrCat("[PAD", id, "]"));
    EXPECT_EQ(tok->token_types[id], kTokenTypeUnused);
    EXPECT_EQ(tok->scores[id], -1000.0f);
  }
  // No padding asked for: exactly the tokenizer's pieces.
  tok = ImportTokenizer(dir, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->tokens.size(), 4096u);
}

TEST(ImportTokenizerSpmTest, MoreTokensThanVocabSize) {
  const std::string dir = RealModelDir();
  if (dir.empty()) GTEST_SKIP() << "shared data (../shared/data) is absent";
  ExpectError(ImportTokenizer(dir, 4000), absl::StatusCode::kInvalidArgument,
              "the tokenizer has 4096 tokens but the model's vocab_size is "
              "4000");
}

TEST(ImportTokenizerSpmTest, AddedTokensDecoderAndChatTemplateFile) {
  const std::string src = RealModelDir();
  if (src.empty()) GTEST_SKIP() << "shared data (../shared/data) is absent";
  const std::string dir = MakeTestTempDir("tok_spm_added");
  absl::StatusOr<std::string> model =
      ReadFileToString(src + "/tokenizer.model");
  ASSERT_TRUE(model.ok()) << model.status();
  Write(dir + "/tokenizer.model", *model);
  Write(dir + "/tokenizer_config.json", R"({
    "add_bos_token": false, "add_eos_token": true,
    "bos_token": "<s>", "eos_token": "<|im_end|>", "pad_token": "<unk>",
    "added_tokens_decoder": {
      "0": {"content": "<unk>", "special": true},
      "4096": {"content": "<|im_start|>", "special": true},
      "4097": {"content": "<|im_end|>", "special": true},
      "4098": {"content": "<tool>", "special": false},
      "5000": {"content": "<beyond>", "special": true}
    }})");
  Write(dir + "/chat_template.jinja", "{{ messages }}");
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 4100);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_EQ(tok->tokens.size(), 4100u);
  EXPECT_EQ(tok->token_types[0], kTokenTypeUnknown);  // Kept.
  EXPECT_EQ(tok->tokens[4096], "<|im_start|>");
  EXPECT_EQ(tok->token_types[4096], kTokenTypeControl);
  EXPECT_EQ(tok->tokens[4098], "<tool>");
  EXPECT_EQ(tok->token_types[4098], kTokenTypeUserDefined);
  EXPECT_EQ(tok->scores[4098], -1000.0f);
  EXPECT_EQ(tok->tokens[4099], "[PAD4099]");
  EXPECT_EQ(tok->eos_id, 4097);
  EXPECT_EQ(tok->bos_id, 1);
  EXPECT_EQ(tok->pad_id, 0);
  EXPECT_FALSE(tok->add_bos);
  EXPECT_TRUE(tok->add_eos);
  EXPECT_EQ(tok->chat_template, "{{ messages }}");
}

TEST(ImportTokenizerSpmTest, CorruptTokenizerModel) {
  const std::string dir = MakeTestTempDir("tok_spm_corrupt");
  Write(dir + "/tokenizer.model", "this is not a protobuf \xff\xff\xff");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "tokenizer.model: not a SentencePiece model");
}

// A SentencePiece ModelProto written by hand: `pieces` as (text, type)
// (field 1: piece 1, type 3), then a trainer_spec (field 2) of model_type
// `model_type` (field 3; 1 unigram, 2 BPE). Texts shorter than 128 bytes.
std::string SpmModelProto(
    const std::vector<std::pair<std::string, int>>& pieces, int model_type) {
  std::string out;
  for (const auto& [text, type] : pieces) {
    std::string piece = "\x0a";
    piece += static_cast<char>(text.size());
    piece += text;
    piece += '\x18';
    piece += static_cast<char>(type);
    out += '\x0a';
    out += static_cast<char>(piece.size());
    out += piece;
  }
  out += "\x12\x02\x18";
  out += static_cast<char>(model_type);
  return out;
}

// libsentencepiece 0.1.97 throws from its trie builder on a piece that
// starts with a NUL byte, and the exception ended the process
// (tests/fuzz/tokenizer_model_fuzz; the inputs are in
// tests/fuzz/corpus/tokenizer_model/regress-*).
TEST(ImportTokenizerSpmTest, EmptyOrNulPieceIsAnErrorNotACrash) {
  const std::string dir = MakeTestTempDir("tok_spm_empty_piece");
  Write(dir + "/tokenizer_config.json", R"({"add_bos_token": false})");
  for (int model_type : {1, 2}) {
    for (const std::string bad :
         {std::string(), std::string("\0", 1), std::string("a\0b", 3)}) {
      SCOPED_TRACE(
          absl::StrCat("model_type ", model_type, ", piece size ", bad.size()));
      Write(dir + "/tokenizer.model",
            SpmModelProto({{"<unk>", 2}, {"a", 1}, {bad, 1}}, model_type));
      ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
                  "tokenizer.model: not a SentencePiece model: piece 2 is "
                  "empty or holds a NUL byte");
    }
    // The same model without the bad piece loads.
    Write(dir + "/tokenizer.model",
          SpmModelProto({{"<unk>", 2}, {"a", 1}, {"b", 1}}, model_type));
    absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 0);
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_THAT(tok->tokens, ElementsAre("<unk>", "a", "b"));
  }
}

// ---- tokenizer.json BPE ----

constexpr char kSmallBpe[] = R"({
  "version": "1.0",
  "added_tokens": [
    {"id": 6, "content": "<|bos|>", "special": true, "normalized": false},
    {"id": 7, "content": "<|eos|>", "special": true, "normalized": false},
    {"id": 8, "content": "<tool>", "special": false, "normalized": true}
  ],
  "normalizer": null,
  "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                    "trim_offsets": true, "use_regex": true},
  "post_processor": {"type": "TemplateProcessing",
    "single": [{"SpecialToken": {"id": "<|bos|>", "type_id": 0}},
               {"Sequence": {"id": "A", "type_id": 0}}],
    "pair": [], "special_tokens": {}},
  "decoder": {"type": "ByteLevel"},
  "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "byte_fallback": false,
            "vocab": {"a": 0, "b": 1, "c": 2, "ab": 3, "abc": 4, "\u0120": 5},
            "merges": MERGES}
})";

std::string SmallBpe(const std::string& merges) {
  std::string s = kSmallBpe;
  s.replace(s.find("MERGES"), 6, merges);
  return s;
}

constexpr char kSmallConfig[] = R"({
  "bos_token": "<|bos|>",
  "eos_token": {"__type": "AddedToken", "content": "<|eos|>"},
  "chat_template": "{% for m in messages %}{{ m }}{% endfor %}"
})";

TEST(ImportTokenizerBpeTest, SmallTokenizerJson) {
  const std::string dir = MakeTestTempDir("tok_bpe_small");
  Write(dir + "/tokenizer.json", SmallBpe(R"(["a b", "ab c"])"));
  Write(dir + "/tokenizer_config.json", kSmallConfig);
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->model, "gpt2");
  EXPECT_EQ(tok->pre, "default");
  EXPECT_THAT(tok->tokens, ElementsAre("a", "b", "c", "ab", "abc", "\xC4\xA0",
                                       "<|bos|>", "<|eos|>", "<tool>"));
  EXPECT_THAT(tok->token_types,
              ElementsAre(1, 1, 1, 1, 1, 1, kTokenTypeControl,
                          kTokenTypeControl, kTokenTypeUserDefined));
  EXPECT_TRUE(tok->scores.empty());
  EXPECT_THAT(tok->merges, ElementsAre("a b", "ab c"));
  EXPECT_EQ(tok->bos_id, 6);
  EXPECT_EQ(tok->eos_id, 7);
  EXPECT_FALSE(tok->unk_id.has_value());
  EXPECT_FALSE(tok->pad_id.has_value());
  EXPECT_TRUE(tok->add_bos);  // The post-processor template starts with BOS.
  EXPECT_FALSE(tok->add_eos);
  EXPECT_EQ(tok->chat_template, "{% for m in messages %}{{ m }}{% endfor %}");
}

TEST(ImportTokenizerBpeTest, MergesAsPairs) {
  const std::string dir = MakeTestTempDir("tok_bpe_pairs");
  // tokenizers >= 0.20 writes pairs; a space inside a part becomes U+0120.
  Write(dir + "/tokenizer.json",
        SmallBpe(R"([["a", "b"], ["ab", "c"], [" ", "a"]])"));
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_THAT(tok->merges, ElementsAre("a b", "ab c", "\xC4\xA0 a"));
}

TEST(ImportTokenizerBpeTest, PadsAndFillsGaps) {
  const std::string dir = MakeTestTempDir("tok_bpe_pad");
  std::string json = SmallBpe(R"(["a b"])");
  // Move <tool> from id 8 to id 10, leaving 8 and 9 unassigned.
  json.replace(json.find("\"id\": 8"), 7, "\"id\": 10");
  Write(dir + "/tokenizer.json", json);
  Write(dir + "/config.json", R"({"bos_token_id": 6, "eos_token_id": [7, 6]})");
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 13);
  ASSERT_TRUE(tok.ok()) << tok.status();
  ASSERT_EQ(tok->tokens.size(), 13u);
  EXPECT_EQ(tok->tokens[8], "[PAD8]");
  EXPECT_EQ(tok->tokens[9], "[PAD9]");
  EXPECT_EQ(tok->tokens[10], "<tool>");
  EXPECT_EQ(tok->tokens[12], "[PAD12]");
  EXPECT_THAT(tok->token_types,
              ElementsAre(1, 1, 1, 1, 1, 1, 3, 3, 5, 5, 4, 5, 5));
  EXPECT_TRUE(tok->scores.empty());
  // No tokenizer_config.json: ids come from config.json (first eos).
  EXPECT_EQ(tok->bos_id, 6);
  EXPECT_EQ(tok->eos_id, 7);
  EXPECT_TRUE(tok->add_bos);  // Template.
}

// GPT-2's byte -> printable character table, written out independently.
std::vector<std::string> ByteLevelAlphabet() {
  std::vector<std::string> out(256);
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : next++;
    std::string utf8;
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = utf8;
  }
  return out;
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  return out + "\"";
}

TEST(ImportTokenizerBpeTest, ByteLevelTokenizerOfSyntheticModel) {
  const std::vector<std::string> alphabet = ByteLevelAlphabet();
  EXPECT_EQ(alphabet[' '], "\xC4\xA0");   // U+0120 'Ġ'.
  EXPECT_EQ(alphabet['\n'], "\xC4\x8A");  // U+010A 'Ċ'.
  std::string vocab;
  for (int b = 0; b < 256; ++b) {
    absl::StrAppend(&vocab, JsonString(alphabet[b]), ": ", b, ", ");
  }
  absl::StrAppend(&vocab, "\"th\": 256, \"\xC4\xA0t\": 257, \"the\": 258, ",
                  "\"<s>\": 259, \"</s>\": 260");
  const std::string json = absl::StrCat(R"({
    "version": "1.0", "truncation": null, "padding": null,
    "added_tokens": [
      {"id": 259, "content": "<s>", "special": true},
      {"id": 260, "content": "</s>", "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                      "trim_offsets": true, "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel", "add_prefix_space": true,
                "trim_offsets": true, "use_regex": true},
    "model": {"type": "BPE", "dropout": null, "unk_token": null,
              "continuing_subword_prefix": null, "end_of_word_suffix": null,
              "fuse_unk": false, "byte_fallback": false,
              "vocab": {)",
                                        vocab, R"(},
              "merges": ["t h", "Ġ t", "th e"]}})");
  const std::string dir = MakeTestTempDir("tok_bpe_bytelevel");
  Write(dir + "/tokenizer.json", json);
  Write(dir + "/tokenizer_config.json",
        R"({"add_bos_token": true, "add_eos_token": false,
            "bos_token": "<s>", "eos_token": "</s>",
            "tokenizer_class": "PreTrainedTokenizerFast"})");
  Write(dir + "/config.json", R"({"bos_token_id": 259, "eos_token_id": 260})");
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 261);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->model, "gpt2");
  EXPECT_EQ(tok->pre, "default");
  ASSERT_EQ(tok->tokens.size(), 261u);
  for (int b = 0; b < 256; ++b) {
    EXPECT_EQ(tok->tokens[b], alphabet[b]) << b;
    EXPECT_EQ(tok->token_types[b], kTokenTypeNormal) << b;
  }
  EXPECT_EQ(tok->tokens[257], "\xC4\xA0t");
  EXPECT_EQ(tok->token_types[259], kTokenTypeControl);
  EXPECT_THAT(tok->merges, ElementsAre("t h", "\xC4\xA0 t", "th e"));
  EXPECT_EQ(tok->bos_id, 259);
  EXPECT_EQ(tok->eos_id, 260);
  EXPECT_TRUE(tok->add_bos);
  EXPECT_FALSE(tok->add_eos);
}

std::string WithPreTokenizer(const std::string& regex) {
  std::string s = SmallBpe(R"(["a b"])");
  const std::string old =
      R"("pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false,
                    "trim_offsets": true, "use_regex": true})";
  const std::string repl = absl::StrCat(
      R"("pre_tokenizer": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": )",
      regex, R"(}, "behavior": "Isolated", "invert": false},
        {"type": "ByteLevel", "add_prefix_space": false,
         "trim_offsets": true, "use_regex": false}]})");
  s.replace(s.find(old), old.size(), repl);
  // No template: add_bos then depends on the pre-tokenizer.
  const std::string post_old =
      s.substr(s.find("\"post_processor\""),
               s.find("\"decoder\"") - s.find("\"post_processor\""));
  s.replace(s.find(post_old), post_old.size(), "\"post_processor\": null, ");
  return s;
}

TEST(ImportTokenizerBpeTest, PreTokenizerNames) {
  const std::string llama3 =
      R"("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")";
  const std::string qwen2 =
      R"("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")";
  struct Case {
    std::string regex, pre;
    bool add_bos;
  };
  for (const Case& c :
       {Case{llama3, "llama-bpe", true}, Case{qwen2, "qwen2", false},
        Case{R"("\\s+")", "default", false}}) {
    const std::string dir = MakeTestTempDir("tok_bpe_pre");
    Write(dir + "/tokenizer.json", WithPreTokenizer(c.regex));
    Write(dir + "/tokenizer_config.json", kSmallConfig);
    absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 0);
    ASSERT_TRUE(tok.ok()) << tok.status();
    EXPECT_EQ(tok->pre, c.pre);
    EXPECT_EQ(tok->add_bos, c.add_bos) << c.pre;
  }
}

TEST(ImportTokenizerBpeTest, ChatTemplateList) {
  const std::string dir = MakeTestTempDir("tok_bpe_chat");
  Write(dir + "/tokenizer.json", SmallBpe("[]"));
  Write(dir + "/tokenizer_config.json", R"({"chat_template": [
      {"name": "tool_use", "template": "T"},
      {"name": "default", "template": "D"}]})");
  absl::StatusOr<GgufTokenizer> tok = ImportTokenizer(dir, 0);
  ASSERT_TRUE(tok.ok()) << tok.status();
  EXPECT_EQ(tok->chat_template, "D");
  EXPECT_TRUE(tok->merges.empty());
}

// ---- Errors ----

TEST(ImportTokenizerErrorTest, NoTokenizerFile) {
  const std::string dir = MakeTestTempDir("tok_none");
  Write(dir + "/tokenizer_config.json", "{}");
  ExpectError(ImportTokenizer(dir, 100), absl::StatusCode::kNotFound,
              "no tokenizer.model or tokenizer.json in " + dir);
}

TEST(ImportTokenizerErrorTest, MalformedTokenizerJson) {
  const std::string dir = MakeTestTempDir("tok_bad_json");
  Write(dir + "/tokenizer.json", "{\"model\": {\"vocab\": {\"a\": 0");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              dir + "/tokenizer.json is not well-formed JSON: parse error");

  Write(dir + "/tokenizer.json",
        R"({"model": {"vocab": ["a"], "merges": []}})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "`model.vocab` must be an object");

  Write(dir + "/tokenizer.json", R"({"model": {"vocab": {"a": "x"}}})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "`model.vocab[\"a\"]` must be a non-negative integer id, got "
              "string \"x\"");

  Write(dir + "/tokenizer.json", SmallBpe(R"(["a b", "abc"])"));
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "model.merges[1] \"abc\" is not of the form \"a b\"");

  Write(dir + "/tokenizer.json", SmallBpe(R"([["a", "b", "c"]])"));
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "`model.merges[0]` must be \"a b\" or [\"a\", \"b\"]");

  Write(dir + "/tokenizer.json",
        R"({"model": {"vocab": {"a": 0, "b": 0}, "merges": []}})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "tokens \"a\" and \"b\" share id 0");

  Write(dir + "/tokenizer.json",
        R"({"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 1}]})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "`added_tokens[0]` must be");

  Write(dir + "/tokenizer.json",
        R"({"model": {"vocab": {"a": 0, "b": 99999999}, "merges": []}})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "has id 99999999, far beyond the 2 entries");
}

TEST(ImportTokenizerErrorTest, VocabLargerThanModel) {
  const std::string dir = MakeTestTempDir("tok_too_many");
  Write(dir + "/tokenizer.json", SmallBpe(R"(["a b"])"));
  ExpectError(ImportTokenizer(dir, 8), absl::StatusCode::kInvalidArgument,
              "\"<tool>\" has id 8, so the tokenizer has at least 9 tokens but "
              "the model's vocab_size is 8");
  ExpectError(ImportTokenizer(dir, -1), absl::StatusCode::kInvalidArgument,
              "vocab_size -1 is out of range");
}

TEST(ImportTokenizerErrorTest, UnsupportedModels) {
  const std::string dir = MakeTestTempDir("tok_unsupported");
  Write(dir + "/tokenizer.json",
        R"({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kUnimplemented,
              "`model.type` \"Unigram\" is not supported");
  Write(dir + "/tokenizer.json",
        R"({"model": {"type": "BPE", "byte_fallback": true,
            "vocab": {"a": 0}, "merges": []}})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kUnimplemented,
              "needs its tokenizer.model");
}

TEST(ImportTokenizerErrorTest, RejectsDuplicateKeys) {
  const std::string dir = MakeTestTempDir("tok_dup_keys");
  // Two ids for "a": nlohmann alone would silently keep the last.
  std::string text = SmallBpe(R"(["a b"])");
  text.replace(text.find("\"a\": 0"), 6, "\"a\": 0, \"a\": 7");
  Write(dir + "/tokenizer.json", text);
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              dir + "/tokenizer.json has duplicate key 'a'");
}

TEST(ImportTokenizerErrorTest, RejectsDeepNestingWithoutCrashing) {
  const std::string dir = MakeTestTempDir("tok_deep");
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  // tokenizer.json: once a stack overflow when the wrong-typed value was
  // described in the error message.
  std::string text = SmallBpe(R"(["a b"])");
  const std::string decoder = "\"decoder\": {\"type\": \"ByteLevel\"}";
  text.replace(text.find(decoder), decoder.size(), "\"decoder\": " + deep);
  Write(dir + "/tokenizer.json", text);
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              dir + "/tokenizer.json nests deeper than 64 levels");
  // tokenizer_config.json goes through the same parser.
  Write(dir + "/tokenizer.json", SmallBpe(R"(["a b"])"));
  Write(dir + "/tokenizer_config.json", "{\"bos_token\": " + deep + "}");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              dir + "/tokenizer_config.json nests deeper than 64 levels");
  // Within the limit, a deep wrong-typed value is described briefly.
  Write(dir + "/tokenizer_config.json",
        "{\"bos_token\": " + std::string(60, '[') + std::string(60, ']') + "}");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "`bos_token` must be a string or {\"content\": string}, got "
              "array of 1 element [[[[[[[[[...]]]]]]]]]");
}

TEST(ImportTokenizerErrorTest, BadSpecialTokens) {
  const std::string dir = MakeTestTempDir("tok_bad_special");
  Write(dir + "/tokenizer.json", SmallBpe(R"(["a b"])"));
  Write(dir + "/config.json", R"({"eos_token_id": 500})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "`eos_token_id` 500 is not below the vocabulary size 9");

  Write(dir + "/config.json", "{}");
  Write(dir + "/tokenizer_config.json", R"({"add_bos_token": true})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "adds a BOS token but none is defined");

  Write(dir + "/tokenizer_config.json", R"({"add_bos_token": "yes"})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "tokenizer_config.json: `add_bos_token` must be a boolean");

  Write(dir + "/tokenizer_config.json", R"({"bos_token": 5})");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "`bos_token` must be a string or {\"content\": string}");

  Write(dir + "/tokenizer_config.json", "[1]");
  ExpectError(ImportTokenizer(dir, 0), absl::StatusCode::kInvalidArgument,
              "tokenizer_config.json: must hold a JSON object");
}

}  // namespace
}  // namespace quant
