// formats.md §2.2 (MODEL1_FP8Sparse, 584 B/token) and §3/§4.4 (132-B indexer keys).
#include "kernels/v4/v4_record.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/bf16.h"
#include "kernels/fp8.h"
#include "kernels/v4/compressor.h"

namespace kv::kernels::v4 {
namespace {

absl::Status CheckSizes(const void* in, const void* out, int64_t n, int64_t b, int64_t size,
                        int64_t want, const char* what) {
  if (in == nullptr || out == nullptr)
    return absl::InvalidArgumentError(kv::StrCat(what, ": null pointer"));
  if (b < 1 || n < 0 || n > b) {
    return absl::InvalidArgumentError(
        kv::StrCat(what, ": n ", n, " / block ", b, " (need 0 <= n <= block, block >= 1)"));
  }
  if (size != want) {
    return absl::InvalidArgumentError(
        kv::StrCat(what, ": buffer is ", size, " bytes, block of ", b, " needs ", want));
  }
  return absl::OkStatus();
}

float TileAmax(const float* x, int n) {
  float a = 0.0f;
  for (int i = 0; i < n; ++i) a = std::max(a, std::fabs(x[i]));
  return a;
}

absl::Status CheckZero(const uint8_t* p, int64_t from, int64_t to, const char* what) {
  uint8_t any = 0;  // an OR first (vectorises); the byte is located only on error
  for (int64_t i = from; i < to; ++i) any |= p[i];
  if (any == 0) return absl::OkStatus();
  for (int64_t i = from; i < to; ++i) {
    if (p[i] != 0)
      return absl::DataLossError(
          kv::StrCat(what, ": padding byte ", i, " is ", int{p[i]}, ", want 0"));
  }
  return absl::OkStatus();
}

// The record loops are written to vectorise; on x86-64 they are also compiled for AVX-512 and
// AVX2 and picked at load time, as kernels/mla_record.cc does. Every step is exact, so all
// clones give the same bytes.
#if defined(__x86_64__) && defined(__GNUC__) && defined(__ELF__)
#define KV_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define KV_VECTOR_CLONES
#endif

// One record from 512 floats (finite, checked by the caller).
void EncodeOneV4(const float* x, uint8_t* rec, uint8_t* sc) {
  for (int k = 0; k < kV4Tiles; ++k) {
    const int e = Pow2ScaleExponent(TileAmax(x + 64 * k, 64));
    const float inv = Pow2(-e);  // exact: x / 2^e == x * 2^-e
    for (int i = 64 * k; i < 64 * k + 64; ++i) rec[i] = FloatToE4m3InRange(x[i] * inv);
    sc[k] = static_cast<uint8_t>(e + 127);
  }
  sc[7] = 0;
  for (int i = 0; i < kV4RopeDim; ++i) {
    const uint16_t h = FloatToBf16(x[kV4NopeDim + i]);
    rec[kV4NopeDim + 2 * i] = static_cast<uint8_t>(h & 0xFF);
    rec[kV4NopeDim + 2 * i + 1] = static_cast<uint8_t>(h >> 8);
  }
}

void EncodeOneIndexer(const float* x, uint8_t* codes, uint8_t* scale) {
  const int e = Pow2ScaleExponent(TileAmax(x, kIndexerDim));
  const float inv = Pow2(-e);
  for (int i = 0; i < kIndexerDim; ++i) codes[i] = FloatToE4m3InRange(x[i] * inv);
  const float s = Pow2(e);
  std::memcpy(scale, &s, 4);
}

bool Bf16NonFinite(uint8_t lo, uint8_t hi) { return (hi & 0x7F) == 0x7F && (lo & 0x80) != 0; }

uint64_t Load64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// Word-wise tests (8 bytes / 4 bf16 at a time; no carry crosses a lane):
//  - an e4m3 NaN byte has its low 7 bits all ones: (b & 0x7F) + 1 sets bit 7 only then;
//  - a bf16 Inf/NaN has exponent bits 7..14 all ones: (h & 0x7F80) + 0x80 sets bit 15 only then;
//  - a zero byte b (used on ~scale: a 0xFF scale): (b - 1) & ~b has bit 7 set only for b = 0.
constexpr uint64_t kLow7 = 0x7F7F7F7F7F7F7F7Full, kOnes = 0x0101010101010101ull;
constexpr uint64_t kHigh = 0x8080808080808080ull;
uint64_t NanCodes(uint64_t w) { return ((w & kLow7) + kOnes) & kHigh; }
uint64_t NonFiniteBf16(uint64_t w) {
  return ((w & 0x7F807F807F807F80ull) + 0x0080008000800080ull) & 0x8000800080008000ull;
}
uint64_t ZeroBytes(uint64_t w) { return (w - kOnes) & ~w & kHigh; }

// Checks n split records for bytes the decoder refuses (true when none). Branch-free over
// each record so the loops vectorise.
KV_VECTOR_CLONES bool V4RecordsValid(const uint8_t* tok, const uint8_t* sc, int64_t n) {
  uint64_t bad = 0;
  for (int64_t t = 0; t < n; ++t) {
    const uint8_t* r = tok + t * kV4TokenBytes;
    for (int i = 0; i < kV4NopeDim; i += 8) bad |= NanCodes(Load64(r + i));
    for (int i = kV4NopeDim; i < kV4TokenBytes; i += 8) bad |= NonFiniteBf16(Load64(r + i));
    // Scale bytes 0..6 are not 0xFF and byte 7 (the pad) is 0: ~s has no zero byte in 0..6
    // and its byte 7 is 0xFF.
    const uint64_t s = Load64(sc + t * kV4ScaleBytes);
    bad |= ZeroBytes(~s | 0xFF00000000000000ull) | (s >> 56);
  }
  return bad == 0;
}

// The slow path after V4RecordsValid found a bad byte: names the first one.
absl::Status FindBadV4Record(const uint8_t* tok, const uint8_t* sc, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    const uint8_t* rec = tok + t * kV4TokenBytes;
    const uint8_t* s = sc + t * kV4ScaleBytes;
    if (s[7] != 0)
      return absl::DataLossError(kv::StrCat("v4 block token ", t, ": pad byte is ", int{s[7]}));
    for (int k = 0; k < kV4Tiles; ++k) {
      if (s[k] == 0xFF)
        return absl::DataLossError(
            kv::StrCat("v4 block token ", t, ": scale ", k, " is NaN (0xFF)"));
    }
    for (int i = 0; i < kV4NopeDim; ++i) {
      if ((rec[i] & 0x7F) == 0x7F)
        return absl::DataLossError(
            kv::StrCat("v4 block token ", t, ": e4m3 code at byte ", i, " is NaN"));
    }
    for (int i = 0; i < kV4RopeDim; ++i) {
      if (Bf16NonFinite(rec[kV4NopeDim + 2 * i], rec[kV4NopeDim + 2 * i + 1]))
        return absl::DataLossError(
            kv::StrCat("v4 block token ", t, ": rope bf16 ", i, " is Inf or NaN"));
    }
  }
  return absl::InternalError("v4 block: a bad byte was detected but not found again");
}

bool IndexerScaleValid(const uint8_t* p) {
  uint32_t bits;
  std::memcpy(&bits, p, 4);
  return (bits & 0x807FFFFFu) == 0 && (bits >> 23) != 0 && (bits >> 23) != 0xFF;
}

KV_VECTOR_CLONES bool IndexerRecordsValid(const uint8_t* codes, const uint8_t* scales, int64_t n) {
  uint64_t bad = 0;
  for (int64_t i = 0; i < n * kIndexerDim; i += 8) bad |= NanCodes(Load64(codes + i));
  for (int64_t t = 0; t < n; ++t) bad |= !IndexerScaleValid(scales + 4 * t);
  return bad == 0;
}

absl::Status FindBadIndexerRecord(const uint8_t* codes, const uint8_t* scales, int64_t n) {
  for (int64_t t = 0; t < n; ++t) {
    if (!IndexerScaleValid(scales + 4 * t)) {
      float s;
      std::memcpy(&s, scales + 4 * t, 4);
      return absl::DataLossError(
          kv::StrCat("indexer block entry ", t, ": scale ", s, " is not a positive power of two"));
    }
    for (int i = 0; i < kIndexerDim; ++i) {
      if ((codes[t * kIndexerDim + i] & 0x7F) == 0x7F)
        return absl::DataLossError(kv::StrCat("indexer block entry ", t, ": code ", i, " is NaN"));
    }
  }
  return absl::InternalError("indexer block: a bad byte was detected but not found again");
}

}  // namespace

