// Engine: serves one generate request end to end in one process, reusing cached KV
// (DESIGN.md "One request, end to end", steps 2-6; the embedded `serve --role=all`).
//
// Per request:
//   1. Derive the prompt's block keys. The first `shared_prefix_tokens` (rounded down to
//      whole pages) are keyed in the explicit `shared` namespace, the rest in the caller's
//      tenant namespace, chained after the shared ones. The tenant comes from the
//      authenticated caller (cluster/tenants.h), never from a request body.
//   2. Look up the longest cached prefix in the TieredStore. At least one prompt token is
//      always computed (the model needs its logits), so at most (n - 1) / page_tokens
//      blocks are used.
//   3. The CostModel (prefill/cost_model.h) plans how many of those blocks to load.
//   4. Pin them with a lease (deadline = now + lease), read and verify each page
//      (DecodePage + key/layout/geometry checks), import it into a fresh KvCache
//      (AppendBlock), Unpin. A page that vanished or fails verification ends the load
//      there; the rest is recomputed (never wrong bytes).
//   5. Prefill only the uncached suffix (start_pos = loaded tokens), sample the first token
//      (TTFT), and only then hand the new full prompt blocks to the write-back pool, which
//      encodes and publishes them in chain order (off the critical path).
//   6. Decode, streaming each token through `on_token`, until max_tokens, a stop token, EOS
//      or cancellation. At the end of the turn the full blocks of the whole conversation
//      (prompt + output whose KV is computed) are published, so the next turn of the
//      session hits it all; with a session id they get the store's retention hint.
//
// Exactness: a page holds the exact KV bytes the model computed, and the model's output
// depends only on those bytes (model/transformer.h, model/v4_model.h), so a warm request
// generates exactly the tokens a cold one does.
//
// Models. The engine serves any ServingModel (model/serving_model.h): DeepSeek MLA models
// with 64-token mla-* pages, and DeepSeek-V4 models with 256-token v4-fp8-584 pages. V4
// pages carry a resume section only where the resume policy keeps one (kvstore/
// resume_policy.h, PublishRole below): at the shared-prefix end, at the last page a repeat
// of the prompt can load, at the turn's last full page, and every `resume_checkpoint_pages`
// pages of a chain; each is published with its PageRole
// so the store can strip it under pressure. A cached V4 run is loaded only up to its last
// page with a resume section (a sequence can be continued only from there); the pages after
// it are recomputed, byte-identical.
//
// Thread-safety: Generate/Lookup/Counters are safe to call concurrently; each request has
// its own ServingSequence (the model is immutable). The engine does not own the model or the
// store; both must outlive it. The destructor waits for queued write-backs.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/clock.h"
#include "core/metrics.h"
#include "core/mutex.h"
#include "core/thread_pool.h"
#include "kernels/kv_layout.h"
#include "kvstore/block_key.h"
#include "kvstore/page_format.h"
#include "kvstore/resume_policy.h"
#include "kvstore/tiered_store.h"
#include "model/sampling.h"
#include "model/serving_model.h"
#include "prefill/cost_model.h"

namespace kv::prefill {

using model::ContinuableBlocks;
using model::ImportResumable;
using model::ServingModel;
using model::ServingSequence;

enum class CachePolicy {
  kAuto,            // the cost model decides
  kForceLoad,       // load every cached page
  kForceRecompute,  // read nothing; still publish
  kBypass,          // read nothing, publish nothing (a cold baseline)
};

enum class FinishReason { kLength, kEos, kStopToken, kCancelled };
std::string_view FinishReasonName(FinishReason r);

struct EngineOptions {
  Clock* clock = nullptr;                                // nullptr: Clock::Real()
  MetricsRegistry* metrics = nullptr;                    // nullptr: MetricsRegistry::Default()
  absl::Duration lease = absl::Seconds(30);              // pin lease while loading pages
  absl::Duration default_retention = absl::Minutes(10);  // session retention when unset
  absl::Duration max_retention = absl::Hours(24);
  int64_t prefill_chunk = 256;
  int write_back_threads = 1;  // 1 keeps publishes in chain order
  // V4 pages: keep a resume section on every Nth page of a chain (PageRole::kCheckpoint), so
  // a request that shares only part of a chain resumes at most N - 1 pages before its end.
  // 0: only at shared-prefix, prompt and turn ends.
  int64_t resume_checkpoint_pages = 4;
  CostModelOptions cost;
};

struct GenerateRequest {
  std::vector<int32_t> prompt;  // token ids; non-empty
  std::string tenant;           // authenticated tenant; non-empty
  // The caller's `authorization` metadata, which a router forwards to workers and stores
  // (they authenticate the end user themselves). Unused in-process.
  std::string authorization;
  int64_t shared_prefix_tokens = 0;
  std::string session_id;                       // optional; 1..128 printable ASCII when set
  std::optional<absl::Duration> retention_ttl;  // unset: default; zero: no hint
  model::SamplingParams sampling;
  int64_t max_tokens = 0;  // > 0
  std::vector<int32_t> stop_tokens;
  bool ignore_eos = false;
  CachePolicy policy = CachePolicy::kAuto;
  // Called once the cost model has planned the request, before any page is loaded.
  std::function<void(const CostPlan&)> on_plan;
  // Called with each generated token as soon as it is sampled; returning false cancels the
  // request (FinishReason::kCancelled, the tokens so far are kept).
  std::function<bool(int32_t)> on_token;
};

struct TierHit {
  TierKind tier = TierKind::kDevice;
  std::string node_id;  // node that held the pages; empty: this process
  bool remote = false;  // the pages came from another process
  int64_t pages = 0;
  int64_t tokens = 0;
  uint64_t bytes = 0;
};

struct RequestStats {
  absl::Duration ttft, total_time, load_time, prefill_time, decode_time;
  int64_t prompt_tokens = 0;
  int64_t output_tokens = 0;
  int64_t cached_tokens = 0;       // prompt tokens whose KV was loaded
  int64_t recomputed_tokens = 0;   // prompt tokens computed
  std::vector<TierHit> tier_hits;  // one per tier that served pages, fastest first
  uint64_t bytes_loaded = 0;
  // KV bytes moved between processes (cache loads + prefill->decode handoff) and how; an
  // in-process request moves bytes_loaded with memcpy ("inproc").
  uint64_t bytes_transferred = 0;
  std::string transport;        // "ucx", "grpc" or empty (in-process)
  int64_t published_pages = 0;  // pages this request queued for publishing
  CostPlan cost;
};

struct GenerateResult {
  std::vector<int32_t> tokens;
  FinishReason finish = FinishReason::kLength;
  RequestStats stats;
};

struct LookupInfo {
  int64_t prompt_tokens = 0;
  int64_t full_blocks = 0;
  int64_t cached_blocks = 0;
  std::vector<BlockKey> keys;   // the prompt's full-block keys
  std::vector<TierKind> tiers;  // fastest tier of each cached block
  CostPlan cost;
};

struct EngineCounters {
  uint64_t requests_ok = 0, requests_failed = 0;
  uint64_t cached_tokens = 0, recomputed_tokens = 0, output_tokens = 0;
  uint64_t published_pages = 0, publish_errors = 0;
};

class Engine {
 public:
  // InvalidArgument for a null model/store or bad options.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(const ServingModel* model,
                                                        TieredStore* store, EngineOptions options);
  ~Engine();

