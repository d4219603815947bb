// CUDA absorbed MLA attention over paged KV (see cuda_kernels.h; CPU reference:
// mla_attention.cc). Split-K ("flash decoding"): grid (head groups, splits, queries), the head
// group fastest so that the blocks reading the same keys run together and share them in L2.
// All heads share one latent KV record per token (MLA), so a block reads each 656-byte
// record of its split once, dequantises it into shared memory and applies it to all kHeads
// heads of its group; with num_heads <= kHeads the KV is read from memory once per step.
//
// One block = kHeads (16) heads x one split, kThreads (512) threads, one block per SM (155 KB
// of shared memory, 128 registers). Per tile of kTok (32) keys (kernels/GPU_NOTES.md has the
// measurements behind these choices):
//   staging  16-byte coalesced loads of the records into registers one tile ahead (the
//            loads of tile i+1 are in flight while tile i is computed), then dequantised
//            (hardware e4m3x2 -> f16x2 conversion, times the tile scale) into shared memory
//            as f32 rows of pitch kPitch (580: conflict-free float4 rows);
//   scores   S[16 heads][32 keys] = Q K^T: warp w sums dims [36w, 36w + 36), each lane a
//            4x4 register tile (float4 loads, 64 FMAs per 8 loads), then the 16 warp
//            partials are added in shared memory;
//   softmax  one warp per head (a lane per key), shuffle reductions, the running max and
//            sum kept in registers;
//   values   O[16][512] += P V: each thread owns 4 heads x 4 dims.
// Records that are not 16-byte aligned take a byte-assembling load path. A second kernel
// combines the (m, l, acc[512]) partials of the splits. Arithmetic is f32 FMA throughout
// (the CPU reference's tolerance is that of f32 dot products); with 16 or more heads this
// makes the kernel bound by f32 arithmetic, not by reading the KV (GPU_NOTES.md).
#include <climits>
#include <cmath>

#include "kernels/bf16.h"
#include "kernels/cuda_kernels.h"
#include "kernels/fp8.h"

