// The safetensors reader on one file: the input is the whole file (8-byte
// header length, JSON header, data area).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "format/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace quant::fuzz {
namespace {

void Touch(const TensorView& t) {
  // Every byte of the view must lie inside the mapping.
  volatile uint8_t sum = 0;
  for (size_t i = 0; i < t.nbytes; ++i) sum = sum + t.data[i];
  const int64_t n = t.num_elements();
  std::vector<float> out(16);
  (void)t.ToFloat(0, n < 16 ? n : 16, out.data());
  (void)t.ToFloat(n - 1, 1, out.data());
  (void)t.ToFloat(n, 1, out.data());
}

}  // namespace
}  // namespace quant::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quant;
  const std::string path = fuzz::WriteScratchFile(
      "model.safetensors",
      absl::string_view(reinterpret_cast<const char*>(data), size));
  auto file = SafetensorsFile::Open(path);
  fuzz::Note("SafetensorsFile::Open", file.status());
  if (file.ok()) {
    for (const TensorView& t : (*file)->tensors()) {
      fuzz::Touch(t);
      if ((*file)->Find(t.name) == nullptr) fuzz::Fail("Find misses a tensor");
      if (!(*file)->Contains(t)) fuzz::Fail("a tensor outside its file");
    }
    (void)(*file)->metadata().size();
  }
  // The same file as a checkpoint (the single-file path of Open).
  auto checkpoint = SafetensorsCheckpoint::Open(path);
  if (checkpoint.ok() != file.ok()) {
    fuzz::Fail("SafetensorsCheckpoint and SafetensorsFile disagree");
  }
  return 0;
}
