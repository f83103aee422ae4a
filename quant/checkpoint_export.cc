#include "quant/checkpoint_export.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "common/file.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "format/ggml_type.h"
#include "format/half.h"
#include "kernels/cpu/quantize_rows.h"
#include "quant/packing.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

constexpr const char* kTokenizerFiles[] = {
    "tokenizer.model",        "tokenizer.json",
    "tokenizer_config.json",  "special_tokens_map.json",
    "generation_config.json", "added_tokens.json"};

std::string LayerPrefix(int layer) {
  return absl::StrCat("model.layers.", layer, ".");
}

// The packed tensors of one linear, by suffix.
struct PackedTensor {
  std::string suffix;  // "qweight", ...
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <typename T>
PackedTensor Packed(std::string suffix, SafetensorsDType dtype,
                    std::vector<int64_t> shape, const std::vector<T>& values) {
  PackedTensor t{std::move(suffix), dtype, std::move(shape), {}};
  t.bytes.resize(values.size() * sizeof(T));
  if (!values.empty())
    std::memcpy(t.bytes.data(), values.data(), t.bytes.size());
  return t;
}

// Float values as `dtype` bytes (F32, F16 or BF16), by the GGUF row
// converter, which has those element types too.
absl::StatusOr<std::vector<uint8_t>> Encode(const std::vector<float>& values,
                                            SafetensorsDType dtype) {
  GgmlType type;
  switch (dtype) {
    case SafetensorsDType::kF32:
      type = GgmlType::kF32;
      break;
    case SafetensorsDType::kF16:
      type = GgmlType::kF16;
      break;
    case SafetensorsDType::kBF16:
      type = GgmlType::kBF16;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("floating-point tensors stored as ",
                       SafetensorsDTypeName(dtype), " cannot be written"));
  }
  const int64_t n = static_cast<int64_t>(values.size());
  std::vector<uint8_t> bytes(values.size() * SafetensorsDTypeSize(dtype));
  RETURN_IF_ERROR(QuantizeRows(type, values.data(), 1, n, bytes.data(), 1));
  return bytes;
}

// Linear i of a block result as the checkpoint stores it: packed, or (kept
// in floating point) its weight and bias in `fp_dtype`, the model's.
absl::StatusOr<std::vector<PackedTensor>> PackLinear(
    const SavedLinear& saved, const QuantizationConfig& config,
    SafetensorsDType fp_dtype) {
  const QuantizedLinear& q = saved.quantized;
  const LinearWeights& linear = saved.weights;
  std::vector<PackedTensor> out;
  if (!saved.report.kept_fp.empty()) {
    for (const auto& [suffix, values, shape] :
         {std::make_tuple("weight", &linear.weight,
                          std::vector<int64_t>{linear.rows, linear.cols}),
          std::make_tuple("bias", &linear.bias,
                          std::vector<int64_t>{linear.rows})}) {
      if (values->empty()) continue;
      ASSIGN_OR_RETURN(std::vector<uint8_t> bytes, Encode(*values, fp_dtype));
      out.push_back({suffix, fp_dtype, shape, std::move(bytes)});
    }
    return out;
  }
  if (q.bits != config.bits || q.group_size != config.group_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("a linear quantized with ", q.bits, " bits, group ",
                     q.group_size, " does not fit the checkpoint's ",
                     config.bits, " bits, group ", config.group_size));
  }
  if (config.layout == CheckpointLayout::kGptqV1) {
    ASSIGN_OR_RETURN(const PackedGptqV1 p, PackGptqV1(q));
    out.push_back(Packed("qweight", SafetensorsDType::kI32, p.qweight_shape(),
                         p.qweight));
    out.push_back(
        Packed("qzeros", SafetensorsDType::kI32, p.qzeros_shape(), p.qzeros));
    out.push_back(
        Packed("scales", SafetensorsDType::kF16, p.scales_shape(), p.scales));
    out.push_back(
        Packed("g_idx", SafetensorsDType::kI32, p.g_idx_shape(), p.g_idx));
  } else {
    ASSIGN_OR_RETURN(const PackedAwqGemm p, PackAwqGemm(q));
    out.push_back(Packed("qweight", SafetensorsDType::kI32, p.qweight_shape(),
                         p.qweight));
    out.push_back(
        Packed("qzeros", SafetensorsDType::kI32, p.qzeros_shape(), p.qzeros));
    out.push_back(
        Packed("scales", SafetensorsDType::kF16, p.scales_shape(), p.scales));
  }
  if (!linear.bias.empty()) {
    std::vector<uint16_t> bias(linear.bias.size());
    for (size_t i = 0; i < bias.size(); ++i)
      bias[i] = FloatToHalf(linear.bias[i]);
    out.push_back(Packed("bias", SafetensorsDType::kF16, {linear.rows}, bias));
  }
  return out;
}

