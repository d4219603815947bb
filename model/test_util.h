// Helpers shared by model/ tests: a fresh temporary directory under KVSTRATA_TEST_TMPDIR
// (set by ctest) or /tmp, and a printed seed so failures can be replayed (core/test_seed.h:
// KVSTRATA_TEST_SEED overrides it). Test-only; not thread-safe.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

#include "core/test_seed.h"

namespace kv::model::testing {

inline std::string FreshTempDir(const std::string& name) {
  const char* base = std::getenv("KVSTRATA_TEST_TMPDIR");
  std::filesystem::path p = base ? base : std::filesystem::temp_directory_path().string();
  p /= name + "-" + std::to_string(::getpid()) + "-" +
       std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  std::filesystem::create_directories(p);
  return p.string();
}

// A fresh seed per run, printed with every failure through a gtest trace.
inline uint64_t TestSeed() { return kv::testing::TestSeed(); }

}  // namespace kv::model::testing
