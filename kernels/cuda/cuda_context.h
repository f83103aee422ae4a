// One CUDA device as the GPU backend uses it: its properties, a stream that
// orders everything launched on it, the cuBLAS and cuSOLVER handles bound
// to that stream, and plain device allocations (cudaMalloc; never managed
// memory) whose failures name what was needed and what was free.
//
// Every CUDA failure becomes an absl::Status that a worker treats as the
// infrastructure's fault: ResourceExhausted for device memory, Unavailable
// for a missing, busy or failed device or driver.
#ifndef KERNELS_CUDA_CUDA_CONTEXT_H_
#define KERNELS_CUDA_CUDA_CONTEXT_H_

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

// The runtime's and libraries' handle types, declared as they do, so that
// this header needs no CUDA include path.
struct CUstream_st;
struct CUevent_st;
struct cublasContext;
struct cusolverDnContext;

namespace quant::cuda {

struct DeviceInfo {
  int index = 0;
  std::string name;  // e.g. "NVIDIA H200".
  int compute_major = 0, compute_minor = 0;
  int multiprocessors = 0;
  int64_t total_bytes = 0;
  int64_t free_bytes = 0;  // When listed.
  std::string pci_bus_id;  // "0000:3b:00.0": where NVML finds it.
};

// The devices this process sees. Unavailable, with the driver's answer,
// when there are none (no GPU, no driver, CUDA_VISIBLE_DEVICES empty).
absl::StatusOr<std::vector<DeviceInfo>> ListDevices();

// "NVIDIA H200 (GPU 0, sm_90, 139.8 GiB)".
std::string DescribeDevice(const DeviceInfo& info);

// A CUDA runtime error as a Status naming `what` was being done.
absl::Status CudaError(int cuda_error, absl::string_view what);
// A cuBLAS / cuSOLVER status likewise: ResourceExhausted when the library ran
// out of device memory, else Unavailable.
absl::Status CublasError(int status, absl::string_view what);
absl::Status CusolverError(int status, absl::string_view what);

class CudaContext {
 public:
  // Makes `device` current on this thread and creates the stream and
  // library handles. Unavailable when the device cannot be used.
  static absl::StatusOr<std::unique_ptr<CudaContext>> Create(int device);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  const DeviceInfo& info() const { return info_; }
  CUstream_st* stream() const { return stream_; }
  cublasContext* cublas() const { return cublas_; }
  cusolverDnContext* cusolver() const { return cusolver_; }

  // Makes the device current on the calling thread (a worker may call from
  // several threads over its life).
  absl::Status Activate() const;
  // Waits for everything launched on the stream; reports what failed.
  absl::Status Synchronize(absl::string_view what) const;
  // Free and total device memory now.
  absl::Status MemoryInfo(int64_t* free_bytes, int64_t* total_bytes) const;

  // A large copy between pageable host memory and the device through two
  // pinned staging buffers in turn: the host side copied by several
  // threads while the other buffer's DMA runs (pageable copies run at a
  // fifth of the link's rate or less). Returns when the copy is done; false
  // in `staged` when no pinned memory could be had (the caller copies
  // directly).
  absl::Status StagedCopy(void* to, const void* from, int64_t bytes,
                          bool to_device, absl::string_view what,
                          bool* staged) const;

 private:
  CudaContext() = default;
  DeviceInfo info_;
  CUstream_st* stream_ = nullptr;
  cublasContext* cublas_ = nullptr;
  cusolverDnContext* cusolver_ = nullptr;
  // Pinned staging, made on the first large copy.
  mutable std::mutex staging_mutex_;
  mutable bool staging_tried_ = false;
  mutable std::array<void*, 2> staging_ = {nullptr, nullptr};
  mutable std::array<CUevent_st*, 2> staged_ = {nullptr, nullptr};
};

// A plain device allocation, freed on destruction.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  // ResourceExhausted naming `what`, the bytes needed and the bytes free
  // when the device has not enough memory.
  static absl::StatusOr<DeviceBuffer> Allocate(const CudaContext& context,
                                               int64_t bytes,
                                               absl::string_view what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }
  int64_t bytes() const { return bytes_; }

 private:
  void* data_ = nullptr;
  int64_t bytes_ = 0;
};

// Copies between host and device memory on the context's stream; they
// return when the copy is done. Large ones go through the context's pinned
// staging (CudaContext::StagedCopy).
absl::Status CopyToDevice(const CudaContext& context, void* device,
                          const void* host, int64_t bytes,
                          absl::string_view what);
absl::Status CopyToHost(const CudaContext& context, void* host,
                        const void* device, int64_t bytes,
                        absl::string_view what);

// Copies device to device, ordered on the context's stream (returns at once).
absl::Status CopyOnDevice(const CudaContext& context, void* to,
                          const void* from, int64_t bytes,
                          absl::string_view what);

}  // namespace quant::cuda

#endif  // KERNELS_CUDA_CUDA_CONTEXT_H_
