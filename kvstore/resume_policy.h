// Resume-section policy for v4-fp8-584 pages (issue #7; docs/formats.md §2.7): which pages
// keep their v4-resume section (the 128-token window KV and compressor state at the page end)
// and which carry only their compressed sections.
//
// Why a policy: only a page with a resume section can be continued from (model/v4_model.h),
// but the section is large: per layer a 128-token 584-B window block (74,880 B) plus the
// compressors' state (measured at a page end: CSA ~20 KB, HCA ~50 B; mid-window an HCA layer
// buffers up to 127 fp32 C and Z rows, ~520 KB), i.e. for V4-Pro ~5.2 MB per page against
// ~1.44 MB of compressed entries and indexer keys (kvstrata bench kvsize, v4_tiny_pages).
// Continuations start only at a chain's end, so:
//
//   role                 resume section
//   interior page        strip at publish: nobody continues from the middle of a chain
//   checkpoint           keep at publish (kept every N pages so that a request branching
//                        mid-chain can resume near it); strip first under pressure
//   shared-prefix end    keep: many sessions branch here; dropped only with the page itself
//   session turn end     keep while the session is live and the tier is not under pressure;
//                        strip when the session has ended / expired, and strip *first* under
//                        pressure (before evicting any compressed section): losing it costs
//                        recomputing back to the previous resume point of one session, while
//                        the compressed sections keep serving as history for every reader.
//
// Pressure order (ResumeStripPriority, lower first): 0 checkpoints, interior pages and turn
// ends of ended sessions; 1 turn ends of live sessions; 2 shared-prefix ends (never stripped
// by pressure).
//
// How the TieredStore applies it (kvstore/tiered_store.h): each indexed page records its
// PageRole (PageMeta::resume_role, persisted by the nvme tier) and the bytes stripping would
// free. TieredStore::DropResume() strips chosen pages on request; when a tier is full and
// TieredStoreOptions::strip_resume_on_pressure is set, the store strips resume sections of
// pages resident there in ResumeStripPriority order (then oldest score first), with
// session_live = now < last access + retention, before it evicts any page. Demotion never
// strips by itself.
//
// Stripping (StripResumeSection in kvstore/page_format.h) keeps the page's key, header
// fields and kv / indexer-keys sections byte-identical and re-checksums the page, so a
// store can do it in place of a demotion without re-deriving keys.
//
// Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kv {

enum class PageRole : uint8_t {  // persisted (nvme page meta): never renumber
  kInterior,                     // a later page of the same chain exists or is being written
  kTurnEnd,                      // the last page of a session turn (the session may continue)
  kSharedPrefixEnd,  // the last page of a published shared prefix (system prompt, tools)
  kCheckpoint,       // a mid-chain page kept resumable so that a branching request can
                     // resume near it (the engine keeps one every N pages)
};

// "interior", "turn-end", "shared-prefix-end", "checkpoint".
std::string_view PageRoleName(PageRole role);

struct ResumeFacts {
  PageRole role = PageRole::kInterior;
  bool session_live = false;    // kTurnEnd: the owning session's retention has not expired
  bool under_pressure = false;  // the tier holding the page is above its high watermark
};

enum class ResumeDecision { kKeep, kStrip };

// The policy above.
ResumeDecision DecideResumeSection(const ResumeFacts& f);

// The role a publisher gives chain block b: the last block of the shared prefix
// (`shared_blocks` blocks), the last block a repeat of the prompt can load (`reuse_blocks` =
// (prompt tokens - 1) / page_tokens: at least one prompt token is always computed, so for a
// prompt of whole pages that is the page before its last) and the last block of the turn
// (`turn_blocks`) are ends; every `checkpoint_pages`-th block (0: none) is a checkpoint; the
// rest are interior.
PageRole PublishRole(int64_t b, int64_t shared_blocks, int64_t reuse_blocks, int64_t turn_blocks,
                     int64_t checkpoint_pages);
// Whether a V4 page of `role` carries a resume section when published (at publish every
// session is live and no tier is under pressure).
bool KeepsResumeAtPublish(PageRole role);

// Order in which a tier under pressure gives resume sections back: lower first. Turn ends of
// ended sessions 0, of live sessions 1, checkpoints 0, interior pages (should have none) 0,
// shared-prefix ends 2 (never stripped by pressure alone: evicted with their page).
int ResumeStripPriority(const ResumeFacts& f);

// Bytes a page would shrink by if its resume section were stripped: page.size() -
// StripResumeSection(page).size(), computed from the header and section table only (no
// section checksums, no copy). 0 for pages without a resume section and for MLA layouts.
// Errors of DecodePageHeader for a bad header.
absl::StatusOr<uint64_t> ResumeSectionBytes(std::span<const uint8_t> page);

// "keep" / "strip".
std::string_view ResumeDecisionName(ResumeDecision d);

// Applies DecideResumeSection to an encoded page: a v4-fp8-584 page with a resume section
// is returned stripped when the decision is kStrip; any other page (MLA layouts, v4 pages
// without one, or kKeep) is returned unchanged (a copy). Errors of DecodePage for a bad
// page (the page is fully verified either way).
absl::StatusOr<std::vector<uint8_t>> ApplyResumePolicy(std::span<const uint8_t> page,
                                                       const ResumeFacts& f);

}  // namespace kv
