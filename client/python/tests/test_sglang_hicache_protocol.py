"""Protocol simulation of kvstrata.integrations.sglang.KvstrataStorage against a real store
process (conftest.py).

SGLang cannot be installed here, so this drives the backend through HiCache's documented
storage calls (python/sglang/srt/mem_cache/hicache_storage.py, pinned in the module
docstring): construction as cls(storage_config, kwargs), register_mem_pool_host, then
batch_exists / batch_set_v1 / batch_get_v1 with host indices. HostPool below holds CPU torch
tensors in SGLang's page_first and page_first_direct host layouts and answers
get_page_buffer_meta(indices) with (ptrs, sizes) like SGLang's MHA (K and V buffer per page)
and MLA (one buffer per page) host pools. It verifies the interface, not a running engine.
"""
import hashlib
import types

import pytest
import torch

import kvstrata
from conftest import TOKEN
from kvstrata.integrations import sglang as kvs

PAGE, LAYERS, HEADS, HEAD_DIM, PAGES = 16, 3, 2, 32, 12
ns = types.SimpleNamespace


class HostPool:
    """SGLang's host KV pool as the backend sees it (layout, geometry, page buffer meta)."""

    def __init__(self, mla, layout="page_first", dtype=torch.bfloat16, seed=0):
        self.page_size, self.layer_num, self.layout, self.dtype = PAGE, LAYERS, layout, dtype
        self.mla = mla
        size = PAGES * PAGE
        if mla:
            self.kv_lora_rank, self.qk_rope_head_dim = 512, 64
            inner = (1, 576)
        else:
            self.head_num, self.head_dim = HEADS, HEAD_DIM
            inner = (HEADS, HEAD_DIM)
        if layout == "page_first":
            shape = (size, LAYERS) + inner
        else:  # page_first_direct
            shape = (PAGES, LAYERS, PAGE) + inner
        if not mla:
            shape = (2,) + shape
        g = torch.Generator().manual_seed(seed)
        self.buf = torch.randn(shape, generator=g).to(dtype) if dtype.is_floating_point \
            else torch.randint(0, 256, shape, generator=g, dtype=dtype)

    def page(self, index):
        """The bytes of the page starting at token slot `index` (K and V for MHA)."""
        i = index if self.layout == "page_first" else index // PAGE
        if self.mla:
            return (self.buf[i:i + PAGE] if self.layout == "page_first" else self.buf[i])
        return (self.buf[:, i:i + PAGE] if self.layout == "page_first" else self.buf[:, i])

    def get_page_buffer_meta(self, indices):
        ptrs, sizes = [], []
        for index in indices[::PAGE].tolist():
            parts = [self.page(index)] if self.mla else list(self.page(index))
            for p in parts:
                assert p.is_contiguous()
                ptrs.append(p.data_ptr())
                sizes.append(p.numel() * p.element_size())
        return ptrs, sizes


def storage_config(address, mla, tp_rank=0, **extra):
    cfg = {"backend_name": "kvstrata", "module_path": "kvstrata.integrations.sglang",
           "class_name": "KvstrataStorage", "interface_v1": 1, "addresses": [address],
           "token": TOKEN, "namespace": "acme", "model_fingerprint": "22" * 32}
    cfg.update(extra)
    return ns(tp_rank=tp_rank, tp_size=2, pp_rank=0, pp_size=1, attn_cp_rank=0,
              attn_cp_size=1, is_mla_model=mla, enable_storage_metrics=False,
              is_page_first_layout=True, model_name="tiny/model", extra_config=cfg)


def backend(address, pool, **kw):
    b = kvs.KvstrataStorage(storage_config(address, pool.mla, **kw), {})
    b.register_mem_pool_host(pool)
    return b


def hash_keys(seed, n):
    """SGLang's page keys: a hex SHA-256 chain over the pages' tokens (get_hash_str)."""
    keys, prior = [], b""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        tokens = torch.randint(0, 150000, (PAGE,), generator=g, dtype=torch.int32)
        prior = hashlib.sha256(prior + tokens.numpy().tobytes()).digest()
        keys.append(prior.hex())
    return keys


