"""Mutual TLS from the Python client (issue #18 item 9): a store started with tls-* files
serves a client whose certificate is from the same CA, and refuses a plaintext client and one
whose certificate is from another CA. The CAs are made here by deploy/make-dev-tls (the
openssl CLI). The client's tls_* arguments go through the C ABI's kvstrata_options."""
import os
import shutil
import subprocess
import tempfile

import pytest

import kvstrata
from conftest import TOKEN, Store, _binary

MAKE_TLS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "deploy", "make-dev-tls")


def _tls_files(d):
    return {"tls_cert_file": f"{d}/tls.crt", "tls_key_file": f"{d}/tls.key",
            "tls_ca_file": f"{d}/ca.crt"}


@pytest.fixture(scope="module")
def tls_store():
    root = tempfile.mkdtemp(prefix="py-tls-", dir=os.environ.get("KVSTRATA_TEST_TMPDIR") or None)
    for ca in ("a", "b"):
        subprocess.run([MAKE_TLS, f"{root}/{ca}", "1"], check=True, timeout=60)
    a = _tls_files(f"{root}/a")
    # TMPDIR: the store's private TLS copies go under root, removed below.
    s = Store(_binary(), root, [f"--{k.replace('_', '-')}={v}" for k, v in a.items()],
              {"TMPDIR": root})
    try:
        s.start()
        yield s
    finally:
        s.kill()
        if not os.environ.get("KVSTRATA_KEEP_TEST_TMP"):
            shutil.rmtree(root, ignore_errors=True)


def test_client_with_a_certificate_from_the_ca_reads_and_writes(tls_store):
    space = kvstrata.KeySpace(b"\x07" * 32, "mla-fp8-656", 64, "acme")
    tokens = list(range(128))
    keys = kvstrata.derive_block_keys(space, tokens)
    with kvstrata.Client([tls_store.address], token=TOKEN, transport="grpc",
                         **_tls_files(f"{tls_store.root}/a")) as c:
        prefix, _ = c.lookup(keys)
        assert prefix == 0
        assert c.batch_exists(keys) == [False, False]


def test_plaintext_client_is_refused(tls_store):
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.Client([tls_store.address], token=TOKEN, transport="grpc", connect_timeout_ms=2000)
    assert e.value.code_name == "UNAVAILABLE", e.value.message


def test_client_with_a_certificate_from_another_ca_is_refused(tls_store):
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.Client([tls_store.address], token=TOKEN, transport="grpc", connect_timeout_ms=2000,
                        **_tls_files(f"{tls_store.root}/b"))
    assert e.value.code_name == "UNAVAILABLE", e.value.message


def test_partial_or_missing_tls_files_are_clear_errors(tls_store):
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.Client([tls_store.address], tls_cert_file=f"{tls_store.root}/a/tls.crt")
    assert e.value.code_name == "INVALID_ARGUMENT"
    assert "options.tls_cert_file" in e.value.message and "go together" in e.value.message
    files = _tls_files(f"{tls_store.root}/a")
    files["tls_key_file"] = f"{tls_store.root}/b/tls.key"
    with pytest.raises(kvstrata.Error) as e:
        kvstrata.Client([tls_store.address], **files)
    assert "not the private key" in e.value.message
