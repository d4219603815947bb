"""Protocol simulation of kvstrata.integrations.vllm.KvstrataConnector against a real store
process (conftest.py).

vLLM cannot be installed here, so this drives the connector through vLLM v1's documented call
order (vllm/distributed/kv_transfer/kv_connector/v1/base.py, pinned in the module docstring)
with CPU torch KV tensors in vLLM's GQA and MLA shapes, the way vLLM's scheduler and model
runner call it. Requests carry vLLM's sha256_cbor block hashes, computed by the independent
hashlib+cbor2 reference of tests/engine_hash (what vLLM does with
--prefix-caching-hash-algo sha256_cbor). It verifies the interface, not a running engine.
"""
import os
import sys
import types

import pytest
import torch

import kvstrata
from conftest import TOKEN
from kvstrata.integrations import vllm as kvv

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "..", "tests",
                                "engine_hash"))
import vllm_block_hash_ref as ref  # noqa: E402

BS, LAYERS, HEADS, HEAD_DIM, NUM_BLOCKS = 16, 4, 2, 64, 64
FP_HEX = "11" * 32
SEED = "0"
ns = types.SimpleNamespace


@pytest.fixture(autouse=True)
def hash_seed(monkeypatch):
    monkeypatch.setenv("PYTHONHASHSEED", SEED)


def vllm_config(address, layout="gqa-bf16", **extra):
    cfg = {"addresses": [address], "token": TOKEN, "namespace": "acme", "layout": layout,
           "model_fingerprint": FP_HEX, "transport": "auto"}
    cfg.update(extra)
    return ns(kv_transfer_config=ns(kv_connector="KvstrataConnector", kv_role="kv_both",
                                    kv_connector_module_path="kvstrata.integrations.vllm",
                                    kv_connector_extra_config=cfg),
              cache_config=ns(block_size=BS, prefix_caching_hash_algo="sha256_cbor"),
              model_config=ns(model="tiny-test"))


class Request:
    """The fields of vllm.v1.request.Request the connector reads."""

    def __init__(self, req_id, tokens, cache_salt=None):
        self.request_id = req_id
        self.prompt_token_ids = list(tokens)
        self.num_tokens = self.num_prompt_tokens = len(tokens)
        self.cache_salt = cache_salt
        self.block_hashes = ref.block_hashes(SEED, self.prompt_token_ids, BS,
                                             cache_salt=cache_salt)


class Blocks:
    """vllm.v1.core.kv_cache_manager.KVCacheBlocks: get_block_ids() per KV cache group."""

    def __init__(self, ids):
        self.ids = list(ids)

    def get_block_ids(self):
        return (self.ids,)


def computed_kv(like, block_hash, layer):
    """What attention 'computes' for a block: a deterministic function of its hash and layer,
    random-looking (never zeros)."""
    g = torch.Generator().manual_seed(int.from_bytes(block_hash[:7], "little") * 131 + layer)
    return torch.randn(like.shape, generator=g).to(like.dtype) if like.dtype.is_floating_point \
        else torch.randint(1, 255, like.shape, generator=g, dtype=like.dtype)


