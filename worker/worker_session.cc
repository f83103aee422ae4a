#include "worker/worker_session.h"

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/checksum.h"
#include "common/chunk_stream.h"
#include "common/failpoint.h"
#include "common/file.h"
#include "common/grpc_options.h"
#include "common/grpc_status.h"
#include "common/parallel.h"
#include "common/status_macros.h"
#include "format/safetensors.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/task_tensors.h"
#include "quant/block_store.h"
#include "worker/task_runner.h"

namespace quant {
namespace {

// Defaults when the coordinator leaves a registration field at 0.
constexpr int64_t kDefaultHeartbeatMs = 10000;
constexpr int64_t kDefaultLeaseMs = 60000;
constexpr int64_t kDefaultChunkBytes = 4 << 20;
// Streams get at least this much time per byte.
constexpr double kStreamBytesPerSecond = 10e6;

// Fractions of the task that fetching and computing end at.
constexpr double kFetchEnd = 0.2;
constexpr double kComputeEnd = 0.8;

// Codes that say "the coordinator is away or busy; try again".
bool IsTransient(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kCancelled:
      return true;
    default:
      return false;
  }
}

int64_t DetectMemoryBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;
}

const char* KindName(v1::TaskKind kind) {
  switch (kind) {
    case v1::TASK_KIND_EMBED:
      return "embed";
    case v1::TASK_KIND_FORWARD:
      return "forward";
    case v1::TASK_KIND_BLOCK:
      return "block";
    case v1::TASK_KIND_HEAD:
      return "head";
    case v1::TASK_KIND_CAPTURE:
      return "capture";
    case v1::TASK_KIND_SOLVE:
      return "solve";
    default:
      return "unknown";
  }
}

const char* OutcomeName(int outcome) {
  static const char* const kNames[] = {"done", "failed", "released",
                                       "upload again"};
  return kNames[outcome];
}

// A directory name for a task: the job id with anything unusual replaced.
std::string TaskDirName(const v1::TaskRef& ref) {
  std::string job = ref.job_id();
  for (char& c : job) {
    const bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c >= '0' && c <= '9') || c == '-' || c == '_';
    if (!plain) c = '_';
  }
  if (job.empty()) job = "job";
  return absl::StrCat(job, "-", ref.task_index(), "-", ref.epoch());
}

// True when `path` is `root` or lies under it (both resolved, symbolic
// links included, as far as they exist).
bool IsWithinRoot(const std::string& path, const std::string& root) {
  namespace fs = std::filesystem;
  if (root.empty()) return false;
  std::error_code error;
  const fs::path p = fs::weakly_canonical(path, error);
  if (error) return false;
  const fs::path r = fs::weakly_canonical(root, error);
  if (error) return false;
  auto pi = p.begin();
  for (auto ri = r.begin(); ri != r.end(); ++ri, ++pi) {
    if (ri->empty()) continue;  // A trailing separator.
    if (pi == p.end() || *pi != *ri) return false;
  }
  return true;
}

// Checks each of `tensors` (as a task spec describes them, with their
// recorded digest) against the checkpoint in `model_dir`: dtype, shape,
// size and digest, hashed a window at a time. Returns the checkpoint,
// whose mapping the task then reads (what was verified is what is used),
// and adds the bytes verified to `bytes`; FailedPrecondition naming the
// first tensor that differs.
std::string RefName(const v1::TaskRef& ref) {
  return absl::StrCat(ref.job_id(), "/", ref.task_index(), " (epoch ",
                      ref.epoch(), ")");
}

absl::Duration StreamTimeout(int64_t rpc_timeout_ms, uint64_t bytes) {
  return std::max(
      absl::Milliseconds(rpc_timeout_ms),
      absl::Seconds(static_cast<double>(bytes) / kStreamBytesPerSecond));
}

}  // namespace

// One leased task. The main thread fetches, computes and uploads; the
// heartbeat thread reports progress and may abandon the task.
struct WorkerSession::Task {
  v1::TaskRef ref;  // worker_id: the registration's at each call.
  v1::TaskSpec spec;
  std::string kind;
  std::string dir;
  // Inputs read here instead of fetched, and the names not fetched.
  LocalInputs local;
  std::set<std::string> skip;
  // The input activations are this worker's own (in memory or a file).
  bool reads_held = false;
  // The digest (hex) each output was uploaded with.
  std::map<std::string, std::string> uploaded_digest;

  absl::Mutex mu;
  bool finished ABSL_GUARDED_BY(mu) = false;
  bool abandoned ABSL_GUARDED_BY(mu) = false;
  std::string stage ABSL_GUARDED_BY(mu) = "fetch";
  double fraction ABSL_GUARDED_BY(mu) = 0;
  absl::Time lease_expiry ABSL_GUARDED_BY(mu);
  // Calls in flight, cancelled when the task is abandoned or finished.
  std::set<grpc::ClientContext*> calls ABSL_GUARDED_BY(mu);

  bool IsAbandoned() {
    absl::MutexLock lock(&mu);
    return abandoned;
  }
  absl::Time LeaseExpiry() {
    absl::MutexLock lock(&mu);
    return lease_expiry;
  }
  void SetProgress(const char* new_stage, double new_fraction) {
    absl::MutexLock lock(&mu);
    stage = new_stage;
    fraction = std::min(1.0, std::max(0.0, new_fraction));
  }
  // True when this call abandoned it (false if it already was).
  bool Abandon() {
    absl::MutexLock lock(&mu);
    if (abandoned) return false;
    abandoned = true;
    for (grpc::ClientContext* context : calls) context->TryCancel();
    return true;
  }
  void Finish() {
    absl::MutexLock lock(&mu);
    finished = true;
    for (grpc::ClientContext* context : calls) context->TryCancel();
  }
  // The task's ref under `worker_id`.
  v1::TaskRef RefAs(const std::string& worker_id) const {
    v1::TaskRef copy = ref;
    copy.set_worker_id(worker_id);
    return copy;
  }

  // Registers a call so that abandoning or finishing the task cancels it.
  class Call {
   public:
    Call(Task* task, grpc::ClientContext* context)
        : task_(task), context_(context) {
      absl::MutexLock lock(&task_->mu);
      task_->calls.insert(context_);
      if (task_->abandoned || task_->finished) context_->TryCancel();
    }
    Call(const Call&) = delete;
    Call& operator=(const Call&) = delete;
    ~Call() {
      absl::MutexLock lock(&task_->mu);
      task_->calls.erase(context_);
    }

   private:
    Task* task_;
    grpc::ClientContext* context_;
  };
};

// Reading into the inputs file: where the fetch stands.
class WorkerSession::InputCursor {
 public:
  struct Expected {
    std::string name;
    uint64_t size = 0;
  };

  // `tensors`: the spec's inputs but those in `skip` (held locally).
  InputCursor(std::string path, std::vector<Expected> tensors,
              const v1::TaskSpec* spec, std::set<std::string> skip)
      : path_(std::move(path)),
        tensors_(std::move(tensors)),
        spec_(spec),
        skip_(std::move(skip)) {
    for (const Expected& t : tensors_) total_ += t.size;
  }

  // A fresh writer with every tensor declared; back to the first byte.
  // `task_fault` when the spec cannot be declared.
  absl::Status Reset(bool* task_fault) {
    writer_.reset();
    verifier_.reset();
    index_ = 0;
    received_ = 0;
    restart_ = false;
    ASSIGN_OR_RETURN(writer_, SafetensorsWriter::Create(path_));
    for (const v1::TensorInfo& info : spec_->inputs()) {
      if (skip_.count(info.name()) != 0) continue;
      ASSIGN_OR_RETURN(const SafetensorsDType dtype,
                       ParseSafetensorsDType(info.dtype()));
      std::vector<int64_t> shape(info.shape().begin(), info.shape().end());
      absl::Status added = writer_->AddTensor(info.name(), dtype, shape);
      if (!added.ok()) {
        *task_fault = true;
        return absl::InvalidArgumentError(absl::StrCat(
            "task spec input ", info.name(), ": ", added.message()));
      }
    }
    return absl::OkStatus();
  }

