#include "worker/worker_session.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/checksum.h"
#include "common/file.h"
#include "common/metrics.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "format/safetensors.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "proto/quant/v1/worker_service.grpc.pb.h"
#include "proto/recipe.h"
#include "proto/task_tensors.h"
#include "quant/block_store.h"
#include "quant/quantize_model.h"
#include "worker/task_runner.h"

namespace quant {
namespace {

constexpr int64_t kMaxChunkBytes = 64 << 10;
constexpr size_t kServeChunkBytes = 40000;

// A task as the scripted coordinator serves it.
struct ServedTask {
  v1::TaskRef ref;  // worker_id filled in on lease.
  v1::TaskSpec spec;
  std::map<std::string, std::string> data;  // What FetchInputs streams.
  // On the first fetch, the chunk of this tensor at this offset arrives with
  // a byte flipped (its CRC-32C still that of the good bytes).
  std::string corrupt_tensor;
  uint64_t corrupt_offset = 0;
  bool stale_heartbeat = false;  // Heartbeats answered FAILED_PRECONDITION.
  absl::Duration chunk_delay = absl::Milliseconds(2);
};

// The coordinator's side of the worker protocol, scripted.
class FakeCoordinator final : public v1::WorkerGateway::Service {
 public:
  // --- Script (set before the worker starts) ---
  int unavailable_registers = 0;     // First N RegisterWorker: UNAVAILABLE.
  int forget_on_lease = 0;           // N LeaseTask calls forget every worker.
  bool forget_on_heartbeat = false;  // The first heartbeat forgets them too.
  int64_t heartbeat_ms = 20;

