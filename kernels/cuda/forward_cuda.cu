#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cuda/forward_cuda.h"

namespace quant::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ uint16_t ToBf16(float x) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
}

unsigned Blocks(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

__global__ void ToBf16Kernel(const float* x, int64_t n, uint16_t* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < n) out[i] = ToBf16(x[i]);
}

// The sum of `value` over the block, in double, on every thread.
__device__ double BlockSum(double value) {
  __shared__ double partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffff, value, offset);
  }
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  double total = 0;
  for (int w = 0; w < kThreads / 32; ++w) total += partial[w];
  __syncthreads();
  return total;
}

__device__ float BlockMax(float value) {
  __shared__ float partial[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_down_sync(0xffffffff, value, offset));
  }
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = value;
  __syncthreads();
  float largest = -INFINITY;
  for (int w = 0; w < kThreads / 32; ++w) largest = fmaxf(largest, partial[w]);
  __syncthreads();
  return largest;
}

// out = x / sqrt(mean(x^2) + eps) * weight, one block per row, as RmsNorm.
__global__ void RmsNormKernel(const float* x, const float* weight, int64_t dim,
                              double eps, uint16_t* out) {
  const float* in = x + blockIdx.x * dim;
  double sum_squares = 0;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    sum_squares += double{in[i]} * in[i];
  }
  sum_squares = BlockSum(sum_squares);
  const float inverse = static_cast<float>(
      1.0 / sqrt(sum_squares / static_cast<double>(dim) + eps));
  uint16_t* row = out + blockIdx.x * dim;
  for (int64_t i = threadIdx.x; i < dim; i += kThreads) {
    row[i] = ToBf16(weight[i] * (in[i] * inverse));
  }
}

// Adds the bias and, when `rotate`, applies the rotary embedding (element i
// of a head pairs with i + head_dim / 2); one thread per pair.
__global__ void BiasRotateKernel(const float* x, const float* bias, int64_t n,
                                 int64_t width, int64_t head_dim,
                                 int64_t seq_len, const float* cos_table,
                                 const float* sin_table, bool rotate,
                                 uint16_t* out) {
  const int64_t half = head_dim / 2;
  const int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (index >= n * (width / 2)) return;
  const int64_t t = index / (width / 2), p = index % (width / 2);
  const int64_t h = p / half, i = p % half;
  const int64_t first = t * width + h * head_dim + i;
  const int64_t column = h * head_dim + i;
  float a = x[first], b = x[first + half];
  if (bias != nullptr) a += bias[column], b += bias[column + half];
  if (rotate) {
    const int64_t position = t % seq_len;
    const float c = cos_table[position * half + i];
    const float s = sin_table[position * half + i];
    const float ra = a * c - b * s, rb = b * c + a * s;
    a = ra, b = rb;
  }
  out[first] = ToBf16(a);
  out[first + half] = ToBf16(b);
}

// Row r of scores [rows, seq_len] holds query position r % seq_len: softmax
// over keys j <= it, zero past it; as the CPU: float exponentials, a
// double total.
__global__ void CausalSoftmaxKernel(const float* scores, int64_t seq_len,
                                    uint16_t* probs) {
  const float* row = scores + blockIdx.x * seq_len;
  uint16_t* out = probs + blockIdx.x * seq_len;
  const int64_t last = blockIdx.x % seq_len;
  float largest = -INFINITY;
  for (int64_t j = threadIdx.x; j <= last; j += kThreads) {
    largest = fmaxf(largest, row[j]);
  }
  largest = BlockMax(largest);
  double total = 0;
  for (int64_t j = threadIdx.x; j <= last; j += kThreads) {
    total += expf(row[j] - largest);
  }
  total = BlockSum(total);
  const float inverse = static_cast<float>(1.0 / total);
  for (int64_t j = threadIdx.x; j < seq_len; j += kThreads) {
    out[j] = j <= last ? ToBf16(expf(row[j] - largest) * inverse) : 0;
  }
}

// hidden += sublayer (+ bias per column).
__global__ void ResidualKernel(const float* sublayer, const float* bias,
                               int64_t n, int64_t dim, float* hidden) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n * dim) return;
  float add = sublayer[i];
  if (bias != nullptr) add += bias[i % dim];
  hidden[i] += add;
}

__global__ void SiluMulKernel(const float* gate, const float* up, int64_t n,
                              uint16_t* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  out[i] = ToBf16(g / (1.0f + expf(-g)) * up[i]);
}

