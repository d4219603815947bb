#!/usr/bin/env bash
# A kvstrata cluster serves a DeepSeek-V4 model (tiny-v4, v4-fp8-584 pages of 256 tokens)
# with prefix reuse across sessions, through the real gRPC Cluster API and client, twice:
# the embedded cluster (serve --role=all), then the disaggregated one as separate processes
# (a store, a prefill worker, a decode worker and a router over static membership; the
# prefill worker loads the pinned pages from the store over gRPC, computes the rest but the
# last token and hands the state to the decode worker over UCX, layer by layer). In each:
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
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh" serve-v4 "${2:-/tmp}"

"$bin" model init --preset=tiny-v4 --out="$work/model" --seed=3 >/dev/null
# start NAME FLAGS...: starts a serve process on a free loopback port; sets $addr.
start() {
  local name=$1
  shift
  "$bin" serve --listen=127.0.0.1:0 --metrics-port=-1 --data-dir="$work/$name" \
    --model-dir="$work/model" "$@" >"$work/$name.log" 2>&1 &
  pids+=($!)
  addr=""
  for _ in $(seq 1 120); do
    addr=$(grep -o 'listening on [0-9.:]*' "$work/$name.log" | head -n 1 | awk '{print $3}' || true)
    [ -n "$addr" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.5
  done
  cat "$work/$name.log"
  echo "$name did not start in 60 s"
  exit 1
}

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

local_ref "$prompt_a" "$work/a.ref"
local_ref "$prompt_b" "$work/b.ref"

fail=0
check() { if [ "$2" != "$3" ]; then echo "FAIL: $1: got '$2', want '$3'"; fail=1; else echo "ok: $1 = $2"; fi; }
same() {  # label out ref
  if [ "$(text "$2")" == "$(text "$3")" ]; then echo "ok: $1 == local"; else echo "FAIL: $1 differs from local"; fail=1; fi
}
# sessions LABEL: the three sessions against $addr (a fresh cluster), checked.
sessions() {
  local l=$1
  # The embedded engine publishes a prompt's pages off the critical path (after the first
  # token): give its write-back a moment (3 pages of ~0.3 MB) before the next session.
  cluster "$l-a" "$prompt_a" "$work/$l-a.out"
  sleep 1
  cluster "$l-b" "$prompt_b" "$work/$l-b.out"
  sleep 1
  cluster "$l-c" "$prompt_a" "$work/$l-c.out"
  check "$l: session a cached tokens (cold)" "$(cached "$work/$l-a.out")" 0
  check "$l: session b cached tokens (shared system prompt)" "$(cached "$work/$l-b.out")" 512
  check "$l: session c cached tokens (same prompt as a)" "$(cached "$work/$l-c.out")" 768
  same "$l: session a" "$work/$l-a.out" "$work/a.ref"
  same "$l: session b" "$work/$l-b.out" "$work/b.ref"
  same "$l: session c" "$work/$l-c.out" "$work/a.ref"
  grep -q "CACHE_DECISION_LOAD" "$work/$l-b.out" || { echo "FAIL: $l: session b did not load"; fail=1; }
}

start all --role=all --device-mib=16 --host-mib=32 --nvme-mib=256
grep -q "layout=v4-fp8-584" "$work/all.log" || { cat "$work/all.log"; echo "not serving v4-fp8-584"; exit 1; }
sessions embedded
all_pid=${pids[-1]}
kill -TERM "$all_pid"
for _ in $(seq 1 100); do kill -0 "$all_pid" 2>/dev/null || break; sleep 0.1; done
rc=0
wait "$all_pid" || rc=$?
[ "$rc" -eq 0 ] || { cat "$work/all.log"; echo "serve --role=all exited with $rc after SIGTERM"; exit 1; }

start store --role=store --host-mib=64 --nvme-mib=256
store=$addr
start prefill --role=prefill --members="store=$store@store"
prefill=$addr
start decode --role=decode --members="store=$store@store"
decode=$addr
start router --role=router --members="store=$store@store,prefill=$prefill@prefill,decode=$decode@decode"
sessions distributed
for s in a b c; do  # every prompt went through the prefill worker and was imported
  grep -q "^handoff: [1-9][0-9]* bytes" "$work/distributed-$s.out" \
    || { echo "FAIL: distributed session $s was not handed off"; fail=1; }
done

if [ $fail -ne 0 ]; then
  for f in "$work"/*.out "$work"/*.ref; do echo "== $f"; cat "$f"; done
  exit 1
fi
echo "serve v4 ok"
