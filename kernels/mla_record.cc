#include "kernels/mla_record.h"

#include <bit>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/bf16.h"
#include "kernels/fp8.h"

// The record loops are written to vectorise. On x86-64 they are also compiled for AVX-512 and
// AVX2 and picked at load time (ifunc), so the binary stays portable without any -march
// flag. Every step is exact or one RNE rounding of one value, so all clones give the same bytes.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__)
#define KV_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KV_VECTOR_CLONES
#endif

namespace kv::kernels {
namespace {

// Records are little-endian (formats.md §2.1); scales and bf16 are memcpy'd from host order.
static_assert(std::endian::native == std::endian::little, "kvstrata assumes a little-endian host");

bool Bf16IsFinite(uint16_t h) { return (h & 0x7F80u) != 0x7F80u; }

// Largest |x| of a tile as raw bits (the unsigned order of |x|'s bits is the order of |x|;
// NaN sorts above Inf), so one compare tells "non-finite".
uint32_t TileAbsMaxBits(const float* x) {
  uint32_t m = 0;
  for (int j = 0; j < kMlaTile; ++j) {
    const uint32_t a = FloatBits(x[j]) & 0x7FFFFFFFu;
    m = a > m ? a : m;
  }
  return m;
}

absl::Status CheckCommon(KvLayout layout, int64_t n, const void* latent, int64_t latent_stride,
                         const void* rope, int64_t rope_stride, const void* out,
                         int64_t out_stride) {
  const int rb = RecordBytes(layout);
  if (rb == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown KV layout id ", static_cast<int>(layout)));
  }
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("negative token count ", n));
  if (n == 0) return absl::OkStatus();
  if (latent == nullptr || rope == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("null latent, rope or output pointer");
  }
  if (latent_stride < kMlaLatentDim || rope_stride < kMlaRopeDim || out_stride < rb) {
    return absl::InvalidArgumentError(
        absl::StrCat("strides too small: latent ", latent_stride, " (need >= 512), rope ",
                     rope_stride, " (need >= 64), out ", out_stride, " (need >= ", rb, ")"));
  }
  return absl::OkStatus();
}

absl::Status NonFinite(int64_t token, const char* what) {
  return absl::InvalidArgumentError(
      absl::StrCat("token ", token, ": ", what, " contains a NaN or infinite value"));
}

// One bf16 record from f32 latent + bf16 rope. False when a latent value is not finite.
bool EncodeBf16Record(const float* latent, const uint16_t* rope, uint8_t* out) {
  uint16_t lat[kMlaLatentDim];
  uint32_t bad = 0;
  for (int j = 0; j < kMlaLatentDim; ++j) {
    bad |= (FloatBits(latent[j]) & 0x7F800000u) == 0x7F800000u;
    lat[j] = FloatToBf16(latent[j]);
  }
  if (bad) return false;
  std::memcpy(out + kBf16LatentOffset, lat, sizeof(lat));
  std::memcpy(out + kBf16RopeOffset, rope, kMlaRopeDim * sizeof(uint16_t));
  return true;
}

// Rope row as bf16; false when a value is not finite.
bool RopeToBf16(const float* rope, uint16_t* out) {
  uint32_t bad = 0;
  for (int j = 0; j < kMlaRopeDim; ++j) {
    bad |= (FloatBits(rope[j]) & 0x7F800000u) == 0x7F800000u;
    out[j] = FloatToBf16(rope[j]);
  }
  return bad == 0;
}
bool RopeFinite(const uint16_t* rope) {
  for (int j = 0; j < kMlaRopeDim; ++j) {
    if (!Bf16IsFinite(rope[j])) return false;
  }
  return true;
}

// Encodes token i of either source type. `latent` is f32 here; bf16 latents are widened
// first (exactly) by the caller.
absl::Status EncodeOne(KvLayout layout, int64_t i, const float* latent, const uint16_t* rope_bf16,
                       uint8_t* out) {
  const bool ok = layout == KvLayout::kMlaFp8_656 ? QuantizeMlaFp8Record(latent, rope_bf16, out)
                                                  : EncodeBf16Record(latent, rope_bf16, out);
  return ok ? absl::OkStatus() : NonFinite(i, "latent");
}

}  // namespace

