"""kvstrata as an SGLang HiCache storage backend (L3): ``KvstrataStorage``.

Pinned interface: SGLang ``python/sglang/srt/mem_cache/hicache_storage.py`` (HiCacheStorage,
HiCacheStorageConfig) as of sgl-project/sglang main commit 001067fffe33 (late 2026), the
newest version read for this module, with the zero-copy page API (``interface_v1``). SGLang
loads it as a dynamic backend::

    python -m sglang.launch_server --model-path MODEL --enable-hierarchical-cache \\
      --hicache-mem-layout page_first --hicache-storage-backend dynamic \\
      --hicache-storage-backend-extra-config '{"backend_name":"kvstrata",
        "module_path":"kvstrata.integrations.sglang","class_name":"KvstrataStorage",
        "interface_v1":1,"addresses":["10.0.0.5:7000"],"token":"tok-acme",
        "namespace":"acme"}'

and constructs it as ``cls(storage_config, kwargs)``, then calls
``register_mem_pool_host(pool)``. When SGLang is importable the class subclasses its
HiCacheStorage; otherwise a local base with the same method names stands in, so the module
imports and can be tested by protocol simulation (not against a running engine).

Keys. SGLang names a page by a hex SHA-256 chain of its prefix's tokens (``get_hash_str``).
kvstrata key = ``keys_from_engine_hashes(space, [h])`` with no parent, where
``h = SHA-256("kvstrata/sglang-hicache/v1" 0x00 key 0x00 rank)`` and ``rank`` is
"tp{r}/{n}" (plus "pp{r}/{n}" with pipeline parallelism) for MHA models, whose ranks hold
different heads, and "" for MLA models, whose ranks hold the same latent KV. The key space
binds the model fingerprint, the page layout, the page size and the namespace, so two tenants,
two models or two geometries never share a page. Each page is a chain root (SGLang's hash
already names the whole prefix).

Pages. One SGLang page (page_size tokens, all layers of this rank) is one checksummed kvstrata
page; SGLang's two MHA buffers per page (which its own backends store under keys suffixed
_k and _v) are the K and V halves of one kvstrata page, so K and V are never torn apart:

* MHA: layout ``gqa-bf16`` (bf16) or ``gqa-fp8`` (1-byte elements), geometry (head_num,
  head_dim); per layer K then V, each [page_size, heads, head_dim] (vLLM's block order);
* MLA: ``mla-bf16-1152`` (bf16, kv_lora_rank + qk_rope_head_dim = 576); per layer the
  page's records. Only TP rank 0 writes MLA pages (the others report success, as SGLang's
  MLA backends do).

The host pool must use ``--hicache-mem-layout page_first`` (a page is [tokens, layers, ...])
or ``page_first_direct`` ([layers, tokens, ...]): get_page_buffer_meta(host_indices) then
gives one contiguous range per page (MHA: K then V). batch_set_v1 gathers each page's bytes
from those ranges (read through their addresses, no Python copy of SGLang's memory) into a
registered staging area, encodes pages there and writes them with ``batch_put_from``;
batch_get_v1 reads pages into the staging area with ``batch_get_into``, verifies each again
against its key and scatters its payload to the page's ranges. A page that is missing or
fails verification is reported False and its host memory is not written.

The older tensor API (``get``, ``set``, ``batch_get``, ``batch_set``) takes flat data pages
(``pool.get_data_page(index, flat=True)``: MHA K then V, MLA the KV, in the pool's page order)
and reads and writes the same kvstrata pages.

Configuration (``storage_config.extra_config``): ``addresses`` (required), ``token`` or
``token_env``, ``namespace`` (default "shared"), ``model_fingerprint`` (64 hex digits; default
SHA-256 of the model name and geometry), ``transport``, ``timeout_ms``.

Thread safety: SGLang calls a backend from its prefetch and backup threads; one lock
serialises the calls that use the staging area. Ownership: the backend owns its Client and
staging buffers (close()); it borrows SGLang's host pool memory for the duration of a call.
"""
import ctypes
import hashlib
import logging
import os
import threading

import torch

