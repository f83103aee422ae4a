// Recipe validation: the input is a serialized quant.v1.JobSpec (whose
// recipe the coordinator checks) and, read again, a quant.v1.Recipe. A
// recipe that validates must survive RecipeFromOptions -> OptionsFromRecipe.
#include <cstddef>
#include <cstdint>

#include "proto/quant/v1/quantization_service.pb.h"
#include "proto/quant/v1/recipe.pb.h"
#include "proto/recipe.h"
#include "tests/fuzz/fuzz_util.h"

namespace quant::fuzz {
namespace {

void CheckRecipe(const v1::Recipe& recipe) {
  if (!CheckNoUnknownFields(recipe, "recipe").ok()) return;
  auto options = OptionsFromRecipe(recipe);
  Note("OptionsFromRecipe", options.status());
  if (!options.ok()) return;
  v1::Recipe round_trip = RecipeFromOptions(*options, recipe.mode());
  if (!CheckNoUnknownFields(round_trip, "recipe").ok() ||
      !OptionsFromRecipe(round_trip).ok()) {
    Fail("RecipeFromOptions gives a recipe that OptionsFromRecipe rejects");
  }
}

}  // namespace
}  // namespace quant::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace quant;
  if (size > (1 << 20)) return 0;
  v1::JobSpec job;
  if (job.ParseFromArray(data, static_cast<int>(size)) &&
      CheckNoUnknownFields(job, "job").ok()) {
    fuzz::CheckRecipe(job.recipe());
  }
  v1::Recipe recipe;
  if (recipe.ParseFromArray(data, static_cast<int>(size))) {
    fuzz::CheckRecipe(recipe);
  }
  return 0;
}
