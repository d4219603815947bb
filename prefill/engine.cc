#include "prefill/engine.h"

#include <algorithm>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "model/kv_cache.h"
#include "model/sampling.h"
#include "prefill/engine_metrics.h"

namespace kv::prefill {

std::string_view FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStopToken:
      return "stop-token";
    case FinishReason::kCancelled:
      return "cancelled";
  }
  return "length";
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const ServingModel* model,
                                                       TieredStore* store, EngineOptions options) {
  if (model == nullptr) return absl::InvalidArgumentError("Engine: no model");
  if (store == nullptr) return absl::InvalidArgumentError("Engine: no tiered store");
  if (options.prefill_chunk <= 0) {
    return absl::InvalidArgumentError("Engine: prefill_chunk must be > 0");
  }
  if (options.write_back_threads < 1) {
    return absl::InvalidArgumentError("Engine: write_back_threads must be >= 1");
  }
  if (options.resume_checkpoint_pages < 0) {
    return absl::InvalidArgumentError("Engine: resume_checkpoint_pages must be >= 0");
  }
  std::unique_ptr<Engine> e(new Engine(model, store, std::move(options)));
  e->page_tokens_ = model->page_tokens();
  e->page_bytes_ = model->page_bytes();
  e->tenant_params_.model_fingerprint = model->fingerprint();
  e->tenant_params_.layout_id = std::string(model->layout().name);
  e->tenant_params_.page_tokens = model->layout().default_page_tokens;
  return e;
}

Engine::Engine(const ServingModel* model, TieredStore* store, EngineOptions options)
    : model_(model),
      store_(store),
      options_(std::move(options)),
      cost_(options_.cost),
      metrics_(std::make_unique<Metrics>()),
      pool_(std::make_unique<ThreadPool>(options_.write_back_threads)) {
  MetricsRegistry* reg = options_.metrics ? options_.metrics : &MetricsRegistry::Default();
  const char* kReq = "Generate requests served by the engine, by result";
  metrics_->ok = reg->GetCounter("kvstrata_engine_requests_total", kReq, {{"result", "ok"}});
  metrics_->failed = reg->GetCounter("kvstrata_engine_requests_total", kReq, {{"result", "error"}});
  metrics_->cached_tokens = reg->GetCounter("kvstrata_engine_cached_tokens_total",
                                            "Prompt tokens whose KV was loaded from the cache");
  metrics_->recomputed_tokens = reg->GetCounter("kvstrata_engine_recomputed_tokens_total",
                                                "Prompt tokens whose KV was computed");
  metrics_->output_tokens =
      reg->GetCounter("kvstrata_engine_output_tokens_total", "Tokens generated");
  metrics_->published_pages =
      reg->GetCounter("kvstrata_engine_published_pages_total", "Pages published by write-back");
  metrics_->publish_errors =
      reg->GetCounter("kvstrata_engine_publish_errors_total", "Pages write-back failed to publish");
  for (int t = 0; t < kNumTiers; ++t) {
    Labels l = {{"tier", std::string(TierName(static_cast<TierKind>(t)))}};
    metrics_->pages_loaded[t] = reg->GetCounter("kvstrata_engine_pages_loaded_total",
                                                "Cached pages loaded into requests", l);
    metrics_->bytes_loaded[t] = reg->GetCounter("kvstrata_engine_loaded_bytes_total",
                                                "Cached page bytes loaded into requests", l);
  }
  metrics_->ttft =
      reg->GetHistogram("kvstrata_engine_ttft_seconds", "Time to first token of Generate requests",
                        Histogram::LatencyBounds());
}

Engine::~Engine() { pool_.reset(); }

void Engine::WaitIdle() { pool_->WaitIdle(); }

EngineCounters Engine::Counters() {
  kv::MutexLock l(&mu_);
  return counters_;
}

