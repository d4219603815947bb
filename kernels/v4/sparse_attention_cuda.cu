// formats.md §4.2 on the GPU; mirrors SparseAttention (sparse_attention.cc).
//
// The picked rows are shared by every head of a query (the indexer picks per token), so a
// block takes a group of kG heads and streams the query's rows through shared memory in
// tiles of kT rows (cp.async, two buffers: the next tile loads while this one is used):
// every row is read from memory once per head group, not once per head. Scores are 4x4
// register tiles (heads x rows) over a slice of the dims, reduced with shuffles; an online
// softmax per head (one warp per two heads); P V with 4 heads x 4·kVec dims per thread.
// Rows of a query are split over blocks so that queries x head groups x splits fill the
// SMs; with more than one split, partials (unnormalised o, running max, sum) go to a
// stream-ordered workspace and a combine kernel adds the sink, normalises and applies the
// inverse RoPE; with one split the main kernel does that itself.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/v4/v4_cuda.h"

namespace kv::kernels::v4::cuda {
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kWarps = kThreads / 32;
constexpr int kG = 16;           // heads per block
constexpr int kT = 16;           // rows per tile
constexpr int kBlocksPerSm = 2;  // ~101 KB of shared memory and <= 128 registers each
constexpr int kPPitch = kG + 4;  // P^T rows: float4-aligned, fewer conflicts on the stores
constexpr int kCombineThreads = 512;
constexpr int kMinTilesPerSplit = 2;  // the second tile loads while the first is used
constexpr int kMaxSplits = 1024;
static_assert(kWarps * 2 == kG && kT == 16,
              "softmax: one warp per two heads, a half-warp per head");
static_assert((kG / 4) * (kT / 4) * 16 == kThreads, "scores: 16 threads per 4x4 tile");

template <int D>
struct Smem {                                   // float offsets into the dynamic shared memory
  static constexpr int kK = 0;                  // [2][kT][D] tiles
  static constexpr int kQ = kK + 2 * kT * D;    // [kG][D]
  static constexpr int kS = kQ + kG * D;        // [kG][kT] scores
  static constexpr int kP = kS + kG * kT;       // [kT][kPPitch] probabilities, transposed
  static constexpr int kA = kP + kT * kPPitch;  // [kG] rescale factors
  static constexpr int kM = kA + kG;            // [kG] running max
  static constexpr int kL = kM + kG;            // [kG] running sum
  static constexpr int kV = kL + kG;            // [2][kT] row valid flags (ints)
  static constexpr int kEnd = kV + 2 * kT;
  static constexpr size_t kBytes = sizeof(float) * kEnd;
  static_assert(kQ % 4 == 0 && kS % 4 == 0 && kP % 4 == 0 && kA % 4 == 0, "float4 alignment");
};

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, int src_bytes) {
  const unsigned s = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem),
               "r"(src_bytes));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n"); }
__device__ __forceinline__ void CpAsyncWaitAll() {
  asm volatile("cp.async.wait_group 0;\n" ::: "memory");
}

struct Query {  // one query's rows: picks first, then the window
  const float* entries;
  int64_t n_entries;
  const int32_t* idx;
  int64_t n_idx;
  const float* window;
  int64_t n_kv;
};

// Row r of the query, or null for a skipped pick / a row past the end.
template <int D>
__device__ __forceinline__ const float* RowPtr(const Query& qr, int64_t r) {
  if (r >= qr.n_kv) return nullptr;
  if (r < qr.n_idx) {
    const int32_t j = qr.idx[r];
    return (j >= 0 && j < qr.n_entries) ? qr.entries + static_cast<int64_t>(j) * D : nullptr;
  }
  return qr.window + (r - qr.n_idx) * D;
}

