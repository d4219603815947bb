"""Cross-checks kvstrata's C++ sha256_cbor block hashes and engine-hash key chain against
the independent Python reference (vllm_block_hash_ref.py: hashlib + cbor2).

The C++ side runs as the test-only binary engine_hash_tool (path in $ENGINE_HASH_TOOL), one
JSON request per line. Every wait is bounded by the subprocess timeout.
"""

import hashlib
import json
import os
import random
import subprocess

import pytest

import vllm_block_hash_ref as ref

TOOL = os.environ.get("ENGINE_HASH_TOOL", "")
BOUNDARY = [23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 0]


def run_tool(requests):
    """Sends requests to the C++ tool; returns its answers in order."""
    assert TOOL and os.access(TOOL, os.X_OK), "set ENGINE_HASH_TOOL to the built engine_hash_tool"
    stdin = "".join(json.dumps(r) + "\n" for r in requests)
    done = subprocess.run([TOOL], input=stdin, capture_output=True, text=True, timeout=60,
                          check=True)
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(answers) == len(requests), done.stderr
    return answers


def cxx(**req):
    return run_tool([req])[0]


def py(req):
    pairs = ref.block_preimages_and_hashes(
        req["seed"], req["tokens"], req["block_size"], lora_name=req.get("lora_name"),
        mm=[tuple(m) for m in req.get("mm", [])], cache_salt=req.get("cache_salt"),
        embed_hashes=[bytes.fromhex(h) for h in req.get("embed_hashes", [])] or None,
        start_token=req.get("start_token", 0),
        parent=bytes.fromhex(req["parent"]) if req.get("parent") else None)
    return {"hashes": [h.hex() for _, h in pairs], "preimages": [p.hex() for p, _ in pairs]}


def assert_same(req):
    got = cxx(**req)
    assert "error" not in got, got
    want = py(req)
    assert got["preimages"] == want["preimages"]
    assert got["hashes"] == want["hashes"]
    assert got["none_hash"] == ref.none_hash(req["seed"]).hex()
    return got


@pytest.mark.parametrize("seed", ["0", "12345", ""])
def test_none_hash_is_the_seed_as_cbor_text(seed):
    assert cxx(seed=seed, block_size=4, tokens=[])["none_hash"] == hashlib.sha256(
        bytes([0x60 + len(seed)]) + seed.encode()).hexdigest()


@pytest.mark.parametrize("token", BOUNDARY)
def test_integer_width_boundaries(token):
    assert_same(dict(seed="0", block_size=2, tokens=[token, token, 7]))


def test_boundary_tokens_in_one_block_and_a_chain():
    got = assert_same(dict(seed="42", block_size=len(BOUNDARY), tokens=BOUNDARY * 3 + [1]))
    assert len(got["hashes"]) == 3  # the trailing token is a partial block: no hash


def test_multi_block_chain_and_continuation():
    rng = random.Random(7)
    tokens = [rng.randrange(152000) for _ in range(16 * 9 + 5)]
    full = assert_same(dict(seed="0", block_size=16, tokens=tokens))
    assert len(full["hashes"]) == 9
    tail = assert_same(dict(seed="0", block_size=16, tokens=tokens[48:], start_token=48,
                            parent=full["hashes"][2]))
    assert tail["hashes"] == full["hashes"][3:]
    # An item that ends exactly where the continuation starts is not part of it.
    mm = [["a", 40, 8], ["b", 60, 30]]
    full = assert_same(dict(seed="0", block_size=16, tokens=tokens, mm=mm))
    tail = assert_same(dict(seed="0", block_size=16, tokens=tokens[48:], start_token=48,
                            parent=full["hashes"][2], mm=mm))
    assert tail["hashes"] == full["hashes"][3:]


def test_salt_lora_multimodal_and_prompt_embeds():
    rng = random.Random(11)
    tokens = [rng.randrange(1000) for _ in range(64)]
    embeds = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    mm = [["img-a", 3, 20], ["img-b", 23, 9], ["img-c", 32, 16], ["img-d", 50, 2]]
    for extras in [dict(cache_salt="tenant-secret"), dict(lora_name="sql-lora"),
                   dict(mm=mm), dict(embed_hashes=embeds),
                   dict(cache_salt="s", lora_name="l", mm=mm, embed_hashes=embeds)]:
        base = assert_same(dict(seed="0", block_size=16, tokens=tokens))
        got = assert_same(dict(seed="0", block_size=16, tokens=tokens, **extras))
        assert got["hashes"][0] != base["hashes"][0], extras


