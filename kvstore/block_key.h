// Block keys: the identity of cached KV (DESIGN.md "Block keys", docs/formats.md §1).
//
// A prompt is cut into blocks of `page_tokens` tokens. Block i's key is
//
//   key(i) = SHA-256( F("kvstrata/block/v1") ‖ F(model_fingerprint) ‖ F(layout_id)
//                     ‖ F(u32le page_tokens) ‖ F(namespace) ‖ F(key(i-1) or 32 zero bytes)
//                     ‖ F(token ids of block i, each u32 LE) )
//
// where F(x) = u64 LE byte length of x ‖ x (domain-separated framing: no two different field
// tuples produce the same byte string). A partial trailing block has no key. Because each
// key covers its parent, a key names a whole prefix, not just one block's tokens.
//
// Namespaces. A tenant's blocks are keyed under the tenant; a prefix published for everyone
// (a system prompt) is keyed under the explicit shared namespace. On the wire of the hash a
// tenant "acme" is the bytes "t:acme" and the shared namespace is the bytes "s:", so a
// tenant that happens to be called "shared" can never collide with the shared namespace.
//
// Engine-hash chains (docs/formats.md §1.3). A key space may instead take an inference
// engine's own block hashes as its chain (KeyChain::kVllmSha256Cbor, the hashes of
// kvstore/engine_block_hash.h). Block i's key then is
//
//   key(i) = SHA-256( F("kvstrata/block/vllm-sha256-cbor/v1") ‖ F(model_fingerprint)
//                     ‖ F(layout_id) ‖ F(u32le page_tokens) ‖ F(namespace) ‖ F(alignment zeros)
//                     ‖ F(key(i-1) or 32 zero bytes) ‖ F(engine_hash(i)) )
//
// The engine hash stands in for the token field: it already names the whole prefix (and the
// engine's extra keys: LoRA, multimodal items, cache_salt), while the framing still binds the
// model, layout, page size and namespace, so an engine's hashes never address another model's
// or tenant's pages. The alignment field is the same one the token chain uses (zeros bringing
// the constant prefix to a multiple of 64 bytes). Cluster.Generate reaches the same keys for
// the same prompt by computing the engine hashes itself from the tokens (no extra keys) when
// its KeyParams say kVllmSha256Cbor: DeriveBlockKeys and DeriveRequestKeys dispatch on
// KeyParams::chain.
//
// Thread-safety: every function here is a pure function of its arguments and safe to call
// concurrently. BlockKey and KeyNamespace are plain values.
#pragma once

#include <compare>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "core/hash.h"

namespace kv {

// A 32-byte block key. Usable as a key of absl hash containers and ordered containers.
struct BlockKey {
  Digest256 bytes{};

  // The all-zero key: the parent of the first block of every chain.
  static BlockKey Zero() { return BlockKey{}; }
  bool IsZero() const;
  // 64 lower-case hex characters.
  std::string Hex() const { return ToHex(bytes); }
  // Parses 64 hex characters (either case). InvalidArgument naming the problem otherwise.
  static absl::StatusOr<BlockKey> FromHex(std::string_view hex);

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  friend auto operator<=>(const BlockKey&, const BlockKey&) = default;
  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine_contiguous(std::move(h), k.bytes.data(), k.bytes.size());
  }
};

// The namespace a block is keyed under: one tenant, or the explicit shared namespace. A
// default-constructed namespace is unset, and DeriveBlockKeys refuses it, so forgetting to
// set the namespace can never put a tenant's blocks under `shared`.
class KeyNamespace {
 public:
  // Longest tenant name accepted, in bytes.
  static constexpr size_t kMaxTenantBytes = 256;

  KeyNamespace() = default;  // unset
  // A tenant namespace. InvalidArgument if `name` is empty or longer than kMaxTenantBytes.
  static absl::StatusOr<KeyNamespace> Tenant(std::string_view name);
  // The shared namespace (opt-in prefixes visible to every tenant).
  static KeyNamespace Shared() { return KeyNamespace(Kind::kShared, ""); }
  // Parses the command-line spelling: "shared" is the shared namespace; "tenant:NAME" is
  // tenant NAME (the way to name a tenant literally called "shared"); any other non-empty
  // string is a tenant of that name. InvalidArgument on an empty or overlong name.
  static absl::StatusOr<KeyNamespace> Parse(std::string_view spec);

  bool is_set() const { return kind_ != Kind::kUnset; }
  bool is_shared() const { return kind_ == Kind::kShared; }
  // The tenant name; empty for the shared or an unset namespace.
  const std::string& tenant() const { return tenant_; }
  // The bytes hashed into the key: "t:" + tenant, or "s:" for shared (empty when unset).
  std::string Encoded() const;
  // "shared", "tenant:NAME" (both round-trip through Parse), or "unset".
  std::string ToString() const;

  friend bool operator==(const KeyNamespace&, const KeyNamespace&) = default;

 private:
  enum class Kind : uint8_t { kUnset, kTenant, kShared };
  KeyNamespace(Kind kind, std::string tenant) : kind_(kind), tenant_(std::move(tenant)) {}
  Kind kind_ = Kind::kUnset;
  std::string tenant_;
};

