#include "client/service_client.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file.h"
#include "common/grpc_options.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "coordinator/coordinator.h"
#include "quant/block_backend.h"
#include "worker/worker_session.h"

namespace quant {
namespace {

namespace fs = std::filesystem;

std::string Duration(double seconds) {
  if (seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return absl::StrFormat("%dh%02dm", s / 3600, s / 60 % 60);
  if (s >= 60) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%ds", s);
}

bool IsFinal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

int LineCount(const std::string& text) {
  return static_cast<int>(std::count(text.begin(), text.end(), '\n'));
}

}  // namespace

const char* JobStateText(v1::JobState state) {
  switch (state) {
    case v1::JOB_STATE_QUEUED:
      return "queued";
    case v1::JOB_STATE_RUNNING:
      return "running";
    case v1::JOB_STATE_SUCCEEDED:
      return "succeeded";
    case v1::JOB_STATE_FAILED:
      return "failed";
    case v1::JOB_STATE_CANCELLED:
      return "cancelled";
    default:
      return "unknown";
  }
}

std::string RenderProgress(const v1::Job& job) {
  std::string out =
      absl::StrFormat("job %s %s: %d/%d tasks done, %d running, ETA %s\n",
                      job.job_id(), JobStateText(job.state()), job.tasks_done(),
                      job.tasks_total(), job.tasks_leased(),
                      IsFinal(job.state()) ? "-" : Duration(job.eta_seconds()));
  if (!job.waiting().empty()) {
    absl::StrAppend(&out, "  waiting: ", job.waiting(), "\n");
  }
  constexpr int kWidth = 30;
  for (const v1::Stage& stage : job.stages()) {
    const int filled =
        stage.total() == 0 ? kWidth : kWidth * stage.done() / stage.total();
    absl::StrAppendFormat(
        &out, "  %-8s [%s%s] %d/%d\n", stage.name(), std::string(filled, '#'),
        std::string(kWidth - filled, '-'), stage.done(), stage.total());
  }
  return out;
}

ServiceClient::ServiceClient(const ServiceClientOptions& options,
                             std::shared_ptr<grpc::Channel> channel)
    : options_(options) {
  if (channel == nullptr) {
    channel = grpc::CreateCustomChannel(options.coordinator,
                                        grpc::InsecureChannelCredentials(),
                                        ServiceChannelArguments());
  }
  stub_ = v1::QuantizationService::NewStub(channel);
}

std::unique_ptr<grpc::ClientContext> ServiceClient::Context() const {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(std::chrono::system_clock::now() +
                        std::chrono::milliseconds(options_.rpc_timeout_ms));
  return context;
}

absl::StatusOr<v1::Job> ServiceClient::Submit(const v1::JobSpec& spec) {
  v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  v1::Job job;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->SubmitJob(Context().get(), request, &job)));
  return job;
}

absl::StatusOr<v1::Job> ServiceClient::Get(const std::string& job_id,
                                           bool include_tasks) {
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  request.set_include_tasks(include_tasks);
  v1::Job job;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->GetJob(Context().get(), request, &job)));
  return job;
}

