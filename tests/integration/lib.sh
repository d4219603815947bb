# The common start of the multi-process serve_* scripts, sourced after `bin=$1`:
#   source "$(dirname "$0")/lib.sh" NAME TMP_BASE
# makes $work (a fresh directory TMP_BASE/NAME.XXXXXX, removed at exit unless KEEP_WORK is
# set) and $pids (every process a script appends there is SIGKILLed at exit), and runs the
# model single-threaded (OPENBLAS_NUM_THREADS=1, the suite's rule for tests run in parallel).
work=$(mktemp -d "$2/$1.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
}
trap cleanup EXIT
export OPENBLAS_NUM_THREADS=1
