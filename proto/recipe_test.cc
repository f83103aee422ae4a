#include "proto/recipe.h"

#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

TEST(RecipeTest, UnsetFieldsTakeTheEngineDefaults) {
  v1::Recipe recipe;
  recipe.mutable_calibration()->set_text_path("calib.txt");
  const absl::StatusOr<QuantizeModelOptions> o = OptionsFromRecipe(recipe);
  ASSERT_TRUE(o.ok()) << o.status();
  const QuantizeModelOptions defaults;
  EXPECT_EQ(o->method, QuantMethod::kGptq);
  EXPECT_EQ(o->output_format, OutputFormat::kGptq);
  EXPECT_EQ(o->weights.bits, 4);
  EXPECT_EQ(o->weights.group_size, 128);
  EXPECT_FALSE(o->weights.sym);
  EXPECT_EQ(o->gptq.damp_percent, defaults.gptq.damp_percent);
  EXPECT_EQ(o->gptq.block_size, defaults.gptq.block_size);
  EXPECT_TRUE(o->true_sequential);
  EXPECT_EQ(o->awq.n_grid, defaults.awq.n_grid);
  EXPECT_TRUE(o->awq.clip);
  EXPECT_EQ(o->calibration.samples, 128);
  EXPECT_EQ(o->calibration.seq_len, 512);
  EXPECT_EQ(o->sequences_per_pass, defaults.sequences_per_pass);
  // Calibration is required unless the recipe is data-free.
  EXPECT_FALSE(OptionsFromRecipe({}).ok());
}

TEST(RecipeTest, OptionsRoundTrip) {
  QuantizeModelOptions o;
  o.method = QuantMethod::kAwq;
  o.output_format = OutputFormat::kGguf;
  o.gguf_type = "Q3_K_M";
  o.gguf_grid = false;
  o.weights = {3, 64, true};
  o.gptq.desc_act = true;
  o.gptq.damp_percent = 0.05;
  o.gptq.block_size = 64;
  o.gptq.mse = true;
  o.true_sequential = false;
  o.awq.clip = false;
  o.awq.n_grid = 10;
  o.awq.fp_inputs = true;
  o.calibration.tokens_path = "/data/ids.npy";
  o.calibration.samples = 7;
  o.calibration.seq_len = 33;
  o.calibration.seed = 99;
  o.calibration.sampling = CalibrationSampling::kPythonRandom;
  o.sequences_per_pass = 3;
  o.eval_texts = {"a.txt", "b.txt"};
  o.eval_max_windows = 5;
  const v1::Recipe recipe = RecipeFromOptions(o, v1::MODE_PARALLEL);
  EXPECT_EQ(recipe.mode(), v1::MODE_PARALLEL);
  const absl::StatusOr<QuantizeModelOptions> back = OptionsFromRecipe(recipe);
  ASSERT_TRUE(back.ok()) << back.status();
  // The recipe of what came back is the recipe that went in.
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(
      RecipeFromOptions(*back, v1::MODE_PARALLEL), recipe))
      << RecipeFromOptions(*back, v1::MODE_PARALLEL).DebugString() << " vs "
      << recipe.DebugString();
  EXPECT_EQ(back->gguf_type, "Q3_K_M");
  EXPECT_FALSE(back->gguf_grid);
  EXPECT_EQ(back->calibration.seed, 99u);
  EXPECT_EQ(back->eval_texts.size(), 2u);
}

TEST(RecipeTest, BadValuesNameTheirField) {
  struct Case {
    void (*edit)(v1::Recipe&);
    const char* field;
  };
  const Case cases[] = {
      {[](v1::Recipe& r) { r.set_bits(9); }, "recipe.bits"},
      {[](v1::Recipe& r) { r.set_group_size(0); }, "recipe.group_size"},
      {[](v1::Recipe& r) { r.set_method(static_cast<v1::Method>(42)); },
       "recipe.method"},
      {[](v1::Recipe& r) { r.set_mode(static_cast<v1::Mode>(7)); },
       "recipe.mode"},
      {[](v1::Recipe& r) { r.mutable_gptq()->set_damp_percent(-1); },
       "recipe.gptq.damp_percent"},
      {[](v1::Recipe& r) { r.set_gguf_type("Q4_K_M"); }, "recipe.gguf_type"},
      // A GGUF mix the writer does not know (found by recipe_fuzz).
      {[](v1::Recipe& r) {
         r.set_output_format(v1::OUTPUT_FORMAT_GGUF);
         r.set_gguf_type("Q4_K_X");
       },
       "recipe.gguf_type"},
      {[](v1::Recipe& r) {
         r.mutable_calibration()->set_text_path("a");
         r.mutable_calibration()->set_tokens_path("b");
       },
       "recipe.calibration"},
      {[](v1::Recipe& r) { r.mutable_calibration()->set_samples(-2); },
       "recipe.calibration.samples"},
      // Sizes a submission must not make the coordinator reserve, nor
      // overflow in their product.
      {[](v1::Recipe& r) {
         r.mutable_calibration()->set_samples(int64_t{1} << 40);
       },
       "recipe.calibration"},
      {[](v1::Recipe& r) {
         r.mutable_calibration()->set_samples(65536);
         r.mutable_calibration()->set_seq_len(65536);
       },
       "recipe.calibration"},
      {[](v1::Recipe& r) {
         r.mutable_calibration()->set_samples(4);
         r.mutable_calibration()->set_seq_len(int64_t{1} << 62);
       },
       "recipe.calibration"},
      {[](v1::Recipe& r) { r.set_sequences_per_pass(0); },
       "recipe.sequences_per_pass"},
  };
  for (const Case& c : cases) {
    v1::Recipe recipe;
    recipe.mutable_calibration()->set_text_path("calib.txt");
    c.edit(recipe);
    const absl::Status status = OptionsFromRecipe(recipe).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_EQ(std::string(status.message()).rfind(c.field, 0), 0u)
        << status.message();
  }
}

TEST(RecipeTest, UnknownFieldsAreRefusedWithTheirPath) {
  v1::Recipe recipe;
  recipe.mutable_calibration()->set_text_path("calib.txt");
  v1::GptqSettings* gptq = recipe.mutable_gptq();
  gptq->GetReflection()->MutableUnknownFields(gptq)->AddVarint(77, 1);
  const absl::Status status = OptionsFromRecipe(recipe).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(status.message().find("recipe.gptq: unknown field number 77"),
            absl::string_view::npos)
      << status.message();
  // The same through the wire: bytes with a field the schema lacks.
  v1::Recipe parsed;
  ASSERT_TRUE(parsed.ParseFromString(recipe.SerializeAsString()));
  EXPECT_FALSE(CheckNoUnknownFields(parsed, "recipe").ok());
}

}  // namespace
}  // namespace quant
