// CUDA absorbed MLA attention over paged KV (see cuda_kernels.h; CPU reference:
// mla_attention.cc). Split-K ("flash decoding"): grid (splits, head groups, queries). A block
// stages kTok dequantised keys in shared memory, shared by its kHeads heads, keeps an
// online-softmax state per head and writes (m, l, acc[512]) partials; a second kernel
// combines the splits. The keys are read once per head group, which is what makes MLA decode
// memory-bound: one 656-byte record serves every head.
#include <climits>
#include <cmath>

#include "kernels/bf16.h"
#include "kernels/cuda_kernels.h"
#include "kernels/fp8.h"

namespace kv::kernels::cuda {
namespace {

constexpr int kHeads = 16;  // heads per block
constexpr int kTok = 32;    // keys staged per step
constexpr int kThreads = 256;
constexpr int kKeyPitch = kMlaKeyDim + 1;  // odd pitch: no bank conflicts across keys
constexpr int kDimsPerThread = kMlaLatentDim / kThreads;  // 2
constexpr size_t kSmemBytes =
    sizeof(float) * (kHeads * kMlaKeyDim + kTok * kKeyPitch + kHeads * kTok + 3 * kHeads);

struct Partials {
  float* acc;  // [num_q][splits][num_heads][512]
  float* m;    // [num_q][splits][num_heads]
  float* l;
};

// Record of logical token `pos`, or nullptr when the block table names a block outside the
// pool.
__device__ const uint8_t* KeyRecord(const PagedKvView& kv, int64_t pos) {
  const int32_t b = kv.block_table[pos / kv.page_tokens];
  if (b < 0 || b >= kv.num_physical_blocks) return nullptr;
  return kv.SlotRecord(static_cast<int64_t>(b) * kv.page_tokens + pos % kv.page_tokens);
}

// Dequantises keys [s0, s0 + cnt) into ks (pitch kKeyPitch). Returns false (block-uniform)
// when a record address is invalid.
__device__ bool StageKeys(const PagedKvView& kv, int64_t s0, int cnt, float* ks, int* bad) {
  const bool fp8 = kv.layout == KvLayout::kMlaFp8_656;
  for (int idx = threadIdx.x; idx < cnt * kMlaKeyDim; idx += kThreads) {
    const int j = idx / kMlaKeyDim, d = idx % kMlaKeyDim;
    const uint8_t* rec = KeyRecord(kv, s0 + j);
    if (rec == nullptr) {
      *bad = 1;
      continue;
    }
    float v;
    uint16_t h;
    if (d < kMlaLatentDim && fp8) {
      float s;
      memcpy(&s, rec + kFp8ScalesOffset + 4 * (d / kMlaTile), 4);
      v = E4m3ToFloat(rec[d]) * s;
    } else {
      const int off = fp8 ? kFp8RopeOffset + 2 * (d - kMlaLatentDim) : 2 * d;
      memcpy(&h, rec + off, 2);
      v = Bf16ToFloat(h);
    }
    ks[j * kKeyPitch + d] = v;
  }
  __syncthreads();
  return *bad == 0;
}

__global__ void __launch_bounds__(kThreads)
    SplitKernel(const float* q, int num_heads, int64_t start_pos, PagedKvView kv, float scale,
                int64_t per_split, Partials part) {
  extern __shared__ float smem[];
  float* qs = smem;                      // [kHeads][576]
  float* ks = qs + kHeads * kMlaKeyDim;  // [kTok][kKeyPitch]
  float* ps = ks + kTok * kKeyPitch;     // [kHeads][kTok]
  float* ms = ps + kHeads * kTok;        // [kHeads] running max
  float* ls = ms + kHeads;               // [kHeads] running sum
  float* as = ls + kHeads;               // [kHeads] rescale factor
  __shared__ int bad;
  const int split = blockIdx.x, h0 = blockIdx.y * kHeads;
  const int64_t qi = blockIdx.z, splits = gridDim.x;
  const int64_t visible = start_pos + qi + 1;
  const int64_t begin = split * per_split;
  const int64_t end = begin + per_split < visible ? begin + per_split : visible;
  const int t = threadIdx.x;
  if (t == 0) bad = 0;
  for (int idx = t; idx < kHeads * kMlaKeyDim; idx += kThreads) {
    const int h = idx / kMlaKeyDim;
    qs[idx] =
        h0 + h < num_heads ? q[(qi * num_heads + h0 + h) * kMlaKeyDim + idx % kMlaKeyDim] : 0.0f;
  }
  if (t < kHeads) {
    ms[t] = -INFINITY;
    ls[t] = 0.0f;
  }
  float acc[kHeads][kDimsPerThread] = {};
  __syncthreads();
  for (int64_t s0 = begin; s0 < end; s0 += kTok) {
    const int cnt = static_cast<int>(end - s0 < kTok ? end - s0 : kTok);
    if (!StageKeys(kv, s0, cnt, ks, &bad)) break;
    for (int pair = t; pair < kHeads * kTok; pair += kThreads) {
      const int h = pair / kTok, j = pair % kTok;
      float s = -INFINITY;
      if (j < cnt) {
        s = 0.0f;
        for (int d = 0; d < kMlaKeyDim; ++d) s += qs[h * kMlaKeyDim + d] * ks[j * kKeyPitch + d];
        s *= scale;
      }
      ps[pair] = s;
    }
    __syncthreads();
    if (t < kHeads) {  // online softmax, one thread per head
      float mx = -INFINITY;
      for (int j = 0; j < cnt; ++j) mx = fmaxf(mx, ps[t * kTok + j]);
      const float m_new = fmaxf(ms[t], mx);
      const float alpha = expf(ms[t] - m_new);
      float sum = 0.0f;
      for (int j = 0; j < kTok; ++j) {
        const float p = j < cnt ? expf(ps[t * kTok + j] - m_new) : 0.0f;
        ps[t * kTok + j] = p;
        sum += p;
      }
      ls[t] = ls[t] * alpha + sum;
      ms[t] = m_new;
      as[t] = alpha;
    }
    __syncthreads();
    for (int h = 0; h < kHeads; ++h) {
      for (int k = 0; k < kDimsPerThread; ++k) {
        const int d = t + k * kThreads;
        float a = acc[h][k] * as[h];
        for (int j = 0; j < cnt; ++j) a += ps[h * kTok + j] * ks[j * kKeyPitch + d];
        acc[h][k] = a;
      }
    }
    __syncthreads();
  }
  const float poison = bad ? NAN : 0.0f;
  for (int h = 0; h < kHeads && h0 + h < num_heads; ++h) {
    const int64_t row = (qi * splits + split) * num_heads + h0 + h;
    for (int k = 0; k < kDimsPerThread; ++k) {
      part.acc[row * kMlaLatentDim + t + k * kThreads] = acc[h][k] + poison;
    }
    if (t == 0) {
      part.m[row] = ms[h] + poison;
      part.l[row] = ls[h] + poison;
    }
  }
}

// grid (num_heads, num_q); 128 threads, 4 dims each.
__global__ void CombineKernel(int num_heads, int splits, Partials part, float* out, float* lse) {
  const int h = blockIdx.x;
  const int64_t qi = blockIdx.y;
  auto row = [&](int s) { return (qi * splits + s) * num_heads + h; };
  float mx = -INFINITY;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, part.m[row(s)]);
  float l = 0.0f;
  for (int s = 0; s < splits; ++s) {
    const float ms = part.m[row(s)];
    l += ms == -INFINITY ? 0.0f : expf(ms - mx) * part.l[row(s)];
  }
  for (int d = threadIdx.x; d < kMlaLatentDim; d += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float ms = part.m[row(s)];
      if (ms != -INFINITY) o += expf(ms - mx) * part.acc[row(s) * kMlaLatentDim + d];
    }
    out[(qi * num_heads + h) * kMlaLatentDim + d] = o / l;
  }
  if (threadIdx.x == 0 && lse != nullptr) lse[qi * num_heads + h] = mx + logf(l);
}

