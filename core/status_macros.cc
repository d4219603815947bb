#include "core/status_macros.h"

#include <cerrno>
#include <cstring>
#include <string>

#include "absl/strings/cord.h"
#include "core/strings.h"

namespace kv {
namespace {
constexpr std::string_view kRetryableUrl = "type.kvstrata.dev/retryable";
}  // namespace

absl::Status MarkRetryable(absl::Status s) {
  if (!s.ok()) s.SetPayload(ToAbsl(kRetryableUrl), absl::Cord("1"));
  return s;
}

bool IsRetryable(const absl::Status& s) {
  if (s.ok()) return false;
  if (s.GetPayload(ToAbsl(kRetryableUrl)).has_value()) return true;
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
      return true;
    default:
      return false;
  }
}

absl::Status ErrnoToStatus(int err, std::string_view what) {
  std::string msg = kv::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(msg);
    case EEXIST:
      return absl::AlreadyExistsError(msg);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(msg);
    case ENOSPC:
    case EDQUOT:
    case ENOMEM:
      return absl::ResourceExhaustedError(msg);
    case EINVAL:
    case ENAMETOOLONG:
      return absl::InvalidArgumentError(msg);
    case EAGAIN:
    case EINTR:
    case ECONNREFUSED:
    case ECONNRESET:
    case EPIPE:
      return MarkRetryable(absl::UnavailableError(msg));
    case ETIMEDOUT:
      return absl::DeadlineExceededError(msg);
    case EIO:
      return absl::DataLossError(msg);
    default:
      return absl::UnknownError(msg);
  }
}

absl::Status Annotate(const absl::Status& s, std::string_view context) {
  if (s.ok()) return s;
  absl::Status out(s.code(), kv::StrCat(context, ": ", s.message()));
  s.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace kv