  // Checks and stores one chunk. DataLoss for what the stream got wrong;
  // any other error is the local disk's (local_failure()).
  absl::Status Accept(const v1::Chunk& chunk) {
    if (index_ >= tensors_.size()) {
      return absl::DataLossError(
          absl::StrCat("chunk of ", chunk.tensor(), " after the last input"));
    }
    const Expected& want = tensors_[index_];
    // Kept across resumed streams: a stream resuming in this tensor starts
    // at the verifier's offset.
    if (verifier_ == nullptr) {
      verifier_ = std::make_unique<ChunkVerifier>(want.name, want.size);
    }
    const uint64_t before = verifier_->offset();
    const absl::Status checked = verifier_->Accept(chunk);
    // The verifier counts a chunk's bytes before its last-chunk checks; the
    // file must hold exactly what it counted.
    const uint64_t taken = verifier_->offset() - before;
    if (taken > 0) {
      absl::Status written =
          writer_->WriteTensorData(want.name, chunk.data().data(), taken);
      if (!written.ok()) {
        local_failure_ = true;
        return written;
      }
      received_ += taken;
    }
    if (!checked.ok()) {
      // A last chunk that failed with every byte counted: the digest did
      // not match (the verifier is spent) and the bytes already written
      // cannot be taken back, so start over.
      if (chunk.last() && verifier_->offset() == want.size) restart_ = true;
      return checked;
    }
    if (verifier_->done()) {
      ++index_;
      verifier_.reset();
    }
    return absl::OkStatus();
  }

  absl::Status Finish() {
    absl::Status status = writer_->Finish();
    if (!status.ok()) local_failure_ = true;
    return status;
  }

  bool complete() const { return index_ == tensors_.size(); }
  bool at_start() const { return index_ == 0 && offset() == 0; }
  const std::string& tensor() const { return tensors_[index_].name; }
  // Where the stream stands in tensor(): the next chunk's offset.
  uint64_t offset() const {
    return verifier_ == nullptr ? 0 : verifier_->offset();
  }
  uint64_t received() const { return received_; }
  uint64_t total() const { return total_; }
  bool restart() const { return restart_; }
  bool local_failure() const { return local_failure_; }

 private:
  const std::string path_;
  const std::vector<Expected> tensors_;
  const v1::TaskSpec* spec_;
  const std::set<std::string> skip_;
  uint64_t total_ = 0;
  std::unique_ptr<SafetensorsWriter> writer_;
  // The tensor being received (index_), once its first chunk arrived.
  std::unique_ptr<ChunkVerifier> verifier_;
  size_t index_ = 0;
  uint64_t received_ = 0;
  bool restart_ = false;
  bool local_failure_ = false;
};

absl::StatusOr<std::unique_ptr<WorkerSession>> WorkerSession::Create(
    WorkerOptions options) {
  if (options.scratch_dir.empty()) {
    return absl::InvalidArgumentError("worker: scratch_dir is required");
  }
  if (options.rpc_timeout_ms <= 0 || options.lease_wait_ms < 0 ||
      options.backoff_initial_ms <= 0 ||
      options.backoff_max_ms < options.backoff_initial_ms ||
      options.transfer_attempts <= 0) {
    return absl::InvalidArgumentError(
        "worker: rpc_timeout_ms, backoff and transfer_attempts must be "
        "positive, lease_wait_ms not negative");
  }
  if (options.upload_streams < 1 || options.upload_streams > 64 ||
      options.stripe_unit_bytes < 4096 ||
      options.stripe_unit_bytes > (uint64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker: upload_streams is 1 to 64 (not ", options.upload_streams,
        ") and stripe_unit_bytes 4 KiB to 1 GiB (not ",
        options.stripe_unit_bytes, ")"));
  }
  std::error_code error;
  std::filesystem::create_directories(options.scratch_dir, error);
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker: cannot create scratch directory ",
                     options.scratch_dir, ": ", error.message()));
  }
  if (options.channel == nullptr && options.coordinator.empty()) {
    return absl::InvalidArgumentError(
        "worker: no coordinator address and no channel");
  }
  std::vector<std::shared_ptr<grpc::Channel>> upload_channels;
  if (options.channel == nullptr) {
    ASSIGN_OR_RETURN(options.channel,
                     DialCoordinator(options.coordinator, options.auth));
    for (int i = 1; i < options.upload_streams; ++i) {
      ASSIGN_OR_RETURN(upload_channels.emplace_back(),
                       DialCoordinator(options.coordinator, options.auth, i));
    }
  }
  // Task directories and dropped activations go there, removed off the
  // path from one task to the next.
  ASSIGN_OR_RETURN(std::unique_ptr<BackgroundRemover> remover,
                   BackgroundRemover::Create(options.scratch_dir + "/trash"));
  ASSIGN_OR_RETURN(
      std::unique_ptr<HeldActivations> held,
      HeldActivations::Create(options.scratch_dir + "/held",
                              options.held_activations, remover.get()));
  std::unique_ptr<WorkerSession> session(new WorkerSession(std::move(options)));
  session->remover_ = std::move(remover);
  session->held_ = std::move(held);
  for (const std::shared_ptr<grpc::Channel>& channel : upload_channels) {
    session->upload_stubs_.push_back(v1::WorkerGateway::NewStub(channel));
  }
  return session;
}

WorkerSession::WorkerSession(WorkerOptions options)
    : options_(std::move(options)),
      threads_(options_.threads > 0 ? options_.threads : HardwareThreads()),
      memory_bytes_(options_.memory_bytes > 0 ? options_.memory_bytes
                    : options_.backend != nullptr &&
                            options_.backend->device_memory_bytes() > 0
                        ? options_.backend->device_memory_bytes()
                        : DetectMemoryBytes()),
      rng_(std::random_device()()) {
  channel_ = options_.channel;
  stub_ = v1::WorkerGateway::NewStub(channel_);
}

WorkerSession::~WorkerSession() = default;

void WorkerSession::Log(const std::string& line) const {
  if (options_.log) options_.log(line);
}

bool WorkerSession::draining() const {
  absl::MutexLock lock(&mu_);
  return draining_;
}

void WorkerSession::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  if (idle_call_ != nullptr) idle_call_->TryCancel();
}

bool WorkerSession::Sleep(absl::Duration delay, bool idle) {
  if (!idle) {
    absl::SleepFor(delay);
    return true;
  }
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&draining_), delay);
  return !draining_;
}

absl::Duration WorkerSession::Backoff(int attempt) {
  const int shift = std::min(attempt, 30);
  const int64_t cap =
      std::min(options_.backoff_max_ms, options_.backoff_initial_ms << shift);
  absl::MutexLock lock(&mu_);
  std::uniform_int_distribution<int64_t> uniform(0, std::max<int64_t>(cap, 1));
  return absl::Milliseconds(uniform(rng_));
}

