#!/bin/sh
# Runs one libFuzzer target for a bounded time from a scratch copy of its seed corpus.
#   run_fuzz.sh FUZZER SECONDS TMPDIR SEED_DIR [SEED_DIR...]
# Exit status: 0 when the run ends without a finding; the fuzzer's non-zero status on a
# crash, sanitizer report, leak, timeout or OOM. Findings are kept in TMPDIR/fuzz-artifacts.
set -eu
fuzzer=$1 seconds=$2 tmp=$3
shift 3
if [ ! -x "$fuzzer" ]; then
  echo "run_fuzz.sh: $fuzzer is not built (build the kv_fuzz_build target)" >&2
  exit 1
fi
mkdir -p "$tmp"
work=$(mktemp -d "$tmp/$(basename "$fuzzer").XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus" "$work/artifacts"
for d in "$@"; do cp "$d"/* "$work/corpus/"; done
rc=0
"$fuzzer" "$work/corpus" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
  -artifact_prefix="$work/artifacts/" -print_final_stats=1 >"$work/log" 2>&1 || rc=$?
tail -n 60 "$work/log"
if [ "$rc" -ne 0 ] || [ -n "$(ls -A "$work/artifacts")" ]; then
  mkdir -p "$tmp/fuzz-artifacts"
  cp "$work"/artifacts/* "$tmp/fuzz-artifacts/" 2>/dev/null || true
  echo "run_fuzz.sh: $(basename "$fuzzer") failed (status $rc); inputs in $tmp/fuzz-artifacts" >&2
  [ "$rc" -ne 0 ] || rc=1
fi
exit "$rc"
