#!/usr/bin/env bash
# serve exit codes: a bad role, or a cluster role without its peers, exits 2; --check-config
# exits 1 for an invalid config and 0 for a valid one (without creating anything), for every
# role; a distributed role with a tokens file needs a service token file.
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
expect 1 serve --role=prefill --check-config
expect 1 serve --role=decode --check-config --members=bogus
expect 1 serve --role=store --check-config --etcd=127.0.0.1:2379 --members=a=127.0.0.1:1@store
expect 1 serve --role=store --check-config --replication=0
expect 1 serve --role=decode --check-config --etcd=127.0.0.1:2379 --transport=rdma-magic
expect 1 serve --role=store --check-config --etcd=127.0.0.1:2379 --shutdown-flush-seconds=-1
expect 0 serve --role=all --check-config --shutdown-flush-seconds=25
for role in router prefill decode store; do
  expect 0 serve --role=$role --check-config --etcd=127.0.0.1:2379 --listen=0.0.0.0:7070 \
    --advertise=10.0.0.7:7070 --node-id=$role-0 --data-dir=/nonexistent/never-created
done
# KV events (store only): bad endpoints and encodings are refused; a valid set passes.
ev="--role=store --check-config --etcd=127.0.0.1:2379 --data-dir=/nonexistent/never-created"
expect 1 serve $ev --kv-events-endpoint=127.0.0.1:5557
expect 1 serve $ev --kv-events-endpoint=tcp://127.0.0.1:99999
expect 1 serve $ev --kv-events-endpoint=tcp://127.0.0.1:5557 --kv-events-encoding=tagged
expect 1 serve $ev --kv-events-endpoint=tcp://127.0.0.1:5557 --kv-events-hash-format=hex
expect 1 serve $ev --kv-events-replay-endpoint=tcp://127.0.0.1:5558
expect 1 serve --role=router --check-config --etcd=127.0.0.1:2379 \
  --kv-events-endpoint=tcp://127.0.0.1:5557
expect 0 serve $ev --kv-events-endpoint=tcp://127.0.0.1:5557 \
  --kv-events-replay-endpoint=tcp://127.0.0.1:5558 --kv-events-encoding=map
expect 2 serve --role=bogus
expect 1 serve --check-config --kv-layout=nope
expect 1 serve --check-config --tokens-file=/nonexistent/tokens.yaml
expect 0 serve --check-config --listen=127.0.0.1:0 --data-dir=/nonexistent/never-created
# The node credential (docs/serving.md "Security model"): a distributed role with a tokens file
# needs a readable, non-empty service token file; --role=all does not.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'tok-a: acme\n' >"$work/tokens.yaml"
printf 'svc-exit-codes\n' >"$work/service-token"
: >"$work/empty"
st="--check-config --etcd=127.0.0.1:2379 --data-dir=/nonexistent/never-created"
for role in router prefill decode store; do
  expect 1 serve --role=$role $st --tokens-file="$work/tokens.yaml"
  expect 1 serve --role=$role $st --tokens-file="$work/tokens.yaml" --service-token-file="$work/empty"
  expect 0 serve --role=$role $st --tokens-file="$work/tokens.yaml" \
    --service-token-file="$work/service-token"
done
expect 1 serve $st --role=store --tokens-file="$work/tokens.yaml" --service-token-file=/nonexistent
expect 0 serve --check-config --data-dir=/nonexistent/never-created --tokens-file="$work/tokens.yaml"
expect 1 serve --check-config --data-dir=/nonexistent/never-created --service-token-file="$work/empty"
[ ! -e /nonexistent/never-created ] || { echo "--check-config created the data dir"; exit 1; }
echo "serve exit codes ok"
