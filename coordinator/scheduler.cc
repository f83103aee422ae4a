#include "coordinator/scheduler.h"

#include <algorithm>
#include <chrono>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "proto/task_tensors.h"

namespace quant {
namespace {

std::string KeyName(const TaskKey& key) {
  return absl::StrCat(key.job_id, "/", key.index);
}

}  // namespace

int64_t SystemClock::NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

int64_t SystemClock::MonotonicMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Scheduler::Scheduler(JobStore* store, Clock* clock, SchedulerOptions options,
                     SchedulerEvents events)
    : store_(store),
      clock_(clock),
      options_(options),
      events_(std::move(events)),
      run_id_(std::random_device{}()),
      started_monotonic_ms_(clock->MonotonicMs()) {}

absl::Status Scheduler::Recover() {
  ASSIGN_OR_RETURN(const std::vector<JobRow> jobs, store_->ListJobs());
  absl::MutexLock lock(&mu_);
  const int64_t now = clock_->NowMs();
  const int64_t monotonic = clock_->MonotonicMs();
  for (const JobRow& job : jobs) {
    if (IsFinal(job.state)) continue;
    ActiveJob active;
    active.job = job;
    absl::StatusOr<JobPlan> plan = JobPlan::FromJson(job.plan);
    absl::StatusOr<std::vector<TaskRow>> tasks = store_->GetTasks(job.id);
    if (!plan.ok() || !tasks.ok()) {
      // One damaged job must not keep the others from running.
      const absl::Status why = plan.ok() ? tasks.status() : plan.status();
      RETURN_IF_ERROR(store_->UpdateJobState(
          job.id, JobState::kFailed,
          absl::StrCat("cannot recover: ", why.message()), now));
      continue;
    }
    active.plan = *std::move(plan);
    active.tasks = *std::move(tasks);
    // Leases held across the restart get a full lease from now: their
    // workers could not heartbeat while the coordinator was down (and the
    // stored deadlines are on the last process's monotonic clock).
    for (TaskRow& task : active.tasks) {
      if (task.state == TaskState::kLeased) {
        task.lease_deadline_ms = monotonic + options_.lease_ms;
      }
    }
    jobs_[job.id] = std::move(active);
  }
  Changed();
  return absl::OkStatus();
}

absl::StatusOr<int64_t> Scheduler::AddJob(const JobRow& job,
                                          const JobPlan& plan,
                                          const std::vector<TaskRow>& tasks) {
  absl::MutexLock lock(&mu_);
  JobRow row = job;
  row.plan = plan.ToJson();
  const int64_t now = clock_->NowMs();
  ASSIGN_OR_RETURN(const int64_t id, store_->CreateJob(row, tasks, now));
  ActiveJob active;
  ASSIGN_OR_RETURN(active.job, store_->GetJob(id));
  active.plan = plan;
  ASSIGN_OR_RETURN(active.tasks, store_->GetTasks(id));
  jobs_[id] = std::move(active);
  Changed();
  return id;
}

std::string Scheduler::RegisterWorker(const std::string& name,
                                      const v1::Capabilities& capabilities) {
  absl::MutexLock lock(&mu_);
  WorkerInfo worker;
  worker.id = absl::StrFormat("w-%08x-%d", run_id_, next_worker_++);
  worker.name = name;
  worker.capabilities = capabilities;
  worker.last_seen_ms = clock_->NowMs();
  worker.last_seen_monotonic_ms = clock_->MonotonicMs();
  const std::string id = worker.id;
  workers_[id] = std::move(worker);
  Changed();
  return id;
}

std::vector<WorkerInfo> Scheduler::ListWorkers() {
  absl::MutexLock lock(&mu_);
  const int64_t now = clock_->MonotonicMs();
  std::vector<WorkerInfo> out;
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (now - it->second.last_seen_monotonic_ms > options_.worker_timeout_ms) {
      it = workers_.erase(it);
      continue;
    }
    out.push_back(it->second);
    ++it;
  }
  return out;
}