  void AddTask(ServedTask task) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(task));
  }
  void Shutdown() {
    absl::MutexLock lock(&mu_);
    shutdown_ = true;
  }
  // Waits (up to 10 s) until `done` holds; false on timeout.
  template <typename F>
  bool WaitFor(F done) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    absl::MutexLock lock(&mu_);
    while (!done()) {
      if (absl::Now() > deadline) return false;
      mu_.AwaitWithTimeout(absl::Condition(&changed_), absl::Milliseconds(5));
      changed_ = false;
    }
    return true;
  }

  // --- Records ---
  absl::Mutex mu_;
  int register_calls = 0;
  int lease_calls = 0;
  std::vector<std::string> worker_ids;         // Every id handed out, in order.
  std::vector<v1::Capabilities> capabilities;  // Of every registration.
  std::vector<v1::HeartbeatRequest> heartbeats;
  std::vector<v1::FetchInputsRequest> fetches;
  std::vector<v1::CompleteTaskRequest> completes;
  std::vector<v1::FailTaskRequest> fails;
  // task_index -> tensor -> uploaded bytes.
  std::map<int, std::map<std::string, std::string>> uploads;
  std::vector<std::string> violations;  // Protocol errors the worker made.
  size_t chunks_uploaded = 0;
  size_t largest_chunk = 0;

  grpc::Status RegisterWorker(grpc::ServerContext*,
                              const v1::RegisterWorkerRequest* request,
                              v1::RegisterWorkerResponse* response) override {
    absl::MutexLock lock(&mu_);
    Changed();
    ++register_calls;
    if (unavailable_registers > 0) {
      --unavailable_registers;
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "starting up");
    }
    if (request->capabilities().backend() == v1::BACKEND_UNSPECIFIED ||
        request->capabilities().threads() <= 0 ||
        request->capabilities().memory_bytes() <= 0) {
      violations.push_back("bad capabilities");
    }
    capabilities.push_back(request->capabilities());
    const std::string id = absl::StrCat("w", worker_ids.size() + 1);
    worker_ids.push_back(id);
    known_.push_back(id);
    response->set_worker_id(id);
    response->set_heartbeat_interval_ms(heartbeat_ms);
    response->set_lease_ms(10000);
    response->set_max_chunk_bytes(kMaxChunkBytes);
    return grpc::Status::OK;
  }

  grpc::Status LeaseTask(grpc::ServerContext* context,
                         const v1::LeaseTaskRequest* request,
                         v1::LeaseTaskResponse* response) override {
    absl::MutexLock lock(&mu_);
    Changed();
    ++lease_calls;
    if (forget_on_lease > 0) {
      --forget_on_lease;
      known_.clear();
    }
    if (!Known(request->worker_id())) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown worker");
    }
    const absl::Time deadline =
        absl::Now() + absl::Milliseconds(request->wait_ms());
    while (!HasWork() && !context->IsCancelled() && absl::Now() < deadline) {
      mu_.AwaitWithTimeout(absl::Condition(this, &FakeCoordinator::HasWork),
                           absl::Milliseconds(10));
    }
    if (queue_.empty()) return grpc::Status::OK;
    ServedTask task = std::move(queue_.front());
    queue_.pop_front();
    task.ref.set_worker_id(request->worker_id());
    *response->mutable_task() = task.ref;
    *response->mutable_spec() = task.spec;
    response->set_lease_ms(10000);
    leased_[task.ref.task_index()] = std::move(task);
    return grpc::Status::OK;
  }

  grpc::Status Heartbeat(grpc::ServerContext*,
                         const v1::HeartbeatRequest* request,
                         v1::HeartbeatResponse* response) override {
    absl::MutexLock lock(&mu_);
    Changed();
    heartbeats.push_back(*request);
    if (forget_on_heartbeat) {
      forget_on_heartbeat = false;
      known_.clear();
    }
    ServedTask* task = nullptr;
    grpc::Status status = Check(request->task(), &task);
    if (!status.ok()) return status;
    if (task->stale_heartbeat) {
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale epoch");
    }
    response->set_lease_ms(10000);
    return grpc::Status::OK;
  }

  grpc::Status FetchInputs(grpc::ServerContext* context,
                           const v1::FetchInputsRequest* request,
                           grpc::ServerWriter<v1::Chunk>* writer) override {
    ServedTask task;
    bool first_fetch = true;
    {
      absl::MutexLock lock(&mu_);
      Changed();
      fetches.push_back(*request);
      ServedTask* leased = nullptr;
      grpc::Status status = Check(request->task(), &leased);
      if (!status.ok()) return status;
      first_fetch = fetched_[request->task().task_index()]++ == 0;
      task = *leased;
    }
    int start = 0;
    if (!request->tensor().empty()) {
      start = -1;
      for (int i = 0; i < task.spec.inputs_size(); ++i) {
        if (task.spec.inputs(i).name() == request->tensor()) start = i;
      }
      if (start < 0) {
        return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no tensor");
      }
    }
    for (int i = start; i < task.spec.inputs_size(); ++i) {
      const v1::TensorInfo& info = task.spec.inputs(i);
      if (std::find(request->skip().begin(), request->skip().end(),
                    info.name()) != request->skip().end()) {
        continue;
      }
      const std::string& bytes = task.data[info.name()];
      uint64_t offset = i == start ? request->offset() : 0;
      do {
        if (context->IsCancelled()) {
          return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
        }
        absl::SleepFor(task.chunk_delay);
        v1::Chunk chunk;
        if (offset == 0) *chunk.mutable_info() = info;
        chunk.set_tensor(info.name());
        chunk.set_offset(offset);
        const size_t n =
            std::min<size_t>(kServeChunkBytes, bytes.size() - offset);
        chunk.set_data(bytes.substr(offset, n));
        chunk.set_crc32c(Crc32c(chunk.data().data(), n));
        if (first_fetch && info.name() == task.corrupt_tensor &&
            offset == task.corrupt_offset) {
          (*chunk.mutable_data())[0] ^= 0x40;
        }
        offset += n;
        if (offset == bytes.size()) {
          chunk.set_last(true);
          chunk.set_digest(ContentDigestOf(bytes));
        }
        if (!writer->Write(chunk)) {
          return grpc::Status(grpc::StatusCode::CANCELLED, "write failed");
        }
      } while (offset < bytes.size());
    }
    return grpc::Status::OK;
  }

  grpc::Status UploadResult(grpc::ServerContext*,
                            grpc::ServerReader<v1::UploadResultRequest>* reader,
                            v1::UploadResultResponse* response) override {
    v1::UploadResultRequest request;
    if (!reader->Read(&request) || !request.has_task()) {
      Violation("upload without a TaskRef first");
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no header");
    }
    const v1::TaskRef ref = request.task();
    {
      absl::MutexLock lock(&mu_);
      Changed();
      ServedTask* task = nullptr;
      grpc::Status status = Check(ref, &task);
      if (!status.ok()) return status;
    }
    std::map<std::string, std::string> received;
    std::string current;
    v1::TensorInfo info;
    ContentDigest hash;
    uint64_t total = 0;
    while (reader->Read(&request)) {
      if (!request.has_chunk()) {
        Violation("a second TaskRef");
        continue;
      }
      const v1::Chunk& chunk = request.chunk();
      {
        absl::MutexLock lock(&mu_);
        ++chunks_uploaded;
        largest_chunk = std::max(largest_chunk, chunk.data().size());
      }
      if (chunk.data().size() > static_cast<size_t>(kMaxChunkBytes)) {
        Violation("chunk over max_chunk_bytes");
      }
      if (Crc32c(chunk.data().data(), chunk.data().size()) != chunk.crc32c()) {
        Violation("bad crc32c");
      }
      if (chunk.tensor() != current) {
        if (!current.empty()) Violation("tensor switched before last");
        current = chunk.tensor();
        if (!chunk.has_info() || chunk.info().dtype() != "U8" ||
            chunk.info().shape_size() != 1 ||
            chunk.info().shape(0) !=
                static_cast<int64_t>(chunk.info().size_bytes())) {
          Violation("first chunk without a U8 [size] TensorInfo");
        }
        info = chunk.info();
      }
      std::string& bytes = received[current];
      if (chunk.offset() != bytes.size()) Violation("offset gap");
      bytes += chunk.data();
      hash.Update(chunk.data());
      total += chunk.data().size();
      if (chunk.last()) {
        if (hash.Finish() != chunk.digest()) Violation("bad digest");
        if (bytes.size() != info.size_bytes()) Violation("size mismatch");
        current.clear();
      }
    }
    if (!current.empty()) Violation("stream ended inside a tensor");
    absl::MutexLock lock(&mu_);
    Changed();
    uploads[ref.task_index()] = std::move(received);
    response->set_bytes_received(total);
    return grpc::Status::OK;
  }

  grpc::Status CompleteTask(grpc::ServerContext*,
                            const v1::CompleteTaskRequest* request,
                            v1::CompleteTaskResponse*) override {
    absl::MutexLock lock(&mu_);
    Changed();
    ServedTask* task = nullptr;
    grpc::Status status = Check(request->task(), &task);
    if (!status.ok()) return status;
    if (uploads.count(request->task().task_index()) == 0) {
      violations.push_back("CompleteTask before an upload");
    }
    completes.push_back(*request);
    return grpc::Status::OK;
  }

  grpc::Status FailTask(grpc::ServerContext*,
                        const v1::FailTaskRequest* request,
                        v1::FailTaskResponse*) override {
    absl::MutexLock lock(&mu_);
    Changed();
    ServedTask* task = nullptr;
    grpc::Status status = Check(request->task(), &task);
    if (!status.ok()) return status;
    fails.push_back(*request);
    return grpc::Status::OK;
  }

 private:
  void Changed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { changed_ = true; }
  bool HasWork() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !queue_.empty() || shutdown_;
  }
  void Violation(const std::string& what) {
    absl::MutexLock lock(&mu_);
    violations.push_back(what);
  }
  bool Known(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return std::find(known_.begin(), known_.end(), id) != known_.end();
  }
  // The leased task `ref` names, checking worker and epoch.
  grpc::Status Check(const v1::TaskRef& ref, ServedTask** task)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!Known(ref.worker_id())) {
      return grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown worker");
    }
    auto it = leased_.find(ref.task_index());
    if (it == leased_.end() || it->second.ref.epoch() != ref.epoch()) {
      violations.push_back("call for a task not leased at that epoch");
      return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION, "stale");
    }
    *task = &it->second;
    return grpc::Status::OK;
  }

  bool changed_ = false;
  bool shutdown_ = false;
  std::vector<std::string> known_;
  std::deque<ServedTask> queue_;
  std::map<int, ServedTask> leased_;
  std::map<int, int> fetched_;
};

