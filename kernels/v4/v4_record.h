// Byte codecs of the V4 KV cache (formats.md §2.2, §3, §4.4, §4.5):
//
//  v4-fp8-584 block of B tokens (main compressed KV and SWA KV), size V4BlockBytes(B):
//    [0, B·576)          token t at t·576: 448 e4m3 codes (dims 0..447), then 64 bf16
//                        (dims 448..511, the RoPE part, little-endian, RNE);
//    [B·576, B·576+B·8)  token t at B·576 + t·8: 7 UE8M0 scales (tile k = dims [64k, 64k+64),
//                        byte = exponent + 127, scale = 2^ceil(log2(max(amax,1e-4)/448))),
//                        then 1 zero pad byte;
//    then zero padding up to a multiple of 576 bytes (B = 64: 37,376 -> 37,440 B).
//  Indexer key block of B entries, size IndexerBlockBytes(B):
//    [B×128 e4m3 codes | B×4 f32 power-of-two scales] then zero padding to a multiple of 576
//    (B = 64: 8,448 -> 8,640 B). One scale per 128-d key.
//
// Token slots at or past n (a partly filled block) are written as zeros. Decoders check every
// byte they rely on (no NaN codes, scale bytes valid, pad and padding bytes zero) so a corrupt
// block is reported, never turned into wrong numbers. Pure functions; thread-safe; outputs
// are written only on success (encoders may have written part of out on error).
//
// Invariance contract: a record's bytes depend only on its own vector (bit-exact amax,
// power-of-two scales, RNE), never on the batch or the CPU.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace kv::kernels::v4 {

inline constexpr int kV4Dim = 512, kV4NopeDim = 448, kV4RopeDim = 64, kV4Tiles = 7;
inline constexpr int kV4TokenBytes = 576;                             // 448 e4m3 + 64 bf16
inline constexpr int kV4ScaleBytes = 8;                               // 7 UE8M0 + 1 pad
inline constexpr int kV4RecordBytes = kV4TokenBytes + kV4ScaleBytes;  // 584
inline constexpr int kIndexerDim = 128;
inline constexpr int kIndexerRecordBytes = kIndexerDim + 4;  // 132
inline constexpr int64_t kV4BlockAlign = 576;

inline int64_t RoundUp576(int64_t x) {
  return (x + kV4BlockAlign - 1) / kV4BlockAlign * kV4BlockAlign;
}
inline int64_t V4BlockBytes(int64_t block_tokens) {
  return RoundUp576(block_tokens * kV4RecordBytes);
}
inline int64_t IndexerBlockBytes(int64_t block_entries) {
  return RoundUp576(block_entries * kIndexerRecordBytes);
}

// kv: n rows of 512 floats (stride 512). InvalidArgument for null pointers, B < 1,
// n outside [0, B], out_size != V4BlockBytes(B), or a non-finite value (token named).
absl::Status EncodeV4Block(const float* kv, int64_t n, int64_t block_tokens, uint8_t* out,
                           int64_t out_size);
// Decodes tokens [0, n) to n × 512 floats. InvalidArgument for bad sizes; DataLoss naming the
// token and byte for a NaN code, a 0xFF scale, a nonzero pad byte or nonzero block padding.
absl::Status DecodeV4Block(const uint8_t* block, int64_t block_size, int64_t block_tokens,
                           int64_t n, float* kv);

// The same for 128-d indexer keys.
absl::Status EncodeIndexerBlock(const float* keys, int64_t n, int64_t block_entries, uint8_t* out,
                                int64_t out_size);
// DataLoss for NaN codes, a scale that is not a positive normal power of two, or nonzero
// block padding. Slots at or past n are not read.
absl::Status DecodeIndexerBlock(const uint8_t* block, int64_t block_size, int64_t block_entries,
                                int64_t n, float* keys);

// ---- Split records: what the model's cache keeps and the attention reads ----------------------
//
// n records as a block lays them out, without the padding: the token bytes of record t at
// tok + t·576 and its scale bytes at sc + t·8 (for a block of B: tok = block, sc = block +
// B·576), so a block's records are appended to a cache by two copies. Indexer keys the same:
// codes + t·128 and scales + t·4.

// Checks a v4-fp8-584 block of n records (block_size == V4BlockBytes(n)) as DecodeV4Block
// does (padding zero, no NaN code, no 0xFF scale, pad byte zero) and also that no RoPE bf16
// is Inf or NaN, while copying its token bytes to tok_out (n × 576) and its scale bytes to
// sc_out (n × 8); with both outputs null it only checks. InvalidArgument for bad sizes;
// DataLoss naming the record and byte. The outputs may be partly written on error.
absl::Status CopyV4Block(const uint8_t* block, int64_t block_size, int64_t n, uint8_t* tok_out,
                         uint8_t* sc_out);
// Dequantizes n split records (checked by CopyV4Block or written by EncodeV4Block; not checked
// again) to n × 512 floats, bit-identical to DecodeV4Block. Never fails.
void DequantizeV4Records(const uint8_t* tok, const uint8_t* sc, int64_t n, float* out);
// Writes n split records (the layout above) from n × 512 floats; InvalidArgument for a
// non-finite value (the record named). The bytes equal EncodeV4Block's.
absl::Status EncodeV4Records(const float* kv, int64_t n, uint8_t* tok_out, uint8_t* sc_out);

// The same for indexer key blocks: codes_out n × 128, scales_out n × 4.
absl::Status CopyIndexerBlock(const uint8_t* block, int64_t block_size, int64_t n,
                              uint8_t* codes_out, uint8_t* scales_out);
void DequantizeIndexerRecords(const uint8_t* codes, const uint8_t* scales, int64_t n, float* out);
absl::Status EncodeIndexerRecords(const float* keys, int64_t n, uint8_t* codes_out,
                                  uint8_t* scales_out);

}  // namespace kv::kernels::v4
