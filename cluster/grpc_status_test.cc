#include "cluster/grpc_status.h"

#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "gtest/gtest.h"

namespace kv::cluster {
namespace {

TEST(GrpcStatusTest, NamedCodesMapOneToOne) {
  const std::pair<absl::StatusCode, grpc::StatusCode> pairs[] = {
      {absl::StatusCode::kCancelled, grpc::StatusCode::CANCELLED},
      {absl::StatusCode::kUnknown, grpc::StatusCode::UNKNOWN},
      {absl::StatusCode::kInvalidArgument, grpc::StatusCode::INVALID_ARGUMENT},
      {absl::StatusCode::kDeadlineExceeded, grpc::StatusCode::DEADLINE_EXCEEDED},
      {absl::StatusCode::kNotFound, grpc::StatusCode::NOT_FOUND},
      {absl::StatusCode::kAlreadyExists, grpc::StatusCode::ALREADY_EXISTS},
      {absl::StatusCode::kPermissionDenied, grpc::StatusCode::PERMISSION_DENIED},
      {absl::StatusCode::kResourceExhausted, grpc::StatusCode::RESOURCE_EXHAUSTED},
      {absl::StatusCode::kFailedPrecondition, grpc::StatusCode::FAILED_PRECONDITION},
      {absl::StatusCode::kAborted, grpc::StatusCode::ABORTED},
      {absl::StatusCode::kOutOfRange, grpc::StatusCode::OUT_OF_RANGE},
      {absl::StatusCode::kUnimplemented, grpc::StatusCode::UNIMPLEMENTED},
      {absl::StatusCode::kInternal, grpc::StatusCode::INTERNAL},
      {absl::StatusCode::kUnavailable, grpc::StatusCode::UNAVAILABLE},
      {absl::StatusCode::kDataLoss, grpc::StatusCode::DATA_LOSS},
      {absl::StatusCode::kUnauthenticated, grpc::StatusCode::UNAUTHENTICATED},
  };
  for (const auto& [absl_code, grpc_code] : pairs) {
    const std::string msg = absl::StrCat("msg for ", absl::StatusCodeToString(absl_code));
    grpc::Status g = ToGrpcStatus(absl::Status(absl_code, msg));
    EXPECT_EQ(g.error_code(), grpc_code) << msg;
    EXPECT_EQ(g.error_message(), msg);
    absl::Status back = FromGrpcStatus(grpc::Status(grpc_code, msg));
    EXPECT_EQ(back.code(), absl_code) << msg;
    EXPECT_EQ(back.message(), msg);
  }
}

TEST(GrpcStatusTest, OkMapsToOk) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).error_details().empty());
  EXPECT_TRUE(FromGrpcStatus(grpc::Status::OK).ok());
}

TEST(GrpcStatusTest, RetryableSurvivesTheWire) {
  // INTERNAL is not retryable by code; only the explicit mark makes it so.
  absl::Status marked = kv::MarkRetryable(absl::InternalError("tier busy"));
  ASSERT_TRUE(kv::IsRetryable(marked));
  absl::Status back = FromGrpcStatus(ToGrpcStatus(marked));
  EXPECT_EQ(back.code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(kv::IsRetryable(back));

  absl::Status plain = FromGrpcStatus(ToGrpcStatus(absl::InternalError("bad page")));
  EXPECT_FALSE(kv::IsRetryable(plain));
}

TEST(GrpcStatusTest, ErrorInfoSurvivesTheWire) {
  kvstrata::v1::ErrorInfo info;
  info.set_reason("PAGE_CHECKSUM_MISMATCH");
  info.set_node_id("store-1");
  info.set_key(std::string(32, '\x7f'));
  info.set_code(99);  // ignored: the status' own code wins
  absl::Status s = WithErrorInfo(absl::DataLossError("section 2 checksum mismatch"), info);
  grpc::Status g = ToGrpcStatus(s);
  ASSERT_EQ(g.error_code(), grpc::StatusCode::DATA_LOSS);

  kvstrata::v1::ErrorInfo wire;
  ASSERT_TRUE(wire.ParseFromString(g.error_details()));
  EXPECT_EQ(wire.code(), static_cast<int>(absl::StatusCode::kDataLoss));
  EXPECT_EQ(wire.message(), "section 2 checksum mismatch");
  EXPECT_EQ(wire.reason(), "PAGE_CHECKSUM_MISMATCH");
  EXPECT_FALSE(wire.retryable());

  absl::Status back = FromGrpcStatus(g);
  std::optional<kvstrata::v1::ErrorInfo> got = GetErrorInfo(back);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->reason(), "PAGE_CHECKSUM_MISMATCH");
  EXPECT_EQ(got->node_id(), "store-1");
  EXPECT_EQ(got->key(), std::string(32, '\x7f'));
}

TEST(GrpcStatusTest, GarbageDetailsAreIgnored) {
  absl::Status s = FromGrpcStatus(
      grpc::Status(grpc::StatusCode::NOT_FOUND, "no such page", std::string("\xff\xff\xff", 3)));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "no such page");
  EXPECT_FALSE(GetErrorInfo(s).has_value());
}

TEST(GrpcStatusTest, OutOfRangeCodesBecomeUnknown) {
  absl::Status s = FromGrpcStatus(grpc::Status(static_cast<grpc::StatusCode>(42), "odd"));
  EXPECT_EQ(s.code(), absl::StatusCode::kUnknown);
  EXPECT_NE(s.message().find("42"), absl::string_view::npos);

  // Abseil itself already folds unknown codes into UNKNOWN; the mapping keeps the message.
  grpc::Status g = ToGrpcStatus(absl::Status(static_cast<absl::StatusCode>(77), "odder"));
  EXPECT_EQ(g.error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_NE(g.error_message().find("odder"), std::string::npos);
}

TEST(GrpcStatusTest, WithErrorInfoOnOkIsNoop) {
  kvstrata::v1::ErrorInfo info;
  info.set_reason("X");
  EXPECT_TRUE(WithErrorInfo(absl::OkStatus(), info).ok());
  EXPECT_EQ(ToErrorInfo(absl::OkStatus()).code(), 0);
}

}  // namespace
}  // namespace kv::cluster
