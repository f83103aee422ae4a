// quant-worker: a CPU worker, or with --backend cuda one worker per GPU of
// --devices (one task slot each; with --devices_per_task N, one per N GPUs,
// whose block tasks compute their calibration shards across them). Parses flags
// into WorkerOptions and runs the WorkerSessions until SIGTERM / SIGINT drains
// them (a second signal exits at once with code 130).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/auth_flags.h"
#include "common/metrics.h"
#include "common/process.h"
#include "kernels/cpu/compute_kernel.h"
#include "quant/block_backend.h"
#include "worker/worker_session.h"
#ifdef QS_WITH_CUDA
#include "common/nvml.h"
#include "kernels/cuda/block_backend_cuda.h"
#include "kernels/cuda/cuda_context.h"
#endif

ABSL_FLAG(std::string, coordinator, "localhost:50051",
          "Coordinator worker gateway, host:port");
ABSL_FLAG(std::string, name, "", "Worker name for humans (default: hostname)");
ABSL_FLAG(int, threads, 0, "Compute threads (0: all cores)");
ABSL_FLAG(std::string, scratch_dir, "",
          "Scratch directory (default: /tmp/quant-worker-<pid>)");
ABSL_FLAG(std::string, metrics_address, "",
          "Serve Prometheus metrics at host:port/metrics (empty: off), e.g. "
          "0.0.0.0:9101");
ABSL_FLAG(int64_t, lease_wait_ms, 5000, "Longest LeaseTask long poll");
ABSL_FLAG(std::vector<std::string>, shared_model_roots, {},
          "Directories this worker sees at the coordinator's paths (a shared "
          "read-only volume): weights of models there are read directly, "
          "verified against the SHA-256 the coordinator recorded");
ABSL_FLAG(int64_t, memory_bytes, 0,
          "Memory one task may use, as registered (0: MemAvailable, or a GPU "
          "slot's device memory); tasks planned to need more go elsewhere");
ABSL_FLAG(int, held_activations, 2,
          "Activations this worker made that it keeps for the next block "
          "(0: none)");
ABSL_FLAG(int, upload_streams, 4,
          "Streams side by side for an upload of 256 MiB or more (1: one)");
ABSL_FLAG(std::string, backend, "cpu",
          "Where block and forward tasks compute: cpu or cuda");
ABSL_FLAG(std::string, devices, "0",
          "With --backend cuda: the GPUs, one task slot each (e.g. 0,1,2,3)");
ABSL_FLAG(int, devices_per_task, 1,
          "With --backend cuda: GPUs per task slot (dividing the --devices "
          "listed): a slot's block task computes its recipe's calibration "
          "shards across them (jobs submitted with --shards_in_task), its "
          "forwards split their passes over them");

namespace {

std::string HostName() {
  char name[256] = {};
  if (::gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') {
    return "worker";
  }
  return name;
}

void Log(const std::string& line) { quant::LogLine("quant-worker", line); }

#ifdef QS_WITH_CUDA
// The quant_gpu_* gauges of `devices`, read through NVML every 5 s; none
// (and a line saying why) where NVML is missing.
std::unique_ptr<quant::GpuGaugeSampler> StartGpuGauges(
    const std::vector<int>& devices, quant::ServiceMetrics* metrics) {
  absl::StatusOr<std::vector<quant::cuda::DeviceInfo>> listed =
      quant::cuda::ListDevices();
  if (!listed.ok()) return nullptr;  // The sessions said so already.
  std::vector<quant::WatchedGpu> gpus;
  for (int device : devices) {
    const quant::cuda::DeviceInfo& info = (*listed)[device];
    gpus.push_back({absl::StrCat(device), info.name, info.pci_bus_id});
  }
  absl::StatusOr<std::unique_ptr<quant::GpuGaugeSampler>> sampler =
      quant::GpuGaugeSampler::WithNvml(std::move(gpus), metrics,
                                       absl::Seconds(5), Log);
  if (!sampler.ok()) {
    Log(absl::StrCat("no GPU gauges: ", sampler.status().message()));
    return nullptr;
  }
  return *std::move(sampler);
}
#endif

}  // namespace

