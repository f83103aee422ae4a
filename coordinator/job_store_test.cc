#include "coordinator/job_store.h"

#include <sqlite3.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "common/test_data.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {

// Reaches the store's connection to read its per-connection pragmas.
class JobStoreTestPeer {
 public:
  static sqlite3* db(JobStore& store) { return store.db_; }
};

namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in),
                     std::istreambuf_iterator<char>());
}

void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

// A raw SQLite connection for checks that go around the store.
class RawDb {
 public:
  explicit RawDb(const std::string& path) {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
  }
  ~RawDb() { sqlite3_close(db_); }
  void Exec(const std::string& sql) {
    char* err = nullptr;
    EXPECT_EQ(sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK)
        << sql << ": " << (err != nullptr ? err : "");
    sqlite3_free(err);
  }
  // The first column of the first row, as text ("" when no row).
  std::string Query(const std::string& sql) { return QueryOn(db_, sql); }

  static std::string QueryOn(sqlite3* db, const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr),
              SQLITE_OK)
        << sql;
    std::string result;
    if (sqlite3_step(stmt) == SQLITE_ROW) {
      const unsigned char* text = sqlite3_column_text(stmt, 0);
      if (text != nullptr) result = reinterpret_cast<const char*>(text);
    }
    sqlite3_finalize(stmt);
    return result;
  }

 private:
  sqlite3* db_ = nullptr;
};

