// The engine's page traffic: loading a cached prefix into a KvCache, and write-back.
#include <algorithm>
#include <memory>
#include <utility>

#include "core/logging.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/page_format.h"
#include "model/kv_cache.h"
#include "prefill/engine.h"
#include "prefill/engine_metrics.h"

namespace kv::prefill {

int64_t Engine::LoadPrefix(std::span<const BlockKey> keys, std::span<const TierKind> tiers,
                           int64_t blocks, ServingSequence* seq, RequestStats* stats) {
  Clock* clock = options_.clock ? options_.clock : Clock::Real();
  std::span<const BlockKey> want = keys.subspan(0, static_cast<size_t>(blocks));
  absl::StatusOr<TieredStore::PinHandle> pin = store_->Pin(want, clock->Now() + options_.lease);
  if (!pin.ok()) {  // evicted since the lookup: recompute
    log::Info("prefix_pin_failed", "blocks", blocks, "error", pin.status().ToString());
    return 0;
  }
  // One uninitialized buffer for the run: every page is read into its own slot.
  std::unique_ptr<uint8_t[]> arena(new uint8_t[static_cast<size_t>(blocks) * page_bytes_]);
  std::vector<std::span<const uint8_t>> pages;
  for (int64_t i = 0; i < blocks; ++i) {
    const absl::Time t0 = clock->Now();
    std::span<uint8_t> slot(arena.get() + static_cast<size_t>(i) * page_bytes_, page_bytes_);
    absl::StatusOr<size_t> n = store_->Read(*pin, want[i], slot);
    if (!n.ok()) {  // a miss from here on: the rest is recomputed
      log::Warn("prefix_load_stopped", "block", i, "key", want[i].Hex(), "error",
                n.status().ToString());
      break;
    }
    cost_.RecordRead(tiers[static_cast<size_t>(i)], *n, clock->Now() - t0);
    pages.push_back(slot.first(*n));
  }
  absl::StatusOr<int64_t> imported = ImportResumable(*model_, seq, pages, want, BlockKey::Zero());
  absl::Status u = store_->Unpin(*pin);
  if (!u.ok()) log::Info("prefix_unpin_failed", "error", u.ToString());  // lease expired
  if (!imported.ok()) return 0;  // the caller sees !seq->can_continue() and starts over
  for (int64_t i = 0; i < *imported; ++i) {
    const TierKind tier = tiers[static_cast<size_t>(i)];
    const uint64_t size = pages[i].size();
    metrics_->pages_loaded[static_cast<int>(tier)]->Inc();
    metrics_->bytes_loaded[static_cast<int>(tier)]->Inc(static_cast<double>(size));
    auto it = std::find_if(stats->tier_hits.begin(), stats->tier_hits.end(),
                           [&](const TierHit& h) { return h.tier == tier; });
    if (it == stats->tier_hits.end()) {
      stats->tier_hits.push_back(TierHit{.tier = tier});
      it = stats->tier_hits.end() - 1;
    }
    ++it->pages;
    it->tokens += page_tokens_;
    it->bytes += size;
    stats->bytes_loaded += size;
  }
  std::sort(stats->tier_hits.begin(), stats->tier_hits.end(),
            [](const TierHit& a, const TierHit& b) { return a.tier < b.tier; });
  return *imported;
}

int64_t Engine::QueuePublish(const ServingSequence& seq, std::span<const BlockKey> keys,
                             std::span<const std::string> ns, int64_t from, int64_t to,
                             int64_t shared_blocks, int64_t reuse_blocks,
                             std::optional<absl::Duration> retention,
                             std::vector<BlockKey> retain) {
  auto p = std::make_shared<Pending>();
  for (int64_t i = from; i < to; ++i) {
    const BlockKey parent = i == 0 ? BlockKey::Zero() : keys[i - 1];
    const PageRole role =
        PublishRole(i, shared_blocks, reuse_blocks, to, options_.resume_checkpoint_pages);
    const bool with_resume = model_->pages_have_resume() && KeepsResumeAtPublish(role);
    absl::StatusOr<std::string> bytes = seq.ExportBlock(i, with_resume, keys[i], parent);
    if (!bytes.ok()) {
      log::Warn("publish_export_failed", "block", i, "error", bytes.status().ToString());
      break;
    }
    p->keys.push_back(keys[i]);
    p->parents.push_back(parent);
    p->ns.push_back(ns[i]);
    p->kv.push_back(*std::move(bytes));
    p->roles.push_back(role);
  }
  p->retention = retention;
  p->retain = std::move(retain);
  const int64_t queued = static_cast<int64_t>(p->keys.size());
  if (queued == 0 && p->retain.empty()) return 0;
  pool_->Schedule([this, p] { PublishPending(*p); });
  return queued;
}

void Engine::PublishPending(const Pending& p) {
  int64_t published = 0, errors = 0;
  for (size_t i = 0; i < p.keys.size(); ++i) {
    absl::StatusOr<std::vector<uint8_t>> page =
        model_->EncodeExported(p.kv[i], p.keys[i], p.parents[i]);
    absl::Status s = page.status();
    if (s.ok()) {
      PageMeta meta{.key = p.keys[i],
                    .parent = p.parents[i],
                    .ns = p.ns[i],
                    .layout = std::string(model_->layout().name),
                    .size = page->size(),
                    .resume_role = p.roles[i]};
      s = store_->Publish(meta, *page, p.retention);
    }
    if (s.ok()) {
      ++published;
    } else if (!absl::IsAlreadyExists(s)) {  // another request published it first: fine
      ++errors;
      log::Warn("publish_failed", "key", p.keys[i].Hex(), "error", s.ToString());
      break;  // children of a missing page could not be sealed anyway
    }
  }
  if (!p.retain.empty() && p.retention) store_->Retain(p.retain, *p.retention);
  metrics_->published_pages->Inc(static_cast<double>(published));
  metrics_->publish_errors->Inc(static_cast<double>(errors));
  kv::MutexLock l(&mu_);
  counters_.published_pages += published;
  counters_.publish_errors += errors;
}

}  // namespace kv::prefill
