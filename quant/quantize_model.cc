#include "quant/quantize_model.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/file.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "convert/gguf_converter.h"
#include "convert/quant_mix.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/llama_forward.h"
#include "model/perplexity.h"
#include "quant/block_backend.h"
#include "quant/block_store.h"
#include "quant/checkpoint_export.h"
#include "quant/gguf_head.h"
#include "quant/gguf_pack.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

double SecondsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

// Peak resident set (VmHWM) in MiB, or -1 when /proc is unavailable.
double PeakRssMiB() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::strtod(line.c_str() + 6, nullptr) / 1024.0;
    }
  }
  return -1;
}

nlohmann::json RecipeJson(const QuantizeModelOptions& o) {
  std::error_code error;
  const std::string model = fs::absolute(o.model_dir, error).string();
  const CalibrationOptions& c = o.calibration;
  nlohmann::json recipe = {
      {"model", model},
      {"method", std::string(QuantMethodName(o.method))},
      {"output_format", o.output_format == OutputFormat::kGguf  ? "gguf"
                        : o.output_format == OutputFormat::kAwq ? "awq"
                                                                : "gptq"},
      {"gguf_type", o.output_format == OutputFormat::kGguf ? o.gguf_type : ""},
      {"gguf_grid", o.output_format == OutputFormat::kGguf && o.gguf_grid},
      {"bits", o.weights.bits},
      {"group_size", o.weights.group_size},
      {"sym", o.weights.sym},
      {"desc_act", o.gptq.desc_act},
      {"static_groups", o.gptq.static_groups},
      {"mse", o.gptq.mse},
      {"damp_percent", o.gptq.damp_percent},
      {"block_size", o.gptq.block_size},
      {"group_params_at_block_start", o.gptq.group_params_at_block_start},
      {"true_sequential", o.true_sequential},
      {"awq",
       {{"n_grid", o.awq.n_grid},
        {"duo_scaling", o.awq.duo_scaling},
        {"clip", o.awq.clip},
        {"clip_grid", o.awq.clip_grid},
        {"max_shrink", o.awq.max_shrink},
        {"clip_sample_tokens", o.awq.clip_sample_tokens},
        {"search_sequences", o.awq.search_sequences},
        {"fp_inputs", o.awq.fp_inputs}}},
      {"calibration",
       {{"text", c.text_path},
        {"tokens", c.tokens_path},
        {"samples", c.samples},
        {"seq_len", c.seq_len},
        {"seed", c.seed},
        {"sampling", std::string(CalibrationSamplingName(c.sampling))}}},
      {"sequences_per_pass", o.sequences_per_pass}};
  // Only when set, so that work directories from before it still resume.
  if (o.calibration_shards != 1) {
    recipe["calibration_shards"] = o.calibration_shards;
  }
  return recipe;
}

absl::Status CheckOptions(const QuantizeModelOptions& o) {
  if (o.work_dir.empty()) {
    return absl::InvalidArgumentError("a work directory is required");
  }
  if (o.output.empty()) return absl::InvalidArgumentError("no output given");
  if (o.calibration.samples == 0 && o.method != QuantMethod::kRtn) {
    return absl::InvalidArgumentError(
        absl::StrCat(QuantMethodName(o.method),
                     " needs calibration data (calibration samples > 0)"));
  }
  if (o.calibration_shards != 1) {
    const int64_t passes = (o.calibration.samples + o.sequences_per_pass - 1) /
                           std::max<int64_t>(1, o.sequences_per_pass);
    if (o.method == QuantMethod::kAwq || o.calibration_shards < 1 ||
        o.calibration_shards > passes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "calibration_shards ", o.calibration_shards, ": ",
          o.method == QuantMethod::kAwq
              ? "AWQ's search reads the whole calibration set (1 shard)"
              : absl::StrCat("between 1 and the ", passes,
                             " passes of the calibration set")));
    }
  }
  if (o.output_format == OutputFormat::kGptq) {
    if (o.weights.bits != 2 && o.weights.bits != 3 && o.weights.bits != 4 &&
        o.weights.bits != 8) {
      return absl::InvalidArgumentError(
          absl::StrCat("bits: GPTQ checkpoints hold 2, 3, 4 or 8 bits, not ",
                       o.weights.bits));
    }
  }
  if (o.output_format == OutputFormat::kAwq) {
    if (o.weights.bits != 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          "bits: AWQ GEMM checkpoints hold 4 bits, not ", o.weights.bits));
    }
    if (o.gptq.desc_act) {
      return absl::InvalidArgumentError(
          "desc_act: the AWQ layout has no act-order (g_idx)");
    }
  }
  return absl::OkStatus();
}

