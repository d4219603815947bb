#!/usr/bin/env bash
# The embedded cluster serves a DeepSeek-V4 model (tiny-v4, v4-fp8-584 pages of 256 tokens)
# with prefix reuse across sessions, through the real gRPC Cluster API and client:
#   1. session a: a shared system prompt (512 tokens, --shared-prefix-tokens) + a question:
#      a cold request, publishes its pages;
#   2. session b: the same system prompt + another question: loads the 2 shared pages (the
#      shared-prefix end keeps its resume section) and computes only its question;
#   3. session c: session a's prompt again: loads all 3 full pages (the prompt end keeps its
#      resume section);
# and every answer is byte-identical to `kvstrata generate --model` run locally with no
# cache. Every wait is bounded.
# Usage: serve_v4.sh KVSTRATA_BINARY TMP_BASE
set -euo pipefail
bin=$1
work=$(mktemp -d "${2:-/tmp}/serve-v4.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null; [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"; }
trap cleanup EXIT
export OPENBLAS_NUM_THREADS=1

"$bin" model init --preset=tiny-v4 --out="$work/model" --seed=3 >/dev/null
"$bin" serve --role=all --listen=127.0.0.1:0 --metrics-port=-1 --data-dir="$work/data" \
  --model-dir="$work/model" --device-mib=16 --host-mib=32 --nvme-mib=256 >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
  grep -q "listening on" "$work/serve.log" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/serve.log"; echo "serve exited early"; exit 1; }
  sleep 0.5
done
grep -q "layout=v4-fp8-584" "$work/serve.log" || { cat "$work/serve.log"; echo "not serving v4-fp8-584"; exit 1; }
addr=$(grep -o 'listening on [0-9.:]*' "$work/serve.log" | head -n 1 | awk '{print $3}')
[ -n "$addr" ] || { cat "$work/serve.log"; echo "serve did not start in 60 s"; exit 1; }

system=""
while [ ${#system} -lt 600 ]; do system+="<|system|>You are a travel agent; plan every trip with care. "; done
system=${system:0:600}
prompt_a="$system<|user|>$(printf 'Find flights from Oslo to Lisbon on Friday, window seat, %.0s' $(seq 1 5))"
prompt_b="$system<|user|>Which night trains run from Bergen to Oslo next week?"

# Text of a generation (before the --- separator; non-printable bytes escaped as \xNN).
text() { sed -n '/^---$/q;p' "$1"; }
cluster() {  # session prompt out
  timeout 120 "$bin" generate --addr="$addr" --session="$1" --shared-prefix-tokens=512 \
    --prompt="$2" --max-tokens=12 >"$3" 2>&1 || { cat "$3"; echo "cluster generate failed"; exit 1; }
}
local_ref() {  # prompt out
  timeout 120 "$bin" generate --model="$work/model" --kv-layout=v4-fp8-584 --prompt="$1" \
    --max-tokens=12 >"$2" 2>&1 || { cat "$2"; echo "local generate failed"; exit 1; }
}
cached() { grep -o 'tokens: [0-9]* cached' "$1" | awk '{print $2}'; }

cluster a "$prompt_a" "$work/a.out"
cluster b "$prompt_b" "$work/b.out"
cluster c "$prompt_a" "$work/c.out"
local_ref "$prompt_a" "$work/a.ref"
local_ref "$prompt_b" "$work/b.ref"

fail=0
check() { if [ "$2" != "$3" ]; then echo "FAIL: $1: got '$2', want '$3'"; fail=1; else echo "ok: $1 = $2"; fi; }
check "session a cached tokens (cold)" "$(cached "$work/a.out")" 0
check "session b cached tokens (shared system prompt)" "$(cached "$work/b.out")" 512
check "session c cached tokens (same prompt as a)" "$(cached "$work/c.out")" 768
[ "$(text "$work/a.out")" == "$(text "$work/a.ref")" ] && echo "ok: session a == local" || { echo "FAIL: session a differs from local"; fail=1; }
[ "$(text "$work/b.out")" == "$(text "$work/b.ref")" ] && echo "ok: session b == local" || { echo "FAIL: session b differs from local"; fail=1; }
[ "$(text "$work/c.out")" == "$(text "$work/a.ref")" ] && echo "ok: session c == local" || { echo "FAIL: session c differs from local"; fail=1; }
grep -q "CACHE_DECISION_LOAD" "$work/b.out" || { echo "FAIL: session b did not load"; fail=1; }
if [ $fail -ne 0 ]; then
  for f in a.out b.out c.out a.ref b.ref; do echo "== $f"; cat "$work/$f"; done
  exit 1
fi

kill -TERM "$pid"
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
rc=0
wait "$pid" || rc=$?
pid=""
[ "$rc" -eq 0 ] || { cat "$work/serve.log"; echo "serve exited with $rc after SIGTERM"; exit 1; }
echo "serve v4 ok"
