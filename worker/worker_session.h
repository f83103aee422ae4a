// A worker's session with the coordinator (quant.v1.WorkerGateway): it
// registers, long-polls for a task, fetches the task's inputs into a local
// safetensors file (checking every chunk's CRC-32C and every tensor's
// digest, resuming a broken or corrupted stream where it stopped), runs it
// on the CPU engine (worker/task_runner.h), uploads the outputs in chunks and
// commits them, heartbeating with progress while the task is in hand.
//
// Faults: RunTask failing is the task's own fault (FailTask task_fault=true);
// trouble on the worker's side while fetching or uploading (disk full, a
// stream that keeps breaking) is not (task_fault=false). A heartbeat answered
// FAILED_PRECONDITION (the lease went to another worker) or with `cancel`
// abandons the task: nothing more is uploaded, committed or failed. The
// coordinator being away is waited out with jittered exponential backoff;
// NOT_FOUND for the worker id (the coordinator restarted and forgot its
// workers) makes the worker register again and carry on under its new id.
#ifndef WORKER_WORKER_SESSION_H_
#define WORKER_WORKER_SESSION_H_

#include <atomic>
#include <cstdint>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/auth.h"
#include "common/file.h"
#include "common/metrics.h"
#include "format/safetensors.h"
#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "kernels/cpu/compute_kernel.h"
#include "proto/quant/v1/worker_service.grpc.pb.h"
#include "quant/block_backend.h"
#include "worker/background_remover.h"
#include "worker/held_activations.h"
#include "worker/task_runner.h"

namespace quant {

struct WorkerOptions {
  // The coordinator's worker gateway, "host:port".
  std::string coordinator = "localhost:50051";
  // How to reach `coordinator` (TLS, certificate, token); quant-worker
  // makes its operator choose, tests and in-process workers need none.
  ClientAuthOptions auth = InsecureClientAuth();
  // When set, used instead of `coordinator` (e.g. an in-process channel).
  std::shared_ptr<grpc::Channel> channel;
  // For humans (host or pod name).
  std::string name;
  // Cores to compute with; 0: all. Reported as a capability; when > 0 the
  // engine's OpenMP thread count is set to it.
  int threads = 0;
  // Memory one task may use; 0: MemAvailable from /proc/meminfo.
  int64_t memory_bytes = 0;
  // Required. Each task works in its own subdirectory, removed afterwards.
  std::string scratch_dir;
  // Activations this worker made and committed, kept in scratch_dir/held
  // for the next block if it is leased here (worker/held_activations.h):
  // how many at most; 0 keeps none. The last is also kept in memory (the
  // next task's input activations, within its memory budget).
  int held_activations = 2;
  // Directories this worker sees at the same paths as the coordinator (a
  // shared read-only volume): a task whose model lies under one reads its
  // weights there, verified against the digest the coordinator recorded,
  // instead of fetching them.
  std::vector<std::string> shared_model_roots;
  // Longest LeaseTask long poll.
  int64_t lease_wait_ms = 5000;
  // Deadline of every unary call; streams get max(this, bytes / 10 MB/s).
  int64_t rpc_timeout_ms = 30000;
  // Retries wait a uniformly random time in [0, min(max, initial * 2^n)].
  int64_t backoff_initial_ms = 100;
  int64_t backoff_max_ms = 5000;
  // Attempts at fetching the inputs and at uploading the outputs before the
  // task is handed back (FailTask task_fault=false).
  int transfer_attempts = 5;
  // Uploads of at least striped_upload_bytes go up as this many streams
  // side by side (proto UploadStripe), in units of stripe_unit_bytes: one
  // stream is bound by one core at each end, 0.3-0.5 GB/s, and a 70B
  // block's activations are 8.6 GB. 1: every upload in one stream.
  int upload_streams = 4;
  uint64_t striped_upload_bytes = uint64_t{256} << 20;
  uint64_t stripe_unit_bytes = uint64_t{16} << 20;
  // Where block and forward tasks compute; null: the CPU engine. Registered
  // as the worker's backend, with its device and that device's memory.
  std::shared_ptr<BlockBackend> backend;
  ServiceMetrics* metrics = nullptr;  // Optional; not owned.
  // Progress and trouble, one line per call; null: silent.
  std::function<void(const std::string&)> log;
};

class WorkerSession {
 public:
  // InvalidArgument without a scratch_dir or with a non-positive timeout;
  // the scratch directory is created if needed. Does not connect yet.
  static absl::StatusOr<std::unique_ptr<WorkerSession>> Create(
      WorkerOptions options);

