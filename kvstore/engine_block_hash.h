// vLLM-compatible block identity: the `sha256_cbor` prefix-cache block hash that vLLM v1
// computes when run with `--prefix-caching-hash-algo sha256_cbor` (vllm/v1/core/
// kv_cache_utils.py, vllm/utils/hashing.py; docs/formats.md §1.3 is the byte-level
// reference). An engine and kvstrata that compute the same hashes can name the same blocks.
//
//   sha256_cbor(x)  = SHA-256(cbor2.dumps(x, canonical=True))
//   NONE_HASH       = sha256_cbor(seed)                 seed = $PYTHONHASHSEED, a CBOR text string
//   hash(block i)   = sha256_cbor([parent, tokens_i, extra_keys_i])
//     parent        = hash(block i-1), or NONE_HASH for block 0 (a 32-byte CBOR byte string)
//     tokens_i      = the block's token ids, a CBOR array of integers
//     extra_keys_i  = CBOR null when empty, else an array, in this order, of:
//                     the LoRA name (text) when the request has a LoRA adapter;
//                     one [identifier (text), offset - block_start (int, may be negative)]
//                       per multimodal item whose placeholder range overlaps the block;
//                     cache_salt (text), on the block that starts at token 0 only, when
//                       non-empty;
//                     the block's prompt-embedding hash (32-byte byte string) when given.
//
// Only full blocks are hashed; a partial trailing block has no hash. vLLM picks a random
// NONE_HASH when PYTHONHASHSEED is unset, so engines that share a cache must set it; here
// the seed is always explicit.
//
// Token ids are int64 (vLLM's are Python ints; 2^32 and above are valid CBOR integers and
// hash like Python does). Negative token ids are refused with InvalidArgument naming the
// index. Text fields must be valid UTF-8 (a Python str cannot hold anything else).
//
// The CBOR encoder is the canonical (RFC 8949 §4.2.1 "preferred serialization") subset
// cbor2 uses for these values: shortest-form integer heads, definite lengths, null. See
// design note 21 (docs/design-notes.md) for why it is hand-written rather than libcbor.
//
// Thread-safety: every function is a pure function of its arguments, safe to call
// concurrently. Results are plain values owned by the caller.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/hash.h"

namespace kv {

// One multimodal input of a request: its content identifier (vLLM's mm_feature.identifier,
// e.g. the image's content hash) and its placeholder range [offset, offset + length) in the
// request's token positions.
struct EngineMmItem {
  std::string identifier;
  int64_t offset = 0;
  int64_t length = 0;
};

// Everything about a request besides its tokens that vLLM mixes into block hashes.
struct EngineHashExtras {
  // The LoRA adapter's name (vLLM lora_request.lora_name); absent without LoRA.
  std::optional<std::string> lora_name;
  // Multimodal items sorted by offset, non-overlapping, each length >= 1.
  std::vector<EngineMmItem> mm_items;
  // vLLM's cache_salt; empty means none (vLLM tests it for truthiness).
  std::string cache_salt;
  // Empty, or one prompt-embedding hash per full block of this call (vLLM: sha256 of the
  // block's prompt_embeds tensor bytes), in block order.
  std::vector<Digest256> prompt_embed_hashes;
};

struct EngineHashParams {
  // The engines' PYTHONHASHSEED, verbatim (the text that NONE_HASH hashes).
  std::string seed;
  // vLLM block_size: tokens per block, 1..65536.
  uint32_t block_size = 16;
  // Position of tokens[0] in the request: 0, or a multiple of block_size when continuing a
  // chain (then `parent` must be the hash of the block before it). Multimodal offsets and
  // the salt's "first block" are request positions.
  int64_t start_token = 0;
  // The hash of the block before tokens[0]; NONE_HASH is used when absent.
  std::optional<Digest256> parent;
};

// NONE_HASH = sha256_cbor(seed). InvalidArgument if `seed` is not valid UTF-8.
absl::StatusOr<Digest256> EngineNoneHash(std::string_view seed);

// The sha256_cbor hash of every full block of `tokens`, in order (empty when fewer than
// block_size tokens). InvalidArgument naming the problem for a negative token id, a bad
// block size or start_token, start_token > 0 without a parent, unsorted/overlapping/empty
// multimodal ranges, a prompt_embed_hashes count that is not the number of full blocks, or
// text that is not UTF-8.
absl::StatusOr<std::vector<Digest256>> EngineBlockHashes(const EngineHashParams& params,
                                                         std::span<const int64_t> tokens,
                                                         const EngineHashExtras& extras = {});

// The canonical CBOR bytes that block `block_index` of the call hashes (the SHA-256
// preimage). For tools and tests that check the encoding against cbor2. Same errors as
// EngineBlockHashes; OutOfRange when the block is not a full block of `tokens`.
absl::StatusOr<std::string> EngineBlockPreimage(const EngineHashParams& params,
                                                std::span<const int64_t> tokens,
                                                const EngineHashExtras& extras, size_t block_index);

}  // namespace kv
