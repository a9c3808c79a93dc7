"""Shared test set-up: everything runs offline on CPU."""

import os
import socket

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class _NetworkDenied(RuntimeError):
    pass


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Deny outbound connections to anything but loopback: no code path may reach a hub."""
    real_connect = socket.socket.connect

    def guarded(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1") or host.startswith("/")):
            return real_connect(self, address)
        if self.family == getattr(socket, "AF_UNIX", None):
            return real_connect(self, address)
        raise _NetworkDenied(f"network access attempted: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield


# Packages of toy-sized unit tests: their tiny tensors run several times faster on one intra-op
# thread than on a shared 2-core CPU's default pool (evaluation: 60 s -> 1 s measured).
ONE_THREAD_PACKAGES = {"cost", "dpo", "scp", "evaluation"}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_for_toy_unit_tests(request):
    """One torch thread for each module in :data:`ONE_THREAD_PACKAGES` (module fixtures included);
    the previous setting is restored after the module."""
    if request.path.parent.name not in ONE_THREAD_PACKAGES:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
