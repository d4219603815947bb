#include "kvstore/trace_replay.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/container/flat_hash_set.h"
#include "core/clock.h"
#include "core/hash.h"
#include "core/metrics.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/fake_tiers.h"
#include "kvstore/page_format.h"
#include "kvstore/tiered_store.h"
#include "nlohmann/json.hpp"

namespace kv {
namespace {

absl::StatusOr<int64_t> Field(const nlohmann::json& j, const char* name, size_t line) {
  auto it = j.find(name);
  if (it == j.end() || !it->is_number_integer()) {
    return absl::InvalidArgumentError(StrCat("line ", line, ": missing integer \"", name, "\""));
  }
  int64_t v = it->get<int64_t>();
  if (v < 0) return absl::InvalidArgumentError(StrCat("line ", line, ": negative ", name));
  return v;
}

size_t FullBlocks(const TraceRequest& r, uint32_t block_tokens) {
  return std::min<size_t>(r.hash_ids.size(), static_cast<size_t>(r.input_length / block_tokens));
}

BlockKey KeyOfId(int64_t id) {
  BlockKey k;
  k.bytes = Sha256Of(StrCat("mooncake-trace/", id));
  return k;
}

}  // namespace

absl::StatusOr<std::vector<TraceRequest>> ParseMooncakeTrace(std::string_view jsonl) {
  std::vector<TraceRequest> out;
  size_t line_no = 0;
  size_t pos = 0;
  while (pos < jsonl.size()) {
    size_t end = jsonl.find('\n', pos);
    if (end == std::string_view::npos) end = jsonl.size();
    std::string_view line = jsonl.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(StrCat("line ", line_no, ": not a JSON object"));
    }
    TraceRequest r;
    ASSIGN_OR_RETURN(r.timestamp_ms, Field(j, "timestamp", line_no));
    ASSIGN_OR_RETURN(r.input_length, Field(j, "input_length", line_no));
    ASSIGN_OR_RETURN(r.output_length, Field(j, "output_length", line_no));
    auto ids = j.find("hash_ids");
    if (ids == j.end() || !ids->is_array()) {
      return absl::InvalidArgumentError(StrCat("line ", line_no, ": missing array \"hash_ids\""));
    }
    for (const auto& id : *ids) {
      if (!id.is_number_integer()) {
        return absl::InvalidArgumentError(StrCat("line ", line_no, ": non-integer hash id"));
      }
      r.hash_ids.push_back(id.get<int64_t>());
    }
    size_t want = static_cast<size_t>((r.input_length + 511) / 512);
    if (r.hash_ids.size() != want) {
      return absl::InvalidArgumentError(StrCat("line ", line_no, ": ", r.hash_ids.size(),
                                               " hash_ids for input_length ", r.input_length,
                                               " (expected ", want, ")"));
    }
    out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<std::vector<TraceRequest>> LoadMooncakeTrace(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(StrCat("cannot read trace ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  auto parsed = ParseMooncakeTrace(ss.str());
  if (!parsed.ok()) return Annotate(parsed.status(), path);
  return parsed;
}

uint64_t UnboundedPrefixHits(const std::vector<TraceRequest>& trace, uint32_t block_tokens) {
  absl::flat_hash_set<int64_t> seen;
  uint64_t hits = 0;
  for (const TraceRequest& r : trace) {
    size_t n = FullBlocks(r, block_tokens);
    size_t i = 0;
    while (i < n && seen.contains(r.hash_ids[i])) ++i;
    hits += i;
    for (size_t j = 0; j < n; ++j) seen.insert(r.hash_ids[j]);
  }
  return hits;
}

absl::StatusOr<ReplayResult> ReplayTrace(const std::vector<TraceRequest>& trace,
                                         const ReplayOptions& options) {
  if (options.block_tokens == 0) return absl::InvalidArgumentError("block_tokens is 0");
  // One tiny real page per block; capacities are counted in pages of that size.
  PageSpec spec{LayoutId::kMlaFp8_656, BlockKey::Zero(), BlockKey::Zero(), 1, 0, 1};
  ASSIGN_OR_RETURN(uint64_t page_bytes, EncodedPageBytes(spec));
  ASSIGN_OR_RETURN(uint64_t kv_bytes, KvSectionBytes(spec));
  std::array<std::unique_ptr<Tier>, kNumTiers> tiers;
  bool any = false;
  for (int t = 0; t < kNumTiers; ++t) {
    uint64_t pages = options.capacity_tokens[t] / options.block_tokens;
    if (pages == 0) continue;
    any = true;
    tiers[t] = std::make_unique<MemTier>(static_cast<TierKind>(t), pages * page_bytes);
  }
  if (!any) return absl::InvalidArgumentError("every tier capacity is below one block");
  FakeClock clock(absl::UnixEpoch());
  MetricsRegistry metrics;
  TieredStoreOptions so;
  so.clock = &clock;
  so.metrics = &metrics;
  so.background_threads = 0;
  so.leaf_first = options.leaf_first;
  ASSIGN_OR_RETURN(auto store, TieredStore::Open(so, std::move(tiers)));
  std::vector<uint8_t> kv(kv_bytes, 0x5a), page(page_bytes), dst(page_bytes);
  ReplayResult res;
  for (const TraceRequest& r : trace) {
    clock.SetTime(absl::UnixEpoch() + absl::Milliseconds(r.timestamp_ms));
    size_t n = FullBlocks(r, options.block_tokens);
    std::vector<BlockKey> keys;
    for (size_t i = 0; i < n; ++i) keys.push_back(KeyOfId(r.hash_ids[i]));
    ++res.requests;
    res.blocks += n;
    TieredStore::LookupResult l = store->Lookup(keys);
    for (TierKind t : l.tiers) ++res.hit_blocks[static_cast<int>(t)];
    if (l.matched > 0) {
      ASSIGN_OR_RETURN(
          auto h, store->Pin(std::span(keys).first(l.matched), clock.Now() + absl::Minutes(1)));
      for (size_t i = 0; i < l.matched; ++i) (void)store->Read(h, keys[i], dst);
      RETURN_IF_ERROR(store->Unpin(h));
    }
    for (size_t i = l.matched; i < n; ++i) {
      spec.key = keys[i];
      spec.parent = i == 0 ? BlockKey::Zero() : keys[i - 1];
      RETURN_IF_ERROR(EncodePageInto(spec, kv, page));
      PageMeta m{keys[i], spec.parent, "tenant:trace", "mla-fp8-656", page_bytes};
      absl::Status st = store->Publish(m, page);
      if (st.ok()) {
        ++res.published;
      } else if (absl::IsAlreadyExists(st)) {
        continue;
      } else {
        ++res.publish_failures;
        break;  // the rest of the chain cannot be sealed without this block
      }
    }
  }
  return res;
}

}  // namespace kv
