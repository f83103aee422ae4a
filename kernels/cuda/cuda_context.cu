#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "kernels/cuda/cuda_context.h"

namespace quant::cuda {
namespace {

std::string GiB(int64_t bytes) {
  return absl::StrFormat("%.2f GiB", static_cast<double>(bytes) / (1 << 30));
}

absl::Status LibraryError(absl::string_view library, int code,
                          bool out_of_memory, absl::string_view what) {
  if (out_of_memory) {
    return absl::ResourceExhaustedError(
        absl::StrCat(library, " ran out of GPU memory while ", what));
  }
  return absl::UnavailableError(
      absl::StrCat(library, " error ", code, " while ", what));
}

// Copies below this go straight from pageable memory; above, through the
// staging buffers of this size each.
constexpr int64_t kStagedCopyFrom = int64_t{8} << 20;
constexpr int64_t kStagingBytes = int64_t{64} << 20;

// memcpy by up to 8 threads, 8 MiB or more each (one thread's memcpy runs
// at ~9 GB/s; eight at ~50 on the GPU machines).
void ParallelCopy(void* to, const void* from, int64_t bytes) {
  const int64_t threads = std::clamp<int64_t>(bytes >> 23, 1, 8);
  if (threads == 1) {
    std::memcpy(to, from, static_cast<size_t>(bytes));
    return;
  }
  const int64_t slice = (bytes + threads - 1) / threads;
  std::vector<std::thread> workers;
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t first = t * slice;
    const int64_t n = std::min(slice, bytes - first);
    if (n <= 0) break;
    workers.emplace_back([=] {
      std::memcpy(static_cast<char*>(to) + first,
                  static_cast<const char*>(from) + first,
                  static_cast<size_t>(n));
    });
  }
  std::memcpy(to, from, static_cast<size_t>(std::min(slice, bytes)));
  for (std::thread& w : workers) w.join();
}

}  // namespace

absl::Status CublasError(int status, absl::string_view what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  return LibraryError("cuBLAS", status, status == CUBLAS_STATUS_ALLOC_FAILED,
                      what);
}

absl::Status CusolverError(int status, absl::string_view what) {
  if (status == CUSOLVER_STATUS_SUCCESS) return absl::OkStatus();
  return LibraryError("cuSOLVER", status,
                      status == CUSOLVER_STATUS_ALLOC_FAILED, what);
}

absl::Status CudaError(int cuda_error, absl::string_view what) {
  const cudaError_t error = static_cast<cudaError_t>(cuda_error);
  if (error == cudaSuccess) return absl::OkStatus();
  const std::string message =
      absl::StrCat("CUDA error while ", what, ": ", cudaGetErrorName(error),
                   " (", cudaGetErrorString(error), ")");
  if (error == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(message);
  }
  return absl::UnavailableError(message);
}

absl::StatusOr<std::vector<DeviceInfo>> ListDevices() {
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    return absl::UnavailableError(
        absl::StrCat("no usable CUDA device: ", cudaGetErrorName(error), " (",
                     cudaGetErrorString(error), ")"));
  }
  if (count == 0) return absl::UnavailableError("no CUDA device is visible");
  std::vector<DeviceInfo> devices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp props;
    if (absl::Status s = CudaError(cudaGetDeviceProperties(&props, i),
                                   absl::StrCat("reading GPU ", i));
        !s.ok()) {
      return s;
    }
    DeviceInfo info;
    info.index = i;
    info.name = props.name;
    info.compute_major = props.major;
    info.compute_minor = props.minor;
    info.multiprocessors = props.multiProcessorCount;
    info.total_bytes = static_cast<int64_t>(props.totalGlobalMem);
    char bus_id[32] = {};
    if (absl::Status s =
            CudaError(cudaDeviceGetPCIBusId(bus_id, sizeof(bus_id), i),
                      absl::StrCat("reading GPU ", i, "'s PCI bus id"));
        !s.ok()) {
      return s;
    }
    info.pci_bus_id = bus_id;
    devices.push_back(std::move(info));
  }
  return devices;
}

std::string DescribeDevice(const DeviceInfo& info) {
  return absl::StrCat(info.name, " (GPU ", info.index, ", sm_",
                      info.compute_major, info.compute_minor, ", ",
                      GiB(info.total_bytes), ")");
}