absl::Status EncodeV4Block(const float* kv, int64_t n, int64_t b, uint8_t* out, int64_t out_size) {
  RETURN_IF_ERROR(CheckSizes(kv, out, n, b, out_size, V4BlockBytes(b), "EncodeV4Block"));
  RETURN_IF_ERROR(CheckFinite(kv, n, kV4Dim, "v4 kv token"));
  std::memset(out, 0, out_size);
  for (int64_t t = 0; t < n; ++t) {
    EncodeOneV4(kv + t * kV4Dim, out + t * kV4TokenBytes,
                out + b * kV4TokenBytes + t * kV4ScaleBytes);
  }
  return absl::OkStatus();
}

absl::Status EncodeV4Records(const float* kv, int64_t n, uint8_t* tok_out, uint8_t* sc_out) {
  if (n < 0 || (n > 0 && (kv == nullptr || tok_out == nullptr || sc_out == nullptr)))
    return absl::InvalidArgumentError(kv::StrCat("EncodeV4Records: n ", n, " or null pointer"));
  RETURN_IF_ERROR(CheckFinite(kv, n, kV4Dim, "v4 kv token"));
  for (int64_t t = 0; t < n; ++t) {
    EncodeOneV4(kv + t * kV4Dim, tok_out + t * kV4TokenBytes, sc_out + t * kV4ScaleBytes);
  }
  return absl::OkStatus();
}