int main(int argc, char** argv) {
#ifdef QS_WITH_CUDA
  quant::cuda::RegisterCudaBlockBackend();
#endif
  absl::SetProgramUsageMessage(
      "quant-worker --coordinator=host:port (--tls_ca=F --tls_cert=F "
      "--tls_key=F --token_file=F | --insecure) [--threads=N] "
      "[--scratch_dir=DIR] [--shared_model_roots=DIR,...] "
      "[--metrics_address=host:port] "
      "[--backend=cpu|cuda --devices=0,1 [--devices_per_task=2]]");
  absl::ParseCommandLine(argc, argv);

  // Every thread created from here on inherits the mask, so SIGTERM /
  // SIGINT reach the sigwait thread below (or, in a thread started before
  // main(), the handler that forwards them there).
  quant::BlockStopSignals();

  quant::WorkerOptions options;
  options.coordinator = absl::GetFlag(FLAGS_coordinator);
  options.auth = quant::ClientAuthFromFlags();
  options.name = absl::GetFlag(FLAGS_name);
  if (options.name.empty()) options.name = HostName();
  options.threads = absl::GetFlag(FLAGS_threads);
  // OpenBLAS's pool belongs to the process (one worker here); its size is
  // part of the kernel class the worker reports.
  quant::SetCpuThreads(options.threads);
  options.scratch_dir = absl::GetFlag(FLAGS_scratch_dir);
  const bool own_scratch = options.scratch_dir.empty();
  if (own_scratch) {
    options.scratch_dir =
        absl::StrCat("/tmp/quant-worker-", static_cast<long>(::getpid()));
  }
  options.lease_wait_ms = absl::GetFlag(FLAGS_lease_wait_ms);
  options.shared_model_roots = absl::GetFlag(FLAGS_shared_model_roots);
  options.held_activations = absl::GetFlag(FLAGS_held_activations);
  options.upload_streams = absl::GetFlag(FLAGS_upload_streams);
  options.memory_bytes = absl::GetFlag(FLAGS_memory_bytes);
  options.log = Log;

  auto metrics = std::make_unique<quant::ServiceMetrics>();
  options.metrics = metrics.get();
  std::unique_ptr<quant::MetricsEndpoint> endpoint;
  const std::string metrics_address = absl::GetFlag(FLAGS_metrics_address);
  if (!metrics_address.empty()) {
    absl::StatusOr<std::unique_ptr<quant::MetricsEndpoint>> started =
        quant::MetricsEndpoint::Start(metrics_address, metrics->registry());
    if (!started.ok()) {
      Log(std::string(started.status().message()));
      return 1;
    }
    endpoint = *std::move(started);
    Log(absl::StrCat("metrics on port ", endpoint->port()));
  }

  // One session per slot: the CPU worker has one; a GPU worker one per
  // device (or group of --devices_per_task devices), each registered with
  // its own backend.
  const std::string backend = absl::GetFlag(FLAGS_backend);
  std::vector<int> devices = {0};
  std::vector<std::vector<int>> slots_devices = {{0}};
  if (backend != "cpu") {
    absl::StatusOr<std::vector<int>> listed =
        quant::ParseDeviceList(absl::GetFlag(FLAGS_devices));
    absl::StatusOr<std::vector<std::vector<int>>> grouped =
        listed.ok() ? quant::GroupDevices(*listed,
                                          absl::GetFlag(FLAGS_devices_per_task))
                    : listed.status();
    if (!grouped.ok()) {
      Log(std::string(grouped.status().message()));
      return 2;
    }
    devices = *listed;
    slots_devices = *grouped;
  }
  std::vector<std::unique_ptr<quant::WorkerSession>> sessions;
  for (const std::vector<int>& group : slots_devices) {
    quant::WorkerOptions slot = options;
    if (backend != "cpu") {
      const std::string label = absl::StrJoin(group, "+");
      absl::StatusOr<std::unique_ptr<quant::BlockBackend>> made =
          quant::MakeBlockBackendGroup(backend, group);
      if (!made.ok()) {
        Log(absl::StrCat("GPU ", label, ": ", made.status().message()));
        return 2;
      }
      slot.backend = *std::move(made);
      slot.name = absl::StrCat(options.name, "/gpu", label);
      slot.scratch_dir = absl::StrCat(options.scratch_dir, "/gpu", label);
    }
    absl::StatusOr<std::unique_ptr<quant::WorkerSession>> session =
        quant::WorkerSession::Create(slot);
    if (!session.ok()) {
      Log(std::string(session.status().message()));
      return 2;
    }
    sessions.push_back(*std::move(session));
  }

#ifdef QS_WITH_CUDA
  std::unique_ptr<quant::GpuGaugeSampler> gpu_gauges;
  if (backend != "cpu") gpu_gauges = StartGpuGauges(devices, metrics.get());
#endif

  quant::OnStopSignal([&sessions](int signal) {
    Log(absl::StrCat("signal ", signal,
                     ": draining (the task in hand finishes first)"));
    for (auto& session : sessions) session->Drain();
  });

  std::vector<absl::Status> statuses(sessions.size());
  std::vector<std::thread> slots;
  for (size_t i = 0; i < sessions.size(); ++i) {
    slots.emplace_back([&, i] { statuses[i] = sessions[i]->Run(); });
  }
  for (std::thread& slot : slots) slot.join();
  absl::Status status;
  for (size_t i = 0; i < sessions.size(); ++i) {
    if (!statuses[i].ok()) {
      Log(absl::StrCat("stopped: ", statuses[i].ToString()));
      status = statuses[i];
    } else {
      Log(absl::StrCat("done after ", sessions[i]->tasks_done(), " tasks"));
    }
  }
  if (own_scratch) {
    std::error_code error;
    std::filesystem::remove_all(options.scratch_dir, error);
  }
  // Skip static destructors and the detached sigwait thread: exit at once.
  std::cerr.flush();
  std::_Exit(status.ok() ? 0 : 1);
}
