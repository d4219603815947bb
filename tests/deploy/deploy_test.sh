#!/usr/bin/env bash
# Offline checks of deploy/ (issue #8), run by ctest (label `deploy`, see CMakeLists.txt):
#
#   deploy_test.sh manifests    SRC TMP       kustomize renders base + every overlay; every
#                                             object passes the strict schemas; the invalid
#                                             fixtures and a mutated render are rejected.
#   deploy_test.sh dockerfiles  SRC TMP BIN   COPY sources exist; the build stage is
#                                             scripts/setup + make build; the runtime stage
#                                             installs the package of every shared library
#                                             BIN links; non-root user; ENTRYPOINT kvstrata.
#   deploy_test.sh check-config SRC TMP BIN   every role's config from each overlay's
#                                             ConfigMap, with the pod's own args, passes
#                                             `kvstrata serve --check-config`; a bad value
#                                             is rejected.
#
# Tools: kubectl (KUBECTL overrides; Debian's kubernetes-client or any newer kubectl), node
# and deploy/validate/node_modules, all installed by scripts/setup. Nothing is fetched here.
# Exit 0: pass; 1: a check failed (the message says which); 2: usage.
set -euo pipefail

mode=${1:-}
src=${2:-}
tmproot=${3:-}
[ -n "$mode" ] && [ -d "$src/deploy" ] && [ -n "$tmproot" ] || {
  echo "usage: deploy_test.sh manifests|dockerfiles|check-config SRC TMP [BIN]" >&2
  exit 2
}
mkdir -p "$tmproot"
tmp=$(mktemp -d "$tmproot/deploy-$mode.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

kubectl=${KUBECTL:-kubectl}
validator="$src/deploy/validate/k8s-validate.mjs"
overlays=(base overlays/dev overlays/gpu)

need_tools() {
  command -v "$kubectl" >/dev/null || fail "kubectl not found: run scripts/setup (installs kubernetes-client)"
  command -v node >/dev/null || fail "node not found: run scripts/setup"
  [ -d "$src/deploy/validate/node_modules/kubernetes-models" ] ||
    fail "deploy/validate/node_modules missing: run scripts/setup"
}

# render DIR OUT: kubectl kustomize, bounded; kustomize's deprecation warnings go to stderr.
render() {
  timeout 120 "$kubectl" kustomize "$src/deploy/k8s/$1" >"$2" 2>"$2.err" ||
    fail "kubectl kustomize deploy/k8s/$1: $(cat "$2.err")"
  [ -s "$2" ] || fail "kubectl kustomize deploy/k8s/$1 rendered nothing"
}

validate() {
  timeout 120 node "$validator" "$@"
}

manifests() {
  need_tools
  echo "kubectl: $("$kubectl" version --client 2>/dev/null | head -1)"
  local rendered=()
  for o in "${overlays[@]}"; do
    local out="$tmp/${o//\//_}.yaml"
    render "$o" "$out"
    rendered+=("$out")
    local n
    n=$(grep -c '^kind: ' "$out" || true)
    echo "rendered deploy/k8s/$o: $n objects"
  done
  validate "${rendered[@]}" || fail "rendered manifests do not pass the schemas (above)"

  # Each overlay has what issue #8 asks for.
  local dev="$tmp/overlays_dev.yaml" gpu="$tmp/overlays_gpu.yaml"
  for o in "${rendered[@]}"; do
    for k in "kind: Deployment" "kind: StatefulSet" "kind: Service" "kind: ConfigMap" \
      "kind: Secret" "kind: PodDisruptionBudget" "kind: NetworkPolicy"; do
      grep -q "^$k\$" "$o" || fail "$(basename "$o"): no $k"
    done
    grep -q "readOnlyRootFilesystem: true" "$o" || fail "$(basename "$o"): no readOnlyRootFilesystem"
    grep -q "runAsNonRoot: true" "$o" || fail "$(basename "$o"): no runAsNonRoot"
    grep -q "prometheus.io/scrape" "$o" || fail "$(basename "$o"): no scrape annotations"
  done
  [ "$(grep -c 'nvidia.com/gpu: 1' "$gpu")" -eq 4 ] ||
    fail "overlays/gpu: expected nvidia.com/gpu: 1 in the requests and limits of prefill and decode"
  grep -q "storageClassName: local-nvme" "$gpu" || fail "overlays/gpu: store volume is not local-nvme"
  grep -q "nvidia.com/gpu" "$dev" && fail "overlays/dev asks for GPUs"
  grep -q "kvstrata-cpu" "$dev" || fail "overlays/dev does not use the CPU image"
  grep -q "kvstrata-cuda" "$gpu" || fail "overlays/gpu does not use the CUDA image"

  # Negative tests: every fixture object is rejected, and so is a render with one typo.
  validate --expect-invalid "$src/tests/deploy/invalid/objects.yaml" ||
    fail "an invalid fixture object was accepted (above)"
  sed '0,/readinessProbe:/s//readinessProbee:/' "$dev" >"$tmp/mutated.yaml"
  cmp -s "$dev" "$tmp/mutated.yaml" && fail "mutation did not apply"
  if validate "$tmp/mutated.yaml" >"$tmp/mutated.out"; then
    fail "a render with an unknown field (readinessProbee) was accepted"
  fi
  grep -q "unknown field 'readinessProbee'" "$tmp/mutated.out" ||
    fail "the mutated render was rejected for another reason: $(cat "$tmp/mutated.out")"
  echo "manifests: ok"
}

dockerfiles() {
  local bin=${1:-}
  [ -x "$bin" ] || fail "kvstrata binary '$bin' not found (build it first)"
  command -v ldd >/dev/null && command -v dpkg >/dev/null || fail "ldd and dpkg are needed"
  # Packages of the shared libraries the binary links, less the base image's own.
  local pkgs=() cuda_libs=()
  while read -r lib; do
    local real owner
    real=$(readlink -f "$lib")
    owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "$real" 2>/dev/null || true)
    if [ -z "$owner" ]; then
      case "$(basename "$lib")" in
        libcudart.so* | libcublas*.so* | libnccl.so*) cuda_libs+=("$(basename "$lib")") ;;
        *) fail "$lib (linked by kvstrata) belongs to no Debian package" ;;
      esac
      continue
    fi
    owner=${owner%%:*}
    case "$owner" in libc6 | libstdc++6 | libgcc-s1) continue ;; esac
    pkgs+=("$owner")
  done < <(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3}')
  mapfile -t pkgs < <(printf '%s\n' "${pkgs[@]}" | sort -u)
  echo "kvstrata links the runtime packages: ${pkgs[*]}${cuda_libs:+ + CUDA: ${cuda_libs[*]}}"

  for df in "$src"/deploy/docker/Dockerfile.cpu "$src"/deploy/docker/Dockerfile.cuda; do
    local name
    name=$(basename "$df")
    [ -f "$df" ] || fail "$name missing"
    [ -f "$df.dockerignore" ] || fail "$name.dockerignore missing"
    # Join continuation lines, drop comments.
    local text
    text=$(sed -e 's/[[:space:]]*#.*$//' "$df" | sed -e ':a' -e '/\\$/N; s/\\\n/ /; ta')
    # COPY sources (the context is the repository root) must exist.
    while read -r line; do
      local words
      read -ra words <<<"$line"
      [[ "${words[1]}" == --from=* ]] && continue
      local n=${#words[@]}
      for ((i = 1; i < n - 1; i++)); do
        [[ "${words[$i]}" == --* ]] && continue
        [ -e "$src/${words[$i]}" ] || fail "$name: COPY source '${words[$i]}' does not exist"
      done
    done < <(grep -E '^COPY ' <<<"$text")
    local build runtime
    build=$(awk '/^FROM .* AS build/{f=1;next} /^FROM /{f=0} f' <<<"$text")
    runtime=$(awk '/^FROM .* AS runtime/{f=1;next} /^FROM /{f=0} f' <<<"$text")
    [ -n "$build" ] && [ -n "$runtime" ] || fail "$name: needs stages 'AS build' and 'AS runtime'"
    grep -q '^FROM debian:bookworm' <<<"$text" || fail "$name: not based on Debian 12"
    grep -qx 'RUN bash scripts/setup' <<<"$build" || fail "$name: build stage must RUN bash scripts/setup"
    grep -qE '^RUN make build( |$)' <<<"$build" || fail "$name: build stage must RUN make build"
    grep -q 'COPY --from=build /src/build/cmd/kvstrata/kvstrata ' <<<"$runtime" ||
      fail "$name: runtime stage must copy the built binary"
    grep -qE '^USER 10001' <<<"$runtime" || fail "$name: runtime must run as USER 10001"
    grep -qE '^ENTRYPOINT \["/usr/local/bin/kvstrata"\]' <<<"$runtime" ||
      fail "$name: ENTRYPOINT must be kvstrata"
    grep -qE -- '-dev( |$)' <<<"$runtime" && fail "$name: runtime stage installs a -dev package"
    for p in "${pkgs[@]}"; do
      grep -qE "(^| )${p//+/\\+}( |$)" <<<"$runtime" ||
        fail "$name: runtime stage does not install $p (kvstrata links a library from it)"
    done
    if [ "$name" = Dockerfile.cuda ]; then
      for p in cuda-cudart- libcublas- libnccl2; do
        grep -q -- "$p" <<<"$runtime" || fail "$name: runtime stage does not install $p"
      done
    fi
    echo "$name: ok"
  done
}

