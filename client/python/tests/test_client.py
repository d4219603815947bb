"""The Python package kvstrata against a real store process (conftest.py): round trips of many
pages through numpy arrays and torch CPU tensors, zero-copy into registered memory, exists and
lookup, per-key errors, bad input, and a killed store failing within the deadline."""
import os
import time

import numpy as np
import pytest
import torch

import kvstrata
from conftest import TOKEN

LAYOUT = "mla-fp8-656"
TOKENS = 64
LAYERS = 8
FINGERPRINT = bytes(range(32))
PAGE_BYTES, KV_BYTES = kvstrata.page_size(LAYOUT, TOKENS, LAYERS)


def space():
    return kvstrata.KeySpace(FINGERPRINT, LAYOUT, TOKENS, "acme")


def make_chain(seed, n, out):
    """Keys of n blocks of random tokens, their pages encoded into the rows of `out`
    (n x PAGE_BYTES, uint8: numpy or torch), and the KV payloads."""
    rng = np.random.default_rng(seed)
    keys = kvstrata.derive_block_keys(space(), rng.integers(0, 50000, n * TOKENS + 7).tolist())
    assert len(keys) == n
    payloads = rng.integers(0, 256, (n, KV_BYTES), dtype=np.uint8)
    for i, key in enumerate(keys):
        kvstrata.encode_page(LAYOUT, key, payloads[i], out[i], TOKENS, LAYERS,
                             parent=keys[i - 1] if i else None)
    return keys, payloads


def connect(store, **kw):
    return kvstrata.Client([store.address], token=TOKEN, **kw)


def test_round_trip_many_pages_numpy_over_ucx(store):
    n = 32
    with connect(store) as c:
        src = np.empty((n, PAGE_BYTES), np.uint8)
        dst = np.zeros((n, PAGE_BYTES), np.uint8)
        c.register_buffer(src)
        c.register_buffer(dst)
        keys, payloads = make_chain(1, n, src)
        put = c.batch_put_from(space(), keys, list(src))
        assert all(s.ok for s in put), put
        got = c.batch_get_into(keys, list(dst))
        assert all(s.ok for s in got), got
        assert [s.page_bytes for s in got] == [PAGE_BYTES] * n
        assert np.array_equal(dst, src)
        for i in range(n):
            off, length = kvstrata.page_payload(dst[i], expect_key=keys[i])
            assert np.array_equal(dst[i, off:off + length], payloads[i])
        st = c.stats()
        assert st["ucx_put_pages"] == n and st["ucx_get_pages"] == n, st
        assert st["ucx_get_bytes"] == n * PAGE_BYTES and st["grpc_get_pages"] == 0, st


def test_unregistered_numpy_goes_over_grpc_with_the_same_bytes(store):
    n = 8
    with connect(store) as c:
        src = np.empty((n, PAGE_BYTES), np.uint8)
        keys, _ = make_chain(2, n, src)
        assert all(s.ok for s in c.batch_put_from(space(), keys, list(src)))
        dst = np.zeros((n, PAGE_BYTES), np.uint8)
        got = c.batch_get_into(keys, list(dst))
        assert all(s.ok for s in got), got
        assert np.array_equal(dst, src)
        st = c.stats()
        assert st["grpc_put_pages"] == n and st["grpc_get_pages"] == n, st
        assert st["ucx_get_pages"] == 0, st