absl::StatusOr<std::unique_ptr<CudaContext>> CudaContext::Create(int device) {
  absl::StatusOr<std::vector<DeviceInfo>> devices = ListDevices();
  if (!devices.ok()) return devices.status();
  if (device < 0 || device >= static_cast<int>(devices->size())) {
    return absl::UnavailableError(absl::StrCat(
        "GPU ", device, " does not exist (", devices->size(), " visible)"));
  }
  std::unique_ptr<CudaContext> context(new CudaContext());
  context->info_ = (*devices)[device];
  if (absl::Status s = context->Activate(); !s.ok()) return s;
  // The first call that needs the context creates it: a busy device (in
  // exclusive mode elsewhere) or a broken driver shows up here.
  if (absl::Status s =
          CudaError(cudaFree(nullptr), absl::StrCat("opening GPU ", device));
      !s.ok()) {
    return s;
  }
  cudaStream_t stream;
  if (absl::Status s =
          CudaError(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
                    "creating a stream");
      !s.ok()) {
    return s;
  }
  context->stream_ = stream;
  cublasHandle_t cublas;
  if (const cublasStatus_t s = cublasCreate(&cublas);
      s != CUBLAS_STATUS_SUCCESS) {
    return CublasError(s, "creating its handle");
  }
  context->cublas_ = cublas;
  cublasSetStream(cublas, stream);
  // Plain FP32 products unless a call names a tensor-core compute type
  // (cublasGemmEx); the default mode never turns FP32 into TF32 by itself.
  cublasSetMathMode(cublas, CUBLAS_DEFAULT_MATH);
  cusolverDnHandle_t cusolver;
  if (const cusolverStatus_t s = cusolverDnCreate(&cusolver);
      s != CUSOLVER_STATUS_SUCCESS) {
    return CusolverError(s, "creating its handle");
  }
  context->cusolver_ = cusolver;
  cusolverDnSetStream(cusolver, stream);
  int64_t free_bytes = 0, total_bytes = 0;
  if (absl::Status s = context->MemoryInfo(&free_bytes, &total_bytes);
      !s.ok()) {
    return s;
  }
  context->info_.free_bytes = free_bytes;
  return context;
}