check_config() {
  local bin=${1:-}
  [ -x "$bin" ] || fail "kvstrata binary '$bin' not found (build it first)"
  need_tools
  local failed=0 ran=0
  # The kvstrata-tls Secret is not in the repository (it holds private keys): a throwaway
  # CA and certificate stand in for it, as the tokens Secret's file does for tokens.
  "$src/deploy/make-dev-tls" "$tmp/tls" 1 || fail "deploy/make-dev-tls"
  local tls=(--tls-cert-file="$tmp/tls/tls.crt" --tls-key-file="$tmp/tls/tls.key"
    --tls-ca-file="$tmp/tls/ca.crt")
  for o in overlays/dev overlays/gpu; do
    local out="$tmp/${o//\//_}.yaml" ex="$tmp/${o//\//_}"
    render "$o" "$out"
    timeout 60 node "$validator" --extract "$ex" "$out" >"$ex.files" || fail "extract $o"
    local cm tokens service
    cm=$(awk '$1 == "configmap" && $2 ~ /^kvstrata-config/ {print $4; exit}' "$ex.files")
    tokens=$(awk '$1 == "secret" && $2 == "kvstrata-tokens" && $3 == "tokens.yaml" {print $4}' "$ex.files")
    service=$(awk '$1 == "secret" && $2 == "kvstrata-tokens" && $3 == "service-token" {print $4}' "$ex.files")
    [ -n "$cm" ] && [ -n "$tokens" ] || fail "$o: no kvstrata-config ConfigMap or kvstrata-tokens Secret"
    [ -n "$service" ] || fail "$o: no service-token in the kvstrata-tokens Secret"
    local cmdir
    cmdir=$(dirname "$cm")
    timeout 60 node "$validator" --pod-args "$out" >"$ex.args" || fail "pod args $o"
    [ "$(wc -l <"$ex.args")" -eq 4 ] || fail "$o: expected 4 kvstrata workloads, got $(cat "$ex.args")"
    while read -r component args; do
      # The pod's args, with the mounted paths mapped to the extracted files; the data dir
      # is a scratch directory here.
      args=${args//\/etc\/kvstrata\/config\//$cmdir/}
      local argv cmd
      read -ra argv <<<"$args"
      grep -q 'tls-cert-file: /etc/kvstrata/tls/' "$cmdir/$component.yaml" ||
        fail "$o $component: config does not set tls-cert-file to the kvstrata-tls mount"
      cmd=("$bin" "${argv[@]}" --tokens-file="$tokens" --service-token-file="$service" "${tls[@]}"
        --data-dir="$tmp/data-$component" --check-config)
      [ "${cmd[1]}" = serve ] || fail "$o $component: container args do not start with serve"
      ran=$((ran + 1))
      echo "+ ${cmd[*]//$tmp\//TMP/}"
      if ! OPENBLAS_NUM_THREADS=1 timeout 60 "${cmd[@]}" >"$tmp/out" 2>&1; then
        echo "FAIL: $o $component: kvstrata serve --check-config exited non-zero:" >&2
        sed 's/^/    /' "$tmp/out" >&2
        failed=$((failed + 1))
        continue
      fi
      sed 's/^/    /' "$tmp/out"
      # A wrong value must be caught: the check is not a no-op.
      if OPENBLAS_NUM_THREADS=1 timeout 60 "${cmd[@]}" --metrics-port=70000 >"$tmp/out" 2>&1; then
        echo "FAIL: $o $component: --check-config accepted --metrics-port=70000" >&2
        failed=$((failed + 1))
      fi
    done <"$ex.args"
  done
  [ "$failed" -eq 0 ] || fail "$failed of $ran role config check(s) failed"
  echo "check-config: $ran role configs ok"
}

case "$mode" in
  manifests) manifests ;;
  dockerfiles) dockerfiles "${4:-}" ;;
  check-config) check_config "${4:-}" ;;
  *)
    echo "unknown mode '$mode'" >&2
    exit 2
    ;;
esac
