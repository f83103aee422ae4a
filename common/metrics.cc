#include "common/metrics.h"

#include <exception>
#include <sstream>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/thread_stack.h"
#include "prometheus/text_serializer.h"

namespace quant {
namespace {

// The family builders throw only on invalid metric or label names (ours are
// fixed and valid) or on a name registered twice in one registry (each
// ServiceMetrics has its own registry), so construction cannot throw.
prometheus::Family<prometheus::Counter>* AddCounter(
    prometheus::Registry& registry, const std::string& name,
    const std::string& help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Gauge>* AddGauge(prometheus::Registry& registry,
                                                const std::string& name,
                                                const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

// 0.1 s .. 10000 s in 1-2.5-5 steps: sub-second tasks up to the 2 h ones.
const prometheus::Histogram::BucketBoundaries& DurationBuckets() {
  static const auto* const kBuckets =
      new prometheus::Histogram::BucketBoundaries{
          0.1, 0.25, 0.5, 1,   2.5,  5,    10,   25,
          50,  100,  250, 500, 1000, 2500, 5000, 10000};
  return *kBuckets;
}

prometheus::Labels Label(const char* name, absl::string_view value) {
  return {{name, std::string(value)}};
}

}  // namespace

ServiceMetrics::ServiceMetrics()
    : registry_(std::make_shared<prometheus::Registry>()) {
  prometheus::Registry& r = *registry_;
  jobs_ = AddGauge(r, "quant_jobs", "Quantization jobs by state.");
  tasks_completed_ =
      AddCounter(r, "quant_tasks_completed_total", "Tasks completed, by kind.");
  tasks_failed_ = AddCounter(
      r, "quant_tasks_failed_total",
      "Task failures, by kind and fault (task: the task itself; infra: "
      "worker or transport).");
  tasks_retried_ =
      AddCounter(r, "quant_tasks_retried_total", "Tasks retried, by kind.");
  tasks_released_ = AddCounter(r, "quant_tasks_released_total",
                               "Task leases that expired and were re-leased.");
  task_duration_ = &prometheus::BuildHistogram()
                        .Name("quant_task_duration_seconds")
                        .Help(
                            "Task run time in seconds, by method and "
                            "backend.")
                        .Register(r);
  bytes_streamed_ =
      AddCounter(r, "quant_bytes_streamed_total",
                 "Tensor bytes streamed between coordinator and workers.");
  local_input_bytes_ =
      AddCounter(r, "quant_worker_local_input_bytes_total",
                 "Input bytes a worker read without fetching them, by "
                 "source.");
  workers_active_ = AddGauge(r, "quant_workers_active",
                             "Workers connected and alive, by backend.");
  queue_depth_ =
      &AddGauge(r, "quant_queue_depth", "Tasks ready and waiting for a worker.")
           ->Add({});
  job_progress_ = AddGauge(r, "quant_job_progress_ratio",
                           "Fraction of a running job's tasks done (0..1).");
  job_eta_ = AddGauge(r, "quant_job_eta_seconds",
                      "Estimated seconds until a running job ends.");
  job_waiting_ = AddGauge(
      r, "quant_job_waiting",
      "1 while none of a job's ready tasks can go to any registered worker, "
      "by reason (no_worker, memory).");
  block_error_ = AddGauge(
      r, "quant_block_relative_error",
      "Relative output error of a committed block's quantized linears on the "
      "calibration data.");
  block_seconds_ = AddGauge(r, "quant_block_seconds",
                            "Compute time of a committed block task.");
  worker_tasks_ = AddCounter(r, "quant_worker_tasks_total",
                             "Tasks finished by this worker, by kind and "
                             "outcome (done, failed, released).");
  worker_busy_ = &AddGauge(r, "quant_worker_busy",
                           "1 while this worker runs a task, else 0.")
                      ->Add({});
  gpu_memory_used_ = AddGauge(r, "quant_gpu_memory_used_bytes",
                              "Device memory in use on a worker's GPU.");
  gpu_memory_total_ = AddGauge(r, "quant_gpu_memory_total_bytes",
                               "Device memory of a worker's GPU.");
  gpu_utilization_ = AddGauge(
      r, "quant_gpu_utilization_ratio",
      "Fraction of the driver's last sample period in which a kernel ran on "
      "a worker's GPU (0..1).");
  // Failures, retries and expiries exist at zero from the start, so that
  // rates and increases over them have data before the first one (the task
  // kinds of coordinator/planner.h).
  for (const char* kind : {"embed", "forward", "block", "head"}) {
    for (const char* fault : {"task", "infra"}) {
      tasks_failed_->Add({{"kind", kind}, {"fault", fault}});
    }
    tasks_retried_->Add(Label("kind", kind));
    tasks_released_->Add(Label("kind", kind));
  }
}

void ServiceMetrics::SetJobs(absl::string_view state, double count) {
  jobs_->Add(Label("state", state)).Set(count);
}

void ServiceMetrics::TaskCompleted(absl::string_view kind) {
  tasks_completed_->Add(Label("kind", kind)).Increment();
}

void ServiceMetrics::TaskFailed(absl::string_view kind, bool task_fault) {
  tasks_failed_
      ->Add({{"kind", std::string(kind)},
             {"fault", task_fault ? "task" : "infra"}})
      .Increment();
}

void ServiceMetrics::TaskRetried(absl::string_view kind) {
  tasks_retried_->Add(Label("kind", kind)).Increment();
}

void ServiceMetrics::TaskReleased(absl::string_view kind) {
  tasks_released_->Add(Label("kind", kind)).Increment();
}

void ServiceMetrics::ObserveTaskDuration(absl::string_view method,
                                         absl::string_view backend,
                                         double seconds) {
  task_duration_
      ->Add(
          {{"method", std::string(method)}, {"backend", std::string(backend)}},
          DurationBuckets())
      .Observe(seconds);
}

void ServiceMetrics::AddBytesStreamed(absl::string_view direction,
                                      uint64_t bytes) {
  bytes_streamed_->Add(Label("direction", direction))
      .Increment(static_cast<double>(bytes));
}

void ServiceMetrics::AddLocalInputBytes(absl::string_view source,
                                        uint64_t bytes) {
  local_input_bytes_->Add(Label("source", source))
      .Increment(static_cast<double>(bytes));
}

void ServiceMetrics::SetActiveWorkers(absl::string_view backend, double count) {
  workers_active_->Add(Label("backend", backend)).Set(count);
}

void ServiceMetrics::SetQueueDepth(double count) { queue_depth_->Set(count); }

void ServiceMetrics::SetJobProgress(absl::string_view job_id, double fraction) {
  // NaN fails both comparisons and is kept as is.
  if (fraction < 0) fraction = 0;
  if (fraction > 1) fraction = 1;
  absl::MutexLock lock(&job_progress_mu_);
  job_progress_->Add(Label("job_id", job_id)).Set(fraction);
}

void ServiceMetrics::RemoveJobProgress(absl::string_view job_id) {
  const prometheus::Labels labels = Label("job_id", job_id);
  absl::MutexLock lock(&job_progress_mu_);
  if (!job_progress_->Has(labels)) return;
  job_progress_->Remove(&job_progress_->Add(labels));
}

void ServiceMetrics::SetJobEta(absl::string_view job_id,
                               std::optional<double> seconds) {
  const prometheus::Labels labels = Label("job_id", job_id);
  absl::MutexLock lock(&job_progress_mu_);
  if (seconds.has_value()) {
    job_eta_->Add(labels).Set(*seconds);
  } else if (job_eta_->Has(labels)) {
    job_eta_->Remove(&job_eta_->Add(labels));
  }
}

void ServiceMetrics::SetJobWaiting(absl::string_view job_id,
                                   absl::string_view reason) {
  absl::MutexLock lock(&job_progress_mu_);
  for (const char* known : {"no_worker", "memory"}) {
    const prometheus::Labels labels = {{"job_id", std::string(job_id)},
                                       {"reason", known}};
    if (known == reason) {
      job_waiting_->Add(labels).Set(1);
    } else if (job_waiting_->Has(labels)) {
      job_waiting_->Remove(&job_waiting_->Add(labels));
    }
  }
}

void ServiceMetrics::SetBlockError(absl::string_view job_id, int layer,
                                   absl::string_view linear,
                                   double relative_error) {
  prometheus::Labels labels = {{"job_id", std::string(job_id)},
                               {"layer", absl::StrCat(layer)},
                               {"linear", std::string(linear)}};
  absl::MutexLock lock(&job_progress_mu_);
  block_error_->Add(labels).Set(relative_error);
  block_series_[std::string(job_id)].insert({block_error_, std::move(labels)});
}

void ServiceMetrics::SetBlockSeconds(absl::string_view job_id, int layer,
                                     double seconds) {
  prometheus::Labels labels = {{"job_id", std::string(job_id)},
                               {"layer", absl::StrCat(layer)}};
  absl::MutexLock lock(&job_progress_mu_);
  block_seconds_->Add(labels).Set(seconds);
  block_series_[std::string(job_id)].insert(
      {block_seconds_, std::move(labels)});
}

void ServiceMetrics::RemoveJobBlocks(absl::string_view job_id) {
  absl::MutexLock lock(&job_progress_mu_);
  auto it = block_series_.find(std::string(job_id));
  if (it == block_series_.end()) return;
  for (const auto& [family, labels] : it->second) {
    if (family->Has(labels)) family->Remove(&family->Add(labels));
  }
  block_series_.erase(it);
}

void ServiceMetrics::WorkerTaskFinished(absl::string_view kind,
                                        absl::string_view outcome) {
  worker_tasks_
      ->Add({{"kind", std::string(kind)}, {"outcome", std::string(outcome)}})
      .Increment();
}

void ServiceMetrics::SetWorkerBusy(bool busy) {
  worker_busy_->Set(busy ? 1 : 0);
}

void ServiceMetrics::SetGpuReading(absl::string_view device,
                                   absl::string_view gpu,
                                   double memory_used_bytes,
                                   double memory_total_bytes,
                                   std::optional<double> utilization) {
  const prometheus::Labels labels = {{"device", std::string(device)},
                                     {"gpu", std::string(gpu)}};
  gpu_memory_used_->Add(labels).Set(memory_used_bytes);
  gpu_memory_total_->Add(labels).Set(memory_total_bytes);
  if (utilization.has_value()) gpu_utilization_->Add(labels).Set(*utilization);
}

std::string ServiceMetrics::TextExposition() const {
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(
    const std::string& address,
    std::shared_ptr<prometheus::Registry> registry) {
  if (registry == nullptr) {
    return absl::InvalidArgumentError("MetricsEndpoint: null registry");
  }
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    exposer = std::make_unique<prometheus::Exposer>(address);
    exposer->RegisterCollectable(registry);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on '", address, "': ", e.what(),
                     " (each server thread also carries ",
                     StaticTlsBytes() / 1024, " KiB of static TLS)"));
  } catch (...) {
    return absl::UnavailableError(
        absl::StrCat("cannot serve metrics on '", address, "'"));
  }
  return std::unique_ptr<MetricsEndpoint>(
      new MetricsEndpoint(std::move(exposer), std::move(registry)));
}

MetricsEndpoint::MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer,
                                 std::shared_ptr<prometheus::Registry> registry)
    : registry_(std::move(registry)), exposer_(std::move(exposer)) {}

MetricsEndpoint::~MetricsEndpoint() = default;

int MetricsEndpoint::port() const {
  const std::vector<int> ports = exposer_->GetListeningPorts();
  return ports.empty() ? 0 : ports.front();
}

}  // namespace quant
