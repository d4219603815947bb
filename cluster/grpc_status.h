// Conversion between absl::Status (kvstrata's one error type) and grpc::Status, at the edge of
// every gRPC service adapter and client.
//
// Codes map 1:1: absl::StatusCode values are the gRPC code numbers (OK = 0 ... UNAUTHENTICATED
// = 16), so a NOT_FOUND inside a page store reaches the caller as NOT_FOUND. Messages pass
// through unchanged. Structured detail travels as a kvstrata.v1.ErrorInfo serialized into the
// gRPC status' binary error details:
//   - ToGrpcStatus fills ErrorInfo.retryable from kv::IsRetryable(), and copies an ErrorInfo
//     attached to the absl::Status with WithErrorInfo() (reason, node id, key...).
//   - FromGrpcStatus restores it: the ErrorInfo payload, and kv::MarkRetryable() when the
//     peer said retryable, so retry logic works the same on both sides of an RPC.
// A code outside 0..16 (never produced by gRPC or Abseil) becomes UNKNOWN, with the number in
// the message.
//
// Thread-safety: pure functions, safe to call concurrently. Returned values are owned by the
// caller.
#pragma once

#include <optional>
#include <string_view>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "proto/kvstrata/v1/common.pb.h"

namespace kv::cluster {

// Payload type URL under which an ErrorInfo is attached to an absl::Status.
inline constexpr std::string_view kErrorInfoPayloadUrl =
    "type.googleapis.com/kvstrata.v1.ErrorInfo";

// Maps an absl::Status to a grpc::Status with the same code and message. OK maps to OK (no
// details). Never fails.
grpc::Status ToGrpcStatus(const absl::Status& status);

// Maps a grpc::Status back. OK maps to OkStatus. Error details that do not parse as an
// ErrorInfo are ignored (the code and message still come through).
absl::Status FromGrpcStatus(const grpc::Status& status);

// Returns `status` with `info` attached as its ErrorInfo payload (code and message fields of
// `info` are ignored; the status' own are authoritative). An OK status is returned unchanged.
absl::Status WithErrorInfo(absl::Status status, const kvstrata::v1::ErrorInfo& info);

// The ErrorInfo attached to `status`, or nullopt when none is (or it does not parse).
std::optional<kvstrata::v1::ErrorInfo> GetErrorInfo(const absl::Status& status);

// The ErrorInfo describing `status` as it is sent on the wire: an attached one completed with
// code, message and retryable, or a fresh one. For an OK status, code 0 and nothing else.
kvstrata::v1::ErrorInfo ToErrorInfo(const absl::Status& status);

}  // namespace kv::cluster
