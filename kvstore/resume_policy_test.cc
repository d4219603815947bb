#include "kvstore/resume_policy.h"

#include <random>

#include <gtest/gtest.h>

#include "kvstore/page_format.h"

namespace kv {
namespace {

TEST(ResumePolicy, DecisionTable) {
  struct Case {
    PageRole role;
    bool live, pressure;
    ResumeDecision want;
    int priority;
  };
  const Case cases[] = {
      {PageRole::kInterior, false, false, ResumeDecision::kStrip, 0},
      {PageRole::kInterior, true, false, ResumeDecision::kStrip, 0},
      {PageRole::kTurnEnd, true, false, ResumeDecision::kKeep, 1},
      {PageRole::kTurnEnd, true, true, ResumeDecision::kStrip, 1},
      {PageRole::kTurnEnd, false, false, ResumeDecision::kStrip, 0},
      {PageRole::kSharedPrefixEnd, false, false, ResumeDecision::kKeep, 2},
      {PageRole::kSharedPrefixEnd, false, true, ResumeDecision::kKeep, 2},
      {PageRole::kCheckpoint, false, false, ResumeDecision::kKeep, 0},
      {PageRole::kCheckpoint, true, false, ResumeDecision::kKeep, 0},
      {PageRole::kCheckpoint, true, true, ResumeDecision::kStrip, 0},
      {PageRole::kCheckpoint, false, true, ResumeDecision::kStrip, 0},
  };
  for (const Case& c : cases) {
    const ResumeFacts f{c.role, c.live, c.pressure};
    EXPECT_EQ(DecideResumeSection(f), c.want)
        << static_cast<int>(c.role) << " live " << c.live << " pressure " << c.pressure;
    EXPECT_EQ(ResumeStripPriority(f), c.priority) << static_cast<int>(c.role);
  }
  EXPECT_EQ(ResumeDecisionName(ResumeDecision::kKeep), "keep");
  EXPECT_EQ(PageRoleName(PageRole::kCheckpoint), "checkpoint");
  EXPECT_EQ(PageRoleName(PageRole::kTurnEnd), "turn-end");
}

// ResumeSectionBytes (header only) agrees with what StripResumeSection really removes, for
// random section sizes; 0 without a resume section and for MLA pages; errors on a bad header.
TEST(ResumePolicy, ResumeSectionBytesMatchesStrip) {
  std::mt19937 rng(std::random_device{}());
  auto bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  };
  PageSpec spec{LayoutId::kV4Fp8_584, {}, {}, 256, 0, 3};
  for (int i = 0; i < 50; ++i) {
    const auto kv = bytes(576 * (rng() % 4)), idx = bytes(576 * (1 + rng() % 2)),
               resume = bytes(1 + rng() % 3000);
    std::vector<PageSectionData> secs = {{SectionKind::kKv, kv}};
    if (i % 2 == 0) secs.push_back({SectionKind::kIndexerKeys, idx});
    secs.push_back({SectionKind::kV4Resume, resume});
    auto page = EncodePageSections(spec, secs);
    ASSERT_TRUE(page.ok()) << page.status();
    auto stripped = StripResumeSection(*page);
    ASSERT_TRUE(stripped.ok()) << stripped.status();
    auto rb = ResumeSectionBytes(*page);
    ASSERT_TRUE(rb.ok()) << rb.status();
    EXPECT_GT(*rb, 0u);
    EXPECT_EQ(*rb, page->size() - stripped->size()) << "case " << i;
    auto none = ResumeSectionBytes(*stripped);
    ASSERT_TRUE(none.ok());
    EXPECT_EQ(*none, 0u);
  }
  PageSpec mla{LayoutId::kMlaFp8_656, {}, {}, 1, 0, 1};
  auto mp = EncodePage(mla, bytes(656));
  ASSERT_TRUE(mp.ok());
  auto rb = ResumeSectionBytes(*mp);
  ASSERT_TRUE(rb.ok());
  EXPECT_EQ(*rb, 0u);
  (*mp)[3] ^= 1;  // magic
  EXPECT_FALSE(ResumeSectionBytes(*mp).ok());
}

// Applied to real encoded pages: a stripped v4 page keeps its compressed sections
// byte-identical and decodes; kept pages and MLA pages come back unchanged.
TEST(ResumePolicy, ApplyStripsOnlyWhatThePolicySays) {
  std::mt19937 rng(std::random_device{}());
  auto bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  };
  const auto kv = bytes(2 * 576), idx = bytes(576), resume = bytes(333);
  PageSpec spec{LayoutId::kV4Fp8_584, {}, {}, 256, 0, 3};
  auto page =
      EncodePageSections(spec, std::vector<PageSectionData>{{SectionKind::kKv, kv},
                                                            {SectionKind::kIndexerKeys, idx},
                                                            {SectionKind::kV4Resume, resume}});
  ASSERT_TRUE(page.ok()) << page.status();
  auto kept = ApplyResumePolicy(*page, {PageRole::kSharedPrefixEnd, false, true});
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(*kept, *page);
  auto stripped = ApplyResumePolicy(*page, {PageRole::kInterior, false, false});
  ASSERT_TRUE(stripped.ok()) << stripped.status();
  auto v = DecodePage(*stripped);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_FALSE(v->has_resume());
  EXPECT_TRUE(std::ranges::equal(v->kv(), kv));
  EXPECT_TRUE(std::ranges::equal(v->indexer_keys(), idx));
  // An MLA page passes through; a corrupt page is refused.
  PageSpec mla{LayoutId::kMlaFp8_656, {}, {}, 1, 0, 1};
  auto mp = EncodePage(mla, bytes(656));
  ASSERT_TRUE(mp.ok());
  auto same = ApplyResumePolicy(*mp, {PageRole::kInterior, false, false});
  ASSERT_TRUE(same.ok());
  EXPECT_EQ(*same, *mp);
  (*page)[page->size() - 1] ^= 1;
  EXPECT_FALSE(ApplyResumePolicy(*page, {PageRole::kInterior, false, false}).ok());
}

}  // namespace
}  // namespace kv
