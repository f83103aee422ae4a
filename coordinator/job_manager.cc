#include "coordinator/job_manager.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <filesystem>
#include <limits>
#include <optional>
#include <random>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/failpoint.h"
#include "common/file.h"
#include "common/status_macros.h"
#include "common/utf8.h"
#include "coordinator/assembler.h"
#include "coordinator/planner.h"
#include "coordinator/weight_checksums.h"
#include "format/model_config.h"
#include "format/safetensors.h"
#include "model/calibration.h"
#include "proto/recipe.h"
#include "proto/task_tensors.h"
#include "quant/block_store.h"
#include "quant/quantize_model.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

// What a worker's free text may take in the store, logs and metrics.
constexpr size_t kMaxErrorBytes = 4096;
constexpr size_t kMaxNameBytes = 256;

std::string JobIdString(int64_t id) { return absl::StrCat(id); }

v1::TaskState ToProto(TaskState state) {
  return static_cast<v1::TaskState>(static_cast<int>(state));
}
v1::JobState ToProto(JobState state) {
  return static_cast<v1::JobState>(static_cast<int>(state));
}

absl::StatusOr<v1::JobSpec> ParseSpec(const JobRow& row) {
  v1::JobSpec spec;
  if (!spec.ParseFromString(row.spec)) {
    return absl::DataLossError(
        absl::StrCat("job ", row.id, ": the stored spec does not parse"));
  }
  return spec;
}

const char* BackendName(v1::Backend backend) {
  return backend == v1::BACKEND_CUDA ? "cuda" : "cpu";
}

}  // namespace

absl::StatusOr<int64_t> ParseJobId(const std::string& job_id) {
  int64_t id = 0;
  if (!absl::SimpleAtoi(job_id, &id) || id <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("job_id: \"", job_id, "\" is not a job id"));
  }
  return id;
}

JobManager::JobManager(JobManagerOptions options)
    : options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : &system_clock_) {}

absl::StatusOr<std::unique_ptr<JobManager>> JobManager::Create(
    JobManagerOptions options) {
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError("a state directory is required");
  }
  std::error_code error;
  fs::create_directories(options.state_dir + "/jobs", error);
  if (error) {
    return absl::PermissionDeniedError(absl::StrCat(
        "cannot create ", options.state_dir, "/jobs: ", error.message()));
  }
  std::unique_ptr<JobManager> manager(new JobManager(std::move(options)));
  // One coordinator per state directory: a second one (an old pod still
  // running) would hand out the same fencing epochs.
  const std::string lock_path = manager->options_.state_dir + "/LOCK";
  manager->lock_fd_ =
      ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (manager->lock_fd_ < 0 ||
      ::flock(manager->lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("another coordinator uses ", manager->options_.state_dir,
                     " (", lock_path, " is locked)"));
  }
  ASSIGN_OR_RETURN(manager->store_,
                   JobStore::Open(manager->options_.state_dir + "/jobs.db"));
  SchedulerEvents events;
  ServiceMetrics* metrics = manager->options_.metrics;
  if (metrics != nullptr) {
    events.task_released = [metrics](const TaskRow& t) {
      metrics->TaskReleased(t.kind);
    };
    events.task_failed = [metrics](const TaskRow& t, bool task_fault) {
      metrics->TaskFailed(t.kind, task_fault);
    };
    events.task_retried = [metrics](const TaskRow& t) {
      metrics->TaskRetried(t.kind);
    };
  }
  manager->scheduler_ = std::make_unique<Scheduler>(
      manager->store_.get(), manager->clock_, manager->options_.scheduler,
      std::move(events));
  RETURN_IF_ERROR(manager->scheduler_->Recover());
  // What a crash left half-done in the directories of unfinished jobs.
  ASSIGN_OR_RETURN(const std::vector<JobRow> jobs, manager->store_->ListJobs());
  for (const JobRow& job : jobs) {
    if (IsFinal(job.state)) continue;
    ASSIGN_OR_RETURN(const JobPlan plan, JobPlan::FromJson(job.plan));
    CleanJobDir(plan.job_dir);
    ASSIGN_OR_RETURN(const JobSnapshot snapshot,
                     manager->scheduler_->GetJob(job.id));
    int committed = 0;
    for (const TaskRow& t : snapshot.tasks) {
      committed += t.state == TaskState::kDone ? 1 : 0;
    }
    manager->Log(absl::StrCat("job ", job.id, ": continuing (",
                              JobStateName(job.state), "), ", committed, " of ",
                              snapshot.tasks.size(), " tasks committed"));
  }
  manager->tick_thread_ = std::thread([m = manager.get()] { m->TickLoop(); });
  manager->assemble_thread_ =
      std::thread([m = manager.get()] { m->AssembleLoop(); });
  manager->hash_thread_ = std::thread([m = manager.get()] { m->HashLoop(); });
  return manager;
}

JobManager::~JobManager() {
  stopping_ = true;
  if (tick_thread_.joinable()) tick_thread_.join();
  if (assemble_thread_.joinable()) assemble_thread_.join();
  if (hash_thread_.joinable()) hash_thread_.join();
  if (lock_fd_ >= 0) ::close(lock_fd_);  // Releases the flock.
}

void JobManager::Log(const std::string& line) const {
  if (options_.log) options_.log(line);
}

absl::StatusOr<std::string> JobManager::CanonicalPath(
    const std::string& field, const std::string& path,
    const std::vector<std::string>& roots) const {
  if (path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": empty"));
  }
  std::error_code error;
  std::string canonical =
      fs::weakly_canonical(fs::absolute(path), error).string();
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": cannot resolve ", path));
  }
  while (canonical.size() > 1 && canonical.back() == '/') canonical.pop_back();
  for (const std::string& root : roots) {
    std::string base = fs::weakly_canonical(fs::absolute(root), error).string();
    if (error) continue;
    while (base.size() > 1 && base.back() == '/') base.pop_back();
    if (canonical == base || (canonical.size() > base.size() &&
                              canonical.compare(0, base.size(), base) == 0 &&
                              (base == "/" || canonical[base.size()] == '/'))) {
      return canonical;
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", path, " is outside the allowed roots (",
                   absl::StrJoin(roots, ", "), ")"));
}

