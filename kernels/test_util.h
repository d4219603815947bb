// Test helpers shared by kernels/*_test.cc: a seeded RNG whose seed is printed on failure,
// and generators of fresh random inputs (never zeros) with varied magnitudes.
// Not thread-safe (one per test).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "core/test_seed.h"

namespace kv::kernels::testing {

// A fresh seed per run (KVSTRATA_TEST_SEED overrides it, to reproduce a failure).
inline uint64_t FreshSeed() { return kv::testing::TestSeed(); }

class Rng {
 public:
  Rng() : seed_(FreshSeed()), gen_(seed_) {}
  uint64_t seed() const { return seed_; }
  std::string SeedText() const { return kv::testing::SeedTrace(seed_); }
  std::mt19937_64& gen() { return gen_; }
  double Uniform(double lo, double hi) {
    return std::uniform_real_distribution<double>(lo, hi)(gen_);
  }
  int64_t Int(int64_t lo, int64_t hi) {
    return std::uniform_int_distribution<int64_t>(lo, hi)(gen_);
  }
  float Normal() { return std::normal_distribution<float>(0.0f, 1.0f)(gen_); }
  // A normal value times 2^k with k drawn from [min_exp, max_exp]: varied magnitudes.
  float Varied(int min_exp, int max_exp) {
    return std::ldexp(Normal(), static_cast<int>(Int(min_exp, max_exp)));
  }
  std::vector<float> NormalVector(size_t n, float stddev = 1.0f) {
    std::vector<float> v(n);
    for (float& x : v) x = Normal() * stddev;
    return v;
  }

 private:
  uint64_t seed_;
  std::mt19937_64 gen_;
};

}  // namespace kv::kernels::testing
