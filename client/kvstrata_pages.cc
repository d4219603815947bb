// Block keys and pages for callers without C++ (kvstrata/kvstrata.h "keys and pages"): thin,
// checked wrappers of kvstore/block_key.h and kvstore/page_format.h.
#include <cstddef>
#include <cstring>

#include "client/client_internal.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::client {
namespace {

// A NUL-terminated string of at most `max` bytes (strnlen: never reads past max + 1 bytes).
absl::StatusOr<std::string_view> CString(const char* s, size_t max, const char* what) {
  if (s == nullptr) return absl::InvalidArgumentError(StrCat(what, " is NULL"));
  const size_t n = strnlen(s, max + 1);
  if (n == 0 || n > max) {
    return absl::InvalidArgumentError(StrCat(what, " must be 1..", max, " bytes"));
  }
  return std::string_view(s, n);
}

absl::StatusOr<PageSpec> ToPageSpec(const kvstrata_page_spec* spec) {
  RETURN_IF_ERROR(NotNull(spec, "spec"));
  // Callers built before the GQA fields were appended pass the shorter struct.
  constexpr size_t kV1Size = offsetof(kvstrata_page_spec, num_kv_heads);
  if (spec->struct_size < kV1Size) {
    return absl::InvalidArgumentError(
        "spec->struct_size is too small: initialise it with kvstrata_page_spec_init");
  }
  ASSIGN_OR_RETURN(std::string_view name, CString(spec->layout, kMaxLayoutIdBytes, "spec->layout"));
  ASSIGN_OR_RETURN(LayoutInfo layout, LookupLayout(name));
  if (!layout.supported) return absl::InvalidArgumentError(StrCat("layout ", name, " is reserved"));
  PageSpec p;
  p.layout = layout.id;
  std::memcpy(p.key.bytes.data(), spec->key.bytes, KVSTRATA_KEY_BYTES);
  std::memcpy(p.parent.bytes.data(), spec->parent.bytes, KVSTRATA_KEY_BYTES);
  p.token_count = spec->token_count;
  p.first_layer = spec->first_layer;
  p.layer_count = spec->layer_count;
  if (spec->struct_size >= sizeof(kvstrata_page_spec)) {
    p.gqa = GqaGeometry{spec->num_kv_heads, spec->head_dim};
  }
  if (layout.is_gqa() && (p.gqa.num_kv_heads == 0 || p.gqa.head_dim == 0)) {
    return absl::InvalidArgumentError(
        StrCat("layout ", name, " needs spec->num_kv_heads and spec->head_dim"));
  }
  if (!layout.is_gqa() && (p.gqa.num_kv_heads != 0 || p.gqa.head_dim != 0)) {
    return absl::InvalidArgumentError(
        StrCat("layout ", name, " is not a GQA layout: num_kv_heads and head_dim must be 0"));
  }
  return p;
}

}  // namespace

absl::StatusOr<KeyParams> ToKeyParams(const kvstrata_key_space* space) {
  RETURN_IF_ERROR(NotNull(space, "key space"));
  if (space->struct_size < sizeof(kvstrata_key_space)) {
    return absl::InvalidArgumentError(
        "key space struct_size is too small: initialise it with kvstrata_key_space_init");
  }
  KeyParams p;
  std::memcpy(p.model_fingerprint.data(), space->model_fingerprint, p.model_fingerprint.size());
  ASSIGN_OR_RETURN(std::string_view layout,
                   CString(space->layout, kMaxLayoutIdBytes, "key space layout"));
  RETURN_IF_ERROR(LookupLayout(layout).status());
  p.layout_id = std::string(layout);
  if (space->page_tokens == 0 || space->page_tokens > kMaxKeyPageTokens) {
    return absl::InvalidArgumentError(StrCat("key space page_tokens is ", space->page_tokens,
                                             "; it must be 1..", kMaxKeyPageTokens));
  }
  p.page_tokens = space->page_tokens;
  ASSIGN_OR_RETURN(
      std::string_view ns,
      CString(space->key_namespace, KeyNamespace::kMaxTenantBytes + 7, "key space namespace"));
  ASSIGN_OR_RETURN(p.ns, KeyNamespace::Parse(ns));
  return p;
}

}  // namespace kv::client

using kv::client::Call;
using kv::client::NotNull;