class Engine:
    """One vLLM instance: a scheduler-side and a worker-side connector and the KV tensors."""

    def __init__(self, address, layout="gqa-bf16", worker_address=None, first_block=0):
        self.layout = layout
        self.sched = kvv.KvstrataConnector(vllm_config(address, layout),
                                           kvv.KVConnectorRole.SCHEDULER)
        self.worker = kvv.KvstrataConnector(vllm_config(worker_address or address, layout),
                                            kvv.KVConnectorRole.WORKER)
        if layout.startswith("gqa"):
            dtype = torch.bfloat16 if layout == "gqa-bf16" else torch.uint8
            shape = (2, NUM_BLOCKS, BS, HEADS, HEAD_DIM)
        else:
            dtype = torch.bfloat16 if layout == "mla-bf16-1152" else torch.uint8
            shape = (NUM_BLOCKS, BS, 576 if layout == "mla-bf16-1152" else 656)
        self.kv = {f"model.layers.{i}.self_attn.attn": torch.zeros(shape, dtype=dtype)
                   for i in range(LAYERS)}
        self.worker.register_kv_caches(self.kv)
        self.next_block = first_block

    def block(self, layer, block):
        t = self.kv[f"model.layers.{layer}.self_attn.attn"]
        return t[:, block] if self.layout.startswith("gqa") else t[block]

    def step(self, req, local_hit=0):
        """A prefill step of a new request, in vLLM's order. Returns (block ids, external
        tokens, load-error block ids)."""
        n, load_async = self.sched.get_num_new_matched_tokens(req, local_hit)
        assert (n, load_async) == self.sched.get_num_new_matched_tokens(req, local_hit)
        assert load_async is False
        nblocks = -(-req.num_tokens // BS)
        ids = list(range(self.next_block, self.next_block + nblocks))
        self.next_block += nblocks
        self.sched.update_state_after_alloc(req, Blocks(ids), n)
        so = ns(scheduled_new_reqs=[ns(req_id=req.request_id, block_ids=(ids,),
                                       num_computed_tokens=local_hit + n)],
                scheduled_cached_reqs=ns(req_ids=[], new_block_ids=[], num_computed_tokens=[]),
                num_scheduled_tokens={req.request_id: req.num_tokens - local_hit - n})
        meta = self.sched.build_connector_meta(so)
        self.worker.bind_connector_metadata(meta)
        self.worker.start_load_kv(ns(no_compile_layers={}))
        first_computed = (local_hit + n) // BS
        for layer, name in enumerate(self.kv):
            self.worker.wait_for_layer_load(name)
            for b in range(first_computed, len(req.block_hashes)):  # attention writes KV
                dst = self.block(layer, ids[b])
                dst.copy_(computed_kv(dst, req.block_hashes[b], layer))
            self.worker.save_kv_layer(name, self.kv[name], attn_metadata=None)
        self.worker.wait_for_save()
        assert self.worker.get_finished({req.request_id}) == (None, None)
        self.worker.clear_connector_metadata()
        errors = self.worker.get_block_ids_with_load_errors()
        self.sched.update_connector_output(ns(finished_sending=None, finished_recving=None))
        assert self.sched.request_finished(req, ids) == (False, None)
        return ids, n, errors

    def close(self):
        self.sched.shutdown()
        self.worker.shutdown()


def prompt(seed, n):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 150000, (n,), generator=g).tolist()


@pytest.mark.parametrize("layout", ["gqa-bf16", "mla-bf16-1152"])
def test_second_request_loads_the_first_ones_kv(store, layout):
    shared = prompt(1 if layout == "gqa-bf16" else 2, 5 * BS)
    r1 = Request("r1", shared + [7] * 9)
    r2 = Request("r2", shared + [8] * 20)
    e1 = Engine(store.address, layout)
    e2 = Engine(store.address, layout, first_block=30)  # another engine, other block ids
    try:
        ids1, n1, err1 = e1.step(r1)
        assert n1 == 0 and err1 == set()
        ids2, n2, err2 = e2.step(r2)
        assert n2 == 5 * BS and err2 == set()
        for layer in range(LAYERS):
            for b in range(5):
                got, want = e2.block(layer, ids2[b]), e1.block(layer, ids1[b])
                assert want.abs().sum() > 0
                assert torch.equal(got, want), (layer, b)
        # The stored page has the documented layout: per layer (registration order) the
        # block's K then V (GQA) or its records (MLA).
        key = e1.sched._keys(r1)[0]
        page = torch.zeros(e1.worker._save_staging.page_bytes, dtype=torch.uint8)
        with kvstrata.Client([store.address], token=TOKEN) as c:
            assert c.batch_get_into([key], [page])[0].ok
        off, n = kvstrata.page_payload(page, key)
        want = torch.cat([e1.block(layer, ids1[0]).contiguous().view(-1).view(torch.uint8)
                          for layer in range(LAYERS)])
        assert torch.equal(page[off:off + n], want)
        # The loaded blocks came from kvstrata: nothing recomputed them in e2.
        st = e2.worker._client.stats()
        assert st["hits"] == 5, st
        # A full-prompt hit still leaves one block for vLLM to compute.
        e3 = Engine(store.address, layout)
        try:
            n3, _ = e3.sched.get_num_new_matched_tokens(Request("r3", shared), 0)
            assert n3 == 4 * BS
        finally:
            e3.close()
    finally:
        e1.close()
        e2.close()


