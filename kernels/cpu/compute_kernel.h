// Which backend and kernel class computed a result. Results are bit for bit
// reproducible within one class and agree only within stated tolerances
// across classes. For the CPU a class is the BLAS library and version, the
// core type it dispatched to (OpenBLAS picks its sgemm kernel per processor,
// or per OPENBLAS_CORETYPE) and its thread count: OpenBLAS's products round
// differently with another number of threads, as with another kernel. Our
// own OpenMP loops compute each element in one thread, so their thread
// count does not matter. Reports and job status record the class of every
// block.
#ifndef KERNELS_CPU_COMPUTE_KERNEL_H_
#define KERNELS_CPU_COMPUTE_KERNEL_H_

#include <string>

namespace quant {

struct ComputeKernel {
  std::string backend;  // "cpu" (later "cuda").
  // The kernel class, e.g. "OpenBLAS 0.3.21 Haswell, 16 threads".
  std::string kernel;
};

// This process's CPU kernel class now.
ComputeKernel CpuComputeKernel();

// Sets the threads of both OpenMP and OpenBLAS (which has its own pool);
// threads <= 0 leaves both as they are.
void SetCpuThreads(int threads);

}  // namespace quant

#endif  // KERNELS_CPU_COMPUTE_KERNEL_H_