bool Scheduler::Ready(const ActiveJob& job, const TaskRow& task) const {
  if (task.state != TaskState::kPending) return false;
  for (int32_t dep : task.deps) {
    if (dep < 0 || dep >= static_cast<int32_t>(job.tasks.size()) ||
        job.tasks[dep].state != TaskState::kDone) {
      return false;
    }
  }
  return true;
}

bool Scheduler::HasGpuWorker(int64_t now) const {
  for (const auto& [id, worker] : workers_) {
    if (worker.capabilities.backend() == v1::BACKEND_CUDA &&
        now - worker.last_seen_monotonic_ms <= options_.worker_timeout_ms) {
      return true;
    }
  }
  return false;
}

namespace {

// The tasks that run a block (whole, or a data-parallel job's captures,
// solves and forwards) go to GPU workers while any is registered.
bool IsGpuTask(const TaskRow& task) {
  return task.kind == kForwardTask || task.kind == kBlockTask ||
         task.kind == kCaptureTask || task.kind == kSolveTask;
}

}  // namespace

bool Scheduler::Fits(const WorkerInfo& worker, const ActiveJob& job,
                     const TaskRow& task, bool gpu_pool) const {
  const v1::Capabilities& caps = worker.capabilities;
  if (gpu_pool && IsGpuTask(task) && caps.backend() != v1::BACKEND_CUDA) {
    return false;
  }
  return caps.memory_bytes() <= 0 ||
         caps.memory_bytes() >= TaskMemoryBytes(job.plan, task);
}

WaitReason Scheduler::Waiting(const ActiveJob& job) const {
  if (job.job.state != JobState::kQueued &&
      job.job.state != JobState::kRunning) {
    return {};
  }
  if (!paused_.empty()) {
    for (const TaskRow& task : job.tasks) {
      if (Ready(job, task)) return {kWaitDisk, paused_};
    }
    return {};
  }
  const int64_t now = clock_->MonotonicMs();
  const bool gpu_pool = HasGpuWorker(now);
  std::vector<const WorkerInfo*> alive;
  for (const auto& [id, worker] : workers_) {
    if (now - worker.last_seen_monotonic_ms <= options_.worker_timeout_ms) {
      alive.push_back(&worker);
    }
  }
  const TaskRow* first_ready = nullptr;
  int ready = 0;
  for (const TaskRow& task : job.tasks) {
    if (!Ready(job, task)) continue;
    ++ready;
    if (first_ready == nullptr) first_ready = &task;
    for (const WorkerInfo* worker : alive) {
      if (Fits(*worker, job, task, gpu_pool)) return {};
    }
  }
  if (first_ready == nullptr) return {};  // Tasks running or done.
  if (alive.empty()) {
    return {kWaitNoWorker,
            absl::StrCat(ready, " task(s) ready and no worker registered")};
  }
  // Every live worker is too small (or, for a GPU task while GPU workers
  // are registered, not a GPU worker).
  const TaskRow& task = *first_ready;
  const bool gpu_task = IsGpuTask(task);
  int64_t largest = 0;
  for (const WorkerInfo* worker : alive) {
    if (gpu_pool && gpu_task &&
        worker->capabilities.backend() != v1::BACKEND_CUDA) {
      continue;
    }
    largest = std::max(largest, worker->capabilities.memory_bytes());
  }
  auto gib = [](int64_t bytes) {
    return absl::StrFormat("%.1f GiB", bytes / double{1 << 30});
  };
  return {kWaitMemory,
          absl::StrCat(task.kind, " task ", task.index, " (layer ", task.layer,
                       ") needs ", gib(TaskMemoryBytes(job.plan, task)),
                       "; the largest ", gpu_pool && gpu_task ? "GPU " : "",
                       "worker has ", gib(largest))};
}