absl::Status CopyV4Block(const uint8_t* block, int64_t block_size, int64_t n, uint8_t* tok_out,
                         uint8_t* sc_out) {
  if (n == 0) {
    if (block_size != 0)
      return absl::InvalidArgumentError(kv::StrCat("CopyV4Block: 0 records in ", block_size, " B"));
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(CheckSizes(block, block, n, n, block_size, V4BlockBytes(n), "CopyV4Block"));
  if ((tok_out == nullptr) != (sc_out == nullptr))
    return absl::InvalidArgumentError("CopyV4Block: one null output");
  RETURN_IF_ERROR(CheckZero(block, n * kV4RecordBytes, block_size, "v4 block"));
  const uint8_t* sc = block + n * kV4TokenBytes;
  if (!V4RecordsValid(block, sc, n)) return FindBadV4Record(block, sc, n);
  if (tok_out != nullptr) {
    std::memcpy(tok_out, block, static_cast<size_t>(n) * kV4TokenBytes);
    std::memcpy(sc_out, sc, static_cast<size_t>(n) * kV4ScaleBytes);
  }
  return absl::OkStatus();
}

KV_VECTOR_CLONES void DequantizeV4Records(const uint8_t* tok, const uint8_t* sc, int64_t n,
                                          float* out) {
  for (int64_t t = 0; t < n; ++t) {
    const uint8_t* rec = tok + t * kV4TokenBytes;
    const uint8_t* s = sc + t * kV4ScaleBytes;
    float* x = out + t * kV4Dim;
    for (int k = 0; k < kV4Tiles; ++k) {
      const float scale = Ue8m0ToFloat(s[k]);
      for (int i = 64 * k; i < 64 * k + 64; ++i) x[i] = E4m3ToFloatArith(rec[i]) * scale;
    }
    for (int i = 0; i < kV4RopeDim; ++i) {
      x[kV4NopeDim + i] = Bf16ToFloat(
          static_cast<uint16_t>(rec[kV4NopeDim + 2 * i] | (rec[kV4NopeDim + 2 * i + 1] << 8)));
    }
  }
}

absl::Status DecodeV4Block(const uint8_t* block, int64_t block_size, int64_t b, int64_t n,
                           float* kv) {
  RETURN_IF_ERROR(CheckSizes(block, kv, n, b, block_size, V4BlockBytes(b), "DecodeV4Block"));
  RETURN_IF_ERROR(CheckZero(block, b * kV4RecordBytes, block_size, "v4 block"));
  const uint8_t* sc = block + b * kV4TokenBytes;
  if (!V4RecordsValid(block, sc, n)) return FindBadV4Record(block, sc, n);
  DequantizeV4Records(block, sc, n, kv);
  return absl::OkStatus();
}

absl::Status EncodeIndexerBlock(const float* keys, int64_t n, int64_t b, uint8_t* out,
                                int64_t out_size) {
  RETURN_IF_ERROR(
      CheckSizes(keys, out, n, b, out_size, IndexerBlockBytes(b), "EncodeIndexerBlock"));
  RETURN_IF_ERROR(CheckFinite(keys, n, kIndexerDim, "indexer key"));
  std::memset(out, 0, out_size);
  for (int64_t t = 0; t < n; ++t) {
    EncodeOneIndexer(keys + t * kIndexerDim, out + t * kIndexerDim, out + b * kIndexerDim + t * 4);
  }
  return absl::OkStatus();
}

absl::Status EncodeIndexerRecords(const float* keys, int64_t n, uint8_t* codes_out,
                                  uint8_t* scales_out) {
  if (n < 0 || (n > 0 && (keys == nullptr || codes_out == nullptr || scales_out == nullptr)))
    return absl::InvalidArgumentError(
        kv::StrCat("EncodeIndexerRecords: n ", n, " or null pointer"));
  RETURN_IF_ERROR(CheckFinite(keys, n, kIndexerDim, "indexer key"));
  for (int64_t t = 0; t < n; ++t) {
    EncodeOneIndexer(keys + t * kIndexerDim, codes_out + t * kIndexerDim, scales_out + t * 4);
  }
  return absl::OkStatus();
}

absl::Status CopyIndexerBlock(const uint8_t* block, int64_t block_size, int64_t n,
                              uint8_t* codes_out, uint8_t* scales_out) {
  if (n == 0) {
    if (block_size != 0)
      return absl::InvalidArgumentError(
          kv::StrCat("CopyIndexerBlock: 0 records in ", block_size, " B"));
    return absl::OkStatus();
  }
  RETURN_IF_ERROR(
      CheckSizes(block, block, n, n, block_size, IndexerBlockBytes(n), "CopyIndexerBlock"));
  if ((codes_out == nullptr) != (scales_out == nullptr))
    return absl::InvalidArgumentError("CopyIndexerBlock: one null output");
  RETURN_IF_ERROR(CheckZero(block, n * kIndexerRecordBytes, block_size, "indexer block"));
  const uint8_t* scales = block + n * kIndexerDim;
  if (!IndexerRecordsValid(block, scales, n)) return FindBadIndexerRecord(block, scales, n);
  if (codes_out != nullptr) {
    std::memcpy(codes_out, block, static_cast<size_t>(n) * kIndexerDim);
    std::memcpy(scales_out, scales, static_cast<size_t>(n) * 4);
  }
  return absl::OkStatus();
}

KV_VECTOR_CLONES void DequantizeIndexerRecords(const uint8_t* codes, const uint8_t* scales,
                                               int64_t n, float* out) {
  for (int64_t t = 0; t < n; ++t) {
    float s;
    std::memcpy(&s, scales + 4 * t, 4);
    const uint8_t* c = codes + t * kIndexerDim;
    float* x = out + t * kIndexerDim;
    for (int i = 0; i < kIndexerDim; ++i) x[i] = E4m3ToFloatArith(c[i]) * s;
  }
}

absl::Status DecodeIndexerBlock(const uint8_t* block, int64_t block_size, int64_t b, int64_t n,
                                float* keys) {
  RETURN_IF_ERROR(
      CheckSizes(block, keys, n, b, block_size, IndexerBlockBytes(b), "DecodeIndexerBlock"));
  RETURN_IF_ERROR(CheckZero(block, b * kIndexerRecordBytes, block_size, "indexer block"));
  const uint8_t* scales = block + b * kIndexerDim;
  if (!IndexerRecordsValid(block, scales, n)) return FindBadIndexerRecord(block, scales, n);
  DequantizeIndexerRecords(block, scales, n, keys);
  return absl::OkStatus();
}

}  // namespace kv::kernels::v4
