#include "coordinator/coordinator.h"

#include <filesystem>
#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/file.h"
#include "common/test_data.h"
#include "convert/tiny_llama.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "kernels/cpu/compute_kernel.h"
#include "proto/quant/v1/quantization_service.grpc.pb.h"
#include "proto/quant/v1/worker_service.grpc.pb.h"
#include "proto/recipe.h"
#include "quant/quantize_model.h"
#include "worker/worker_session.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

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
    options.listen_address = "";  // In-process only.
    options.jobs.state_dir = dir_ + "/state";
    options.jobs.model_roots = {dir_};
    options.jobs.output_roots = {dir_ + "/out"};
    options.jobs.scheduler.lease_ms = 3000;
    options.jobs.scheduler.heartbeat_interval_ms = 100;
    options.jobs.tick_ms = 50;
    fs::create_directories(dir_ + "/out");
    auto coordinator = Coordinator::Create(options);
    ASSERT_TRUE(coordinator.ok()) << coordinator.status();
    coordinator_ = std::move(*coordinator);
    stub_ = v1::QuantizationService::NewStub(coordinator_->InProcessChannel());
  }

  void StartWorkers(int n) {
    for (int i = 0; i < n; ++i) {
      WorkerOptions options;
      options.channel = coordinator_->InProcessChannel();
      options.name = absl::StrCat("w", i);
      options.threads = 1;
      options.scratch_dir = absl::StrCat(dir_, "/scratch", workers_.size());
      options.lease_wait_ms = 200;
      auto session = WorkerSession::Create(options);
      ASSERT_TRUE(session.ok()) << session.status();
      WorkerSession* worker = session->get();
      sessions_.push_back(std::move(*session));
      workers_.emplace_back([worker] { (void)worker->Run(); });
    }
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
  QuantizeModelOptions engine_;
  std::unique_ptr<Coordinator> coordinator_;
  std::unique_ptr<v1::QuantizationService::Stub> stub_;
  std::vector<std::unique_ptr<WorkerSession>> sessions_;
  std::vector<std::thread> workers_;
};

std::string Bytes(const std::string& path) { return *ReadFileToString(path); }

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
       "spec: "},
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

}  // namespace
}  // namespace quant
