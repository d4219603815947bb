// formats.md §4.2 on the GPU; mirrors SparseAttention (sparse_attention.cc).
#include <cmath>

#include "kernels/v4/v4_cuda.h"

namespace kv::kernels::v4::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxKv = 12000;

__device__ float BlockReduce(float v, float* red, bool is_max) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) {
      const float o = red[threadIdx.x + h];
      red[threadIdx.x] = is_max ? fmaxf(red[threadIdx.x], o) : red[threadIdx.x] + o;
    }
    __syncthreads();
  }
  const float r = red[0];
  __syncthreads();
  return r;
}

// Row s of the kv set: selected entries first, then the window; null for a skipped pick.
__device__ const float* Row(int64_t s, const float* entries, int64_t n_entries,
                            const int32_t* indices, int64_t n_indices, const float* window, int d) {
  if (s < n_indices) {
    const int32_t j = indices[s];
    return (j >= 0 && j < n_entries) ? entries + static_cast<int64_t>(j) * d : nullptr;
  }
  return window + (s - n_indices) * d;
}

__global__ void SparseAttentionKernel(const float* q, const float* sink, int d, int rope_dim,
                                      const float* entries, int64_t n_entries,
                                      const int32_t* indices, int64_t n_indices,
                                      const float* window, int64_t n_window, const float* inv_cs,
                                      float* out) {
  extern __shared__ float sh[];  // [n_kv] probabilities, then [d] output
  __shared__ float red[kThreads];
  const int h = blockIdx.x;
  const int64_t n_kv = n_indices + n_window;
  float* p = sh;
  float* o = sh + n_kv;
  const float* qh = q + static_cast<int64_t>(h) * d;
  const float scale = rsqrtf(static_cast<float>(d));
  float mx = -INFINITY;
  for (int64_t s = threadIdx.x; s < n_kv; s += blockDim.x) {
    const float* row = Row(s, entries, n_entries, indices, n_indices, window, d);
    float l = -INFINITY;
    if (row != nullptr) {
      float dot = 0.0f;
      for (int i = 0; i < d; ++i) dot += qh[i] * row[i];
      l = dot * scale;
    }
    p[s] = l;
    mx = fmaxf(mx, l);
  }
  mx = fmaxf(BlockReduce(mx, red, true), sink[h]);
  float part = 0.0f;
  for (int64_t s = threadIdx.x; s < n_kv; s += blockDim.x) {
    p[s] = expf(p[s] - mx);  // exp(-inf) = 0 for skipped picks
    part += p[s];
  }
  const float den = BlockReduce(part, red, false) + expf(sink[h] - mx);  // sink: denominator only
  for (int i = threadIdx.x; i < d; i += blockDim.x) {
    float acc = 0.0f;
    for (int64_t s = 0; s < n_kv; ++s) {
      if (p[s] == 0.0f) continue;
      acc += p[s] * Row(s, entries, n_entries, indices, n_indices, window, d)[i];
    }
    o[i] = acc / den;
  }
  __syncthreads();
  float* oh = out + static_cast<int64_t>(h) * d;
  const int r0 = d - rope_dim;
  for (int i = threadIdx.x; i < r0; i += blockDim.x) oh[i] = o[i];
  for (int k = threadIdx.x; k < rope_dim / 2; k += blockDim.x) {  // inverse RoPE at -i
    const float x0 = o[r0 + 2 * k], x1 = o[r0 + 2 * k + 1];
    const float c = inv_cs[2 * k], s = inv_cs[2 * k + 1];
    oh[r0 + 2 * k] = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
    oh[r0 + 2 * k + 1] = __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
  }
}

}  // namespace

cudaError_t SparseAttention(const float* q, const float* sink, int n_heads, int head_dim,
                            int rope_dim, const float* entries, int64_t n_entries,
                            const int32_t* indices, int64_t n_indices, const float* window,
                            int64_t n_window, const float* inv_rope_cs, float* out,
                            cudaStream_t stream) {
  if (!q || !sink || !out || n_heads < 1 || head_dim < 1 || head_dim > 4096 || rope_dim < 0 ||
      rope_dim % 2 || rope_dim > head_dim || n_entries < 0 || n_indices < 0 || n_window < 0 ||
      n_indices + n_window > kMaxKv || (n_indices > 0 && (!indices || !entries)) ||
      (n_window > 0 && !window) || (rope_dim > 0 && !inv_rope_cs)) {
    return cudaErrorInvalidValue;
  }
  const size_t shmem = (n_indices + n_window + head_dim) * sizeof(float);
  if (shmem > 48 * 1024) return cudaErrorInvalidValue;
  SparseAttentionKernel<<<n_heads, kThreads, shmem, stream>>>(q, sink, head_dim, rope_dim, entries,
                                                              n_entries, indices, n_indices, window,
                                                              n_window, inv_rope_cs, out);
  return cudaGetLastError();
}

}  // namespace kv::kernels::v4::cuda
