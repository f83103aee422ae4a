#include "coordinator/coordinator.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/auth.h"
#include "common/file.h"
#include "common/metrics.h"
#include "common/test_data.h"
#include "common/test_pki.h"
#include "convert/tiny_llama.h"
#include "format/safetensors.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "kernels/cpu/compute_kernel.h"
#include "proto/quant/v1/quantization_service.grpc.pb.h"
#include "proto/quant/v1/worker_service.grpc.pb.h"
#include "proto/recipe.h"
#include "quant/block_backend.h"
#include "quant/quantize_model.h"
#include "worker/worker_session.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

std::string Bytes(const std::string& path) { return *ReadFileToString(path); }

class CoordinatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTestTempDir("coordinator");
    model_ = dir_ + "/model";
    ASSERT_TRUE(WriteTinyLlama(model_, TinyLlamaOptions()).ok());
    tokens_ = dir_ + "/tokens.txt";
    std::ofstream out(tokens_);
    std::mt19937 rng(5);
    for (int i = 0; i < 2000; ++i) out << rng() % 500 << " ";
    out.close();
    engine_.model_dir = model_;
    engine_.calibration.tokens_path = tokens_;
    engine_.calibration.samples = 4;
    engine_.calibration.seq_len = 40;
    engine_.sequences_per_pass = 3;
    engine_.weights = {4, 64, false};
    Start();
  }
  void TearDown() override {
    StopWorkers();
    coordinator_.reset();
  }

  void Start() {
    CoordinatorOptions options;
    options.listen_address = listen_address_;  // "": in-process only.
    options.jobs.state_dir = dir_ + "/state";
    options.jobs.model_roots = {dir_};
    options.jobs.output_roots = {dir_ + "/out"};
    options.jobs.scheduler.lease_ms = 3000;
    options.jobs.scheduler.heartbeat_interval_ms = 100;
    options.jobs.scheduler.affinity_ms = affinity_ms_;
    options.jobs.tick_ms = 50;
    fs::create_directories(dir_ + "/out");
    auto coordinator = Coordinator::Create(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = std::move(*coordinator);
    stub_ = v1::QuantizationService::NewStub(coordinator_->InProcessChannel());
  }

  void StartWorkers(
      int n, const std::function<void(WorkerOptions&)>& customize = nullptr) {
    for (int i = 0; i < n; ++i) {
      WorkerOptions options;
      options.channel = coordinator_->InProcessChannel();
      options.name = absl::StrCat("w", i);
      options.threads = 1;
      options.scratch_dir = absl::StrCat(dir_, "/scratch", workers_.size());
      options.lease_wait_ms = 200;
      if (customize) customize(options);
      auto session = WorkerSession::Create(options);
      ASSERT_TRUE(session.ok()) << session.status();
      WorkerSession* worker = session->get();
      sessions_.push_back(std::move(*session));
      workers_.emplace_back([worker] { (void)worker->Run(); });
    }
  }
  // Runs engine_'s job into <dir>/out/<name> and compares its checkpoint
  // with the engine's in `expected`, byte for byte.
  void ExpectJobMatchesEngine(const std::string& expected,
                              const std::string& name) {
    v1::Job job;
    const std::string output = dir_ + "/out/" + name;
    ASSERT_TRUE(Submit(Spec(engine_, output), &job).ok());
    const v1::Job done = Watch(job.job_id());
    ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
    EXPECT_TRUE(Bytes(output + "/model.safetensors") ==
                Bytes(expected + "/model.safetensors"));
  }
  void StopWorkers() {
    for (auto& s : sessions_) s->Drain();
    for (auto& t : workers_) t.join();
    workers_.clear();
    sessions_.clear();
  }

  v1::JobSpec Spec(const QuantizeModelOptions& options,
                   const std::string& output,
                   v1::Mode mode = v1::MODE_SEQUENTIAL) {
    v1::JobSpec spec;
    spec.set_model_dir(model_);
    spec.set_output(output);
    *spec.mutable_recipe() = RecipeFromOptions(options, mode);
    return spec;
  }

  grpc::Status Submit(const v1::JobSpec& spec, v1::Job* job) {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = spec;
    return stub_->SubmitJob(&context, request, job);
  }

  // Watches the job to its end; returns the final job.
  v1::Job Watch(const std::string& job_id) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(120));
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    auto reader = stub_->WatchJob(&context, request);
    v1::JobEvent event;
    v1::Job last;
    while (reader->Read(&event)) last = event.job();
    EXPECT_TRUE(reader->Finish().ok());
    return last;
  }

  v1::Job Get(const std::string& job_id) {
    grpc::ClientContext context;
    v1::GetJobRequest request;
    request.set_job_id(job_id);
    request.set_include_tasks(true);
    v1::Job job;
    EXPECT_TRUE(stub_->GetJob(&context, request, &job).ok());
    return job;
  }

  // The engine's own output for `options`, written directly.
  std::string EngineOutput(QuantizeModelOptions options,
                           const std::string& name) {
    options.output = dir_ + "/" + name;
    options.work_dir = dir_ + "/" + name + ".work";
    EXPECT_TRUE(QuantizeModel(options).ok());
    return options.output;
  }

  std::string dir_, model_, tokens_;
  int64_t affinity_ms_ = 0;
  std::string listen_address_;  // "": in-process only.
  QuantizeModelOptions engine_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<v1::QuantizationService::Stub> stub_;
  std::vector<std::unique_ptr<WorkerSession>> sessions_;
  std::vector<std::thread> workers_;
};

