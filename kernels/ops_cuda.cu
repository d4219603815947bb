// CUDA RMSNorm and RoPE, and the cuBLAS GEMM wrapper (see cuda_kernels.h).
#include <climits>

#include "kernels/cuda_kernels.h"

namespace kv::kernels::cuda {
namespace {

constexpr int kNormThreads = 256;

// One block per row; the sum of squares is reduced in double like the CPU reference.
__global__ void RmsNormKernel(const float* x, int64_t dim, int64_t x_stride, const float* w,
                              float eps, float* y, int64_t y_stride) {
  __shared__ double partial[kNormThreads];
  const float* xr = x + blockIdx.x * x_stride;
  float* yr = y + blockIdx.x * y_stride;
  double ss = 0;
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) ss += double(xr[j]) * xr[j];
  partial[threadIdx.x] = ss;
  __syncthreads();
  for (int o = kNormThreads / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) partial[threadIdx.x] += partial[threadIdx.x + o];
    __syncthreads();
  }
  const float inv = static_cast<float>(1.0 / sqrt(partial[0] / dim + eps));
  for (int64_t j = threadIdx.x; j < dim; j += blockDim.x) yr[j] = w[j] * (xr[j] * inv);
}

// One thread per (token, head, pair).
__global__ void RopeKernel(const float* cos, const float* sin, int half, int64_t max_positions,
                           const int64_t* positions, int64_t n, int heads, float* x,
                           int64_t token_stride, int64_t head_stride) {
  const int64_t id = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (id >= n * heads * half) return;
  const int i = static_cast<int>(id % half);
  const int h = static_cast<int>((id / half) % heads);
  const int64_t t = id / (static_cast<int64_t>(half) * heads);
  const int64_t p = positions[t];
  if (p < 0 || p >= max_positions) return;
  const float c = cos[p * half + i], s = sin[p * half + i];
  float* v = x + t * token_stride + h * head_stride;
  const float x0 = v[2 * i], x1 = v[2 * i + 1];
  v[2 * i] = x0 * c - x1 * s;
  v[2 * i + 1] = x0 * s + x1 * c;
}

}  // namespace

cudaError_t RmsNorm(const float* x, int64_t rows, int64_t dim, int64_t x_stride,
                    const float* weight, float eps, float* y, int64_t y_stride,
                    cudaStream_t stream) {
  if (rows < 0 || rows > INT_MAX || dim <= 0 || x_stride < dim || y_stride < dim ||
      !(eps >= 0.0f)) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  if (x == nullptr || weight == nullptr || y == nullptr) return cudaErrorInvalidValue;
  RmsNormKernel<<<static_cast<unsigned>(rows), kNormThreads, 0, stream>>>(x, dim, x_stride, weight,
                                                                          eps, y, y_stride);
  return cudaGetLastError();
}

cudaError_t ApplyRope(const float* cos, const float* sin, int rope_dim, int64_t max_positions,
                      const int64_t* positions, int64_t n, int heads, float* x,
                      int64_t token_stride, int64_t head_stride, cudaStream_t stream) {
  if (rope_dim <= 0 || rope_dim % 2 != 0 || n < 0 || heads <= 0 || max_positions <= 0) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (cos == nullptr || sin == nullptr || positions == nullptr || x == nullptr) {
    return cudaErrorInvalidValue;
  }
  const int half = rope_dim / 2;
  const int64_t total = n * heads * half;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  RopeKernel<<<static_cast<unsigned>(blocks), threads, 0, stream>>>(
      cos, sin, half, max_positions, positions, n, heads, x, token_stride, head_stride);
  return cudaGetLastError();
}

cublasStatus_t Sgemm(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t m, int64_t n,
                     int64_t k, float alpha, const float* a, int64_t lda, const float* b,
                     int64_t ldb, float beta, float* c, int64_t ldc) {
  const int64_t a_cols = trans_a ? m : k, b_cols = trans_b ? k : n;
  if (m < 0 || n < 0 || k < 0 || m > INT_MAX || n > INT_MAX || k > INT_MAX ||
      lda < (a_cols > 1 ? a_cols : 1) || ldb < (b_cols > 1 ? b_cols : 1) || ldc < (n > 1 ? n : 1) ||
      lda > INT_MAX || ldb > INT_MAX || ldc > INT_MAX) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  // Row-major C = op(A) op(B) is column-major Cᵀ = op(B)ᵀ op(A)ᵀ: swap the operands.
  return cublasSgemm(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                     trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                     static_cast<int>(k), &alpha, b, static_cast<int>(ldb), a,
                     static_cast<int>(lda), &beta, c, static_cast<int>(ldc));
}

}  // namespace kv::kernels::cuda
