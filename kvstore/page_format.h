// The page format: how one block of cached KV is laid out in bytes (DESIGN.md "Pages",
// "KV layouts"; docs/formats.md §2 is the byte-for-byte reference).
//
// A page holds one block of `token_count` tokens for the layers [first_layer,
// first_layer + layer_count). It is a header followed by sections:
//
//   offset  size  field (all integers little-endian)
//   0       8     magic "KVSTPAGE"
//   8       2     format version (u16) = 1
//   10      2     layout code (u16): 1 mla-fp8-656, 2 mla-bf16-1152, 3 v4-fp8-584,
//                 4 gqa-bf16, 5 gqa-fp8
//   12      4     section count n (u32), 1..kMaxSections
//   16      8     page bytes (u64): header + sections, the exact size of the page
//   24      4     token count (u32), 1..kMaxPageTokens
//   28      4     first layer (u32)
//   32      4     layer count (u32), >= 1, first + count <= kMaxLayers
//   36      4     flags (u32), must be 0 in version 1
//   40      32    block key
//   72      32    parent block key (32 zero bytes for the first block of a chain)
//   104     4     GQA layouts: num_kv_heads (u32), 1..kMaxGqaKvHeads; other layouts: 0
//   108     4     GQA layouts: head_dim (u32), 1..kMaxGqaHeadDim; other layouts: 0
//   112     16    reserved, must be zero
//   128     32·n  section table; entry: kind u16, reserved u16 (0), reserved u32 (0),
//                 offset u64, length u64, XXH3-64 of the section's bytes u64
//   ...           zero padding up to header_bytes - 8
//   hb-8    8     header checksum: XXH3-64 (seed 0) of bytes [0, hb-8)
//
// where hb = header_bytes = RoundUp(128 + 32·n + 8, 64). Sections follow in table order, each
// starting at the next 64-byte boundary after the previous one (the first at hb), with zero
// padding in between; the last section ends exactly at page bytes. A KV section is
// layer-major: layer L's records for all tokens are one contiguous range, and within it
// token t's record is at t × record_bytes (FlashMLA layout, record stride 656 for FP8).
//
// Layout v4-fp8-584 (DeepSeek-V4, formats.md §2.2 / §4.5, docs/formats.md §2.7) pages hold
// 256 tokens of all layers and up to three sections, in this order:
//   kv            (required) per layer in order, the compressed entries the page's tokens
//                 close, as one [E×576 | E×8] block padded to a multiple of 576 (E = 256/m
//                 for a full page: 64 CSA, 2 HCA, 0 window-only => 0 bytes);
//   indexer-keys  (optional) per CSA layer, [E×128 e4m3 | E×4 f32 scale] padded to 576;
//   v4-resume     (optional) the window KV and compressor state at the page end (its own
//                 versioned, self-describing payload, model/v4_model.h).
// Their exact sizes depend on the model's compress_ratios, which the page does not carry:
// the decoder checks order, kinds, the 576-byte granularity and the checksums; the model's
// importer checks the sizes against its layer mix. MLA pages hold exactly one kv section.
//
// Layouts gqa-bf16 and gqa-fp8 (docs/formats.md §2.8) hold the K and V of a GQA model
// (Llama, Qwen) in vLLM's FlashAttention block order: one kv section, layer-major; layer L's
// bytes are K[L] then V[L], each [token_count, num_kv_heads, head_dim] row-major (bf16, or
// e4m3 codes whose per-layer k/v scales belong to the model, not the page). The geometry is
// in the header (bytes 104..111, reserved-zero for every other layout: older version-1
// readers refuse codes 4 and 5 as unknown, so no version bump was needed) and is checked
// against the key space's by CheckPageGeometry.
//
// Decoding verifies everything before returning: sizes, bounds (overflow-safe), the header
// checksum and every section checksum. It never reads outside the given buffer. Errors are
// InvalidArgument for malformed pages (DataLoss for checksum mismatches) whose message names
// the part: "header checksum mismatch", "section 0 (kv) checksum mismatch", "truncated:
// header says 41984 bytes, have 100". Pages of an unknown layout or version are refused
// (InvalidArgument): fail closed.
//
// Thread-safety: all functions are pure and safe to call concurrently. A PageView borrows
// the buffer it was decoded from; the caller keeps that buffer alive and unmodified while
// the view (or any span taken from it) is in use.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/kv_layout.h"
#include "kvstore/block_key.h"