def test_cache_salt_isolates_requests(store):
    shared = prompt(3, 4 * BS)
    e = Engine(store.address)
    try:
        _, n, _ = e.step(Request("a", shared + [1, 2, 3], cache_salt="tenant-a"))
        assert n == 0
        # Same tokens, another salt: vLLM's first block hash differs, so nothing matches.
        assert e.sched.get_num_new_matched_tokens(
            Request("b", shared + [1, 2, 3], cache_salt="tenant-b"), 0) == (0, False)
        assert e.sched.get_num_new_matched_tokens(
            Request("c", shared + [1, 2, 3]), 0) == (0, False)
        # The same salt matches.
        assert e.sched.get_num_new_matched_tokens(
            Request("d", shared + [4, 5], cache_salt="tenant-a"), 0) == (4 * BS, False)
    finally:
        e.close()


def test_chunked_prefill_saves_blocks_as_they_complete(store):
    """Prefill in two scheduler steps (a new request, then a cached one): each step saves the
    full prompt blocks it completes, and another engine then finds them."""
    tokens = prompt(6, 6 * BS + 5)
    req = Request("chunked", tokens)
    e, probe = Engine(store.address), Engine(store.address)
    try:
        assert e.sched.get_num_new_matched_tokens(req, 0) == (0, False)
        ids = list(range(7))
        e.sched.update_state_after_alloc(req, Blocks(ids[:4]), 0)
        chunks = [(ns(scheduled_new_reqs=[ns(req_id="chunked", block_ids=(ids[:4],),
                                             num_computed_tokens=0)],
                      scheduled_cached_reqs=ns(req_ids=[], new_block_ids=[],
                                               num_computed_tokens=[]),
                      num_scheduled_tokens={"chunked": 3 * BS + 4}), 3),
                  (ns(scheduled_new_reqs=[],
                      scheduled_cached_reqs=ns(req_ids=["chunked"], new_block_ids=[(ids[4:],)],
                                               num_computed_tokens=[3 * BS + 4]),
                      num_scheduled_tokens={"chunked": 3 * BS + 1}), 6)]
        for so, blocks_done in chunks:
            meta = e.sched.build_connector_meta(so)
            e.worker.bind_connector_metadata(meta)
            e.worker.start_load_kv(None)
            for layer, name in enumerate(e.kv):
                e.worker.wait_for_layer_load(name)
                for b in range(blocks_done):
                    dst = e.block(layer, ids[b])
                    dst.copy_(computed_kv(dst, req.block_hashes[b], layer))
                e.worker.save_kv_layer(name, e.kv[name], None)
            e.worker.wait_for_save()
            e.worker.clear_connector_metadata()
            other = Request("probe", tokens)
            assert probe.sched.get_num_new_matched_tokens(other, 0) == (
                min(blocks_done, 6) * BS, False), blocks_done
        assert e.sched.request_finished(req, ids) == (False, None)
    finally:
        e.close()
        probe.close()


class FlipByteClient:
    """A fault injector over a real kvstrata.Client: after a successful batch_get_into it flips
    one byte of the KV payload of the pages at `corrupt` (as memory or a link might)."""

    def __init__(self, client, corrupt):
        self.client, self.corrupt = client, set(corrupt)

    def __getattr__(self, name):
        return getattr(self.client, name)

    def batch_get_into(self, keys, buffers, timeout_ms=0):
        st = self.client.batch_get_into(keys, buffers, timeout_ms)
        for i in self.corrupt:
            if i < len(buffers) and st[i].ok:
                buffers[i][st[i].page_bytes - 1] ^= 0x40
        return st


def test_corrupt_page_is_reported_and_not_written(store):
    shared = prompt(4, 6 * BS)
    e1, e2 = Engine(store.address), Engine(store.address, first_block=20)
    try:
        e1.step(Request("w", shared + [9]))
        e2.worker._client = FlipByteClient(e2.worker._client, corrupt=[2])
        ids, n, errors = e2.step(Request("r", shared + [10]))
        assert n == 6 * BS
        assert errors == {ids[2]}
        assert e2.block(0, ids[2]).abs().sum() == 0  # the bad page never reached the cache
        assert torch.equal(e2.block(0, ids[3]), computed_kv(e2.block(0, ids[3]),
                                                            Request("x", shared).block_hashes[3],
                                                            0))
    finally:
        e1.close()
        e2.close()


