#!/bin/bash
# ctest client_c_abi_test: installs the build into a temporary prefix, compiles c_abi_test.c
# (C11) against the INSTALLED header and library through pkg-config, starts a real store
# process on an ephemeral loopback port, and runs the program against it. The find_package
# route is checked too: a tiny CMake project links the imported target kvstrata::client.
# Usage: c_abi_test.sh BUILD_DIR KVSTRATA_BINARY C_SOURCE
set -euo pipefail
build=$1 binary=$2 src=$3
work=$(mktemp -d "${KVSTRATA_TEST_TMPDIR:-/tmp}/c-abi-XXXXXX")
store_pid=
cleanup() {
  [[ -n "$store_pid" ]] && kill -9 "$store_pid" 2>/dev/null || true
  [[ -z "${KVSTRATA_KEEP_TEST_TMP:-}" ]] && rm -rf "$work"
}
trap cleanup EXIT

cmake --install "$build" --prefix "$work/prefix" >"$work/install.log"
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
# Only the C ABI is exported.
leaked=$(nm -D --defined-only "$work/prefix/lib/libkvstrata_client.so" | awk '{print $3}' |
         grep -v '^kvstrata_' | grep -v '^KVSTRATA_[0-9.]*$' || true)
if [[ -n "$leaked" ]]; then
  echo "libkvstrata_client.so exports non-ABI symbols:"; echo "$leaked" | head; exit 1
fi
ls "$work/prefix/lib/libkvstrata_client.so.0" >/dev/null  # the soname link
cc -std=c11 -Wall -Wextra -Werror -pedantic "$src" -o "$work/c_abi_test" \
   $(pkg-config --cflags --libs kvstrata) -Wl,-rpath,"$work/prefix/lib"

# find_package(kvstrata) gives the imported target kvstrata::client.
mkdir -p "$work/fp"
cat >"$work/fp/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(fp C)
find_package(kvstrata REQUIRED)
add_executable(fp main.c)
target_link_libraries(fp PRIVATE kvstrata::client)
CMAKE
printf '#include <kvstrata/kvstrata.h>\nint main(void) { return kvstrata_abi_version() == KVSTRATA_ABI_VERSION ? 0 : 1; }\n' >"$work/fp/main.c"
cmake -S "$work/fp" -B "$work/fp/build" -DCMAKE_PREFIX_PATH="$work/prefix" \
      -DCMAKE_BUILD_RPATH="$work/prefix/lib" >"$work/fp.log"
cmake --build "$work/fp/build" >>"$work/fp.log"
"$work/fp/build/fp"

export UCX_TLS=tcp UCX_NET_DEVICES=lo
printf 'tok-acme: acme\n' >"$work/tokens.yaml"
printf 'svc-c-abi-test\n' >"$work/service-token"
"$binary" model init --preset=tiny-v3 --out="$work/model" --seed=1 >"$work/model.log" 2>&1
"$binary" serve --role=store --node-id=store-0 --listen=127.0.0.1:0 --metrics-port=-1 \
  --model-dir="$work/model" --tokens-file="$work/tokens.yaml" \
  --service-token-file="$work/service-token" --data-dir="$work/store" \
  --device-mib=0 --host-mib=256 --nvme-mib=256 >"$work/store.log" 2>&1 &
store_pid=$!
address=
for _ in $(seq 1 600); do  # at most 60 s
  address=$(grep -o 'serve_started.*address=[0-9.:]*' "$work/store.log" 2>/dev/null |
            grep -o 'address=[0-9.:]*' | head -1 | cut -d= -f2 || true)
  [[ -n "$address" ]] && break
  kill -0 "$store_pid" 2>/dev/null || { cat "$work/store.log"; exit 1; }
  sleep 0.1
done
[[ -n "$address" ]] || { echo "the store did not start"; cat "$work/store.log"; exit 1; }
timeout 120 "$work/c_abi_test" "$address" tok-acme "$store_pid"
