// Equality tests of the V4 forward over the real data path (issue #7): the seeded tiny-v4
// model (window-only, CSA and HCA layers, 512-wide K = V), real v4-fp8-584 pages with and
// without resume sections, fresh random prompts per run (seed printed on failure).
#include "model/v4_model.h"

#include <cmath>
#include <cstring>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "kernels/v4/v4_record.h"
#include "kvstore/page_format.h"
#include "model/sampling.h"
#include "model/serving_model.h"
#include "model/test_util.h"
#include "model/tokenizer.h"
#include "model/transformer.h"

namespace kv::model {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<V4Model> MakeModel(uint64_t seed, std::string* dir_out = nullptr) {
  const std::string dir = testing::FreshTempDir("tiny-v4");
  auto cfg = PresetConfig("tiny-v4");
  EXPECT_TRUE(cfg.ok());
  auto s = WriteRandomModel(*cfg, seed, dir);
  EXPECT_TRUE(s.ok()) << s;
  auto m = V4Model::Load(dir);
  EXPECT_TRUE(m.ok()) << m.status();
  if (dir_out) *dir_out = dir;
  return m.ok() ? *std::move(m) : nullptr;
}

class V4ModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    seed_ = testing::TestSeed();
    model_ = MakeModel(seed_, &dir_).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(model_, nullptr);
    rng_.seed(seed_ ^ std::hash<std::string>()(
                          ::testing::UnitTest::GetInstance()->current_test_info()->name()));
  }
  std::vector<int32_t> RandomTokens(int64_t n) {
    std::vector<int32_t> t(n);
    for (auto& x : t) x = static_cast<int32_t>(rng_() % ByteTokenizer::kVocabSize);
    return t;
  }
  static std::vector<float> MustPrefill(std::span<const int32_t> t, int64_t start, V4Cache* c,
                                        int64_t chunk = 256) {
    auto l = model_->Prefill(t, start, c, {.chunk_tokens = chunk});
    EXPECT_TRUE(l.ok()) << l.status();
    return l.ok() ? *l : std::vector<float>();
  }
  static std::vector<uint8_t> MustExport(const V4Cache& c, int64_t p, bool resume) {
    auto b = c.ExportPage(p, resume);
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? *b : std::vector<uint8_t>();
  }
  // Every page of the cache, with the resume section where one was kept.
  static std::vector<std::vector<uint8_t>> Pages(const V4Cache& c) {
    std::vector<std::vector<uint8_t>> out;
    for (int64_t p = 0; p < c.num_pages(); ++p) {
      const int64_t end = std::min((p + 1) * kV4PageTokens, c.num_tokens());
      out.push_back(MustExport(c, p, c.HasResumeAt(end)));
    }
    return out;
  }

  static inline uint64_t seed_ = 0;
  static inline std::string dir_;
  static inline V4Model* model_ = nullptr;
  std::mt19937_64 rng_;
};

