// `serve --role=all` (EmbeddedServer) serves the PageStore service over the same tiered store
// the embedded cluster publishes into, as its ListNodes entry (ROLE_STORE) and the README
// say (issue #18 item 8): a PageStore client reaches the pages a Generate published.
#include "cluster/embedded_server.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "cluster/page_store_client.h"
#include "kvstore/page_format.h"
#include "model/test_util.h"
#include "model/tokenizer.h"

namespace kv::cluster {
namespace {

TEST(EmbeddedServerTest, ServesThePageStoreOverItsOwnStore) {
  const std::string dir = model::testing::FreshTempDir("embedded-server");
  EmbeddedServerOptions o;
  o.node.data_dir = dir;
  o.node.device_bytes = 0;
  o.node.host_bytes = 16ull << 20;
  o.node.nvme_bytes = 64ull << 20;
  o.node.slab_bytes = 1ull << 20;
  o.listen = "127.0.0.1:0";
  o.metrics_port = -1;
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

}  // namespace
}  // namespace kv::cluster