namespace kv::kernels::cuda {
namespace {

constexpr int kHeads = 16;     // heads per block
constexpr int kTok = 32;       // keys per tile
constexpr int kThreads = 512;  // 16 warps (256 measured 10% slower, GPU_NOTES.md)
constexpr int kWarps = kThreads / 32;
constexpr int kPitch = kMlaKeyDim + 4;               // 580 floats: float4 rows, no conflicts
constexpr int kSpPitch = kTok + 8;                   // 40: conflict-free score stores
constexpr int kPtPitch = kHeads + 4;                 // 20: float4 rows, 4-way P stores
constexpr int kDimsPerWarp = kMlaKeyDim / kWarps;    // 36 score dims per warp
constexpr int kVecPerWarp = kDimsPerWarp / 4;        // 9 float4 steps
constexpr int kValueDimThreads = kMlaLatentDim / 4;  // P V: 4 dims per thread
constexpr int kValueHeads = kHeads * kValueDimThreads / kThreads;  // heads per thread
constexpr int kSoftLanes = kThreads / kHeads;                      // softmax threads per head
constexpr int kSoftKeys = kTok / kSoftLanes;                       // keys per softmax thread
static_assert(kValueHeads % 4 == 0 && kSoftLanes <= 32 && kTok % kSoftLanes == 0, "tiling");
static_assert(kValueDimThreads * 4 == kMlaLatentDim, "P V tiling must cover the latent");
static_assert(kWarps * kDimsPerWarp == kMlaKeyDim && kDimsPerWarp % 4 == 0, "score split");
// Shared-memory layout (float offsets): the kernel's pointers and the launch size both come
// from these, so they cannot disagree.
constexpr int kQsOff = 0;                                    // q       [kHeads][kPitch]
constexpr int kKsOff = kQsOff + kHeads * kPitch;             // keys    [kTok][kPitch]
constexpr int kSpOff = kKsOff + kTok * kPitch;               // scores  [kWarps][kHeads][kSpPitch]
constexpr int kPtOff = kSpOff + kWarps * kHeads * kSpPitch;  // P^T     [kTok][kPtPitch]
constexpr int kAsOff = kPtOff + kTok * kPtPitch;             // rescale [kHeads]
constexpr int kSmemFloats = kAsOff + kHeads;
static_assert(kKsOff % 4 == 0 && kSpOff % 4 == 0 && kPtOff % 4 == 0 && kAsOff % 4 == 0,
              "float4 alignment of the shared arrays");
constexpr size_t kSmemBytes = sizeof(float) * kSmemFloats;

struct Partials {
  float* acc;  // [num_q][splits][num_heads][512]
  float* m;    // [num_q][splits][num_heads]
  float* l;
};

// 16-byte chunks of a record that the kernel reads: fp8 = 32 code chunks + 8 rope chunks
// (the scales are read beside each code chunk); bf16 = 64 latent + 8 rope chunks.
template <KvLayout L>
constexpr int kChunks = L == KvLayout::kMlaFp8_656 ? 40 : 72;
template <KvLayout L>
constexpr int kChunksPerThread = (kTok * kChunks<L> + kThreads - 1) / kThreads;

// Record of logical token `pos`, or nullptr when the block table names a block outside the
// pool.
__device__ const uint8_t* KeyRecord(const PagedKvView& kv, int64_t pos) {
  const int32_t b = kv.block_table[pos / kv.page_tokens];
  if (b < 0 || b >= kv.num_physical_blocks) return nullptr;
  return kv.SlotRecord(static_cast<int64_t>(b) * kv.page_tokens + pos % kv.page_tokens);
}

// Two e4m3 codes (low byte first) -> two floats, exact.
__device__ __forceinline__ float2 E4m3x2ToFloat2(uint32_t two) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  uint32_t h2;
  asm("cvt.rn.f16x2.e4m3x2 %0, %1;" : "=r"(h2) : "h"(static_cast<uint16_t>(two)));
  float lo, hi;
  asm("cvt.f32.f16 %0, %1;" : "=f"(lo) : "h"(static_cast<uint16_t>(h2 & 0xFFFFu)));
  asm("cvt.f32.f16 %0, %1;" : "=f"(hi) : "h"(static_cast<uint16_t>(h2 >> 16)));
  return make_float2(lo, hi);
#else
  return make_float2(E4m3ToFloat(static_cast<uint8_t>(two)),
                     E4m3ToFloat(static_cast<uint8_t>(two >> 8)));
#endif
}

// One tile's raw chunks, loaded one tile ahead of their use.
template <KvLayout L>
struct RawTile {
  uint4 v[kChunksPerThread<L>];
  float scale[kChunksPerThread<L>];  // fp8 code chunks: the tile scale
};

// Loads the chunks of keys [s0, s0 + cnt) this thread stages. Sets *bad for an invalid
// block-table entry. kAligned: every record is 16-byte aligned (checked on the host), so
// the chunks are single 16-byte loads; otherwise they are assembled from bytes.
template <KvLayout L, bool kAligned>
__device__ __forceinline__ void LoadTile(const PagedKvView& kv, int64_t s0, int cnt,
                                         RawTile<L>& raw, bool* bad) {
#pragma unroll
  for (int k = 0; k < kChunksPerThread<L>; ++k) {
    const int idx = threadIdx.x + k * kThreads;
    const int j = idx / kChunks<L>, c = idx % kChunks<L>;
    raw.v[k] = make_uint4(0, 0, 0, 0);
    raw.scale[k] = 0.0f;
    if (j >= cnt) continue;
    const uint8_t* rec = KeyRecord(kv, s0 + j);
    if (rec == nullptr) {
      *bad = true;
      continue;
    }
    const int off = L == KvLayout::kMlaFp8_656 && c >= 32 ? kFp8RopeOffset + 16 * (c - 32) : 16 * c;
    const bool scaled = L == KvLayout::kMlaFp8_656 && c < 32;
    if (kAligned) {
      raw.v[k] = __ldg(reinterpret_cast<const uint4*>(rec + off));
      if (scaled)
        raw.scale[k] = __ldg(reinterpret_cast<const float*>(rec + kFp8ScalesOffset) + c / 8);
    } else {
      memcpy(&raw.v[k], rec + off, 16);
      if (scaled) memcpy(&raw.scale[k], rec + kFp8ScalesOffset + 4 * (c / 8), 4);
    }
  }
}

__device__ __forceinline__ float2 Bf16x2ToFloat2(uint32_t two) {
  return make_float2(__uint_as_float(two << 16), __uint_as_float(two & 0xFFFF0000u));
}

// Dequantises the loaded chunks into ks rows (keys past cnt are zero rows).
template <KvLayout L>
__device__ __forceinline__ void StoreTile(const RawTile<L>& raw, float* ks) {
#pragma unroll
  for (int k = 0; k < kChunksPerThread<L>; ++k) {
    const int idx = threadIdx.x + k * kThreads;
    if (kTok * kChunks<L> % kThreads != 0 && idx >= kTok * kChunks<L>) continue;
    const int j = idx / kChunks<L>, c = idx % kChunks<L>;
    const uint32_t w[4] = {raw.v[k].x, raw.v[k].y, raw.v[k].z, raw.v[k].w};
    if (L == KvLayout::kMlaFp8_656 && c < 32) {  // 16 codes -> dims [16c, 16c + 16)
      float4* dst = reinterpret_cast<float4*>(ks + j * kPitch + 16 * c);
      const float s = raw.scale[k];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float2 a = E4m3x2ToFloat2(w[i]), b = E4m3x2ToFloat2(w[i] >> 16);
        dst[i] = make_float4(a.x * s, a.y * s, b.x * s, b.y * s);
      }
    } else {  // 8 bf16 -> 8 dims
      const int d0 = L == KvLayout::kMlaFp8_656 ? kMlaLatentDim + 8 * (c - 32) : 8 * c;
      float4* dst = reinterpret_cast<float4*>(ks + j * kPitch + d0);
      const float2 a = Bf16x2ToFloat2(w[0]), b = Bf16x2ToFloat2(w[1]);
      const float2 e = Bf16x2ToFloat2(w[2]), f = Bf16x2ToFloat2(w[3]);
      dst[0] = make_float4(a.x, a.y, b.x, b.y);
      dst[1] = make_float4(e.x, e.y, f.x, f.y);
    }
  }
}