TEST_F(V4ModelTest, PresetHasTheRealLayerMixAndGeometry) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  const ModelConfig& c = model_->config();
  EXPECT_TRUE(c.IsV4());
  EXPECT_EQ(model_->v4_config().CountLayers(0), 1);
  EXPECT_EQ(model_->v4_config().CountLayers(4), 2);
  EXPECT_EQ(model_->v4_config().CountLayers(128), 1);
  EXPECT_EQ(c.head_dim, 512);
  EXPECT_EQ(c.head_dim - c.qk_rope_head_dim, 448);
  EXPECT_EQ(c.sliding_window, 128);
  // config.json round-trips; the V4 fields are in the canonical form (and so the
  // fingerprint), and a V3 config's canonical form is unchanged (no V4 fields).
  auto back = ParseModelConfig(ToConfigJson(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(CanonicalJson(*back), CanonicalJson(c));
  EXPECT_EQ(back->compress_ratios, c.compress_ratios);
  EXPECT_THAT(CanonicalJson(c), HasSubstr("\"compress_ratios\":[0,4,128,4]"));
  EXPECT_THAT(CanonicalJson(*PresetConfig("tiny-v3")), ::testing::Not(HasSubstr("compress")));
  // A V4 field changes the fingerprint (same seed, same weights shapes).
  ModelConfig other = c;
  other.index_topk = 8;
  const std::string d2 = testing::FreshTempDir("tiny-v4-topk8");
  ASSERT_TRUE(WriteRandomModel(other, seed_, d2).ok());
  auto f1 = ModelFingerprint(dir_), f2 = ModelFingerprint(d2);
  ASSERT_TRUE(f1.ok() && f2.ok());
  EXPECT_NE(*f1, *f2);
  // The MLA transformer refuses a V4 model by name.
  auto t = Transformer::Load(dir_);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(t.status().ToString(), HasSubstr("deepseek_v4"));
  // Bad V4 fields are refused by name.
  other = c;
  other.compress_ratios[1] = 8;
  EXPECT_THAT(ValidateV4ForRuntime(other).ToString(), HasSubstr("compress_ratios"));
  other = c;
  other.head_dim = 256;
  EXPECT_THAT(ValidateV4ForRuntime(other).ToString(), HasSubstr("head_dim"));
  other = c;
  other.compress_ratios.pop_back();
  EXPECT_THAT(ValidateV4ForRuntime(other).ToString(), HasSubstr("has 3 entries"));
  // config.json without compress_ratios, or with a non-integer one, is refused by name.
  std::string json = ToConfigJson(c);
  const std::string key = "\"compress_ratios\"";
  std::string no_ratios = json;
  no_ratios.replace(no_ratios.find(key), key.size(), "\"unused_field\"");
  EXPECT_THAT(ParseModelConfig(no_ratios).status().ToString(),
              HasSubstr("'compress_ratios' is missing"));
  std::string bad_ratio = json;
  bad_ratio.replace(bad_ratio.find("128,"), 4, "\"x\",");
  EXPECT_THAT(ParseModelConfig(bad_ratio).status().ToString(), HasSubstr("compress_ratios"));
  // The V4 runtime refuses a V3 model.
  auto v3 = PresetConfig("tiny-v3");
  ASSERT_TRUE(v3.ok());
  EXPECT_THAT(ValidateV4ForRuntime(*v3).ToString(), HasSubstr("not deepseek_v4"));
}

// Chunks of 7 and 100 tokens give byte-identical pages (resume sections included) and
// identical logits to a one-shot prefill; decode steps equal a longer prefill. (Prefill
// always ends a chunk at a 256-token page end, so "one-shot" runs 256-token chunks.)
TEST_F(V4ModelTest, ChunkedPrefillIsByteIdenticalToOneShot) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  const auto tokens = RandomTokens(600);
  auto one = model_->NewCache();
  const auto want = MustPrefill(tokens, 0, one.get(), 1000);
  const auto want_pages = Pages(*one);
  ASSERT_EQ(want_pages.size(), 3u);
  // Real section sizes of a full page: 2 CSA layers x 37,440 + 1 HCA x 1,728 kv bytes.
  auto v = DecodePage(want_pages[0]);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->kv().size(), 2u * 37440 + 1728);
  EXPECT_EQ(v->indexer_keys().size(), 2u * 8640);
  EXPECT_TRUE(v->has_resume());
  for (int64_t chunk : {7, 100}) {
    auto c = model_->NewCache();
    const auto got = MustPrefill(tokens, 0, c.get(), chunk);
    EXPECT_EQ(got, want) << "chunk " << chunk;
    EXPECT_TRUE(Pages(*c) == want_pages) << "chunk " << chunk;
  }
  // Decode steps over the last 3 tokens == the one-shot prefill.
  auto c = model_->NewCache();
  std::span<const int32_t> all(tokens);
  MustPrefill(all.first(597), 0, c.get());
  std::vector<float> got;
  for (int64_t p = 597; p < 600; ++p) {
    auto l = model_->DecodeStep(tokens[p], p, c.get());
    ASSERT_TRUE(l.ok()) << l.status();
    got = *l;
  }
  EXPECT_EQ(got, want);
  EXPECT_TRUE(Pages(*c).back() == want_pages.back());
}

