// Leveled, structured logging on top of spdlog.
//
// A log line is an event name plus key=value fields, so it can be grepped and parsed:
//
//   kv::log::Info("page_quarantined", "key", hex, "tier", "nvme", "reason", st.message());
//   -> 2026-11-22T14:20:01.123Z I page_quarantined key=ab12.. tier=nvme reason="xxh3 ..."
//
// With SetFormat(Format::kJson) each line is one JSON object instead
// ({"ts":..,"level":"info","event":"page_quarantined","key":"ab12..",...}).
// Values are formatted with fmt; strings containing spaces or quotes are quoted in text mode.
//
// Thread-safe. Logs go to stderr. The level defaults to info, or KVSTRATA_LOG_LEVEL.
// Policy (STYLE.md): the function that first detects an error logs it; callers propagate.
#pragma once

#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include "absl/status/status.h"

namespace kv::log {

enum class Level { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3, kOff = 4 };
enum class Format { kText, kJson };

void SetLevel(Level level);
// Accepts debug|info|warn|error|off.
absl::Status SetLevel(std::string_view level);
Level GetLevel();
void SetFormat(Format format);
absl::Status SetFormat(std::string_view format);  // text|json
bool Enabled(Level level);

namespace internal {
void Emit(Level level, std::string_view event, std::string fields_text, std::string fields_json);
void AppendField(std::string* text, std::string* json, std::string_view key, std::string value);

inline void Collect(std::string*, std::string*) {}
template <typename V, typename... Rest>
void Collect(std::string* text, std::string* json, std::string_view key, const V& value,
             const Rest&... rest) {
  if constexpr (std::is_convertible_v<const V&, std::string_view>) {
    AppendField(text, json, key, std::string(std::string_view(value)));
  } else {
    AppendField(text, json, key, fmt::format("{}", value));
  }
  Collect(text, json, rest...);
}

template <typename... Fields>
void Log(Level level, std::string_view event, const Fields&... fields) {
  static_assert(sizeof...(Fields) % 2 == 0, "log fields come in key, value pairs");
  if (!Enabled(level)) return;
  std::string text, json;
  Collect(&text, &json, fields...);
  Emit(level, event, std::move(text), std::move(json));
}
}  // namespace internal

template <typename... F>
void Debug(std::string_view event, const F&... f) {
  internal::Log(Level::kDebug, event, f...);
}
template <typename... F>
void Info(std::string_view event, const F&... f) {
  internal::Log(Level::kInfo, event, f...);
}
template <typename... F>
void Warn(std::string_view event, const F&... f) {
  internal::Log(Level::kWarn, event, f...);
}
template <typename... F>
void Error(std::string_view event, const F&... f) {
  internal::Log(Level::kError, event, f...);
}

}  // namespace kv::log
