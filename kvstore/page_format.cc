#include "kvstore/page_format.h"

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/v4/v4_record.h"

namespace kv {
namespace {

// Field offsets of the fixed header part (see page_format.h).
constexpr size_t kOffVersion = 8;
constexpr size_t kOffLayout = 10;
constexpr size_t kOffSectionCount = 12;
constexpr size_t kOffPageBytes = 16;
constexpr size_t kOffTokenCount = 24;
constexpr size_t kOffFirstLayer = 28;
constexpr size_t kOffLayerCount = 32;
constexpr size_t kOffFlags = 36;
constexpr size_t kOffKey = 40;
constexpr size_t kOffParent = 72;
constexpr size_t kOffGqaHeads = 104;
constexpr size_t kOffGqaHeadDim = 108;
constexpr size_t kOffReserved = 112;
// Enough bytes to read magic, version, layout, section count and page size.
constexpr size_t kMinPrefixBytes = 24;

LayoutInfo MlaLayout(kernels::KvLayout k) {
  return {static_cast<LayoutId>(k), kernels::KvLayoutName(k),
          static_cast<uint32_t>(kernels::RecordBytes(k)), kernels::kDefaultPageTokens, true};
}

// The registry (see LayoutId): built once, on first use.
std::span<const LayoutInfo> Layouts() {
  static const LayoutInfo layouts[] = {
      MlaLayout(kernels::KvLayout::kMlaFp8_656),
      MlaLayout(kernels::KvLayout::kMlaBf16_1152),
      {LayoutId::kV4Fp8_584, "v4-fp8-584", kernels::v4::kV4RecordBytes, 256, true},
      // GQA: record bytes depend on the page's head geometry (RecordBytes).
      {LayoutId::kGqaBf16, "gqa-bf16", 0, 16, true, 2},
      {LayoutId::kGqaFp8, "gqa-fp8", 0, 16, true, 1},
  };
  return layouts;
}

uint16_t GetU16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t GetU32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
uint64_t GetU64(const uint8_t* p) { return uint64_t{GetU32(p)} | (uint64_t{GetU32(p + 4)} << 32); }
void PutU16(uint16_t v, uint8_t* p) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
void PutU32(uint32_t v, uint8_t* p) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
void PutU64(uint64_t v, uint8_t* p) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint64_t RoundUp(uint64_t v, uint64_t align) { return (v + align - 1) / align * align; }

// v4-fp8-584 blocks (compressed entries, indexer keys) are padded to multiples of 576 bytes
// (formats.md §2.2).
constexpr uint64_t kV4BlockAlign = 576;

bool AllZero(std::span<const uint8_t> s) {
  for (uint8_t b : s) {
    if (b != 0) return false;
  }
  return true;
}

std::string SectionName(size_t i, uint16_t kind) {
  return kv::StrCat("section ", i, " (", SectionKindName(kind), ")");
}

// A GQA layout needs heads and head_dim in range; any other layout needs them zero.
absl::Status CheckGqa(const LayoutInfo& layout, const GqaGeometry& g) {
  if (!layout.is_gqa()) {
    if (g == GqaGeometry{}) return absl::OkStatus();
    return absl::InvalidArgumentError(kv::StrCat("layout ", layout.name,
                                                 " has no head geometry, but ", g.num_kv_heads,
                                                 " kv heads x ", g.head_dim, " head dim is set"));
  }
  if (g.num_kv_heads == 0 || g.num_kv_heads > kMaxGqaKvHeads || g.head_dim == 0 ||
      g.head_dim > kMaxGqaHeadDim) {
    return absl::InvalidArgumentError(
        kv::StrCat("layout ", layout.name, " geometry ", g.num_kv_heads, " kv heads x ", g.head_dim,
                   " head dim outside 1..", kMaxGqaKvHeads, " x 1..", kMaxGqaHeadDim));
  }
  return absl::OkStatus();
}

// Checks the layout is known and readable, and the token/layer counts are in range.
absl::StatusOr<LayoutInfo> CheckLayoutAndCounts(uint16_t layout_code, uint32_t tokens,
                                                uint32_t first_layer, uint32_t layers) {
  ASSIGN_OR_RETURN(LayoutInfo layout, LookupLayout(layout_code));
  if (!layout.supported) {
    return absl::UnimplementedError(kv::StrCat("layout ", layout.name, " (code ", layout_code,
                                               ") is reserved/unsupported in this build"));
  }
  if (tokens == 0 || tokens > kMaxPageTokens) {
    return absl::InvalidArgumentError(
        kv::StrCat("token count ", tokens, " outside 1..", kMaxPageTokens));
  }
  if (layers == 0 || uint64_t{first_layer} + layers > kMaxLayers) {
    return absl::InvalidArgumentError(kv::StrCat("layer range [", first_layer, ", ",
                                                 uint64_t{first_layer} + layers,
                                                 ") is empty or not inside [0, ", kMaxLayers, ")"));
  }
  return layout;
}

// Magic, version, section count and the page size against the buffer. Returns the section
// count. `whole` is true when `buf` must be the entire page.
absl::StatusOr<uint32_t> CheckPrefix(std::span<const uint8_t> buf, bool whole) {
  if (buf.size() < kMinPrefixBytes) {
    return absl::InvalidArgumentError(kv::StrCat(
        "truncated: have ", buf.size(), " bytes, a page header is at least ", PageHeaderBytes(1)));
  }
  const uint8_t* p = buf.data();
  if (std::memcmp(p, kPageMagic, sizeof(kPageMagic)) != 0) {
    return absl::InvalidArgumentError("header: bad magic (not a kvstrata page)");
  }
  const uint16_t version = GetU16(p + kOffVersion);
  if (version != kPageFormatVersion) {
    return absl::InvalidArgumentError(kv::StrCat("header: unsupported page format version ",
                                                 version, " (this build reads version ",
                                                 kPageFormatVersion, ")"));
  }
  const uint32_t n = GetU32(p + kOffSectionCount);
  if (n == 0 || n > kMaxSections) {
    return absl::InvalidArgumentError(
        kv::StrCat("header: section count ", n, " outside 1..", kMaxSections));
  }
  const uint64_t hb = PageHeaderBytes(n);
  const uint64_t page_bytes = GetU64(p + kOffPageBytes);
  if (page_bytes < hb) {
    return absl::InvalidArgumentError(
        kv::StrCat("header: page size ", page_bytes, " is smaller than its ", hb, "-byte header"));
  }
  if (whole && buf.size() != page_bytes) {
    return absl::InvalidArgumentError(
        kv::StrCat(buf.size() < page_bytes ? "truncated: " : "trailing bytes: ", "header says ",
                   page_bytes, " bytes, have ", buf.size()));
  }
  if (!whole && buf.size() < hb) {
    return absl::InvalidArgumentError(
        kv::StrCat("truncated: header says the header is ", hb, " bytes, have ", buf.size()));
  }
  return n;
}

absl::Status CheckHeaderChecksum(std::span<const uint8_t> buf, uint32_t n) {
  const size_t hb = PageHeaderBytes(n);
  const uint64_t stored = GetU64(buf.data() + hb - 8);
  const uint64_t computed = Xxh3_64(buf.data(), hb - 8);
  if (stored != computed) {
    return absl::DataLossError(absl::StrFormat(
        "header checksum mismatch (stored %016x, computed %016x)", stored, computed));
  }
  const size_t table_end = kPageFixedHeaderBytes + kSectionEntryBytes * n;
  if (GetU32(buf.data() + kOffFlags) != 0) {
    return absl::InvalidArgumentError("header: flags set; version 1 defines none");
  }
  if (!AllZero(buf.subspan(kOffReserved, kPageFixedHeaderBytes - kOffReserved)) ||
      !AllZero(buf.subspan(table_end, hb - 8 - table_end))) {
    return absl::InvalidArgumentError("header: reserved or padding bytes are not zero");
  }
  return absl::OkStatus();
}

// Validates one section table entry's kind, placement and size. `end` is where the previous
// section ended (the header size for section 0); `prev_kind` the previous section's kind (0
// for section 0). MLA pages hold one kv section; v4-fp8-584 pages kv, then optionally
// indexer-keys, then optionally v4-resume (kinds strictly increasing).
absl::StatusOr<SectionInfo> CheckSection(const uint8_t* e, size_t i, uint64_t end,
                                         const PageHeader& h, uint16_t prev_kind) {
  const uint16_t kind = GetU16(e);
  const std::string name = SectionName(i, kind);
  const bool v4 = h.layout.id == LayoutId::kV4Fp8_584;
  if (kind == static_cast<uint16_t>(SectionKind::kIndexerKeys) ||
      kind == static_cast<uint16_t>(SectionKind::kV4Resume)) {
    if (!v4) {
      return absl::UnimplementedError(
          kv::StrCat(name, " is a reserved section kind this build does not read in ",
                     h.layout.name, " pages"));
    }
  } else if (kind != static_cast<uint16_t>(SectionKind::kKv)) {
    return absl::InvalidArgumentError(kv::StrCat("section ", i, ": unknown kind ", kind));
  }
  if (kind == static_cast<uint16_t>(SectionKind::kKv) && prev_kind != 0) {
    return absl::InvalidArgumentError(kv::StrCat(name, ": duplicate kv section"));
  }
  if (i == 0 && kind != static_cast<uint16_t>(SectionKind::kKv)) {
    return absl::InvalidArgumentError(kv::StrCat(name, ": the first section must be kv"));
  }
  if (kind <= prev_kind) {
    return absl::InvalidArgumentError(
        kv::StrCat(name, ": duplicate or out of order (kv, indexer-keys, v4-resume)"));
  }
  if (GetU16(e + 2) != 0 || GetU32(e + 4) != 0) {
    return absl::InvalidArgumentError(kv::StrCat(name, ": reserved fields are not zero"));
  }
  SectionInfo s{static_cast<SectionKind>(kind), GetU64(e + 8), GetU64(e + 16), GetU64(e + 24)};
  const uint64_t expected = i == 0 ? end : RoundUp(end, kSectionAlign);
  if (s.offset < expected) {
    return absl::InvalidArgumentError(
        kv::StrCat(name, " at offset ", s.offset, " overlaps ",
                   i == 0 ? std::string("the header") : kv::StrCat("section ", i - 1), " (ends at ",
                   end, ")"));
  }
  if (s.offset > expected) {
    return absl::InvalidArgumentError(kv::StrCat(name, " at offset ", s.offset, ", expected ",
                                                 expected,
                                                 " (sections are packed in table order)"));
  }
  if (s.offset > h.page_bytes || s.length > h.page_bytes - s.offset) {
    return absl::InvalidArgumentError(kv::StrCat(name, " [", s.offset, ", +", s.length,
                                                 ") runs past the page end (", h.page_bytes,
                                                 " bytes)"));
  }
  if (v4) {
    // Exact sizes depend on the model's layer mix; the importer checks them.
    if (s.kind == SectionKind::kV4Resume ? s.length == 0 : s.length % kV4BlockAlign != 0) {
      return absl::InvalidArgumentError(
          kv::StrCat(name, " is ", s.length, " bytes; layout ", h.layout.name,
                     s.kind == SectionKind::kV4Resume ? " needs a non-empty resume payload"
                                                      : " needs a multiple of 576"));
    }
    return s;
  }
  const uint64_t need = uint64_t{h.token_count} * h.layer_count * h.record_bytes();
  if (s.length != need) {
    return absl::InvalidArgumentError(kv::StrCat(
        name, " is ", s.length, " bytes; layout ", h.layout.name, " needs ", h.token_count,
        " tokens x ", h.layer_count, " layers x ", h.record_bytes(), " B = ", need));
  }
  return s;
}

absl::StatusOr<PageHeader> DecodeHeaderImpl(std::span<const uint8_t> buf, bool whole) {
  ASSIGN_OR_RETURN(const uint32_t n, CheckPrefix(buf, whole));
  RETURN_IF_ERROR(CheckHeaderChecksum(buf, n));
  const uint8_t* p = buf.data();
  PageHeader h;
  h.format_version = GetU16(p + kOffVersion);
  h.page_bytes = GetU64(p + kOffPageBytes);
  h.token_count = GetU32(p + kOffTokenCount);
  h.first_layer = GetU32(p + kOffFirstLayer);
  h.layer_count = GetU32(p + kOffLayerCount);
  std::memcpy(h.key.bytes.data(), p + kOffKey, 32);
  std::memcpy(h.parent.bytes.data(), p + kOffParent, 32);
  auto layout =
      CheckLayoutAndCounts(GetU16(p + kOffLayout), h.token_count, h.first_layer, h.layer_count);
  if (!layout.ok()) return Annotate(layout.status(), "header");
  h.layout = *layout;
  h.gqa = {GetU32(p + kOffGqaHeads), GetU32(p + kOffGqaHeadDim)};
  if (absl::Status g = CheckGqa(h.layout, h.gqa); !g.ok()) return Annotate(g, "header");
  uint64_t end = PageHeaderBytes(n);
  bool have_kv = false;
  uint16_t prev_kind = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const uint8_t* e = p + kPageFixedHeaderBytes + kSectionEntryBytes * i;
    ASSIGN_OR_RETURN(SectionInfo s, CheckSection(e, i, end, h, prev_kind));
    have_kv = have_kv || s.kind == SectionKind::kKv;
    prev_kind = static_cast<uint16_t>(s.kind);
    end = s.offset + s.length;
    h.sections.push_back(s);
  }
  if (!have_kv) return absl::InvalidArgumentError("header: page has no kv section");
  if (end != h.page_bytes) {
    return absl::InvalidArgumentError(kv::StrCat("header: sections end at byte ", end,
                                                 " but the page is ", h.page_bytes, " bytes"));
  }
  return h;
}

absl::StatusOr<LayoutInfo> CheckSpec(const PageSpec& spec) {
  auto l = CheckLayoutAndCounts(static_cast<uint16_t>(spec.layout), spec.token_count,
                                spec.first_layer, spec.layer_count);
  if (!l.ok()) return Annotate(l.status(), "page spec");
  if (absl::Status g = CheckGqa(*l, spec.gqa); !g.ok()) return Annotate(g, "page spec");
  return l;
}

}  // namespace

