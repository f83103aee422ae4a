// The GGUF reader: the input is the whole file. Every metadata value is read
// through each accessor, and every tensor's bytes are touched.
#include <cstddef>
#include <cstdint>
#include <string>

#include "format/gguf.h"
#include "tests/fuzz/fuzz_util.h"

namespace quant::fuzz {
namespace {

void ReadValue(const GgufValue& value, int depth) {
  (void)value.AsUint();
  (void)value.AsInt();
  (void)value.AsFloat();
  (void)value.AsBool();
  (void)value.AsString();
  (void)GgufValueTypeName(value.type());
  if (depth == 0) (void)value.DebugString();
  if (!(value == value)) Fail("a value differs from itself");
  if (depth > kGgufMaxArrayDepth + 1) Fail("arrays nested past the limit");
  for (const GgufValue& item : value.array()) ReadValue(item, depth + 1);
}

}  // namespace
}  // namespace quant::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quant;
  const std::string path = fuzz::WriteScratchFile(
      "model.gguf",
      absl::string_view(reinterpret_cast<const char*>(data), size));
  auto reader = GgufReader::Open(path);
  fuzz::Note("GgufReader::Open", reader.status());
  if (!reader.ok()) return 0;
  const GgufReader& r = **reader;
  for (const auto& [key, value] : r.metadata()) {
    if (r.Find(key) == nullptr) fuzz::Fail("Find misses a key");
    fuzz::ReadValue(value, 0);
  }
  for (const GgufTensorInfo& info : r.tensors()) {
    if (r.FindTensor(info.name) == nullptr) fuzz::Fail("FindTensor misses");
    // (A zero-byte tensor may sit past the end: a file may stop before the
    // padding that would start its empty data section.)
    if (info.nbytes > 0 &&
        info.offset + info.nbytes + r.data_offset() > r.file_size()) {
      fuzz::Fail("a tensor past the end of the file");
    }
    (void)info.num_elements();
    auto bytes = GgufTensorBytes(info.type, info.dims);
    if (!bytes.ok() || *bytes != info.nbytes) {
      fuzz::Fail("a tensor's size disagrees with GgufTensorBytes");
    }
    const uint8_t* p = r.TensorData(info);
    volatile uint8_t sum = 0;
    for (uint64_t i = 0; i < info.nbytes; ++i) sum = sum + p[i];
  }
  return 0;
}