// y [n, rows] (float) = x [n, cols] (bf16) W^T.
absl::Status Linear(const CudaContext& context, const DeviceLinear& linear,
                    const uint16_t* x, int64_t n, float* y) {
  const float one = 1.0f, zero = 0.0f;
  return CublasError(
      cublasGemmEx(context.cublas(), CUBLAS_OP_T, CUBLAS_OP_N,
                   static_cast<int>(linear.rows), static_cast<int>(n),
                   static_cast<int>(linear.cols), &one,
                   linear.weight.as<void>(), CUDA_R_16BF,
                   static_cast<int>(linear.cols), x, CUDA_R_16BF,
                   static_cast<int>(linear.cols), &zero, y, CUDA_R_32F,
                   static_cast<int>(linear.rows), CUBLAS_COMPUTE_32F,
                   CUBLAS_GEMM_DEFAULT),
      "a linear");
}

absl::StatusOr<DeviceBuffer> UploadFloats(const CudaContext& context,
                                          const std::vector<float>& values,
                                          absl::string_view what) {
  ASSIGN_OR_RETURN(DeviceBuffer buffer,
                   DeviceBuffer::Allocate(
                       context, static_cast<int64_t>(values.size()) * 4, what));
  RETURN_IF_ERROR(CopyToDevice(context, buffer.as<void>(), values.data(),
                               static_cast<int64_t>(values.size()) * 4, what));
  return buffer;
}

absl::StatusOr<DeviceLinear> UploadLinear(const CudaContext& context,
                                          const LinearWeights& linear) {
  DeviceLinear out;
  out.rows = linear.rows, out.cols = linear.cols;
  ASSIGN_OR_RETURN(DeviceBuffer staging,
                   UploadFloats(context, linear.weight, "a linear's weights"));
  ASSIGN_OR_RETURN(
      out.weight, DeviceBuffer::Allocate(context, linear.rows * linear.cols * 2,
                                         "a linear's weights"));
  RETURN_IF_ERROR(SetLinearWeight(context, staging.as<float>(), out));
  if (!linear.bias.empty()) {
    ASSIGN_OR_RETURN(out.bias,
                     UploadFloats(context, linear.bias, "a linear's bias"));
  }
  // The staging buffer is freed on return: let the conversion finish.
  RETURN_IF_ERROR(context.Synchronize("uploading a linear"));
  return out;
}

const float* BiasOrNull(const DeviceLinear& linear) {
  return linear.bias.bytes() > 0 ? linear.bias.as<float>() : nullptr;
}

}  // namespace

absl::Status SetLinearWeight(const CudaContext& context, const float* weight,
                             DeviceLinear& linear) {
  const int64_t n = linear.rows * linear.cols;
  ToBf16Kernel<<<Blocks(n), kThreads, 0, context.stream()>>>(
      weight, n, linear.weight.as<uint16_t>());
  return CudaError(cudaGetLastError(), "rounding a linear to BF16");
}

absl::StatusOr<DeviceBlockWeights> UploadBlock(
    const CudaContext& context, const DecoderBlockWeights& block) {
  RETURN_IF_ERROR(context.Activate());
  DeviceBlockWeights out;
  ASSIGN_OR_RETURN(out.attn_norm,
                   UploadFloats(context, block.attn_norm, "a norm"));
  ASSIGN_OR_RETURN(out.ffn_norm,
                   UploadFloats(context, block.ffn_norm, "a norm"));
  ASSIGN_OR_RETURN(out.q, UploadLinear(context, block.q));
  ASSIGN_OR_RETURN(out.k, UploadLinear(context, block.k));
  ASSIGN_OR_RETURN(out.v, UploadLinear(context, block.v));
  ASSIGN_OR_RETURN(out.o, UploadLinear(context, block.o));
  ASSIGN_OR_RETURN(out.gate, UploadLinear(context, block.gate));
  ASSIGN_OR_RETURN(out.up, UploadLinear(context, block.up));
  ASSIGN_OR_RETURN(out.down, UploadLinear(context, block.down));
  return out;
}

