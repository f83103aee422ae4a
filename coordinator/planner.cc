#include "coordinator/planner.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/json_util.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "proto/task_tensors.h"
#include "quant/gguf_head.h"

namespace quant {
namespace {

TaskRow MakeTask(int index, const char* kind, int layer,
                 std::vector<int32_t> deps) {
  TaskRow task;
  task.index = index;
  task.kind = kind;
  task.layer = layer;
  task.deps = std::move(deps);
  return task;
}

}  // namespace

std::string JobPlan::ToJson() const {
  nlohmann::json j = {{"mode", v1::Mode_Name(mode)},
                      {"job_dir", job_dir},
                      {"num_layers", num_layers},
                      {"sequences", sequences},
                      {"seq_len", seq_len},
                      {"norm_dtype", norm_dtype},
                      {"calibration_shards", calibration_shards},
                      {"shards_in_task", shards_in_task},
                      {"sequences_per_pass", sequences_per_pass},
                      {"calibration_stages", calibration_stages},
                      {"linear_types", linear_types},
                      {"head_types", head_types},
                      {"embed_bytes", embed_bytes},
                      {"forward_bytes", forward_bytes},
                      {"block_bytes", block_bytes},
                      {"activation_bytes", activation_bytes}};
  return j.dump();
}

absl::StatusOr<JobPlan> JobPlan::FromJson(const std::string& json) {
  ASSIGN_OR_RETURN(const nlohmann::json j, ParseJsonStrict(json, "job plan"));
  JobPlan plan;
  v1::Mode mode;
  if (!j.is_object() || !j.contains("mode") || !j["mode"].is_string() ||
      !v1::Mode_Parse(j["mode"].get<std::string>(), &mode)) {
    return absl::DataLossError("job plan: no valid mode");
  }
  plan.mode = mode;
  // A malformed plan (a damaged store) is data loss, never a crash.
  if (!j.contains("num_layers") || !j["num_layers"].is_number_integer() ||
      !j.contains("linear_types") || !j["linear_types"].is_array()) {
    return absl::DataLossError("job plan: malformed");
  }
  plan.num_layers = j["num_layers"].get<int>();
  plan.job_dir = j.value("job_dir", std::string());
  plan.sequences = j.value("sequences", int64_t{0});
  plan.seq_len = j.value("seq_len", int64_t{0});
  plan.norm_dtype = j.value("norm_dtype", std::string());
  try {
    plan.calibration_shards = j.value("calibration_shards", int64_t{1});
    plan.shards_in_task = j.value("shards_in_task", false);
    plan.sequences_per_pass = j.value("sequences_per_pass", int64_t{1});
    plan.calibration_stages = j.value("calibration_stages", 0);
    plan.activation_bytes = j.value("activation_bytes", int64_t{0});
  } catch (const nlohmann::json::exception&) {
    return absl::DataLossError("job plan: malformed calibration shards");
  }
  // Shards of whole passes, every one holding one, in a known number of
  // stages: what TaskShard and TaskSequences rely on.
  if (plan.calibration_shards < 1 || plan.sequences_per_pass < 1 ||
      plan.calibration_stages < 0 ||
      (DataParallel(plan) &&
       (plan.calibration_stages < 1 ||
        !CalibrationShard(plan.sequences, plan.sequences_per_pass,
                          plan.calibration_shards, 0)
             .ok()))) {
    return absl::DataLossError("job plan: malformed calibration shards");
  }
  for (const nlohmann::json& layer : j["linear_types"]) {
    if (!layer.is_array()) return absl::DataLossError("job plan: malformed");
    std::vector<std::string> types;
    for (const nlohmann::json& t : layer) {
      if (!t.is_string()) return absl::DataLossError("job plan: malformed");
      types.push_back(t.get<std::string>());
    }
    plan.linear_types.push_back(std::move(types));
  }
  if (j.contains("head_types")) {
    if (!j["head_types"].is_object()) {
      return absl::DataLossError("job plan: malformed");
    }
    for (const auto& [name, type] : j["head_types"].items()) {
      if (!type.is_string()) return absl::DataLossError("job plan: malformed");
      plan.head_types[name] = type.get<std::string>();
    }
  }
  plan.embed_bytes = j.value("embed_bytes", int64_t{0});
  plan.forward_bytes = j.value("forward_bytes", int64_t{0});
  plan.block_bytes = j.value("block_bytes", int64_t{0});
  return plan;
}

absl::StatusOr<PlannedJob> PlanJob(v1::Mode mode,
                                   const QuantizeModelOptions& options,
                                   const QuantizationPlan& engine_plan,
                                   bool shards_in_task) {
  PlannedJob job;
  JobPlan& plan = job.plan;
  plan.mode =
      mode == v1::MODE_PARALLEL ? v1::MODE_PARALLEL : v1::MODE_SEQUENTIAL;
  const ModelSpec& spec = engine_plan.spec;
  plan.num_layers = static_cast<int>(spec.num_layers);
  const bool calibrated = options.calibration.samples > 0;
  plan.sequences = calibrated ? options.calibration.samples : 0;
  plan.seq_len = calibrated ? options.calibration.seq_len : 0;
  plan.calibration_shards = calibrated ? options.calibration_shards : 1;
  plan.shards_in_task = shards_in_task && plan.calibration_shards > 1;
  plan.sequences_per_pass = std::max<int64_t>(1, options.sequences_per_pass);
  plan.calibration_stages =
      options.method == QuantMethod::kGptq && options.true_sequential
          ? static_cast<int>(TrueSequentialStages().size())
          : 1;
  plan.norm_dtype = std::string(SafetensorsDTypeName(engine_plan.norm_dtype));
  for (const auto& layer : engine_plan.linear_types) {
    std::vector<std::string> names;
    for (const auto& type : layer) {
      if (type.has_value()) names.emplace_back(GgmlTypeName(*type));
    }
    plan.linear_types.push_back(std::move(names));
  }
  for (const auto& [name, type] : engine_plan.gguf_types) {
    if (name.rfind("model.layers.", 0) != 0) {
      plan.head_types[name] = std::string(GgmlTypeName(type));
    }
  }

  // Memory: activations in and out (F32), the block's weights as F32 a few
  // times over (original, working copy, dequantized), and, when calibrated,
  // the largest Hessian (inputs of down_proj) in doubles, twice (it and its
  // inverse). The README's "Worker memory" gives the formula.
  const int64_t tokens = plan.sequences * plan.seq_len;
  const int64_t dim = spec.hidden_size;
  const int64_t inter = spec.intermediate_size;
  const int64_t kv = spec.num_kv_heads * spec.head_dim;
  const int64_t block_params =
      dim * (dim + 2 * kv) + dim * dim + 3 * dim * inter;
  const int64_t activations = 2 * tokens * dim * 4;
  const int64_t pass = std::min<int64_t>(options.sequences_per_pass,
                                         std::max<int64_t>(plan.sequences, 1)) *
                       std::max<int64_t>(plan.seq_len, 1);
  const int64_t scratch = pass * (2 * inter + 4 * dim) * 4;
  const int64_t hessian =
      calibrated ? 2 * std::max(dim, inter) * std::max(dim, inter) * 8 : 0;
  plan.embed_bytes = spec.vocab_size * dim * 4 + activations;
  plan.forward_bytes = 2 * block_params * 4 + activations + scratch;
  plan.block_bytes = 4 * block_params * 4 + activations + scratch + hessian;
  plan.activation_bytes = activations;

  const int layers = plan.num_layers;
  if (!calibrated) {
    for (int layer = 0; layer < layers; ++layer) {
      job.tasks.push_back(MakeTask(layer, kBlockTask, layer, {}));
    }
  } else if (DataParallel(plan)) {
    const int shards = static_cast<int>(plan.calibration_shards);
    const int stages = plan.calibration_stages;
    // Task indices, as TaskShard and TaskStage decode them.
    auto embed = [&](int k) { return k; };
    auto base = [&](int layer) {
      return shards + layer * (stages * (shards + 1) + shards);
    };
    auto capture = [&](int layer, int t, int k) {
      return base(layer) + t * (shards + 1) + k;
    };
    auto solve = [&](int layer, int t) { return capture(layer, t, shards); };
    auto forward = [&](int layer, int k) {
      return base(layer) + stages * (shards + 1) + k;
    };
    // Shard k's activations entering `layer`.
    auto activations = [&](int layer, int k) {
      return layer == 0 ? embed(k) : forward(layer - 1, k);
    };
    for (int k = 0; k < shards; ++k) {
      job.tasks.push_back(MakeTask(embed(k), kEmbedTask, -1, {}));
    }
    for (int layer = 0; layer < layers; ++layer) {
      for (int t = 0; t < stages; ++t) {
        std::vector<int32_t> solve_deps;
        for (int k = 0; k < shards; ++k) {
          std::vector<int32_t> deps = {activations(layer, k)};
          if (t > 0) deps.push_back(solve(layer, t - 1));
          job.tasks.push_back(
              MakeTask(capture(layer, t, k), kCaptureTask, layer, deps));
          solve_deps.push_back(capture(layer, t, k));
        }
        // The captures, and the stages solved before (read as well).
        if (t > 0) solve_deps.push_back(solve(layer, t - 1));
        job.tasks.push_back(
            MakeTask(solve(layer, t), kSolveTask, layer, solve_deps));
      }
      if (layer + 1 == layers) break;
      for (int k = 0; k < shards; ++k) {
        job.tasks.push_back(
            MakeTask(forward(layer, k), kForwardTask, layer,
                     {activations(layer, k), solve(layer, stages - 1)}));
      }
    }
  } else if (plan.mode == v1::MODE_SEQUENTIAL) {
    job.tasks.push_back(MakeTask(0, kEmbedTask, -1, {}));
    for (int layer = 0; layer < layers; ++layer) {
      job.tasks.push_back(MakeTask(layer + 1, kBlockTask, layer, {layer}));
    }
  } else {
    // Parallel: forward tasks 1 .. layers-1 (none after the last block),
    // then the blocks.
    job.tasks.push_back(MakeTask(0, kEmbedTask, -1, {}));
    for (int layer = 0; layer + 1 < layers; ++layer) {
      job.tasks.push_back(MakeTask(layer + 1, kForwardTask, layer, {layer}));
    }
    const int first_block = layers;  // == 1 + (layers - 1).
    for (int layer = 0; layer < layers; ++layer) {
      // Activations entering block b: embed (task 0) or forward b-1 (b).
      job.tasks.push_back(
          MakeTask(first_block + layer, kBlockTask, layer, {layer}));
    }
  }
  // Last, so that the blocks' chain starts first.
  if (!plan.head_types.empty()) {
    job.tasks.push_back(
        MakeTask(static_cast<int>(job.tasks.size()), kHeadTask, -1, {}));
  }
  return job;
}

bool DataParallel(const JobPlan& plan) {
  return plan.mode == v1::MODE_SEQUENTIAL && plan.sequences > 0 &&
         plan.calibration_shards > 1 && !plan.shards_in_task;
}

namespace {

// A data-parallel task's place within its layer's tasks (captures and
// solve per stage, then forwards), as PlanJob lays them out.
int OffsetInLayer(const JobPlan& plan, const TaskRow& task) {
  const int shards = static_cast<int>(plan.calibration_shards);
  const int per_layer = plan.calibration_stages * (shards + 1) + shards;
  return task.index - shards - task.layer * per_layer;
}

std::string LayerFile(const std::string& job_dir, const std::string& what,
                      int layer, int stage, int shard) {
  return absl::StrCat(job_dir, "/", what, "-", layer, "-stage-", stage,
                      shard >= 0 ? absl::StrCat("-shard-", shard) : "",
                      ".safetensors");
}

std::string ShardActivationsPath(const std::string& job_dir, int boundary,
                                 int shard) {
  return absl::StrCat(job_dir, "/activations-", boundary, "-shard-", shard,
                      ".safetensors");
}

// The result solve task of `stage` writes: partial before the last stage.
std::string StageResultPath(const JobPlan& plan, const std::string& job_dir,
                            int layer, int stage) {
  return stage + 1 == plan.calibration_stages
             ? BlockResultPath(job_dir, layer)
             : LayerFile(job_dir, "partial", layer, stage, -1);
}

}  // namespace

int TaskShard(const JobPlan& plan, const TaskRow& task) {
  if (!DataParallel(plan)) return -1;
  const int shards = static_cast<int>(plan.calibration_shards);
  if (task.kind == kEmbedTask) return task.index;
  const int offset = OffsetInLayer(plan, task);
  if (task.kind == kCaptureTask) return offset % (shards + 1);
  if (task.kind == kForwardTask) {
    return offset - plan.calibration_stages * (shards + 1);
  }
  return -1;
}

int TaskStage(const JobPlan& plan, const TaskRow& task) {
  if (!DataParallel(plan) ||
      (task.kind != kCaptureTask && task.kind != kSolveTask)) {
    return -1;
  }
  return OffsetInLayer(plan, task) /
         static_cast<int>(plan.calibration_shards + 1);
}

SequenceRange TaskSequences(const JobPlan& plan, const TaskRow& task) {
  const int shard = TaskShard(plan, task);
  if (shard < 0) return {0, plan.sequences};
  // The plan was checked (shards <= passes) when the job was submitted.
  const absl::StatusOr<SequenceRange> range = CalibrationShard(
      plan.sequences, plan.sequences_per_pass, plan.calibration_shards, shard);
  return range.ok() ? *range : SequenceRange{0, 0};
}

std::vector<std::string> TaskOutputs(const JobPlan& plan, const TaskRow& task) {
  if (task.kind == kHeadTask) return {kHeadTensor};
  if (task.kind == kCaptureTask) return {kStatisticsTensor};
  if (task.kind == kSolveTask) return {kResultTensor};
  if (task.kind == kBlockTask) {
    std::vector<std::string> outputs = {kResultTensor};
    if (plan.sequences > 0 && plan.mode == v1::MODE_SEQUENTIAL &&
        task.layer + 1 < plan.num_layers) {
      outputs.push_back(kActivationsTensor);
    }
    return outputs;
  }
  return {kActivationsTensor};
}

std::string OutputPath(const JobPlan& plan, const std::string& job_dir,
                       const TaskRow& task, const std::string& output) {
  if (output == kHeadTensor) return GgufHeadPath(job_dir);
  if (output == kStatisticsTensor) {
    return LayerFile(job_dir, "statistics", task.layer, TaskStage(plan, task),
                     TaskShard(plan, task));
  }
  if (output == kResultTensor) {
    return task.kind == kSolveTask ? StageResultPath(plan, job_dir, task.layer,
                                                     TaskStage(plan, task))
                                   : BlockResultPath(job_dir, task.layer);
  }
  const int shard = TaskShard(plan, task);
  return shard >= 0 ? ShardActivationsPath(job_dir, task.layer + 1, shard)
                    : ActivationsPath(job_dir, task.layer + 1);
}

bool AssembledOutput(const JobPlan& plan, const TaskRow& task,
                     const std::string& name) {
  if (name == kHeadTensor) return true;
  if (name != kResultTensor) return false;
  return task.kind != kSolveTask ||
         TaskStage(plan, task) + 1 == plan.calibration_stages;
}

bool ReadsActivations(const JobPlan& plan, const TaskRow& task) {
  return plan.sequences > 0 &&
         (task.kind == kForwardTask || task.kind == kBlockTask ||
          task.kind == kCaptureTask);
}

std::string ActivationsInputPath(const JobPlan& plan,
                                 const std::string& job_dir,
                                 const TaskRow& task) {
  const int shard = TaskShard(plan, task);
  return shard >= 0 ? ShardActivationsPath(job_dir, task.layer, shard)
                    : ActivationsPath(job_dir, task.layer);
}

std::string ResultInputPath(const JobPlan& plan, const std::string& job_dir,
                            const TaskRow& task) {
  if (!DataParallel(plan)) return "";
  if (task.kind == kForwardTask) return BlockResultPath(job_dir, task.layer);
  const int stage = TaskStage(plan, task);
  if (stage <= 0) return "";
  return StageResultPath(plan, job_dir, task.layer, stage - 1);
}

std::vector<std::string> StatisticsInputPaths(const JobPlan& plan,
                                              const std::string& job_dir,
                                              const TaskRow& task) {
  std::vector<std::string> paths;
  if (task.kind != kSolveTask) return paths;
  for (int k = 0; k < plan.calibration_shards; ++k) {
    paths.push_back(
        LayerFile(job_dir, "statistics", task.layer, TaskStage(plan, task), k));
  }
  return paths;
}

std::vector<std::string> IntermediateInputs(const JobPlan& plan,
                                            const std::string& job_dir,
                                            const TaskRow& task) {
  std::vector<std::string> paths = StatisticsInputPaths(plan, job_dir, task);
  if (ReadsActivations(plan, task)) {
    paths.push_back(ActivationsInputPath(plan, job_dir, task));
  }
  const std::string result = ResultInputPath(plan, job_dir, task);
  if (!result.empty() && result != BlockResultPath(job_dir, task.layer)) {
    paths.push_back(result);  // A partial result; the block's is assembled.
  }
  return paths;
}

int32_t ActivationsMaker(const JobPlan& plan, const std::vector<TaskRow>& tasks,
                         const TaskRow& task) {
  if (!ReadsActivations(plan, task)) return -1;
  for (int32_t dep : task.deps) {
    if (dep < 0 || dep >= static_cast<int32_t>(tasks.size())) continue;
    const TaskRow& maker = tasks[dep];
    const std::vector<std::string> made = TaskOutputs(plan, maker);
    if (maker.layer + 1 == task.layer &&
        TaskShard(plan, maker) == TaskShard(plan, task) &&
        std::find(made.begin(), made.end(), kActivationsTensor) != made.end()) {
      return dep;
    }
  }
  return -1;
}

namespace {

// The string `field` of a done task's commit record of output `name`; ""
// when there is none.
std::string CommittedField(const TaskRow& task, const std::string& name,
                           const std::string& field) {
  if (task.state != TaskState::kDone) return "";
  const nlohmann::json outputs =
      nlohmann::json::parse(task.outputs, nullptr, /*allow_exceptions=*/false);
  if (!outputs.is_object() || !outputs.contains(name) ||
      !outputs[name].is_object() || !outputs[name].contains(field) ||
      !outputs[name][field].is_string()) {
    return "";
  }
  return outputs[name][field].get<std::string>();
}

}  // namespace

std::string CommittedDigest(const TaskRow& task, const std::string& name) {
  return CommittedField(task, name, "digest");
}

std::string DeferredHolder(const TaskRow& task, const std::string& name) {
  return CommittedField(task, name, "held_by");
}

bool HoldsDeferredOutputs(const JobPlan& plan, const TaskRow& task) {
  for (const std::string& name : TaskOutputs(plan, task)) {
    if (!DeferredHolder(task, name).empty()) return true;
  }
  return false;
}

int64_t TaskMemoryBytes(const JobPlan& plan, const TaskRow& task) {
  const int64_t base = task.kind == kEmbedTask || task.kind == kHeadTask
                           ? plan.embed_bytes
                       : task.kind == kForwardTask ? plan.forward_bytes
                                                   : plan.block_bytes;
  if (!DataParallel(plan) || task.kind == kHeadTask) return base;
  // A data-parallel task holds its shard's activations (a solve, none; it
  // merges the shards' statistics one at a time into the Hessians' room).
  const int64_t sequences =
      task.kind == kSolveTask ? 0 : TaskSequences(plan, task).count;
  const double share =
      static_cast<double>(sequences) / std::max<int64_t>(1, plan.sequences);
  return base - plan.activation_bytes +
         static_cast<int64_t>(share *
                              static_cast<double>(plan.activation_bytes));
}

}  // namespace quant
