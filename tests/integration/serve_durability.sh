#!/usr/bin/env bash
# Issue #18 items 4 and 5, against real `serve --role=all` processes sharing one data dir
# (docs/serving.md "Durability and tier health"). Every wait is bounded.
#   1. A graceful restart keeps the cache: prompts are published (pages land in the host tier),
#      SIGTERM, restart: kvstrata_store_recovered_pages equals every page published before the
#      signal, and each prompt is served again with the same cached tokens as the warm run
#      before the signal (each page read is verified) and the same text.
#   2. A damaged nvme index never keeps the node from serving: two bytes of the index's .sst
#      are flipped while the node is down; it starts anyway, the damaged index is in
#      nvme.quarantine/, kvstrata_nvme_index_quarantined_total is 1, nothing is recovered, and
#      the prompt is computed again (same text).
#   3. A tier that keeps failing is reported and bypassed: the nvme segments directory is
#      deleted under the running node (before its first nvme write), so every nvme write fails; the node keeps serving from
#      the host tier (published pages are served: cached tokens), /healthz answers
#      "degraded: nvme tier failing", kvstrata_store_tier_healthy{tier="nvme"} is 0.
# Usage: serve_durability.sh KVSTRATA_BINARY TMP_BASE
set -euo pipefail
bin=$1
work=$(mktemp -d "${2:-/tmp}/serve-durability.XXXXXX")
pid=""
cleanup() {
  [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
export OPENBLAS_NUM_THREADS=1
data="$work/data"
fail=0
check() { if [ "$2" != "$3" ]; then echo "FAIL: $1: got '$2', want '$3'"; fail=1; else echo "ok: $1 = $2"; fi; }

# start LOG: serve on free loopback ports over $data; sets $pid, $addr, $mport.
start() {
  "$bin" serve --role=all --listen=127.0.0.1:0 --metrics-port=0 --data-dir="$data" \
    --device-mib=0 --host-mib=64 --nvme-mib=256 >"$1" 2>&1 &
  pid=$!
  addr=""
  for _ in $(seq 1 120); do
    addr=$(grep -o 'listening on [0-9.:]*' "$1" | head -n 1 | awk '{print $3}' || true)
    [ -n "$addr" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if [ -z "$addr" ]; then
    cat "$1"
    echo "FAIL: serve did not start (exit: $(wait "$pid" 2>/dev/null; echo $?))"
    pid=""
    exit 1
  fi
  mport=$(grep -o 'metrics on port [0-9]*' "$1" | head -n 1 | awk '{print $4}')
}
# stop: SIGTERM, then the process must exit 0 within 30 s (the pod's grace period).
stop() {
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then echo "FAIL: serve did not stop within 30 s of SIGTERM"; exit 1; fi
  local rc=0
  wait "$pid" || rc=$?
  pid=""
  check "exit status after SIGTERM" "$rc" 0
}
http() { curl -s -m 5 "http://127.0.0.1:$mport$1"; }
metric() {  # NAME (with labels, exactly as printed) -> value, or "absent"
  http /metrics | awk -v m="$1" '$1 == m {print $2; found=1} END {if (!found) print "absent"}'
}
gen() {  # session prompt out
  timeout 120 "$bin" generate --addr="$addr" --session="$1" --prompt="$2" --max-tokens=8 \
    >"$3" 2>&1 || { cat "$3"; echo "FAIL: generate failed"; exit 1; }
}
cached() { grep -o 'tokens: [0-9]* cached' "$1" | awk '{print $2}'; }
# Pages a request published or queued for the prefill write-back ("published P pages (+Q
# queued for write-back)"): every one must be on the store once the write-back is done. The
# queued pages count only when the decode worker used the handoff (a "handoff:" line): one
# that did not (a handoff late on a loaded machine) computed the prompt and published its
# pages itself, so the prefill's queued pages are the same pages.
published() {
  local line q
  line=$(grep -o 'published [0-9]* pages[^,]*' "$1")
  q=$(echo "$line" | grep -o '+[0-9]*' | tr -d +)
  grep -q '^handoff: ' "$1" || q=0
  echo $(($(echo "$line" | awk '{print $2}') + ${q:-0}))
}
text() { sed -n '/^---$/q;p' "$1"; }
num() { printf '%.0f' "$1"; }

prompts=()
for i in 1 2 3; do
  p=""
  while [ ${#p} -lt 700 ]; do p+="Prompt $i: a long request about durable caches and restarts, part ${#p}. "; done
  prompts+=("$p")
done

# ---- 1. publish, SIGTERM, restart: every published page is served again ----
start "$work/serve1.log"
total=0
for i in 0 1 2; do
  gen "s$i" "${prompts[$i]}" "$work/cold$i.out"
  total=$((total + $(published "$work/cold$i.out")))
done
sleep 1  # the prompt pages are published off the critical path (after the first token)
for i in 0 1 2; do gen "w$i" "${prompts[$i]}" "$work/warm$i.out"; done
[ "$total" -gt 0 ] || { echo "FAIL: nothing was published"; exit 1; }
stop
start "$work/serve2.log"
check "recovered pages after a graceful restart" "$(num "$(metric kvstrata_store_recovered_pages)")" "$total"
for i in 0 1 2; do
  gen "r$i" "${prompts[$i]}" "$work/restart$i.out"
  check "prompt $i cached tokens after restart" "$(cached "$work/restart$i.out")" "$(cached "$work/warm$i.out")"
  [ "$(text "$work/restart$i.out")" == "$(text "$work/cold$i.out")" ] || { echo "FAIL: prompt $i text differs after restart"; fail=1; }
done
stop

# ---- 2. a damaged index is quarantined; the node serves with an empty tier ----
sst=$(find "$data/nvme/index" -name '*.sst' -size +0 | head -n 1)
if [ -z "$sst" ]; then echo "FAIL: no .sst in the nvme index after a clean stop"; exit 1; fi
size=$(stat -c %s "$sst")
for off in $((size / 4)) $((size / 4 + 7)); do
  b=$(od -An -tu1 -j "$off" -N1 "$sst" | tr -d ' ')
  printf "$(printf '\\%03o' $(((b ^ 0xff) & 0xff)))" | dd of="$sst" bs=1 seek="$off" conv=notrunc status=none
done
start "$work/serve3.log"
check "index quarantined (metric)" "$(num "$(metric kvstrata_nvme_index_quarantined_total)")" 1
check "recovered pages from a quarantined index" "$(num "$(metric kvstrata_store_recovered_pages)")" 0
q=$(find "$data/nvme.quarantine" -mindepth 1 -maxdepth 1 -name 'index-*' 2>/dev/null | wc -l)
check "quarantined index directories" "$q" 1
grep -q nvme_index_quarantined "$work/serve3.log" || { echo "FAIL: no nvme_index_quarantined log line"; fail=1; }
check "/healthz while healthy" "$(http /healthz)" "ok"
check "nvme healthy gauge while healthy" "$(metric 'kvstrata_store_tier_healthy{tier="nvme"}')" 1

# ---- 3. a failing nvme tier is reported and bypassed; the node keeps serving ----
# The segments directory goes before this process's first nvme write (a segment file that
# is already open would keep taking writes): every segment creation, so every write, fails.
rm -rf "$data/nvme/segments"
gen "q0" "${prompts[0]}" "$work/quarantined0.out"
check "cached tokens with the quarantined index" "$(cached "$work/quarantined0.out")" 0
[ "$(text "$work/quarantined0.out")" == "$(text "$work/cold0.out")" ] || { echo "FAIL: text differs after quarantine"; fail=1; }
for i in 1 2; do gen "f$i" "${prompts[$i]}" "$work/failing$i.out"; done
sleep 1
for i in 1 2; do gen "g$i" "${prompts[$i]}" "$work/failing-warm$i.out"; done
health=$(http /healthz)
case "$health" in
  "degraded: nvme tier failing"*) echo "ok: /healthz = $health" ;;
  *) echo "FAIL: /healthz = '$health', want 'degraded: nvme tier failing...'"; fail=1 ;;
esac
check "nvme healthy gauge while failing" "$(metric 'kvstrata_store_tier_healthy{tier="nvme"}')" 0
check "host healthy gauge while nvme fails" "$(metric 'kvstrata_store_tier_healthy{tier="host"}')" 1
for i in 1 2; do
  c=$(cached "$work/failing-warm$i.out")
  if [ "$(published "$work/failing$i.out")" -gt 0 ] && [ "$c" -gt 0 ]; then
    echo "ok: prompt $i published $(published "$work/failing$i.out") pages and served $c cached tokens from host"
  else
    echo "FAIL: prompt $i: published $(published "$work/failing$i.out"), then $c cached tokens"; fail=1
  fi
done
grep -q tier_failing "$work/serve3.log" || { echo "FAIL: no tier_failing log line"; fail=1; }
stop
[ "$fail" -eq 0 ] || { echo "serve durability: FAILED (logs in $work with KEEP_WORK=1)"; exit 1; }
echo "serve durability ok"