std::unique_ptr<JobStore> OpenOrDie(const std::string& path) {
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

const std::string kSpec("\x08\x01\x00\x12\x00\xff\x00", 7);

JobRow MakeJob(const std::string& plan = "{\"blocks\":2}") {
  JobRow job;
  job.spec = kSpec;
  job.plan = plan;
  return job;
}

TaskRow MakeTask(int32_t index, std::string kind, int32_t layer,
                 std::vector<int32_t> deps) {
  TaskRow task;
  task.index = index;
  task.kind = std::move(kind);
  task.layer = layer;
  task.deps = std::move(deps);
  return task;
}

std::vector<TaskRow> ThreeTasks() {
  return {MakeTask(0, "embed", -1, {}), MakeTask(1, "block", 0, {0}),
          MakeTask(2, "block", 1, {0, 1})};
}

TEST(JobStoreTest, StateNamesAndFinality) {
  EXPECT_STREQ(JobStateName(JobState::kQueued), "queued");
  EXPECT_STREQ(JobStateName(JobState::kRunning), "running");
  EXPECT_STREQ(JobStateName(JobState::kSucceeded), "succeeded");
  EXPECT_STREQ(JobStateName(JobState::kFailed), "failed");
  EXPECT_STREQ(JobStateName(JobState::kCancelled), "cancelled");
  EXPECT_STREQ(TaskStateName(TaskState::kPending), "pending");
  EXPECT_STREQ(TaskStateName(TaskState::kLeased), "leased");
  EXPECT_STREQ(TaskStateName(TaskState::kDone), "done");
  EXPECT_STREQ(TaskStateName(TaskState::kFailed), "failed");
  EXPECT_FALSE(IsFinal(JobState::kQueued));
  EXPECT_FALSE(IsFinal(JobState::kRunning));
  EXPECT_TRUE(IsFinal(JobState::kSucceeded));
  EXPECT_TRUE(IsFinal(JobState::kFailed));
  EXPECT_TRUE(IsFinal(JobState::kCancelled));
}

TEST(JobStoreTest, CreateAndGetRoundTripEveryField) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->path(), path);

  JobRow job = MakeJob("{\"plan\":\"x\"}");
  // Ignored by CreateJob:
  job.id = 77;
  job.state = JobState::kFailed;
  job.create_ms = 5;
  job.update_ms = 6;
  std::vector<TaskRow> tasks = ThreeTasks();
  tasks[0].job_id = 999;  // Replaced by the new job's id.
  tasks[2].state = TaskState::kLeased;
  tasks[2].epoch = 4;
  tasks[2].worker_id = "w-1";
  tasks[2].lease_deadline_ms = 123456789012345;
  tasks[2].task_faults = 2;
  tasks[2].infra_faults = 3;
  tasks[2].error = "oom";
  tasks[2].seconds = 1.25;
  tasks[2].outputs = "{\"q\":{\"bytes\":1}}";

  absl::StatusOr<int64_t> id = store->CreateJob(job, tasks, 1700000000123);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_GT(*id, 0);
  EXPECT_NE(*id, 77);

  absl::StatusOr<JobRow> got = store->GetJob(*id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->id, *id);
  EXPECT_EQ(got->spec.size(), 7u);
  EXPECT_EQ(got->spec, kSpec);
  EXPECT_EQ(got->plan, "{\"plan\":\"x\"}");
  EXPECT_EQ(got->state, JobState::kQueued);
  EXPECT_EQ(got->error, "");
  EXPECT_EQ(got->create_ms, 1700000000123);
  EXPECT_EQ(got->update_ms, 1700000000123);

  absl::StatusOr<std::vector<TaskRow>> got_tasks = store->GetTasks(*id);
  ASSERT_TRUE(got_tasks.ok()) << got_tasks.status();
  ASSERT_EQ(got_tasks->size(), 3u);
  for (int i = 0; i < 3; ++i) {
    const TaskRow& t = (*got_tasks)[i];
    EXPECT_EQ(t.job_id, *id) << i;
    EXPECT_EQ(t.index, i);
    EXPECT_EQ(t.kind, tasks[i].kind);
    EXPECT_EQ(t.layer, tasks[i].layer);
    EXPECT_EQ(t.deps, tasks[i].deps);
  }
  EXPECT_THAT((*got_tasks)[0].deps, IsEmpty());
  EXPECT_THAT((*got_tasks)[2].deps, ElementsAre(0, 1));
  EXPECT_EQ((*got_tasks)[0].layer, -1);
  EXPECT_EQ((*got_tasks)[0].state, TaskState::kPending);
  EXPECT_EQ((*got_tasks)[0].epoch, 0);
  const TaskRow& t2 = (*got_tasks)[2];
  EXPECT_EQ(t2.state, TaskState::kLeased);
  EXPECT_EQ(t2.epoch, 4);
  EXPECT_EQ(t2.worker_id, "w-1");
  EXPECT_EQ(t2.lease_deadline_ms, 123456789012345);
  EXPECT_EQ(t2.task_faults, 2);
  EXPECT_EQ(t2.infra_faults, 3);
  EXPECT_EQ(t2.error, "oom");
  EXPECT_EQ(t2.seconds, 1.25);
  EXPECT_EQ(t2.outputs, "{\"q\":{\"bytes\":1}}");
}

TEST(JobStoreTest, EmptySpecAndNoTasks) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  JobRow job;
  absl::StatusOr<int64_t> id = store->CreateJob(job, {}, 10);
  ASSERT_TRUE(id.ok()) << id.status();
  absl::StatusOr<JobRow> got = store->GetJob(*id);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->spec, "");
  EXPECT_EQ(got->plan, "");
  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(*id);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  EXPECT_THAT(*tasks, IsEmpty());
}

TEST(JobStoreTest, UnknownJobIsNotFound) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<JobRow> job = store->GetJob(42);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(job.status().message(), HasSubstr("42"));
  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(42);
  EXPECT_EQ(tasks.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(tasks.status().message(), HasSubstr("42"));
  absl::Status update = store->UpdateJobState(42, JobState::kRunning, "", 1);
  EXPECT_EQ(update.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(update.message(), HasSubstr("42"));
}

TEST(JobStoreTest, DuplicateTaskIndexLeavesNoJob) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  std::vector<TaskRow> tasks = {MakeTask(0, "embed", -1, {}),
                                MakeTask(0, "block", 0, {})};
  absl::StatusOr<int64_t> id = store->CreateJob(MakeJob(), tasks, 1);
  ASSERT_FALSE(id.ok());
  EXPECT_THAT(id.status().message(), HasSubstr(path));
  absl::StatusOr<std::vector<JobRow>> jobs = store->ListJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  EXPECT_THAT(*jobs, IsEmpty());
}

