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

// Everything besides the tokens that goes into a key.
struct KeyParams {
  // Hash of the model config and the weights' identity.
  Digest256 model_fingerprint{};
  // The KV layout name, e.g. "mla-fp8-656" (see page_format.h). 1..64 bytes.
  std::string layout_id;
  // Tokens per block; 1..kMaxKeyPageTokens.
  uint32_t page_tokens = 0;
  KeyNamespace ns;  // must be set (a tenant or Shared())
};

inline constexpr uint32_t kMaxKeyPageTokens = 1u << 16;
inline constexpr size_t kMaxLayoutIdBytes = 64;

// Derives the keys of every full block of `tokens`. `parent` continues an existing chain:
// it is the key of the block just before tokens[0] (the chain's root when absent). Returns
// one key per full block, in order (empty when tokens.size() < page_tokens). The partial
// trailing block, if any, is ignored. InvalidArgument when `params` is invalid (empty or
// overlong layout id, page_tokens outside 1..kMaxKeyPageTokens, namespace unset).
absl::StatusOr<std::vector<BlockKey>> DeriveBlockKeys(const KeyParams& params,
                                                      std::span<const uint32_t> tokens,
                                                      std::optional<BlockKey> parent = {});

// The keys of every full block of a request's `tokens` for `tenant`: the first
// `shared_tokens` (rounded down to whole pages) in the shared namespace, the rest in the
// tenant's, chained after them (DESIGN.md "Keys"). With `ns` set, also each key's namespace
// (KeyNamespace::ToString). `params` carries fingerprint, layout and page size; its namespace
// is ignored. InvalidArgument for an invalid tenant name or page size.
absl::StatusOr<std::vector<BlockKey>> DeriveRequestKeys(const KeyParams& params,
                                                        std::span<const int32_t> tokens,
                                                        const std::string& tenant,
                                                        int64_t shared_tokens,
                                                        std::vector<std::string>* ns);

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
