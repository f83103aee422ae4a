#include "quant/block_backend.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/parallel.h"
#include "common/status_macros.h"

namespace quant {
namespace {

struct Registry {
  absl::Mutex mu;
  std::map<std::string, BlockBackendFactory> factories ABSL_GUARDED_BY(mu);
};

// Where "GPU <index>" names the device in a kernel description
// (cuda::DescribeDevice), as [start, end) of that text; npos when none.
std::pair<size_t, size_t> DeviceLabel(const std::string& kernel) {
  const size_t at = kernel.find("GPU ");
  if (at == std::string::npos) return {std::string::npos, std::string::npos};
  size_t end = at + 4;
  while (end < kernel.size() && absl::ascii_isdigit(kernel[end])) ++end;
  if (end == at + 4) return {std::string::npos, std::string::npos};
  return {at, end};
}

// The kernel class: the description without its device index.
std::string KernelClass(const std::string& kernel) {
  const auto [at, end] = DeviceLabel(kernel);
  if (at == std::string::npos) return kernel;
  return absl::StrCat(kernel.substr(0, at), "GPU", kernel.substr(end));
}

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
  return QuantizeBlockInStages(std::vector<BlockBackend*>{&backend}, forward,
                               std::move(block), recipe, sequences, seq_len,
                               hidden);
}

absl::StatusOr<BlockResult> QuantizeBlockInStages(
    const std::vector<BlockBackend*>& backends, const LlamaForward& forward,
    DecoderBlockWeights block, const BlockRecipe& recipe, int64_t sequences,
    int64_t seq_len, float* hidden) {
  if (backends.empty()) {
    return absl::InvalidArgumentError("no backend to quantize the block on");
  }
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
  const int lanes = static_cast<int>(backends.size());
  RETURN_IF_ERROR(RunCalibrationStages(
      recipe, sequences,
      [&](int stage, int shard_index, const SequenceRange& shard) {
        return backends[shard_index % lanes]->CaptureStageStatistics(
            forward, result.weights, recipe, stage, shard.count, seq_len,
            hidden + shard.first * seq_len * dim);
      },
      [&](int stage, const BlockStatistics& statistics) {
        return backends[0]->SolveStage(recipe, stage, statistics, result);
      },
      lanes));
  RETURN_IF_ERROR(ForwardBlockAcross(backends, forward, result.weights,
                                     sequences, seq_len,
                                     recipe.sequences_per_pass, hidden));
  const ComputeKernel kernel = backends[0]->kernel();
  result.backend = kernel.backend;
  result.kernel = kernel.kernel;
  result.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  return result;
}

absl::Status ForwardBlockAcross(const std::vector<BlockBackend*>& backends,
                                const LlamaForward& forward,
                                const DecoderBlockWeights& block,
                                int64_t sequences, int64_t seq_len,
                                int64_t sequences_per_pass, float* hidden) {
  if (sequences <= 0) return absl::OkStatus();
  if (backends.empty()) {
    return absl::InvalidArgumentError("no backend to run the block on");
  }
  const int64_t per_pass = std::max<int64_t>(1, sequences_per_pass);
  const int64_t passes = (sequences + per_pass - 1) / per_pass;
  const int64_t parts =
      std::min<int64_t>(static_cast<int64_t>(backends.size()), passes);
  const int64_t dim = forward.spec().hidden_size;
  std::vector<absl::Status> statuses(parts);
  // One part per backend, each on a thread of its own.
  ParallelForEach(parts, static_cast<int>(parts), [&](uint64_t part) {
    absl::StatusOr<SequenceRange> range =
        CalibrationShard(sequences, per_pass, parts, part);
    statuses[part] = range.ok()
                         ? backends[part]->ForwardBlock(
                               forward, block, range->count, seq_len, per_pass,
                               hidden + range->first * seq_len * dim)
                         : range.status();
  });
  for (const absl::Status& status : statuses) RETURN_IF_ERROR(status);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<DeviceGroupBackend>> DeviceGroupBackend::Create(
    std::vector<std::unique_ptr<BlockBackend>> members) {
  if (members.empty()) {
    return absl::InvalidArgumentError("a device group needs a device");
  }
  const ComputeKernel first = members[0]->kernel();
  for (size_t i = 1; i < members.size(); ++i) {
    const ComputeKernel other = members[i]->kernel();
    if (other.backend != first.backend ||
        KernelClass(other.kernel) != KernelClass(first.kernel)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a device group computes one kernel class: \"", first.backend, " ",
          first.kernel, "\" and \"", other.backend, " ", other.kernel,
          "\" would not compute the same bits"));
    }
  }
  return std::unique_ptr<DeviceGroupBackend>(
      new DeviceGroupBackend(std::move(members)));
}

