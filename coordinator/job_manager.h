// The coordinator's work, behind its RPCs: submitting and watching jobs,
// and the worker side (leases, input streams, result uploads, commits).
// Every call returns an absl::Status; coordinator/service.h adapts them to
// gRPC one to one.
//
// Background threads expire leases, refresh the metrics, and assemble the
// output of jobs whose tasks are all done.
#ifndef COORDINATOR_JOB_MANAGER_H_
#define COORDINATOR_JOB_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/auth.h"
#include "common/metrics.h"
#include "coordinator/job_store.h"
#include "coordinator/scheduler.h"
#include "coordinator/striped_upload.h"
#include "coordinator/tensor_service.h"
#include "proto/quant/v1/quantization_service.pb.h"
#include "proto/quant/v1/worker_service.pb.h"

namespace quant {

struct JobManagerOptions {
  // The job store (jobs.db) and one directory per job (jobs/).
  std::string state_dir;
  // Paths a job may read (models, calibration and held-out texts) and
  // write (outputs): inside one of these directories.
  std::vector<std::string> model_roots;
  std::vector<std::string> output_roots;
  SchedulerOptions scheduler;
  int64_t max_chunk_bytes = 4 << 20;
  int64_t max_lease_wait_ms = 30'000;
  int64_t tick_ms = 500;  // Lease expiry and metrics refresh.
  // A failed or cancelled job keeps its committed files (for a resume) this
  // long after it ended; then they are removed and it cannot resume.
  int64_t keep_failed_jobs_ms = 7 * 24 * 3'600'000LL;
  // Below this much free space in state_dir no task is leased (uploads
  // and commits land there); jobs wait, saying so, until space returns.
  int64_t min_free_disk_bytes = 1LL << 30;
  // WatchJob streams at once (each holds a server thread).
  int max_watchers = 4096;
  Clock* clock = nullptr;  // nullptr: the system clock.
  ServiceMetrics* metrics = nullptr;
  std::function<void(const std::string&)> log;
};

class JobManager {
 public:
  // Opens the store, cleans what an interrupted run left in the job
  // directories, and continues every unfinished job from its committed
  // tasks.
  static absl::StatusOr<std::unique_ptr<JobManager>> Create(
      JobManagerOptions options);
  ~JobManager();  // Stops the background threads.