TEST(JobStoreTest, IdsIncreaseAndAreNeverReused) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  int64_t first = 0;
  int64_t second = 0;
  {
    std::unique_ptr<JobStore> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    absl::StatusOr<int64_t> a = store->CreateJob(MakeJob(), ThreeTasks(), 1);
    absl::StatusOr<int64_t> b = store->CreateJob(MakeJob(), {}, 2);
    ASSERT_TRUE(a.ok()) << a.status();
    ASSERT_TRUE(b.ok()) << b.status();
    first = *a;
    second = *b;
    EXPECT_GT(second, first);
  }
  {
    // Delete the newest job behind the store's back: AUTOINCREMENT must
    // still not hand its id out again.
    RawDb raw(path);
    raw.Exec("DELETE FROM jobs WHERE id = " + std::to_string(second));
    EXPECT_EQ(raw.Query("SELECT COUNT(*) FROM jobs"), "1");
  }
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> c = store->CreateJob(MakeJob(), {}, 3);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_GT(*c, second);
  absl::StatusOr<JobRow> old = store->GetJob(first);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->create_ms, 1);
}

TEST(JobStoreTest, ListJobsWithAndWithoutFilter) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  std::vector<int64_t> ids;
  for (int i = 0; i < 4; ++i) {
    absl::StatusOr<int64_t> id =
        store->CreateJob(MakeJob("p" + std::to_string(i)), {}, 100 + i);
    ASSERT_TRUE(id.ok()) << id.status();
    ids.push_back(*id);
  }
  ASSERT_TRUE(store->UpdateJobState(ids[1], JobState::kRunning, "", 200).ok());
  ASSERT_TRUE(store->UpdateJobState(ids[3], JobState::kRunning, "", 201).ok());
  ASSERT_TRUE(
      store->UpdateJobState(ids[2], JobState::kFailed, "bad", 202).ok());

  absl::StatusOr<std::vector<JobRow>> all = store->ListJobs();
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 4u);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*all)[i].id, ids[i]);
    EXPECT_EQ((*all)[i].plan, "p" + std::to_string(i));
  }
  absl::StatusOr<std::vector<JobRow>> running =
      store->ListJobs(JobState::kRunning);
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_EQ(running->size(), 2u);
  EXPECT_EQ((*running)[0].id, ids[1]);
  EXPECT_EQ((*running)[1].id, ids[3]);
  absl::StatusOr<std::vector<JobRow>> queued =
      store->ListJobs(JobState::kQueued);
  ASSERT_TRUE(queued.ok()) << queued.status();
  ASSERT_EQ(queued->size(), 1u);
  EXPECT_EQ((*queued)[0].id, ids[0]);
  absl::StatusOr<std::vector<JobRow>> failed =
      store->ListJobs(JobState::kFailed);
  ASSERT_TRUE(failed.ok()) << failed.status();
  ASSERT_EQ(failed->size(), 1u);
  EXPECT_EQ((*failed)[0].error, "bad");
  absl::StatusOr<std::vector<JobRow>> cancelled =
      store->ListJobs(JobState::kCancelled);
  ASSERT_TRUE(cancelled.ok()) << cancelled.status();
  EXPECT_THAT(*cancelled, IsEmpty());
}

