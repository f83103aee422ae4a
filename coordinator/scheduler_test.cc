#include "coordinator/scheduler.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/test_data.h"
#include "gtest/gtest.h"
#include "proto/task_tensors.h"

namespace quant {
namespace {

constexpr int64_t kLeaseMs = 10'000;

// A sequential job of three tasks: embed -> block 0 -> block 1.
std::vector<TaskRow> ChainTasks() {
  std::vector<TaskRow> tasks(3);
  for (int i = 0; i < 3; ++i) {
    tasks[i].index = i;
    tasks[i].kind = i == 0 ? kEmbedTask : kBlockTask;
    tasks[i].layer = i - 1;
    if (i > 0) tasks[i].deps = {i - 1};
  }
  return tasks;
}

JobPlan SmallPlan() {
  JobPlan plan;
  plan.num_layers = 2;
  plan.sequences = 4;
  plan.seq_len = 8;
  plan.embed_bytes = 1000;
  plan.block_bytes = 5000;
  return plan;
}

v1::Capabilities Cpu(int64_t memory = 0) {
  v1::Capabilities caps;
  caps.set_backend(v1::BACKEND_CPU);
  caps.set_memory_bytes(memory);
  return caps;
}

class SchedulerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = MakeTestTempDir("scheduler") + "/jobs.db";
    Reopen();
  }
  // A new scheduler on the same store file, as after a restart.
  void Reopen(int64_t affinity_ms = 0, int64_t worker_timeout_ms = 120'000) {
    scheduler_.reset();
    store_.reset();
    auto store = JobStore::Open(path_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
    SchedulerOptions options;
    options.lease_ms = kLeaseMs;
    options.affinity_ms = affinity_ms;
    options.worker_timeout_ms = worker_timeout_ms;
    options.max_task_faults = 3;
    options.max_infra_faults = 2;
    SchedulerEvents events;
    events.task_released = [this](const TaskRow&) { ++released_; };
    scheduler_ =
        std::make_unique<Scheduler>(store_.get(), &clock_, options, events);
    ASSERT_TRUE(scheduler_->Recover().ok());
  }
  int64_t AddChain() {
    JobRow job;
    job.spec = "spec";
    auto id = scheduler_->AddJob(job, SmallPlan(), ChainTasks());
    EXPECT_TRUE(id.ok()) << id.status();
    return *id;
  }
  Lease MustLease(const std::string& worker) {
    auto lease = scheduler_->TryLease(worker);
    EXPECT_TRUE(lease.ok()) << lease.status();
    EXPECT_TRUE(lease->has_value());
    return lease->value_or(Lease());
  }
  absl::Status Complete(const Lease& lease, const std::string& worker) {
    return scheduler_->Complete(
        lease.key, lease.epoch, worker, 1.5, "cpu", "OpenBLAS 0.3.21 Haswell",
        []() -> absl::StatusOr<std::string> { return std::string("{}"); });
  }
  // Commits `lease` with activations of digest "00ff", held by `holder`
  // (a deferred commit) unless it is empty.
  absl::Status CompleteWithActivations(const Lease& lease,
                                       const std::string& worker,
                                       const std::string& holder = "") {
    return scheduler_->Complete(
        lease.key, lease.epoch, worker, 1, "cpu", "k",
        [holder]() -> absl::StatusOr<std::string> {
          return absl::StrCat(
              R"({"activations": {"path": "x", "bytes": 1, "digest": "00ff")",
              holder.empty()
                  ? ""
                  : absl::StrCat(R"(, "held_by": ")", holder, R"(")"),
              "}}");
        });
  }
  TaskRow StoredTask(int64_t job, int index) {
    return (*store_->GetTasks(job))[index];
  }

  std::string path_;
  FakeClock clock_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Scheduler> scheduler_;
  int released_ = 0;
};

// A block waits a while for the idle worker that made its input
// activations, and the lease names their committed digest.
TEST_F(SchedulerTest, ABlockGoesFirstToTheWorkerThatMadeItsInput) {
  Reopen(/*affinity_ms=*/3000);
  const int64_t job = AddChain();
  const std::string a = scheduler_->RegisterWorker("a", Cpu());
  const std::string b = scheduler_->RegisterWorker("b", Cpu());
  const Lease embed = MustLease(a);
  ASSERT_TRUE(CompleteWithActivations(embed, a).ok());
  EXPECT_FALSE(scheduler_->TryLease(b)->has_value());  // Held for a.
  const Lease block0 = MustLease(a);
  EXPECT_EQ(block0.key.index, 1);
  EXPECT_EQ(block0.activations_digest, "00ff");
  EXPECT_TRUE(embed.activations_digest.empty());
  // Block 1 waits for a in turn, until the affinity's time is up.
  ASSERT_TRUE(Complete(block0, a).ok());
  EXPECT_FALSE(scheduler_->TryLease(b)->has_value());
  clock_.Advance(3000);
  const Lease block1 = MustLease(b);
  EXPECT_EQ(block1.key.index, 2);
  EXPECT_EQ(block1.activations_digest, "");  // Block 0's record has none.
  ASSERT_TRUE(Complete(block1, b).ok());
  EXPECT_EQ(scheduler_->JobsToAssemble(), std::vector<int64_t>{job});
}

// A maker busy with another task holds nothing back.
TEST_F(SchedulerTest, AffinityDoesNotWaitForABusyWorker) {
  Reopen(/*affinity_ms=*/3000);
  const int64_t first = AddChain();
  const int64_t second = AddChain();
  const std::string a = scheduler_->RegisterWorker("a", Cpu());
  const std::string b = scheduler_->RegisterWorker("b", Cpu());
  const Lease first_embed = MustLease(b);
  const Lease second_embed = MustLease(a);
  ASSERT_EQ(second_embed.key.job_id, second);
  ASSERT_TRUE(Complete(first_embed, b).ok());
  clock_.Advance(3000);  // b's claim on the first job's block 0 lapses.
  ASSERT_TRUE(Complete(second_embed, a).ok());
  const Lease first_block = MustLease(a);
  EXPECT_EQ(first_block.key.job_id, first);
  // a is busy: the second job's block 0, made by a, goes to b at once.
  const Lease second_block = MustLease(b);
  EXPECT_EQ(second_block.key.job_id, second);
  EXPECT_EQ(second_block.key.index, 1);
}

// A heartbeat that was in flight when its task committed (the worker
// beats until its upload is acknowledged) does not make the maker look busy:
// the next block still waits for it.
TEST_F(SchedulerTest, ALateHeartbeatForACommittedTaskKeepsTheMakersClaim) {
  Reopen(/*affinity_ms=*/3000);
  AddChain();
  const std::string a = scheduler_->RegisterWorker("a", Cpu());
  const std::string b = scheduler_->RegisterWorker("b", Cpu());
  const Lease embed = MustLease(a);
  ASSERT_TRUE(Complete(embed, a).ok());
  EXPECT_EQ(*scheduler_->Heartbeat(embed.key, embed.epoch, a), 0);
  EXPECT_FALSE(scheduler_->TryLease(b)->has_value());  // Held for a.
  EXPECT_EQ(MustLease(a).key.index, 1);
}

// Activations committed deferred (by their digest, held by the worker
// that made them) are read only by that worker until they are uploaded;
// when it leaves first, their maker runs again, and once nothing reads
// them they are forgotten.
TEST_F(SchedulerTest, DeferredActivationsWaitForTheirHolderOrAreMadeAgain) {
  Reopen(/*affinity_ms=*/3000);
  const int64_t job = AddChain();
  const std::string a = scheduler_->RegisterWorker("a", Cpu());
  const std::string b = scheduler_->RegisterWorker("b", Cpu());
  const Lease embed = MustLease(a);
  EXPECT_TRUE(embed.defer_activations);
  ASSERT_TRUE(CompleteWithActivations(embed, a, a).ok());
  clock_.Advance(3000);  // Past the affinity: still a's alone.
  EXPECT_FALSE(scheduler_->TryLease(b)->has_value());
  EXPECT_EQ(
      scheduler_
          ->MarkDurable(embed.key, embed.epoch, kActivationsTensor, "11ff")
          .code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      scheduler_
          ->MarkDurable(embed.key, embed.epoch + 1, kActivationsTensor, "00ff")
          .code(),
      absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(
      scheduler_
          ->MarkDurable(embed.key, embed.epoch, kActivationsTensor, "00ff")
          .ok());
  const Lease block0 = MustLease(b);  // Uploaded: anyone reads it.
  EXPECT_EQ(block0.key.index, 1);
  EXPECT_FALSE(block0.activations_held);
  ASSERT_TRUE(CompleteWithActivations(block0, b, b).ok());
  // b stops being heard from; a keeps asking.
  clock_.Advance(60'000);
  EXPECT_FALSE(scheduler_->TryLease(a)->has_value());
  EXPECT_TRUE(scheduler_->LoseAbsentHolders().empty());
  clock_.Advance(60'001);
  EXPECT_FALSE(scheduler_->TryLease(a)->has_value());
  EXPECT_EQ(scheduler_->LoseAbsentHolders(), std::vector<int64_t>{job});
  EXPECT_EQ(StoredTask(job, 1).state, TaskState::kPending);
  EXPECT_EQ(StoredTask(job, 1).infra_faults, 1);
  const Lease again = MustLease(a);
  EXPECT_EQ(again.key.index, 1);
  ASSERT_TRUE(CompleteWithActivations(again, a, a).ok());
  const Lease block1 = MustLease(a);
  EXPECT_TRUE(block1.activations_held);
  ASSERT_TRUE(Complete(block1, a).ok());
  // a leaves holding block 0's activations, which nothing reads any more.
  clock_.Advance(120'001);
  EXPECT_EQ(scheduler_->LoseAbsentHolders(), std::vector<int64_t>{job});
  EXPECT_EQ(StoredTask(job, 1).state, TaskState::kDone);
  EXPECT_TRUE(DeferredHolder(StoredTask(job, 1), kActivationsTensor).empty());
  EXPECT_EQ(CommittedDigest(StoredTask(job, 1), kActivationsTensor), "00ff");
  EXPECT_EQ(scheduler_->JobsToAssemble(), std::vector<int64_t>{job});
}

// A holder that asks for the activations it should hold (it lost its copy)
// makes their maker run again; once they are uploaded that asks nothing.
TEST_F(SchedulerTest, AHolderThatLostItsCopyMakesTheMakerRunAgain) {
  Reopen(/*affinity_ms=*/3000);
  const int64_t job = AddChain();
  const std::string a = scheduler_->RegisterWorker("a", Cpu());
  const Lease embed = MustLease(a);
  ASSERT_TRUE(CompleteWithActivations(embed, a, a).ok());
  ASSERT_TRUE(scheduler_->LoseDeferred(job, 0, "lost its copy").ok());
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kPending);
  EXPECT_NE(StoredTask(job, 0).error.find("lost its copy"), std::string::npos);
  const Lease again = MustLease(a);
  EXPECT_EQ(again.key.index, 0);
  ASSERT_TRUE(Complete(again, a).ok());  // Committed whole this time.
  ASSERT_TRUE(scheduler_->LoseDeferred(job, 0, "lost its copy").ok());
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kDone);
  EXPECT_EQ(MustLease(a).key.index, 1);
}

// After a coordinator restart the holder is a worker of the earlier run,
// under an id the new one never sees: it has a minute to reconnect and
// upload, however short the worker timeout.
TEST_F(SchedulerTest, AfterARestartAHolderHasAMinuteToUpload) {
  Reopen(/*affinity_ms=*/3000, /*worker_timeout_ms=*/3000);
  const int64_t job = AddChain();
  const std::string a = scheduler_->RegisterWorker("a", Cpu());
  const Lease embed = MustLease(a);
  ASSERT_TRUE(CompleteWithActivations(embed, a, a).ok());
  Reopen(/*affinity_ms=*/3000, /*worker_timeout_ms=*/3000);
  clock_.Advance(60'000);
  EXPECT_TRUE(scheduler_->LoseAbsentHolders().empty());
  ASSERT_TRUE(
      scheduler_
          ->MarkDurable(embed.key, embed.epoch, kActivationsTensor, "00ff")
          .ok());
  clock_.Advance(1);
  EXPECT_TRUE(scheduler_->LoseAbsentHolders().empty());  // Uploaded.
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kDone);

  // Not uploaded within the minute: made again.
  const std::string b = scheduler_->RegisterWorker("b", Cpu());
  const Lease block0 = MustLease(b);
  ASSERT_TRUE(CompleteWithActivations(block0, b, b).ok());
  Reopen(/*affinity_ms=*/3000, /*worker_timeout_ms=*/3000);
  clock_.Advance(60'000);
  EXPECT_TRUE(scheduler_->LoseAbsentHolders().empty());
  clock_.Advance(1);
  EXPECT_EQ(scheduler_->LoseAbsentHolders(), std::vector<int64_t>{job});
  EXPECT_EQ(StoredTask(job, 1).state, TaskState::kPending);
}

// A maker that could not take the task (too little memory for a block)
// holds nothing back.
TEST_F(SchedulerTest, AffinityDoesNotWaitForAMakerThatCannotTakeTheTask) {
  Reopen(/*affinity_ms=*/3000);
  AddChain();
  // 2000 bytes: the embedding (1000) fits, a block (5000) does not.
  const std::string small = scheduler_->RegisterWorker("small", Cpu(2000));
  const std::string big = scheduler_->RegisterWorker("big", Cpu());
  const Lease embed = MustLease(small);
  ASSERT_TRUE(Complete(embed, small).ok());
  const Lease block0 = MustLease(big);
  EXPECT_EQ(block0.key.index, 1);
}

TEST_F(SchedulerTest, TasksLeaseInDependencyOrder) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  EXPECT_EQ(scheduler_->ReadyTasks(), 1);
  const Lease embed = MustLease(w);
  EXPECT_EQ(embed.key.index, 0);
  EXPECT_EQ(embed.epoch, 1);
  // Block 0 waits for embed.
  EXPECT_FALSE(scheduler_->TryLease(w)->has_value());
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kRunning);
  ASSERT_TRUE(Complete(embed, w).ok());
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kDone);
  EXPECT_EQ(StoredTask(job, 0).seconds, 1.5);
  EXPECT_EQ(StoredTask(job, 0).outputs, "{}");
  EXPECT_EQ(StoredTask(job, 0).backend, "cpu");
  EXPECT_EQ(StoredTask(job, 0).kernel, "OpenBLAS 0.3.21 Haswell");
  const Lease block0 = MustLease(w);
  EXPECT_EQ(block0.key.index, 1);
  ASSERT_TRUE(Complete(block0, w).ok());
  const Lease block1 = MustLease(w);
  ASSERT_TRUE(Complete(block1, w).ok());
  EXPECT_EQ(scheduler_->JobsToAssemble(), std::vector<int64_t>{job});
  ASSERT_TRUE(scheduler_->MarkSucceeded(job).ok());
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kSucceeded);
  EXPECT_TRUE(scheduler_->JobsToAssemble().empty());
}