  // ---- The public API ----
  // INVALID_ARGUMENT names the field at fault. The job records `owner`.
  absl::StatusOr<v1::Job> SubmitJob(const v1::JobSpec& spec,
                                    const std::string& owner);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id, bool include_tasks);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(v1::JobState state);
  // Emits the job, then again on every change, until it is final (OK),
  // `emit` returns false or `cancelled` returns true (Cancelled).
  absl::Status WatchJob(const std::string& job_id,
                        const std::function<bool(const v1::JobEvent&)>& emit,
                        const std::function<bool()>& cancelled);
  // Only the job's owner or an admin may cancel or resume it
  // (PERMISSION_DENIED names the owner).
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id,
                                    const Principal& caller);
  absl::StatusOr<v1::Job> ResumeJob(const std::string& job_id,
                                    const Principal& caller);
  v1::ListWorkersResponse ListWorkers();

  // ---- The worker gateway ----
  absl::StatusOr<v1::RegisterWorkerResponse> RegisterWorker(
      const v1::RegisterWorkerRequest& request);
  absl::StatusOr<v1::LeaseTaskResponse> LeaseTask(
      const v1::LeaseTaskRequest& request,
      const std::function<bool()>& cancelled);
  absl::StatusOr<v1::HeartbeatResponse> Heartbeat(
      const v1::HeartbeatRequest& request);
  absl::Status FetchInputs(const v1::FetchInputsRequest& request,
                           const std::function<bool(const v1::Chunk&)>& emit);
  // `read` yields the stream's messages (false at its end).
  absl::StatusOr<v1::UploadResultResponse> UploadResult(
      const std::function<bool(v1::UploadResultRequest*)>& read);
  // What one upload stream brought: with `complete`, every output (the
  // upload in one stream, or the last stream of a striped one to end);
  // else its part of a striped upload.
  struct ReceivedUpload {
    bool complete = false;
    std::map<std::string, UploadReceiver::Received> outputs;
    uint64_t bytes = 0;
  };
  // Reads an upload of `expected` outputs of `task` (`optional` ones may
  // be missing) after its first message `header` into the upload directory
  // of lease `epoch` (made afresh by the upload's first stream) and
  // finishes it.
  absl::StatusOr<ReceivedUpload> Receive(
      const TaskKey& key, const JobPlan& plan, const TaskRow& task,
      int64_t epoch, std::vector<std::string> expected,
      std::set<std::string> optional, const v1::UploadResultRequest& header,
      const std::function<bool(v1::UploadResultRequest*)>& read);
  // The rest of UploadResult for outputs a commit deferred.
  absl::StatusOr<v1::UploadResultResponse> UploadDeferred(
      const v1::UploadResultRequest& header,
      const std::function<bool(v1::UploadResultRequest*)>& read);
  absl::Status CompleteTask(const v1::CompleteTaskRequest& request);
  absl::Status FailTask(const v1::FailTaskRequest& request);

  Scheduler& scheduler() { return *scheduler_; }

 private:
  explicit JobManager(JobManagerOptions options);
  struct JobContext {
    v1::JobSpec spec;
    JobSnapshot snapshot;
  };
  absl::StatusOr<JobContext> Context(int64_t job_id);
  // OK when `caller` owns job `id` or is an admin.
  absl::Status CheckOwner(int64_t id, const Principal& caller,
                          absl::string_view action);
  absl::StatusOr<v1::Job> JobMessage(int64_t job_id, bool include_tasks);
  v1::Job JobMessage(const JobContext& job, bool include_tasks);
  absl::StatusOr<v1::TaskSpec> BuildTaskSpec(
      const v1::JobSpec& job, const JobPlan& plan, const TaskRow& task,
      int64_t job_id, const std::string& activations_digest,
      bool activations_held);
  // The canonical absolute form of `path`, or InvalidArgument naming
  // `field` when it is not inside one of `roots`.
  absl::StatusOr<std::string> CanonicalPath(
      const std::string& field, const std::string& path,
      const std::vector<std::string>& roots) const;
  void Log(const std::string& line) const;
  void TickLoop();
  // Records the digest of every model tensor of each active job
  // (coordinator/weight_checksums.h), oldest job first, in task order, so
  // that workers reading the model root verify what they read.
  void HashLoop();
  // The recorded digest of job `job_id`'s model tensor `name`, or "".
  std::string WeightDigest(int64_t job_id, const std::string& name);
  // Starts an assembly thread for each job whose tasks are all done (one
  // job's assembly never waits for another's), and joins them when they end
  // or, on shutdown, once they stopped at their next block.
  void AssembleLoop();
  // Checks the committed files of job `id` (tasks whose files are damaged
  // go back to pending) and writes its output.
  void AssembleOne(int64_t id);
  // Removes the directories of jobs failed or cancelled longer ago than
  // options_.keep_failed_jobs_ms (their committed files, kept so far for a
  // resume).
  void RemoveExpiredJobDirs();
  // Pauses leasing while state_dir has less than min_free_disk_bytes free.
  void CheckDiskSpace();
  std::string disk_full_;  // The tick thread's last verdict ("" for fine).
  void RefreshMetrics();
  // quant_block_* of a committed block task.
  void RecordBlockMetrics(const JobSnapshot& job, const TaskRow& task,
                          const v1::CompleteTaskRequest& request);

  const JobManagerOptions options_;
  SystemClock system_clock_;
  Clock* clock_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Scheduler> scheduler_;

  absl::Mutex submit_mu_;  // One SubmitJob at a time (output uniqueness).
  int lock_fd_ = -1;       // flock on state_dir/LOCK: one coordinator.

  // Verified uploads waiting for CompleteTask, by (job, task, epoch).
  absl::Mutex uploads_mu_;
  std::map<std::tuple<int64_t, int32_t, int64_t>,
           std::map<std::string, UploadReceiver::Received>>
      uploads_ ABSL_GUARDED_BY(uploads_mu_);
  // Striped uploads being received, by (job, task, epoch): one at a time.
  std::map<std::tuple<int64_t, int32_t, int64_t>,
           std::shared_ptr<StripedUpload>>
      striped_ ABSL_GUARDED_BY(uploads_mu_);

  std::atomic<bool> stopping_{false};
  std::atomic<int> watchers_{0};
  std::thread tick_thread_;
  std::thread assemble_thread_;
  std::thread hash_thread_;
  absl::Mutex sums_mu_;
  // Job -> tensor -> digest (hex), as recorded; jobs fully hashed (or
  // whose hashing failed: their workers stream).
  std::map<int64_t, std::map<std::string, std::string>> sums_
      ABSL_GUARDED_BY(sums_mu_);
  std::set<int64_t> hashed_ ABSL_GUARDED_BY(sums_mu_);
  absl::Mutex assembly_mu_;
  std::set<int64_t> assembling_ ABSL_GUARDED_BY(assembly_mu_);
};

// "42" -> 42; InvalidArgument otherwise.
absl::StatusOr<int64_t> ParseJobId(const std::string& job_id);

}  // namespace quant

#endif  // COORDINATOR_JOB_MANAGER_H_