TEST_F(CoordinatorTest, GptqJobMatchesTheEngineByteForByte) {
  const std::string expected = EngineOutput(engine_, "engine-gptq");
  StartWorkers(2);
  v1::Job job;
  const std::string output = dir_ + "/out/gptq";
  ASSERT_TRUE(Submit(Spec(engine_, output), &job).ok());
  // Queued, or already running: the workers are waiting.
  EXPECT_TRUE(job.state() == v1::JOB_STATE_QUEUED ||
              job.state() == v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job.tasks_total(), 3);  // embed + 2 blocks.
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_EQ(done.tasks_done(), 3);
  EXPECT_TRUE(Bytes(output + "/model.safetensors") ==
              Bytes(expected + "/model.safetensors"));
  EXPECT_EQ(Bytes(output + "/config.json"), Bytes(expected + "/config.json"));
  EXPECT_EQ(done.report_path(), output + "/quantization_report.json");
  EXPECT_TRUE(fs::exists(done.report_path()));
  // Activations are dropped once consumed; results stay committed.
  const v1::Job detail = Get(job.job_id());
  for (const v1::Task& task : detail.tasks()) {
    EXPECT_EQ(task.state(), v1::TASK_STATE_DONE);
    EXPECT_EQ(task.task_faults(), 0);
    // The job status says what computed each task.
    EXPECT_EQ(task.backend(), "cpu");
    EXPECT_EQ(task.kernel(), CpuComputeKernel().kernel);
  }
}

TEST_F(CoordinatorTest, GgufJobMatchesTheEngineByteForByte) {
  QuantizeModelOptions options = engine_;
  options.output_format = OutputFormat::kGguf;
  options.gguf_type = "Q4_K_M";
  const std::string expected = EngineOutput(options, "engine.gguf");
  StartWorkers(2);
  v1::Job job;
  const std::string output = dir_ + "/out/model.gguf";
  ASSERT_TRUE(Submit(Spec(options, output), &job).ok());
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(Bytes(output) == Bytes(expected));
  EXPECT_TRUE(fs::exists(output + ".report.json"));
}

// With affinity, each block goes to the worker that made its input
// activations, which reads its own copy instead of fetching it; the output
// is still the engine's, byte for byte.
TEST_F(CoordinatorTest, AffineWorkersReadTheActivationsTheyHold) {
  coordinator_.reset();
  affinity_ms_ = 30'000;
  Start();
  const std::string expected = EngineOutput(engine_, "engine-affine");
  ServiceMetrics metrics;
  absl::Mutex mu;
  std::vector<std::string> lines;
  StartWorkers(3, [&](WorkerOptions& options) {
    options.metrics = &metrics;
    options.log = [&](const std::string& line) {
      absl::MutexLock lock(&mu);
      lines.push_back(line);
    };
  });
  ExpectJobMatchesEngine(expected, "affine");
  StopWorkers();
  // Both blocks read held activations: 4 x 40 tokens x hidden F32 each.
  int held = 0;
  for (const std::string& line : lines) {
    held += absl::StrContains(line, "reads the activations it holds");
  }
  EXPECT_EQ(held, 2);
  // Their makers (the embedding, block 0) committed them by digest and
  // uploaded them after: off the critical path.
  int deferred = 0;
  for (const std::string& line : lines) {
    deferred += absl::StrContains(line, "committed by digest, uploaded after");
  }
  EXPECT_EQ(deferred, 2);
  const int64_t bytes = 2 * 4 * 40 * TinyLlamaOptions().hidden_size * 4;
  EXPECT_TRUE(absl::StrContains(
      metrics.TextExposition(),
      absl::StrCat("quant_worker_local_input_bytes_total{source=\"held\"} ",
                   bytes, "\n")))
      << metrics.TextExposition();
}

// Uploads sent as several streams side by side (the activations committed
// deferred and the block results alike), in units smaller than the tiny
// model's tensors so that every stream carries several: the output is the
// engine's, byte for byte.
TEST_F(CoordinatorTest, StripedUploadsMatchTheEngineByteForByte) {
  coordinator_.reset();
  affinity_ms_ = 30'000;
  // Over TCP: the streams after the first go on connections of their own.
  listen_address_ = "127.0.0.1:0";
  Start();
  const std::string expected = EngineOutput(engine_, "engine-striped");
  absl::Mutex mu;
  std::vector<std::string> lines;
  StartWorkers(2, [&](WorkerOptions& options) {
    options.channel = nullptr;
    options.coordinator = absl::StrCat("127.0.0.1:", coordinator_->port());
    options.auth.insecure = true;
    options.upload_streams = 3;
    options.striped_upload_bytes = 1;
    options.stripe_unit_bytes = 4096;
    options.log = [&](const std::string& line) {
      absl::MutexLock lock(&mu);
      lines.push_back(line);
    };
  });
  ExpectJobMatchesEngine(expected, "striped");
  StopWorkers();
  // The embedding's and block 0's activations (deferred) and both blocks'
  // results.
  int striped = 0, deferred = 0;
  for (const std::string& line : lines) {
    striped += absl::StrContains(line, "uploaded in 3 streams");
    deferred += absl::StrContains(line, "committed by digest, uploaded after");
  }
  EXPECT_EQ(deferred, 2);
  EXPECT_EQ(striped, 4);
}

