#include "coordinator/assembler.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <memory>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "format/safetensors.h"
#include "nlohmann/json.hpp"
#include "proto/recipe.h"
#include "proto/task_tensors.h"
#include "quant/quantize_model.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

constexpr char kStagingName[] = "staging";
constexpr char kUploadsPrefix[] = "upload-";
// Written once the output is in place: an assembly interrupted after that
// (before the store committed the job) is not done again.
constexpr char kAssembledName[] = "assembled";

// The output as AssembleOutput writes it: a file (GGUF, with its report
// files beside it) or a directory (with its report inside).
bool IsGguf(const v1::JobSpec& spec) {
  return spec.recipe().output_format() == v1::OUTPUT_FORMAT_GGUF;
}

}  // namespace

std::string ReportPath(const v1::JobSpec& spec) {
  return IsGguf(spec) ? spec.output() + ".report.json"
                      : spec.output() + "/quantization_report.json";
}

absl::StatusOr<std::string> CommitTaskOutputs(
    const std::string& job_dir, const JobPlan& plan, const TaskRow& task,
    int64_t hidden_size,
    const std::map<std::string, UploadReceiver::Received>& received) {
  nlohmann::json outputs = nlohmann::json::object();
  for (const std::string& name : TaskOutputs(plan, task)) {
    auto it = received.find(name);
    if (it == received.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("output \"", name, "\" was not uploaded"));
    }
    const std::string& path = it->second.path;
    // What is committed must be readable: a valid safetensors file, and
    // activations of the planned shape.
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(path);
    if (!file.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "uploaded ", name,
          " is not a safetensors file: ", file.status().message()));
    }
    if (name == kActivationsTensor) {
      const TensorView* hidden = (*file)->Find("hidden");
      const std::vector<int64_t> want = {plan.sequences, plan.seq_len,
                                         hidden_size};
      if (hidden == nullptr || hidden->dtype != SafetensorsDType::kF32 ||
          hidden->shape != want) {
        return absl::InvalidArgumentError(
            absl::StrCat("uploaded activations are not F32 [", plan.sequences,
                         ", ", plan.seq_len, ", ", hidden_size, "]"));
      }
    }
    const std::string final_path = OutputPath(job_dir, task, name);
    RETURN_IF_ERROR(RenameDurably(path, final_path));
    outputs[name] = {{"path", final_path},
                     {"bytes", it->second.bytes},
                     {"sha256", HexOf(it->second.sha256)}};
  }
  return outputs.dump();
}

void DropConsumedActivations(const std::string& job_dir, const JobPlan& plan,
                             const std::vector<TaskRow>& tasks) {
  if (plan.sequences == 0) return;
  // Boundary b is read by the forward and block tasks of layer b.
  for (int b = 0; b < plan.num_layers; ++b) {
    bool read = false, pending = false;
    for (const TaskRow& task : tasks) {
      if (task.layer != b || !ReadsActivations(plan, task)) continue;
      read = true;
      pending |= task.state != TaskState::kDone;
    }
    if (read && !pending) {
      std::error_code error;
      fs::remove(ActivationsPath(job_dir, b), error);
    }
  }
}

void CleanJobDir(const std::string& job_dir) {
  std::error_code error;
  for (const fs::directory_entry& entry :
       fs::directory_iterator(job_dir, error)) {
    const std::string name = entry.path().filename().string();
    if (absl::StartsWith(name, kUploadsPrefix) ||
        absl::StrContains(name, ".tmp.")) {
      fs::remove_all(entry.path(), error);
    }
  }
}

absl::StatusOr<std::string> AssembleJob(
    const v1::JobSpec& spec, const std::string& job_dir, int64_t submitted_ms,
    const std::function<void(const std::string&)>& log) {
  // The report's time is the job's, from its submission.
  const int64_t now_ms =
      std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::system_clock::now().time_since_epoch())
          .count();
  const auto start =
      std::chrono::steady_clock::now() -
      std::chrono::milliseconds(std::max<int64_t>(0, now_ms - submitted_ms));
  const std::string assembled = job_dir + "/" + kAssembledName;
  std::error_code error;
  if (fs::exists(assembled, error) && fs::exists(spec.output(), error)) {
    return ReportPath(spec);
  }
  ASSIGN_OR_RETURN(QuantizeModelOptions options,
                   OptionsFromRecipe(spec.recipe()));
  options.model_dir = spec.model_dir();
  options.work_dir = job_dir;
  options.log = log;
  // Written beside the output (the same file system, so that renames are
  // atomic), in a hidden directory of this job's, then moved into place: an
  // interrupted assembly leaves nothing under the output's name, and the
  // next attempt starts the staging afresh.
  const fs::path output = fs::absolute(spec.output());
  const std::string name = output.filename().string();
  const std::string parent = output.parent_path().string();
  const std::string staging =
      absl::StrCat(parent, "/.", name, ".",
                   fs::path(job_dir).filename().string(), ".", kStagingName);
  fs::remove_all(staging, error);
  fs::create_directories(staging, error);
  if (error) {
    return absl::InternalError(
        absl::StrCat("cannot create ", staging, ": ", error.message()));
  }
  options.output = staging + "/" + name;
  ASSIGN_OR_RETURN(const QuantizationPlan plan, PlanQuantization(options));
  ASSIGN_OR_RETURN(const QuantizeModelResult result,
                   AssembleOutput(options, plan, start));
  (void)result;
  // SubmitJob refused an existing output; one there now is someone else's.
  if (fs::exists(output, error)) {
    return absl::AlreadyExistsError(absl::StrCat(
        output.string(), " appeared while the job ran; not replaced"));
  }
  // Everything AssembleOutput wrote is the output and, for a file, its
  // report files beside it: the reports first (replacing those of an
  // interrupted attempt), the output last, so that the output's name
  // appears only once everything is there.
  for (const fs::directory_entry& entry :
       fs::directory_iterator(staging, error)) {
    if (entry.path().filename() == name) continue;
    RETURN_IF_ERROR(
        RenameDurably(entry.path().string(),
                      parent + "/" + entry.path().filename().string()));
  }
  RETURN_IF_ERROR(RenameDurably(options.output, output.string()));
  RETURN_IF_ERROR(WriteFileAtomically(assembled, ReportPath(spec) + "\n"));
  fs::remove_all(staging, error);
  return ReportPath(spec);
}

}  // namespace quant
