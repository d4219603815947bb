// vLLM-compatible block identity for callers without C++ (kvstrata/kvstrata.h
// kvstrata_engine_block_hashes, kvstrata_keys_from_engine_hashes): checked wrappers of
// kvstore/engine_block_hash.h and block_key.h's DeriveBlockKeysFromEngineHashes.
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include "client/client_internal.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/block_key.h"
#include "kvstore/engine_block_hash.h"

namespace kv::client {
namespace {

// Engine strings are bounded so a missing NUL cannot make us read forever.
constexpr size_t kMaxEngineString = 1 << 20;
constexpr size_t kMaxEngineTokens = size_t{1} << 30;

absl::StatusOr<std::string> EngineString(const char* s, const char* what) {
  if (s == nullptr) return absl::InvalidArgumentError(StrCat(what, " is NULL"));
  const size_t n = strnlen(s, kMaxEngineString + 1);
  if (n > kMaxEngineString) {
    return absl::InvalidArgumentError(StrCat(what, " exceeds ", kMaxEngineString, " bytes"));
  }
  return std::string(s, n);
}

Digest256 ToDigest(const kvstrata_key& k) {
  Digest256 d;
  std::memcpy(d.data(), k.bytes, d.size());
  return d;
}

absl::StatusOr<EngineHashExtras> ToExtras(const kvstrata_engine_hash_params& p) {
  EngineHashExtras e;
  if (p.lora_name != nullptr) {
    ASSIGN_OR_RETURN(std::string lora, EngineString(p.lora_name, "params->lora_name"));
    e.lora_name = std::move(lora);
  }
  if (p.n_mm_items > KVSTRATA_MAX_BATCH) {
    return absl::InvalidArgumentError(
        StrCat("n_mm_items ", p.n_mm_items, " exceeds ", KVSTRATA_MAX_BATCH));
  }
  if (p.n_mm_items > 0) RETURN_IF_ERROR(NotNull(p.mm_items, "params->mm_items"));
  for (size_t i = 0; i < p.n_mm_items; ++i) {
    const std::string what = StrCat("params->mm_items[", i, "].identifier");
    ASSIGN_OR_RETURN(std::string id, EngineString(p.mm_items[i].identifier, what.c_str()));
    e.mm_items.push_back({std::move(id), p.mm_items[i].offset, p.mm_items[i].length});
  }
  if (p.cache_salt != nullptr) {
    ASSIGN_OR_RETURN(e.cache_salt, EngineString(p.cache_salt, "params->cache_salt"));
  }
  if (p.n_prompt_embed_hashes > kMaxEngineTokens) {
    return absl::InvalidArgumentError("n_prompt_embed_hashes is too large");
  }
  if (p.n_prompt_embed_hashes > 0) {
    RETURN_IF_ERROR(NotNull(p.prompt_embed_hashes, "params->prompt_embed_hashes"));
  }
  for (size_t i = 0; i < p.n_prompt_embed_hashes; ++i) {
    e.prompt_embed_hashes.push_back(ToDigest(p.prompt_embed_hashes[i]));
  }
  return e;
}

absl::StatusOr<EngineHashParams> ToHashParams(const kvstrata_engine_hash_params* p) {
  RETURN_IF_ERROR(NotNull(p, "params"));
  if (p->struct_size < sizeof(kvstrata_engine_hash_params)) {
    return absl::InvalidArgumentError(
        "params->struct_size is too small: initialise it with kvstrata_engine_hash_params_init");
  }
  EngineHashParams h;
  ASSIGN_OR_RETURN(h.seed, EngineString(p->seed, "params->seed (PYTHONHASHSEED)"));
  h.block_size = p->block_size;
  h.start_token = p->start_token;
  if (p->parent != nullptr) h.parent = ToDigest(*p->parent);
  return h;
}

}  // namespace
}  // namespace kv::client

using kv::client::Call;
using kv::client::NotNull;

extern "C" {

void kvstrata_engine_hash_params_init(kvstrata_engine_hash_params* params) {
  if (params == nullptr) return;
  std::memset(params, 0, sizeof(*params));
  params->struct_size = sizeof(*params);
  params->block_size = 16;
}

int32_t kvstrata_engine_block_hashes(const kvstrata_engine_hash_params* params,
                                     const int64_t* tokens, size_t n_tokens,
                                     kvstrata_key* hashes_out, size_t max_hashes,
                                     size_t* n_hashes) {
  return Call([&]() -> absl::Status {
    ASSIGN_OR_RETURN(kv::EngineHashParams h, kv::client::ToHashParams(params));
    ASSIGN_OR_RETURN(kv::EngineHashExtras extras, kv::client::ToExtras(*params));
    RETURN_IF_ERROR(NotNull(n_hashes, "n_hashes"));
    if (n_tokens > 0) RETURN_IF_ERROR(NotNull(tokens, "tokens"));
    if (n_tokens > kv::client::kMaxEngineTokens) {
      return absl::InvalidArgumentError(kv::StrCat("n_tokens ", n_tokens, " exceeds 2^30"));
    }
    if (h.block_size == 0) return absl::InvalidArgumentError("params->block_size is 0");
    const size_t want = n_tokens / h.block_size;
    if (want > max_hashes) {
      return absl::ResourceExhaustedError(
          kv::StrCat(n_tokens, " tokens make ", want, " hashes; max_hashes is ", max_hashes));
    }
    if (want > 0) RETURN_IF_ERROR(NotNull(hashes_out, "hashes_out"));
    ASSIGN_OR_RETURN(std::vector<kv::Digest256> hashes,
                     kv::EngineBlockHashes(h, {tokens, n_tokens}, extras));
    for (size_t i = 0; i < hashes.size(); ++i) {
      std::memcpy(hashes_out[i].bytes, hashes[i].data(), KVSTRATA_KEY_BYTES);
    }
    *n_hashes = hashes.size();
    return absl::OkStatus();
  });
}

int32_t kvstrata_keys_from_engine_hashes(const kvstrata_key_space* space,
                                         const kvstrata_key* engine_hashes, size_t n,
                                         const kvstrata_key* parent, kvstrata_key* keys_out) {
  return Call([&]() -> absl::Status {
    ASSIGN_OR_RETURN(kv::KeyParams params, kv::client::ToKeyParams(space));
    if (n > kv::client::kMaxEngineTokens) {
      return absl::InvalidArgumentError(kv::StrCat("n ", n, " is too large"));
    }
    if (n > 0) {
      RETURN_IF_ERROR(NotNull(engine_hashes, "engine_hashes"));
      RETURN_IF_ERROR(NotNull(keys_out, "keys_out"));
    }
    std::vector<kv::Digest256> hashes;
    hashes.reserve(n);
    for (size_t i = 0; i < n; ++i) hashes.push_back(kv::client::ToDigest(engine_hashes[i]));
    std::optional<kv::BlockKey> p;
    if (parent != nullptr) p = kv::client::Keys(parent, 1)[0];
    ASSIGN_OR_RETURN(std::vector<kv::BlockKey> keys,
                     kv::DeriveBlockKeysFromEngineHashes(params, hashes, p));
    for (size_t i = 0; i < keys.size(); ++i) {
      std::memcpy(keys_out[i].bytes, keys[i].bytes.data(), KVSTRATA_KEY_BYTES);
    }
    return absl::OkStatus();
  });
}

}  // extern "C"