// The elements of tensor `name`, which must have `dtype`; its shape into
// `shape`.
template <typename T>
absl::StatusOr<std::vector<T>> RawTensor(
    const SafetensorsCheckpoint& checkpoint, const std::string& name,
    SafetensorsDType dtype, std::vector<int64_t>& shape) {
  ASSIGN_OR_RETURN(const TensorView view, checkpoint.Get(name));
  if (view.dtype != dtype) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, " is ", SafetensorsDTypeName(view.dtype),
                     ", expected ", SafetensorsDTypeName(dtype)));
  }
  shape = view.shape;
  return view.CopyElements<T>();
}

// The packed linear `name` ("model.layers.N.mlp.down_proj.") of a
// checkpoint in `config`'s layout, unpacked.
absl::StatusOr<QuantizedLinear> ReadPackedLinear(
    const SafetensorsCheckpoint& checkpoint, const std::string& name,
    const QuantizationConfig& config) {
  auto ints = [&](const std::string& tensor, std::vector<int64_t>& shape) {
    return RawTensor<int32_t>(checkpoint, tensor, SafetensorsDType::kI32,
                              shape);
  };
  std::vector<int64_t> qweight_shape, qzeros_shape, scales_shape, g_shape;
  ASSIGN_OR_RETURN(std::vector<int32_t> qweight,
                   ints(name + "qweight", qweight_shape));
  ASSIGN_OR_RETURN(std::vector<int32_t> qzeros,
                   ints(name + "qzeros", qzeros_shape));
  ASSIGN_OR_RETURN(std::vector<uint16_t> scales,
                   RawTensor<uint16_t>(checkpoint, name + "scales",
                                       SafetensorsDType::kF16, scales_shape));
  if (qweight_shape.size() != 2 || scales_shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "qweight/scales are not 2-D"));
  }
  absl::StatusOr<QuantizedLinear> unpacked;
  if (config.layout == CheckpointLayout::kGptqV1) {
    PackedGptqV1 p;
    p.rows = qweight_shape[1];
    p.cols = qweight_shape[0] * 32 / config.bits;
    p.bits = config.bits;
    p.groups = scales_shape[0];
    p.qweight = std::move(qweight);
    p.qzeros = std::move(qzeros);
    p.scales = std::move(scales);
    ASSIGN_OR_RETURN(p.g_idx, ints(name + "g_idx", g_shape));
    unpacked = UnpackGptqV1(p, config.group_size);
  } else {
    PackedAwqGemm p;
    p.cols = qweight_shape[0];
    p.rows = qweight_shape[1] * 8;
    p.groups = scales_shape[0];
    p.qweight = std::move(qweight);
    p.qzeros = std::move(qzeros);
    p.scales = std::move(scales);
    unpacked = UnpackAwqGemm(p, config.group_size);
  }
  if (!unpacked.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, "*: ", unpacked.status().message()));
  }
  return unpacked;
}

// One output tensor: where its bytes come from.
struct Planned {
  std::string name;
  SafetensorsDType dtype;
  std::vector<int64_t> shape;
  int layer = -1;      // Produced from that block's result; else copied.
  int linear = -1;     // Of that block's linear, packed; else a norm.
  std::string source;  // Copied tensor's name.
};

}  // namespace