std::string FormatTable(const nlohmann::json& report) {
  std::string out =
      absl::StrFormat("%-6s %-18s %4s %5s %12s %10s %8s\n", "block", "linear",
                      "bits", "group", "proxy_loss", "rel_error", "seconds");
  for (const nlohmann::json& block : report["blocks"]) {
    for (const nlohmann::json& l : block["linears"]) {
      auto number = [](const nlohmann::json& v, const char* format) {
        return v.is_null() ? std::string("-")
                           : absl::StrFormat(format, v.get<double>());
      };
      const bool kept = !l.value("kept_fp", std::string()).empty();
      absl::StrAppendFormat(
          &out, "%-6d %-18s %4s %5s %12s %10s %8.2f\n",
          block["layer"].get<int>(), l["name"].get<std::string>(),
          kept ? "fp" : std::to_string(l["bits"].get<int>()),
          kept ? "-" : std::to_string(l["group_size"].get<int>()),
          number(l["proxy_loss"], "%.4g"),
          number(l["relative_output_error"], "%.5f"),
          l["seconds"].get<double>());
    }
  }
  // Which linears stayed in floating point (one line per reason), and
  // which backend and kernel class computed which blocks.
  std::map<std::string, std::vector<std::string>> kept, kernels;
  for (const nlohmann::json& k : report["kept_fp"]) {
    kept[k["reason"].get<std::string>()].push_back(
        k["tensor"].get<std::string>());
  }
  for (const nlohmann::json& block : report["blocks"]) {
    kernels[absl::StrCat(block.value("backend", std::string("?")), " ",
                         block.value("kernel", std::string("?")))]
        .push_back(std::to_string(block["layer"].get<int>()));
  }
  for (const auto& [reason, tensors] : kept) {
    absl::StrAppend(&out, "\nkept in floating point (", reason,
                    "): ", absl::StrJoin(tensors, ", "), "\n");
  }
  for (const auto& [kernel, layers] : kernels) {
    absl::StrAppend(&out, "\nblocks ", absl::StrJoin(layers, ","),
                    " computed on ", kernel, "\n");
  }
  if (report.contains("perplexity")) {
    absl::StrAppendFormat(&out, "\n%-24s %10s %10s\n", "held-out text",
                          "before", "after");
    for (const auto& [text, p] : report["perplexity"].items()) {
      absl::StrAppendFormat(
          &out, "%-24s %10.3f %10.3f\n", fs::path(text).filename().string(),
          p["before"].get<double>(), p["after"].get<double>());
    }
  }
  absl::StrAppendFormat(&out, "\ntotal %.1f s, peak RSS %.0f MiB\n",
                        report["seconds"].get<double>(),
                        report["peak_rss_mib"].get<double>());
  return out;
}

// The linears left in floating point, with why: [{tensor, reason}].
nlohmann::json KeptLinearsJson(const nlohmann::json& blocks) {
  nlohmann::json kept = nlohmann::json::array();
  for (const nlohmann::json& block : blocks) {
    for (const nlohmann::json& l : block["linears"]) {
      const std::string reason = l.value("kept_fp", std::string());
      if (reason.empty()) continue;
      kept.push_back(
          {{"tensor", absl::StrCat("model.layers.", block["layer"].get<int>(),
                                   ".", l["name"].get<std::string>())},
           {"reason", reason}});
    }
  }
  return kept;
}

