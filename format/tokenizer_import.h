// Hugging Face tokenizer files -> the GGUF tokenizer metadata llama.cpp reads
// (tokenizer.ggml.model, .pre, .tokens, .scores, .token_type, .merges,
// .bos_token_id, .eos_token_id, .unknown_token_id, .padding_token_id,
// .add_bos_token, .add_eos_token, tokenizer.chat_template).
//
// Sources, in a model directory:
// - tokenizer.model (SentencePiece; preferred when present) -> model "llama",
//   pre "default", pieces + scores + types;
// - else tokenizer.json with a byte-level BPE model -> model "gpt2", pre from
//   the pre_tokenizer's split regex ("llama-bpe" for Llama 3, "qwen2" for
//   Qwen2, else "default"), vocab + merges, no scores (llama.cpp does not
//   need them for BPE);
// - tokenizer_config.json (optional): add_bos_token, add_eos_token,
//   chat_template (or chat_template.jinja beside it), bos/eos/unk/pad token
//   strings, added_tokens_decoder;
// - config.json (optional): bos/eos/pad token ids as a fallback.
#ifndef FORMAT_TOKENIZER_IMPORT_H_
#define FORMAT_TOKENIZER_IMPORT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace quant {

// llama.cpp's token types (tokenizer.ggml.token_type).
inline constexpr int32_t kTokenTypeNormal = 1;
inline constexpr int32_t kTokenTypeUnknown = 2;
inline constexpr int32_t kTokenTypeControl = 3;
inline constexpr int32_t kTokenTypeUserDefined = 4;
inline constexpr int32_t kTokenTypeUnused = 5;
inline constexpr int32_t kTokenTypeByte = 6;

struct GgufTokenizer {
  std::string model;  // "llama" (SentencePiece) or "gpt2" (byte-level BPE).
  std::string pre;    // "default", "llama-bpe" or "qwen2".
  std::vector<std::string> tokens;
  std::vector<float> scores;  // One per token for "llama"; empty for "gpt2".
  std::vector<int32_t> token_types;  // kTokenType*, one per token.
  std::vector<std::string> merges;   // "gpt2" only: "a b" strings, in rank
                                     // order.
  std::optional<int64_t> bos_id, eos_id, unk_id, pad_id;
  bool add_bos = true;
  bool add_eos = false;
  std::optional<std::string> chat_template;
};

// Imports the tokenizer in `model_dir`. When `vocab_size` (the rows of the
// model's embedding) exceeds the tokenizer's size, the list is padded with
// "[PAD<id>]" tokens of type unused (score -1000 for SentencePiece), as
// llama.cpp's converter does; ids the tokenizer leaves unassigned are filled
// the same way. vocab_size == 0 means "no padding, no check".
//
// Errors: NotFound (naming the directory) when there is neither
// tokenizer.model nor tokenizer.json; InvalidArgument (naming the file and
// the field) for malformed files, for a tokenizer with more tokens than
// `vocab_size` (naming both numbers) and for special-token ids out of range;
// Unimplemented for tokenizer.json models other than byte-level BPE
// (Unigram, WordPiece, or a SentencePiece-style BPE without tokenizer.model).
absl::StatusOr<GgufTokenizer> ImportTokenizer(const std::string& model_dir,
                                              int64_t vocab_size);

}  // namespace quant

#endif  // FORMAT_TOKENIZER_IMPORT_H_
