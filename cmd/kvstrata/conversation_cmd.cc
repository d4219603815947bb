// `kvstrata conversation`: the demo behind `make run` at this stage. It builds a 3-turn
// sample agent conversation (shared system prompt + tool schema, user turns, tool results),
// tokenizes it as bytes (token id = byte value), derives its block keys under a tenant (and
// the system prompt's under `shared`), fills each page with SYNTHETIC KV (seeded
// pseudo-random latents, quantized by the real record encoder, until the model lands),
// writes the pages to DIR/<keyhex>.page and prints the prefix reuse per turn.
//
//   kvstrata conversation --out=DIR [--layers=4] [--layout=mla-fp8-656] [--tenant=acme]
//                         [--seed=1] [--json]
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/hash.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kernels/kv_layout.h"
#include "kernels/mla_record.h"
#include "kvstore/block_key.h"
#include "kvstore/page_format.h"
#include "nlohmann/json.hpp"

namespace kv::cmd {
namespace {

constexpr std::string_view kSystemPrompt =
    "<|system|>You are Strata, an operations agent for a storage platform. Answer precisely, "
    "cite the tool output you rely on, and never guess a number you can look up. When a task "
    "needs data, call a tool, wait for its result, then continue. Keep answers short; use "
    "tables for comparisons. If a tool fails, say so and try a different approach.\n"
    "<|tools|>[{\"name\":\"query_metrics\",\"description\":\"Read a Prometheus metric over a "
    "time range\",\"parameters\":{\"type\":\"object\",\"properties\":{\"expr\":{\"type\":"
    "\"string\"},\"range\":{\"type\":\"string\",\"enum\":[\"1h\",\"6h\",\"24h\"]}},\"required\":"
    "[\"expr\"]}},{\"name\":\"list_nodes\",\"description\":\"List cluster nodes with role, tier "
    "capacity and health\",\"parameters\":{\"type\":\"object\",\"properties\":{\"role\":{\"type\":"
    "\"string\",\"enum\":[\"router\",\"prefill\",\"decode\",\"store\"]}}}},{\"name\":"
    "\"read_runbook\",\"description\":\"Fetch a runbook section by title\",\"parameters\":{"
    "\"type\":\"object\",\"properties\":{\"title\":{\"type\":\"string\"}},\"required\":"
    "[\"title\"]}}]\n";

// Each turn appends to the conversation so far (the previous turn's whole history is a
// prefix of the next): this is what makes an agent's next turn a cache hit.
constexpr std::string_view kTurns[] = {
    "<|user|>The p99 time-to-first-token on the decode pool doubled since this morning. "
    "Which nodes are involved, and is the host tier running out of space?\n<|assistant|>",
    "<|call|>list_nodes{\"role\":\"decode\"}\n<|result|>decode-0 healthy host 61%/512GiB "
    "nvme 40%/7TiB; decode-1 healthy host 97%/512GiB nvme 88%/7TiB; decode-2 degraded host "
    "99%/512GiB nvme 91%/7TiB (evictions 4.1k/s)\n<|assistant|>decode-1 and decode-2 are "
    "nearly full; decode-2 is evicting 4.1k pages per second.\n<|user|>Show the eviction rate "
    "over the last 6 hours and tell me when it started.\n<|assistant|>",
    "<|call|>query_metrics{\"expr\":\"rate(kvstrata_tier_evictions_total{node=~\\\"decode-"
    "[12]\\\"}[5m])\",\"range\":\"6h\"}\n<|result|>decode-1: 0.2k/s until 08:40, 2.9k/s "
    "after; decode-2: 0.3k/s until 08:35, 4.1k/s after\n<|assistant|>Evictions jumped at "
    "08:35-08:40 on both nodes.\n<|user|>Find the runbook for host-tier pressure and "
    "summarise the first three steps.\n<|assistant|>",
};

std::vector<uint32_t> ByteTokens(std::string_view text) {
  std::vector<uint32_t> t;
  t.reserve(text.size());
  for (unsigned char c : text) t.push_back(c);
  return t;
}

// splitmix64: a tiny deterministic generator for the synthetic payload.
struct SplitMix {
  uint64_t s;
  uint64_t Next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  float Uniform(float lo, float hi) {
    return lo + (hi - lo) * static_cast<float>(Next() >> 40) / static_cast<float>(1 << 24);
  }
};

struct Options {
  std::string out;
  int64_t layers = 4;
  std::string layout = "mla-fp8-656";
  std::string tenant = "acme";
  int64_t seed = 1;
  bool json = false;
};

// Synthetic KV for one block: per layer, per token a 512-d latent and a 64-d rope vector of
// seeded pseudo-random values (seed, key, layer), encoded by the real record encoder.
absl::StatusOr<std::vector<uint8_t>> SyntheticKv(const Options& o, const LayoutInfo& layout,
                                                 const BlockKey& key, uint32_t tokens) {
  ASSIGN_OR_RETURN(kernels::KvLayout kl, kernels::ParseLayout(layout.name));
  std::vector<uint8_t> kv(uint64_t{tokens} * o.layers * layout.record_bytes);
  std::vector<float> rows(size_t{tokens} * kernels::kMlaKeyDim);
  uint64_t key_seed = 0;
  for (int i = 0; i < 8; ++i) key_seed |= uint64_t{key.bytes[i]} << (8 * i);
  for (int64_t l = 0; l < o.layers; ++l) {
    SplitMix rng{static_cast<uint64_t>(o.seed) ^ key_seed ^ (uint64_t(l) << 48)};
    for (size_t t = 0; t < tokens; ++t) {
      float* row = &rows[t * kernels::kMlaKeyDim];
      for (int j = 0; j < kernels::kMlaLatentDim; ++j) row[j] = rng.Uniform(-4.f, 4.f);
      for (int j = 0; j < kernels::kMlaRopeDim; ++j) row[512 + j] = rng.Uniform(-1.f, 1.f);
    }
    kernels::MlaSourceF32 src{rows.data(), kernels::kMlaKeyDim,
                              rows.data() + kernels::kMlaLatentDim, kernels::kMlaKeyDim};
    uint8_t* dst = kv.data() + uint64_t(l) * tokens * layout.record_bytes;
    RETURN_IF_ERROR(kernels::EncodeMlaRecords(kl, src, tokens, dst, layout.record_bytes));
  }
  return kv;
}

// Encodes and writes one page (temp file + rename, so a reader never sees half a page).
// Returns the page size.
absl::StatusOr<uint64_t> WritePage(const Options& o, const LayoutInfo& layout, const BlockKey& key,
                                   const BlockKey& parent, uint32_t tokens) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> kv, SyntheticKv(o, layout, key, tokens));
  PageSpec spec{layout.id, key, parent, tokens, 0, static_cast<uint32_t>(o.layers)};
  ASSIGN_OR_RETURN(std::vector<uint8_t> page, EncodePage(spec, kv));
  const std::string path = o.out + "/" + key.Hex() + ".page";
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(page.data()), page.size());
    if (!f.good()) return absl::InternalError(kv::StrCat("cannot write ", tmp));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return absl::InternalError(kv::StrCat("rename ", tmp, ": ", ec.message()));
  return page.size();
}

