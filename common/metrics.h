// The service's Prometheus metrics, defined once: ServiceMetrics owns the
// registry and every metric family of the coordinator and the workers, and
// offers typed methods so callers never touch prometheus-cpp types (except
// registry(), to hand to MetricsEndpoint). MetricsEndpoint serves a registry
// at http://host:port/metrics.
#ifndef COMMON_METRICS_H_
#define COMMON_METRICS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/exposer.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace quant {

// All methods are thread-safe. Label values are free-form strings (job ids,
// task kinds, backends such as "cpu" / "cuda"). A labelled family appears in
// the exposition once it has its first series (prometheus-cpp leaves empty
// families out); the unlabelled gauges are always there.
class ServiceMetrics {
 public:
  ServiceMetrics();
  ServiceMetrics(const ServiceMetrics&) = delete;
  ServiceMetrics& operator=(const ServiceMetrics&) = delete;

  // --- Coordinator ---

  // quant_jobs{state}: number of jobs in `state` (e.g. "queued", "running",
  // "done", "failed").
  void SetJobs(absl::string_view state, double count);
  // quant_tasks_completed_total{kind}.
  void TaskCompleted(absl::string_view kind);
  // quant_tasks_failed_total{kind,fault}: fault="task" when the task itself
  // is at fault (bad input, numerical failure), "infra" otherwise (worker
  // lost, RPC error).
  void TaskFailed(absl::string_view kind, bool task_fault);
  // quant_tasks_retried_total{kind}.
  void TaskRetried(absl::string_view kind);
  // quant_tasks_released_total{kind}: leases that expired and were re-leased.
  void TaskReleased(absl::string_view kind);
  // quant_task_duration_seconds{method,backend}: histogram with buckets from
  // 0.1 s to 10000 s (1-2.5-5 steps), covering 0.1 s .. 2 h.
  void ObserveTaskDuration(absl::string_view method, absl::string_view backend,
                           double seconds);
  // quant_bytes_streamed_total{direction}: direction is "to_worker" or
  // "from_worker".
  void AddBytesStreamed(absl::string_view direction, uint64_t bytes);
  // quant_worker_local_input_bytes_total{source}: input bytes a worker read
  // without fetching them; source is "held" (activations it made itself)
  // or "model_root" (weights from a shared model root).
  void AddLocalInputBytes(absl::string_view source, uint64_t bytes);
  // quant_workers_active{backend}.
  void SetActiveWorkers(absl::string_view backend, double count);
  // quant_queue_depth: tasks ready and waiting for a worker.
  void SetQueueDepth(double count);
  // quant_job_progress_ratio{job_id}: 0..1 (clamped); not "job", which
  // Prometheus sets to the scrape job.
  void SetJobProgress(absl::string_view job_id, double fraction);
  // Removes the quant_job_progress_ratio{job_id=...} series, so finished jobs
  // do not accumulate; a no-op when there is none.
  void RemoveJobProgress(absl::string_view job_id);

  // quant_job_eta_seconds{job_id}: the job's estimated seconds to
  // completion; the series is removed when unknown (nullopt).
  void SetJobEta(absl::string_view job_id, std::optional<double> seconds);
  // quant_job_waiting{job_id,reason}: 1 while none of the job's ready tasks
  // can go to any registered worker, `reason` saying why ("no_worker",
  // "memory"); an empty reason removes the job's series.
  void SetJobWaiting(absl::string_view job_id, absl::string_view reason);

  // quant_block_relative_error{job_id,layer,linear}: a committed block's
  // relative output error ||WX - QX|| / ||WX|| on the calibration data, per
  // quantized linear.
  void SetBlockError(absl::string_view job_id, int layer,
                     absl::string_view linear, double relative_error);
  // quant_block_seconds{job_id,layer}: a committed block task's compute
  // time on its worker.
  void SetBlockSeconds(absl::string_view job_id, int layer, double seconds);
  // Removes the job's quant_block_* series; a no-op when there are none.
  void RemoveJobBlocks(absl::string_view job_id);

  // --- Worker ---

