// Test support for kv_events_test.py (not a product tool): drives a real `kvstrata serve
// --role=store` over the PageStore gRPC API and prints what it did as one JSON line.
//
//   kv_events_store_driver write ADDR SEED N LAYERS   writes a chain of N mla-fp8-656 pages
//       (64 tokens, LAYERS layers, tenant "default", seeded) through PageStoreClient; every
//       even page carries an engine block hash (32 bytes derived from the seed and index),
//       odd pages none. Prints {"pages": [{"key", "engine_hash", "outcome"}]} (hex).
//   kv_events_store_driver lookup ADDR SEED N LAYERS  looks the same chain up and prints
//       {"prefix": K, "blocks": [{"key", "engine_hash", "tier"}]}, tier as a KV event
//       medium name (GPU, CPU, DISK) of the fastest tier holding the block.
//
// Exit code 0 on success, 1 with the error on stderr.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "cluster/page_store_client.h"
#include "cluster/proto_convert.h"
#include "core/hash.h"
#include "core/strings.h"
#include "kvstore/kv_events.h"
#include "kvstore/test_pages.h"

namespace kv {
namespace {

namespace pb = ::kvstrata::v1;

std::string Hex(const std::string& b) { return absl::BytesToHexString(b); }
std::string KeyStr(const BlockKey& k) {
  return std::string(reinterpret_cast<const char*>(k.bytes.data()), k.bytes.size());
}

// The engine hash the driver gives page i of chain `seed` (even pages only).
std::string EngineHash(uint64_t seed, size_t i) {
  if (i % 2 != 0) return "";
  const auto d = Sha256Of(StrCat("engine block ", seed, "/", i));
  return std::string(reinterpret_cast<const char*>(d.data()), d.size());
}

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "kv_events_store_driver: %s\n", s.ToString().c_str());
  return 1;
}

int Run(int argc, char** argv) {
  uint64_t seed = 0, n = 0, layers = 0;
  if (argc != 6 || !absl::SimpleAtoi(argv[3], &seed) || !absl::SimpleAtoi(argv[4], &n) ||
      !absl::SimpleAtoi(argv[5], &layers) || n == 0 || layers == 0) {
    std::fprintf(stderr, "usage: %s write|lookup ADDR SEED N LAYERS\n", argv[0]);
    return 2;
  }
  const std::string cmd = argv[1];
  auto client = cluster::PageStoreClient::Connect(argv[2], "");
  if (!client.ok()) return Fail(client.status());
  std::vector<testing::TestPage> chain = testing::MakeChain(seed, "default", n, 64, layers);
  std::string out;
  if (cmd == "write") {
    std::vector<cluster::PageStoreClient::PageToWrite> pages;
    for (size_t i = 0; i < chain.size(); ++i) {
      pages.push_back({.key = chain[i].meta.key,
                       .bytes = chain[i].bytes,
                       .engine_block_hash = EngineHash(seed, i)});
    }
    pb::WriteOptions o;
    o.mutable_key_space()->set_layout("mla-fp8-656");
    o.mutable_key_space()->set_page_tokens(64);
    auto r = (*client)->WritePages(o, pages);
    if (!r.ok()) return Fail(r.status());
    out = "{\"pages\": [";
    for (size_t i = 0; i < r->size(); ++i) {
      out += StrCat(i ? ", " : "", "{\"key\": \"", Hex(KeyStr(chain[i].meta.key)),
                    "\", \"engine_hash\": \"", Hex(EngineHash(seed, i)), "\", \"outcome\": \"",
                    pb::WriteOutcome_Name((*r)[i].outcome), "\"}");
    }
    out += "]}";
  } else if (cmd == "lookup") {
    const std::vector<BlockKey> keys = testing::KeysOf(chain);
    auto r = (*client)->Lookup(keys);
    if (!r.ok()) return Fail(r.status());
    out = StrCat("{\"prefix\": ", r->prefix_blocks(), ", \"blocks\": [");
    for (int i = 0; i < r->blocks_size(); ++i) {
      out += StrCat(i ? ", " : "", "{\"key\": \"", Hex(r->blocks(i).key()),
                    "\", \"engine_hash\": \"", Hex(EngineHash(seed, i)), "\", \"tier\": \"",
                    MediumName(cluster::FromProto(r->blocks(i).tier())), "\"}");
    }
    out += "]}";
  } else {
    std::fprintf(stderr, "unknown command '%s'\n", cmd.c_str());
    return 2;
  }
  std::printf("%s\n", out.c_str());
  return 0;
}

}  // namespace
}  // namespace kv

int main(int argc, char** argv) { return kv::Run(argc, argv); }
