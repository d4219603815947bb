// `kvstrata keys`: derives the block keys of a token sequence (docs/formats.md §1), or
// checks a file of test vectors against this build.
//
//   kvstrata keys --model-fingerprint=HEX --layout=mla-fp8-656 --page-tokens=64
//                 --namespace=tenant:acme --tokens=1,2,3,... [--parent=HEX] [--json]
//   kvstrata keys ... --text="hello"          (byte tokens: token id = byte value)
//   kvstrata keys --vectors=kvstore/testdata/block_key_vectors.json
#include <charconv>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "cmd/kvstrata/command.h"
#include "core/config.h"
#include "core/status_macros.h"
#include "core/strings.h"
#include "kvstore/block_key.h"
#include "kvstore/page_format.h"
#include "nlohmann/json.hpp"

namespace kv::cmd {
namespace {

struct KeysFlags {
  std::string fingerprint;
  std::string layout = "mla-fp8-656";
  int64_t page_tokens = 0;
  std::string ns;
  std::string tokens;
  std::string text;
  std::string parent;
  std::string vectors;
  bool json = false;
};

// "1, 2,3" -> ids. Empty string -> no tokens.
absl::StatusOr<std::vector<uint32_t>> ParseTokenList(std::string_view s) {
  std::vector<int64_t> wide;
  size_t pos = 0;
  while (pos < s.size()) {
    size_t comma = s.find(',', pos);
    if (comma == std::string_view::npos) comma = s.size();
    std::string_view item = s.substr(pos, comma - pos);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    int64_t v = 0;
    auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    if (item.empty() || ec != std::errc() || end != item.data() + item.size()) {
      return absl::InvalidArgumentError(
          kv::StrCat("--tokens: item ", wide.size(), " ('", item, "') is not an integer token id"));
    }
    wide.push_back(v);
    pos = comma + 1;
  }
  return ToTokenIds(wide);
}

absl::StatusOr<KeyParams> ParamsFrom(const KeysFlags& f) {
  if (f.fingerprint.empty()) {
    return absl::InvalidArgumentError("--model-fingerprint is required (64 hex characters)");
  }
  if (f.ns.empty()) {
    return absl::InvalidArgumentError(
        "--namespace is required: a tenant name, tenant:NAME, or shared");
  }
  KeyParams p;
  auto fp = BlockKey::FromHex(f.fingerprint);
  if (!fp.ok()) return Annotate(fp.status(), "--model-fingerprint");
  p.model_fingerprint = fp->bytes;
  ASSIGN_OR_RETURN(LayoutInfo layout, LookupLayout(std::string_view(f.layout)));
  p.layout_id = std::string(layout.name);
  if (f.page_tokens < 0 || f.page_tokens > kMaxKeyPageTokens) {
    return absl::InvalidArgumentError(
        kv::StrCat("--page-tokens must be 1..", kMaxKeyPageTokens, ", got ", f.page_tokens));
  }
  p.page_tokens =
      f.page_tokens == 0 ? layout.default_page_tokens : static_cast<uint32_t>(f.page_tokens);
  auto ns = KeyNamespace::Parse(f.ns);
  if (!ns.ok()) return Annotate(ns.status(), "--namespace");
  p.ns = *ns;
  return p;
}

absl::StatusOr<std::vector<uint32_t>> TokensFrom(const KeysFlags& f) {
  if (!f.text.empty() && !f.tokens.empty()) {
    return absl::InvalidArgumentError("give --tokens or --text, not both");
  }
  if (!f.text.empty()) {
    std::vector<uint32_t> t;
    for (unsigned char c : f.text) t.push_back(c);
    return t;
  }
  return ParseTokenList(f.tokens);
}

absl::Status DeriveAndPrint(const KeysFlags& f) {
  ASSIGN_OR_RETURN(KeyParams p, ParamsFrom(f));
  ASSIGN_OR_RETURN(std::vector<uint32_t> tokens, TokensFrom(f));
  std::optional<BlockKey> parent;
  if (!f.parent.empty()) {
    auto k = BlockKey::FromHex(f.parent);
    if (!k.ok()) return Annotate(k.status(), "--parent");
    parent = *k;
  }
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys, DeriveBlockKeys(p, tokens, parent));
  if (!f.json) {
    if (keys.empty()) {
      std::fprintf(stderr, "kvstrata keys: no full block (%zu tokens, %u per block)\n",
                   tokens.size(), p.page_tokens);
    }
    for (const BlockKey& k : keys) std::printf("%s\n", k.Hex().c_str());
    return absl::OkStatus();
  }
  nlohmann::json out = {{"model_fingerprint", ToHex(p.model_fingerprint)},
                        {"layout", p.layout_id},
                        {"page_tokens", p.page_tokens},
                        {"namespace", p.ns.ToString()},
                        {"parent", parent ? nlohmann::json(parent->Hex()) : nlohmann::json()},
                        {"tokens", tokens.size()},
                        {"full_blocks", keys.size()},
                        {"keys", nlohmann::json::array()}};
  for (const BlockKey& k : keys) out["keys"].push_back(k.Hex());
  std::printf("%s\n", out.dump(1).c_str());
  return absl::OkStatus();
}

// Checks one vector; returns the number of mismatching keys (or an error).
absl::StatusOr<int> CheckVector(const nlohmann::json& v) {
  KeysFlags f;
  f.fingerprint = v.at("model_fingerprint").get<std::string>();
  f.layout = v.at("layout").get<std::string>();
  f.page_tokens = v.at("page_tokens").get<int64_t>();
  f.ns = v.at("namespace").get<std::string>();
  ASSIGN_OR_RETURN(KeyParams p, ParamsFrom(f));
  ASSIGN_OR_RETURN(std::vector<uint32_t> tokens,
                   ToTokenIds(v.at("tokens").get<std::vector<int64_t>>()));
  std::optional<BlockKey> parent;
  if (!v.at("parent").is_null()) {
    ASSIGN_OR_RETURN(parent, BlockKey::FromHex(v.at("parent").get<std::string>()));
  }
  ASSIGN_OR_RETURN(std::vector<BlockKey> keys, DeriveBlockKeys(p, tokens, parent));
  const auto want = v.at("keys").get<std::vector<std::string>>();
  int bad = want.size() == keys.size() ? 0 : 1;
  for (size_t i = 0; i < keys.size() && i < want.size(); ++i) bad += keys[i].Hex() != want[i];
  return bad;
}

absl::StatusOr<int> CheckVectorFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(kv::StrCat("--vectors: cannot read ", path));
  nlohmann::json doc = nlohmann::json::parse(in, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.contains("vectors") || !doc["vectors"].is_array()) {
    return absl::InvalidArgumentError(
        kv::StrCat(path, ": not a vectors file (want a JSON object with a 'vectors' array)"));
  }
  int failed = 0;
  for (const auto& v : doc["vectors"]) {
    std::string name = "?";
    absl::StatusOr<int> bad = absl::InternalError("");
    try {
      name = v.at("name").get<std::string>();
      bad = CheckVector(v);
    } catch (const nlohmann::json::exception& e) {  // wrong field types: third-party throws
      bad = absl::InvalidArgumentError(kv::StrCat("malformed vector: ", e.what()));
    }
    if (!bad.ok()) {
      std::printf("FAIL %s: %s\n", name.c_str(), std::string(bad.status().message()).c_str());
      ++failed;
    } else {
      std::printf("%s %s\n", *bad == 0 ? "ok  " : "FAIL", name.c_str());
      failed += *bad != 0;
    }
  }
  std::printf("%zu vectors, %d failed\n", doc["vectors"].size(), failed);
  return failed;
}

