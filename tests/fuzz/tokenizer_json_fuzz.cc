// Tokenizer import from tokenizer.json: the input's parts (see SplitParts)
// are tokenizer.json, tokenizer_config.json, config.json and
// chat_template.jinja, in that order; missing parts are absent files.
#include <cstddef>
#include <cstdint>

#include "format/tokenizer_import.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quant;
  static const char* const kNames[] = {"tokenizer.json",
                                       "tokenizer_config.json", "config.json",
                                       "chat_template.jinja"};
  std::vector<absl::string_view> parts = fuzz::SplitParts(data, size);
  if (parts.size() > 4) return 0;
  fuzz::ClearScratchDir();
  for (size_t i = 0; i < parts.size(); ++i) {
    fuzz::WriteScratchFile(kNames[i], parts[i]);
  }
  auto tok = ImportTokenizer(fuzz::ScratchDir(), 0);
  fuzz::Note("ImportTokenizer", tok.status());
  if (!tok.ok()) return 0;
  // Padded to a larger vocabulary, the same tokenizer must still import.
  const int64_t padded = static_cast<int64_t>(tok->tokens.size()) + 3;
  auto again = ImportTokenizer(fuzz::ScratchDir(), padded);
  if (!again.ok() || static_cast<int64_t>(again->tokens.size()) != padded) {
    fuzz::Fail("a tokenizer that imports does not pad");
  }
  return 0;
}
