// Transformer: the reference forward pass of a DeepSeek MLA model (formats.md §1.2–1.4) on
// the CPU, over paged KV (model/kv_cache.h).
//
// Per layer and token: h = RMSNorm(x); q = W_q h (or W_qb RMSNorm(W_qa h)); [c̃ | k̃_R] =
// W_kva h; c = RMSNorm(c̃); k_R = RoPE(k̃_R) (YaRN, interleaved pairs); the record [c | k_R]
// is written into the page through the paged scatter (kernels/paged_kv.h, in the cache's
// layout: mla-fp8-656 quantized or mla-bf16-1152). Attention is absorbed (§1.4): q̃_h =
// W_UK_hᵀ q_C_h, scores over the 576-d cached keys *read back from the pages*, values the
// 512-d latent, then W_UV_h and W_o. SwiGLU MLP. Final RMSNorm and lm_head give the logits.
//
// Exactness contract. A token's KV records and logits depend only on the token ids before it
// and the weights, not on how the prompt was split into Prefill calls or chunks, and not on
// whether its KV was computed here or imported as a page, and not on the thread count, the CPU
// or the installed BLAS: attention always reads the dequantized records from the pages
// (including the current chunk's, written first), every matrix product is the batch-invariant
// GEMM over weights packed at Create (model/projection.h, kernels/gemm.h), the attention
// kernel is per-query (kernels/mla_attention.h), and exp/sin/cos come from
// kernels/portable_math.h. DecodeStep(t, p) is Prefill({t}, p) exactly, computing one row.
//
// A Transformer is immutable after Create() and safe to use from several threads at once
// with different KvCaches. The caller owns the KvCache and the returned vectors. Create moves
// the projection matrices into packed form: weights() keeps the config, fingerprint,
// embeddings and norms, and its projection vectors are empty (unless blas_baseline).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/kv_layout.h"
#include "kernels/rope.h"
#include "model/kv_cache.h"
#include "model/projection.h"
#include "model/weights.h"

namespace kv::model {

struct TransformerOptions {
  // Positions the RoPE table covers; requests past it are refused. 0: min(config
  // max_position_embeddings, 32768).
  int64_t max_context = 0;
  // Threads lent to the GEMMs and attention (not owned; must outlive the Transformer; may be
  // null). The bytes written do not depend on it.
  ThreadPool* pool = nullptr;
  // Benchmarks only (kvstrata bench prefill): the pre-#13 forward, projections through
  // OpenBLAS 16-row tiles (model/projection.h) and the OpenBLAS attention
  // (kernels/blas.h). Not batch-invariant on every CPU.
  bool blas_baseline = false;
};

struct PrefillOptions {
  int64_t chunk_tokens = 256;  // tokens per forward chunk (any value gives the same bytes)
  // Called after each layer of each chunk has written its KV records: the records of
  // `layer` for positions [start_pos, start_pos + n) are final (not yet committed) and may be
  // read through KvCache::BlockView, e.g. to stream them to a decode worker while later
  // layers compute. A non-OK status aborts the forward with that status. Runs on the
  // calling thread.
  std::function<absl::Status(int layer, int64_t start_pos, int64_t n)> on_layer;
};

// Optional per-step record of intermediate values (for accuracy A/B tests).
struct ForwardTrace {
  // The absorbed attention output ō (512-d latent per head) of the last token, per layer:
  // [layers][heads][512].
  std::vector<float> attn_latent;
};

class Transformer {
 public:
  // InvalidArgument / Unimplemented when the config fails ValidateForRuntime or the rope
  // parameters are invalid.
  static absl::StatusOr<std::unique_ptr<Transformer>> Create(
      ModelWeights weights, const TransformerOptions& options = {});
  // LoadModel(dir) + Create.
  static absl::StatusOr<std::unique_ptr<Transformer>> Load(const std::string& dir,
                                                           const TransformerOptions& options = {});

  const ModelConfig& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  float softmax_scale() const { return softmax_scale_; }
  int64_t max_context() const { return rope_.max_positions; }

  // A KvCache for this model holding up to max_tokens tokens in `layout`.
  absl::StatusOr<std::unique_ptr<KvCache>> NewCache(kernels::KvLayout layout,
                                                    int64_t max_tokens) const;

  // Runs tokens at positions [start_pos, start_pos + n), writes their KV records into `kv`
  // (reserving blocks), commits them, and returns the logits of the last token [vocab].
  // Errors: InvalidArgument for no tokens, an id outside the vocabulary, or a cache of
  // another layer count; FailedPrecondition when kv->num_tokens() != start_pos; OutOfRange
  // past max_context(); ResourceExhausted when the cache is full. On error the cache is
  // truncated back to start_pos.
  absl::StatusOr<std::vector<float>> Prefill(std::span<const int32_t> tokens, int64_t start_pos,
                                             KvCache* kv, const PrefillOptions& options = {},
                                             ForwardTrace* trace = nullptr) const;

  // One decode step: appends `token` at position `pos` (== kv->num_tokens()) and returns
  // the next-token logits, reading the cache through the paged decode attention. Same
  // errors as Prefill.
  absl::StatusOr<std::vector<float>> DecodeStep(int32_t token, int64_t pos, KvCache* kv,
                                                ForwardTrace* trace = nullptr) const;

  // Floating-point operations of a forward over n tokens starting at start_pos that ends
  // with one lm_head row: 2 per multiply-add in every projection, the absorbed attention
  // (576-d scores + 512-d values over each query's causal context, per head) and the W_UK /
  // W_UV absorptions. Elementwise work (norms, RoPE, softmax, SwiGLU) is not counted.
  static double ForwardFlops(const ModelConfig& c, int64_t start_pos, int64_t n);

 private:
  struct Workspace;
  // The packed projections of one layer; uk/uv per head (W_UK_h as [nope×512], W_UV_h as
  // nn.Linear [v×512]).
  struct LayerProjections {
    Projection q, q_a, q_b, kv_a, o, gate, up, down;
    std::vector<Projection> uk, uv;
  };
  Transformer(ModelWeights weights, kernels::RopeTable rope, float softmax_scale);
  absl::Status PackWeights(const TransformerOptions& options);
  absl::StatusOr<std::vector<float>> Run(std::span<const int32_t> tokens, int64_t start_pos,
                                         const PrefillOptions* options, KvCache* kv, int64_t chunk,
                                         bool decode, ForwardTrace* trace) const;
  absl::Status RunChunk(std::span<const int32_t> tokens, int64_t start_pos, KvCache* kv,
                        const PrefillOptions* options, bool decode, Workspace& ws,
                        ForwardTrace* trace) const;
  absl::Status ProjectQkv(int layer, int64_t m, Workspace& ws) const;
  absl::Status Attention(int layer, int64_t m, int64_t start_pos, KvCache* kv, bool decode,
                         Workspace& ws, ForwardTrace* trace) const;
  absl::Status Mlp(int layer, int64_t m, Workspace& ws) const;
  absl::StatusOr<std::vector<float>> Logits(const float* x_row) const;

  ModelWeights w_;
  kernels::RopeTable rope_;
  float softmax_scale_;
  std::vector<LayerProjections> proj_;
  Projection lm_head_;
  MatmulContext mm_;
};

}  // namespace kv::model
