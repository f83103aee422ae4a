// The GPU Hessian accumulator against quant::HessianAccumulator.
#include "kernels/cuda/hessian_cuda.h"

#include <cmath>
#include <random>
#include <vector>

#include "format/half.h"
#include "gtest/gtest.h"
#include "quant/hessian.h"

namespace quant::cuda {
namespace {

std::vector<float> RandomRows(int64_t n, int64_t columns, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(n * columns));
  for (float& v : x) v = normal(rng) * 3;
  return x;
}

double MaxAbs(const std::vector<double>& v) {
  double m = 0;
  for (double x : v) m = std::max(m, std::fabs(x));
  return m;
}

class HessianCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<CudaContext>> context =
        CudaContext::Create(0);
    if (!context.ok()) {
      GTEST_SKIP() << "no CUDA device here (" << context.status().message()
                   << "); the GPU tests run on the GPU machine";
    }
    context_ = std::move(*context);
  }

  DeviceBuffer Upload(const void* data, int64_t bytes) {
    absl::StatusOr<DeviceBuffer> b =
        DeviceBuffer::Allocate(*context_, bytes, "test input");
    EXPECT_TRUE(b.ok()) << b.status();
    EXPECT_TRUE(CopyToDevice(*context_, b->as<void>(), data, bytes, "x").ok());
    return std::move(*b);
  }

  std::unique_ptr<CudaContext> context_;
};

