#include "worker/task_runner.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>

#include "absl/strings/str_cat.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "format/ggml_type.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/llama_forward.h"
#include "proto/recipe.h"
#include "proto/task_tensors.h"
#include "quant/block_quantizer.h"
#include "quant/block_store.h"
#include "quant/gguf_head.h"
#include "quant/quantize_model.h"

namespace quant {
namespace {

// The values of activations kept in memory, checked against the shape the
// spec names.
absl::Status CheckHeldInMemory(const std::vector<float>& values,
                               int64_t sequences, int64_t seq_len,
                               int64_t dim) {
  if (static_cast<int64_t>(values.size()) != sequences * seq_len * dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "activations held in memory: ", values.size(), " values, not [",
        sequences, ", ", seq_len, ", ", dim, "]"));
  }
  return absl::OkStatus();
}

// The input activations, to be overwritten: moved out of `local`'s memory,
// read from its held file (activations this worker made, as
// SaveActivations wrote them), else from the fetched inputs.
absl::StatusOr<std::vector<float>> ReadActivations(
    const SafetensorsCheckpoint& inputs, const LocalInputs& local,
    int64_t sequences, int64_t seq_len, int64_t dim) {
  if (local.held_in_memory != nullptr) {
    RETURN_IF_ERROR(
        CheckHeldInMemory(*local.held_in_memory, sequences, seq_len, dim));
    // Their file is written from them: whatever became of it, they are
    // overwritten only after.
    if (local.held_written.valid()) local.held_written.wait();
    return std::move(*local.held_in_memory);
  }
  if (!local.held_activations.empty()) {
    return LoadActivations(local.held_activations, sequences, seq_len, dim);
  }
  ASSIGN_OR_RETURN(const TensorView view, inputs.Get(kActivationsTensor));
  const std::vector<int64_t> want = {sequences, seq_len, dim};
  if (view.dtype != SafetensorsDType::kF32 || view.shape != want) {
    return absl::InvalidArgumentError(
        absl::StrCat("input ", kActivationsTensor, " is not F32 [", sequences,
                     ", ", seq_len, ", ", dim, "]"));
  }
  return view.CopyElements<float>();
}

absl::StatusOr<std::array<std::optional<GgmlType>, kBlockLinears>>
LinearTypesOf(const v1::TaskSpec& spec) {
  std::array<std::optional<GgmlType>, kBlockLinears> types;
  if (spec.gguf_types_size() == 0) return types;
  if (spec.gguf_types_size() != kBlockLinears) {
    return absl::InvalidArgumentError(
        absl::StrCat("task spec: ", spec.gguf_types_size(), " GGUF types for ",
                     kBlockLinears, " linears"));
  }
  for (int i = 0; i < kBlockLinears; ++i) {
    ASSIGN_OR_RETURN(types[i], ParseGgmlType(spec.gguf_types(i)));
  }
  return types;
}

// Writes the U8 input `name` (a whole file sent as bytes: a block result,
// a shard's statistics) to `path`.
absl::Status WriteInputFile(const SafetensorsCheckpoint& inputs,
                            const std::string& name, const std::string& path) {
  ASSIGN_OR_RETURN(const TensorView view, inputs.Get(name));
  if (view.dtype != SafetensorsDType::kU8 || view.shape.size() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("input ", name, " is not a U8 file"));
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(view.data),
            static_cast<std::streamsize>(view.nbytes));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

// A data-parallel stage's starting point: the block's FP weights with the
// stages before `spec.stage()` solved, from the "result" input (absent for
// the first stage).
absl::StatusOr<BlockResult> StartedBlock(const v1::TaskSpec& spec,
                                         const SafetensorsCheckpoint& inputs,
                                         const SafetensorsCheckpoint& weights,
                                         const ModelSpec& model,
                                         const BlockRecipe& recipe,
                                         const std::string& output_dir) {
  ASSIGN_OR_RETURN(DecoderBlockWeights block,
                   LoadDecoderBlock(weights, model, spec.layer()));
  ASSIGN_OR_RETURN(BlockResult partial,
                   StartBlockResult(std::move(block), recipe, spec.sequences(),
                                    spec.seq_len()));
  if (spec.stage() > 0) {
    const std::string path = output_dir + "/input-result.safetensors";
    RETURN_IF_ERROR(WriteInputFile(inputs, kResultTensor, path));
    RETURN_IF_ERROR(LoadSolvedLinears(path, partial));
    std::filesystem::remove(path);
  }
  return partial;
}

