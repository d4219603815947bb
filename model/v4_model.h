// V4Model: the reference forward pass of a DeepSeek-V4 hybrid-attention model (formats.md §4)
// on the CPU, and V4Cache, its per-sequence KV state, with export/import of v4-fp8-584 pages
// (kvstore/page_format.h, docs/formats.md §2.7).
//
// Per layer and token i (§4.2): h = RMSNorm(x); q_lat = RMSNorm(W_qa h); q = per-head
// unweighted RMSNorm(W_qb q_lat), RoPE on the trailing 64 dims at i; kv = RMSNorm(W_kv h),
// RoPE at i (K = V = kv, 512 wide). The layer's RoPE is the compress RoPE (θ 160000, YaRN)
// for CSA/HCA layers and the main RoPE (θ 10000) for window-only layers
// (kernels/v4/v4_config.h LayerRopeParams). CSA (m = 4) and HCA (m = 128) layers feed
// (W_ckv h, W_cgate h) to their compressor (kernels/v4/compressor.h, §4.3); CSA layers also
// run the lightning indexer (§4.4): its own 128-d compressor, q^I = RoPE(W_iqb q_lat),
// w = W_iw h, scores over the causally visible indexer keys and top-k (index_topk). The
// attention (kernels/v4/sparse_attention.h) runs one softmax over the selected entries (CSA:
// top-k, HCA: every visible one) plus the last min(128, i+1) window tokens, with the per-head
// sink, and inverse RoPE on the output. Output: grouped low-rank projection (o_groups ×
// o_lora_rank, then to hidden). Dense SwiGLU MLP (tiny models; V4's MoE and hyper-connections
// are not modelled). Final RMSNorm and lm_head give the logits.
//
// Storage. The cache keeps what V4 keeps (§4.5): the compressed entries of every CSA/HCA
// layer and the indexer keys of every CSA layer, and per layer the last 128 window tokens
// plus the compressors' rolling state. In V4CacheFormat::kFp8 every stored vector goes
// through its byte format (584-B MODEL1 records for entries and window KV, 132-B indexer
// records) and only the records are kept, split as a page block lays them out
// (kernels/v4/v4_record.h), so importing a page is verify + copy; the attention and the
// indexer dequantize the records they read on the fly (the same bits a decoder gives). The
// one f32 copy is the window's working copy (<= 2 × 128 rows a layer), rebuilt from its
// records at the first forward after an import. kBf16 rounds values to bf16 and keeps them
// as f32 (the A/B reference). Compressors and the indexer see full-precision projections.
//
// Exactness contract (as model/transformer.h): a token's stored bytes and logits depend only
// on the tokens before it and the weights: not on the chunking of Prefill calls, and not on
// whether the history was computed here or imported from pages, nor on the thread count or the
// CPU (chunks are split at 256-token page ends; every matrix product is the batch-invariant
// GEMM over weights packed at Create, model/projection.h; the kernels are per query and take
// exp/sin/cos from kernels/portable_math.h). Create moves the projection matrices into packed
// form, so weights() keeps the config, fingerprint, embeddings, norms and compressor weights.
//
// Pages (v4-fp8-584, 256 tokens, all layers): kv = per layer the entries the page's tokens
// close ([E×576 | E×8], padded to 576); indexer-keys = per CSA layer its keys ([E×128 | E×4]);
// optional v4-resume = the state at the page end (see kResumeMagic below). A cache that
// imported pages can be continued only when the last page carried a resume section;
// otherwise Prefill/DecodeStep return FailedPrecondition, never a silently wrong result.
//
// Thread-safety: V4Model is immutable after Create and may be shared; a V4Cache belongs to
// one sequence and one thread at a time. The caller owns caches and returned vectors.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/v4/compressor.h"
#include "kernels/v4/v4_config.h"
#include "kvstore/block_key.h"
#include "kvstore/page_format.h"
#include "model/projection.h"
#include "model/weights.h"

