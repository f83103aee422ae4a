#include "convert/gguf_converter.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "format/gguf.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "format/tokenizer_import.h"
#include "kernels/cpu/quantize_rows.h"

namespace quant {
namespace {

// Rows converted at a time: about this many source elements (4 MiB as F32).
constexpr int64_t kChunkElements = 1 << 20;
constexpr uint32_t kQuantizationVersion = 2;  // ggml's current block layout.

std::string BaseName(const std::string& path) {
  std::string trimmed = path;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  const size_t slash = trimmed.rfind('/');
  return slash == std::string::npos ? trimmed : trimmed.substr(slash + 1);
}

void AddArchitectureMetadata(const ModelSpec& spec, const std::string& name,
                             uint32_t file_type, GgufWriter& gguf) {
  const std::string& arch = spec.gguf_arch;
  auto u32 = [](int64_t v) { return GgufValue::U32(static_cast<uint32_t>(v)); };
  gguf.Set("general.architecture", GgufValue::String(arch));
  gguf.Set("general.name", GgufValue::String(name));
  gguf.Set("general.file_type", GgufValue::U32(file_type));
  gguf.Set("general.quantization_version",
           GgufValue::U32(kQuantizationVersion));
  const int64_t context =
      spec.max_position_embeddings > 0 ? spec.max_position_embeddings : 4096;
  gguf.Set(arch + ".context_length", u32(context));
  gguf.Set(arch + ".embedding_length", u32(spec.hidden_size));
  gguf.Set(arch + ".block_count", u32(spec.num_layers));
  gguf.Set(arch + ".feed_forward_length", u32(spec.intermediate_size));
  gguf.Set(arch + ".attention.head_count", u32(spec.num_heads));
  gguf.Set(arch + ".attention.head_count_kv", u32(spec.num_kv_heads));
  gguf.Set(arch + ".attention.layer_norm_rms_epsilon",
           GgufValue::F32(static_cast<float>(spec.rms_norm_eps)));
  gguf.Set(arch + ".rope.freq_base",
           GgufValue::F32(static_cast<float>(spec.rope_theta)));
  gguf.Set(arch + ".rope.dimension_count", u32(spec.head_dim));
  if (spec.head_dim * spec.num_heads != spec.hidden_size) {
    gguf.Set(arch + ".attention.key_length", u32(spec.head_dim));
    gguf.Set(arch + ".attention.value_length", u32(spec.head_dim));
  }
  gguf.Set(arch + ".vocab_size", u32(spec.vocab_size));
  if (spec.rope_scaling.type == "linear") {
    gguf.Set(arch + ".rope.scaling.type", GgufValue::String("linear"));
    gguf.Set(arch + ".rope.scaling.factor",
             GgufValue::F32(static_cast<float>(spec.rope_scaling.factor)));
  }
}

void AddTokenizerMetadata(const GgufTokenizer& tokenizer, GgufWriter& gguf) {
  gguf.Set("tokenizer.ggml.model", GgufValue::String(tokenizer.model));
  gguf.Set("tokenizer.ggml.pre", GgufValue::String(tokenizer.pre));
  gguf.Set("tokenizer.ggml.tokens", GgufValue::StringArray(tokenizer.tokens));
  if (!tokenizer.scores.empty()) {
    gguf.Set("tokenizer.ggml.scores", GgufValue::F32Array(tokenizer.scores));
  }
  gguf.Set("tokenizer.ggml.token_type",
           GgufValue::I32Array(tokenizer.token_types));
  if (!tokenizer.merges.empty()) {
    gguf.Set("tokenizer.ggml.merges", GgufValue::StringArray(tokenizer.merges));
  }
  auto set_id = [&](const char* key, const std::optional<int64_t>& id) {
    if (id.has_value()) {
      gguf.Set(key, GgufValue::U32(static_cast<uint32_t>(*id)));
    }
  };
  set_id("tokenizer.ggml.bos_token_id", tokenizer.bos_id);
  set_id("tokenizer.ggml.eos_token_id", tokenizer.eos_id);
  set_id("tokenizer.ggml.unknown_token_id", tokenizer.unk_id);
  set_id("tokenizer.ggml.padding_token_id", tokenizer.pad_id);
  gguf.Set("tokenizer.ggml.add_bos_token", GgufValue::Bool(tokenizer.add_bos));
  gguf.Set("tokenizer.ggml.add_eos_token", GgufValue::Bool(tokenizer.add_eos));
  if (tokenizer.chat_template.has_value()) {
    gguf.Set("tokenizer.chat_template",
             GgufValue::String(*tokenizer.chat_template));
  }
}

// GGUF lists dimensions fastest-varying first.
std::vector<uint64_t> GgufDims(const std::vector<int64_t>& hf_shape) {
  return std::vector<uint64_t>(hf_shape.rbegin(), hf_shape.rend());
}

// Converts one tensor chunk by chunk: source rows -> F32 -> (rope row
// permutation) -> target type -> output.
absl::Status StreamTensor(const SafetensorsCheckpoint& checkpoint,
                          const ModelSpec& spec, const GgufTensorPlan& plan,
                          GgmlType type, int num_threads,
                          const std::optional<TensorOverride>& replacement,
                          GgufWriter& gguf) {
  ASSIGN_OR_RETURN(TensorView view, checkpoint.Get(plan.hf_name));
  const int64_t heads = RopePermutationHeads(spec, plan.permutation);
  if (replacement && !replacement->encoded().empty()) {
    const absl::Span<const uint8_t> encoded = replacement->encoded();
    const int64_t cols = plan.hf_shape.empty() ? 1 : plan.hf_shape.back();
    ASSIGN_OR_RETURN(const uint64_t row_bytes, GgmlRowBytes(type, cols));
    const int64_t rows = cols == 0 ? 0 : view.num_elements() / cols;
    if (replacement->encoded_type != type ||
        encoded.size() != rows * row_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(plan.hf_name, " was encoded as ",
                       GgmlTypeName(replacement->encoded_type), " (",
                       encoded.size(), " bytes), not as the planned ",
                       GgmlTypeName(type), " (", rows * row_bytes, " bytes)"));
    }
    if (heads == 0) {
      // A window at a time, each handed back once written.
      constexpr size_t kWindow = 64 << 20;
      for (size_t from = 0; from < encoded.size(); from += kWindow) {
        const size_t n = std::min(kWindow, encoded.size() - from);
        RETURN_IF_ERROR(
            gguf.WriteTensorData(plan.gguf_name, encoded.data() + from, n));
        if (replacement->encoded_written) {
          replacement->encoded_written(from, from + n);
        }
      }
      return absl::OkStatus();
    }
    std::vector<uint8_t> permuted(encoded.size());
    RETURN_IF_ERROR(PermuteRowsForRope(encoded.data(), permuted.data(), rows,
                                       static_cast<int64_t>(row_bytes), heads));
    return gguf.WriteTensorData(plan.gguf_name, permuted.data(),
                                permuted.size());
  }
  const float* importance = nullptr;
  if (replacement) {
    if (!replacement->rows &&
        static_cast<int64_t>(replacement->values.size()) !=
            view.num_elements()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the replacement of ", plan.hf_name, " holds ",
          replacement->values.size(), " values, not ", view.num_elements()));
    }
    if (!replacement->importance.empty()) {
      if (plan.hf_shape.size() != 2 ||
          static_cast<int64_t>(replacement->importance.size()) !=
              plan.hf_shape.back()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the importance of ", plan.hf_name, " holds ",
            replacement->importance.size(), " values, not one per column"));
      }
      importance = replacement->importance.data();
    }
  }
  // A permuted vector (a q/k bias) moves like the rows of its weight: treat
  // it as a column, one element per row.
  const bool column = heads > 0 && plan.hf_shape.size() == 1;
  const int64_t cols =
      column || plan.hf_shape.empty() ? 1 : plan.hf_shape.back();
  const int64_t rows = cols == 0 ? 0 : view.num_elements() / cols;
  if (replacement && replacement->rows &&
      (replacement->rows_count != rows || replacement->rows_width != cols)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the replacement of ", plan.hf_name, " is [", replacement->rows_count,
        ", ", replacement->rows_width, "], not [", rows, ", ", cols, "]"));
  }
  if (heads > 0 && (rows == 0 || rows % heads != 0)) {
    return absl::InvalidArgumentError(absl::StrCat(plan.hf_name, " has ", rows,
                                                   " rows, which do not split "
                                                   "into ",
                                                   heads, " rotary heads"));
  }
  // A chunk holds whole rope heads when rows are permuted.
  const int64_t rows_per_unit = heads > 0 ? rows / heads : 1;
  const int64_t units_per_chunk = std::max<int64_t>(
      1, kChunkElements / std::max<int64_t>(1, rows_per_unit * cols));
  const int64_t chunk_rows = units_per_chunk * rows_per_unit;
  ASSIGN_OR_RETURN(const uint64_t row_bytes, GgmlRowBytes(type, cols));
  const size_t element_bytes = SafetensorsDTypeSize(view.dtype);

  std::vector<float> values(std::min(rows, chunk_rows) * cols);
  std::vector<float> permuted(heads > 0 ? values.size() : 0);
  std::vector<uint8_t> packed(std::min(rows, chunk_rows) * row_bytes);
  for (int64_t row = 0; row < rows; row += chunk_rows) {
    const int64_t n_rows = std::min(chunk_rows, rows - row);
    if (replacement && replacement->rows) {
      RETURN_IF_ERROR(replacement->rows(row, n_rows, values.data()));
    } else if (replacement) {
      std::copy_n(replacement->values.data() + row * cols, n_rows * cols,
                  values.data());
    } else {
      RETURN_IF_ERROR(view.ToFloat(row * cols, n_rows * cols, values.data()));
    }
    const float* source = values.data();
    if (heads > 0) {
      RETURN_IF_ERROR(PermuteRowsForRope(values.data(), permuted.data(), n_rows,
                                         cols, n_rows / rows_per_unit));
      source = permuted.data();
    }
    // Importance only for quantized types (F32/F16 copy the values).
    const bool quantized = type != GgmlType::kF32 && type != GgmlType::kF16 &&
                           type != GgmlType::kBF16;
    RETURN_IF_ERROR(QuantizeRows(type, source, n_rows, cols, packed.data(),
                                 num_threads,
                                 quantized ? importance : nullptr));
    RETURN_IF_ERROR(gguf.WriteTensorData(plan.gguf_name, packed.data(),
                                         n_rows * row_bytes));
    // Drop the chunk's source pages now: a 70B model's embedding is 2 GB.
    TensorView done = view;
    done.data = view.data + row * cols * element_bytes;
    done.nbytes = n_rows * cols * element_bytes;
    checkpoint.Release(done);
  }
  checkpoint.Release(view);  // Pages straddling chunk boundaries.
  return absl::OkStatus();
}

