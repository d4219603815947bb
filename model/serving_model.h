// ServingModel: the one interface the Engine (prefill/engine.h) serves a model through, so
// the same request path (keys, lookup, cost plan, page loads, prefill, decode, write-back)
// runs a DeepSeek MLA model (model::Transformer, mla-fp8-656 / mla-bf16-1152 pages of 64
// tokens) and a DeepSeek-V4 hybrid-attention model (model::V4Model, v4-fp8-584 pages of 256
// tokens with optional resume sections, formats.md §4.5 / docs/formats.md §2.7).
//
// What differs between the two, and is hidden here:
//   - Import. An MLA block is its KV bytes (KvCache::AppendBlock). A V4 page is imported whole
//     (V4Model::ImportPage); a sequence continues only from a page that carried a resume
//     section (`can_continue()`), so the Engine imports a cached run only up to its last
//     resumable page (`resumable(view)`).
//   - Export. An MLA block is exported as raw KV bytes on the request thread and encoded into
//     a page later, off the critical path (EncodeExported). A V4 page is finished on the
//     request thread (its resume section is a snapshot of that moment) and EncodeExported
//     passes it through.
//   - Page size. MLA pages have one size. V4 page sizes depend only on the page's token
//     positions (entries closed, window rows, compressor state), so the size of a full page
//     with its resume section follows from the config (model::V4PublishedPageBytes).
//
// Thread-safety: a ServingModel is immutable after creation and may be shared by concurrent
// requests; a ServingSequence belongs to one request (one thread at a time). The model owns
// the underlying runtime; sequences must not outlive it.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "core/thread_pool.h"
#include "kernels/kv_layout.h"
#include "kvstore/block_key.h"
#include "kvstore/page_format.h"
#include "kvstore/page_pool.h"
#include "kvstore/resume_policy.h"
#include "model/config.h"
#include "model/transformer.h"
#include "model/v4_model.h"

namespace kv::model {

// The prefill -> decode handoff of a prompt's state (transport/handoff.h): `slots` slots of
// `slot_bytes`, each checksummed on its own. MLA: one slot per KvCache block of the tokens
// (layer-major records, the last block partly filled). V4: one slot per layer (its compressed
// entries of all the tokens as one v4-fp8-584 block, then for a CSA layer its indexer keys as
// one indexer block; model::V4LayerRecordBytes), then one slot with the resume payload at the
// last token (window rows and compressor states; model::V4ResumeBytes); slot_bytes is the
// largest of them, so integrity is checked per layer. A model without a handoff (0 slots)
// computes prompts on the decode side.
struct HandoffLayout {
  int64_t slots = 0;
  uint64_t slot_bytes = 0;
};

// One piece of a handoff: bytes [offset, offset + bytes.size()) of slot `slot`. `bytes` views
// the sequence (or static zeros), valid until the sequence changes.
struct HandoffPiece {
  int64_t slot = 0;
  uint64_t offset = 0;
  std::span<const uint8_t> bytes;
};

// Called by Prefill after `layer` has written the records of positions [start_pos, +n): they
// are final, and a handoff writer may send them while later layers compute. A non-OK status
// aborts the prefill with that status.
using LayerHook = std::function<absl::Status(int layer, int64_t start_pos, int64_t n)>;

class ServingSequence {
 public:
  virtual ~ServingSequence() = default;
  // Tokens whose KV state the sequence holds.
  virtual int64_t num_tokens() const = 0;
  // Runs tokens at [start_pos, start_pos + n) (start_pos == num_tokens()) in chunks of
  // `chunk_tokens` and returns the last token's logits, calling `on_layer` (may be empty)
  // as each layer of each chunk completes. The runtime's errors (FailedPrecondition when the
  // sequence cannot be continued).
  virtual absl::StatusOr<std::vector<float>> Prefill(std::span<const int32_t> tokens,
                                                     int64_t start_pos, int64_t chunk_tokens,
                                                     const LayerHook& on_layer = {}) = 0;
  // One decode step of `token` at position num_tokens().
  virtual absl::StatusOr<std::vector<float>> DecodeStep(int32_t token) = 0;
  // Appends a decoded, verified page (CheckPage passed) as the next block. Errors of the
  // runtime's import (nothing changes on error).
  virtual absl::Status ImportPage(const PageView& view) = 0;
  // False after importing pages that end without a resume section (V4 only).
  virtual bool can_continue() const = 0;
  // Appends raw KV block bytes (ServingModel::raw_block_bytes() of them) of which the first
  // `tokens` positions are valid: the prefill worker's handoff. Unimplemented for a model
  // without raw blocks (V4); otherwise KvCache::AppendBlock's errors.
  virtual absl::Status AppendRawBlock(std::span<const uint8_t> bytes, int64_t tokens) = 0;
  // The publishable form of full block `b` (see EncodeExported). `with_resume` asks for a V4
  // page's resume section (ignored by MLA). OutOfRange for a block that is not full;
  // FailedPrecondition when the resume state at the block end was not kept.
  virtual absl::StatusOr<std::string> ExportBlock(int64_t b, bool with_resume, const BlockKey& key,
                                                  const BlockKey& parent) const = 0;