TEST(JobStoreTest, UpdateJobStateSetsStateErrorAndUpdateTime) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> id = store->CreateJob(MakeJob(), {}, 1000);
  ASSERT_TRUE(id.ok()) << id.status();
  ASSERT_TRUE(
      store->UpdateJobState(*id, JobState::kFailed, "task 3 failed", 2500)
          .ok());
  absl::StatusOr<JobRow> job = store->GetJob(*id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, JobState::kFailed);
  EXPECT_EQ(job->error, "task 3 failed");
  EXPECT_EQ(job->create_ms, 1000);
  EXPECT_EQ(job->update_ms, 2500);
  EXPECT_EQ(job->spec, kSpec);
}

TEST(JobStoreTest, UpdateTaskRoundTripAndNotFound) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> id = store->CreateJob(MakeJob(), ThreeTasks(), 1);
  ASSERT_TRUE(id.ok()) << id.status();

  TaskRow update = MakeTask(1, "changed-kind", 99, {2});  // Immutable fields.
  update.job_id = *id;
  update.state = TaskState::kDone;
  update.epoch = 7;
  update.worker_id = "gpu-worker-3";
  update.lease_deadline_ms = 9876543210;
  update.task_faults = 1;
  update.infra_faults = 5;
  update.error = "lost worker";
  update.seconds = 12.5;
  update.outputs = "{\"layer.0\":{\"path\":\"a\",\"bytes\":3}}";
  ASSERT_TRUE(store->UpdateTask(update).ok());

  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(*id);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_EQ(tasks->size(), 3u);
  const TaskRow& t = (*tasks)[1];
  EXPECT_EQ(t.job_id, *id);
  EXPECT_EQ(t.index, 1);
  EXPECT_EQ(t.kind, "block");  // Not mutable: unchanged.
  EXPECT_EQ(t.layer, 0);
  EXPECT_THAT(t.deps, ElementsAre(0));
  EXPECT_EQ(t.state, TaskState::kDone);
  EXPECT_EQ(t.epoch, 7);
  EXPECT_EQ(t.worker_id, "gpu-worker-3");
  EXPECT_EQ(t.lease_deadline_ms, 9876543210);
  EXPECT_EQ(t.task_faults, 1);
  EXPECT_EQ(t.infra_faults, 5);
  EXPECT_EQ(t.error, "lost worker");
  EXPECT_EQ(t.seconds, 12.5);
  EXPECT_EQ(t.outputs, "{\"layer.0\":{\"path\":\"a\",\"bytes\":3}}");
  // The other tasks are untouched.
  EXPECT_EQ((*tasks)[0].state, TaskState::kPending);
  EXPECT_EQ((*tasks)[2].state, TaskState::kPending);
  EXPECT_EQ((*tasks)[2].epoch, 0);

  TaskRow unknown_task = update;
  unknown_task.index = 3;
  absl::Status s = store->UpdateTask(unknown_task);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("task 3"));
  EXPECT_THAT(s.message(), HasSubstr("job " + std::to_string(*id)));
  TaskRow unknown_job = update;
  unknown_job.job_id = *id + 100;
  s = store->UpdateTask(unknown_job);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("job " + std::to_string(*id + 100)));
}

TEST(JobStoreTest, TransactionCommits) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> id = store->CreateJob(MakeJob(), ThreeTasks(), 1);
  ASSERT_TRUE(id.ok()) << id.status();
  int64_t second = 0;
  absl::Status s = store->Transaction([&]() -> absl::Status {
    absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(*id);
    if (!tasks.ok()) return tasks.status();
    TaskRow t = (*tasks)[0];
    t.state = TaskState::kLeased;
    t.epoch = 1;
    t.worker_id = "w";
    absl::Status st = store->UpdateTask(t);
    if (!st.ok()) return st;
    st = store->UpdateJobState(*id, JobState::kRunning, "", 5);
    if (!st.ok()) return st;
    absl::StatusOr<int64_t> other = store->CreateJob(MakeJob(), {}, 6);
    if (!other.ok()) return other.status();
    second = *other;
    return absl::OkStatus();
  });
  ASSERT_TRUE(s.ok()) << s;
  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(*id);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  EXPECT_EQ((*tasks)[0].state, TaskState::kLeased);
  EXPECT_EQ((*tasks)[0].epoch, 1);
  EXPECT_EQ((*tasks)[0].worker_id, "w");
  absl::StatusOr<JobRow> job = store->GetJob(*id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, JobState::kRunning);
  EXPECT_GT(second, *id);
  EXPECT_TRUE(store->GetJob(second).ok());
}

