#include "tests/integration/binary_test_main.h"

#include <sys/wait.h>

#include <cstdio>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "cluster/testing/child_process.h"

namespace kv {

std::string g_binary;

absl::Status InitTinyModel(const std::string& dir, const std::string& log) {
  cluster::testing::ChildProcess init;
  absl::Status s =
      init.Spawn({g_binary, "model", "init", "--preset=tiny-v3", "--out=" + dir, "--seed=1"}, log);
  if (!s.ok()) return s;
  absl::StatusOr<int> rc = init.Stop(0, absl::Seconds(60));  // signal 0: just wait
  if (rc.ok() && WIFEXITED(*rc) && WEXITSTATUS(*rc) == 0) return absl::OkStatus();
  return absl::InternalError(absl::StrCat("model init failed: ", init.LogTail()));
}

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