  WorkerSession(const WorkerSession&) = delete;
  WorkerSession& operator=(const WorkerSession&) = delete;
  ~WorkerSession();

  // Registers, then leases and runs tasks until Drain(). Returns OK once
  // drained (the task in hand, if any, finished first, and the activations
  // it committed deferred uploaded); an error only when
  // the coordinator refuses the worker for good (e.g. INVALID_ARGUMENT or
  // UNIMPLEMENTED on RegisterWorker / LeaseTask).
  absl::Status Run();

  // Stops leasing: a long poll or a backoff wait in progress ends at once,
  // the task in hand is finished and uploaded normally, then Run() returns.
  // Thread-safe; may be called before or during Run().
  void Drain();

  // Tasks committed with CompleteTask.
  int tasks_done() const { return tasks_done_.load(); }

 private:
  struct Task;
  class InputCursor;
  struct Registration {
    std::string worker_id;
    int64_t heartbeat_interval_ms = 0;
    int64_t lease_ms = 0;
    int64_t max_chunk_bytes = 0;
  };
  // kUploadAgain: the coordinator has no upload for the lease (it restarted
  // and lost it); the outputs go again.
  enum class Outcome { kDone, kFailed, kReleased, kUploadAgain };

  // Activations committed by their digest alone (the lease allowed it),
  // uploaded after the commit while the next task runs.
  struct DeferredUpload {
    v1::TaskRef ref;
    std::string name;
    std::string path;    // A link to the held file, removed after.
    std::string digest;  // Hex, as committed.
    int boundary = 0;    // The held file's key, unpinned after.
    int shard = 0;
    // Valid while the file is written from memory (HeldActivations::
    // PutWriting), linked at `path` once it is.
    std::shared_future<absl::Status> written;
  };

  explicit WorkerSession(WorkerOptions options);

  // Run() without the deferred uploads.
  absl::Status LeaseUntilDrained();
  // Uploads what Hold queued, until Run() ends and nothing is queued.
  void UploadDeferredLoop();
  void UploadDeferred(const DeferredUpload& upload);

  void Log(const std::string& line) const;
  bool draining() const;
  // Waits `delay`; false (early) when `idle` and Drain() was called.
  bool Sleep(absl::Duration delay, bool idle);
  absl::Duration Backoff(int attempt);
  grpc::ClientContext* NewContext(grpc::ClientContext* context,
                                  absl::Duration timeout) const;

  // One RegisterWorker call; on success the new registration replaces the
  // old one. With `idle`, Drain() cancels the call.
  absl::Status RegisterOnce(bool idle)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(register_call_mu_);
  // Registers until it succeeds; Cancelled once draining, or the first
  // permanent error.
  absl::Status RegisterUntilDrained();
  // Registers again unless someone already did since `stale_worker_id` was
  // read.
  absl::Status Reregister(const std::string& stale_worker_id);
  Registration registration() const;