nlohmann::json QuantizationConfigJson(const QuantizationConfig& config) {
  const std::vector<std::string>& kept = config.modules_kept_fp;
  if (config.layout == CheckpointLayout::kAwqGemm) {
    // AutoAWQ, transformers and vLLM skip a module whose name contains an
    // entry.
    return {{"quant_method", "awq"},
            {"version", "gemm"},
            {"bits", config.bits},
            {"group_size", config.group_size},
            {"zero_point", !config.sym},
            {"modules_to_not_convert",
             kept.empty() ? nlohmann::json(nullptr) : nlohmann::json(kept)}};
  }
  nlohmann::json gptq = {{"quant_method", "gptq"},
                         {"bits", config.bits},
                         {"group_size", config.group_size},
                         {"desc_act", config.desc_act},
                         {"sym", config.sym},
                         {"static_groups", config.static_groups},
                         {"true_sequential", config.true_sequential},
                         {"damp_percent", config.damp_percent},
                         {"checkpoint_format", "gptq"},
                         {"lm_head", false}};
  if (kept.empty()) return gptq;
  // transformers / optimum and vLLM: the linears of each block to quantize,
  // in their true-sequential stages; GPTQModel (and vLLM): a negative
  // "dynamic" rule per module left in floating point.
  nlohmann::json stages = nlohmann::json::array();
  nlohmann::json dynamic = nlohmann::json::object();
  for (const std::vector<int>& stage : TrueSequentialStages()) {
    nlohmann::json names = nlohmann::json::array();
    for (int i : stage) {
      const std::string name(kBlockLinearNames[i]);
      if (std::find(kept.begin(), kept.end(), name) == kept.end()) {
        names.push_back(name);
      } else {
        dynamic[absl::StrCat("-:model\\.layers\\.\\d+\\.",
                             absl::StrReplaceAll(name, {{".", "\\."}}), "$")] =
            nlohmann::json::object();
      }
    }
    if (!names.empty()) stages.push_back(std::move(names));
  }
  gptq["modules_in_block_to_quantize"] = std::move(stages);
  gptq["dynamic"] = std::move(dynamic);
  return gptq;
}

absl::StatusOr<std::optional<QuantizationConfig>> ReadQuantizationConfig(
    const std::string& model_dir) {
  const std::string path = model_dir + "/config.json";
  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));
  ASSIGN_OR_RETURN(const nlohmann::json json, ParseJsonStrict(text, path));
  if (!json.is_object() || !json.contains("quantization_config")) {
    return std::nullopt;
  }
  const nlohmann::json& q = json["quantization_config"];
  QuantizationConfig config;
  try {
    const std::string method = q.at("quant_method").get<std::string>();
    config.bits = q.at("bits").get<int>();
    config.group_size = q.at("group_size").get<int>();
    if (method == "gptq") {
      config.layout = CheckpointLayout::kGptqV1;
      config.sym = q.value("sym", true);
      config.desc_act = q.value("desc_act", false);
      if (q.contains("modules_in_block_to_quantize") &&
          !q["modules_in_block_to_quantize"].is_null()) {
        std::vector<std::string> quantized;
        for (const nlohmann::json& stage : q["modules_in_block_to_quantize"]) {
          for (const nlohmann::json& name : stage) {
            quantized.push_back(name.get<std::string>());
          }
        }
        for (absl::string_view name : kBlockLinearNames) {
          if (std::find(quantized.begin(), quantized.end(), name) ==
              quantized.end()) {
            config.modules_kept_fp.emplace_back(name);
          }
        }
      }
      if (q.value("checkpoint_format", std::string("gptq")) != "gptq") {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": only the GPTQ v1 checkpoint_format \"gptq\" is read"));
      }
    } else if (method == "awq") {
      config.layout = CheckpointLayout::kAwqGemm;
      config.sym = !q.value("zero_point", true);
      if (q.contains("modules_to_not_convert") &&
          !q["modules_to_not_convert"].is_null()) {
        config.modules_kept_fp =
            q["modules_to_not_convert"].get<std::vector<std::string>>();
      }
      if (absl::AsciiStrToLower(q.value("version", std::string("gemm"))) !=
          "gemm") {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": only AWQ version \"gemm\" is read"));
      }
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": quant_method \"", method, "\" is not gptq or awq"));
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": malformed quantization_config: ", e.what()));
  }
  return config;
}