// Workers that see the model root read every weight there once the
// coordinator recorded its digest; the output is the engine's.
TEST_F(CoordinatorTest, WorkersOnASharedRootReadVerifiedWeights) {
  QuantizeModelOptions options = engine_;
  options.output_format = OutputFormat::kGguf;
  options.gguf_type = "Q4_K_M";
  const std::string expected = EngineOutput(options, "engine-direct.gguf");
  v1::Job job;
  const std::string output = dir_ + "/out/direct.gguf";
  ASSERT_TRUE(Submit(Spec(options, output), &job).ok());
  // The workers come once every tensor is recorded (before, they stream).
  const size_t tensors =
      (*SafetensorsCheckpoint::Open(model_))->TensorNames().size();
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  size_t recorded = 0;
  while (recorded < tensors && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
    for (const auto& entry :
         fs::recursive_directory_iterator(dir_ + "/state")) {
      if (entry.path().filename() != "weights.digest") continue;
      std::ifstream in(entry.path());
      recorded = std::count(std::istreambuf_iterator<char>(in),
                            std::istreambuf_iterator<char>(), '\n');
    }
  }
  ASSERT_EQ(recorded, tensors);
  ServiceMetrics metrics;
  absl::Mutex mu;
  int direct = 0;
  StartWorkers(2, [&](WorkerOptions& worker) {
    worker.shared_model_roots = {dir_};
    worker.metrics = &metrics;
    worker.log = [&](const std::string& line) {
      absl::MutexLock lock(&mu);
      direct += absl::StrContains(line, "digest verified");
    };
  });
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(Bytes(output) == Bytes(expected));
  StopWorkers();
  // embed, 2 blocks and the GGUF head: each read its weights locally.
  EXPECT_EQ(direct, 4);
  EXPECT_EQ(done.tasks_total(), 4);
  EXPECT_TRUE(absl::StrContains(
      metrics.TextExposition(),
      "quant_worker_local_input_bytes_total{source=\"model_root\"}"));
}

// Data-parallel calibration over two workers (recipe calibration_shards
// 2): each block's stages captured shard by shard on the workers holding
// the shards' activations, solved once, the quantized block forwarded per
// shard; the GGUF is the engine's with the same recipe, byte for byte, and
// the intermediates are gone once consumed.
TEST_F(CoordinatorTest, DataParallelCalibrationMatchesTheEngine) {
  coordinator_.reset();
  affinity_ms_ = 30'000;
  Start();
  QuantizeModelOptions options = engine_;
  options.output_format = OutputFormat::kGguf;
  options.gguf_type = "Q4_K_M";
  options.calibration_shards = 2;  // 4 sequences, passes of 3: 3 + 1.
  const std::string expected = EngineOutput(options, "engine-dp.gguf");
  absl::Mutex mu;
  int held = 0;
  StartWorkers(2, [&](WorkerOptions& worker) {
    worker.log = [&](const std::string& line) {
      absl::MutexLock lock(&mu);
      held += absl::StrContains(line, "reads the activations it holds");
    };
  });
  v1::Job job;
  const std::string output = dir_ + "/out/dp.gguf";
  ASSERT_TRUE(Submit(Spec(options, output), &job).ok());
  // 2 embeds; per block 4 stages of 2 captures and a solve; 2 forwards
  // between the blocks; the head.
  EXPECT_EQ(job.tasks_total(), 2 + 2 * 12 + 2 + 1);
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(Bytes(output) == Bytes(expected));
  StopWorkers();
  absl::MutexLock lock(&mu);
  EXPECT_GT(held, 0);  // Affinity kept shards where they were made.
  // The last task's inputs go just after its commit, which the assembly
  // (and the job's success) need not wait for.
  auto intermediates = [&] {
    std::vector<std::string> left;
    for (const auto& entry :
         fs::recursive_directory_iterator(dir_ + "/state")) {
      const std::string name = entry.path().filename().string();
      if (absl::StartsWith(name, "statistics-") ||
          absl::StartsWith(name, "partial-") ||
          absl::StartsWith(name, "activations-")) {
        left.push_back(entry.path().string());
      }
    }
    return left;
  };
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (!intermediates().empty() && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(20));
  }
  const std::vector<std::string> left = intermediates();
  EXPECT_TRUE(left.empty()) << left.size() << " left, e.g. " << left[0];
}

// The same recipe with the shards kept in each block task, run by a worker
// whose slot spans two devices (here two CPU backends): the sequential
// chain of block tasks, and the engine's bytes.
TEST_F(CoordinatorTest, ShardsInTheBlockTaskMatchTheEngine) {
  QuantizeModelOptions options = engine_;
  options.output_format = OutputFormat::kGguf;
  options.gguf_type = "Q4_K_M";
  options.calibration_shards = 2;
  const std::string expected = EngineOutput(options, "engine-in-task.gguf");
  std::string kernel;
  StartWorkers(1, [&](WorkerOptions& worker) {
    absl::StatusOr<std::unique_ptr<BlockBackend>> group =
        MakeBlockBackendGroup("cpu", {0, 1});
    ASSERT_TRUE(group.ok()) << group.status();
    kernel = (*group)->kernel().kernel;
    worker.backend = *std::move(group);
  });
  v1::JobSpec spec = Spec(options, dir_ + "/out/in-task.gguf");
  spec.mutable_recipe()->set_shards_in_task(true);
  v1::Job job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  EXPECT_EQ(job.tasks_total(), 1 + 2 + 1);  // Embed, two blocks, the head.
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(Bytes(dir_ + "/out/in-task.gguf") == Bytes(expected));
  EXPECT_TRUE(absl::EndsWith(kernel, " x 2")) << kernel;
}

TEST_F(CoordinatorTest, ParallelAndDataFreeJobsRun) {
  StartWorkers(2);
  v1::Job job;
  ASSERT_TRUE(
      Submit(Spec(engine_, dir_ + "/out/par", v1::MODE_PARALLEL), &job).ok());
  EXPECT_EQ(job.tasks_total(), 4);  // embed, forward 0, block 0, block 1.
  v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(fs::exists(dir_ + "/out/par/model.safetensors"));

  QuantizeModelOptions rtn = engine_;
  rtn.method = QuantMethod::kRtn;
  rtn.calibration.samples = 0;
  rtn.calibration.tokens_path.clear();
  const std::string expected = EngineOutput(rtn, "engine-rtn");
  ASSERT_TRUE(Submit(Spec(rtn, dir_ + "/out/rtn"), &job).ok());
  EXPECT_EQ(job.tasks_total(), 2);
  done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(Bytes(dir_ + "/out/rtn/model.safetensors") ==
              Bytes(expected + "/model.safetensors"));
}

