// PageStoreClient against servers that misbehave: pages damaged in transit, and servers that
// stall or refuse connections.
#include "cluster/page_store_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

#include "cluster/page_store_service_testing.h"

namespace kv::cluster {
namespace {

using namespace pagestore_testing;  // NOLINT: test helpers

// A PageStore that serves chosen bytes for ReadPages, to check that the client refuses pages
// damaged in transit (fault injection on the wire, not a stand-in for the service).
class WireFaultStore final : public pb::PageStore::Service {
 public:
  enum class Fault { kNone, kChunkChecksum, kFlippedByte, kOtherPage };
  struct Served {
    std::string bytes;
    Fault fault;
  };
  std::vector<Served> pages;

  grpc::Status ReadPages(grpc::ServerContext*, const pb::ReadPagesRequest* req,
                         grpc::ServerWriter<pb::PageChunk>* out) override {
    for (int i = 0; i < req->pages_size(); ++i) {
      std::string b = pages[i].bytes;
      if (pages[i].fault == Fault::kFlippedByte) b[b.size() / 2] ^= 0x01;
      for (size_t off = 0; off < b.size(); off += 4096) {
        const size_t n = std::min<size_t>(4096, b.size() - off);
        pb::PageChunk c;
        c.set_key(req->pages(i).key());
        c.set_page_index(i);
        if (off == 0) c.set_page_header(b.substr(0, PageHeaderBytes(1)));
        c.set_offset(off);
        c.set_data(b.substr(off, n));
        c.set_data_xxh3(Xxh3_64(b.data() + off, n));
        if (pages[i].fault == Fault::kChunkChecksum && off > 0) c.set_data_xxh3(1);
        c.set_total_bytes(b.size());
        c.set_last(off + n == b.size());
        out->Write(c);
      }
    }
    return grpc::Status::OK;
  }
};

TEST(PageStoreClientTest, PagesDamagedInTransitAreErrorsNeverBytes) {
  auto chain = Chain(22, Tenant("acme"), 4);
  WireFaultStore svc;
  using F = WireFaultStore::Fault;
  svc.pages = {{Str(chain[0].bytes), F::kNone},
               {Str(chain[1].bytes), F::kChunkChecksum},
               {Str(chain[2].bytes), F::kFlippedByte},
               {Str(chain[0].bytes), F::kOtherPage}};  // page 0's bytes asked as page 3
  GrpcServerOptions go;
  go.services = {&svc};
  go.shutdown_grace = absl::Seconds(1);
  auto server = GrpcServer::Start(go);
  ASSERT_TRUE(server.ok()) << server.status();
  PageStoreClient c(grpc::CreateChannel((*server)->address(), grpc::InsecureChannelCredentials()),
                    "tok-a", absl::Seconds(20));
  auto r = c.ReadPages(Keys(chain));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->size(), 4u);
  ASSERT_TRUE((*r)[0].page.ok()) << (*r)[0].page.status();
  EXPECT_EQ(*(*r)[0].page, Str(chain[0].bytes));
  for (int i = 1; i < 4; ++i) {
    EXPECT_TRUE(absl::IsDataLoss((*r)[i].page.status())) << i << ": " << (*r)[i].page.status();
  }
  (*server)->Shutdown();
}

// A loopback TCP port that accepts connections and never answers, or (listen = false) is
// bound but refuses every connection: nothing else can take the port while the object lives,
// so "absent" stays absent even with other tests opening ports at the same time.
class SilentListener {
 public:
  explicit SilentListener(bool listen = true) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof(a));
    if (listen) ::listen(fd_, 16);
    socklen_t len = sizeof(a);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
  }
  ~SilentListener() { close(fd_); }
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int port_ = 0;
};

TEST(PageStoreClientTest, DeadlinesBoundCallsToStalledOrAbsentServers) {
  auto keys = Keys(Chain(20, Tenant("acme"), 1));
  SilentListener stalled;
  SilentListener absent(/*listen=*/false);  // bound, not listening: connections are refused
  for (int port : {stalled.port(), absent.port()}) {
    auto ch = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                  grpc::InsecureChannelCredentials());
    PageStoreClient c(ch, "tok-a", absl::Milliseconds(500));
    const absl::Time start = absl::Now();
    auto look = c.Lookup(keys);
    auto read = c.ReadPages(keys);
    const absl::Duration took = absl::Now() - start;
    for (const absl::Status& s : {look.status(), read.status()}) {
      EXPECT_TRUE(absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s)) << s;
      EXPECT_TRUE(IsRetryable(s)) << s;
    }
    EXPECT_LT(took, absl::Seconds(5)) << "port " << port;
  }
}

}  // namespace
}  // namespace kv::cluster
