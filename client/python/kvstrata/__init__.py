"""kvstrata: a Python client of kvstrata store nodes, over libkvstrata_client's C ABI.

    import kvstrata, numpy as np
    with kvstrata.Client(["127.0.0.1:7000"], token="tok-acme") as c:
        space = kvstrata.KeySpace(fingerprint, "mla-fp8-656", 64, "acme")
        keys = kvstrata.derive_block_keys(space, token_ids)
        dst = np.empty((len(keys), page_bytes), np.uint8)
        c.register_buffer(dst)                     # UCX gets land straight in dst
        results = c.batch_get_into(keys, list(dst))
        hits = [r.ok for r in results]

Buffers are numpy arrays (or any C-contiguous object with the buffer protocol), torch CPU
tensors, or (address, size) tuples of raw memory the caller keeps valid (an engine's host KV
pool); pages are bytes, so page buffers have a 1-byte dtype (uint8/int8). No byte is copied
in Python: the C library moves page bytes straight into or out of that memory, UCX one-sided
into registered buffers (zero-copy), else from the gRPC message with one memcpy. The GIL is
released during I/O.

Errors: kvstrata.Error (with .code, .code_name, .message) for what the library refuses (bad
layout, dead store, deadline); TypeError/ValueError for bad Python arguments (not a buffer,
wrong dtype, not contiguous, read-only destination, CUDA tensor, closed client). Per-key
outcomes of batch calls are KeyStatus values, never exceptions.

Thread safety: a Client may be used from several threads; close() waits for calls in flight.
"""
import os
from collections import namedtuple

from . import _kvstrata
from ._kvstrata import Error, KeySpace  # noqa: F401  (re-exported)

ABI_VERSION = _kvstrata.ABI_VERSION

TRANSPORTS = {"auto": 0, "ucx": 1, "grpc": 2}
TIERS = {0: None, 1: "device", 2: "host", 3: "nvme"}

# Status codes (the gRPC / absl numbers).
OK, NOT_FOUND, RESOURCE_EXHAUSTED, DATA_LOSS = 0, 5, 8, 15


class KeyStatus(namedtuple("KeyStatus", "code message page_bytes")):
    """One key's outcome of a batch call: code 0 (OK) or why not, and for gets the page size
    that landed in the buffer."""

    __slots__ = ()

    @property
    def ok(self):
        return self.code == OK

    @property
    def code_name(self):
        return _kvstrata.code_name(self.code)


Block = namedtuple("Block", "tier page_bytes")
Lease = namedtuple("Lease", "id deadline_unix_ms pinned")