template <KvLayout L, bool kAligned>
__global__ void __launch_bounds__(kThreads, 1)
    SplitKernel(const float* q, int num_heads, int64_t start_pos, PagedKvView kv, float scale,
                int64_t per_split, Partials part) {
  extern __shared__ float4 smem4[];
  float* const base = reinterpret_cast<float*>(smem4);
  float* qs = base + kQsOff;
  float* ks = base + kKsOff;
  float* sp = base + kSpOff;
  float* pt = base + kPtOff;
  float* as = base + kAsOff;
  const int h0 = blockIdx.x * kHeads, split = blockIdx.y, splits = gridDim.y;
  const int64_t qi = blockIdx.z;
  const int64_t visible = start_pos + qi + 1;
  const int64_t begin = split * per_split;
  const int64_t end = begin + per_split < visible ? begin + per_split : visible;
  const int t = threadIdx.x, warp = t / 32, lane = t % 32;
  for (int idx = t; idx < kHeads * kMlaKeyDim; idx += kThreads) {
    const int h = idx / kMlaKeyDim, d = idx % kMlaKeyDim;
    qs[h * kPitch + d] =
        h0 + h < num_heads ? q[(qi * num_heads + h0 + h) * kMlaKeyDim + d] * scale : 0.0f;
  }
  // Score tile of this lane: heads hg + 4a, keys tg + 8b (a, b < 4): conflict-free rows.
  const int hg = lane / 8, tg = lane % 8;
  // Softmax: head t / kSoftLanes, keys t % kSoftLanes + r * kSoftLanes; the running max and
  // sum of that head live in all kSoftLanes threads.
  const int sh = t / kSoftLanes, sj = t % kSoftLanes;
  float m_run = -INFINITY, l_run = 0.0f;
  // Values: heads vh0 .. vh0 + kValueHeads - 1, dims vd .. vd + 3.
  const int vh0 = (t / kValueDimThreads) * kValueHeads, vd = 4 * (t % kValueDimThreads);
  float acc[kValueHeads][4] = {};
  bool bad = false, any_bad = false;  // any_bad: block-uniform (a vote)
  RawTile<L> raw;
  if (begin < end) {
    LoadTile<L, kAligned>(kv, begin, static_cast<int>(end - begin < kTok ? end - begin : kTok), raw,
                          &bad);
  }
  for (int64_t s0 = begin; s0 < end; s0 += kTok) {
    const int cnt = static_cast<int>(end - s0 < kTok ? end - s0 : kTok);
    __syncthreads();  // the previous tile's readers of ks are done
    StoreTile<L>(raw, ks);
    if (__syncthreads_or(bad)) {
      any_bad = true;
      break;
    }
    if (s0 + kTok < end) {
      const int64_t n1 = end - (s0 + kTok);
      LoadTile<L, kAligned>(kv, s0 + kTok, static_cast<int>(n1 < kTok ? n1 : kTok), raw, &bad);
    }
    // Scores: this warp's kDimsPerWarp dims.
    float s[4][4] = {};
    const float* qw = qs + warp * kDimsPerWarp;
    const float* kw = ks + warp * kDimsPerWarp;
#pragma unroll 3
    for (int v = 0; v < kVecPerWarp; ++v) {
      float4 qa[4], kb[4];
#pragma unroll
      for (int a = 0; a < 4; ++a) {
        qa[a] = *reinterpret_cast<const float4*>(qw + (hg + 4 * a) * kPitch + 4 * v);
        kb[a] = *reinterpret_cast<const float4*>(kw + (tg + 8 * a) * kPitch + 4 * v);
      }
#pragma unroll
      for (int a = 0; a < 4; ++a) {
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          s[a][b] = fmaf(qa[a].x, kb[b].x, s[a][b]);
          s[a][b] = fmaf(qa[a].y, kb[b].y, s[a][b]);
          s[a][b] = fmaf(qa[a].z, kb[b].z, s[a][b]);
          s[a][b] = fmaf(qa[a].w, kb[b].w, s[a][b]);
        }
      }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
#pragma unroll
      for (int b = 0; b < 4; ++b)
        sp[(warp * kHeads + hg + 4 * a) * kSpPitch + tg + 8 * b] = s[a][b];
    }
    __syncthreads();
    {  // Softmax over the tile's keys for head sh: keys sj + r * kSoftLanes.
      float x[kSoftKeys];
#pragma unroll
      for (int r = 0; r < kSoftKeys; ++r) {
        x[r] = 0.0f;
#pragma unroll
        for (int w = 0; w < kWarps; ++w)
          x[r] += sp[(w * kHeads + sh) * kSpPitch + sj + r * kSoftLanes];
      }
      float mx = -INFINITY;
#pragma unroll
      for (int r = 0; r < kSoftKeys; ++r) mx = sj + r * kSoftLanes < cnt ? fmaxf(mx, x[r]) : mx;
#pragma unroll
      for (int o = kSoftLanes / 2; o > 0; o >>= 1) {
        mx = fmaxf(mx, __shfl_xor_sync(0xFFFFFFFFu, mx, o));
      }
      const float m_new = fmaxf(m_run, mx);
      const float alpha = m_run == -INFINITY ? 0.0f : expf(m_run - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int r = 0; r < kSoftKeys; ++r) {
        const int j = sj + r * kSoftLanes;
        const float p = j < cnt ? expf(x[r] - m_new) : 0.0f;
        sum += p;
        pt[j * kPtPitch + sh] = p;
      }
#pragma unroll
      for (int o = kSoftLanes / 2; o > 0; o >>= 1) sum += __shfl_xor_sync(0xFFFFFFFFu, sum, o);
      l_run = l_run * alpha + sum;
      m_run = m_new;
      if (sj == 0) as[sh] = alpha;
    }
    __syncthreads();
    {  // O = O * alpha + P V over this thread's kValueHeads heads x 4 dims.
      float al[kValueHeads];
#pragma unroll
      for (int h = 0; h < kValueHeads; h += 4) {
        const float4 a4 = *reinterpret_cast<const float4*>(as + vh0 + h);
        al[h] = a4.x;
        al[h + 1] = a4.y;
        al[h + 2] = a4.z;
        al[h + 3] = a4.w;
      }
#pragma unroll
      for (int h = 0; h < kValueHeads; ++h) {
#pragma unroll
        for (int k = 0; k < 4; ++k) acc[h][k] *= al[h];
      }
#pragma unroll 4
      for (int j = 0; j < cnt; ++j) {
        float p[kValueHeads];
#pragma unroll
        for (int h = 0; h < kValueHeads; h += 4) {
          const float4 p4 = *reinterpret_cast<const float4*>(pt + j * kPtPitch + vh0 + h);
          p[h] = p4.x;
          p[h + 1] = p4.y;
          p[h + 2] = p4.z;
          p[h + 3] = p4.w;
        }
        const float4 v = *reinterpret_cast<const float4*>(ks + j * kPitch + vd);
#pragma unroll
        for (int h = 0; h < kValueHeads; ++h) {
          acc[h][0] = fmaf(p[h], v.x, acc[h][0]);
          acc[h][1] = fmaf(p[h], v.y, acc[h][1]);
          acc[h][2] = fmaf(p[h], v.z, acc[h][2]);
          acc[h][3] = fmaf(p[h], v.w, acc[h][3]);
        }
      }
    }
  }
  const float poison = any_bad ? NAN : 0.0f;
  const int64_t row0 = (qi * splits + split) * num_heads + h0;
