#!/usr/bin/env bash
# serve --role=all starts on a free loopback port with a temp data dir, answers /healthz, and
# stops cleanly (exit 0, within 10 s) on SIGTERM. Every wait is bounded.
# Usage: serve_lifecycle.sh KVSTRATA_BINARY TMP_BASE
set -euo pipefail
bin=$1
work=$(mktemp -d "${2:-/tmp}/serve-lifecycle.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

"$bin" serve --role=all --listen=127.0.0.1:0 --metrics-port=0 --data-dir="$work/data" \
  --device-mib=16 --host-mib=16 --nvme-mib=64 >"$work/out.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  grep -q "listening on" "$work/out.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/out.log"; echo "serve exited early"; exit 1; }
  sleep 0.5
done
grep -q "listening on" "$work/out.log" || { cat "$work/out.log"; echo "serve did not start in 60 s"; exit 1; }
port=$(grep -o 'metrics_port=[0-9]*' "$work/out.log" | head -n 1 | cut -d= -f2)
if command -v curl >/dev/null; then
  [ "$(curl -s -m 5 "http://127.0.0.1:$port/healthz")" = "ok" ] || { echo "/healthz not ok"; exit 1; }
fi
kill -TERM "$pid"
for _ in $(seq 1 100); do
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$pid" 2>/dev/null; then echo "serve did not stop within 10 s of SIGTERM"; exit 1; fi
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || { cat "$work/out.log"; echo "serve exited with $rc after SIGTERM"; exit 1; }
grep -q serve_stopped "$work/out.log" || { echo "no serve_stopped log line"; exit 1; }
echo "serve lifecycle ok"
