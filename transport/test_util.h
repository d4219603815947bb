// Helpers for transport tests: seeded random fill (seed printed on failure), poisoning, and an
// assert-or-return macro for StatusOr. Test-only; header-only; thread-safe.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>

#include "core/test_seed.h"
#include "gtest/gtest.h"

namespace kv::transport::testing {

// KVSTRATA_TEST_SEED from the environment, else a fresh random seed (core/test_seed.h).
inline uint64_t Seed() { return kv::testing::TestSeed(); }
inline std::string SeedTrace(uint64_t seed) { return kv::testing::SeedTrace(seed); }
// Fills with pseudo-random bytes; never all zeros.
inline void FillRandom(void* dst, size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  char* p = static_cast<char*>(dst);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(p + i, &v, 8);
  }
  for (; i < n; ++i) p[i] = static_cast<char>(rng() | 1);
}
inline void Poison(void* dst, size_t n) { std::memset(dst, 0xA5, n); }

}  // namespace kv::transport::testing

#define KV_T_CONCAT_INNER_(a, b) a##b
#define KV_T_CONCAT_(a, b) KV_T_CONCAT_INNER_(a, b)
#define ASSERT_OK_AND_ASSIGN_T(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_T_IMPL_(KV_T_CONCAT_(kv_t_so_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_T_IMPL_(so, lhs, expr)     \
  auto so = (expr);                                     \
  ASSERT_TRUE(so.ok()) << #expr << ": " << so.status(); \
  lhs = std::move(so).value()