// Whether linear `shape` stays in floating point in the output (see
// MakeBlockRecipe), and why.
std::optional<KeptLinear> KeptInFloatingPoint(
    const QuantizeModelOptions& options, const LinearShape& shape,
    std::optional<GgmlType> gguf_type, SafetensorsDType stored_dtype) {
  const int64_t rows = shape.rows, cols = shape.cols;
  const int group = options.weights.group_size;
  // A checkpoint keeps the linear in the model's own dtype.
  auto kept = [&](std::string reason) {
    return std::optional<KeptLinear>(
        KeptLinear{std::move(reason), stored_dtype});
  };
  switch (options.output_format) {
    case OutputFormat::kGguf:
      // The plain conversion's type: F16 (or F32 / BF16) where the rows do
      // not split into any quantized type's blocks.
      if (gguf_type.has_value() && SolveFormatOfGgmlType(*gguf_type).ok()) {
        return std::nullopt;
      }
      return KeptLinear{
          absl::StrCat(
              "GGUF type ",
              gguf_type.has_value() ? GgmlTypeName(*gguf_type) : "f16",
              cols % 32 != 0
                  ? absl::StrCat(" (the conversion's fallback): ", cols,
                                 " input columns do not split into blocks "
                                 "of 32")
                  : ""),
          gguf_type == GgmlType::kF32    ? SafetensorsDType::kF32
          : gguf_type == GgmlType::kBF16 ? SafetensorsDType::kBF16
                                         : SafetensorsDType::kF16};
    case OutputFormat::kGptq:
      // qweight packs 32 input rows per bits words, qzeros 32 outputs.
      if (cols % 32 != 0) {
        return kept(
            absl::StrCat("GPTQ v1 packs in_features in words of 32 "
                         "rows; ",
                         cols, " is not a multiple of 32"));
      }
      if (rows % 32 != 0) {
        return kept(
            absl::StrCat("GPTQ v1 packs qzeros in words of 32 "
                         "outputs; out_features ",
                         rows, " is not a multiple of 32"));
      }
      return std::nullopt;
    case OutputFormat::kAwq:
      // WQLinear_GEMM: qweight [in, out / 8], groups of whole columns.
      if (rows % 8 != 0) {
        return kept(
            absl::StrCat("AWQ GEMM packs 8 outputs per word; "
                         "out_features ",
                         rows, " is not a multiple of 8"));
      }
      if (group > 0 && cols % group != 0) {
        return kept(
            absl::StrCat("AWQ GEMM needs in_features divisible by "
                         "the group size ",
                         group, "; ", cols, " is not"));
      }
      return std::nullopt;
  }
  return std::nullopt;
}

// Per block and linear, the GGUF type it is written in.
absl::StatusOr<std::vector<std::array<std::optional<GgmlType>, kBlockLinears>>>
LinearTypes(const ModelSpec& spec,
            const std::map<std::string, GgmlType>& gguf_types) {
  std::vector<std::array<std::optional<GgmlType>, kBlockLinears>> types(
      static_cast<size_t>(spec.num_layers));
  for (int layer = 0; layer < spec.num_layers; ++layer) {
    for (int i = 0; i < kBlockLinears; ++i) {
      const std::string name = absl::StrCat("model.layers.", layer, ".",
                                            kBlockLinearNames[i], ".weight");
      auto it = gguf_types.find(name);
      if (it == gguf_types.end()) {
        return absl::InternalError(absl::StrCat("no GGUF type for ", name));
      }
      types[layer][i] = it->second;
    }
  }
  return types;
}

