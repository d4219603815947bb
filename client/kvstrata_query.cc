// Queries (lookup, exists, pin, unpin) and stats of libkvstrata_client (kvstrata/kvstrata.h).
#include <cstring>

#include "client/client_internal.h"
#include "cluster/proto_convert.h"
#include "core/status_macros.h"
#include "core/strings.h"

using kv::client::Call;
using kv::client::CheckCount;
using kv::client::Keys;
using kv::client::NotNull;

namespace {

int32_t TierOf(kvstrata::v1::Tier t) {
  switch (t) {
    case kvstrata::v1::TIER_DEVICE:
      return KVSTRATA_TIER_DEVICE;
    case kvstrata::v1::TIER_HOST:
      return KVSTRATA_TIER_HOST;
    case kvstrata::v1::TIER_NVME:
      return KVSTRATA_TIER_NVME;
    default:
      return KVSTRATA_TIER_NONE;
  }
}

// The present prefix of `keys` (a chain) and its locations, checked against the request.
absl::StatusOr<kvstrata::v1::LookupBlocksResponse> Lookup(kvstrata_client* c,
                                                          std::span<const kv::BlockKey> keys,
                                                          int64_t timeout_ms) {
  ASSIGN_OR_RETURN(kvstrata::v1::LookupBlocksResponse r, c->Rpc(timeout_ms)->Lookup(keys));
  if (r.prefix_blocks() > keys.size() ||
      static_cast<size_t>(r.blocks_size()) != r.prefix_blocks()) {
    return absl::InternalError(kv::StrCat("the store answered a prefix of ", r.prefix_blocks(),
                                          " blocks with ", r.blocks_size(), " locations for ",
                                          keys.size(), " keys"));
  }
  return r;
}

}  // namespace

extern "C" {

int32_t kvstrata_lookup(kvstrata_client* client, const kvstrata_key* keys, size_t n,
                        int64_t timeout_ms, size_t* prefix, kvstrata_block_info* blocks) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(NotNull(keys, "keys"));
    RETURN_IF_ERROR(NotNull(prefix, "prefix"));
    RETURN_IF_ERROR(CheckCount(n, KVSTRATA_MAX_BATCH, "n"));
    ASSIGN_OR_RETURN(auto r, Lookup(client, Keys(keys, n), timeout_ms));
    *prefix = r.prefix_blocks();
    if (blocks != nullptr) {
      for (size_t i = 0; i < n; ++i) {
        blocks[i] = {KVSTRATA_TIER_NONE, 0};
        if (i < r.prefix_blocks()) {
          blocks[i] = {TierOf(r.blocks(i).tier()), r.blocks(i).page_bytes()};
        }
      }
    }
    return absl::OkStatus();
  });
}

int32_t kvstrata_batch_exists(kvstrata_client* client, const kvstrata_key* keys, size_t n,
                              int64_t timeout_ms, uint8_t* present) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(NotNull(keys, "keys"));
    RETURN_IF_ERROR(NotNull(present, "present"));
    RETURN_IF_ERROR(CheckCount(n, KVSTRATA_MAX_BATCH, "n"));
    const absl::Time deadline = client->Deadline(timeout_ms);
    std::span<const kv::BlockKey> all = Keys(keys, n);
    std::vector<uint8_t> out(n, 0);
    // The longest present prefix in one round trip, then each key after it on its own.
    ASSIGN_OR_RETURN(auto r, Lookup(client, all, timeout_ms));
    for (size_t i = 0; i < r.prefix_blocks(); ++i) out[i] = 1;
    for (size_t i = r.prefix_blocks() + 1; i < n; ++i) {
      const int64_t left = absl::ToInt64Milliseconds(deadline - absl::Now());
      if (left <= 0) {
        return absl::DeadlineExceededError(kv::StrCat("batch_exists ran out of time at key ", i));
      }
      ASSIGN_OR_RETURN(auto one, Lookup(client, all.subspan(i, 1), left));
      out[i] = one.prefix_blocks() == 1 ? 1 : 0;
    }
    std::memcpy(present, out.data(), n);
    return absl::OkStatus();
  });
}