TEST(JobStoreTest, TransactionRollsBackOnError) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> id = store->CreateJob(MakeJob(), ThreeTasks(), 1);
  ASSERT_TRUE(id.ok()) << id.status();
  int64_t created = 0;
  absl::Status s = store->Transaction([&]() -> absl::Status {
    TaskRow t = ThreeTasks()[1];
    t.job_id = *id;
    t.state = TaskState::kFailed;
    t.epoch = 9;
    t.error = "half done";
    absl::Status st = store->UpdateTask(t);
    if (!st.ok()) return st;
    st = store->UpdateJobState(*id, JobState::kFailed, "x", 7);
    if (!st.ok()) return st;
    absl::StatusOr<int64_t> other = store->CreateJob(MakeJob(), {}, 6);
    if (!other.ok()) return other.status();
    created = *other;
    // Inside the transaction its own changes are visible.
    absl::StatusOr<std::vector<TaskRow>> seen = store->GetTasks(*id);
    if (!seen.ok()) return seen.status();
    if ((*seen)[1].epoch != 9) return absl::InternalError("not visible");
    return absl::AbortedError("changed my mind");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(s.message(), "changed my mind");
  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(*id);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  EXPECT_EQ((*tasks)[1].state, TaskState::kPending);
  EXPECT_EQ((*tasks)[1].epoch, 0);
  EXPECT_EQ((*tasks)[1].error, "");
  absl::StatusOr<JobRow> job = store->GetJob(*id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state, JobState::kQueued);
  EXPECT_EQ(job->update_ms, 1);
  ASSERT_NE(created, 0);
  EXPECT_EQ(store->GetJob(created).status().code(),
            absl::StatusCode::kNotFound);
  // The store works normally afterwards.
  EXPECT_TRUE(store->UpdateJobState(*id, JobState::kRunning, "", 8).ok());
}

TEST(JobStoreTest, NestedTransactionIsRefused) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::Status inner;
  absl::Status outer = store->Transaction([&]() -> absl::Status {
    inner = store->Transaction([] { return absl::OkStatus(); });
    return absl::OkStatus();
  });
  EXPECT_TRUE(outer.ok()) << outer;
  EXPECT_EQ(inner.code(), absl::StatusCode::kFailedPrecondition) << inner;
  // And a later, non-nested one works.
  EXPECT_TRUE(store->Transaction([] { return absl::OkStatus(); }).ok());
}

TEST(JobStoreTest, DataSurvivesCloseAndReopen) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  int64_t id = 0;
  {
    std::unique_ptr<JobStore> store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    absl::StatusOr<int64_t> created =
        store->CreateJob(MakeJob(), ThreeTasks(), 11);
    ASSERT_TRUE(created.ok()) << created.status();
    id = *created;
    TaskRow t = ThreeTasks()[2];
    t.job_id = id;
    t.state = TaskState::kDone;
    t.outputs = "{\"o\":1}";
    t.seconds = 0.5;
    ASSERT_TRUE(store->UpdateTask(t).ok());
    ASSERT_TRUE(store->UpdateJobState(id, JobState::kSucceeded, "", 12).ok());
    // Committed: a second connection sees it while the store is open.
    RawDb raw(path);
    EXPECT_EQ(
        raw.Query("SELECT state FROM jobs WHERE id = " + std::to_string(id)),
        "3");
    EXPECT_EQ(raw.Query("SELECT outputs FROM tasks WHERE idx = 2"),
              "{\"o\":1}");
  }
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<JobRow> job = store->GetJob(id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec, kSpec);
  EXPECT_EQ(job->state, JobState::kSucceeded);
  EXPECT_EQ(job->update_ms, 12);
  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(id);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_EQ(tasks->size(), 3u);
  EXPECT_EQ((*tasks)[2].state, TaskState::kDone);
  EXPECT_EQ((*tasks)[2].outputs, "{\"o\":1}");
  EXPECT_EQ((*tasks)[2].seconds, 0.5);
  EXPECT_THAT((*tasks)[2].deps, ElementsAre(0, 1));
}