grpc::ClientContext* WorkerSession::NewContext(grpc::ClientContext* context,
                                               absl::Duration timeout) const {
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

WorkerSession::Registration WorkerSession::registration() const {
  absl::MutexLock lock(&register_mu_);
  return registration_;
}

absl::Status WorkerSession::RegisterOnce(bool idle) {
  v1::RegisterWorkerRequest request;
  request.set_name(options_.name);
  v1::Capabilities* capabilities = request.mutable_capabilities();
  const ComputeKernel kernel = options_.backend != nullptr
                                   ? options_.backend->kernel()
                                   : CpuComputeKernel();
  const bool gpu = kernel.backend == "cuda";
  capabilities->set_backend(gpu ? v1::BACKEND_CUDA : v1::BACKEND_CPU);
  if (gpu) capabilities->set_device(kernel.kernel);
  capabilities->set_threads(threads_);
  capabilities->set_memory_bytes(memory_bytes_);
  v1::RegisterWorkerResponse response;
  grpc::ClientContext context;
  NewContext(&context, absl::Milliseconds(options_.rpc_timeout_ms));
  if (idle) {
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::CancelledError("draining");
    idle_call_ = &context;
  }
  const grpc::Status status =
      stub_->RegisterWorker(&context, request, &response);
  if (idle) {
    absl::MutexLock lock(&mu_);
    idle_call_ = nullptr;
  }
  RETURN_IF_ERROR(FromGrpcStatus(status));
  if (response.worker_id().empty()) {
    return absl::UnavailableError("RegisterWorker answered no worker id");
  }
  Registration registration;
  registration.worker_id = response.worker_id();
  registration.heartbeat_interval_ms = response.heartbeat_interval_ms() > 0
                                           ? response.heartbeat_interval_ms()
                                           : kDefaultHeartbeatMs;
  registration.lease_ms =
      response.lease_ms() > 0 ? response.lease_ms() : kDefaultLeaseMs;
  registration.max_chunk_bytes = response.max_chunk_bytes() > 0
                                     ? response.max_chunk_bytes()
                                     : kDefaultChunkBytes;
  Log(absl::StrCat("registered as ", registration.worker_id, " (",
                   gpu ? kernel.kernel : absl::StrCat(threads_, " threads"),
                   ", ", memory_bytes_ >> 20, " MiB; heartbeat ",
                   registration.heartbeat_interval_ms, " ms, chunks ",
                   registration.max_chunk_bytes, " B)"));
  absl::MutexLock lock(&register_mu_);
  registration_ = std::move(registration);
  return absl::OkStatus();
}

absl::Status WorkerSession::RegisterUntilDrained() {
  for (int attempt = 0;; ++attempt) {
    absl::Status status;
    {
      absl::MutexLock lock(&register_call_mu_);
      status = RegisterOnce(/*idle=*/true);
    }
    if (status.ok()) return status;
    if (draining()) return absl::CancelledError("draining");
    if (!IsTransient(status)) {
      return absl::Status(status.code(),
                          absl::StrCat("RegisterWorker: ", status.message()));
    }
    Log(absl::StrCat("RegisterWorker failed (", status.ToString(),
                     "); retrying"));
    if (!Sleep(Backoff(attempt), /*idle=*/true)) {
      return absl::CancelledError("draining");
    }
  }
}

absl::Status WorkerSession::Reregister(const std::string& stale_worker_id) {
  absl::MutexLock lock(&register_call_mu_);
  if (registration().worker_id != stale_worker_id) return absl::OkStatus();
  Log(absl::StrCat("coordinator forgot worker ", stale_worker_id,
                   "; registering again"));
  return RegisterOnce(/*idle=*/false);
}

absl::Status WorkerSession::Run() {
  {
    absl::MutexLock lock(&mu_);
    leasing_done_ = false;
  }
  std::thread uploader([this] { UploadDeferredLoop(); });
  const absl::Status status = LeaseUntilDrained();
  {
    absl::MutexLock lock(&mu_);
    leasing_done_ = true;
  }
  uploader.join();
  return status;
}

void WorkerSession::UploadDeferredLoop() {
  while (true) {
    DeferredUpload upload;
    {
      absl::MutexLock lock(&mu_);
      const auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return leasing_done_ || !deferred_.empty();
      };
      mu_.Await(absl::Condition(&ready));
      if (deferred_.empty()) return;
      upload = std::move(deferred_.front());
      deferred_.pop_front();
    }
    UploadDeferred(upload);
  }
}

void WorkerSession::UploadDeferred(const DeferredUpload& upload) {
  const std::string name = RefName(upload.ref);
  if (upload.written.valid()) {
    if (const absl::Status written = upload.written.get(); !written.ok()) {
      // Lost here, as in Hold.
      Log(absl::StrCat("task ", name, ": cannot keep ", upload.name,
                       " for its deferred upload: ", written.ToString()));
      remover_->Remove(upload.path);
      held_->Unpin(upload.ref.job_id(), upload.boundary, upload.shard);
      return;
    }
  }
  // Killed holding committed activations the coordinator has only the
  // digest of (tests/service_e2e_test.sh).
  if (Failpoint("worker.kill_before_deferred_upload")) {
    Log(absl::StrCat("task ", name, ": failpoint: killed before uploading ",
                     upload.name));
    raise(SIGKILL);
  }
  Task task;
  task.ref = upload.ref;
  task.uploaded_digest[upload.name] = upload.digest;  // Not hashed again.
  absl::Status status;
  for (int attempt = 0;; ++attempt) {
    bool local_fault = false;
    status = UploadAttempt(&task, registration().worker_id,
                           {{upload.name, upload.path}}, &local_fault,
                           /*deferred=*/true);
    // Refused for good (the task was computed again, the job ended) or
    // unreadable here: the coordinator computes it again if still needed.
    // Anything else (a damaged stream, the coordinator away) goes again.
    const absl::StatusCode code = status.code();
    if (status.ok() || local_fault ||
        code == absl::StatusCode::kFailedPrecondition ||
        code == absl::StatusCode::kNotFound ||
        code == absl::StatusCode::kInvalidArgument ||
        code == absl::StatusCode::kPermissionDenied ||
        code == absl::StatusCode::kUnauthenticated) {
      break;
    }
    // While leasing goes on this retries until the coordinator is back; a
    // draining worker gives up after its transfer attempts.
    bool draining_done;
    {
      absl::MutexLock lock(&mu_);
      draining_done = leasing_done_;
    }
    if (draining_done && attempt + 1 >= options_.transfer_attempts) break;
    Log(absl::StrCat("task ", name, ": deferred upload of ", upload.name,
                     " failed (", status.ToString(), "); sending again"));
    Sleep(Backoff(attempt), /*idle=*/false);
  }
  if (status.ok()) {
    Log(absl::StrCat("task ", name, ": deferred ", upload.name, " uploaded"));
  } else {
    Log(absl::StrCat("task ", name, ": deferred ", upload.name,
                     " not uploaded: ", status.ToString()));
  }
  remover_->Remove(upload.path);
  held_->Unpin(upload.ref.job_id(), upload.boundary, upload.shard);
}

