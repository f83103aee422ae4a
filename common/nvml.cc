#include "common/nvml.h"

#include <dlfcn.h>

#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace quant {
namespace {

// NVML's C ABI, as its API reference documents it: return codes are an
// enum (0 success, 3 not supported, 6 not found), devices opaque handles.
using NvmlReturn = int;
constexpr NvmlReturn kNvmlSuccess = 0;
constexpr NvmlReturn kNvmlNotSupported = 3;
constexpr NvmlReturn kNvmlNotFound = 6;
struct NvmlDeviceOpaque;
using NvmlDevice = NvmlDeviceOpaque*;
struct NvmlMemory {  // nvmlMemory_t
  unsigned long long total, free, used;
};
struct NvmlUtilization {  // nvmlUtilization_t, percent
  unsigned int gpu, memory;
};

}  // namespace

struct Nvml::Api {
  NvmlReturn (*init)();
  NvmlReturn (*shutdown)();
  const char* (*error_string)(NvmlReturn);
  NvmlReturn (*handle_by_bus_id)(const char*, NvmlDevice*);
  NvmlReturn (*memory_info)(NvmlDevice, NvmlMemory*);
  NvmlReturn (*utilization_rates)(NvmlDevice, NvmlUtilization*);

  std::string Error(NvmlReturn code) const {
    const char* text = error_string(code);
    return absl::StrCat(text != nullptr ? text : "unknown error", " (NVML ",
                        code, ")");
  }
};

absl::StatusOr<std::unique_ptr<Nvml>> Nvml::Open(const std::string& library) {
  void* handle = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    return absl::UnavailableError(absl::StrCat(
        "NVML (", library, ") cannot be loaded: ", why ? why : "not found"));
  }
  auto api = std::make_unique<Api>();
  std::string missing;
  auto bind = [&](auto& entry, const char* symbol) {
    entry = reinterpret_cast<std::remove_reference_t<decltype(entry)>>(
        dlsym(handle, symbol));
    if (entry == nullptr && missing.empty()) missing = symbol;
  };
  bind(api->init, "nvmlInit_v2");
  bind(api->shutdown, "nvmlShutdown");
  bind(api->error_string, "nvmlErrorString");
  bind(api->handle_by_bus_id, "nvmlDeviceGetHandleByPciBusId_v2");
  bind(api->memory_info, "nvmlDeviceGetMemoryInfo");
  bind(api->utilization_rates, "nvmlDeviceGetUtilizationRates");
  if (!missing.empty()) {
    dlclose(handle);
    return absl::UnavailableError(
        absl::StrCat("NVML (", library, ") has no ", missing));
  }
  if (const NvmlReturn code = api->init(); code != kNvmlSuccess) {
    const std::string error = api->Error(code);
    dlclose(handle);
    return absl::UnavailableError(
        absl::StrCat("NVML (", library, ") did not start: ", error));
  }
  return std::unique_ptr<Nvml>(new Nvml(handle, std::move(api)));
}

Nvml::Nvml(void* handle, std::unique_ptr<Api> api)
    : handle_(handle), api_(std::move(api)) {}

Nvml::~Nvml() {
  api_->shutdown();
  dlclose(handle_);
}

absl::StatusOr<GpuReading> Nvml::Read(const std::string& pci_bus_id) const {
  NvmlDevice device = nullptr;
  if (const NvmlReturn code =
          api_->handle_by_bus_id(pci_bus_id.c_str(), &device);
      code != kNvmlSuccess) {
    const std::string message =
        absl::StrCat("NVML finds no GPU at PCI bus id ", pci_bus_id, ": ",
                     api_->Error(code));
    return code == kNvmlNotFound ? absl::NotFoundError(message)
                                 : absl::UnavailableError(message);
  }
  NvmlMemory memory{};
  if (const NvmlReturn code = api_->memory_info(device, &memory);
      code != kNvmlSuccess) {
    return absl::UnavailableError(
        absl::StrCat("NVML cannot read the memory of GPU ", pci_bus_id, ": ",
                     api_->Error(code)));
  }
  GpuReading reading;
  reading.memory_used_bytes = static_cast<int64_t>(memory.used);
  reading.memory_total_bytes = static_cast<int64_t>(memory.total);
  NvmlUtilization utilization{};
  const NvmlReturn code = api_->utilization_rates(device, &utilization);
  if (code == kNvmlSuccess) {
    reading.utilization = utilization.gpu / 100.0;
  } else if (code != kNvmlNotSupported) {
    return absl::UnavailableError(
        absl::StrCat("NVML cannot read the utilization of GPU ", pci_bus_id,
                     ": ", api_->Error(code)));
  }
  return reading;
}

GpuGaugeSampler::GpuGaugeSampler(Reader read, std::vector<WatchedGpu> gpus,
                                 ServiceMetrics* metrics, absl::Duration period,
                                 std::function<void(const std::string&)> log)
    : read_(std::move(read)),
      gpus_(std::move(gpus)),
      metrics_(metrics),
      log_(std::move(log)),
      failing_(gpus_.size(), false) {
  SampleAll();
  thread_ = std::thread([this, period] {
    while (!stop_.WaitForNotificationWithTimeout(period)) SampleAll();
  });
}

absl::StatusOr<std::unique_ptr<GpuGaugeSampler>> GpuGaugeSampler::WithNvml(
    std::vector<WatchedGpu> gpus, ServiceMetrics* metrics,
    absl::Duration period, std::function<void(const std::string&)> log) {
  absl::StatusOr<std::unique_ptr<Nvml>> opened = Nvml::Open();
  if (!opened.ok()) return opened.status();
  std::shared_ptr<const Nvml> nvml = *std::move(opened);
  return std::make_unique<GpuGaugeSampler>(
      [nvml](const WatchedGpu& gpu) { return nvml->Read(gpu.pci_bus_id); },
      std::move(gpus), metrics, period, std::move(log));
}

GpuGaugeSampler::~GpuGaugeSampler() {
  stop_.Notify();
  thread_.join();
}

void GpuGaugeSampler::SampleAll() {
  for (size_t i = 0; i < gpus_.size(); ++i) {
    const WatchedGpu& gpu = gpus_[i];
    absl::StatusOr<GpuReading> reading = read_(gpu);
    if (!reading.ok()) {
      if (!failing_[i]) {
        log_(absl::StrCat("GPU ", gpu.device,
                          " gauges not updated: ", reading.status().message()));
      }
      failing_[i] = true;
      continue;
    }
    failing_[i] = false;
    metrics_->SetGpuReading(
        gpu.device, gpu.name, static_cast<double>(reading->memory_used_bytes),
        static_cast<double>(reading->memory_total_bytes), reading->utilization);
  }
}

}  // namespace quant