// Same tensors, byte for byte (the metadata holds timings).
void ExpectSameTensors(const std::string& a, const std::string& b) {
  auto fa = SafetensorsFile::Open(a);
  auto fb = SafetensorsFile::Open(b);
  ASSERT_TRUE(fa.ok()) << fa.status();
  ASSERT_TRUE(fb.ok()) << fb.status();
  ASSERT_EQ((*fa)->tensors().size(), (*fb)->tensors().size());
  for (const TensorView& t : (*fa)->tensors()) {
    const TensorView* u = (*fb)->Find(t.name);
    ASSERT_NE(u, nullptr) << t.name;
    EXPECT_TRUE(t.dtype == u->dtype && t.shape == u->shape &&
                t.nbytes == u->nbytes &&
                std::memcmp(t.data, u->data, t.nbytes) == 0)
        << t.name;
  }
}

constexpr int kLayer = 1;
constexpr char kQProj[] = "model.layers.1.self_attn.q_proj.weight";

class WorkerSessionTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTestTempDir("worker_session"));
    const std::string model = *dir_ + "/model";
    ASSERT_TRUE(WriteTinyLlama(model, TinyLlamaOptions()).ok());
    auto checkpoint = SafetensorsCheckpoint::Open(model);
    ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
    QuantizeModelOptions options;
    options.model_dir = model;
    options.method = QuantMethod::kRtn;
    options.calibration.samples = 0;
    options.weights = {4, 64, false};
    block_ = new ServedTask;
    v1::TaskSpec& spec = block_->spec;
    spec.set_kind(v1::TASK_KIND_BLOCK);
    spec.set_layer(kLayer);
    spec.set_model_config_json(*ReadFileToString(model + "/config.json"));
    *spec.mutable_recipe() = RecipeFromOptions(options);
    spec.set_norm_dtype("F32");
    spec.set_sequences(0);
    spec.set_seq_len(0);
    spec.add_outputs(kResultTensor);
    const std::string prefix = absl::StrCat("model.layers.", kLayer, ".");
    const std::string reference_in = *dir_ + "/reference.in";
    auto writer = SafetensorsWriter::Create(reference_in);
    ASSERT_TRUE(writer.ok());
    for (const std::string& name : (*checkpoint)->TensorNames()) {
      if (name.rfind(prefix, 0) != 0) continue;
      const TensorView t = *(*checkpoint)->Get(name);
      v1::TensorInfo* info = spec.add_inputs();
      info->set_name(name);
      info->set_dtype(std::string(SafetensorsDTypeName(t.dtype)));
      for (int64_t d : t.shape) info->add_shape(d);
      info->set_size_bytes(t.nbytes);
      block_->data[name].assign(reinterpret_cast<const char*>(t.data),
                                t.nbytes);
      ASSERT_TRUE((*writer)->AddTensor(name, t.dtype, t.shape).ok());
    }
    for (const v1::TensorInfo& info : spec.inputs()) {
      const std::string& bytes = block_->data[info.name()];
      ASSERT_TRUE((*writer)
                      ->WriteTensorData(info.name(), bytes.data(), bytes.size())
                      .ok());
    }
    ASSERT_TRUE((*writer)->Finish().ok());
    ASSERT_TRUE(block_->data.count(kQProj) == 1);
    // What the engine makes of these inputs locally.
    std::filesystem::create_directories(*dir_ + "/reference");
    auto run = RunTask(spec, reference_in, *dir_ + "/reference");
    ASSERT_TRUE(run.ok()) << run.status();
    reference_result_ = new std::string(run->outputs.at(0).second);
  }

  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    delete dir_;
    delete block_;
    delete reference_result_;
  }

  void SetUp() override {
    ASSERT_NE(block_, nullptr);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                             &port_);
    builder.RegisterService(&fake_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }

  void TearDown() override {
    if (session_ != nullptr) session_->Drain();
    if (runner_.joinable()) runner_.join();
    fake_.Shutdown();
    server_->Shutdown(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(200));
  }

  // The block task, as task `index` at `epoch`.
  static ServedTask Block(int index, int64_t epoch) {
    ServedTask task = *block_;
    task.ref.set_job_id("job-1");
    task.ref.set_task_index(index);
    task.ref.set_epoch(epoch);
    return task;
  }

  WorkerOptions Options() {
    WorkerOptions options;
    options.coordinator = absl::StrCat("127.0.0.1:", port_);
    options.name = "test-worker";
    options.threads = 1;
    options.scratch_dir =
        *dir_ + "/scratch-" +
        ::testing::UnitTest::GetInstance()->current_test_info()->name();
    options.lease_wait_ms = 200;
    options.rpc_timeout_ms = 5000;
    options.backoff_initial_ms = 10;
    options.backoff_max_ms = 100;
    options.metrics = &metrics_;
    options.log = [](const std::string& line) {
      fprintf(stderr, "worker: %s\n", line.c_str());
    };
    return options;
  }

  void Start(WorkerOptions options) {
    auto session = WorkerSession::Create(std::move(options));
    ASSERT_TRUE(session.ok()) << session.status();
    session_ = *std::move(session);
    runner_ = std::thread([this] { run_status_ = session_->Run(); });
  }

  // Drains the session and waits for Run() to return; its duration.
  absl::Duration DrainAndJoin() {
    const absl::Time start = absl::Now();
    session_->Drain();
    runner_.join();
    return absl::Now() - start;
  }

  static std::string* dir_;
  static ServedTask* block_;
  static std::string* reference_result_;

  FakeCoordinator fake_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  ServiceMetrics metrics_;
  std::unique_ptr<WorkerSession> session_;
  std::thread runner_;
  absl::Status run_status_ = absl::UnknownError("not run");
};

