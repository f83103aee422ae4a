#include "coordinator/job_store.h"

#include <sqlite3.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"

namespace quant {
namespace {

constexpr int kBusyTimeoutMs = 10000;

constexpr const char* kSchemaSql = R"sql(
CREATE TABLE jobs (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  spec BLOB NOT NULL,
  plan TEXT NOT NULL,
  state INTEGER NOT NULL,
  error TEXT NOT NULL,
  create_ms INTEGER NOT NULL,
  update_ms INTEGER NOT NULL,
  owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE TABLE tasks (
  job_id INTEGER NOT NULL REFERENCES jobs (id),
  idx INTEGER NOT NULL,
  kind TEXT NOT NULL,
  layer INTEGER NOT NULL,
  deps TEXT NOT NULL,
  state INTEGER NOT NULL,
  epoch INTEGER NOT NULL,
  worker_id TEXT NOT NULL,
  lease_deadline_ms INTEGER NOT NULL,
  task_faults INTEGER NOT NULL,
  infra_faults INTEGER NOT NULL,
  error TEXT NOT NULL,
  seconds REAL NOT NULL,
  outputs TEXT NOT NULL,
  backend TEXT NOT NULL DEFAULT '',
  kernel TEXT NOT NULL DEFAULT '',
  PRIMARY KEY (job_id, idx)
);
)sql";

// Version 1 -> 2: which backend and kernel class computed each task.
// Version 2 -> 3: who submitted each job ("" for jobs from before: only an
// admin may cancel or resume those).
constexpr const char* kMigrateFrom1Sql = R"sql(
ALTER TABLE tasks ADD COLUMN backend TEXT NOT NULL DEFAULT '';
ALTER TABLE tasks ADD COLUMN kernel TEXT NOT NULL DEFAULT '';
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
)sql";
constexpr const char* kMigrateFrom2Sql = R"sql(
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
)sql";

constexpr const char* kJobColumns =
    "id, spec, plan, state, error, create_ms, update_ms, owner";
constexpr const char* kTaskColumns =
    "job_id, idx, kind, layer, deps, state, epoch, worker_id, "
    "lease_deadline_ms, task_faults, infra_faults, error, seconds, outputs, "
    "backend, kernel";

absl::StatusCode CodeFor(int rc) {
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
    case SQLITE_FORMAT:
      return absl::StatusCode::kDataLoss;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
      return absl::StatusCode::kUnavailable;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_READONLY:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
      return absl::StatusCode::kInvalidArgument;
    default:
      return absl::StatusCode::kInternal;
  }
}

std::string ColumnString(sqlite3_stmt* stmt, int col) {
  const void* data = sqlite3_column_blob(stmt, col);
  const int size = sqlite3_column_bytes(stmt, col);
  if (data == nullptr || size <= 0) return "";
  return std::string(static_cast<const char*>(data), size);
}

std::optional<JobState> ToJobState(int64_t value) {
  if (value < static_cast<int>(JobState::kQueued) ||
      value > static_cast<int>(JobState::kCancelled)) {
    return std::nullopt;
  }
  return static_cast<JobState>(value);
}

std::optional<TaskState> ToTaskState(int64_t value) {
  if (value < static_cast<int>(TaskState::kPending) ||
      value > static_cast<int>(TaskState::kFailed)) {
    return std::nullopt;
  }
  return static_cast<TaskState>(value);
}

}  // namespace

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "queued";
    case JobState::kRunning:
      return "running";
    case JobState::kSucceeded:
      return "succeeded";
    case JobState::kFailed:
      return "failed";
    case JobState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

const char* TaskStateName(TaskState state) {
  switch (state) {
    case TaskState::kPending:
      return "pending";
    case TaskState::kLeased:
      return "leased";
    case TaskState::kDone:
      return "done";
    case TaskState::kFailed:
      return "failed";
  }
  return "unknown";
}