TEST(JobStoreTest, WalModeFullSyncForeignKeysAndSchemaVersion) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  sqlite3* db = JobStoreTestPeer::db(*store);
  EXPECT_EQ(RawDb::QueryOn(db, "PRAGMA journal_mode"), "wal");
  EXPECT_EQ(RawDb::QueryOn(db, "PRAGMA synchronous"), "2");  // FULL.
  EXPECT_EQ(RawDb::QueryOn(db, "PRAGMA foreign_keys"), "1");
  EXPECT_NE(RawDb::QueryOn(db, "PRAGMA busy_timeout"), "0");

  ASSERT_TRUE(store->CreateJob(MakeJob(), ThreeTasks(), 1).ok());
  EXPECT_TRUE(Exists(path + "-wal"));
  // Persistent settings, seen by another connection.
  RawDb raw(path);
  EXPECT_EQ(raw.Query("PRAGMA journal_mode"), "wal");
  EXPECT_EQ(raw.Query("PRAGMA user_version"),
            std::to_string(JobStore::kSchemaVersion));
  EXPECT_EQ(raw.Query("SELECT COUNT(*) FROM sqlite_master WHERE type = "
                      "'table' AND name IN ('jobs', 'tasks')"),
            "2");
}

TEST(JobStoreTest, OpensAnEmptyFile) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  WriteBytes(path, "");
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(store->CreateJob(MakeJob(), {}, 1).ok());
}

TEST(JobStoreTest, OtherSchemaVersionIsRefusedAndLeftUnchanged) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  {
    RawDb raw(path);
    raw.Exec("CREATE TABLE jobs (id INTEGER PRIMARY KEY, x TEXT)");
    raw.Exec("CREATE TABLE tasks (job_id INTEGER, idx INTEGER)");
    raw.Exec("INSERT INTO jobs (x) VALUES ('keep me')");
    raw.Exec("PRAGMA user_version = 4");
  }
  const std::string before = ReadBytes(path);
  ASSERT_FALSE(before.empty());
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition)
      << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(path));
  EXPECT_THAT(store.status().message(), HasSubstr("version 4"));
  EXPECT_THAT(store.status().message(), HasSubstr("version 3"));
  EXPECT_EQ(ReadBytes(path), before);
  EXPECT_FALSE(Exists(path + "-wal"));
  RawDb raw(path);
  EXPECT_EQ(raw.Query("PRAGMA journal_mode"), "delete");
}