// Tile of rows [r0, r0 + kT) into k (zero-filled where a row is missing) and its flags.
template <int D>
__device__ __forceinline__ void LoadTile(const Query& qr, int64_t r0, float* k, int* valid) {
  constexpr int kVecPerRow = D / 4;
  constexpr int kPerThread = kT * kVecPerRow / kThreads;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int f = threadIdx.x + kThreads * i;
    const int row = f / kVecPerRow, c4 = f % kVecPerRow;
    const float* src = RowPtr<D>(qr, r0 + row);
    CpAsync16(k + row * D + c4 * 4, src ? src + c4 * 4 : qr.window, src ? 16 : 0);
    if (c4 == 0) valid[row] = src != nullptr;
  }
  CpAsyncCommit();
}

// Writes 4 output dims [dim, dim + 4) of one head: o * scale, inverse RoPE on the rope dims
// (the CPU's rounding: separate multiplies and one add/sub, no FMA).
__device__ __forceinline__ void StoreOut(float4 o, float scale, int dim, int r0,
                                         const float* inv_cs, float* oh) {
  o.x *= scale;
  o.y *= scale;
  o.z *= scale;
  o.w *= scale;
  if (dim >= r0) {
    const float4 cs = *reinterpret_cast<const float4*>(inv_cs + (dim - r0));  // c0 s0 c1 s1
    const float x0 = o.x, x1 = o.y, y0 = o.z, y1 = o.w;
    o.x = __fsub_rn(__fmul_rn(x0, cs.x), __fmul_rn(x1, cs.y));
    o.y = __fadd_rn(__fmul_rn(x0, cs.y), __fmul_rn(x1, cs.x));
    o.z = __fsub_rn(__fmul_rn(y0, cs.z), __fmul_rn(y1, cs.w));
    o.w = __fadd_rn(__fmul_rn(y0, cs.w), __fmul_rn(y1, cs.z));
  }
  *reinterpret_cast<float4*>(oh + dim) = o;
}

// One step of the scores' reduce-scatter over lane bit W: values [0, W) and [W, 2W) are
// swapped according to the bit and the partner's copy added. Bitwise selects (a ternary
// became a run-time index into local memory).
template <int W>
__device__ __forceinline__ void ReduceScatterStep(float (&v)[16], int sub) {
  const int hi = (sub & W) != 0 ? -1 : 0;
#pragma unroll
  for (int i = 0; i < W; ++i) {
    const int lo = __float_as_int(v[i]), up = __float_as_int(v[i + W]);
    const float send = __int_as_float((lo & hi) | (up & ~hi));
    const float keep = __int_as_float((up & hi) | (lo & ~hi));
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, W);
  }
}

struct Args {
  const float* q;
  const float* sink;
  int n_heads;
  int rope_dim;
  const float* entries;
  int64_t n_entries;
  const int32_t* indices;
  int64_t n_indices;
  const float* window;
  int64_t n_window;
  int64_t window_stride;
  const float* inv_cs;
  float* out;
  int splits;
  int tiles_per_split;
  float* part;  // [(query·n_heads + head)·splits + split][D], null with one split
  float* ml;    // [same][2]: running max, sum
};

