#include "cluster/proto_convert.h"

#include <algorithm>

#include "model/tokenizer.h"

namespace kv::cluster {

namespace pb = ::kvstrata::v1;

void SetDuration(absl::Duration d, google::protobuf::Duration* out) {
  const int64_t ns = absl::ToInt64Nanoseconds(d);
  out->set_seconds(ns / 1000000000);
  out->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

absl::Duration FromProto(const google::protobuf::Duration& d) {
  return absl::Seconds(d.seconds()) + absl::Nanoseconds(d.nanos());
}

void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out) {
  const int64_t ns = absl::ToUnixNanos(t);
  int64_t s = ns / 1000000000, n = ns % 1000000000;
  if (n < 0) {  // a Timestamp's nanos are never negative, even before 1970
    n += 1000000000;
    --s;
  }
  out->set_seconds(s);
  out->set_nanos(static_cast<int32_t>(n));
}

absl::Time FromTimestamp(const google::protobuf::Timestamp& t) {
  return absl::FromUnixSeconds(t.seconds()) + absl::Nanoseconds(t.nanos());
}

pb::ResumeRole ToProto(PageRole role) {
  switch (role) {
    case PageRole::kInterior:
      return pb::RESUME_ROLE_INTERIOR;
    case PageRole::kTurnEnd:
      return pb::RESUME_ROLE_TURN_END;
    case PageRole::kSharedPrefixEnd:
      return pb::RESUME_ROLE_SHARED_PREFIX_END;
    case PageRole::kCheckpoint:
      return pb::RESUME_ROLE_CHECKPOINT;
  }
  return pb::RESUME_ROLE_TURN_END;
}

PageRole FromProto(pb::ResumeRole role) {
  switch (role) {
    case pb::RESUME_ROLE_INTERIOR:
      return PageRole::kInterior;
    case pb::RESUME_ROLE_SHARED_PREFIX_END:
      return PageRole::kSharedPrefixEnd;
    case pb::RESUME_ROLE_CHECKPOINT:
      return PageRole::kCheckpoint;
    default:
      return PageRole::kTurnEnd;
  }
}

TierKind FromProto(pb::Tier tier) {
  switch (tier) {
    case pb::TIER_DEVICE:
      return TierKind::kDevice;
    case pb::TIER_HOST:
      return TierKind::kHost;
    default:
      return TierKind::kNvme;
  }
}

pb::Tier ToProto(TierKind tier) {
  switch (tier) {
    case TierKind::kDevice:
      return pb::TIER_DEVICE;
    case TierKind::kHost:
      return pb::TIER_HOST;
    case TierKind::kNvme:
      return pb::TIER_NVME;
  }
  return pb::TIER_UNSPECIFIED;
}

std::string TierProtoName(pb::Tier tier) {
  switch (tier) {
    case pb::TIER_DEVICE:
      return "device";
    case pb::TIER_HOST:
      return "host";
    case pb::TIER_NVME:
      return "nvme";
    default:
      return "unspecified";
  }
}

pb::CacheDecision ToProto(CacheDecision d) {
  switch (d) {
    case CacheDecision::kLoad:
      return pb::CACHE_DECISION_LOAD;
    case CacheDecision::kPartialLoad:
      return pb::CACHE_DECISION_PARTIAL_LOAD;
    case CacheDecision::kRecompute:
      return pb::CACHE_DECISION_RECOMPUTE;
    case CacheDecision::kNone:
      break;
  }
  return pb::CACHE_DECISION_UNSPECIFIED;
}

void ToProto(const CostPlan& plan, pb::CostEstimate* out) {
  out->set_decision(ToProto(plan.decision));
  out->set_load_tokens(static_cast<uint32_t>(plan.load_tokens));
  out->set_recompute_tokens(static_cast<uint32_t>(plan.recompute_tokens));
  SetDuration(plan.estimated_load_time, out->mutable_estimated_load_time());
  SetDuration(plan.estimated_recompute_time, out->mutable_estimated_recompute_time());
  out->set_reason(plan.reason);
}

void ToProto(const RequestStats& st, pb::RequestStats* out) {
  SetDuration(st.ttft, out->mutable_ttft());
  SetDuration(st.total_time, out->mutable_total_time());
  out->set_prompt_tokens(static_cast<uint32_t>(st.prompt_tokens));
  out->set_output_tokens(static_cast<uint32_t>(st.output_tokens));
  out->set_cached_tokens(static_cast<uint32_t>(st.cached_tokens));
  out->set_recomputed_tokens(static_cast<uint32_t>(st.recomputed_tokens));
  for (const TierHit& h : st.tier_hits) {
    pb::TierHits* t = out->add_tier_hits();
    t->set_tier(ToProto(h.tier));
    t->set_node_id(h.node_id);
    t->set_remote(h.remote);
    t->set_pages(static_cast<uint32_t>(h.pages));
    t->set_tokens(static_cast<uint32_t>(h.tokens));
    t->set_bytes(h.bytes);
  }
  out->set_bytes_transferred(st.bytes_transferred);
  out->set_transport(st.transport == "ucx"      ? pb::TRANSPORT_KIND_UCX
                     : st.transport == "grpc"   ? pb::TRANSPORT_KIND_GRPC
                     : st.transport == "inproc" ? pb::TRANSPORT_KIND_INPROC
                                                : pb::TRANSPORT_KIND_UNSPECIFIED);
  out->set_pool_transport(st.pool_transport == "ucx"      ? pb::TRANSPORT_KIND_UCX
                          : st.pool_transport == "grpc"   ? pb::TRANSPORT_KIND_GRPC
                          : st.pool_transport == "inproc" ? pb::TRANSPORT_KIND_INPROC
                                                          : pb::TRANSPORT_KIND_UNSPECIFIED);
  ToProto(st.cost, out->mutable_cost());
  SetDuration(st.load_time, out->mutable_load_time());
  SetDuration(st.prefill_time, out->mutable_prefill_time());
  SetDuration(st.decode_time, out->mutable_decode_time());
  out->set_published_pages(static_cast<uint32_t>(st.published_pages));
  out->set_queued_pages(static_cast<uint32_t>(st.queued_pages));
  out->set_handoff_bytes(st.handoff_bytes);
  SetDuration(st.handoff_time, out->mutable_handoff_time());
}

void FillCapacity(CostModel* cm, TierKind tier, const TierStats& stats, pb::TierCapacity* out) {
  out->set_tier(ToProto(tier));
  out->set_capacity_bytes(stats.capacity_bytes);
  out->set_used_bytes(stats.used_bytes);
  out->set_pages(stats.pages);
  out->set_read_bytes_per_second(cm != nullptr && cm->measured(tier) ? cm->BytesPerSecond(tier)
                                                                     : 0.0);
}

bool HasRole(const pb::NodeInfo& n, pb::Role role) {
  return std::find(n.roles().begin(), n.roles().end(), role) != n.roles().end();
}

void FillStoreStats(const StoreStats& ss, CostModel* cost, pb::NodeStats* out) {
  for (int t = 0; t < kNumTiers; ++t) {
    if (!ss.tiers[t].present) continue;
    const TierStats& ts = ss.tiers[t];
    const TierKind kind = static_cast<TierKind>(t);
    pb::TierStats* tier = out->add_tiers();
    tier->set_tier(ToProto(kind));
    FillCapacity(cost, kind, ts, tier->mutable_capacity());
    tier->set_hits(ts.hits);
    tier->set_misses(ts.misses);
    tier->set_evictions(ts.evictions);
    tier->set_quarantined(ts.quarantined);
    tier->set_bytes_read(ts.read_bytes);
    tier->set_bytes_written(ts.write_bytes);
  }
  out->set_active_pins(ss.active_leases);
}

namespace {
constexpr char kReplacement[] = "\xEF\xBF\xBD";
bool Cont(unsigned char c) { return (c & 0xC0) == 0x80; }
}  // namespace

std::string Utf8Assembler::Flush() {
  std::string out;
  for (size_t i = 0; i < pending_.size(); ++i) out += kReplacement;
  pending_.clear();
  return out;
}

std::string Utf8Assembler::Add(int32_t token) {
  if (token < 0 || token > 255) {
    std::string out = Flush();
    out += std::string(model::ByteTokenizer::SpecialName(token));
    return out;
  }
  pending_.push_back(static_cast<char>(token));
  std::string out;
  size_t i = 0;
  const size_t n = pending_.size();
  while (i < n) {
    const auto b = static_cast<unsigned char>(pending_[i]);
    size_t len = b < 0x80                   ? 1
                 : (b >= 0xC2 && b <= 0xDF) ? 2
                 : (b >= 0xE0 && b <= 0xEF) ? 3
                 : (b >= 0xF0 && b <= 0xF4) ? 4
                                            : 0;
    if (len == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    bool ok = true;
    const size_t have = std::min(len, n - i);
    for (size_t k = 1; k < have; ++k) ok = ok && Cont(static_cast<unsigned char>(pending_[i + k]));
    if (ok && have >= 2) {
      const auto c1 = static_cast<unsigned char>(pending_[i + 1]);
      if ((b == 0xE0 && c1 < 0xA0) || (b == 0xED && c1 > 0x9F) || (b == 0xF0 && c1 < 0x90) ||
          (b == 0xF4 && c1 > 0x8F)) {
        ok = false;
      }
    }
    if (!ok) {
      out += kReplacement;
      ++i;
      continue;
    }
    if (have < len) break;  // incomplete: hold back
    out.append(pending_, i, len);
    i += len;
  }
  pending_.erase(0, i);
  return out;
}

}  // namespace kv::cluster