absl::StatusOr<std::unique_ptr<CudaForward>> CudaForward::Create(
    const CudaContext& context, const LlamaForward& forward) {
  RETURN_IF_ERROR(context.Activate());
  std::unique_ptr<CudaForward> f(
      new CudaForward(context, forward.spec(), forward.max_positions()));
  ASSIGN_OR_RETURN(f->cos_, UploadFloats(context, forward.rotary_cos(),
                                         "the rotary tables"));
  ASSIGN_OR_RETURN(f->sin_, UploadFloats(context, forward.rotary_sin(),
                                         "the rotary tables"));
  return f;
}

int64_t CudaForward::ScratchBytes(int64_t sequences, int64_t seq_len) const {
  const int64_t n = sequences * seq_len;
  const int64_t q_width = spec_.num_heads * spec_.head_dim;
  const int64_t kv_width = spec_.num_kv_heads * spec_.head_dim;
  const int64_t ffn = spec_.intermediate_size, dim = spec_.hidden_size;
  const int64_t scores = spec_.num_heads * seq_len * seq_len;
  return n * dim * 2 + n * (q_width + 2 * kv_width) * (4 + 2) + scores * 6 +
         n * q_width * 2 + n * dim * 4 + n * ffn * (4 + 4 + 2);
}

absl::Status CudaForward::Reserve(int64_t sequences, int64_t seq_len) {
  const int64_t n = sequences * seq_len;
  if (n <= reserved_tokens_ && seq_len <= reserved_seq_len_) {
    return absl::OkStatus();
  }
  const int64_t q_width = spec_.num_heads * spec_.head_dim;
  const int64_t kv_width = spec_.num_kv_heads * spec_.head_dim;
  const int64_t ffn = spec_.intermediate_size, dim = spec_.hidden_size;
  const int64_t scores = spec_.num_heads * seq_len * seq_len;
  const CudaContext& c = *context_;
  // Free the old scratch first, so that growing does not need both.
  for (DeviceBuffer* buffer :
       {&normed_, &q_, &k_, &v_, &q16_, &k16_, &v16_, &scores_, &probs_,
        &attended_, &sublayer_, &gate_, &up_, &act_}) {
    *buffer = DeviceBuffer();
  }
  reserved_tokens_ = reserved_seq_len_ = 0;
  const char* what = "the forward's activations";
  ASSIGN_OR_RETURN(normed_, DeviceBuffer::Allocate(c, n * dim * 2, what));
  ASSIGN_OR_RETURN(q_, DeviceBuffer::Allocate(c, n * q_width * 4, what));
  ASSIGN_OR_RETURN(k_, DeviceBuffer::Allocate(c, n * kv_width * 4, what));
  ASSIGN_OR_RETURN(v_, DeviceBuffer::Allocate(c, n * kv_width * 4, what));
  ASSIGN_OR_RETURN(q16_, DeviceBuffer::Allocate(c, n * q_width * 2, what));
  ASSIGN_OR_RETURN(k16_, DeviceBuffer::Allocate(c, n * kv_width * 2, what));
  ASSIGN_OR_RETURN(v16_, DeviceBuffer::Allocate(c, n * kv_width * 2, what));
  ASSIGN_OR_RETURN(scores_, DeviceBuffer::Allocate(c, scores * 4, what));
  ASSIGN_OR_RETURN(probs_, DeviceBuffer::Allocate(c, scores * 2, what));
  ASSIGN_OR_RETURN(attended_, DeviceBuffer::Allocate(c, n * q_width * 2, what));
  ASSIGN_OR_RETURN(sublayer_, DeviceBuffer::Allocate(c, n * dim * 4, what));
  ASSIGN_OR_RETURN(gate_, DeviceBuffer::Allocate(c, n * ffn * 4, what));
  ASSIGN_OR_RETURN(up_, DeviceBuffer::Allocate(c, n * ffn * 4, what));
  ASSIGN_OR_RETURN(act_, DeviceBuffer::Allocate(c, n * ffn * 2, what));
  reserved_tokens_ = n;
  reserved_seq_len_ = seq_len;
  return absl::OkStatus();
}