absl::StatusOr<v1::Job> JobManager::SubmitJob(const v1::JobSpec& submitted,
                                              const std::string& owner) {
  RETURN_IF_ERROR(CheckNoUnknownFields(submitted, "spec"));
  // Stored with every path resolved, so that the job means the same files
  // whatever directory a restarted coordinator runs in.
  v1::JobSpec spec = submitted;
  ASSIGN_OR_RETURN(
      *spec.mutable_model_dir(),
      CanonicalPath("spec.model_dir", spec.model_dir(), options_.model_roots));
  ASSIGN_OR_RETURN(
      *spec.mutable_output(),
      CanonicalPath("spec.output", spec.output(), options_.output_roots));
  std::error_code error;
  if (!fs::is_directory(spec.model_dir(), error)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.model_dir: ", spec.model_dir(), " is not a directory"));
  }
  if (fs::exists(spec.output(), error)) {
    return absl::InvalidArgumentError(
        absl::StrCat("spec.output: ", spec.output(), " already exists"));
  }
  const fs::path parent = fs::path(spec.output()).parent_path();
  if (!fs::is_directory(parent, error)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spec.output: the directory ", parent.string(), " does not exist"));
  }
  v1::Calibration* calibration = spec.mutable_recipe()->mutable_calibration();
  if (!calibration->text_path().empty()) {
    ASSIGN_OR_RETURN(
        *calibration->mutable_text_path(),
        CanonicalPath("recipe.calibration.text_path", calibration->text_path(),
                      options_.model_roots));
  }
  if (!calibration->tokens_path().empty()) {
    ASSIGN_OR_RETURN(
        *calibration->mutable_tokens_path(),
        CanonicalPath("recipe.calibration.tokens_path",
                      calibration->tokens_path(), options_.model_roots));
  }
  for (int i = 0; i < spec.recipe().eval_texts_size(); ++i) {
    std::string* text = spec.mutable_recipe()->mutable_eval_texts(i);
    ASSIGN_OR_RETURN(
        *text, CanonicalPath(absl::StrCat("recipe.eval_texts[", i, "]"), *text,
                             options_.model_roots));
  }
  ASSIGN_OR_RETURN(QuantizeModelOptions options,
                   OptionsFromRecipe(spec.recipe()));
  options.model_dir = spec.model_dir();
  options.output = spec.output();
  options.work_dir = "unused";  // The planner's checks want one.
  absl::StatusOr<QuantizationPlan> engine_plan = PlanQuantization(options);
  if (!engine_plan.ok()) {
    // Bad bits for the format, an unknown GGUF type, a config that lies:
    // all of them the submission's fault.
    return absl::InvalidArgumentError(
        absl::StrCat("spec: ", engine_plan.status().message()));
  }
  ASSIGN_OR_RETURN(PlannedJob planned,
                   PlanJob(spec.recipe().mode(), options, *engine_plan,
                           spec.recipe().shards_in_task()));

  // The calibration windows, read before the lock: a large file delays this
  // submission only.
  std::vector<int32_t> windows;
  if (options.calibration.samples > 0) {
    absl::StatusOr<std::vector<int32_t>> loaded =
        LoadCalibrationWindows(options.model_dir, options.calibration);
    if (!loaded.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("recipe.calibration: ", loaded.status().message()));
    }
    windows = *std::move(loaded);
  }

  // Submissions are serialized: two jobs must not write one output.
  absl::MutexLock submit_lock(&submit_mu_);
  ASSIGN_OR_RETURN(const std::vector<JobRow> jobs, store_->ListJobs());
  for (const JobRow& row : jobs) {
    v1::JobSpec other;
    if (IsFinal(row.state) || !other.ParseFromString(row.spec)) continue;
    if (other.output() == spec.output()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spec.output: job ", row.id, " already writes ", spec.output()));
    }
  }

  // The job's directory, with its calibration windows, exists before the
  // job is committed (a worker may lease its first task at once); it is
  // removed again if the job is not committed.
  const std::string jobs_dir = options_.state_dir + "/jobs";
  const std::string job_dir = absl::StrFormat(
      "%s/%016x", jobs_dir,
      std::random_device{}() * uint64_t{0x100000000} + std::random_device{}());
  fs::create_directories(job_dir, error);
  if (error) {
    return absl::InternalError(absl::StrCat("cannot create ", job_dir));
  }
  planned.plan.job_dir = job_dir;
  absl::StatusOr<int64_t> id = [&]() -> absl::StatusOr<int64_t> {
    if (options.calibration.samples > 0) {
      ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> writer,
                       SafetensorsWriter::Create(WindowsPath(job_dir)));
      RETURN_IF_ERROR(writer->AddTensor(
          kWindowsTensor, SafetensorsDType::kI32,
          {options.calibration.samples, options.calibration.seq_len}));
      RETURN_IF_ERROR(writer->WriteTensorData(
          kWindowsTensor, windows.data(), windows.size() * sizeof(int32_t)));
      RETURN_IF_ERROR(writer->Finish());
    }
    RETURN_IF_ERROR(SyncDirectory(jobs_dir));
    JobRow row;
    row.spec = spec.SerializeAsString();
    row.owner = owner;
    return scheduler_->AddJob(row, planned.plan, planned.tasks);
  }();
  if (!id.ok()) {
    fs::remove_all(job_dir, error);
    return id.status();
  }
  Log(absl::StrCat("job ", *id, ": submitted by ", owner, ", ",
                   planned.tasks.size(), " tasks (", spec.model_dir(), " -> ",
                   spec.output(), ")"));
  return JobMessage(*id, false);
}

absl::StatusOr<JobManager::JobContext> JobManager::Context(int64_t job_id) {
  JobContext job;
  ASSIGN_OR_RETURN(job.snapshot, scheduler_->GetJob(job_id));
  ASSIGN_OR_RETURN(job.spec, ParseSpec(job.snapshot.job));
  return job;
}

absl::StatusOr<v1::Job> JobManager::JobMessage(int64_t job_id,
                                               bool include_tasks) {
  ASSIGN_OR_RETURN(const JobContext job, Context(job_id));
  return JobMessage(job, include_tasks);
}

v1::Job JobManager::JobMessage(const JobContext& job, bool include_tasks) {
  const JobRow& row = job.snapshot.job;
  v1::Job out;
  out.set_job_id(JobIdString(row.id));
  *out.mutable_spec() = job.spec;
  out.set_state(ToProto(row.state));
  out.set_error(row.error);
  out.set_owner(row.owner);
  out.set_create_time_ms(row.create_ms);
  out.set_update_time_ms(row.update_ms);
  std::map<std::string, std::pair<int, int>> stages;      // kind -> total, done
  std::map<std::string, std::pair<double, int>> seconds;  // kind -> sum, n
  std::vector<std::string> order;
  int done = 0, leased = 0;
  for (const TaskRow& task : job.snapshot.tasks) {
    if (stages.count(task.kind) == 0) order.push_back(task.kind);
    auto& stage = stages[task.kind];
    ++stage.first;
    if (task.state == TaskState::kDone) {
      ++stage.second;
      ++done;
      seconds[task.kind].first += task.seconds;
      ++seconds[task.kind].second;
    }
    if (task.state == TaskState::kLeased) ++leased;
    if (include_tasks) {
      v1::Task* t = out.add_tasks();
      t->set_index(task.index);
      t->set_kind(task.kind);
      t->set_layer(task.layer);
      t->set_state(ToProto(task.state));
      t->set_worker_id(task.worker_id);
      t->set_task_faults(task.task_faults);
      t->set_infra_faults(task.infra_faults);
      t->set_error(task.error);
      t->set_seconds(task.seconds);
      t->set_backend(task.backend);
      t->set_kernel(task.kernel);
    }
  }
  out.set_tasks_total(static_cast<int32_t>(job.snapshot.tasks.size()));
  out.set_tasks_done(done);
  out.set_tasks_leased(leased);
  // ETA: each kind's remaining tasks at that kind's mean time (the blocks'
  // mean for a kind with none done yet), one task at a time.
  double eta = 0;
  bool known = true;
  for (const std::string& kind : order) {
    v1::Stage* stage = out.add_stages();
    stage->set_name(kind);
    stage->set_total(stages[kind].first);
    stage->set_done(stages[kind].second);
    const int remaining = stages[kind].first - stages[kind].second;
    if (remaining == 0) continue;
    auto it = seconds.find(kind);
    if (it == seconds.end()) it = seconds.find(kBlockTask);
    if (it == seconds.end() || it->second.second == 0) {
      known = false;
      continue;
    }
    eta += remaining * it->second.first / it->second.second;
  }
  out.set_eta_seconds(IsFinal(row.state) ? 0 : known ? eta : -1);
  out.set_waiting(job.snapshot.waiting.message);
  if (row.state == JobState::kSucceeded)
    out.set_report_path(ReportPath(job.spec));
  return out;
}