// Grid (head group, split, query).
template <int D>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) SplitKernel(Args a) {
  using S = Smem<D>;
  constexpr int kVec = D / 256;   // float4s per thread and head in P V
  constexpr int kSteps = D / 64;  // float4 steps per thread in the scores
  extern __shared__ __align__(16) float sh[];
  float* sq = sh + S::kQ;
  float* ss = sh + S::kS;
  float* sp = sh + S::kP;
  float* sa = sh + S::kA;
  float* sm = sh + S::kM;
  float* sl = sh + S::kL;
  int* sv = reinterpret_cast<int*>(sh + S::kV);
  const int t = threadIdx.x, warp = t >> 5, lane = t & 31;
  const int h0 = blockIdx.x * kG, split = blockIdx.y;
  const int64_t qi = blockIdx.z;
  const Query qr{a.entries,
                 a.n_entries,
                 a.indices + qi * a.n_indices,
                 a.n_indices,
                 a.window + qi * a.window_stride,
                 a.n_indices + a.n_window};
  const int64_t tiles = (qr.n_kv + kT - 1) / kT;
  const int64_t t_begin = static_cast<int64_t>(split) * a.tiles_per_split;
  const int64_t t_end = min(tiles, t_begin + a.tiles_per_split);
  if (t_begin < t_end) LoadTile<D>(qr, t_begin * kT, sh + S::kK, sv);
  // q of the group's heads (zero for heads past n_heads).
  for (int f = t; f < kG * D / 4; f += kThreads) {
    const int hh = f / (D / 4), c4 = f % (D / 4);
    float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
    if (h0 + hh < a.n_heads) {
      v = *reinterpret_cast<const float4*>(a.q + (qi * a.n_heads + h0 + hh) * D + c4 * 4);
    }
    *reinterpret_cast<float4*>(sq + hh * D + c4 * 4) = v;
  }
  // Scores: tile (hq, rq) = 4 heads x 4 rows, 16 threads over interleaved float4 dims.
  const int sub = t & 15, tile = t >> 4, hq_s = tile & 3, rq = tile >> 2;
  // P V: 4 heads (hq_v) x kVec float4s at dims 4c + 256v.
  const int hq_v = t >> 6, c = t & 63;
  float acc[4][kVec * 4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < kVec * 4; ++j) acc[i][j] = 0.f;
  }
  float m_run = -INFINITY, l_run = 0.f;  // the softmax's head (2·warp + lane / 16)
  const float scale = rsqrtf(static_cast<float>(D));
  for (int64_t ti = t_begin; ti < t_end; ++ti) {
    const int buf = static_cast<int>((ti - t_begin) & 1);
    float* sk = sh + S::kK + buf * kT * D;
    const int* valid = sv + buf * kT;
    CpAsyncWaitAll();
    __syncthreads();  // tile ti landed; every thread is done with the other buffer
    if (ti + 1 < t_end)
      LoadTile<D>(qr, (ti + 1) * kT, sh + S::kK + (buf ^ 1) * kT * D, sv + (buf ^ 1) * kT);
    {
      float s[4][4] = {};
      const float* qb = sq + hq_s * 4 * D + sub * 4;
      const float* kb = sk + rq * 4 * D + sub * 4;
#pragma unroll 4
      for (int i = 0; i < kSteps; ++i) {
        float4 qv[4], kv4[4];
#pragma unroll
        for (int x = 0; x < 4; ++x) qv[x] = *reinterpret_cast<const float4*>(qb + x * D + 64 * i);
#pragma unroll
        for (int y = 0; y < 4; ++y) kv4[y] = *reinterpret_cast<const float4*>(kb + y * D + 64 * i);
#pragma unroll
        for (int x = 0; x < 4; ++x) {
#pragma unroll
          for (int y = 0; y < 4; ++y) {
            s[x][y] = fmaf(qv[x].x, kv4[y].x, s[x][y]);
            s[x][y] = fmaf(qv[x].y, kv4[y].y, s[x][y]);
            s[x][y] = fmaf(qv[x].z, kv4[y].z, s[x][y]);
            s[x][y] = fmaf(qv[x].w, kv4[y].w, s[x][y]);
          }
        }
      }
      // Reduce-scatter over the 16 threads of the tile (15 shuffles): at the step over lane
      // bit b the thread keeps the half of its values selected by that bit and adds its
      // partner's copy of it; thread sub ends with value sub = 4·head + row of the tile.
      float v[16];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
#pragma unroll
        for (int y = 0; y < 4; ++y) v[4 * x + y] = s[x][y];
      }
      ReduceScatterStep<8>(v, sub);
      ReduceScatterStep<4>(v, sub);
      ReduceScatterStep<2>(v, sub);
      ReduceScatterStep<1>(v, sub);
      ss[(hq_s * 4 + (sub >> 2)) * kT + rq * 4 + (sub & 3)] = v[0] * scale;
    }
    __syncthreads();
    // Online softmax: warp w owns heads 2w (lanes 0-15) and 2w+1 (16-31), row = lane & 15.
    {
      const int hh = 2 * warp + (lane >> 4), r = lane & 15;
      const float x = valid[r] ? ss[hh * kT + r] : -INFINITY;
      float mt = x;
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) mt = fmaxf(mt, __shfl_xor_sync(0xffffffffu, mt, o));
      const float m_new = fmaxf(m_run, mt);
      float p = 0.f, alpha = 1.f;
      if (m_new != -INFINITY) {
        p = expf(x - m_new);  // exp(-inf) = 0 for skipped rows
        alpha = expf(m_run - m_new);
      }
      float ps = p;