std::span<const LayoutInfo> KnownLayouts() { return Layouts(); }

absl::StatusOr<LayoutInfo> LookupLayout(uint16_t code) {
  for (const LayoutInfo& l : Layouts()) {
    if (static_cast<uint16_t>(l.id) == code) return l;
  }
  return absl::InvalidArgumentError(
      kv::StrCat("unknown layout code ", code,
                 " (known: 1 mla-fp8-656, 2 mla-bf16-1152, 3 v4-fp8-584, 4 gqa-bf16, 5 gqa-fp8)"));
}

absl::StatusOr<LayoutInfo> LookupLayout(std::string_view name) {
  std::string names;
  for (const LayoutInfo& l : Layouts()) {
    if (l.name == name) return l;
    names += kv::StrCat(names.empty() ? "" : ", ", l.name);
  }
  return absl::InvalidArgumentError(kv::StrCat("unknown layout '", name, "' (known: ", names, ")"));
}

absl::StatusOr<kernels::KvLayout> MlaKernelLayout(LayoutId id) {
  switch (id) {
    case LayoutId::kMlaFp8_656:
      return kernels::KvLayout::kMlaFp8_656;
    case LayoutId::kMlaBf16_1152:
      return kernels::KvLayout::kMlaBf16_1152;
    default:
      return absl::InvalidArgumentError(
          kv::StrCat("layout code ", static_cast<uint16_t>(id), " has no MLA kernel layout"));
  }
}