absl::Status WorkerSession::LeaseUntilDrained() {
  // OpenMP's count is this thread's; OpenBLAS's pool is the process's (its
  // main sets it: SetCpuThreads).
  if (options_.threads > 0) omp_set_num_threads(options_.threads);
  absl::Status registered = RegisterUntilDrained();
  if (!registered.ok()) {
    return draining() ? absl::OkStatus() : registered;
  }
  int failures = 0;
  while (!draining()) {
    const std::string worker_id = registration().worker_id;
    v1::LeaseTaskRequest request;
    request.set_worker_id(worker_id);
    request.set_wait_ms(options_.lease_wait_ms);
    v1::LeaseTaskResponse response;
    grpc::ClientContext context;
    NewContext(&context, absl::Milliseconds(options_.lease_wait_ms +
                                            options_.rpc_timeout_ms));
    {
      absl::MutexLock lock(&mu_);
      if (draining_) break;
      idle_call_ = &context;
    }
    const absl::Status status =
        FromGrpcStatus(stub_->LeaseTask(&context, request, &response));
    {
      absl::MutexLock lock(&mu_);
      idle_call_ = nullptr;
    }
    if (status.ok()) {
      failures = 0;
      if (response.has_task()) RunLeasedTask(response);
      continue;
    }
    if (draining()) break;
    if (status.code() == absl::StatusCode::kNotFound) {
      Log(absl::StrCat("LeaseTask: ", status.message(), "; registering again"));
      if (registration().worker_id != worker_id) continue;
      absl::Status again = RegisterUntilDrained();
      if (!again.ok()) return draining() ? absl::OkStatus() : again;
      continue;
    }
    if (!IsTransient(status)) {
      return absl::Status(status.code(),
                          absl::StrCat("LeaseTask: ", status.message()));
    }
    Log(absl::StrCat("LeaseTask failed (", status.ToString(), "); retrying"));
    if (!Sleep(Backoff(failures++), /*idle=*/true)) break;
  }
  Log("drained");
  return absl::OkStatus();
}

void WorkerSession::RunLeasedTask(const v1::LeaseTaskResponse& lease) {
  Task task;
  task.ref = lease.task();
  task.spec = lease.spec();
  task.kind = KindName(task.spec.kind());
  task.dir =
      (std::filesystem::path(options_.scratch_dir) / TaskDirName(task.ref))
          .string();
  const int64_t lease_ms =
      lease.lease_ms() > 0 ? lease.lease_ms() : registration().lease_ms;
  {
    absl::MutexLock lock(&task.mu);
    task.lease_expiry = absl::Now() + absl::Milliseconds(lease_ms);
  }
  const std::string name = RefName(task.ref);
  Log(absl::StrCat("leased ", task.kind, " task ", name));
  const absl::Time leased_at = absl::Now();
  if (options_.metrics != nullptr) options_.metrics->SetWorkerBusy(true);

  std::thread heartbeat([this, &task] { HeartbeatLoop(&task); });
  Outcome outcome = Outcome::kReleased;
  std::error_code error;
  remover_->Remove(task.dir);  // An earlier attempt's.
  std::filesystem::create_directories(task.dir + "/out", error);
  double seconds = 0;
  // Of `seconds`: reading the inputs, writing and hashing the outputs.
  double input_seconds = 0;
  double output_seconds = 0;
  ComputeKernel kernel;
  if (error) {
    outcome = Fail(&task, /*task_fault=*/false,
                   absl::StrCat("worker ", options_.name,
                                ": cannot create scratch directory ", task.dir,
                                ": ", error.message()));
  } else {
    const std::string inputs_path = task.dir + "/inputs.safetensors";
    FindLocalInputs(&task);
    bool task_fault = false;
    absl::Status status = FetchInputs(&task, inputs_path, &task_fault);
    if (task.IsAbandoned()) {
      outcome = Outcome::kReleased;
    } else if (!status.ok()) {
      outcome = Fail(&task, task_fault,
                     absl::StrCat("fetching inputs: ", status.ToString()));
    } else {
      task.SetProgress("compute", kFetchEnd);
      // Activations committed by their digest are written after the
      // commit, on a thread of their own (Hold), from memory.
      task.local.write_activations = !lease.defer_activations();
      absl::StatusOr<TaskRunResult> run =
          RunTask(task.spec, inputs_path, task.dir + "/out",
                  options_.backend.get(), task.local);
      task.local.held_in_memory.reset();
      remover_->Remove(inputs_path);
      if (task.IsAbandoned()) {
        outcome = Outcome::kReleased;
      } else if (!run.ok()) {
        // Out of (device) memory or a failed device is this worker's
        // trouble: another worker gets the task, and its budget of task
        // faults stays whole.
        const absl::StatusCode code = run.status().code();
        const bool machine = code == absl::StatusCode::kResourceExhausted ||
                             code == absl::StatusCode::kUnavailable;
        outcome = Fail(&task, /*task_fault=*/!machine,
                       absl::StrCat("worker ", options_.name, ": ",
                                    run.status().ToString()));
      } else {
        seconds = run->seconds;
        input_seconds = run->input_seconds;
        output_seconds = run->output_seconds;
        kernel = run->kernel;
        // Activations the lease lets this worker commit by their digest
        // stay here, uploaded after the commit (off the critical path).
        std::vector<std::pair<std::string, std::string>> uploaded;
        std::vector<v1::DeferredOutput> deferred;
        for (const auto& [output, path] : run->outputs) {
          // Hashed as it was written (no second pass over 8.6 GB per 70B
          // block on the critical path): a deferred commit and a striped
          // upload name it.
          const auto written = run->digest.find(output);
          const bool known =
              written != run->digest.end() && !written->second.empty();
          if (known) task.uploaded_digest[output] = HexOf(written->second);
          uint64_t bytes = 0;
          absl::StatusOr<std::string> digest = absl::UnimplementedError("");
          if (lease.defer_activations() && output == kActivationsTensor) {
            std::error_code size_error;
            if (run->activations_unwritten) {
              bytes = run->activations_file_bytes;
            } else if (known) {
              bytes = std::filesystem::file_size(path, size_error);
            }
            digest = known && !size_error
                         ? absl::StatusOr<std::string>(written->second)
                         : ContentDigestOfFile(path, &bytes, threads_);
          }
          if (!digest.ok()) {  // Not deferred: uploaded now.
            uploaded.emplace_back(output, path);
            continue;
          }
          v1::DeferredOutput& entry = deferred.emplace_back();
          entry.set_name(output);
          entry.set_digest(HexOf(*digest));
          entry.set_size_bytes(bytes);
          task.uploaded_digest[output] = entry.digest();
        }
        // At most a few uploads: a coordinator that lost one asks again.
        outcome = Outcome::kUploadAgain;
        for (int upload = 0; upload < 3 && outcome == Outcome::kUploadAgain;
             ++upload) {
          task.SetProgress("upload", kComputeEnd);
          bool local_fault = false;
          status = Upload(&task, uploaded, &local_fault);
          if (task.IsAbandoned()) {
            outcome = Outcome::kReleased;
          } else if (!status.ok()) {
            outcome =
                Fail(&task, /*task_fault=*/false,
                     absl::StrCat("uploading outputs: ", status.ToString()));
          } else {
            outcome = Complete(&task, seconds, kernel, deferred);
          }
        }
        if (outcome == Outcome::kUploadAgain) {
          outcome = Fail(&task, /*task_fault=*/false,
                         "the coordinator keeps losing the upload");
        }
        if (outcome == Outcome::kDone) Hold(task, *run, deferred);
      }
    }
  }
  task.Finish();
  heartbeat.join();
  remover_->Remove(task.dir);

  if (outcome == Outcome::kDone) tasks_done_.fetch_add(1);
  Log(absl::StrCat(
      task.kind, " task ", name, ": ", OutcomeName(static_cast<int>(outcome)),
      outcome == Outcome::kDone
          ? absl::StrFormat(
                " in %.2f s (task %.2f s: inputs read %.2f s, compute %.2f s, "
                "outputs written %.2f s)",
                absl::ToDoubleSeconds(absl::Now() - leased_at), seconds,
                input_seconds, seconds - input_seconds - output_seconds,
                output_seconds)
          : ""));
  if (options_.metrics != nullptr) {
    options_.metrics->WorkerTaskFinished(
        task.kind, OutcomeName(static_cast<int>(outcome)));
    options_.metrics->SetWorkerBusy(false);
  }
}