TEST_F(SchedulerTest, UnknownWorkerMustRegister) {
  AddChain();
  EXPECT_EQ(scheduler_->TryLease("w-nobody").status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(SchedulerTest, ExpiredLeaseIsReleasedAndTheOldEpochFenced) {
  const int64_t job = AddChain();
  const std::string a = scheduler_->RegisterWorker("a", Cpu());
  const std::string b = scheduler_->RegisterWorker("b", Cpu());
  const Lease first = MustLease(a);
  // Heartbeats keep it alive past the original deadline.
  clock_.Advance(kLeaseMs - 1);
  EXPECT_EQ(scheduler_->ExpireLeases(), 0);
  ASSERT_TRUE(scheduler_->Heartbeat(first.key, first.epoch, a).ok());
  clock_.Advance(kLeaseMs - 1);
  EXPECT_EQ(scheduler_->ExpireLeases(), 0);
  // Silence: the lease runs out and the task goes to b at a new epoch.
  clock_.Advance(2);
  EXPECT_EQ(scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(released_, 1);
  const TaskRow released = StoredTask(job, 0);
  EXPECT_EQ(released.state, TaskState::kPending);
  EXPECT_EQ(released.infra_faults, 1);
  EXPECT_EQ(released.task_faults, 0);
  const Lease second = MustLease(b);
  EXPECT_EQ(second.key.index, 0);
  EXPECT_EQ(second.epoch, first.epoch + 1);
  // a comes back: every call with its epoch is refused.
  EXPECT_EQ(scheduler_->Heartbeat(first.key, first.epoch, a).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(scheduler_->CheckLease(first.key, first.epoch).code(),
            absl::StatusCode::kFailedPrecondition);
  bool committed = false;
  EXPECT_EQ(scheduler_
                ->Complete(first.key, first.epoch, a, 1, "cpu", "k",
                           [&]() -> absl::StatusOr<std::string> {
                             committed = true;
                             return std::string("{}");
                           })
                .code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(committed) << "a stale lease must not move files";
  EXPECT_EQ(scheduler_->Fail(first.key, first.epoch, true, "x").code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(Complete(second, b).ok());
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kDone);
}

TEST_F(SchedulerTest, TaskFaultsHaveABudgetOfThree) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  for (int attempt = 1; attempt <= 3; ++attempt) {
    const Lease lease = MustLease(w);
    EXPECT_EQ(lease.epoch, attempt);
    ASSERT_TRUE(
        scheduler_->Fail(lease.key, lease.epoch, true, "bad tensor").ok());
    EXPECT_EQ(StoredTask(job, 0).task_faults, attempt);
  }
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kFailed);
  const JobRow row = *store_->GetJob(job);
  EXPECT_EQ(row.state, JobState::kFailed);
  EXPECT_NE(row.error.find("bad tensor"), std::string::npos) << row.error;
  EXPECT_FALSE(scheduler_->TryLease(w)->has_value());
}

TEST_F(SchedulerTest, InfraFaultsDoNotCountAgainstTheTask) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  // Two releases by draining workers, one expiry, then two task faults: the
  // job is still alive (infra budget 2 is not exceeded by 2 infra faults
  // reported plus... see below).
  Lease lease = MustLease(w);
  ASSERT_TRUE(scheduler_->Fail(lease.key, lease.epoch, false, "drain").ok());
  lease = MustLease(w);
  ASSERT_TRUE(scheduler_->Fail(lease.key, lease.epoch, true, "t1").ok());
  lease = MustLease(w);
  ASSERT_TRUE(scheduler_->Fail(lease.key, lease.epoch, false, "drain").ok());
  lease = MustLease(w);
  ASSERT_TRUE(scheduler_->Fail(lease.key, lease.epoch, true, "t2").ok());
  TaskRow task = StoredTask(job, 0);
  EXPECT_EQ(task.infra_faults, 2);
  EXPECT_EQ(task.task_faults, 2);
  EXPECT_EQ(task.state, TaskState::kPending);
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kRunning);
  // A third infra fault exceeds the infra budget of 2.
  lease = MustLease(w);
  clock_.Advance(kLeaseMs + 1);
  EXPECT_EQ(scheduler_->ExpireLeases(), 1);
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kFailed);
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kFailed);
}

