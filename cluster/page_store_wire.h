// Wire helpers shared by the PageStore service's unary calls and streams
// (page_store_service.cc, page_store_streams.cc): block keys as proto bytes, and statuses with
// a machine-readable reason (ErrorInfo.reason). Internal to cluster_pagestore.
#pragma once

#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/grpc_status.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/block_key.h"
#include "kvstore/page_store.h"
#include "proto/kvstrata/v1/common.pb.h"

namespace kv::cluster::wire {

inline std::string KeyBytes(const BlockKey& k) {
  return std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size());
}

// The refusal of a shared-namespace write by a caller without the node credential
// (page_store_service.h "Tenancy").
inline absl::Status SharedWriteDenied() {
  return absl::PermissionDeniedError(
      "writes to the shared namespace need a node credential (the cluster's service token); a "
      "tenant token may write its own namespace only");
}

// InvalidArgument naming `what` unless `bytes` is a 32-byte key.
inline absl::StatusOr<BlockKey> ParseKey(const std::string& bytes, std::string_view what) {
  BlockKey k;
  if (bytes.size() != k.bytes.size()) {
    return absl::InvalidArgumentError(
        StrCat(what, " is ", bytes.size(), " bytes; block keys are 32 bytes"));
  }
  std::memcpy(k.bytes.data(), bytes.data(), k.bytes.size());
  return k;
}

// InvalidArgument for more than `max` keys or a malformed one.
inline absl::StatusOr<std::vector<BlockKey>> ParseKeys(
    const google::protobuf::RepeatedPtrField<std::string>& in, size_t max) {
  if (static_cast<size_t>(in.size()) > max) {
    return absl::InvalidArgumentError(StrCat(in.size(), " keys; at most ", max, " per call"));
  }
  std::vector<BlockKey> out;
  out.reserve(in.size());
  for (int i = 0; i < in.size(); ++i) {
    ASSIGN_OR_RETURN(BlockKey k, ParseKey(in[i], StrCat("keys[", i, "]")));
    out.push_back(k);
  }
  return out;
}

// `s` carrying ErrorInfo.reason = `reason`.
inline absl::Status Tagged(absl::Status s, std::string_view reason) {
  kvstrata::v1::ErrorInfo info;
  info.set_reason(std::string(reason));
  return WithErrorInfo(std::move(s), info);
}

// A PageStore error as the wire reports it: its PageStoreReason becomes ErrorInfo.reason.
inline absl::Status FromPageStore(absl::Status s) {
  const PageStoreReason r = ReasonOf(s);
  return r == PageStoreReason::kNone ? s : Tagged(std::move(s), ReasonName(r));
}

}  // namespace kv::cluster::wire