std::string* WorkerSessionTest::dir_ = nullptr;
ServedTask* WorkerSessionTest::block_ = nullptr;
std::string* WorkerSessionTest::reference_result_ = nullptr;

// A worker that sees the model root reads the weights there when each
// matches the digest the spec names (nothing is fetched), and fetches them
// all when one does not; the result is the same either way.
TEST_F(WorkerSessionTest, ReadsVerifiedWeightsFromASharedModelRoot) {
  ServedTask direct = Block(0, 1);
  direct.spec.set_model_dir(*dir_ + "/model");
  for (v1::TensorInfo& info : *direct.spec.mutable_inputs()) {
    info.set_digest(HexOf(ContentDigestOf(direct.data[info.name()])));
  }
  ServedTask mismatched = direct;
  mismatched.ref.set_task_index(1);
  (*mismatched.spec.mutable_inputs())[2].set_digest(std::string(64, '0'));
  // The same weights again: verified by task 0, their file unchanged.
  ServedTask again = direct;
  again.ref.set_task_index(2);
  fake_.AddTask(direct);
  fake_.AddTask(mismatched);
  fake_.AddTask(again);
  WorkerOptions options = Options();
  options.shared_model_roots = {*dir_};
  std::vector<std::string> lines;
  absl::Mutex lines_mu;
  options.log = [&](const std::string& line) {
    absl::MutexLock lock(&lines_mu);
    lines.push_back(line);
  };
  Start(options);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.completes.size() == 3; }));
  // The files rewritten (another mtime): their tensors are hashed again.
  int touched = 0;
  for (const auto& entry :
       std::filesystem::directory_iterator(*dir_ + "/model")) {
    if (entry.path().extension() != ".safetensors") continue;
    std::filesystem::last_write_time(
        entry.path(), std::filesystem::last_write_time(entry.path()) +
                          std::chrono::seconds(1));
    ++touched;
  }
  ASSERT_GT(touched, 0);
  ServedTask rewritten = direct;
  rewritten.ref.set_task_index(3);
  fake_.AddTask(rewritten);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.completes.size() == 4; }));
  DrainAndJoin();
  absl::MutexLock lock(&fake_.mu_);
  EXPECT_TRUE(fake_.violations.empty()) << fake_.violations[0];
  // Tasks 0, 2 and 3 fetched nothing; task 1 fetched every input.
  ASSERT_EQ(fake_.fetches.size(), 1u);
  EXPECT_EQ(fake_.fetches[0].task().task_index(), 1);
  EXPECT_EQ(fake_.fetches[0].skip_size(), 0);
  for (int index : {0, 1, 2, 3}) {
    const std::string uploaded = absl::StrCat(*dir_, "/direct-", index);
    ASSERT_TRUE(
        WriteFileAtomically(uploaded, fake_.uploads[index].at(kResultTensor))
            .ok());
    ExpectSameTensors(uploaded, *reference_result_);
  }
  absl::MutexLock lines_lock(&lines_mu);
  int direct_lines = 0, refused = 0, known = 0;
  for (const std::string& line : lines) {
    direct_lines += absl::StrContains(line, "digest verified");
    refused += absl::StrContains(line, "differs from the digest");
    if (absl::StrContains(line, "by an earlier task")) {
      ++known;
      EXPECT_TRUE(absl::StrContains(line, "task job-1/2 ")) << line;
    }
  }
  EXPECT_EQ(direct_lines, 3);
  EXPECT_EQ(refused, 1);
  EXPECT_EQ(known, 1);  // Task 2; task 3's file had changed.
  const std::string text = metrics_.TextExposition();
  EXPECT_TRUE(absl::StrContains(
      text, "quant_worker_local_input_bytes_total{source=\"model_root\"}"))
      << text;
}