// Writes the GGUF from the committed block results: norms and biases as the
// blocks left them, each linear exactly where the solution is in its GGUF
// type, else re-fitted with the Hessian diagonal as importance; everything
// else converted from the checkpoint.
absl::StatusOr<ConvertResult> WriteGgufFromResults(
    const QuantizeModelOptions& options, const QuantizationPlan& plan,
    const BlockResultOpener& open_block) {
  const ModelSpec& spec = plan.spec;
  const std::map<std::string, GgmlType>& gguf_types = plan.gguf_types;
  ConvertOptions convert;
  convert.model_dir = options.model_dir;
  convert.output_path = options.output;
  convert.mix = *plan.mix;
  // The types (and so the file size) of a plain conversion, so that the two
  // compare at equal size: llama-quantize's imatrix rule (Q4_0's first
  // ffn_down in Q4_1) stays off.
  convert.has_importance = false;
  // One block's file open at a time, and of it one linear in memory (the
  // converter writes a tensor before it asks for the next).
  int open_layer = -1;
  std::unique_ptr<SavedBlockResult> block;
  // The tensors outside the blocks, when a worker encoded them already:
  // written from the mapping, whose pages go once written (a 70B model's
  // output head in Q6_K is 860 MB).
  std::unique_ptr<SafetensorsFile> head;
  const TensorView* head_written = nullptr;
  std::error_code error;
  if (fs::exists(GgufHeadPath(options.work_dir), error)) {
    ASSIGN_OR_RETURN(head,
                     SafetensorsFile::Open(GgufHeadPath(options.work_dir)));
  }
  convert.tensor_source = [&](const std::string& hf_name)
      -> absl::StatusOr<std::optional<TensorOverride>> {
    if (head_written != nullptr) head->Release(*head_written);
    head_written = nullptr;
    if (const TensorView* encoded =
            head == nullptr ? nullptr : head->Find(hf_name)) {
      TensorOverride tensor;
      tensor.encoded_view = absl::MakeConstSpan(encoded->data, encoded->nbytes);
      tensor.encoded_written = [&head, encoded](uint64_t from, uint64_t to) {
        TensorView written = *encoded;
        written.data = encoded->data + from;
        written.nbytes = to - from;
        head->Release(written);
      };
      tensor.encoded_type = gguf_types.at(hf_name);
      head_written = encoded;
      return tensor;
    }
    for (int layer = 0; layer < spec.num_layers; ++layer) {
      const std::string prefix = absl::StrCat("model.layers.", layer, ".");
      if (hf_name.rfind(prefix, 0) != 0) continue;
      if (open_layer != layer) {
        block.reset();
        ASSIGN_OR_RETURN(block, open_block(layer));
        open_layer = layer;
      }
      const std::string local = hf_name.substr(prefix.size());
      TensorOverride tensor;
      if (local == "input_layernorm.weight") {
        tensor.values = block->attn_norm();
        return tensor;
      }
      if (local == "post_attention_layernorm.weight") {
        tensor.values = block->ffn_norm();
        return tensor;
      }
      for (int i = 0; i < kBlockLinears; ++i) {
        const std::string name(kBlockLinearNames[i]);
        if (local == name + ".bias") {
          ASSIGN_OR_RETURN(tensor.values, block->Bias(i));
          return tensor;
        }
        if (local != name + ".weight") continue;
        ASSIGN_OR_RETURN(SavedLinear saved, block->Linear(i));
        // Exactly the solution where it is in the type (solved on its grid,
        // or in a coinciding format: Q4_0, Q5_0, Q8_0); else re-fitted with
        // the Hessian diagonal as importance, decoded a chunk at a time.
        QuantizedLinear& solved = saved.quantized;
        const GgmlType type = gguf_types.at(hf_name);
        if (!saved.report.kept_fp.empty()) {
          tensor.values = std::move(saved.weights.weight);
          tensor.importance = std::move(saved.importance);
          return tensor;
        }
        tensor.encoded_type = type;
        if (solved.gguf_type == type) {
          tensor.encoded_storage = std::move(solved.gguf_rows);
        } else if (FitsGgufTypeExactly(solved, type)) {
          ASSIGN_OR_RETURN(tensor.encoded_storage, PackGgufRows(solved, type));
        } else {
          tensor.importance = std::move(saved.importance);
          tensor.rows_count = solved.rows;
          tensor.rows_width = solved.cols;
          auto levels = std::make_shared<const SavedLinear>(std::move(saved));
          tensor.rows = [levels](int64_t first, int64_t count, float* out) {
            levels->quantized.DequantizeRows(first, count, out);
            return absl::OkStatus();
          };
          return tensor;
        }
        return tensor;
      }
    }
    return std::nullopt;
  };
  absl::StatusOr<ConvertResult> written = ConvertToGguf(convert);
  if (head_written != nullptr) head->Release(*head_written);
  return written;
}

