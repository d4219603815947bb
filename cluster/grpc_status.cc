#include "cluster/grpc_status.h"

#include <string>
#include <utility>

#include "absl/strings/cord.h"
#include "core/status_macros.h"
#include "core/strings.h"

namespace kv::cluster {
namespace {

constexpr int kMaxCode = static_cast<int>(absl::StatusCode::kUnauthenticated);

absl::string_view PayloadUrl() {
  return absl::string_view(kErrorInfoPayloadUrl.data(), kErrorInfoPayloadUrl.size());
}

}  // namespace

absl::Status WithErrorInfo(absl::Status status, const kvstrata::v1::ErrorInfo& info) {
  if (status.ok()) return status;
  kvstrata::v1::ErrorInfo copy = info;
  copy.clear_code();
  copy.clear_message();
  status.SetPayload(PayloadUrl(), absl::Cord(copy.SerializeAsString()));
  return status;
}

std::optional<kvstrata::v1::ErrorInfo> GetErrorInfo(const absl::Status& status) {
  auto payload = status.GetPayload(PayloadUrl());
  if (!payload.has_value()) return std::nullopt;
  kvstrata::v1::ErrorInfo info;
  if (!info.ParseFromString(std::string(*payload))) return std::nullopt;
  return info;
}

kvstrata::v1::ErrorInfo ToErrorInfo(const absl::Status& status) {
  if (status.ok()) return kvstrata::v1::ErrorInfo();
  kvstrata::v1::ErrorInfo info = GetErrorInfo(status).value_or(kvstrata::v1::ErrorInfo());
  info.set_code(static_cast<int>(status.code()));
  info.set_message(std::string(status.message()));
  info.set_retryable(kv::IsRetryable(status));
  return info;
}

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  int code = static_cast<int>(status.code());
  std::string message(status.message());
  if (code < 0 || code > kMaxCode) {
    message = kv::StrCat("status code ", code, ": ", message);
    code = static_cast<int>(absl::StatusCode::kUnknown);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), message,
                      ToErrorInfo(status).SerializeAsString());
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  int code = static_cast<int>(status.error_code());
  std::string message = status.error_message();
  if (code < 0 || code > kMaxCode) {
    message = kv::StrCat("grpc status code ", code, ": ", message);
    code = static_cast<int>(absl::StatusCode::kUnknown);
  }
  absl::Status out(static_cast<absl::StatusCode>(code), message);
  kvstrata::v1::ErrorInfo info;
  if (!status.error_details().empty() && info.ParseFromString(status.error_details())) {
    const bool retryable = info.retryable();
    out = WithErrorInfo(std::move(out), info);
    if (retryable) out = kv::MarkRetryable(std::move(out));
  }
  return out;
}

}  // namespace kv::cluster
