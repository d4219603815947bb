// The one test seed of the repository: KVSTRATA_TEST_SEED from the environment (to replay a
// failure), else a fresh random seed per run. Every randomized test prints SeedTrace() with
// its failures. Test-only; header-only; thread-safe.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>

namespace kv::testing {

inline constexpr char kTestSeedVariable[] = "KVSTRATA_TEST_SEED";

inline uint64_t TestSeed() {
  if (const char* s = std::getenv(kTestSeedVariable)) return std::strtoull(s, nullptr, 10);
  std::random_device rd;
  return (uint64_t{rd()} << 32) | rd();
}

// "seed=N (replay: KVSTRATA_TEST_SEED=N)".
inline std::string SeedTrace(uint64_t seed) {
  return "seed=" + std::to_string(seed) + " (replay: " + kTestSeedVariable + "=" +
         std::to_string(seed) + ")";
}

}  // namespace kv::testing