absl::Status Scheduler::Commit(
    ActiveJob& job, const std::vector<TaskRow>& tasks,
    std::optional<std::pair<JobState, std::string>> state) {
  const int64_t now = clock_->NowMs();
  RETURN_IF_ERROR(store_->Transaction([&]() -> absl::Status {
    for (const TaskRow& task : tasks) RETURN_IF_ERROR(store_->UpdateTask(task));
    if (state.has_value()) {
      RETURN_IF_ERROR(
          store_->UpdateJobState(job.job.id, state->first, state->second, now));
    }
    return absl::OkStatus();
  }));
  for (const TaskRow& task : tasks) job.tasks[task.index] = task;
  if (state.has_value()) {
    job.job.state = state->first;
    job.job.error = state->second;
    job.job.update_ms = now;
  }
  Changed();
  return absl::OkStatus();
}

void Scheduler::Changed() { ++version_; }

absl::StatusOr<std::optional<Lease>> Scheduler::TryLease(
    const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  auto w = workers_.find(worker_id);
  if (w == workers_.end()) {
    return absl::NotFoundError(
        absl::StrCat("unknown worker ", worker_id, "; register again"));
  }
  WorkerInfo& worker = w->second;
  const int64_t now = clock_->MonotonicMs();
  worker.last_seen_ms = clock_->NowMs();
  worker.last_seen_monotonic_ms = now;
  if (!paused_.empty()) return std::nullopt;
  const bool gpu_pool = HasGpuWorker(now);
  // Oldest job first; within a job, task order (the sequential order).
  for (auto& [id, job] : jobs_) {
    if (job.job.state != JobState::kQueued &&
        job.job.state != JobState::kRunning) {
      continue;
    }
    for (TaskRow& candidate : job.tasks) {
      if (!Ready(job, candidate) || !Fits(worker, job, candidate, gpu_pool) ||
          HeldForMaker(job, candidate, worker_id, now, gpu_pool)) {
        continue;
      }
      TaskRow task = candidate;
      task.state = TaskState::kLeased;
      task.epoch += 1;
      task.worker_id = worker_id;
      task.lease_deadline_ms = now + options_.lease_ms;
      std::optional<std::pair<JobState, std::string>> state;
      if (job.job.state == JobState::kQueued) {
        state.emplace(JobState::kRunning, "");
      }
      RETURN_IF_ERROR(Commit(job, {task}, state));
      worker.task = KeyName({id, task.index});
      Lease lease;
      lease.key = {id, task.index};
      lease.epoch = task.epoch;
      lease.lease_ms = options_.lease_ms;
      lease.job = job.job;
      lease.plan = job.plan;
      lease.task = task;
      const int32_t maker = ActivationsMaker(job.plan, job.tasks, task);
      if (maker >= 0) {
        lease.activations_digest =
            CommittedDigest(job.tasks[maker], kActivationsTensor);
        lease.activations_held =
            !DeferredHolder(job.tasks[maker], kActivationsTensor).empty();
      }
      lease.defer_activations =
          options_.affinity_ms > 0 && options_.defer_activations;
      return std::optional<Lease>(std::move(lease));
    }
  }
  return std::optional<Lease>();
}

namespace {

// A done task back to pending, its commit forgotten, with `reason` and one
// more infrastructure fault (its committed files are gone or damaged).
TaskRow ComputedAgain(const TaskRow& done, const std::string& reason) {
  TaskRow task = done;
  task.state = TaskState::kPending;
  task.worker_id = "";
  task.lease_deadline_ms = 0;
  task.outputs = "";
  task.seconds = 0;
  task.backend = "";
  task.kernel = "";
  task.error = reason;
  ++task.infra_faults;
  return task;
}

}  // namespace