  // quant_worker_tasks_total{kind,outcome}: outcome is "done", "failed" or
  // "released".
  void WorkerTaskFinished(absl::string_view kind, absl::string_view outcome);
  // quant_worker_busy: 1 while a task runs, 0 otherwise.
  void SetWorkerBusy(bool busy);
  // A GPU worker's device as its driver reports it (common/nvml.h):
  // quant_gpu_memory_used_bytes{device,gpu},
  // quant_gpu_memory_total_bytes{device,gpu} and, where the device reports
  // it (not under MIG), quant_gpu_utilization_ratio{device,gpu}: the
  // fraction of the driver's last sample period in which a kernel ran.
  // `device` is the CUDA index the worker was given (--devices), `gpu` the
  // model name.
  void SetGpuReading(absl::string_view device, absl::string_view gpu,
                     double memory_used_bytes, double memory_total_bytes,
                     std::optional<double> utilization);

  // The Prometheus text format (version 0.0.4) of everything in registry(),
  // for tests and debugging.
  std::string TextExposition() const;

  const std::shared_ptr<prometheus::Registry>& registry() const {
    return registry_;
  }

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  // Owned by registry_; families are never removed from it.
  prometheus::Family<prometheus::Gauge>* jobs_;
  prometheus::Family<prometheus::Counter>* tasks_completed_;
  prometheus::Family<prometheus::Counter>* tasks_failed_;
  prometheus::Family<prometheus::Counter>* tasks_retried_;
  prometheus::Family<prometheus::Counter>* tasks_released_;
  prometheus::Family<prometheus::Histogram>* task_duration_;
  prometheus::Family<prometheus::Counter>* bytes_streamed_;
  prometheus::Family<prometheus::Counter>* local_input_bytes_;
  prometheus::Family<prometheus::Gauge>* workers_active_;
  prometheus::Gauge* queue_depth_;
  prometheus::Family<prometheus::Gauge>* job_progress_;
  prometheus::Family<prometheus::Gauge>* job_eta_;
  prometheus::Family<prometheus::Gauge>* job_waiting_;
  prometheus::Family<prometheus::Gauge>* block_error_;
  prometheus::Family<prometheus::Gauge>* block_seconds_;
  prometheus::Family<prometheus::Counter>* worker_tasks_;
  prometheus::Gauge* worker_busy_;
  prometheus::Family<prometheus::Gauge>* gpu_memory_used_;
  prometheus::Family<prometheus::Gauge>* gpu_memory_total_;
  prometheus::Family<prometheus::Gauge>* gpu_utilization_;
  // Serializes the per-job series' Sets against their removal: the gauge a
  // Set writes must not be removed under it.
  absl::Mutex job_progress_mu_;
  // Each job's quant_block_* series (family, labels), for RemoveJobBlocks.
  std::map<std::string,
           std::set<std::pair<prometheus::Family<prometheus::Gauge>*,
                              prometheus::Labels>>>
      block_series_ ABSL_GUARDED_BY(job_progress_mu_);
};

// Serves a registry over HTTP at /metrics (prometheus::Exposer, civetweb).
// Stopping it (the destructor) takes up to ~2 s.
class MetricsEndpoint {
 public:
  // Listens on `address`, "host:port" with a numeric host ("0.0.0.0:9090",
  // "127.0.0.1:0", "[::1]:0"); port 0 picks a free port (see port()).
  // UnavailableError naming the address when it cannot listen there;
  // InvalidArgumentError when `registry` is null.
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(
      const std::string& address,
      std::shared_ptr<prometheus::Registry> registry);

  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;
  ~MetricsEndpoint();

  // The port it listens on (the chosen one when started with port 0).
  int port() const;

 private:
  MetricsEndpoint(std::unique_ptr<prometheus::Exposer> exposer,
                  std::shared_ptr<prometheus::Registry> registry);

  std::shared_ptr<prometheus::Registry> registry_;  // Kept alive while served.
  std::unique_ptr<prometheus::Exposer> exposer_;
};

}  // namespace quant

#endif  // COMMON_METRICS_H_