int32_t kvstrata_exists(kvstrata_client* client, const kvstrata_key* key, int64_t timeout_ms,
                        int32_t* present) {
  uint8_t p = 0;
  const int32_t rc = kvstrata_batch_exists(client, key, 1, timeout_ms, &p);
  if (rc == KVSTRATA_OK) {
    if (present == nullptr) {
      return Call([] { return absl::InvalidArgumentError("present is NULL"); });
    }
    *present = p;
  }
  return rc;
}

int32_t kvstrata_pin(kvstrata_client* client, const kvstrata_key* keys, size_t n, int64_t lease_ms,
                     int64_t timeout_ms, kvstrata_lease* lease) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(NotNull(keys, "keys"));
    RETURN_IF_ERROR(NotNull(lease, "lease"));
    RETURN_IF_ERROR(CheckCount(n, KVSTRATA_MAX_BATCH, "n"));
    ASSIGN_OR_RETURN(auto r,
                     client->Rpc(timeout_ms)
                         ->Pin(Keys(keys, n), kv::client::Ms(lease_ms, absl::ZeroDuration())));
    if (r.lease_id.size() >= KVSTRATA_LEASE_ID_BYTES) {
      client->Rpc(timeout_ms)->Unpin(r.lease_id).IgnoreError();
      return absl::InternalError(kv::StrCat("the store's lease id is ", r.lease_id.size(),
                                            " bytes, longer than KVSTRATA_LEASE_ID_BYTES"));
    }
    std::memset(lease, 0, sizeof(*lease));
    std::memcpy(lease->id, r.lease_id.data(), r.lease_id.size());
    lease->deadline_unix_ms = absl::ToUnixMillis(r.deadline);
    lease->pinned = static_cast<uint32_t>(r.pinned.size());
    return absl::OkStatus();
  });
}

int32_t kvstrata_unpin(kvstrata_client* client, const char* lease_id, int64_t timeout_ms,
                       uint32_t* released) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(NotNull(lease_id, "lease_id"));
    if (lease_id[0] == '\0') return absl::InvalidArgumentError("lease_id is empty");
    ASSIGN_OR_RETURN(uint32_t n, client->Rpc(timeout_ms)->Unpin(lease_id));
    if (released != nullptr) *released = n;
    return absl::OkStatus();
  });
}

int32_t kvstrata_get_stats(kvstrata_client* client, kvstrata_stats* stats) {
  return Call([&]() -> absl::Status {
    RETURN_IF_ERROR(NotNull(client, "client"));
    RETURN_IF_ERROR(NotNull(stats, "stats"));
    if (stats->struct_size < sizeof(kvstrata_stats)) {
      return absl::InvalidArgumentError(
          "stats->struct_size is smaller than sizeof(kvstrata_stats)");
    }
    const kv::client::Counters& k = client->counters;
    kvstrata_stats s{};
    s.struct_size = sizeof(s);
    s.ucx_get_pages = k.ucx_get_pages;
    s.ucx_get_bytes = k.ucx_get_bytes;
    s.grpc_get_pages = k.grpc_get_pages;
    s.grpc_get_bytes = k.grpc_get_bytes;
    s.ucx_put_pages = k.ucx_put_pages;
    s.ucx_put_bytes = k.ucx_put_bytes;
    s.grpc_put_pages = k.grpc_put_pages;
    s.grpc_put_bytes = k.grpc_put_bytes;
    s.hits = k.hits;
    s.misses = k.misses;
    s.corrupt = k.corrupt;
    s.put_rejected = k.put_rejected;
    s.calls = k.calls;
    s.failed_calls = k.failed_calls;
    *stats = s;
    return absl::OkStatus();
  });
}

}  // extern "C"