absl::StatusOr<BlockRecipe> RecipeOf(const v1::TaskSpec& spec,
                                     const ModelSpec& model) {
  ASSIGN_OR_RETURN(const QuantizeModelOptions options,
                   OptionsFromRecipe(spec.recipe()));
  ASSIGN_OR_RETURN(const SafetensorsDType norm_dtype,
                   ParseSafetensorsDType(spec.norm_dtype()));
  ASSIGN_OR_RETURN(const auto linear_types, LinearTypesOf(spec));
  return MakeBlockRecipe(options, model, norm_dtype, linear_types);
}

}  // namespace

absl::StatusOr<TaskRunResult> RunTask(const v1::TaskSpec& spec,
                                      const std::string& inputs_path,
                                      const std::string& output_dir,
                                      BlockBackend* backend,
                                      const LocalInputs& local) {
  const auto start = std::chrono::steady_clock::now();
  CpuBlockBackend cpu;
  BlockBackend& compute = backend != nullptr ? *backend : cpu;
  ASSIGN_OR_RETURN(const ModelSpec model,
                   ParseModelConfig(spec.model_config_json()));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> inputs,
                   SafetensorsCheckpoint::Open(inputs_path));
  const SafetensorsCheckpoint& weights =
      local.model != nullptr ? *local.model : *inputs;
  const int64_t sequences = spec.sequences();
  const int64_t seq_len = spec.seq_len();
  const int64_t dim = model.hidden_size;
  const std::string activations_out =
      absl::StrCat(output_dir, "/", kActivationsTensor, ".safetensors");
  TaskRunResult result;
  result.kernel = CpuComputeKernel();
  // Runs `step`, adding its time to `seconds`: reading the inputs and
  // writing the outputs are reported apart from the compute.
  const auto timed = [](double& seconds, const auto& step) {
    const auto began = std::chrono::steady_clock::now();
    auto outcome = step();
    seconds +=
        std::chrono::duration<double>(std::chrono::steady_clock::now() - began)
            .count();
    return outcome;
  };
  // The activations output: written to activations_out (hashed as written)
  // or, left to the caller, only hashed; kept in memory either way.
  const auto emit_activations = [&](std::vector<float>& hidden) {
    return timed(result.output_seconds, [&]() -> absl::Status {
      std::string& digest = result.digest[kActivationsTensor];
      if (local.write_activations) {
        RETURN_IF_ERROR(SaveActivations(activations_out, hidden, sequences,
                                        seq_len, dim, Durability::kScratch,
                                        &digest));
      } else {
        ASSIGN_OR_RETURN(digest,
                         ActivationsFileDigest(hidden, sequences, seq_len, dim,
                                               HardwareThreads(),
                                               &result.activations_file_bytes));
        result.activations_unwritten = true;
      }
      result.outputs.emplace_back(kActivationsTensor, activations_out);
      result.activations =
          std::make_shared<std::vector<float>>(std::move(hidden));
      return absl::OkStatus();
    });
  };
  switch (spec.kind()) {
    case v1::TASK_KIND_EMBED: {
      ASSIGN_OR_RETURN(const TensorView windows_view,
                       inputs->Get(kWindowsTensor));
      if (windows_view.dtype != SafetensorsDType::kI32 ||
          windows_view.num_elements() != sequences * seq_len) {
        return absl::InvalidArgumentError(
            absl::StrCat("input ", kWindowsTensor, " is not I32 [", sequences,
                         ", ", seq_len, "]"));
      }
      const std::vector<int32_t> windows = windows_view.CopyElements<int32_t>();
      std::vector<float> hidden(windows.size() * static_cast<size_t>(dim));
      const LlamaForward forward(model, seq_len);
      RETURN_IF_ERROR(forward.Embed(weights, windows, hidden.data()));
      RETURN_IF_ERROR(emit_activations(hidden));
      break;
    }
    case v1::TASK_KIND_FORWARD: {
      ASSIGN_OR_RETURN(const QuantizeModelOptions options,
                       OptionsFromRecipe(spec.recipe()));
      const LlamaForward forward(model, seq_len);
      DecoderBlockWeights block;
      // A data-parallel job's: the quantized block.
      if (inputs->Get(kResultTensor).ok()) {
        const std::string path = output_dir + "/input-result.safetensors";
        RETURN_IF_ERROR(WriteInputFile(*inputs, kResultTensor, path));
        ASSIGN_OR_RETURN(BlockResult done, LoadBlockResult(path));
        std::filesystem::remove(path);
        block = std::move(done.weights);
      } else {
        ASSIGN_OR_RETURN(block, timed(result.input_seconds, [&] {
                           return LoadDecoderBlock(weights, model,
                                                   spec.layer());
                         }));
      }
      // After the weights: the held activations' file may still be being
      // written from them.
      ASSIGN_OR_RETURN(
          std::vector<float> hidden, timed(result.input_seconds, [&] {
            return ReadActivations(*inputs, local, sequences, seq_len, dim);
          }));
      RETURN_IF_ERROR(compute.ForwardBlock(forward, block, sequences, seq_len,
                                           options.sequences_per_pass,
                                           hidden.data()));
      result.kernel = compute.kernel();
      RETURN_IF_ERROR(emit_activations(hidden));
      break;
    }
    case v1::TASK_KIND_BLOCK: {
      ASSIGN_OR_RETURN(const BlockRecipe recipe, RecipeOf(spec, model));
      ASSIGN_OR_RETURN(DecoderBlockWeights block,
                       timed(result.input_seconds, [&] {
                         return LoadDecoderBlock(weights, model, spec.layer());
                       }));
      // After the weights, as for a forward task.
      std::vector<float> hidden;
      if (sequences > 0) {
        ASSIGN_OR_RETURN(hidden, timed(result.input_seconds, [&] {
                           return ReadActivations(*inputs, local, sequences,
                                                  seq_len, dim);
                         }));
      }
      const LlamaForward forward(model, std::max<int64_t>(seq_len, 1));
      absl::StatusOr<BlockResult> done =
          QuantizeBlockOn(compute, cpu, forward, std::move(block), recipe,
                          sequences, seq_len, hidden.data());
      if (!done.ok()) {
        return absl::Status(done.status().code(),
                            absl::StrCat("block ", spec.layer(), ": ",
                                         done.status().message()));
      }
      result.kernel = {done->backend, done->kernel};
      const std::string result_path =
          absl::StrCat(output_dir, "/", kResultTensor, ".safetensors");
      RETURN_IF_ERROR(timed(result.output_seconds, [&] {
        return SaveBlockResult(result_path, *done, Durability::kScratch,
                               &result.digest[kResultTensor]);
      }));
      result.outputs.emplace_back(kResultTensor, result_path);
      if (std::find(spec.outputs().begin(), spec.outputs().end(),
                    kActivationsTensor) != spec.outputs().end()) {
        RETURN_IF_ERROR(emit_activations(hidden));
      }
      break;
    }
    case v1::TASK_KIND_CAPTURE: {
      ASSIGN_OR_RETURN(const BlockRecipe recipe, RecipeOf(spec, model));
      ASSIGN_OR_RETURN(
          const BlockResult partial,
          StartedBlock(spec, *inputs, weights, model, recipe, output_dir));
      // Read in place where held in memory (later stages read them too).
      std::vector<float> read;
      const float* hidden = nullptr;
      if (local.held_in_memory != nullptr) {
        RETURN_IF_ERROR(
            CheckHeldInMemory(*local.held_in_memory, sequences, seq_len, dim));
        hidden = local.held_in_memory->data();
      } else {
        ASSIGN_OR_RETURN(read, timed(result.input_seconds, [&] {
                           return ReadActivations(*inputs, local, sequences,
                                                  seq_len, dim);
                         }));
        hidden = read.data();
      }
      const LlamaForward forward(model, seq_len);
      ASSIGN_OR_RETURN(const BlockStatistics statistics,
                       compute.CaptureStageStatistics(
                           forward, partial.weights, recipe, spec.stage(),
                           sequences, seq_len, hidden));
      result.kernel = compute.kernel();
      const std::string path =
          absl::StrCat(output_dir, "/", kStatisticsTensor, ".safetensors");
      RETURN_IF_ERROR(timed(result.output_seconds, [&] {
        return SaveBlockStatistics(path, statistics, Durability::kScratch);
      }));
      result.outputs.emplace_back(kStatisticsTensor, path);
      break;
    }
    case v1::TASK_KIND_SOLVE: {
      ASSIGN_OR_RETURN(const BlockRecipe recipe, RecipeOf(spec, model));
      ASSIGN_OR_RETURN(
          BlockResult partial,
          StartedBlock(spec, *inputs, weights, model, recipe, output_dir));
      // Every shard's statistics, merged in shard order from shard 0's.
      BlockStatistics total;
      for (int k = 0; k < spec.shards(); ++k) {
        const std::string name = absl::StrCat(kStatisticsTensor, ".", k);
        const std::string path =
            absl::StrCat(output_dir, "/input-", name, ".safetensors");
        RETURN_IF_ERROR(WriteInputFile(*inputs, name, path));
        RETURN_IF_ERROR(MergeBlockStatisticsFile(path, total));
        std::filesystem::remove(path);
      }
      // Every token of every shard, once: what the engine sums.
      for (const std::optional<HessianAccumulator>& input : total) {
        if (input.has_value() && input->samples() != sequences * seq_len) {
          return absl::InvalidArgumentError(
              absl::StrCat("block ", spec.layer(), " stage ", spec.stage(),
                           ": statistics of ", input->samples(),
                           " tokens, expected ", sequences * seq_len));
        }
      }
      const auto solve_start = std::chrono::steady_clock::now();
      result.kernel = compute.kernel();
      if (absl::Status solved =
              compute.SolveStage(recipe, spec.stage(), total, partial);
          !solved.ok()) {
        return absl::Status(solved.code(),
                            absl::StrCat("block ", spec.layer(), " stage ",
                                         spec.stage(), ": ", solved.message()));
      }
      // The block's solves so far (the stages before, from the input).
      partial.seconds += std::chrono::duration<double>(
                             std::chrono::steady_clock::now() - solve_start)
                             .count();
      partial.backend = result.kernel.backend;
      partial.kernel = result.kernel.kernel;
      const std::string path =
          absl::StrCat(output_dir, "/", kResultTensor, ".safetensors");
      RETURN_IF_ERROR(timed(result.output_seconds, [&] {
        return SaveBlockResult(path, partial, Durability::kScratch,
                               &result.digest[kResultTensor]);
      }));
      result.outputs.emplace_back(kResultTensor, path);
      break;
    }
    case v1::TASK_KIND_HEAD: {
      std::map<std::string, GgmlType> types;
      for (const auto& [name, type] : spec.tensor_types()) {
        ASSIGN_OR_RETURN(types[name], ParseGgmlType(type));
      }
      const std::string head_path =
          absl::StrCat(output_dir, "/", kHeadTensor, ".safetensors");
      RETURN_IF_ERROR(WriteGgufHead(weights, types, head_path));
      result.outputs.emplace_back(kHeadTensor, head_path);
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown task kind ", spec.kind()));
  }
  // In the order the spec lists them.
  if (spec.outputs_size() > 0) {
    std::vector<std::pair<std::string, std::string>> ordered;
    for (const std::string& name : spec.outputs()) {
      auto made = std::find_if(
          result.outputs.begin(), result.outputs.end(),
          [&](const auto& output) { return output.first == name; });
      if (made == result.outputs.end()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "task spec asks for output \"", name, "\", which a ",
            v1::TaskKind_Name(spec.kind()), " task does not make"));
      }
      ordered.push_back(*made);
    }
    result.outputs = std::move(ordered);
  }
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return result;
}

}  // namespace quant