bool Scheduler::HeldForMaker(const ActiveJob& job, const TaskRow& task,
                             const std::string& worker_id, int64_t now,
                             bool gpu_pool) const {
  const int32_t maker = ActivationsMaker(job.plan, job.tasks, task);
  if (maker < 0) return false;
  const std::string holder =
      DeferredHolder(job.tasks[maker], kActivationsTensor);
  if (!holder.empty()) return holder != worker_id;
  if (options_.affinity_ms <= 0) return false;
  const auto made = job.made_by.find(maker);
  if (made == job.made_by.end()) return false;
  const auto& [maker_id, done_ms] = made->second;
  if (maker_id == worker_id || now - done_ms >= options_.affinity_ms) {
    return false;
  }
  const auto w = workers_.find(maker_id);
  return w != workers_.end() && w->second.task.empty() &&
         now - w->second.last_seen_monotonic_ms < options_.worker_timeout_ms &&
         Fits(w->second, job, task, gpu_pool);
}

absl::StatusOr<TaskRow*> Scheduler::FindTask(const TaskKey& key) {
  auto it = jobs_.find(key.job_id);
  if (it == jobs_.end()) {
    // Final (or unknown): whatever lease the caller holds is void.
    return absl::FailedPreconditionError(
        absl::StrCat("job ", key.job_id, " is not active"));
  }
  if (key.index < 0 ||
      key.index >= static_cast<int32_t>(it->second.tasks.size())) {
    return absl::NotFoundError(
        absl::StrCat("job ", key.job_id, " has no task ", key.index));
  }
  return &it->second.tasks[key.index];
}

absl::StatusOr<TaskRow*> Scheduler::LiveLease(const TaskKey& key,
                                              int64_t epoch) {
  ASSIGN_OR_RETURN(TaskRow * task, FindTask(key));
  if (task->state != TaskState::kLeased || task->epoch != epoch) {
    return absl::FailedPreconditionError(
        absl::StrCat("stale lease on task ", KeyName(key), ": epoch ", epoch,
                     ", the task is ", TaskStateName(task->state), " at epoch ",
                     task->epoch));
  }
  return task;
}

absl::Status Scheduler::CheckLease(const TaskKey& key, int64_t epoch) {
  absl::MutexLock lock(&mu_);
  return LiveLease(key, epoch).status();
}

absl::StatusOr<int64_t> Scheduler::Heartbeat(const TaskKey& key, int64_t epoch,
                                             const std::string& worker_id) {
  absl::MutexLock lock(&mu_);
  const int64_t now = clock_->MonotonicMs();
  auto w = workers_.find(worker_id);
  if (w != workers_.end()) {
    w->second.last_seen_ms = clock_->NowMs();
    w->second.last_seen_monotonic_ms = now;
  }
  if (jobs_.count(key.job_id) == 0) {
    // Ended (cancelled, failed): the holder stops.
    absl::StatusOr<JobRow> row = store_->GetJob(key.job_id);
    if (row.ok() && IsFinal(row->state)) {
      return absl::CancelledError(
          absl::StrCat("job ", key.job_id, " is ", JobStateName(row->state)));
    }
  }
  ASSIGN_OR_RETURN(TaskRow * found, FindTask(key));
  if (found->state == TaskState::kDone && found->epoch == epoch) {
    return 0;  // The holder's own commit came first: nothing to extend.
  }
  ASSIGN_OR_RETURN(TaskRow * live, LiveLease(key, epoch));
  // Busy only while the lease lives: a beat that was in flight when the
  // task committed must not hide the idle maker from its affinity.
  if (w != workers_.end()) w->second.task = KeyName(key);
  ActiveJob& job = jobs_[key.job_id];
  TaskRow task = *live;
  task.worker_id = worker_id;
  task.lease_deadline_ms = now + options_.lease_ms;
  RETURN_IF_ERROR(Commit(job, {task}, std::nullopt));
  return options_.lease_ms;
}