KV_VECTOR_CLONES bool QuantizeMlaFp8Record(const float* latent, const uint16_t* rope_bf16,
                                           uint8_t* out) {
  float scales[kMlaTiles];
  uint8_t codes[kMlaLatentDim];
  for (int t = 0; t < kMlaTiles; ++t) {
    const float* x = latent + t * kMlaTile;
    const uint32_t amax_bits = TileAbsMaxBits(x);
    if (amax_bits >= 0x7F800000u) return false;
    const int e = Pow2ScaleExponent(BitsToFloat(amax_bits));
    scales[t] = Pow2(e);
    const float inv = Pow2(-e);  // exact: x * 2^-e == x / 2^e
    uint8_t* c = codes + t * kMlaTile;
    for (int j = 0; j < kMlaTile; ++j) c[j] = FloatToE4m3InRange(x[j] * inv);
  }
  if (!RopeFinite(rope_bf16)) return false;
  std::memcpy(out + kFp8CodesOffset, codes, sizeof(codes));
  std::memcpy(out + kFp8ScalesOffset, scales, sizeof(scales));  // little-endian host
  std::memcpy(out + kFp8RopeOffset, rope_bf16, kMlaRopeDim * sizeof(uint16_t));
  return true;
}

KV_VECTOR_CLONES void DequantizeMlaFp8Record(const uint8_t* in, float* out576) {
  float scales[kMlaTiles];
  std::memcpy(scales, in + kFp8ScalesOffset, sizeof(scales));
  for (int t = 0; t < kMlaTiles; ++t) {
    const uint8_t* c = in + kFp8CodesOffset + t * kMlaTile;
    float* o = out576 + t * kMlaTile;
    for (int j = 0; j < kMlaTile; ++j) o[j] = E4m3ToFloatArith(c[j]) * scales[t];
  }
  uint16_t rope[kMlaRopeDim];
  std::memcpy(rope, in + kFp8RopeOffset, sizeof(rope));
  for (int j = 0; j < kMlaRopeDim; ++j) out576[kMlaLatentDim + j] = Bf16ToFloat(rope[j]);
}

absl::Status EncodeMlaRecords(KvLayout layout, const MlaSourceF32& src, int64_t n, uint8_t* out,
                              int64_t out_stride) {
  if (absl::Status s = CheckCommon(layout, n, src.latent, src.latent_stride, src.rope,
                                   src.rope_stride, out, out_stride);
      !s.ok() || n == 0) {
    return s;
  }
  uint16_t rope[kMlaRopeDim];
  for (int64_t i = 0; i < n; ++i) {
    if (!RopeToBf16(src.rope + i * src.rope_stride, rope)) return NonFinite(i, "rope");
    if (absl::Status s =
            EncodeOne(layout, i, src.latent + i * src.latent_stride, rope, out + i * out_stride);
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status EncodeMlaRecords(KvLayout layout, const MlaSourceBf16& src, int64_t n, uint8_t* out,
                              int64_t out_stride) {
  if (absl::Status s = CheckCommon(layout, n, src.latent, src.latent_stride, src.rope,
                                   src.rope_stride, out, out_stride);
      !s.ok() || n == 0) {
    return s;
  }
  float latent[kMlaLatentDim];
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t* lat = src.latent + i * src.latent_stride;
    const uint16_t* rope = src.rope + i * src.rope_stride;
    if (!RopeFinite(rope)) return NonFinite(i, "rope");
    for (int j = 0; j < kMlaLatentDim; ++j) latent[j] = Bf16ToFloat(lat[j]);
    if (absl::Status s = EncodeOne(layout, i, latent, rope, out + i * out_stride); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeMlaRecords(KvLayout layout, const uint8_t* in, int64_t in_stride, int64_t n,
                              float* out, int64_t out_stride) {
  const int rb = RecordBytes(layout);
  if (rb == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown KV layout id ", static_cast<int>(layout)));
  }
  if (n < 0) return absl::InvalidArgumentError(absl::StrCat("negative token count ", n));
  if (n == 0) return absl::OkStatus();
  if (in == nullptr || out == nullptr) {
    return absl::InvalidArgumentError("null record or output pointer");
  }
  if (in_stride < rb || out_stride < kMlaKeyDim) {
    return absl::InvalidArgumentError(absl::StrCat("strides too small: in ", in_stride,
                                                   " (need >= ", rb, "), out ", out_stride,
                                                   " (need >= 576)"));
  }
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t* r = in + i * in_stride;
    float* o = out + i * out_stride;
    if (layout == KvLayout::kMlaFp8_656) {
      DequantizeMlaFp8Record(r, o);
    } else {
      uint16_t h[kMlaKeyDim];
      std::memcpy(h, r, sizeof(h));
      for (int j = 0; j < kMlaKeyDim; ++j) o[j] = Bf16ToFloat(h[j]);
    }
  }
  return absl::OkStatus();
}

}  // namespace kv::kernels