struct ChainResult {
  size_t tokens = 0;
  std::vector<BlockKey> keys;
  size_t reused = 0;
  uint64_t page_bytes = 0;
};

// Derives `tokens`' keys and writes a page for every key not already in `written`.
absl::StatusOr<ChainResult> WriteChain(const Options& o, const LayoutInfo& layout,
                                       const KeyParams& params, const std::vector<uint32_t>& tokens,
                                       absl::flat_hash_set<BlockKey>* written) {
  ChainResult r;
  r.tokens = tokens.size();
  ASSIGN_OR_RETURN(r.keys, DeriveBlockKeys(params, tokens));
  for (size_t i = 0; i < r.keys.size(); ++i) {
    if (!written->insert(r.keys[i]).second) {
      ++r.reused;
      continue;
    }
    const BlockKey parent = i == 0 ? BlockKey::Zero() : r.keys[i - 1];
    ASSIGN_OR_RETURN(uint64_t bytes, WritePage(o, layout, r.keys[i], parent, params.page_tokens));
    r.page_bytes += bytes;
  }
  return r;
}

nlohmann::json ChainJson(const ChainResult& r) {
  nlohmann::json keys = nlohmann::json::array();
  for (const BlockKey& k : r.keys) keys.push_back(k.Hex());
  return {{"tokens", r.tokens},         {"full_blocks", r.keys.size()},
          {"reused_blocks", r.reused},  {"new_blocks", r.keys.size() - r.reused},
          {"page_bytes", r.page_bytes}, {"keys", keys}};
}