absl::Status Scheduler::Complete(
    const TaskKey& key, int64_t epoch, const std::string& worker_id,
    double seconds, const std::string& backend, const std::string& kernel,
    const std::function<absl::StatusOr<std::string>()>& commit_outputs) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(TaskRow * found, FindTask(key));
  if (found->state == TaskState::kDone && found->epoch == epoch) {
    return absl::OkStatus();  // Committed by this lease already.
  }
  ASSIGN_OR_RETURN(TaskRow * live, LiveLease(key, epoch));
  ActiveJob& job = jobs_[key.job_id];
  if (job.job.state != JobState::kRunning) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", key.job_id, " is ", JobStateName(job.job.state)));
  }
  ASSIGN_OR_RETURN(const std::string outputs_json, commit_outputs());
  TaskRow task = *live;
  task.state = TaskState::kDone;
  task.worker_id = "";
  task.lease_deadline_ms = 0;
  task.error = "";
  task.seconds = seconds;
  task.backend = backend;
  task.kernel = kernel;
  task.outputs = outputs_json;
  RETURN_IF_ERROR(Commit(job, {task}, std::nullopt));
  job.made_by[task.index] = {worker_id, clock_->MonotonicMs()};
  auto w = workers_.find(worker_id);
  if (w != workers_.end()) {
    w->second.task.clear();
    ++w->second.tasks_done;
    w->second.last_seen_ms = clock_->NowMs();
    w->second.last_seen_monotonic_ms = clock_->MonotonicMs();
  }
  return absl::OkStatus();
}

absl::Status Scheduler::Fail(const TaskKey& key, int64_t epoch, bool task_fault,
                             const std::string& error) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(TaskRow * live, LiveLease(key, epoch));
  ActiveJob& job = jobs_[key.job_id];
  for (auto& [id, worker] : workers_) {
    if (worker.id == live->worker_id) worker.task.clear();
  }
  TaskRow task = *live;
  task.worker_id = "";
  task.lease_deadline_ms = 0;
  task.error = error;
  std::optional<std::pair<JobState, std::string>> state;
  if (task_fault) {
    ++task.task_faults;
  } else {
    ++task.infra_faults;
  }
  const bool exhausted = task_fault
                             ? task.task_faults >= options_.max_task_faults
                             : task.infra_faults > options_.max_infra_faults;
  if (exhausted && !IsFinal(job.job.state)) {
    task.state = TaskState::kFailed;
    state.emplace(
        JobState::kFailed,
        absl::StrCat(task.kind, " task ", task.index,
                     task.layer >= 0 ? absl::StrCat(" (block ", task.layer, ")")
                                     : std::string(),
                     " failed ",
                     task_fault ? task.task_faults : task.infra_faults,
                     " times; last error: ", error));
  } else {
    task.state = TaskState::kPending;
  }
  RETURN_IF_ERROR(Commit(job, {task}, state));
  if (state.has_value()) jobs_.erase(key.job_id);  // Now final.
  if (events_.task_failed) events_.task_failed(task, task_fault);
  if (!exhausted && events_.task_retried) events_.task_retried(task);
  return absl::OkStatus();
}

int Scheduler::ExpireLeases() {
  absl::MutexLock lock(&mu_);
  const int64_t now = clock_->MonotonicMs();
  int expired = 0;
  std::vector<int64_t> finished;
  for (auto& [id, job] : jobs_) {
    std::vector<TaskRow> changed;
    std::optional<std::pair<JobState, std::string>> state;
    for (const TaskRow& live : job.tasks) {
      if (live.state != TaskState::kLeased || live.lease_deadline_ms > now) {
        continue;
      }
      TaskRow task = live;
      ++task.infra_faults;
      task.error = absl::StrCat("lease of worker ", live.worker_id, " expired");
      task.worker_id = "";
      task.lease_deadline_ms = 0;
      task.state = TaskState::kPending;
      if (task.infra_faults > options_.max_infra_faults &&
          (job.job.state == JobState::kRunning ||
           job.job.state == JobState::kQueued)) {
        task.state = TaskState::kFailed;
        state.emplace(JobState::kFailed,
                      absl::StrCat(task.kind, " task ", task.index, " lost ",
                                   task.infra_faults, " workers"));
      }
      changed.push_back(std::move(task));
    }
    if (changed.empty()) continue;
    if (!Commit(job, changed, state).ok()) continue;  // Retried next time.
    if (state.has_value()) finished.push_back(id);
    for (const TaskRow& task : changed) {
      ++expired;
      for (auto& [wid, worker] : workers_) {
        if (worker.task == KeyName({id, task.index})) worker.task.clear();
      }
      if (events_.task_released) events_.task_released(task);
    }
  }
  for (int64_t id : finished) jobs_.erase(id);
  return expired;
}