absl::StatusOr<v1::Job> JobManager::GetJob(const std::string& job_id,
                                           bool include_tasks) {
  ASSIGN_OR_RETURN(const int64_t id, ParseJobId(job_id));
  return JobMessage(id, include_tasks);
}

absl::StatusOr<v1::ListJobsResponse> JobManager::ListJobs(v1::JobState state) {
  std::optional<JobState> filter;
  if (state != v1::JOB_STATE_UNSPECIFIED) {
    if (!v1::JobState_IsValid(state)) {
      return absl::InvalidArgumentError("state: unknown job state");
    }
    filter = static_cast<JobState>(static_cast<int>(state));
  }
  ASSIGN_OR_RETURN(const std::vector<JobRow> rows, store_->ListJobs(filter));
  v1::ListJobsResponse response;
  for (const JobRow& row : rows) {
    ASSIGN_OR_RETURN(*response.add_jobs(), JobMessage(row.id, false));
  }
  return response;
}

absl::Status JobManager::WatchJob(
    const std::string& job_id,
    const std::function<bool(const v1::JobEvent&)>& emit,
    const std::function<bool()>& cancelled) {
  ASSIGN_OR_RETURN(const int64_t id, ParseJobId(job_id));
  // Each watcher holds a server thread: past the limit, new ones are
  // refused rather than starving the workers' calls.
  if (watchers_.fetch_add(1) >= options_.max_watchers) {
    watchers_.fetch_sub(1);
    return absl::ResourceExhaustedError(
        absl::StrCat("too many watchers (", options_.max_watchers,
                     "); poll GetJob or watch again later"));
  }
  struct Release {
    std::atomic<int>& count;
    ~Release() { count.fetch_sub(1); }
  } release{watchers_};
  std::string last;
  while (true) {
    const uint64_t version = scheduler_->version();
    ASSIGN_OR_RETURN(v1::Job job, JobMessage(id, false));
    const std::string now = job.SerializeAsString();
    if (now != last) {
      v1::JobEvent event;
      *event.mutable_job() = job;
      event.set_time_ms(clock_->NowMs());
      if (!emit(event)) return absl::CancelledError("the watcher went away");
      last = now;
    }
    if (job.state() == v1::JOB_STATE_SUCCEEDED ||
        job.state() == v1::JOB_STATE_FAILED ||
        job.state() == v1::JOB_STATE_CANCELLED) {
      return absl::OkStatus();
    }
    if (cancelled() || stopping_) {
      return absl::CancelledError("the watch was cancelled");
    }
    scheduler_->WaitForChange(version, absl::Milliseconds(500));
  }
}

absl::Status JobManager::CheckOwner(int64_t id, const Principal& caller,
                                    absl::string_view action) {
  if (caller.role == Role::kAdmin) return absl::OkStatus();
  ASSIGN_OR_RETURN(const JobSnapshot snapshot, scheduler_->GetJob(id));
  if (snapshot.job.owner == caller.name) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(
      "job ", JobIdString(id), " belongs to ",
      snapshot.job.owner.empty() ? "no recorded principal" : snapshot.job.owner,
      "; only its owner or an admin may ", action, " it (you are ", caller.name,
      ")"));
}

absl::StatusOr<v1::Job> JobManager::CancelJob(const std::string& job_id,
                                              const Principal& caller) {
  ASSIGN_OR_RETURN(const int64_t id, ParseJobId(job_id));
  RETURN_IF_ERROR(CheckOwner(id, caller, "cancel"));
  RETURN_IF_ERROR(scheduler_->Cancel(id));
  Log(absl::StrCat("job ", id, ": cancelled by ", caller.name));
  return JobMessage(id, false);
}

absl::StatusOr<v1::Job> JobManager::ResumeJob(const std::string& job_id,
                                              const Principal& caller) {
  ASSIGN_OR_RETURN(const int64_t id, ParseJobId(job_id));
  RETURN_IF_ERROR(CheckOwner(id, caller, "resume"));
  {
    ASSIGN_OR_RETURN(const JobSnapshot snapshot, scheduler_->GetJob(id));
    std::error_code error;
    if ((snapshot.job.state == JobState::kFailed ||
         snapshot.job.state == JobState::kCancelled) &&
        !fs::exists(snapshot.plan.job_dir, error)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job ", JobIdString(id),
          ": its committed files were removed (a failed or cancelled job "
          "keeps them for --keep_failed_jobs_hours); submit it again"));
    }
  }
  RETURN_IF_ERROR(scheduler_->Resume(id));
  ASSIGN_OR_RETURN(const JobContext job, Context(id));
  CleanJobDir(job.snapshot.plan.job_dir);
  Log(absl::StrCat("job ", id, ": resumed by ", caller.name));
  return JobMessage(id, false);
}

v1::ListWorkersResponse JobManager::ListWorkers() {
  v1::ListWorkersResponse response;
  for (const WorkerInfo& w : scheduler_->ListWorkers()) {
    v1::WorkerInfo* info = response.add_workers();
    info->set_worker_id(w.id);
    info->set_name(w.name);
    info->set_backend(w.capabilities.backend());
    info->set_device(w.capabilities.device());
    info->set_threads(w.capabilities.threads());
    info->set_memory_bytes(w.capabilities.memory_bytes());
    info->set_task(w.task);
    info->set_last_seen_ms(w.last_seen_ms);
    info->set_tasks_done(w.tasks_done);
  }
  return response;
}