absl::StatusOr<std::vector<GgufTensorPlan>> PlanTensors(
    const ModelSpec& spec, const SafetensorsCheckpoint& checkpoint) {
  const TensorShapeFn shape_of =
      [&](const std::string& name) -> std::optional<std::vector<int64_t>> {
    absl::StatusOr<std::vector<int64_t>> shape = checkpoint.Shape(name);
    if (!shape.ok()) return std::nullopt;
    return *std::move(shape);
  };
  return PlanGgufTensors(spec, checkpoint.TensorNames(), shape_of);
}

std::vector<GgmlType> PlanTypes(const ModelSpec& spec,
                                const std::vector<GgufTensorPlan>& plans,
                                const QuantMix& mix, bool has_importance) {
  const MixModelInfo mix_model = {spec.gguf_arch, spec.num_layers,
                                  spec.num_heads, spec.num_kv_heads,
                                  has_importance};
  return PlanMixTypes(mix, mix_model, plans);
}

}  // namespace

absl::StatusOr<std::map<std::string, GgmlType>> PlanGgufTypes(
    const std::string& model_dir, const QuantMix& mix, bool has_importance) {
  ASSIGN_OR_RETURN(const ModelSpec spec, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(model_dir));
  ASSIGN_OR_RETURN(const std::vector<GgufTensorPlan> plans,
                   PlanTensors(spec, *checkpoint));
  const std::vector<GgmlType> types =
      PlanTypes(spec, plans, mix, has_importance);
  std::map<std::string, GgmlType> by_name;
  for (size_t i = 0; i < plans.size(); ++i)
    by_name[plans[i].hf_name] = types[i];
  return by_name;
}

