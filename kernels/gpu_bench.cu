// kernels_gpu_bench: GPU figures for scripts/gpu-check (issue #3 "Benchmarks, with a GPU").
// Every row prints its figure next to the device-to-device copy bandwidth measured in the
// same run, and the ratio (DESIGN.md "Performance: the method"; kernels/GPU_NOTES.md).
//
// Bandwidth accounting (1 GB = 1e9 B), the same on both sides of each ratio:
//   limit    bytes read + bytes written per second of a 1 GiB device-to-device copy (2 GiB
//            moved per copy), the fastest of cudaMemcpyAsync (direct and graphed) and a
//            16-byte copy kernel at two grid sizes;
//   kernels  the bytes the kernel must move, each input read once and each output written
//            once (re-reads, partials and workspaces are the kernel's cost, not credited),
//            over the median time.
// Timing: CUDA events, warm-up first, median of many repetitions. A repetition is one CUDA
// graph of `batch` calls (plain back-to-back launches if the call cannot be captured), each
// call on its own copy of the inputs, the copies together larger than L2 (L2 size read off
// the device, at least 4x), so the figures are DRAM figures, not cache ones. Inputs are
// random, never zero; outputs are checked to be finite (the attention output is poisoned
// with NaN first).
//   kernels_gpu_bench [--quick]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "kernels/cuda_kernels.h"
#include "kernels/v4/v4_cuda.h"

namespace {

using kv::kernels::KvLayout;
using kv::kernels::PagedKvView;

#define CHECK_CUDA(expr)                                                                         \
  do {                                                                                           \
    cudaError_t e_ = (expr);                                                                     \
    if (e_ != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

// Median milliseconds per call of fn(i, stream), i = 0 .. batch-1 (the input copy to use):
// each repetition runs the batch once, captured as a graph when possible. Warm-up: two
// un-timed repetitions.
float MedianMsPerCall(int reps, int batch, const std::function<void(int, cudaStream_t)>& fn,
                      bool* graphed, bool try_graph = true) {
  cudaStream_t s;
  CHECK_CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaGraphExec_t exec = nullptr;
  cudaGraph_t graph = nullptr;
  *graphed = false;
  if (try_graph && cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess) {
    for (int i = 0; i < batch; ++i) fn(i, s);
    if (cudaStreamEndCapture(s, &graph) == cudaSuccess &&
        cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess) {
      *graphed = true;
    }
    cudaGetLastError();  // a failed capture leaves an error behind; the fallback is below
  }
  auto run = [&] {
    if (*graphed) {
      CHECK_CUDA(cudaGraphLaunch(exec, s));
    } else {
      for (int i = 0; i < batch; ++i) fn(i, s);
    }
  };
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int w = 0; w < 2; ++w) run();
  CHECK_CUDA(cudaStreamSynchronize(s));
  std::vector<float> ms;
  for (int r = 0; r < reps; ++r) {
    CHECK_CUDA(cudaEventRecord(a, s));
    run();
    CHECK_CUDA(cudaEventRecord(b, s));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t / batch);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  if (graph != nullptr) cudaGraphDestroy(graph);
  CHECK_CUDA(cudaStreamDestroy(s));
  return ms[ms.size() / 2];
}

void Row(const char* name, double bytes, double ms, double limit_gbps, bool graphed) {
  const double gbps = bytes / (ms * 1e-3) / 1e9;
  std::printf("%-40s %9.4f ms %9.1f GB/s  limit %7.1f GB/s  ratio %.3f%s\n", name, ms, gbps,
              limit_gbps, gbps / limit_gbps, graphed ? "" : "  (not graphed)");
}

// Fills device memory with a pseudo-random, never-zero pattern of finite floats.
__global__ void FillKernel(float* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    unsigned x = static_cast<unsigned>(i) * 2654435761u ^ seed;
    x ^= x >> 13;
    x *= 0x5bd1e995u;
    x ^= x >> 15;
    p[i] = (static_cast<float>(x & 0xFFFFFF) / 16777216.0f - 0.5f) * 4.0f + 1e-3f;
  }
}

void Fill(float* p, size_t n, unsigned seed) {
  FillKernel<<<1024, 256>>>(p, n, seed);
  CHECK_CUDA(cudaGetLastError());
}

// Grid-stride 16-byte copy: the second measurement of the copy limit.
__global__ void CopyKernel(const uint4* __restrict__ src, uint4* __restrict__ dst, size_t n) {
  const size_t stride = size_t{gridDim.x} * blockDim.x;
  size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    dst[i] = a;
    dst[i + stride] = b;
    dst[i + 2 * stride] = c;
    dst[i + 3 * stride] = d;
  }
  for (; i < n; i += stride) dst[i] = src[i];
}

