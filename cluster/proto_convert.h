// Conversions between the serving values (cluster/request.h, cluster/cost_model.h, kvstore
// tiers) and kvstrata.v1 messages, for the Cluster service and its client; plus Utf8Assembler,
// which turns a stream of byte tokens into valid UTF-8 text pieces (proto3 strings must be valid
// UTF-8).
//
// Thread-safety: the functions are pure. A Utf8Assembler is a per-stream value used by one
// thread at a time.
#pragma once

#include <cstdint>
#include <string>

#include "absl/time/time.h"
#include "cluster/cost_model.h"
#include "cluster/request.h"
#include "google/protobuf/duration.pb.h"
#include "google/protobuf/timestamp.pb.h"
#include "kvstore/tiered_store.h"
#include "proto/kvstrata/v1/cluster.pb.h"
#include "proto/kvstrata/v1/page_store.pb.h"

namespace kv::cluster {

void SetDuration(absl::Duration d, google::protobuf::Duration* out);
absl::Duration FromProto(const google::protobuf::Duration& d);
void SetTimestamp(absl::Time t, google::protobuf::Timestamp* out);
absl::Time FromTimestamp(const google::protobuf::Timestamp& t);

kvstrata::v1::Tier ToProto(TierKind tier);
// The tier a proto names; TIER_UNSPECIFIED (and unknown values) map to nvme, the slowest.
TierKind FromProto(kvstrata::v1::Tier tier);
// Resume-section roles (kvstore/resume_policy.h); unspecified or unknown values are turn ends.
kvstrata::v1::ResumeRole ToProto(PageRole role);
PageRole FromProto(kvstrata::v1::ResumeRole role);
// "device", "host", "nvme", or "unspecified".
std::string TierProtoName(kvstrata::v1::Tier tier);
kvstrata::v1::CacheDecision ToProto(CacheDecision d);
void ToProto(const CostPlan& plan, kvstrata::v1::CostEstimate* out);
// Stats of a request. In-process requests (transport "inproc") report their cache loads as
// bytes moved by the in-process transport.
void ToProto(const RequestStats& st, kvstrata::v1::RequestStats* out);

// Capacity of one tier, with the cost model's measured read bandwidth (0 if unmeasured or
// `cost` is null).
void FillCapacity(CostModel* cost, TierKind tier, const TierStats& stats,
                  kvstrata::v1::TierCapacity* out);
// Whether `node` has `role` in the membership.
bool HasRole(const kvstrata::v1::NodeInfo& node, kvstrata::v1::Role role);
// A store's tiers (capacity, occupancy, counters) and its live leases into `out`, the read
// bandwidth from `cost` when given (else 0).
void FillStoreStats(const StoreStats& stats, CostModel* cost, kvstrata::v1::NodeStats* out);

// Accumulates byte tokens (0..255) and returns, per token, the newly completed valid UTF-8
// text. Incomplete sequences are held back until completed; invalid bytes become U+FFFD.
// Special tokens render as their marker ("<|eos|>") after flushing held-back bytes.
class Utf8Assembler {
 public:
  std::string Add(int32_t token);
  // Whatever is held back, as U+FFFD per byte.
  std::string Flush();

 private:
  std::string pending_;
};

}  // namespace kv::cluster
