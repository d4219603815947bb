// Golden page digests: the seeded tiny-v3 and tiny-v4 models, a fixed prompt prefilled in
// ragged chunks and then decoded greedily, and the XXH3-64 of every page the serving path
// would publish (ServingSequence::ExportBlock + ServingModel::EncodeExported), plus the last
// logits. The expected values are committed below; any x86-64 build must reproduce them, at
// any thread count and with any GEMM kernel family (ctest also runs this test with
// KVSTRATA_GEMM_ISA=portable / avx2 / avx512). This is what keeps a fleet of mixed CPUs
// sharing one cache: the same tokens give the same page bytes on every host (issue #13).
//
// Regenerating: a change that alters these digests changes the bytes of every cached page, so
// it needs a stated reason in its commit message. On a mismatch the test prints the table
// this build computes, ready to paste.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/hash.h"
#include "core/strings.h"
#include "gtest/gtest.h"
#include "kernels/gemm.h"
#include "kvstore/block_key.h"
#include "model/config.h"
#include "model/serving_model.h"
#include "model/test_util.h"
#include "model/weights.h"

namespace kv::model {
namespace {

struct Golden {
  const char* preset;
  int64_t prompt_tokens;
  int64_t decode_tokens;
  std::vector<uint64_t> pages;  // XXH3-64 of each full page, in chain order
  uint64_t logits;              // XXH3-64 of the last step's logits (f32 bits)
};

// The committed digests (see the file comment before changing them).
const std::vector<Golden>& Expected() {
  static const std::vector<Golden> g = {
      {"tiny-v3",
       300,
       84,
       {0x1cafa093d3825d97ull, 0x6dee00256edc2687ull, 0xa5433fc54f9e4f34ull, 0xf0c5c92542b13a0cull,
        0xb644fc94abd55852ull, 0x4e25dfe3d2f1bcd4ull},
       0xdcac889531dcab8eull},
      {"tiny-v4", 400, 112, {0xb13d759dc78b0010ull, 0x8f2fc3c1da98e588ull}, 0x68d4a88ae0280fc2ull},
  };
  return g;
}

constexpr uint64_t kSeed = 20261206;

// A fixed, varied prompt: a SplitMix64 stream over the byte vocabulary (no specials).
std::vector<int32_t> Prompt(int64_t n) {
  std::vector<int32_t> t(n);
  uint64_t s = 0x6b7673747261ull;
  for (int32_t& x : t) {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    x = static_cast<int32_t>((z ^ (z >> 31)) % 256);
  }
  return t;
}

int32_t Argmax(const std::vector<float>& v) {
  int32_t best = 0;
  for (size_t i = 1; i < v.size(); ++i) {
    if (v[i] > v[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

struct Computed {
  std::vector<uint64_t> pages;
  uint64_t logits = 0;
};

// Prefill in chunks of 100 (not a page multiple), then greedy decode, then every full page.
Computed RunGolden(const Golden& g, int compute_threads) {
  Computed out;
  const std::string dir = testing::FreshTempDir(StrCat("golden-", g.preset));
  auto cfg = PresetConfig(g.preset);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  if (!cfg.ok()) return out;
  EXPECT_TRUE(WriteRandomModel(*cfg, kSeed, dir).ok());
  const int64_t total = g.prompt_tokens + g.decode_tokens;
  auto loaded = LoadServingModel(dir, "", total + 64, compute_threads);
  EXPECT_TRUE(loaded.ok()) << loaded.status();
  if (!loaded.ok()) return out;
  const ServingModel& m = *loaded->serving;
  auto seq = m.NewSequence(total + 64);
  EXPECT_TRUE(seq.ok()) << seq.status();
  if (!seq.ok()) return out;
  std::vector<int32_t> tokens = Prompt(g.prompt_tokens);
  auto logits = (*seq)->Prefill(tokens, 0, 100);
  EXPECT_TRUE(logits.ok()) << logits.status();
  if (!logits.ok()) return out;
  for (int64_t i = 0; i < g.decode_tokens; ++i) {
    tokens.push_back(Argmax(*logits));
    logits = (*seq)->DecodeStep(tokens.back());
    EXPECT_TRUE(logits.ok()) << logits.status();
    if (!logits.ok()) return out;
  }
  out.logits = Xxh3_64(logits->data(), logits->size() * sizeof(float));
  KeyParams params{.model_fingerprint = m.fingerprint(),
                   .layout_id = std::string(m.layout().name),
                   .page_tokens = static_cast<uint32_t>(m.page_tokens()),
                   .ns = *KeyNamespace::Tenant("golden")};
  std::vector<uint32_t> ids(tokens.begin(), tokens.end());
  auto keys = DeriveBlockKeys(params, ids);
  EXPECT_TRUE(keys.ok()) << keys.status();
  if (!keys.ok()) return out;
  const int64_t full = (*seq)->num_tokens() / m.page_tokens();
  for (int64_t b = 0; b < full && b < static_cast<int64_t>(keys->size()); ++b) {
    const BlockKey parent = b == 0 ? BlockKey{} : (*keys)[b - 1];
    auto exported =
        (*seq)->ExportBlock(b, /*with_resume=*/m.pages_have_resume(), (*keys)[b], parent);
    EXPECT_TRUE(exported.ok()) << exported.status();
    if (!exported.ok()) return out;
    auto page = m.EncodeExported(*exported, (*keys)[b], parent);
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return out;
    out.pages.push_back(Xxh3_64(page->data(), page->size()));
  }
  return out;
}

std::string Table(const Golden& g, const Computed& c) {
  std::string s =
      StrCat("      {\"", g.preset, "\", ", g.prompt_tokens, ", ", g.decode_tokens, ",\n       {");
  for (size_t i = 0; i < c.pages.size(); ++i) {
    char buf[32];
    std::snprintf(buf, sizeof(buf), "%s0x%016llxull", i == 0 ? "" : ", ",
                  static_cast<unsigned long long>(c.pages[i]));
    s += buf;
  }
  char buf[40];
  std::snprintf(buf, sizeof(buf), "},\n       0x%016llxull},",
                static_cast<unsigned long long>(c.logits));
  return s + buf;
}

class GoldenTest : public ::testing::TestWithParam<int> {};

TEST_P(GoldenTest, PagesAndLogitsMatchCommittedDigests) {
  const int threads = GetParam();
  absl::StatusOr<kernels::GemmIsa> isa = kernels::DefaultGemmIsa();
  if (!isa.ok() && isa.status().code() == absl::StatusCode::kFailedPrecondition) {
    GTEST_SKIP() << isa.status().message();
  }
  ASSERT_TRUE(isa.ok()) << isa.status();
  std::printf("GEMM kernels: %s, compute threads: %d\n",
              std::string(kernels::GemmIsaName(*isa)).c_str(), threads);
  for (const Golden& g : Expected()) {
    SCOPED_TRACE(g.preset);
    const Computed c = RunGolden(g, threads);
    ASSERT_FALSE(c.pages.empty());
    const bool same = c.pages == g.pages && c.logits == g.logits;
    EXPECT_TRUE(same) << "the page bytes of " << g.preset << " differ from the committed "
                      << "digests; this build computes:\n"
                      << Table(g, c);
  }
}

INSTANTIATE_TEST_SUITE_P(Threads, GoldenTest, ::testing::Values(1, 2));

}  // namespace
}  // namespace kv::model