absl::Status Scheduler::MarkDurable(const TaskKey& key, int64_t epoch,
                                    const std::string& name,
                                    const std::string& digest) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(TaskRow * found, FindTask(key));
  if (found->state != TaskState::kDone || found->epoch != epoch) {
    return absl::FailedPreconditionError(absl::StrCat(
        "task ", key.index, " is not done under lease ", epoch, " any more"));
  }
  nlohmann::json outputs = nlohmann::json::parse(found->outputs, nullptr,
                                                 /*allow_exceptions=*/false);
  if (!outputs.is_object() || !outputs.contains(name) ||
      !outputs[name].is_object()) {
    return absl::FailedPreconditionError(
        absl::StrCat("task ", key.index, " committed no ", name));
  }
  const std::string committed = CommittedDigest(*found, name);
  if (committed != digest) {
    return absl::InvalidArgumentError(
        absl::StrCat("uploaded ", name, " of task ", key.index,
                     " is not what was committed (digest ", digest, ", not ",
                     committed, ")"));
  }
  if (!outputs[name].contains("held_by")) return absl::OkStatus();
  outputs[name].erase("held_by");
  TaskRow task = *found;
  task.outputs = outputs.dump();
  return Commit(jobs_[key.job_id], {task}, std::nullopt);
}

std::vector<int64_t> Scheduler::LoseAbsentHolders() {
  absl::MutexLock lock(&mu_);
  const int64_t now = clock_->MonotonicMs();
  std::vector<int64_t> changed_jobs, finished;
  // After a restart the holders are the earlier coordinator's workers: they
  // reconnect (gRPC's own backoff takes seconds) and upload under ids this
  // coordinator never sees alive, so they get a grace of their own.
  constexpr int64_t kHolderGraceAfterStartMs = 60'000;
  if (now - started_monotonic_ms_ <=
      std::max(options_.worker_timeout_ms, kHolderGraceAfterStartMs)) {
    return changed_jobs;
  }
  const auto alive = [&](const std::string& id) {
    const auto w = workers_.find(id);
    return w != workers_.end() &&
           now - w->second.last_seen_monotonic_ms <= options_.worker_timeout_ms;
  };
  for (auto& [id, job] : jobs_) {
    if (job.job.state != JobState::kRunning) continue;
    std::vector<int32_t> lost;
    for (const TaskRow& maker : job.tasks) {
      const std::string holder = DeferredHolder(maker, kActivationsTensor);
      if (!holder.empty() && !alive(holder)) lost.push_back(maker.index);
    }
    if (lost.empty()) continue;
    absl::StatusOr<bool> failed = LoseDeferredLocked(
        job, lost, "left holding its activations, not uploaded");
    if (!failed.ok()) continue;  // Retried next time.
    changed_jobs.push_back(id);
    if (*failed) finished.push_back(id);
  }
  for (int64_t id : finished) jobs_.erase(id);
  return changed_jobs;
}

absl::Status Scheduler::LoseDeferred(int64_t job_id, int32_t maker,
                                     const std::string& why) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.job.state != JobState::kRunning ||
      maker < 0 || maker >= static_cast<int32_t>(it->second.tasks.size()) ||
      DeferredHolder(it->second.tasks[maker], kActivationsTensor).empty()) {
    return absl::OkStatus();  // Nothing held any more.
  }
  ASSIGN_OR_RETURN(const bool failed,
                   LoseDeferredLocked(it->second, {maker}, why));
  if (failed) jobs_.erase(it);
  return absl::OkStatus();
}