  // Handoff, sender side, for a handoff of the first `handed` tokens (HandoffLayout of
  // `handed`). LayerHandoffPieces: where layer `layer`'s state of positions [start, start + n)
  // goes (final once the layer has computed them: after a LayerHook call, or for tokens
  // imported from pages); the same offsets on both sides. FinalHandoffPieces, once every
  // layer's pieces of all `handed` == num_tokens() tokens were taken: what completes the
  // handoff (V4: block padding and the resume payload; MLA: nothing). OutOfRange for
  // positions past num_tokens() or `handed`; Unimplemented for a model without a handoff;
  // FailedPrecondition when the state at `handed` is not known (V4).
  virtual absl::StatusOr<std::vector<HandoffPiece>> LayerHandoffPieces(int layer, int64_t start,
                                                                       int64_t n,
                                                                       int64_t handed) const = 0;
  virtual absl::StatusOr<std::vector<HandoffPiece>> FinalHandoffPieces(int64_t handed) = 0;
  // Handoff, receiver side: appends the state of `tokens` tokens from verified slots (the
  // HandoffLayout of `tokens`), to an empty sequence. InvalidArgument for a wrong slot count
  // or size; the runtime's import errors (nothing is kept on error: the caller starts over).
  virtual absl::Status ImportHandoff(std::span<const std::span<const uint8_t>> slots,
                                     int64_t tokens) = 0;
};

class ServingModel {
 public:
  virtual ~ServingModel() = default;
  virtual const model::ModelConfig& config() const = 0;
  virtual const Digest256& fingerprint() const = 0;
  virtual int64_t max_context() const = 0;
  // The page layout (mla-fp8-656, mla-bf16-1152 or v4-fp8-584) and its page size in tokens.
  virtual const LayoutInfo& layout() const = 0;
  int page_tokens() const { return static_cast<int>(layout().default_page_tokens); }
  // The key space this model's pages are published and looked up in: its fingerprint,
  // layout and page size, over the chain SetKeyChain chose (token ids by default). The
  // namespace is left unset (each request's tenant picks it).
  KeyParams key_params() const;
  // Chooses what block keys chain over: token ids (kTokens), or vLLM's sha256_cbor block
  // hashes with the engines' PYTHONHASHSEED `engine_hash_seed` (kVllmSha256Cbor; then the
  // engine's block size must be page_tokens()). Call once, before serving: not thread-safe
  // against key_params(). ValidateKeyChain's errors.
  absl::Status SetKeyChain(KeyChain chain, std::string engine_hash_seed);
  // Bytes of the largest full page this model publishes (with a resume section for V4).
  virtual uint64_t page_bytes() const = 0;
  // Bytes of one raw KV block (all layers) a prefill worker can hand over; 0 when the model
  // has none (V4: its state is more than per-token records; it moves in per-layer slots).
  virtual int64_t raw_block_bytes() const = 0;
  // The handoff of a prompt's first `tokens` tokens ({0, 0}: this model has none).
  virtual HandoffLayout handoff_layout(int64_t tokens) const = 0;
  // True when pages may carry resume sections (V4): a run of cached pages is usable only up
  // to its last page that has one.
  virtual bool pages_have_resume() const = 0;
  // Whether a sequence can continue right after importing `view`.
  bool resumable(const PageView& view) const { return !pages_have_resume() || view.has_resume(); }
  // An empty sequence for up to `max_tokens` tokens. The runtime's errors.
  virtual absl::StatusOr<std::unique_ptr<ServingSequence>> NewSequence(
      int64_t max_tokens) const = 0;
  // The encoded page of an ExportBlock result (MLA: encodes the KV bytes as a page of every
  // layer; V4: checks and returns the page). InvalidArgument for bytes of the wrong size.
  virtual absl::StatusOr<std::vector<uint8_t>> EncodeExported(const std::string& exported,
                                                              const BlockKey& key,
                                                              const BlockKey& parent) const = 0;