// Prefill(P) then continuing from the exported pages (the last with a resume section) in a
// fresh cache == Prefill(all): identical logits and byte-identical pages. P on and off page
// ends (a partial page with a resume section: a session turn end).
TEST_F(V4ModelTest, ContinueFromResumePageIsByteIdentical) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  const auto tokens = RandomTokens(700);
  std::span<const int32_t> all(tokens);
  auto full = model_->NewCache();
  const auto want = MustPrefill(tokens, 0, full.get());
  const auto want_pages = Pages(*full);
  for (int64_t p : {256, 300, 512}) {
    auto first = model_->NewCache();
    MustPrefill(all.first(p), 0, first.get(), 37);
    auto c = model_->NewCache();
    for (int64_t pg = 0; pg < first->num_pages(); ++pg) {
      const bool last = pg + 1 == first->num_pages();
      auto s = model_->ImportPage(MustExport(*first, pg, last), c.get());
      ASSERT_TRUE(s.ok()) << s;
    }
    ASSERT_EQ(c->num_tokens(), p);
    EXPECT_TRUE(c->can_continue());
    const auto got = MustPrefill(all.subspan(p), p, c.get(), 64);
    EXPECT_EQ(got, want) << "P=" << p;
    // Pages after the resume point carry resume sections as in the full run; earlier pages
    // were imported without them, so compare those without.
    for (int64_t pg = 0; pg < c->num_pages(); ++pg) {
      const int64_t end = std::min((pg + 1) * kV4PageTokens, c->num_tokens());
      const bool r = c->HasResumeAt(end);
      EXPECT_EQ(MustExport(*c, pg, r), MustExport(*full, pg, r)) << "P=" << p << " page " << pg;
    }
  }
  EXPECT_EQ(Pages(*full), want_pages);
}