TEST_F(SchedulerTest, ResumeRestartsAFailedJobWithFreshBudgets) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  Lease lease = MustLease(w);
  ASSERT_TRUE(Complete(lease, w).ok());
  for (int i = 0; i < 3; ++i) {
    lease = MustLease(w);
    ASSERT_TRUE(scheduler_->Fail(lease.key, lease.epoch, true, "oom").ok());
  }
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kFailed);
  EXPECT_EQ(scheduler_->Resume(12345).code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(scheduler_->Resume(job).ok());
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kQueued);
  EXPECT_EQ(StoredTask(job, 0).state, TaskState::kDone);  // Kept.
  EXPECT_EQ(StoredTask(job, 1).task_faults, 0);
  lease = MustLease(w);
  EXPECT_EQ(lease.key.index, 1);
  EXPECT_EQ(lease.epoch, 4);
  // Resuming a running job is refused.
  EXPECT_EQ(scheduler_->Resume(job).code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(SchedulerTest, CancelStopsLeasingAndTellsTheHolder) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  const Lease lease = MustLease(w);
  ASSERT_TRUE(scheduler_->Cancel(job).ok());
  EXPECT_EQ(scheduler_->Heartbeat(lease.key, lease.epoch, w).status().code(),
            absl::StatusCode::kCancelled);
  EXPECT_FALSE(Complete(lease, w).ok());
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kCancelled);
  EXPECT_EQ(scheduler_->Cancel(job).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(scheduler_->Resume(job).ok());
  // The old lease stays fenced after the resume.
  EXPECT_FALSE(scheduler_->CheckLease(lease.key, lease.epoch).ok());
  EXPECT_EQ(MustLease(w).epoch, lease.epoch + 1);
}