import kvstrata
from kvstrata.integrations._common import Staging, parse_addresses, parse_fingerprint

logger = logging.getLogger(__name__)

try:  # pragma: no cover - exercised only where SGLang is installed
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base  # type: ignore
    SGLANG_AVAILABLE = True
except ImportError:
    SGLANG_AVAILABLE = False

    class _Base:
        """Minimal stand-in for SGLang's HiCacheStorage (same method names); used only when
        SGLang is absent."""

        def register_mem_pool_host(self, mem_pool_host):
            self.mem_pool_host = mem_pool_host

        def batch_exists(self, keys, extra_info=None):
            for i, k in enumerate(keys):
                if not self.exists(k):
                    return i
            return len(keys)

        def clear(self):
            pass

        def get_stats(self):
            return None

_DOMAIN = b"kvstrata/sglang-hicache/v1"
_PAGE_ORDERS = {"page_first": "token-major", "page_first_direct": "layer-major"}


def _raw(ptr, size):
    """A writable uint8 view of SGLang's host memory at ptr (no copy)."""
    if not isinstance(ptr, int) or not isinstance(size, int) or ptr <= 0 or size <= 0:
        raise ValueError(f"bad host buffer (ptr={ptr!r}, size={size!r})")
    return torch.frombuffer((ctypes.c_uint8 * size).from_address(ptr), dtype=torch.uint8)