namespace kv::model {

inline constexpr int64_t kV4PageTokens = 256;

// Entries of a ratio-m layer closed by tokens [0, end) (0 for a window-only layer, m = 0).
inline int64_t V4EntriesBefore(int64_t end, int ratio) { return ratio > 0 ? end / ratio : 0; }

enum class V4CacheFormat { kFp8, kBf16 };

// Sizes of a V4 sequence's state in its byte forms, from the config alone (exact: tested
// against what the cache exports). `c` a valid V4 config (ToV4Config).
// Layer `layer`'s records for tokens [start, end) as ExportLayerRecords gives them: the
// entries block plus, for a CSA layer, the indexer-keys block (0 for a window-only layer).
uint64_t V4LayerRecordBytes(const kernels::v4::V4Config& c, int layer, int64_t start, int64_t end);
// The resume payload for the state at token `end` > 0 (ExportResume; a v4-resume section).
uint64_t V4ResumeBytes(const kernels::v4::V4Config& c, int64_t end);
// The encoded v4-fp8-584 page of tokens [start, end) (ExportPage), with or without its resume
// section.
uint64_t V4PageBytes(const kernels::v4::V4Config& c, int64_t start, int64_t end, bool with_resume);
// The largest page a V4 model publishes: a full page with its resume section (every full
// page with one has this size: 256 closes whole windows of both ratios). InvalidArgument
// for a config that is not a valid V4 one.
absl::StatusOr<uint64_t> V4PublishedPageBytes(const ModelConfig& config);

// Optional record of intermediate values (A/B tests): the attention output (after the
// inverse RoPE) of the last token of the call, [layers][heads][512].
struct V4Trace {
  std::vector<float> attn_out;
};

// Called after layer `layer` has stored its records (window rows, and the entries and indexer
// keys that tokens [start_pos, start_pos + n) close): they are final, and a handoff may send
// them while later layers compute. A non-OK status aborts the forward (the cache is then
// unusable).
using V4LayerHook = std::function<absl::Status(int layer, int64_t start_pos, int64_t n)>;

struct V4PrefillOptions {
  int64_t chunk_tokens = 256;  // tokens per forward chunk (any value gives the same bytes)
  // Keep the resume payload at every 256-token page end the call crosses, and at start_pos
  // when it is a page end not kept yet (the end of an imported page) (FP8 caches), so
  // ExportPage(p, with_resume = true) works for those pages (about 80 KB per layer each).
  bool keep_page_resume = true;
  V4LayerHook on_layer;  // may be empty
};

class V4Model;

class V4Cache {
 public:
  V4CacheFormat format() const { return format_; }
  int64_t num_tokens() const { return num_tokens_; }
  // Pages covering the tokens: ceil(num_tokens / 256).
  int64_t num_pages() const { return (num_tokens_ + kV4PageTokens - 1) / kV4PageTokens; }
  // True when the window and compressor state at num_tokens() are known (everything was
  // computed here, or the last imported page had a resume section).
  bool can_continue() const { return continuable_ && !broken_; }
  // Compressed entries / indexer keys stored for `layer` (0 for window-only layers).
  int64_t num_entries(int layer) const;
  int64_t num_index_keys(int layer) const;
  // Reserves room for the records of `tokens` tokens (capacity only; a sequence that knows its
  // length avoids regrowing the record arrays while pages are imported or tokens computed).
  void Reserve(int64_t tokens);
  // Whether a resume snapshot is kept for the page ending at token `end` (Prefill keeps one
  // at every 256-token page end it crosses, and the current end is always resumable when
  // can_continue()).
  bool HasResumeAt(int64_t end) const;

  // The v4-fp8-584 page of tokens [256p, min(256(p+1), num_tokens)), all layers, with the
  // resume section when with_resume. OutOfRange for p outside [0, num_pages());
  // FailedPrecondition for a kBf16 cache (pages are FP8) or when with_resume and the state
  // at the page end was not kept (see HasResumeAt).
  absl::StatusOr<std::vector<uint8_t>> ExportPage(int64_t p, bool with_resume,
                                                  const BlockKey& key = {},
                                                  const BlockKey& parent = {}) const;

