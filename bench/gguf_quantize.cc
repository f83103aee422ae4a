// Throughput of QuantizeRows / DequantizeRows (kernels/cpu/quantize_rows.h)
// against the scalar reference (format/ggml_blocks.h), on a random normal
// matrix. Prints a markdown table; MB/s counts the F32 side (4 bytes per
// element, 1 MB = 1e6 bytes).
//
// Usage: gguf_quantize [--rows=N] [--cols=N] [--reps=N] [--threads=1,2]
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "format/ggml_blocks.h"
#include "format/ggml_type.h"
#include "kernels/cpu/quantize_rows.h"

namespace quant {
namespace {

struct Options {
  int64_t rows = 4096;
  int64_t cols = 4096;
  int reps = 7;
  std::vector<int> threads = {1, 2};
};

bool ParseFlag(absl::string_view arg, absl::string_view name,
               absl::string_view* value) {
  if (!absl::ConsumePrefix(&arg, "--") || !absl::ConsumePrefix(&arg, name) ||
      !absl::ConsumePrefix(&arg, "=")) {
    return false;
  }
  *value = arg;
  return true;
}

bool ParseArgs(int argc, char** argv, Options* options) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view value;
    int number = 0;
    int64_t number64 = 0;
    if (ParseFlag(argv[i], "rows", &value) &&
        absl::SimpleAtoi(value, &number64) && number64 > 0) {
      options->rows = number64;
    } else if (ParseFlag(argv[i], "cols", &value) &&
               absl::SimpleAtoi(value, &number64) && number64 > 0 &&
               number64 % 32 == 0) {
      options->cols = number64;
    } else if (ParseFlag(argv[i], "reps", &value) &&
               absl::SimpleAtoi(value, &number) && number > 0) {
      options->reps = number;
    } else if (ParseFlag(argv[i], "threads", &value)) {
      options->threads.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        if (!absl::SimpleAtoi(part, &number) || number <= 0) return false;
        options->threads.push_back(number);
      }
      if (options->threads.empty()) return false;
    } else {
      return false;
    }
  }
  return true;
}

// Fastest of `reps` timed runs of `fn` (after one untimed warm-up), seconds.
// The minimum, not the median: on a shared machine other processes only
// ever add time.
template <typename Fn>
double BestSeconds(int reps, Fn fn) {
  fn();
  std::vector<double> times;
  for (int r = 0; r < reps; ++r) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    const auto end = std::chrono::steady_clock::now();
    times.push_back(std::chrono::duration<double>(end - start).count());
  }
  return *std::min_element(times.begin(), times.end());
}

void Check(const absl::Status& status) {
  if (!status.ok()) {
    std::fprintf(stderr, "error: %s\n", status.ToString().c_str());
    std::exit(1);
  }
}

int Run(const Options& options) {
  const int64_t rows = options.rows;
  const int64_t cols = options.cols;
  const int64_t n = rows * cols;
  const double megabytes = static_cast<double>(n) * sizeof(float) / 1e6;
  std::vector<float> src(static_cast<size_t>(n));
  std::mt19937 rng(42);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (float& v : src) v = normal(rng);

  std::printf(
      "matrix %lld x %lld f32 (%.1f MB), best of %d runs, "
      "optimized path: %s\n\n",
      static_cast<long long>(rows), static_cast<long long>(cols), megabytes,
      options.reps, std::string(QuantizeIsaName(BestQuantizeIsa())).c_str());
  std::printf(
      "| type | threads | MB/s | ref MB/s (1 thread) | speedup | "
      "dequant MB/s | ref dequant MB/s | identical |\n");
  std::printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n");

  for (const GgmlType type :
       {GgmlType::kQ8_0, GgmlType::kQ4_0, GgmlType::kQ4_1, GgmlType::kQ5_0, GgmlType::kQ5_1, GgmlType::kQ2_K, GgmlType::kQ3_K, GgmlType::kQ4_K, GgmlType::kQ5_K, GgmlType::kQ6_K, GgmlType::kF16, GgmlType::kBF16}) {
    const uint64_t row_bytes = *GgmlRowBytes(type, cols);
    std::vector<uint8_t> ref(static_cast<size_t>(rows * row_bytes));
    std::vector<uint8_t> out(ref.size());
    std::vector<float> back(static_cast<size_t>(n));

    const double ref_seconds = BestSeconds(options.reps, [&] {
      for (int64_t r = 0; r < rows; ++r) {
        Check(QuantizeRowReference(type, src.data() + r * cols, cols,
                                   ref.data() + r * row_bytes));
      }
    });
    const double ref_dequant_seconds = BestSeconds(options.reps, [&] {
      for (int64_t r = 0; r < rows; ++r) {
        Check(DequantizeRowReference(type, ref.data() + r * row_bytes, cols,
                                     back.data() + r * cols));
      }
    });
    for (const int threads : options.threads) {
      const double seconds = BestSeconds(options.reps, [&] {
        Check(QuantizeRows(type, src.data(), rows, cols, out.data(), threads));
      });
      const bool identical = out == ref;
      const double dequant_seconds = BestSeconds(options.reps, [&] {
        Check(
            DequantizeRows(type, out.data(), rows, cols, back.data(), threads));
      });
      std::printf("| %s | %d | %.0f | %.0f | %.1fx | %.0f | %.0f | %s |\n",
                  std::string(GgmlTypeName(type)).c_str(), threads,
                  megabytes / seconds, megabytes / ref_seconds,
                  ref_seconds / seconds, megabytes / dequant_seconds,
                  megabytes / ref_dequant_seconds, identical ? "yes" : "NO");
      if (!identical) return 1;
    }
  }
  return 0;
}

}  // namespace
}  // namespace quant

int main(int argc, char** argv) {
  quant::Options options;
  if (!quant::ParseArgs(argc, argv, &options)) {
    std::fprintf(stderr,
                 "usage: %s [--rows=N] [--cols=N (multiple of 32)] [--reps=N] "
                 "[--threads=1,2]\n",
                 argv[0]);
    return 2;
  }
  return quant::Run(options);
}
