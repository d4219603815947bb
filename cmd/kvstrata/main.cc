// kvstrata: one binary, many subcommands (DESIGN.md "CLI").
#include <malloc.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cmd/kvstrata/command.h"

namespace kv::cmd {
namespace {
std::vector<Command>& MutableCommands() {
  static std::vector<Command> v;
  return v;
}
std::vector<Command>& MutableBenches() {
  static std::vector<Command> v;
  return v;
}
void Sort(std::vector<Command>& v) {
  std::sort(v.begin(), v.end(), [](const Command& a, const Command& b) { return a.name < b.name; });
}

void PrintList(const char* title, std::vector<Command>& v) {
  Sort(v);
  std::printf("%s\n", title);
  for (const auto& c : v) {
    std::printf("  %-12.*s %.*s\n", static_cast<int>(c.name.size()), c.name.data(),
                static_cast<int>(c.summary.size()), c.summary.data());
  }
}

int RunBench(int argc, char** argv) {
  auto& benches = MutableBenches();
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    std::printf("usage: kvstrata bench SUITE [--json=FILE] [suite flags]\n\n");
    PrintList("suites:", benches);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& b : benches) {
    if (b.name == argv[1]) return b.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "kvstrata bench: unknown suite '%s' (see 'kvstrata bench --help')\n",
               argv[1]);
  return 2;
}
}  // namespace

bool RegisterCommand(Command c) {
  MutableCommands().push_back(c);
  return true;
}
bool RegisterBench(Command c) {
  MutableBenches().push_back(c);
  return true;
}
const std::vector<Command>& Commands() { return MutableCommands(); }
const std::vector<Command>& Benches() { return MutableBenches(); }

KV_REGISTER_COMMAND(bench, "run a benchmark suite (kvstrata bench --help)", RunBench);

}  // namespace kv::cmd

int main(int argc, char** argv) {
  // Page-sized buffers (a 2.56 MB page, a 4 MiB chunk) come from and go back to the heap
  // instead of a fresh mmap per buffer, which faults in every 4 KiB page on first touch and
  // unmaps it on free. Measured (bench store, 2.56 MB gRPC GET, 1 client, 2-core VM): p50
  // 11.7 ms with glibc's defaults, 1.3-1.7 ms with these. Free heap above 128 MiB is returned.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
  using kv::cmd::MutableCommands;
  auto& cmds = MutableCommands();
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "help") == 0) {
    std::printf("usage: kvstrata COMMAND [flags]   (kvstrata COMMAND --help for its flags)\n\n");
    kv::cmd::PrintList("commands:", cmds);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : cmds) {
    if (c.name == argv[1]) return c.run(argc - 1, argv + 1);
  }
  std::fprintf(stderr, "kvstrata: unknown command '%s' (see 'kvstrata --help')\n", argv[1]);
  return 2;
}
