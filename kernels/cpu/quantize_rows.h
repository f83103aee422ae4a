// Multi-threaded (OpenMP) quantization of row-major float matrices into GGUF
// tensor data, and back. The output is byte-identical to running
// QuantizeRowReference (format/ggml_blocks.h) row by row, on every path and
// for every thread count; the tests hold it to that.
#ifndef KERNELS_CPU_QUANTIZE_ROWS_H_
#define KERNELS_CPU_QUANTIZE_ROWS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "format/ggml_type.h"

namespace quant {

// Quantizes the `rows` x `cols` row-major matrix at `src` into
// rows * GgmlRowBytes(type, cols) bytes at `dst` (rows back to back, as in a
// GGUF tensor whose ne[0] is `cols`). `importance`: optional per-column
// weights (`cols` of them), as QuantizeRowReference takes them.
// `num_threads` <= 0 uses OpenMP's default. Work is split over rows, and
// over blocks within rows when there are fewer rows than threads; fewer
// threads run when there are fewer processors or little work (under 16384
// elements a thread).
// Errors: Unimplemented for an unsupported type (or importance weights
// for Q4_0); InvalidArgument when `cols` is not a multiple of the block size,
// a size is negative or overflows, a buffer is null (nothing written), or
// the input holds what the type cannot represent (NaN, inf, F16 overflow, an
// infinite block scale: see format/ggml_blocks.h) -- the message names the
// row and column of the first offender in row-major order, whatever the
// thread count, and `dst` is partly written.
absl::Status QuantizeRows(GgmlType type, const float* src, int64_t rows,
                          int64_t cols, void* dst, int num_threads,
                          const float* importance = nullptr);

// The inverse: rows * GgmlRowBytes(type, cols) bytes at `src` into a
// `rows` x `cols` float matrix, identical to DequantizeRowReference.
absl::Status DequantizeRows(GgmlType type, const void* src, int64_t rows,
                            int64_t cols, float* dst, int num_threads);

// Which implementation the functions above use.
enum class QuantizeIsa {
  kScalar,  // The reference block functions, run in parallel.
  kAvx2,    // AVX2 + F16C kernels (x86-64, chosen at run time).
};

// The best path this CPU supports.
QuantizeIsa BestQuantizeIsa();
absl::string_view QuantizeIsaName(QuantizeIsa isa);

// For tests and benchmarks: use `isa` (capped at BestQuantizeIsa()) from now
// on. Not to be called while another thread is quantizing.
void SetQuantizeIsaForTesting(QuantizeIsa isa);
QuantizeIsa ActiveQuantizeIsa();

}  // namespace quant

#endif  // KERNELS_CPU_QUANTIZE_ROWS_H_