TEST_F(WorkerSessionTest, RunsABlockTaskEndToEnd) {
  fake_.unavailable_registers = 3;
  ServedTask task = Block(0, 7);
  task.corrupt_tensor = kQProj;
  task.corrupt_offset = kServeChunkBytes;
  fake_.AddTask(task);
  const WorkerOptions options = Options();
  const std::string scratch = options.scratch_dir;
  Start(options);
  ASSERT_TRUE(fake_.WaitFor([&] { return !fake_.completes.empty(); }));
  EXPECT_LT(DrainAndJoin(), absl::Seconds(2));
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  EXPECT_EQ(session_->tasks_done(), 1);

  absl::MutexLock lock(&fake_.mu_);
  EXPECT_TRUE(fake_.violations.empty()) << fake_.violations[0];
  // Survived three UNAVAILABLE registrations.
  EXPECT_EQ(fake_.register_calls, 4);
  ASSERT_EQ(fake_.worker_ids.size(), 1u);
  // The corrupted chunk was fetched again from where it stood.
  ASSERT_EQ(fake_.fetches.size(), 2u);
  EXPECT_EQ(fake_.fetches[0].tensor(), "");
  EXPECT_EQ(fake_.fetches[1].tensor(), kQProj);
  EXPECT_EQ(fake_.fetches[1].offset(), kServeChunkBytes);
  EXPECT_EQ(fake_.fetches[1].task().epoch(), 7);
  // Committed with the lease's epoch.
  ASSERT_EQ(fake_.completes.size(), 1u);
  EXPECT_EQ(fake_.completes[0].task().epoch(), 7);
  EXPECT_EQ(fake_.completes[0].task().job_id(), "job-1");
  EXPECT_EQ(fake_.completes[0].task().worker_id(), "w1");
  EXPECT_GT(fake_.completes[0].seconds(), 0);
  EXPECT_TRUE(fake_.fails.empty());
  // Heartbeats with the epoch and a stage.
  ASSERT_FALSE(fake_.heartbeats.empty());
  for (const v1::HeartbeatRequest& beat : fake_.heartbeats) {
    EXPECT_EQ(beat.task().epoch(), 7);
    const std::string& stage = beat.progress().stage();
    EXPECT_TRUE(stage == "fetch" || stage == "compute" || stage == "upload")
        << stage;
    EXPECT_GE(beat.progress().fraction(), 0);
    EXPECT_LE(beat.progress().fraction(), 1);
  }
  // Many chunks, none over the limit.
  EXPECT_GT(fake_.chunks_uploaded, 2u);
  EXPECT_LE(fake_.largest_chunk, static_cast<size_t>(kMaxChunkBytes));
  // The result is a valid block result, equal to what the engine computes.
  ASSERT_EQ(fake_.uploads.count(0), 1u);
  const auto& outputs = fake_.uploads[0];
  ASSERT_EQ(outputs.size(), 1u);
  ASSERT_EQ(outputs.count(kResultTensor), 1u);
  const std::string uploaded = *dir_ + "/uploaded.safetensors";
  ASSERT_TRUE(WriteFileAtomically(uploaded, outputs.at(kResultTensor)).ok());
  EXPECT_TRUE(LoadBlockResult(uploaded).ok());
  ExpectSameTensors(uploaded, *reference_result_);
  // Scratch space is cleaned up once the session's removals are done:
  // nothing but the (empty) held activations and trash.
  session_.reset();
  std::set<std::string> entries;
  for (const auto& entry : std::filesystem::directory_iterator(scratch)) {
    entries.insert(entry.path().filename());
    EXPECT_TRUE(std::filesystem::is_empty(entry.path())) << entry.path();
  }
  EXPECT_EQ(entries, (std::set<std::string>{"held", "trash"}));
  const std::string text = metrics_.TextExposition();
  EXPECT_NE(
      text.find("quant_worker_tasks_total{kind=\"block\",outcome=\"done\"} 1"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("quant_bytes_streamed_total{direction=\"to_worker\"}"),
            std::string::npos);
  EXPECT_NE(text.find("quant_worker_busy 0"), std::string::npos);
}

TEST_F(WorkerSessionTest, BadInputsAreTheTasksFault) {
  // A tensor of the block missing from the inputs.
  ServedTask missing = Block(0, 1);
  auto* inputs = missing.spec.mutable_inputs();
  for (int i = 0; i < inputs->size(); ++i) {
    if (inputs->Get(i).name() == kQProj) {
      inputs->DeleteSubrange(i, 1);
      break;
    }
  }
  missing.data.erase(kQProj);
  fake_.AddTask(missing);
  // A shape that does not match the block's (same bytes, transposed).
  ServedTask transposed = Block(1, 1);
  for (v1::TensorInfo& info : *transposed.spec.mutable_inputs()) {
    if (info.name() == kQProj) {
      info.clear_shape();
      info.add_shape(128);
      info.add_shape(512);
    }
  }
  fake_.AddTask(transposed);
  // A spec whose shape and size disagree.
  ServedTask inconsistent = Block(2, 1);
  inconsistent.spec.mutable_inputs(0)->set_size_bytes(3);
  fake_.AddTask(inconsistent);
  Start(Options());
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.fails.size() == 3; }));
  DrainAndJoin();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  absl::MutexLock lock(&fake_.mu_);
  EXPECT_TRUE(fake_.completes.empty());
  for (const v1::FailTaskRequest& fail : fake_.fails) {
    EXPECT_TRUE(fail.task_fault()) << fail.error();
    EXPECT_FALSE(fail.error().empty());
  }
  EXPECT_NE(fake_.fails[0].error().find("q_proj"), std::string::npos)
      << fake_.fails[0].error();
  EXPECT_EQ(session_->tasks_done(), 0);
  EXPECT_NE(
      metrics_.TextExposition().find(
          "quant_worker_tasks_total{kind=\"block\",outcome=\"failed\"} 3"),
      std::string::npos);
}

