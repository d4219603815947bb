#include "prefill/prefill_worker.h"

#include <algorithm>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "prefill/handoff_writer.h"

namespace kv::prefill {

absl::StatusOr<std::unique_ptr<PrefillWorker>> PrefillWorker::Create(const PrefillContext* ctx) {
  if (ctx == nullptr || ctx->model == nullptr || ctx->transport == nullptr ||
      ctx->graveyard == nullptr) {
    return absl::FailedPreconditionError("prefill worker: needs a model, transport and graveyard");
  }
  if (ctx->options.prefill_chunk <= 0 || ctx->options.resume_checkpoint_pages < 0) {
    return absl::InvalidArgumentError("prefill worker: bad chunk or checkpoint option");
  }
  return std::unique_ptr<PrefillWorker>(new PrefillWorker(ctx));
}

PrefillWorker::PrefillWorker(const PrefillContext* ctx)
    : ctx_(ctx), write_back_(std::make_unique<ThreadPool>(1)) {}

PrefillWorker::~PrefillWorker() { write_back_.reset(); }

void PrefillWorker::WaitIdle() { write_back_->WaitIdle(); }

namespace {

// The cached run's blocks that continue the request's chain, at most `usable`.
std::vector<BlockKey> RunKeys(const CachedRun& run, std::span<const BlockKey> keys,
                              int64_t usable) {
  std::vector<BlockKey> want;
  for (const BlockKey& k : run.keys) {
    if (static_cast<int64_t>(want.size()) >= usable || want.size() >= keys.size()) break;
    if (k != keys[want.size()]) break;  // not this request's chain: ignore the rest
    want.push_back(k);
  }
  return want;
}

}  // namespace

absl::Status PrefillWorker::Validate(const PrefillRequest& req) const {
  const model::ServingModel& m = *ctx_->model;
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  if (n < 2)
    return absl::InvalidArgumentError("prefill: a prompt of one token has nothing to hand");
  if (req.tenant.empty()) return absl::InvalidArgumentError("prefill: no tenant");
  const int64_t vocab = m.config().vocab_size;
  for (size_t i = 0; i < req.prompt.size(); ++i) {
    if (req.prompt[i] < 0 || req.prompt[i] >= vocab) {
      return absl::InvalidArgumentError(StrCat("prefill: token ", req.prompt[i], " at index ", i,
                                               " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  if (n >= m.max_context()) {
    return absl::OutOfRangeError(
        StrCat("prefill: prompt of ", n, " tokens reaches the context limit ", m.max_context()));
  }
  return absl::OkStatus();
}

// The cached run, in block order, each page verified before use. A read that fails only
// costs the blocks: they are computed instead.
int64_t PrefillWorker::LoadCached(const PrefillRequest& req, std::span<const BlockKey> keys,
                                  int64_t handed, absl::Time deadline, model::ServingSequence* seq,
                                  PrefillDone& done) {
  const absl::Time load_start = clock()->Now();
  int64_t loaded = 0;
  const std::vector<BlockKey> want =
      req.cached && ctx_->pool != nullptr
          ? RunKeys(*req.cached, keys, handed / ctx_->model->page_tokens())
          : std::vector<BlockKey>{};
  if (!want.empty()) {
    absl::StatusOr<PoolPages> pages =
        ctx_->pool->ReadView(req.cached->address, want, req.cached->lease_id, req.tenant,
                             std::min(deadline, clock()->Now() + ctx_->options.handoff_timeout),
                             &done.pool_transport, req.cached->lent);
    if (!pages.ok()) {
      log::Warn("prefill_cache_read_failed", "node", req.cached->node_id, "error",
                pages.status().ToString());
    } else {
      absl::StatusOr<int64_t> imported =
          model::ImportResumable(*ctx_->model, seq, pages->pages, want, BlockKey::Zero());
      if (imported.ok()) loaded = *imported;
      for (int64_t i = 0; i < loaded; ++i) done.bytes_loaded += pages->pages[i].size();
    }
  }
  done.load_time = clock()->Now() - load_start;
  return loaded;
}

// Loaded blocks go to the decode worker at once, while the rest computes; each computed
// layer's fresh state as soon as the forward has written it; then the final pieces (V4: the
// resume state). The compute stops after the layer during which the caller gave up or the
// deadline passed.
absl::Status PrefillWorker::HandOff(const PrefillRequest& req, int64_t start_pos, int64_t handed,
                                    absl::Time deadline, model::ServingSequence* seq,
                                    HandoffWriter& writer,
                                    const std::function<void(const PrefillProgress&)>& progress,
                                    PrefillDone& done) {
  const int layers = static_cast<int>(ctx_->model->config().num_hidden_layers);
  auto send = [&](absl::StatusOr<std::vector<model::HandoffPiece>> pieces) -> absl::Status {
    RETURN_IF_ERROR(pieces.status());
    std::vector<HandoffWriter::Piece> out;
    for (const model::HandoffPiece& p : *pieces) out.push_back({p.slot, p.offset, p.bytes});
    return writer.Send(out);
  };
  for (int l = 0; l < layers && start_pos > 0; ++l) {
    RETURN_IF_ERROR(send(seq->LayerHandoffPieces(l, 0, start_pos, handed)));
  }
  const absl::Time compute_start = clock()->Now();
  if (start_pos < handed) {
    int layers_done = 0;
    model::LayerHook on_layer = [&](int layer, int64_t start, int64_t count) -> absl::Status {
      if (req.cancelled && req.cancelled()) {
        return absl::CancelledError("prefill: cancelled by the caller");
      }
      if (clock()->Now() > deadline) {
        return absl::DeadlineExceededError(
            StrCat("prefill: deadline passed at token ", start + count, " of ", handed));
      }
      RETURN_IF_ERROR(send(seq->LayerHandoffPieces(layer, start, count, handed)));
      if (start + count == handed && progress) {  // once per layer of the last chunk
        progress({.layers_done = ++layers_done,
                  .layers_total = layers,
                  .bytes_sent = writer.bytes_sent()});
      }
      return absl::OkStatus();
    };
    absl::Status st =
        seq->Prefill(std::span<const int32_t>(req.prompt).subspan(start_pos, handed - start_pos),
                     start_pos, ctx_->options.prefill_chunk, on_layer)
            .status();
    done.compute_time = clock()->Now() - compute_start;
    RETURN_IF_ERROR(st);
  }
  return send(seq->FinalHandoffPieces(handed));
}

// Write-back of the new full prompt pages, after the answer (off the critical path).
void PrefillWorker::ScheduleWriteBack(const PrefillRequest& req, const KeyParams& params,
                                      std::vector<BlockKey> keys, std::vector<std::string> ns,
                                      int64_t loaded, int64_t handed,
                                      const model::ServingSequence& seq, PrefillDone& done) {
  const model::ServingModel& m = *ctx_->model;
  const int64_t full = handed / m.page_tokens();
  if (req.skip_publish || ctx_->pool == nullptr || full <= loaded) return;
  const int64_t shared_blocks = std::min<int64_t>(full, req.shared_prefix_tokens / m.page_tokens());
  std::vector<model::ExportedBlock> blocks = model::ExportChainBlocks(
      m, seq, keys, loaded, full, shared_blocks, full, ctx_->options.resume_checkpoint_pages);
  done.queued_pages = static_cast<int64_t>(blocks.size());
  PoolWriteOptions wo{.key_space = params,
                      .tenant = req.tenant,
                      .session_id = req.session_id,
                      .retention = req.retention};
  write_back_->Schedule([this, keys = std::move(keys), ns = std::move(ns),
                         blocks = std::move(blocks), wo, loaded, tenant = req.tenant] {
    const std::vector<PoolPage> pages = model::EncodePoolPages(*ctx_->model, blocks);
    const int64_t stored = PublishChain(*ctx_->pool, keys, ns, loaded, pages, wo, tenant);
    if (ctx_->on_write_back) {
      ctx_->on_write_back(stored, static_cast<int64_t>(pages.size()) - stored);
    }
  });
}

absl::StatusOr<PrefillDone> PrefillWorker::Run(
    const PrefillRequest& req, absl::Time deadline,
    const std::function<void(const PrefillProgress&)>& progress) {
  RETURN_IF_ERROR(Validate(req));
  const model::ServingModel& m = *ctx_->model;
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  const int64_t handed = n - 1;  // the decode session computes the last prompt token
  const model::HandoffLayout layout = m.handoff_layout(handed);
  if (layout.slots == 0) {
    return absl::FailedPreconditionError(
        StrCat(m.layout().name,
               " sequences have no prefill handoff: decode workers compute "
               "these prompts themselves"));
  }
  const KeyParams params = m.key_params();
  std::vector<std::string> ns;
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys, DeriveRequestKeys(params, req.prompt, req.tenant,
                                                                 req.shared_prefix_tokens, &ns));
  ASSIGN_OR_RETURN(std::unique_ptr<model::ServingSequence> seq, m.NewSequence(n));
  const absl::Time run_start = clock()->Now();
  ASSIGN_OR_RETURN(
      std::unique_ptr<HandoffWriter> writer,
      HandoffWriter::Open(ctx_->transport, ctx_->graveyard, clock(), req.target, layout.slots,
                          layout.slot_bytes, ctx_->options.handoff_timeout, deadline));
  PrefillDone done;
  done.transport = ctx_->transport->capabilities().name;
  const int64_t loaded = LoadCached(req, keys, handed, deadline, seq.get(), done);
  const int64_t start_pos = loaded * m.page_tokens();
  absl::Status status =
      HandOff(req, start_pos, handed, deadline, seq.get(), *writer, progress, done);
  if (!status.ok()) {
    (void)writer->Finish();  // waits out or cancels what was posted
    return status;
  }
  ASSIGN_OR_RETURN(done.slot_xxh3, writer->Finish());
  done.handoff_time = clock()->Now() - run_start - done.load_time - done.compute_time;
  done.kv_tokens = handed;
  done.cached_tokens = start_pos;
  done.recomputed_tokens = handed - start_pos;
  done.bytes_sent = writer->bytes_sent();
  ScheduleWriteBack(req, params, std::move(keys), std::move(ns), loaded, handed, *seq, done);
  return done;
}

}  // namespace kv::prefill
