// Which backend and kernel class computed a result. Results are bit for bit
// reproducible within one class (the same backend, library and dispatched
// core type, whatever the shapes' history or the thread count) and agree
// only within stated tolerances across classes: OpenBLAS picks its sgemm
// kernel per processor (or per OPENBLAS_CORETYPE), and kernels round
// differently. Reports and job status record the class of every block.
#ifndef KERNELS_CPU_COMPUTE_KERNEL_H_
#define KERNELS_CPU_COMPUTE_KERNEL_H_

#include <string>

namespace quant {

struct ComputeKernel {
  std::string backend;  // "cpu" (later "cuda").
  // The kernel class: for the CPU, the BLAS library, its version and the
  // core type it dispatched to, e.g. "OpenBLAS 0.3.21 Haswell".
  std::string kernel;
};

// This process's CPU kernel class (OpenBLAS is asked once).
const ComputeKernel& CpuComputeKernel();

}  // namespace quant

#endif  // KERNELS_CPU_COMPUTE_KERNEL_H_