// Held-out perplexity of the FP model and of the result, per text.
absl::StatusOr<nlohmann::json> Perplexities(
    const QuantizeModelOptions& options, const std::string& evaluated_dir,
    const BlockLoader& evaluated,
    const std::function<void(const std::string&)>& log) {
  PerplexityOptions eval;
  eval.max_windows = options.eval_max_windows;
  nlohmann::json perplexity = nlohmann::json::object();
  for (const std::string& text_path : options.eval_texts) {
    ASSIGN_OR_RETURN(const std::vector<int32_t> tokens,
                     HeldOutTokensOfFile(options.model_dir, text_path));
    ASSIGN_OR_RETURN(const PerplexityResult before,
                     EvaluatePerplexity(options.model_dir, tokens, eval));
    ASSIGN_OR_RETURN(
        const PerplexityResult after,
        EvaluatePerplexity(evaluated_dir, tokens, eval, evaluated));
    perplexity[text_path] = {{"before", before.perplexity},
                             {"after", after.perplexity},
                             {"windows", after.windows}};
    log(absl::StrFormat("%s: perplexity %.3f -> %.3f", text_path,
                        before.perplexity, after.perplexity));
  }
  return perplexity;
}

}  // namespace

absl::StatusOr<OutputFormat> ParseOutputFormat(absl::string_view name) {
  const std::string lower = absl::AsciiStrToLower(name);
  if (lower == "gptq") return OutputFormat::kGptq;
  if (lower == "awq") return OutputFormat::kAwq;
  if (lower == "gguf") return OutputFormat::kGguf;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown output format \"", name, "\" (gptq, awq or gguf)"));
}

std::string BlockResultPath(const std::string& work_dir, int layer) {
  return absl::StrCat(work_dir, "/block-", layer, ".safetensors");
}
std::string ActivationsPath(const std::string& work_dir, int layer) {
  return absl::StrCat(work_dir, "/activations-", layer, ".safetensors");
}

absl::StatusOr<BlockRecipe> MakeBlockRecipe(
    const QuantizeModelOptions& options, const ModelSpec& spec,
    SafetensorsDType norm_dtype,
    const std::array<std::optional<GgmlType>, kBlockLinears>& linear_types) {
  BlockRecipe r;
  r.method = options.method;
  r.gptq = options.gptq;
  r.true_sequential = options.true_sequential;
  r.awq = options.awq;
  r.sequences_per_pass = options.sequences_per_pass;
  r.calibration_shards = options.calibration_shards;
  r.norm_dtype = options.output_format == OutputFormat::kGguf
                     ? SafetensorsDType::kF32  // GGUF norms are F32.
                     : norm_dtype;
  for (int i = 0; i < kBlockLinears; ++i) {
    const bool gguf = options.output_format == OutputFormat::kGguf;
    if (gguf && !linear_types[i].has_value()) {
      return absl::InvalidArgumentError(
          absl::StrCat("GGUF output: no type for ", kBlockLinearNames[i]));
    }
    r.keep_fp[i] =
        KeptInFloatingPoint(options, BlockLinearShape(spec, i),
                            gguf ? linear_types[i] : std::nullopt, norm_dtype);
    if (r.keep_fp[i].has_value()) continue;
    if (!gguf) {
      r.formats[i] = options.weights;
      continue;
    }
    const GgmlType type = *linear_types[i];
    ASSIGN_OR_RETURN(r.formats[i], SolveFormatOfGgmlType(type));
    // Where GPTQ's own min-max groups are the type, they are used: on
    // llama-29m-books they scored better in Q4_0 than the type's weighted
    // fit (bench/gguf_from_gptq.md).
    if (options.gguf_grid && !IsSymmetricGroupOf32Type(type)) {
      r.gguf_grid[i] = type;
    }
  }
  return r;
}

