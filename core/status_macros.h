// Status helpers shared by every kvstrata module.
//
// kvstrata reports every failure as absl::Status / absl::StatusOr<T>; no exception crosses a
// module boundary. Abseil 20220623 (Debian 12) has no RETURN_IF_ERROR / ASSIGN_OR_RETURN, so
// they live here, once.
//
//   RETURN_IF_ERROR(expr);             // returns expr's status from the enclosing function
//                                      // when it is not OK.
//   ASSIGN_OR_RETURN(auto v, expr);    // expr is a StatusOr<T>; on error returns its status,
//                                      // otherwise moves the value into `v`.
//
// Retryability is part of the error: a transient failure (a peer that may come back, a full
// queue) carries a payload that IsRetryable() reads. Data loss uses absl::DataLossError.
// Thread-safe: everything here is a pure function of its arguments.
#pragma once

#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define KV_STATUS_CONCAT_INNER_(a, b) a##b
#define KV_STATUS_CONCAT_(a, b) KV_STATUS_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                       \
  do {                                              \
    ::absl::Status kv_status_tmp_ = (expr);         \
    if (ABSL_PREDICT_FALSE(!kv_status_tmp_.ok())) { \
      return kv_status_tmp_;                        \
    }                                               \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, expr) \
  KV_ASSIGN_OR_RETURN_IMPL_(KV_STATUS_CONCAT_(kv_statusor_, __LINE__), lhs, expr)

#define KV_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                              \
  if (ABSL_PREDICT_FALSE(!statusor.ok())) {            \
    return std::move(statusor).status();               \
  }                                                    \
  lhs = std::move(statusor).value()

namespace kv {

// Returns `s` with a "retryable" mark attached. An OK status is returned unchanged.
absl::Status MarkRetryable(absl::Status s);

// True when `s` was marked retryable, or its code is one that is transient by nature
// (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED).
bool IsRetryable(const absl::Status& s);

// Maps an errno value to the closest absl code, with `what` and strerror in the message.
absl::Status ErrnoToStatus(int err, std::string_view what);

// Prefixes a non-OK status's message with `context` ("context: message"). OK passes through.
absl::Status Annotate(const absl::Status& s, std::string_view context);

}  // namespace kv
