#include "kvstore/test_pages.h"

#include <cstdio>
#include <cstdlib>
#include <random>

#include "kvstore/page_format.h"

namespace kv::testing {
namespace {
template <typename T>
T OrDie(absl::StatusOr<T> v) {
  if (!v.ok()) {
    std::fprintf(stderr, "test_pages: %s\n", v.status().ToString().c_str());
    std::abort();
  }
  return *std::move(v);
}
}  // namespace

std::vector<TestPage> MakeChain(uint64_t seed, const std::string& tenant, size_t n, uint32_t tokens,
                                uint32_t layers, std::optional<BlockKey> parent) {
  return MakeChain(seed, OrDie(KeyNamespace::Tenant(tenant)), n, tokens, layers, parent);
}

std::vector<TestPage> MakeChain(uint64_t seed, const KeyNamespace& ns, size_t n, uint32_t tokens,
                                uint32_t layers, std::optional<BlockKey> parent) {
  std::mt19937_64 rng(seed);
  KeyParams params;
  params.model_fingerprint = Sha256Of("kvstrata test model");
  params.layout_id = "mla-fp8-656";
  params.page_tokens = tokens;
  params.ns = ns;
  std::vector<uint32_t> ids(n * tokens);
  for (auto& id : ids) id = static_cast<uint32_t>(rng() % 50000);
  std::vector<BlockKey> keys = OrDie(DeriveBlockKeys(params, ids, parent));
  std::vector<TestPage> out;
  BlockKey prev = parent.value_or(BlockKey::Zero());
  for (size_t i = 0; i < n; ++i) {
    PageSpec spec;
    spec.layout = LayoutId::kMlaFp8_656;
    spec.key = keys[i];
    spec.parent = prev;
    spec.token_count = tokens;
    spec.first_layer = 0;
    spec.layer_count = layers;
    std::vector<uint8_t> kv(OrDie(KvSectionBytes(spec)));
    for (auto& b : kv) b = static_cast<uint8_t>(rng());
    TestPage p;
    p.bytes = OrDie(EncodePage(spec, kv));
    p.meta.key = keys[i];
    p.meta.parent = prev;
    p.meta.ns = params.ns.ToString();
    p.meta.layout = "mla-fp8-656";
    p.meta.size = p.bytes.size();
    out.push_back(std::move(p));
    prev = keys[i];
  }
  return out;
}

std::vector<TestPage> MakeV4Chain(uint64_t seed, const std::string& tenant,
                                  const std::vector<size_t>& resume_sizes, uint32_t kv_blocks,
                                  std::optional<BlockKey> parent) {
  std::mt19937_64 rng(seed);
  constexpr uint32_t kTokens = 256;
  KeyParams params;
  params.model_fingerprint = Sha256Of("kvstrata test v4 model");
  params.layout_id = "v4-fp8-584";
  params.page_tokens = kTokens;
  params.ns = OrDie(KeyNamespace::Tenant(tenant));
  const size_t n = resume_sizes.size();
  std::vector<uint32_t> ids(n * kTokens);
  for (auto& id : ids) id = static_cast<uint32_t>(rng() % 50000);
  std::vector<BlockKey> keys = OrDie(DeriveBlockKeys(params, ids, parent));
  auto random_bytes = [&](size_t len) {
    std::vector<uint8_t> v(len);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  };
  std::vector<TestPage> out;
  BlockKey prev = parent.value_or(BlockKey::Zero());
  for (size_t i = 0; i < n; ++i) {
    const PageSpec spec{LayoutId::kV4Fp8_584, keys[i], prev, kTokens, 0, 3};
    const auto kv = random_bytes(576ull * kv_blocks), idx = random_bytes(576),
               resume = random_bytes(resume_sizes[i]);
    std::vector<PageSectionData> secs = {{SectionKind::kKv, kv}, {SectionKind::kIndexerKeys, idx}};
    if (!resume.empty()) secs.push_back({SectionKind::kV4Resume, resume});
    TestPage p;
    p.bytes = OrDie(EncodePageSections(spec, secs));
    p.meta.key = keys[i];
    p.meta.parent = prev;
    p.meta.ns = params.ns.ToString();
    p.meta.layout = "v4-fp8-584";
    p.meta.size = p.bytes.size();
    out.push_back(std::move(p));
    prev = keys[i];
  }
  return out;
}

std::vector<BlockKey> KeysOf(const std::vector<TestPage>& chain) {
  std::vector<BlockKey> keys;
  for (const auto& p : chain) keys.push_back(p.meta.key);
  return keys;
}

}  // namespace kv::testing

#include <unistd.h>

#include <atomic>
#include <filesystem>

namespace kv::testing {
std::string FreshTestDir(const std::string& name) {
  static std::atomic<int> counter{0};
  const char* base = std::getenv("KVSTRATA_TEST_TMPDIR");
  std::filesystem::path dir = base != nullptr && *base ? base : "/tmp";
  dir /= name + "-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
}
}  // namespace kv::testing