def expected_payload(pool, index):
    """The kvstrata payload of the pool's page at slot `index`, built independently."""
    parts = [pool.page(index)] if pool.mla else list(pool.page(index))
    if pool.layout == "page_first":
        parts = [p.transpose(0, 1) for p in parts]  # [tokens, layers, ...] -> [layers, ...]
    return torch.stack(parts, dim=1).contiguous().view(-1).view(torch.uint8)


def slots(pages):
    return torch.cat([torch.arange(p * PAGE, (p + 1) * PAGE) for p in pages])


@pytest.mark.parametrize("mla,layout,dtype,seed", [
    (False, "page_first", torch.bfloat16, 10), (False, "page_first_direct", torch.bfloat16, 11),
    (False, "page_first", torch.uint8, 12), (True, "page_first", torch.bfloat16, 13),
    (True, "page_first_direct", torch.bfloat16, 14)])
def test_pages_round_trip_between_two_engines(store, mla, layout, dtype, seed):
    src = HostPool(mla, layout, dtype, seed=1)
    dst = HostPool(mla, layout, dtype, seed=2)
    keys = hash_keys(seed, 5)
    a, b = backend(store.address, src), backend(store.address, dst)
    try:
        assert b.batch_exists(keys) == 0
        assert a.batch_set_v1(keys, slots([0, 1, 2, 3, 4])) == [True] * 5
        assert b.batch_exists(keys) == 5
        assert b.exists(keys[2])
        before = dst.page(6 * PAGE).clone()
        assert b.batch_get_v1(keys[1:4], slots([7, 9, 11])) == [True] * 3
        for s, d in zip([1, 2, 3], [7, 9, 11]):
            assert torch.equal(dst.page(d * PAGE), src.page(s * PAGE)), (s, d)
        assert torch.equal(dst.page(6 * PAGE), before)  # nothing else was written
        # The stored page is a real kvstrata page of the documented layout: layer-major, per
        # layer K then V (MHA), each [tokens, heads, head_dim] (vLLM's GQA block order).
        page = torch.zeros(a._staging.page_bytes, dtype=torch.uint8)
        with kvstrata.Client([store.address], token=TOKEN) as c:
            assert c.batch_get_into([a.kv_key(keys[0])], [page])[0].ok
        off, n = kvstrata.page_payload(page, a.kv_key(keys[0]))
        assert torch.equal(page[off:off + n], expected_payload(src, 0))
        # Setting again is idempotent.
        assert a.batch_set_v1(keys[:2], slots([0, 1])) == [True, True]
    finally:
        a.close()
        b.close()


def test_batch_exists_counts_leading_keys_and_missing_pages_report_false(store):
    src, dst = HostPool(False, seed=3), HostPool(False, seed=4)
    keys = hash_keys(50, 4)
    a, b = backend(store.address, src), backend(store.address, dst)
    try:
        assert a.batch_set_v1([keys[0], keys[1], keys[3]], slots([0, 1, 3])) == [True] * 3
        assert b.batch_exists(keys) == 2  # keys[2] is absent: 2 leading, not 3
        assert b.batch_exists(keys[3:]) == 1
        untouched = dst.page(5 * PAGE).clone()
        got = b.batch_get_v1(keys[1:3], slots([4, 5]))
        assert got == [True, False]
        assert torch.equal(dst.page(4 * PAGE), src.page(1 * PAGE))
        assert torch.equal(dst.page(5 * PAGE), untouched)
    finally:
        a.close()
        b.close()


def test_keys_bind_namespace_rank_and_model(store):
    pool = HostPool(False, seed=5)
    keys = hash_keys(60, 2)
    a = backend(store.address, pool)
    others = [backend(store.address, pool, namespace="shared"),
              backend(store.address, pool, tp_rank=1),
              backend(store.address, pool, model_fingerprint="33" * 32)]
    try:
        assert a.batch_set_v1(keys, slots([0, 1])) == [True, True]
        for o in others:
            assert o.batch_exists(keys) == 0
            assert o.kv_key(keys[0]) != a.kv_key(keys[0])
        # MLA keys do not depend on the TP rank, and rank 1 does not write.
        m0 = backend(store.address, HostPool(True, seed=6))
        m1 = backend(store.address, HostPool(True, seed=7), tp_rank=1)
        try:
            assert m0.kv_key(keys[0]) == m1.kv_key(keys[0])
            mkeys = hash_keys(61, 1)
            assert m1.batch_set_v1(mkeys, slots([0])) == [True]
            assert m0.batch_exists(mkeys) == 0
            assert m0.batch_set_v1(mkeys, slots([0])) == [True]
            assert m1.batch_exists(mkeys) == 1
        finally:
            m0.close()
            m1.close()
    finally:
        a.close()
        for o in others:
            o.close()