absl::Status WriteQuantizedCheckpoint(const std::string& model_dir,
                                      const std::string& output_dir,
                                      const QuantizationConfig& config,
                                      const BlockResultOpener& open_block) {
  std::error_code error;
  if (fs::exists(output_dir, error)) {
    return absl::AlreadyExistsError(
        absl::StrCat(output_dir, " exists; choose a new output directory"));
  }
  ASSIGN_OR_RETURN(const ModelSpec spec, LoadModelConfig(model_dir));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> checkpoint,
                   SafetensorsCheckpoint::Open(model_dir));

  // The first block's result gives every packed shape, and which linears
  // stay in floating point (blocks are alike).
  ASSIGN_OR_RETURN(std::unique_ptr<SavedBlockResult> block, open_block(0));
  QuantizationConfig written = config;
  written.modules_kept_fp.clear();
  std::array<SafetensorsDType, kBlockLinears> fp_dtypes;
  std::array<bool, kBlockLinears> kept_fp;
  std::array<std::vector<Planned>, kBlockLinears> packed_shapes;
  for (int i = 0; i < kBlockLinears; ++i) {
    const std::string name(kBlockLinearNames[i]);
    ASSIGN_OR_RETURN(const TensorView weight,
                     checkpoint->Get(LayerPrefix(0) + name + ".weight"));
    fp_dtypes[i] = weight.dtype;
    ASSIGN_OR_RETURN(const SavedLinear linear, block->Linear(i));
    kept_fp[i] = !linear.report.kept_fp.empty();
    if (kept_fp[i]) written.modules_kept_fp.push_back(name);
    ASSIGN_OR_RETURN(const std::vector<PackedTensor> packed,
                     PackLinear(linear, config, fp_dtypes[i]));
    for (const PackedTensor& t : packed) {
      packed_shapes[i].push_back({t.suffix, t.dtype, t.shape, -1, i, ""});
    }
  }
  std::vector<Planned> plan;
  for (const std::string& name : checkpoint->TensorNames()) {
    ASSIGN_OR_RETURN(const TensorView view, checkpoint->Get(name));
    int layer = -1;
    for (int l = 0; l < spec.num_layers && layer < 0; ++l) {
      if (absl::StartsWith(name, LayerPrefix(l))) layer = l;
    }
    if (layer < 0) {
      plan.push_back({name, view.dtype, view.shape, -1, -1, name});
      continue;
    }
    const std::string local = name.substr(LayerPrefix(layer).size());
    bool linear = false;
    for (int i = 0; i < kBlockLinears; ++i) {
      const std::string prefix = std::string(kBlockLinearNames[i]);
      if (local == prefix + ".weight") {
        linear = true;
        for (const Planned& t : packed_shapes[i]) {
          plan.push_back({LayerPrefix(layer) + prefix + "." + t.name, t.dtype,
                          t.shape, layer, i, ""});
        }
      } else if (local == prefix + ".bias") {
        linear = true;  // Written with the packed tensors.
      }
    }
    if (linear) continue;
    if (local == "input_layernorm.weight" ||
        local == "post_attention_layernorm.weight") {
      plan.push_back({name, view.dtype, view.shape, layer, -1, ""});
      continue;
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "tensor ", name, " of a decoder block is not a known linear or norm"));
  }
  // Blocks in order, one block's file open at a time; a linear's packed
  // tensors are together, so one linear is in memory at a time.
  std::stable_sort(
      plan.begin(), plan.end(),
      [](const Planned& a, const Planned& b) { return a.layer < b.layer; });

  const std::string temp_dir = absl::StrCat(output_dir, ".partial-", getpid());
  fs::remove_all(temp_dir, error);
  fs::create_directories(temp_dir, error);
  if (error) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", temp_dir, ": ", error.message()));
  }
  auto write_all = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(
        std::unique_ptr<SafetensorsWriter> writer,
        SafetensorsWriter::Create(temp_dir + "/model.safetensors"));
    writer->SetMetadata("format", "pt");
    for (const Planned& p : plan) {
      RETURN_IF_ERROR(writer->AddTensor(p.name, p.dtype, p.shape));
    }
    int open_layer = 0, packed_linear = -1;
    std::vector<PackedTensor> packed;
    for (const Planned& p : plan) {
      if (p.layer < 0) {
        // Copied a window at a time (a 70B embedding is 2 GB).
        ASSIGN_OR_RETURN(const TensorView view, checkpoint->Get(p.source));
        RETURN_IF_ERROR(checkpoint->ForEachWindow(
            view, 64 << 20, [&](const uint8_t* data, size_t size) {
              return writer->WriteTensorData(p.name, data, size);
            }));
        continue;
      }
      if (p.layer != open_layer) {
        block.reset();
        ASSIGN_OR_RETURN(block, open_block(p.layer));
        open_layer = p.layer;
        packed_linear = -1;
      }
      if (p.linear < 0) {
        const std::string local = p.name.substr(LayerPrefix(p.layer).size());
        ASSIGN_OR_RETURN(
            const std::vector<uint8_t> bytes,
            Encode(local == "input_layernorm.weight" ? block->attn_norm()
                                                     : block->ffn_norm(),
                   p.dtype));
        RETURN_IF_ERROR(
            writer->WriteTensorData(p.name, bytes.data(), bytes.size()));
        continue;
      }
      if (p.linear != packed_linear) {
        packed.clear();
        ASSIGN_OR_RETURN(const SavedLinear linear, block->Linear(p.linear));
        if (!linear.report.kept_fp.empty() != kept_fp[p.linear]) {
          return absl::InvalidArgumentError(absl::StrCat(
              "block ", p.layer, " ", kBlockLinearNames[p.linear],
              " is quantized where block 0's is not, or the reverse"));
        }
        ASSIGN_OR_RETURN(packed,
                         PackLinear(linear, config, fp_dtypes[p.linear]));
        packed_linear = p.linear;
      }
      const std::string suffix = p.name.substr(p.name.rfind('.') + 1);
      const auto it = std::find_if(
          packed.begin(), packed.end(),
          [&](const PackedTensor& t) { return t.suffix == suffix; });
      if (it == packed.end() || it->shape != p.shape) {
        return absl::InvalidArgumentError(
            absl::StrCat("block ", p.layer, " ", kBlockLinearNames[p.linear],
                         " does not pack to block 0's ", suffix, " shape"));
      }
      RETURN_IF_ERROR(
          writer->WriteTensorData(p.name, it->bytes.data(), it->bytes.size()));
    }
    RETURN_IF_ERROR(writer->Finish());

    ASSIGN_OR_RETURN(const std::string config_text,
                     ReadFileToString(model_dir + "/config.json"));
    ASSIGN_OR_RETURN(nlohmann::json config_json,
                     ParseJsonStrict(config_text, model_dir + "/config.json"));
    config_json["quantization_config"] = QuantizationConfigJson(written);
    RETURN_IF_ERROR(WriteFileAtomically(temp_dir + "/config.json",
                                        config_json.dump(2) + "\n"));
    if (config.layout == CheckpointLayout::kGptqV1) {
      nlohmann::json quantize_config = QuantizationConfigJson(written);
      quantize_config["model_file_base_name"] = "model";
      RETURN_IF_ERROR(WriteFileAtomically(temp_dir + "/quantize_config.json",
                                          quantize_config.dump(2) + "\n"));
    }
    for (const char* file : kTokenizerFiles) {
      const std::string from = model_dir + "/" + file;
      if (!fs::exists(from, error)) continue;
      ASSIGN_OR_RETURN(const std::string bytes, ReadFileToString(from));
      RETURN_IF_ERROR(WriteFileAtomically(temp_dir + "/" + file, bytes));
    }
    fs::rename(temp_dir, output_dir, error);
    if (error) {
      return absl::InternalError(absl::StrCat("cannot rename ", temp_dir,
                                              " to ", output_dir, ": ",
                                              error.message()));
    }
    return absl::OkStatus();
  };
  absl::Status status = write_all();
  if (!status.ok()) fs::remove_all(temp_dir, error);
  return status;
}