absl::Status Engine::Validate(const GenerateRequest& req) const {
  if (req.prompt.empty()) return absl::InvalidArgumentError("generate: the prompt is empty");
  if (req.tenant.empty()) return absl::InvalidArgumentError("generate: no tenant");
  if (req.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        StrCat("generate: max_new_tokens must be > 0, got ", req.max_tokens));
  }
  if (req.shared_prefix_tokens < 0) {
    return absl::InvalidArgumentError("generate: shared_prefix_tokens must be >= 0");
  }
  const int64_t vocab = model_->config().vocab_size;
  for (size_t i = 0; i < req.prompt.size(); ++i) {
    if (req.prompt[i] < 0 || req.prompt[i] >= vocab) {
      return absl::InvalidArgumentError(StrCat("generate: prompt token ", i, " has id ",
                                               req.prompt[i], ", outside the vocabulary [0, ",
                                               vocab, ")"));
    }
  }
  if (req.session_id.size() > 128) {
    return absl::InvalidArgumentError("generate: session id longer than 128 characters");
  }
  for (char c : req.session_id) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(
          "generate: session id must be printable ASCII without spaces");
    }
  }
  if (req.retention_ttl && *req.retention_ttl < absl::ZeroDuration()) {
    return absl::InvalidArgumentError("generate: retention_ttl must be >= 0");
  }
  RETURN_IF_ERROR(model::ValidateSamplingParams(req.sampling));
  const int64_t total = static_cast<int64_t>(req.prompt.size()) + req.max_tokens;
  if (total > model_->max_context()) {
    return absl::OutOfRangeError(StrCat("generate: prompt (", req.prompt.size(),
                                        " tokens) + max_new_tokens (", req.max_tokens,
                                        ") exceeds the context limit ", model_->max_context()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<BlockKey>> Engine::Keys(std::span<const int32_t> tokens,
                                                   const std::string& tenant, int64_t shared_tokens,
                                                   std::vector<std::string>* ns) const {
  return DeriveRequestKeys(tenant_params_, tokens, tenant, shared_tokens, ns);
}

absl::StatusOr<LookupInfo> Engine::Lookup(const std::vector<int32_t>& prompt,
                                          const std::string& tenant, int64_t shared_prefix_tokens) {
  if (prompt.empty()) return absl::InvalidArgumentError("lookup: the prompt is empty");
  if (tenant.empty()) return absl::InvalidArgumentError("lookup: no tenant");
  if (shared_prefix_tokens < 0) {
    return absl::InvalidArgumentError("lookup: shared_prefix_tokens must be >= 0");
  }
  LookupInfo info;
  info.prompt_tokens = static_cast<int64_t>(prompt.size());
  ASSIGN_OR_RETURN(info.keys, Keys(prompt, tenant, shared_prefix_tokens, nullptr));
  info.full_blocks = static_cast<int64_t>(info.keys.size());
  TieredStore::LookupResult hit = store_->Lookup(info.keys);
  info.cached_blocks = static_cast<int64_t>(hit.matched);
  info.tiers = hit.tiers;
  // The plan a Generate would make: at least one prompt token is always computed, and a V4
  // run is loaded only up to its last page with a resume section.
  const int64_t usable = ContinuableBlocks(
      model_->pages_have_resume(), hit.has_resume,
      std::min<int64_t>(info.cached_blocks, (info.prompt_tokens - 1) / page_tokens_));
  info.cost = cost_.Plan(std::span<const TierKind>(info.tiers).subspan(0, usable), page_bytes_,
                         page_tokens_);
  return info;
}

absl::StatusOr<GenerateResult> Engine::Generate(const GenerateRequest& req) {
  absl::StatusOr<GenerateResult> r = Run(req);
  kv::MutexLock l(&mu_);
  if (!r.ok()) {
    ++counters_.requests_failed;
    metrics_->failed->Inc();
    return r;
  }
  ++counters_.requests_ok;
  counters_.cached_tokens += r->stats.cached_tokens;
  counters_.recomputed_tokens += r->stats.recomputed_tokens;
  counters_.output_tokens += r->stats.output_tokens;
  metrics_->ok->Inc();
  metrics_->cached_tokens->Inc(static_cast<double>(r->stats.cached_tokens));
  metrics_->recomputed_tokens->Inc(static_cast<double>(r->stats.recomputed_tokens));
  metrics_->output_tokens->Inc(static_cast<double>(r->stats.output_tokens));
  metrics_->ttft->Observe(absl::ToDoubleSeconds(r->stats.ttft));
  return r;
}

absl::StatusOr<GenerateResult> Engine::Run(const GenerateRequest& req) {
  Clock* clock = options_.clock ? options_.clock : Clock::Real();
  const absl::Time start = clock->Now();
  RETURN_IF_ERROR(Validate(req));
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  const int64_t total = n + req.max_tokens;
  GenerateResult out;
  RequestStats& st = out.stats;
  st.prompt_tokens = n;

  std::vector<std::string> ns;
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                   Keys(req.prompt, req.tenant, req.shared_prefix_tokens, &ns));
  const int64_t shared_blocks =
      std::min<int64_t>(static_cast<int64_t>(keys.size()), req.shared_prefix_tokens / page_tokens_);
  const bool read_cache = req.policy == CachePolicy::kAuto || req.policy == CachePolicy::kForceLoad;
  const int64_t usable =
      std::min<int64_t>(static_cast<int64_t>(keys.size()), (n - 1) / page_tokens_);
  TieredStore::LookupResult hit;
  if (read_cache && usable > 0) {
    hit = store_->Lookup(std::span<const BlockKey>(keys).subspan(0, usable));
  }
  // What the plan may count on loading (V4: up to the last page with a resume section).
  const int64_t continuable = ContinuableBlocks(model_->pages_have_resume(), hit.has_resume,
                                                static_cast<int64_t>(hit.matched));
  st.cost = cost_.Plan(std::span<const TierKind>(hit.tiers).first(continuable), page_bytes_,
                       page_tokens_);
  if (req.policy == CachePolicy::kForceLoad && continuable > 0) {
    st.cost.decision = CacheDecision::kLoad;
    st.cost.load_blocks = continuable;
    st.cost.load_tokens = st.cost.load_blocks * page_tokens_;
    st.cost.recompute_tokens = 0;
    st.cost.reason = StrCat("load forced by the request's cache policy; model: ", st.cost.reason);
  } else if (!read_cache) {
    st.cost.reason = "cache not read (the request's cache policy)";
  }
  const int64_t to_load = st.cost.load_blocks;
  if (req.on_plan) req.on_plan(st.cost);

  ASSIGN_OR_RETURN(std::unique_ptr<ServingSequence> kv, model_->NewSequence(total));
  const absl::Time load_start = clock->Now();
  int64_t loaded = to_load > 0 ? LoadPrefix(keys, hit.tiers, to_load, kv.get(), &st) : 0;
  if (!kv->can_continue()) {
    // A V4 import failed after pages without resume sections went in: start over cold
    // rather than continue from a state the pages do not hold.
    log::Warn("prefix_load_discarded", "blocks", loaded);
    ASSIGN_OR_RETURN(kv, model_->NewSequence(total));
    loaded = 0;
    st.tier_hits.clear();
    st.bytes_loaded = 0;
  }
  st.load_time = clock->Now() - load_start;
  const int64_t start_pos = loaded * page_tokens_;
  st.cached_tokens = start_pos;
  st.recomputed_tokens = n - start_pos;

  const absl::Time prefill_start = clock->Now();
  ASSIGN_OR_RETURN(std::vector<float> logits,
                   kv->Prefill(std::span<const int32_t>(req.prompt).subspan(start_pos), start_pos,
                               options_.prefill_chunk));
  st.prefill_time = clock->Now() - prefill_start;
  cost_.RecordPrefill(n - start_pos, st.prefill_time);

  const bool publish = req.policy != CachePolicy::kBypass;
  std::optional<absl::Duration> retention;
  if (!req.session_id.empty()) {
    retention =
        std::min(req.retention_ttl.value_or(options_.default_retention), options_.max_retention);
  }
  model::Sampler sampler(req.sampling);
  const int32_t eos = static_cast<int32_t>(model_->config().eos_token_id);
  absl::Time first = start;
  for (int64_t i = 0; i < req.max_tokens; ++i) {
    ASSIGN_OR_RETURN(int32_t tok, sampler.Sample(logits));
    out.tokens.push_back(tok);
    bool keep_going = req.on_token ? req.on_token(tok) : true;
    if (i == 0) {
      first = clock->Now();
      st.ttft = first - start;
      // Write-back of the new prompt pages, after the first token (off the critical path).
      if (publish) {
        const int64_t from = std::max<int64_t>(loaded, static_cast<int64_t>(hit.matched));
        st.published_pages += QueuePublish(*kv, keys, ns, from, static_cast<int64_t>(keys.size()),
                                           shared_blocks, usable, retention, {});
      }
    }
    if (!keep_going) {
      out.finish = FinishReason::kCancelled;
      break;
    }
    if (std::find(req.stop_tokens.begin(), req.stop_tokens.end(), tok) != req.stop_tokens.end()) {
      out.finish = FinishReason::kStopToken;
      break;
    }
    if (!req.ignore_eos && eos >= 0 && tok == eos) {
      out.finish = FinishReason::kEos;
      break;
    }
    if (i + 1 == req.max_tokens) break;  // the last token needs no forward pass
    ASSIGN_OR_RETURN(logits, kv->DecodeStep(tok));
  }
  st.decode_time = clock->Now() - first;
  st.output_tokens = static_cast<int64_t>(out.tokens.size());

  // End of turn: publish the conversation's full pages beyond the prompt's. The last
  // sampled token has no KV yet; when it completes a page, compute it so the next turn can
  // hit the whole conversation rounded down to pages.
  if (publish && !out.tokens.empty() &&
      kv->num_tokens() + 1 == n + static_cast<int64_t>(out.tokens.size()) &&
      (kv->num_tokens() + 1) % page_tokens_ == 0) {
    RETURN_IF_ERROR(kv->DecodeStep(out.tokens.back()).status());
  }
  if (publish) {
    std::vector<int32_t> convo(req.prompt);
    convo.insert(convo.end(), out.tokens.begin(), out.tokens.end());
    convo.resize(static_cast<size_t>(kv->num_tokens()));  // tokens whose KV exists
    std::vector<std::string> convo_ns;
    ASSIGN_OR_RETURN(std::vector<BlockKey> convo_keys,
                     Keys(convo, req.tenant, req.shared_prefix_tokens, &convo_ns));
    std::vector<BlockKey> retain;
    if (retention && *retention > absl::ZeroDuration()) retain = convo_keys;
    st.published_pages += QueuePublish(*kv, convo_keys, convo_ns, static_cast<int64_t>(keys.size()),
                                       static_cast<int64_t>(convo_keys.size()), shared_blocks,
                                       usable, retention, std::move(retain));
  }
  st.total_time = clock->Now() - start;
  return out;
}

}  // namespace kv::prefill
