// engine_hash_tool: a test-only command-line front end to kvstore/engine_block_hash.h and the
// engine-hash key chain of kvstore/block_key.h, for the Python cross-checks and benchmark.
//
//   engine_hash_tool              reads one JSON request per stdin line, writes one JSON
//                                 answer per line (see Handle); errors become {"error": msg}.
//   engine_hash_tool bench --tokens N --block-size B --runs R
//                                 times EngineBlockHashes over N random tokens (median of R
//                                 runs) and prints one JSON object.
//
// Single-threaded; owns nothing beyond the process.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/block_key.h"
#include "kvstore/engine_block_hash.h"
#include "nlohmann/json.hpp"

namespace kv {
namespace {

using nlohmann::json;

absl::StatusOr<Digest256> DigestHex(const json& v, std::string_view what) {
  if (!v.is_string()) return absl::InvalidArgumentError(kv::StrCat(what, ": want a hex string"));
  auto k = BlockKey::FromHex(v.get<std::string>());
  if (!k.ok()) return absl::InvalidArgumentError(kv::StrCat(what, ": ", k.status().message()));
  return k->bytes;
}

absl::StatusOr<std::vector<int64_t>> Tokens(const json& v) {
  if (!v.is_array()) return absl::InvalidArgumentError("tokens: want an array");
  std::vector<int64_t> out;
  out.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const json& t = v[i];
    if (t.is_number_unsigned() && t.get<uint64_t>() > uint64_t{INT64_MAX}) {
      return absl::InvalidArgumentError(
          kv::StrCat("token id at index ", i, " is ", t.get<uint64_t>(), "; ids must fit int64"));
    }
    if (!t.is_number_integer()) {
      return absl::InvalidArgumentError(kv::StrCat("token id at index ", i, " is not an integer"));
    }
    out.push_back(t.get<int64_t>());
  }
  return out;
}

absl::StatusOr<EngineHashExtras> Extras(const json& req) {
  EngineHashExtras x;
  if (req.contains("lora_name") && !req["lora_name"].is_null()) {
    x.lora_name = req["lora_name"].get<std::string>();
  }
  x.cache_salt = req.value("cache_salt", std::string());
  for (const json& m : req.value("mm", json::array())) {
    if (!m.is_array() || m.size() != 3) {
      return absl::InvalidArgumentError("mm: want [identifier, offset, length] items");
    }
    x.mm_items.push_back({m[0].get<std::string>(), m[1].get<int64_t>(), m[2].get<int64_t>()});
  }
  for (const json& h : req.value("embed_hashes", json::array())) {
    ASSIGN_OR_RETURN(Digest256 d, DigestHex(h, "embed_hashes"));
    x.prompt_embed_hashes.push_back(d);
  }
  return x;
}

// {"fingerprint", "layout", "page_tokens", "namespace", "parent"?} -> kvstrata keys.
absl::StatusOr<json> Keys(const json& spec, const std::vector<Digest256>& hashes) {
  KeyParams p;
  ASSIGN_OR_RETURN(p.model_fingerprint, DigestHex(spec["fingerprint"], "key.fingerprint"));
  p.layout_id = spec["layout"].get<std::string>();
  p.page_tokens = spec["page_tokens"].get<uint32_t>();
  ASSIGN_OR_RETURN(p.ns, KeyNamespace::Parse(spec["namespace"].get<std::string>()));
  std::optional<BlockKey> parent;
  if (spec.contains("parent") && !spec["parent"].is_null()) {
    ASSIGN_OR_RETURN(Digest256 d, DigestHex(spec["parent"], "key.parent"));
    parent = BlockKey{d};
  }
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys, DeriveBlockKeysFromEngineHashes(p, hashes, parent));
  json out = json::array();
  for (const BlockKey& k : keys) out.push_back(k.Hex());
  return out;
}

