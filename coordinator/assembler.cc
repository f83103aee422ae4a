#include "coordinator/assembler.h"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <exception>
#include <filesystem>
#include <memory>
#include <set>
#include <thread>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/checksum.h"
#include "common/failpoint.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "format/safetensors.h"
#include "nlohmann/json.hpp"
#include "proto/recipe.h"
#include "proto/task_tensors.h"
#include "quant/block_store.h"
#include "quant/gguf_head.h"
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

// A file's size and digest, as an upload's are recorded; its pieces hashed
// on every core (before an assembly, every block result is checked: 80 x
// 0.9 GB for a 70B job).
absl::StatusOr<UploadReceiver::Received> DescribeFile(const std::string& path) {
  UploadReceiver::Received r;
  r.path = path;
  ASSIGN_OR_RETURN(r.digest,
                   ContentDigestOfFile(
                       path, &r.bytes,
                       static_cast<int>(std::thread::hardware_concurrency())));
  return r;
}

// What is committed must be readable: a valid safetensors file, and what
// each kind of output must be for the tasks and the assembly that read it.
absl::Status CheckOutputFile(const JobPlan& plan, const TaskRow& task,
                             int64_t hidden_size, const std::string& model_dir,
                             const std::string& name, const std::string& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(path);
  if (!file.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("uploaded ", name,
                     " is not a safetensors file: ", file.status().message()));
  }
  if (name == kResultTensor) {
    // Everything the assembly will read of it, read now: a result it
    // could not read would fail the job after its tasks were done. (A
    // data-parallel stage before the last solves part of the block.)
    const bool partial = !AssembledOutput(plan, task, name);
    if (absl::Status checked =
            partial ? CheckPartialBlockResult(path) : CheckBlockResult(path);
        !checked.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "uploaded result is not a block result: ", checked.message()));
    }
  }
  if (name == kStatisticsTensor) {
    if (absl::Status checked = CheckBlockStatistics(path); !checked.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "uploaded statistics are malformed: ", checked.message()));
    }
  }
  if (name == kHeadTensor) {
    std::map<std::string, GgmlType> types;
    for (const auto& [tensor, type_name] : plan.head_types) {
      ASSIGN_OR_RETURN(types[tensor], ParseGgmlType(type_name));
    }
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsCheckpoint> model,
                     SafetensorsCheckpoint::Open(model_dir));
    if (absl::Status checked = CheckGgufHead(path, *model, types);
        !checked.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("uploaded head: ", checked.message()));
    }
  }
  if (name == kActivationsTensor) {
    const TensorView* hidden = (*file)->Find("hidden");
    const int64_t sequences = TaskSequences(plan, task).count;
    const std::vector<int64_t> want = {sequences, plan.seq_len, hidden_size};
    if (hidden == nullptr || hidden->dtype != SafetensorsDType::kF32 ||
        hidden->shape != want) {
      return absl::InvalidArgumentError(
          absl::StrCat("uploaded activations are not F32 [", sequences, ", ",
                       plan.seq_len, ", ", hidden_size, "]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string ReportPath(const v1::JobSpec& spec) {
  return IsGguf(spec) ? spec.output() + ".report.json"
                      : spec.output() + "/quantization_report.json";
}

absl::StatusOr<std::string> CommitTaskOutputs(
    const std::string& job_dir, const JobPlan& plan, const TaskRow& task,
    int64_t hidden_size, const std::string& model_dir,
    const std::map<std::string, UploadReceiver::Received>& received,
    const std::map<std::string, DeferredOutput>& deferred,
    const std::string& holder) {
  nlohmann::json outputs = nlohmann::json::object();
  std::set<std::string> in_place;
  const std::vector<std::string> expected = TaskOutputs(plan, task);
  for (const auto& [name, output] : deferred) {
    // Only activations wait on their worker: the tasks after read them
    // there, while results and statistics are read by others at once.
    if (name != kActivationsTensor ||
        std::find(expected.begin(), expected.end(), name) == expected.end() ||
        received.count(name) != 0 || holder.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("output \"", name, "\" cannot be deferred"));
    }
    if (output.digest.size() != 64 ||
        output.digest.find_first_not_of("0123456789abcdef") !=
            std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat(
          "deferred output \"", name, "\" has no digest (hex, lower case)"));
    }
    outputs[name] = {{"path", OutputPath(plan, job_dir, task, name)},
                     {"bytes", output.bytes},
                     {"digest", output.digest},
                     {"held_by", holder}};
  }
  for (const std::string& name : expected) {
    if (deferred.count(name) != 0) continue;
    auto it = received.find(name);
    if (it == received.end()) {
      return absl::FailedPreconditionError(
          absl::StrCat("output \"", name, "\" was not uploaded"));
    }
    const std::string& path = it->second.path;
    const std::string destination = OutputPath(plan, job_dir, task, name);
    outputs[name] = {{"path", destination},
                     {"bytes", it->second.bytes},
                     {"digest", HexOf(it->second.digest)}};
    std::error_code error;
    if (!fs::exists(path, error)) {
      // Moved by an attempt whose commit the store could not record: the
      // same bytes, checked then, are in place.
      absl::StatusOr<UploadReceiver::Received> there =
          DescribeFile(destination);
      if (there.ok() && there->bytes == it->second.bytes &&
          there->digest == it->second.digest) {
        in_place.insert(name);
        continue;
      }
      return absl::FailedPreconditionError(
          absl::StrCat("output \"", name, "\" was not uploaded"));
    }
    RETURN_IF_ERROR(
        CheckOutputFile(plan, task, hidden_size, model_dir, name, path));
  }
  // Every output checked before any moves: a refused upload moves nothing.
  // (The task commits after the last rename; a crash between renames
  // leaves files the next attempt overwrites.)
  for (const std::string& name : expected) {
    if (in_place.count(name) != 0 || deferred.count(name) != 0) continue;
    RETURN_IF_ERROR(RenameDurably(received.at(name).path,
                                  outputs[name]["path"].get<std::string>()));
  }
  // Killed between the renames and the store's commit of the task.
  if (Failpoint("coordinator.kill_before_task_commit")) raise(SIGKILL);
  return outputs.dump();
}

absl::Status CommitDeferredOutput(const std::string& job_dir,
                                  const JobPlan& plan, const TaskRow& task,
                                  int64_t hidden_size,
                                  const std::string& model_dir,
                                  const std::string& name,
                                  const UploadReceiver::Received& received) {
  if (DeferredHolder(task, name).empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task ", task.index, " holds no deferred ", name, " to upload"));
  }
  if (HexOf(received.digest) != CommittedDigest(task, name)) {
    return absl::InvalidArgumentError(
        absl::StrCat("uploaded ", name, " of task ", task.index,
                     " differs from the digest committed for it"));
  }
  RETURN_IF_ERROR(
      CheckOutputFile(plan, task, hidden_size, model_dir, name, received.path));
  return RenameDurably(received.path, OutputPath(plan, job_dir, task, name));
}

std::vector<TaskToRedo> TasksToRedo(const JobPlan& plan,
                                    const std::vector<TaskRow>& tasks) {
  // Why `name` of a committed task is not as committed ("" when it is).
  auto damage = [](const TaskRow& task, const std::string& name) {
    const nlohmann::json outputs = nlohmann::json::parse(
        task.outputs, nullptr, /*allow_exceptions=*/false);
    const std::string unreadable =
        absl::StrCat("its commit record of ", name, " is unreadable");
    if (!outputs.is_object() || !outputs.contains(name) ||
        !outputs[name].is_object()) {
      return unreadable;
    }
    const nlohmann::json& record = outputs[name];
    const auto path_field = record.find("path");
    const auto bytes_field = record.find("bytes");
    const auto digest = record.find("digest");
    // Records of a store from before the content digest hold the file's
    // plain SHA-256, which tells as well whether the file is intact.
    const auto sha256 = record.find("sha256");
    const bool has_digest = digest != record.end() && digest->is_string();
    if (path_field == record.end() || !path_field->is_string() ||
        bytes_field == record.end() || !bytes_field->is_number_unsigned() ||
        (!has_digest && (sha256 == record.end() || !sha256->is_string()))) {
      return unreadable;
    }
    const std::string path = path_field->get<std::string>();
    absl::StatusOr<UploadReceiver::Received> file = DescribeFile(path);
    if (!file.ok()) return absl::StrCat(path, " is gone");
    const uint64_t bytes = bytes_field->get<uint64_t>();
    if (static_cast<uint64_t>(file->bytes) != bytes) {
      return absl::StrCat(path, " holds ", file->bytes, " bytes, ", bytes,
                          " were committed");
    }
    if (has_digest ? HexOf(file->digest) != digest->get<std::string>()
                   : HexOf(Sha256OfFile(path).value_or("")) !=
                         sha256->get<std::string>()) {
      return absl::StrCat(path, ": its digest differs from the committed one");
    }
    return std::string();
  };
  std::vector<TaskToRedo> redo;
  std::set<int32_t> chosen;
  for (const TaskRow& task : tasks) {
    if (task.state != TaskState::kDone) continue;
    for (const std::string& name : TaskOutputs(plan, task)) {
      // Intermediates are read by tasks, not here (and dropped after).
      if (!AssembledOutput(plan, task, name)) continue;
      std::string why = damage(task, name);
      if (!why.empty() && chosen.insert(task.index).second) {
        redo.push_back({task.index, std::move(why)});
      }
    }
  }
  // A task computed again reads its inputs again (activations, a
  // data-parallel stage's statistics and partial result): the task that
  // made one runs again too when it is not as committed.
  for (size_t i = 0; i < redo.size(); ++i) {
    const TaskRow& task = tasks[redo[i].index];
    for (int32_t dep : task.deps) {
      if (dep < 0 || dep >= static_cast<int32_t>(tasks.size())) continue;
      const TaskRow& maker = tasks[dep];
      if (maker.state != TaskState::kDone || chosen.count(dep) != 0) continue;
      for (const std::string& name : TaskOutputs(plan, maker)) {
        const std::string why = damage(maker, name);
        if (why.empty()) continue;
        chosen.insert(dep);
        redo.push_back(
            {dep, absl::StrCat("task ", task.index,
                               " runs again and needs its input: ", why)});
        break;
      }
    }
  }
  return redo;
}

void DropConsumedInputs(const std::string& job_dir, const JobPlan& plan,
                        const std::vector<TaskRow>& tasks) {
  // File -> a reader is not done, or holds outputs not uploaded yet (it
  // runs again, reading the file again, if its worker leaves).
  std::map<std::string, bool> pending;
  for (const TaskRow& task : tasks) {
    const bool waiting =
        task.state != TaskState::kDone || HoldsDeferredOutputs(plan, task);
    for (const std::string& path : IntermediateInputs(plan, job_dir, task)) {
      pending[path] = pending[path] || waiting;
    }
  }
  for (const auto& [path, waiting] : pending) {
    if (waiting) continue;
    std::error_code error;
    fs::remove(path, error);
  }
}

std::string UploadDir(const std::string& job_dir, int32_t task_index,
                      int64_t epoch) {
  return absl::StrCat(job_dir, "/", kUploadsPrefix, task_index, "-", epoch);
}

absl::StatusOr<std::map<std::string, UploadReceiver::Received>> ReadUploads(
    const std::string& dir, const std::vector<std::string>& expected) {
  std::map<std::string, UploadReceiver::Received> received;
  for (const std::string& name : expected) {
    absl::StatusOr<UploadReceiver::Received> file =
        DescribeFile(dir + "/" + name);
    if (!file.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat("output \"", name, "\" was not uploaded"));
    }
    received[name] = *std::move(file);
  }
  return received;
}