std::string SectionKindName(uint16_t kind) {
  switch (kind) {
    case static_cast<uint16_t>(SectionKind::kKv):
      return "kv";
    case static_cast<uint16_t>(SectionKind::kIndexerKeys):
      return "indexer-keys";
    case static_cast<uint16_t>(SectionKind::kV4Resume):
      return "v4-resume";
    default:
      return kv::StrCat("kind ", kind);
  }
}

uint64_t RecordBytes(const LayoutInfo& layout, const GqaGeometry& gqa) {
  if (!layout.is_gqa()) return layout.record_bytes;
  return uint64_t{2} * gqa.num_kv_heads * gqa.head_dim * layout.gqa_element_bytes;
}

uint64_t PageView::layer_bytes() const {
  return uint64_t{header_.token_count} * header_.record_bytes();
}

absl::StatusOr<std::span<const uint8_t>> PageView::GqaLayerHalf(uint32_t layer, bool value) const {
  if (!header_.layout.is_gqa()) {
    return absl::FailedPreconditionError(
        kv::StrCat(header_.layout.name, " pages have no separate K and V blocks"));
  }
  ASSIGN_OR_RETURN(std::span<const uint8_t> both, KvLayer(layer));
  const size_t half = both.size() / 2;
  return both.subspan(value ? half : 0, half);
}

