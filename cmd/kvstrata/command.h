// The `kvstrata` binary's subcommand registry.
//
// Each subcommand lives in its own file in cmd/kvstrata/ (or bench/ for benchmark suites)
// and registers itself at static-initialisation time:
//
//   int RunKeys(int argc, char** argv);   // argv[0] is "keys"; returns the exit code
//   KV_REGISTER_COMMAND(keys, "derive block keys of a token sequence", RunKeys);
//
//   int RunBenchKeys(int argc, char** argv);  // argv[0] is "keys"
//   KV_REGISTER_BENCH(keys, "block-key derivation, 1M tokens", RunBenchKeys);
//
// These files are compiled straight into the executable (never into a static library), so
// the linker cannot drop the registrations. Registration happens before main(); lookups
// happen after, so no locking is needed.
#pragma once

#include <string_view>
#include <vector>

namespace kv::cmd {

using RunFn = int (*)(int argc, char** argv);

struct Command {
  std::string_view name;
  std::string_view summary;
  RunFn run;
};

bool RegisterCommand(Command c);
bool RegisterBench(Command c);
const std::vector<Command>& Commands();
const std::vector<Command>& Benches();

}  // namespace kv::cmd

#define KV_REGISTER_COMMAND(name, summary, fn) \
  static const bool kv_cmd_registered_##name = ::kv::cmd::RegisterCommand({#name, summary, fn})
#define KV_REGISTER_BENCH(name, summary, fn) \
  static const bool kv_bench_registered_##name = ::kv::cmd::RegisterBench({#name, summary, fn})
