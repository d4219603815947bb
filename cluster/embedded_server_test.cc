// `serve --role=all` (EmbeddedServer) serves the PageStore service over the same tiered store
// the embedded cluster publishes into, as its ListNodes entry (ROLE_STORE) and the README
// say (issue #18 item 8): a PageStore client reaches the pages a Generate published.
// And the shared namespace cannot be poisoned by a tenant (issue #18 item 1).
#include "cluster/embedded_server.h"

#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <grpcpp/create_channel.h>

#include "cluster/grpc_status.h"
#include "cluster/page_store_client.h"
#include "kvstore/page_format.h"
#include "model/test_util.h"
#include "model/tokenizer.h"
#include "proto/kvstrata/v1/cluster.grpc.pb.h"

namespace kv::cluster {
namespace {

namespace pb = ::kvstrata::v1;

EmbeddedServerOptions SmallServer(const std::string& dir) {
  EmbeddedServerOptions o;
  o.node.data_dir = dir;
  o.node.device_bytes = 0;
  o.node.host_bytes = 16ull << 20;
  o.node.nvme_bytes = 64ull << 20;
  o.node.slab_bytes = 1ull << 20;
  o.listen = "127.0.0.1:0";
  o.metrics_port = -1;
  return o;
}

void WriteFile(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

std::vector<int32_t> Prompt(const std::string& sentence, int repeat) {
  std::string text;
  for (int i = 0; i < repeat; ++i) text += sentence;
  return model::ByteTokenizer::Encode(text, false, true);
}

TEST(EmbeddedServerTest, ServesThePageStoreOverItsOwnStore) {
  const std::string dir = model::testing::FreshTempDir("embedded-server");
  EmbeddedServerOptions o = SmallServer(dir);
  {
    auto server = EmbeddedServer::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    EmbeddedCluster& c = (*server)->cluster();
    GenerateRequest r;
    std::string text;
    for (int i = 0; i < 6; ++i) text += "<|system|>a shared preamble the store keeps. ";
    r.prompt = model::ByteTokenizer::Encode(text, false, true);
    r.tenant = "default";  // no tokens file: every call is the built-in tenant
    r.max_tokens = 4;
    r.ignore_eos = true;
    ASSERT_TRUE(c.Generate(r).ok());
    c.WaitIdle();
    auto keys = DeriveRequestKeys(c.model().key_params(), r.prompt, r.tenant, 0, nullptr);
    ASSERT_TRUE(keys.ok());
    ASSERT_GE(keys->size(), 2u);

    auto client = PageStoreClient::Connect((*server)->address(), "");
    ASSERT_TRUE(client.ok()) << client.status();
    auto found = (*client)->Lookup(*keys);
    ASSERT_TRUE(found.ok()) << found.status();
    EXPECT_EQ(found->prefix_blocks(), keys->size());
    auto pages = (*client)->ReadPages(*keys);
    ASSERT_TRUE(pages.ok()) << pages.status();
    ASSERT_EQ(pages->size(), keys->size());
    for (size_t i = 0; i < keys->size(); ++i) {
      ASSERT_TRUE((*pages)[i].page.ok()) << i << ": " << (*pages)[i].page.status();
      auto view = DecodePage(std::span<const uint8_t>(
          reinterpret_cast<const uint8_t*>((*pages)[i].page->data()), (*pages)[i].page->size()));
      ASSERT_TRUE(view.ok()) << view.status();
      EXPECT_EQ(view->header().key, (*keys)[i]);
    }
  }
  std::filesystem::remove_all(dir);
}

// The foreign KV of issue #18's attack: the attacker's own private pages of another prompt,
// re-keyed under `shared` keys (valid checksums, the right geometry, the wrong bytes).
std::vector<std::vector<uint8_t>> ForeignPages(PageStoreClient& attacker,
                                               const std::vector<BlockKey>& own,
                                               const std::vector<BlockKey>& shared) {
  std::vector<std::vector<uint8_t>> out;
  auto pages = attacker.ReadPages(own);
  EXPECT_TRUE(pages.ok()) << pages.status();
  if (!pages.ok()) return out;
  for (size_t i = 0; i < shared.size(); ++i) {
    EXPECT_TRUE((*pages)[i].page.ok()) << (*pages)[i].page.status();
    if (!(*pages)[i].page.ok()) return {};
    const std::string& b = *(*pages)[i].page;
    auto view = DecodePage({reinterpret_cast<const uint8_t*>(b.data()), b.size()});
    EXPECT_TRUE(view.ok()) << view.status();
    if (!view.ok()) return {};
    const PageHeader& h = view->header();
    PageSpec spec{.layout = h.layout.id,
                  .key = shared[i],
                  .parent = i == 0 ? BlockKey{} : shared[i - 1],
                  .token_count = h.token_count,
                  .first_layer = h.first_layer,
                  .layer_count = h.layer_count,
                  .gqa = h.gqa};
    auto page = EncodePage(spec, view->kv());
    EXPECT_TRUE(page.ok()) << page.status();
    if (!page.ok()) return {};
    out.push_back(*std::move(page));
  }
  return out;
}

// Issue #18 item 1, the attack over the real gRPC ports: globex learns the shared keys of a
// prompt with Lookup(include_keys) and writes foreign KV under them in the shared namespace.
// The store refuses (PERMISSION_DENIED), and acme's Generate with that shared prefix gives
// exactly the tokens of a cache-bypass run.
TEST(EmbeddedServerTest, TenantCannotPoisonTheSharedNamespace) {
  const std::string dir = model::testing::FreshTempDir("embedded-server-poison");
  WriteFile(dir + "/tokens.yaml", "tok-a: acme\ntok-b: globex\n");
  EmbeddedServerOptions o = SmallServer(dir);
  o.tokens_file = dir + "/tokens.yaml";
  {
    auto server = EmbeddedServer::Start(o);
    ASSERT_TRUE(server.ok()) << server.status();
    EmbeddedCluster& c = (*server)->cluster();
    const int64_t pt = c.model().key_params().page_tokens;
    GenerateRequest victim;
    victim.prompt = Prompt("<|system|>the preamble every tenant shares, word for word. ", 8);
    ASSERT_GE(static_cast<int64_t>(victim.prompt.size()), 3 * pt);
    victim.tenant = "acme";
    victim.shared_prefix_tokens = 2 * pt;
    victim.max_tokens = 8;
    victim.ignore_eos = true;
    GenerateRequest bypass = victim;
    bypass.policy = CachePolicy::kBypass;
    auto want = c.Generate(bypass);
    ASSERT_TRUE(want.ok()) << want.status();

    // The attacker's own pages of another prompt of the same length: the foreign KV.
    GenerateRequest own = victim;
    own.prompt = Prompt("<|system|>an unrelated text the attacker owns, same length. ", 8);
    own.prompt.resize(victim.prompt.size(), own.prompt.back());
    own.tenant = "globex";
    own.shared_prefix_tokens = 0;
    ASSERT_TRUE(c.Generate(own).ok());
    c.WaitIdle();
    auto own_keys = DeriveRequestKeys(c.model().key_params(), own.prompt, "globex", 0, nullptr);
    ASSERT_TRUE(own_keys.ok()) << own_keys.status();

    // 1. The shared keys, from the Cluster API with globex's token.
    auto channel = grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials());
    pb::LookupRequest lr;
    for (int32_t t : victim.prompt)
      lr.mutable_prompt()->mutable_tokens()->add_ids(static_cast<uint32_t>(t));
    lr.set_shared_prefix_tokens(static_cast<uint32_t>(victim.shared_prefix_tokens));
    lr.set_include_keys(true);
    grpc::ClientContext lctx;
    lctx.AddMetadata("authorization", "Bearer tok-b");
    pb::LookupResponse lookup;
    ASSERT_TRUE(pb::Cluster::NewStub(channel)->Lookup(&lctx, lr, &lookup).ok());
    ASSERT_GE(lookup.keys_size(), 2);
    std::vector<BlockKey> shared;
    for (int i = 0; i < 2; ++i) {
      BlockKey k;
      ASSERT_EQ(lookup.keys(i).size(), k.bytes.size());
      std::memcpy(k.bytes.data(), lookup.keys(i).data(), k.bytes.size());
      shared.push_back(k);
    }

    // 2. Foreign bytes with valid checksums under the shared keys: refused.
    PageStoreClient attacker(channel, "tok-b", absl::Seconds(20));
    std::vector<std::vector<uint8_t>> foreign = ForeignPages(attacker, *own_keys, shared);
    ASSERT_EQ(foreign.size(), shared.size());
    std::vector<PageStoreClient::PageToWrite> writes;
    for (size_t i = 0; i < shared.size(); ++i) writes.push_back({shared[i], foreign[i]});
    pb::WriteOptions wo;
    *wo.mutable_key_space() = lookup.key_space();
    wo.set_shared_namespace(true);
    auto wrote = attacker.WritePages(wo, writes);
    if (wrote.ok()) {
      for (const auto& w : *wrote) {
        EXPECT_NE(w.outcome, pb::WRITE_OUTCOME_STORED) << "a tenant token stored a shared page";
      }
    }
    EXPECT_EQ(wrote.status().code(), absl::StatusCode::kPermissionDenied) << wrote.status();
    EXPECT_NE(wrote.status().message().find("node credential"), std::string_view::npos);

    // 3. The victim's shared-prefix Generate loads nothing foreign.
    GenerateRequest load = victim;
    load.policy = CachePolicy::kForceLoad;
    auto got = c.Generate(load);
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->tokens, want->tokens) << "the shared prefix served foreign KV";
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kv::cluster