CudaContext::~CudaContext() {
  cudaSetDevice(info_.index);
  for (int b = 0; b < 2; ++b) {
    if (staged_[b] != nullptr) cudaEventDestroy(staged_[b]);
    if (staging_[b] != nullptr) cudaFreeHost(staging_[b]);
  }
  if (cusolver_ != nullptr) cusolverDnDestroy(cusolver_);
  if (cublas_ != nullptr) cublasDestroy(cublas_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaContext::Activate() const {
  return CudaError(cudaSetDevice(info_.index),
                   absl::StrCat("selecting GPU ", info_.index));
}

absl::Status CudaContext::Synchronize(absl::string_view what) const {
  return CudaError(cudaStreamSynchronize(stream_), what);
}

absl::Status CudaContext::MemoryInfo(int64_t* free_bytes,
                                     int64_t* total_bytes) const {
  size_t free_now = 0, total = 0;
  if (absl::Status s = CudaError(cudaMemGetInfo(&free_now, &total),
                                 "reading free device memory");
      !s.ok()) {
    return s;
  }
  *free_bytes = static_cast<int64_t>(free_now);
  *total_bytes = static_cast<int64_t>(total);
  return absl::OkStatus();
}

absl::Status CudaContext::StagedCopy(void* to, const void* from, int64_t bytes,
                                     bool to_device, absl::string_view what,
                                     bool* staged) const {
  std::lock_guard<std::mutex> lock(staging_mutex_);
  *staged = false;
  if (!staging_tried_) {
    staging_tried_ = true;
    for (int b = 0; b < 2; ++b) {
      if (cudaMallocHost(&staging_[b], kStagingBytes) != cudaSuccess ||
          cudaEventCreateWithFlags(&staged_[b], cudaEventDisableTiming) !=
              cudaSuccess) {
        cudaGetLastError();  // Not sticky: copies go direct instead.
        if (staging_[b] != nullptr) cudaFreeHost(staging_[b]);
        staging_[b] = nullptr;
        staged_[b] = nullptr;
      }
    }
  }
  if (staging_[0] == nullptr || staging_[1] == nullptr) return absl::OkStatus();
  *staged = true;
  const std::string doing =
      absl::StrCat("copying ", what, to_device ? " to" : " from", " the GPU");
  auto* device = static_cast<char*>(to_device ? to : const_cast<void*>(from));
  const char* host_from = static_cast<const char*>(from);
  char* host_to = static_cast<char*>(to);
  const int64_t chunks = (bytes + kStagingBytes - 1) / kStagingBytes;
  auto size_of = [&](int64_t c) {
    return std::min(kStagingBytes, bytes - c * kStagingBytes);
  };
  // Chunk c's DMA between its staging buffer and the device, then the
  // buffer's event.
  auto enqueue = [&](int64_t c) -> absl::Status {
    const int b = static_cast<int>(c % 2);
    char* on_device = device + c * kStagingBytes;
    RETURN_IF_ERROR(
        CudaError(cudaMemcpyAsync(to_device ? on_device : staging_[b],
                                  to_device ? staging_[b] : on_device,
                                  static_cast<size_t>(size_of(c)),
                                  to_device ? cudaMemcpyHostToDevice
                                            : cudaMemcpyDeviceToHost,
                                  stream_),
                  doing));
    return CudaError(cudaEventRecord(staged_[b], stream_), doing);
  };
  if (to_device) {
    for (int64_t c = 0; c < chunks; ++c) {
      const int b = static_cast<int>(c % 2);
      // The buffer's previous DMA must be done before it is refilled.
      RETURN_IF_ERROR(CudaError(cudaEventSynchronize(staged_[b]), doing));
      ParallelCopy(staging_[b], host_from + c * kStagingBytes, size_of(c));
      RETURN_IF_ERROR(enqueue(c));
    }
    return Synchronize(doing);
  }
  // To the host: chunk c's DMA runs while chunk c - 1 leaves its buffer.
  for (int64_t c = 0; c <= chunks; ++c) {
    if (c < chunks) RETURN_IF_ERROR(enqueue(c));
    if (c > 0) {
      const int b = static_cast<int>((c - 1) % 2);
      RETURN_IF_ERROR(CudaError(cudaEventSynchronize(staged_[b]), doing));
      ParallelCopy(host_to + (c - 1) * kStagingBytes, staging_[b],
                   size_of(c - 1));
    }
  }
  return Synchronize(doing);
}

absl::StatusOr<DeviceBuffer> DeviceBuffer::Allocate(const CudaContext& context,
                                                    int64_t bytes,
                                                    absl::string_view what) {
  DeviceBuffer buffer;
  if (bytes <= 0) return buffer;
  if (absl::Status s = context.Activate(); !s.ok()) return s;
  const cudaError_t error =
      cudaMalloc(&buffer.data_, static_cast<size_t>(bytes));
  if (error == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // Not sticky: clear it.
    int64_t free_bytes = 0, total_bytes = 0;
    (void)context.MemoryInfo(&free_bytes, &total_bytes);
    return absl::ResourceExhaustedError(
        absl::StrCat("GPU out of memory: ", what, " needs ", GiB(bytes), ", ",
                     GiB(free_bytes), " free of ", GiB(total_bytes), " on ",
                     DescribeDevice(context.info())));
  }
  if (absl::Status s = CudaError(error, absl::StrCat("allocating ", what));
      !s.ok()) {
    return s;
  }
  buffer.bytes_ = bytes;
  return buffer;
}

DeviceBuffer::~DeviceBuffer() {
  if (data_ != nullptr) cudaFree(data_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (data_ != nullptr) cudaFree(data_);
    data_ = std::exchange(other.data_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

absl::Status CopyToDevice(const CudaContext& context, void* device,
                          const void* host, int64_t bytes,
                          absl::string_view what) {
  if (bytes == 0) return absl::OkStatus();
  if (bytes >= kStagedCopyFrom) {
    bool staged = false;
    absl::Status s = context.StagedCopy(device, host, bytes, /*to_device=*/true,
                                        what, &staged);
    if (staged || !s.ok()) return s;
  }
  if (absl::Status s =
          CudaError(cudaMemcpyAsync(device, host, static_cast<size_t>(bytes),
                                    cudaMemcpyHostToDevice, context.stream()),
                    absl::StrCat("copying ", what, " to the GPU"));
      !s.ok()) {
    return s;
  }
  return context.Synchronize(absl::StrCat("copying ", what, " to the GPU"));
}

absl::Status CopyToHost(const CudaContext& context, void* host,
                        const void* device, int64_t bytes,
                        absl::string_view what) {
  if (bytes == 0) return absl::OkStatus();
  if (bytes >= kStagedCopyFrom) {
    bool staged = false;
    absl::Status s = context.StagedCopy(host, device, bytes,
                                        /*to_device=*/false, what, &staged);
    if (staged || !s.ok()) return s;
  }
  if (absl::Status s =
          CudaError(cudaMemcpyAsync(host, device, static_cast<size_t>(bytes),
                                    cudaMemcpyDeviceToHost, context.stream()),
                    absl::StrCat("copying ", what, " from the GPU"));
      !s.ok()) {
    return s;
  }
  return context.Synchronize(absl::StrCat("copying ", what, " from the GPU"));
}

absl::Status CopyOnDevice(const CudaContext& context, void* to,
                          const void* from, int64_t bytes,
                          absl::string_view what) {
  if (bytes == 0) return absl::OkStatus();
  return CudaError(cudaMemcpyAsync(to, from, static_cast<size_t>(bytes),
                                   cudaMemcpyDeviceToDevice, context.stream()),
                   absl::StrCat("copying ", what, " on the GPU"));
}

}  // namespace quant::cuda