// A GPU backend whose device fails the way CUDA's do (out of memory, then
// a device that went away): the engine's real error codes, without a GPU.
class FailingDeviceBackend : public CpuBlockBackend {
 public:
  ComputeKernel kernel() const override {
    return {"cuda", "Test GPU (GPU 0, sm_90, 80.0 GiB)"};
  }
  int64_t device_memory_bytes() const override { return int64_t{80} << 30; }
  absl::StatusOr<BlockResult> QuantizeBlock(const LlamaForward&,
                                            DecoderBlockWeights,
                                            const BlockRecipe&, int64_t,
                                            int64_t, float*) override {
    return ++calls_ == 1
               ? absl::ResourceExhaustedError(
                     "GPU 0: out of memory allocating the calibration "
                     "activations: 9000 MiB needed, 512 MiB free")
               : absl::UnavailableError("GPU 0: device lost");
  }

 private:
  int calls_ = 0;
};

TEST_F(WorkerSessionTest, DeviceFailuresAreTheWorkersFault) {
  fake_.AddTask(Block(0, 1));
  fake_.AddTask(Block(1, 1));
  WorkerOptions options = Options();
  options.backend = std::make_shared<FailingDeviceBackend>();
  Start(options);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.fails.size() == 2; }));
  DrainAndJoin();
  EXPECT_TRUE(run_status_.ok()) << run_status_;  // The worker lives on.
  absl::MutexLock lock(&fake_.mu_);
  ASSERT_FALSE(fake_.capabilities.empty());
  EXPECT_EQ(fake_.capabilities[0].backend(), v1::BACKEND_CUDA);
  EXPECT_EQ(fake_.capabilities[0].device(),
            "Test GPU (GPU 0, sm_90, 80.0 GiB)");
  EXPECT_EQ(fake_.capabilities[0].memory_bytes(), int64_t{80} << 30);
  for (const v1::FailTaskRequest& fail : fake_.fails) {
    EXPECT_FALSE(fail.task_fault()) << fail.error();
  }
  EXPECT_NE(fake_.fails[0].error().find("9000 MiB needed, 512 MiB free"),
            std::string::npos)
      << fake_.fails[0].error();
  EXPECT_NE(fake_.fails[1].error().find("device lost"), std::string::npos);
}