void PrintTable(const Options& o, const LayoutInfo& layout, const nlohmann::json& doc) {
  std::printf(
      "SYNTHETIC KV: page payloads are seeded pseudo-random latents (seed %lld), not "
      "model output\n",
      static_cast<long long>(o.seed));
  std::printf("layout %.*s, %lld layers, %u tokens/block, tenant %s, byte tokenizer\n\n",
              static_cast<int>(layout.name.size()), layout.name.data(),
              static_cast<long long>(o.layers), layout.default_page_tokens, o.tenant.c_str());
  std::printf("%-6s %8s %12s %8s %6s %12s\n", "turn", "tokens", "full blocks", "reused", "new",
              "page bytes");
  for (const auto& t : doc["turns"]) {
    std::printf("%-6d %8zu %12zu %8zu %6zu %12llu\n", t["turn"].get<int>(),
                t["tokens"].get<size_t>(), t["full_blocks"].get<size_t>(),
                t["reused_blocks"].get<size_t>(), t["new_blocks"].get<size_t>(),
                static_cast<unsigned long long>(t["page_bytes"].get<uint64_t>()));
  }
  const auto& s = doc["shared"];
  std::printf("%-6s %8zu %12zu %8zu %6zu %12llu   (system prompt + tools, namespace shared)\n",
              "shared", s["tokens"].get<size_t>(), s["full_blocks"].get<size_t>(),
              s["reused_blocks"].get<size_t>(), s["new_blocks"].get<size_t>(),
              static_cast<unsigned long long>(s["page_bytes"].get<uint64_t>()));
  std::printf("\nwrote %zu pages to %s\n", doc["pages"].get<size_t>(), o.out.c_str());
}

absl::Status Run(const Options& o) {
  if (o.out.empty()) return absl::InvalidArgumentError("--out=DIR is required");
  if (o.layers < 1 || o.layers > 128) {
    return absl::InvalidArgumentError(kv::StrCat("--layers must be 1..128, got ", o.layers));
  }
  ASSIGN_OR_RETURN(LayoutInfo layout, LookupLayout(std::string_view(o.layout)));
  // The record encoder must know the layout (v4-fp8-584 is reserved): check before writing.
  RETURN_IF_ERROR(kernels::ParseLayout(layout.name).status());
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) return absl::InternalError(kv::StrCat("cannot create ", o.out, ": ", ec.message()));
  KeyParams params;
  params.model_fingerprint = Sha256Of("kvstrata sample conversation model (synthetic KV)");
  params.layout_id = std::string(layout.name);
  params.page_tokens = layout.default_page_tokens;
  ASSIGN_OR_RETURN(params.ns, KeyNamespace::Tenant(o.tenant));

  absl::flat_hash_set<BlockKey> written;
  nlohmann::json doc = {{"kv_payload", "synthetic (seeded pseudo-random latents)"},
                        {"layout", std::string(layout.name)},
                        {"layers", o.layers},
                        {"page_tokens", params.page_tokens},
                        {"turns", nlohmann::json::array()}};
  std::string text(kSystemPrompt);
  for (size_t t = 0; t < std::size(kTurns); ++t) {
    text += kTurns[t];
    ASSIGN_OR_RETURN(ChainResult r, WriteChain(o, layout, params, ByteTokens(text), &written));
    nlohmann::json j = ChainJson(r);
    j["turn"] = t + 1;
    doc["turns"].push_back(j);
  }
  KeyParams shared = params;
  shared.ns = KeyNamespace::Shared();
  ASSIGN_OR_RETURN(ChainResult s,
                   WriteChain(o, layout, shared, ByteTokens(kSystemPrompt), &written));
  doc["shared"] = ChainJson(s);
  doc["pages"] = written.size();
  doc["out"] = o.out;
  if (o.json) {
    std::printf("%s\n", doc.dump(1).c_str());
  } else {
    PrintTable(o, layout, doc);
  }
  return absl::OkStatus();
}

int RunConversation(int argc, char** argv) {
  Options o;
  FlagSet flags("kvstrata conversation");
  flags.String("out", &o.out, "directory for the page files (<keyhex>.page)");
  flags.Int("layers", &o.layers, "layers per page");
  flags.String("layout", &o.layout, "KV layout: mla-fp8-656 or mla-bf16-1152");
  flags.String("tenant", &o.tenant, "tenant namespace of the conversation");
  flags.Int("seed", &o.seed, "seed of the synthetic KV payload");
  flags.Bool("json", &o.json, "print the result as JSON");
  absl::Status s = flags.Parse(argc, argv);
  if (s.ok() && flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (s.ok()) s = Run(o);
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata conversation: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace

KV_REGISTER_COMMAND(conversation, "sample agent conversation -> block keys -> pages (demo)",
                    RunConversation);

}  // namespace kv::cmd