  // Runs one leased task to its end (done, failed or released).
  void RunLeasedTask(const v1::LeaseTaskResponse& lease);
  // Sets task->local and task->skip: held activations of the digest the
  // spec names, and the weights from a shared model root when every one
  // matches its recorded digest.
  void FindLocalInputs(Task* task);
  // After `task` was committed: keeps the activations it output (for the
  // next block, if leased here; those in `deferred` pinned and queued for
  // upload; their values in memory, their file written from there if
  // `run` left it unwritten) and drops those it read from its hold.
  void Hold(const Task& task, TaskRunResult& run,
            const std::vector<v1::DeferredOutput>& deferred);
  void HeartbeatLoop(Task* task);
  // `task_fault` is set when the spec itself is malformed.
  absl::Status FetchInputs(Task* task, const std::string& path,
                           bool* task_fault);
  absl::Status FetchAttempt(Task* task, const std::string& worker_id,
                            InputCursor* cursor);
  absl::Status Upload(
      Task* task,
      const std::vector<std::pair<std::string, std::string>>& outputs,
      bool* local_fault);
  // Calls `rpc` (a unary call about the task, given the context and the
  // task's ref under the current registration) until it answers anything
  // but a transient error, registering again when the coordinator forgot
  // this worker; DeadlineExceeded once the lease would expire first.
  absl::Status CallAboutTask(
      Task* task, const std::function<grpc::Status(grpc::ClientContext*,
                                                   const v1::TaskRef&)>& rpc);
  // `deferred`: outputs of a task committed under task->ref's epoch.
  absl::Status UploadAttempt(
      Task* task, const std::string& worker_id,
      const std::vector<std::pair<std::string, std::string>>& outputs,
      bool* local_fault, bool deferred = false);
  // UploadAttempt as options_.upload_streams streams side by side, of
  // `total` bytes.
  absl::Status UploadStriped(
      Task* task, const std::string& worker_id,
      const std::vector<std::pair<std::string, std::string>>& outputs,
      bool* local_fault, bool deferred, uint64_t total);
  // The model tensors `tensors` in `model_dir` (the root this worker sees),
  // each checked against the shape and digest its spec names; `hashed`
  // and `known` count the bytes hashed here and those verified by an
  // earlier task in a file unchanged since (verified_).
  absl::StatusOr<std::shared_ptr<const SafetensorsCheckpoint>>
  VerifyModelTensors(const std::string& model_dir,
                     const std::vector<const v1::TensorInfo*>& tensors,
                     uint64_t* hashed, uint64_t* known);
  // CompleteTask / FailTask, retried until the lease would have expired.
  Outcome Complete(Task* task, double seconds, const ComputeKernel& kernel,
                   const std::vector<v1::DeferredOutput>& deferred);
  Outcome Fail(Task* task, bool task_fault, const std::string& error);

  const WorkerOptions options_;
  const int threads_;
  const int64_t memory_bytes_;
  // Before held_, which uses it.
  std::unique_ptr<BackgroundRemover> remover_;
  std::unique_ptr<HeldActivations> held_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerGateway::Stub> stub_;
  // Streams 1.. of a striped upload, each on a TCP connection of its own
  // (one connection is read by one thread on the coordinator); empty with
  // an injected channel: every stream on stub_.
  std::vector<std::unique_ptr<v1::WorkerGateway::Stub>> upload_stubs_;
  std::atomic<int> tasks_done_{0};

  mutable absl::Mutex mu_;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  // The idle call (Register / LeaseTask) Drain() cancels.
  grpc::ClientContext* idle_call_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
  std::deque<DeferredUpload> deferred_ ABSL_GUARDED_BY(mu_);
  bool leasing_done_ ABSL_GUARDED_BY(mu_) = false;

  // Model tensors verified against the digest a spec named, by model
  // directory, name and digest, with the version (StampOf: device,
  // inode, size, mtime) of the file holding each then: a data-parallel
  // job's captures and solves read one block's weights many times, and a
  // tensor in an unchanged file is not hashed again.
  absl::Mutex verified_mu_;
  std::map<std::string, FileStamp> verified_ ABSL_GUARDED_BY(verified_mu_);

  // Serializes RegisterWorker calls (the heartbeat thread and the task may
  // both find the worker forgotten); held across the call.
  absl::Mutex register_call_mu_;
  mutable absl::Mutex register_mu_;
  Registration registration_ ABSL_GUARDED_BY(register_mu_);
};

}  // namespace quant

#endif  // WORKER_WORKER_SESSION_H_