  // The pieces of a page, for a transfer that moves them separately (a prefill→decode
  // handoff, layer by layer). ExportLayerRecords: layer `layer`'s entries closed by tokens
  // [start, end) as one v4-fp8-584 block (empty when none) and, for a CSA layer, their indexer
  // keys as one indexer block (empty otherwise), the bytes ExportPage puts in its sections.
  // ExportResume: the resume payload (the page's v4-resume section) for the state at
  // num_tokens(). FailedPrecondition for a kBf16 or unusable cache, or (ExportResume) one that
  // cannot be continued; OutOfRange for a bad layer or range (0 <= start <= end <=
  // num_tokens()).
  struct LayerBlocks {
    std::vector<uint8_t> entries, keys;
  };
  // Views of layer `layer`'s stored records (kFp8; kernels/v4/v4_record.h split layout),
  // valid until the cache changes; empty for a bad layer or a kBf16 cache.
  struct LayerRecordViews {
    std::span<const uint8_t> entry_tok, entry_sc, key_codes, key_sc;
  };
  LayerRecordViews LayerRecords(int layer) const;
  absl::StatusOr<LayerBlocks> ExportLayerRecords(int layer, int64_t start, int64_t end) const;
  absl::StatusOr<std::string> ExportResume() const;

  // Total bytes the stored compressed entries + indexer keys occupy in their record
  // formats (584 / 132 per record in kFp8, 1024 / 256 in kBf16), window excluded.
  int64_t CompressedBytes() const;
  // The same for one layer (0 for a layer out of range or a window-only layer).
  int64_t LayerCompressedBytes(int layer) const;

 private:
  friend class V4Model;
  struct Layer {
    int ratio = 0;
    // kFp8: split records (kernels/v4/v4_record.h), oldest first: entries 576 + 8 B each,
    // indexer keys 128 + 4 B each, window rows 576 + 8 B each.
    std::vector<uint8_t> entry_tok, entry_sc, key_codes, key_sc, window_tok, window_sc;
    // kBf16: entries n × 512 and indexer keys n × 128, rounded through bf16.
    std::vector<float> entries, index_keys;
    // The window rows as f32, oldest first (kBf16: the rows; kFp8: the attention's working
    // copy of window_tok / window_sc, empty until DecodeWindow after an import).
    std::vector<float> window;
    int64_t window_start = 0;  // position of window row 0
    std::optional<kernels::v4::CompressorStream> main, index;
  };
  V4Cache() = default;
  // The resume payload for the current state (all layers).
  std::string SerializeResume() const;
  int64_t WindowRows(const Layer& L) const;
  // kFp8: rebuilds L.window from its records when it does not hold every row.
  void DecodeWindow(Layer& L) const;
  // Drops window rows older than the last `keep`, once more than `keep` + the window are held
  // (amortised: a decode step does not move the window every token).
  void TrimWindow(Layer& L, int64_t keep) const;
  // Truncates every layer's entries and keys to those closed by tokens [0, end) (an import's
  // rollback) and ends the import.
  void TruncateRecords(int64_t end);

  V4CacheFormat format_ = V4CacheFormat::kFp8;
  int sliding_window_ = 128;
  std::vector<Layer> layers_;
  int64_t num_tokens_ = 0;
  bool continuable_ = true;
  bool broken_ = false;  // an error left the state half-updated: refuse further use
  // >= 0 while an import of tokens [num_tokens_, import_end_) is under way (some layers
  // hold records past num_tokens_): Prefill and Export refuse the cache until FinishImport.
  int64_t import_end_ = -1;
  std::map<int64_t, std::string> resume_at_;  // page end -> resume payload
};

struct V4ModelOptions {
  // Positions a request may reach. 0: min(max_position_embeddings, 1 << 20).
  int64_t max_context = 0;
  // Threads lent to the GEMMs (not owned; must outlive the model; may be null). The bytes
  // written do not depend on it.
  ThreadPool* pool = nullptr;
};

class V4Model {
 public:
  // InvalidArgument / Unimplemented when the config fails ValidateV4ForRuntime or a
  // compressor cannot be built from the weights.
  static absl::StatusOr<std::unique_ptr<V4Model>> Create(ModelWeights weights,
                                                         const V4ModelOptions& options = {});
  // LoadModel(dir) + Create.
  static absl::StatusOr<std::unique_ptr<V4Model>> Load(const std::string& dir,
                                                       const V4ModelOptions& options = {});

  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  const kernels::v4::V4Config& v4_config() const { return v4_; }
  int64_t max_context() const { return max_context_; }

