// config.json: ParseModelConfig, then the tensors the spec implies, checked
// against themselves (must pass) and against a changed shape (must fail).
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "format/model_config.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quant;
  auto spec = ParseModelConfig(
      absl::string_view(reinterpret_cast<const char*>(data), size));
  fuzz::Note("ParseModelConfig", spec.status());
  if (!spec.ok()) return 0;
  std::vector<ExpectedTensor> expected = ExpectedHfTensors(*spec);
  if (ExpectedHfTensorNames(*spec).size() != expected.size()) {
    fuzz::Fail("ExpectedHfTensorNames and ExpectedHfTensors disagree");
  }
  std::map<std::string, std::vector<int64_t>> shapes;
  for (const ExpectedTensor& t : expected) shapes[t.name] = t.shape;
  auto shape_of =
      [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
    auto it = shapes.find(name);
    if (it == shapes.end()) return std::nullopt;
    return it->second;
  };
  if (!ValidateTensorShapes(*spec, shape_of).ok()) {
    fuzz::Fail("the spec's own tensors fail ValidateTensorShapes");
  }
  if (!expected.empty() && !expected.front().shape.empty()) {
    shapes[expected.front().name].front() += 1;
    if (ValidateTensorShapes(*spec, shape_of).ok()) {
      fuzz::Fail("ValidateTensorShapes accepts a wrong shape");
    }
  }
  if (spec->rope_scaling.type == "llama3") (void)Llama3RopeFactors(*spec);
  (void)HasOutputProjectionBias(*spec);
  return 0;
}
