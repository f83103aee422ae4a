// GPU memory and utilization as NVIDIA's driver reports them, through NVML,
// for a GPU worker's Prometheus gauges. NVML comes with the driver, not
// with the CUDA toolkit (no header or link library where we build), so it
// is opened at run time: a worker on a machine without it runs on, without
// the gauges. Only the few stable C entry points used here are declared, as
// NVML's API reference gives them.
#ifndef COMMON_NVML_H_
#define COMMON_NVML_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics.h"

namespace quant {

struct GpuReading {
  int64_t memory_used_bytes = 0;
  int64_t memory_total_bytes = 0;
  // The fraction of the driver's last sample period in which a kernel ran;
  // none where the device does not report it (MIG instances).
  std::optional<double> utilization;
};

class Nvml {
 public:
  // NVML's library as the driver installs it.
  static constexpr const char kLibrary[] = "libnvidia-ml.so.1";

  // Loads `library` and initializes NVML. Unavailable naming the library
  // and what went wrong (not found, an entry point missing, nvmlInit's
  // error) otherwise.
  static absl::StatusOr<std::unique_ptr<Nvml>> Open(
      const std::string& library = kLibrary);
  ~Nvml();  // nvmlShutdown and dlclose.
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  // The GPU at `pci_bus_id` ("0000:3b:00.0", as cudaDeviceGetPCIBusId
  // gives it: CUDA's device order and NVML's can differ). NotFound naming
  // the bus id when NVML has no such GPU; Unavailable with NVML's error
  // when it cannot read it.
  absl::StatusOr<GpuReading> Read(const std::string& pci_bus_id) const;

 private:
  struct Api;
  Nvml(void* handle, std::unique_ptr<Api> api);
  void* handle_;
  std::unique_ptr<Api> api_;
};

// A GPU whose readings become gauges: the label values of
// ServiceMetrics::SetGpuReading and where the device is.
struct WatchedGpu {
  std::string device;  // The CUDA index, as --devices names it.
  std::string name;    // The model, e.g. "NVIDIA H200".
  std::string pci_bus_id;
};

// Reads every watched GPU into `metrics` at once and then every `period`
// until destroyed. A failed reading is logged (once per GPU until it reads
// again) and leaves that GPU's gauges as they were.
class GpuGaugeSampler {
 public:
  using Reader = std::function<absl::StatusOr<GpuReading>(const WatchedGpu&)>;
  GpuGaugeSampler(Reader read, std::vector<WatchedGpu> gpus,
                  ServiceMetrics* metrics, absl::Duration period,
                  std::function<void(const std::string&)> log);
  // Reads through NVML (Nvml::Open's error when it cannot be had).
  static absl::StatusOr<std::unique_ptr<GpuGaugeSampler>> WithNvml(
      std::vector<WatchedGpu> gpus, ServiceMetrics* metrics,
      absl::Duration period, std::function<void(const std::string&)> log);
  ~GpuGaugeSampler();  // Stops at once, also mid-period.
  GpuGaugeSampler(const GpuGaugeSampler&) = delete;
  GpuGaugeSampler& operator=(const GpuGaugeSampler&) = delete;

 private:
  void SampleAll();

  const Reader read_;
  const std::vector<WatchedGpu> gpus_;
  ServiceMetrics* const metrics_;
  const std::function<void(const std::string&)> log_;
  std::vector<bool> failing_;  // Per GPU: its last reading failed.
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace quant

#endif  // COMMON_NVML_H_
