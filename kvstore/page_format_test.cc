#include "kvstore/page_format.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kv {
namespace {

using ::testing::HasSubstr;

// Documented byte offsets (page_format.h, docs/formats.md §2), restated here so the test
// checks the layout independently of the implementation's constants.
constexpr size_t kVersionAt = 8, kLayoutAt = 10, kCountAt = 12, kPageBytesAt = 16;
constexpr size_t kTokensAt = 24, kFirstLayerAt = 28, kLayersAt = 32, kFlagsAt = 36;
constexpr size_t kKeyAt = 40, kParentAt = 72, kTableAt = 128;

void Put(std::vector<uint8_t>& b, size_t at, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) b[at + i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t Get(const std::vector<uint8_t>& b, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{b[at + i]} << (8 * i);
  return v;
}

class PageFormatTest : public ::testing::Test {
 protected:
  void SetUp() override { rng_.seed(seed_); }
  void TearDown() override {
    if (HasFailure()) std::fprintf(stderr, "random seed was %u\n", seed_);
  }
  std::vector<uint8_t> RandomBytes(size_t n) {
    std::uniform_int_distribution<int> d(0, 255);
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(d(rng_));
    return v;
  }
  BlockKey RandomKey() {
    BlockKey k;
    auto b = RandomBytes(32);
    std::memcpy(k.bytes.data(), b.data(), 32);
    return k;
  }
  PageSpec Spec(LayoutId layout, uint32_t tokens, uint32_t first, uint32_t layers) {
    return PageSpec{layout, RandomKey(), RandomKey(), tokens, first, layers};
  }
  // Encodes a page with random KV; `kv_out` receives the KV bytes.
  std::vector<uint8_t> Make(const PageSpec& spec, std::vector<uint8_t>* kv_out = nullptr) {
    auto kv_bytes = KvSectionBytes(spec);
    EXPECT_TRUE(kv_bytes.ok()) << kv_bytes.status();
    std::vector<uint8_t> kv = RandomBytes(*kv_bytes);
    auto page = EncodePage(spec, kv);
    EXPECT_TRUE(page.ok()) << page.status();
    if (kv_out) *kv_out = kv;
    return *page;
  }
  std::string Error(const std::vector<uint8_t>& page) {
    auto v = DecodePage(page);
    EXPECT_FALSE(v.ok()) << "a bad page decoded; seed " << seed_;
    return v.ok() ? std::string() : std::string(v.status().ToString());
  }
  // Edits a field, then reseals the checksums so the structural check is what fails.
  std::string ErrorAfterEdit(std::vector<uint8_t> page, size_t at, uint64_t v, int bytes) {
    Put(page, at, v, bytes);
    EXPECT_TRUE(ResealPage(page).ok());
    return Error(page);
  }

  uint32_t seed_ = std::random_device{}();
  std::mt19937 rng_;
};

TEST(LayoutRegistryTest, MlaPageLayoutsAreTheKernelsLayouts) {
  for (kernels::KvLayout k : {kernels::KvLayout::kMlaFp8_656, kernels::KvLayout::kMlaBf16_1152}) {
    absl::StatusOr<LayoutInfo> info = LookupLayout(kernels::KvLayoutName(k));
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(static_cast<int>(info->id), static_cast<int>(k));
    EXPECT_EQ(info->record_bytes, static_cast<uint32_t>(kernels::RecordBytes(k)));
    absl::StatusOr<kernels::KvLayout> back = MlaKernelLayout(info->id);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, k);
  }
  EXPECT_EQ(LookupLayout("mla-fp8-656")->record_bytes, 656u);
  EXPECT_EQ(LookupLayout("mla-bf16-1152")->record_bytes, 1152u);
  EXPECT_EQ(LookupLayout("v4-fp8-584")->record_bytes, 584u);
  EXPECT_EQ(MlaKernelLayout(LayoutId::kV4Fp8_584).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MlaKernelLayout(static_cast<LayoutId>(9)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(PageFormatTest, RoundTripBothLayoutsAndLayerAccess) {
  for (LayoutId layout : {LayoutId::kMlaFp8_656, LayoutId::kMlaBf16_1152}) {
    const uint32_t tokens = std::uniform_int_distribution<uint32_t>(1, 64)(rng_);
    const uint32_t first = std::uniform_int_distribution<uint32_t>(0, 60)(rng_);
    const uint32_t layers = std::uniform_int_distribution<uint32_t>(1, 4)(rng_);
    PageSpec spec = Spec(layout, tokens, first, layers);
    std::vector<uint8_t> kv;
    std::vector<uint8_t> page = Make(spec, &kv);
    auto view = DecodePage(page);
    ASSERT_TRUE(view.ok()) << view.status() << " seed " << seed_;
    const PageHeader& h = view->header();
    EXPECT_EQ(h.layout.id, layout);
    EXPECT_EQ(h.key, spec.key);
    EXPECT_EQ(h.parent, spec.parent);
    EXPECT_EQ(h.token_count, tokens);
    EXPECT_EQ(h.first_layer, first);
    EXPECT_EQ(h.layer_count, layers);
    EXPECT_EQ(h.page_bytes, page.size());
    ASSERT_EQ(h.sections.size(), 1u);
    EXPECT_EQ(view->kv().data(), page.data() + PageHeaderBytes(1));  // zero-copy
    ASSERT_TRUE(std::equal(kv.begin(), kv.end(), view->kv().begin(), view->kv().end()));
    const uint64_t lb = uint64_t{tokens} * h.layout.record_bytes;
    EXPECT_EQ(view->layer_bytes(), lb);
    for (uint32_t l = first; l < first + layers; ++l) {
      auto s = view->KvLayer(l);
      ASSERT_TRUE(s.ok()) << s.status();
      ASSERT_EQ(s->size(), lb);
      EXPECT_EQ(0, std::memcmp(s->data(), kv.data() + (l - first) * lb, lb)) << "layer " << l;
    }
    auto all = view->KvLayers(first, layers);
    ASSERT_TRUE(all.ok());
    EXPECT_EQ(all->size(), kv.size());
    EXPECT_THAT(view->KvLayer(first + layers).status().ToString(), HasSubstr("not inside"));
    if (first > 0) {
      EXPECT_FALSE(view->KvLayer(first - 1).ok());
    }
    EXPECT_FALSE(view->KvLayers(first, 0).ok());
    EXPECT_FALSE(view->KvLayers(first, UINT32_MAX).ok());
  }
}

TEST_F(PageFormatTest, DocumentedByteLayout) {
  PageSpec spec = Spec(LayoutId::kMlaFp8_656, 64, 3, 2);
  std::vector<uint8_t> page = Make(spec);
  ASSERT_EQ(page.size(), 192u + 64 * 2 * 656);
  EXPECT_EQ(0, std::memcmp(page.data(), "KVSTPAGE", 8));
  EXPECT_EQ(Get(page, kVersionAt, 2), 1u);
  EXPECT_EQ(Get(page, kLayoutAt, 2), 1u);
  EXPECT_EQ(Get(page, kCountAt, 4), 1u);
  EXPECT_EQ(Get(page, kPageBytesAt, 8), page.size());
  EXPECT_EQ(Get(page, kTokensAt, 4), 64u);
  EXPECT_EQ(Get(page, kFirstLayerAt, 4), 3u);
  EXPECT_EQ(Get(page, kLayersAt, 4), 2u);
  EXPECT_EQ(Get(page, kFlagsAt, 4), 0u);
  EXPECT_EQ(0, std::memcmp(page.data() + kKeyAt, spec.key.bytes.data(), 32));
  EXPECT_EQ(0, std::memcmp(page.data() + kParentAt, spec.parent.bytes.data(), 32));
  EXPECT_EQ(Get(page, kTableAt, 2), 1u);           // kind kv
  EXPECT_EQ(Get(page, kTableAt + 8, 8), 192u);     // offset
  EXPECT_EQ(Get(page, kTableAt + 16, 8), 83968u);  // length
  EXPECT_EQ(Get(page, kTableAt + 24, 8), Xxh3_64(page.data() + 192, 83968));
  EXPECT_EQ(Get(page, 184, 8), Xxh3_64(page.data(), 184));
}

TEST_F(PageFormatTest, EncoderWritesEveryByte) {
  PageSpec spec = Spec(LayoutId::kMlaBf16_1152, 3, 0, 2);
  auto size = EncodedPageBytes(spec);
  ASSERT_TRUE(size.ok());
  std::vector<uint8_t> kv = RandomBytes(*KvSectionBytes(spec));
  std::vector<uint8_t> out(*size, 0xA5);  // poison: unwritten padding would fail the decode
  ASSERT_TRUE(EncodePageInto(spec, kv, out).ok());
  EXPECT_TRUE(DecodePage(out).ok());
  EXPECT_EQ(out, *EncodePage(spec, kv));
}

TEST_F(PageFormatTest, EncoderRejectsBadInput) {
  PageSpec spec = Spec(LayoutId::kMlaFp8_656, 4, 0, 1);
  std::vector<uint8_t> kv(4 * 656 - 1, 1);
  EXPECT_THAT(EncodePage(spec, kv).status().ToString(), HasSubstr("kv is 2623 bytes"));
  kv.resize(4 * 656);
  std::vector<uint8_t> small(100);
  EXPECT_THAT(EncodePageInto(spec, kv, small).ToString(), HasSubstr("output buffer"));
  spec.token_count = 0;
  EXPECT_THAT(EncodePage(spec, kv).status().ToString(), HasSubstr("token count"));
  spec.token_count = 4;
  spec.first_layer = kMaxLayers;
  EXPECT_THAT(EncodePage(spec, kv).status().ToString(), HasSubstr("layer range"));
  spec.first_layer = 0;
  spec.layout = LayoutId::kV4Fp8_584;
  auto s = EncodePage(spec, kv).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.ToString(), HasSubstr("EncodePageSections"));
  spec.layout = static_cast<LayoutId>(9);
  EXPECT_THAT(EncodePage(spec, kv).status().ToString(), HasSubstr("unknown layout"));
}

// Every single-byte change anywhere in a small page is rejected, naming the part.
TEST_F(PageFormatTest, EverySingleByteFlipIsRejectedNamingThePart) {
  for (LayoutId layout : {LayoutId::kMlaFp8_656, LayoutId::kMlaBf16_1152}) {
    std::vector<uint8_t> page = Make(Spec(layout, 1, 5, 2));
    const size_t hb = PageHeaderBytes(1);
    std::uniform_int_distribution<int> mask(1, 255);
    for (size_t i = 0; i < page.size(); ++i) {
      for (uint8_t m : {uint8_t{0xFF}, static_cast<uint8_t>(mask(rng_))}) {
        page[i] ^= m;
        const std::string err = Error(page);
        if (i < hb) {
          EXPECT_THAT(err, HasSubstr("header")) << "byte " << i << " seed " << seed_;
        } else {
          EXPECT_THAT(err, HasSubstr("section 0 (kv) checksum mismatch")) << "byte " << i;
        }
        page[i] ^= m;
      }
    }
    EXPECT_TRUE(DecodePage(page).ok());
  }
}

TEST_F(PageFormatTest, TruncationAtEveryLengthAndTrailingBytes) {
  std::vector<uint8_t> page = Make(Spec(LayoutId::kMlaFp8_656, 2, 0, 1));
  for (size_t n = 0; n < page.size(); ++n) {
    auto v = DecodePage(std::span(page).first(n));
    ASSERT_FALSE(v.ok()) << "length " << n;
    EXPECT_THAT(v.status().ToString(), HasSubstr("truncated")) << "length " << n;
  }
  EXPECT_THAT(Error(std::vector<uint8_t>(page.begin(), page.begin() + 100)),
              HasSubstr("truncated: header says 1504 bytes, have 100"));
  page.push_back(0);
  EXPECT_THAT(Error(page), HasSubstr("trailing bytes: header says 1504 bytes, have 1505"));
}

TEST_F(PageFormatTest, UnknownVersionLayoutAndReservedLayout) {
  std::vector<uint8_t> page = Make(Spec(LayoutId::kMlaFp8_656, 1, 0, 1));
  EXPECT_THAT(ErrorAfterEdit(page, kVersionAt, 2, 2),
              HasSubstr("unsupported page format version 2"));
  EXPECT_THAT(ErrorAfterEdit(page, kLayoutAt, 9, 2), HasSubstr("header: unknown layout code 9"));
  EXPECT_THAT(ErrorAfterEdit(page, kLayoutAt, 0, 2), HasSubstr("unknown layout code 0"));
  // A v4 page (layout 3) whose kv section (656 B) is not made of 576-byte blocks: refused.
  std::vector<uint8_t> v4 = page;
  Put(v4, kLayoutAt, 3, 2);
  ASSERT_TRUE(ResealPage(v4).ok());
  auto s = DecodePage(v4).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.ToString(), HasSubstr("section 0 (kv) is 656 bytes; layout v4-fp8-584 needs a "
                                      "multiple of 576"));
  EXPECT_EQ(DecodePageHeader(v4).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PageFormatTest, StructuralErrorsNameTheProblem) {
  std::vector<uint8_t> page = Make(Spec(LayoutId::kMlaFp8_656, 2, 0, 1));
  const size_t off = kTableAt + 8, len = kTableAt + 16;
  EXPECT_THAT(ErrorAfterEdit(page, off, 128, 8),
              HasSubstr("section 0 (kv) at offset 128 overlaps the header"));
  EXPECT_THAT(ErrorAfterEdit(page, off, 256, 8), HasSubstr("expected 192"));
  EXPECT_THAT(ErrorAfterEdit(page, len, UINT64_MAX, 8), HasSubstr("runs past the page end"));
  EXPECT_THAT(ErrorAfterEdit(page, len, 656, 8), HasSubstr("needs 2 tokens x 1 layers x 656 B"));
  EXPECT_THAT(ErrorAfterEdit(page, kTableAt, 2, 2),
              HasSubstr("section 0 (indexer-keys) is a reserved"));
  EXPECT_THAT(ErrorAfterEdit(page, kTableAt, 3, 2), HasSubstr("v4-resume"));
  EXPECT_THAT(ErrorAfterEdit(page, kTableAt, 77, 2), HasSubstr("section 0: unknown kind 77"));
  EXPECT_THAT(ErrorAfterEdit(page, kTableAt + 2, 1, 2), HasSubstr("reserved fields"));
  for (uint64_t count : {uint64_t{0}, uint64_t{9}, uint64_t{1} << 31}) {
    std::vector<uint8_t> bad = page;  // no reseal: it refuses such counts too
    Put(bad, kCountAt, count, 4);
    EXPECT_THAT(Error(bad), HasSubstr("header: section count " + std::to_string(count)));
    EXPECT_FALSE(ResealPage(bad).ok());
  }
  EXPECT_THAT(ErrorAfterEdit(page, kPageBytesAt, 100, 8),
              HasSubstr("smaller than its 192-byte header"));
  EXPECT_THAT(ErrorAfterEdit(page, kFlagsAt, 1, 4), HasSubstr("flags"));
  EXPECT_THAT(ErrorAfterEdit(page, 120, 1, 1), HasSubstr("reserved or padding"));
  EXPECT_THAT(ErrorAfterEdit(page, 110, 1, 1), HasSubstr("has no head geometry"));
  EXPECT_THAT(ErrorAfterEdit(page, 170, 1, 1), HasSubstr("reserved or padding"));
  EXPECT_THAT(ErrorAfterEdit(page, kTokensAt, 0, 4), HasSubstr("token count 0"));
  EXPECT_THAT(ErrorAfterEdit(page, kLayersAt, 0, 4), HasSubstr("layer range"));
  EXPECT_THAT(ErrorAfterEdit(page, kFirstLayerAt, UINT32_MAX, 4), HasSubstr("layer range"));
  // Two sections: a duplicate kv section, placed after the first, is refused.
  std::vector<uint8_t> two = page;
  two.insert(two.begin() + 192, 64, 0);  // the header grows to 256 bytes
  Put(two, kCountAt, 2, 4);
  std::memcpy(two.data() + kTableAt + 32, two.data() + kTableAt, 32);
  Put(two, off, 256, 8);
  Put(two, kTableAt + 32 + 8, 256 + 2 * 656, 8);
  Put(two, kTableAt + 32 + 16, 0, 8);
  Put(two, kPageBytesAt, two.size(), 8);
  ASSERT_TRUE(ResealPage(two).ok());
  EXPECT_THAT(Error(two), HasSubstr("section 1 (kv): duplicate kv section"));
}

TEST_F(PageFormatTest, HeaderOnlyDecodeFromAPrefix) {
  PageSpec spec = Spec(LayoutId::kMlaBf16_1152, 64, 0, 3);
  std::vector<uint8_t> page = Make(spec);
  const size_t hb = PageHeaderBytes(1);
  auto h = DecodePageHeader(std::span(page).first(hb));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->key, spec.key);
  EXPECT_EQ(h->page_bytes, page.size());
  EXPECT_EQ(h->sections[0].length, 64u * 3 * 1152);
  EXPECT_THAT(DecodePageHeader(std::span(page).first(hb - 1)).status().ToString(),
              HasSubstr("truncated"));
  page[hb - 1] ^= 1;
  EXPECT_THAT(DecodePageHeader(page).status().ToString(), HasSubstr("header checksum mismatch"));
}

// Golden pages: the encoder's output for fixed inputs is checked in, so a format change
// cannot slip in unnoticed. The same files seed the page-decoder fuzzer. Regenerate with
// KVSTRATA_REGENERATE_GOLDEN=1 after an intentional format change (and bump the version).
struct Golden {
  const char* file;
  LayoutId layout;
  uint32_t tokens, first, layers;
  GqaGeometry gqa = {};
};
constexpr Golden kGolden[] = {
    {"testdata/pages/mla-fp8-656_t2_l0x2.page", LayoutId::kMlaFp8_656, 2, 0, 2},
    {"testdata/pages/mla-bf16-1152_t1_l7x1.page", LayoutId::kMlaBf16_1152, 1, 7, 1},
    {"testdata/pages/gqa-bf16_t4_h2_d8_l0x2.page", LayoutId::kGqaBf16, 4, 0, 2, {2, 8}},
    {"testdata/pages/gqa-fp8_t4_h2_d16_l0x3.page", LayoutId::kGqaFp8, 4, 0, 3, {2, 16}},
};

std::vector<uint8_t> GoldenPage(const Golden& g) {
  std::mt19937 rng(12345);  // fixed: the output is compared byte-for-byte
  PageSpec spec{g.layout, {}, {}, g.tokens, g.first, g.layers, g.gqa};
  for (auto& b : spec.key.bytes) b = static_cast<uint8_t>(rng());
  for (auto& b : spec.parent.bytes) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> kv(*KvSectionBytes(spec));
  for (auto& b : kv) b = static_cast<uint8_t>(rng());
  return *EncodePage(spec, kv);
}

TEST(PageFormatGolden, EncoderOutputMatchesCheckedInPages) {
  const bool regen = std::getenv("KVSTRATA_REGENERATE_GOLDEN") != nullptr;
  for (const Golden& g : kGolden) {
    std::vector<uint8_t> page = GoldenPage(g);
    if (regen) {
      std::ofstream(g.file, std::ios::binary)
          .write(reinterpret_cast<const char*>(page.data()), page.size());
    }
    std::ifstream in(g.file, std::ios::binary);
    ASSERT_TRUE(in.good()) << "missing golden page " << g.file;
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string want = ss.str();
    ASSERT_EQ(want.size(), page.size()) << g.file;
    EXPECT_EQ(0, std::memcmp(want.data(), page.data(), page.size())) << g.file;
    EXPECT_TRUE(DecodePage(page).ok()) << g.file;
  }
}

// ---- v4-fp8-584 pages -----------------------------------------------------------------------

// A v4 page: kv (two 576-multiple blocks), indexer keys and a resume payload round-trip;
// stripping the resume section keeps the other sections byte-identical and re-checksums.
TEST_F(PageFormatTest, V4SectionsRoundTripAndStripResume) {
  const PageSpec spec = Spec(LayoutId::kV4Fp8_584, 256, 0, 4);
  const auto kv = RandomBytes(37440 + 1728 + 37440), idx = RandomBytes(2 * 8640);
  const auto resume = RandomBytes(1000);
  const PageSectionData secs[] = {
      {SectionKind::kKv, kv}, {SectionKind::kIndexerKeys, idx}, {SectionKind::kV4Resume, resume}};
  auto page = EncodePageSections(spec, secs);
  ASSERT_TRUE(page.ok()) << page.status();
  auto v = DecodePage(*page);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header().layout.name, "v4-fp8-584");
  EXPECT_EQ(v->header().sections.size(), 3u);
  EXPECT_TRUE(std::equal(kv.begin(), kv.end(), v->kv().begin(), v->kv().end()));
  EXPECT_TRUE(
      std::equal(idx.begin(), idx.end(), v->indexer_keys().begin(), v->indexer_keys().end()));
  EXPECT_TRUE(v->has_resume());
  EXPECT_TRUE(std::equal(resume.begin(), resume.end(), v->resume().begin(), v->resume().end()));
  EXPECT_EQ(v->KvLayer(0).status().code(), absl::StatusCode::kFailedPrecondition);

  auto stripped = StripResumeSection(*page);
  ASSERT_TRUE(stripped.ok()) << stripped.status();
  auto sv = DecodePage(*stripped);
  ASSERT_TRUE(sv.ok()) << sv.status();
  EXPECT_FALSE(sv->has_resume());
  EXPECT_EQ(sv->header().key, spec.key);
  EXPECT_EQ(sv->header().parent, spec.parent);
  EXPECT_EQ(sv->header().token_count, 256u);
  EXPECT_TRUE(std::equal(kv.begin(), kv.end(), sv->kv().begin(), sv->kv().end()));
  EXPECT_TRUE(
      std::equal(idx.begin(), idx.end(), sv->indexer_keys().begin(), sv->indexer_keys().end()));
  EXPECT_LT(stripped->size(), page->size() - resume.size() + 64);
  // Idempotent; MLA pages have nothing to strip.
  auto again = StripResumeSection(*stripped);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, *stripped);
  EXPECT_EQ(StripResumeSection(Make(Spec(LayoutId::kMlaFp8_656, 1, 0, 1))).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Every byte of the (smaller) stripped page is still covered by a checksum.
  std::vector<uint8_t> small = *stripped;
  for (size_t i = 0; i < small.size(); i += 97) {
    small[i] ^= 0x5A;
    EXPECT_FALSE(DecodePage(small).ok()) << "byte " << i;
    small[i] ^= 0x5A;
  }
}

TEST_F(PageFormatTest, V4SectionRulesNameTheProblem) {
  const PageSpec spec = Spec(LayoutId::kV4Fp8_584, 8, 0, 2);
  const auto kv = RandomBytes(1152), idx = RandomBytes(576), resume = RandomBytes(10);
  auto err = [&](std::initializer_list<PageSectionData> secs) {
    auto p = EncodePageSections(spec, std::vector<PageSectionData>(secs));
    EXPECT_FALSE(p.ok());
    return p.ok() ? std::string() : std::string(p.status().ToString());
  };
  EXPECT_THAT(err({{SectionKind::kKv, std::span(kv).first(100)}}), HasSubstr("multiple of 576"));
  EXPECT_THAT(err({{SectionKind::kIndexerKeys, idx}}), HasSubstr("first section must be kv"));
  EXPECT_THAT(err({{SectionKind::kKv, kv},
                   {SectionKind::kV4Resume, resume},
                   {SectionKind::kIndexerKeys, idx}}),
              HasSubstr("out of order"));
  EXPECT_THAT(err({{SectionKind::kKv, kv}, {SectionKind::kKv, kv}}), HasSubstr("duplicate kv"));
  EXPECT_THAT(err({{SectionKind::kKv, kv}, {SectionKind::kV4Resume, {}}}),
              HasSubstr("non-empty resume"));
  // Sections of v4 pages are refused in MLA pages.
  const PageSpec mla = Spec(LayoutId::kMlaFp8_656, 1, 0, 1);
  const auto rec = RandomBytes(656);
  auto p = EncodePageSections(
      mla, std::vector<PageSectionData>{{SectionKind::kKv, rec}, {SectionKind::kV4Resume, resume}});
  EXPECT_EQ(p.status().code(), absl::StatusCode::kUnimplemented);
  // A kv-only v4 page (no indexer keys, no resume) is valid, including an empty kv section
  // (a partial page whose tokens close no entry).
  EXPECT_TRUE(EncodePageSections(spec, std::vector<PageSectionData>{{SectionKind::kKv, kv}}).ok());
  EXPECT_TRUE(EncodePageSections(spec, std::vector<PageSectionData>{{SectionKind::kKv, {}}}).ok());
}

// ---- gqa-bf16 / gqa-fp8 pages ------------------------------------------------------------

constexpr size_t kGqaHeadsAt = 104, kGqaHeadDimAt = 108;

KeySpaceGeometry Geometry(LayoutId layout, uint32_t tokens, uint32_t layers, GqaGeometry g) {
  return {*LookupLayout(static_cast<uint16_t>(layout)), tokens, layers, g};
}

// Both GQA layouts round-trip; each layer is K then V, each [tokens, heads, head_dim].
TEST_F(PageFormatTest, GqaRoundTripKThenVPerLayer) {
  for (auto [layout, elem] :
       {std::pair{LayoutId::kGqaBf16, 2u}, std::pair{LayoutId::kGqaFp8, 1u}}) {
    const uint32_t tokens = std::uniform_int_distribution<uint32_t>(1, 32)(rng_);
    const uint32_t layers = std::uniform_int_distribution<uint32_t>(1, 4)(rng_);
    const GqaGeometry g{std::uniform_int_distribution<uint32_t>(1, 8)(rng_),
                        8 * std::uniform_int_distribution<uint32_t>(1, 16)(rng_)};
    PageSpec spec = Spec(layout, tokens, 0, layers);
    spec.gqa = g;
    std::vector<uint8_t> kv;
    std::vector<uint8_t> page = Make(spec, &kv);
    const uint64_t half = uint64_t{tokens} * g.num_kv_heads * g.head_dim * elem;
    ASSERT_EQ(page.size(), PageHeaderBytes(1) + 2 * half * layers);
    EXPECT_EQ(Get(page, kGqaHeadsAt, 4), g.num_kv_heads);
    EXPECT_EQ(Get(page, kGqaHeadDimAt, 4), g.head_dim);
    auto view = DecodePage(page);
    ASSERT_TRUE(view.ok()) << view.status() << " seed " << seed_;
    EXPECT_EQ(view->header().gqa, g);
    EXPECT_EQ(view->header().record_bytes(), 2 * uint64_t{g.num_kv_heads} * g.head_dim * elem);
    for (uint32_t l = 0; l < layers; ++l) {
      auto k = view->GqaLayerHalf(l, false);
      auto v = view->GqaLayerHalf(l, true);
      ASSERT_TRUE(k.ok() && v.ok());
      ASSERT_EQ(k->size(), half);
      EXPECT_EQ(0, std::memcmp(k->data(), kv.data() + 2 * l * half, half)) << "K of layer " << l;
      EXPECT_EQ(0, std::memcmp(v->data(), kv.data() + (2 * l + 1) * half, half)) << "V " << l;
    }
    EXPECT_TRUE(CheckPageGeometry(view->header(), Geometry(layout, tokens, layers, g)).ok());
    EXPECT_FALSE(view->GqaLayerHalf(layers, false).ok());
  }
  auto mla = DecodePage(Make(Spec(LayoutId::kMlaFp8_656, 1, 0, 1)));
  EXPECT_EQ(mla->GqaLayerHalf(0, false).status().code(), absl::StatusCode::kFailedPrecondition);
}

// Every single-byte change is refused naming the part; so are geometry edits behind a valid
// checksum, a page whose geometry is not the key space's, and a page of another layout.
TEST_F(PageFormatTest, GqaCorruptionAndGeometryMismatchAreRefusedByName) {
  PageSpec spec = Spec(LayoutId::kGqaBf16, 2, 0, 2);
  spec.gqa = {2, 8};
  std::vector<uint8_t> page = Make(spec);
  const size_t hb = PageHeaderBytes(1);
  for (size_t i = 0; i < page.size(); ++i) {
    page[i] ^= 0x5A;
    EXPECT_THAT(Error(page), HasSubstr(i < hb ? "header" : "section 0 (kv) checksum mismatch"))
        << "byte " << i;
    page[i] ^= 0x5A;
  }
  // Geometry fields edited and resealed: the kv section no longer fits, or the range is bad.
  EXPECT_THAT(
      ErrorAfterEdit(page, kGqaHeadsAt, 4, 4),
      HasSubstr(
          "section 0 (kv) is 256 bytes; layout gqa-bf16 needs 2 tokens x 2 layers x 128 B = 512"));
  EXPECT_THAT(ErrorAfterEdit(page, kGqaHeadsAt, 0, 4),
              HasSubstr("header: layout gqa-bf16 geometry 0 kv heads x 8 head dim outside"));
  EXPECT_THAT(ErrorAfterEdit(page, kGqaHeadDimAt, kMaxGqaHeadDim + 1, 4), HasSubstr("outside"));
  EXPECT_THAT(ErrorAfterEdit(page, 112, 1, 1), HasSubstr("reserved or padding bytes"));
  // An MLA page carrying a geometry is refused too.
  std::vector<uint8_t> mla = Make(Spec(LayoutId::kMlaFp8_656, 1, 0, 1));
  EXPECT_THAT(ErrorAfterEdit(mla, kGqaHeadsAt, 2, 4),
              HasSubstr("layout mla-fp8-656 has no head geometry"));
  // Heads and head_dim swapped: the same byte count, so the page decodes; the key space's
  // geometry check refuses it, naming both geometries.
  std::vector<uint8_t> swapped = page;
  Put(swapped, kGqaHeadsAt, 8, 4);
  Put(swapped, kGqaHeadDimAt, 2, 4);
  ASSERT_TRUE(ResealPage(swapped).ok());
  auto view = DecodePage(swapped);
  ASSERT_TRUE(view.ok()) << view.status();
  absl::Status s = CheckPageGeometry(view->header(), Geometry(LayoutId::kGqaBf16, 2, 2, {2, 8}));
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("page geometry gqa-bf16 2 tokens x 8 kv heads x 2 head dim "
                                     "x 2 layers does not match the key space's gqa-bf16 2 "
                                     "tokens x 2 kv heads x 8 head dim x 2 layers"));
  auto good = DecodePage(page);
  ASSERT_TRUE(good.ok());
  EXPECT_THAT(
      CheckPageGeometry(good->header(), Geometry(LayoutId::kGqaFp8, 2, 2, {2, 8})).message(),
      HasSubstr("page layout gqa-bf16 does not match the key space's gqa-fp8"));
  EXPECT_THAT(
      CheckPageGeometry(good->header(), Geometry(LayoutId::kGqaBf16, 2, 3, {2, 8})).message(),
      HasSubstr("x 2 layers does not match the key space's gqa-bf16 2 tokens x 2 kv "
                "heads x 8 head dim x 3 layers"));
  EXPECT_THAT(CheckPage(*good, spec.key, spec.parent, good->header().layout, 2, 2).message(),
              HasSubstr("CheckPageGeometry"));
}

TEST_F(PageFormatTest, GqaEncoderNeedsExactlyTheGqaGeometry) {
  PageSpec spec = Spec(LayoutId::kGqaFp8, 4, 0, 1);
  EXPECT_THAT(KvSectionBytes(spec).status().message(),
              HasSubstr("page spec: layout gqa-fp8 geometry 0 kv heads x 0 head dim outside"));
  spec.gqa = {kMaxGqaKvHeads + 1, 128};
  EXPECT_FALSE(KvSectionBytes(spec).ok());
  spec.gqa = {8, 128};
  EXPECT_EQ(*KvSectionBytes(spec), 4u * 2 * 8 * 128);
  PageSpec mla = Spec(LayoutId::kMlaBf16_1152, 4, 0, 1);
  mla.gqa = {8, 128};
  EXPECT_THAT(KvSectionBytes(mla).status().message(), HasSubstr("has no head geometry"));
  EXPECT_THAT(LookupLayout("gqa-fp8")->name, "gqa-fp8");
  EXPECT_EQ(static_cast<int>(LookupLayout("gqa-bf16")->id), 4);
}

}  // namespace
}  // namespace kv