absl::StatusOr<std::span<const uint8_t>> PageView::KvLayers(uint32_t first, uint32_t count) const {
  if (header_.layout.id == LayoutId::kV4Fp8_584) {
    return absl::FailedPreconditionError(
        "v4-fp8-584 pages hold per-layer compressed blocks, not fixed-size layer records");
  }
  const uint64_t lo = header_.first_layer;
  const uint64_t hi = lo + header_.layer_count;
  if (count == 0 || first < lo || uint64_t{first} + count > hi) {
    return absl::OutOfRangeError(kv::StrCat("layers [", first, ", ", uint64_t{first} + count,
                                            ") are not inside the page's layers [", lo, ", ", hi,
                                            ")"));
  }
  return kv_.subspan((first - lo) * layer_bytes(), count * layer_bytes());
}

absl::StatusOr<uint64_t> KvSectionBytes(const PageSpec& spec) {
  ASSIGN_OR_RETURN(const LayoutInfo layout, CheckSpec(spec));
  if (layout.id == LayoutId::kV4Fp8_584) {
    return absl::InvalidArgumentError(
        "page spec: v4-fp8-584 section sizes depend on the model's layer mix; encode with "
        "EncodePageSections");
  }
  return uint64_t{spec.token_count} * spec.layer_count * RecordBytes(layout, spec.gqa);
}