bool ValidArgs(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
               const PagedKvView& kv, float scale, const float* out) {
  const int rb = RecordBytes(kv.layout);
  return num_q >= 0 && num_q <= 65535 && num_heads > 0 && start_pos >= 0 && scale > 0.0f &&
         std::isfinite(scale) && rb > 0 && kv.pool != nullptr && kv.block_table != nullptr &&
         kv.page_tokens > 0 && kv.layer_offset >= 0 &&
         kv.layer_offset + static_cast<int64_t>(kv.page_tokens) * rb <= kv.block_stride &&
         kv.num_physical_blocks > 0 && kv.num_table_blocks * kv.page_tokens >= start_pos + num_q &&
         (num_q == 0 || (q != nullptr && out != nullptr));
}

}  // namespace

cudaError_t MlaPagedAttention(const float* q, int64_t num_q, int num_heads, int64_t start_pos,
                              const PagedKvView& kv, float softmax_scale, float* out, float* lse,
                              cudaStream_t stream) {
  if (!ValidArgs(q, num_q, num_heads, start_pos, kv, softmax_scale, out)) {
    return cudaErrorInvalidValue;
  }
  if (num_q == 0) return cudaSuccess;
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err != cudaSuccess) return err;
  const int groups = (num_heads + kHeads - 1) / kHeads;
  const int64_t max_keys = start_pos + num_q;
  // Enough blocks for ~2 waves, but at least 4 staging steps per split.
  const int64_t want = (2 * sms + groups * num_q - 1) / (groups * num_q);
  int64_t per_split = (max_keys + want - 1) / want;
  per_split = ((per_split + kTok - 1) / kTok) * kTok;
  if (per_split < 4 * kTok) per_split = 4 * kTok;
  const int64_t splits = (max_keys + per_split - 1) / per_split;
  if (splits > INT_MAX || groups > 65535) return cudaErrorInvalidValue;
  const int64_t rows = num_q * splits * num_heads;
  float* ws = nullptr;
  err = cudaMallocAsync(reinterpret_cast<void**>(&ws), sizeof(float) * rows * (kMlaLatentDim + 2),
                        stream);
  if (err != cudaSuccess) return err;
  const Partials part{ws, ws + rows * kMlaLatentDim, ws + rows * (kMlaLatentDim + 1)};
  err = cudaFuncSetAttribute(SplitKernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(kSmemBytes));
  if (err == cudaSuccess) {
    SplitKernel<<<dim3(static_cast<unsigned>(splits), groups, static_cast<unsigned>(num_q)),
                  kThreads, kSmemBytes, stream>>>(q, num_heads, start_pos, kv, softmax_scale,
                                                  per_split, part);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    CombineKernel<<<dim3(num_heads, static_cast<unsigned>(num_q)), 128, 0, stream>>>(
        num_heads, static_cast<int>(splits), part, out, lse);
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(ws, stream);
  return err != cudaSuccess ? err : free_err;
}

}  // namespace kv::kernels::cuda