  // Serves one request (blocking). InvalidArgument naming the field for an empty prompt,
  // an empty tenant, a token id outside the vocabulary, max_tokens <= 0, bad sampling
  // params or a bad session id; OutOfRange when prompt + max_tokens exceeds the model's
  // context; errors of the model otherwise. Cache trouble is never an error: it is a miss.
  absl::StatusOr<GenerateResult> Generate(const GenerateRequest& req);

  // The longest cached prefix of `prompt` for `tenant` and the cost model's plan for it.
  // Reads only; pins nothing. InvalidArgument for an empty prompt or tenant.
  absl::StatusOr<LookupInfo> Lookup(const std::vector<int32_t>& prompt, const std::string& tenant,
                                    int64_t shared_prefix_tokens);

  // Blocks until queued write-backs are published.
  void WaitIdle();
  EngineCounters Counters();
  CostModel& cost_model() { return cost_; }
  const ServingModel& model() const { return *model_; }
  TieredStore& store() { return *store_; }
  const KeyParams& key_params() const { return tenant_params_; }  // ns unset
  int page_tokens() const { return page_tokens_; }
  uint64_t page_bytes() const { return page_bytes_; }
  const LayoutInfo& layout() const { return model_->layout(); }

 private:
  struct Metrics;
  struct Pending {               // full blocks waiting for write-back
    std::vector<BlockKey> keys;  // their keys
    std::vector<BlockKey> parents;
    std::vector<std::string> ns;  // KeyNamespace::ToString()
    std::vector<std::string> kv;  // ServingSequence::ExportBlock results
    std::vector<PageRole> roles;  // the resume policy's role of each page
    std::optional<absl::Duration> retention;
    std::vector<BlockKey> retain;  // whole chain to refresh the retention hint of
  };
  Engine(const ServingModel* model, TieredStore* store, EngineOptions options);

  absl::Status Validate(const GenerateRequest& req) const;
  // Keys of every full block of `tokens` (shared prefix first) and their namespaces.
  absl::StatusOr<std::vector<BlockKey>> Keys(std::span<const int32_t> tokens,
                                             const std::string& tenant, int64_t shared_tokens,
                                             std::vector<std::string>* ns) const;
  // Steps 2-4: loads up to `blocks` pages into `seq` (V4: up to the last one a sequence can
  // continue from); returns blocks loaded.
  int64_t LoadPrefix(std::span<const BlockKey> keys, std::span<const TierKind> tiers,
                     int64_t blocks, ServingSequence* seq, RequestStats* stats);
  // Exports blocks [from, to) of `seq` and queues their publishing. `shared_blocks` leading
  // blocks are the shared prefix, `reuse_blocks` what a repeat of the prompt can load; block
  // to - 1 ends the prompt or the turn (PublishRole).
  int64_t QueuePublish(const ServingSequence& seq, std::span<const BlockKey> keys,
                       std::span<const std::string> ns, int64_t from, int64_t to,
                       int64_t shared_blocks, int64_t reuse_blocks,
                       std::optional<absl::Duration> retention, std::vector<BlockKey> retain);

  void PublishPending(const Pending& p);
  absl::StatusOr<GenerateResult> Run(const GenerateRequest& req);

  const ServingModel* model_;
  TieredStore* store_;
  const EngineOptions options_;
  KeyParams tenant_params_;
  int page_tokens_ = 0;
  uint64_t page_bytes_ = 0;
  CostModel cost_;
  std::unique_ptr<Metrics> metrics_;
  kv::Mutex mu_;
  EngineCounters counters_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<ThreadPool> pool_;  // last: joined first
};

}  // namespace kv::prefill
