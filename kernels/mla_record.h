// Encoding and decoding of MLA token records (mla-fp8-656 and mla-bf16-1152; see
// kernels/kv_layout.h for the byte layouts, formats.md §2.1 and §5 for the math).
//
// FP8 encode, per 128-element tile of the 512-d latent: amax -> power-of-two scale
// 2^ceil(log2(max(amax,1e-4)/448)) (kernels/fp8.h) -> code = E4M3_satfinite(x / scale). The
// 64 rope values are stored as bf16, never quantized (an f32 rope input is rounded RNE).
// Decode: x = E4M3(code) * scale, exact. Round-trip error per element is at most
// max(2^-4 |x|, scale * 2^-10) (half an e4m3 ulp in the normal / subnormal range).
// bf16 encode rounds each value RNE; decode is exact.
//
// Invariance contract: a record's bytes depend only on that token's values (per-tile amax by
// bit comparison, power-of-two scales, exact division and RNE rounding; no reduction order).
//
// Batched over n tokens. Strides are in elements for the inputs/outputs that are arrays of
// numbers and in bytes for record arrays. Inputs and outputs must not overlap.
//
// Errors (nothing is written for a token after an error is found; tokens before it are
// written): InvalidArgument for null pointers with n > 0, negative n, strides smaller than
// a row, an unknown layout, or a non-finite latent/rope value (the message names the token
// and element). Thread-safe: no shared state.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "kernels/kv_layout.h"

namespace kv::kernels {

// Token-major sources. latent: n rows of 512 values at latent + i*latent_stride; rope: n
// rows of 64 post-RoPE values at rope + i*rope_stride. For a model's [n, 576] kv row the
// natural call is {row, 576, row + 512, 576}.
struct MlaSourceF32 {
  const float* latent = nullptr;
  int64_t latent_stride = kMlaKeyDim;
  const float* rope = nullptr;
  int64_t rope_stride = kMlaKeyDim;
};
struct MlaSourceBf16 {
  const uint16_t* latent = nullptr;
  int64_t latent_stride = kMlaKeyDim;
  const uint16_t* rope = nullptr;
  int64_t rope_stride = kMlaKeyDim;
};

// Writes n records of `layout` to out + i*out_stride (out_stride >= RecordBytes(layout)).
absl::Status EncodeMlaRecords(KvLayout layout, const MlaSourceF32& src, int64_t n, uint8_t* out,
                              int64_t out_stride);
absl::Status EncodeMlaRecords(KvLayout layout, const MlaSourceBf16& src, int64_t n, uint8_t* out,
                              int64_t out_stride);

// Decodes n records at in + i*in_stride into out rows of 576 floats [latent 512 | rope 64]
// at out + i*out_stride (elements, >= 576). A stored NaN code decodes to NaN; this function
// does not reject it (records come from checksummed pages).
absl::Status DecodeMlaRecords(KvLayout layout, const uint8_t* in, int64_t in_stride, int64_t n,
                              float* out, int64_t out_stride);

// Single-record primitives, no argument checks (the batched forms validate). The latent
// tile loop is where the CPU quantizer spends its time.
// Returns false (writing nothing) when a latent or rope value is not finite.
bool QuantizeMlaFp8Record(const float* latent, const uint16_t* rope_bf16, uint8_t* out);
void DequantizeMlaFp8Record(const uint8_t* in, float* out576);

}  // namespace kv::kernels