namespace kv {

// ---- layouts ------------------------------------------------------------------------------

// One registry of KV layouts, derived from the kernels' record formats. kernels::KvLayout
// (kernels/kv_layout.h) names the MLA records the attention kernels read; a page layout
// (LayoutId) names what a page holds. An MLA page layout is its kernel layout: the same code,
// name and record size (LayoutInfo is built from kernels::LayoutName / RecordBytes).
// v4-fp8-584 pages hold the V4 kernels' 584-byte records (kernels/v4/v4_record.h).
enum class LayoutId : uint16_t {
  // DeepSeek V3.x MLA, FlashMLA FP8: 512 e4m3 + 4 f32 scales + 64 bf16
  kMlaFp8_656 = static_cast<uint16_t>(kernels::KvLayout::kMlaFp8_656),
  // the same data uncompressed: 512 + 64 bf16
  kMlaBf16_1152 = static_cast<uint16_t>(kernels::KvLayout::kMlaBf16_1152),
  // DeepSeek V4 hybrid: compressed 584-B entries + indexer keys + resume
  kV4Fp8_584 = 3,
  // GQA (FlashAttention block order): per layer K then V, [tokens, kv heads, head dim]
  kGqaBf16 = 4,
  kGqaFp8 = 5,  // e4m3 codes; the per-layer k/v scales are the model's
};

inline constexpr uint32_t kMaxGqaKvHeads = 256;
inline constexpr uint32_t kMaxGqaHeadDim = 1024;

// The head geometry of a GQA page: K and V of one token and layer are each
// num_kv_heads x head_dim elements. All zero for non-GQA layouts.
struct GqaGeometry {
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;
  friend bool operator==(const GqaGeometry&, const GqaGeometry&) = default;
};

struct LayoutInfo {
  LayoutId id;
  std::string_view name;         // "mla-fp8-656"
  uint32_t record_bytes;         // bytes per token per layer
  uint32_t default_page_tokens;  // tokens per page the model uses (64 MLA, 256 V4, 16 GQA)
  bool supported;                // false: a reserved id; pages are refused
  // GQA layouts: bytes per K or V element (2 bf16, 1 fp8); record_bytes is then 0, as it
  // depends on the page's GqaGeometry (RecordBytes). 0 for every other layout.
  uint32_t gqa_element_bytes = 0;
  bool is_gqa() const { return gqa_element_bytes != 0; }
};

// Bytes per token per layer: layout.record_bytes, or 2 x heads x head_dim x element bytes
// for a GQA layout.
uint64_t RecordBytes(const LayoutInfo& layout, const GqaGeometry& gqa);

// Every layout id this build knows, supported or reserved.
std::span<const LayoutInfo> KnownLayouts();
// Looks a layout up by code. InvalidArgument for an unknown code; a reserved layout is
// returned (check `supported`).
absl::StatusOr<LayoutInfo> LookupLayout(uint16_t code);
// Looks a layout up by name ("mla-fp8-656"). InvalidArgument naming the known layouts when
// the name is unknown.
absl::StatusOr<LayoutInfo> LookupLayout(std::string_view name);
// The kernels' record layout of an MLA page layout. InvalidArgument for v4-fp8-584 (read by
// the V4 kernels) and unknown codes.
absl::StatusOr<kernels::KvLayout> MlaKernelLayout(LayoutId id);

// ---- sections -----------------------------------------------------------------------------

enum class SectionKind : uint16_t {
  kKv = 1,           // the layer-major KV records of the page's tokens
  kIndexerKeys = 2,  // V4 lightning-indexer keys (v4-fp8-584 pages only)
  kV4Resume = 3,     // V4 window KV + compressor state to resume from the page end (v4 only)
};
// "kv", "indexer-keys", "v4-resume", or "kind N" for an unknown code.
std::string SectionKindName(uint16_t kind);

inline constexpr char kPageMagic[8] = {'K', 'V', 'S', 'T', 'P', 'A', 'G', 'E'};
inline constexpr uint16_t kPageFormatVersion = 1;
inline constexpr size_t kPageFixedHeaderBytes = 128;
inline constexpr size_t kSectionEntryBytes = 32;
inline constexpr size_t kSectionAlign = 64;
inline constexpr uint32_t kMaxSections = 8;
inline constexpr uint32_t kMaxPageTokens = 4096;
inline constexpr uint32_t kMaxLayers = 1024;

// Bytes of the header (fixed part, table, padding, checksum) for `sections` sections.
constexpr size_t PageHeaderBytes(uint32_t sections) {
  return (kPageFixedHeaderBytes + kSectionEntryBytes * sections + 8 + kSectionAlign - 1) /
         kSectionAlign * kSectionAlign;
}

struct SectionInfo {
  SectionKind kind;
  uint64_t offset;  // from the start of the page
  uint64_t length;
  uint64_t checksum;  // XXH3-64, seed 0
};

// The decoded header. Plain value.
struct PageHeader {
  uint16_t format_version = kPageFormatVersion;
  LayoutInfo layout{};
  uint64_t page_bytes = 0;
  uint32_t token_count = 0;
  uint32_t first_layer = 0;
  uint32_t layer_count = 0;
  BlockKey key;
  BlockKey parent;
  GqaGeometry gqa;  // GQA layouts only; zero otherwise
  std::vector<SectionInfo> sections;
  uint64_t record_bytes() const { return RecordBytes(layout, gqa); }
  size_t header_bytes() const { return PageHeaderBytes(static_cast<uint32_t>(sections.size())); }
};

// A verified page: the header plus spans into the caller's buffer (zero-copy).
class PageView {
 public:
  const PageHeader& header() const { return header_; }
  // The whole page.
  std::span<const uint8_t> bytes() const { return bytes_; }
  // The KV section: token_count × layer_count records, layer-major (MLA layouts); the
  // per-layer compressed-entry blocks (v4-fp8-584).
  std::span<const uint8_t> kv() const { return kv_; }
  // v4-fp8-584 only: the indexer-keys and resume sections (empty when absent).
  std::span<const uint8_t> indexer_keys() const { return indexer_; }
  std::span<const uint8_t> resume() const { return resume_; }
  bool has_resume() const { return has_resume_; }
  // The contiguous KV bytes of model layers [first, first + count). OutOfRange naming the
  // page's layer range when the requested range is empty or not inside it;
  // FailedPrecondition for v4-fp8-584 pages (their layers are not fixed-size records).
  absl::StatusOr<std::span<const uint8_t>> KvLayers(uint32_t first, uint32_t count) const;
  // One model layer: KvLayers(layer, 1).
  absl::StatusOr<std::span<const uint8_t>> KvLayer(uint32_t layer) const {
    return KvLayers(layer, 1);
  }
  // Bytes of one layer's records (token_count × record_bytes).
  uint64_t layer_bytes() const;
  // GQA pages: the K (value = false) or V block of one model layer, [token_count,
  // num_kv_heads, head_dim]. FailedPrecondition for other layouts; OutOfRange like KvLayer.
  absl::StatusOr<std::span<const uint8_t>> GqaLayerHalf(uint32_t layer, bool value) const;