// A store written by a version 1 build (before tasks recorded their backend
// and kernel) opens with its jobs and tasks intact and gains the columns.
TEST(JobStoreTest, Version1StoreIsMigrated) {
  const std::string path = MakeTestTempDir("job_store") + "/v1.db";
  {
    RawDb raw(path);
    raw.Exec(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, spec BLOB "
        "NOT NULL, plan TEXT NOT NULL, state INTEGER NOT NULL, error TEXT NOT "
        "NULL, create_ms INTEGER NOT NULL, update_ms INTEGER NOT NULL)");
    raw.Exec(
        "CREATE TABLE tasks (job_id INTEGER NOT NULL REFERENCES jobs (id), "
        "idx INTEGER NOT NULL, kind TEXT NOT NULL, layer INTEGER NOT NULL, "
        "deps TEXT NOT NULL, state INTEGER NOT NULL, epoch INTEGER NOT NULL, "
        "worker_id TEXT NOT NULL, lease_deadline_ms INTEGER NOT NULL, "
        "task_faults INTEGER NOT NULL, infra_faults INTEGER NOT NULL, error "
        "TEXT NOT NULL, seconds REAL NOT NULL, outputs TEXT NOT NULL, "
        "PRIMARY KEY (job_id, idx))");
    raw.Exec("INSERT INTO jobs VALUES (1, 'spec', 'plan', 1, '', 5, 6)");
    raw.Exec(
        "INSERT INTO tasks VALUES (1, 0, 'embed', -1, '', 2, 1, '', 0, 0, 0, "
        "'', 0.25, '{}')");
    raw.Exec("PRAGMA user_version = 1");
  }
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(1);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  ASSERT_EQ(tasks->size(), 1u);
  EXPECT_EQ((*tasks)[0].seconds, 0.25);
  EXPECT_EQ((*tasks)[0].kernel, "");
  TaskRow task = (*tasks)[0];
  task.backend = "cpu";
  task.kernel = "OpenBLAS 0.3.21 Zen";
  ASSERT_TRUE(store->UpdateTask(task).ok());
  EXPECT_EQ((*store->GetTasks(1))[0].kernel, "OpenBLAS 0.3.21 Zen");
  absl::StatusOr<JobRow> job = store->GetJob(1);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->owner, "");
  RawDb raw(path);
  EXPECT_EQ(raw.Query("PRAGMA user_version"),
            std::to_string(JobStore::kSchemaVersion));
}

// A version 2 store (before jobs recorded who submitted them) keeps its jobs,
// whose owner is unknown (""), and records the owner of new ones.
TEST(JobStoreTest, Version2StoreIsMigratedAndNewJobsKeepTheirOwner) {
  const std::string path = MakeTestTempDir("job_store") + "/v2.db";
  {
    RawDb raw(path);
    raw.Exec(
        "CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, spec BLOB "
        "NOT NULL, plan TEXT NOT NULL, state INTEGER NOT NULL, error TEXT NOT "
        "NULL, create_ms INTEGER NOT NULL, update_ms INTEGER NOT NULL)");
    raw.Exec(
        "CREATE TABLE tasks (job_id INTEGER NOT NULL REFERENCES jobs (id), "
        "idx INTEGER NOT NULL, kind TEXT NOT NULL, layer INTEGER NOT NULL, "
        "deps TEXT NOT NULL, state INTEGER NOT NULL, epoch INTEGER NOT NULL, "
        "worker_id TEXT NOT NULL, lease_deadline_ms INTEGER NOT NULL, "
        "task_faults INTEGER NOT NULL, infra_faults INTEGER NOT NULL, error "
        "TEXT NOT NULL, seconds REAL NOT NULL, outputs TEXT NOT NULL, "
        "backend TEXT NOT NULL DEFAULT '', kernel TEXT NOT NULL DEFAULT '', "
        "PRIMARY KEY (job_id, idx))");
    raw.Exec("INSERT INTO jobs VALUES (1, 'spec', 'plan', 1, '', 5, 6)");
    raw.Exec("PRAGMA user_version = 2");
  }
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<JobRow> old_job = store->GetJob(1);
  ASSERT_TRUE(old_job.ok()) << old_job.status();
  EXPECT_EQ(old_job->spec, "spec");
  EXPECT_EQ(old_job->owner, "");
  JobRow row = MakeJob();
  row.owner = "alice";
  absl::StatusOr<int64_t> id = store->CreateJob(row, {}, 7);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(store->GetJob(*id)->owner, "alice");
  RawDb raw(path);
  EXPECT_EQ(raw.Query("PRAGMA user_version"),
            std::to_string(JobStore::kSchemaVersion));
}