#pragma unroll
      for (int o = 8; o > 0; o >>= 1) ps += __shfl_xor_sync(0xffffffffu, ps, o);
      l_run = l_run * alpha + ps;
      m_run = m_new;
      sp[r * kPPitch + hh] = p;
      if (r == 0) sa[hh] = alpha;
    }
    __syncthreads();
    {
      const float4 al = *reinterpret_cast<const float4*>(sa + hq_v * 4);
      const float alv[4] = {al.x, al.y, al.z, al.w};
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < kVec * 4; ++j) acc[i][j] *= alv[i];
      }
#pragma unroll 4
      for (int r = 0; r < kT; ++r) {
        const float4 p4 = *reinterpret_cast<const float4*>(sp + r * kPPitch + hq_v * 4);
        const float pv[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
        for (int v = 0; v < kVec; ++v) {
          const float4 kv = *reinterpret_cast<const float4*>(sk + r * D + 4 * c + 256 * v);
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            acc[i][4 * v + 0] = fmaf(pv[i], kv.x, acc[i][4 * v + 0]);
            acc[i][4 * v + 1] = fmaf(pv[i], kv.y, acc[i][4 * v + 1]);
            acc[i][4 * v + 2] = fmaf(pv[i], kv.z, acc[i][4 * v + 2]);
            acc[i][4 * v + 3] = fmaf(pv[i], kv.w, acc[i][4 * v + 3]);
          }
        }
      }
    }
  }
  if ((lane & 15) == 0) {
    sm[2 * warp + (lane >> 4)] = m_run;
    sl[2 * warp + (lane >> 4)] = l_run;
  }
  __syncthreads();
  const int r0 = D - a.rope_dim;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int hh = hq_v * 4 + i, h = h0 + hh;
    if (h >= a.n_heads) continue;
    const int64_t row = qi * a.n_heads + h;
    if (a.part != nullptr) {  // partials for the combine kernel
      float* dst = a.part + (row * a.splits + split) * D;
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        *reinterpret_cast<float4*>(dst + 4 * c + 256 * v) =
            make_float4(acc[i][4 * v], acc[i][4 * v + 1], acc[i][4 * v + 2], acc[i][4 * v + 3]);
      }
      if (c == 0) {
        a.ml[(row * a.splits + split) * 2] = sm[hh];
        a.ml[(row * a.splits + split) * 2 + 1] = sl[hh];
      }
    } else {  // one split: sink (denominator only), normalise, inverse RoPE
      const float sk = a.sink[h], m = sm[hh];
      const float mx = fmaxf(m, sk);
      const float w = m == -INFINITY ? 0.f : expf(m - mx);
      const float den = sl[hh] * w + expf(sk - mx);
#pragma unroll
      for (int v = 0; v < kVec; ++v) {
        StoreOut(
            make_float4(acc[i][4 * v], acc[i][4 * v + 1], acc[i][4 * v + 2], acc[i][4 * v + 3]),
            w / den, 4 * c + 256 * v, r0, a.inv_cs + qi * a.rope_dim, a.out + row * D);
      }
    }
  }
}