bool IsFinal(JobState state) {
  return state == JobState::kSucceeded || state == JobState::kFailed ||
         state == JobState::kCancelled;
}

// Serializes calls: takes mu_ unless the calling thread is running a
// Transaction's body (which already holds it). Inside a body it also checks
// that SQLite has not rolled the transaction back on its own (it does so on
// some errors, e.g. SQLITE_FULL); a later statement would otherwise run in
// autocommit mode, outside the transaction the caller believes it is in.
class JobStore::CallScope {
 public:
  explicit CallScope(JobStore* store)
      : store_(store), locked_(!store->InTransaction()) {
    if (locked_) store_->mu_.Lock();
  }
  ~CallScope() {
    if (locked_) store_->mu_.Unlock();
  }
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;

  absl::Status Check() const {
    if (!locked_ && sqlite3_get_autocommit(store_->db_) != 0) {
      return absl::AbortedError(
          absl::StrCat("job store ", store_->path_,
                       ": the transaction was rolled back by an earlier "
                       "error; no further changes are accepted in it"));
    }
    return absl::OkStatus();
  }

 private:
  JobStore* const store_;
  const bool locked_;
};

namespace {

// A prepared statement, finalized when it goes out of scope.
class Statement {
 public:
  Statement() = default;
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  sqlite3_stmt* get() const { return stmt_; }
  sqlite3_stmt** out() { return &stmt_; }

 private:
  sqlite3_stmt* stmt_ = nullptr;
};

}  // namespace

JobStore::JobStore(std::string path, sqlite3* db)
    : path_(std::move(path)), db_(db) {}

JobStore::~JobStore() {
  // All statements are finalized by the time a call returns, so the close
  // succeeds; it checkpoints the WAL into the main file.
  sqlite3_close_v2(db_);
}

bool JobStore::InTransaction() const {
  return txn_owner_.load(std::memory_order_acquire) ==
         std::this_thread::get_id();
}

absl::Status JobStore::SqliteError(int rc, const std::string& op) const {
  const char* msg = db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
  return absl::Status(CodeFor(rc),
                      absl::StrCat("job store ", path_, ": ", op, ": ", msg,
                                   " (sqlite code ", rc, ")"));
}

absl::Status JobStore::Exec(const char* sql, const char* op) {
  const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteError(rc, op);
  return absl::OkStatus();
}

namespace {

// Prepares `sql` on `db`; `error` turns a SQLite code into a status.
absl::Status Prepare(sqlite3* db, const char* sql, Statement* stmt,
                     const std::function<absl::Status(int)>& error) {
  const int rc = sqlite3_prepare_v2(db, sql, -1, stmt->out(), nullptr);
  if (rc != SQLITE_OK) return error(rc);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    const std::string& path) {
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
      nullptr);
  if (rc != SQLITE_OK) {
    const std::string msg =
        db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return absl::Status(CodeFor(rc),
                        absl::StrCat("job store ", path, ": open: ", msg,
                                     " (sqlite code ", rc, ")"));
  }
  std::unique_ptr<JobStore> store(new JobStore(path, db));
  RETURN_IF_ERROR(store->Init());
  return store;
}