// Continuing from a page without a resume section is refused with a clear status; a page
// whose resume section was stripped (the store's drop policy) is refused the same way,
// while its compressed sections are byte-identical and still importable as history.
TEST_F(V4ModelTest, ContinuingWithoutResumeSectionIsRefused) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  const auto tokens = RandomTokens(520);
  std::span<const int32_t> all(tokens);
  auto full = model_->NewCache();
  const auto want = MustPrefill(tokens, 0, full.get());
  const auto p0 = MustExport(*full, 0, true), p1 = MustExport(*full, 1, true);
  auto stripped = StripResumeSection(p1);
  ASSERT_TRUE(stripped.ok()) << stripped.status();
  auto sv = DecodePage(*stripped);
  auto fv = DecodePage(p1);
  ASSERT_TRUE(sv.ok() && fv.ok());
  EXPECT_FALSE(sv->has_resume());
  EXPECT_TRUE(std::ranges::equal(sv->kv(), fv->kv()));
  EXPECT_TRUE(std::ranges::equal(sv->indexer_keys(), fv->indexer_keys()));
  EXPECT_EQ(*stripped, MustExport(*full, 1, false));

  auto c = model_->NewCache();
  ASSERT_TRUE(model_->ImportPage(*StripResumeSection(p0), c.get()).ok());
  ASSERT_TRUE(model_->ImportPage(*stripped, c.get()).ok());
  EXPECT_FALSE(c->can_continue());
  auto r = model_->Prefill(all.subspan(512), 512, c.get());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(r.status().ToString(), HasSubstr("no resume section"));
  EXPECT_EQ(model_->DecodeStep(tokens[512], 512, c.get()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(c->ExportPage(1, true).status().code(), absl::StatusCode::kFailedPrecondition);
  // History without resume + the last page with one: continues exactly.
  auto c2 = model_->NewCache();
  ASSERT_TRUE(model_->ImportPage(*StripResumeSection(p0), c2.get()).ok());
  ASSERT_TRUE(model_->ImportPage(p1, c2.get()).ok());
  EXPECT_EQ(MustPrefill(all.subspan(512), 512, c2.get()), want);
}

TEST_F(V4ModelTest, BadPagesAreRefusedAndLeaveTheCacheUnchanged) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  const auto tokens = RandomTokens(512);
  auto full = model_->NewCache();
  MustPrefill(tokens, 0, full.get());
  auto p0 = MustExport(*full, 0, true), p1 = MustExport(*full, 1, true);
  auto c = model_->NewCache();
  // Page 1 (resume state for token 512) at position 0: the resume section names the token.
  auto s = model_->ImportPage(p1, c.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.ToString(), HasSubstr("state is for token 512"));
  EXPECT_EQ(c->num_tokens(), 0);
  // A flipped byte anywhere: refused by the page checksums.
  for (size_t i : {size_t{5}, size_t{300}, p0.size() / 2, p0.size() - 1}) {
    auto bad = p0;
    bad[i] ^= 0x10;
    EXPECT_FALSE(model_->ImportPage(bad, c.get()).ok()) << "byte " << i;
  }
  // A NaN e4m3 code in an entry, resealed: the record codec refuses it by name.
  auto bad = p0;
  auto v = DecodePage(bad);
  ASSERT_TRUE(v.ok());
  const size_t kv_at = v->kv().data() - v->bytes().data();
  bad[kv_at + 3] = 0x7F;  // e4m3 NaN
  ASSERT_TRUE(ResealPage(bad).ok());
  s = model_->ImportPage(bad, c.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_EQ(c->num_tokens(), 0);
  // A bf16 cache cannot take or give pages.
  auto b = model_->NewCache(V4CacheFormat::kBf16);
  EXPECT_EQ(model_->ImportPage(p0, b.get()).code(), absl::StatusCode::kFailedPrecondition);
  // The good page still imports, and a second import of the same start is refused.
  ASSERT_TRUE(model_->ImportPage(p0, c.get()).ok());
  EXPECT_EQ(model_->ImportPage(p0, c.get()).code(), absl::StatusCode::kDataLoss);
  // Wrong start position and bad tokens are refused without touching the cache.
  EXPECT_EQ(model_->Prefill(tokens, 0, c.get()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  const int32_t bad_tok[1] = {100000};
  EXPECT_EQ(model_->Prefill(bad_tok, 256, c.get()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(model_->Prefill(std::span<const int32_t>(tokens).subspan(256), 256, c.get()).ok());
}

// The byte sizes computed from the config (what the router's cost model and the handoff
// layout use) equal what the cache really exports: resume payloads at window / ratio edges,
// layer records, partial and full pages with and without resume sections.
TEST_F(V4ModelTest, ComputedSizesEqualExportedBytes) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  const kernels::v4::V4Config& c = model_->v4_config();
  const auto tokens = RandomTokens(700);
  std::span<const int32_t> all(tokens);
  auto cache = model_->NewCache();
  int64_t have = 0;
  for (int64_t end : {1, 3, 4, 5, 127, 128, 129, 255, 256, 300, 512, 513, 700}) {
    MustPrefill(all.subspan(have, end - have), have, cache.get(), 64);
    have = end;
    auto r = cache->ExportResume();
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->size(), V4ResumeBytes(c, end)) << "end " << end;
    for (int l = 0; l < c.num_layers(); ++l) {
      auto b = cache->ExportLayerRecords(l, 0, end);
      ASSERT_TRUE(b.ok()) << b.status();
      EXPECT_EQ(b->entries.size() + b->keys.size(), V4LayerRecordBytes(c, l, 0, end))
          << "layer " << l << " end " << end;
    }
    const int64_t p = (end - 1) / kV4PageTokens;
    for (bool resume : {false, true}) {
      auto page = cache->ExportPage(p, resume);
      ASSERT_TRUE(page.ok()) << page.status();
      EXPECT_EQ(page->size(), V4PageBytes(c, p * kV4PageTokens, end, resume)) << "end " << end;
    }
  }
  // The published page size: a full page with its resume section, any page of the chain.
  auto published = V4PublishedPageBytes(model_->config());
  ASSERT_TRUE(published.ok()) << published.status();
  for (int64_t p : {0, 1}) EXPECT_EQ(MustExport(*cache, p, true).size(), *published) << p;
  auto router_size = PublishedPageBytes(model_->config(), "v4-fp8-584");  // the cost model's
  ASSERT_TRUE(router_size.ok()) << router_size.status();
  EXPECT_EQ(*router_size, *published);
  EXPECT_FALSE(PublishedPageBytes(model_->config(), "mla-fp8-656").ok());
  ModelConfig v3 = *PresetConfig("tiny-v3");
  EXPECT_EQ(V4PublishedPageBytes(v3).status().code(), absl::StatusCode::kInvalidArgument);
}

// The pieces of a page moved one layer at a time (a prefill->decode handoff): a fresh cache
// that imports every layer's records of tokens [0, T) and the resume payload at T continues
// exactly like the cache that computed them; a corrupt layer is refused by name and leaves
// the layer as it was; a half-done import blocks the forward until finished or aborted.
TEST_F(V4ModelTest, LayerByLayerImportContinuesExactly) {
  SCOPED_TRACE(::testing::Message() << "seed=" << seed_);
  const kernels::v4::V4Config& c = model_->v4_config();
  const auto tokens = RandomTokens(460);
  std::span<const int32_t> all(tokens);
  auto full = model_->NewCache();
  const auto want = MustPrefill(tokens, 0, full.get());
  auto src = model_->NewCache();
  const int64_t t = 333;
  MustPrefill(all.first(t), 0, src.get(), 50);
  auto resume = src->ExportResume();
  ASSERT_TRUE(resume.ok()) << resume.status();
  const std::span<const uint8_t> rs(reinterpret_cast<const uint8_t*>(resume->data()),
                                    resume->size());
  std::vector<V4Cache::LayerBlocks> blocks;
  for (int l = 0; l < c.num_layers(); ++l) blocks.push_back(*src->ExportLayerRecords(l, 0, t));

  auto dst = model_->NewCache();
  // Layers in reverse order; the first CSA layer first with one flipped scale (refused).
  const int csa = 1;
  ASSERT_EQ(c.compress_ratios[csa], 4);
  std::vector<uint8_t> bad = blocks[csa].entries;
  bad[(t / 4) * kernels::v4::kV4TokenBytes + 2] = 0xFF;  // entry 0's scale 2: NaN
  absl::Status s = model_->ImportLayerRecords(csa, t, bad, blocks[csa].keys, dst.get());
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_THAT(s.ToString(), HasSubstr("layer 1 entries"));
  EXPECT_EQ(dst->num_entries(csa), 0);
  for (int l = c.num_layers() - 1; l >= 0; --l) {
    ASSERT_TRUE(
        model_->ImportLayerRecords(l, t, blocks[l].entries, blocks[l].keys, dst.get()).ok());
    if (l == 2) {  // mid-import: the forward and a second import of a layer are refused
      EXPECT_EQ(model_->Prefill(all.subspan(0, 1), 0, dst.get()).status().code(),
                absl::StatusCode::kFailedPrecondition);
      EXPECT_EQ(
          model_->ImportLayerRecords(l, t, blocks[l].entries, blocks[l].keys, dst.get()).code(),
          absl::StatusCode::kFailedPrecondition);
      EXPECT_EQ(model_->FinishImport(t, rs, dst.get()).code(),
                absl::StatusCode::kFailedPrecondition);  // layers 0 and 1 are missing
    }
  }
  // A resume payload for another token is refused; the right one finishes the import.
  EXPECT_EQ(model_->FinishImport(t + 1, rs, dst.get()).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(model_->FinishImport(t, rs, dst.get()).ok());
  EXPECT_EQ(dst->num_tokens(), t);
  EXPECT_TRUE(dst->can_continue());
  EXPECT_EQ(MustPrefill(all.subspan(t), t, dst.get()), want);
  EXPECT_EQ(MustExport(*dst, 1, true), MustExport(*full, 1, true));

  // AbortImport drops what a half-done import appended.
  auto half = model_->NewCache();
  ASSERT_TRUE(model_->ImportLayerRecords(1, t, blocks[1].entries, blocks[1].keys, half.get()).ok());
  EXPECT_GT(half->num_entries(1), 0);
  model_->AbortImport(half.get());
  EXPECT_EQ(half->num_entries(1), 0);
  EXPECT_TRUE(MustPrefill(all.first(10), 0, half.get()).size() > 0);
}

// ---- FP8 vs bf16 A/B (as model/transformer_test.cc Fp8VersusBf16AccuracyAB) ----------------

double RelL2(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = double(a[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

struct AbResult {
  double attn_err = 0, attn_max = 0, logit_err = 0, logit_max = 0, agreement = 0;
  std::vector<double> layer_err, layer_max;  // per layer: over all steps, worst step
};

// Teacher-forced decode of `steps` tokens over both caches (each holding the prompt); the
// bf16 run picks the tokens greedily.
AbResult MeasureAb(const V4Model& model, V4Cache* ref, std::vector<float> ref_logits, V4Cache* test,
                   std::vector<float> test_logits, int steps) {
  double an = 0, ad = 0, ln = 0, ld = 0;
  int agree = 0;
  AbResult r;
  const size_t layers = model.config().compress_ratios.size();
  std::vector<double> lnum(layers, 0), lden(layers, 0);
  r.layer_max.assign(layers, 0);
  for (int s = 0; s < steps; ++s) {
    const int32_t tok = *Argmax(ref_logits);
    agree += (*Argmax(test_logits) == tok);
    r.logit_max = std::max(r.logit_max, RelL2(test_logits, ref_logits));
    for (size_t i = 0; i < ref_logits.size(); ++i) {
      ln += (double(test_logits[i]) - ref_logits[i]) * (double(test_logits[i]) - ref_logits[i]);
      ld += double(ref_logits[i]) * ref_logits[i];
    }
    V4Trace rt, tt;
    auto a = model.DecodeStep(tok, ref->num_tokens(), ref, &rt);
    auto b = model.DecodeStep(tok, test->num_tokens(), test, &tt);
    EXPECT_TRUE(a.ok() && b.ok()) << a.status() << b.status();
    if (!a.ok() || !b.ok()) return r;
    ref_logits = *a;
    test_logits = *b;
    r.attn_max = std::max(r.attn_max, RelL2(tt.attn_out, rt.attn_out));
    const size_t per = rt.attn_out.size() / layers;
    for (size_t l = 0; l < layers; ++l) {
      double sn = 0, sd = 0;
      for (size_t i = l * per; i < (l + 1) * per; ++i) {
        const double d = double(tt.attn_out[i]) - rt.attn_out[i];
        sn += d * d;
        sd += double(rt.attn_out[i]) * rt.attn_out[i];
      }
      lnum[l] += sn;
      lden[l] += sd;
      an += sn;
      ad += sd;
      r.layer_max[l] = std::max(r.layer_max[l], std::sqrt(sn / sd));
    }
  }
  for (size_t l = 0; l < layers; ++l) r.layer_err.push_back(std::sqrt(lnum[l] / lden[l]));
  r.attn_err = std::sqrt(an / ad);
  r.logit_err = std::sqrt(ln / ld);
  r.agreement = double(agree) / steps;
  return r;
}

// Bounds of the V4 FP8-vs-bf16 gate, set from measurement. Over 15 seeds (tiny-v4, 300-token
// random prompt: 75 CSA entries of which top-16 are selected, 2 HCA entries, 128-token
// window; 64 greedy decode steps) we measured: attention-output rel L2 0.034-0.055 (worst
// step 0.081-0.23), logits rel L2 0.0078-0.0106 (worst step 0.0155-0.048), greedy agreement
// 0.938-1.0. Per layer (3 of those seeds), the window-only and HCA layers stay at 0.023-0.032
// (worst step
// <= 0.04), the e4m3 error of 584-B records as for V3; the CSA layers reach 0.045-0.058 with
// worst steps up to 0.26: FP8 indexer keys move scores near the top-k boundary, so a step can
// select a different entry than the bf16 run. Bounds leave ~1.5x headroom; the non-CSA
// layers get their own tighter bound. A doubled scale exceeds them by far
// (Fp8GateCatchesAWrongScale: ~0.6).
constexpr double kAttnErrBound = 0.08, kAttnMaxBound = 0.35, kDenseLayerMaxBound = 0.06;
constexpr double kLogitErrBound = 0.02, kLogitMaxBound = 0.08, kAgreementBound = 0.90;

TEST(V4AccuracyAb, Fp8VersusBf16AccuracyAB) {
  const uint64_t base = testing::TestSeed();
  for (uint64_t k = 0; k < 3; ++k) {
    const uint64_t seed = base + k * 7919;
    SCOPED_TRACE(::testing::Message() << "seed=" << seed);
    auto model = MakeModel(seed);
    ASSERT_NE(model, nullptr);
    std::mt19937_64 rng(seed);
    std::vector<int32_t> prompt(300);
    for (auto& t : prompt) t = static_cast<int32_t>(rng() % ByteTokenizer::kVocabSize);
    auto ref = model->NewCache(V4CacheFormat::kBf16);
    auto fp8 = model->NewCache(V4CacheFormat::kFp8);
    auto rl = model->Prefill(prompt, 0, ref.get());
    auto fl = model->Prefill(prompt, 0, fp8.get());
    ASSERT_TRUE(rl.ok() && fl.ok());
    const int steps = 64;
    AbResult r = MeasureAb(*model, ref.get(), *rl, fp8.get(), *fl, steps);
    std::printf(
        "v4 fp8-vs-bf16 A/B (seed %llu) over %d decode steps: attention-output rel L2 %.4f "
        "(max step %.4f), logits rel L2 %.4f (max step %.4f), greedy agreement %.3f\n",
        static_cast<unsigned long long>(seed), steps, r.attn_err, r.attn_max, r.logit_err,
        r.logit_max, r.agreement);
    for (size_t l = 0; l < r.layer_err.size(); ++l) {
      std::printf("  layer %zu (ratio %lld) attention-output rel L2 %.4f (max step %.4f)\n", l,
                  static_cast<long long>(model->config().compress_ratios[l]), r.layer_err[l],
                  r.layer_max[l]);
    }
    EXPECT_GT(r.attn_err, 0.0) << "fp8 and bf16 caches cannot agree exactly";
    for (size_t l = 0; l < r.layer_max.size(); ++l) {
      if (model->config().compress_ratios[l] != 4) {
        EXPECT_LT(r.layer_max[l], kDenseLayerMaxBound) << "layer " << l;
      }
    }
    EXPECT_LT(r.attn_err, kAttnErrBound);
    EXPECT_LT(r.attn_max, kAttnMaxBound);
    EXPECT_LT(r.logit_err, kLogitErrBound);
    EXPECT_LT(r.logit_max, kLogitMaxBound);
    EXPECT_GE(r.agreement, kAgreementBound);
  }
}

// Doubles tile 0's UE8M0 scale (byte + 1) of every record of a v4 block of n records.
void BumpScales(uint8_t* block, int64_t n) {
  for (int64_t t = 0; t < n; ++t) block[n * kernels::v4::kV4TokenBytes + t * 8] += 1;
}

// The gate has teeth: pages whose tile-0 scales are doubled in every record (compressed
// entries and the resume section's window) fail the attention-output bound; the same pages
// untouched pass.
TEST(V4AccuracyAb, Fp8GateCatchesAWrongScale) {
  const uint64_t seed = testing::TestSeed();
  SCOPED_TRACE(::testing::Message() << "seed=" << seed);
  auto model = MakeModel(seed);
  ASSERT_NE(model, nullptr);
  std::mt19937_64 rng(seed);
  std::vector<int32_t> prompt(256);
  for (auto& t : prompt) t = static_cast<int32_t>(rng() % ByteTokenizer::kVocabSize);
  auto ref = model->NewCache(V4CacheFormat::kBf16);
  auto fp8 = model->NewCache(V4CacheFormat::kFp8);
  auto rl = model->Prefill(prompt, 0, ref.get());
  auto fl = model->Prefill(prompt, 0, fp8.get());
  ASSERT_TRUE(rl.ok() && fl.ok());
  auto page = fp8->ExportPage(0, true);
  ASSERT_TRUE(page.ok());
  std::vector<uint8_t> bad = *page;
  auto v = DecodePage(bad);
  ASSERT_TRUE(v.ok());
  // kv section: per compressing layer one block of 256/m entries.
  size_t off = v->kv().data() - v->bytes().data();
  for (int ratio : model->config().compress_ratios) {
    if (ratio == 0) continue;
    BumpScales(&bad[off], 256 / ratio);
    off += kernels::v4::V4BlockBytes(256 / ratio);
  }
  // Resume section: 24-byte header, then per layer 16 bytes + states + a 128-token block.
  off = v->resume().data() - v->bytes().data() + 24;
  for (size_t l = 0; l < model->config().compress_ratios.size(); ++l) {
    uint32_t ml, il, wl;
    std::memcpy(&ml, &bad[off + 4], 4);
    std::memcpy(&il, &bad[off + 8], 4);
    std::memcpy(&wl, &bad[off + 12], 4);
    off += 16 + ml + il;
    BumpScales(&bad[off], 128);
    off += wl;
  }
  ASSERT_TRUE(ResealPage(bad).ok());
  auto bad_cache = model->NewCache();
  ASSERT_TRUE(model->ImportPage(bad, bad_cache.get()).ok());
  AbResult r = MeasureAb(*model, ref.get(), *rl, bad_cache.get(), *fl, 16);
  std::printf("v4 wrong-scale pages: attention-output rel L2 %.4f, logits rel L2 %.4f\n",
              r.attn_err, r.logit_err);
  EXPECT_GT(r.attn_err, 2 * kAttnErrBound);
  // The untouched page, imported the same way, passes the A/B bound. The bound is set for
  // the main A/B's 64 steps; a 16-step mean is noisier (0.084 seen for one seed), so the good
  // page is measured over 64 steps like the main A/B.
  auto ref2 = model->NewCache(V4CacheFormat::kBf16);
  auto rl2 = model->Prefill(prompt, 0, ref2.get());
  auto good = model->NewCache();
  ASSERT_TRUE(model->ImportPage(*page, good.get()).ok());
  AbResult g = MeasureAb(*model, ref2.get(), *rl2, good.get(), *fl, 64);
  EXPECT_LT(g.attn_err, kAttnErrBound);
}

}  // namespace
}  // namespace kv::model
