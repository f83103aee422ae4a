#include "proto/recipe.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "convert/quant_mix.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/unknown_field_set.h"
#include "model/calibration.h"

namespace quant {
namespace {

absl::Status FieldError(absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(
      absl::StrCat("recipe.", field, ": ", message));
}

}  // namespace

absl::Status CheckNoUnknownFields(const google::protobuf::Message& message,
                                  const std::string& path) {
  const google::protobuf::Reflection* reflection = message.GetReflection();
  const google::protobuf::UnknownFieldSet& unknown =
      reflection->GetUnknownFields(message);
  if (!unknown.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unknown field number ", unknown.field(0).number(),
                     " (not an option of this version)"));
  }
  std::vector<const google::protobuf::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const google::protobuf::FieldDescriptor* field : fields) {
    if (field->cpp_type() !=
        google::protobuf::FieldDescriptor::CPPTYPE_MESSAGE) {
      continue;
    }
    const std::string child = absl::StrCat(path, ".", field->name());
    if (field->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
        RETURN_IF_ERROR(CheckNoUnknownFields(
            reflection->GetRepeatedMessage(message, field, i),
            absl::StrCat(child, "[", i, "]")));
      }
    } else {
      RETURN_IF_ERROR(
          CheckNoUnknownFields(reflection->GetMessage(message, field), child));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<QuantizeModelOptions> OptionsFromRecipe(const v1::Recipe& r) {
  RETURN_IF_ERROR(CheckNoUnknownFields(r, "recipe"));
  QuantizeModelOptions o;
  switch (r.method()) {
    case v1::METHOD_UNSPECIFIED:
    case v1::METHOD_GPTQ:
      o.method = QuantMethod::kGptq;
      break;
    case v1::METHOD_AWQ:
      o.method = QuantMethod::kAwq;
      break;
    case v1::METHOD_RTN:
      o.method = QuantMethod::kRtn;
      break;
    default:
      return FieldError("method", absl::StrCat("unknown method ", r.method()));
  }
  switch (r.output_format()) {
    case v1::OUTPUT_FORMAT_UNSPECIFIED:
    case v1::OUTPUT_FORMAT_GPTQ:
      o.output_format = OutputFormat::kGptq;
      break;
    case v1::OUTPUT_FORMAT_AWQ:
      o.output_format = OutputFormat::kAwq;
      break;
    case v1::OUTPUT_FORMAT_GGUF:
      o.output_format = OutputFormat::kGguf;
      break;
    default:
      return FieldError("output_format",
                        absl::StrCat("unknown format ", r.output_format()));
  }
  if (!v1::Mode_IsValid(r.mode())) {
    return FieldError("mode", absl::StrCat("unknown mode ", r.mode()));
  }
  if (r.has_bits()) o.weights.bits = r.bits();
  if (o.weights.bits < 2 || o.weights.bits > 8) {
    return FieldError("bits",
                      absl::StrCat("must be 2 to 8, not ", o.weights.bits));
  }
  if (r.has_group_size()) o.weights.group_size = r.group_size();
  if (o.weights.group_size != -1 && o.weights.group_size < 1) {
    return FieldError("group_size", absl::StrCat("must be -1 or positive, not ",
                                                 o.weights.group_size));
  }
  o.weights.sym = r.sym();
  if (o.output_format == OutputFormat::kGguf) {
    if (!r.gguf_type().empty()) {
      // A name the GGUF writer knows, checked here rather than after the
      // job's tasks ran.
      if (absl::Status known = ParseQuantMix(r.gguf_type()).status();
          !known.ok()) {
        return FieldError("gguf_type", known.message());
      }
      o.gguf_type = r.gguf_type();
    }
    o.gguf_grid = !r.has_gguf_grid() || r.gguf_grid();
  } else if (!r.gguf_type().empty()) {
    return FieldError("gguf_type", "only for GGUF output");
  }

  const v1::GptqSettings& g = r.gptq();
  o.gptq.desc_act = g.desc_act();
  o.gptq.static_groups = g.static_groups();
  o.gptq.mse = g.mse();
  if (g.has_damp_percent()) o.gptq.damp_percent = g.damp_percent();
  if (!(o.gptq.damp_percent > 0 && o.gptq.damp_percent < 1)) {
    return FieldError("gptq.damp_percent", "must be in (0, 1)");
  }
  if (g.has_block_size()) o.gptq.block_size = g.block_size();
  if (o.gptq.block_size < 1) {
    return FieldError("gptq.block_size", "must be positive");
  }
  o.gptq.group_params_at_block_start = g.group_params_at_block_start();
  o.true_sequential = !g.has_true_sequential() || g.true_sequential();

  const v1::AwqSettings& a = r.awq();
  if (a.has_n_grid()) o.awq.n_grid = a.n_grid();
  if (a.has_duo_scaling()) o.awq.duo_scaling = a.duo_scaling();
  if (a.has_clip()) o.awq.clip = a.clip();
  if (a.has_clip_grid()) o.awq.clip_grid = a.clip_grid();
  if (a.has_max_shrink()) o.awq.max_shrink = a.max_shrink();
  if (a.has_clip_sample_tokens()) {
    o.awq.clip_sample_tokens = a.clip_sample_tokens();
  }
  if (a.has_search_sequences()) o.awq.search_sequences = a.search_sequences();
  o.awq.fp_inputs = a.fp_inputs();
  if (o.awq.n_grid < 1) return FieldError("awq.n_grid", "must be positive");
  if (o.awq.clip_grid < 1) {
    return FieldError("awq.clip_grid", "must be positive");
  }
  if (!(o.awq.max_shrink >= 0 && o.awq.max_shrink < 1)) {
    return FieldError("awq.max_shrink", "must be in [0, 1)");
  }

  const v1::Calibration& c = r.calibration();
  o.calibration.text_path = c.text_path();
  o.calibration.tokens_path = c.tokens_path();
  if (c.has_samples()) o.calibration.samples = c.samples();
  if (c.has_seq_len()) o.calibration.seq_len = c.seq_len();
  o.calibration.seed = c.seed();
  switch (c.sampling()) {
    case v1::CALIBRATION_SAMPLING_UNSPECIFIED:
    case v1::CALIBRATION_SAMPLING_SPLITMIX64:
      o.calibration.sampling = CalibrationSampling::kSplitMix64;
      break;
    case v1::CALIBRATION_SAMPLING_PYTHON:
      o.calibration.sampling = CalibrationSampling::kPythonRandom;
      break;
    default:
      return FieldError("calibration.sampling",
                        absl::StrCat("unknown sampling ", c.sampling()));
  }
  if (o.calibration.samples < 0) {
    return FieldError("calibration.samples", "must not be negative");
  }
  if (o.calibration.samples > 0) {
    if (o.calibration.seq_len < 1) {
      return FieldError("calibration.seq_len", "must be positive");
    }
    // Each bound alone keeps the product from overflowing.
    if (o.calibration.samples > kMaxCalibrationTokens ||
        o.calibration.seq_len > kMaxCalibrationTokens ||
        o.calibration.samples * o.calibration.seq_len > kMaxCalibrationTokens) {
      return FieldError(
          "calibration",
          absl::StrCat(o.calibration.samples, " windows of ",
                       o.calibration.seq_len, " tokens exceed the ",
                       kMaxCalibrationTokens,
                       " tokens a job may calibrate on"));
    }
    if (o.calibration.text_path.empty() == o.calibration.tokens_path.empty()) {
      return FieldError("calibration",
                        "give exactly one of text_path and tokens_path");
    }
  }
  if (r.has_sequences_per_pass()) {
    o.sequences_per_pass = r.sequences_per_pass();
  }
  if (o.sequences_per_pass < 1) {
    return FieldError("sequences_per_pass", "must be positive");
  }
  if (r.has_calibration_shards()) {
    o.calibration_shards = r.calibration_shards();
  }
  if (o.calibration_shards < 1) {
    return FieldError("calibration_shards", "must be positive");
  }
  o.eval_texts.assign(r.eval_texts().begin(), r.eval_texts().end());
  if (r.has_eval_max_windows()) o.eval_max_windows = r.eval_max_windows();
  return o;
}

v1::Recipe RecipeFromOptions(const QuantizeModelOptions& o, v1::Mode mode) {
  v1::Recipe r;
  r.set_method(o.method == QuantMethod::kAwq   ? v1::METHOD_AWQ
               : o.method == QuantMethod::kRtn ? v1::METHOD_RTN
                                               : v1::METHOD_GPTQ);
  r.set_output_format(
      o.output_format == OutputFormat::kGguf  ? v1::OUTPUT_FORMAT_GGUF
      : o.output_format == OutputFormat::kAwq ? v1::OUTPUT_FORMAT_AWQ
                                              : v1::OUTPUT_FORMAT_GPTQ);
  r.set_mode(mode);
  r.set_bits(o.weights.bits);
  r.set_group_size(o.weights.group_size);
  r.set_sym(o.weights.sym);
  if (o.output_format == OutputFormat::kGguf) {
    r.set_gguf_type(o.gguf_type);
    r.set_gguf_grid(o.gguf_grid);
  }
  v1::GptqSettings& g = *r.mutable_gptq();
  g.set_desc_act(o.gptq.desc_act);
  g.set_static_groups(o.gptq.static_groups);
  g.set_mse(o.gptq.mse);
  g.set_damp_percent(o.gptq.damp_percent);
  g.set_block_size(o.gptq.block_size);
  g.set_group_params_at_block_start(o.gptq.group_params_at_block_start);
  g.set_true_sequential(o.true_sequential);
  v1::AwqSettings& a = *r.mutable_awq();
  a.set_n_grid(o.awq.n_grid);
  a.set_duo_scaling(o.awq.duo_scaling);
  a.set_clip(o.awq.clip);
  a.set_clip_grid(o.awq.clip_grid);
  a.set_max_shrink(o.awq.max_shrink);
  a.set_clip_sample_tokens(o.awq.clip_sample_tokens);
  a.set_search_sequences(o.awq.search_sequences);
  a.set_fp_inputs(o.awq.fp_inputs);
  v1::Calibration& c = *r.mutable_calibration();
  c.set_text_path(o.calibration.text_path);
  c.set_tokens_path(o.calibration.tokens_path);
  c.set_samples(o.calibration.samples);
  c.set_seq_len(o.calibration.seq_len);
  c.set_seed(o.calibration.seed);
  c.set_sampling(o.calibration.sampling == CalibrationSampling::kPythonRandom
                     ? v1::CALIBRATION_SAMPLING_PYTHON
                     : v1::CALIBRATION_SAMPLING_SPLITMIX64);
  r.set_sequences_per_pass(o.sequences_per_pass);
  r.set_calibration_shards(o.calibration_shards);
  for (const std::string& text : o.eval_texts) r.add_eval_texts(text);
  r.set_eval_max_windows(o.eval_max_windows);
  return r;
}

}  // namespace quant
