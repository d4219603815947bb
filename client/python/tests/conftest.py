"""Fixtures: a real `kvstrata serve --role=store` process on an ephemeral loopback port.

KVSTRATA_BINARY names the built binary (set by ctest). Every wait is bounded; the process is
SIGKILLed at the end of its test (or module)."""
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

TOKEN = "tok-acme"
# UCX over loopback TCP in both the store and this process (the client's UCX context is created
# when a Client connects).
os.environ["UCX_TLS"] = "tcp"
os.environ["UCX_NET_DEVICES"] = "lo"


class Store:
    def __init__(self, binary, root, extra_args=(), extra_env=None):
        self.binary, self.root = binary, root
        self.extra_args = list(extra_args)
        self.extra_env = dict(extra_env or {})
        self.proc = None
        self.address = None

    def start(self):
        env = dict(os.environ, **self.extra_env)
        with open(os.path.join(self.root, "tokens.yaml"), "w") as f:
            f.write(f"{TOKEN}: acme\n")
        with open(os.path.join(self.root, "service-token"), "w") as f:
            f.write("svc-client-test\n")
        model = os.path.join(self.root, "model")
        if not os.path.exists(model):
            subprocess.run([self.binary, "model", "init", "--preset=tiny-v3", f"--out={model}",
                            "--seed=1"], check=True, timeout=120, capture_output=True)
        self.log = os.path.join(self.root, "store.log")
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--role=store", "--node-id=store-0", "--listen=127.0.0.1:0",
             "--metrics-port=-1", f"--model-dir={model}",
             f"--tokens-file={self.root}/tokens.yaml",
             f"--service-token-file={self.root}/service-token", f"--data-dir={self.root}/store",
             "--device-mib=0", "--host-mib=256", "--nvme-mib=256"] + self.extra_args,
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with open(self.log, errors="replace") as f:
                m = re.search(r"serve_started.*?address=([0-9.:]+)", f.read())
            if m:
                self.address = m.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.kill()
        with open(self.log, errors="replace") as f:
            raise RuntimeError("the store did not start:\n" + f.read()[-4000:])

    def stop(self):
        """SIGSTOP the store and wait until every one of its threads is stopped. kill() returns
        before that: the thread the kernel picks to start the group stop may wait for a CPU
        while the store's gRPC threads go on answering (seen under a loaded CI)."""
        self.proc.send_signal(signal.SIGSTOP)
        tasks = f"/proc/{self.proc.pid}/task"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            states = []
            for t in os.listdir(tasks):
                try:
                    with open(os.path.join(tasks, t, "stat")) as f:
                        states.append(f.read().rsplit(")", 1)[1].split()[0])
                except FileNotFoundError:  # the thread exited
                    pass
            if states and all(s in ("T", "t") for s in states):
                return
            time.sleep(0.01)
        raise RuntimeError(f"the store's threads did not all stop within 10 s: {states}")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _binary():
    b = os.environ.get("KVSTRATA_BINARY")
    if not b or not os.path.exists(b):
        pytest.fail("KVSTRATA_BINARY must name the built kvstrata binary")
    return b


def _store():
    root = tempfile.mkdtemp(prefix="py-client-",
                            dir=os.environ.get("KVSTRATA_TEST_TMPDIR") or None)
    s = Store(_binary(), root)
    try:
        s.start()
    except Exception:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return s


def _stop(s):
    s.kill()
    if not os.environ.get("KVSTRATA_KEEP_TEST_TMP"):
        shutil.rmtree(s.root, ignore_errors=True)


@pytest.fixture(scope="module")
def store():
    s = _store()
    yield s
    _stop(s)


@pytest.fixture
def own_store():
    """A store for one test (which may kill it)."""
    s = _store()
    yield s
    _stop(s)
