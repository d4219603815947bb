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
// records) and attention reads the dequantized values back; kBf16 rounds them to bf16 (the
// A/B reference). Compressors and the indexer see full-precision projections.
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

enum class V4CacheFormat { kFp8, kBf16 };

// Optional record of intermediate values (A/B tests): the attention output (after the
// inverse RoPE) of the last token of the call, [layers][heads][512].
struct V4Trace {
  std::vector<float> attn_out;
};

struct V4PrefillOptions {
  int64_t chunk_tokens = 256;  // tokens per forward chunk (any value gives the same bytes)
  // Keep the resume payload at every 256-token page end the call crosses (FP8 caches), so
  // ExportPage(p, with_resume = true) works for those pages (about 80 KB per layer each).
  bool keep_page_resume = true;
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

  // Total bytes the stored compressed entries + indexer keys occupy in their record
  // formats (584 / 132 per record in kFp8, 1024 / 256 in kBf16), window excluded.
  int64_t CompressedBytes() const;
  // The same for one layer (0 for a layer out of range or a window-only layer).
  int64_t LayerCompressedBytes(int layer) const;

 private:
  friend class V4Model;
  struct Layer {
    int ratio = 0;
    std::vector<float> entries, index_keys;       // dequantized: n × 512, n × 128
    std::vector<uint8_t> entry_recs, index_recs;  // kFp8: n × 584 (576 | 8), n × 132
    std::vector<float> window;                    // dequantized rows, oldest first
    std::vector<uint8_t> window_recs;             // kFp8: 584 per row
    int64_t window_start = 0;                     // position of window row 0
    std::optional<kernels::v4::CompressorStream> main, index;
  };
  V4Cache() = default;
  // The resume payload for the current state (all layers).
  std::string SerializeResume() const;

  V4CacheFormat format_ = V4CacheFormat::kFp8;
  int sliding_window_ = 128;
  std::vector<Layer> layers_;
  int64_t num_tokens_ = 0;
  bool continuable_ = true;
  bool broken_ = false;  // an error left the state half-updated: refuse further use
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
  absl::Status RunChunk(std::span<const int32_t> tokens, int64_t start_pos, V4Cache* cache,
                        Workspace& ws, V4Trace* trace) const;
  absl::Status Attention(int layer, int64_t m, int64_t start_pos, V4Cache* cache, Workspace& ws,
                         V4Trace* trace) const;
  absl::Status Mlp(int layer, int64_t m, Workspace& ws) const;
  absl::StatusOr<std::vector<float>> Logits(const float* x_row) const;
  // Stores rows (dim wide) through the cache's format: appends records (kFp8) and the
  // dequantized values.
  absl::Status StoreKv(V4CacheFormat f, const float* rows, int64_t n, std::vector<float>* values,
                       std::vector<uint8_t>* recs) const;
  absl::Status StoreIndexKeys(V4CacheFormat f, const float* rows, int64_t n,
                              std::vector<float>* values, std::vector<uint8_t>* recs) const;

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
