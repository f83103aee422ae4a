// quant-coordinator: parses flags into CoordinatorOptions, starts the
// coordinator, and shuts it down gracefully on SIGTERM / SIGINT (a second
// signal exits at once).
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/notification.h"
#include "common/process.h"
#include "coordinator/coordinator.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051",
          "gRPC address (clients and workers), host:port");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:9100",
          "Prometheus /metrics address, host:port (empty: off)");
ABSL_FLAG(std::string, state_dir, "",
          "Job store and per-job files (a persistent volume)");
ABSL_FLAG(std::vector<std::string>, model_roots, {},
          "Directories jobs may read models and texts from");
ABSL_FLAG(std::vector<std::string>, output_roots, {},
          "Directories jobs may write outputs to");
ABSL_FLAG(int64_t, lease_ms, 60000, "Lease of a task without heartbeats");
ABSL_FLAG(int64_t, heartbeat_ms, 5000, "Heartbeat interval for workers");
ABSL_FLAG(int64_t, worker_timeout_ms, 120000,
          "A worker not heard from for this long is gone: activations it "
          "holds uncommitted are computed again (more than 2 heartbeats)");
ABSL_FLAG(int, max_task_faults, 3, "Failures of a task before its job fails");
ABSL_FLAG(int, max_infra_faults, 20,
          "Workers a task may lose before its job fails");
ABSL_FLAG(int64_t, max_chunk_bytes, 4 << 20, "Largest streamed chunk");
ABSL_FLAG(int64_t, affinity_ms, 5000,
          "How long a task reading activations waits for the idle worker "
          "that made them (and holds them); 0: no affinity");
ABSL_FLAG(bool, defer_activations, true,
          "With affinity, workers commit the activations they make by their "
          "SHA-256 and upload them after the commit, off the critical path");
ABSL_FLAG(int, max_watchers, 4096,
          "WatchJob streams at once; more are refused (RESOURCE_EXHAUSTED)");
ABSL_FLAG(int64_t, min_free_disk_mb, 1024,
          "Below this much free space in --state_dir no task starts; jobs "
          "wait, saying so, until space returns");
ABSL_FLAG(double, keep_failed_jobs_hours, 168,
          "Hours a failed or cancelled job keeps its committed files for a "
          "resume; then they are removed");
ABSL_FLAG(bool, insecure, false,
          "Serve plaintext without authentication (one machine only; loudly "
          "reported when --listen is not a loopback address)");
ABSL_FLAG(std::string, tls_cert, "", "PEM file: the coordinator's certificate");
ABSL_FLAG(std::string, tls_key, "", "PEM file: its private key");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM file: the CA(s) every client and worker certificate chains to");
ABSL_FLAG(std::string, principals, "",
          "JSON file: principals, their roles, token SHA-256s and certificate "
          "names (README, \"Authentication\")");
ABSL_FLAG(int, tls_reload_s, 10,
          "Seconds between checks of the certificate files for changes");

namespace {
void Log(const std::string& line) { quant::LogLine("quant-coordinator", line); }
}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "quant-coordinator --state_dir=DIR --model_roots=DIR[,DIR] "
      "--output_roots=DIR[,DIR] (--tls_cert=F --tls_key=F --tls_client_ca=F "
      "--principals=F | --insecure) [--listen=host:port]");
  absl::ParseCommandLine(argc, argv);
  quant::BlockStopSignals();

  quant::CoordinatorOptions options;
  options.listen_address = absl::GetFlag(FLAGS_listen);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  quant::JobManagerOptions& jobs = options.jobs;
  jobs.state_dir = absl::GetFlag(FLAGS_state_dir);
  jobs.model_roots = absl::GetFlag(FLAGS_model_roots);
  jobs.output_roots = absl::GetFlag(FLAGS_output_roots);
  jobs.scheduler.lease_ms = absl::GetFlag(FLAGS_lease_ms);
  jobs.scheduler.heartbeat_interval_ms = absl::GetFlag(FLAGS_heartbeat_ms);
  jobs.scheduler.worker_timeout_ms = absl::GetFlag(FLAGS_worker_timeout_ms);
  if (jobs.scheduler.worker_timeout_ms <=
      2 * jobs.scheduler.heartbeat_interval_ms) {
    std::cerr << "quant-coordinator: --worker_timeout_ms must exceed two "
                 "heartbeats (--heartbeat_ms)\n";
    return 2;
  }
  jobs.scheduler.max_task_faults = absl::GetFlag(FLAGS_max_task_faults);
  jobs.scheduler.max_infra_faults = absl::GetFlag(FLAGS_max_infra_faults);
  jobs.scheduler.affinity_ms = absl::GetFlag(FLAGS_affinity_ms);
  jobs.scheduler.defer_activations = absl::GetFlag(FLAGS_defer_activations);
  jobs.max_chunk_bytes = absl::GetFlag(FLAGS_max_chunk_bytes);
  jobs.min_free_disk_bytes = absl::GetFlag(FLAGS_min_free_disk_mb) << 20;
  jobs.max_watchers = absl::GetFlag(FLAGS_max_watchers);
  jobs.keep_failed_jobs_ms = static_cast<int64_t>(
      absl::GetFlag(FLAGS_keep_failed_jobs_hours) * 3'600'000);
  jobs.log = Log;
  quant::ServerAuthOptions& auth = options.auth;
  auth.insecure = absl::GetFlag(FLAGS_insecure);
  auth.cert_file = absl::GetFlag(FLAGS_tls_cert);
  auth.key_file = absl::GetFlag(FLAGS_tls_key);
  auth.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  auth.principals_file = absl::GetFlag(FLAGS_principals);
  auth.reload_interval_s = absl::GetFlag(FLAGS_tls_reload_s);
  if (jobs.state_dir.empty() || jobs.model_roots.empty() ||
      jobs.output_roots.empty()) {
    std::cerr << "quant-coordinator: --state_dir, --model_roots and "
                 "--output_roots are required\n";
    return 2;
  }
  if (!auth.insecure && auth.cert_file.empty() && auth.key_file.empty() &&
      auth.client_ca_file.empty() && auth.principals_file.empty()) {
    std::cerr << "quant-coordinator: no credentials: give --tls_cert, "
                 "--tls_key, --tls_client_ca and --principals, or --insecure "
                 "to serve without TLS or authentication\n";
    return 2;
  }

  absl::StatusOr<std::unique_ptr<quant::Coordinator>> coordinator =
      quant::Coordinator::Create(options);
  if (!coordinator.ok()) {
    Log(absl::StrCat("cannot start: ", coordinator.status().ToString()));
    return 1;
  }
  Log(absl::StrCat("serving on port ", (*coordinator)->port(),
                   auth.insecure ? " (INSECURE: no TLS, no authentication)"
                                 : " (mutual TLS and bearer tokens)",
                   ", metrics on ", (*coordinator)->metrics_port(),
                   "; models from ", absl::StrJoin(jobs.model_roots, ","),
                   ", outputs to ", absl::StrJoin(jobs.output_roots, ",")));
  absl::Notification stop;
  quant::OnStopSignal([&stop](int signal) {
    Log(absl::StrCat("signal ", signal, ": shutting down"));
    stop.Notify();
  });
  stop.WaitForNotification();
  (*coordinator)->Shutdown();
  Log("stopped");
  std::cerr.flush();
  std::_Exit(0);
}
