"""KV events from a real `kvstrata serve --role=store` (issue #17 item 4), decoded the way a
router would: a ZMQ SUB socket for the live stream, a DEALER on the replay socket, msgpack.

For each (encoding, hash format) the test starts a store with a 4 MiB host tier over an nvme
tier, writes page chains through the PageStore API (kv_events_store_driver, test support), so
that the host tier evicts pages into nvme, and checks after every step that the blocks the
events say are in each medium are exactly the blocks the store's Lookup reports, in the same
medium (GPU / CPU / DISK; Lookup names the fastest tier holding a block). Hashes are the engine's block hash where the writer gave one and
the kvstrata key otherwise. It then stops the store and starts it again over the same data
directory: the events of the new process begin with AllBlocksCleared and store every
recovered page in DISK, again matching Lookup. It also checks that the live stream and the
replay carry the same batches under consecutive sequence numbers.

Environment: KVSTRATA_BIN (the kvstrata binary), KV_EVENTS_DRIVER (the driver),
KVSTRATA_TEST_TMPDIR (scratch). Every wait is bounded; everything is on loopback.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import msgpack
import pytest
import zmq

BIN = os.environ.get("KVSTRATA_BIN", "")
DRIVER = os.environ.get("KV_EVENTS_DRIVER", "")
TMP = os.environ.get("KVSTRATA_TEST_TMPDIR", "/tmp")
LAYERS = 8  # 64 tokens x 656 B x 8 layers: ~336 KB pages, about 11 fit the 4 MiB host tier
END_SEQ = b"\xff" * 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir():
    assert BIN and DRIVER, "KVSTRATA_BIN and KV_EVENTS_DRIVER must be set (ctest sets them)"
    d = os.path.join(TMP, f"kv-events-model-{os.getpid()}")
    shutil.rmtree(d, ignore_errors=True)
    subprocess.run([BIN, "model", "init", "--preset=tiny-v3", f"--out={d}", "--seed=1"],
                   check=True, timeout=120, capture_output=True)
    yield d
    shutil.rmtree(d, ignore_errors=True)


class Store:
    """A `serve --role=store` process with KV events on loopback."""

    def __init__(self, work, model, encoding, hash_format):
        self.work, self.model = work, model
        self.encoding, self.hash_format = encoding, hash_format
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.replay = f"tcp://127.0.0.1:{free_port()}"
        self.proc = None
        self.starts = 0

    def start(self):
        log = open(os.path.join(self.work, f"store-{self.starts}.log"), "w")
        self.starts += 1
        self.proc = subprocess.Popen(
            [BIN, "serve", "--role=store", "--listen=127.0.0.1:0", "--metrics-port=-1",
             f"--model-dir={self.model}", f"--data-dir={self.work}/data", "--device-mib=0",
             "--host-mib=4", "--nvme-mib=64", f"--kv-events-endpoint={self.pub}",
             f"--kv-events-replay-endpoint={self.replay}", "--kv-events-topic=kvstrata",
             f"--kv-events-encoding={self.encoding}",
             f"--kv-events-hash-format={self.hash_format}", "--kv-events-interval-ms=5"],
            stdout=log, stderr=subprocess.STDOUT)
        self.log = log.name
        deadline = time.time() + 60
        while time.time() < deadline:
            m = re.search(r"serve_started .*address=([0-9.:]+)", open(self.log).read())
            if m:
                self.address = m.group(1)
                return
            assert self.proc.poll() is None, open(self.log).read()
            time.sleep(0.1)
        pytest.fail("store did not start: " + open(self.log).read())

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def drive(self, cmd, seed, n):
        r = subprocess.run([DRIVER, cmd, self.address, str(seed), str(n), str(LAYERS)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


def hash_id(raw, hash_format):
    """The hash as an event carries it: an int of the last 8 bytes (big-endian), or bytes."""
    return int.from_bytes(raw[-8:], "big") if hash_format == "int" else raw


def decode_event(ev, encoding):
    """(type, fields) from either encoding; checks the encoding is the one asked for."""
    if encoding == "array":
        assert isinstance(ev, list), ev
        names = {"BlockStored": ["block_hashes", "parent_block_hash", "token_ids",
                                 "block_size", "lora_id", "medium"],
                 "BlockRemoved": ["block_hashes", "medium"], "AllBlocksCleared": []}[ev[0]]
        assert len(ev) == 1 + len(names), ev
        return ev[0], dict(zip(names, ev[1:]))
    assert isinstance(ev, dict), ev
    fields = dict(ev)
    return fields.pop("type"), fields


def apply(state, batch, encoding, hash_format):
    """Applies one EventBatch [ts, events, dp_rank] to state {hash: set(media)}."""
    assert isinstance(batch, list) and len(batch) == 3, batch
    ts, events, dp_rank = batch
    assert isinstance(ts, float) and abs(ts - time.time()) < 600
    assert dp_rank is None
    for ev in events:
        kind, f = decode_event(ev, encoding)
        if kind == "AllBlocksCleared":
            state.clear()
            continue
        assert f["medium"] in ("GPU", "CPU", "DISK"), f
        for h in f["block_hashes"]:
            assert isinstance(h, int if hash_format == "int" else bytes), h
            if kind == "BlockStored":
                assert f["token_ids"] == [] and f["lora_id"] is None
                assert f["block_size"] == 64, f
                assert h not in state or f["medium"] not in state[h], (h, f)
                state.setdefault(h, set()).add(f["medium"])
            else:
                assert kind == "BlockRemoved", kind
                assert f["medium"] in state.get(h, ()), ("removed but not stored", h, f)
                state[h].discard(f["medium"])
                if not state[h]:
                    del state[h]


def replay(ctx, endpoint, start=0):
    """[(seq, payload)] the replay socket returns from `start`, up to its end marker."""
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVTIMEO, 5000)
    s.connect(endpoint)
    s.send_multipart([b"", start.to_bytes(8, "big")])
    out = []
    try:
        while True:
            frames = s.recv_multipart()
            assert len(frames) == 3 and frames[0] == b"", frames
            if frames[1] == END_SEQ:
                assert frames[2] == b""
                return out
            out.append((int.from_bytes(frames[1], "big"), frames[2]))
    finally:
        s.close()


def expected(store, lookups):
    """{hash: {medium}} from the store's Lookup of each driven chain."""
    want = {}
    for r in lookups:
        for b in r["blocks"]:
            raw = bytes.fromhex(b["engine_hash"] or b["key"])
            want[hash_id(raw, store.hash_format)] = {b["tier"]}
    return want


