"""kvstrata as a vLLM v1 KV connector: ``KvstrataConnector(KVConnectorBase_V1)``.

Pinned interface: vLLM ``vllm/distributed/kv_transfer/kv_connector/v1/base.py`` as of
vllm-project/vllm main commit 003df2961dd8 (late 2026), the newest version read for this
module. The connector is loaded by vLLM's factory from its module path::

    vllm serve MODEL --prefix-caching-hash-algo sha256_cbor --kv-transfer-config \\
      '{"kv_connector":"KvstrataConnector","kv_connector_module_path":"kvstrata.integrations.vllm",
        "kv_role":"kv_both","kv_connector_extra_config":{"addresses":["10.0.0.5:7000"],
        "token":"tok-acme","namespace":"acme","layout":"gqa-bf16"}}'

with PYTHONHASHSEED set to the same value in every engine that shares the cache.

When vLLM is importable the connector subclasses vLLM's own KVConnectorBase_V1 and uses its
KVConnectorRole / KVConnectorMetadata. vLLM cannot be installed where kvstrata is tested, so
otherwise a minimal local base with the same method names stands in (``_FallbackBase``): it
only keeps the metadata binding (bind/clear/_get_connector_metadata) and the role, exactly
what the real base does for a connector. Tests drive this fallback with vLLM's documented call
order (a protocol simulation), not a running engine.

Block identity. vLLM (with ``--prefix-caching-hash-algo sha256_cbor``) gives each full block a
32-byte hash in ``request.block_hashes``; the hash chains over the prompt and already covers
the LoRA name, multimodal items and ``cache_salt`` (on the first block, so requests with
different salts share no block). kvstrata keys are ``kvstrata.keys_from_engine_hashes`` of
those hashes under the connector's key space: they additionally bind the model fingerprint,
the page layout, the block size and the namespace (a tenant's or "shared").

Block -> page mapping. One vLLM block (block_size tokens, *all* attention layers) is one
kvstrata page, so a page is whole or absent and one key covers all layers. The page's KV
section is layer-major, in the order the layers were registered:

* GQA (FlashAttention, per layer ``(2, num_blocks, block_size, num_kv_heads, head_dim)``):
  layout ``gqa-bf16`` (2-byte elements) or ``gqa-fp8`` (1-byte); per layer K[block] then
  V[block], each ``[block_size, kv_heads, head_dim]``; the geometry is in the page header.
* MLA (per layer ``(num_blocks, block_size, R)``): ``mla-bf16-1152`` (R = 576 bf16) or
  ``mla-fp8-656`` (R = 656 bytes, vLLM's fp8_ds_mla record); per layer the block's records.

Pages are encoded (checksummed) in a registered host staging area and moved by
``Client.batch_put_from`` / ``batch_get_into`` (UCX into/out of the staging area). Loaded
pages are verified again (``page_payload`` with the expected key) before any byte reaches the
KV cache; a block whose page fails verification or is missing is reported by
``get_block_ids_with_load_errors`` and never written, so vLLM recomputes it.

Scheduling. Loads and saves run inside the forward step (``load_async`` is False):
``start_load_kv`` starts one background ``batch_get_into`` per request, and
``wait_for_layer_load`` waits for it and scatters that layer; ``save_kv_layer`` gathers each
layer of the blocks completed this step and ``wait_for_save`` encodes and writes them. Only
full prompt blocks are saved; blocks that were loaded from kvstrata are not written back.

Configuration (``kv_connector_extra_config``): ``addresses`` (list or comma-separated,
required), ``token`` (bearer token; or ``token_env``, the name of an environment variable
holding it), ``namespace`` ("shared" or a tenant, default "shared"), ``layout`` (required:
gqa-bf16, gqa-fp8, mla-bf16-1152, mla-fp8-656), ``model_fingerprint`` (64 hex digits; default
SHA-256 of the model name and layout), ``transport`` (auto/ucx/grpc), ``timeout_ms``.
The connector refuses to start when PYTHONHASHSEED is unset (vLLM then hashes with a random
seed and no two engines could share a block) or when vLLM's hash algorithm is not sha256_cbor,
and it recomputes the first block hash of the first plain request itself: if vLLM's differs,
it disables itself (all misses, no saves) rather than write pages no other engine could find.

Thread safety: vLLM calls each instance from one thread; the only other thread is the load
worker, joined before its results are used. Ownership: the connector owns its Client and
staging buffers and frees them in shutdown(); it borrows vLLM's KV tensors.
"""
import dataclasses
import enum
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import kvstrata
from kvstrata.integrations._common import Staging, parse_addresses, parse_fingerprint