absl::Status CudaForward::CheckBlock(const DeviceBlockWeights& block,
                                     int64_t sequences, int64_t seq_len) {
  const int64_t dim = spec_.hidden_size;
  const int64_t q_width = spec_.num_heads * spec_.head_dim;
  const int64_t kv_width = spec_.num_kv_heads * spec_.head_dim;
  if (seq_len > max_positions_ || seq_len <= 0 || sequences <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        sequences, " sequences of ", seq_len, " tokens do not fit the ",
        max_positions_, " positions prepared"));
  }
  if (block.q.cols != dim || block.q.rows != q_width ||
      block.k.rows != kv_width || block.v.rows != kv_width ||
      block.o.rows != dim || block.o.cols != q_width ||
      block.down.rows != dim || block.gate.rows != block.down.cols ||
      block.up.rows != block.down.cols || block.attn_norm.bytes() != dim * 4 ||
      block.ffn_norm.bytes() != dim * 4) {
    return absl::InvalidArgumentError(
        "decoder block weights do not match the model spec");
  }
  RETURN_IF_ERROR(context_->Activate());
  return Reserve(sequences, seq_len);
}

absl::Status CudaForward::ForwardBlock(const DeviceBlockWeights& block,
                                       int64_t sequences, int64_t seq_len,
                                       float* hidden,
                                       const DeviceInputObserver& observer) {
  RETURN_IF_ERROR(CheckBlock(block, sequences, seq_len));
  const cudaStream_t stream = context_->stream();
  const int64_t dim = spec_.hidden_size, n = sequences * seq_len;
  const auto sublayer = [&](const DeviceBuffer& norm, BlockInput input,
                            const DeviceLinear& out) -> absl::StatusOr<bool> {
    RmsNormKernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
        hidden, norm.as<float>(), dim, spec_.rms_norm_eps,
        normed_.as<uint16_t>());
    RETURN_IF_ERROR(CudaError(cudaGetLastError(), "a norm"));
    bool go_on = true;
    if (input == BlockInput::kAttention) {
      ASSIGN_OR_RETURN(
          go_on, Attention(block, sequences, seq_len, normed_.as<uint16_t>(),
                           sublayer_.as<float>(), observer));
    } else {
      ASSIGN_OR_RETURN(go_on,
                       Mlp(block, sequences, seq_len, normed_.as<uint16_t>(),
                           sublayer_.as<float>(), observer));
    }
    if (!go_on) return false;
    ResidualKernel<<<Blocks(n * dim), kThreads, 0, stream>>>(
        sublayer_.as<float>(), BiasOrNull(out), n, dim, hidden);
    RETURN_IF_ERROR(CudaError(cudaGetLastError(), "a residual"));
    return true;
  };
  ASSIGN_OR_RETURN(const bool go_on,
                   sublayer(block.attn_norm, BlockInput::kAttention, block.o));
  if (!go_on) return absl::OkStatus();
  return sublayer(block.ffn_norm, BlockInput::kMlp, block.down).status();
}

