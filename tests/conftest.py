"""Shared test set-up: everything runs offline on CPU."""

import os
import socket

import pytest

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
