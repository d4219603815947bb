// Internal to prefill/: the Prometheus metrics an Engine updates (names in docs/serving.md).
// Pointers are owned by the registry. Not part of the public API.
#pragma once

#include <array>

#include "core/metrics.h"
#include "prefill/engine.h"

namespace kv::prefill {

struct Engine::Metrics {
  Counter* ok;
  Counter* failed;
  Counter* cached_tokens;
  Counter* recomputed_tokens;
  Counter* output_tokens;
  Counter* published_pages;
  Counter* publish_errors;
  std::array<Counter*, kNumTiers> pages_loaded;
  std::array<Counter*, kNumTiers> bytes_loaded;
  Histogram* ttft;
};

}  // namespace kv::prefill
