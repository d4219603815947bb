// The main() of the integration tests that drive the built `kvstrata` binary as real
// processes (cluster_test.cc, page_store_rma_test.cc, serve_tls_test.cc): ctest passes the
// binary's path as argv[1] (ARGS $<TARGET_FILE:kvstrata>), and binary_test_main.cc keeps it in
// g_binary before running every test. Set once before any test runs; read-only after.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace kv {

extern std::string g_binary;  // argv[1]: the kvstrata binary under test

// `kvstrata model init --preset=tiny-v3 --seed=1 --out=DIR`, its output in `log`; waits up to
// 60 s for it. An error (with the log's tail) unless it exits 0.
absl::Status InitTinyModel(const std::string& dir, const std::string& log);

}  // namespace kv
