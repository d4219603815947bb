#include "decode/decode_session.h"

#include <algorithm>
#include <utility>

#include "core/hash.h"
#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"

namespace kv::decode {

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

namespace {

absl::Status ValidateRequest(const model::ServingModel& m, const DecodeRequest& r) {
  if (r.prompt.empty()) return absl::InvalidArgumentError("decode: the prompt is empty");
  if (r.tenant.empty()) return absl::InvalidArgumentError("decode: no tenant");
  if (r.max_tokens <= 0) {
    return absl::InvalidArgumentError(
        StrCat("decode: max_new_tokens must be > 0, got ", r.max_tokens));
  }
  if (r.shared_prefix_tokens < 0) {
    return absl::InvalidArgumentError("decode: shared_prefix_tokens must be >= 0");
  }
  const int64_t vocab = m.config().vocab_size;
  for (size_t i = 0; i < r.prompt.size(); ++i) {
    if (r.prompt[i] < 0 || r.prompt[i] >= vocab) {
      return absl::InvalidArgumentError(StrCat("decode: prompt token ", i, " has id ", r.prompt[i],
                                               ", outside the vocabulary [0, ", vocab, ")"));
    }
  }
  RETURN_IF_ERROR(model::ValidateSamplingParams(r.sampling));
  const int64_t total = static_cast<int64_t>(r.prompt.size()) + r.max_tokens;
  if (total > m.max_context()) {
    return absl::OutOfRangeError(StrCat("decode: prompt (", r.prompt.size(),
                                        " tokens) + max_new_tokens (", r.max_tokens,
                                        ") exceeds the context limit ", m.max_context()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<DecodeSession>> DecodeSession::Create(const DecodeContext* ctx,
                                                                     DecodeRequest request,
                                                                     absl::Time deadline) {
  if (ctx == nullptr || ctx->model == nullptr) {
    return absl::FailedPreconditionError("decode session: no model");
  }
  if (ctx->transport != nullptr && ctx->graveyard == nullptr) {
    return absl::FailedPreconditionError("decode session: a transport needs a graveyard");
  }
  RETURN_IF_ERROR(ValidateRequest(*ctx->model, request));
  std::unique_ptr<DecodeSession> s(new DecodeSession(ctx, std::move(request), deadline));
  const int64_t total = static_cast<int64_t>(s->req_.prompt.size()) + s->req_.max_tokens;
  ASSIGN_OR_RETURN(s->seq_, ctx->model->NewSequence(total));
  return s;
}

DecodeSession::DecodeSession(const DecodeContext* ctx, DecodeRequest request, absl::Time deadline)
    : ctx_(ctx), req_(std::move(request)), deadline_(deadline), params_(ctx->model->key_params()) {}

DecodeSession::~DecodeSession() { ReleaseDestination(); }

void DecodeSession::ReleaseDestination() {
  if (!region_) return;
  if (!ctx_->transport->Deregister(region_->id).ok()) ctx_->graveyard->Bury(buffer_);
  region_.reset();
}

absl::StatusOr<transport::HandoffDestination> DecodeSession::Start() {
  if (state_ != State::kNew) return absl::FailedPreconditionError("decode: Start called twice");
  state_ = State::kHandoffReady;
  transport::HandoffDestination d;
  d.handoff_id = StrCat(ctx_->options.node_id, "-", req_.request_id);
  d.node_id = ctx_->options.node_id;
  const int64_t handed = static_cast<int64_t>(req_.prompt.size()) - 1;
  layout_ = ctx_->model->handoff_layout(handed);
  if (ctx_->transport == nullptr || handed <= 0 || layout_.slots <= 0) return d;
  const size_t bytes = static_cast<size_t>(layout_.slots) * layout_.slot_bytes;
  buffer_ = std::make_shared<std::vector<uint8_t>>(bytes, 0xFF);
  absl::StatusOr<transport::RegisteredRegion> reg =
      ctx_->transport->Register(buffer_->data(), buffer_->size(), transport::MemoryKind::kHost);
  if (!reg.ok()) {  // not fatal: the prompt is computed here
    log::Warn("handoff_register_failed", "error", reg.status().ToString());
    return d;
  }
  region_ = *std::move(reg);
  d.transport = ctx_->transport->capabilities().name;
  d.endpoint = ctx_->transport->address();
  d.region_key = region_->packed_key;
  d.region_address = reinterpret_cast<uint64_t>(buffer_->data());
  d.slot_bytes = layout_.slot_bytes;
  d.slots = layout_.slots;
  return d;
}

absl::Status DecodeSession::OnPrefillResult(const PrefillResult& r) {
  if (state_ == State::kCancelled) return absl::OkStatus();
  if (state_ != State::kHandoffReady) {
    return absl::FailedPreconditionError("decode: PrefillResult before HandoffReady");
  }
  state_ = State::kPrefilled;
  const int64_t handed = static_cast<int64_t>(req_.prompt.size()) - 1;
  if (!region_ || r.kv_tokens == 0) {
    ReleaseDestination();
    return absl::OkStatus();  // no handoff: Run() computes the prompt
  }
  // Every transfer into the region completed before the worker answered (it waits for them);
  // a region the transport still holds is buried, and its bytes are not trusted.
  if (!ctx_->transport->Deregister(region_->id).ok()) {
    ctx_->graveyard->Bury(buffer_);
    region_.reset();
    verdict_ = HandoffVerdict::kRejected;
    return absl::OkStatus();
  }
  region_.reset();
  bool intact = r.kv_tokens == handed && static_cast<int64_t>(r.slot_xxh3.size()) == layout_.slots;
  std::vector<std::span<const uint8_t>> slots;
  for (int64_t s = 0; intact && s < layout_.slots; ++s) {
    std::span<const uint8_t> slot(buffer_->data() + s * layout_.slot_bytes, layout_.slot_bytes);
    intact = Xxh3_64(slot.data(), slot.size()) == r.slot_xxh3[s];
    slots.push_back(slot);
  }
  if (intact) {
    absl::Status s = seq_->ImportHandoff(slots, handed);
    if (!s.ok()) {
      log::Warn("handoff_import_failed", "error", s.ToString());
      intact = false;
      ASSIGN_OR_RETURN(seq_, ctx_->model->NewSequence(handed + 1 + req_.max_tokens));
    }
  }
  verdict_ = intact ? HandoffVerdict::kVerified : HandoffVerdict::kRejected;
  if (!intact) {
    log::Warn("handoff_rejected", "request_id", req_.request_id, "prefill", r.prefill_node_id);
  }
  buffer_.reset();
  return absl::OkStatus();
}

void DecodeSession::Cancel() { cancelled_.store(true); }

bool DecodeSession::Cancelled() const {
  return cancelled_.load() || (req_.cancelled && req_.cancelled());
}

int64_t DecodeSession::LoadCached(int64_t usable, DecodeOutcome* out) {
  if (ctx_->pool == nullptr || !req_.cached || usable <= 0) return 0;
  absl::StatusOr<std::vector<BlockKey>> keys = DeriveRequestKeys(
      params_, req_.prompt, req_.tenant, req_.shared_prefix_tokens, /*ns=*/nullptr);
  if (!keys.ok()) return 0;
  std::vector<BlockKey> want;
  for (const BlockKey& k : req_.cached->keys) {
    if (static_cast<int64_t>(want.size()) >= usable || want.size() >= keys->size()) break;
    if (k != (*keys)[want.size()]) break;  // not this request's chain: ignore
    want.push_back(k);
  }
  if (want.empty()) return 0;
  const absl::Time step = std::min(deadline_, clock()->Now() + ctx_->options.handoff_timeout);
  absl::StatusOr<PoolPages> pages =
      ctx_->pool->ReadView(req_.cached->address, want, req_.cached->lease_id, req_.tenant, step,
                           &out->pool_transport, req_.cached->lent);
  if (!pages.ok()) {
    log::Warn("decode_cache_read_failed", "node", req_.cached->node_id, "error",
              pages.status().ToString());
    return 0;
  }
  for (std::span<const uint8_t> p : pages->pages) out->bytes_read += p.size();
  absl::StatusOr<int64_t> n =
      model::ImportResumable(*ctx_->model, seq_.get(), pages->pages, want, BlockKey::Zero());
  if (!n.ok()) return 0;  // the caller sees !seq_->can_continue()
  for (int64_t i = 0; i < *n; ++i) out->bytes_loaded += pages->pages[i].size();
  return *n;
}

absl::StatusOr<std::vector<float>> DecodeSession::ComputePrompt(DecodeOutcome* out) {
  const int64_t n = static_cast<int64_t>(req_.prompt.size());
  const int64_t pt = ctx_->model->page_tokens();
  const absl::Time load_start = clock()->Now();
  int64_t loaded = LoadCached((n - 1) / pt, out);
  if (!seq_->can_continue()) {  // a failed import after pages without resume sections
    ASSIGN_OR_RETURN(seq_, ctx_->model->NewSequence(n + req_.max_tokens));
    loaded = 0;
    out->bytes_loaded = 0;
  }
  out->load_time = clock()->Now() - load_start;
  const int64_t start_pos = loaded * pt;
  out->cached_tokens = start_pos;
  out->recomputed_tokens = n - start_pos;
  const absl::Time compute_start = clock()->Now();
  // Checked after every layer of every chunk: a cancel or the deadline stops the compute
  // within one layer's work, not at the first sampled token.
  model::LayerHook check = [this](int, int64_t, int64_t) -> absl::Status {
    if (Cancelled()) return absl::CancelledError("decode: cancelled during the prompt");
    if (clock()->Now() > deadline_) {
      return absl::DeadlineExceededError("decode: deadline passed during the prompt");
    }
    return absl::OkStatus();
  };
  absl::StatusOr<std::vector<float>> logits =
      seq_->Prefill(std::span<const int32_t>(req_.prompt).subspan(start_pos), start_pos,
                    ctx_->options.prefill_chunk, check);
  out->compute_time = clock()->Now() - compute_start;
  return logits;
}

absl::StatusOr<DecodeOutcome> DecodeSession::Run(const std::function<bool(int32_t)>& on_token) {
  DecodeOutcome out;
  if (state_ == State::kNew || state_ == State::kHandoffReady) {
    if (!Cancelled()) {
      return absl::FailedPreconditionError("decode: Run before the prefill result");
    }
    state_ = State::kCancelled;
  }
  if (state_ == State::kDone) return absl::FailedPreconditionError("decode: Run called twice");
  ReleaseDestination();
  if (Cancelled() || state_ == State::kCancelled) {
    state_ = State::kDone;
    out.finish = FinishReason::kCancelled;
    return out;
  }
  state_ = State::kDone;
  out.handoff = verdict_;
  const int64_t n = static_cast<int64_t>(req_.prompt.size());
  absl::StatusOr<std::vector<float>> logits;
  if (verdict_ == HandoffVerdict::kVerified) {
    logits = seq_->DecodeStep(req_.prompt.back());  // the one prompt token not handed off
  } else {
    logits = ComputePrompt(&out);
    if (absl::IsCancelled(logits.status()) || absl::IsDeadlineExceeded(logits.status())) {
      out.finish = FinishReason::kCancelled;  // stopped mid-prompt: no tokens, nothing to publish
      return out;
    }
  }
  RETURN_IF_ERROR(logits.status());

  const absl::Time decode_start = clock()->Now();
  model::Sampler sampler(req_.sampling);
  const int32_t eos = static_cast<int32_t>(ctx_->model->config().eos_token_id);
  std::vector<int32_t>& tokens = out.tokens;
  while (true) {
    ASSIGN_OR_RETURN(int32_t tok, sampler.Sample(*logits));
    tokens.push_back(tok);
    const bool keep_going = on_token ? on_token(tok) : true;
    if (!keep_going || Cancelled()) {
      out.finish = FinishReason::kCancelled;
      break;
    }
    if (std::find(req_.stop_tokens.begin(), req_.stop_tokens.end(), tok) !=
        req_.stop_tokens.end()) {
      out.finish = FinishReason::kStopToken;
      break;
    }
    if (!req_.ignore_eos && eos >= 0 && tok == eos) {
      out.finish = FinishReason::kEos;
      break;
    }
    if (static_cast<int64_t>(tokens.size()) >= req_.max_tokens) break;  // kLength
    if (clock()->Now() > deadline_) {
      out.finish = FinishReason::kCancelled;
      break;
    }
    logits = seq_->DecodeStep(tok);  // the last token needs no forward pass
    RETURN_IF_ERROR(logits.status());
  }
  out.decode_time = clock()->Now() - decode_start;
  if (!req_.skip_publish && ctx_->pool != nullptr) {
    ASSIGN_OR_RETURN(out.published_pages, PublishTurn(tokens));
  }
  (void)n;
  return out;
}

absl::StatusOr<int64_t> DecodeSession::PublishTurn(const std::vector<int32_t>& out_tokens) {
  const int64_t n = static_cast<int64_t>(req_.prompt.size());
  const int64_t pt = ctx_->model->page_tokens();
  // The last sampled token has no KV yet; compute it when it completes a page, so the next
  // turn can hit the whole conversation rounded down to pages.
  if (!out_tokens.empty() &&
      seq_->num_tokens() + 1 == n + static_cast<int64_t>(out_tokens.size()) &&
      (seq_->num_tokens() + 1) % pt == 0) {
    RETURN_IF_ERROR(seq_->DecodeStep(out_tokens.back()).status());
  }
  std::vector<int32_t> convo(req_.prompt);
  convo.insert(convo.end(), out_tokens.begin(), out_tokens.end());
  convo.resize(static_cast<size_t>(std::min<int64_t>(seq_->num_tokens(), convo.size())));
  std::vector<std::string> ns;
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys,
                   DeriveRequestKeys(params_, convo, req_.tenant, req_.shared_prefix_tokens, &ns));
  if (keys.empty()) return 0;
  absl::StatusOr<PoolPrefix> have = ctx_->pool->Lookup(keys, req_.tenant);
  int64_t from = have.ok() ? have->blocks() : 0;
  if (verdict_ == HandoffVerdict::kVerified && ctx_->model->pages_have_resume()) {
    // A V4 handoff carries the resume state of the prompt's end only, not of the page ends
    // inside it: the prompt's full pages are the prefill worker's to publish (it has them).
    from = std::max(from, (n - 1) / pt);
  }
  const int64_t to = static_cast<int64_t>(keys.size());
  if (from >= to) return 0;
  const int64_t shared_blocks = std::min<int64_t>(to, req_.shared_prefix_tokens / pt);
  const int64_t reuse_blocks = (n - 1) / pt;  // what a repeat of the prompt can load
  const std::vector<model::ExportedBlock> blocks =
      model::ExportChainBlocks(*ctx_->model, *seq_, keys, from, to, shared_blocks, reuse_blocks,
                               ctx_->options.resume_checkpoint_pages);
  const std::vector<PoolPage> pages = model::EncodePoolPages(*ctx_->model, blocks);
  PoolWriteOptions wo{.key_space = params_,
                      .tenant = req_.tenant,
                      .session_id = req_.session_id,
                      .retention = req_.retention};
  return PublishChain(*ctx_->pool, keys, ns, from, pages, wo, req_.tenant);
}

}  // namespace kv::decode