TEST_F(CoordinatorTest, BadSubmissionsNameTheField) {
  struct Case {
    std::function<void(v1::JobSpec&)> edit;
    std::string field;
  };
  const std::vector<Case> cases = {
      {[](v1::JobSpec& s) { s.mutable_recipe()->set_bits(9); }, "recipe.bits"},
      {[](v1::JobSpec& s) {
         s.mutable_recipe()->set_output_format(v1::OUTPUT_FORMAT_AWQ);
         s.mutable_recipe()->set_bits(3);
       },
       "spec: bits"},
      {[&](v1::JobSpec& s) { s.set_output(dir_ + "/elsewhere"); },
       "spec.output"},
      {[](v1::JobSpec& s) { s.set_model_dir("/etc"); }, "spec.model_dir"},
      {[&](v1::JobSpec& s) { s.set_model_dir(dir_ + "/missing"); },
       "spec.model_dir"},
      {[&](v1::JobSpec& s) { s.set_output(dir_ + "/out"); }, "spec.output"},
      {[&](v1::JobSpec& s) {
         s.mutable_recipe()->mutable_calibration()->set_tokens_path(
             "/etc/passwd");
       },
       "recipe.calibration.tokens_path"},
      {[](v1::JobSpec& s) {
         s.mutable_recipe()->set_output_format(v1::OUTPUT_FORMAT_GGUF);
         s.mutable_recipe()->set_gguf_type("Q9_X");
       },
       "recipe.gguf_type"},
      {[](v1::JobSpec& s) {
         s.GetReflection()->MutableUnknownFields(&s)->AddVarint(99, 1);
       },
       "spec: unknown field"},
  };
  for (const Case& c : cases) {
    v1::JobSpec spec = Spec(engine_, dir_ + "/out/never");
    c.edit(spec);
    v1::Job job;
    const grpc::Status status = Submit(spec, &job);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.field << ": " << status.error_message();
    EXPECT_EQ(status.error_message().rfind(c.field, 0), 0u)
        << status.error_message();
  }
  grpc::ClientContext context;
  v1::ListJobsResponse list;
  ASSERT_TRUE(stub_->ListJobs(&context, {}, &list).ok());
  EXPECT_EQ(list.jobs_size(), 0);  // Nothing was committed.
  EXPECT_FALSE(fs::exists(dir_ + "/out/never"));
}

