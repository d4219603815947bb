#include "tests/integration/binary_test_main.h"

#include <cstdio>

#include <gtest/gtest.h>

namespace kv {

std::string g_binary;

}  // namespace kv

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s KVSTRATA_BINARY\n", argv[0]);
    return 2;
  }
  kv::g_binary = argv[1];
  return RUN_ALL_TESTS();
}