def converge(ctx, store, chains):
    """Replays from 0 until the event state equals Lookup (bounded); returns the batches."""
    deadline = time.time() + 15
    while True:
        lookups = [store.drive("lookup", seed, n) for seed, n in chains]
        want = expected(store, lookups)
        batches = replay(ctx, store.replay)
        seqs = [s for s, _ in batches]
        assert seqs == list(range(len(seqs))), "replay from 0 returns every batch in order"
        state = {}
        for _, payload in batches:
            apply(state, msgpack.unpackb(payload, raw=False), store.encoding, store.hash_format)
        # Lookup names the fastest tier holding each block (a page may also have a copy
        # below it, e.g. host pages written through to nvme).
        fastest = {h: {min(m, key=["GPU", "CPU", "DISK"].index)} for h, m in state.items()}
        if fastest == want or time.time() > deadline:
            assert fastest == want
            return batches, lookups
        time.sleep(0.2)


def drain(sub, timeout_ms=500):
    """Every (seq, payload) the SUB socket holds, waiting up to timeout_ms for the first."""
    out = []
    while sub.poll(timeout_ms):
        topic, seq, payload = sub.recv_multipart()
        assert topic == b"kvstrata"
        assert len(seq) == 8
        out.append((int.from_bytes(seq, "big"), payload))
        timeout_ms = 200
    return out


@pytest.mark.parametrize("encoding,hash_format", [("array", "int"), ("map", "bytes")])
def test_events_match_store_contents(model_dir, encoding, hash_format):
    work = os.path.join(TMP, f"kv-events-{os.getpid()}-{encoding}")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    store = Store(work, model_dir, encoding, hash_format)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    try:
        store.start()
        sub.connect(store.pub)
        time.sleep(0.5)  # the subscription reaches the publisher before the first write
        # 1. Puts: 6 pages fit the host tier.
        chains = [(1, 6)]
        w = store.drive("write", 1, 6)
        assert [p["outcome"] for p in w["pages"]] == ["WRITE_OUTCOME_STORED"] * 6
        batches, lookups = converge(ctx, store, chains)
        assert {b["tier"] for b in lookups[0]["blocks"]} == {"CPU"}
        # 2. More chains than the host tier holds: pages are evicted from CPU into DISK.
        for seed in (2, 3, 4):
            store.drive("write", seed, 6)
            chains.append((seed, 6))
        batches, lookups = converge(ctx, store, chains)
        tiers = [b["tier"] for r in lookups for b in r["blocks"]]
        assert len(tiers) == 24 and "DISK" in tiers and "CPU" in tiers, tiers
        kinds = set()
        for _, payload in batches:
            for ev in msgpack.unpackb(payload, raw=False)[1]:
                kinds.add(decode_event(ev, encoding)[0])
        assert "BlockRemoved" in kinds, "evicting from host must remove from CPU"
        # The live stream carried the same batches as the replay, in sequence.
        live = drain(sub)
        assert live, "the subscriber received nothing"
        by_seq = dict(batches)
        assert [s for s, _ in live] == list(range(live[0][0], live[0][0] + len(live)))
        for seq, payload in live:
            assert by_seq[seq] == payload
        # 3. Restart over the same data directory.
        store.stop()
        store.start()
        batches, lookups = converge(ctx, store, chains)
        first = msgpack.unpackb(batches[0][1], raw=False)[1][0]
        assert decode_event(first, encoding)[0] == "AllBlocksCleared"
        # What the nvme tier held came back (host-only pages did not): every recovered page
        # is stored in DISK by the new process (a Lookup that reads a recovered page to learn
        # its geometry may also promote it to CPU).
        disk = set()
        for _, payload in batches:
            for ev in msgpack.unpackb(payload, raw=False)[1]:
                kind, f = decode_event(ev, encoding)
                if kind == "BlockStored" and f["medium"] == "DISK":
                    disk.update(f["block_hashes"])
        assert sum(len(r["blocks"]) for r in lookups) > 0, "nothing recovered from nvme"
        assert disk == set(expected(store, lookups)), "recovered pages are stored in DISK"
    finally:
        sub.close()
        ctx.term()
        store.stop()
        if not os.environ.get("KVSTRATA_KEEP_TEST_TMP"):
            shutil.rmtree(work, ignore_errors=True)
