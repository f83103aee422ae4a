// A sharded safetensors checkpoint: the input's first part (see SplitParts)
// is model.safetensors.index.json, the next ones model-1.safetensors,
// model-2.safetensors, ... (at most 4 shards).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "format/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quant;
  std::vector<absl::string_view> parts = fuzz::SplitParts(data, size);
  if (parts.size() > 5) return 0;
  fuzz::ClearScratchDir();
  fuzz::WriteScratchFile("model.safetensors.index.json", parts[0]);
  for (size_t i = 1; i < parts.size(); ++i) {
    fuzz::WriteScratchFile(absl::StrCat("model-", i, ".safetensors"), parts[i]);
  }
  auto checkpoint = SafetensorsCheckpoint::Open(fuzz::ScratchDir());
  fuzz::Note("SafetensorsCheckpoint::Open", checkpoint.status());
  if (!checkpoint.ok()) return 0;
  const SafetensorsCheckpoint& c = **checkpoint;
  for (const std::string& name : c.TensorNames()) {
    if (!c.Has(name)) fuzz::Fail("Has misses a listed tensor");
    auto view = c.Get(name);
    auto shape = c.Shape(name);
    if (!view.ok() || !shape.ok() || c.FileOf(name) == nullptr) {
      fuzz::Fail("a listed tensor cannot be read");
    }
    volatile uint8_t sum = 0;
    for (size_t i = 0; i < view->nbytes; ++i) sum = sum + view->data[i];
  }
  (void)c.index_metadata_json().size();
  (void)c.Get("no such tensor");
  return 0;
}
