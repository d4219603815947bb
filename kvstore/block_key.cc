#include "kvstore/block_key.h"

// Block keys hash with OpenSSL's low-level SHA256_CTX rather than kv::Sha256 (an EVP
// context). Forking the chain's midstate once per block is the hot operation: with EVP,
// OpenSSL 3.0's EVP_MD_CTX_copy_ex allocates a provider context per copy, which cost about a
// third of the derivation time of a 1M-token prompt; SHA256_CTX is a plain struct, so the
// fork is a 112-byte copy. The low-level API is deprecated but present in OpenSSL 3.x; the
// block-key vectors (testdata/) pin the output either way.
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>

#include <algorithm>
#include <bit>
#include <cstring>

#include "absl/status/status.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/engine_block_hash.h"

namespace kv {
namespace {

constexpr std::string_view kDomain = "kvstrata/block/v1";
constexpr std::string_view kEngineDomain = "kvstrata/block/vllm-sha256-cbor/v1";

void PutU64Le(uint64_t v, uint8_t* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

void PutU32Le(uint32_t v, uint8_t* out) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<uint8_t>(v >> (8 * i));
}

// F(x) = u64 LE length ‖ x.
void AppendField(std::string* out, const void* data, size_t len) {
  uint8_t n[8];
  PutU64Le(len, n);
  out->append(reinterpret_cast<const char*>(n), 8);
  out->append(static_cast<const char*>(data), len);
}

absl::Status ValidateParams(const KeyParams& p) {
  if (!p.ns.is_set()) return absl::InvalidArgumentError("block key: namespace is not set");
  if (p.layout_id.empty() || p.layout_id.size() > kMaxLayoutIdBytes) {
    return absl::InvalidArgumentError(kv::StrCat(
        "block key: layout id must be 1..", kMaxLayoutIdBytes, " bytes, got ", p.layout_id.size()));
  }
  if (p.page_tokens == 0 || p.page_tokens > kMaxKeyPageTokens) {
    return absl::InvalidArgumentError(kv::StrCat("block key: page_tokens must be 1..",
                                                 kMaxKeyPageTokens, ", got ", p.page_tokens));
  }
  return absl::OkStatus();
}

// The framed fields shared by every block of a chain: domain, fingerprint, layout, page
// tokens, namespace, then an alignment field of zero bytes that brings the prefix to a
// multiple of SHA-256's 64-byte block. The per-block part (parent + tokens) then starts on
// a block boundary of the forked midstate, which saves one compression per block (~17% of
// the derivation time); the field is framed like every other, so the encoding stays
// unambiguous.
std::string ChainPrefix(const KeyParams& p, std::string_view domain = kDomain) {
  std::string out;
  out.reserve(128);
  AppendField(&out, domain.data(), domain.size());
  AppendField(&out, p.model_fingerprint.data(), p.model_fingerprint.size());
  AppendField(&out, p.layout_id.data(), p.layout_id.size());
  uint8_t pt[4];
  PutU32Le(p.page_tokens, pt);
  AppendField(&out, pt, 4);
  const std::string ns = p.ns.Encoded();
  AppendField(&out, ns.data(), ns.size());
  const size_t pad = (64 - (out.size() + 8) % 64) % 64;
  const std::string zeros(pad, '\0');
  AppendField(&out, zeros.data(), zeros.size());
  return out;
}

// The framed parent field followed by the length word of the token field: 8 + 32 + 8 bytes,
// hashed in one Update call per block.
void BlockHead(const BlockKey& parent, size_t block_tokens, uint8_t out[48]) {
  PutU64Le(32, out);
  std::memcpy(out + 8, parent.bytes.data(), 32);
  PutU64Le(uint64_t{4} * block_tokens, out + 40);
}

void HashTokens(SHA256_CTX* h, std::span<const uint32_t> block) {
  if constexpr (std::endian::native == std::endian::little) {
    SHA256_Update(h, block.data(), block.size() * sizeof(uint32_t));
  } else {
    std::vector<uint8_t> le(block.size() * 4);
    for (size_t i = 0; i < block.size(); ++i) PutU32Le(block[i], &le[4 * i]);
    SHA256_Update(h, le.data(), le.size());
  }
}

// The framed parent and engine-hash fields of one engine-chain key.
void EngineBlockFields(const BlockKey& parent, const Digest256& engine_hash, uint8_t out[80]) {
  PutU64Le(32, out);
  std::memcpy(out + 8, parent.bytes.data(), 32);
  PutU64Le(32, out + 40);
  std::memcpy(out + 48, engine_hash.data(), 32);
}

// DeriveBlockKeys for KeyChain::kVllmSha256Cbor: the engine hashes of the tokens, then keys.
absl::StatusOr<std::vector<BlockKey>> DeriveEngineChainKeys(const KeyParams& params,
                                                            std::span<const uint32_t> tokens) {
  if (absl::Status s = ValidateParams(params); !s.ok()) return s;
  const std::vector<int64_t> wide(tokens.begin(), tokens.end());
  EngineHashParams ep;
  ep.seed = params.engine_hash_seed;
  ep.block_size = params.page_tokens;
  ASSIGN_OR_RETURN(std::vector<Digest256> hashes, EngineBlockHashes(ep, wide));
  return DeriveBlockKeysFromEngineHashes(params, hashes);
}

// DeriveRequestKeys for KeyChain::kVllmSha256Cbor: one engine chain over the whole prompt
// (the engine knows nothing of the namespace split); each kvstrata key binds its namespace.
absl::StatusOr<std::vector<BlockKey>> DeriveEngineRequestKeys(const KeyParams& shared,
                                                              const KeyParams& own,
                                                              std::span<const int32_t> tokens,
                                                              int64_t shared_blocks) {
  const std::vector<int64_t> wide(tokens.begin(), tokens.end());
  EngineHashParams ep{.seed = own.engine_hash_seed, .block_size = own.page_tokens};
  ASSIGN_OR_RETURN(std::vector<Digest256> hashes, EngineBlockHashes(ep, wide));
  std::span<const Digest256> h(hashes);
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                   DeriveBlockKeysFromEngineHashes(shared, h.first(shared_blocks)));
  std::optional<BlockKey> parent;
  if (!keys.empty()) parent = keys.back();
  ASSIGN_OR_RETURN(std::vector<BlockKey> rest,
                   DeriveBlockKeysFromEngineHashes(own, h.subspan(shared_blocks), parent));
  keys.insert(keys.end(), rest.begin(), rest.end());
  return keys;
}

}  // namespace