def test_salt_only_in_the_first_block():
    tokens = list(range(32))
    a = assert_same(dict(seed="0", block_size=16, tokens=tokens, cache_salt="x"))
    b = py(dict(seed="0", block_size=16, tokens=tokens))
    # Block 1's own encoding differs only through its parent.
    assert a["preimages"][1][70:] == b["preimages"][1][70:]
    assert a["hashes"][1] != b["hashes"][1]


def test_random_requests_agree():
    rng = random.Random(2026)
    requests = []
    for _ in range(150):
        bs = rng.choice([1, 2, 3, 16, 64])
        n = rng.randrange(0, bs * 6 + 3)
        tokens = [rng.choice([rng.randrange(30), rng.randrange(70000), rng.randrange(2**40)])
                  for _ in range(n)]
        req = dict(seed=str(rng.randrange(100)), block_size=bs, tokens=tokens)
        if rng.random() < 0.5:
            req["cache_salt"] = rng.choice(["", "salt", "ünïcødé-salt"])
        if rng.random() < 0.3:
            req["lora_name"] = rng.choice(["", "lora-1"])
        pos, mm = 0, []
        while rng.random() < 0.6 and pos < n + 4:
            pos += rng.randrange(0, 9)
            length = rng.randrange(1, 12)
            mm.append([f"mm{len(mm)}", pos, length])
            pos += length
        if mm:
            req["mm"] = mm
        if rng.random() < 0.2:
            req["embed_hashes"] = [os.urandom(32).hex() for _ in range(n // bs)]
        requests.append(req)
    for req, got in zip(requests, run_tool(requests)):
        assert "error" not in got, (req, got)
        want = py(req)
        assert got["hashes"] == want["hashes"], req
        assert got["preimages"] == want["preimages"], req


def test_engine_chain_keys_bind_model_layout_and_namespace():
    tokens = list(range(100, 164))
    fp = hashlib.sha256(b"model").digest()
    engine = [bytes.fromhex(h) for h in cxx(seed="0", block_size=16, tokens=tokens)["hashes"]]
    for ns in ["shared", "tenant:acme", "acme"]:
        for layout in ["gqa-bf16", "mla-fp8-656"]:
            key = dict(fingerprint=fp.hex(), layout=layout, page_tokens=16, namespace=ns)
            got = cxx(seed="0", block_size=16, tokens=tokens, key=key)["keys"]
            want = ref.engine_chain_keys(fp, layout, 16, ns, engine)
            assert got == [k.hex() for k in want], (ns, layout)
    parent = hashlib.sha256(b"p").digest()
    key = dict(fingerprint=fp.hex(), layout="gqa-bf16", page_tokens=16, namespace="shared",
               parent=parent.hex())
    got = cxx(seed="0", block_size=16, tokens=tokens, key=key)["keys"]
    assert got == [k.hex() for k in ref.engine_chain_keys(fp, "gqa-bf16", 16, "shared",
                                                          engine, parent)]


@pytest.mark.parametrize("req,message", [
    (dict(tokens=[1, -5, 3, 4]), "index 1 is -5"),
    (dict(tokens=[1, 2**64, 3, 4]), "index 1"),
    (dict(tokens=[1, 2, 3, 4], mm=[["a", 2, 2], ["b", 3, 1]]), "multimodal item 1"),
    (dict(tokens=[1, 2, 3, 4], embed_hashes=["00" * 32] * 3), "prompt-embedding hashes"),
    (dict(tokens=[1, 2, 3, 4], start_token=2), "start_token"),
    (dict(tokens=[1, 2, 3, 4], block_size=0), "block_size"),
])
def test_bad_input_is_refused_by_name(req, message):
    full = dict(seed="0", block_size=2)
    full.update(req)
    got = cxx(**full)
    assert "error" in got and message in got["error"], got