absl::StatusOr<DecoderBlockWeights> LoadQuantizedDecoderBlock(
    const SafetensorsCheckpoint& checkpoint, const ModelSpec& spec, int layer,
    const QuantizationConfig& config) {
  DecoderBlockWeights block;
  const std::string prefix = LayerPrefix(layer);
  auto floats =
      [&](const std::string& name) -> absl::StatusOr<std::vector<float>> {
    ASSIGN_OR_RETURN(const TensorView view, checkpoint.Get(name));
    return view.ToFloatVector();
  };
  ASSIGN_OR_RETURN(block.attn_norm, floats(prefix + "input_layernorm.weight"));
  ASSIGN_OR_RETURN(block.ffn_norm,
                   floats(prefix + "post_attention_layernorm.weight"));
  for (int i = 0; i < kBlockLinears; ++i) {
    const std::string name = prefix + std::string(kBlockLinearNames[i]) + ".";
    LinearWeights& linear = BlockLinear(block, i);
    // AWQ's entries match as substrings, as its loaders match them.
    const bool kept = std::any_of(
        config.modules_kept_fp.begin(), config.modules_kept_fp.end(),
        [&](const std::string& m) { return absl::StrContains(name, m); });
    if (kept) {
      ASSIGN_OR_RETURN(const TensorView view, checkpoint.Get(name + "weight"));
      if (view.shape.size() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat(name, "weight (kept in floating point) is not 2-D"));
      }
      linear.rows = view.shape[0], linear.cols = view.shape[1];
      ASSIGN_OR_RETURN(linear.weight, view.ToFloatVector());
    } else {
      ASSIGN_OR_RETURN(const QuantizedLinear q,
                       ReadPackedLinear(checkpoint, name, config));
      linear.rows = q.rows, linear.cols = q.cols;
      linear.weight = q.Dequantize();
    }
    if (checkpoint.Has(name + "bias")) {
      ASSIGN_OR_RETURN(linear.bias, floats(name + "bias"));
    }
  }
  if (block.q.cols != spec.hidden_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(prefix, "self_attn.q_proj has ", block.q.cols,
                     " inputs, not the hidden size ", spec.hidden_size));
  }
  return block;
}

}  // namespace quant