def test_missing_pages_are_reported(store, own_store):
    """The scheduler sees 6 blocks in store A; the worker reads from store B, which holds
    only the first 3 (as if the rest were evicted between lookup and load)."""
    shared = prompt(5, 6 * BS)
    e1 = Engine(store.address)
    try:
        e1.step(Request("w", shared + [9]))
        keys = e1.sched._keys(Request("k", shared))
        pb = e1.worker._save_staging.page_bytes
        pages = torch.zeros((3, pb), dtype=torch.uint8)
        with kvstrata.Client([store.address], token=TOKEN) as a, \
                kvstrata.Client([own_store.address], token=TOKEN) as b:
            assert all(s.ok for s in a.batch_get_into(keys[:3], list(pages)))
            assert all(s.ok for s in b.batch_put_from(e1.sched.space, keys[:3], list(pages)))
    finally:
        e1.close()
    e2 = Engine(store.address, worker_address=own_store.address, first_block=40)
    try:
        ids, n, errors = e2.step(Request("r", shared + [10]))
        assert n == 6 * BS
        assert errors == set(ids[3:6])
        assert e2.block(1, ids[2]).abs().sum() > 0 and e2.block(1, ids[4]).abs().sum() == 0
    finally:
        e2.close()


def test_hashes_of_another_seed_disable_the_connector(store):
    """vLLM hashing with another seed than PYTHONHASHSEED says (a misconfigured engine): the
    connector notices on the first request and neither finds nor writes pages."""
    tokens = prompt(7, 3 * BS + 1)
    good = Engine(store.address)
    try:
        good.step(Request("ok", tokens))
        assert good.sched.get_num_new_matched_tokens(Request("ok2", tokens), 0) == (3 * BS,
                                                                                    False)
    finally:
        good.close()
    bad = Engine(store.address)
    try:
        wrong = Request("wrong", tokens)
        wrong.block_hashes = ref.block_hashes("1", tokens, BS)
        assert bad.sched.get_num_new_matched_tokens(wrong, 0) == (0, False)
        _, n, _ = bad.step(Request("later", tokens))  # disabled for good: no lookup either
        assert n == 0
        assert bad.sched.build_connector_meta(ns(scheduled_new_reqs=[], num_scheduled_tokens={},
                                                 scheduled_cached_reqs=None)).saves == []
    finally:
        bad.close()


def test_refuses_unsafe_or_wrong_configuration(store, monkeypatch):
    cfg = vllm_config(store.address)
    with pytest.raises(ValueError, match="layout"):
        kvv.KvstrataConnector(vllm_config(store.address, layout="paged"),
                              kvv.KVConnectorRole.WORKER)
    with pytest.raises(ValueError, match="addresses"):
        kvv.KvstrataConnector(vllm_config(store.address, addresses=[]),
                              kvv.KVConnectorRole.WORKER)
    cfg.cache_config.prefix_caching_hash_algo = "sha256"
    with pytest.raises(RuntimeError, match="sha256_cbor"):
        kvv.KvstrataConnector(cfg, kvv.KVConnectorRole.SCHEDULER)
    monkeypatch.delenv("PYTHONHASHSEED")
    with pytest.raises(RuntimeError, match="PYTHONHASHSEED"):
        kvv.KvstrataConnector(vllm_config(store.address), kvv.KVConnectorRole.SCHEDULER)
    monkeypatch.setenv("PYTHONHASHSEED", SEED)
    w = kvv.KvstrataConnector(vllm_config(store.address), kvv.KVConnectorRole.WORKER)
    try:
        with pytest.raises(ValueError, match="needs a"):  # an MLA tensor for a GQA layout
            w.register_kv_caches({"l0": torch.zeros((8, BS, 576), dtype=torch.bfloat16)})
    finally:
        w.shutdown()
