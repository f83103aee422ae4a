#include "kernels/cuda/cuda_context.h"

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

TEST(CudaContextTest, AMissingDeviceIsUnavailable) {
  absl::StatusOr<std::unique_ptr<CudaContext>> context =
      CudaContext::Create(1000);
  EXPECT_EQ(context.status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace quant::cuda