std::string_view KeyChainName(KeyChain chain) {
  return chain == KeyChain::kVllmSha256Cbor ? "vllm-sha256-cbor" : "tokens";
}

absl::StatusOr<KeyChain> ParseKeyChain(std::string_view name) {
  if (name == "tokens") return KeyChain::kTokens;
  if (name == "vllm-sha256-cbor") return KeyChain::kVllmSha256Cbor;
  return absl::InvalidArgumentError(
      kv::StrCat("unknown key chain '", name, "' (known: tokens, vllm-sha256-cbor)"));
}

absl::Status ValidateKeyChain(KeyChain chain, std::string_view engine_hash_seed) {
  if (chain == KeyChain::kTokens) {
    if (engine_hash_seed.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(
        "an engine hash seed is only used with the vllm-sha256-cbor key chain");
  }
  if (engine_hash_seed.empty()) {
    return absl::InvalidArgumentError(
        "the vllm-sha256-cbor key chain needs the engines' PYTHONHASHSEED as its engine hash "
        "seed (vLLM hashes with a random seed when it is unset)");
  }
  return EngineNoneHash(engine_hash_seed).status();
}

absl::StatusOr<std::vector<BlockKey>> DeriveBlockKeysFromEngineHashes(
    const KeyParams& params, std::span<const Digest256> engine_hashes,
    std::optional<BlockKey> parent) {
  if (absl::Status s = ValidateParams(params); !s.ok()) return s;
  std::vector<BlockKey> keys;
  keys.reserve(engine_hashes.size());
  if (engine_hashes.empty()) return keys;
  SHA256_CTX prefix;
  SHA256_Init(&prefix);
  const std::string framed = ChainPrefix(params, kEngineDomain);
  SHA256_Update(&prefix, framed.data(), framed.size());
  BlockKey prev = parent.value_or(BlockKey::Zero());
  uint8_t fields[80];
  for (const Digest256& e : engine_hashes) {
    SHA256_CTX h = prefix;
    EngineBlockFields(prev, e, fields);
    SHA256_Update(&h, fields, sizeof(fields));
    SHA256_Final(prev.bytes.data(), &h);
    keys.push_back(prev);
  }
  return keys;
}

absl::StatusOr<std::string> EngineChainKeyPreimage(const KeyParams& params, const BlockKey& parent,
                                                   const Digest256& engine_hash) {
  if (absl::Status s = ValidateParams(params); !s.ok()) return s;
  std::string out = ChainPrefix(params, kEngineDomain);
  uint8_t fields[80];
  EngineBlockFields(parent, engine_hash, fields);
  out.append(reinterpret_cast<const char*>(fields), sizeof(fields));
  return out;
}

bool BlockKey::IsZero() const {
  for (uint8_t b : bytes) {
    if (b != 0) return false;
  }
  return true;
}

absl::StatusOr<BlockKey> BlockKey::FromHex(std::string_view hex) {
  if (hex.size() != 64) {
    return absl::InvalidArgumentError(
        kv::StrCat("block key: expected 64 hex characters, got ", hex.size()));
  }
  std::string raw;
  if (!kv::FromHex(hex, &raw)) {
    return absl::InvalidArgumentError(kv::StrCat("block key: not hex: '", hex, "'"));
  }
  BlockKey k;
  std::memcpy(k.bytes.data(), raw.data(), 32);
  return k;
}

absl::StatusOr<KeyNamespace> KeyNamespace::Tenant(std::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("namespace: tenant name is empty");
  if (name.size() > kMaxTenantBytes) {
    return absl::InvalidArgumentError(kv::StrCat("namespace: tenant name is ", name.size(),
                                                 " bytes, the limit is ", kMaxTenantBytes));
  }
  return KeyNamespace(Kind::kTenant, std::string(name));
}

std::string KeyNamespace::Encoded() const {
  switch (kind_) {
    case Kind::kTenant:
      return "t:" + tenant_;
    case Kind::kShared:
      return "s:";
    case Kind::kUnset:
      break;
  }
  return "";
}

std::string KeyNamespace::ToString() const {
  switch (kind_) {
    case Kind::kTenant:
      return "tenant:" + tenant_;
    case Kind::kShared:
      return "shared";
    case Kind::kUnset:
      break;
  }
  return "unset";
}

absl::StatusOr<KeyNamespace> KeyNamespace::Parse(std::string_view spec) {
  if (spec == "shared") return Shared();
  constexpr std::string_view kTenantPrefix = "tenant:";
  if (spec.substr(0, kTenantPrefix.size()) == kTenantPrefix) {
    return Tenant(spec.substr(kTenantPrefix.size()));
  }
  return Tenant(spec);
}

absl::StatusOr<std::vector<BlockKey>> DeriveBlockKeys(const KeyParams& params,
                                                      std::span<const uint32_t> tokens,
                                                      std::optional<BlockKey> parent) {
  if (params.chain == KeyChain::kVllmSha256Cbor) {
    if (parent.has_value()) {
      return absl::InvalidArgumentError(
          "block key: a vllm-sha256-cbor chain cannot continue from a kvstrata key alone (the "
          "engine's parent hash is not derivable from it); use DeriveBlockKeysFromEngineHashes");
    }
    return DeriveEngineChainKeys(params, tokens);
  }
  if (absl::Status s = ValidateParams(params); !s.ok()) return s;
  const size_t n = params.page_tokens;
  const size_t blocks = tokens.size() / n;
  std::vector<BlockKey> keys;
  keys.reserve(blocks);
  if (blocks == 0) return keys;

  // The chain's constant prefix is hashed once; each block starts from a copy of that
  // midstate and hashes only its parent and token fields.
  SHA256_CTX prefix;
  SHA256_Init(&prefix);
  const std::string framed = ChainPrefix(params);
  SHA256_Update(&prefix, framed.data(), framed.size());
  BlockKey prev = parent.value_or(BlockKey::Zero());
  uint8_t head[48];
  for (size_t b = 0; b < blocks; ++b) {
    SHA256_CTX h = prefix;
    BlockHead(prev, n, head);
    SHA256_Update(&h, head, sizeof(head));
    HashTokens(&h, tokens.subspan(b * n, n));
    SHA256_Final(prev.bytes.data(), &h);
    keys.push_back(prev);
  }
  return keys;
}

absl::StatusOr<std::vector<uint32_t>> ToTokenIds(std::span<const int64_t> ids) {
  std::vector<uint32_t> out;
  out.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] > int64_t{UINT32_MAX}) {
      return absl::InvalidArgumentError(kv::StrCat("token id at index ", i, " is ", ids[i],
                                                   "; token ids must fit in u32 (0..", UINT32_MAX,
                                                   ")"));
    }
    out.push_back(static_cast<uint32_t>(ids[i]));
  }
  return out;
}

