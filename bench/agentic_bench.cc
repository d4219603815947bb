// `kvstrata bench agentic`: agent sessions over a tiered store smaller than their working
// set. N sessions share a system prompt plus tool schemas; each turn appends model output
// and a tool result, and a session pauses (a tool call) between turns. Three systems run
// the same event sequence:
//   - tiered: the real TieredStore (device -> host -> nvme, leaf-first LRU, session
//     retention refreshed each turn, write-back, demotion, promotion);
//   - device-only: the real TieredStore with only the device tier (same device capacity);
//   - plain LRU: an object-level LRU per tier with the same capacities and demotion, but not
//     prefix-aware (no leaf-first): it may evict a parent and orphan its cached children.
// Each row reports hit tokens (served from cache, by tier) against the limit measured in the
// same run: the hits of an unbounded cache on the same events. Blocks moved between tiers
// (reads out of host/nvme plus writes into them) are reported in GB at the nominal page
// size (--page-bytes, default one 64-token MLA FP8 page of 61 layers: 2,561,024 B).
#include <cstdio>
#include <list>
#include <random>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "bench/bench_util.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/page_format.h"
#include "kvstore/tiered_store.h"

namespace kv::bench {
namespace {

constexpr int kBlockTokens = 64;

struct Flags {
  std::string json;
  int64_t sessions = 24, turns = 8, shared_blocks = 64, output_blocks = 4, tool_blocks = 8;
  int64_t device_blocks = 160, host_blocks = 480, nvme_blocks = 960;
  int64_t page_bytes = 2561024;
  absl::Duration retention = absl::Seconds(120);
  int64_t seed = 7;
};

struct Event {
  absl::Time at;
  std::vector<BlockKey> chain;  // the whole context of this turn, in blocks
};

std::vector<Event> MakeEvents(const Flags& f) {
  std::mt19937_64 rng(f.seed);
  std::vector<BlockKey> shared;
  for (int64_t i = 0; i < f.shared_blocks; ++i) {
    shared.push_back({Sha256Of(StrCat("agentic/shared/", i))});
  }
  std::vector<Event> ev;
  for (int64_t s = 0; s < f.sessions; ++s) {
    std::vector<BlockKey> ctx = shared;
    absl::Time t = absl::UnixEpoch() + absl::Seconds(static_cast<int64_t>(rng() % 600));
    for (int64_t k = 0; k < f.turns; ++k) {
      ev.push_back({t, ctx});
      for (int64_t b = 0; b < f.output_blocks + f.tool_blocks; ++b) {
        ctx.push_back({Sha256Of(StrCat("agentic/", s, "/", ctx.size()))});
      }
      t += absl::Seconds(5 + static_cast<int64_t>(rng() % 90));  // the tool-call pause
    }
    ev.push_back({t, ctx});
  }
  std::sort(ev.begin(), ev.end(), [](const Event& a, const Event& b) { return a.at < b.at; });
  return ev;
}

struct Outcome {
  std::array<uint64_t, kNumTiers> hit_blocks{};
  uint64_t moved_blocks = 0;
  uint64_t hits() const { return hit_blocks[0] + hit_blocks[1] + hit_blocks[2]; }
};

uint64_t Unbounded(const std::vector<Event>& ev) {
  absl::flat_hash_set<BlockKey> seen;
  uint64_t hits = 0;
  for (const Event& e : ev) {
    size_t i = 0;
    while (i < e.chain.size() && seen.contains(e.chain[i])) ++i;
    hits += i;
    for (const auto& k : e.chain) seen.insert(k);
  }
  return hits;
}

absl::StatusOr<Outcome> RunStore(const std::vector<Event>& ev, std::array<int64_t, 3> cap,
                                 absl::Duration retention) {
  PageSpec spec{LayoutId::kMlaFp8_656, BlockKey::Zero(), BlockKey::Zero(), 1, 0, 1};
  ASSIGN_OR_RETURN(uint64_t page_bytes, EncodedPageBytes(spec));
  ASSIGN_OR_RETURN(uint64_t kv_bytes, KvSectionBytes(spec));
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  for (int t = 0; t < kNumTiers; ++t) {
    if (cap[t] > 0) {
      tiers[t] = std::make_unique<MemTier>(static_cast<TierKind>(t), cap[t] * page_bytes);
    }
  }
  FakeClock clock(absl::UnixEpoch());
  MetricsRegistry reg;
  ASSIGN_OR_RETURN(auto store,
                   TieredStore::Open({.clock = &clock, .metrics = &reg, .background_threads = 0},
                                     std::move(tiers)));
  std::vector<uint8_t> kv(kv_bytes, 0x11), page(page_bytes), dst(page_bytes);
  Outcome out;
  for (const Event& e : ev) {
    clock.SetTime(e.at);
    auto l = store->Lookup(e.chain);
    for (TierKind t : l.tiers) ++out.hit_blocks[static_cast<int>(t)];
    if (l.matched > 0) {
      auto keys = std::span(e.chain).first(l.matched);
      ASSIGN_OR_RETURN(auto h, store->Pin(keys, e.at + absl::Minutes(1)));
      for (const auto& k : keys) RETURN_IF_ERROR(store->Read(h, k, dst).status());
      RETURN_IF_ERROR(store->Unpin(h));
    }
    for (size_t i = l.matched; i < e.chain.size(); ++i) {
      spec.key = e.chain[i];
      spec.parent = i ? e.chain[i - 1] : BlockKey::Zero();
      RETURN_IF_ERROR(EncodePageInto(spec, kv, page));
      PageMeta m{spec.key, spec.parent, "shared", "mla-fp8-656", page_bytes};
      if (!store->Publish(m, page).ok()) break;
    }
    if (retention > absl::ZeroDuration()) store->Retain(e.chain, retention);
  }
  StoreStats st = store->Stats();
  for (int t = 1; t < kNumTiers; ++t) {
    out.moved_blocks += st.tiers[t].reads + st.tiers[t].write_bytes / page_bytes;
  }
  return out;
}

// Object-level LRU per tier, demoting its victims one tier down, blind to prefixes.
class PlainLru {
 public:
  explicit PlainLru(std::array<int64_t, 3> cap) : cap_(cap) {}
  Outcome Run(const std::vector<Event>& ev) {
    Outcome out;
    for (const Event& e : ev) {
      size_t i = 0;
      for (; i < e.chain.size(); ++i) {
        int t = Where(e.chain[i]);
        if (t < 0) break;
        ++out.hit_blocks[t];
        if (t > 0) ++moved_;  // read out of host/nvme
        Touch(t, e.chain[i]);
        if (t == 2 && cap_[1] > 0) Insert(1, e.chain[i]);  // promotion on hit, like ours
      }
      for (; i < e.chain.size(); ++i) {
        if (Where(e.chain[i]) < 0) Insert(0, e.chain[i]);
      }
    }
    out.moved_blocks = moved_;
    return out;
  }