  // An empty cache for this model.
  std::unique_ptr<V4Cache> NewCache(V4CacheFormat format = V4CacheFormat::kFp8) const;

  // Runs tokens at positions [start_pos, start_pos + n), stores their KV state in `cache`
  // and returns the logits of the last token [vocab]. Errors: InvalidArgument for no tokens,
  // an id outside the vocabulary or a cache of another model shape; FailedPrecondition when
  // cache->num_tokens() != start_pos, or the cache cannot be continued (its last imported
  // page had no resume section, or an earlier call failed half-way); OutOfRange past
  // max_context(). Input errors leave the cache unchanged; an internal error mid-forward
  // marks it unusable (FailedPrecondition afterwards).
  absl::StatusOr<std::vector<float>> Prefill(std::span<const int32_t> tokens, int64_t start_pos,
                                             V4Cache* cache, const V4PrefillOptions& options = {},
                                             V4Trace* trace = nullptr) const;
  // Prefill({token}, pos): one decode step.
  absl::StatusOr<std::vector<float>> DecodeStep(int32_t token, int64_t pos, V4Cache* cache,
                                                V4Trace* trace = nullptr) const;

  // Appends page bytes (ExportPage output) for tokens [num_tokens, num_tokens + T) to the
  // cache. The cache's token count must be a multiple of 256 (the page start) and cache a
  // kFp8 one. With a resume section the cache can be continued afterwards; without one it
  // cannot (until a later page with one is imported). Errors: FailedPrecondition for a bf16
  // cache or a misaligned start; InvalidArgument / DataLoss naming the problem for a page
  // that does not decode, is not v4-fp8-584 over this model's layers, has section sizes
  // other than this model's layer mix implies, corrupt records, or a resume section for
  // another position or shape. Nothing changes on error.
  absl::Status ImportPage(std::span<const uint8_t> page, V4Cache* cache) const;
  // The same for a page already decoded and verified (DecodePage), without decoding it again.
  absl::Status ImportPage(const PageView& view, V4Cache* cache) const;

  // An import in pieces (ImportPage's steps; a prefill→decode handoff's, layer by layer) of
  // tokens [cache->num_tokens(), end):
  //  - ImportLayerRecords, once per layer in any order: appends layer `layer`'s entries closed
  //    by those tokens (`entries`, a v4-fp8-584 block of exactly that many records; empty
  //    when none) and, for a CSA layer, their indexer keys (`keys`, an indexer block; empty
  //    for other layers), each record verified while it is copied. The layer is unchanged
  //    on error.
  //  - FinishImport: checks that every layer holds its records up to `end`, applies the
  //    resume payload when `resume` is given (ExportResume / the page's v4-resume
  //    section: window and compressor state at `end`; then the cache can be continued) and
  //    sets num_tokens() = end. Nothing changes on error.
  //  - AbortImport: drops the records imported since the last FinishImport.
  // While an import is under way the cache refuses Prefill and Export (FailedPrecondition).
  // Errors: FailedPrecondition for a kBf16 or unusable cache, end <= num_tokens(), a layer
  // imported twice, or another import's end; InvalidArgument / DataLoss naming the layer and
  // the defect for blocks of the wrong size or corrupt records or resume payloads.
  absl::Status ImportLayerRecords(int layer, int64_t end, std::span<const uint8_t> entries,
                                  std::span<const uint8_t> keys, V4Cache* cache) const;
  absl::Status FinishImport(int64_t end, std::optional<std::span<const uint8_t>> resume,
                            V4Cache* cache) const;
  void AbortImport(V4Cache* cache) const;

