// CUDA MLA record encoder/decoder (see cuda_kernels.h). One 128-thread block per token:
// warp w owns latent tile w (128 elements, 4 per lane), so the tile amax is a warp
// reduction; threads 0..63 handle the 64 rope values. The scalar codec functions are the
// same KV_HD ones the CPU reference uses, so results are bit-identical.
#include <climits>

#include "kernels/bf16.h"
#include "kernels/cuda_kernels.h"
#include "kernels/fp8.h"

namespace kv::kernels::cuda {
namespace {

constexpr int kThreads = 128;

KV_HD float Load(const float* p) { return *p; }
KV_HD float Load(const uint16_t* p) { return Bf16ToFloat(*p); }
KV_HD uint16_t LoadBf16(const float* p) { return FloatToBf16(*p); }
KV_HD uint16_t LoadBf16(const uint16_t* p) { return *p; }

__device__ bool NonFinite(float x) { return (FloatBits(x) & 0x7F800000u) == 0x7F800000u; }

// Where token i's record goes, or nullptr to skip it.
__device__ uint8_t* Destination(int64_t i, uint8_t* out, int64_t out_stride, PagedKvView kv,
                                const int64_t* slots) {
  if (slots == nullptr) return out + i * out_stride;
  const int64_t s = slots[i];
  if (s < 0 || s >= kv.num_physical_blocks * kv.page_tokens) return nullptr;
  return kv.SlotRecord(s);
}

template <typename T>
__global__ void EncodeKernel(KvLayout layout, const T* latent, int64_t latent_stride, const T* rope,
                             int64_t rope_stride, uint8_t* out, int64_t out_stride, PagedKvView kv,
                             const int64_t* slots, int32_t* bad_token) {
  const int64_t tok = blockIdx.x;
  uint8_t* dst = Destination(tok, out, out_stride, kv, slots);
  if (dst == nullptr) return;                // uniform across the block
  const int t = threadIdx.x, lane = t & 31;  // warp t >> 5 owns latent tile t >> 5
  const T* lat = latent + tok * latent_stride;
  float x[4];
  uint32_t amax = 0;
  bool bad = false;
  for (int k = 0; k < 4; ++k) {
    x[k] = Load(lat + 4 * t + k);
    bad |= NonFinite(x[k]);
    const uint32_t a = FloatBits(x[k]) & 0x7FFFFFFFu;
    amax = a > amax ? a : amax;
  }
  uint16_t r = 0;
  if (t < kMlaRopeDim) {
    r = LoadBf16(rope + tok * rope_stride + t);
    bad |= (r & 0x7F80u) == 0x7F80u;
  }
  if (__syncthreads_or(bad)) {
    if (t == 0 && bad_token != nullptr) atomicMin(bad_token, static_cast<int32_t>(tok));
    return;
  }
  if (layout == KvLayout::kMlaBf16_1152) {
    uint16_t h[4];
    for (int k = 0; k < 4; ++k) h[k] = FloatToBf16(x[k]);
    memcpy(dst + kBf16LatentOffset + 8 * t, h, sizeof(h));  // records need no alignment
    if (t < kMlaRopeDim) memcpy(dst + kBf16RopeOffset + 2 * t, &r, 2);
    return;
  }
  for (int o = 16; o > 0; o >>= 1) {
    const uint32_t other = __shfl_xor_sync(0xFFFFFFFFu, amax, o);
    amax = other > amax ? other : amax;
  }
  const int e = Pow2ScaleExponent(BitsToFloat(amax));
  const float inv = Pow2(-e);
  uint8_t* codes = dst + kFp8CodesOffset + 4 * t;
  for (int k = 0; k < 4; ++k) codes[k] = FloatToE4m3InRange(x[k] * inv);
  if (lane == 0) {
    const float s = Pow2(e);
    memcpy(dst + kFp8ScalesOffset + 4 * (t >> 5), &s, 4);
  }
  if (t < kMlaRopeDim) memcpy(dst + kFp8RopeOffset + 2 * t, &r, 2);
}

__global__ void DecodeKernel(KvLayout layout, const uint8_t* in, int64_t in_stride, float* out,
                             int64_t out_stride) {
  const int64_t tok = blockIdx.x;
  const uint8_t* rec = in + tok * in_stride;
  float* o = out + tok * out_stride;
  const int t = threadIdx.x;
  uint16_t r;
  if (layout == KvLayout::kMlaBf16_1152) {
    for (int k = 0; k < 4; ++k) {
      memcpy(&r, rec + 2 * (4 * t + k), 2);
      o[4 * t + k] = Bf16ToFloat(r);
    }
    if (t < kMlaRopeDim) {
      memcpy(&r, rec + kBf16RopeOffset + 2 * t, 2);
      o[kMlaLatentDim + t] = Bf16ToFloat(r);
    }
    return;
  }
  float s;
  memcpy(&s, rec + kFp8ScalesOffset + 4 * (t >> 5), 4);
  for (int k = 0; k < 4; ++k) o[4 * t + k] = E4m3ToFloat(rec[4 * t + k]) * s;
  if (t < kMlaRopeDim) {
    memcpy(&r, rec + kFp8RopeOffset + 2 * t, 2);
    o[kMlaLatentDim + t] = Bf16ToFloat(r);
  }
}

bool BadCount(int64_t n) { return n < 0 || n > INT_MAX; }

template <typename T>
cudaError_t Launch(KvLayout layout, const T* latent, int64_t latent_stride, const T* rope,
                   int64_t rope_stride, int64_t n, uint8_t* out, int64_t out_stride,
                   const PagedKvView& kv, const int64_t* slots, int32_t* bad_token,
                   cudaStream_t stream) {
  const int rb = RecordBytes(layout);
  if (rb == 0 || BadCount(n) || latent_stride < kMlaLatentDim || rope_stride < kMlaRopeDim) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (latent == nullptr || rope == nullptr) return cudaErrorInvalidValue;
  if (slots == nullptr && (out == nullptr || out_stride < rb)) return cudaErrorInvalidValue;
  EncodeKernel<T><<<static_cast<unsigned>(n), kThreads, 0, stream>>>(
      layout, latent, latent_stride, rope, rope_stride, out, out_stride, kv, slots, bad_token);
  return cudaGetLastError();
}

bool ValidView(const PagedKvView& kv) {
  const int rb = RecordBytes(kv.layout);
  return kv.pool != nullptr && kv.page_tokens > 0 && rb > 0 && kv.layer_offset >= 0 &&
         kv.layer_offset + static_cast<int64_t>(kv.page_tokens) * rb <= kv.block_stride &&
         kv.num_physical_blocks > 0;
}

}  // namespace

cudaError_t EncodeMlaRecords(KvLayout layout, const float* latent, int64_t latent_stride,
                             const float* rope, int64_t rope_stride, int64_t n, uint8_t* out,
                             int64_t out_stride, int32_t* bad_token, cudaStream_t stream) {
  return Launch(layout, latent, latent_stride, rope, rope_stride, n, out, out_stride, PagedKvView{},
                nullptr, bad_token, stream);
}

cudaError_t EncodeMlaRecordsBf16(KvLayout layout, const uint16_t* latent, int64_t latent_stride,
                                 const uint16_t* rope, int64_t rope_stride, int64_t n, uint8_t* out,
                                 int64_t out_stride, int32_t* bad_token, cudaStream_t stream) {
  return Launch(layout, latent, latent_stride, rope, rope_stride, n, out, out_stride, PagedKvView{},
                nullptr, bad_token, stream);
}

cudaError_t AppendMlaTokens(const PagedKvView& kv, const int64_t* slots, int64_t n,
                            const float* latent, int64_t latent_stride, const float* rope,
                            int64_t rope_stride, int32_t* bad_token, cudaStream_t stream) {
  if (!ValidView(kv) || (n > 0 && slots == nullptr)) return cudaErrorInvalidValue;
  return Launch(kv.layout, latent, latent_stride, rope, rope_stride, n, nullptr, 0, kv, slots,
                bad_token, stream);
}

cudaError_t DecodeMlaRecords(KvLayout layout, const uint8_t* in, int64_t in_stride, int64_t n,
                             float* out, int64_t out_stride, cudaStream_t stream) {
  const int rb = RecordBytes(layout);
  if (rb == 0 || BadCount(n) || in_stride < rb || out_stride < kMlaKeyDim) {
    return cudaErrorInvalidValue;
  }
  if (n == 0) return cudaSuccess;
  if (in == nullptr || out == nullptr) return cudaErrorInvalidValue;
  DecodeKernel<<<static_cast<unsigned>(n), kThreads, 0, stream>>>(layout, in, in_stride, out,
                                                                  out_stride);
  return cudaGetLastError();
}

}  // namespace kv::kernels::cuda
