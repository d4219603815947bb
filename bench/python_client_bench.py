#!/usr/bin/python3
"""Python kvstrata.Client.batch_get_into vs the same call made from C (the C ABI), in one run.

Starts a store process on loopback (or uses --addr), writes a chain of 2.56 MB pages
(mla-fp8-656, 64 tokens x 61 layers) from Python, then times batch_get_into of the whole chain
into one registered buffer from Python (numpy rows) and from the C program
client/bench/c_get_bench.c (built as build/client/kvstrata_client_c_bench), in B interleaved
blocks of R/B rounds per side, the side timed first alternating (ABBA) because whichever side
runs first was measured faster in single-block runs. Prints both, the
ratio python/c of throughput (goal >= 0.8) and, with --json, writes them to a file.

Usage (from the repository root, after building kvstrata, kvstrata_py, kvstrata_client_c_bench):
  PYTHONPATH=build/client/python /usr/bin/python3 bench/python_client_bench.py \
      --binary build/kvstrata --c-bench build/client/kvstrata_client_c_bench --json out.json

Limits: loopback only (one host: UCX over TCP or shared memory, as UCX_TLS says); the store and
the client share the machine's cores; best and mean over all blocks, each block after one
warm-up round.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import kvstrata

LAYOUT, TOKENS, LAYERS = "mla-fp8-656", 64, 61
TOKEN = "tok-bench"


def start_store(binary, root):
    with open(os.path.join(root, "tokens.yaml"), "w") as f:
        f.write(f"{TOKEN}: bench\n")
    with open(os.path.join(root, "service-token"), "w") as f:
        f.write("svc-bench\n")
    subprocess.run([binary, "model", "init", "--preset=tiny-v3", f"--out={root}/model",
                    "--seed=1"], check=True, timeout=120, capture_output=True)
    log = os.path.join(root, "store.log")
    proc = subprocess.Popen(
        [binary, "serve", "--role=store", "--node-id=bench-store", "--listen=127.0.0.1:0",
         "--metrics-port=-1", f"--model-dir={root}/model", f"--tokens-file={root}/tokens.yaml",
         f"--service-token-file={root}/service-token", f"--data-dir={root}/store",
         "--device-mib=0", "--host-mib=1024", "--nvme-mib=256"],
        stdout=open(log, "ab"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        with open(log, errors="replace") as f:
            m = re.search(r"serve_started.*?address=([0-9.:]+)", f.read())
        if m:
            return proc, m.group(1)
        time.sleep(0.1)
    proc.kill()
    sys.exit("the store did not start; see " + log)


def write_chain(client, n):
    space = kvstrata.KeySpace(bytes(32), LAYOUT, TOKENS, "bench")
    rng = np.random.default_rng(1)
    keys = kvstrata.derive_block_keys(space, rng.integers(0, 50000, n * TOKENS).tolist())
    page_bytes, kv_bytes = kvstrata.page_size(LAYOUT, TOKENS, LAYERS)
    pages = np.empty((n, page_bytes), np.uint8)
    client.register_buffer(pages)
    for i, k in enumerate(keys):
        kvstrata.encode_page(LAYOUT, k, rng.integers(0, 256, kv_bytes, dtype=np.uint8), pages[i],
                             TOKENS, LAYERS, parent=keys[i - 1] if i else None)
    res = client.batch_put_from(space, keys, list(pages))
    bad = [r for r in res if not r.ok]
    if bad:
        sys.exit(f"put failed: {bad[0]}")
    return keys, page_bytes


def time_python(client, keys, page_bytes, rounds):
    dst = np.zeros((len(keys), page_bytes), np.uint8)
    client.register_buffer(dst)
    rows = list(dst)
    times = []
    for r in range(rounds + 1):
        t0 = time.perf_counter()
        res = client.batch_get_into(keys, rows)
        dt = time.perf_counter() - t0
        if not all(x.ok for x in res):
            sys.exit(f"python get failed: {[x for x in res if not x.ok][0]}")
        if r:
            times.append(dt)
    return {"mean_s": sum(times) / len(times), "best_s": min(times)}


def run_c(a, addr, keyfile, page_bytes, rounds):
    out = subprocess.run([a.c_bench, addr, TOKEN, keyfile, str(page_bytes), str(rounds)],
                         check=True, capture_output=True, text=True, timeout=600)
    # The library's log lines may share stdout; the result is the line starting '{"pages"'.
    line = [x for x in out.stdout.splitlines() if x.startswith('{"pages"')]
    if not line:
        sys.exit("c_get_bench printed no result:\n" + out.stdout + out.stderr)
    return json.loads(line[-1])


def report_python_only(a, keys, page_bytes, py, stats):
    total = len(keys) * page_bytes
    result = {"pages": len(keys), "page_bytes": page_bytes, "rounds": a.rounds,
              "python_gb_per_s_mean": total / py["mean_s"] / 1e9,
              "python_gb_per_s_best": total / py["best_s"] / 1e9,
              "ucx_get_pages": stats["ucx_get_pages"], "grpc_get_pages": stats["grpc_get_pages"]}
    print(json.dumps(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--binary", default="build/kvstrata")
    ap.add_argument("--c-bench", default="build/client/kvstrata_client_c_bench")
    ap.add_argument("--addr", help="an existing store (HOST:PORT) instead of starting one")
    ap.add_argument("--pages", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--token", default=TOKEN, help="bearer token (with --addr)")
    ap.add_argument("--python-only", action="store_true",
                    help="time only the Python side (kvstrata bench store's python row)")
    ap.add_argument("--blocks", type=int, default=4,
                    help="interleave: split the rounds into this many blocks per side, "
                         "alternating which side goes first (ABBA), so neither side is "
                         "always timed first")
    a = ap.parse_args()
    if a.blocks < 1 or a.rounds < a.blocks:
        sys.exit("--blocks must be in 1..--rounds")
    root = tempfile.mkdtemp(prefix="pyclient-bench-")
    proc = None
    per_block = a.rounds // a.blocks
    py_blocks, c_blocks = [], []
    try:
        addr = a.addr
        if addr is None:
            proc, addr = start_store(a.binary, root)
        with kvstrata.Client([addr], token=a.token) as c:
            keys, page_bytes = write_chain(c, a.pages)
            keyfile = os.path.join(root, "keys.hex")
            with open(keyfile, "w") as f:
                f.writelines(k.hex() + "\n" for k in keys)
            for b in range(a.blocks):
                sides = ["python", "c"] if b % 2 == 0 else ["c", "python"]
                if a.python_only:
                    sides = ["python"]
                for side in sides:
                    if side == "python":
                        py_blocks.append(time_python(c, keys, page_bytes, per_block))
                    else:
                        c_blocks.append(run_c(a, addr, keyfile, page_bytes, per_block))
            py_stats = c.stats()
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    def merge(blocks):  # the last block's other fields (the C side's page counts)
        out = dict(blocks[-1])
        out.update(mean_s=sum(x["mean_s"] for x in blocks) / len(blocks),
                   best_s=min(x["best_s"] for x in blocks))
        return out
    py = merge(py_blocks)
    if a.python_only:
        return report_python_only(a, keys, page_bytes, py, py_stats)
    c_res = merge(c_blocks)
    total = len(keys) * page_bytes
    gbps = lambda s: total / s / 1e9  # noqa: E731
    result = {
        "pages": len(keys), "page_bytes": page_bytes, "rounds": a.rounds,
        "ucx_tls": os.environ.get("UCX_TLS", "(default)"), "blocks": a.blocks,
        "rounds_per_block": per_block,
        "python": dict(py, gb_per_s_mean=gbps(py["mean_s"]), gb_per_s_best=gbps(py["best_s"]),
                       ucx_get_pages=py_stats["ucx_get_pages"],
                       grpc_get_pages=py_stats["grpc_get_pages"]),
        "c": dict(c_res, gb_per_s_mean=gbps(c_res["mean_s"]), gb_per_s_best=gbps(c_res["best_s"])),
    }
    result["ratio_mean"] = result["python"]["gb_per_s_mean"] / result["c"]["gb_per_s_mean"]
    result["ratio_best"] = result["python"]["gb_per_s_best"] / result["c"]["gb_per_s_best"]
    print(f"batch_get_into of {len(keys)} x {page_bytes} B pages, {a.blocks} interleaved "
          f"blocks of {per_block} rounds per side (UCX_TLS={result['ucx_tls']}):")
    for side in ("python", "c"):
        r = result[side]
        print(f"  {side:6s}: mean {r['mean_s'] * 1e3:8.2f} ms ({r['gb_per_s_mean']:6.2f} GB/s), "
              f"best {r['best_s'] * 1e3:8.2f} ms ({r['gb_per_s_best']:6.2f} GB/s), "
              f"ucx pages {r['ucx_get_pages']}, grpc pages {r['grpc_get_pages']}")
    print(f"  python / c throughput: mean {result['ratio_mean']:.3f}, best "
          f"{result['ratio_best']:.3f} (goal >= 0.8)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