TEST(JobStoreTest, OtherDatabaseIsRefusedAndLeftUnchanged) {
  const std::string path = MakeTestTempDir("job_store") + "/other.db";
  {
    RawDb raw(path);
    raw.Exec("CREATE TABLE users (name TEXT)");
  }
  const std::string before = ReadBytes(path);
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition)
      << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(path));
  EXPECT_THAT(store.status().message(), HasSubstr("not a job store"));
  EXPECT_EQ(ReadBytes(path), before);
}

TEST(JobStoreTest, GarbageFileIsRefusedAndLeftUnchanged) {
  const std::string dir = MakeTestTempDir("job_store");
  std::string garbage;
  for (int i = 0; i < 8192; ++i) {
    garbage.push_back(static_cast<char>((i * 131 + 7) % 251));
  }
  for (const std::string& bytes :
       {garbage, std::string("hello, this is not a database\n")}) {
    const std::string path =
        dir + "/garbage" + std::to_string(bytes.size()) + ".db";
    WriteBytes(path, bytes);
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path);
    ASSERT_FALSE(store.ok()) << path;
    EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss)
        << store.status();
    EXPECT_THAT(store.status().message(), HasSubstr(path));
    EXPECT_EQ(ReadBytes(path), bytes);
    EXPECT_FALSE(Exists(path + "-wal"));
  }
}

TEST(JobStoreTest, OpenInMissingDirectoryFails) {
  const std::string path =
      MakeTestTempDir("job_store") + "/no/such/dir/jobs.db";
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(path));
}

TEST(JobStoreTest, OtherThreadsNeverSeeAHalfDoneTransaction) {
  const std::string path = MakeTestTempDir("job_store") + "/jobs.db";
  std::unique_ptr<JobStore> store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<int64_t> id = store->CreateJob(MakeJob(), ThreeTasks(), 1);
  ASSERT_TRUE(id.ok()) << id.status();

  absl::Notification first_written;
  std::atomic<bool> done{false};
  absl::Status txn_status;
  std::thread writer([&] {
    txn_status = store->Transaction([&]() -> absl::Status {
      for (int i = 0; i < 2; ++i) {
        TaskRow t = ThreeTasks()[i];
        t.job_id = *id;
        t.state = TaskState::kLeased;
        t.epoch = 1;
        t.worker_id = "w";
        absl::Status st = store->UpdateTask(t);
        if (!st.ok()) return st;
        if (i == 0) {
          first_written.Notify();
          std::this_thread::sleep_for(std::chrono::milliseconds(300));
        }
      }
      return absl::OkStatus();
    });
    done = true;
  });

  // A reader that polls through the whole transaction.
  int half_done = 0;
  int reads = 0;
  absl::Status reader_status;
  std::thread reader([&] {
    do {
      absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(*id);
      if (!tasks.ok()) {
        reader_status = tasks.status();
        return;
      }
      ++reads;
      if ((*tasks)[0].epoch != (*tasks)[1].epoch) ++half_done;
    } while (!done);
  });

  first_written.WaitForNotification();
  // Called while the transaction is open: must wait for it, then see both.
  absl::StatusOr<std::vector<TaskRow>> tasks = store->GetTasks(*id);
  ASSERT_TRUE(tasks.ok()) << tasks.status();
  EXPECT_EQ((*tasks)[0].epoch, 1);
  EXPECT_EQ((*tasks)[1].epoch, 1);
  EXPECT_EQ((*tasks)[1].state, TaskState::kLeased);
  EXPECT_EQ((*tasks)[2].epoch, 0);
  writer.join();
  reader.join();
  EXPECT_TRUE(txn_status.ok()) << txn_status;
  EXPECT_TRUE(reader_status.ok()) << reader_status;
  EXPECT_GT(reads, 0);
  EXPECT_EQ(half_done, 0);
}

}  // namespace
}  // namespace quant