DeviceGroupBackend::DeviceGroupBackend(
    std::vector<std::unique_ptr<BlockBackend>> members)
    : members_(std::move(members)) {}

std::vector<BlockBackend*> DeviceGroupBackend::Members() const {
  std::vector<BlockBackend*> members;
  for (const auto& member : members_) members.push_back(member.get());
  return members;
}

ComputeKernel DeviceGroupBackend::kernel() const {
  ComputeKernel kernel = members_[0]->kernel();
  if (members_.size() == 1) return kernel;
  std::vector<std::string> devices;
  for (const auto& member : members_) {
    const std::string described = member->kernel().kernel;
    const auto [at, end] = DeviceLabel(described);
    if (at == std::string::npos) {
      absl::StrAppend(&kernel.kernel, " x ", members_.size());
      return kernel;
    }
    devices.push_back(described.substr(at + 4, end - at - 4));
  }
  const auto [at, end] = DeviceLabel(kernel.kernel);
  kernel.kernel =
      absl::StrCat(kernel.kernel.substr(0, at), "GPUs ",
                   absl::StrJoin(devices, "+"), kernel.kernel.substr(end));
  return kernel;
}

int64_t DeviceGroupBackend::device_memory_bytes() const {
  int64_t bytes = members_[0]->device_memory_bytes();
  for (const auto& member : members_) {
    bytes = std::min(bytes, member->device_memory_bytes());
  }
  return bytes;
}

std::string DeviceGroupBackend::Unsupported(const BlockRecipe& recipe) const {
  return members_[0]->Unsupported(recipe);
}

absl::StatusOr<BlockResult> DeviceGroupBackend::QuantizeBlock(
    const LlamaForward& forward, DecoderBlockWeights block,
    const BlockRecipe& recipe, int64_t sequences, int64_t seq_len,
    float* hidden) {
  if (recipe.calibration_shards > 1 && recipe.method != QuantMethod::kAwq &&
      sequences > 0) {
    ASSIGN_OR_RETURN(BlockResult result,
                     QuantizeBlockInStages(Members(), forward, std::move(block),
                                           recipe, sequences, seq_len, hidden));
    result.kernel = kernel().kernel;
    return result;
  }
  return members_[0]->QuantizeBlock(forward, std::move(block), recipe,
                                    sequences, seq_len, hidden);
}

absl::Status DeviceGroupBackend::ForwardBlock(const LlamaForward& forward,
                                              const DecoderBlockWeights& block,
                                              int64_t sequences,
                                              int64_t seq_len,
                                              int64_t sequences_per_pass,
                                              float* hidden) {
  return ForwardBlockAcross(Members(), forward, block, sequences, seq_len,
                            sequences_per_pass, hidden);
}

absl::StatusOr<BlockStatistics> DeviceGroupBackend::CaptureStageStatistics(
    const LlamaForward& forward, const DecoderBlockWeights& weights,
    const BlockRecipe& recipe, int stage, int64_t sequences, int64_t seq_len,
    const float* hidden) {
  return members_[0]->CaptureStageStatistics(forward, weights, recipe, stage,
                                             sequences, seq_len, hidden);
}

absl::Status DeviceGroupBackend::SolveStage(const BlockRecipe& recipe,
                                            int stage,
                                            const BlockStatistics& statistics,
                                            BlockResult& partial) {
  return members_[0]->SolveStage(recipe, stage, statistics, partial);
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

absl::StatusOr<std::vector<std::vector<int>>> GroupDevices(
    const std::vector<int>& devices, int per_task) {
  if (per_task < 1 || devices.empty() ||
      devices.size() % static_cast<size_t>(per_task) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("devices_per_task ", per_task, ": must divide the ",
                     devices.size(), " devices listed into whole task slots"));
  }
  std::vector<std::vector<int>> groups;
  for (size_t i = 0; i < devices.size(); i += per_task) {
    groups.emplace_back(devices.begin() + i, devices.begin() + i + per_task);
  }
  return groups;
}

absl::StatusOr<std::unique_ptr<BlockBackend>> MakeBlockBackendGroup(
    absl::string_view name, const std::vector<int>& group) {
  if (group.size() == 1) return MakeBlockBackend(name, group[0]);
  std::vector<std::unique_ptr<BlockBackend>> members;
  for (int device : group) {
    ASSIGN_OR_RETURN(std::unique_ptr<BlockBackend> member,
                     MakeBlockBackend(name, device));
    members.push_back(std::move(member));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<DeviceGroupBackend> made,
                   DeviceGroupBackend::Create(std::move(members)));
  return std::unique_ptr<BlockBackend>(std::move(made));
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
