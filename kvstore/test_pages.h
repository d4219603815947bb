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
// The same, keyed under any namespace (a tenant's or the shared one).
std::vector<TestPage> MakeChain(uint64_t seed, const KeyNamespace& ns, size_t n, uint32_t tokens,
                                uint32_t layers, std::optional<BlockKey> parent = std::nullopt);

// A chain of v4-fp8-584 pages (256 tokens, 3 layers) under tenant `tenant`, one per entry
// of `resume_sizes`: a kv section of `kv_blocks` x 576 random bytes, an indexer-keys section
// of 576 random bytes and, when resume_sizes[i] > 0, a resume section of that many random
// bytes. Deterministic in the arguments, like MakeChain. meta.resume_role is kTurnEnd.
std::vector<TestPage> MakeV4Chain(uint64_t seed, const std::string& tenant,
                                  const std::vector<size_t>& resume_sizes, uint32_t kv_blocks = 2,
                                  std::optional<BlockKey> parent = std::nullopt);

// The keys of a chain.
std::vector<BlockKey> KeysOf(const std::vector<TestPage>& chain);

}  // namespace kv::testing

namespace kv::testing {
// A fresh empty directory under $KVSTRATA_TEST_TMPDIR (or /tmp), unique per call.
std::string FreshTestDir(const std::string& name);
}  // namespace kv::testing