extern "C" {

void kvstrata_key_space_init(kvstrata_key_space* space) {
  if (space == nullptr) return;
  std::memset(space, 0, sizeof(*space));
  space->struct_size = sizeof(*space);
}

void kvstrata_page_spec_init(kvstrata_page_spec* spec) {
  if (spec == nullptr) return;
  std::memset(spec, 0, sizeof(*spec));
  spec->struct_size = sizeof(*spec);
}

int32_t kvstrata_derive_block_keys(const kvstrata_key_space* space, const uint32_t* tokens,
                                   size_t n_tokens, const kvstrata_key* parent,
                                   kvstrata_key* keys_out, size_t max_keys, size_t* n_keys) {
  return Call([&]() -> absl::Status {
    ASSIGN_OR_RETURN(kv::KeyParams params, kv::client::ToKeyParams(space));
    RETURN_IF_ERROR(NotNull(n_keys, "n_keys"));
    if (n_tokens > 0) RETURN_IF_ERROR(NotNull(tokens, "tokens"));
    if (n_tokens > (size_t{1} << 30)) {
      return absl::InvalidArgumentError(kv::StrCat("n_tokens ", n_tokens, " exceeds 2^30"));
    }
    const size_t want = n_tokens / params.page_tokens;
    if (want > max_keys) {
      return absl::ResourceExhaustedError(
          kv::StrCat(n_tokens, " tokens make ", want, " keys; max_keys is ", max_keys));
    }
    if (want > 0) RETURN_IF_ERROR(NotNull(keys_out, "keys_out"));
    std::optional<kv::BlockKey> p;
    if (parent != nullptr) p = kv::client::Keys(parent, 1)[0];
    ASSIGN_OR_RETURN(std::vector<kv::BlockKey> keys,
                     kv::DeriveBlockKeys(params, {tokens, n_tokens}, p));
    for (size_t i = 0; i < keys.size(); ++i) {
      std::memcpy(keys_out[i].bytes, keys[i].bytes.data(), KVSTRATA_KEY_BYTES);
    }
    *n_keys = keys.size();
    return absl::OkStatus();
  });
}

int32_t kvstrata_page_size(const kvstrata_page_spec* spec, uint64_t* page_bytes,
                           uint64_t* kv_bytes) {
  return Call([&]() -> absl::Status {
    ASSIGN_OR_RETURN(kv::PageSpec s, kv::client::ToPageSpec(spec));
    ASSIGN_OR_RETURN(uint64_t kv, kv::KvSectionBytes(s));
    ASSIGN_OR_RETURN(uint64_t page, kv::EncodedPageBytes(s));
    if (page_bytes != nullptr) *page_bytes = page;
    if (kv_bytes != nullptr) *kv_bytes = kv;
    return absl::OkStatus();
  });
}

int32_t kvstrata_page_encode(const kvstrata_page_spec* spec, const void* kv, uint64_t kv_len,
                             void* out, uint64_t out_len) {
  return Call([&]() -> absl::Status {
    ASSIGN_OR_RETURN(kv::PageSpec s, kv::client::ToPageSpec(spec));
    RETURN_IF_ERROR(NotNull(kv, "kv"));
    RETURN_IF_ERROR(NotNull(out, "out"));
    return kv::EncodePageInto(s, {static_cast<const uint8_t*>(kv), kv_len},
                              {static_cast<uint8_t*>(out), out_len});
  });
}

int32_t kvstrata_page_payload(const void* page, uint64_t page_len, const kvstrata_key* expect_key,
                              uint64_t* kv_offset, uint64_t* kv_len) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(page, "page"));
    RETURN_IF_ERROR(NotNull(kv_offset, "kv_offset"));
    RETURN_IF_ERROR(NotNull(kv_len, "kv_len"));
    if (page_len == 0) return absl::InvalidArgumentError("page_len is 0");
    const auto* bytes = static_cast<const uint8_t*>(page);
    ASSIGN_OR_RETURN(kv::PageView v, kv::DecodePage({bytes, page_len}));
    if (expect_key != nullptr && v.header().key != kv::client::Keys(expect_key, 1)[0]) {
      return absl::DataLossError(
          kv::StrCat("the page names key ", v.header().key.Hex(), ", not the one expected"));
    }
    *kv_offset = static_cast<uint64_t>(v.kv().data() - bytes);
    *kv_len = v.kv().size();
    return absl::OkStatus();
  });
}

}  // extern "C"