int RunKeys(int argc, char** argv) {
  KeysFlags f;
  FlagSet flags("kvstrata keys");
  flags.String("model-fingerprint", &f.fingerprint, "model fingerprint, 64 hex characters");
  flags.String("layout", &f.layout, "KV layout id (mla-fp8-656, mla-bf16-1152, v4-fp8-584)");
  flags.Int("page-tokens", &f.page_tokens, "tokens per block (0: the layout's default)");
  flags.String("namespace", &f.ns, "tenant name, tenant:NAME, or shared");
  flags.String("tokens", &f.tokens, "comma-separated token ids (u32)");
  flags.String("text", &f.text, "text tokenized as bytes (token id = byte value)");
  flags.String("parent", &f.parent, "key of the block before the first token (hex)");
  flags.String("vectors", &f.vectors, "check a test-vector JSON file instead of deriving");
  flags.Bool("json", &f.json, "print JSON instead of one hex key per line");
  absl::Status s = flags.Parse(argc, argv);
  if (s.ok() && flags.help_requested()) {
    std::printf("%s", flags.Usage().c_str());
    return 0;
  }
  if (s.ok() && !f.vectors.empty()) {
    absl::StatusOr<int> failed = CheckVectorFile(f.vectors);
    if (failed.ok()) return *failed == 0 ? 0 : 1;
    s = failed.status();
  }
  if (s.ok()) s = DeriveAndPrint(f);
  if (!s.ok()) {
    std::fprintf(stderr, "kvstrata keys: %s\n", std::string(s.message()).c_str());
    return 2;
  }
  return 0;
}

}  // namespace

KV_REGISTER_COMMAND(keys, "derive block keys of a token sequence; check test vectors", RunKeys);

}  // namespace kv::cmd
