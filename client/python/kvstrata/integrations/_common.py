"""Shared pieces of the engine integrations: configuration parsing and a registered staging
area of page buffers.

Thread safety: a Staging is used by one thread at a time (its owner's step). Ownership: a
Staging owns its tensors and their registration with the client; close() unregisters them.
"""
import hashlib

import torch

import kvstrata


def parse_addresses(value, what):
    """A list of "host:port" from a list or a comma-separated string; ValueError otherwise."""
    if isinstance(value, str):
        value = [a.strip() for a in value.split(",") if a.strip()]
    if not isinstance(value, (list, tuple)) or not value or \
            not all(isinstance(a, str) and ":" in a for a in value):
        raise ValueError(f"{what}: 'addresses' must be a non-empty list of host:port, "
                         f"got {value!r}")
    return list(value)


def parse_fingerprint(config, fallback_text, what):
    """32 bytes: config['model_fingerprint'] as 64 hex digits, else SHA-256 of fallback_text
    (the model's name and KV geometry) when that is given."""
    fp = config.get("model_fingerprint")
    if fp is not None:
        try:
            raw = bytes.fromhex(fp)
        except (TypeError, ValueError):
            raw = b""
        if len(raw) != 32:
            raise ValueError(f"{what}: 'model_fingerprint' must be 64 hex digits, got {fp!r}")
        return raw
    if not fallback_text:
        raise ValueError(f"{what}: set 'model_fingerprint' (64 hex digits): the model is unknown")
    return hashlib.sha256(fallback_text.encode()).digest()


class Staging:
    """`rows` encoded-page buffers of page_bytes each (and, for writers, KV payload rows of
    kv_bytes; 0: none), registered with the client so UCX moves pages straight in and out.
    Grows on demand (re-registering; earlier contents are lost)."""

    def __init__(self, client, page_bytes, kv_bytes):
        self.client, self.page_bytes, self.kv_bytes = client, page_bytes, kv_bytes
        self.pages = self.payloads = None
        self._handle = None

    def ensure(self, rows):
        if self.pages is not None and self.pages.shape[0] >= rows:
            return
        rows = max(rows, 2 * (self.pages.shape[0] if self.pages is not None else 4))
        self.close()
        self.pages = torch.zeros((rows, self.page_bytes), dtype=torch.uint8)
        if self.kv_bytes:
            self.payloads = torch.zeros((rows, self.kv_bytes), dtype=torch.uint8)
        self._handle = self.client.register_buffer(self.pages)

    def close(self):
        if self._handle is not None:
            try:
                self.client.unregister_buffer(self._handle)
            except (kvstrata.Error, ValueError):
                pass  # closed client, or a quarantined transfer: freed with the client
            self._handle = None