absl::Status JobStore::Init() {
  sqlite3_busy_timeout(db_, kBusyTimeoutMs);
  // Connection settings only: nothing below writes to the file until it is
  // known to be empty or a job store of this version.
  RETURN_IF_ERROR(Exec("PRAGMA foreign_keys=ON", "enable foreign keys"));

  auto error = [this](const char* op) {
    return [this, op](int rc) { return SqliteError(rc, op); };
  };
  // Reads the version and the names of the tables. A file that is not a
  // SQLite database fails here (SQLITE_NOTADB -> DataLoss).
  auto inspect = [&](int64_t* version, int* objects, bool* has_jobs,
                     bool* has_tasks) -> absl::Status {
    Statement v;
    RETURN_IF_ERROR(
        Prepare(db_, "PRAGMA user_version", &v, error("read schema version")));
    int rc = sqlite3_step(v.get());
    if (rc != SQLITE_ROW) return SqliteError(rc, "read schema version");
    *version = sqlite3_column_int64(v.get(), 0);
    Statement t;
    RETURN_IF_ERROR(Prepare(db_, "SELECT type, name FROM sqlite_master", &t,
                            error("read schema")));
    *objects = 0;
    *has_jobs = *has_tasks = false;
    while ((rc = sqlite3_step(t.get())) == SQLITE_ROW) {
      ++*objects;
      const std::string type = ColumnString(t.get(), 0);
      const std::string name = ColumnString(t.get(), 1);
      if (type == "table" && name == "jobs") *has_jobs = true;
      if (type == "table" && name == "tasks") *has_tasks = true;
    }
    if (rc != SQLITE_DONE) return SqliteError(rc, "read schema");
    return absl::OkStatus();
  };
  // Refuses a file that is not an empty database or a job store of this
  // version, before anything is written to it.
  auto check = [&](int64_t version, int objects, bool has_jobs,
                   bool has_tasks) -> absl::Status {
    if (version == 0 && objects == 0) return absl::OkStatus();  // Empty.
    if (version == 0) {
      return absl::FailedPreconditionError(
          absl::StrCat("job store ", path_,
                       ": not a job store (a SQLite database with schema "
                       "version 0 that already holds ",
                       objects, " schema objects)"));
    }
    if (version < 1 || version > kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job store ", path_, ": schema version ", version,
          " in the file, but this build reads version ", kSchemaVersion));
    }
    if (!has_jobs || !has_tasks) {
      return absl::FailedPreconditionError(absl::StrCat(
          "job store ", path_, ": not a job store (schema version ", version,
          " but no ", has_jobs ? "tasks" : "jobs", " table)"));
    }
    return absl::OkStatus();
  };

  int64_t version = 0;
  int objects = 0;
  bool has_jobs = false;
  bool has_tasks = false;
  RETURN_IF_ERROR(inspect(&version, &objects, &has_jobs, &has_tasks));
  RETURN_IF_ERROR(check(version, objects, has_jobs, has_tasks));

  // journal_mode must be set outside a transaction; it is persistent.
  {
    Statement j;
    RETURN_IF_ERROR(Prepare(db_, "PRAGMA journal_mode=WAL", &j,
                            error("set journal_mode=WAL")));
    const int rc = sqlite3_step(j.get());
    if (rc != SQLITE_ROW) return SqliteError(rc, "set journal_mode=WAL");
    const std::string mode = ColumnString(j.get(), 0);
    if (mode != "wal") {
      return absl::FailedPreconditionError(absl::StrCat(
          "job store ", path_,
          ": set journal_mode=WAL: SQLite kept journal mode \"", mode, "\""));
    }
  }
  RETURN_IF_ERROR(Exec("PRAGMA synchronous=FULL", "set synchronous=FULL"));
  {
    Statement s;
    RETURN_IF_ERROR(
        Prepare(db_, "PRAGMA synchronous", &s, error("read synchronous")));
    const int rc = sqlite3_step(s.get());
    if (rc != SQLITE_ROW) return SqliteError(rc, "read synchronous");
    if (sqlite3_column_int(s.get(), 0) != 2) {
      return absl::InternalError(absl::StrCat(
          "job store ", path_, ": synchronous is ",
          sqlite3_column_int(s.get(), 0), " after PRAGMA synchronous=FULL"));
    }
  }
  // Creates (from version 0) or migrates (from version 1) the schema in one
  // transaction, checking the version again inside it in case another
  // process did so meanwhile; a crash leaves the file as it was.
  auto upgrade = [&](int64_t from, const char* sql,
                     const char* what) -> absl::Status {
    RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE", what));
    absl::Status status = [&]() -> absl::Status {
      RETURN_IF_ERROR(inspect(&version, &objects, &has_jobs, &has_tasks));
      RETURN_IF_ERROR(check(version, objects, has_jobs, has_tasks));
      if (version != from) return Exec("COMMIT", what);
      RETURN_IF_ERROR(Exec(sql, what));
      const std::string set_version =
          absl::StrCat("PRAGMA user_version=", kSchemaVersion);
      RETURN_IF_ERROR(Exec(set_version.c_str(), "set schema version"));
      return Exec("COMMIT", what);
    }();
    if (!status.ok() && sqlite3_get_autocommit(db_) == 0) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    return status;
  };
  if (version == 0) return upgrade(0, kSchemaSql, "create schema");
  if (version == 1) {
    return upgrade(1, kMigrateFrom1Sql, "migrate schema 1 -> 3");
  }
  if (version == 2) {
    return upgrade(2, kMigrateFrom2Sql, "migrate schema 2 -> 3");
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> JobStore::CreateJob(const JobRow& job,
                                            const std::vector<TaskRow>& tasks,
                                            int64_t now_ms) {
  CallScope scope(this);
  RETURN_IF_ERROR(scope.Check());
  auto error = [this](const char* op) {
    return [this, op](int rc) { return SqliteError(rc, op); };
  };
  // Its own transaction, or a savepoint inside the caller's Transaction so
  // that a failure leaves no half-inserted job either way.
  const bool nested = InTransaction();
  RETURN_IF_ERROR(Exec(nested ? "SAVEPOINT create_job" : "BEGIN IMMEDIATE",
                       "begin create job"));
  int64_t id = 0;
  absl::Status status = [&]() -> absl::Status {
    Statement insert_job;
    RETURN_IF_ERROR(Prepare(db_,
                            "INSERT INTO jobs (spec, plan, state, error, "
                            "create_ms, update_ms, owner) "
                            "VALUES (?, ?, ?, ?, ?, ?, ?)",
                            &insert_job, error("prepare insert job")));
    sqlite3_stmt* s = insert_job.get();
    // std::string::data() is never null, so an empty spec binds as an empty
    // BLOB, not NULL.
    sqlite3_bind_blob64(s, 1, job.spec.data(), job.spec.size(), SQLITE_STATIC);
    sqlite3_bind_text64(s, 2, job.plan.data(), job.plan.size(), SQLITE_STATIC,
                        SQLITE_UTF8);
    sqlite3_bind_int64(s, 3, static_cast<int64_t>(JobState::kQueued));
    sqlite3_bind_text64(s, 4, job.error.data(), job.error.size(), SQLITE_STATIC,
                        SQLITE_UTF8);
    sqlite3_bind_int64(s, 5, now_ms);
    sqlite3_bind_int64(s, 6, now_ms);
    sqlite3_bind_text64(s, 7, job.owner.data(), job.owner.size(), SQLITE_STATIC,
                        SQLITE_UTF8);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_DONE) return SqliteError(rc, "insert job");
    id = sqlite3_last_insert_rowid(db_);

    Statement insert_task;
    RETURN_IF_ERROR(Prepare(
        db_,
        "INSERT INTO tasks (job_id, idx, kind, layer, deps, state, epoch, "
        "worker_id, lease_deadline_ms, task_faults, infra_faults, error, "
        "seconds, outputs, backend, kernel) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &insert_task, error("prepare insert task")));
    s = insert_task.get();
    for (const TaskRow& task : tasks) {
      const std::string deps = absl::StrJoin(task.deps, ",");
      sqlite3_reset(s);
      sqlite3_bind_int64(s, 1, id);
      sqlite3_bind_int64(s, 2, task.index);
      sqlite3_bind_text64(s, 3, task.kind.data(), task.kind.size(),
                          SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_int64(s, 4, task.layer);
      sqlite3_bind_text64(s, 5, deps.data(), deps.size(), SQLITE_STATIC,
                          SQLITE_UTF8);
      sqlite3_bind_int64(s, 6, static_cast<int64_t>(task.state));
      sqlite3_bind_int64(s, 7, task.epoch);
      sqlite3_bind_text64(s, 8, task.worker_id.data(), task.worker_id.size(),
                          SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_int64(s, 9, task.lease_deadline_ms);
      sqlite3_bind_int64(s, 10, task.task_faults);
      sqlite3_bind_int64(s, 11, task.infra_faults);
      sqlite3_bind_text64(s, 12, task.error.data(), task.error.size(),
                          SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_double(s, 13, task.seconds);
      sqlite3_bind_text64(s, 14, task.outputs.data(), task.outputs.size(),
                          SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_text64(s, 15, task.backend.data(), task.backend.size(),
                          SQLITE_STATIC, SQLITE_UTF8);
      sqlite3_bind_text64(s, 16, task.kernel.data(), task.kernel.size(),
                          SQLITE_STATIC, SQLITE_UTF8);
      rc = sqlite3_step(s);
      if (rc != SQLITE_DONE) {
        return SqliteError(
            rc, absl::StrCat("insert task ", task.index, " of job ", id));
      }
    }
    return Exec(nested ? "RELEASE create_job" : "COMMIT", "commit create job");
  }();
  if (!status.ok()) {
    if (nested) {
      // Undo this job only; the caller's transaction stays open.
      sqlite3_exec(db_, "ROLLBACK TO create_job; RELEASE create_job", nullptr,
                   nullptr, nullptr);
    } else if (sqlite3_get_autocommit(db_) == 0) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
    return status;
  }
  return id;
}

namespace {

absl::StatusOr<JobRow> ReadJob(sqlite3_stmt* s, const std::string& path) {
  JobRow job;
  job.id = sqlite3_column_int64(s, 0);
  job.spec = ColumnString(s, 1);
  job.plan = ColumnString(s, 2);
  const int64_t state = sqlite3_column_int64(s, 3);
  const std::optional<JobState> parsed = ToJobState(state);
  if (!parsed.has_value()) {
    return absl::DataLossError(absl::StrCat(
        "job store ", path, ": job ", job.id, " has unknown state ", state));
  }
  job.state = *parsed;
  job.error = ColumnString(s, 4);
  job.create_ms = sqlite3_column_int64(s, 5);
  job.update_ms = sqlite3_column_int64(s, 6);
  job.owner = ColumnString(s, 7);
  return job;
}

absl::StatusOr<TaskRow> ReadTask(sqlite3_stmt* s, const std::string& path) {
  TaskRow task;
  task.job_id = sqlite3_column_int64(s, 0);
  task.index = sqlite3_column_int(s, 1);
  task.kind = ColumnString(s, 2);
  task.layer = sqlite3_column_int(s, 3);
  const std::string deps = ColumnString(s, 4);
  if (!deps.empty()) {
    for (absl::string_view dep : absl::StrSplit(deps, ',')) {
      int32_t value = 0;
      if (!absl::SimpleAtoi(dep, &value)) {
        return absl::DataLossError(
            absl::StrCat("job store ", path, ": task ", task.index, " of job ",
                         task.job_id, " has malformed deps \"", deps, "\""));
      }
      task.deps.push_back(value);
    }
  }
  const int64_t state = sqlite3_column_int64(s, 5);
  const std::optional<TaskState> parsed = ToTaskState(state);
  if (!parsed.has_value()) {
    return absl::DataLossError(absl::StrCat("job store ", path, ": task ",
                                            task.index, " of job ", task.job_id,
                                            " has unknown state ", state));
  }
  task.state = *parsed;
  task.epoch = sqlite3_column_int64(s, 6);
  task.worker_id = ColumnString(s, 7);
  task.lease_deadline_ms = sqlite3_column_int64(s, 8);
  task.task_faults = sqlite3_column_int(s, 9);
  task.infra_faults = sqlite3_column_int(s, 10);
  task.error = ColumnString(s, 11);
  task.seconds = sqlite3_column_double(s, 12);
  task.outputs = ColumnString(s, 13);
  task.backend = ColumnString(s, 14);
  task.kernel = ColumnString(s, 15);
  return task;
}

}  // namespace

absl::StatusOr<JobRow> JobStore::GetJob(int64_t id) {
  CallScope scope(this);
  RETURN_IF_ERROR(scope.Check());
  const std::string op = absl::StrCat("get job ", id);
  Statement stmt;
  const std::string sql =
      absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id = ?");
  RETURN_IF_ERROR(Prepare(db_, sql.c_str(), &stmt,
                          [&](int rc) { return SqliteError(rc, op); }));
  sqlite3_bind_int64(stmt.get(), 1, id);
  const int rc = sqlite3_step(stmt.get());
  if (rc == SQLITE_DONE) {
    return absl::NotFoundError(
        absl::StrCat("job store ", path_, ": no job ", id));
  }
  if (rc != SQLITE_ROW) return SqliteError(rc, op);
  return ReadJob(stmt.get(), path_);
}

absl::StatusOr<std::vector<JobRow>> JobStore::ListJobs(
    std::optional<JobState> state) {
  CallScope scope(this);
  RETURN_IF_ERROR(scope.Check());
  const char* op = "list jobs";
  Statement stmt;
  const std::string sql =
      absl::StrCat("SELECT ", kJobColumns, " FROM jobs",
                   state.has_value() ? " WHERE state = ?" : "", " ORDER BY id");
  RETURN_IF_ERROR(Prepare(db_, sql.c_str(), &stmt,
                          [&](int rc) { return SqliteError(rc, op); }));
  if (state.has_value()) {
    sqlite3_bind_int64(stmt.get(), 1, static_cast<int64_t>(*state));
  }
  std::vector<JobRow> jobs;
  int rc;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
    ASSIGN_OR_RETURN(JobRow job, ReadJob(stmt.get(), path_));
    jobs.push_back(std::move(job));
  }
  if (rc != SQLITE_DONE) return SqliteError(rc, op);
  return jobs;
}

absl::StatusOr<std::vector<TaskRow>> JobStore::GetTasks(int64_t job_id) {
  CallScope scope(this);
  RETURN_IF_ERROR(scope.Check());
  const std::string op = absl::StrCat("get tasks of job ", job_id);
  auto error = [&](int rc) { return SqliteError(rc, op); };
  {
    Statement exists;
    RETURN_IF_ERROR(
        Prepare(db_, "SELECT 1 FROM jobs WHERE id = ?", &exists, error));
    sqlite3_bind_int64(exists.get(), 1, job_id);
    const int rc = sqlite3_step(exists.get());
    if (rc == SQLITE_DONE) {
      return absl::NotFoundError(
          absl::StrCat("job store ", path_, ": no job ", job_id));
    }
    if (rc != SQLITE_ROW) return error(rc);
  }
  Statement stmt;
  const std::string sql = absl::StrCat(
      "SELECT ", kTaskColumns, " FROM tasks WHERE job_id = ? ORDER BY idx");
  RETURN_IF_ERROR(Prepare(db_, sql.c_str(), &stmt, error));
  sqlite3_bind_int64(stmt.get(), 1, job_id);
  std::vector<TaskRow> tasks;
  int rc;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
    ASSIGN_OR_RETURN(TaskRow task, ReadTask(stmt.get(), path_));
    tasks.push_back(std::move(task));
  }
  if (rc != SQLITE_DONE) return error(rc);
  return tasks;
}

absl::Status JobStore::UpdateJobState(int64_t id, JobState state,
                                      const std::string& error,
                                      int64_t now_ms) {
  CallScope scope(this);
  RETURN_IF_ERROR(scope.Check());
  const std::string op = absl::StrCat("update job ", id);
  Statement stmt;
  RETURN_IF_ERROR(Prepare(
      db_, "UPDATE jobs SET state = ?, error = ?, update_ms = ? WHERE id = ?",
      &stmt, [&](int rc) { return SqliteError(rc, op); }));
  sqlite3_stmt* s = stmt.get();
  sqlite3_bind_int64(s, 1, static_cast<int64_t>(state));
  sqlite3_bind_text64(s, 2, error.data(), error.size(), SQLITE_STATIC,
                      SQLITE_UTF8);
  sqlite3_bind_int64(s, 3, now_ms);
  sqlite3_bind_int64(s, 4, id);
  const int rc = sqlite3_step(s);
  if (rc != SQLITE_DONE) return SqliteError(rc, op);
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(
        absl::StrCat("job store ", path_, ": no job ", id));
  }
  return absl::OkStatus();
}

absl::Status JobStore::UpdateTask(const TaskRow& task) {
  CallScope scope(this);
  RETURN_IF_ERROR(scope.Check());
  const std::string op =
      absl::StrCat("update task ", task.index, " of job ", task.job_id);
  Statement stmt;
  RETURN_IF_ERROR(Prepare(
      db_,
      "UPDATE tasks SET state = ?, epoch = ?, worker_id = ?, "
      "lease_deadline_ms = ?, task_faults = ?, infra_faults = ?, error = ?, "
      "seconds = ?, outputs = ?, backend = ?, kernel = ? "
      "WHERE job_id = ? AND idx = ?",
      &stmt, [&](int rc) { return SqliteError(rc, op); }));
  sqlite3_stmt* s = stmt.get();
  sqlite3_bind_int64(s, 1, static_cast<int64_t>(task.state));
  sqlite3_bind_int64(s, 2, task.epoch);
  sqlite3_bind_text64(s, 3, task.worker_id.data(), task.worker_id.size(),
                      SQLITE_STATIC, SQLITE_UTF8);
  sqlite3_bind_int64(s, 4, task.lease_deadline_ms);
  sqlite3_bind_int64(s, 5, task.task_faults);
  sqlite3_bind_int64(s, 6, task.infra_faults);
  sqlite3_bind_text64(s, 7, task.error.data(), task.error.size(), SQLITE_STATIC,
                      SQLITE_UTF8);
  sqlite3_bind_double(s, 8, task.seconds);
  sqlite3_bind_text64(s, 9, task.outputs.data(), task.outputs.size(),
                      SQLITE_STATIC, SQLITE_UTF8);
  sqlite3_bind_text64(s, 10, task.backend.data(), task.backend.size(),
                      SQLITE_STATIC, SQLITE_UTF8);
  sqlite3_bind_text64(s, 11, task.kernel.data(), task.kernel.size(),
                      SQLITE_STATIC, SQLITE_UTF8);
  sqlite3_bind_int64(s, 12, task.job_id);
  sqlite3_bind_int64(s, 13, task.index);
  const int rc = sqlite3_step(s);
  if (rc != SQLITE_DONE) return SqliteError(rc, op);
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(absl::StrCat("job store ", path_, ": no task ",
                                            task.index, " of job ",
                                            task.job_id));
  }
  return absl::OkStatus();
}

absl::Status JobStore::Transaction(const std::function<absl::Status()>& body) {
  if (InTransaction()) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path_,
                     ": Transaction called inside a transaction (not "
                     "reentrant)"));
  }
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE", "begin transaction"));
  txn_owner_.store(std::this_thread::get_id(), std::memory_order_release);
  absl::Status status = body();
  txn_owner_.store(std::thread::id(), std::memory_order_release);
  if (status.ok()) status = Exec("COMMIT", "commit transaction");
  // On failure, a transaction SQLite has not already ended is rolled back
  // (a failed COMMIT, e.g. SQLITE_BUSY, leaves it open).
  if (!status.ok() && sqlite3_get_autocommit(db_) == 0) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  return status;
}

}  // namespace quant