// NaN poisoning and a finiteness check of a device float array.
__global__ void PoisonKernel(float* p, size_t n) {
  for (size_t i = blockIdx.x * size_t{blockDim.x} + threadIdx.x; i < n;
       i += size_t{gridDim.x} * blockDim.x) {
    p[i] = NAN;
  }
}
bool AllFinite(const float* d, size_t n) {
  std::vector<float> h(n);
  CHECK_CUDA(cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost));
  return std::all_of(h.begin(), h.end(), [](float x) { return std::isfinite(x); });
}

// Copies needed so that `copies` x `bytes_each` exceeds 4x L2 (at least 2, at most cap).
int CopiesFor(double bytes_each, size_t l2, int cap) {
  const int n = static_cast<int>(std::ceil(4.0 * static_cast<double>(l2) / bytes_each));
  return std::clamp(n, 2, cap);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::fprintf(stderr, "kernels_gpu_bench: no CUDA device\n");
    return 2;
  }
  cudaDeviceProp prop;
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const size_t l2 = static_cast<size_t>(prop.l2CacheSize);
  std::printf("device: %s, %d SMs, L2 %.1f MB\n", prop.name, prop.multiProcessorCount, l2 / 1e6);
  const int reps = quick ? 7 : 21;
  bool graphed = false;

  // Limit: 1 GiB device-to-device copy; read + written bytes per second. Measured four
  // ways: cudaMemcpyAsync launched directly and inside a graph (a graph's memcpy node may
  // take another path), and a 16-byte grid-stride copy kernel at two grid sizes; the limit
  // is the fastest.
  const size_t copy_bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  CHECK_CUDA(cudaMalloc(&src, copy_bytes));
  CHECK_CUDA(cudaMalloc(&dst, copy_bytes));
  Fill(static_cast<float*>(src), copy_bytes / 4, 1u);
  auto memcpy_fn = [&](int, cudaStream_t s) {
    CHECK_CUDA(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice, s));
  };
  auto kcopy_fn = [&](int blocks_per_sm, int threads) {
    return [&, blocks_per_sm, threads](int, cudaStream_t s) {
      CopyKernel<<<prop.multiProcessorCount * blocks_per_sm, threads, 0, s>>>(
          static_cast<const uint4*>(src), static_cast<uint4*>(dst), copy_bytes / 16);
      CHECK_CUDA(cudaGetLastError());
    };
  };
  struct CopyWay {
    const char* name;
    float ms;
  };
  const CopyWay ways[] = {
      {"cudaMemcpyAsync", MedianMsPerCall(reps, 1, memcpy_fn, &graphed, false)},
      {"cudaMemcpyAsync in a graph", MedianMsPerCall(reps, 1, memcpy_fn, &graphed)},
      {"copy kernel 8x512 per SM", MedianMsPerCall(reps, 1, kcopy_fn(8, 512), &graphed, false)},
      {"copy kernel 32x256 per SM", MedianMsPerCall(reps, 1, kcopy_fn(32, 256), &graphed, false)},
  };
  double limit = 0;
  for (const CopyWay& w : ways) {
    const double gbps = 2.0 * copy_bytes / (w.ms * 1e-3) / 1e9;
    std::printf("copy 1 GiB (read+write) %-28s %.3f ms %8.1f GB/s\n", w.name, w.ms, gbps);
    limit = std::max(limit, gbps);
  }
  std::printf("limit: %.1f GB/s\n", limit);
  std::printf("%-40s %12s %14s\n", "kernel", "ms/call", "bytes moved/s");

  // FP8 quantize: f32 [latent 512 | rope 64] rows -> 656-byte records. Reads 2304 B and
  // writes 656 B per token; 466K tokens = 1.07 GB in, 0.31 GB out: far above L2.
  const int64_t q_tokens = copy_bytes / (576 * 4);
  {
    const float* lat = static_cast<const float*>(src);
    uint8_t* rec = static_cast<uint8_t*>(dst);
    const float ms = MedianMsPerCall(
        reps, 1,
        [&](int, cudaStream_t s) {
          CHECK_CUDA(kv::kernels::cuda::EncodeMlaRecords(KvLayout::kMlaFp8_656, lat, 576, lat + 512,
                                                         576, q_tokens, rec, 656, nullptr, s));
        },
        &graphed);
    Row("quantize f32 -> mla-fp8-656", q_tokens * (576.0 * 4 + 656), ms, limit, graphed);
    std::printf("  %.1f M tokens/s over %lld tokens\n", q_tokens / (ms * 1e-3) / 1e6,
                static_cast<long long>(q_tokens));
  }

  // Decode attention over FP8 pages: 1 query token, 128 heads (DeepSeek-V3) and 16 heads.
  // Must move: the seq KV records once (656 B each), q (heads x 576 f32) and out (heads x
  // 512 f32). FLOPs: 2 x heads x seq x (576 + 512).
  const int pt = 64;
  const float scale = 0.13523378f;
  for (int heads : {128, 16}) {
    for (int64_t seq : {int64_t{4096}, int64_t{32768}, int64_t{131072}}) {
      if (quick && seq == 32768) continue;
      const int64_t blocks = seq / pt;
      const size_t pool_bytes = static_cast<size_t>(blocks) * pt * 656;
      const int copies = CopiesFor(static_cast<double>(pool_bytes), l2, 64);
      std::vector<uint8_t*> pools(copies);
      std::vector<float*> qs(copies), outs(copies);
      int32_t* table = nullptr;
      CHECK_CUDA(cudaMalloc(&table, blocks * 4));
      std::vector<int32_t> h_table(blocks);
      for (int64_t i = 0; i < blocks; ++i) h_table[i] = static_cast<int32_t>((i * 7919) % blocks);
      CHECK_CUDA(cudaMemcpy(table, h_table.data(), blocks * 4, cudaMemcpyHostToDevice));
      for (int c = 0; c < copies; ++c) {
        CHECK_CUDA(cudaMalloc(&pools[c], pool_bytes));
        CHECK_CUDA(cudaMalloc(&qs[c], heads * 576 * 4));
        CHECK_CUDA(cudaMalloc(&outs[c], heads * 512 * 4));
        Fill(qs[c], heads * 576, 7u + c);
        PoisonKernel<<<64, 256>>>(outs[c], heads * 512);
        // Real records: quantise random tokens (the f32 source in `src`, shifted per copy).
        Fill(static_cast<float*>(src), copy_bytes / 4, 11u + c);
        for (int64_t done = 0; done < seq; done += q_tokens) {
          const int64_t n = std::min<int64_t>(q_tokens, seq - done);
          const float* lat = static_cast<const float*>(src);
          CHECK_CUDA(kv::kernels::cuda::EncodeMlaRecords(KvLayout::kMlaFp8_656, lat, 576, lat + 512,
                                                         576, n, pools[c] + done * 656, 656,
                                                         nullptr, nullptr));
        }
      }
      CHECK_CUDA(cudaDeviceSynchronize());
      const float ms = MedianMsPerCall(
          quick ? 7 : 15, copies,
          [&](int c, cudaStream_t s) {
            const PagedKvView kv{
                pools[c], int64_t{pt} * 656, 0, pt, KvLayout::kMlaFp8_656, table, blocks, blocks};
            CHECK_CUDA(kv::kernels::cuda::MlaPagedAttention(qs[c], 1, heads, seq - 1, kv, scale,
                                                            outs[c], nullptr, s));
          },
          &graphed);
      CHECK_CUDA(cudaDeviceSynchronize());
      for (int c = 0; c < copies; ++c) {
        if (!AllFinite(outs[c], heads * 512)) {
          std::fprintf(stderr, "kernels_gpu_bench: attention output not finite\n");
          return 1;
        }
      }
      char name[96];
      std::snprintf(name, sizeof(name), "decode attn fp8 %dh %lldK", heads,
                    static_cast<long long>(seq / 1024));
      Row(name, seq * 656.0 + heads * (576 + 512) * 4.0, ms, limit, graphed);
      std::printf("  %.1f M cached tokens/s, %.1f TFLOP/s f32, %d input copies\n",
                  seq / (ms * 1e-3) / 1e6, 2.0 * heads * seq * (576 + 512) / (ms * 1e-3) / 1e12,
                  copies);
      for (int c = 0; c < copies; ++c) {
        cudaFree(pools[c]);
        cudaFree(qs[c]);
        cudaFree(outs[c]);
      }
      cudaFree(table);
    }
  }

  // V4 compressor (kernels/v4/compressor_cuda.cu), CSA ratio 4, dim 512, rope 64: per
  // entry reads its 4 rows of c and z (2 x 1024 f32 each) once and writes 512 f32; the
  // previous window's rows are re-read (cost, not credited). bias/norm/rope are small.
  {
    const int ratio = 4, dim = 512, rope = 64, iw = 2 * dim;
    const int64_t entries = quick ? 16384 : 32768;
    const size_t in_floats = static_cast<size_t>(entries) * ratio * iw;  // 128 MiB each at 32K
    float *c = nullptr, *z = nullptr, *bias = nullptr, *norm = nullptr, *cs = nullptr,
          *out = nullptr;
    CHECK_CUDA(cudaMalloc(&c, in_floats * 4));
    CHECK_CUDA(cudaMalloc(&z, in_floats * 4));
    CHECK_CUDA(cudaMalloc(&bias, ratio * iw * 4));
    CHECK_CUDA(cudaMalloc(&norm, dim * 4));
    CHECK_CUDA(cudaMalloc(&cs, entries * rope * 4));
    CHECK_CUDA(cudaMalloc(&out, entries * dim * 4));
    Fill(c, in_floats, 21u);
    Fill(z, in_floats, 22u);
    Fill(bias, ratio * iw, 23u);
    Fill(norm, dim, 24u);
    Fill(cs, entries * rope, 25u);
    PoisonKernel<<<1024, 256>>>(out, entries * dim);
    const float ms = MedianMsPerCall(
        reps, 1,
        [&](int, cudaStream_t s) {
          CHECK_CUDA(kv::kernels::v4::cuda::CompressEntries(ratio, dim, rope, 1e-6f, c, z, bias,
                                                            norm, cs, entries, out, s));
        },
        &graphed);
    CHECK_CUDA(cudaDeviceSynchronize());
    if (!AllFinite(out, entries * dim)) {
      std::fprintf(stderr, "kernels_gpu_bench: compressor output not finite\n");
      return 1;
    }
    char name[96];
    std::snprintf(name, sizeof(name), "v4 compress csa r4 d512 %lldK ent",
                  static_cast<long long>(entries / 1024));
    Row(name, 4.0 * (2 * in_floats + entries * (rope + dim)), ms, limit, graphed);
    for (float* p : {c, z, bias, norm, cs, out}) cudaFree(p);
  }

  // V4 sparse attention (kernels/v4/sparse_attention_cuda.cu): 64 heads, d 512, top-k 512
  // picked entries + 128 window rows per query, one query per call (decode latency) and 32
  // per call (a decode batch, each query with its own picks and window). Must move per
  // query: the picked rows and the window once (all heads share them), q, out; plus the
  // sink once per call. Picks are random from a pool of entries far larger than L2; query,
  // window and output copies rotate (>= 4x L2 per repetition).
  for (const int nq : {1, 32}) {
    const int heads = 64, d = 512, rope = 64;
    const int64_t topk = 512, window = 128, n_entries = 1 << 17;  // 256 MiB of entries
    float *entries = nullptr, *win = nullptr, *q = nullptr, *sink = nullptr, *cs = nullptr,
          *out = nullptr;
    int32_t* idx = nullptr;
    const int copies = nq == 1 ? 160 : 5;     // 251 MB per repetition either way
    const int64_t qn = int64_t{copies} * nq;  // queries over all copies
    CHECK_CUDA(cudaMalloc(&entries, n_entries * d * 4));
    CHECK_CUDA(cudaMalloc(&win, qn * window * d * 4));
    CHECK_CUDA(cudaMalloc(&q, qn * heads * d * 4));
    CHECK_CUDA(cudaMalloc(&sink, heads * 4));
    CHECK_CUDA(cudaMalloc(&cs, qn * rope * 4));
    CHECK_CUDA(cudaMalloc(&out, qn * heads * d * 4));
    CHECK_CUDA(cudaMalloc(&idx, qn * topk * 4));
    Fill(entries, n_entries * d, 31u);
    Fill(win, qn * window * d, 32u);
    Fill(q, qn * heads * d, 33u);
    Fill(sink, heads, 34u);
    Fill(cs, qn * rope, 35u);
    PoisonKernel<<<1024, 256>>>(out, qn * heads * d);
    std::vector<int32_t> h_idx(qn * topk);
    unsigned x = 12345u;
    for (auto& v : h_idx) {
      x = x * 1664525u + 1013904223u;
      v = static_cast<int32_t>((x >> 8) % n_entries);
    }
    CHECK_CUDA(cudaMemcpy(idx, h_idx.data(), h_idx.size() * 4, cudaMemcpyHostToDevice));
    const float ms = MedianMsPerCall(
        reps, copies,
        [&](int k, cudaStream_t s) {
          const int64_t q0 = int64_t{k} * nq;
          CHECK_CUDA(kv::kernels::v4::cuda::SparseAttentionBatch(
              q + q0 * heads * d, sink, nq, heads, d, rope, entries, n_entries, idx + q0 * topk,
              topk, win + q0 * window * d, window, window * d, cs + q0 * rope, out + q0 * heads * d,
              s));
        },
        &graphed);
    CHECK_CUDA(cudaDeviceSynchronize());
    if (!AllFinite(out, qn * heads * d)) {
      std::fprintf(stderr, "kernels_gpu_bench: sparse attention output not finite\n");
      return 1;
    }
    char name[96];
    std::snprintf(name, sizeof(name), "v4 sparse attn 64h d512 k512+w128 x%d", nq);
    Row(name, 4.0 * (nq * ((topk + window) * d + 2 * heads * d + rope) + heads), ms, limit,
        graphed);
    for (float* p : {entries, win, q, sink, cs, out}) cudaFree(p);
    cudaFree(idx);
  }
  cudaFree(src);
  cudaFree(dst);
  return 0;
}
