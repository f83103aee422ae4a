#include "kernels/cuda/cuda_context.h"

#include <algorithm>
#include <cstdint>
#include <random>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

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

TEST(CudaContextTest, AMissingDeviceIsUnavailable) {
  absl::StatusOr<std::unique_ptr<CudaContext>> context =
      CudaContext::Create(1000);
  EXPECT_EQ(context.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace quant::cuda