TEST_F(WorkerSessionTest, StaleHeartbeatAbandonsTheTask) {
  ServedTask stale = Block(0, 3);
  stale.stale_heartbeat = true;
  stale.chunk_delay = absl::Milliseconds(10);
  fake_.AddTask(stale);
  fake_.AddTask(Block(1, 1));
  Start(Options());
  ASSERT_TRUE(fake_.WaitFor([&] { return !fake_.completes.empty(); }));
  DrainAndJoin();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  absl::MutexLock lock(&fake_.mu_);
  // Task 0 was dropped: no upload, no commit, no failure.
  ASSERT_EQ(fake_.completes.size(), 1u);
  EXPECT_EQ(fake_.completes[0].task().task_index(), 1);
  EXPECT_TRUE(fake_.fails.empty());
  EXPECT_EQ(fake_.uploads.count(0), 0u);
  EXPECT_EQ(session_->tasks_done(), 1);
  const std::string text = metrics_.TextExposition();
  EXPECT_NE(
      text.find(
          "quant_worker_tasks_total{kind=\"block\",outcome=\"released\"} 1"),
      std::string::npos)
      << text;
}

TEST_F(WorkerSessionTest, RegistersAgainWhenForgotten) {
  fake_.forget_on_lease = 1;         // The first lease: NOT_FOUND.
  fake_.forget_on_heartbeat = true;  // And again mid-task.
  fake_.AddTask(Block(0, 5));
  Start(Options());
  ASSERT_TRUE(fake_.WaitFor([&] { return !fake_.completes.empty(); }));
  DrainAndJoin();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  absl::MutexLock lock(&fake_.mu_);
  ASSERT_EQ(fake_.worker_ids.size(), 3u);
  ASSERT_EQ(fake_.completes.size(), 1u);
  // The task kept its epoch under the newest worker id.
  EXPECT_EQ(fake_.completes[0].task().worker_id(), "w3");
  EXPECT_EQ(fake_.completes[0].task().epoch(), 5);
  EXPECT_TRUE(fake_.fails.empty());
}

