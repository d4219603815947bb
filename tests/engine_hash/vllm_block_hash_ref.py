"""Independent Python reference of vLLM's sha256_cbor block hashes and kvstrata's
engine-hash key chain, written from their definitions (docs/formats.md §1.3) with hashlib
and cbor2 (Debian python3-cbor2). The C++ implementation (kvstore/engine_block_hash.cc,
kvstore/block_key.cc) is checked against this one; neither imports the other.

vLLM v1 (vllm/v1/core/kv_cache_utils.py, with --prefix-caching-hash-algo sha256_cbor):
    sha256_cbor(x) = sha256(cbor2.dumps(x, canonical=True))
    NONE_HASH = sha256_cbor(PYTHONHASHSEED)
    block i: sha256_cbor((parent or NONE_HASH, tuple(tokens_i), extra_keys_i or None))
    extra keys, in order: LoRA name; (mm identifier, offset - block start) per overlapping
    multimodal item; cache_salt on the block starting at token 0; the block's
    prompt-embedding hash.
"""

import hashlib
import struct

import cbor2


def sha256_cbor(obj):
    return hashlib.sha256(cbor2.dumps(obj, canonical=True)).digest()


def none_hash(seed):
    return sha256_cbor(seed)


def _mm_keys(mm, start, end, curr):
    """vLLM's multimodal scan for block [start, end); returns (keys, next index)."""
    keys = []
    while curr < len(mm):
        identifier, offset, length = mm[curr]
        if end > offset:
            if start >= offset + length:
                curr += 1
                continue
            keys.append((identifier, offset - start))
            if end >= offset + length:
                curr += 1
            else:
                break
        else:
            break
    return keys, curr


def block_preimages_and_hashes(seed, tokens, block_size, lora_name=None, mm=(),
                               cache_salt=None, embed_hashes=None, start_token=0,
                               parent=None):
    """Returns [(cbor preimage bytes, hash bytes)] for each full block of `tokens`."""
    prev = parent if parent else none_hash(seed)
    out = []
    curr = 0
    for b in range(len(tokens) // block_size):
        start = start_token + b * block_size
        end = start + block_size
        extra = [lora_name] if lora_name is not None else []
        mm_keys, curr = _mm_keys(list(mm), start, end, curr)
        extra += mm_keys
        if start == 0 and cache_salt:
            extra.append(cache_salt)
        if embed_hashes:
            extra.append(embed_hashes[b])
        block = tuple(tokens[b * block_size:(b + 1) * block_size])
        obj = (prev, block, tuple(extra) if extra else None)
        pre = cbor2.dumps(obj, canonical=True)
        prev = hashlib.sha256(pre).digest()
        out.append((pre, prev))
    return out


def block_hashes(*args, **kwargs):
    return [h for _, h in block_preimages_and_hashes(*args, **kwargs)]


def _field(b):
    return struct.pack("<Q", len(b)) + b


def _namespace_bytes(ns):
    if ns == "shared":
        return b"s:"
    if ns.startswith("tenant:"):
        ns = ns[len("tenant:"):]
    return b"t:" + ns.encode()


def engine_chain_keys(fingerprint, layout, page_tokens, namespace, engine_hashes, parent=None):
    """kvstrata keys over engine hashes (block_key.h, KeyChain::kVllmSha256Cbor)."""
    prefix = (_field(b"kvstrata/block/vllm-sha256-cbor/v1") + _field(fingerprint) +
              _field(layout.encode()) + _field(struct.pack("<I", page_tokens)) +
              _field(_namespace_bytes(namespace)))
    prefix += _field(b"\0" * ((64 - (len(prefix) + 8) % 64) % 64))
    prev = parent or b"\0" * 32
    keys = []
    for e in engine_hashes:
        prev = hashlib.sha256(prefix + _field(prev) + _field(e)).digest()
        keys.append(prev)
    return keys