 private:
  KeyChain chain_ = KeyChain::kTokens;
  std::string engine_hash_seed_;
};

// Imports `pages` (verified page bytes of chain blocks first, first + 1, ... where `first` =
// seq->num_tokens() / page_tokens, and `keys` their keys) into `seq`, up to the last page a
// sequence can continue from (every page for MLA): each is checked (CheckPage) and
// imported in order. Returns the pages imported; stops at the first page that fails (a miss
// from there on, logged). When a failure leaves `seq` unable to continue (V4 pages without a
// resume section went in), returns FailedPrecondition: the caller starts a fresh sequence.
absl::StatusOr<int64_t> ImportResumable(const ServingModel& model, ServingSequence* seq,
                                        std::span<const std::span<const uint8_t>> pages,
                                        std::span<const BlockKey> keys, const BlockKey& parent);

// How many of the first `blocks` cached blocks a sequence can be continued after: all of
// them when pages carry no resume sections (MLA), else up to and including the last block
// whose page has one (`has_resume`, per cached block, as TieredStore::Lookup and the page
// pool report it). What a cost plan may count on loading.
int64_t ContinuableBlocks(bool pages_have_resume, const std::vector<bool>& has_resume,
                          int64_t blocks);

// An MLA model served in `layout`. Does not own the transformer, which must outlive it.
absl::StatusOr<std::unique_ptr<ServingModel>> NewMlaServingModel(const model::Transformer* model,
                                                                 kernels::KvLayout layout);
// A V4 model served as v4-fp8-584 pages. Does not own the model, which must outlive it.
// Errors of the probe that measures the page size.
absl::StatusOr<std::unique_ptr<ServingModel>> NewV4ServingModel(const model::V4Model* model);

// One full chain block exported for publishing: ServingSequence::ExportBlock bytes, the
// block's key and parent, and the role the resume policy gives it (kvstore/resume_policy.h).
struct ExportedBlock {
  BlockKey key;
  BlockKey parent;
  PageRole role = PageRole::kInterior;
  std::string bytes;
};
// Exports chain blocks [from, to) of `seq` (`keys` the chain's keys from block 0): each with
// its PublishRole (`shared_blocks`, `reuse_blocks`, turn end at `to`, `checkpoint_pages`)
// and, for a model whose pages carry resume sections, one where KeepsResumeAtPublish. Stops
// at the first block that cannot be exported (logged): children of a missing page could not
// be stored anyway.
std::vector<ExportedBlock> ExportChainBlocks(const ServingModel& model, const ServingSequence& seq,
                                             std::span<const BlockKey> keys, int64_t from,
                                             int64_t to, int64_t shared_blocks,
                                             int64_t reuse_blocks, int64_t checkpoint_pages);
// Encodes exported blocks as pool pages (ServingModel::EncodeExported), in order; stops at
// the first that fails (logged).
std::vector<PoolPage> EncodePoolPages(const ServingModel& model,
                                      std::span<const ExportedBlock> blocks);

// Bytes of the largest full page a model of `config` publishes in `layout` (what
// ServingModel::page_bytes() reports once the model is loaded), from the config alone: the
// router's cost model needs it without loading weights. The errors of an unknown layout.
absl::StatusOr<uint64_t> PublishedPageBytes(const model::ModelConfig& config,
                                            std::string_view layout);

// A model directory loaded for serving: the runtime its config.json names and the serving
// view over it.
struct LoadedModel {
  // Threads lent to the runtime's forward (null with one compute thread); declared first so
  // it outlives the runtime that uses it.
  std::unique_ptr<ThreadPool> pool;
  std::unique_ptr<model::Transformer> mla;  // set for DeepSeek V3-style (MLA) models
  std::unique_ptr<model::V4Model> v4;       // set for DeepSeek-V4 models
  std::unique_ptr<ServingModel> serving;
};

// The page layout a model serves: `requested` when it fits the model, the model's FP8
// default when `requested` is empty (mla-fp8-656; v4-fp8-584 for V4). InvalidArgument naming
// both when the layout does not fit the model (an MLA layout for a V4 model or the reverse)
// or is unknown.
absl::StatusOr<std::string> ServingLayoutName(const model::ModelConfig& config,
                                              std::string_view requested);
// Loads the model in `dir` (config.json + model.safetensors) for serving in `layout`
// (ServingLayoutName), its forward using up to `compute_threads` threads per request (the
// caller's plus a shared pool of compute_threads - 1; 0: one per core). Errors name the
// directory and the failing part.
absl::StatusOr<LoadedModel> LoadServingModel(const std::string& dir, std::string_view layout,
                                             int64_t max_context, int compute_threads = 0);

}  // namespace kv::model
