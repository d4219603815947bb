#include "kvstore/resume_policy.h"

#include "core/status_macros.h"
#include "kvstore/page_format.h"

namespace kv {

ResumeDecision DecideResumeSection(const ResumeFacts& f) {
  switch (f.role) {
    case PageRole::kInterior:
      return ResumeDecision::kStrip;
    case PageRole::kSharedPrefixEnd:
      return ResumeDecision::kKeep;
    case PageRole::kTurnEnd:
      return f.session_live && !f.under_pressure ? ResumeDecision::kKeep : ResumeDecision::kStrip;
    case PageRole::kCheckpoint:
      return f.under_pressure ? ResumeDecision::kStrip : ResumeDecision::kKeep;
  }
  return ResumeDecision::kStrip;
}

int ResumeStripPriority(const ResumeFacts& f) {
  switch (f.role) {
    case PageRole::kInterior:
      return 0;
    case PageRole::kTurnEnd:
      return f.session_live ? 1 : 0;
    case PageRole::kSharedPrefixEnd:
      return 2;
    case PageRole::kCheckpoint:
      return 0;
  }
  return 0;
}

std::string_view PageRoleName(PageRole role) {
  switch (role) {
    case PageRole::kInterior:
      return "interior";
    case PageRole::kTurnEnd:
      return "turn-end";
    case PageRole::kSharedPrefixEnd:
      return "shared-prefix-end";
    case PageRole::kCheckpoint:
      return "checkpoint";
  }
  return "unknown";
}

absl::StatusOr<uint64_t> ResumeSectionBytes(std::span<const uint8_t> page) {
  ASSIGN_OR_RETURN(PageHeader h, DecodePageHeader(page));
  if (h.layout.id != LayoutId::kV4Fp8_584) return 0;
  bool has_resume = false;
  uint32_t kept = 0;
  for (const SectionInfo& s : h.sections) {
    if (s.kind == SectionKind::kV4Resume) {
      has_resume = true;
    } else {
      ++kept;
    }
  }
  if (!has_resume) return 0;
  // The stripped page is laid out by the encoder's rule (page_format.h): a header for the
  // kept sections, then each kept section at the next 64-byte boundary, the last one ending
  // the page.
  uint64_t end = PageHeaderBytes(kept);
  for (const SectionInfo& s : h.sections) {
    if (s.kind == SectionKind::kV4Resume) continue;
    end = (end + kSectionAlign - 1) / kSectionAlign * kSectionAlign + s.length;
  }
  if (end > h.page_bytes) {
    return absl::InternalError("resume section bytes: stripped page larger than the page");
  }
  return h.page_bytes - end;
}

std::string_view ResumeDecisionName(ResumeDecision d) {
  return d == ResumeDecision::kKeep ? "keep" : "strip";
}

absl::StatusOr<std::vector<uint8_t>> ApplyResumePolicy(std::span<const uint8_t> page,
                                                       const ResumeFacts& f) {
  ASSIGN_OR_RETURN(PageView v, DecodePage(page));
  if (v.header().layout.id != LayoutId::kV4Fp8_584 || !v.has_resume() ||
      DecideResumeSection(f) == ResumeDecision::kKeep) {
    return std::vector<uint8_t>(page.begin(), page.end());
  }
  return StripResumeSection(page);
}

PageRole PublishRole(int64_t b, int64_t shared_blocks, int64_t reuse_blocks, int64_t turn_blocks,
                     int64_t checkpoint_pages) {
  if (b + 1 == shared_blocks) return PageRole::kSharedPrefixEnd;
  if (b + 1 == reuse_blocks || b + 1 == turn_blocks) return PageRole::kTurnEnd;
  if (checkpoint_pages > 0 && (b + 1) % checkpoint_pages == 0) return PageRole::kCheckpoint;
  return PageRole::kInterior;
}

bool KeepsResumeAtPublish(PageRole role) {
  return DecideResumeSection({.role = role, .session_live = true}) == ResumeDecision::kKeep;
}

}  // namespace kv