// The work directory holds one run's files: it records the recipe and
// refuses a run with another.
absl::Status ClaimWorkDir(const std::string& work_dir,
                          const nlohmann::json& recipe) {
  std::error_code error;
  fs::create_directories(work_dir, error);
  if (error) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot create work directory ", work_dir, ": ", error.message()));
  }
  const std::string recipe_path = work_dir + "/recipe.json";
  if (!fs::exists(recipe_path, error)) {
    return WriteFileAtomically(recipe_path, recipe.dump(2) + "\n");
  }
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(recipe_path));
  ASSIGN_OR_RETURN(const nlohmann::json saved,
                   ParseJsonStrict(text, recipe_path));
  if (saved == recipe) return absl::OkStatus();
  std::string field = "?";
  for (const auto& [key, value] : recipe.items()) {
    if (!saved.contains(key) || saved[key] != value) {
      field = key;
      break;
    }
  }
  return absl::FailedPreconditionError(
      absl::StrCat(work_dir, " holds a run with another recipe (", field,
                   " differs); use a new work directory"));
}

absl::StatusOr<QuantizationPlan> PlanQuantization(
    const QuantizeModelOptions& options) {
  RETURN_IF_ERROR(CheckOptions(options));
  QuantizationPlan plan;
  ASSIGN_OR_RETURN(plan.spec, LoadModelConfig(options.model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(options.model_dir));
  ASSIGN_OR_RETURN(const TensorView norm,
                   checkpoint->Get("model.layers.0.input_layernorm.weight"));
  plan.norm_dtype = norm.dtype;
  plan.linear_types.resize(static_cast<size_t>(plan.spec.num_layers));
  if (options.output_format == OutputFormat::kGguf) {
    ASSIGN_OR_RETURN(plan.mix, ParseQuantMix(options.gguf_type));
    ASSIGN_OR_RETURN(plan.gguf_types,
                     PlanGgufTypes(options.model_dir, *plan.mix,
                                   /*has_importance=*/false));
    ASSIGN_OR_RETURN(plan.linear_types,
                     LinearTypes(plan.spec, plan.gguf_types));
  }
  for (int layer = 0; layer < plan.spec.num_layers; ++layer) {
    ASSIGN_OR_RETURN(BlockRecipe recipe,
                     MakeBlockRecipe(options, plan.spec, plan.norm_dtype,
                                     plan.linear_types[layer]));
    plan.block_recipes.push_back(std::move(recipe));
  }
  const bool quantizes_any = std::any_of(
      plan.block_recipes.begin(), plan.block_recipes.end(),
      [](const BlockRecipe& r) {
        return std::any_of(r.keep_fp.begin(), r.keep_fp.end(),
                           [](const auto& kept) { return !kept.has_value(); });
      });
  if (!quantizes_any) {
    const std::string why = plan.block_recipes.empty()
                                ? "the model has no decoder blocks"
                                : plan.block_recipes[0].keep_fp[0]->reason;
    return absl::InvalidArgumentError(absl::StrCat(
        "nothing to quantize: every linear stays in floating point (", why, ")",
        options.output_format == OutputFormat::kGguf
            ? "; quantctl convert writes such a file"
            : ""));
  }
  plan.recipe = RecipeJson(options);
  return plan;
}

absl::StatusOr<QuantizeModelResult> QuantizeModel(
    const QuantizeModelOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  auto log = [&](const std::string& line) {
    if (options.log) options.log(line);
  };
  ASSIGN_OR_RETURN(const QuantizationPlan plan, PlanQuantization(options));
  const ModelSpec& spec = plan.spec;
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(options.model_dir));
  // The device before any work: a missing GPU leaves the work dir as it is.
  ASSIGN_OR_RETURN(const std::unique_ptr<BlockBackend> backend,
                   MakeBlockBackend(options.backend, options.device));
  RETURN_IF_ERROR(ClaimWorkDir(options.work_dir, plan.recipe));

  QuantizeModelResult result;
  std::error_code error;
  const bool calibrated = options.calibration.samples > 0;
  const int64_t sequences = calibrated ? options.calibration.samples : 0;
  const int64_t seq_len = calibrated ? options.calibration.seq_len : 0;
  const int64_t dim = spec.hidden_size;
  int first = 0;
  while (first < spec.num_layers &&
         fs::exists(BlockResultPath(options.work_dir, first), error)) {
    ++first;
  }
  result.blocks_resumed = first;
  if (first < spec.num_layers) {
    std::vector<float> hidden;
    if (calibrated) {
      const std::string saved = ActivationsPath(options.work_dir, first);
      if (fs::exists(saved, error)) {
        ASSIGN_OR_RETURN(hidden,
                         LoadActivations(saved, sequences, seq_len, dim));
        log(absl::StrCat("resuming at block ", first));
      } else if (first == 0) {
        ASSIGN_OR_RETURN(
            const std::vector<int32_t> windows,
            LoadCalibrationWindows(options.model_dir, options.calibration));
        hidden.resize(windows.size() * static_cast<size_t>(dim));
        const LlamaForward embed(spec, seq_len);
        RETURN_IF_ERROR(embed.Embed(*checkpoint, windows, hidden.data()));
        RETURN_IF_ERROR(
            SaveActivations(saved, hidden, sequences, seq_len, dim));
      } else {
        return absl::FailedPreconditionError(
            absl::StrCat(options.work_dir, " has the result of block ",
                         first - 1, " but not the activations after it"));
      }
    }
    const LlamaForward forward(spec, std::max<int64_t>(seq_len, 1));
    CpuBlockBackend cpu;
    for (int layer = first; layer < spec.num_layers; ++layer) {
      ASSIGN_OR_RETURN(DecoderBlockWeights block,
                       LoadDecoderBlock(*checkpoint, spec, layer));
      absl::StatusOr<BlockResult> done = QuantizeBlockOn(
          *backend, cpu, forward, std::move(block), plan.block_recipes[layer],
          sequences, seq_len, hidden.data());
      if (!done.ok()) {
        return absl::Status(
            done.status().code(),
            absl::StrCat("block ", layer, ": ", done.status().message()));
      }
      // Activations first, then the result that commits the block.
      if (calibrated && layer + 1 < spec.num_layers) {
        RETURN_IF_ERROR(
            SaveActivations(ActivationsPath(options.work_dir, layer + 1),
                            hidden, sequences, seq_len, dim));
      }
      RETURN_IF_ERROR(
          SaveBlockResult(BlockResultPath(options.work_dir, layer), *done));
      fs::remove(ActivationsPath(options.work_dir, layer), error);
      ++result.blocks_quantized;
      log(absl::StrFormat("block %d/%d quantized in %.1f s", layer + 1,
                          spec.num_layers, done->seconds));
      if (layer == options.stop_after_block && layer + 1 < spec.num_layers) {
        log(absl::StrCat("stopped after block ", layer));
        return result;
      }
    }
  }
  ASSIGN_OR_RETURN(QuantizeModelResult assembled,
                   AssembleOutput(options, plan, start));
  assembled.blocks_quantized = result.blocks_quantized;
  assembled.blocks_resumed = result.blocks_resumed;
  return assembled;
}