void WorkerSession::FindLocalInputs(Task* task) {
  const std::string name = RefName(task->ref);
  const auto activations =
      std::find_if(task->spec.inputs().begin(), task->spec.inputs().end(),
                   [](const v1::TensorInfo& input) {
                     return input.name() == kActivationsTensor;
                   });
  if (activations == task->spec.inputs().end()) {
    held_->ReleaseMemory();  // This task's memory.
  } else {
    const v1::TensorInfo& input = *activations;
    const std::string& job = task->ref.job_id();
    const int boundary = task->spec.layer();
    const int shard = task->spec.shard();
    // A capture task reads them in place; a block or forward task
    // overwrites them (once their file is written, if it still is being).
    task->local.held_in_memory =
        held_->FindInMemory(job, boundary, shard, input.digest(),
                            /*take=*/task->spec.kind() != v1::TASK_KIND_CAPTURE,
                            &task->local.held_written);
    if (task->local.held_in_memory == nullptr) {
      std::optional<std::string> held =
          held_->Find(job, boundary, shard, input.digest());
      if (held.has_value()) task->local.held_activations = *std::move(held);
    }
    task->reads_held = task->local.held_in_memory != nullptr ||
                       !task->local.held_activations.empty();
    if (task->reads_held) {
      task->skip.insert(kActivationsTensor);
      Log(absl::StrCat(
          "task ", name, ": reads the activations it holds",
          task->local.held_in_memory != nullptr ? " in memory" : "", " (",
          input.size_bytes(), " bytes not fetched)"));
      if (options_.metrics != nullptr) {
        options_.metrics->AddLocalInputBytes("held", input.size_bytes());
      }
    }
  }
  // Direct reads: the weights from the model root this worker sees, if
  // every one is what the coordinator recorded; else all are fetched.
  const std::string& model_dir = task->spec.model_dir();
  if (model_dir.empty() || std::none_of(options_.shared_model_roots.begin(),
                                        options_.shared_model_roots.end(),
                                        [&](const std::string& root) {
                                          return IsWithinRoot(model_dir, root);
                                        })) {
    return;
  }
  std::vector<const v1::TensorInfo*> weights;
  for (const v1::TensorInfo& input : task->spec.inputs()) {
    if (IsJobTensor(input.name())) continue;
    if (input.digest().empty()) return;  // Not hashed yet: fetched.
    weights.push_back(&input);
  }
  if (weights.empty()) return;  // A quantized block's forward reads none.
  uint64_t hashed = 0, known = 0;
  absl::StatusOr<std::shared_ptr<const SafetensorsCheckpoint>> verified =
      VerifyModelTensors(model_dir, weights, &hashed, &known);
  if (!verified.ok()) {
    Log(absl::StrCat("task ", name,
                     ": fetching the weights: ", verified.status().message()));
    return;
  }
  task->local.model = *std::move(verified);
  for (const v1::TensorInfo* input : weights) task->skip.insert(input->name());
  Log(absl::StrCat(
      "task ", name, ": reads the weights from ", model_dir, " (",
      hashed + known, " bytes, digest verified",
      known > 0 ? absl::StrCat("; ", known, " of them by an earlier task, ",
                               "their files unchanged since")
                : "",
      ")"));
  if (options_.metrics != nullptr) {
    options_.metrics->AddLocalInputBytes("model_root", hashed + known);
  }
}

absl::StatusOr<std::shared_ptr<const SafetensorsCheckpoint>>
WorkerSession::VerifyModelTensors(
    const std::string& model_dir,
    const std::vector<const v1::TensorInfo*>& tensors, uint64_t* hashed,
    uint64_t* known) {
  ASSIGN_OR_RETURN(std::shared_ptr<const SafetensorsCheckpoint> model,
                   SafetensorsCheckpoint::Open(model_dir));
  struct ToHash {
    const v1::TensorInfo* info;
    TensorView view;
    std::string key;
    std::string path;
    FileStamp version;
    absl::StatusOr<std::string> digest = absl::UnknownError("not hashed");
  };
  std::vector<ToHash> to_hash;
  for (const v1::TensorInfo* info : tensors) {
    ASSIGN_OR_RETURN(const TensorView view, model->Get(info->name()));
    if (SafetensorsDTypeName(view.dtype) != info->dtype() ||
        !std::equal(view.shape.begin(), view.shape.end(), info->shape().begin(),
                    info->shape().end()) ||
        view.nbytes != info->size_bytes()) {
      return absl::FailedPreconditionError(
          absl::StrCat(info->name(), " in ", model_dir,
                       " is not the tensor the coordinator planned with"));
    }
    std::string key =
        absl::StrCat(model_dir, "\n", info->name(), "\n", info->digest());
    std::string path = model->FileOf(info->name())->path();
    const FileStamp version = StampOf(path);
    if (version.ok()) {
      absl::MutexLock lock(&verified_mu_);
      const auto found = verified_.find(key);
      if (found != verified_.end() && found->second == version) {
        *known += view.nbytes;
        continue;
      }
    }
    to_hash.push_back({info, view, std::move(key), std::move(path), version});
  }
  // The tensors side by side (a 70B block's 1.71 GB take 2 s on one core).
  ParallelForEach(to_hash.size(), threads_, [&](uint64_t i) {
    ToHash& item = to_hash[i];
    ContentDigest digest;
    const absl::Status read = model->ForEachWindow(
        item.view, 64 << 20, [&](const uint8_t* data, size_t size) {
          digest.Update(data, size);
          return absl::OkStatus();
        });
    item.digest = read.ok() ? absl::StatusOr<std::string>(digest.Finish())
                            : absl::StatusOr<std::string>(read);
  });
  for (const ToHash& item : to_hash) {
    RETURN_IF_ERROR(item.digest.status());
    if (HexOf(*item.digest) != item.info->digest()) {
      return absl::FailedPreconditionError(
          absl::StrCat(item.info->name(), " in ", model_dir,
                       " differs from the digest recorded at planning"));
    }
    *hashed += item.view.nbytes;
    // Remembered only if the file kept its version while it was hashed.
    if (!item.version.ok() || StampOf(item.path) != item.version) continue;
    absl::MutexLock lock(&verified_mu_);
    verified_[item.key] = item.version;
  }
  return model;
}