class Client:
    """A connection to a store node (the first of `addresses` that answers).

    timeout_ms is every call's default deadline; each call also takes timeout_ms (0: the
    default). transport: "auto" (UCX when it reaches the store, else gRPC), "ucx" or "grpc".
    tls_cert_file, tls_key_file, tls_ca_file: PEM paths for mutual TLS to a store whose
    cluster runs with tls-* files (all three, or none for plaintext); read once, here.
    """

    def __init__(self, addresses, token="", transport="auto", timeout_ms=10000,
                 connect_timeout_ms=5000, lease_ms=10000, tls_cert_file="", tls_key_file="",
                 tls_ca_file=""):
        if isinstance(addresses, str):
            addresses = [addresses]
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, got {transport!r}")
        self._c = _kvstrata.Client(list(addresses), token or "", TRANSPORTS[transport],
                                   int(timeout_ms), int(connect_timeout_ms), int(lease_ms),
                                   str(tls_cert_file or ""), str(tls_key_file or ""),
                                   str(tls_ca_file or ""))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Closes the client; later calls raise ValueError. Idempotent."""
        self._c.close()

    @property
    def closed(self):
        return self._c.closed

    def register_buffer(self, buf):
        """Registers a numpy array or torch CPU tensor (any dtype, C-contiguous, writable) for
        zero-copy UCX transfers; the client keeps a reference until unregister_buffer or close.
        Returns a handle."""
        return self._c.register_buffer(buf)

    def unregister_buffer(self, handle):
        self._c.unregister_buffer(handle)

    def lookup(self, keys, timeout_ms=0):
        """(prefix, [Block(tier, page_bytes)] per key) for a key chain; tier None past the
        present prefix."""
        prefix, blocks = self._c.lookup(list(keys), timeout_ms)
        return prefix, [Block(TIERS.get(t, t), n) for t, n in blocks]

    def exists(self, key, timeout_ms=0):
        return self._c.batch_exists([key], timeout_ms)[0]

    def batch_exists(self, keys, timeout_ms=0):
        """[bool] per key, each key on its own (keys need not be a chain)."""
        return self._c.batch_exists(list(keys), timeout_ms)

    def pin(self, keys, lease_ms=0, timeout_ms=0):
        return Lease(*self._c.pin(list(keys), lease_ms, timeout_ms))

    def unpin(self, lease_id, timeout_ms=0):
        return self._c.unpin(lease_id, timeout_ms)

    def batch_get_into(self, keys, buffers, timeout_ms=0):
        """Reads the pages of the key chain `keys` into `buffers` (one 1-byte-dtype buffer per
        key, each large enough for its page). Returns a KeyStatus per key; raises Error when
        the call fails as a whole (dead store, deadline: then no buffer holds valid bytes)."""
        return [KeyStatus(*s) for s in self._c.batch_get_into(list(keys), list(buffers),
                                                               timeout_ms)]

    def batch_put_from(self, space, keys, buffers, timeout_ms=0):
        """Writes whole encoded pages (encode_page), one buffer per key, of a chain segment in
        order under KeySpace `space`. Returns a KeyStatus per key."""
        return [KeyStatus(*s) for s in self._c.batch_put_from(space, list(keys), list(buffers),
                                                               timeout_ms)]

    def stats(self):
        """Counters since connect: pages/bytes per path (ucx/grpc) and direction, hits, misses,
        corrupt pages, rejected puts, calls."""
        return self._c.stats()


def derive_block_keys(space, tokens, parent=None):
    """32-byte keys of every full block of `tokens` under `space`, continuing after `parent`."""
    return _kvstrata.derive_block_keys(space, [int(t) for t in tokens], parent)


def page_size(layout, token_count, layer_count, first_layer=0, gqa=None):
    """(page_bytes, kv_bytes) of a page. gqa: (num_kv_heads, head_dim) for the GQA layouts
    ("gqa-bf16", "gqa-fp8"), None otherwise."""
    return _kvstrata.page_size(layout, token_count, layer_count, first_layer, _gqa(gqa))


def encode_page(layout, key, kv, out, token_count, layer_count, parent=None, first_layer=0,
                gqa=None):
    """Encodes the KV payload `kv` (kv_bytes, layer-major records; GQA: per layer K then V)
    as a page into `out` (exactly page_bytes, 1-byte dtype)."""
    _kvstrata.encode_page(layout, key, parent, token_count, layer_count, first_layer, kv, out,
                          _gqa(gqa))


def _gqa(gqa):
    if gqa is None:
        return (0, 0)
    heads, head_dim = gqa
    return (int(heads), int(head_dim))


def engine_block_hashes(tokens, block_size=16, seed=None, parent=None, start_token=0,
                        lora_name=None, mm_items=(), cache_salt=None, prompt_embed_hashes=()):
    """vLLM's sha256_cbor prefix-cache block hashes (vLLM run with
    --prefix-caching-hash-algo sha256_cbor): one 32-byte hash per full block of `tokens`.

    seed is the engines' PYTHONHASHSEED as text (NONE_HASH = sha256_cbor(seed)); None takes
    $PYTHONHASHSEED and raises ValueError when it is unset (vLLM then hashes randomly); parent the
    hash of the block before tokens[0] (with start_token its request position, a multiple of
    block_size); mm_items (identifier, offset, length) per multimodal input, sorted by
    offset; cache_salt is mixed into the block at position 0; prompt_embed_hashes one 32-byte
    hash per full block. Raises Error (INVALID_ARGUMENT) naming the problem."""
    if seed is None:
        seed = os.environ.get("PYTHONHASHSEED")
        if seed is None:
            raise ValueError("engine_block_hashes: pass seed= or set PYTHONHASHSEED (vLLM's "
                             "NONE_HASH is random without it)")
    mm = [(str(i), int(o), int(n)) for i, o, n in mm_items]
    return _kvstrata.engine_block_hashes([int(t) for t in tokens], int(block_size), str(seed),
                                         parent, int(start_token), lora_name, mm,
                                         cache_salt or None, list(prompt_embed_hashes))


def keys_from_engine_hashes(space, hashes, parent=None):
    """kvstrata keys of a chain of engine block hashes under KeySpace `space` (they bind the
    space's model fingerprint, layout, page size and namespace); `parent` is the kvstrata
    key before hashes[0]."""
    return _kvstrata.keys_from_engine_hashes(space, list(hashes), parent)


def page_payload(page, expect_key=None):
    """Verifies `page` (checksums; its key when expect_key is given) and returns
    (kv_offset, kv_len) of its KV payload. Raises Error (DATA_LOSS, INVALID_ARGUMENT)."""
    return _kvstrata.page_payload(page, expect_key)