absl::Status ServiceClient::Watch(const std::string& job_id,
                                  std::ostream& out) {
  v1::Job last;
  bool seen = false;
  int drawn_lines = 0;
  // A watch lasts as long as the job: each stream has a deadline and is
  // opened again when it runs out or breaks (the coordinator restarted).
  for (int attempt = 0;; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::minutes(10));
    v1::WatchJobRequest request;
    request.set_job_id(job_id);
    std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader =
        stub_->WatchJob(&context, request);
    v1::JobEvent event;
    while (reader->Read(&event)) {
      seen = true;
      last = event.job();
      const std::string text = RenderProgress(last);
      if (options_.progress_on_tty) {
        if (drawn_lines > 0) out << "\x1b[" << drawn_lines << "A";
        for (absl::string_view line : absl::StrSplit(text, '\n')) {
          if (!line.empty()) out << "\r" << line << "\x1b[K\n";
        }
        drawn_lines = LineCount(text);
      } else {
        out << text;
      }
      out << std::flush;
    }
    const absl::Status status = FromGrpcStatus(reader->Finish());
    if (seen && IsFinal(last.state())) break;
    if (status.code() == absl::StatusCode::kDeadlineExceeded) {
      attempt = 0;
      continue;
    }
    if (status.code() != absl::StatusCode::kUnavailable || attempt >= 60) {
      return status.ok() ? absl::UnknownError("the watch ended early") : status;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
  if (last.state() == v1::JOB_STATE_SUCCEEDED) {
    if (!last.report_path().empty()) {
      out << "report: " << last.report_path() << "\n";
    }
    return absl::OkStatus();
  }
  return absl::AbortedError(
      absl::StrCat("job ", job_id, " ", JobStateText(last.state()),
                   last.error().empty() ? "" : ": ", last.error()));
}

absl::Status ServiceClient::Status(const std::string& job_id,
                                   std::ostream& out) {
  ASSIGN_OR_RETURN(const v1::Job job, Get(job_id, true));
  out << RenderProgress(job);
  out << absl::StrFormat("  model %s -> %s\n", job.spec().model_dir(),
                         job.spec().output());
  if (!job.error().empty()) out << "  error: " << job.error() << "\n";
  out << absl::StrFormat("  %-5s %-8s %5s %-8s %-22s %6s %6s %8s  %s\n", "task",
                         "kind", "layer", "state", "worker", "faults", "lost",
                         "seconds", "computed on");
  for (const v1::Task& t : job.tasks()) {
    static const char* kStates[] = {"?", "pending", "leased", "done", "failed"};
    out << absl::StrFormat(
        "  %-5d %-8s %5d %-8s %-22s %6d %6d %8.1f  %s\n", t.index(), t.kind(),
        t.layer(), kStates[std::clamp<int>(t.state(), 0, 4)],
        t.worker_id().empty() ? "-" : t.worker_id(), t.task_faults(),
        t.infra_faults(), t.seconds(),
        t.backend().empty() ? "-" : absl::StrCat(t.backend(), " ", t.kernel()));
  }
  return absl::OkStatus();
}

absl::Status ServiceClient::List(std::ostream& out) {
  v1::ListJobsResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(
      stub_->ListJobs(Context().get(), v1::ListJobsRequest(), &response)));
  out << absl::StrFormat("%-6s %-10s %9s  %s\n", "job", "state", "tasks",
                         "model -> output");
  for (const v1::Job& job : response.jobs()) {
    out << absl::StrFormat("%-6s %-10s %4d/%-4d  %s -> %s\n", job.job_id(),
                           JobStateText(job.state()), job.tasks_done(),
                           job.tasks_total(), job.spec().model_dir(),
                           job.spec().output());
  }
  return absl::OkStatus();
}

absl::Status ServiceClient::Cancel(const std::string& job_id,
                                   std::ostream& out) {
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->CancelJob(Context().get(), request, &job)));
  out << "job " << job_id << " " << JobStateText(job.state()) << "\n";
  return absl::OkStatus();
}

absl::Status ServiceClient::Resume(const std::string& job_id,
                                   std::ostream& out) {
  v1::ResumeJobRequest request;
  request.set_job_id(job_id);
  v1::Job job;
  RETURN_IF_ERROR(
      FromGrpcStatus(stub_->ResumeJob(Context().get(), request, &job)));
  out << absl::StrFormat("job %s %s (%d/%d tasks kept)\n", job_id,
                         JobStateText(job.state()), job.tasks_done(),
                         job.tasks_total());
  return absl::OkStatus();
}

absl::Status ServiceClient::Workers(std::ostream& out) {
  v1::ListWorkersResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->ListWorkers(
      Context().get(), v1::ListWorkersRequest(), &response)));
  out << absl::StrFormat("%-22s %-16s %-5s %7s %9s %-10s %5s  %s\n", "worker",
                         "name", "kind", "threads", "memory", "task", "done",
                         "device");
  for (const v1::WorkerInfo& w : response.workers()) {
    out << absl::StrFormat(
        "%-22s %-16s %-5s %7d %7.1fG %-10s %5d  %s\n", w.worker_id(), w.name(),
        w.backend() == v1::BACKEND_CUDA ? "cuda" : "cpu", w.threads(),
        w.memory_bytes() / 1e9, w.task().empty() ? "-" : w.task(),
        w.tasks_done(), w.device().empty() ? "-" : w.device());
  }
  return absl::OkStatus();
}

