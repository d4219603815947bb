#include "core/status_macros.h"

#include <cerrno>

#include <gtest/gtest.h>

namespace kv {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Quarter(int x, int* out) {
  ASSIGN_OR_RETURN(int h, Half(x));
  ASSIGN_OR_RETURN(int q, Half(h));
  *out = q;
  return absl::OkStatus();
}

absl::Status Chain(bool fail) {
  RETURN_IF_ERROR(fail ? absl::NotFoundError("gone") : absl::OkStatus());
  return absl::AlreadyExistsError("reached end");
}

TEST(StatusMacros, AssignOrReturn) {
  int out = -1;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  out = -1;
  absl::Status s = Quarter(6, &out);  // 6 -> 3 -> odd
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(out, -1) << "out-parameters are set only on success";
}

TEST(StatusMacros, ReturnIfError) {
  EXPECT_EQ(Chain(true).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(Chain(false).code(), absl::StatusCode::kAlreadyExists);
}

TEST(StatusMacros, Retryable) {
  EXPECT_FALSE(IsRetryable(absl::OkStatus()));
  EXPECT_FALSE(IsRetryable(absl::InvalidArgumentError("x")));
  EXPECT_TRUE(IsRetryable(MarkRetryable(absl::InternalError("x"))));
  EXPECT_TRUE(IsRetryable(absl::UnavailableError("peer down")));
  EXPECT_TRUE(MarkRetryable(absl::OkStatus()).ok());
  // Annotate keeps the retryable mark.
  absl::Status a = Annotate(MarkRetryable(absl::InternalError("x")), "ctx");
  EXPECT_TRUE(IsRetryable(a));
  EXPECT_EQ(a.message(), "ctx: x");
}

TEST(StatusMacros, Errno) {
  EXPECT_EQ(ErrnoToStatus(ENOENT, "open f").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoToStatus(ENOSPC, "write").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ErrnoToStatus(EIO, "read").code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(ErrnoToStatus(ENOENT, "open f").message().find("open f"), std::string_view::npos);
}

}  // namespace
}  // namespace kv