absl::StatusOr<QuantizeModelResult> AssembleOutput(
    const QuantizeModelOptions& options, const QuantizationPlan& plan,
    std::chrono::steady_clock::time_point start) {
  auto log = [&](const std::string& line) {
    if (options.log) options.log(line);
  };
  const ModelSpec& spec = plan.spec;
  QuantizeModelResult result;
  // Reports of every block, from the committed results.
  const auto cancelled = [&](int layer) -> absl::Status {
    if (options.cancelled && options.cancelled()) {
      return absl::CancelledError(
          absl::StrCat("assembly stopped before block ", layer));
    }
    return absl::OkStatus();
  };
  const BlockResultOpener open_block =
      [&](int layer) -> absl::StatusOr<std::unique_ptr<SavedBlockResult>> {
    RETURN_IF_ERROR(cancelled(layer));
    return SavedBlockResult::Open(BlockResultPath(options.work_dir, layer));
  };
  nlohmann::json blocks = nlohmann::json::array();
  for (int layer = 0; layer < spec.num_layers; ++layer) {
    ASSIGN_OR_RETURN(nlohmann::json entry,
                     LoadBlockReport(BlockResultPath(options.work_dir, layer)));
    entry["layer"] = layer;
    blocks.push_back(std::move(entry));
  }
  // The output, then the perplexity of what was written.
  BlockLoader evaluated;
  if (options.output_format == OutputFormat::kGguf) {
    ASSIGN_OR_RETURN(const ConvertResult written,
                     WriteGgufFromResults(options, plan, open_block));
    log(absl::StrCat("wrote ", options.output, " (", written.output_bytes,
                     " bytes)"));
    // llama.cpp evaluates the GGUF itself; here the solution before it was
    // written in the GGUF types.
    evaluated = [&](const SafetensorsCheckpoint&, const ModelSpec&,
                    int layer) -> absl::StatusOr<DecoderBlockWeights> {
      RETURN_IF_ERROR(cancelled(layer));
      ASSIGN_OR_RETURN(BlockResult done, LoadBlockResult(BlockResultPath(
                                             options.work_dir, layer)));
      return std::move(done.weights);
    };
  } else {
    QuantizationConfig config;
    config.layout = options.output_format == OutputFormat::kAwq
                        ? CheckpointLayout::kAwqGemm
                        : CheckpointLayout::kGptqV1;
    config.bits = options.weights.bits;
    config.group_size = options.weights.group_size;
    config.sym = options.weights.sym;
    config.desc_act = options.gptq.desc_act;
    config.static_groups = options.gptq.static_groups;
    config.true_sequential = options.true_sequential;
    config.damp_percent = options.gptq.damp_percent;
    RETURN_IF_ERROR(WriteQuantizedCheckpoint(options.model_dir, options.output,
                                             config, open_block));
    log(absl::StrCat("wrote ", options.output));
    // As written: with the linears it kept in floating point.
    ASSIGN_OR_RETURN(const std::optional<QuantizationConfig> read,
                     ReadQuantizationConfig(options.output));
    if (read.has_value()) config.modules_kept_fp = read->modules_kept_fp;
    evaluated = [config](const SafetensorsCheckpoint& written,
                         const ModelSpec& written_spec, int layer) {
      return LoadQuantizedDecoderBlock(written, written_spec, layer, config);
    };
  }

  nlohmann::json report = {{"recipe", plan.recipe},
                           {"blocks", blocks},
                           {"kept_fp", KeptLinearsJson(blocks)}};
  if (!options.eval_texts.empty()) {
    const std::string evaluated_dir =
        options.output_format == OutputFormat::kGguf ? options.model_dir
                                                     : options.output;
    ASSIGN_OR_RETURN(report["perplexity"],
                     Perplexities(options, evaluated_dir, evaluated, log));
  }
  report["seconds"] = SecondsSince(start);
  report["peak_rss_mib"] = PeakRssMiB();
  result.report = report;
  result.report_table = FormatTable(report);
  const std::string report_base = options.output_format == OutputFormat::kGguf
                                      ? options.output + ".report"
                                      : options.output + "/quantization_report";
  RETURN_IF_ERROR(
      WriteFileAtomically(report_base + ".json", report.dump(2) + "\n"));
  RETURN_IF_ERROR(
      WriteFileAtomically(report_base + ".txt", result.report_table));
  result.finished = true;
  return result;
}

}  // namespace quant
