#!/usr/bin/env bash
# serve exit codes: an unimplemented role exits 2; --check-config exits 1 for an invalid
# config and 0 for a valid one (without creating anything).
# Usage: serve_exit_codes.sh KVSTRATA_BINARY
set -uo pipefail
bin=$1
expect() {
  local want=$1; shift
  "$bin" "$@" >/dev/null 2>&1
  local got=$?
  if [ "$got" -ne "$want" ]; then echo "kvstrata $*: exit $got, want $want"; exit 1; fi
}
expect 2 serve --role=router
expect 2 serve --role=bogus
expect 1 serve --check-config --kv-layout=nope
expect 1 serve --check-config --tokens-file=/nonexistent/tokens.yaml
expect 0 serve --check-config --listen=127.0.0.1:0 --data-dir=/nonexistent/never-created
[ ! -e /nonexistent/never-created ] || { echo "--check-config created the data dir"; exit 1; }
echo "serve exit codes ok"