def test_refuses_pools_it_cannot_store(store):
    with pytest.raises(ValueError, match="page_first"):
        backend(store.address, HostPool(False, layout="layer_first_oops"))
    with pytest.raises(ValueError, match="bf16"):
        backend(store.address, HostPool(False, dtype=torch.float32))
    with pytest.raises(ValueError, match="addresses"):
        kvs.KvstrataStorage(storage_config(store.address, False, addresses=""), {})
    b = backend(store.address, HostPool(False))
    try:
        with pytest.raises(ValueError, match="target_locations"):
            b.get("00")
        with pytest.raises(ValueError, match="bytes; a page is"):
            b.set("00", torch.zeros(8, dtype=torch.uint8))
        with pytest.raises(ValueError, match="buffers"):
            b.batch_get_v1(hash_keys(70, 2), slots([0]))  # 1 page of buffers for 2 keys
    finally:
        b.close()


@pytest.mark.parametrize("mla", [False, True])
def test_flat_page_api_interoperates_with_v1(store, mla):
    """get/set/batch_get/batch_set with flat data pages (MHA: K then V) read and write the
    same kvstrata pages as the zero-copy calls."""
    src, dst = HostPool(mla, seed=8), HostPool(mla, seed=9)
    a, b = backend(store.address, src), backend(store.address, dst)
    keys = hash_keys(80 + mla, 3)
    try:
        assert a.batch_set_v1(keys[:2], slots([0, 1])) == [True, True]
        flat = [torch.zeros(src.page(0).numel(), dtype=src.dtype) for _ in range(2)]
        got = b.batch_get(keys[:3], flat + [torch.zeros_like(flat[0])])
        assert got[0] is flat[0] and got[1] is flat[1] and got[2] is None
        for i in range(2):
            assert torch.equal(flat[i], src.page(i * PAGE).contiguous().view(-1))
        page2 = src.page(2 * PAGE).contiguous().view(-1)
        assert b.set(keys[2], page2) is True
        assert b.batch_get_v1(keys[2:], slots([5])) == [True]
        assert torch.equal(dst.page(5 * PAGE), src.page(2 * PAGE))
        assert torch.equal(b.get(keys[2], torch.zeros_like(page2)), page2)
    finally:
        a.close()
        b.close()


def test_client_takes_raw_pointer_and_size(store):
    """The (ptr, size) buffer path of batch_put_from / batch_get_into."""
    space = kvstrata.KeySpace(bytes(32), "mla-fp8-656", 16, "acme")
    key = kvstrata.derive_block_keys(space, list(range(16)))[0]
    page_bytes, kv_bytes = kvstrata.page_size("mla-fp8-656", 16, 2)
    src = torch.zeros(page_bytes, dtype=torch.uint8)
    kvstrata.encode_page("mla-fp8-656", key, torch.randint(0, 255, (kv_bytes,),
                                                          dtype=torch.uint8), src, 16, 2)
    dst = torch.zeros(page_bytes, dtype=torch.uint8)
    with kvstrata.Client([store.address], token=TOKEN) as c:
        assert c.batch_put_from(space, [key], [(src.data_ptr(), page_bytes)])[0].ok
        assert c.batch_get_into([key], [(dst.data_ptr(), page_bytes)])[0].ok
        assert torch.equal(src, dst)
        for bad, err in [((0, 8), ValueError), ((dst.data_ptr(), -1), ValueError),
                         ((dst.data_ptr(),), TypeError), (("x", 8), TypeError)]:
            with pytest.raises(err):
                c.batch_get_into([key], [bad])