absl::StatusOr<v1::RegisterWorkerResponse> JobManager::RegisterWorker(
    const v1::RegisterWorkerRequest& request) {
  if (request.capabilities().backend() == v1::BACKEND_UNSPECIFIED ||
      !v1::Backend_IsValid(request.capabilities().backend())) {
    return absl::InvalidArgumentError("capabilities.backend: unknown");
  }
  // Names appear in logs, status and metrics: a line of plain text.
  if (request.name().empty() ||
      BoundedText(request.name(), kMaxNameBytes) != request.name() ||
      request.name().find_first_of("\n\t") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("name: ", QuoteForMessage(request.name()), " is not 1 to ",
                     kMaxNameBytes, " bytes of plain text"));
  }
  v1::RegisterWorkerResponse response;
  response.set_worker_id(
      scheduler_->RegisterWorker(request.name(), request.capabilities()));
  response.set_heartbeat_interval_ms(options_.scheduler.heartbeat_interval_ms);
  response.set_lease_ms(options_.scheduler.lease_ms);
  response.set_max_chunk_bytes(options_.max_chunk_bytes);
  Log(absl::StrCat("worker ", response.worker_id(), " (", request.name(),
                   ") registered"));
  return response;
}

std::string JobManager::WeightDigest(int64_t job_id, const std::string& name) {
  absl::MutexLock lock(&sums_mu_);
  const auto job = sums_.find(job_id);
  if (job == sums_.end()) return "";
  const auto sum = job->second.find(name);
  return sum == job->second.end() ? "" : sum->second;
}