def test_torch_tensors_zero_copy(store):
    """Pages land in the registered tensor's own memory: the rows passed are views of it, the
    bytes show in the tensor (and in a numpy view sharing its memory), and UCX moved them."""
    n = 12
    with connect(store) as c:
        src = torch.empty((n, PAGE_BYTES), dtype=torch.uint8)
        dst = torch.zeros((n, PAGE_BYTES), dtype=torch.uint8)
        c.register_buffer(src)
        c.register_buffer(dst)
        keys, payloads = make_chain(3, n, src)
        assert all(s.ok for s in c.batch_put_from(space(), keys, [src[i] for i in range(n)]))
        rows = [dst[i] for i in range(n)]
        assert rows[5].data_ptr() == dst.data_ptr() + 5 * PAGE_BYTES  # views, not copies
        ptr_before = dst.data_ptr()
        got = c.batch_get_into(keys, rows)
        assert all(s.ok for s in got), got
        assert dst.data_ptr() == ptr_before
        assert torch.equal(dst, src)
        shared = dst.numpy()  # the same memory
        off, length = kvstrata.page_payload(shared[7], keys[7])
        assert np.array_equal(shared[7, off:off + length], payloads[7])
        st = c.stats()
        assert st["ucx_get_pages"] == n and st["ucx_get_bytes"] == n * PAGE_BYTES, st


def test_exists_and_lookup(store):
    n = 5
    with connect(store) as c:
        src = np.empty((n, PAGE_BYTES), np.uint8)
        keys, _ = make_chain(4, n, src)
        absent = bytes([9] * 32)
        assert c.batch_exists(keys + [absent]) == [False] * (n + 1)
        assert all(s.ok for s in c.batch_put_from(space(), keys[:3], list(src[:3])))
        assert c.batch_exists([keys[2], absent, keys[0], keys[3]]) == [True, False, True, False]
        assert c.exists(keys[1]) and not c.exists(absent)
        prefix, blocks = c.lookup(keys)
        assert prefix == 3
        assert [b.tier for b in blocks] == ["host"] * 3 + [None] * 2
        assert blocks[0].page_bytes == PAGE_BYTES
        lease = c.pin(keys, lease_ms=5000)
        assert lease.pinned == 3 and lease.id
        assert c.unpin(lease.id) == 3


