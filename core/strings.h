// String helpers that work with std::string_view.
//
// Debian 12's Abseil (20220623) is built with its own absl::string_view, a different type
// from std::string_view, so absl::StrCat / StrSplit / SimpleAtoi reject std::string_view
// arguments. kvstrata code uses std::string_view; these helpers bridge the gap:
//
//   kv::StrCat("flag --", name, ": ", 42, " bytes")  // any mix of strings and numbers
//   kv::ToAbsl(sv)                                    // std -> absl string_view, no copy
//
// All functions are pure and thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

#include "absl/strings/string_view.h"

namespace kv {

inline absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}
inline std::string_view FromAbsl(absl::string_view s) {
  return std::string_view(s.data(), s.size());
}

namespace internal {
template <typename T>
void AppendPiece(std::string* out, const T& v) {
  if constexpr (std::is_convertible_v<const T&, std::string_view>) {
    out->append(std::string_view(v));
  } else if constexpr (std::is_same_v<T, absl::string_view>) {
    out->append(v.data(), v.size());
  } else if constexpr (std::is_same_v<T, char>) {
    out->push_back(v);
  } else {
    fmt::format_to(std::back_inserter(*out), "{}", v);
  }
}
}  // namespace internal

template <typename... Args>
std::string StrCat(const Args&... args) {
  std::string out;
  (internal::AppendPiece(&out, args), ...);
  return out;
}

}  // namespace kv
