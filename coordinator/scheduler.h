// The scheduler: hands tasks to workers under leases and keeps every
// decision in the job store before it is acknowledged.
//
// - A lease has a deadline and a fencing epoch (the task's epoch, raised
//   at every grant). Every worker call about a task carries the epoch; a
//   call with an older epoch (the lease expired and the task went elsewhere)
//   is refused with FailedPrecondition, so a slow worker can never
//   overwrite what its successor committed.
// - Heartbeats extend the lease. A lease past its deadline goes back to
//   pending (an infrastructure fault: the worker is gone).
// - Retry budgets are separate: infrastructure faults (worker lost or
//   draining) are retried up to max_infra_faults times; task faults (the
//   task itself failed) at most max_task_faults times, then the job fails.
// - Capability matching: a task goes only to a worker with the memory it
//   needs (an unknown memory size fits anything). Block and forward tasks
//   go to GPU workers while any is registered (CPU workers then take the
//   other kinds); a GPU worker takes any task (its CPU engine runs what its
//   device does not).
// - Affinity: a task reading activations goes first to the worker that made
//   them (it may hold them and skip their fetch), within affinity_ms.
//
// Leases, epochs and committed tasks are durable: a coordinator restarted
// on the same store continues every unfinished job where it stopped, and a
// worker that held a lease across the restart can still complete it.
//
// Thread-safe. Times come from a Clock (a fake one in tests).
#ifndef COORDINATOR_SCHEDULER_H_
#define COORDINATOR_SCHEDULER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "coordinator/job_store.h"
#include "coordinator/planner.h"
#include "proto/quant/v1/worker_service.pb.h"

namespace quant {

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the Unix epoch: the times jobs and events record.
  virtual int64_t NowMs() = 0;
  // Milliseconds on a clock that never steps (from an arbitrary start, per
  // process): leases and worker liveness, which a step of the wall clock
  // must not expire all at once.
  virtual int64_t MonotonicMs() = 0;
};

class SystemClock : public Clock {
 public:
  int64_t NowMs() override;
  int64_t MonotonicMs() override;
};

// For tests: time moves only when told; the wall clock may also step alone.
class FakeClock : public Clock {
 public:
  explicit FakeClock(int64_t now_ms = 1'000'000)
      : now_ms_(now_ms), monotonic_ms_(now_ms) {}
  int64_t NowMs() override { return now_ms_.load(); }
  int64_t MonotonicMs() override { return monotonic_ms_.load(); }
  void Advance(int64_t ms) {
    now_ms_ += ms;
    monotonic_ms_ += ms;
  }
  void StepWallClock(int64_t ms) { now_ms_ += ms; }

 private:
  std::atomic<int64_t> now_ms_;
  std::atomic<int64_t> monotonic_ms_;
};

struct SchedulerOptions {
  int64_t lease_ms = 60'000;
  int64_t heartbeat_interval_ms = 5'000;
  int max_task_faults = 3;
  int max_infra_faults = 20;
  // Workers not heard from for this long leave ListWorkers.
  int64_t worker_timeout_ms = 120'000;
  // Affinity: a task reading activations that another worker made (and may
  // hold, so need not fetch) waits this long after their commit for that
  // worker while it is alive and idle; 0: none.
  int64_t affinity_ms = 0;
  // With affinity: workers may commit the activations they make by their
  // digest and upload them after the commit (LeaseTaskResponse.
  // defer_activations).
  bool defer_activations = true;
};

struct WorkerInfo {
  std::string id;
  std::string name;
  v1::Capabilities capabilities;
  int64_t last_seen_ms = 0;            // Wall clock, for people.
  int64_t last_seen_monotonic_ms = 0;  // For the timeout.
  std::string task;                    // "job/index" while it holds a lease.
  int tasks_done = 0;
};

struct TaskKey {
  int64_t job_id = 0;
  int32_t index = 0;
};