 private:
  struct Workspace;
  // One layer's packed projections (model/projection.h); o_a per output group.
  struct LayerProjections {
    Projection q_a, q_b, kv, comp_kv, comp_gate, idx_kv, idx_gate, idx_q_b, idx_w, o_b;
    Projection gate, up, down;
    std::vector<Projection> o_a;
  };
  V4Model() = default;
  absl::Status PackWeights();
  // ImportPage's checks of the cache it appends to.
  absl::Status CheckImportTarget(const V4Cache* cache) const;
  // ImportPage: the page header and its section sizes against this model's layer mix.
  absl::Status CheckPageGeometry(const PageView& view, int64_t start) const;
  struct ResumeLayer;
  // Parses and checks a resume payload for the state at token `end`.
  absl::StatusOr<std::vector<ResumeLayer>> ParseResume(std::span<const uint8_t> r,
                                                       int64_t end) const;
  absl::Status ParseResumeLayer(std::span<const uint8_t> r, size_t* off, int layer, int64_t end,
                                uint64_t window_tokens, ResumeLayer* out) const;
  absl::Status RunChunk(std::span<const int32_t> tokens, int64_t start_pos, V4Cache* cache,
                        Workspace& ws, V4Trace* trace, const V4LayerHook& on_layer) const;
  absl::Status Attention(int layer, int64_t m, int64_t start_pos, V4Cache* cache, Workspace& ws,
                         V4Trace* trace) const;
  // Attention's steps: q and the window kv of the chunk; the compressed entries and indexer
  // keys it closes (and the indexer queries); the selection and softmax per query; the
  // grouped output projection.
  absl::Status ProjectQueryAndKv(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                                 Workspace& ws) const;
  absl::Status AppendCompressed(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                                Workspace& ws) const;
  absl::Status AttendChunk(int layer, int64_t m, int64_t start_pos, V4Cache* cache,
                           Workspace& ws) const;
  // The CSA picks (index_topk per query) of queries [t0, t0 + n) of the chunk.
  absl::Status SelectCsa(int layer, int64_t t0, int64_t n, int64_t start_pos, const V4Cache& cache,
                         const Workspace& ws, std::vector<int32_t>* picks) const;
  absl::Status OutputProjection(int layer, int64_t m, Workspace& ws) const;
  absl::Status Mlp(int layer, int64_t m, Workspace& ws) const;
  absl::StatusOr<std::vector<float>> Logits(const float* x_row) const;
  // Stores rows (512 wide) through the cache's format: kFp8 appends split records to tok / sc
  // and, when values is not null, their dequantized values; kBf16 appends bf16-rounded
  // values.
  absl::Status StoreKv(V4CacheFormat f, const float* rows, int64_t n, std::vector<float>* values,
                       std::vector<uint8_t>* tok, std::vector<uint8_t>* sc) const;
  // The same for 128-wide indexer keys (kFp8: records only).
  absl::Status StoreIndexKeys(V4CacheFormat f, const float* rows, int64_t n,
                              std::vector<float>* values, std::vector<uint8_t>* codes,
                              std::vector<uint8_t>* scales) const;

  ModelWeights w_;
  kernels::v4::V4Config v4_;
  int64_t max_context_ = 0;
  std::vector<std::optional<kernels::v4::Compressor>> main_comp_, index_comp_;
  std::vector<std::vector<double>> layer_freqs_;  // per layer RoPE frequencies (32)
  std::vector<double> compress_freqs_;            // indexer q RoPE (compress θ)
  std::vector<float> ones_;                       // unweighted per-head RMSNorm
  std::vector<LayerProjections> proj_;
  Projection lm_head_;
  MatmulContext mm_;
};

}  // namespace kv::model
