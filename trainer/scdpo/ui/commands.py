"""``scdpo ui``: serve the trainer web UI on this machine (loopback only unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
from pathlib import Path

from ..errors import ScdpoError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="web UI to train cost models, build SCP datasets, train safety LoRAs and evaluate (needs gradio)",
        description="Serve the trainer web UI: one tab per job (train-cost, build-dataset, train, eval, a "
        "base-vs-safe comparison, the whole demo), live progress and logs, cancel, and a gallery of base-vs-safe "
        "samples. Jobs run one at a time as `scdpo ...` subprocesses in --workdir. Binds 127.0.0.1 only by "
        "default; never creates a share link; gradio analytics are off. Needs the optional extra: "
        'pip install "scdpo-safe-diffusion[ui]".',
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; any other address exposes the UI, "
                        "which runs jobs on this machine, to your network, and needs --public and a password)")
    p.add_argument("--public", action="store_true",
                   help="allow a --host other than the loopback; needs a password (SCDPO_UI_PASSWORD or "
                        "--password-file; login name: scdpo)")
    p.add_argument("--password-file", default=None,
                   help="file whose first line is the UI password (instead of the SCDPO_UI_PASSWORD variable)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a host name the browser may use to reach a public UI (IP addresses and this machine's "
                        "name are always allowed; other names are refused, against DNS rebinding); repeatable")
    p.add_argument("--port", type=int, default=7870, help="port (default 7870)")
    p.add_argument("--workdir", default=None,
                   help="folder the jobs run in; relative output paths such as out/eval land here (default: the "
                        "current folder)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from . import require_gradio
    from .app import LOOPBACK_HOSTS, quiet_gradio_environment, serve

    from ..serving import PASSWORD_ENV, check_public_bind

    password = os.environ.get(PASSWORD_ENV) or None
    if args.password_file:
        try:
            password = Path(args.password_file).read_text(encoding="utf-8").splitlines()[0].strip() or None
        except (OSError, UnicodeDecodeError, IndexError):
            raise ScdpoError(f"--password-file {args.password_file} cannot be read or is empty; put the password "
                             "on its first line") from None
    check_public_bind(args.host, args.public, password)  # before gradio is imported: a fast, clear refusal
    quiet_gradio_environment()
    require_gradio()  # raises the install hint before anything else happens
    if args.host not in LOOPBACK_HOSTS:
        log.warning("serving on %s: anyone who can reach this address and knows the password can start jobs "
                    "on this machine", args.host)
    # SIGTERM (a service manager, `kill`) stops the server like Ctrl+C does: the running job is cancelled
    # (its checkpoint stays) instead of living on, unseen, in its own process group
    signal.signal(signal.SIGTERM, _interrupt)
    serve(host=args.host, port=args.port, workdir=args.workdir, open_browser=args.open, block=True,
          public=args.public, password=password, allowed_hosts=tuple(args.allowed_host))
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
