// kernels_gpu_bench: GPU figures for scripts/gpu-check (issue #3 "Benchmarks, with a GPU").
// Every row prints its figure next to the device-to-device cudaMemcpy bandwidth measured in
// the same run, and the ratio (DESIGN.md "Performance: the method"). Bandwidth convention:
// GB/s = bytes the kernel must read / s (1 GB = 1e9 B); the copy limit counts bytes copied
// per second (each byte is read once and written once), the usual cudaMemcpy figure.
//   kernels_gpu_bench [--quick]
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <vector>

#include "kernels/cuda_kernels.h"

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

// Median milliseconds of `reps` timed runs of fn after one warm-up.
template <typename Fn>
float MedianMs(int reps, Fn fn) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  fn();
  CHECK_CUDA(cudaDeviceSynchronize());
  std::vector<float> ms;
  for (int i = 0; i < reps; ++i) {
    CHECK_CUDA(cudaEventRecord(a));
    fn();
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float t = 0;
    CHECK_CUDA(cudaEventElapsedTime(&t, a, b));
    ms.push_back(t);
  }
  std::sort(ms.begin(), ms.end());
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return ms[ms.size() / 2];
}

void Row(const char* name, double value, const char* unit, double limit) {
  std::printf("%-44s %12.2f %-9s memcpy_d2d %9.2f GB/s  ratio %.3f\n", name, value, unit, limit,
              value / limit);
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
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  // Limit: device-to-device copy of 1 GiB.
  const size_t copy_bytes = size_t{1} << 30;
  void *src = nullptr, *dst = nullptr;
  CHECK_CUDA(cudaMalloc(&src, copy_bytes));
  CHECK_CUDA(cudaMalloc(&dst, copy_bytes));
  FillKernel<<<1024, 256>>>(static_cast<float*>(src), copy_bytes / 4, 1u);
  const float copy_ms = MedianMs(
      9, [&] { CHECK_CUDA(cudaMemcpyAsync(dst, src, copy_bytes, cudaMemcpyDeviceToDevice)); });
  const double limit = copy_bytes / (copy_ms * 1e-3) / 1e9;
  std::printf("memcpy d2d: %.2f GB/s (1 GiB, median of 9)\n", limit);

  // FP8 quantize: f32 [latent 512 | rope 64] rows -> 656-byte records.
  const int64_t tokens = quick ? (1 << 18) : (1 << 20);
  float* lat = static_cast<float*>(src);  // reuse: 1M tokens x 2304 B = 2.4 GB > 1 GiB
  const int64_t q_tokens = std::min<int64_t>(tokens, copy_bytes / (576 * 4));
  uint8_t* rec = static_cast<uint8_t*>(dst);
  const float quant_ms = MedianMs(9, [&] {
    CHECK_CUDA(kv::kernels::cuda::EncodeMlaRecords(KvLayout::kMlaFp8_656, lat, 576, lat + 512, 576,
                                                   q_tokens, rec, 656, nullptr, nullptr));
  });
  const double quant_gbps = q_tokens * 576.0 * 4 / (quant_ms * 1e-3) / 1e9;
  Row("quantize f32 -> mla-fp8-656 (GB/s read)", quant_gbps, "GB/s", limit);
  std::printf("  %.1f M tokens/s over %lld tokens\n", q_tokens / (quant_ms * 1e-3) / 1e6,
              static_cast<long long>(q_tokens));

  // Decode attention over FP8 pages: 1 query token, 128 heads (DeepSeek-V3) and 16 heads.
  const int pt = 64;
  for (int heads : {128, 16}) {
    for (int64_t seq : {int64_t{4096}, int64_t{32768}, int64_t{131072}}) {
      const int64_t blocks = seq / pt;
      uint8_t* pool = nullptr;
      int32_t* table = nullptr;
      float *q = nullptr, *out = nullptr;
      CHECK_CUDA(cudaMalloc(&pool, blocks * pt * 656));
      CHECK_CUDA(cudaMalloc(&table, blocks * 4));
      CHECK_CUDA(cudaMalloc(&q, heads * 576 * 4));
      CHECK_CUDA(cudaMalloc(&out, heads * 512 * 4));
      std::vector<int32_t> h_table(blocks);
      for (int64_t i = 0; i < blocks; ++i) h_table[i] = static_cast<int32_t>((i * 7919) % blocks);
      CHECK_CUDA(cudaMemcpy(table, h_table.data(), blocks * 4, cudaMemcpyHostToDevice));
      // Real records: quantise seq random tokens (reusing `src` as the f32 source).
      FillKernel<<<1024, 256>>>(q, heads * 576, 7u);
      for (int64_t done = 0; done < seq; done += q_tokens) {
        const int64_t n = std::min<int64_t>(q_tokens, seq - done);
        CHECK_CUDA(kv::kernels::cuda::EncodeMlaRecords(KvLayout::kMlaFp8_656, lat, 576, lat + 512,
                                                       576, n, pool + done * 656, 656, nullptr,
                                                       nullptr));
      }
      const PagedKvView kv{pool,  int64_t{pt} * 656, 0, pt, KvLayout::kMlaFp8_656, table, blocks,
                           blocks};
      const float ms = MedianMs(quick ? 5 : 11, [&] {
        CHECK_CUDA(kv::kernels::cuda::MlaPagedAttention(q, 1, heads, seq - 1, kv, 0.13523378f, out,
                                                        nullptr, nullptr));
      });
      char name[96];
      std::snprintf(name, sizeof(name), "decode attn fp8 %d heads %lldK (GB/s KV)", heads,
                    static_cast<long long>(seq / 1024));
      Row(name, seq * 656.0 / (ms * 1e-3) / 1e9, "GB/s", limit);
      std::printf("  %.3f ms/step, %.1f M cached tokens/s\n", ms, seq / (ms * 1e-3) / 1e6);
      cudaFree(pool);
      cudaFree(table);
      cudaFree(q);
      cudaFree(out);
    }
  }
  cudaFree(src);
  cudaFree(dst);
  return 0;
}
