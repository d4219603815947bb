#!/usr/bin/python3
"""Benchmark: vLLM sha256_cbor block-hash derivation, kvstrata's C++ vs the Python reference.

Both hash the same number of random token ids (default 1M, block size 16, vLLM's default) in
the same run on the same machine; the figure is ns per token, and the ratio says how much
faster the C++ path is. The Python side is tests/engine_hash/vllm_block_hash_ref.py
(hashlib + cbor2, the same calls vLLM makes: cbor2.dumps(canonical=True) then sha256), so
it stands in for the engine's own cost. Before timing, both hash one 4096-token prompt and
must agree, so a fast wrong answer cannot be reported.

  bench/engine_hash_bench.py [--tool build/tests/engine_hash/engine_hash_tool]
      [--tokens 1000000] [--block-size 16] [--runs 3] [--json FILE]
"""

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "engine_hash"))
import vllm_block_hash_ref as ref  # noqa: E402


def check_agreement(tool, block_size):
    rng = random.Random(1)
    tokens = [rng.randrange(151936) for _ in range(4096)]
    req = dict(seed="0", block_size=block_size, tokens=tokens, cache_salt="s")
    out = subprocess.run([tool], input=json.dumps(req) + "\n", capture_output=True, text=True,
                         timeout=60, check=True).stdout
    got = json.loads(out)["hashes"]
    want = [h.hex() for h in ref.block_hashes("0", tokens, block_size, cache_salt="s")]
    if got != want:
        sys.exit("engine_hash_bench: C++ and Python hashes differ; not timing a wrong answer")


def time_python(tokens, block_size, runs):
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        ref.block_hashes("0", tokens, block_size)
        ms.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tool", default=os.path.join(HERE, "..", "build", "tests", "engine_hash",
                                                   "engine_hash_tool"))
    ap.add_argument("--tokens", type=int, default=1000000)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    if a.tokens < a.block_size or a.block_size < 1 or a.runs < 1:
        sys.exit("engine_hash_bench: need tokens >= block-size >= 1 and runs >= 1")
    if not os.access(a.tool, os.X_OK):
        sys.exit(f"engine_hash_bench: no engine_hash_tool at {a.tool} (build target "
                 "engine_hash_tool, or pass --tool)")
    check_agreement(a.tool, a.block_size)
    cxx = json.loads(subprocess.run(
        [a.tool, "bench", "--tokens", str(a.tokens), "--block-size", str(a.block_size),
         "--runs", str(a.runs)], capture_output=True, text=True, timeout=600,
        check=True).stdout)
    rng = random.Random(20261206)
    tokens = [rng.randrange(151936) for _ in range(a.tokens)]
    hashed = a.tokens // a.block_size * a.block_size
    py_ms = time_python(tokens, a.block_size, a.runs)
    py_ns = py_ms * 1e6 / hashed
    ratio = py_ns / cxx["ns_per_token"]
    print(f"engine-hash: sha256_cbor block hashes, {a.tokens} tokens, block size "
          f"{a.block_size}, median of {a.runs} runs")
    print(f"  C++ (kvstore/engine_block_hash)   {cxx['ns_per_token']:8.1f} ns/token "
          f"({cxx['median_ms']:.1f} ms)")
    print(f"  Python reference (cbor2+hashlib)  {py_ns:8.1f} ns/token ({py_ms:.1f} ms)")
    print(f"  ratio (Python / C++)              {ratio:8.1f}x")
    report = dict(suite="engine-hash", tokens=a.tokens, block_size=a.block_size, runs=a.runs,
                  cxx_ns_per_token=cxx["ns_per_token"], python_ns_per_token=py_ns,
                  ratio_python_over_cxx=ratio, python=sys.version.split()[0])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