 private:
  friend absl::StatusOr<PageView> DecodePage(std::span<const uint8_t> page);

  PageHeader header_;
  std::span<const uint8_t> bytes_;
  std::span<const uint8_t> kv_;
  std::span<const uint8_t> indexer_;
  std::span<const uint8_t> resume_;
  bool has_resume_ = false;
};

// ---- encoding -----------------------------------------------------------------------------

// What a new page holds besides its KV bytes.
struct PageSpec {
  LayoutId layout = LayoutId::kMlaFp8_656;
  BlockKey key;
  BlockKey parent;  // zero for the first block of a chain
  uint32_t token_count = 0;
  uint32_t first_layer = 0;
  uint32_t layer_count = 0;
  GqaGeometry gqa;  // required (non-zero) for GQA layouts, zero for the others
};

// Size in bytes of the KV section `spec` needs (token_count × layer_count × record bytes).
// InvalidArgument for an unknown layout or out-of-range counts, and for v4-fp8-584, whose
// section sizes depend on the layer mix (use EncodePageSections).
absl::StatusOr<uint64_t> KvSectionBytes(const PageSpec& spec);
// Size in bytes of the encoded page. Same errors as KvSectionBytes.
absl::StatusOr<uint64_t> EncodedPageBytes(const PageSpec& spec);

// Encodes a page into `out`, which must be exactly EncodedPageBytes(spec) long (so pages can
// be written straight into registered or device-staging memory). `kv` must be exactly
// KvSectionBytes(spec) long, layer-major. InvalidArgument naming the mismatch otherwise;
// `out` is unspecified on error.
absl::Status EncodePageInto(const PageSpec& spec, std::span<const uint8_t> kv,
                            std::span<uint8_t> out);
// Convenience: allocates and returns the encoded page.
absl::StatusOr<std::vector<uint8_t>> EncodePage(const PageSpec& spec, std::span<const uint8_t> kv);

// One section of a page being encoded.
struct PageSectionData {
  SectionKind kind = SectionKind::kKv;
  std::span<const uint8_t> bytes;
};
// The size of the page EncodePageSections writes for sections of these lengths, in order
// (the header, then each section, the second and later ones 64-byte aligned).
uint64_t EncodedSectionsPageBytes(std::span<const uint64_t> section_lengths);
// Encodes a page with the given sections, in order. MLA layouts: exactly one kv section of
// KvSectionBytes(spec). v4-fp8-584: kv, then optionally indexer-keys, then optionally
// v4-resume; kv and indexer-keys sizes multiples of 576, v4-resume non-empty.
// InvalidArgument naming the problem otherwise.
absl::StatusOr<std::vector<uint8_t>> EncodePageSections(const PageSpec& spec,
                                                        std::span<const PageSectionData> sections);

// ---- decoding -----------------------------------------------------------------------------

// Decodes and fully verifies a page (see the top of this file). The view borrows `page`.
absl::StatusOr<PageView> DecodePage(std::span<const uint8_t> page);

// Checks a decoded page against what a request expects before its bytes enter a sequence:
// key, parent, layout and geometry (page_tokens tokens x all `layers`). DataLoss naming the
// mismatch. GQA pages are refused here (their head geometry is not among the arguments): use
// CheckPageGeometry.
absl::Status CheckPage(const PageView& view, const BlockKey& key, const BlockKey& parent,
                       const LayoutInfo& layout, int page_tokens, int layers);

// What a key space expects of its pages: layout, tokens per page, layer count and, for GQA
// layouts, the head geometry.
struct KeySpaceGeometry {
  LayoutInfo layout{};
  uint32_t page_tokens = 0;
  uint32_t layers = 0;
  GqaGeometry gqa;
};
// "gqa-bf16 16 tokens x 8 kv heads x 128 head dim x 32 layers" (no head part for non-GQA).
std::string GeometryString(const KeySpaceGeometry& g);
// Checks a decoded header against the key space's geometry (first layer 0, all layers).
// DataLoss naming both, e.g. "page layout gqa-fp8 does not match the key space's gqa-bf16",
// "page geometry gqa-bf16 16 tokens x 4 kv heads x ... does not match the key space's ...".
absl::Status CheckPageGeometry(const PageHeader& h, const KeySpaceGeometry& expected);

// Encodes one full block of raw KV (layer-major records, KvCache::ExportBlock bytes) as a
// page of all `layers`. Errors of EncodePage.
absl::StatusOr<std::vector<uint8_t>> EncodeBlockPage(const LayoutInfo& layout, const BlockKey& key,
                                                     const BlockKey& parent, int page_tokens,
                                                     int layers, std::span<const uint8_t> kv);

// Decodes and verifies only the header: magic, version, header checksum, layout, counts and
// the section table's placement and sizes against the header's page size. `prefix` may be
// just the first header_bytes of a page (so a reader can fetch the header, then the
// sections); section checksums are not verified. Fails like DecodePage; "truncated" when
// `prefix` is shorter than the header.
absl::StatusOr<PageHeader> DecodePageHeader(std::span<const uint8_t> prefix);

// ---- tools --------------------------------------------------------------------------------

// A v4-fp8-584 page without its resume section: the same header fields and the kv and
// indexer-keys sections byte-identical, re-laid-out and re-checksummed (DecodePage accepts
// it). A page that has no resume section is returned unchanged (a copy). Errors: those of
// DecodePage for a bad page; InvalidArgument for a page of another layout.
absl::StatusOr<std::vector<uint8_t>> StripResumeSection(std::span<const uint8_t> page);

// Recomputes every in-bounds section checksum and then the header checksum of a (possibly
// hand-edited) page in place. For tests and the fuzzer, which craft pages whose structure
// is wrong on purpose and need the checksums to be right so the structural check is what
// fails. InvalidArgument if the buffer is too short to hold the header its section count
// implies.
absl::Status ResealPage(std::span<uint8_t> page);

}  // namespace kv
