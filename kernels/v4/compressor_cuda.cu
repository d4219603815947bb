// formats.md §4.3 on the GPU; mirrors Compressor::ComputeEntry (compressor.cc) slot for slot.
#include <cmath>

#include "kernels/v4/v4_cuda.h"

namespace kv::kernels::v4::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void CompressKernel(int ratio, int dim, int rope_dim, float eps, const float* c,
                               const float* z, const float* bias, const float* norm,
                               const float* rope_cs, float* out) {
  extern __shared__ float y[];  // dim floats
  __shared__ double red[kThreads];
  const int64_t w = blockIdx.x;
  const bool csa = ratio == 4;
  const int iw = csa ? 2 * dim : dim;
  const int n_prev = (csa && w > 0) ? ratio : 0;  // w = 0: -inf gates, slots drop out
  const int off = csa ? dim : 0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) {
    float mx = -INFINITY;
    for (int s = 0; s < n_prev; ++s) {
      const int64_t t = (w - 1) * ratio + s;
      mx = fmaxf(mx, z[t * iw + i] + bias[s * iw + i]);
    }
    for (int s = 0; s < ratio; ++s) {
      const int64_t t = w * ratio + s;
      mx = fmaxf(mx, z[t * iw + off + i] + bias[s * iw + off + i]);
    }
    float sum = 0.0f, acc = 0.0f;
    for (int s = 0; s < n_prev; ++s) {
      const int64_t t = (w - 1) * ratio + s;
      const float e = expf((z[t * iw + i] + bias[s * iw + i]) - mx);
      sum += e;
      acc += e * c[t * iw + i];
    }
    for (int s = 0; s < ratio; ++s) {
      const int64_t t = w * ratio + s;
      const float e = expf((z[t * iw + off + i] + bias[s * iw + off + i]) - mx);
      sum += e;
      acc += e * c[t * iw + off + i];
    }
    y[i] = acc / sum;
  }
  double ss = 0.0;
  for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += static_cast<double>(y[i]) * y[i];
  red[threadIdx.x] = ss;
  __syncthreads();
  for (int h = kThreads / 2; h > 0; h /= 2) {
    if (threadIdx.x < h) red[threadIdx.x] += red[threadIdx.x + h];
    __syncthreads();
  }
  const float inv = static_cast<float>(1.0 / sqrt(red[0] / dim + eps));
  for (int i = threadIdx.x; i < dim; i += blockDim.x) y[i] = norm[i] * (y[i] * inv);
  __syncthreads();
  float* o = out + w * dim;
  const int r0 = dim - rope_dim;
  for (int i = threadIdx.x; i < r0; i += blockDim.x) o[i] = y[i];
  const float* cs = rope_cs + w * rope_dim;
  for (int k = threadIdx.x; k < rope_dim / 2; k += blockDim.x) {
    const float x0 = y[r0 + 2 * k], x1 = y[r0 + 2 * k + 1];
    const float cv = cs[2 * k], sv = cs[2 * k + 1];
    o[r0 + 2 * k] = __fsub_rn(__fmul_rn(x0, cv), __fmul_rn(x1, sv));
    o[r0 + 2 * k + 1] = __fadd_rn(__fmul_rn(x0, sv), __fmul_rn(x1, cv));
  }
}

}  // namespace

cudaError_t CompressEntries(int ratio, int dim, int rope_dim, float eps, const float* c,
                            const float* z, const float* bias, const float* norm,
                            const float* rope_cs, int64_t n_entries, float* out,
                            cudaStream_t stream) {
  if ((ratio != 4 && ratio != 128) || dim < 1 || dim > 4096 || rope_dim < 0 || rope_dim % 2 ||
      rope_dim > dim || !(eps >= 0.0f) || n_entries < 0 || n_entries > (int64_t{1} << 31) - 1) {
    return cudaErrorInvalidValue;
  }
  if (n_entries == 0) return cudaSuccess;
  if (!c || !z || !bias || !norm || !out || (rope_dim > 0 && !rope_cs))
    return cudaErrorInvalidValue;
  CompressKernel<<<static_cast<unsigned>(n_entries), kThreads, dim * sizeof(float), stream>>>(
      ratio, dim, rope_dim, eps, c, z, bias, norm, rope_cs, out);
  return cudaGetLastError();
}

}  // namespace kv::kernels::v4::cuda