void WorkerSession::Hold(const Task& task, TaskRunResult& run,
                         const std::vector<v1::DeferredOutput>& deferred) {
  // A block task is the last to read its input activations (in parallel
  // mode its layer's forward task reads them too, before it), as a
  // data-parallel job's forward task is the last to read its shard's (after
  // the stages' captures); they are committed at the coordinator.
  const bool last_reader =
      task.spec.kind() == v1::TASK_KIND_BLOCK ||
      (task.spec.kind() == v1::TASK_KIND_FORWARD && task.spec.shards() > 1);
  const std::string& job = task.ref.job_id();
  const int shard = task.spec.shard();
  if (task.reads_held && last_reader) {
    held_->Drop(job, task.spec.layer(), shard);
  }
  for (const auto& [output, path] : run.outputs) {
    if (output != kActivationsTensor) continue;
    const auto digest = task.uploaded_digest.find(output);
    const bool pinned = std::any_of(
        deferred.begin(), deferred.end(),
        [&](const v1::DeferredOutput& d) { return d.name() == output; });
    const int boundary = task.spec.layer() + 1;
    const std::string& committed =
        digest == task.uploaded_digest.end() ? "" : digest->second;
    // Uploaded from a link of its own: the held file may be dropped (its
    // last reader done here) while the upload runs.
    DeferredUpload upload;
    upload.ref = task.ref;
    upload.name = output;
    upload.path = task.dir + ".deferred-" + output;
    upload.digest = committed;
    upload.boundary = boundary;
    upload.shard = shard;
    std::error_code error;
    std::filesystem::remove(upload.path, error);
    if (run.activations_unwritten) {
      // Written from memory while the next task runs, then linked for the
      // upload (which waits for it).
      const int64_t tokens = task.spec.sequences() * task.spec.seq_len();
      const int64_t dim =
          tokens > 0 ? static_cast<int64_t>(run.activations->size()) / tokens
                     : 0;
      const std::string link = pinned ? upload.path : "";
      upload.written = held_->PutWriting(
          job, boundary, shard, committed, pinned, std::move(run.activations),
          [sequences = task.spec.sequences(), seq_len = task.spec.seq_len(),
           dim, link](const std::string& file,
                      const std::vector<float>& values) -> absl::Status {
            RETURN_IF_ERROR(SaveActivations(file, values, sequences, seq_len,
                                            dim, Durability::kScratch));
            if (link.empty()) return absl::OkStatus();
            std::error_code link_error;
            std::filesystem::create_hard_link(file, link, link_error);
            if (!link_error) return absl::OkStatus();
            return absl::InternalError(absl::StrCat("cannot link ", file,
                                                    " as ", link, ": ",
                                                    link_error.message()));
          });
      if (!pinned) continue;
    } else {
      absl::Status kept =
          held_->Put(job, boundary, shard, path, committed, pinned);
      if (!kept.ok()) Log(kept.ToString());
      if (run.activations != nullptr) {
        held_->KeepInMemory(job, boundary, shard, committed,
                            std::move(run.activations));
      }
      if (!pinned) continue;
      const std::optional<std::string> held =
          held_->Find(job, boundary, shard, committed);
      if (held.has_value()) {
        std::filesystem::create_hard_link(*held, upload.path, error);
      }
      if (!held.has_value() || error) {
        // Lost here: the coordinator computes it again once this worker is
        // gone; nothing else can be done from here.
        Log(absl::StrCat("task ", RefName(task.ref), ": cannot keep ", output,
                         " for its deferred upload",
                         error ? absl::StrCat(": ", error.message()) : ""));
        held_->Unpin(job, boundary, shard);
        continue;
      }
    }
    absl::MutexLock lock(&mu_);
    deferred_.push_back(std::move(upload));
  }
}

void WorkerSession::HeartbeatLoop(Task* task) {
  const absl::Duration interval =
      absl::Milliseconds(registration().heartbeat_interval_ms);
  while (true) {
    v1::HeartbeatRequest request;
    {
      absl::MutexLock lock(&task->mu);
      if (task->mu.AwaitWithTimeout(absl::Condition(&task->finished),
                                    interval)) {
        return;
      }
      if (task->abandoned) return;  // The lease is someone else's now.
      request.mutable_progress()->set_stage(task->stage);
      request.mutable_progress()->set_fraction(task->fraction);
    }
    const std::string worker_id = registration().worker_id;
    *request.mutable_task() = task->RefAs(worker_id);
    v1::HeartbeatResponse response;
    grpc::ClientContext context;
    NewContext(&context, absl::Milliseconds(options_.rpc_timeout_ms));
    absl::Status status;
    {
      Task::Call call(task, &context);
      status = FromGrpcStatus(stub_->Heartbeat(&context, request, &response));
    }
    if (status.ok()) {
      if (response.lease_ms() > 0) {
        absl::MutexLock lock(&task->mu);
        task->lease_expiry =
            absl::Now() + absl::Milliseconds(response.lease_ms());
      }
      if (response.cancel() && task->Abandon()) {
        Log(absl::StrCat("task ", RefName(task->ref),
                         ": job cancelled; dropping it"));
      }
    } else if (status.code() == absl::StatusCode::kFailedPrecondition) {
      if (task->Abandon()) {
        Log(absl::StrCat("task ", RefName(task->ref), ": lease lost (",
                         status.message(), "); dropping it"));
      }
    } else if (status.code() == absl::StatusCode::kNotFound) {
      absl::Status again = Reregister(worker_id);
      if (!again.ok()) {
        Log(absl::StrCat("registering again failed: ", again.ToString()));
      }
    } else {
      absl::MutexLock lock(&task->mu);
      if (task->finished) return;
      Log(absl::StrCat("Heartbeat failed (", status.ToString(),
                       "); trying again next tick"));
    }
  }
}

absl::Status WorkerSession::FetchInputs(Task* task, const std::string& path,
                                        bool* task_fault) {
  const std::set<std::string>& skip = task->skip;
  std::vector<InputCursor::Expected> tensors;
  for (const v1::TensorInfo& info : task->spec.inputs()) {
    if (skip.count(info.name()) != 0) continue;
    absl::StatusOr<SafetensorsDType> dtype =
        ParseSafetensorsDType(info.dtype());
    if (!dtype.ok()) {
      *task_fault = true;
      return absl::InvalidArgumentError(absl::StrCat(
          "task spec input ", info.name(), ": ", dtype.status().message()));
    }
    uint64_t elements = 1;
    for (int64_t dim : info.shape()) {
      if (dim < 0) {
        *task_fault = true;
        return absl::InvalidArgumentError(
            absl::StrCat("task spec input ", info.name(), ": negative shape"));
      }
      elements *= static_cast<uint64_t>(dim);
    }
    if (elements * SafetensorsDTypeSize(*dtype) != info.size_bytes()) {
      *task_fault = true;
      return absl::InvalidArgumentError(
          absl::StrCat("task spec input ", info.name(), ": ", info.size_bytes(),
                       " bytes for ", elements, " elements of ", info.dtype()));
    }
    tensors.push_back({info.name(), info.size_bytes()});
  }
  InputCursor cursor(path, std::move(tensors), &task->spec, skip);
  RETURN_IF_ERROR(cursor.Reset(task_fault));
  for (int failures = 0; !cursor.complete();) {
    const std::string worker_id = registration().worker_id;
    absl::Status status = FetchAttempt(task, worker_id, &cursor);
    if (status.ok()) break;
    if (task->IsAbandoned()) return absl::CancelledError("task abandoned");
    if (cursor.local_failure()) return status;
    if (status.code() == absl::StatusCode::kFailedPrecondition) {
      if (task->Abandon()) {
        Log(absl::StrCat("task ", RefName(task->ref), ": fetch refused (",
                         status.message(), "); dropping it"));
      }
      return status;
    }
    if (status.code() == absl::StatusCode::kNotFound) {
      absl::Status again = Reregister(worker_id);
      if (!again.ok()) Log(again.ToString());
    }
    if (++failures >= options_.transfer_attempts) return status;
    Log(absl::StrCat("task ", RefName(task->ref), ": fetch failed (",
                     status.ToString(), "); resuming"));
    if (cursor.restart()) RETURN_IF_ERROR(cursor.Reset(task_fault));
    Sleep(Backoff(failures - 1), /*idle=*/false);
  }
  return cursor.Finish();
}

absl::Status WorkerSession::FetchAttempt(Task* task,
                                         const std::string& worker_id,
                                         InputCursor* cursor) {
  v1::FetchInputsRequest request;
  *request.mutable_task() = task->RefAs(worker_id);
  for (const std::string& name : task->skip) request.add_skip(name);
  if (!cursor->at_start()) {  // Empty: from the start.
    request.set_tensor(cursor->tensor());
    request.set_offset(cursor->offset());
  }
  grpc::ClientContext context;
  NewContext(&context, StreamTimeout(options_.rpc_timeout_ms,
                                     cursor->total() - cursor->received()));
  Task::Call call(task, &context);
  std::unique_ptr<grpc::ClientReader<v1::Chunk>> reader =
      stub_->FetchInputs(&context, request);
  v1::Chunk chunk;
  absl::Status problem;
  while (reader->Read(&chunk)) {
    problem = cursor->Accept(chunk);
    if (!problem.ok()) {
      context.TryCancel();
      while (reader->Read(&chunk)) {
      }
      break;
    }
    if (options_.metrics != nullptr) {
      options_.metrics->AddBytesStreamed("to_worker", chunk.data().size());
    }
    if (cursor->total() > 0) {
      task->SetProgress("fetch", kFetchEnd * cursor->received() /
                                     static_cast<double>(cursor->total()));
    }
  }
  const absl::Status status = FromGrpcStatus(reader->Finish());
  RETURN_IF_ERROR(problem);
  RETURN_IF_ERROR(status);
  if (!cursor->complete()) {
    return absl::DataLossError(absl::StrCat("input stream ended in ",
                                            cursor->tensor(), " at offset ",
                                            cursor->offset()));
  }
  return absl::OkStatus();
}

