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
  }
  return 0;
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

}  // namespace kv