 private:
  int Where(const BlockKey& k) {
    for (int t = 0; t < 3; ++t) {
      if (pos_[t].contains(k)) return t;
    }
    return -1;
  }
  void Touch(int t, const BlockKey& k) { lru_[t].splice(lru_[t].end(), lru_[t], pos_[t][k]); }
  void Insert(int t, const BlockKey& k) {
    while (t < 3 && cap_[t] == 0) ++t;
    if (t >= 3 || pos_[t].contains(k)) return;
    if (t > 0) ++moved_;  // written into host/nvme
    lru_[t].push_back(k);
    pos_[t][k] = std::prev(lru_[t].end());
    if (static_cast<int64_t>(lru_[t].size()) > cap_[t]) {
      BlockKey victim = lru_[t].front();
      lru_[t].pop_front();
      pos_[t].erase(victim);
      Insert(t + 1, victim);  // dropped when t + 1 == 3
    }
  }
  std::array<int64_t, 3> cap_;
  std::array<std::list<BlockKey>, 3> lru_;
  std::array<absl::flat_hash_map<BlockKey, std::list<BlockKey>::iterator>, 3> pos_;
  uint64_t moved_ = 0;
};

absl::Status Scenario(const Flags& f, const std::string& name, BenchReport& rep) {
  std::vector<Event> ev = MakeEvents(f);
  uint64_t limit = Unbounded(ev);
  std::array<int64_t, 3> cap = {f.device_blocks, f.host_blocks, f.nvme_blocks};
  ASSIGN_OR_RETURN(Outcome tiered, RunStore(ev, cap, f.retention));
  ASSIGN_OR_RETURN(Outcome dev, RunStore(ev, {f.device_blocks, 0, 0}, absl::ZeroDuration()));
  Outcome lru = PlainLru(cap).Run(ev);
  uint64_t requested = 0;
  for (const Event& e : ev) requested += e.chain.size();
  std::map<std::string, std::string> params = {
      {"scenario", name},
      {"capacity blocks dev/host/nvme",
       StrCat(f.device_blocks, "/", f.host_blocks, "/", f.nvme_blocks)},
      {"requested tokens", std::to_string(requested * kBlockTokens)}};
  auto add = [&](const std::string& sys, const Outcome& o) {
    auto p = params;
    p["hit tokens device/host/nvme"] =
        StrCat(o.hit_blocks[0] * kBlockTokens, "/", o.hit_blocks[1] * kBlockTokens, "/",
               o.hit_blocks[2] * kBlockTokens);
    p["moved GB"] = StrCat(static_cast<double>(o.moved_blocks) * f.page_bytes / 1e9);
    rep.Add({.name = StrCat(name, ": ", sys, " hit tokens"),
             .value = static_cast<double>(o.hits() * kBlockTokens),
             .unit = "tokens",
             .limit_name = "unbounded cache",
             .limit = static_cast<double>(limit * kBlockTokens),
             .params = p});
    rep.Add({.name = StrCat(name, ": ", sys, " moved"),
             .value = static_cast<double>(o.moved_blocks) * f.page_bytes / 1e9,
             .unit = "GB",
             .params = p});
  };
  add("tiered", tiered);
  add("device-only", dev);
  add("plain LRU", lru);
  return absl::OkStatus();
}

int RunAgenticBench(int argc, char** argv) {
  Flags f;
  FlagSet flags("kvstrata bench agentic");
  flags.String("json", &f.json, "write the report as JSON to FILE");
  flags.Int("sessions", &f.sessions, "agent sessions");
  flags.Int("turns", &f.turns, "turns per session");
  flags.Int("shared-blocks", &f.shared_blocks, "blocks of system prompt + tool schemas");
  flags.Int("output-blocks", &f.output_blocks, "model-output blocks per turn");
  flags.Int("tool-blocks", &f.tool_blocks, "tool-result blocks per turn");
  flags.Int("device-blocks", &f.device_blocks, "device tier capacity, blocks");
  flags.Int("host-blocks", &f.host_blocks, "host tier capacity, blocks");
  flags.Int("nvme-blocks", &f.nvme_blocks, "nvme tier capacity, blocks");
  flags.Int("page-bytes", &f.page_bytes, "nominal bytes of one block's page (for GB moved)");
  flags.Duration("retention", &f.retention, "session retention TTL (tiered system)");
  flags.Int("seed", &f.seed, "workload seed");
  absl::Status st = flags.Parse(argc, argv);
  if (flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (st.ok() && (f.sessions < 1 || f.turns < 1 || f.device_blocks < 1 || f.host_blocks < 0 ||
                  f.nvme_blocks < 0 || f.shared_blocks < 0)) {
    st = absl::InvalidArgumentError("sessions, turns and device-blocks must be >= 1");
  }
  BenchReport rep("agentic");
  if (st.ok()) st = Scenario(f, "pressure", rep);
  if (st.ok()) {
    // About a quarter of the working set fits in all tiers together.
    Flags tight = f;
    tight.device_blocks = std::max<int64_t>(1, f.device_blocks * 5 / 8);
    tight.host_blocks = f.host_blocks * 5 / 12;
    tight.nvme_blocks = f.nvme_blocks * 5 / 16;
    st = Scenario(tight, "tight", rep);
  }
  if (st.ok()) {
    // Everything fits the device: device-only is as good and moves nothing.
    Flags fits = f;
    fits.device_blocks = 1 << 20;
    st = Scenario(fits, "fits-in-device", rep);
  }
  if (!st.ok()) {
    std::fprintf(stderr, "bench agentic: %s\n", st.ToString().c_str());
    return 1;
  }
  rep.Print();
  st = rep.WriteJson(f.json);
  if (!st.ok()) {
    std::fprintf(stderr, "bench agentic: %s\n", st.ToString().c_str());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace kv::bench

KV_REGISTER_BENCH(agentic, "agent sessions: tiered vs device-only vs plain LRU",
                  kv::bench::RunAgenticBench);