struct Lease {
  TaskKey key;
  int64_t epoch = 0;
  int64_t lease_ms = 0;
  JobRow job;
  JobPlan plan;
  TaskRow task;
  // The content digest (hex) of the committed activations the task reads;
  // "" if none.
  std::string activations_digest;
  // Those activations are held by this worker, not uploaded yet.
  bool activations_held = false;
  // The task's own activations may be committed deferred (affinity is on).
  bool defer_activations = false;
};

// Why none of a job's ready tasks can go to any registered worker.
struct WaitReason {
  // kWaitNoWorker, kWaitMemory, or empty while some worker could take one.
  std::string code;
  std::string message;  // What is needed and what the workers have.
};
inline constexpr char kWaitNoWorker[] = "no_worker";
inline constexpr char kWaitMemory[] = "memory";
inline constexpr char kWaitDisk[] = "disk";

struct JobSnapshot {
  JobRow job;
  JobPlan plan;
  std::vector<TaskRow> tasks;
  WaitReason waiting;  // Active jobs only.
};

// What happened, for metrics.
struct SchedulerEvents {
  std::function<void(const TaskRow&)> task_released;  // Lease expired.
  std::function<void(const TaskRow&, bool task_fault)> task_failed;
  std::function<void(const TaskRow&)> task_retried;
};

class Scheduler {
 public:
  Scheduler(JobStore* store, Clock* clock, SchedulerOptions options,
            SchedulerEvents events = {});

  // Loads every job that is not final from the store (a job whose rows
  // are damaged is marked failed). Leases held get a full lease from now.
  absl::Status Recover();

  // Commits a new job (queued) and its tasks; returns its id.
  absl::StatusOr<int64_t> AddJob(const JobRow& job, const JobPlan& plan,
                                 const std::vector<TaskRow>& tasks);

  std::string RegisterWorker(const std::string& name,
                             const v1::Capabilities& capabilities);
  std::vector<WorkerInfo> ListWorkers();

  // A task ready for the worker (pending, its dependencies done, its job
  // neither final nor cancelled, fitting the worker), now leased to it; or
  // nullopt. NotFound for a worker the scheduler does not know (it must
  // register again).
  absl::StatusOr<std::optional<Lease>> TryLease(const std::string& worker_id);

  // Extends the lease; returns the time left on it, or Cancelled when the
  // job was cancelled or failed (the worker should stop).
  absl::StatusOr<int64_t> Heartbeat(const TaskKey& key, int64_t epoch,
                                    const std::string& worker_id);
  // OK while `epoch` holds the task's live lease.
  absl::Status CheckLease(const TaskKey& key, int64_t epoch);

  // Commits the task done: `commit_outputs` (which moves the uploaded
  // files into place and describes them) runs first, under the scheduler's
  // lock and only for the live lease, then the store commits the task with
  // what it returned as its outputs, and what computed it (backend, kernel).
  absl::Status Complete(
      const TaskKey& key, int64_t epoch, const std::string& worker_id,
      double seconds, const std::string& backend, const std::string& kernel,
      const std::function<absl::StatusOr<std::string>()>& commit_outputs);
  absl::Status Fail(const TaskKey& key, int64_t epoch, bool task_fault,
                    const std::string& error);

  // While `reason` is not empty no task is leased (workers are still seen
  // alive), and every job with a ready task waits with kWaitDisk and it.
  void PauseLeasing(const std::string& reason);

  // Leases past their deadline go back to pending; returns how many.
  int ExpireLeases();

  // The deferred output `name` of task `key` (done under `epoch`, committed
  // with digest `digest` hex) is now on the coordinator's disk: any worker
  // may read it. FailedPrecondition when the task was computed again since
  // (or never so), InvalidArgument for another digest.
  absl::Status MarkDurable(const TaskKey& key, int64_t epoch,
                           const std::string& name, const std::string& digest);
  // Deferred outputs whose worker is gone (not heard from within
  // worker_timeout_ms, and that long or a minute, whichever is longer,
  // since this scheduler started, so that a worker of an earlier
  // coordinator can reconnect and upload them): a task still
  // to read one makes its maker run again; one nothing reads any more is
  // forgotten. Returns the jobs changed.
  std::vector<int64_t> LoseAbsentHolders();
  // The same for the activations task `maker` committed deferred, which
  // their holder no longer has (`why`, for the task's record).
  absl::Status LoseDeferred(int64_t job_id, int32_t maker,
                            const std::string& why);