// The chain a key space derives its keys over (see the top of this file).
enum class KeyChain : uint8_t {
  kTokens = 0,          // "kvstrata/block/v1": token ids of each block
  kVllmSha256Cbor = 1,  // "kvstrata/block/vllm-sha256-cbor/v1": vLLM's sha256_cbor hashes
};
// "tokens" or "vllm-sha256-cbor".
std::string_view KeyChainName(KeyChain chain);
// Parses KeyChainName's spelling. InvalidArgument naming the known chains otherwise.
absl::StatusOr<KeyChain> ParseKeyChain(std::string_view name);

// Checks a chain and its engine hash seed. InvalidArgument for an empty or non-UTF-8 seed
// with kVllmSha256Cbor (vLLM hashes with a random seed when PYTHONHASHSEED is unset, so no
// engine could share such a chain), or any seed with kTokens.
absl::Status ValidateKeyChain(KeyChain chain, std::string_view engine_hash_seed);

// Everything besides the tokens that goes into a key.
struct KeyParams {
  // Hash of the model config and the weights' identity.
  Digest256 model_fingerprint{};
  // The KV layout name, e.g. "mla-fp8-656" (see page_format.h). 1..64 bytes.
  std::string layout_id;
  // Tokens per block; 1..kMaxKeyPageTokens.
  uint32_t page_tokens = 0;
  KeyNamespace ns;  // must be set (a tenant or Shared())
  // What block i's key chains over: its tokens (kTokens, the default), or the engine's
  // sha256_cbor block hash of them (kVllmSha256Cbor; engine_hash_seed is the engines'
  // PYTHONHASHSEED, and page_tokens must equal the engine's block size).
  KeyChain chain = KeyChain::kTokens;
  std::string engine_hash_seed;
};

inline constexpr uint32_t kMaxKeyPageTokens = 1u << 16;
inline constexpr size_t kMaxLayoutIdBytes = 64;

// Derives the keys of every full block of `tokens`. `parent` continues an existing chain:
// it is the key of the block just before tokens[0] (the chain's root when absent). Returns
// one key per full block, in order (empty when tokens.size() < page_tokens). The partial
// trailing block, if any, is ignored. InvalidArgument when `params` is invalid (empty or
// overlong layout id, page_tokens outside 1..kMaxKeyPageTokens, namespace unset).
// With params.chain == kVllmSha256Cbor the keys are those of DeriveBlockKeysFromEngineHashes
// over EngineBlockHashes(engine_hash_seed, tokens, page_tokens) with no extra keys; such a
// chain cannot continue from a kvstrata key alone (the engine parent hash is not derivable
// from it), so `parent` is then refused with InvalidArgument: use
// DeriveBlockKeysFromEngineHashes.
absl::StatusOr<std::vector<BlockKey>> DeriveBlockKeys(const KeyParams& params,
                                                      std::span<const uint32_t> tokens,
                                                      std::optional<BlockKey> parent = {});

// The keys of every full block of a request's `tokens` for `tenant`: the first
// `shared_tokens` (rounded down to whole pages) in the shared namespace, the rest in the
// tenant's, chained after them (DESIGN.md "Keys"). With `ns` set, also each key's namespace
// (KeyNamespace::ToString). `params` carries fingerprint, layout and page size; its namespace
// is ignored. InvalidArgument for an invalid tenant name or page size. Honours params.chain:
// with kVllmSha256Cbor one engine-hash chain covers the whole prompt (shared and tenant
// blocks alike) and only the kvstrata keys carry the namespace split.
absl::StatusOr<std::vector<BlockKey>> DeriveRequestKeys(const KeyParams& params,
                                                        std::span<const int32_t> tokens,
                                                        const std::string& tenant,
                                                        int64_t shared_tokens,
                                                        std::vector<std::string>* ns);

// Derives one key per engine block hash (KeyChain::kVllmSha256Cbor framing, whatever
// params.chain says): key(i) binds params' fingerprint, layout, page_tokens and namespace,
// key(i-1) (`parent`, or 32 zero bytes, for i = 0) and engine_hashes[i]. The engine hashes
// must be the chain of consecutive blocks of page_tokens tokens each. Same errors as
// DeriveBlockKeys for invalid params.
absl::StatusOr<std::vector<BlockKey>> DeriveBlockKeysFromEngineHashes(
    const KeyParams& params, std::span<const Digest256> engine_hashes,
    std::optional<BlockKey> parent = {});

// The exact bytes hashed for one engine-chain key (its SHA-256 preimage), for tests that check
// the framing independently. Errors of DeriveBlockKeysFromEngineHashes.
absl::StatusOr<std::string> EngineChainKeyPreimage(const KeyParams& params, const BlockKey& parent,
                                                   const Digest256& engine_hash);

// Converts wide token ids (as they arrive from JSON, protobuf int64 or the command line) to
// u32. InvalidArgument naming the first offending index and value if any id is negative or
// does not fit in 32 bits.
absl::StatusOr<std::vector<uint32_t>> ToTokenIds(std::span<const int64_t> ids);

// The exact bytes hashed for one block (the SHA-256 preimage). For tools and tests that
// check the framing against an independent implementation; DeriveBlockKeys does not build
// this buffer. Same errors as DeriveBlockKeys; InvalidArgument if `block` is empty.
absl::StatusOr<std::string> BlockKeyPreimage(const KeyParams& params, const BlockKey& parent,
                                             std::span<const uint32_t> block);

}  // namespace kv
