// transport_ucx_peer --bytes=N: the peer process of the two-process UCX tests (ucx_peer.h).
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "transport/ucx_peer.h"

int main(int argc, char** argv) {
  size_t bytes = 64 << 20;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--bytes=", 8) == 0) bytes = std::strtoull(argv[i] + 8, nullptr, 10);
  }
  if (bytes == 0) {
    std::fprintf(stderr, "transport_ucx_peer: --bytes must be positive\n");
    return 2;
  }
  return kv::transport::RunUcxPeer(bytes, stdin, stdout);
}