TEST_F(CoordinatorTest, OneCoordinatorPerStateDirectory) {
  CoordinatorOptions options;
  options.listen_address = "";
  options.jobs.state_dir = dir_ + "/state";
  options.jobs.model_roots = {dir_};
  options.jobs.output_roots = {dir_};
  const auto second = Coordinator::Create(options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(second.status().message().find("another coordinator"),
            absl::string_view::npos);
}

TEST_F(CoordinatorTest, TwoJobsCannotWriteOneOutput) {
  v1::Job job;
  ASSERT_TRUE(Submit(Spec(engine_, dir_ + "/out/once"), &job).ok());
  // The same output, spelled another way.
  const grpc::Status again =
      Submit(Spec(engine_, dir_ + "/out/../out/once/"), &job);
  EXPECT_EQ(again.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(again.error_message().find("already writes"), std::string::npos)
      << again.error_message();
  // Stored resolved.
  EXPECT_EQ(Get("1").spec().output(), dir_ + "/out/once");
}

TEST_F(CoordinatorTest, AFailedJobResumesOnceTheCauseIsGone) {
  const std::string expected = EngineOutput(engine_, "engine-resume");
  v1::Job job;
  const std::string output = dir_ + "/out/resumed";
  ASSERT_TRUE(Submit(Spec(engine_, output), &job).ok());
  // A shard goes missing after submission: every attempt of the first
  // task fails, three times, and the job fails.
  const std::string shard = model_ + "/model-00001-of-00002.safetensors";
  ASSERT_TRUE(fs::exists(shard));
  fs::rename(shard, shard + ".away");
  StartWorkers(1);
  v1::Job failed = Watch(job.job_id());
  ASSERT_EQ(failed.state(), v1::JOB_STATE_FAILED);
  EXPECT_NE(failed.error().find("failed 3 times"), std::string::npos)
      << failed.error();
  fs::rename(shard + ".away", shard);
  grpc::ClientContext context;
  v1::ResumeJobRequest request;
  request.set_job_id(job.job_id());
  v1::Job resumed;
  ASSERT_TRUE(stub_->ResumeJob(&context, request, &resumed).ok());
  EXPECT_TRUE(resumed.state() == v1::JOB_STATE_QUEUED ||
              resumed.state() == v1::JOB_STATE_RUNNING);
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(Bytes(output + "/model.safetensors") ==
              Bytes(expected + "/model.safetensors"));
}

TEST_F(CoordinatorTest, ARestartedCoordinatorContinuesFromCommittedTasks) {
  const std::string expected = EngineOutput(engine_, "engine-restart");
  v1::Job job;
  const std::string output = dir_ + "/out/restarted";
  ASSERT_TRUE(Submit(Spec(engine_, output), &job).ok());
  StartWorkers(1);
  // Let the embed task commit, then stop everything.
  for (int i = 0; i < 600 && Get(job.job_id()).tasks_done() < 1; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  StopWorkers();
  const v1::Job before = Get(job.job_id());
  ASSERT_GE(before.tasks_done(), 1);
  coordinator_.reset();
  Start();
  StartWorkers(2);
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  // Committed tasks were not run again: their fencing epochs did not move.
  const v1::Job after = Get(job.job_id());
  for (int i = 0; i < before.tasks_done(); ++i) {
    EXPECT_EQ(after.tasks(i).seconds(), before.tasks(i).seconds()) << i;
  }
  EXPECT_TRUE(Bytes(output + "/model.safetensors") ==
              Bytes(expected + "/model.safetensors"));
}

TEST_F(CoordinatorTest, CancelStopsAJobAndResumeFinishesIt) {
  v1::Job job;
  ASSERT_TRUE(Submit(Spec(engine_, dir_ + "/out/cancelled"), &job).ok());
  grpc::ClientContext context;
  v1::CancelJobRequest request;
  request.set_job_id(job.job_id());
  v1::Job cancelled;
  ASSERT_TRUE(stub_->CancelJob(&context, request, &cancelled).ok());
  EXPECT_EQ(cancelled.state(), v1::JOB_STATE_CANCELLED);
  StartWorkers(1);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(Get(job.job_id()).tasks_done(), 0);  // Nothing ran.
  grpc::ClientContext resume_context;
  v1::ResumeJobRequest resume;
  resume.set_job_id(job.job_id());
  v1::Job resumed;
  ASSERT_TRUE(stub_->ResumeJob(&resume_context, resume, &resumed).ok());
  EXPECT_EQ(Watch(job.job_id()).state(), v1::JOB_STATE_SUCCEEDED);
  grpc::ClientContext workers_context;
  v1::ListWorkersResponse workers;
  ASSERT_TRUE(stub_->ListWorkers(&workers_context, {}, &workers).ok());
  EXPECT_EQ(workers.workers_size(), 1);
  EXPECT_EQ(workers.workers(0).tasks_done(), 3);
}

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& slice : slices) {
    out.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  }
  return out;
}

grpc::ByteBuffer Buffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

// grpc.health.v1 and server reflection answer, through hand-encoded
// messages (so the test needs neither service's generated code).
// What a worker sends is bounded before it is stored or written: names of
// plain text, errors cut to 4 KiB, outputs no larger than the task needs.
TEST_F(CoordinatorTest, AWorkersWordsAreBounded) {
  auto worker = v1::WorkerGateway::NewStub(coordinator_->InProcessChannel());
  auto register_as = [&](const std::string& name, std::string* id) {
    grpc::ClientContext context;
    v1::RegisterWorkerRequest request;
    request.set_name(name);
    request.mutable_capabilities()->set_backend(v1::BACKEND_CPU);
    request.mutable_capabilities()->set_threads(1);
    request.mutable_capabilities()->set_memory_bytes(int64_t{8} << 30);
    v1::RegisterWorkerResponse response;
    const grpc::Status status =
        worker->RegisterWorker(&context, request, &response);
    if (id != nullptr) *id = response.worker_id();
    return status.error_code();
  };
  // (A name that is not UTF-8 never gets here: protobuf refuses to parse
  // the request.)
  for (const std::string& bad :
       {std::string(), std::string(300, 'w'), std::string("w\nforged line"),
        std::string("w\x01")}) {
    EXPECT_EQ(register_as(bad, nullptr), grpc::StatusCode::INVALID_ARGUMENT)
        << bad.size();
  }
  std::string id;
  ASSERT_EQ(register_as("honest-worker", &id), grpc::StatusCode::OK);

  v1::Job job;
  ASSERT_TRUE(Submit(Spec(engine_, dir_ + "/out/bounded"), &job).ok());
  auto lease = [&] {
    grpc::ClientContext context;
    v1::LeaseTaskRequest request;
    request.set_worker_id(id);
    request.set_wait_ms(2000);
    v1::LeaseTaskResponse response;
    EXPECT_TRUE(worker->LeaseTask(&context, request, &response).ok());
    EXPECT_TRUE(response.has_task());
    return response.task();
  };
  // An upload declaring a petabyte is refused at its first chunk.
  const v1::TaskRef first = lease();
  {
    grpc::ClientContext context;
    v1::UploadResultResponse response;
    auto writer = worker->UploadResult(&context, &response);
    v1::UploadResultRequest message;
    *message.mutable_task() = first;
    ASSERT_TRUE(writer->Write(message));
    v1::Chunk& chunk = *message.mutable_chunk();
    chunk.set_tensor("activations");
    chunk.mutable_info()->set_size_bytes(uint64_t{1} << 50);
    chunk.set_data("x");
    writer->Write(message);
    writer->WritesDone();
    const grpc::Status status = writer->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(status.error_message().find("declares 1125899906842624 bytes"),
              std::string::npos)
        << status.error_message();
  }
  // A 1 MiB error is stored as 4 KiB and a note of its size.
  const v1::TaskRef second = lease();
  {
    grpc::ClientContext context;
    v1::FailTaskRequest request;
    *request.mutable_task() = second;
    request.set_error(std::string(1 << 20, 'e'));
    v1::FailTaskResponse response;
    ASSERT_TRUE(worker->FailTask(&context, request, &response).ok());
  }
  bool found = false;
  const v1::Job after = Get(job.job_id());
  for (const v1::Task& task : after.tasks()) {
    if (task.error().find("(1048576 bytes)") == std::string::npos) continue;
    found = true;
    EXPECT_LE(task.error().size(), 4096u + 32);
  }
  EXPECT_TRUE(found);
}

TEST_F(CoordinatorTest, HealthAndReflectionAreOn) {
  grpc::GenericStub stub(coordinator_->InProcessChannel());
  // HealthCheckRequest{service: ""} is empty; the answer is
  // HealthCheckResponse{status: SERVING (1)}.
  grpc::ClientContext health_context;
  const grpc::ByteBuffer request = Buffer("");
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  stub.UnaryCall(&health_context, "/grpc.health.v1.Health/Check",
                 grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
                   status = s;
                   done.Notify();
                 });
  done.WaitForNotification();
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(Flatten(response), std::string("\x08\x01", 2));

  // ServerReflectionRequest{list_services: ""} (field 7).
  grpc::CompletionQueue cq;
  grpc::ClientContext reflection_context;
  auto call = stub.PrepareCall(
      &reflection_context,
      "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  auto step = [&](intptr_t want) {
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_TRUE(ok);
    EXPECT_EQ(reinterpret_cast<intptr_t>(tag), want);
  };
  call->StartCall(reinterpret_cast<void*>(1));
  step(1);
  call->Write(Buffer(std::string("\x3a\x00", 2)), reinterpret_cast<void*>(2));
  step(2);
  call->WritesDone(reinterpret_cast<void*>(3));
  step(3);
  grpc::ByteBuffer listed;
  call->Read(&listed, reinterpret_cast<void*>(4));
  step(4);
  grpc::Status finished;
  call->Finish(&finished, reinterpret_cast<void*>(5));
  step(5);
  EXPECT_TRUE(finished.ok()) << finished.error_message();
  const std::string services = Flatten(listed);
  EXPECT_NE(services.find("quant.v1.QuantizationService"), std::string::npos);
  EXPECT_NE(services.find("quant.v1.WorkerGateway"), std::string::npos);
}