#pragma unroll
  for (int h = 0; h < kValueHeads; ++h) {
    if (h0 + vh0 + h >= num_heads) break;
    float4* dst = reinterpret_cast<float4*>(part.acc + (row0 + vh0 + h) * kMlaLatentDim + vd);
    *dst =
        make_float4(acc[h][0] + poison, acc[h][1] + poison, acc[h][2] + poison, acc[h][3] + poison);
  }
  if (sj == 0 && h0 + sh < num_heads) {
    part.m[row0 + sh] = m_run + poison;
    part.l[row0 + sh] = l_run + poison;
  }
}

// Combine: grid (num_heads, num_q), kCombineThreads threads. The weights exp(m_s - max) of
// all splits are computed in parallel into shared memory (splits <= kMaxSplits), then four
// groups of 128 threads (one float4 of the 512 dims each) sum disjoint quarters of the
// splits, so the partial loads are independent and many are in flight.
constexpr int kCombineThreads = 512;
constexpr int kMaxSplits = 4096;

__device__ float BlockReduce(float v, bool is_max, float* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const float x = __shfl_xor_sync(0xFFFFFFFFu, v, o);
    v = is_max ? fmaxf(v, x) : v + x;
  }
  __syncthreads();  // red is reused between calls
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
  __syncthreads();
  v = red[0];
  for (int w = 1; w < kCombineThreads / 32; ++w) v = is_max ? fmaxf(v, red[w]) : v + red[w];
  return v;
}

