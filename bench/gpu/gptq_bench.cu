// GPU benchmarks of the GPTQ pieces, run on the GPU machine by
// bench/gpu/gptq_bench.py (which runs the PyTorch reference beside it on the
// same weights and Hessians):
//
//   gptq_bench solve DIR NAME:ROWSxCOLS:HESSIAN ...
//     reads DIR/NAME.w (float32 [rows, cols]) and DIR/HESSIAN.h (float32
//     [cols, cols]), solves GPTQ 4-bit g128 (asymmetric, as the reference)
//     on the GPU, writes the dequantized weights to DIR/NAME.q and prints one
//     JSON line per linear with the solve's seconds (H already on the GPU in
//     FP64, as the accumulator leaves it; linears naming the same HESSIAN
//     share its factorization, which the first of them is timed with).
//   gptq_bench hessian COLS TOKENS CHUNK
//     times the Hessian accumulation of TOKENS bfloat16 rows in chunks
//     against the bf16 GEMM rate measured in the same process.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "kernels/cuda/cuda_context.h"
#include "kernels/cuda/gptq_cuda.h"
#include "kernels/cuda/hessian_cuda.h"

namespace quant::cuda {
namespace {

void Check(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "gptq_bench: %s\n", status.ToString().c_str());
    std::exit(1);
  }
}

template <typename T>
T Check(absl::StatusOr<T> value) {
  Check(value.status());
  return std::move(*value);
}

std::vector<float> ReadFloats(const std::string& path, int64_t count) {
  std::vector<float> data(static_cast<size_t>(count));
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(data.data()), count * 4);
  if (in.gcount() != count * 4) {
    std::fprintf(stderr, "gptq_bench: %s is short\n", path.c_str());
    std::exit(1);
  }
  return data;
}

__global__ void WidenKernel(const float* in, int64_t n, double* out) {
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * blockDim.x) {
    out[i] = in[i];
  }
}

double Seconds(const CudaContext& context,
               std::chrono::steady_clock::time_point start) {
  Check(context.Synchronize("timing"));
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
      .count();
}

GptqOptions ReferenceOptions() {
  GptqOptions o;  // As gptq_torch_ref.gptq: 4 bits, g128, asymmetric, 1%.
  o.bits = 4;
  o.group_size = 128;
  o.sym = false;
  return o;
}

int Solve(const CudaContext& context, const std::string& dir,
          const std::vector<std::string>& linears) {
  // Warm-up, as a worker is after its first block: handles, the kernels
  // that CUDA loads on first use (cuSOLVER's large-matrix paths too).
  {
    constexpr int64_t kRows = 1024, kCols = 8192;
    std::vector<float> w(kRows * kCols, 0.01f);
    std::vector<double> h(kCols * kCols, 0.0);
    for (int64_t i = 0; i < kCols; ++i) h[i * kCols + i] = 1;
    Check(
        GptqQuantizeCuda(context, w.data(), kRows, kCols, h, ReferenceOptions())
            .status());
  }
  // Linears that read the same input share its Hessian's factor, as the
  // block task shares it; the first of them pays for the factorization.
  std::map<std::string, GptqFactor> factors;
  for (const std::string& spec : linears) {
    const std::vector<std::string> parts = absl::StrSplit(spec, ':');
    const std::vector<std::string> dims = absl::StrSplit(parts.at(1), 'x');
    int64_t rows = 0, cols = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(dims.at(0), &rows) ||
        !absl::SimpleAtoi(dims.at(1), &cols)) {
      std::fprintf(stderr, "gptq_bench: bad linear %s\n", spec.c_str());
      return 2;
    }
    const std::string base = dir + "/" + parts[0];
    const std::vector<float> w = ReadFloats(base + ".w", rows * cols);
    DeviceBuffer w_d =
        Check(DeviceBuffer::Allocate(context, rows * cols * 4, "weights"));
    DeviceBuffer q_d =
        Check(DeviceBuffer::Allocate(context, rows * cols * 4, "result"));
    Check(CopyToDevice(context, w_d.as<void>(), w.data(), rows * cols * 4,
                       "weights"));
    double factor_s = 0;
    auto found = factors.find(parts[2]);
    if (found == factors.end()) {
      const std::vector<float> h =
          ReadFloats(dir + "/" + parts[2] + ".h", cols * cols);
      DeviceBuffer h32 =
          Check(DeviceBuffer::Allocate(context, cols * cols * 4, "Hessian"));
      DeviceBuffer h_d =
          Check(DeviceBuffer::Allocate(context, cols * cols * 8, "Hessian"));
      Check(CopyToDevice(context, h32.as<void>(), h.data(), cols * cols * 4,
                         "Hessian"));
      WidenKernel<<<1024, 256, 0, context.stream()>>>(
          h32.as<float>(), cols * cols, h_d.as<double>());
      Check(context.Synchronize("widening H"));
      const auto start = std::chrono::steady_clock::now();
      found = factors
                  .emplace(parts[2],
                           Check(FactorGptqHessian(context, h_d.as<double>(),
                                                   cols, ReferenceOptions())))
                  .first;
      factor_s = Seconds(context, start);
    }
    GptqSolveProfile profile;
    const auto start = std::chrono::steady_clock::now();
    const DeviceGptqResult result =
        Check(GptqSolveOnDevice(context, found->second, w_d.as<float>(), rows,
                                ReferenceOptions(), q_d.as<float>(), &profile));
    const double solve_s = Seconds(context, start);
    std::vector<float> q(static_cast<size_t>(rows * cols));
    Check(CopyToHost(context, q.data(), q_d.as<void>(), rows * cols * 4,
                     "result"));
    std::ofstream(base + ".q", std::ios::binary)
        .write(reinterpret_cast<const char*>(q.data()), rows * cols * 4);
    std::printf(
        "{\"linear\": \"%s\", \"rows\": %ld, \"cols\": %ld, \"gptq_s\": %.4f, "
        "\"factor_s\": %.4f, \"solve_s\": %.4f, \"fits_s\": %.4f, "
        "\"columns_s\": %.4f, \"updates_s\": %.4f, \"loss\": %.6g, "
        "\"damp\": %.4f}\n",
        parts[0].c_str(), rows, cols, factor_s + solve_s, factor_s, solve_s,
        profile.fits_s, profile.columns_s, profile.updates_s, result.loss,
        result.damp_percent_used);
    std::fflush(stdout);
  }
  return 0;
}