def test_per_key_errors_for_missing_too_small_and_corrupt_pages(store):
    n = 4
    with connect(store) as c:
        src = np.empty((n, PAGE_BYTES), np.uint8)
        keys, _ = make_chain(5, n, src)
        bad = src.copy()
        bad[2, PAGE_BYTES // 2] ^= 1  # page 2's payload: its checksum no longer holds
        put = c.batch_put_from(space(), keys, list(bad))
        assert put[0].ok and put[1].ok
        assert not put[2].ok and put[2].message, put[2]
        assert c.batch_exists(keys[:3]) == [True, True, False]
        dst = np.zeros((3, PAGE_BYTES), np.uint8)
        small = np.zeros(PAGE_BYTES - 1, np.uint8)
        got = c.batch_get_into(keys[:3], [dst[0], small, dst[2]])
        assert got[0].ok
        assert got[1].code == kvstrata.RESOURCE_EXHAUSTED, got[1]
        assert got[2].code == kvstrata.NOT_FOUND and got[2].message, got[2]
        missing = c.batch_get_into([bytes(32)], [dst[0]])
        assert missing[0].code == kvstrata.NOT_FOUND


def test_corrupt_page_is_refused_by_the_page_helpers():
    page = np.empty(PAGE_BYTES, np.uint8)
    key = bytes([1] * 32)
    kvstrata.encode_page(LAYOUT, key, np.zeros(KV_BYTES, np.uint8), page, TOKENS, LAYERS)
    assert kvstrata.page_payload(page, key)[1] == KV_BYTES
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.page_payload(page, bytes([2] * 32))
    assert e.value.code == kvstrata.DATA_LOSS
    page[PAGE_BYTES - 10] ^= 0xFF
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.page_payload(page)
    assert e.value.code == kvstrata.DATA_LOSS and "checksum" in e.value.message


def test_bad_input_raises_clear_exceptions(store):
    c = connect(store)
    keys = [bytes(32)]
    with pytest.raises(TypeError, match="dtype"):
        c.batch_get_into(keys, [np.zeros(PAGE_BYTES // 4, np.float32)])
    with pytest.raises(TypeError, match="dtype"):
        c.batch_get_into(keys, [torch.zeros(PAGE_BYTES // 2, dtype=torch.float16)])
    with pytest.raises(ValueError, match="contiguous"):
        c.batch_get_into(keys, [np.zeros((PAGE_BYTES, 2), np.uint8)[:, 0]])
    with pytest.raises(ValueError, match="contiguous"):
        c.batch_get_into(keys, [torch.zeros((PAGE_BYTES, 2), dtype=torch.uint8)[:, 0]])
    ro = np.zeros(PAGE_BYTES, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        c.batch_get_into(keys, [ro])
    with pytest.raises(TypeError, match="buffer"):
        c.batch_get_into(keys, ["not a buffer"])
    with pytest.raises(ValueError, match="32"):
        c.batch_get_into([b"short"], [np.zeros(8, np.uint8)])
    with pytest.raises(ValueError, match="length"):
        c.batch_get_into(keys, [])
    with pytest.raises(kvstrata.Error) as e:
        c.batch_get_into([], [])
    assert e.value.code_name == "INVALID_ARGUMENT"
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.derive_block_keys(kvstrata.KeySpace(FINGERPRINT, "no-such", 64, "acme"), [1] * 64)
    assert e.value.code_name == "INVALID_ARGUMENT" and "no-such" in e.value.message
    with pytest.raises(kvstrata.Error):
        kvstrata.page_size("no-such", TOKENS, LAYERS)
    c.close()
    assert c.closed
    with pytest.raises(ValueError, match="closed"):
        c.batch_get_into(keys, [np.zeros(8, np.uint8)])
    with pytest.raises(ValueError, match="closed"):
        c.stats()
    c.close()  # idempotent
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.Client(["127.0.0.1:1"], connect_timeout_ms=300)
    assert e.value.code_name == "UNAVAILABLE"


def test_killed_store_is_an_error_within_the_deadline(own_store):
    n = 8
    with connect(own_store) as c:
        src = np.empty((n, PAGE_BYTES), np.uint8)
        dst = np.zeros((n, PAGE_BYTES), np.uint8)
        c.register_buffer(src)
        c.register_buffer(dst)
        keys, _ = make_chain(6, n, src)
        assert all(s.ok for s in c.batch_put_from(space(), keys, list(src)))
        assert all(s.ok for s in c.batch_get_into(keys, list(dst)))
        own_store.kill()
        start = time.monotonic()
        with pytest.raises(kvstrata.Error) as e:
            c.batch_get_into(keys, list(dst), timeout_ms=2000)
        assert e.value.code_name in ("UNAVAILABLE", "DEADLINE_EXCEEDED"), e.value
        assert time.monotonic() - start < 2.0 + 3.0
        start = time.monotonic()
        with pytest.raises(kvstrata.Error):
            c.lookup(keys, timeout_ms=1000)
        assert time.monotonic() - start < 1.0 + 2.0


def test_stalled_store_is_a_deadline_error_in_time(own_store):
    """A store that stops answering (SIGSTOP: connections stay open) must not hang a call:
    each returns DEADLINE_EXCEEDED by its own timeout."""
    n = 4
    with connect(own_store) as c:
        src = np.empty((n, PAGE_BYTES), np.uint8)
        dst = np.zeros((n, PAGE_BYTES), np.uint8)
        c.register_buffer(dst)
        keys, _ = make_chain(7, n, src)
        assert all(s.ok for s in c.batch_put_from(space(), keys, list(src)))
        assert all(s.ok for s in c.batch_get_into(keys, list(dst)))
        own_store.stop()
        try:
            for call in (lambda: c.batch_get_into(keys, list(dst), timeout_ms=1500),
                         lambda: c.lookup(keys, timeout_ms=1500),
                         lambda: c.batch_exists(keys, timeout_ms=1500)):
                start = time.monotonic()
                with pytest.raises(kvstrata.Error) as e:
                    call()
                took = time.monotonic() - start
                assert e.value.code_name == "DEADLINE_EXCEEDED", e.value
                assert 1.0 < took < 1.5 + 3.0, took
        finally:
            own_store.kill()


if __name__ == "__main__":
    raise SystemExit(pytest.main([os.path.abspath(__file__), "-q"]))