v1::Capabilities Gpu(int64_t memory = 0) {
  v1::Capabilities caps;
  caps.set_backend(v1::BACKEND_CUDA);
  caps.set_device("NVIDIA H200 (GPU 0, sm_90, 139.8 GiB)");
  caps.set_memory_bytes(memory);
  return caps;
}

TEST_F(SchedulerTest, CapabilityMatchingByMemory) {
  AddChain();
  const std::string small = scheduler_->RegisterWorker("s", Cpu(500));
  const std::string big = scheduler_->RegisterWorker("b", Cpu(2000));
  EXPECT_FALSE(scheduler_->TryLease(small)->has_value());  // embed needs 1000.
  EXPECT_TRUE(scheduler_->TryLease(big)->has_value());
  EXPECT_EQ(scheduler_->ListWorkers().size(), 2u);
  clock_.Advance(200'000);
  EXPECT_TRUE(scheduler_->ListWorkers().empty());  // Timed out.
}

TEST_F(SchedulerTest, BlockTasksGoToGpuWorkersWhileThereAreAny) {
  AddChain();
  const std::string cpu = scheduler_->RegisterWorker("c", Cpu());
  const std::string gpu = scheduler_->RegisterWorker("g", Gpu(1'000'000));
  // The embedding goes to whoever asks; then block 0 only to the GPU.
  const Lease embed = MustLease(cpu);
  EXPECT_EQ(embed.task.kind, kEmbedTask);
  ASSERT_TRUE(Complete(embed, cpu).ok());
  EXPECT_FALSE(scheduler_->TryLease(cpu)->has_value());
  const Lease block0 = MustLease(gpu);
  EXPECT_EQ(block0.task.kind, kBlockTask);
  ASSERT_TRUE(Complete(block0, gpu).ok());
  // The GPU worker gone (not heard from past the timeout), the CPU worker
  // takes the next block: a mixed pool never stalls.
  clock_.Advance(200'000);
  const Lease block1 = MustLease(cpu);
  EXPECT_EQ(block1.task.layer, 1);
}

// A data-parallel job's captures and solves are GPU tasks (the GPU backend
// runs them) like blocks: with a GPU worker registered, a CPU worker takes
// the embeddings only.
TEST_F(SchedulerTest, DataParallelTasksGoToGpuWorkersWhileThereAreAny) {
  JobRow job;
  job.spec = "spec";
  JobPlan plan = SmallPlan();
  plan.num_layers = 1;
  plan.calibration_shards = 2;
  plan.calibration_stages = 1;
  // Embeds 0 and 1, captures 2 and 3 (one per shard), solve 4.
  std::vector<TaskRow> tasks(5);
  for (int i = 0; i < 5; ++i) {
    tasks[i].index = i;
    tasks[i].kind = i < 2 ? kEmbedTask : i < 4 ? kCaptureTask : kSolveTask;
    tasks[i].layer = i < 2 ? -1 : 0;
    if (i >= 2)
      tasks[i].deps =
          i < 4 ? std::vector<int32_t>{i - 2} : std::vector<int32_t>{2, 3};
  }
  ASSERT_TRUE(scheduler_->AddJob(job, plan, tasks).ok());
  const std::string cpu = scheduler_->RegisterWorker("c", Cpu());
  const std::string gpu = scheduler_->RegisterWorker("g", Gpu());
  for (int i = 0; i < 2; ++i) {
    const Lease lease = MustLease(cpu);
    EXPECT_EQ(lease.task.kind, kEmbedTask);
    ASSERT_TRUE(Complete(lease, cpu).ok());
  }
  EXPECT_FALSE(scheduler_->TryLease(cpu)->has_value());
  for (const char* kind : {kCaptureTask, kCaptureTask, kSolveTask}) {
    const Lease lease = MustLease(gpu);
    EXPECT_EQ(lease.task.kind, kind);
    ASSERT_TRUE(Complete(lease, gpu).ok());
  }
}

TEST_F(SchedulerTest, AJobNoWorkerCanRunSaysWhyItWaits) {
  JobRow job;
  job.spec = "spec";
  JobPlan plan = SmallPlan();
  plan.embed_bytes = int64_t{3} << 30;
  plan.block_bytes = int64_t{9} << 30;
  auto id = scheduler_->AddJob(job, plan, ChainTasks());
  ASSERT_TRUE(id.ok());
  auto waiting = [&] { return scheduler_->GetJob(*id)->waiting; };
  EXPECT_EQ(waiting().code, kWaitNoWorker);
  EXPECT_EQ(waiting().message, "1 task(s) ready and no worker registered");

  const std::string cpu =
      scheduler_->RegisterWorker("c", Cpu(int64_t{4} << 30));
  EXPECT_EQ(waiting().code, "");  // The embedding fits.
  ASSERT_TRUE(Complete(MustLease(cpu), cpu).ok());
  // The blocks do not: memory, naming what is needed and what there is.
  EXPECT_EQ(waiting().code, kWaitMemory);
  EXPECT_EQ(waiting().message,
            "block task 1 (layer 0) needs 9.0 GiB; the largest worker has "
            "4.0 GiB");
  // A GPU worker registered: block tasks are GPU tasks, measured against it.
  const std::string gpu =
      scheduler_->RegisterWorker("g", Gpu(int64_t{6} << 30));
  EXPECT_EQ(waiting().message,
            "block task 1 (layer 0) needs 9.0 GiB; the largest GPU worker has "
            "6.0 GiB");
  scheduler_->RegisterWorker("big", Cpu(int64_t{16} << 30));
  EXPECT_EQ(waiting().code, kWaitMemory);  // Not while a GPU worker lives.
  clock_.Advance(200'000);                 // All gone.
  const std::string big =
      scheduler_->RegisterWorker("big", Cpu(int64_t{16} << 30));
  EXPECT_EQ(waiting().code, "");
  EXPECT_EQ(MustLease(big).task.index, 1);
  EXPECT_EQ(waiting().code, "");  // Running, nothing else ready.
}

TEST_F(SchedulerTest, GpuWorkersTakeAnyKindOfTask) {
  JobRow job;
  job.spec = "spec";
  ASSERT_TRUE(scheduler_->AddJob(job, SmallPlan(), ChainTasks()).ok());
  const std::string gpu = scheduler_->RegisterWorker("g", Gpu());
  const Lease embed = MustLease(gpu);
  EXPECT_EQ(embed.task.kind, kEmbedTask);
  ASSERT_TRUE(Complete(embed, gpu).ok());
  EXPECT_EQ(MustLease(gpu).task.kind, kBlockTask);
}

TEST_F(SchedulerTest, ARestartKeepsCommittedTasksAndLiveLeases) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  const Lease embed = MustLease(w);
  ASSERT_TRUE(Complete(embed, w).ok());
  const Lease block0 = MustLease(w);
  Reopen();  // The coordinator restarts; workers are forgotten.
  EXPECT_EQ(scheduler_->TryLease(w).status().code(),
            absl::StatusCode::kNotFound);
  const std::string w2 = scheduler_->RegisterWorker("a", Cpu());
  EXPECT_NE(w2, w);
  // Nothing to lease: embed is done, block 0 is still leased.
  EXPECT_FALSE(scheduler_->TryLease(w2)->has_value());
  // The worker that held block 0 finishes it across the restart.
  ASSERT_TRUE(scheduler_->Heartbeat(block0.key, block0.epoch, w2).ok());
  ASSERT_TRUE(Complete(block0, w2).ok());
  const Lease block1 = MustLease(w2);
  EXPECT_EQ(block1.key.index, 2);
  EXPECT_EQ(StoredTask(job, 0).epoch, 1);  // Not recomputed.
}

TEST_F(SchedulerTest, LeasesHeldAcrossALongRestartAreNotLost) {
  AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  const Lease embed = MustLease(w);
  clock_.Advance(5 * kLeaseMs);  // The coordinator was down for long.
  Reopen();
  // The holder gets a full lease from the restart to heartbeat again.
  EXPECT_EQ(scheduler_->ExpireLeases(), 0);
  clock_.Advance(kLeaseMs - 1);
  ASSERT_TRUE(scheduler_->Heartbeat(embed.key, embed.epoch, w).ok());
  ASSERT_TRUE(Complete(embed, w).ok());
}

// Leases and liveness run on the monotonic clock: a step of the wall clock
// (NTP, an operator) expires nothing and forgets no worker, either way.
TEST_F(SchedulerTest, AWallClockStepExpiresNoLease) {
  AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  const Lease embed = MustLease(w);
  clock_.StepWallClock(10 * kLeaseMs);
  EXPECT_EQ(scheduler_->ExpireLeases(), 0);
  EXPECT_EQ(scheduler_->ListWorkers().size(), 1u);
  clock_.StepWallClock(-20 * kLeaseMs);
  EXPECT_EQ(scheduler_->ExpireLeases(), 0);
  ASSERT_TRUE(scheduler_->Heartbeat(embed.key, embed.epoch, w).ok());
  // Real time still runs a silent lease out.
  clock_.Advance(kLeaseMs + 1);
  EXPECT_EQ(scheduler_->ExpireLeases(), 1);
}

// A restarted coordinator's monotonic clock starts elsewhere: a stored
// deadline far in its future still gives way to a lease from the restart.
TEST_F(SchedulerTest, LeasesFromAnEarlierProcessGetAFreshDeadline) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  MustLease(w);
  TaskRow stored = StoredTask(job, 0);
  stored.lease_deadline_ms = int64_t{1} << 60;
  ASSERT_TRUE(store_->UpdateTask(stored).ok());
  Reopen();
  clock_.Advance(kLeaseMs + 1);
  EXPECT_EQ(scheduler_->ExpireLeases(), 1);
}

TEST_F(SchedulerTest, AResumedJobWithEveryTaskDoneGoesBackToAssembly) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Complete(MustLease(w), w).ok());
  ASSERT_TRUE(scheduler_->MarkFailed(job, "disk full").ok());
  EXPECT_TRUE(scheduler_->JobsToAssemble().empty());
  ASSERT_TRUE(scheduler_->Resume(job).ok());
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kRunning);
  EXPECT_EQ(scheduler_->JobsToAssemble(), std::vector<int64_t>{job});
}

