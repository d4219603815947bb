// Test helper: real encoded pages (page_format) for real key chains (block_key), drawn from
// a seeded generator. Used by the kvstore tests and benchmarks; not part of the library.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "kvstore/block_key.h"
#include "kvstore/tier.h"

namespace kv::testing {

struct TestPage {
  PageMeta meta;
  std::vector<uint8_t> bytes;
};

// A chain of `n` mla-fp8-656 pages of `tokens` tokens x `layers` layers under tenant
// `tenant`, continuing `parent` when given. Token ids and KV bytes come from `seed`, so the
// same arguments always produce the same pages. Aborts on an internal encoding error.
std::vector<TestPage> MakeChain(uint64_t seed, const std::string& tenant, size_t n,
                                uint32_t tokens = 4, uint32_t layers = 1,
                                std::optional<BlockKey> parent = std::nullopt);

// The keys of a chain.
std::vector<BlockKey> KeysOf(const std::vector<TestPage>& chain);

}  // namespace kv::testing

namespace kv::testing {
// A fresh empty directory under $KVSTRATA_TEST_TMPDIR (or /tmp), unique per call.
std::string FreshTestDir(const std::string& name);
}  // namespace kv::testing