absl::StatusOr<json> Handle(const json& req) {
  EngineHashParams p;
  p.seed = req.at("seed").get<std::string>();
  p.block_size = req.at("block_size").get<uint32_t>();
  p.start_token = req.value("start_token", int64_t{0});
  if (req.contains("parent") && !req["parent"].is_null()) {
    ASSIGN_OR_RETURN(p.parent, DigestHex(req["parent"], "parent"));
  }
  ASSIGN_OR_RETURN(std::vector<int64_t> tokens, Tokens(req.at("tokens")));
  ASSIGN_OR_RETURN(EngineHashExtras x, Extras(req));
  ASSIGN_OR_RETURN(Digest256 none, EngineNoneHash(p.seed));
  ASSIGN_OR_RETURN(std::vector<Digest256> hashes, EngineBlockHashes(p, tokens, x));
  json out = {{"none_hash", ToHex(none)}, {"hashes", json::array()}, {"preimages", json::array()}};
  for (size_t b = 0; b < hashes.size(); ++b) {
    out["hashes"].push_back(ToHex(hashes[b]));
    ASSIGN_OR_RETURN(std::string pre, EngineBlockPreimage(p, tokens, x, b));
    out["preimages"].push_back(ToHex(pre.data(), pre.size()));
  }
  if (req.contains("key")) {
    ASSIGN_OR_RETURN(out["keys"], Keys(req["key"], hashes));
  }
  return out;
}

int Serve() {
  std::string line;
  while (std::getline(std::cin, line)) {
    json answer;
    try {
      absl::StatusOr<json> r = Handle(json::parse(line));
      answer = r.ok() ? *r : json{{"error", std::string(r.status().message())}};
    } catch (const json::exception& e) {  // malformed request: an error answer, not a crash
      answer = json{{"error", kv::StrCat("bad request: ", e.what())}};
    }
    std::cout << answer.dump() << "\n" << std::flush;
  }
  return 0;
}

int Bench(int argc, char** argv) {
  int64_t tokens = 1000000, block = 16, runs = 5;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int64_t v = std::atoll(argv[i + 1]);
    if (flag == "--tokens") tokens = v;
    if (flag == "--block-size") block = v;
    if (flag == "--runs") runs = v;
  }
  if (tokens < 1 || block < 1 || block > 65536 || runs < 1) {
    std::fprintf(stderr, "bench: need --tokens >= 1, --block-size 1..65536, --runs >= 1\n");
    return 2;
  }
  std::mt19937 rng(20261206);
  std::uniform_int_distribution<int64_t> dist(0, 151935);  // a Qwen-sized vocabulary
  std::vector<int64_t> t(tokens);
  for (auto& v : t) v = dist(rng);
  EngineHashParams p{.seed = "0", .block_size = static_cast<uint32_t>(block)};
  std::vector<double> ms;
  size_t blocks = 0;
  for (int64_t r = 0; r <= runs; ++r) {  // run 0 warms up
    const auto t0 = std::chrono::steady_clock::now();
    auto h = EngineBlockHashes(p, t);
    const auto t1 = std::chrono::steady_clock::now();
    if (!h.ok()) {
      std::fprintf(stderr, "bench: %s\n", std::string(h.status().message()).c_str());
      return 1;
    }
    blocks = h->size();
    if (r > 0) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double median = ms[ms.size() / 2];
  const double hashed = static_cast<double>(blocks) * block;
  std::cout << json{{"tokens", tokens},    {"block_size", block},
                    {"blocks", blocks},    {"runs", runs},
                    {"median_ms", median}, {"ns_per_token", median * 1e6 / hashed}}
                   .dump()
            << "\n";
  return 0;
}

}  // namespace
}  // namespace kv

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "bench") == 0) return kv::Bench(argc, argv);
  if (argc >= 2) {
    std::fprintf(stderr, "usage: engine_hash_tool [bench --tokens N --block-size B --runs R]\n");
    return 2;
  }
  return kv::Serve();
}