absl::Status RunLocal(const v1::JobSpec& spec, const LocalRunOptions& options,
                      std::ostream& out, std::ostream& err) {
  const bool gpu = options.backend != "cpu";
  std::vector<std::vector<int>> groups;
  if (gpu) {
    if (options.devices.empty()) {
      return absl::InvalidArgumentError(
          "run --local --backend cuda needs at least one device");
    }
    ASSIGN_OR_RETURN(groups,
                     GroupDevices(options.devices, options.devices_per_task));
  }
  const int workers = gpu ? static_cast<int>(groups.size()) : options.workers;
  if (workers < 1) {
    return absl::InvalidArgumentError("run --local needs at least 1 worker");
  }
  // The devices first: a missing GPU is named before any work starts.
  std::vector<std::shared_ptr<BlockBackend>> backends(workers);
  for (int i = 0; gpu && i < workers; ++i) {
    ASSIGN_OR_RETURN(backends[i],
                     MakeBlockBackendGroup(options.backend, groups[i]));
  }
  std::string state_dir = options.state_dir;
  const bool temporary = state_dir.empty();
  if (temporary) {
    // A new directory only this user can enter: never one that someone
    // else made (with a job store planted in it) under a name we chose.
    std::string name = absl::StrCat(fs::temp_directory_path().string(),
                                    "/quantctl-local-XXXXXX");
    if (::mkdtemp(name.data()) == nullptr) {
      return absl::InternalError(
          absl::StrCat("cannot create a state directory like ", name, ": ",
                       std::strerror(errno)));
    }
    state_dir = name;
  }
  // A temporary store goes however the run ends.
  struct RemoveTemporary {
    std::string dir;
    ~RemoveTemporary() {
      std::error_code error;
      if (!dir.empty()) fs::remove_all(dir, error);
    }
  } remove_temporary{temporary ? state_dir : ""};
  CoordinatorOptions coordinator_options;
  coordinator_options.listen_address = "";  // In-process only.
  JobManagerOptions& jobs = coordinator_options.jobs;
  jobs.state_dir = state_dir;
  // The paths this job names and nothing else (jobs recovered from a store
  // given with --state-dir resume with the paths they were submitted with).
  jobs.model_roots = {spec.model_dir()};
  const v1::Calibration& calibration = spec.recipe().calibration();
  for (const std::string& path :
       {calibration.text_path(), calibration.tokens_path()}) {
    if (!path.empty()) jobs.model_roots.push_back(path);
  }
  for (const std::string& text : spec.recipe().eval_texts()) {
    jobs.model_roots.push_back(text);
  }
  jobs.output_roots = {spec.output()};
  jobs.scheduler.heartbeat_interval_ms = 1000;
  jobs.scheduler.affinity_ms = 5000;
  ASSIGN_OR_RETURN(std::unique_ptr<Coordinator> coordinator,
                   Coordinator::Create(coordinator_options));
  const int cores = options.threads > 0
                        ? options.threads
                        : static_cast<int>(std::thread::hardware_concurrency());
  // A sequential calibrated job runs one block at a time: its worker gets
  // every core. Otherwise the workers share them.
  const v1::Recipe& recipe = spec.recipe();
  const bool one_at_a_time = recipe.mode() != v1::MODE_PARALLEL &&
                             (!recipe.calibration().has_samples() ||
                              recipe.calibration().samples() > 0);
  const int threads_per_worker =
      one_at_a_time || gpu ? cores : std::max(1, cores / workers);
  std::vector<std::unique_ptr<WorkerSession>> sessions;
  std::vector<std::thread> threads;
  for (int i = 0; i < workers; ++i) {
    WorkerOptions worker;
    worker.channel = coordinator->InProcessChannel();
    worker.name = gpu ? absl::StrCat("local-gpu", absl::StrJoin(groups[i], "+"))
                      : absl::StrCat("local-", i);
    worker.backend = backends[i];
    worker.threads = threads_per_worker;
    worker.scratch_dir = absl::StrCat(state_dir, "/scratch-", i);
    // In one process the workers see the model where the coordinator does.
    worker.shared_model_roots = {spec.model_dir()};
    worker.lease_wait_ms = 500;
    ASSIGN_OR_RETURN(std::unique_ptr<WorkerSession> session,
                     WorkerSession::Create(worker));
    sessions.push_back(std::move(session));
  }
  for (auto& session : sessions) {
    threads.emplace_back([s = session.get()] { (void)s->Run(); });
  }
  ServiceClientOptions client_options;
  client_options.progress_on_tty = options.progress_on_tty;
  ServiceClient client(client_options, coordinator->InProcessChannel());
  absl::StatusOr<v1::Job> job = client.Submit(spec);
  absl::Status status = job.status();
  if (status.ok()) status = client.Watch(job->job_id(), err);
  for (auto& session : sessions) session->Drain();
  for (auto& thread : threads) thread.join();
  absl::StatusOr<v1::Job> final_job =
      job.ok() ? client.Get(job->job_id(), false) : job.status();
  coordinator.reset();
  if (status.ok() && final_job.ok() && !final_job->report_path().empty()) {
    const std::string table_path =
        final_job->report_path().substr(
            0, final_job->report_path().size() - std::string(".json").size()) +
        ".txt";
    absl::StatusOr<std::string> table = ReadFileToString(table_path);
    if (table.ok()) out << *table;
    out << "wrote " << spec.output() << "\n";
  }
  return status;
}

}  // namespace quant
