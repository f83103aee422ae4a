#include "kernels/cuda/cuda_context.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "common/nvml.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cuda/hessian_cuda.h"

namespace quant::cuda {
namespace {

using ::testing::HasSubstr;

TEST(CudaContextTest, NoDeviceIsUnavailableWithTheDriversAnswer) {
  absl::StatusOr<std::vector<DeviceInfo>> devices = ListDevices();
  if (devices.ok()) {
    ASSERT_FALSE(devices->empty());
    EXPECT_FALSE((*devices)[0].name.empty());
    EXPECT_GT((*devices)[0].total_bytes, 0);
    std::printf("%s\n", DescribeDevice((*devices)[0]).c_str());
    return;
  }
  EXPECT_EQ(devices.status().code(), absl::StatusCode::kUnavailable);
  absl::StatusOr<std::unique_ptr<CudaContext>> context = CudaContext::Create(0);
  EXPECT_EQ(context.status().code(), absl::StatusCode::kUnavailable);
}

TEST(CudaContextTest, OutOfMemoryNamesWhatWasNeededAndWhatWasFree) {
  absl::StatusOr<std::unique_ptr<CudaContext>> context = CudaContext::Create(0);
  if (!context.ok()) GTEST_SKIP() << "no CUDA device: " << context.status();
  absl::StatusOr<DeviceBuffer> huge =
      DeviceBuffer::Allocate(**context, int64_t{1} << 50, "a test buffer");
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(huge.status().message(), HasSubstr("a test buffer needs"));
  EXPECT_THAT(huge.status().message(), HasSubstr("free of"));
  // The device is still usable afterwards.
  absl::StatusOr<DeviceBuffer> small =
      DeviceBuffer::Allocate(**context, 1 << 20, "a small buffer");
  ASSERT_TRUE(small.ok()) << small.status();
  std::vector<float> in(1 << 18, 1.5f), out(1 << 18);
  ASSERT_TRUE(
      CopyToDevice(**context, small->as<void>(), in.data(), 1 << 20, "data")
          .ok());
  ASSERT_TRUE(
      CopyToHost(**context, out.data(), small->as<void>(), 1 << 20, "data")
          .ok());
  EXPECT_EQ(out, in);
}

// Large copies go through the pinned staging buffers in chunks: an odd
// size (several chunks and a short last one) at an odd offset, both ways,
// byte for byte; then a small one direct.
TEST(CudaContextTest, StagedCopiesAreExact) {
  absl::StatusOr<std::unique_ptr<CudaContext>> context = CudaContext::Create(0);
  if (!context.ok()) GTEST_SKIP() << "no CUDA device: " << context.status();
  const int64_t bytes = (int64_t{150} << 20) + 13;
  std::vector<uint8_t> in(bytes + 3), out(bytes + 3, 0);
  std::mt19937 rng(1);
  for (uint8_t& b : in) b = static_cast<uint8_t>(rng());
  absl::StatusOr<DeviceBuffer> device =
      DeviceBuffer::Allocate(**context, bytes + 5, "a test buffer");
  ASSERT_TRUE(device.ok()) << device.status();
  uint8_t* at = device->as<uint8_t>() + 5;
  ASSERT_TRUE(CopyToDevice(**context, at, in.data() + 3, bytes - 5, "up").ok());
  ASSERT_TRUE(
      CopyToHost(**context, out.data() + 3, at, bytes - 5, "down").ok());
  EXPECT_TRUE(
      std::equal(in.begin() + 3, in.begin() + bytes - 2, out.begin() + 3));
  EXPECT_EQ(out[0], 0);
  EXPECT_EQ(out[bytes - 2], 0);  // Nothing past the copy.
  std::vector<uint8_t> few(100, 7), back(100, 0);
  ASSERT_TRUE(CopyToDevice(**context, at, few.data(), 100, "few").ok());
  ASSERT_TRUE(CopyToHost(**context, back.data(), at, 100, "few").ok());
  EXPECT_EQ(back, few);
}

// NVML (common/nvml.h, the GPU worker's gauges) finds this device by the
// PCI bus id CUDA gives and sees what CUDA does on it: a 2 GiB allocation in
// its memory in use, a stream of products in its utilization.
TEST(CudaContextTest, NvmlSeesThisDevicesMemoryAndWork) {
  absl::StatusOr<std::unique_ptr<CudaContext>> context = CudaContext::Create(0);
  if (!context.ok()) GTEST_SKIP() << "no CUDA device: " << context.status();
  // The driver installs NVML beside libcuda: where CUDA runs, it opens.
  absl::StatusOr<std::unique_ptr<Nvml>> nvml = Nvml::Open();
  ASSERT_TRUE(nvml.ok()) << nvml.status();
  const DeviceInfo& info = (*context)->info();
  ASSERT_FALSE(info.pci_bus_id.empty());
  absl::StatusOr<GpuReading> before = (*nvml)->Read(info.pci_bus_id);
  ASSERT_TRUE(before.ok()) << before.status();
  std::printf("%s at %s: NVML %lld of %lld bytes in use\n", info.name.c_str(),
              info.pci_bus_id.c_str(),
              static_cast<long long>(before->memory_used_bytes),
              static_cast<long long>(before->memory_total_bytes));
  EXPECT_NEAR(static_cast<double>(before->memory_total_bytes),
              static_cast<double>(info.total_bytes), 0.05 * info.total_bytes);

  const int64_t columns = 8192, rows = 16384;  // 512 MiB of inputs.
  absl::StatusOr<DeviceBuffer> big = DeviceBuffer::Allocate(
      **context, int64_t{2} << 30, "2 GiB NVML should see");
  ASSERT_TRUE(big.ok()) << big.status();
  const std::vector<float> inputs(rows * columns, 0.5f);
  ASSERT_TRUE(CopyToDevice(**context, big->as<void>(), inputs.data(),
                           rows * columns * 4, "inputs")
                  .ok());
  absl::StatusOr<GpuReading> allocated = (*nvml)->Read(info.pci_bus_id);
  ASSERT_TRUE(allocated.ok()) << allocated.status();
  EXPECT_GE(allocated->memory_used_bytes - before->memory_used_bytes,
            (int64_t{2} << 30) - (int64_t{64} << 20));

  // Products of 2.2 TFLOP each for 2.5 s on another thread; NVML read after
  // 1.5 s, its sample period (1/6 to 1 s) inside the busy time.
  absl::StatusOr<DeviceHessian> hessian =
      DeviceHessian::Create(**context, columns);
  ASSERT_TRUE(hessian.ok()) << hessian.status();
  std::atomic<bool> failed{false};
  std::thread work([&] {
    if (!(*context)->Activate().ok()) failed = true;
    const auto end =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(2500);
    while (!failed && std::chrono::steady_clock::now() < end) {
      if (!hessian->Add(big->as<float>(), rows).ok() ||
          !(*context)->Synchronize("products").ok()) {
        failed = true;
      }
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  absl::StatusOr<GpuReading> busy = (*nvml)->Read(info.pci_bus_id);
  work.join();
  ASSERT_FALSE(failed);
  ASSERT_TRUE(busy.ok()) << busy.status();
  ASSERT_TRUE(busy->utilization.has_value()) << "not a MIG device";
  std::printf("utilization while busy: %.2f\n", *busy->utilization);
  EXPECT_GE(*busy->utilization, 0.5);
}

TEST(CudaContextTest, AMissingDeviceIsUnavailable) {
  absl::StatusOr<std::unique_ptr<CudaContext>> context =
      CudaContext::Create(1000);
  EXPECT_EQ(context.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace quant::cuda