absl::StatusOr<bool> Scheduler::LoseDeferredLocked(
    ActiveJob& job, const std::vector<int32_t>& makers,
    const std::string& why) {
  std::vector<TaskRow> changed;
  std::optional<std::pair<JobState, std::string>> state;
  for (int32_t index : makers) {
    const TaskRow& maker = job.tasks[index];
    const std::string holder = DeferredHolder(maker, kActivationsTensor);
    const bool still_read = std::any_of(
        job.tasks.begin(), job.tasks.end(), [&](const TaskRow& reader) {
          return reader.state != TaskState::kDone &&
                 ActivationsMaker(job.plan, job.tasks, reader) == index;
        });
    TaskRow task = maker;
    if (still_read) {
      // Computed again (its inputs were kept for this), within the task's
      // budget of infrastructure faults.
      task = ComputedAgain(maker, absl::StrCat("worker ", holder, " ", why));
      if (task.infra_faults > options_.max_infra_faults) {
        state.emplace(JobState::kFailed,
                      absl::StrCat(task.kind, " task ", task.index, " lost ",
                                   task.infra_faults, " workers"));
      }
    } else {
      nlohmann::json outputs = nlohmann::json::parse(task.outputs);
      outputs[kActivationsTensor].erase("held_by");
      task.outputs = outputs.dump();
    }
    changed.push_back(std::move(task));
  }
  RETURN_IF_ERROR(Commit(job, changed, state));
  return state.has_value();
}

absl::Status Scheduler::Cancel(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    ASSIGN_OR_RETURN(const JobRow row, store_->GetJob(job_id));
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is already ", JobStateName(row.state)));
  }
  ActiveJob& job = it->second;
  if (IsFinal(job.job.state)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job ", job_id, " is already ", JobStateName(job.job.state)));
  }
  // Leases held are left to run out: the holders learn of the
  // cancellation from their next heartbeat.
  RETURN_IF_ERROR(
      Commit(job, {}, std::make_pair(JobState::kCancelled, "cancelled")));
  jobs_.erase(it);
  return absl::OkStatus();
}

absl::Status Scheduler::Resume(int64_t job_id) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end()) {
    ActiveJob active;
    ASSIGN_OR_RETURN(active.job, store_->GetJob(job_id));
    ASSIGN_OR_RETURN(active.plan, JobPlan::FromJson(active.job.plan));
    ASSIGN_OR_RETURN(active.tasks, store_->GetTasks(job_id));
    it = jobs_.emplace(job_id, std::move(active)).first;
  }
  ActiveJob& job = it->second;
  if (job.job.state != JobState::kFailed &&
      job.job.state != JobState::kCancelled) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is ", JobStateName(job.job.state),
                     "; only failed or cancelled jobs resume"));
  }
  std::vector<TaskRow> reset;
  for (const TaskRow& live : job.tasks) {
    if (live.state == TaskState::kDone) continue;
    TaskRow task = live;
    // A lease still out is fenced off by the epoch raised at its next grant.
    task.state = TaskState::kPending;
    task.worker_id = "";
    task.lease_deadline_ms = 0;
    task.task_faults = 0;
    task.infra_faults = 0;
    reset.push_back(std::move(task));
  }
  // With every task done (the assembly failed, or the job was cancelled
  // at its end), the job goes straight back to assembly.
  return Commit(
      job, reset,
      std::make_pair(reset.empty() ? JobState::kRunning : JobState::kQueued,
                     ""));
}

absl::Status Scheduler::MarkSucceeded(int64_t job_id) {
  return Finish(job_id, JobState::kSucceeded, "");
}

absl::Status Scheduler::MarkFailed(int64_t job_id, const std::string& error) {
  return Finish(job_id, JobState::kFailed, error);
}

