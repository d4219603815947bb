#include "kvstore/trace_replay.h"

#include "gtest/gtest.h"

namespace kv {
namespace {

constexpr char kTrace[] = "testdata/trace_mooncake_small.jsonl";

TEST(TraceReplayTest, ParsesTheShippedTrace) {
  auto trace = LoadMooncakeTrace(kTrace);
  ASSERT_TRUE(trace.ok()) << trace.status();
  ASSERT_EQ(trace->size(), 238u);
  for (size_t i = 1; i < trace->size(); ++i) {
    EXPECT_LE((*trace)[i - 1].timestamp_ms, (*trace)[i].timestamp_ms);
  }
  EXPECT_EQ((*trace)[0].hash_ids.size(),
            static_cast<size_t>(((*trace)[0].input_length + 511) / 512));
}

TEST(TraceReplayTest, RejectsMalformedLinesByNumber) {
  auto bad = [](std::string_view s) { return ParseMooncakeTrace(s).status(); };
  EXPECT_TRUE(ParseMooncakeTrace("").ok());
  absl::Status st =
      bad("{\"timestamp\":1,\"input_length\":10,\"output_length\":1,\"hash_ids\":[1]}\n{oops");
  EXPECT_TRUE(absl::IsInvalidArgument(st));
  EXPECT_NE(st.message().find("line 2"), absl::string_view::npos) << st;
  EXPECT_TRUE(
      absl::IsInvalidArgument(bad("{\"timestamp\":1,\"input_length\":10,\"hash_ids\":[1]}")));
  EXPECT_TRUE(absl::IsInvalidArgument(
      bad("{\"timestamp\":1,\"input_length\":1000,\"output_length\":1,\"hash_ids\":[1]}")));
  EXPECT_TRUE(absl::IsInvalidArgument(
      bad("{\"timestamp\":-1,\"input_length\":10,\"output_length\":1,\"hash_ids\":[1]}")));
  EXPECT_TRUE(absl::IsInvalidArgument(
      bad("{\"timestamp\":1,\"input_length\":10,\"output_length\":1,\"hash_ids\":[\"x\"]}")));
  EXPECT_TRUE(absl::IsNotFound(LoadMooncakeTrace("testdata/no-such-trace.jsonl").status()));
}

TEST(TraceReplayTest, UnboundedCapacityMatchesTheOracle) {
  auto trace = LoadMooncakeTrace(kTrace);
  ASSERT_TRUE(trace.ok());
  ReplayOptions o;
  o.capacity_tokens = {0, uint64_t{1} << 30, 0};
  auto r = ReplayTrace(*trace, o);
  ASSERT_TRUE(r.ok()) << r.status();
  uint64_t oracle = UnboundedPrefixHits(*trace, 512);
  EXPECT_GT(oracle, 0u);
  EXPECT_EQ(r->hits(), oracle);
  EXPECT_EQ(r->hit_blocks[1], oracle);
  EXPECT_EQ(r->publish_failures, 0u);
}

TEST(TraceReplayTest, SmallTiersHitLessButSpreadAcrossTiers) {
  auto trace = LoadMooncakeTrace(kTrace);
  ASSERT_TRUE(trace.ok());
  uint64_t oracle = UnboundedPrefixHits(*trace, 512);
  ReplayOptions o;
  o.capacity_tokens = {40 * 512, 120 * 512, 300 * 512};
  auto r = ReplayTrace(*trace, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LE(r->hits(), oracle);
  EXPECT_GT(r->hit_blocks[0], 0u);
  EXPECT_GT(r->hit_blocks[1] + r->hit_blocks[2], 0u);
  ReplayOptions none;
  EXPECT_TRUE(absl::IsInvalidArgument(ReplayTrace(*trace, none).status()));
}

}  // namespace
}  // namespace kv