uint64_t EncodedSectionsPageBytes(std::span<const uint64_t> section_lengths) {
  uint64_t end = PageHeaderBytes(static_cast<uint32_t>(section_lengths.size()));
  for (size_t i = 0; i < section_lengths.size(); ++i) {
    end = (i == 0 ? end : RoundUp(end, kSectionAlign)) + section_lengths[i];
  }
  return end;
}

absl::StatusOr<uint64_t> EncodedPageBytes(const PageSpec& spec) {
  ASSIGN_OR_RETURN(uint64_t kv, KvSectionBytes(spec));
  return PageHeaderBytes(1) + kv;
}

absl::Status EncodePageInto(const PageSpec& spec, std::span<const uint8_t> kv,
                            std::span<uint8_t> out) {
  ASSIGN_OR_RETURN(const uint64_t kv_bytes, KvSectionBytes(spec));
  const uint64_t hb = PageHeaderBytes(1);
  if (kv.size() != kv_bytes) {
    return absl::InvalidArgumentError(
        kv::StrCat("encode page: kv is ", kv.size(), " bytes, the spec needs ", kv_bytes));
  }
  if (out.size() != hb + kv_bytes) {
    return absl::InvalidArgumentError(kv::StrCat("encode page: output buffer is ", out.size(),
                                                 " bytes, the page is ", hb + kv_bytes));
  }
  uint8_t* p = out.data();
  std::memset(p, 0, hb);
  std::memcpy(p, kPageMagic, sizeof(kPageMagic));
  PutU16(kPageFormatVersion, p + kOffVersion);
  PutU16(static_cast<uint16_t>(spec.layout), p + kOffLayout);
  PutU32(1, p + kOffSectionCount);
  PutU64(hb + kv_bytes, p + kOffPageBytes);
  PutU32(spec.token_count, p + kOffTokenCount);
  PutU32(spec.first_layer, p + kOffFirstLayer);
  PutU32(spec.layer_count, p + kOffLayerCount);
  PutU32(spec.gqa.num_kv_heads, p + kOffGqaHeads);
  PutU32(spec.gqa.head_dim, p + kOffGqaHeadDim);
  std::memcpy(p + kOffKey, spec.key.bytes.data(), 32);
  std::memcpy(p + kOffParent, spec.parent.bytes.data(), 32);
  if (kv_bytes > 0) std::memcpy(p + hb, kv.data(), kv_bytes);
  uint8_t* e = p + kPageFixedHeaderBytes;
  PutU16(static_cast<uint16_t>(SectionKind::kKv), e);
  PutU64(hb, e + 8);
  PutU64(kv_bytes, e + 16);
  PutU64(Xxh3_64(p + hb, kv_bytes), e + 24);
  PutU64(Xxh3_64(p, hb - 8), p + hb - 8);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> EncodePage(const PageSpec& spec, std::span<const uint8_t> kv) {
  ASSIGN_OR_RETURN(const uint64_t size, EncodedPageBytes(spec));
  std::vector<uint8_t> out(size);
  RETURN_IF_ERROR(EncodePageInto(spec, kv, out));
  return out;
}

absl::StatusOr<std::vector<uint8_t>> EncodePageSections(const PageSpec& spec,
                                                        std::span<const PageSectionData> sections) {
  RETURN_IF_ERROR(CheckSpec(spec).status());
  const uint32_t n = static_cast<uint32_t>(sections.size());
  if (n == 0 || n > kMaxSections) {
    return absl::InvalidArgumentError(
        kv::StrCat("encode page: ", n, " sections, want 1..", kMaxSections));
  }
  const uint64_t hb = PageHeaderBytes(n);
  uint64_t end = hb;
  std::vector<uint64_t> offsets;
  for (const PageSectionData& sec : sections) {
    const uint64_t off = offsets.empty() ? end : RoundUp(end, kSectionAlign);
    offsets.push_back(off);
    end = off + sec.bytes.size();
  }
  std::vector<uint64_t> lengths;
  for (const PageSectionData& sec : sections) lengths.push_back(sec.bytes.size());
  if (end != EncodedSectionsPageBytes(lengths)) {
    return absl::InternalError("encode page: the layout disagrees with EncodedSectionsPageBytes");
  }
  std::vector<uint8_t> out(end, 0);
  uint8_t* p = out.data();
  std::memcpy(p, kPageMagic, sizeof(kPageMagic));
  PutU16(kPageFormatVersion, p + kOffVersion);
  PutU16(static_cast<uint16_t>(spec.layout), p + kOffLayout);
  PutU32(n, p + kOffSectionCount);
  PutU64(end, p + kOffPageBytes);
  PutU32(spec.token_count, p + kOffTokenCount);
  PutU32(spec.first_layer, p + kOffFirstLayer);
  PutU32(spec.layer_count, p + kOffLayerCount);
  PutU32(spec.gqa.num_kv_heads, p + kOffGqaHeads);
  PutU32(spec.gqa.head_dim, p + kOffGqaHeadDim);
  std::memcpy(p + kOffKey, spec.key.bytes.data(), 32);
  std::memcpy(p + kOffParent, spec.parent.bytes.data(), 32);
  for (uint32_t i = 0; i < n; ++i) {
    const PageSectionData& sec = sections[i];
    if (!sec.bytes.empty()) std::memcpy(p + offsets[i], sec.bytes.data(), sec.bytes.size());
    uint8_t* e = p + kPageFixedHeaderBytes + kSectionEntryBytes * i;
    PutU16(static_cast<uint16_t>(sec.kind), e);
    PutU64(offsets[i], e + 8);
    PutU64(sec.bytes.size(), e + 16);
    PutU64(Xxh3_64(p + offsets[i], sec.bytes.size()), e + 24);
  }
  PutU64(Xxh3_64(p, hb - 8), p + hb - 8);
  // The structural rules (kinds, order, sizes) are the decoder's: one definition.
  auto h = DecodeHeaderImpl(out, /*whole=*/true);
  if (!h.ok()) return Annotate(h.status(), "encode page");
  return out;
}

absl::StatusOr<std::vector<uint8_t>> StripResumeSection(std::span<const uint8_t> page) {
  ASSIGN_OR_RETURN(PageView v, DecodePage(page));
  const PageHeader& h = v.header();
  if (h.layout.id != LayoutId::kV4Fp8_584) {
    return absl::InvalidArgumentError(
        kv::StrCat("strip resume: a ", h.layout.name, " page has no resume section"));
  }
  if (!v.has_resume()) return std::vector<uint8_t>(page.begin(), page.end());
  std::vector<PageSectionData> keep;
  for (const SectionInfo& s : h.sections) {
    if (s.kind == SectionKind::kV4Resume) continue;
    keep.push_back({s.kind, page.subspan(s.offset, s.length)});
  }
  PageSpec spec{.layout = h.layout.id,
                .key = h.key,
                .parent = h.parent,
                .token_count = h.token_count,
                .first_layer = h.first_layer,
                .layer_count = h.layer_count};
  return EncodePageSections(spec, keep);
}

absl::StatusOr<PageHeader> DecodePageHeader(std::span<const uint8_t> prefix) {
  return DecodeHeaderImpl(prefix, /*whole=*/false);
}

absl::StatusOr<PageView> DecodePage(std::span<const uint8_t> page) {
  ASSIGN_OR_RETURN(PageHeader h, DecodeHeaderImpl(page, /*whole=*/true));
  uint64_t end = h.header_bytes();
  PageView view;
  for (size_t i = 0; i < h.sections.size(); ++i) {
    const SectionInfo& s = h.sections[i];
    // The name only on error: formatting it for every section costs more than a small check.
    auto name = [&] { return SectionName(i, static_cast<uint16_t>(s.kind)); };
    if (!AllZero(page.subspan(end, s.offset - end))) {
      return absl::InvalidArgumentError(kv::StrCat(name(), ": padding before it is not zero"));
    }
    std::span<const uint8_t> bytes = page.subspan(s.offset, s.length);
    const uint64_t computed = Xxh3_64(bytes.data(), bytes.size());
    if (computed != s.checksum) {
      return absl::DataLossError(absl::StrFormat(
          "%s checksum mismatch (stored %016x, computed %016x)", name(), s.checksum, computed));
    }
    if (s.kind == SectionKind::kKv) view.kv_ = bytes;
    if (s.kind == SectionKind::kIndexerKeys) view.indexer_ = bytes;
    if (s.kind == SectionKind::kV4Resume) {
      view.resume_ = bytes;
      view.has_resume_ = true;
    }
    end = s.offset + s.length;
  }
  view.header_ = std::move(h);
  view.bytes_ = page;
  return view;
}

absl::Status ResealPage(std::span<uint8_t> page) {
  if (page.size() < kOffSectionCount + 4) {
    return absl::InvalidArgumentError("reseal: buffer too short to hold a section count");
  }
  const uint32_t n = GetU32(page.data() + kOffSectionCount);
  if (n == 0 || n > kMaxSections || page.size() < PageHeaderBytes(n)) {
    return absl::InvalidArgumentError(
        kv::StrCat("reseal: section count ", n, " invalid for a ", page.size(), "-byte buffer"));
  }
  for (uint32_t i = 0; i < n; ++i) {
    uint8_t* e = page.data() + kPageFixedHeaderBytes + kSectionEntryBytes * i;
    const uint64_t off = GetU64(e + 8), len = GetU64(e + 16);
    if (off <= page.size() && len <= page.size() - off) {
      PutU64(Xxh3_64(page.data() + off, len), e + 24);
    }
  }
  const size_t hb = PageHeaderBytes(n);
  PutU64(Xxh3_64(page.data(), hb - 8), page.data() + hb - 8);
  return absl::OkStatus();
}

absl::Status CheckPage(const PageView& view, const BlockKey& key, const BlockKey& parent,
                       const LayoutInfo& layout, int page_tokens, int layers) {
  const PageHeader& h = view.header();
  if (h.key != key) return absl::DataLossError("page key differs from the requested key");
  if (h.parent != parent) return absl::DataLossError("page parent differs from the chain");
  if (h.layout.id != layout.id) return absl::DataLossError("page layout differs");
  if (layout.is_gqa()) {
    return absl::DataLossError(kv::StrCat("CheckPage cannot verify the head geometry of a ",
                                          layout.name, " page; use CheckPageGeometry"));
  }
  if (h.token_count != static_cast<uint32_t>(page_tokens) || h.first_layer != 0 ||
      h.layer_count != static_cast<uint32_t>(layers)) {
    return absl::DataLossError(StrCat("page geometry ", h.token_count, " tokens x ", h.layer_count,
                                      " layers does not match the model"));
  }
  return absl::OkStatus();
}

std::string GeometryString(const KeySpaceGeometry& g) {
  std::string heads;
  if (g.layout.is_gqa()) {
    heads = kv::StrCat(g.gqa.num_kv_heads, " kv heads x ", g.gqa.head_dim, " head dim x ");
  }
  return kv::StrCat(g.layout.name, " ", g.page_tokens, " tokens x ", heads, g.layers, " layers");
}

absl::Status CheckPageGeometry(const PageHeader& h, const KeySpaceGeometry& expected) {
  if (h.layout.id != expected.layout.id) {
    return absl::DataLossError(kv::StrCat(
        "page layout ", h.layout.name, " does not match the key space's ", expected.layout.name));
  }
  const KeySpaceGeometry got{h.layout, h.token_count, h.layer_count, h.gqa};
  if (h.first_layer != 0 || got.page_tokens != expected.page_tokens ||
      got.layers != expected.layers || !(got.gqa == expected.gqa)) {
    return absl::DataLossError(kv::StrCat(
        "page geometry ", GeometryString(got), h.first_layer != 0 ? " (not from layer 0)" : "",
        " does not match the key space's ", GeometryString(expected)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> EncodeBlockPage(const LayoutInfo& layout, const BlockKey& key,
                                                     const BlockKey& parent, int page_tokens,
                                                     int layers, std::span<const uint8_t> kv) {
  PageSpec spec{.layout = layout.id,
                .key = key,
                .parent = parent,
                .token_count = static_cast<uint32_t>(page_tokens),
                .first_layer = 0,
                .layer_count = static_cast<uint32_t>(layers)};
  return EncodePage(spec, kv);
}

}  // namespace kv