absl::Status Scheduler::Finish(int64_t job_id, JobState state,
                               const std::string& error) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  // Only a running job ends here: a cancel that came first stands.
  if (it == jobs_.end() || it->second.job.state != JobState::kRunning) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is no longer running"));
  }
  RETURN_IF_ERROR(Commit(it->second, {}, std::make_pair(state, error)));
  jobs_.erase(it);
  return absl::OkStatus();
}

absl::Status Scheduler::Reopen(int64_t job_id,
                               const std::vector<int32_t>& indices,
                               const std::string& reason) {
  absl::MutexLock lock(&mu_);
  auto it = jobs_.find(job_id);
  if (it == jobs_.end() || it->second.job.state != JobState::kRunning) {
    return absl::FailedPreconditionError(
        absl::StrCat("job ", job_id, " is no longer running"));
  }
  ActiveJob& job = it->second;
  std::vector<TaskRow> reset;
  bool exhausted = false;
  for (int32_t index : indices) {
    if (index < 0 || index >= static_cast<int32_t>(job.tasks.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("job ", job_id, " has no task ", index));
    }
    if (job.tasks[index].state != TaskState::kDone) continue;
    TaskRow task = ComputedAgain(job.tasks[index], reason);
    exhausted |= task.infra_faults > options_.max_infra_faults;
    reset.push_back(std::move(task));
  }
  if (exhausted) {
    RETURN_IF_ERROR(Commit(
        job, reset,
        std::make_pair(JobState::kFailed,
                       absl::StrCat("committed outputs damaged again and "
                                    "again: ",
                                    reason))));
    jobs_.erase(it);
    return absl::OkStatus();
  }
  return Commit(job, reset, std::nullopt);
}

void Scheduler::PauseLeasing(const std::string& reason) {
  absl::MutexLock lock(&mu_);
  if (paused_ == reason) return;
  paused_ = reason;
  Changed();
}

std::vector<int64_t> Scheduler::JobsToAssemble() {
  absl::MutexLock lock(&mu_);
  std::vector<int64_t> out;
  for (const auto& [id, job] : jobs_) {
    if (job.job.state != JobState::kRunning) continue;
    bool all_done = true;
    for (const TaskRow& task : job.tasks) {
      all_done &= task.state == TaskState::kDone;
    }
    if (all_done) out.push_back(id);
  }
  return out;
}

std::vector<int64_t> Scheduler::ActiveJobs() {
  absl::MutexLock lock(&mu_);
  std::vector<int64_t> out;
  for (const auto& [id, job] : jobs_) {
    if (job.job.state == JobState::kQueued ||
        job.job.state == JobState::kRunning) {
      out.push_back(id);
    }
  }
  return out;
}

absl::StatusOr<JobSnapshot> Scheduler::GetJob(int64_t job_id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = jobs_.find(job_id);
    if (it != jobs_.end()) {
      return JobSnapshot{it->second.job, it->second.plan, it->second.tasks,
                         Waiting(it->second)};
    }
  }
  JobSnapshot snapshot;
  ASSIGN_OR_RETURN(snapshot.job, store_->GetJob(job_id));
  ASSIGN_OR_RETURN(snapshot.plan, JobPlan::FromJson(snapshot.job.plan));
  ASSIGN_OR_RETURN(snapshot.tasks, store_->GetTasks(job_id));
  return snapshot;
}

int Scheduler::ReadyTasks() {
  absl::MutexLock lock(&mu_);
  int ready = 0;
  for (const auto& [id, job] : jobs_) {
    if (job.job.state != JobState::kQueued &&
        job.job.state != JobState::kRunning) {
      continue;
    }
    for (const TaskRow& task : job.tasks) ready += Ready(job, task) ? 1 : 0;
  }
  return ready;
}

uint64_t Scheduler::version() {
  absl::MutexLock lock(&mu_);
  return version_;
}

void Scheduler::WaitForChange(uint64_t seen, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto moved = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return version_ != seen;
  };
  mu_.AwaitWithTimeout(absl::Condition(&moved), timeout);
}

}  // namespace quant