void DropUploads(const std::string& job_dir, int32_t task_index) {
  const std::string prefix = absl::StrCat(kUploadsPrefix, task_index, "-");
  std::error_code error;
  for (const fs::directory_entry& entry :
       fs::directory_iterator(job_dir, error)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix)) {
      fs::remove_all(entry.path(), error);
    }
  }
}

void CleanJobDir(const std::string& job_dir) {
  std::error_code error;
  std::vector<fs::path> temporary;
  fs::recursive_directory_iterator it(job_dir, error);
  for (; !error && it != fs::recursive_directory_iterator();
       it.increment(error)) {
    if (absl::StrContains(it->path().filename().string(), ".tmp.")) {
      temporary.push_back(it->path());
    }
  }
  for (const fs::path& path : temporary) fs::remove(path, error);
}

bool Assembled(const v1::JobSpec& spec, const std::string& job_dir) {
  std::error_code error;
  return fs::exists(job_dir + "/" + kAssembledName, error) &&
         fs::exists(spec.output(), error);
}

absl::StatusOr<std::string> AssembleJob(
    const v1::JobSpec& spec, const std::string& job_dir, int64_t submitted_ms,
    const std::function<void(const std::string&)>& log,
    const std::function<bool()>& cancelled) {
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
  if (Assembled(spec, job_dir)) return ReportPath(spec);
  ASSIGN_OR_RETURN(QuantizeModelOptions options,
                   OptionsFromRecipe(spec.recipe()));
  options.model_dir = spec.model_dir();
  options.work_dir = job_dir;
  options.log = log;
  options.cancelled = cancelled;
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
  // The staging goes, whatever happens: it is a whole model's size.
  const auto build = [&]() -> absl::Status {
    ASSIGN_OR_RETURN(const QuantizationPlan plan, PlanQuantization(options));
    RETURN_IF_ERROR(AssembleOutput(options, plan, start).status());
    // SubmitJob refused an existing output; one there now is someone
    // else's.
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
    // The marker first: a restart after the rename finds the output in
    // place and the marker, and does not assemble again.
    RETURN_IF_ERROR(WriteFileAtomically(assembled, ReportPath(spec) + "\n"));
    if (Failpoint("coordinator.kill_before_final_rename")) raise(SIGKILL);
    return RenameDurably(options.output, output.string());
  };
  // No exception leaves this thread's work (nlohmann's, a library's): the
  // job fails with it and the coordinator serves on.
  absl::Status built;
  try {
    built = build();
  } catch (const std::exception& e) {
    built = absl::InternalError(absl::StrCat("assembly stopped: ", e.what()));
  }
  fs::remove_all(staging, error);
  RETURN_IF_ERROR(built);
  return ReportPath(spec);
}

}  // namespace quant