logger = logging.getLogger(__name__)

try:  # pragma: no cover - exercised only where vLLM is installed
    from vllm.distributed.kv_transfer.kv_connector.v1.base import (  # type: ignore
        KVConnectorBase_V1 as _Base, KVConnectorMetadata as _Meta, KVConnectorRole)
    VLLM_AVAILABLE = True
except ImportError:
    VLLM_AVAILABLE = False

    class KVConnectorRole(enum.Enum):
        """vLLM's KVConnectorRole."""
        SCHEDULER = 0
        WORKER = 1

    class _Meta:
        """vLLM's KVConnectorMetadata (an empty marker base)."""

    class _Base:
        """Minimal stand-in for vLLM's KVConnectorBase_V1 (same constructor and the
        metadata-binding methods the model runner calls); used only when vLLM is absent."""

        def __init__(self, vllm_config, role, kv_cache_config=None):
            if getattr(vllm_config, "kv_transfer_config", None) is None:
                raise ValueError("kv_transfer_config must be set for KVConnectorBase_V1")
            self._vllm_config = vllm_config
            self._kv_transfer_config = vllm_config.kv_transfer_config
            self._kv_cache_config = kv_cache_config
            self._role = role
            self._connector_metadata = None

        @property
        def role(self):
            return self._role

        def bind_connector_metadata(self, connector_metadata):
            self._connector_metadata = connector_metadata

        def clear_connector_metadata(self):
            self._connector_metadata = None

        def _get_connector_metadata(self):
            assert self._connector_metadata is not None
            return self._connector_metadata

        def has_connector_metadata(self):
            return self._connector_metadata is not None

LAYOUTS = ("gqa-bf16", "gqa-fp8", "mla-bf16-1152", "mla-fp8-656")
_MLA_RECORD = {"mla-bf16-1152": (576, 2), "mla-fp8-656": (656, 1)}  # elements, element bytes


@dataclasses.dataclass
class Transfer:
    """Pages of one request to move this step: keys[i] is the page of vLLM block block_ids[i];
    parent is the kvstrata key before keys[0] (None at the chain's root)."""
    req_id: str
    keys: list
    block_ids: list
    parent: bytes = None


@dataclasses.dataclass
class KvstrataConnectorMetadata(_Meta):
    """Scheduler -> worker, once per step: the loads and saves of that step."""
    loads: list = dataclasses.field(default_factory=list)
    saves: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class _ReqState:
    """Scheduler-side bookkeeping of one running request."""
    request: object
    keys: list
    block_ids: list = dataclasses.field(default_factory=list)
    load_start: int = 0      # first block to load (the engine's local hit ends there)
    load_end: int = 0        # blocks [load_start, load_end) come from kvstrata
    saved: int = 0           # blocks [0, saved) are in kvstrata or handed to a worker
    load_sent: bool = False


def _extra_config(vllm_config):
    ktc = vllm_config.kv_transfer_config
    cfg = getattr(ktc, "kv_connector_extra_config", None) or {}
    if not isinstance(cfg, dict):
        raise ValueError("kv_connector_extra_config must be a JSON object")
    return cfg


def _check_hash_setup(vllm_config):
    if os.environ.get("PYTHONHASHSEED") is None:
        raise RuntimeError(
            "KvstrataConnector: PYTHONHASHSEED is unset, so vLLM hashes blocks with a random "
            "seed and no other engine (or restart) could find them; set PYTHONHASHSEED to the "
            "same value in every engine sharing the cache")
    algo = getattr(getattr(vllm_config, "cache_config", None), "prefix_caching_hash_algo", None)
    if algo is not None and algo != "sha256_cbor":
        raise RuntimeError(f"KvstrataConnector needs --prefix-caching-hash-algo sha256_cbor "
                           f"(vLLM's other algorithms cannot be shared), got {algo!r}")


