#include "common/nvml.h"

#include <atomic>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quant {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(NvmlTest, MissingLibraryIsNamed) {
  absl::StatusOr<std::unique_ptr<Nvml>> nvml =
      Nvml::Open("libnvidia-ml-not-here.so.1");
  ASSERT_FALSE(nvml.ok());
  EXPECT_EQ(nvml.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(nvml.status().message(), HasSubstr("libnvidia-ml-not-here.so.1"));
}

TEST(NvmlTest, ALibraryWithoutNvmlIsNamedWithWhatItLacks) {
  absl::StatusOr<std::unique_ptr<Nvml>> nvml = Nvml::Open("libm.so.6");
  ASSERT_FALSE(nvml.ok());
  EXPECT_EQ(nvml.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(nvml.status().message(),
              HasSubstr("libm.so.6) has no nvmlInit_v2"));
}

// Where the driver is installed (the GPU machine): an unknown bus id is
// NotFound and names it. The readings themselves are checked against CUDA's
// own allocations in kernels/cuda/cuda_context_test.cc.
TEST(NvmlTest, UnknownBusIdIsNotFound) {
  absl::StatusOr<std::unique_ptr<Nvml>> nvml = Nvml::Open();
  if (!nvml.ok()) {
    EXPECT_THAT(nvml.status().message(), HasSubstr(Nvml::kLibrary));
    GTEST_SKIP() << nvml.status().message();
  }
  absl::StatusOr<GpuReading> reading = (*nvml)->Read("0000:ff:1f.7");
  ASSERT_FALSE(reading.ok());
  EXPECT_THAT(reading.status().message(), HasSubstr("0000:ff:1f.7"));
}

TEST(GpuGaugeSamplerTest, ReadsAtOnceThenEveryPeriodAndLogsFailuresOnce) {
  ServiceMetrics metrics;
  std::atomic<int> reads{0};
  absl::Mutex mu;
  std::vector<std::string> logged;
  // GPU 0 reads 1 MiB more each time; GPU 1 fails on its first three reads,
  // then reads without a utilization (as MIG instances do).
  std::atomic<int> gpu1_reads{0};
  auto read = [&](const WatchedGpu& gpu) -> absl::StatusOr<GpuReading> {
    GpuReading reading;
    reading.memory_total_bytes = int64_t{80} << 30;
    if (gpu.device == "1") {
      if (++gpu1_reads <= 3) return absl::UnavailableError("GPU is lost");
      reading.memory_used_bytes = 7;
      return reading;
    }
    reading.memory_used_bytes = int64_t{++reads} << 20;
    reading.utilization = 0.75;
    return reading;
  };
  {
    GpuGaugeSampler sampler(read,
                            {{"0", "NVIDIA H100", "0000:3b:00.0"},
                             {"1", "NVIDIA H100", "0000:5e:00.0"}},
                            &metrics, absl::Milliseconds(20),
                            [&](const std::string& line) {
                              absl::MutexLock lock(&mu);
                              logged.push_back(line);
                            });
    // The first reading is there when the constructor returns.
    EXPECT_THAT(metrics.TextExposition(),
                HasSubstr("quant_gpu_memory_used_bytes{device=\"0\",gpu="
                          "\"NVIDIA H100\"} 1048576\n"));
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (gpu1_reads < 6 && absl::Now() < deadline) {
      absl::SleepFor(absl::Milliseconds(5));
    }
  }
  const int reads_at_stop = reads;
  EXPECT_GE(reads_at_stop, 6);
  absl::SleepFor(absl::Milliseconds(60));
  EXPECT_EQ(reads, reads_at_stop) << "the sampler ran on after destruction";
  const std::string text = metrics.TextExposition();
  EXPECT_THAT(text, HasSubstr("quant_gpu_utilization_ratio{device=\"0\",gpu="
                              "\"NVIDIA H100\"} 0.75\n"));
  EXPECT_THAT(text, HasSubstr("quant_gpu_memory_used_bytes{device=\"1\",gpu="
                              "\"NVIDIA H100\"} 7\n"));
  EXPECT_THAT(text, Not(HasSubstr("quant_gpu_utilization_ratio{device=\"1\"")));
  absl::MutexLock lock(&mu);
  ASSERT_EQ(logged.size(), 1u) << "three failures in a row, logged once";
  EXPECT_THAT(logged[0], HasSubstr("GPU 1"));
  EXPECT_THAT(logged[0], HasSubstr("GPU is lost"));
}

}  // namespace
}  // namespace quant