// A block result damaged on disk after its commit (a flipped bit) is found
// before the assembly: its task runs again, with the tasks that make its
// inputs, and the output is still the engine's byte for byte; the tasks
// after it are not run again.
TEST_F(CoordinatorTest, ADamagedCommittedResultIsComputedAgainBeforeAssembly) {
  TinyLlamaOptions tiny;
  tiny.num_layers = 4;
  const std::string model = dir_ + "/model4";
  ASSERT_TRUE(WriteTinyLlama(model, tiny).ok());
  QuantizeModelOptions options = engine_;
  options.model_dir = model;
  const std::string expected = EngineOutput(options, "engine-redo");
  v1::JobSpec spec = Spec(options, dir_ + "/out/redo");
  spec.set_model_dir(model);
  v1::Job job;
  ASSERT_TRUE(Submit(spec, &job).ok());
  StartWorkers(1);
  // embed and block 0 committed; the worker stops after the task in hand.
  for (int i = 0; i < 600 && Get(job.job_id()).tasks_done() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  StopWorkers();
  const v1::Job before = Get(job.job_id());
  ASSERT_GE(before.tasks_done(), 2);
  ASSERT_LT(before.tasks_done(), 5);
  std::string job_dir;
  for (const auto& entry : fs::directory_iterator(dir_ + "/state/jobs")) {
    job_dir = entry.path().string();
  }
  const std::string result = BlockResultPath(job_dir, 0);
  std::string bytes = Bytes(result);
  bytes[bytes.size() / 2] ^= 0x04;
  {
    std::ofstream out(result, std::ios::binary | std::ios::trunc);
    out << bytes;
  }
  StartWorkers(1);
  const v1::Job done = Watch(job.job_id());
  ASSERT_EQ(done.state(), v1::JOB_STATE_SUCCEEDED) << done.error();
  EXPECT_TRUE(Bytes(dir_ + "/out/redo/model.safetensors") ==
              Bytes(expected + "/model.safetensors"));
  const v1::Job after = Get(job.job_id());
  // embed (its activations were dropped) and block 0 ran again ...
  for (int i : {0, 1}) {
    EXPECT_EQ(after.tasks(i).infra_faults(), 1) << i;
    EXPECT_NE(after.tasks(i).seconds(), before.tasks(i).seconds()) << i;
  }
  // ... and the blocks committed after it did not.
  for (int i = 2; i < before.tasks_done(); ++i) {
    EXPECT_EQ(after.tasks(i).infra_faults(), 0) << i;
    EXPECT_EQ(after.tasks(i).seconds(), before.tasks(i).seconds()) << i;
  }
}

// The coordinator over TLS with client certificates and bearer tokens.
class CoordinatorAuthTest : public CoordinatorTest {
 protected:
  void SetUp() override {
    CoordinatorTest::SetUp();
    coordinator_.reset();  // Frees the state directory for a secure one.
    auth_dir_ = dir_ + "/auth";
    fs::create_directories(auth_dir_);
    Put("ca.pem", ca_.cert_pem());
    PutIdentity("server", ca_.Issue("localhost"));
    for (const char* name : {"alice", "bob", "ops", "quant-worker"}) {
      PutIdentity(name, ca_.Issue(name));
    }
    WritePrincipals({{"alice", "client", "alice-token"},
                     {"bob", "client", "bob-token"},
                     {"ops", "admin", "ops-token"},
                     {"workers", "worker", "worker-token"}});
    CoordinatorOptions options;
    options.listen_address = "127.0.0.1:0";
    options.jobs.state_dir = dir_ + "/state";
    options.jobs.model_roots = {dir_};
    options.jobs.output_roots = {dir_ + "/out"};
    options.auth.insecure = false;
    options.auth.cert_file = Path("server.pem");
    options.auth.key_file = Path("server.key");
    options.auth.client_ca_file = Path("ca.pem");
    options.auth.principals_file = Path("principals.json");
    options.auth.reload_interval_s = 1;
    auto coordinator = Coordinator::Create(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = std::move(*coordinator);
    target_ = absl::StrCat("localhost:", coordinator_->port());
  }

  struct Entry {
    std::string name, role, token;
  };
  // Principals whose certificate names are their own names (the worker
  // pool's is quant-worker).
  void WritePrincipals(const std::vector<Entry>& entries) {
    std::string list;
    for (const Entry& e : entries) {
      const std::string cert = e.role == "worker" ? "quant-worker" : e.name;
      absl::StrAppend(&list, list.empty() ? "" : ",", "{\"name\": \"", e.name,
                      "\", \"role\": \"", e.role, "\", \"token_sha256\": [\"",
                      TokenDigest(e.token), "\"], \"certificates\": [\"", cert,
                      "\"]}");
    }
    Put("principals.json", absl::StrCat("{\"principals\": [", list, "]}"));
  }
  std::string Path(const std::string& name) const {
    return auth_dir_ + "/" + name;
  }
  void Put(const std::string& name, const std::string& text) {
    WriteTestFile(Path(name), text);
  }
  void PutIdentity(const std::string& name, const TestCertificate& cert) {
    Put(name + ".pem", cert.cert_pem);
    Put(name + ".key", cert.key_pem);
  }

  // A channel presenting `identity`'s certificate ("" for none) and
  // `token` ("" for none), trusting `ca_pem` for the coordinator.
  std::shared_ptr<grpc::Channel> Dial(const std::string& identity,
                                      const std::string& token,
                                      const std::string& ca_pem = "") {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = ca_pem.empty() ? ca_.cert_pem() : ca_pem;
    if (!identity.empty()) {
      ssl.pem_cert_chain = *ReadFileToString(Path(identity + ".pem"));
      ssl.pem_private_key = *ReadFileToString(Path(identity + ".key"));
    }
    std::shared_ptr<grpc::ChannelCredentials> credentials =
        grpc::SslCredentials(ssl);
    if (!token.empty()) {
      credentials = grpc::CompositeChannelCredentials(
          credentials, grpc::AccessTokenCredentials(token));
    }
    // A fresh connection per channel, so that certificates rotated on disk
    // are what the next handshake sees.
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(target_, credentials, args);
  }

  // Alice through the product's client path (DialCoordinator), her token in
  // alice.token.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> DialAsAlice() {
    ClientAuthOptions client;
    client.ca_file = Path("ca.pem");
    client.cert_file = Path("alice.pem");
    client.key_file = Path("alice.key");
    client.token_file = Path("alice.token");
    Put("alice.token", "alice-token\n");
    return DialCoordinator(target_, client);
  }

  static grpc::ClientContext* Deadline(grpc::ClientContext* context) {
    context->set_deadline(std::chrono::system_clock::now() +
                          std::chrono::seconds(10));
    return context;
  }
  grpc::Status ListJobs(const std::shared_ptr<grpc::Channel>& channel) {
    grpc::ClientContext context;
    v1::ListJobsResponse response;
    return v1::QuantizationService::NewStub(channel)->ListJobs(
        Deadline(&context), {}, &response);
  }
  grpc::Status SubmitAs(const std::shared_ptr<grpc::Channel>& channel,
                        const std::string& output, v1::Job* job) {
    grpc::ClientContext context;
    v1::SubmitJobRequest request;
    *request.mutable_spec() = Spec(engine_, dir_ + "/out/" + output);
    return v1::QuantizationService::NewStub(channel)->SubmitJob(
        Deadline(&context), request, job);
  }
  grpc::Status CancelAs(const std::shared_ptr<grpc::Channel>& channel,
                        const std::string& job_id) {
    grpc::ClientContext context;
    v1::CancelJobRequest request;
    request.set_job_id(job_id);
    v1::Job job;
    return v1::QuantizationService::NewStub(channel)->CancelJob(
        Deadline(&context), request, &job);
  }
  grpc::Status LeaseAs(const std::shared_ptr<grpc::Channel>& channel) {
    grpc::ClientContext context;
    v1::LeaseTaskRequest request;
    request.set_worker_id("w-unknown");
    v1::LeaseTaskResponse response;
    return v1::WorkerGateway::NewStub(channel)->LeaseTask(Deadline(&context),
                                                          request, &response);
  }
  // Polls `call` until it returns `code` (a reload takes up to a second or
  // two); true when it did within 15 s.
  bool Eventually(const std::function<grpc::Status()>& call,
                  grpc::StatusCode code) {
    for (int i = 0; i < 150; ++i) {
      if (call().error_code() == code) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  std::string auth_dir_;
  std::string target_;
  TestCa ca_{"quant-test-ca"};
};

TEST_F(CoordinatorAuthTest, EachCredentialThatShouldFailFailsAndTheRestPass) {
  using grpc::StatusCode;
  // Passing: a client on the public API; a worker on the gateway (the
  // unknown worker id is the next thing the call is refused for).
  EXPECT_EQ(ListJobs(Dial("alice", "alice-token")).error_code(),
            StatusCode::OK);
  EXPECT_EQ(LeaseAs(Dial("quant-worker", "worker-token")).error_code(),
            StatusCode::NOT_FOUND);
  // The product's own client path.
  absl::StatusOr<std::shared_ptr<grpc::Channel>> dialed = DialAsAlice();
  ASSERT_TRUE(dialed.ok()) << dialed.status();
  EXPECT_EQ(ListJobs(*dialed).error_code(), StatusCode::OK);

  // No certificate, a wrong token, no token.
  grpc::Status status = ListJobs(Dial("", "alice-token"));
  EXPECT_EQ(status.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(),
              testing::HasSubstr("no client certificate"));
  status = ListJobs(Dial("alice", "guessed-token"));
  EXPECT_EQ(status.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(),
              testing::HasSubstr("unknown bearer token"));
  status = ListJobs(Dial("alice", ""));
  EXPECT_EQ(status.error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_THAT(status.error_message(), testing::HasSubstr("no bearer token"));

  // A certificate from another CA, an expired one: no handshake.
  TestCa other("other-ca");
  PutIdentity("stranger", other.Issue("alice"));
  EXPECT_EQ(ListJobs(Dial("stranger", "alice-token")).error_code(),
            StatusCode::UNAVAILABLE);
  PutIdentity("expired", ca_.Issue("alice", -7200, -3600));
  EXPECT_EQ(ListJobs(Dial("expired", "alice-token")).error_code(),
            StatusCode::UNAVAILABLE);
  // A coordinator this client's CA did not sign.
  EXPECT_EQ(
      ListJobs(Dial("alice", "alice-token", other.cert_pem())).error_code(),
      StatusCode::UNAVAILABLE);

  // A client token cannot lease tasks; a worker cannot submit or cancel,
  // with its own token or a client's.
  status = LeaseAs(Dial("alice", "alice-token"));
  EXPECT_EQ(status.error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), testing::HasSubstr("LeaseTask"));
  EXPECT_EQ(LeaseAs(Dial("quant-worker", "alice-token")).error_code(),
            StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(LeaseAs(Dial("alice", "worker-token")).error_code(),
            StatusCode::PERMISSION_DENIED);
  v1::Job job;
  status = SubmitAs(Dial("quant-worker", "worker-token"), "w1", &job);
  EXPECT_EQ(status.error_code(), StatusCode::PERMISSION_DENIED);
  status = SubmitAs(Dial("quant-worker", "alice-token"), "w2", &job);
  EXPECT_EQ(status.error_code(), StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), testing::HasSubstr("CN=quant-worker"));
  EXPECT_EQ(CancelAs(Dial("quant-worker", "worker-token"), "1").error_code(),
            StatusCode::PERMISSION_DENIED);

  // The health service answers a probe that has neither (a kubelet's).
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ca_.cert_pem();
  grpc::GenericStub probe(
      grpc::CreateChannel(target_, grpc::SslCredentials(ssl)));
  grpc::ClientContext health_context;
  Deadline(&health_context);
  const grpc::ByteBuffer request = Buffer("");
  grpc::ByteBuffer response;
  absl::Notification done;
  probe.UnaryCall(&health_context, "/grpc.health.v1.Health/Check",
                  grpc::StubOptions(), &request, &response,
                  [&](grpc::Status s) {
                    status = s;
                    done.Notify();
                  });
  done.WaitForNotification();
  EXPECT_TRUE(status.ok()) << status.error_message();
}

TEST_F(CoordinatorAuthTest, OnlyTheOwnerOrAnAdminMayCancelOrResume) {
  v1::Job job;
  ASSERT_TRUE(SubmitAs(Dial("alice", "alice-token"), "owned", &job).ok());
  EXPECT_EQ(job.owner(), "alice");
  grpc::Status status = CancelAs(Dial("bob", "bob-token"), job.job_id());
  EXPECT_EQ(status.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(status.error_message(), testing::HasSubstr("belongs to alice"));
  EXPECT_TRUE(CancelAs(Dial("ops", "ops-token"), job.job_id()).ok());
  grpc::ClientContext context;
  v1::ResumeJobRequest resume;
  resume.set_job_id(job.job_id());
  v1::Job resumed;
  EXPECT_EQ(v1::QuantizationService::NewStub(Dial("bob", "bob-token"))
                ->ResumeJob(Deadline(&context), resume, &resumed)
                .error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext owner_context;
  EXPECT_TRUE(v1::QuantizationService::NewStub(Dial("alice", "alice-token"))
                  ->ResumeJob(Deadline(&owner_context), resume, &resumed)
                  .ok());
  EXPECT_TRUE(CancelAs(Dial("alice", "alice-token"), job.job_id()).ok());
}

TEST_F(CoordinatorAuthTest, TokensAndCertificatesReloadWithoutARestart) {
  // A token added to the principals file works, one removed stops working.
  WritePrincipals({{"alice", "client", "alice-token-2"},
                   {"workers", "worker", "worker-token"}});
  EXPECT_TRUE(
      Eventually([&] { return ListJobs(Dial("alice", "alice-token-2")); },
                 grpc::StatusCode::OK));
  EXPECT_EQ(ListJobs(Dial("alice", "alice-token")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(ListJobs(Dial("bob", "bob-token")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);

  // A new CA: the coordinator's certificate and the client CA it trusts are
  // replaced on disk; new connections use them.
  TestCa next("quant-test-ca-2");
  Put("ca.pem", next.cert_pem());
  PutIdentity("server", next.Issue("localhost"));
  PutIdentity("alice", next.Issue("alice"));
  EXPECT_TRUE(Eventually(
      [&] { return ListJobs(Dial("alice", "alice-token-2", next.cert_pem())); },
      grpc::StatusCode::OK));
}

// A client's token file is read again when it changes: a rotated token
// reaches the coordinator on the channel already open.
TEST_F(CoordinatorAuthTest, AClientsRotatedTokenFileIsUsedOnItsOpenChannel) {
  absl::StatusOr<std::shared_ptr<grpc::Channel>> channel = DialAsAlice();
  ASSERT_TRUE(channel.ok()) << channel.status();
  EXPECT_TRUE(ListJobs(*channel).ok());
  WritePrincipals({{"alice", "client", "alice-token-2"},
                   {"workers", "worker", "worker-token"}});
  EXPECT_TRUE(Eventually([&] { return ListJobs(*channel); },
                         grpc::StatusCode::UNAUTHENTICATED));
  Put("alice.token", "alice-token-2\n");
  EXPECT_TRUE(
      Eventually([&] { return ListJobs(*channel); }, grpc::StatusCode::OK));
}

}  // namespace
}  // namespace quant