absl::StatusOr<bool> CudaForward::Attention(
    const DeviceBlockWeights& block, int64_t sequences, int64_t seq_len,
    const uint16_t* normed, float* out, const DeviceInputObserver& observer) {
  RETURN_IF_ERROR(CheckBlock(block, sequences, seq_len));
  const int64_t head_dim = spec_.head_dim;
  const int64_t heads = spec_.num_heads, kv_heads = spec_.num_kv_heads;
  const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim;
  const cudaStream_t stream = context_->stream();
  const int64_t n = sequences * seq_len;
  auto launched = [](absl::string_view what) {
    return CudaError(cudaGetLastError(), what);
  };
  if (observer) {
    ASSIGN_OR_RETURN(const bool go_on, observer(BlockInput::kAttention, normed,
                                                n, spec_.hidden_size));
    if (!go_on) return false;
  }
  RETURN_IF_ERROR(Linear(*context_, block.q, normed, n, q_.as<float>()));
  RETURN_IF_ERROR(Linear(*context_, block.k, normed, n, k_.as<float>()));
  RETURN_IF_ERROR(Linear(*context_, block.v, normed, n, v_.as<float>()));
  for (auto [x, bias, width, rotate, rotated] :
       {std::make_tuple(&q_, BiasOrNull(block.q), q_width, true, &q16_),
        std::make_tuple(&k_, BiasOrNull(block.k), kv_width, true, &k16_),
        std::make_tuple(&v_, BiasOrNull(block.v), kv_width, false, &v16_)}) {
    BiasRotateKernel<<<Blocks(n * width / 2), kThreads, 0, stream>>>(
        x->as<float>(), bias, n, width, head_dim, seq_len, cos_.as<float>(),
        sin_.as<float>(), rotate, rotated->as<uint16_t>());
    RETURN_IF_ERROR(launched("the rotary embedding"));
  }
  const int64_t group = heads / kv_heads;
  const int64_t square = seq_len * seq_len;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  const float one = 1.0f, zero = 0.0f;
  const int t = static_cast<int>(seq_len), d = static_cast<int>(head_dim);
  for (int64_t s = 0; s < sequences; ++s) {
    const uint16_t* q = q16_.as<uint16_t>() + s * seq_len * q_width;
    const uint16_t* k = k16_.as<uint16_t>() + s * seq_len * kv_width;
    const uint16_t* v = v16_.as<uint16_t>() + s * seq_len * kv_width;
    uint16_t* attended = attended_.as<uint16_t>() + s * seq_len * q_width;
    // Each key/value head serves `group` query heads: one strided batch of
    // products per key/value head. Row-major scores [query, key] of head h
    // are column-major K_g^T Q_h.
    for (int64_t g = 0; g < kv_heads; ++g) {
      RETURN_IF_ERROR(CublasError(
          cublasGemmStridedBatchedEx(
              context_->cublas(), CUBLAS_OP_T, CUBLAS_OP_N, t, t, d, &scale,
              k + g * head_dim, CUDA_R_16BF, static_cast<int>(kv_width), 0,
              q + g * group * head_dim, CUDA_R_16BF, static_cast<int>(q_width),
              head_dim, &zero, scores_.as<float>() + g * group * square,
              CUDA_R_32F, t, square, static_cast<int>(group),
              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "attention scores"));
    }
    CausalSoftmaxKernel<<<static_cast<unsigned>(heads * seq_len), kThreads, 0,
                          stream>>>(scores_.as<float>(), seq_len,
                                    probs_.as<uint16_t>());
    RETURN_IF_ERROR(launched("the attention softmax"));
    for (int64_t g = 0; g < kv_heads; ++g) {
      RETURN_IF_ERROR(CublasError(
          cublasGemmStridedBatchedEx(
              context_->cublas(), CUBLAS_OP_N, CUBLAS_OP_N, d, t, t, &one,
              v + g * head_dim, CUDA_R_16BF, static_cast<int>(kv_width), 0,
              probs_.as<uint16_t>() + g * group * square, CUDA_R_16BF, t,
              square, &zero, attended + g * group * head_dim, CUDA_R_16BF,
              static_cast<int>(q_width), head_dim, static_cast<int>(group),
              CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "attention values"));
    }
  }
  if (observer) {
    ASSIGN_OR_RETURN(const bool go_on,
                     observer(BlockInput::kAttentionOutput,
                              attended_.as<uint16_t>(), n, q_width));
    if (!go_on) return false;
  }
  RETURN_IF_ERROR(Linear(*context_, block.o, attended_.as<uint16_t>(), n, out));
  return true;
}

absl::StatusOr<bool> CudaForward::Mlp(const DeviceBlockWeights& block,
                                      int64_t sequences, int64_t seq_len,
                                      const uint16_t* normed, float* out,
                                      const DeviceInputObserver& observer) {
  RETURN_IF_ERROR(CheckBlock(block, sequences, seq_len));
  const int64_t n = sequences * seq_len, ffn = block.gate.rows;
  if (observer) {
    ASSIGN_OR_RETURN(const bool go_on,
                     observer(BlockInput::kMlp, normed, n, spec_.hidden_size));
    if (!go_on) return false;
  }
  RETURN_IF_ERROR(Linear(*context_, block.gate, normed, n, gate_.as<float>()));
  RETURN_IF_ERROR(Linear(*context_, block.up, normed, n, up_.as<float>()));
  SiluMulKernel<<<Blocks(n * ffn), kThreads, 0, context_->stream()>>>(
      gate_.as<float>(), up_.as<float>(), n * ffn, act_.as<uint16_t>());
  RETURN_IF_ERROR(CudaError(cudaGetLastError(), "SwiGLU"));
  if (observer) {
    ASSIGN_OR_RETURN(const bool go_on, observer(BlockInput::kMlpOutput,
                                                act_.as<uint16_t>(), n, ffn));
    if (!go_on) return false;
  }
  RETURN_IF_ERROR(Linear(*context_, block.down, act_.as<uint16_t>(), n, out));
  return true;
}

absl::Status ApplyLinearOnDevice(const CudaContext& context,
                                 const DeviceLinear& linear, const uint16_t* x,
                                 int64_t n, float* y) {
  RETURN_IF_ERROR(context.Activate());
  return Linear(context, linear, x, n, y);
}

}  // namespace quant::cuda
