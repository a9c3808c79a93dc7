"""Who may drive the trainer UI: the Host-header check and the rule for binding beyond this machine.

The UI starts training jobs, so a page that reaches it can use this machine. Two rules keep it
this machine's:

* **Host header.** A web page on another site can make the browser send requests to
  ``127.0.0.1:7870`` under a domain name of its own (DNS rebinding); such requests carry that name
  in ``Host``. :class:`HostHeaderGuard` answers 403 to any request whose ``Host`` is not the
  loopback (for a loopback bind), or not an IP address, this machine's name or a name allowed
  explicitly (for a public bind). Rebinding needs a domain name, so IP literals are always safe.
* **Public bind.** Binding anything but a loopback address needs an explicit ``--public`` and a
  password (:func:`check_public_bind`); the A1111 tab applies the same rule to a webui started with
  ``--listen`` / ``--share``.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Iterable, Optional

from .errors import ScdpoError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
PASSWORD_ENV = "SCDPO_UI_PASSWORD"
ALLOW_PUBLIC_ENV = "SCDPO_UI_ALLOW_PUBLIC"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def host_of(header: str) -> str:
    """The host name of a ``Host`` header value, without the port (``[::1]:80`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    if header.count(":") == 1:
        return header.split(":")[0]
    return header


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> Optional[set[str]]:
    """Host names a request may name. ``None`` stands for "any IP literal too" (a public bind)."""
    names = {h.lower() for h in extra}
    if is_loopback(bind_host):
        return names | set(LOOPBACK_NAMES)
    names |= set(LOOPBACK_NAMES) | {socket.gethostname().lower(), socket.getfqdn().lower()}
    if not _is_ip(bind_host) and bind_host not in ("", "0.0.0.0", "::"):
        names.add(bind_host.lower())
    return names


def host_allowed(header: Optional[str], bind_host: str, extra: Iterable[str] = ()) -> bool:
    """Whether a request with this ``Host`` header may reach a UI bound to ``bind_host``."""
    if not header:
        return False
    host = host_of(header)
    if is_loopback(bind_host):
        return is_loopback(host) or host in {h.lower() for h in extra}
    return _is_ip(host) or host in allowed_hosts(bind_host, extra)


class HostHeaderGuard:
    """ASGI middleware: 403 for a request whose ``Host`` header :func:`host_allowed` refuses."""

    def __init__(self, app, bind_host: str = "127.0.0.1", extra_hosts: Iterable[str] = ()):
        self.app = app
        self.bind_host = bind_host
        self.extra_hosts = tuple(extra_hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            headers = dict(scope.get("headers") or [])
            host = headers.get(b"host", b"").decode("latin-1")
            if not host_allowed(host, self.bind_host, self.extra_hosts):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                body = b"Host not allowed: this UI answers only requests addressed to this machine\n"
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


class PublicBindError(ScdpoError):
    """A non-loopback bind without the explicit flag or without a password."""


def check_public_bind(host: str, public: bool, password: Optional[str]) -> None:
    """Refuse to serve beyond this machine unless asked to explicitly and a password is set."""
    if is_loopback(host):
        return
    if not public:
        raise PublicBindError(f"--host {host} would let other machines start jobs on this one; pass --public "
                              f"and set a password ({PASSWORD_ENV} or --password-file), or bind 127.0.0.1")
    if not password:
        raise PublicBindError(f"--public needs a password: set {PASSWORD_ENV} or pass --password-file FILE")