absl::StatusOr<ConvertResult> ConvertToGguf(const ConvertOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(const ModelSpec spec, LoadModelConfig(options.model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(options.model_dir));
  ASSIGN_OR_RETURN(const std::vector<GgufTensorPlan> plans,
                   PlanTensors(spec, *checkpoint));
  std::vector<uint64_t> input_bytes;  // Source bytes of each plan.
  uint64_t input_bytes_total = 0;
  for (const GgufTensorPlan& plan : plans) {
    ASSIGN_OR_RETURN(const TensorView view, checkpoint->Get(plan.hf_name));
    if (view.dtype != SafetensorsDType::kBF16 &&
        view.dtype != SafetensorsDType::kF16 &&
        view.dtype != SafetensorsDType::kF32) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor ", plan.hf_name, " has dtype ",
          SafetensorsDTypeName(view.dtype),
          "; only BF16, F16 and F32 checkpoints can be converted"));
    }
    input_bytes.push_back(view.nbytes);
    input_bytes_total += view.nbytes;
  }
  ASSIGN_OR_RETURN(const GgufTokenizer tokenizer,
                   ImportTokenizer(options.model_dir, spec.vocab_size));

  ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> gguf,
                   GgufWriter::Create(options.output_path));
  AddArchitectureMetadata(spec, BaseName(options.model_dir),
                          options.mix.file_type, *gguf);
  AddTokenizerMetadata(tokenizer, *gguf);

  // Plan every tensor's type before anything is written.
  ConvertResult result;
  const std::vector<GgmlType> types =
      PlanTypes(spec, plans, options.mix, options.has_importance);
  const bool rope_factors = spec.rope_scaling.type == "llama3";
  if (rope_factors) {
    RETURN_IF_ERROR(gguf->AddTensor("rope_freqs.weight",
                                    {static_cast<uint64_t>(spec.head_dim / 2)},
                                    GgmlType::kF32));
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    RETURN_IF_ERROR(gguf->AddTensor(plans[i].gguf_name,
                                    GgufDims(plans[i].hf_shape), types[i]));
    ++result.tensors_by_type[types[i]];
  }
  result.tensor_count = static_cast<int64_t>(plans.size()) + rope_factors;

  ConvertProgress progress;
  progress.tensor_count = result.tensor_count;
  progress.input_bytes_total = input_bytes_total;
  auto report = [&](const std::string& name, GgmlType type,
                    uint64_t input_bytes) {
    if (!options.on_progress) return;
    ++progress.tensor_index;
    progress.tensor_name = name;
    progress.type = type;
    progress.input_bytes_done += input_bytes;
    progress.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count();
    options.on_progress(progress);
  };
  if (rope_factors) {
    const std::vector<float> factors = Llama3RopeFactors(spec);
    RETURN_IF_ERROR(gguf->WriteTensorData("rope_freqs.weight", factors.data(),
                                          factors.size() * sizeof(float)));
    ++result.tensors_by_type[GgmlType::kF32];
    report("rope_freqs.weight", GgmlType::kF32, 0);
  }
  for (size_t i = 0; i < plans.size(); ++i) {
    std::optional<TensorOverride> replacement;
    if (options.tensor_source) {
      ASSIGN_OR_RETURN(replacement, options.tensor_source(plans[i].hf_name));
    }
    RETURN_IF_ERROR(StreamTensor(*checkpoint, spec, plans[i], types[i],
                                 options.num_threads, replacement, *gguf));
    report(plans[i].gguf_name, types[i], input_bytes[i]);
  }
  RETURN_IF_ERROR(gguf->Finish());

  std::error_code error;
  result.output_bytes = std::filesystem::file_size(options.output_path, error);
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return result;
}

}  // namespace quant