// Median seconds of a bf16 GEMM [n, n] x [n, n] on tensor cores.
double GemmPeakTflops(const CudaContext& context, int n) {
  DeviceBuffer a =
      Check(DeviceBuffer::Allocate(context, int64_t{n} * n * 2, "A"));
  DeviceBuffer c =
      Check(DeviceBuffer::Allocate(context, int64_t{n} * n * 4, "C"));
  Check(CudaError(cudaMemset(a.as<void>(), 0x3c, int64_t{n} * n * 2), "fill"));
  const float one = 1.0f, zero = 0.0f;
  std::vector<double> times;
  for (int i = 0; i < 11; ++i) {
    const auto start = std::chrono::steady_clock::now();
    cublasGemmEx(context.cublas(), CUBLAS_OP_N, CUBLAS_OP_T, n, n, n, &one,
                 a.as<void>(), CUDA_R_16BF, n, a.as<void>(), CUDA_R_16BF, n,
                 &zero, c.as<void>(), CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                 CUBLAS_GEMM_DEFAULT);
    times.push_back(Seconds(context, start));
  }
  std::sort(times.begin() + 1, times.end());
  return 2.0 * n * n * n / times[6] / 1e12;
}

int Hessian(const CudaContext& context, int64_t cols, int64_t tokens,
            int64_t chunk) {
  const double peak = GemmPeakTflops(context, 8192);
  std::vector<uint16_t> x(static_cast<size_t>(chunk * cols));
  std::mt19937 rng(1);
  for (uint16_t& v : x) v = static_cast<uint16_t>(0x3c00 + rng() % 512);
  DeviceBuffer x_d =
      Check(DeviceBuffer::Allocate(context, chunk * cols * 2, "x"));
  Check(CopyToDevice(context, x_d.as<void>(), x.data(), chunk * cols * 2, "x"));
  DeviceHessian h = Check(DeviceHessian::Create(context, cols));
  Check(h.AddBf16(x_d.as<uint16_t>(), chunk));  // Warm-up.
  const auto start = std::chrono::steady_clock::now();
  for (int64_t done = 0; done < tokens; done += chunk) {
    Check(h.AddBf16(x_d.as<uint16_t>(), chunk));
  }
  const double seconds = Seconds(context, start);
  const double rate = 2.0 * cols * cols * tokens / seconds / 1e12;
  std::printf(
      "{\"cols\": %ld, \"tokens\": %ld, \"chunk\": %ld, \"hessian_s\": %.4f, "
      "\"tflops\": %.1f, \"gemm_bf16_peak_tflops\": %.1f, \"of_peak\": "
      "%.3f}\n",
      cols, tokens, chunk, seconds, rate, peak, rate / peak);
  return 0;
}

}  // namespace
}  // namespace quant::cuda

int main(int argc, char** argv) {
  using namespace quant::cuda;
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: gptq_bench solve DIR NAME:ROWSxCOLS ... | "
                 "hessian COLS TOKENS CHUNK\n");
    return 2;
  }
  std::unique_ptr<CudaContext> context = Check(CudaContext::Create(0));
  std::fprintf(stderr, "gptq_bench on %s\n",
               DescribeDevice(context->info()).c_str());
  const std::string mode = argv[1];
  if (mode == "solve") {
    return Solve(*context, argv[2],
                 std::vector<std::string>(argv + 3, argv + argc));
  }
  if (mode == "hessian" && argc == 5) {
    return Hessian(*context, std::atol(argv[2]), std::atol(argv[3]),
                   std::atol(argv[4]));
  }
  std::fprintf(stderr, "gptq_bench: unknown mode %s\n", mode.c_str());
  return 2;
}