void JobManager::HashLoop() {
  while (!stopping_) {
    const uint64_t version = scheduler_->version();
    const std::vector<int64_t> active = scheduler_->ActiveJobs();
    {
      // Jobs that ended need no checksums in memory (their record stays,
      // for a resume).
      absl::MutexLock lock(&sums_mu_);
      for (auto it = sums_.begin(); it != sums_.end();) {
        if (std::find(active.begin(), active.end(), it->first) ==
            active.end()) {
          hashed_.erase(it->first);
          it = sums_.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (int64_t id : active) {
      if (stopping_) return;
      {
        absl::MutexLock lock(&sums_mu_);
        if (hashed_.count(id) != 0) continue;
      }
      absl::StatusOr<JobContext> job = Context(id);
      if (!job.ok()) continue;
      const std::string& job_dir = job->snapshot.plan.job_dir;
      std::map<std::string, std::string> loaded = LoadWeightChecksums(job_dir);
      {
        absl::MutexLock lock(&sums_mu_);
        sums_[id] = std::move(loaded);
      }
      const absl::Status recorded = RecordWeightChecksums(
          job->spec.model_dir(), job_dir, job->snapshot.plan,
          job->snapshot.tasks, [this] { return stopping_.load(); },
          [&](const std::string& name, const std::string& hex) {
            absl::MutexLock lock(&sums_mu_);
            sums_[id][name] = hex;
          });
      if (stopping_) return;
      if (!recorded.ok()) {
        Log(absl::StrCat("job ", id, ": weights not hashed (",
                         recorded.message(), "); its workers stream them"));
      }
      absl::MutexLock lock(&sums_mu_);
      hashed_.insert(id);
    }
    scheduler_->WaitForChange(version, absl::Milliseconds(500));
  }
}

namespace {

// The hidden size when the activations a task reads are held by their
// maker (TaskInputs::Open describes them from it), else 0.
absl::StatusOr<int64_t> HeldHiddenSize(const v1::JobSpec& job, bool held) {
  if (!held) return 0;
  ASSIGN_OR_RETURN(const ModelSpec model, LoadModelConfig(job.model_dir()));
  return model.hidden_size;
}

// The outputs a task's upload holds: all but those its commit defers.
std::vector<std::string> UploadedOutputs(
    const JobPlan& plan, const TaskRow& task,
    const std::map<std::string, DeferredOutput>& deferred) {
  std::vector<std::string> names;
  for (const std::string& name : TaskOutputs(plan, task)) {
    if (deferred.count(name) == 0) names.push_back(name);
  }
  return names;
}

}  // namespace

absl::StatusOr<v1::TaskSpec> JobManager::BuildTaskSpec(
    const v1::JobSpec& job, const JobPlan& plan, const TaskRow& task,
    int64_t job_id, const std::string& activations_digest,
    bool activations_held) {
  v1::TaskSpec spec;
  spec.set_kind(task.kind == kEmbedTask     ? v1::TASK_KIND_EMBED
                : task.kind == kForwardTask ? v1::TASK_KIND_FORWARD
                : task.kind == kHeadTask    ? v1::TASK_KIND_HEAD
                : task.kind == kCaptureTask ? v1::TASK_KIND_CAPTURE
                : task.kind == kSolveTask   ? v1::TASK_KIND_SOLVE
                                            : v1::TASK_KIND_BLOCK);
  if (task.kind == kHeadTask) {
    spec.mutable_tensor_types()->insert(plan.head_types.begin(),
                                        plan.head_types.end());
  }
  spec.set_layer(task.layer);
  ASSIGN_OR_RETURN(*spec.mutable_model_config_json(),
                   ReadFileToString(job.model_dir() + "/config.json"));
  *spec.mutable_recipe() = job.recipe();
  const bool solves = task.kind == kBlockTask || task.kind == kCaptureTask ||
                      task.kind == kSolveTask;
  if (solves && task.layer >= 0 &&
      task.layer < static_cast<int>(plan.linear_types.size())) {
    for (const std::string& type : plan.linear_types[task.layer]) {
      spec.add_gguf_types(type);
    }
  }
  spec.set_norm_dtype(plan.norm_dtype);
  // A shard's task computes the shard's sequences.
  spec.set_sequences(TaskSequences(plan, task).count);
  spec.set_seq_len(plan.seq_len);
  if (DataParallel(plan)) {
    spec.set_shards(static_cast<int32_t>(plan.calibration_shards));
    spec.set_shard(std::max(TaskShard(plan, task), 0));
    spec.set_stage(std::max(TaskStage(plan, task), 0));
  }
  ASSIGN_OR_RETURN(const int64_t held_hidden,
                   HeldHiddenSize(job, activations_held));
  ASSIGN_OR_RETURN(
      const std::unique_ptr<TaskInputs> inputs,
      TaskInputs::Open(job.model_dir(), plan.job_dir, plan, task, held_hidden));
  for (const v1::TensorInfo& info : inputs->infos()) {
    v1::TensorInfo* input = spec.add_inputs();
    *input = info;
    if (info.name() == kActivationsTensor) {
      input->set_digest(activations_digest);
    } else if (!IsJobTensor(info.name())) {
      input->set_digest(WeightDigest(job_id, info.name()));
    }
  }
  spec.set_model_dir(job.model_dir());
  for (const std::string& output : TaskOutputs(plan, task)) {
    spec.add_outputs(output);
  }
  return spec;
}

absl::StatusOr<v1::LeaseTaskResponse> JobManager::LeaseTask(
    const v1::LeaseTaskRequest& request,
    const std::function<bool()>& cancelled) {
  const int64_t wait_ms =
      std::clamp<int64_t>(request.wait_ms(), 0, options_.max_lease_wait_ms);
  const absl::Time deadline = absl::Now() + absl::Milliseconds(wait_ms);
  while (true) {
    const uint64_t version = scheduler_->version();
    ASSIGN_OR_RETURN(std::optional<Lease> lease,
                     scheduler_->TryLease(request.worker_id()));
    if (lease.has_value()) {
      v1::LeaseTaskResponse response;
      absl::StatusOr<v1::JobSpec> job = ParseSpec(lease->job);
      absl::StatusOr<v1::TaskSpec> spec =
          job.ok() ? BuildTaskSpec(*job, lease->plan, lease->task,
                                   lease->key.job_id, lease->activations_digest,
                                   lease->activations_held)
                   : job.status();
      if (!spec.ok()) {
        // The job's own inputs are broken (a model file gone, malformed):
        // a task fault. Anything else (I/O trouble) is the infrastructure's,
        // and the worker asks again later.
        const absl::StatusCode code = spec.status().code();
        const bool task_fault = code == absl::StatusCode::kNotFound ||
                                code == absl::StatusCode::kInvalidArgument ||
                                code == absl::StatusCode::kDataLoss;
        RETURN_IF_ERROR(scheduler_->Fail(lease->key, lease->epoch, task_fault,
                                         std::string(spec.status().message())));
        if (task_fault) continue;
        return absl::UnavailableError(
            absl::StrCat("cannot prepare a task: ", spec.status().message()));
      }
      if (cancelled()) {
        // The caller is gone: the lease would sit unused until it expired.
        RETURN_IF_ERROR(scheduler_->Fail(lease->key, lease->epoch, false,
                                         "the lease was not delivered"));
        return v1::LeaseTaskResponse();
      }
      v1::TaskRef* ref = response.mutable_task();
      ref->set_worker_id(request.worker_id());
      ref->set_job_id(JobIdString(lease->key.job_id));
      ref->set_task_index(lease->key.index);
      ref->set_epoch(lease->epoch);
      *response.mutable_spec() = std::move(*spec);
      response.set_lease_ms(lease->lease_ms);
      response.set_defer_activations(lease->defer_activations);
      Log(absl::StrCat("job ", lease->key.job_id, ": ", lease->task.kind,
                       " task ", lease->key.index, " leased to ",
                       request.worker_id(), " (epoch ", lease->epoch, ")"));
      return response;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration() || cancelled() || stopping_) {
      return v1::LeaseTaskResponse();
    }
    scheduler_->WaitForChange(version, std::min(left, absl::Milliseconds(250)));
  }
}

namespace {

absl::StatusOr<TaskKey> KeyOf(const v1::TaskRef& ref) {
  ASSIGN_OR_RETURN(const int64_t job_id, ParseJobId(ref.job_id()));
  return TaskKey{job_id, ref.task_index()};
}

}  // namespace

absl::StatusOr<v1::HeartbeatResponse> JobManager::Heartbeat(
    const v1::HeartbeatRequest& request) {
  ASSIGN_OR_RETURN(const TaskKey key, KeyOf(request.task()));
  v1::HeartbeatResponse response;
  absl::StatusOr<int64_t> left = scheduler_->Heartbeat(
      key, request.task().epoch(), request.task().worker_id());
  if (left.status().code() == absl::StatusCode::kCancelled) {
    response.set_cancel(true);
    return response;
  }
  RETURN_IF_ERROR(left.status());
  response.set_lease_ms(*left);
  return response;
}

absl::Status JobManager::FetchInputs(
    const v1::FetchInputsRequest& request,
    const std::function<bool(const v1::Chunk&)>& emit) {
  ASSIGN_OR_RETURN(const TaskKey key, KeyOf(request.task()));
  RETURN_IF_ERROR(scheduler_->CheckLease(key, request.task().epoch()));
  ASSIGN_OR_RETURN(const JobContext job, Context(key.job_id));
  const TaskRow& task = job.snapshot.tasks[key.index];
  const int32_t maker =
      ActivationsMaker(job.snapshot.plan, job.snapshot.tasks, task);
  ASSIGN_OR_RETURN(
      const int64_t held_hidden,
      HeldHiddenSize(job.spec,
                     maker >= 0 && !DeferredHolder(job.snapshot.tasks[maker],
                                                   kActivationsTensor)
                                        .empty()));
  ASSIGN_OR_RETURN(
      const std::unique_ptr<TaskInputs> inputs,
      TaskInputs::Open(job.spec.model_dir(), job.snapshot.plan.job_dir,
                       job.snapshot.plan, task, held_hidden));
  ServiceMetrics* metrics = options_.metrics;
  const std::set<std::string> skip(request.skip().begin(),
                                   request.skip().end());
  if (held_hidden > 0 && skip.count(kActivationsTensor) == 0) {
    // Their holder lost its copy (a restart, its disk): they are made again.
    RETURN_IF_ERROR(scheduler_->LoseDeferred(
        key.job_id, maker, "no longer has its activations, not uploaded"));
    return absl::UnavailableError(
        "the activations this task reads were lost before their upload; "
        "they are computed again");
  }
  return inputs->Stream(request.tensor(), request.offset(), skip,
                        static_cast<size_t>(options_.max_chunk_bytes), emit,
                        [metrics](size_t n) {
                          if (metrics != nullptr) {
                            metrics->AddBytesStreamed("to_worker", n);
                          }
                        });
}

absl::StatusOr<JobManager::ReceivedUpload> JobManager::Receive(
    const TaskKey& key, const JobPlan& plan, const TaskRow& task, int64_t epoch,
    std::vector<std::string> expected, std::set<std::string> optional,
    const v1::UploadResultRequest& header,
    const std::function<bool(v1::UploadResultRequest*)>& read) {
  const std::string dir = UploadDir(plan.job_dir, task.index, epoch);
  const auto fresh_dir = [&dir]() -> absl::Status {
    std::error_code error;
    fs::remove_all(dir, error);
    fs::create_directories(dir, error);
    if (error) return absl::InternalError(absl::StrCat("cannot create ", dir));
    return absl::OkStatus();
  };
  // No output is larger than the memory the task was planned to need (its
  // weights, activations and scratch), with room for headers; plans from
  // before that estimate have no bound.
  const int64_t planned = TaskMemoryBytes(plan, task);
  const uint64_t max_output_bytes =
      planned > 0 ? static_cast<uint64_t>(planned) + (uint64_t{64} << 20)
                  : std::numeric_limits<uint64_t>::max();
  const std::tuple<int64_t, int32_t, int64_t> upload_key{key.job_id, key.index,
                                                         epoch};
  ReceivedUpload upload;
  if (header.has_stripe()) {
    // The upload's first stream to arrive makes it; a newer attempt's
    // replaces an older one's, which fails.
    std::shared_ptr<StripedUpload> striped;
    {
      absl::MutexLock lock(&uploads_mu_);
      std::shared_ptr<StripedUpload>& slot = striped_[upload_key];
      if (slot == nullptr || !slot->SameUpload(header.stripe())) {
        if (slot != nullptr) {
          slot->Abort(absl::AbortedError("a newer upload of the task began"));
        }
        slot = nullptr;
        absl::Status made = fresh_dir();
        absl::StatusOr<std::shared_ptr<StripedUpload>> created =
            made.ok() ? StripedUpload::Create(dir, header.stripe(), expected,
                                              optional, max_output_bytes)
                      : made;
        if (!created.ok()) {
          striped_.erase(upload_key);
          return created.status();
        }
        slot = *std::move(created);
      }
      striped = slot;
    }
    bool last = false;
    const absl::Status received = striped->ReceiveStream(
        header.stripe().index(), read, &upload.bytes, &last);
    if (!received.ok() || last) {
      absl::MutexLock lock(&uploads_mu_);
      const auto it = striped_.find(upload_key);
      if (it != striped_.end() && it->second == striped) striped_.erase(it);
    }
    if (options_.metrics != nullptr) {
      options_.metrics->AddBytesStreamed("from_worker", upload.bytes);
    }
    RETURN_IF_ERROR(received);
    upload.complete = last;
    if (last) upload.outputs = striped->received();
    return upload;
  }
  {
    absl::MutexLock lock(&uploads_mu_);
    const auto it = striped_.find(upload_key);
    if (it != striped_.end()) {
      it->second->Abort(absl::AbortedError("a newer upload of the task began"));
      striped_.erase(it);
    }
  }
  RETURN_IF_ERROR(fresh_dir());
  UploadReceiver receiver(dir, std::move(expected), max_output_bytes,
                          std::move(optional));
  v1::UploadResultRequest message;
  absl::Status received = absl::OkStatus();
  while (received.ok() && read(&message)) {
    received =
        message.has_chunk()
            ? receiver.Accept(message.chunk())
            : absl::InvalidArgumentError("an upload sends its task once");
  }
  if (received.ok()) received = receiver.Finish();
  RETURN_IF_ERROR(received);
  if (options_.metrics != nullptr) {
    options_.metrics->AddBytesStreamed("from_worker", receiver.bytes());
  }
  upload.complete = true;
  upload.outputs = receiver.received();
  upload.bytes = receiver.bytes();
  return upload;
}

absl::StatusOr<v1::UploadResultResponse> JobManager::UploadResult(
    const std::function<bool(v1::UploadResultRequest*)>& read) {
  v1::UploadResultRequest message;
  if (!read(&message) || !message.has_task()) {
    return absl::InvalidArgumentError(
        "an upload starts with the task it belongs to");
  }
  const v1::TaskRef ref = message.task();
  if (message.deferred()) return UploadDeferred(message, read);
  ASSIGN_OR_RETURN(const TaskKey key, KeyOf(ref));
  RETURN_IF_ERROR(scheduler_->CheckLease(key, ref.epoch()));
  ASSIGN_OR_RETURN(const JobContext job, Context(key.job_id));
  const TaskRow& task = job.snapshot.tasks[key.index];
  const absl::StatusOr<ReceivedUpload> received =
      Receive(key, job.snapshot.plan, task, ref.epoch(),
              TaskOutputs(job.snapshot.plan, task),
              {kActivationsTensor},  // Those the commit may defer.
              message, read);
  if (received.status().code() == absl::StatusCode::kInvalidArgument) {
    // Outputs the task does not have: the task's (its worker's code's)
    // fault, not the network's.
    (void)scheduler_->Fail(key, ref.epoch(), true,
                           std::string(received.status().message()));
  }
  RETURN_IF_ERROR(received.status());
  if (received->complete) {
    absl::MutexLock lock(&uploads_mu_);
    uploads_[{key.job_id, key.index, ref.epoch()}] = received->outputs;
  }
  v1::UploadResultResponse response;
  response.set_bytes_received(received->bytes);
  return response;
}

absl::StatusOr<v1::UploadResultResponse> JobManager::UploadDeferred(
    const v1::UploadResultRequest& header,
    const std::function<bool(v1::UploadResultRequest*)>& read) {
  const v1::TaskRef& ref = header.task();
  ASSIGN_OR_RETURN(const TaskKey key, KeyOf(ref));
  ASSIGN_OR_RETURN(const JobContext job, Context(key.job_id));
  if (key.index < 0 ||
      key.index >= static_cast<int32_t>(job.snapshot.tasks.size())) {
    return absl::NotFoundError(absl::StrCat("no task ", key.index));
  }
  const JobPlan& plan = job.snapshot.plan;
  const TaskRow task = job.snapshot.tasks[key.index];
  if (job.snapshot.job.state != JobState::kRunning) {
    // Assembled, failed or cancelled: its tasks' files are not wanted (a
    // resumed job computes again what it lacks).
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", key.job_id, " is ", JobStateName(job.snapshot.job.state)));
  }
  if (task.state != TaskState::kDone || task.epoch != ref.epoch()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task ", key.index, " is not done under lease ", ref.epoch()));
  }
  std::vector<std::string> held;
  for (const std::string& name : TaskOutputs(plan, task)) {
    if (!DeferredHolder(task, name).empty()) held.push_back(name);
  }
  if (held.empty()) {
    // Uploaded already (a lost reply), or forgotten: nothing is wanted.
    return v1::UploadResultResponse();
  }
  ASSIGN_OR_RETURN(
      const ReceivedUpload received,
      Receive(key, plan, task, ref.epoch(), held, {}, header, read));
  v1::UploadResultResponse response;
  response.set_bytes_received(received.bytes);
  if (!received.complete) return response;  // Another stream commits it.
  ASSIGN_OR_RETURN(const ModelSpec model,
                   LoadModelConfig(job.spec.model_dir()));
  for (const auto& [name, file] : received.outputs) {
    RETURN_IF_ERROR(CommitDeferredOutput(plan.job_dir, plan, task,
                                         model.hidden_size,
                                         job.spec.model_dir(), name, file));
    RETURN_IF_ERROR(
        scheduler_->MarkDurable(key, ref.epoch(), name, HexOf(file.digest)));
  }
  std::error_code error;
  fs::remove_all(UploadDir(plan.job_dir, task.index, ref.epoch()), error);
  ASSIGN_OR_RETURN(const JobSnapshot after, scheduler_->GetJob(key.job_id));
  DropConsumedInputs(plan.job_dir, plan, after.tasks);
  Log(absl::StrFormat("job %d: %s task %d's deferred outputs uploaded",
                      key.job_id, task.kind, key.index));
  return response;
}

absl::Status JobManager::CompleteTask(const v1::CompleteTaskRequest& request) {
  const v1::TaskRef& ref = request.task();
  ASSIGN_OR_RETURN(const TaskKey key, KeyOf(ref));
  ASSIGN_OR_RETURN(const JobContext job, Context(key.job_id));
  if (key.index < 0 ||
      key.index >= static_cast<int32_t>(job.snapshot.tasks.size())) {
    return absl::NotFoundError(absl::StrCat("no task ", key.index));
  }
  const TaskRow task = job.snapshot.tasks[key.index];
  // A retry of a commit that happened (its reply was lost): done once, and
  // the worker hears so again.
  if (task.state == TaskState::kDone && task.epoch == ref.epoch()) {
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(const ModelSpec model,
                   LoadModelConfig(job.spec.model_dir()));
  ASSIGN_OR_RETURN(const QuantizeModelOptions options,
                   OptionsFromRecipe(job.spec.recipe()));
  // The verified upload: remembered, or found on disk by a coordinator that
  // restarted after it.
  std::map<std::string, DeferredOutput> deferred;
  for (const v1::DeferredOutput& output : request.deferred()) {
    deferred[output.name()] = {output.digest(), output.size_bytes()};
  }
  std::map<std::string, UploadReceiver::Received> received;
  {
    absl::MutexLock lock(&uploads_mu_);
    auto it = uploads_.find({key.job_id, key.index, ref.epoch()});
    if (it != uploads_.end()) received = it->second;
  }
  if (received.empty()) {
    absl::StatusOr<std::map<std::string, UploadReceiver::Received>> found =
        ReadUploads(
            UploadDir(job.snapshot.plan.job_dir, key.index, ref.epoch()),
            UploadedOutputs(job.snapshot.plan, task, deferred));
    // Nothing uploaded under this lease: the worker uploads again.
    if (!found.ok()) return absl::AbortedError(found.status().message());
    received = *std::move(found);
  }
  const std::string backend = BoundedText(request.backend(), kMaxNameBytes);
  const std::string kernel = BoundedText(request.kernel(), kMaxNameBytes);
  const absl::Status completed = scheduler_->Complete(
      key, ref.epoch(), ref.worker_id(), request.seconds(), backend, kernel,
      [&] {
        return CommitTaskOutputs(job.snapshot.plan.job_dir, job.snapshot.plan,
                                 task, model.hidden_size, job.spec.model_dir(),
                                 received, deferred, ref.worker_id());
      });
  if (completed.code() == absl::StatusCode::kInvalidArgument) {
    // The outputs themselves are wrong: the task's fault, within its budget.
    (void)scheduler_->Fail(key, ref.epoch(), true,
                           std::string(completed.message()));
  }
  RETURN_IF_ERROR(completed);
  {
    absl::MutexLock lock(&uploads_mu_);
    const auto same_task = [&key](const auto& entry) {
      return std::get<0>(entry.first) == key.job_id &&
             std::get<1>(entry.first) == key.index;
    };
    for (auto it = uploads_.begin(); it != uploads_.end();) {
      it = same_task(*it) ? uploads_.erase(it) : std::next(it);
    }
    // Striped uploads of older leases that never ended (their worker
    // died): their files go with their last stream.
    for (auto it = striped_.begin(); it != striped_.end();) {
      if (!same_task(*it)) {
        ++it;
        continue;
      }
      it->second->Abort(absl::AbortedError("the task is committed"));
      it = striped_.erase(it);
    }
  }
  DropUploads(job.snapshot.plan.job_dir,
              key.index);  // Every lease's, old ones too.
  ASSIGN_OR_RETURN(const JobSnapshot after, scheduler_->GetJob(key.job_id));
  DropConsumedInputs(job.snapshot.plan.job_dir, job.snapshot.plan, after.tasks);
  if (options_.metrics != nullptr) {
    options_.metrics->TaskCompleted(task.kind);
    options_.metrics->ObserveTaskDuration(QuantMethodName(options.method),
                                          backend.empty() ? "cpu" : backend,
                                          request.seconds());
    if ((task.kind == kBlockTask || task.kind == kSolveTask) &&
        AssembledOutput(job.snapshot.plan, task, kResultTensor)) {
      RecordBlockMetrics(job.snapshot, task, request);
    }
  }
  Log(absl::StrFormat("job %d: %s task %d done in %.1f s", key.job_id,
                      task.kind, key.index, request.seconds()));
  return absl::OkStatus();
}

void JobManager::RecordBlockMetrics(const JobSnapshot& job, const TaskRow& task,
                                    const v1::CompleteTaskRequest& request) {
  const std::string id = JobIdString(job.job.id);
  options_.metrics->SetBlockSeconds(id, task.layer, request.seconds());
  // The errors from the committed result's report (its metadata alone).
  absl::StatusOr<nlohmann::json> report =
      LoadBlockReport(BlockResultPath(job.plan.job_dir, task.layer));
  if (!report.ok() || !report->contains("linears")) return;
  for (const nlohmann::json& linear : (*report)["linears"]) {
    const nlohmann::json& error =
        linear.value("relative_output_error", nlohmann::json());
    if (!linear.value("kept_fp", std::string()).empty() || !error.is_number()) {
      continue;
    }
    options_.metrics->SetBlockError(id, task.layer,
                                    linear.value("name", std::string()),
                                    error.get<double>());
  }
}

absl::Status JobManager::FailTask(const v1::FailTaskRequest& request) {
  const v1::TaskRef& ref = request.task();
  ASSIGN_OR_RETURN(const TaskKey key, KeyOf(ref));
  // Stored and shown to users: bounded and well-formed, whatever was sent.
  const std::string error = BoundedText(request.error(), kMaxErrorBytes);
  RETURN_IF_ERROR(
      scheduler_->Fail(key, ref.epoch(), request.task_fault(), error));
  Log(absl::StrCat("job ", key.job_id, ": task ", key.index, " failed (",
                   request.task_fault() ? "task" : "worker",
                   " fault): ", error));
  return absl::OkStatus();
}

void JobManager::TickLoop() {
  int64_t last_cleanup_ms = -1;
  while (!stopping_) {
    const int expired = scheduler_->ExpireLeases();
    if (expired > 0) Log(absl::StrCat(expired, " lease(s) expired"));
    for (int64_t id : scheduler_->LoseAbsentHolders()) {
      Log(absl::StrCat("job ", id,
                       ": a worker left holding activations not uploaded; "
                       "what still needs them is computed again"));
      absl::StatusOr<JobSnapshot> job = scheduler_->GetJob(id);
      if (job.ok()) {
        DropConsumedInputs(job->plan.job_dir, job->plan, job->tasks);
      }
    }
    RefreshMetrics();
    CheckDiskSpace();
    const int64_t now = clock_->MonotonicMs();
    if (last_cleanup_ms < 0 || now - last_cleanup_ms >= 60'000) {
      last_cleanup_ms = now;
      RemoveExpiredJobDirs();
    }
    const absl::Time until = absl::Now() + absl::Milliseconds(options_.tick_ms);
    while (!stopping_ && absl::Now() < until) {
      absl::SleepFor(
          absl::Milliseconds(std::min<int64_t>(options_.tick_ms, 50)));
    }
  }
}

void JobManager::AssembleLoop() {
  std::map<int64_t, std::thread> threads;
  const auto join_finished = [&] {
    for (auto it = threads.begin(); it != threads.end();) {
      bool running;
      {
        absl::MutexLock lock(&assembly_mu_);
        running = assembling_.count(it->first) != 0;
      }
      if (running) {
        ++it;
        continue;
      }
      it->second.join();
      it = threads.erase(it);
    }
  };
  while (!stopping_) {
    const uint64_t version = scheduler_->version();
    join_finished();
    for (int64_t id : scheduler_->JobsToAssemble()) {
      if (threads.count(id) != 0) continue;
      {
        absl::MutexLock lock(&assembly_mu_);
        assembling_.insert(id);
      }
      threads.emplace(id, std::thread([this, id] {
                        AssembleOne(id);
                        absl::MutexLock lock(&assembly_mu_);
                        assembling_.erase(id);
                      }));
    }
    scheduler_->WaitForChange(version, absl::Milliseconds(200));
  }
  // Shutdown: each assembly stops before its next block.
  for (auto& [id, thread] : threads) thread.join();
}

void JobManager::AssembleOne(int64_t id) {
  absl::StatusOr<JobContext> job = Context(id);
  if (job.ok() && !Assembled(job->spec, job->snapshot.plan.job_dir)) {
    // What was committed is what gets assembled: files damaged or gone
    // since their commit are computed again first.
    const std::vector<TaskToRedo> redo =
        TasksToRedo(job->snapshot.plan, job->snapshot.tasks);
    if (!redo.empty()) {
      std::vector<int32_t> indices;
      for (const TaskToRedo& task : redo) {
        indices.push_back(task.index);
        Log(absl::StrCat("job ", id, ": task ", task.index,
                         " runs again: ", task.reason));
      }
      const absl::Status reopened = scheduler_->Reopen(
          id, indices,
          absl::StrCat("committed output damaged: ", redo.front().reason));
      if (!reopened.ok()) {
        Log(absl::StrCat("job ", id, ": ", reopened.ToString()));
      }
      return;
    }
  }
  absl::StatusOr<std::string> report =
      job.ok() ? AssembleJob(
                     job->spec, job->snapshot.plan.job_dir,
                     job->snapshot.job.create_ms,
                     [this, id](const std::string& line) {
                       Log(absl::StrCat("job ", id, ": ", line));
                     },
                     [this] { return stopping_.load(); })
               : job.status();
  if (!report.ok() && stopping_ &&
      report.status().code() == absl::StatusCode::kCancelled) {
    Log(absl::StrCat("job ", id,
                     ": assembly stopped for the shutdown; the "
                     "next start assembles it again"));
    return;
  }
  if (report.ok()) {
    // Killed with the output in place, before the store says so.
    if (Failpoint("coordinator.kill_after_final_rename")) raise(SIGKILL);
    const absl::Status marked = scheduler_->MarkSucceeded(id);
    Log(absl::StrCat("job ", id, ": ",
                     marked.ok() ? "succeeded" : marked.ToString()));
    // The per-task files served their purpose: the output is written.
    std::error_code error;
    if (marked.ok()) fs::remove_all(job->snapshot.plan.job_dir, error);
  } else {
    Log(absl::StrCat("job ", id,
                     ": assembly failed: ", report.status().ToString()));
    (void)scheduler_->MarkFailed(
        id, absl::StrCat("assembly: ", report.status().message()));
  }
  if (options_.metrics != nullptr) {
    options_.metrics->RemoveJobProgress(JobIdString(id));
  }
}

void JobManager::CheckDiskSpace() {
  struct statvfs fs_stat;
  if (::statvfs(options_.state_dir.c_str(), &fs_stat) != 0) return;
  const int64_t free_bytes =
      static_cast<int64_t>(fs_stat.f_bavail) * fs_stat.f_frsize;
  const std::string verdict =
      free_bytes >= options_.min_free_disk_bytes
          ? ""
          : absl::StrFormat(
                "the coordinator's disk is full: %d MiB free in %s, below "
                "--min_free_disk_mb=%d; no task starts until space returns",
                free_bytes >> 20, options_.state_dir,
                options_.min_free_disk_bytes >> 20);
  if (verdict == disk_full_) return;
  Log(verdict.empty() ? "disk space is back: tasks start again" : verdict);
  disk_full_ = verdict;
  scheduler_->PauseLeasing(verdict);
}

void JobManager::RemoveExpiredJobDirs() {
  absl::StatusOr<std::vector<JobRow>> jobs = store_->ListJobs();
  if (!jobs.ok()) return;
  const int64_t now = clock_->NowMs();
  for (const JobRow& row : *jobs) {
    if (row.state != JobState::kFailed && row.state != JobState::kCancelled) {
      continue;
    }
    if (now - row.update_ms < options_.keep_failed_jobs_ms) continue;
    absl::StatusOr<JobPlan> plan = JobPlan::FromJson(row.plan);
    std::error_code error;
    if (!plan.ok() || !fs::exists(plan->job_dir, error)) continue;
    fs::remove_all(plan->job_dir, error);
    Log(absl::StrCat(
        "job ", row.id, ": ", JobStateName(row.state), " for ",
        (now - row.update_ms) / 3'600'000,
        " h; its committed files are removed",
        error ? absl::StrCat(" (incompletely: ", error.message(), ")") : ""));
  }
}

// How long a succeeded job's progress stays at 1 in the metrics.
constexpr int64_t kFinishedProgressMs = 15 * 60 * 1000;

void JobManager::RefreshMetrics() {
  ServiceMetrics* metrics = options_.metrics;
  if (metrics == nullptr) return;
  absl::StatusOr<std::vector<JobRow>> jobs = store_->ListJobs();
  if (jobs.ok()) {
    std::map<std::string, int> by_state;
    for (JobState s :
         {JobState::kQueued, JobState::kRunning, JobState::kSucceeded,
          JobState::kFailed, JobState::kCancelled}) {
      by_state[JobStateName(s)] = 0;
    }
    for (const JobRow& row : *jobs) {
      ++by_state[JobStateName(row.state)];
      if (IsFinal(row.state)) {
        // A job that succeeded shows 100% for a while (dashboards see it
        // end); then, as every other final job, its series goes.
        const std::string id = JobIdString(row.id);
        if (row.state == JobState::kSucceeded &&
            clock_->NowMs() - row.update_ms < kFinishedProgressMs) {
          metrics->SetJobProgress(id, 1.0);
        } else {
          metrics->RemoveJobProgress(id);
          metrics->RemoveJobBlocks(id);
        }
        metrics->SetJobEta(id, std::nullopt);
        metrics->SetJobWaiting(id, "");
        continue;
      }
      absl::StatusOr<JobContext> job = Context(row.id);
      if (!job.ok() || job->snapshot.tasks.empty()) continue;
      const v1::Job message = JobMessage(*job, false);
      const std::string id = JobIdString(row.id);
      metrics->SetJobProgress(
          id,
          message.tasks_done() / static_cast<double>(message.tasks_total()));
      metrics->SetJobWaiting(id, job->snapshot.waiting.code);
      metrics->SetJobEta(id, message.eta_seconds() >= 0
                                 ? std::optional<double>(message.eta_seconds())
                                 : std::nullopt);
    }
    for (const auto& [state, count] : by_state) metrics->SetJobs(state, count);
  }
  metrics->SetQueueDepth(scheduler_->ReadyTasks());
  std::map<std::string, int> workers = {{"cpu", 0}, {"cuda", 0}};
  for (const WorkerInfo& w : scheduler_->ListWorkers()) {
    ++workers[BackendName(w.capabilities.backend())];
  }
  for (const auto& [backend, count] : workers) {
    metrics->SetActiveWorkers(backend, count);
  }
}

}  // namespace quant