absl::StatusOr<std::string> BlockKeyPreimage(const KeyParams& params, const BlockKey& parent,
                                             std::span<const uint32_t> block) {
  if (absl::Status s = ValidateParams(params); !s.ok()) return s;
  if (block.empty()) return absl::InvalidArgumentError("block key: empty block");
  std::string out = ChainPrefix(params);
  uint8_t head[48];
  BlockHead(parent, block.size(), head);
  out.append(reinterpret_cast<const char*>(head), sizeof(head));
  for (uint32_t t : block) {
    uint8_t le[4];
    PutU32Le(t, le);
    out.append(reinterpret_cast<const char*>(le), 4);
  }
  return out;
}

absl::StatusOr<std::vector<BlockKey>> DeriveRequestKeys(const KeyParams& params,
                                                        std::span<const int32_t> tokens,
                                                        const std::string& tenant,
                                                        int64_t shared_tokens,
                                                        std::vector<std::string>* ns) {
  const int64_t page_tokens = params.page_tokens;
  if (page_tokens <= 0) return absl::InvalidArgumentError("keys: page_tokens must be > 0");
  std::vector<uint32_t> ids(tokens.begin(), tokens.end());
  const int64_t full = static_cast<int64_t>(ids.size()) / page_tokens;
  const int64_t shared_blocks = std::min(full, std::max<int64_t>(0, shared_tokens) / page_tokens);
  KeyParams shared = params;
  shared.ns = KeyNamespace::Shared();
  KeyParams own = params;
  ASSIGN_OR_RETURN(own.ns, KeyNamespace::Tenant(tenant));
  std::span<const uint32_t> all(ids);
  const size_t split = static_cast<size_t>(shared_blocks * page_tokens);
  std::vector<BlockKey> keys;
  if (params.chain == KeyChain::kVllmSha256Cbor) {
    ASSIGN_OR_RETURN(keys, DeriveEngineRequestKeys(shared, own, tokens, shared_blocks));
  } else {
    ASSIGN_OR_RETURN(keys, DeriveBlockKeys(shared, all.subspan(0, split)));
    std::optional<BlockKey> parent;
    if (!keys.empty()) parent = keys.back();
    ASSIGN_OR_RETURN(std::vector<BlockKey> rest, DeriveBlockKeys(own, all.subspan(split), parent));
    keys.insert(keys.end(), rest.begin(), rest.end());
  }
  if (ns != nullptr) {
    ns->assign(keys.size(), own.ns.ToString());
    for (int64_t i = 0; i < shared_blocks; ++i) (*ns)[i] = shared.ns.ToString();
  }
  return keys;
}

}  // namespace kv