TEST_F(SchedulerTest, ACancelDuringAssemblyStands) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Complete(MustLease(w), w).ok());
  ASSERT_TRUE(scheduler_->Cancel(job).ok());
  EXPECT_EQ(scheduler_->MarkSucceeded(job).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kCancelled);
}

TEST_F(SchedulerTest, ADamagedJobIsFailedAndTheOthersRecover) {
  const int64_t good = AddChain();
  JobRow bad;
  bad.plan = "{not json";
  auto bad_id = store_->CreateJob(bad, ChainTasks(), clock_.NowMs());
  ASSERT_TRUE(bad_id.ok());
  Reopen();
  EXPECT_EQ(store_->GetJob(*bad_id)->state, JobState::kFailed);
  EXPECT_NE(store_->GetJob(*bad_id)->error.find("cannot recover"),
            std::string::npos);
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  EXPECT_EQ(MustLease(w).key.job_id, good);
}

TEST_F(SchedulerTest, WaitForChangeWakesOnACommit) {
  const uint64_t seen = scheduler_->version();
  AddChain();
  scheduler_->WaitForChange(seen, absl::Seconds(5));  // Returns at once.
  EXPECT_NE(scheduler_->version(), seen);
}

// Done tasks whose committed files went bad go back to pending, leave the
// assembler's list, and count against the infrastructure budget.
TEST_F(SchedulerTest, ReopenedTasksRunAgainWithinTheInfraBudget) {
  const int64_t job = AddChain();
  const std::string w = scheduler_->RegisterWorker("a", Cpu());
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(Complete(MustLease(w), w).ok());
  EXPECT_EQ(scheduler_->JobsToAssemble(), std::vector<int64_t>{job});
  for (int round = 1; round <= 2; ++round) {
    ASSERT_TRUE(scheduler_->Reopen(job, {1, 2}, "damaged").ok());
    EXPECT_TRUE(scheduler_->JobsToAssemble().empty());
    EXPECT_EQ(StoredTask(job, 0).state, TaskState::kDone);
    EXPECT_EQ(StoredTask(job, 1).state, TaskState::kPending);
    EXPECT_EQ(StoredTask(job, 1).outputs, "");
    EXPECT_EQ(StoredTask(job, 1).error, "damaged");
    EXPECT_EQ(StoredTask(job, 2).infra_faults, round);
    const Lease again = MustLease(w);
    EXPECT_EQ(again.key.index, 1);
    ASSERT_TRUE(Complete(again, w).ok());
    ASSERT_TRUE(Complete(MustLease(w), w).ok());
    EXPECT_EQ(scheduler_->JobsToAssemble(), std::vector<int64_t>{job});
  }
  // A third time is past the budget of 2: the job fails, saying why.
  ASSERT_TRUE(scheduler_->Reopen(job, {2}, "damaged").ok());
  EXPECT_EQ(store_->GetJob(job)->state, JobState::kFailed);
  EXPECT_NE(store_->GetJob(job)->error.find("damaged"), std::string::npos);
  EXPECT_EQ(scheduler_->Reopen(job, {2}, "x").code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace quant
