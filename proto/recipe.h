// quant.v1.Recipe <-> the engine's options. The coordinator checks a
// submitted recipe with these, workers run blocks with what they give, and
// quantctl builds a recipe from the same flags `quantize` takes.
#ifndef PROTO_RECIPE_H_
#define PROTO_RECIPE_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "proto/quant/v1/recipe.pb.h"
#include "quant/quantize_model.h"

namespace quant {

// The engine's options for `recipe` (model_dir, output and work_dir left
// empty). Unset optional fields take the engine's defaults.
// InvalidArgument names the field at fault ("recipe.bits: ...") for an
// unknown enum value, a value out of range, or a field this version does
// not know.
absl::StatusOr<QuantizeModelOptions> OptionsFromRecipe(
    const v1::Recipe& recipe);

// The recipe holding `options` (every field set explicitly), plus `mode`.
v1::Recipe RecipeFromOptions(const QuantizeModelOptions& options,
                             v1::Mode mode = v1::MODE_SEQUENTIAL);

// InvalidArgument naming `path` + the first field a message holds that its
// schema does not (sent by a newer client, or malformed).
absl::Status CheckNoUnknownFields(const google::protobuf::Message& message,
                                  const std::string& path);

}  // namespace quant

#endif  // PROTO_RECIPE_H_