absl::Status WorkerSession::Upload(
    Task* task, const std::vector<std::pair<std::string, std::string>>& outputs,
    bool* local_fault) {
  for (int attempt = 0;; ++attempt) {
    const std::string worker_id = registration().worker_id;
    absl::Status status = UploadAttempt(task, worker_id, outputs, local_fault);
    if (status.ok() || *local_fault || task->IsAbandoned()) return status;
    if (status.code() == absl::StatusCode::kFailedPrecondition) {
      if (task->Abandon()) {
        Log(absl::StrCat("task ", RefName(task->ref), ": upload refused (",
                         status.message(), "); dropping it"));
      }
      return status;
    }
    if (status.code() == absl::StatusCode::kNotFound) {
      absl::Status again = Reregister(worker_id);
      if (!again.ok()) Log(again.ToString());
    }
    if (attempt + 1 >= options_.transfer_attempts) return status;
    Log(absl::StrCat("task ", RefName(task->ref), ": upload failed (",
                     status.ToString(), "); sending again"));
    Sleep(Backoff(attempt), /*idle=*/false);
  }
}

absl::Status WorkerSession::UploadAttempt(
    Task* task, const std::string& worker_id,
    const std::vector<std::pair<std::string, std::string>>& outputs,
    bool* local_fault, bool deferred) {
  uint64_t total = 0;
  for (const auto& output : outputs) {
    std::error_code error;
    const uintmax_t size = std::filesystem::file_size(output.second, error);
    if (error) {
      *local_fault = true;
      return absl::InternalError(absl::StrCat("output ", output.first, " (",
                                              output.second,
                                              "): ", error.message()));
    }
    total += size;
  }
  if (options_.upload_streams > 1 && total >= options_.striped_upload_bytes) {
    return UploadStriped(task, worker_id, outputs, local_fault, deferred,
                         total);
  }
  const uint64_t chunk_limit =
      static_cast<uint64_t>(registration().max_chunk_bytes);

  grpc::ClientContext context;
  NewContext(&context, StreamTimeout(options_.rpc_timeout_ms, total));
  Task::Call call(task, &context);
  v1::UploadResultResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::UploadResultRequest>> writer =
      stub_->UploadResult(&context, &response);
  v1::UploadResultRequest header;
  *header.mutable_task() = task->RefAs(worker_id);
  header.set_deferred(deferred);
  bool open = writer->Write(header);
  absl::Status local;
  uint64_t sent = 0;
  v1::UploadResultRequest request;
  for (size_t i = 0; open && local.ok() && i < outputs.size(); ++i) {
    const std::string& name = outputs[i].first;
    const std::string& path = outputs[i].second;
    absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
    if (!file.ok()) {
      local = absl::InternalError(
          absl::StrCat("cannot read output ", name, " (", path, ")"));
      break;
    }
    const uint64_t size = (*file)->size();
    v1::TensorInfo info;
    info.set_name(name);
    info.set_dtype("U8");
    info.add_shape(static_cast<int64_t>(size));
    info.set_size_bytes(size);
    // An empty file is mapped as a null pointer; it still goes as one chunk.
    static const uint8_t kNoBytes = 0;
    const uint8_t* data = size > 0 ? (*file)->data() : &kNoBytes;
    // A deferred upload's file was hashed for its commit.
    const auto committed = task->uploaded_digest.find(name);
    const std::string known_digest =
        deferred && committed != task->uploaded_digest.end()
            ? absl::HexStringToBytes(committed->second)
            : "";
    absl::Status status = SendTensor(
        info, data, /*offset=*/0, static_cast<size_t>(chunk_limit),
        [&](const v1::Chunk& chunk) {
          if (chunk.last()) task->uploaded_digest[name] = HexOf(chunk.digest());
          *request.mutable_chunk() = chunk;
          // Faults the coordinator must catch (tests/fault_injection_test.sh).
          // One fault per chunk, so that each is seen.
          if (!chunk.data().empty() && Failpoint("worker.upload_flip_bit")) {
            (*request.mutable_chunk()->mutable_data())[0] ^= 0x01;
          } else if (chunk.last() && Failpoint("worker.upload_wrong_sha")) {
            (*request.mutable_chunk()->mutable_digest())[0] ^= 0x01;
          }
          open = writer->Write(request);
          return open;
        },
        [&](size_t n) {
          sent += n;
          if (options_.metrics != nullptr) {
            options_.metrics->AddBytesStreamed("from_worker", n);
          }
          if (total > 0) {
            task->SetProgress("upload",
                              kComputeEnd + (1 - kComputeEnd) * sent /
                                                static_cast<double>(total));
          }
        },
        [&](uint64_t from, uint64_t to) {
          if (size > 0) (*file)->Release(from, to - from);
        },
        known_digest);
    // A closed stream is the coordinator's to explain (Finish below).
    if (!status.ok() && open) local = std::move(status);
  }
  if (!local.ok()) {
    *local_fault = true;
    context.TryCancel();
  } else if (open) {
    writer->WritesDone();
  }
  const absl::Status status = FromGrpcStatus(writer->Finish());
  RETURN_IF_ERROR(local);
  return status;
}

