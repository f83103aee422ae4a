#include "quant/block_backend.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"

namespace quant {
namespace {

struct Registry {
  absl::Mutex mu;
  std::map<std::string, BlockBackendFactory> factories ABSL_GUARDED_BY(mu);
};

Registry& GetRegistry() {
  static Registry* const registry = new Registry;  // Never destroyed.
  return *registry;
}

}  // namespace

absl::StatusOr<BlockResult> CpuBlockBackend::QuantizeBlock(
    const LlamaForward& forward, DecoderBlockWeights block,
    const BlockRecipe& recipe, int64_t sequences, int64_t seq_len,
    float* hidden) {
  return quant::QuantizeBlock(forward, std::move(block), recipe, sequences,
                              seq_len, hidden);
}

absl::Status CpuBlockBackend::ForwardBlock(const LlamaForward& forward,
                                           const DecoderBlockWeights& block,
                                           int64_t sequences, int64_t seq_len,
                                           int64_t sequences_per_pass,
                                           float* hidden) {
  return ForwardBlockInPasses(forward, block, sequences, seq_len,
                              sequences_per_pass, hidden);
}

absl::StatusOr<BlockStatistics> CpuBlockBackend::CaptureStageStatistics(
    const LlamaForward& forward, const DecoderBlockWeights& weights,
    const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
    const float* hidden) {
  return quant::CaptureStageStatistics(forward, weights, recipe, stage,
                                       sequences, seq_len, hidden);
}

absl::Status CpuBlockBackend::SolveStage(const BlockRecipe& recipe, int stage,
                                         const BlockStatistics& statistics,
                                         BlockResult& partial) {
  return quant::SolveStage(recipe, stage, statistics, partial);
}

absl::StatusOr<BlockResult> QuantizeBlockInStages(
    BlockBackend& backend, const LlamaForward& forward,
    DecoderBlockWeights block, const BlockRecipe& recipe, int64_t sequences,
    int64_t seq_len, float* hidden) {
  if (recipe.method == QuantMethod::kAwq) {
    return absl::InvalidArgumentError(
        "AWQ is not calibrated in stages (its search reads the whole "
        "calibration set)");
  }
  const auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(
      BlockResult result,
      StartBlockResult(std::move(block), recipe, sequences, seq_len));
  const int64_t dim = forward.spec().hidden_size;
  RETURN_IF_ERROR(RunCalibrationStages(
      recipe, sequences,
      [&](int stage, const SequenceRange& shard) {
        return backend.CaptureStageStatistics(
            forward, result.weights, recipe, stage, shard.count, seq_len,
            hidden + shard.first * seq_len * dim);
      },
      [&](int stage, const BlockStatistics& statistics) {
        return backend.SolveStage(recipe, stage, statistics, result);
      }));
  if (sequences > 0) {
    RETURN_IF_ERROR(backend.ForwardBlock(forward, result.weights, sequences,
                                         seq_len, recipe.sequences_per_pass,
                                         hidden));
  }
  const ComputeKernel kernel = backend.kernel();
  result.backend = kernel.backend;
  result.kernel = kernel.kernel;
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return result;
}

void RegisterBlockBackend(absl::string_view name, BlockBackendFactory factory) {
  Registry& registry = GetRegistry();
  absl::MutexLock lock(&registry.mu);
  registry.factories[std::string(name)] = std::move(factory);
}

absl::StatusOr<std::unique_ptr<BlockBackend>> MakeBlockBackend(
    absl::string_view name, int device) {
  if (name == "cpu") return std::make_unique<CpuBlockBackend>();
  BlockBackendFactory factory;
  {
    Registry& registry = GetRegistry();
    absl::MutexLock lock(&registry.mu);
    auto it = registry.factories.find(std::string(name));
    if (it != registry.factories.end()) factory = it->second;
  }
  if (factory) return factory(device);
  if (name == "cuda") {
    return absl::FailedPreconditionError(
        "backend cuda: this program has no GPU backend (quant-worker-cuda "
        "and quantctl-cuda have it, built where nvcc is found)");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown backend \"", name, "\" (cpu or cuda)"));
}

absl::StatusOr<std::vector<int>> ParseDeviceList(absl::string_view list) {
  std::vector<int> devices;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    int device = -1;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(item), &device) ||
        device < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("devices: \"", item, "\" in \"", list,
                       "\" is not a GPU index (a list like 0,1,2)"));
    }
    if (std::find(devices.begin(), devices.end(), device) != devices.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("devices: GPU ", device, " is listed twice"));
    }
    devices.push_back(device);
  }
  return devices;
}

absl::StatusOr<BlockResult> QuantizeBlockOn(
    BlockBackend& backend, BlockBackend& cpu, const LlamaForward& forward,
    DecoderBlockWeights block, const BlockRecipe& recipe, int64_t sequences,
    int64_t seq_len, float* hidden) {
  BlockBackend& runs = backend.Unsupported(recipe).empty() ? backend : cpu;
  return runs.QuantizeBlock(forward, std::move(block), recipe, sequences,
                            seq_len, hidden);
}

}  // namespace quant