class KvstrataStorage(_Base):
    """SGLang HiCache L3 backend over kvstrata store nodes (module docstring)."""

    def __init__(self, storage_config, kwargs=None):
        cfg = dict(getattr(storage_config, "extra_config", None) or {})
        if isinstance(kwargs, dict):
            cfg.update({k: v for k, v in kwargs.items() if k not in cfg})
        self.config = storage_config
        self.is_mla = bool(storage_config.is_mla_model)
        self.tp_rank = int(getattr(storage_config, "tp_rank", 0))
        self.namespace = cfg.get("namespace", "shared")
        self._cfg = cfg
        rank = ""
        if not self.is_mla:
            rank = f"tp{self.tp_rank}/{int(getattr(storage_config, 'tp_size', 1))}"
            if int(getattr(storage_config, "pp_size", 1)) > 1:
                rank += f"/pp{storage_config.pp_rank}/{storage_config.pp_size}"
        self._rank = rank.encode()
        token = cfg.get("token") or (os.environ.get(cfg["token_env"], "")
                                     if cfg.get("token_env") else "")
        self._client = kvstrata.Client(parse_addresses(cfg.get("addresses"), "extra_config"),
                                       token=token, transport=cfg.get("transport", "auto"),
                                       timeout_ms=int(cfg.get("timeout_ms", 10000)))
        self._lock = threading.Lock()
        self.space = None
        self.mem_pool_host = None

    # ---- setup ------------------------------------------------------------------------------

    def register_mem_pool_host(self, mem_pool_host):
        """Takes the host KV pool, checks its layout and dtype, and fixes the page layout and
        key space. ValueError naming the problem for pools kvstrata cannot store."""
        pool = mem_pool_host
        layout = getattr(pool, "layout", None)
        if layout not in _PAGE_ORDERS:
            raise ValueError(f"KvstrataStorage needs --hicache-mem-layout page_first or "
                             f"page_first_direct (one contiguous range per page), got {layout!r}")
        self.page_tokens, self.layers = int(pool.page_size), int(pool.layer_num)
        elem = torch.empty(0, dtype=pool.dtype).element_size()
        if self.is_mla:
            record = int(pool.kv_lora_rank) + int(pool.qk_rope_head_dim)
            if pool.dtype != torch.bfloat16 or record != 576:
                raise ValueError(f"KvstrataStorage stores MLA pages as mla-bf16-1152: needs "
                                 f"bf16 and 576-element records, got {pool.dtype} x {record}")
            self.layout, self.gqa, self.row_bytes = "mla-bf16-1152", None, record * elem
        else:
            if pool.dtype == torch.bfloat16:
                self.layout = "gqa-bf16"
            elif elem == 1:
                self.layout = "gqa-fp8"
            else:
                raise ValueError(f"KvstrataStorage stores MHA pages as gqa-bf16 or gqa-fp8: "
                                 f"needs bf16 or 1-byte elements, got {pool.dtype}")
            self.gqa = (int(pool.head_num), int(pool.head_dim))
            self.row_bytes = self.gqa[0] * self.gqa[1] * elem
        self.order = _PAGE_ORDERS[layout]
        model = getattr(self.config, "model_name", None)
        fp = parse_fingerprint(self._cfg, f"sglang/{model}/{self.layout}/{self.gqa}/"
                               f"{self.layers}" if model else None, "extra_config")
        self.space = kvstrata.KeySpace(fp, self.layout, self.page_tokens, self.namespace)
        page_bytes, kv_bytes = kvstrata.page_size(self.layout, self.page_tokens, self.layers,
                                                  gqa=self.gqa)
        self._half = self.page_tokens * self.layers * self.row_bytes  # one host range
        want = kv_bytes // (1 if self.is_mla else 2)
        if self._half != want:
            raise ValueError(f"host page of {self._half} bytes does not match the "
                             f"{self.layout} payload ({want} bytes per range)")
        self._staging = Staging(self._client, page_bytes, kv_bytes)
        self.mem_pool_host = pool

    def kv_key(self, key):
        """The kvstrata key of SGLang page key `key` (a hex string) for this rank."""
        if self.space is None:
            raise RuntimeError("register_mem_pool_host must be called first")
        h = hashlib.sha256(_DOMAIN + b"\0" + key.encode() + b"\0" + self._rank).digest()
        return kvstrata.keys_from_engine_hashes(self.space, [h])[0]

    # ---- zero-copy page API (interface_v1) ----------------------------------------------------

    def _ranges(self, host_indices, n):
        """Per page, its host ranges as uint8 views (MHA: (K, V); MLA: (KV,))."""
        ptrs, sizes = self.mem_pool_host.get_page_buffer_meta(host_indices)
        per = 1 if self.is_mla else 2
        if len(ptrs) != per * n or len(sizes) != per * n:
            raise ValueError(f"get_page_buffer_meta gave {len(ptrs)} buffers for {n} keys; "
                             f"expected {per * n}")
        out = []
        for i in range(n):
            views = []
            for j in range(per):
                p, s = int(ptrs[per * i + j]), int(sizes[per * i + j])
                if s != self._half:
                    raise ValueError(f"host buffer {per * i + j} is {s} bytes; pages of this "
                                     f"pool are {self._half}")
                views.append(_raw(p, s))
            out.append(views)
        return out

    def _payload_parts(self, payload):
        """The payload row as [(layer-major view per host range)], each (layers, tokens, row)."""
        if self.is_mla:
            return [payload.view(self.layers, self.page_tokens, self.row_bytes)]
        v = payload.view(self.layers, 2, self.page_tokens, self.row_bytes)
        return [v[:, 0], v[:, 1]]

    def _host_view(self, raw):
        """A host range as (layers, tokens, row bytes), whatever the pool's page order."""
        if self.order == "layer-major":
            return raw.view(self.layers, self.page_tokens, self.row_bytes)
        return raw.view(self.page_tokens, self.layers, self.row_bytes).transpose(0, 1)

    def batch_set_v1(self, keys, host_indices, extra_info=None):
        """Writes the pages at host_indices under `keys`. [bool] per key: stored (or already
        there). MLA ranks other than 0 write nothing and report True."""
        if self.is_mla and self.tp_rank != 0:
            return [True] * len(keys)
        return self._write(keys, self._ranges(host_indices, len(keys)) if keys else [])

    def batch_get_v1(self, keys, host_indices, extra_info=None):
        """Reads the pages of `keys` into the host pool at host_indices. [bool] per key; a
        False page's host memory is untouched."""
        return self._read(keys, self._ranges(host_indices, len(keys)) if keys else [])

    def _write(self, keys, ranges):
        """Encodes and writes one page per key from its host ranges; [bool] per key."""
        n = len(keys)
        if n == 0:
            return []
        kv_keys = [self.kv_key(k) for k in keys]
        with self._lock:
            self._staging.ensure(n)
            pages = []
            for i in range(n):
                payload = self._staging.payloads[i]
                for dst, src in zip(self._payload_parts(payload), ranges[i]):
                    dst.copy_(self._host_view(src))
                kvstrata.encode_page(self.layout, kv_keys[i], payload, self._staging.pages[i],
                                     self.page_tokens, self.layers, gqa=self.gqa)
                pages.append(self._staging.pages[i])
            try:
                st = self._client.batch_put_from(self.space, kv_keys, pages)
            except kvstrata.Error as e:
                logger.warning("kvstrata write of %d pages failed: %s", n, e)
                return [False] * n
        return [s.ok for s in st]

    def _read(self, keys, ranges):
        """Reads, verifies and scatters one page per key into its host ranges; [bool] per
        key (False: missing or failed verification; its ranges are untouched)."""
        n = len(keys)
        if n == 0:
            return []
        kv_keys = [self.kv_key(k) for k in keys]
        ok = [False] * n
        with self._lock:
            self._staging.ensure(n)
            rows = [self._staging.pages[i] for i in range(n)]
            try:
                st = self._client.batch_get_into(kv_keys, rows)
            except kvstrata.Error as e:
                logger.warning("kvstrata read of %d pages failed: %s", n, e)
                return ok
            for i, s in enumerate(st):
                if not s.ok:
                    continue
                try:
                    off, length = kvstrata.page_payload(rows[i][:s.page_bytes], kv_keys[i])
                except kvstrata.Error as e:
                    logger.warning("kvstrata page %s failed verification: %s", keys[i], e)
                    continue
                if length != self._staging.kv_bytes:
                    continue
                for src, dst in zip(self._payload_parts(rows[i][off:off + length]), ranges[i]):
                    self._host_view(dst).copy_(src)
                ok[i] = True
        return ok

    def batch_exists(self, keys, extra_info=None):
        """The number of leading keys whose pages kvstrata holds."""
        if not keys:
            return 0
        try:
            present = self._client.batch_exists([self.kv_key(k) for k in keys])
        except kvstrata.Error as e:
            logger.warning("kvstrata batch_exists failed: %s", e)
            return 0
        return present.index(False) if False in present else len(present)

    def exists(self, key):
        return self.batch_exists([key]) == 1

    # ---- the older tensor API (flat data pages) ------------------------------------------------

    def _flat_ranges(self, tensors, what):
        """Flat data pages (pool.get_data_page(index, flat=True): MHA K then V, MLA the KV, in
        the pool's page order) split into their host ranges."""
        out = []
        per = 1 if self.is_mla else 2
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu" or \
                    not t.is_contiguous():
                raise ValueError(f"{what}[{i}] must be a contiguous CPU tensor")
            b = t.view(-1).view(torch.uint8)
            if b.numel() != per * self._half:
                raise ValueError(f"{what}[{i}] is {b.numel()} bytes; a page is "
                                 f"{per * self._half}")
            out.append([b[j * self._half:(j + 1) * self._half] for j in range(per)])
        return out

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None):
        """Writes flat data pages `values` under `keys`; True when every page is stored."""
        if self.is_mla and self.tp_rank != 0:
            return True
        return all(self._write(keys, self._flat_ranges(values or [], "values")))

    def batch_get(self, keys, target_locations=None, target_sizes=None):
        """Reads pages into the flat data pages `target_locations`: per key the tensor, or None
        when the page is missing or failed verification."""
        if target_locations is None:
            raise ValueError("KvstrataStorage.batch_get needs target_locations")
        ok = self._read(keys, self._flat_ranges(target_locations, "target_locations"))
        return [t if good else None for t, good in zip(target_locations, ok)]

    def get(self, key, target_location=None, target_sizes=None):
        locations = [target_location] if target_location is not None else None
        return self.batch_get([key], locations)[0]

    def set(self, key, value=None, target_location=None, target_sizes=None):
        return self.batch_set([key], [value])

    def close(self):
        with self._lock:
            if getattr(self, "_staging", None) is not None:
                self._staging.close()
            self._client.close()