TEST_F(WorkerSessionTest, DrainWhileIdleReturnsPromptly) {
  WorkerOptions options = Options();
  options.lease_wait_ms = 30000;
  Start(options);
  ASSERT_TRUE(fake_.WaitFor([&] { return fake_.lease_calls > 0; }));
  absl::SleepFor(absl::Milliseconds(100));
  EXPECT_LT(DrainAndJoin(), absl::Seconds(2));
  EXPECT_TRUE(run_status_.ok()) << run_status_;
}

TEST_F(WorkerSessionTest, DrainFinishesTheTaskInHand) {
  ServedTask task = Block(0, 2);
  task.chunk_delay = absl::Milliseconds(5);
  fake_.AddTask(task);
  fake_.AddTask(Block(1, 2));  // Never leased.
  Start(Options());
  ASSERT_TRUE(fake_.WaitFor([&] { return !fake_.heartbeats.empty(); }));
  DrainAndJoin();
  EXPECT_TRUE(run_status_.ok()) << run_status_;
  absl::MutexLock lock(&fake_.mu_);
  ASSERT_EQ(fake_.completes.size(), 1u);
  EXPECT_EQ(fake_.completes[0].task().task_index(), 0);
  EXPECT_EQ(fake_.lease_calls, 1);
}

TEST_F(WorkerSessionTest, CreateChecksItsOptions) {
  WorkerOptions options = Options();
  options.scratch_dir.clear();
  EXPECT_EQ(WorkerSession::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
  options = Options();
  options.rpc_timeout_ms = 0;
  EXPECT_EQ(WorkerSession::Create(options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace quant