  absl::Status Cancel(int64_t job_id);
  // A failed or cancelled job back to queued, with fresh retry budgets for
  // the tasks that are not done.
  absl::Status Resume(int64_t job_id);
  // The end of a running job (after its assembly); FailedPrecondition
  // when it is no longer running (cancelled meanwhile).
  absl::Status MarkSucceeded(int64_t job_id);
  absl::Status MarkFailed(int64_t job_id, const std::string& error);

  // Done tasks of a running job back to pending (their committed files
  // were found damaged or gone): workers compute them again. Each counts as
  // an infrastructure fault of the task; past the budget the job fails
  // with `reason`.
  absl::Status Reopen(int64_t job_id, const std::vector<int32_t>& indices,
                      const std::string& reason);

  // Jobs that are running with every task done (the assembler's work).
  std::vector<int64_t> JobsToAssemble();
  // Jobs queued or running, oldest first.
  std::vector<int64_t> ActiveJobs();

  absl::StatusOr<JobSnapshot> GetJob(int64_t job_id);
  // Tasks ready for some worker now (the queue depth).
  int ReadyTasks();

  // A counter raised on every change; WaitForChange returns when it moves
  // past `seen` or after `timeout`.
  uint64_t version();
  void WaitForChange(uint64_t seen, absl::Duration timeout);

 private:
  struct ActiveJob {
    JobRow job;
    JobPlan plan;
    std::vector<TaskRow> tasks;
    // Task index -> the worker that committed it and when (monotonic), for
    // affinity; this process's commits only.
    std::map<int32_t, std::pair<std::string, int64_t>> made_by;
  };

  absl::StatusOr<TaskRow*> FindTask(const TaskKey& key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<TaskRow*> LiveLease(const TaskKey& key, int64_t epoch)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool Ready(const ActiveJob& job, const TaskRow& task) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `gpu_pool`: a GPU worker is registered and alive.
  bool Fits(const WorkerInfo& worker, const ActiveJob& job, const TaskRow& task,
            bool gpu_pool) const;
  bool HasGpuWorker(int64_t now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // True while `task` waits for another worker that made its input
  // activations: the one that holds them uncommitted to the coordinator's
  // disk (a deferred commit), or one alive, idle and able to take it
  // (SchedulerOptions::affinity_ms).
  bool HeldForMaker(const ActiveJob& job, const TaskRow& task,
                    const std::string& worker_id, int64_t now,
                    bool gpu_pool) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  WaitReason Waiting(const ActiveJob& job) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // LoseDeferred for `makers` of `job`, committed; true when the job
  // failed on it (its caller drops it from jobs_).
  absl::StatusOr<bool> LoseDeferredLocked(ActiveJob& job,
                                          const std::vector<int32_t>& makers,
                                          const std::string& why)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Writes `tasks` and the job's state in one transaction, then updates
  // memory (only after the commit succeeded).
  absl::Status Commit(ActiveJob& job, const std::vector<TaskRow>& tasks,
                      std::optional<std::pair<JobState, std::string>> state)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Changed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Finish(int64_t job_id, JobState state, const std::string& error);

  JobStore* const store_;
  Clock* const clock_;
  const SchedulerOptions options_;
  const SchedulerEvents events_;
  // In worker ids, so that ids differ across coordinator restarts and a
  // worker of an earlier run is never mistaken for a new one.
  const uint32_t run_id_;
  const int64_t started_monotonic_ms_;

  absl::Mutex mu_;
  std::map<int64_t, ActiveJob> jobs_ ABSL_GUARDED_BY(mu_);
  std::string paused_ ABSL_GUARDED_BY(mu_);  // Why leasing is paused.
  std::map<std::string, WorkerInfo> workers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_worker_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace quant

#endif  // COORDINATOR_SCHEDULER_H_
