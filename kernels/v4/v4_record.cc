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
  for (int64_t i = from; i < to; ++i) {
    if (p[i] != 0)
      return absl::DataLossError(
          kv::StrCat(what, ": padding byte ", i, " is ", int{p[i]}, ", want 0"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status EncodeV4Block(const float* kv, int64_t n, int64_t b, uint8_t* out, int64_t out_size) {
  RETURN_IF_ERROR(CheckSizes(kv, out, n, b, out_size, V4BlockBytes(b), "EncodeV4Block"));
  RETURN_IF_ERROR(CheckFinite(kv, n, kV4Dim, "v4 kv token"));
  std::memset(out, 0, out_size);
  for (int64_t t = 0; t < n; ++t) {
    const float* x = kv + t * kV4Dim;
    uint8_t* rec = out + t * kV4TokenBytes;
    uint8_t* sc = out + b * kV4TokenBytes + t * kV4ScaleBytes;
    for (int k = 0; k < kV4Tiles; ++k) {
      const int e = Pow2ScaleExponent(TileAmax(x + 64 * k, 64));
      const float inv = Pow2(-e);  // exact: x / 2^e == x * 2^-e
      for (int i = 64 * k; i < 64 * k + 64; ++i) rec[i] = FloatToE4m3InRange(x[i] * inv);
      sc[k] = static_cast<uint8_t>(e + 127);
    }
    for (int i = 0; i < kV4RopeDim; ++i) {
      const uint16_t h = FloatToBf16(x[kV4NopeDim + i]);
      rec[kV4NopeDim + 2 * i] = static_cast<uint8_t>(h & 0xFF);
      rec[kV4NopeDim + 2 * i + 1] = static_cast<uint8_t>(h >> 8);
    }
  }
  return absl::OkStatus();
}

absl::Status DecodeV4Block(const uint8_t* block, int64_t block_size, int64_t b, int64_t n,
                           float* kv) {
  RETURN_IF_ERROR(CheckSizes(block, kv, n, b, block_size, V4BlockBytes(b), "DecodeV4Block"));
  RETURN_IF_ERROR(CheckZero(block, b * kV4RecordBytes, block_size, "v4 block"));
  std::vector<float> tmp(static_cast<size_t>(n) * kV4Dim);
  const float* e4m3 = E4m3Table();
  for (int64_t t = 0; t < n; ++t) {
    const uint8_t* rec = block + t * kV4TokenBytes;
    const uint8_t* sc = block + b * kV4TokenBytes + t * kV4ScaleBytes;
    if (sc[7] != 0)
      return absl::DataLossError(kv::StrCat("v4 block token ", t, ": pad byte is ", int{sc[7]}));
    float* x = tmp.data() + t * kV4Dim;
    for (int k = 0; k < kV4Tiles; ++k) {
      if (sc[k] == 0xFF)
        return absl::DataLossError(
            kv::StrCat("v4 block token ", t, ": scale ", k, " is NaN (0xFF)"));
      const float s = Ue8m0ToFloat(sc[k]);
      bool nan = false;
      for (int i = 64 * k; i < 64 * k + 64; ++i) {
        nan |= (rec[i] & 0x7F) == 0x7F;
        x[i] = e4m3[rec[i]] * s;
      }
      if (nan) {
        for (int i = 64 * k; i < 64 * k + 64; ++i) {
          if ((rec[i] & 0x7F) == 0x7F) {
            return absl::DataLossError(
                kv::StrCat("v4 block token ", t, ": e4m3 code at byte ", i, " is NaN"));
          }
        }
      }
    }
    for (int i = 0; i < kV4RopeDim; ++i) {
      x[kV4NopeDim + i] = Bf16ToFloat(
          static_cast<uint16_t>(rec[kV4NopeDim + 2 * i] | (rec[kV4NopeDim + 2 * i + 1] << 8)));
    }
  }
  std::memcpy(kv, tmp.data(), tmp.size() * sizeof(float));
  return absl::OkStatus();
}

absl::Status EncodeIndexerBlock(const float* keys, int64_t n, int64_t b, uint8_t* out,
                                int64_t out_size) {
  RETURN_IF_ERROR(
      CheckSizes(keys, out, n, b, out_size, IndexerBlockBytes(b), "EncodeIndexerBlock"));
  RETURN_IF_ERROR(CheckFinite(keys, n, kIndexerDim, "indexer key"));
  std::memset(out, 0, out_size);
  for (int64_t t = 0; t < n; ++t) {
    const float* x = keys + t * kIndexerDim;
    const int e = Pow2ScaleExponent(TileAmax(x, kIndexerDim));
    const float inv = Pow2(-e);
    for (int i = 0; i < kIndexerDim; ++i) out[t * kIndexerDim + i] = FloatToE4m3InRange(x[i] * inv);
    const float scale = Pow2(e);
    std::memcpy(out + b * kIndexerDim + t * 4, &scale, 4);
  }
  return absl::OkStatus();
}

absl::Status DecodeIndexerBlock(const uint8_t* block, int64_t block_size, int64_t b, int64_t n,
                                float* keys) {
  RETURN_IF_ERROR(
      CheckSizes(block, keys, n, b, block_size, IndexerBlockBytes(b), "DecodeIndexerBlock"));
  RETURN_IF_ERROR(CheckZero(block, b * kIndexerRecordBytes, block_size, "indexer block"));
  std::vector<float> tmp(static_cast<size_t>(n) * kIndexerDim);
  const float* e4m3 = E4m3Table();
  for (int64_t t = 0; t < n; ++t) {
    float s;
    std::memcpy(&s, block + b * kIndexerDim + t * 4, 4);
    const uint32_t bits = FloatBits(s);
    if ((bits & 0x807FFFFFu) != 0 || (bits >> 23) == 0 || (bits >> 23) == 0xFF) {
      return absl::DataLossError(
          kv::StrCat("indexer block entry ", t, ": scale ", s, " is not a positive power of two"));
    }
    for (int i = 0; i < kIndexerDim; ++i) {
      const uint8_t c = block[t * kIndexerDim + i];
      if ((c & 0x7F) == 0x7F)
        return absl::DataLossError(kv::StrCat("indexer block entry ", t, ": code ", i, " is NaN"));
      tmp[t * kIndexerDim + i] = e4m3[c] * s;
    }
  }
  std::memcpy(keys, tmp.data(), tmp.size() * sizeof(float));
  return absl::OkStatus();
}

}  // namespace kv::kernels::v4
