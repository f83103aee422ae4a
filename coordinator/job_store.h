// The coordinator's durable state: jobs and their tasks (with leases,
// fencing epochs, retry counts and committed outputs) in SQLite, in WAL mode
// with synchronous=FULL, through one connection (the one writer). Every
// call returns only after its change is committed, so a state change the
// coordinator acknowledges survives a crash (kill -9) of the coordinator.
//
// The schema is versioned (PRAGMA user_version): Open creates it in an
// empty file, opens a file at the current version, and refuses a file of
// another version or one that is not a job store (FailedPrecondition /
// DataLoss naming the file).
//
// Thread-safe: while one thread runs a Transaction, other threads' calls
// wait for it to end.
#ifndef COORDINATOR_JOB_STORE_H_
#define COORDINATOR_JOB_STORE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

struct sqlite3;

namespace quant {

// The values are those of quant.v1.JobState / quant.v1.TaskState.
enum class JobState {
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5
};
enum class TaskState { kPending = 1, kLeased = 2, kDone = 3, kFailed = 4 };

// "queued", "running", ... / "pending", "leased", ...
const char* JobStateName(JobState state);
const char* TaskStateName(TaskState state);
bool IsFinal(JobState state);  // Succeeded, failed or cancelled.

struct JobRow {
  int64_t id = 0;    // Assigned by CreateJob (never reused).
  std::string spec;  // The serialized quant.v1.JobSpec, as submitted.
  std::string plan;  // The planner's output (JSON), fixed at submission.
  JobState state = JobState::kQueued;
  std::string error;      // Why it failed ("" otherwise).
  int64_t create_ms = 0;  // Milliseconds since the Unix epoch.
  int64_t update_ms = 0;
  // The principal that submitted it ("" before schema version 3).
  std::string owner;
};

struct TaskRow {
  int64_t job_id = 0;
  int32_t index = 0;          // 0, 1, ... within the job.
  std::string kind;           // "embed", "forward" or "block".
  int32_t layer = -1;         // Decoder block; -1 for none.
  std::vector<int32_t> deps;  // Tasks that must be done before this one.
  TaskState state = TaskState::kPending;
  int64_t epoch = 0;      // Fencing epoch of the latest lease; 0: never leased.
  std::string worker_id;  // The lease holder ("" unless leased).
  // When the lease expires, on the coordinator process's monotonic clock
  // (Clock::MonotonicMs): a restarted coordinator grants a new deadline.
  int64_t lease_deadline_ms = 0;
  int32_t task_faults = 0;   // Attempts that failed by the task's fault.
  int32_t infra_faults = 0;  // Attempts lost to workers (gone, draining).
  std::string error;         // The latest failure.
  double seconds = 0;        // Compute time of the committed attempt.
  // The committed outputs as JSON ({"name": {"path", "bytes", "digest"}});
  // "" until the task is done.
  std::string outputs;
  // What computed the committed attempt: backend ("cpu", "cuda") and kernel
  // class (kernels/cpu/compute_kernel.h); "" until the task is done.
  std::string backend, kernel;
};

class JobStore {
 public:
  // Creates the file (and its schema) when absent.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      const std::string& path);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // 2 added tasks.backend and tasks.kernel; a version 1 file is migrated
  // when opened.
  static constexpr int kSchemaVersion = 3;

  // Inserts the job (its id, state and times as given are ignored: it is
  // queued at `now_ms`) and its tasks in one transaction; returns its id.
  absl::StatusOr<int64_t> CreateJob(const JobRow& job,
                                    const std::vector<TaskRow>& tasks,
                                    int64_t now_ms);
  // NotFound names the job.
  absl::StatusOr<JobRow> GetJob(int64_t id);
  // By id, ascending; only jobs in `state` when given.
  absl::StatusOr<std::vector<JobRow>> ListJobs(
      std::optional<JobState> state = std::nullopt);
  // By index. NotFound for an unknown job.
  absl::StatusOr<std::vector<TaskRow>> GetTasks(int64_t job_id);

  // NotFound for an unknown job.
  absl::Status UpdateJobState(int64_t id, JobState state,
                              const std::string& error, int64_t now_ms);
  // Writes the task's mutable fields (state, epoch, worker_id,
  // lease_deadline_ms, faults, error, seconds, outputs). NotFound for an
  // unknown task.
  absl::Status UpdateTask(const TaskRow& task);

  // Runs `body` (which calls the methods above) as one transaction:
  // committed when it returns OK, rolled back otherwise. Not reentrant.
  absl::Status Transaction(const std::function<absl::Status()>& body);

  const std::string& path() const { return path_; }

 private:
  friend class JobStoreTestPeer;  // Reads the connection's pragmas.
  class CallScope;                // Locks mu_ unless in this thread's txn.

  JobStore(std::string path, sqlite3* db);

  // Creates the schema in a new file, or checks an existing one, and sets
  // the connection's pragmas.
  absl::Status Init();
  // Runs `sql` (no parameters, no rows wanted).
  absl::Status Exec(const char* sql, const char* op);
  absl::Status SqliteError(int rc, const std::string& op) const;
  // Whether the calling thread is inside Transaction's body.
  bool InTransaction() const;

  const std::string path_;
  sqlite3* const db_;
  // Held by a Transaction for its whole length and by every call made
  // outside one, so calls from other threads wait for a transaction to end.
  // Calls from the body's own thread (txn_owner_) run without taking it.
  absl::Mutex mu_;
  std::atomic<std::thread::id> txn_owner_{};
};

}  // namespace quant

#endif  // COORDINATOR_JOB_STORE_H_
