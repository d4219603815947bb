"""kvstrata.engine_block_hashes and kvstrata.keys_from_engine_hashes (the C ABI's
kvstrata_engine_block_hashes / kvstrata_keys_from_engine_hashes) against the independent
hashlib + cbor2 reference of tests/engine_hash (vllm_block_hash_ref.py, shared with
py_engine_hash, not duplicated here). Pure functions: no store needed."""
import os
import sys

import pytest

import kvstrata

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests",
                                "engine_hash"))
import vllm_block_hash_ref as ref  # noqa: E402

FP = bytes(range(32))


def test_hashes_match_reference_with_boundary_tokens_and_extras():
    tokens = [0, 23, 24, 255, 256, 65535, 65536, 2**32, 2**32 + 1, 7] * 7  # 70 tokens
    mm = [("img-a", 3, 5), ("img-b", 20, 30)]
    embeds = [bytes([i]) * 32 for i in range(4)]
    got = kvstrata.engine_block_hashes(tokens, block_size=16, seed="1234", lora_name="lora-x",
                                       mm_items=mm, cache_salt="salt-1",
                                       prompt_embed_hashes=embeds)
    want = ref.block_hashes("1234", tokens, 16, lora_name="lora-x", mm=mm,
                            cache_salt="salt-1", embed_hashes=embeds)
    assert len(got) == 4
    assert got == want


def test_continued_chain_matches_reference():
    tokens = list(range(100, 164))
    head = kvstrata.engine_block_hashes(tokens[:32], block_size=16, seed="0")
    tail = kvstrata.engine_block_hashes(tokens[32:], block_size=16, seed="0", parent=head[-1],
                                        start_token=32)
    assert head + tail == ref.block_hashes("0", tokens, 16)
    assert head + tail == kvstrata.engine_block_hashes(tokens, block_size=16, seed="0")


def test_salt_changes_every_block_and_partial_block_has_no_hash():
    tokens = list(range(40))
    plain = kvstrata.engine_block_hashes(tokens, seed="0")
    salted = kvstrata.engine_block_hashes(tokens, seed="0", cache_salt="tenant-b")
    assert len(plain) == 2 and len(salted) == 2
    assert all(a != b for a, b in zip(plain, salted))
    assert salted == ref.block_hashes("0", tokens, 16, cache_salt="tenant-b")
    assert kvstrata.engine_block_hashes(tokens, seed="1") != plain  # seed = NONE_HASH


def test_bad_input_is_a_clear_error():
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.engine_block_hashes([1, -2] + [0] * 14, seed="0")
    assert e.value.code_name == "INVALID_ARGUMENT" and "index 1 is -2" in e.value.message
    with pytest.raises(kvstrata.Error):
        kvstrata.engine_block_hashes(list(range(32)), seed="0", start_token=16)  # no parent
    with pytest.raises(kvstrata.Error):
        kvstrata.engine_block_hashes(list(range(32)), seed="0", block_size=0)
    with pytest.raises(ValueError):
        kvstrata.engine_block_hashes(list(range(32)), seed="0", parent=b"short")


def test_keys_from_engine_hashes_match_reference_and_bind_the_key_space():
    hashes = kvstrata.engine_block_hashes(list(range(64)), seed="0")
    space = kvstrata.KeySpace(FP, "mla-fp8-656", 16, "acme")
    keys = kvstrata.keys_from_engine_hashes(space, hashes)
    assert keys == ref.engine_chain_keys(FP, "mla-fp8-656", 16, "acme", hashes)
    others = [
        kvstrata.KeySpace(FP, "mla-fp8-656", 16, "shared"),         # namespace
        kvstrata.KeySpace(FP, "mla-fp8-656", 16, "globex"),         # another tenant
        kvstrata.KeySpace(bytes(32), "mla-fp8-656", 16, "acme"),    # model fingerprint
        kvstrata.KeySpace(FP, "mla-bf16-1152", 16, "acme"),         # layout
    ]
    seen = {tuple(keys)}
    for s in others:
        k = kvstrata.keys_from_engine_hashes(s, hashes)
        assert len(k) == 4 and all(a != b for a, b in zip(k, keys))
        seen.add(tuple(k))
    assert len(seen) == 5
    # continuing the chain from a parent key gives the same keys as the whole chain
    assert kvstrata.keys_from_engine_hashes(space, hashes[2:], parent=keys[1]) == keys[2:]
    with pytest.raises(kvstrata.Error):
        kvstrata.keys_from_engine_hashes(kvstrata.KeySpace(FP, "nope", 16, "acme"), hashes)


def test_seed_defaults_to_pythonhashseed_and_is_required(monkeypatch):
    tokens = list(range(32))
    monkeypatch.setenv("PYTHONHASHSEED", "77")
    assert kvstrata.engine_block_hashes(tokens) == ref.block_hashes("77", tokens, 16)
    monkeypatch.delenv("PYTHONHASHSEED")
    with pytest.raises(ValueError, match="PYTHONHASHSEED"):
        kvstrata.engine_block_hashes(tokens)


def test_gqa_pages_take_their_geometry():
    """page_size / encode_page with gqa=(heads, head_dim) (kvstrata_page_spec's appended
    fields): the payload is layers x (K + V) x tokens x heads x dim, and a missing or
    misplaced geometry is refused by name."""
    page, kv = kvstrata.page_size("gqa-bf16", 16, 4, gqa=(8, 128))
    assert kv == 4 * 2 * 16 * 8 * 128 * 2 and page > kv
    assert kvstrata.page_size("gqa-fp8", 16, 4, gqa=(8, 128))[1] == kv // 2
    with pytest.raises(kvstrata.Error, match="num_kv_heads"):
        kvstrata.page_size("gqa-bf16", 16, 4)
    with pytest.raises(kvstrata.Error, match="not a GQA layout"):
        kvstrata.page_size("mla-fp8-656", 16, 4, gqa=(8, 128))
    key = bytes(range(32))
    payload = bytes(range(256)) * (kv // 256)
    out = bytearray(page)
    kvstrata.encode_page("gqa-bf16", key, payload, out, 16, 4, gqa=(8, 128))
    off, n = kvstrata.page_payload(bytes(out), key)
    assert bytes(out[off:off + n]) == payload
    with pytest.raises(kvstrata.Error):  # payload size is not the geometry's
        kvstrata.encode_page("gqa-bf16", key, payload, out, 16, 4, gqa=(4, 128))
    swapped = bytearray(page)  # same size, other geometry: a different (header) page
    kvstrata.encode_page("gqa-bf16", key, payload, swapped, 16, 4, gqa=(16, 64))
    assert swapped != out and swapped[off:] == out[off:]