class KvstrataConnector(_Base):
    """vLLM v1 KV connector over kvstrata store nodes (module docstring)."""

    def __init__(self, vllm_config, role, kv_cache_config=None):
        super().__init__(vllm_config, role, kv_cache_config)
        _check_hash_setup(vllm_config)
        cfg = _extra_config(vllm_config)
        self.block_size = int(vllm_config.cache_config.block_size)
        self.layout = cfg.get("layout")
        if self.layout not in LAYOUTS:
            raise ValueError(f"kv_connector_extra_config 'layout' must be one of {LAYOUTS}, "
                             f"got {self.layout!r}")
        model = getattr(getattr(vllm_config, "model_config", None), "model", None)
        fp = parse_fingerprint(cfg, f"vllm/{model}/{self.layout}" if model else None,
                               "kv_connector_extra_config")
        self.namespace = cfg.get("namespace", "shared")
        self.space = kvstrata.KeySpace(fp, self.layout, self.block_size, self.namespace)
        token = cfg.get("token") or (os.environ.get(cfg["token_env"], "")
                                     if cfg.get("token_env") else "")
        self._client = kvstrata.Client(
            parse_addresses(cfg.get("addresses"), "kv_connector_extra_config"), token=token,
            transport=cfg.get("transport", "auto"), timeout_ms=int(cfg.get("timeout_ms", 10000)))
        # scheduler side
        self._hash_check = None  # vLLM's hashes verified (True), refused (False), unchecked
        self._reqs = {}
        self._last_lookup = {}   # req_id -> num_computed_tokens of the latest lookup
        # worker side
        self._layers = {}        # layer name -> (index, tensor) in registration order
        self._geometry = None
        self._load_staging = self._save_staging = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kvstrata-load")
        self._load_future = None
        self._loads = []         # [(Transfer, rows, statuses)] of this step
        self._loaded_layers = set()
        self._load_errors = set()
        self._save_rows = []     # [(Transfer, first staging row)]

    # ---- scheduler side ---------------------------------------------------------------------

    def _hashes_trusted(self, request, hashes):
        """Whether vLLM's block hashes are the sha256_cbor hashes of PYTHONHASHSEED: checked
        once, on the first request without multimodal inputs or prompt embeddings, by
        recomputing its first block. A mismatch (another algorithm or seed than this process
        was told) disables the connector (every lookup a miss, nothing saved), because its
        pages could never be found by other engines."""
        if self._hash_check is not None:
            return self._hash_check
        if getattr(request, "mm_features", None) or \
                getattr(request, "prompt_embeds", None) is not None:
            return True  # not checkable on this request; trust it and check a later one
        lora = getattr(getattr(request, "lora_request", None), "lora_name", None)
        mine = kvstrata.engine_block_hashes(
            request.prompt_token_ids[:self.block_size], self.block_size,
            seed=os.environ["PYTHONHASHSEED"], lora_name=lora,
            cache_salt=getattr(request, "cache_salt", None))
        self._hash_check = bytes(hashes[0]) == mine[0]
        if not self._hash_check:
            logger.error("KvstrataConnector: vLLM's block hashes are not sha256_cbor with "
                         "PYTHONHASHSEED=%r; the connector is disabled",
                         os.environ["PYTHONHASHSEED"])
        return self._hash_check

    def _keys(self, request):
        """kvstrata keys of the request's full prompt blocks (vLLM's block hashes)."""
        hashes = list(getattr(request, "block_hashes", None) or [])
        if not hashes or not self._hashes_trusted(request, hashes):
            return []
        n = min(len(hashes), int(request.num_prompt_tokens) // self.block_size)
        return kvstrata.keys_from_engine_hashes(self.space, [bytes(h) for h in hashes[:n]])

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        """Tokens beyond the local hit whose pages kvstrata holds (a store lookup; no side
        effect but remembering the last answer). Returns (n, False): loads are synchronous."""
        keys = self._keys(request)
        if not keys:
            return 0, False
        try:
            prefix, _ = self._client.lookup(keys)
        except kvstrata.Error as e:  # a store outage is a miss, never a failed request
            logger.warning("kvstrata lookup failed (%s): treating as a miss", e)
            return 0, False
        hit = prefix * self.block_size
        # vLLM must compute at least one token of the prompt itself.
        if hit >= request.num_tokens:
            hit = ((request.num_tokens - 1) // self.block_size) * self.block_size
        self._last_lookup[request.request_id] = num_computed_tokens
        return max(0, hit - num_computed_tokens), False

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        st = self._reqs.get(request.request_id)
        if st is None:
            st = self._reqs[request.request_id] = _ReqState(request, self._keys(request))
        st.block_ids = list(blocks.get_block_ids()[0])
        if num_external_tokens > 0:
            local = self._last_lookup.get(request.request_id, 0)
            st.load_start = local // self.block_size
            st.load_end = (local + num_external_tokens) // self.block_size
            st.saved = max(st.saved, st.load_end)
            st.load_sent = False

    def build_connector_meta(self, scheduler_output):
        """This step's loads (requests just allocated with external tokens) and saves (full
        prompt blocks that become computed in this step). Does not modify its input."""
        meta = KvstrataConnectorMetadata()
        progress = {}
        for new in getattr(scheduler_output, "scheduled_new_reqs", []) or []:
            st = self._reqs.get(new.req_id)
            if st is None:
                continue
            st.block_ids = list(new.block_ids[0])
            progress[new.req_id] = new.num_computed_tokens
        cached = getattr(scheduler_output, "scheduled_cached_reqs", None)
        if cached is not None:
            for i, req_id in enumerate(cached.req_ids):
                st = self._reqs.get(req_id)
                if st is None:
                    continue
                new_ids = cached.new_block_ids[i]
                if new_ids is not None:
                    st.block_ids.extend(new_ids[0])
                progress[req_id] = cached.num_computed_tokens[i]
        for req_id, computed in progress.items():
            st = self._reqs[req_id]
            if st.load_end > st.load_start and not st.load_sent:
                meta.loads.append(self._transfer(st, req_id, st.load_start, st.load_end))
                st.load_sent = True
            done = computed + scheduler_output.num_scheduled_tokens.get(req_id, 0)
            end = min(done // self.block_size, len(st.keys))
            if end > st.saved:
                meta.saves.append(self._transfer(st, req_id, st.saved, end))
                st.saved = end
        return meta

    @staticmethod
    def _transfer(st, req_id, start, end):
        return Transfer(req_id, st.keys[start:end], st.block_ids[start:end],
                        st.keys[start - 1] if start > 0 else None)

    def update_connector_output(self, connector_output):
        return  # loads and saves finish inside the step: nothing arrives asynchronously

    def request_finished(self, request, block_ids):
        """Saves complete within the step that computed the blocks, so the blocks can be
        freed now: (False, None)."""
        self._reqs.pop(request.request_id, None)
        self._last_lookup.pop(request.request_id, None)
        return False, None

    # ---- worker side ------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches):
        """Takes vLLM's per-layer KV tensors (GQA or MLA shapes, module docstring), checks them
        against the configured layout, and sizes the registered staging area."""
        if not kv_caches:
            raise ValueError("register_kv_caches: no KV tensors")
        geometry = None
        for i, (name, t) in enumerate(kv_caches.items()):
            g = self._layer_geometry(name, t)
            if geometry is not None and g != geometry:
                raise ValueError(f"layer {name}: KV shape {tuple(t.shape)} differs from the "
                                 f"first layer's; mixed layers are not supported")
            geometry = g
            self._layers[name] = (i, t)
        self._geometry = geometry
        gqa = geometry[1] if self.layout.startswith("gqa") else None
        page_bytes, kv_bytes = kvstrata.page_size(self.layout, self.block_size, len(kv_caches),
                                                  gqa=gqa)
        self._layer_bytes = kv_bytes // len(kv_caches)
        # Separate areas: a step's loads are still being scattered while its saves gather.
        self._load_staging = Staging(self._client, page_bytes, 0)
        self._save_staging = Staging(self._client, page_bytes, kv_bytes)

    def _layer_geometry(self, name, t):
        shape, elem = tuple(t.shape), t.element_size()
        if self.layout.startswith("gqa"):
            want = 2 if self.layout == "gqa-bf16" else 1
            if len(shape) != 5 or shape[0] != 2 or shape[2] != self.block_size or elem != want:
                raise ValueError(
                    f"layer {name}: layout {self.layout} needs a (2, num_blocks, "
                    f"{self.block_size}, kv_heads, head_dim) tensor of {want}-byte elements, "
                    f"got {shape} of {elem}-byte elements")
            return shape[1], (shape[3], shape[4])
        record, want = _MLA_RECORD[self.layout]
        if len(shape) != 3 or shape[1] != self.block_size or shape[2] != record or elem != want:
            raise ValueError(f"layer {name}: layout {self.layout} needs a (num_blocks, "
                             f"{self.block_size}, {record}) tensor of {want}-byte elements, "
                             f"got {shape} of {elem}-byte elements")
        return shape[0], None

    def _block(self, tensor, block):
        """One block of one layer of vLLM's tensor (a view): (2, tokens, heads, dim) for GQA,
        (tokens, record) for MLA."""
        return tensor[:, block] if self.layout.startswith("gqa") else tensor[block]

    def _layer_part(self, row, index, like):
        """Layer `index`'s part of a page payload row, viewed with the dtype and shape of
        `like` (one block of the layer)."""
        part = row[index * self._layer_bytes:(index + 1) * self._layer_bytes]
        return part.view(like.dtype).view(like.shape)

    def start_load_kv(self, forward_context, **kwargs):
        """Starts reading this step's pages (one batch_get_into per request, in a background
        thread) into the registered staging area."""
        meta = self._connector_metadata
        self._loads, self._loaded_layers = [], set()
        if meta is None or not meta.loads or self._load_staging is None:
            return
        self._load_staging.ensure(sum(len(t.keys) for t in meta.loads))
        row = 0
        for t in meta.loads:
            self._loads.append((t, row, None))
            row += len(t.keys)
        self._load_future = self._pool.submit(self._read_pages, list(self._loads))

    def _read_pages(self, loads):
        """Background: the reads, then each page verified again against its key. Returns
        [(Transfer, first row, [payload (offset, length) or None per page])]."""
        out = []
        pages = self._load_staging.pages
        for t, row, _ in loads:
            try:
                st = self._client.batch_get_into(t.keys, [pages[row + i]
                                                          for i in range(len(t.keys))])
            except kvstrata.Error as e:
                logger.warning("kvstrata load of %s failed: %s", t.req_id, e)
                st = [None] * len(t.keys)
            spans = []
            for i, s in enumerate(st):
                span = None
                if s is not None and s.ok:
                    try:
                        span = kvstrata.page_payload(pages[row + i][:s.page_bytes], t.keys[i])
                    except kvstrata.Error as e:
                        logger.warning("kvstrata page of block %d failed verification: %s",
                                       t.block_ids[i], e)
                if span is None or span[1] != self._layer_bytes * len(self._layers):
                    span = None
                spans.append(span)
            out.append((t, row, spans))
        return out

    def wait_for_layer_load(self, layer_name):
        """Waits for the reads, then copies this layer of every verified page into vLLM's KV
        cache. Blocks whose pages failed are left alone and reported as load errors."""
        if self._load_future is not None:
            self._loads = self._load_future.result()
            self._load_future = None
            for t, _, spans in self._loads:
                self._load_errors.update(b for b, s in zip(t.block_ids, spans) if s is None)
        if layer_name in self._loaded_layers or layer_name not in self._layers:
            return
        self._loaded_layers.add(layer_name)
        index, tensor = self._layers[layer_name]
        for t, row, spans in self._loads:
            for i, (block, span) in enumerate(zip(t.block_ids, spans)):
                if span is None:
                    continue
                payload = self._load_staging.pages[row + i][span[0]:span[0] + span[1]]
                dst = self._block(tensor, block)
                dst.copy_(self._layer_part(payload, index, dst))

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        """Gathers this layer of every block saved this step into the staging payloads."""
        meta = self._connector_metadata
        if meta is None or not meta.saves or layer_name not in self._layers:
            return
        if not self._save_rows:
            self._save_staging.ensure(sum(len(t.keys) for t in meta.saves))
            row = 0
            for t in meta.saves:
                self._save_rows.append((t, row))
                row += len(t.keys)
        index = self._layers[layer_name][0]
        for t, row in self._save_rows:
            for i, block in enumerate(t.block_ids):
                src = self._block(kv_layer, block)
                self._layer_part(self._save_staging.payloads[row + i], index, src).copy_(src)

    def wait_for_save(self):
        """Encodes the gathered pages (checksums, key, parent) and writes them, one
        batch_put_from per request. A refused or failed write is logged: it is a future miss,
        never wrong data."""
        rows, self._save_rows = self._save_rows, []
        gqa = self._geometry[1] if self._geometry and self.layout.startswith("gqa") else None
        n_layers = len(self._layers)
        for t, row in rows:
            pages = []
            for i, key in enumerate(t.keys):
                parent = t.keys[i - 1] if i > 0 else t.parent
                page = self._save_staging.pages[row + i]
                kvstrata.encode_page(self.layout, key, self._save_staging.payloads[row + i],
                                     page, self.block_size, n_layers, parent=parent, gqa=gqa)
                pages.append(page)
            try:
                st = self._client.batch_put_from(self.space, t.keys, pages)
                bad = [(b, s.code_name, s.message) for b, s in zip(t.block_ids, st) if not s.ok]
                if bad:
                    logger.warning("kvstrata refused pages of %s: %s", t.req_id, bad)
            except kvstrata.Error as e:
                logger.warning("kvstrata save of %s failed: %s", t.req_id, e)

    def get_finished(self, finished_req_ids):
        """Nothing is sent or received asynchronously: (None, None)."""
        return None, None

    def get_block_ids_with_load_errors(self):
        """Blocks whose page was missing or failed verification since the last call; vLLM
        recomputes them."""
        errors, self._load_errors = self._load_errors, set()
        return errors

    def shutdown(self):
        if self._load_future is not None:
            self._load_future.result()
            self._load_future = None
        self._pool.shutdown(wait=True)
        for staging in (self._load_staging, self._save_staging):
            if staging is not None:
                staging.close()
        self._client.close()