__global__ void __launch_bounds__(kCombineThreads)
    CombineKernel(int num_heads, int splits, Partials part, float* out, float* lse) {
  __shared__ float cw[kMaxSplits];
  __shared__ float red[kCombineThreads / 32];
  __shared__ float4 gacc[kCombineThreads / 128 - 1][128];
  const int h = blockIdx.x, t = threadIdx.x;
  const int64_t qi = blockIdx.y;
  auto row = [&](int s) { return (qi * splits + s) * num_heads + h; };
  float mx = -INFINITY;
  for (int s = t; s < splits; s += kCombineThreads) mx = fmaxf(mx, part.m[row(s)]);
  mx = BlockReduce(mx, true, red);
  float l = 0.0f;
  for (int s = t; s < splits; s += kCombineThreads) {
    const float ms = part.m[row(s)];
    const float w = ms == -INFINITY ? 0.0f : expf(ms - mx);  // empty split: weight 0
    cw[s] = w;
    l += w * part.l[row(s)];
  }
  l = BlockReduce(l, false, red);  // its barriers also publish cw
  const int g = t / 128, d4 = t % 128;
  float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll 4
  for (int s = g; s < splits; s += kCombineThreads / 128) {
    const float w = cw[s];
    if (w == 0.0f) continue;  // NaN weights (poisoned partials) are kept
    const float4 a = reinterpret_cast<const float4*>(part.acc + row(s) * kMlaLatentDim)[d4];
    o.x = fmaf(w, a.x, o.x);
    o.y = fmaf(w, a.y, o.y);
    o.z = fmaf(w, a.z, o.z);
    o.w = fmaf(w, a.w, o.w);
  }
  if (g > 0) gacc[g - 1][d4] = o;
  __syncthreads();
  if (g == 0) {
    for (int k = 0; k < kCombineThreads / 128 - 1; ++k) {
      o.x += gacc[k][d4].x;
      o.y += gacc[k][d4].y;
      o.z += gacc[k][d4].z;
      o.w += gacc[k][d4].w;
    }
    float* dst = out + (qi * num_heads + h) * kMlaLatentDim + 4 * d4;  // any alignment
    dst[0] = o.x / l;
    dst[1] = o.y / l;
    dst[2] = o.z / l;
    dst[3] = o.w / l;
    if (t == 0 && lse != nullptr) lse[qi * num_heads + h] = mx + logf(l);
  }
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
  const bool fp8 = kv.layout == KvLayout::kMlaFp8_656;
  const bool aligned = reinterpret_cast<uintptr_t>(kv.pool) % 16 == 0 &&
                       kv.block_stride % 16 == 0 && kv.layer_offset % 16 == 0;
  const void* kernel =
      fp8 ? (aligned ? reinterpret_cast<const void*>(SplitKernel<KvLayout::kMlaFp8_656, true>)
                     : reinterpret_cast<const void*>(SplitKernel<KvLayout::kMlaFp8_656, false>))
          : (aligned ? reinterpret_cast<const void*>(SplitKernel<KvLayout::kMlaBf16_1152, true>)
                     : reinterpret_cast<const void*>(SplitKernel<KvLayout::kMlaBf16_1152, false>));
  err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(kSmemBytes));
  int per_sm = 0;
  if (err == cudaSuccess) {
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, kSmemBytes);
  }
  if (err != cudaSuccess) return err;
  if (per_sm < 1) per_sm = 1;
  // One full wave of blocks (the splits are equal, so more waves only add partials), at
  // least two tiles per split.
  const int64_t max_keys = start_pos + num_q;
  int64_t want = (int64_t{sms} * per_sm) / (groups * num_q);
  if (want < 1) want = 1;
  if (want > kMaxSplits) want = kMaxSplits;
  int64_t per_split = (max_keys + want - 1) / want;
  per_split = ((per_split + kTok - 1) / kTok) * kTok;
  if (per_split < 2 * kTok) per_split = 2 * kTok;
  const int64_t splits = (max_keys + per_split - 1) / per_split;
  if (splits > kMaxSplits || groups > INT_MAX) return cudaErrorInvalidValue;
  const int64_t rows = num_q * splits * num_heads;
  float* ws = nullptr;
  err = cudaMallocAsync(reinterpret_cast<void**>(&ws), sizeof(float) * rows * (kMlaLatentDim + 2),
                        stream);
  if (err != cudaSuccess) return err;
  Partials part{ws, ws + rows * kMlaLatentDim, ws + rows * (kMlaLatentDim + 1)};
  void* args[] = {const_cast<float**>(&q), &num_heads, &start_pos, const_cast<PagedKvView*>(&kv),
                  &softmax_scale,          &per_split, &part};
  err = cudaLaunchKernel(kernel,
                         dim3(static_cast<unsigned>(groups), static_cast<unsigned>(splits),
                              static_cast<unsigned>(num_q)),
                         dim3(kThreads), args, kSmemBytes, stream);
  if (err == cudaSuccess) {
    CombineKernel<<<dim3(num_heads, static_cast<unsigned>(num_q)), kCombineThreads, 0, stream>>>(
        num_heads, static_cast<int>(splits), part, out, lse);
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(ws, stream);
  return err != cudaSuccess ? err : free_err;
}

}  // namespace kv::kernels::cuda
