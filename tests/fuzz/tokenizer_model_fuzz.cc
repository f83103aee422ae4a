// Tokenizer import from a SentencePiece tokenizer.model: the input's parts
// (see SplitParts) are tokenizer.model, tokenizer_config.json and
// config.json, in that order; missing parts are absent files.
#include <cstddef>
#include <cstdint>

#include "format/tokenizer_import.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quant;
  static const char* const kNames[] = {"tokenizer.model",
                                       "tokenizer_config.json", "config.json"};
  std::vector<absl::string_view> parts = fuzz::SplitParts(data, size);
  if (parts.size() > 3) return 0;
  fuzz::ClearScratchDir();
  for (size_t i = 0; i < parts.size(); ++i) {
    fuzz::WriteScratchFile(kNames[i], parts[i]);
  }
  auto tok = ImportTokenizer(fuzz::ScratchDir(), 0);
  fuzz::Note("ImportTokenizer", tok.status());
  if (!tok.ok()) return 0;
  if (tok->scores.size() != tok->tokens.size() ||
      tok->token_types.size() != tok->tokens.size()) {
    fuzz::Fail("a SentencePiece import without one score and type a token");
  }
  const int64_t padded = static_cast<int64_t>(tok->tokens.size()) + 3;
  auto again = ImportTokenizer(fuzz::ScratchDir(), padded);
  if (!again.ok() || static_cast<int64_t>(again->tokens.size()) != padded) {
    fuzz::Fail("a tokenizer that imports does not pad");
  }
  return 0;
}