TEST_F(HessianCudaTest, MatchesTheCpuAccumulatorAndMergesExactly) {
  const int64_t columns = 77;
  const std::vector<float> a = RandomRows(333, columns, 1);
  const std::vector<float> b = RandomRows(101, columns, 2);
  HessianAccumulator cpu(columns);
  cpu.Add(a.data(), 333);
  cpu.Add(b.data(), 101);
  const std::vector<double> want = cpu.Hessian();

  DeviceBuffer da = Upload(a.data(), a.size() * 4);
  DeviceBuffer db = Upload(b.data(), b.size() * 4);
  absl::StatusOr<DeviceHessian> one = DeviceHessian::Create(*context_, columns);
  absl::StatusOr<DeviceHessian> two = DeviceHessian::Create(*context_, columns);
  ASSERT_TRUE(one.ok() && two.ok());
  ASSERT_TRUE(one->Add(da.as<float>(), 333).ok());
  ASSERT_TRUE(two->Add(db.as<float>(), 101).ok());
  ASSERT_TRUE(one->Merge(*two).ok());
  EXPECT_EQ(one->samples(), 434);
  absl::StatusOr<std::vector<double>> got = one->HessianOnHost();
  ASSERT_TRUE(got.ok()) << got.status();
  const double scale = MaxAbs(want);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR((*got)[i], want[i], 1e-6 * scale) << i;
  }
  absl::StatusOr<std::vector<double>> mean = one->MeanAbs();
  ASSERT_TRUE(mean.ok());
  const std::vector<double> want_mean = cpu.MeanAbs();
  for (int64_t c = 0; c < columns; ++c) {
    EXPECT_NEAR((*mean)[c], want_mean[c], 1e-9 * want_mean[c]);
  }

  // Merging the same batches in another grouping gives the same totals.
  absl::StatusOr<DeviceHessian> both =
      DeviceHessian::Create(*context_, columns);
  ASSERT_TRUE(both->Add(da.as<float>(), 333).ok());
  ASSERT_TRUE(both->Add(db.as<float>(), 101).ok());
  absl::StatusOr<std::vector<double>> same = both->HessianOnHost();
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, *got);

  // The totals on the host are a shard's statistics: merged there with
  // another shard's, they are the device's merge.
  std::vector<double> sum_xxt, sum_abs, two_xxt, two_abs;
  ASSERT_TRUE(both->CopySumsToHost(&sum_xxt, &sum_abs).ok());
  ASSERT_TRUE(two->CopySumsToHost(&two_xxt, &two_abs).ok());
  absl::StatusOr<HessianAccumulator> host = HessianAccumulator::FromSums(
      both->samples(), std::move(sum_xxt), std::move(sum_abs));
  ASSERT_TRUE(host.ok()) << host.status();
  EXPECT_EQ(host->samples(), 434);
  const std::vector<double> from_sums = host->Hessian();
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR(from_sums[i], want[i], 1e-6 * scale) << i;
  }
  const std::vector<double> host_mean = host->MeanAbs();
  for (int64_t c = 0; c < columns; ++c) {
    EXPECT_NEAR(host_mean[c], want_mean[c], 1e-9 * want_mean[c]);
  }
  absl::StatusOr<HessianAccumulator> shard = HessianAccumulator::FromSums(
      two->samples(), std::move(two_xxt), std::move(two_abs));
  ASSERT_TRUE(shard.ok() && host->Merge(*shard).ok());
  EXPECT_EQ(host->samples(), 535);

  absl::StatusOr<DeviceHessian> other = DeviceHessian::Create(*context_, 78);
  EXPECT_EQ(one->Merge(*other).code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(HessianCudaTest, Bfloat16InputsOnTensorCores) {
  const int64_t columns = 200, n = 1000;
  std::vector<float> x = RandomRows(n, columns, 3);
  std::vector<uint16_t> bits(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    bits[i] = FloatToBf16(x[i]);
    x[i] = Bf16ToFloat(bits[i]);
  }
  HessianAccumulator cpu(columns);
  cpu.Add(x.data(), n);
  const std::vector<double> want = cpu.Hessian();
  DeviceBuffer d = Upload(bits.data(), bits.size() * 2);
  absl::StatusOr<DeviceHessian> h = DeviceHessian::Create(*context_, columns);
  ASSERT_TRUE(h.ok());
  ASSERT_TRUE(h->AddBf16(d.as<uint16_t>(), n).ok());
  absl::StatusOr<std::vector<double>> got = h->HessianOnHost();
  ASSERT_TRUE(got.ok());
  // The products of bfloat16 values are exact in FP32; only the order of
  // the FP32 sums differs.
  const double scale = MaxAbs(want);
  for (size_t i = 0; i < want.size(); ++i) {
    ASSERT_NEAR((*got)[i], want[i], 1e-5 * scale) << i;
  }
}

// The report's quadratic forms and the diagonal against plain FP64 sums on
// the host, over more rows than one chunk holds.
TEST_F(HessianCudaTest, QuadraticFormsAndDiagonal) {
  const int64_t rows = 1037, cols = 17000;  // Chunks of 986 rows.
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> w(static_cast<size_t>(rows * cols));
  std::vector<float> q(w.size());
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = normal(rng);
    q[i] = w[i] + 0.01f * normal(rng);
  }
  // A diagonal-heavy symmetric H, with one off-diagonal band.
  std::vector<double> h(static_cast<size_t>(cols * cols), 0.0);
  for (int64_t i = 0; i < cols; ++i) {
    h[i * cols + i] = 1.0 + i % 7;
    if (i + 1 < cols) h[i * cols + i + 1] = h[(i + 1) * cols + i] = 0.25;
  }
  double error = 0, signal = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < cols; ++i) {
      const double d = double{q[r * cols + i]} - w[r * cols + i];
      const double x = w[r * cols + i];
      double hd = h[i * cols + i] * d, hx = h[i * cols + i] * x;
      if (i > 0) {
        hd += 0.25 * (double{q[r * cols + i - 1]} - w[r * cols + i - 1]);
        hx += 0.25 * w[r * cols + i - 1];
      }
      if (i + 1 < cols) {
        hd += 0.25 * (double{q[r * cols + i + 1]} - w[r * cols + i + 1]);
        hx += 0.25 * w[r * cols + i + 1];
      }
      error += d * hd;
      signal += x * hx;
    }
  }
  DeviceBuffer w_d = Upload(w.data(), w.size() * 4);
  DeviceBuffer q_d = Upload(q.data(), q.size() * 4);
  DeviceBuffer h_d = Upload(h.data(), h.size() * 8);
  absl::StatusOr<HessianQuadratics> forms =
      ComputeHessianQuadratics(*context_, w_d.as<float>(), q_d.as<float>(),
                               rows, cols, h_d.as<double>());
  ASSERT_TRUE(forms.ok()) << forms.status();
  EXPECT_NEAR(forms->error, error, 1e-9 * error);
  EXPECT_NEAR(forms->signal, signal, 1e-9 * signal);
  absl::StatusOr<std::vector<double>> diagonal =
      HessianDiagonal(*context_, h_d.as<double>(), cols);
  ASSERT_TRUE(diagonal.ok()) << diagonal.status();
  for (int64_t i = 0; i < cols; ++i) {
    ASSERT_EQ((*diagonal)[i], h[i * cols + i]) << i;
  }
}

}  // namespace
}  // namespace quant::cuda