absl::Status WorkerSession::UploadStriped(
    Task* task, const std::string& worker_id,
    const std::vector<std::pair<std::string, std::string>>& outputs,
    bool* local_fault, bool deferred, uint64_t total) {
  const int streams = options_.upload_streams;
  const uint64_t unit = options_.stripe_unit_bytes;
  const uint64_t chunk_limit =
      static_cast<uint64_t>(registration().max_chunk_bytes);
  // The manifest: each output's size and digest, known from its commit or
  // its writing, else computed here (the streams cannot hash in order).
  std::vector<std::unique_ptr<MappedFile>> files;
  std::vector<StripedTensor> tensors;
  v1::UploadStripe stripe;
  for (const auto& [name, path] : outputs) {
    absl::StatusOr<std::unique_ptr<MappedFile>> file = MappedFile::Open(path);
    if (!file.ok()) {
      *local_fault = true;
      return absl::InternalError(
          absl::StrCat("cannot read output ", name, " (", path, ")"));
    }
    v1::DeferredOutput* entry = stripe.add_outputs();
    entry->set_name(name);
    entry->set_size_bytes((*file)->size());
    const auto known = task->uploaded_digest.find(name);
    entry->set_digest(known != task->uploaded_digest.end()
                          ? known->second
                          : HexOf(ContentDigestOf(
                                absl::string_view(reinterpret_cast<const char*>(
                                                      (*file)->data()),
                                                  (*file)->size()),
                                threads_)));
    files.push_back(*std::move(file));
    tensors.push_back({name, files.back()->data(), files.back()->size()});
  }
  // Faults the coordinator must catch (tests/fault_injection_test.sh).
  if (!outputs.empty() && Failpoint("worker.upload_wrong_sha")) {
    std::string& hex = *stripe.mutable_outputs(0)->mutable_digest();
    hex[0] = hex[0] == '0' ? '1' : '0';
  }
  std::random_device random;
  stripe.set_upload_id(
      absl::StrCat(worker_id, "-", absl::Hex(random()), absl::Hex(random())));
  stripe.set_count(streams);
  stripe.set_unit_bytes(unit);

  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  for (int i = 0; i < streams; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    NewContext(contexts.back().get(),
               StreamTimeout(options_.rpc_timeout_ms, total / streams));
  }
  std::vector<absl::Status> statuses(streams);
  std::atomic<uint64_t> sent{0};
  const auto send = [&](int index) {
    grpc::ClientContext& context = *contexts[index];
    Task::Call call(task, &context);
    v1::UploadResultResponse response;
    v1::WorkerGateway::Stub& stub =
        index > 0 && static_cast<size_t>(index) <= upload_stubs_.size()
            ? *upload_stubs_[index - 1]
            : *stub_;
    std::unique_ptr<grpc::ClientWriter<v1::UploadResultRequest>> writer =
        stub.UploadResult(&context, &response);
    v1::UploadResultRequest request;
    *request.mutable_task() = task->RefAs(worker_id);
    request.set_deferred(deferred);
    *request.mutable_stripe() = stripe;
    request.mutable_stripe()->set_index(index);
    bool open = writer->Write(request);
    request.Clear();
    if (open) {
      (void)SendStripe(
          tensors, index, streams, unit, static_cast<size_t>(chunk_limit),
          [&](const v1::Chunk& chunk) {
            *request.mutable_chunk() = chunk;
            if (Failpoint("worker.upload_flip_bit")) {
              (*request.mutable_chunk()->mutable_data())[0] ^= 0x01;
            }
            open = writer->Write(request);
            return open;
          },
          [&](size_t n) {
            if (options_.metrics != nullptr) {
              options_.metrics->AddBytesStreamed("from_worker", n);
            }
            task->SetProgress("upload",
                              kComputeEnd + (1 - kComputeEnd) * (sent += n) /
                                                static_cast<double>(total));
          },
          [&](size_t tensor, uint64_t from, uint64_t to) {
            files[tensor]->Release(from, to - from);
          });
    }
    if (open) writer->WritesDone();
    statuses[index] = FromGrpcStatus(writer->Finish());
    // One stream failed: the upload has, and the others need not go on.
    if (!statuses[index].ok()) {
      for (const auto& other : contexts) other->TryCancel();
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < streams; ++i) threads.emplace_back(send, i);
  send(0);
  for (std::thread& thread : threads) thread.join();
  // The first failure that is not another stream's cancellation tells why.
  absl::Status status = absl::OkStatus();
  for (const absl::Status& s : statuses) {
    if (status.ok() || (status.code() == absl::StatusCode::kCancelled &&
                        s.code() != absl::StatusCode::kCancelled && !s.ok())) {
      status = s;
    }
  }
  RETURN_IF_ERROR(status);
  for (const v1::DeferredOutput& entry : stripe.outputs()) {
    task->uploaded_digest[entry.name()] = entry.digest();
  }
  Log(absl::StrCat("task ", RefName(task->ref), ": ", total,
                   " bytes uploaded in ", streams, " streams"));
  return absl::OkStatus();
}

absl::Status WorkerSession::CallAboutTask(
    Task* task,
    const std::function<grpc::Status(grpc::ClientContext*, const v1::TaskRef&)>&
        rpc) {
  for (int attempt = 0;; ++attempt) {
    const v1::TaskRef ref = task->RefAs(registration().worker_id);
    grpc::ClientContext context;
    NewContext(&context, absl::Milliseconds(options_.rpc_timeout_ms));
    absl::Status status;
    {
      Task::Call call(task, &context);
      status = FromGrpcStatus(rpc(&context, ref));
    }
    if (status.ok() || task->IsAbandoned()) return status;
    if (status.code() == absl::StatusCode::kNotFound) {
      absl::Status again = Reregister(ref.worker_id());
      if (!again.ok()) Log(again.ToString());
    } else if (!IsTransient(status) ||
               status.code() == absl::StatusCode::kAborted) {
      return status;  // Aborted: the coordinator asks for something else.
    }
    const absl::Duration wait = Backoff(attempt);
    if (absl::Now() + wait >= task->LeaseExpiry()) {
      return absl::DeadlineExceededError(absl::StrCat(
          "the lease expired while retrying (", status.ToString(), ")"));
    }
    Sleep(wait, /*idle=*/false);
  }
}

WorkerSession::Outcome WorkerSession::Complete(
    Task* task, double seconds, const ComputeKernel& kernel,
    const std::vector<v1::DeferredOutput>& deferred) {
  v1::CompleteTaskRequest request;
  for (const v1::DeferredOutput& output : deferred) {
    *request.add_deferred() = output;
  }
  request.set_seconds(seconds);
  request.set_backend(kernel.backend);
  request.set_kernel(kernel.kernel);
  v1::CompleteTaskResponse response;
  const absl::Status status = CallAboutTask(
      task, [&](grpc::ClientContext* context, const v1::TaskRef& ref) {
        *request.mutable_task() = ref;
        grpc::Status status = stub_->CompleteTask(context, request, &response);
        if (status.ok() && Failpoint("worker.complete_reply_lost")) {
          Log(absl::StrCat("task ", RefName(task->ref),
                           ": failpoint: the CompleteTask reply is lost"));
          return grpc::Status(grpc::StatusCode::UNAVAILABLE,
                              "failpoint: reply lost");
        }
        return status;
      });
  if (status.ok()) {
    for (const v1::DeferredOutput& output : deferred) {
      Log(absl::StrCat("task ", RefName(task->ref), ": ", output.name(),
                       " committed by digest, uploaded after"));
    }
    return Outcome::kDone;
  }
  if (task->IsAbandoned()) return Outcome::kReleased;
  switch (status.code()) {
    case absl::StatusCode::kAborted:
      Log(absl::StrCat("task ", RefName(task->ref),
                       ": the coordinator has no upload (", status.message(),
                       "); uploading again"));
      return Outcome::kUploadAgain;
    case absl::StatusCode::kFailedPrecondition:
      Log(absl::StrCat("task ", RefName(task->ref),
                       ": lease lost before the commit (", status.message(),
                       ")"));
      return Outcome::kReleased;
    case absl::StatusCode::kDeadlineExceeded:
      Log(absl::StrCat("task ", RefName(task->ref),
                       ": committing: ", status.message(), "; giving it up"));
      return Outcome::kReleased;
    default:
      return Fail(task, /*task_fault=*/false,
                  absl::StrCat("CompleteTask refused: ", status.ToString()));
  }
}

WorkerSession::Outcome WorkerSession::Fail(Task* task, bool task_fault,
                                           const std::string& error) {
  Log(absl::StrCat("task ", RefName(task->ref), " failed (",
                   task_fault ? "task fault" : "worker fault", "): ", error));
  v1::FailTaskRequest request;
  request.set_task_fault(task_fault);
  request.set_error(error);
  v1::FailTaskResponse response;
  const absl::Status status = CallAboutTask(
      task, [&](grpc::ClientContext* context, const v1::TaskRef& ref) {
        *request.mutable_task() = ref;
        return stub_->FailTask(context, request, &response);
      });
  if (status.ok()) return Outcome::kFailed;
  if (!task->IsAbandoned() &&
      status.code() != absl::StatusCode::kFailedPrecondition) {
    Log(absl::StrCat("task ", RefName(task->ref),
                     ": reporting the failure: ", status.ToString()));
  }
  return Outcome::kReleased;
}

}  // namespace quant
