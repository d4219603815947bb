#include "core/logging.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <cstdlib>

#include <nlohmann/json.hpp>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace kv::log {
namespace {

std::atomic<int>& LevelVar() {
  static std::atomic<int> level = [] {
    const char* env = std::getenv("KVSTRATA_LOG_LEVEL");
    if (env == nullptr) return static_cast<int>(Level::kInfo);
    std::string_view v(env);
    if (v == "debug") return static_cast<int>(Level::kDebug);
    if (v == "warn") return static_cast<int>(Level::kWarn);
    if (v == "error") return static_cast<int>(Level::kError);
    if (v == "off") return static_cast<int>(Level::kOff);
    return static_cast<int>(Level::kInfo);
  }();
  return level;
}
std::atomic<bool> g_json{false};

spdlog::logger& Logger() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto l = spdlog::stderr_logger_mt("kvstrata");
    l->set_pattern("%v");  // we render the whole line ourselves
    l->set_level(spdlog::level::trace);
    l->flush_on(spdlog::level::warn);
    return l;
  }();
  return *logger;
}

constexpr const char* kLevelLetter[] = {"D", "I", "W", "E"};
constexpr const char* kLevelName[] = {"debug", "info", "warn", "error"};

std::string Timestamp() {
  return absl::FormatTime("%Y-%m-%dT%H:%M:%E3SZ", absl::Now(), absl::UTCTimeZone());
}

}  // namespace

void SetLevel(Level level) { LevelVar().store(static_cast<int>(level)); }
Level GetLevel() { return static_cast<Level>(LevelVar().load()); }
bool Enabled(Level level) { return static_cast<int>(level) >= LevelVar().load(); }

absl::Status SetLevel(std::string_view level) {
  static constexpr std::pair<std::string_view, Level> kNames[] = {{"debug", Level::kDebug},
                                                                  {"info", Level::kInfo},
                                                                  {"warn", Level::kWarn},
                                                                  {"error", Level::kError},
                                                                  {"off", Level::kOff}};
  for (const auto& [name, l] : kNames) {
    if (name == level) {
      SetLevel(l);
      return absl::OkStatus();
    }
  }
  return absl::InvalidArgumentError(
      fmt::format("unknown log level '{}' (want debug|info|warn|error|off)", level));
}

void SetFormat(Format format) { g_json.store(format == Format::kJson); }
absl::Status SetFormat(std::string_view format) {
  if (format == "text") {
    SetFormat(Format::kText);
  } else if (format == "json") {
    SetFormat(Format::kJson);
  } else {
    return absl::InvalidArgumentError(
        fmt::format("unknown log format '{}' (want text|json)", format));
  }
  return absl::OkStatus();
}

namespace internal {

void AppendField(std::string* text, std::string* json, std::string_view key, std::string value) {
  if (g_json.load()) {
    json->append(",");
    json->append(nlohmann::json(std::string(key)).dump());
    json->append(":");
    json->append(
        nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
    return;
  }
  text->append(" ");
  text->append(key);
  text->append("=");
  const bool quote = value.empty() || value.find_first_of(" \"=\t\n") != std::string::npos;
  if (quote) {
    text->append(
        nlohmann::json(value).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  } else {
    text->append(value);
  }
}

void Emit(Level level, std::string_view event, std::string fields_text, std::string fields_json) {
  const int l = static_cast<int>(level);
  if (l < 0 || l > 3) return;
  std::string line;
  if (g_json.load()) {
    line = fmt::format("{{\"ts\":\"{}\",\"level\":\"{}\",\"event\":{}{}}}", Timestamp(),
                       kLevelName[l], nlohmann::json(std::string(event)).dump(), fields_json);
  } else {
    line = fmt::format("{} {} {}{}", Timestamp(), kLevelLetter[l], event, fields_text);
  }
  Logger().log(static_cast<spdlog::level::level_enum>(spdlog::level::debug + l), line);
}

}  // namespace internal
}  // namespace kv::log