// Grid (head, query): o = Σ_s w_s o_s / (Σ_s w_s l_s + exp(sink - M)), w_s = exp(m_s - M).
template <int D>
__global__ void __launch_bounds__(kCombineThreads) CombineKernel(Args a) {
  __shared__ float w[kMaxSplits];
  __shared__ float red[2];
  const int h = blockIdx.x;
  const int64_t qi = blockIdx.y, row = qi * a.n_heads + h;
  const float* ml = a.ml + row * a.splits * 2;
  const float sk = a.sink[h];
  if (threadIdx.x < 32) {
    float mx = sk;
    for (int s = threadIdx.x; s < a.splits; s += 32) mx = fmaxf(mx, ml[2 * s]);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    float den = 0.f;
    for (int s = threadIdx.x; s < a.splits; s += 32) {
      const float m = ml[2 * s];
      w[s] = m == -INFINITY ? 0.f : expf(m - mx);
      den += w[s] * ml[2 * s + 1];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) den += __shfl_xor_sync(0xffffffffu, den, o);
    if (threadIdx.x == 0) red[0] = den + expf(sk - mx);
  }
  __syncthreads();
  // Groups of D/4 threads (a float4 column each; blockDim.x / (D/4) groups) sum disjoint
  // splits, four loads in flight per thread; then group 0 adds the groups up and stores.
  constexpr int kCols = D / 4;
  static_assert(kCombineThreads % kCols == 0, "combine tiling");
  __shared__ __align__(16) float sum[kCombineThreads * 4];
  const int kGroups = blockDim.x / kCols, col = threadIdx.x % kCols, g = threadIdx.x / kCols;
  const float* part = a.part + row * a.splits * D + 4 * col;
  float4 o = make_float4(0.f, 0.f, 0.f, 0.f);
  auto add = [&](float ws, float4 p) {
    o.x = fmaf(ws, p.x, o.x);
    o.y = fmaf(ws, p.y, o.y);
    o.z = fmaf(ws, p.z, o.z);
    o.w = fmaf(ws, p.w, o.w);
  };
  int s = g;
  for (; s + 3 * kGroups < a.splits; s += 4 * kGroups) {
    float4 p[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      p[u] = *reinterpret_cast<const float4*>(part + static_cast<int64_t>(s + u * kGroups) * D);
    }
#pragma unroll
    for (int u = 0; u < 4; ++u) add(w[s + u * kGroups], p[u]);
  }
  for (; s < a.splits; s += kGroups) {
    add(w[s], *reinterpret_cast<const float4*>(part + static_cast<int64_t>(s) * D));
  }
  *reinterpret_cast<float4*>(sum + 4 * threadIdx.x) = o;
  __syncthreads();
  if (g == 0) {
    for (int gg = 1; gg < kGroups; ++gg) {
      const float4 p = *reinterpret_cast<const float4*>(sum + 4 * (gg * kCols + col));
      o.x += p.x;
      o.y += p.y;
      o.z += p.z;
      o.w += p.w;
    }
    StoreOut(o, 1.0f / red[0], 4 * col, D - a.rope_dim, a.inv_cs + qi * a.rope_dim,
             a.out + row * D);
  }
}

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <int D>
cudaError_t Launch(Args a, int64_t n_queries, cudaStream_t stream) {
  int device = 0, sms = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = cudaFuncSetAttribute(SplitKernel<D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(Smem<D>::kBytes));
  }
  if (err != cudaSuccess) return err;
  const int64_t groups = (a.n_heads + kG - 1) / kG;
  const int64_t tiles = (a.n_indices + a.n_window + kT - 1) / kT;
  // At most one wave of blocks where the queries leave room for splits.
  int64_t splits = int64_t{sms} * kBlocksPerSm / (groups * n_queries);
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, tiles, kMaxSplits}));
  const int64_t per_split =
      tiles == 0 ? 1 : std::max<int64_t>(kMinTilesPerSplit, (tiles + splits - 1) / splits);
  splits = tiles == 0 ? 1 : (tiles + per_split - 1) / per_split;
  a.splits = static_cast<int>(splits);
  a.tiles_per_split = static_cast<int>(per_split);
  const dim3 grid(static_cast<unsigned>(groups), static_cast<unsigned>(splits),
                  static_cast<unsigned>(n_queries));
  if (splits == 1) {
    a.part = a.ml = nullptr;
    SplitKernel<D><<<grid, kThreads, Smem<D>::kBytes, stream>>>(a);
    return cudaGetLastError();
  }
  const int64_t rows = n_queries * a.n_heads * splits;
  float* ws = nullptr;
  err = cudaMallocAsync(reinterpret_cast<void**>(&ws), sizeof(float) * rows * (D + 2), stream);
  if (err != cudaSuccess) return err;
  a.part = ws;
  a.ml = ws + rows * D;
  SplitKernel<D><<<grid, kThreads, Smem<D>::kBytes, stream>>>(a);
  err = cudaGetLastError();
  if (err == cudaSuccess) {
    // One group per 4 splits, up to kCombineThreads (a few splits: one group, no reduction).
    const int64_t max_groups = kCombineThreads / (D / 4);
    const int64_t cgroups = std::min<int64_t>(max_groups, std::max<int64_t>(1, splits / 4));
    CombineKernel<D><<<dim3(static_cast<unsigned>(a.n_heads), static_cast<unsigned>(n_queries)),
                       static_cast<unsigned>(cgroups * (D / 4)), 0, stream>>>(a);
    err = cudaGetLastError();
  }
  const cudaError_t free_err = cudaFreeAsync(ws, stream);
  return err != cudaSuccess ? err : free_err;
}

}  // namespace

