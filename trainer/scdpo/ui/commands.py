"""``scdpo ui``: serve the trainer web UI on this machine (loopback only unless told otherwise)."""

from __future__ import annotations

import argparse
import logging
import signal

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
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes the UI, which "
                        "can run training jobs and read result files, to your network)")
    p.add_argument("--port", type=int, default=7870, help="port (default 7870)")
    p.add_argument("--workdir", default=None,
                   help="folder the jobs run in; relative output paths such as out/eval land here (default: the "
                        "current folder)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from . import require_gradio
    from .app import LOOPBACK_HOSTS, quiet_gradio_environment, serve

    quiet_gradio_environment()
    require_gradio()  # raises the install hint before anything else happens
    if args.host not in LOOPBACK_HOSTS:
        log.warning("serving on %s: anyone who can reach this address can start jobs on this machine", args.host)
    # SIGTERM (a service manager, `kill`) stops the server like Ctrl+C does: the running job is cancelled
    # (its checkpoint stays) instead of living on, unseen, in its own process group
    signal.signal(signal.SIGTERM, _interrupt)
    serve(host=args.host, port=args.port, workdir=args.workdir, open_browser=args.open, block=True)
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt
