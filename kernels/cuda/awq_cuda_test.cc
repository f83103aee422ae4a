// AWQ's kernels against the CPU oracle (quant/awq.h) on random inputs of odd
// sizes: the quantizer, the scale-search candidates and the weight means bit
// for bit; the clipping search's bounds all but identical. Skips without a
// GPU.
#include "kernels/cuda/awq_cuda.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cuda/gpu_test_support.h"

namespace quant::cuda {
namespace {

std::vector<float> Random(std::mt19937& rng, int64_t n, float scale) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> x(static_cast<size_t>(n));
  for (float& v : x) v = normal(rng);
  return x;
}

void Must(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "%s\n", std::string(status.message()).c_str());
    std::abort();
  }
}

// Host vector <-> device buffer.
DeviceBuffer Upload(const CudaContext& context, const std::vector<float>& x) {
  absl::StatusOr<DeviceBuffer> buffer = DeviceBuffer::Allocate(
      context, static_cast<int64_t>(x.size()) * 4, "test data");
  Must(buffer.status());
  Must(CopyToDevice(context, buffer->as<void>(), x.data(),
                    static_cast<int64_t>(x.size()) * 4, "test data"));
  return *std::move(buffer);
}

std::vector<float> Download(const CudaContext& context, const DeviceBuffer& b,
                            int64_t n) {
  std::vector<float> x(static_cast<size_t>(n));
  Must(CopyToHost(context, x.data(), b.as<void>(), n * 4, "test data"));
  return x;
}

TEST(AwqCudaTest, QuantizerMatchesTheCpuBitForBit) {
  std::unique_ptr<CudaContext> gpu = OpenGpu();
  REQUIRE_GPU(gpu);
  std::mt19937 rng(5);
  struct Shape {
    int64_t rows, cols;
    int bits, group_size;
    bool zero_point;
  };
  for (const Shape& s :
       {Shape{37, 96, 4, 32, true}, Shape{19, 160, 3, -1, true},
        Shape{23, 72, 8, 24, false}, Shape{41, 128, 2, 64, false}}) {
    std::vector<float> w = Random(rng, s.rows * s.cols, 0.05f);
    w[3] = 0.9f;  // An outlier in one group.
    const absl::StatusOr<QuantizedLinear> want = AwqQuantize(
        w.data(), s.rows, s.cols, s.bits, s.group_size, s.zero_point);
    ASSERT_TRUE(want.ok());
    const DeviceBuffer w_d = Upload(*gpu, w);
    absl::StatusOr<DeviceBuffer> dequantized =
        DeviceBuffer::Allocate(*gpu, s.rows * s.cols * 4, "test");
    ASSERT_TRUE(dequantized.ok());
    absl::StatusOr<DeviceGptqResult> got = AwqQuantizeOnDevice(
        *gpu, w_d.as<float>(), s.rows, s.cols, s.bits, s.group_size,
        s.zero_point, dequantized->as<float>());
    ASSERT_TRUE(got.ok()) << got.status();
    absl::StatusOr<GptqResult> host = got->Download(*gpu);
    ASSERT_TRUE(host.ok());
    EXPECT_EQ(host->quantized.q, want->q) << s.rows << "x" << s.cols;
    EXPECT_EQ(host->quantized.scales, want->scales);
    EXPECT_EQ(host->quantized.zeros, want->zeros);
    EXPECT_EQ(host->quantized.g_idx, want->g_idx);
    EXPECT_EQ(Download(*gpu, *dequantized, s.rows * s.cols),
              want->Dequantize());
  }
  // Shapes the CPU refuses are refused here too.
  const DeviceBuffer w_d = Upload(*gpu, std::vector<float>(10 * 30, 1.0f));
  EXPECT_EQ(AwqQuantizeOnDevice(*gpu, w_d.as<float>(), 10, 30, 4, 16, true)
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AwqCudaTest, ScaleCandidatesAndWeightMeansMatchTheCpu) {
  std::unique_ptr<CudaContext> gpu = OpenGpu();
  REQUIRE_GPU(gpu);
  std::mt19937 rng(7);
  const int64_t cols = 96;
  const int group_size = 32;
  LinearWeights a, b;
  a.rows = 29, b.rows = 13;
  a.cols = b.cols = cols;
  a.weight = Random(rng, a.rows * cols, 0.05f);
  b.weight = Random(rng, b.rows * cols, 0.02f);
  std::vector<float> s(static_cast<size_t>(cols));
  std::uniform_real_distribution<float> spread(0.3f, 3.0f);
  for (float& v : s) v = spread(rng);

  // The candidate as SearchAwqScales builds it: Q(W diag(s)) diag(s)^-1.
  LinearWeights scaled = a;
  ScaleInputColumns(s, scaled);
  const absl::StatusOr<QuantizedLinear> q =
      AwqQuantize(scaled.weight.data(), a.rows, cols, 4, group_size, true);
  ASSERT_TRUE(q.ok());
  scaled.weight = q->Dequantize();
  std::vector<float> inverse(s.size());
  for (size_t i = 0; i < s.size(); ++i) inverse[i] = 1.0f / s[i];
  ScaleInputColumns(inverse, scaled);

  const DeviceBuffer a_d = Upload(*gpu, a.weight), b_d = Upload(*gpu, b.weight);
  const DeviceBuffer s_d = Upload(*gpu, s);
  DeviceBuffer out = Upload(*gpu, std::vector<float>(a.weight.size()));
  ASSERT_TRUE(AwqScaledCandidateOnDevice(*gpu, a_d.as<float>(), a.rows, cols,
                                         s_d.as<float>(), 4, group_size, true,
                                         out.as<float>())
                  .ok());
  EXPECT_EQ(Download(*gpu, out, a.rows * cols), scaled.weight);

  const std::vector<double> want = AwqWeightMean({&a, &b}, group_size);
  absl::StatusOr<DeviceBuffer> sums =
      DeviceBuffer::Allocate(*gpu, cols * 8, "test");
  ASSERT_TRUE(sums.ok());
  const std::vector<double> zeros(cols, 0.0);
  ASSERT_TRUE(
      CopyToDevice(*gpu, sums->as<void>(), zeros.data(), cols * 8, "t").ok());
  for (const auto& [linear, w] :
       {std::make_pair(&a, &a_d), std::make_pair(&b, &b_d)}) {
    ASSERT_TRUE(AddAwqWeightMeanSums(*gpu, w->as<float>(), linear->rows, cols,
                                     group_size, sums->as<double>())
                    .ok());
  }
  std::vector<double> got(cols);
  ASSERT_TRUE(
      CopyToHost(*gpu, got.data(), sums->as<void>(), cols * 8, "t").ok());
  for (int64_t c = 0; c < cols; ++c) {
    EXPECT_EQ(got[c] / static_cast<double>(a.rows + b.rows), want[c]) << c;
  }
}

TEST(AwqCudaTest, ClippingSearchPicksTheCpuBounds) {
  std::unique_ptr<CudaContext> gpu = OpenGpu();
  REQUIRE_GPU(gpu);
  std::mt19937 rng(9);
  for (const WeightFormat& format :
       {WeightFormat{4, 32, false}, WeightFormat{3, -1, true}}) {
    LinearWeights linear;
    linear.rows = 53, linear.cols = 160;
    linear.weight = Random(rng, linear.rows * linear.cols, 0.05f);
    for (int k = 0; k < 40; ++k)
      linear.weight[rng() % linear.weight.size()] *= 8;
    const int64_t tokens = 1003;  // Sampled with a step of 2 below.
    std::vector<float> x = Random(rng, tokens * linear.cols, 1.0f);
    AwqOptions options;
    options.clip_sample_tokens = 400;
    LinearWeights want = linear;
    ASSERT_TRUE(ClipAwq(x.data(), tokens, format, options, want).ok());

    const DeviceBuffer x_d = Upload(*gpu, x);
    DeviceBuffer w_d = Upload(*gpu, linear.weight);
    ASSERT_TRUE(ClipAwqOnDevice(*gpu, x_d.as<float>(), tokens, format, options,
                                linear.rows, linear.cols, w_d.as<float>())
                    .ok());
    const std::vector<float> got =
        Download(*gpu, w_d, linear.rows * linear.cols);
    int64_t same = 0;
    for (size_t i = 0; i < got.size(); ++i) same += got[i] == want.weight[i];
    const double fraction = static_cast<double>(same) / got.size();
    std::printf("clip %d-bit g%d: %.5f of the clipped weights identical\n",
                format.bits, format.group_size, fraction);
    EXPECT_GE(fraction, 0.99);
    EXPECT_NE(want.weight, linear.weight);  // The search did clip something.
  }
}

TEST(AwqCudaTest, ReductionsAndLayoutHelpers) {
  std::unique_ptr<CudaContext> gpu = OpenGpu();
  REQUIRE_GPU(gpu);
  std::mt19937 rng(11);
  const int64_t n = 300001;
  const std::vector<float> a = Random(rng, n, 1.0f), b = Random(rng, n, 1.0f);
  double want = 0;
  for (int64_t i = 0; i < n; ++i) {
    want += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
  }
  want /= n;
  const DeviceBuffer a_d = Upload(*gpu, a), b_d = Upload(*gpu, b);
  absl::StatusOr<double> got =
      MeanSquaredDifferenceOnDevice(*gpu, a_d.as<float>(), b_d.as<float>(), n);
  ASSERT_TRUE(got.ok());
  EXPECT_NEAR(*got, want, 1e-12 * want);
  // The same sum every time.
  EXPECT_EQ(*got, *MeanSquaredDifferenceOnDevice(*gpu, a_d.as<float>(),
                                                 b_d.as<float>(), n));

  // Rows 0, 3, 6 of a [10, 5] BF16 matrix, widened and divided by s; a
  // Hessian divided by s_i s_j.
  const int64_t width = 5;
  std::vector<uint16_t> x(50);
  for (size_t i = 0; i < x.size(); ++i) x[i] = 0x3f80 + i;  // 1.0 and up.
  absl::StatusOr<DeviceBuffer> x_d = DeviceBuffer::Allocate(*gpu, 100, "t");
  absl::StatusOr<DeviceBuffer> rows = DeviceBuffer::Allocate(*gpu, 30, "t");
  ASSERT_TRUE(x_d.ok() && rows.ok());
  ASSERT_TRUE(CopyToDevice(*gpu, x_d->as<void>(), x.data(), 100, "t").ok());
  ASSERT_TRUE(GatherRowsOnDevice(*gpu, x_d->as<uint16_t>(), 3, 3, width,
                                 rows->as<uint16_t>())
                  .ok());
  const std::vector<float> s = {1, 2, 4, 0.5f, 8};
  const DeviceBuffer s_d = Upload(*gpu, s);
  DeviceBuffer widened = Upload(*gpu, std::vector<float>(15));
  ASSERT_TRUE(Bf16ToFloatOnDevice(*gpu, rows->as<uint16_t>(), 3, width,
                                  s_d.as<float>(), widened.as<float>())
                  .ok());
  const std::vector<float> w = Download(*gpu, widened, 15);
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t c = 0; c < width; ++c) {
      const uint16_t bits = x[r * 3 * width + c];
      float value;
      const uint32_t wide = uint32_t{bits} << 16;
      std::memcpy(&value, &wide, 4);
      EXPECT_EQ(w[r * width + c], value / s[c]) << r << "," << c;
    }
  }
  std::vector<double> h(25);
  for (size_t i = 0; i < h.size(); ++i) h[i] = 1.0 + i;
  absl::StatusOr<DeviceBuffer> h_d = DeviceBuffer::Allocate(*gpu, 200, "t");
  ASSERT_TRUE(h_d.ok());
  ASSERT_TRUE(CopyToDevice(*gpu, h_d->as<void>(), h.data(), 200, "t").ok());
  ASSERT_TRUE(
      DivideHessianOnDevice(*gpu, s_d.as<float>(), width, h_d->as<double>())
          .ok());
  std::vector<double> divided(25);
  ASSERT_TRUE(CopyToHost(*gpu, divided.data(), h_d->as<void>(), 200, "t").ok());
  for (int64_t i = 0; i < width; ++i) {
    for (int64_t j = 0; j < width; ++j) {
      EXPECT_EQ(divided[i * width + j],
                h[i * width + j] / (double{s[i]} * s[j]));
    }
  }
}

}  // namespace
}  // namespace quant::cuda