cudaError_t SparseAttentionBatch(const float* q, const float* sink, int64_t n_queries, int n_heads,
                                 int head_dim, int rope_dim, const float* entries,
                                 int64_t n_entries, const int32_t* indices, int64_t n_indices,
                                 const float* window, int64_t n_window, int64_t window_stride,
                                 const float* inv_rope_cs, float* out, cudaStream_t stream) {
  if (!q || !sink || !out || n_queries < 0 || n_queries > 65535 || n_heads < 1 ||
      (head_dim != 256 && head_dim != 512) || rope_dim < 0 || rope_dim % 4 || rope_dim > head_dim ||
      n_entries < 0 || n_indices < 0 || n_window < 0 || window_stride < 0 || window_stride % 4 ||
      (n_indices > 0 && (!indices || !entries)) || (n_window > 0 && !window) ||
      (rope_dim > 0 && !inv_rope_cs) || !Aligned16(q) || !Aligned16(out) || !Aligned16(entries) ||
      !Aligned16(window) || !Aligned16(inv_rope_cs) ||
      n_indices + n_window > int64_t{kT} * kMaxSplits * 65536) {
    return cudaErrorInvalidValue;
  }
  if (n_queries == 0) return cudaSuccess;
  Args a{q,       sink,      n_heads, rope_dim, entries,       n_entries,
         indices, n_indices, window,  n_window, window_stride, inv_rope_cs,
         out,     1,         1,       nullptr,  nullptr};
  if (a.window == nullptr) a.window = q;  // never read (n_window == 0); a valid cp.async source
  return head_dim == 512 ? Launch<512>(a, n_queries, stream) : Launch<256>(a, n_queries, stream);
}

cudaError_t SparseAttention(const float* q, const float* sink, int n_heads, int head_dim,
                            int rope_dim, const float* entries, int64_t n_entries,
                            const int32_t* indices, int64_t n_indices, const float* window,
                            int64_t n_window, const float* inv_rope_cs, float* out,
                            cudaStream_t stream) {
  return SparseAttentionBatch(q, sink, 1, n_heads, head_dim, rope_dim, entries, n_entries, indices,
                              n_indices, window, n_window, n_window * head_dim, inv_rope_cs, out,
                              stream);
}

}  // namespace kv::kernels::v4::cuda
