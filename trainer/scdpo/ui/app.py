"""The trainer web UI: gradio Blocks with one tab per ``scdpo`` job, a shared job panel (live
progress, log, cancel) and a results gallery of base-vs-safe samples.

``build_blocks()`` is what ``scdpo ui`` serves and what the A1111 / Forge extension mounts as a tab.
Every form field comes from the command's own argparse options (:mod:`.forms`); every job is the
real command run in a background process (:mod:`.jobs`), one at a time.

Written against gradio >= 4.40 (tested with gradio 6); keyword arguments an installed gradio does
not know are dropped (:func:`_make`), so the same code also builds inside older webuis.
"""

from __future__ import annotations

import html
import inspect
import os
from pathlib import Path
from typing import Any, Optional

from ..errors import ScdpoError
from ..limits import inside
from . import require_gradio
from .forms import CHOICE, FLAG, FLOAT, INT, MULTI, TRISTATE, TRISTATE_CHOICES, FormError, OptionSpec, command_specs_of
from .jobs import CANCELLED, FAILED, IDLE, RUNNING, SUCCEEDED, JobBusyError, JobRunner, default_runner, job_environment
from .tasks import TASKS, gallery_items, job_commands, report_summary, shown_options

POLL_SECONDS = 1.0
LOG_LINES = 300
_STATE_BADGES = {IDLE: "⚪ idle", RUNNING: "🔵 running", SUCCEEDED: "🟢 finished", FAILED: "🔴 failed",
                 CANCELLED: "🟠 cancelled"}
_CSS = "#scdpo-log textarea { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12px; }"
_BAR = ("<div style='height:10px;border-radius:5px;background:#e5e7eb;overflow:hidden'>"
        "<div style='height:100%;width:{pct:.1f}%;background:#2563eb'></div></div>")  # inline: works when embedded


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")  # addresses that serve this machine only
UI_USER = "scdpo"  # the login name when the UI is served with a password


def _make(cls, *args, **kwargs):
    """``cls(*args, **kwargs)`` without the keyword arguments this gradio version lacks."""
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return cls(*args, **kwargs)


def _field(gr, option: OptionSpec, override: Any = None):
    """A form component for one command-line option (label = the flag, info = its help)."""
    info = option.help or None
    default = option.default if override is None else override
    label = option.label
    if option.kind == FLAG:
        return _make(gr.Checkbox, value=bool(override), label=label, info=info)
    if option.kind == TRISTATE:
        if option.default is None:
            return _make(gr.Radio, choices=list(TRISTATE_CHOICES), value="default", label=label,
                         info=f"{info or ''} — 'default' leaves it to the command".strip(" —"))
        return _make(gr.Checkbox, value=bool(default), label=label, info=info)
    if option.kind == CHOICE:
        choices = list(option.choices) if option.default is not None else ["", *option.choices]
        return _make(gr.Dropdown, choices=choices, value="" if default is None else str(default), label=label,
                     info=info)
    if option.kind in (INT, FLOAT) and isinstance(default, (int, float)):
        return _make(gr.Number, value=default, label=label, info=info, precision=0 if option.kind == INT else None)
    if option.kind == MULTI:
        return _make(gr.Textbox, value="", lines=2, label=label, info=f"{info or ''} (one per line)".strip(),
                     placeholder=option.default_text and f"default: {option.default_text}")
    placeholder = f"default: {option.default_text}" if option.default_text else ("required" if option.required else "")
    return _make(gr.Textbox, value="" if default is None else str(default), label=label, info=info,
                 placeholder=placeholder)


def _progress_html(snap: dict) -> str:
    parts = []
    stage = snap.get("stage")
    if stage:
        parts.append(f"stage {stage['index']}/{stage['total']}: {html.escape(stage['name'])}")
    if snap.get("progress") is not None:
        pct = max(0.0, min(1.0, snap["progress"])) * 100
        parts.append(_BAR.format(pct=pct) + f"<small>{html.escape(snap.get('progress_text', ''))}</small>")
    if not parts and snap["state"] == RUNNING:
        return "<small>no progress reported yet</small>"
    return "<br>".join(parts)


def _status_markdown(snap: dict) -> str:
    if snap["state"] == IDLE:
        return f"**Job:** {_STATE_BADGES[IDLE]} — nothing has run yet. Jobs run in `{snap['workdir']}`."
    commands = snap.get("commands") or []
    current = commands[min(snap.get("current_command", 0), len(commands) - 1)] if commands else ""
    text = (f"**Job {snap['id']}: {snap['title']}** — {_STATE_BADGES.get(snap['state'], snap['state'])} "
            f"({snap['elapsed_s']:.0f} s)\n\n`{current}`")
    if snap.get("message") and snap["state"] != RUNNING:
        text += f"\n\n{snap['message']}"
    return text


def _display_image(path: Path):
    """The image as PIL, small ones (toy 16x16 px) enlarged with nearest-neighbour so pixels stay crisp.
    Only PNG/JPEG/WebP within the pixel limit are decoded (:mod:`scdpo.images`)."""
    from PIL import Image

    from ..images import decode_rgb

    image = decode_rgb(path, str(path), error=ScdpoError)
    if max(image.size) < 128:
        factor = max(1, 128 // max(image.size))
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return image


def results_view(folder: Optional[str], root: str | os.PathLike) -> tuple[list, str]:
    """``(gallery value, report text)`` for a results folder, which must lie inside ``root`` (the
    UI's work folder: nothing outside it is ever shown)."""
    if not folder:
        return [], ""
    if inside(folder, root) is None:
        return [], f"{folder} is outside the UI's work folder; only results inside {root} are shown"
    folder = str(inside(folder, root))
    items = gallery_items(folder, root=root)
    gallery = []
    for path, caption in items:
        try:
            gallery.append((_display_image(path), caption))
        except (OSError, ScdpoError):
            continue  # a file still being written or not an image: leave it out
    report = report_summary(folder, root=root)
    if not gallery and not report:
        report = f"no images or report in {folder} yet"
    return gallery, report


def build_blocks(runner: Optional[JobRunner] = None, embedded: bool = False,
                 workdir: str | os.PathLike | None = None):
    """The trainer UI as ``gr.Blocks``.

    ``runner``: the job runner to use (default: the process-wide one, so every page and the A1111
    tab share the one-job-at-a-time rule); ``workdir``: where jobs run when the process-wide runner
    is created here (default ``$SCDPO_UI_WORKDIR`` or the current folder); ``embedded``: built to be
    mounted inside another app (no page title, no Blocks-level CSS/theme).
    """
    gr = require_gradio()
    runner = runner or default_runner(workdir)
    specs, broken = command_specs_of(runner.python, [t.command for t in TASKS], env=job_environment())

    blocks_kw = dict(title="SC-DPO trainer", analytics_enabled=False)
    with _make(gr.Blocks, **blocks_kw) as blocks:
        if not embedded:
            gr.Markdown("# SC-DPO Safe Diffusion — trainer")
        gr.Markdown(
            "Each tab runs one `scdpo` command as a background job (one job at a time). Fields are the "
            f"command's own options; empty fields use the command's defaults. Jobs run in `{runner.workdir}` with "
            f"`{runner.python}`.")
        if broken:
            gr.Markdown("Some commands are unavailable in this Python: "
                        + "; ".join(f"`{m}` ({html.escape(e)})" for m, e in broken.items()))
        notice = gr.Markdown("")
        with gr.Tabs():
            for t in TASKS:
                spec = specs.get(t.command)
                with gr.Tab(t.title):
                    if spec is None:
                        gr.Markdown(f"`scdpo {' '.join(t.command)}` is not available here.")
                        continue
                    gr.Markdown(t.intro)
                    primary, more = shown_options(t, spec)
                    overrides = dict(t.form_defaults)
                    inputs, dests = [], []
                    with gr.Row():
                        with gr.Column():
                            for option in primary:
                                inputs.append(_field(gr, option, overrides.get(option.dest)))
                                dests.append(option.dest)
                    if more:
                        with _make(gr.Accordion, "More options", open=False):
                            for option in more:
                                inputs.append(_field(gr, option, overrides.get(option.dest)))
                                dests.append(option.dest)
                    start = _make(gr.Button, f"Start: scdpo {' '.join(t.command)}", variant="primary")
                    start.click(_starter(runner, t, spec, dests), inputs=inputs, outputs=[notice],
                                api_name=f"start_{t.key}")

        gr.Markdown("## Job")
        status = gr.Markdown(_status_markdown(runner.snapshot()))
        progress = gr.HTML("")
        with gr.Row():
            cancel = _make(gr.Button, "Cancel job", variant="stop")
            refresh = _make(gr.Button, "Refresh", variant="secondary")
        log = _make(gr.Textbox, label="Log", lines=16, max_lines=16, interactive=False, autoscroll=True,
                    elem_id="scdpo-log")
        with _make(gr.Accordion, "Job state (JSON)", open=False):
            details = gr.JSON(label="job")

        gr.Markdown("## Results")
        with gr.Row():
            folder = _make(gr.Textbox, label="Results folder", scale=4,
                           info="filled in when a job finishes; images: grid_<method>.png of `scdpo eval`/"
                                "`scdpo demo`, or base/ and safe/ of a base-vs-safe comparison")
            show = _make(gr.Button, "Show results", scale=1)
        gallery = _make(gr.Gallery, label="base vs safe", columns=4, height="auto", object_fit="contain",
                        format="png")
        report = _make(gr.Textbox, label="Report", lines=8, interactive=False)
        seen = gr.State("")

        def poll(last_seen: str):
            snap = runner.snapshot(LOG_LINES)
            key = f"{snap['id']}:{snap['state']}"
            outputs = [_status_markdown(snap), _progress_html(snap), snap["log"], snap]
            ended = snap["state"] in (SUCCEEDED, FAILED, CANCELLED)
            if ended and key != last_seen and snap.get("results_dir"):
                images, text = results_view(snap["results_dir"], runner.workdir)
                outputs += [snap["results_dir"], images, text]
            else:
                outputs += [gr.update(), gr.update(), gr.update()]
            return (*outputs, key)

        poll_outputs = [status, progress, log, details, folder, gallery, report, seen]
        refresh.click(poll, inputs=[seen], outputs=poll_outputs, api_name="job_status")
        cancel.click(lambda: _cancel_message(runner), outputs=[notice], api_name="cancel")
        # the job's state alone, for scripts and tests: ``client.predict(api_name="/job_state")``
        state_button = _make(gr.Button, "job state", visible=False)
        state_button.click(lambda: runner.snapshot(LOG_LINES), outputs=[details], api_name="job_state")
        show.click(lambda f: results_view(f.strip() if f else f, runner.workdir), inputs=[folder],
                   outputs=[gallery, report],
                   api_name="show_results")
        if hasattr(gr, "Timer"):
            timer = gr.Timer(POLL_SECONDS)
            _make_event(timer.tick, poll, inputs=[seen], outputs=poll_outputs, show_progress="hidden", queue=False,
                        **_private_api(timer.tick))
        else:  # gradio 3.x (older webuis): periodic event
            _make_event(blocks.load, poll, inputs=[seen], outputs=poll_outputs, every=POLL_SECONDS)
    blocks.scdpo_runner = runner  # for the A1111 tab and tests: the runner behind these Blocks
    return blocks


def _private_api(listener) -> dict:
    """Keep an event out of the public API (gradio 6: api_visibility; gradio 4/5: api_name=False)."""
    params = inspect.signature(listener).parameters
    return {"api_visibility": "private"} if "api_visibility" in params else {"api_name": False}


def _make_event(listener, fn, **kwargs):
    params = inspect.signature(listener).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        kwargs = {k: v for k, v in kwargs.items() if k in params}
    return listener(fn, **kwargs)


def _starter(runner: JobRunner, task, spec, dests: list[str]):
    """The Start button's handler: form values → argv → job (or a message saying why not)."""

    def start(*values):
        try:
            commands, results = job_commands(task, spec, dict(zip(dests, values)), runner.workdir)
            job = runner.start(task.title, commands, results)
        except JobBusyError as exc:
            return f"⚠️ **Not started:** {exc}"
        except FormError as exc:
            return f"⚠️ **Not started:** {exc}"
        return f"Started job {job.id}: " + "; ".join(f"`{c}`" for c in job.command_lines())

    start.__name__ = f"start_{task.key}"
    # gradio names API parameters after the handler's signature: give the API the options' dests
    # (``client.predict(steps=2, api_name="/start_train")``) instead of param_0, param_1, ...
    start.__signature__ = inspect.Signature(
        [inspect.Parameter(dest, inspect.Parameter.POSITIONAL_OR_KEYWORD) for dest in dests])
    return start


def _cancel_message(runner: JobRunner) -> str:
    if runner.cancel():
        return "Cancelling: the job's processes are being terminated; a training job keeps its last checkpoint."
    return "No job is running."


def serve(host: str = "127.0.0.1", port: int = 7870, workdir: str | os.PathLike | None = None,
          open_browser: bool = False, block: bool = True, runner: Optional[JobRunner] = None,
          public: bool = False, password: Optional[str] = None, allowed_hosts: tuple[str, ...] = ()):
    """Serve :func:`build_blocks` on ``host:port`` (loopback by default; never a share link).

    A non-loopback ``host`` needs ``public=True`` and a ``password`` (user ``scdpo``); every request
    must name this machine in its ``Host`` header (:mod:`scdpo.serving`; ``allowed_hosts`` adds names).
    Returns the launched Blocks (``block=False`` returns at once with the server running in a thread;
    ``blocks.close()`` stops it).
    """
    from starlette.middleware import Middleware

    from ..serving import HostHeaderGuard, check_public_bind

    check_public_bind(host, public, password)
    quiet_gradio_environment()
    gr = require_gradio()
    runner = runner or (JobRunner(workdir) if workdir else default_runner())
    blocks = build_blocks(runner=runner)
    blocks.queue()
    theme = _make(gr.themes.Default, font=["ui-sans-serif", "system-ui", "sans-serif"],
                  font_mono=["ui-monospace", "Consolas", "monospace"])
    launch = dict(server_name=host, server_port=port, share=False, inbrowser=open_browser,
                  prevent_thread_lock=True, show_error=True, quiet=True, theme=theme, css=_CSS,
                  ssr_mode=False, mcp_server=False, enable_monitoring=False, pwa=False, run_history=False,
                  footer_links=["api", "settings"], max_file_size="64mb",
                  app_kwargs={"middleware": [Middleware(HostHeaderGuard, bind_host=host, extra_hosts=allowed_hosts)]})
    if password:
        launch["auth"] = [(UI_USER, password)]
    _launch(blocks, **launch)
    # our own line instead of gradio's, which suggests share=True (a public link we never create)
    where = "this machine only" if host in LOOPBACK_HOSTS else f"bound to {host}"
    print(f"SC-DPO trainer UI: {blocks.local_url} ({where}; jobs run in {runner.workdir}; Ctrl+C stops it)",
          flush=True)
    if block:
        try:
            blocks.block_thread()
        finally:
            runner.cancel()  # a job started from the page does not outlive the page's server
    return blocks


def _launch(blocks, **kwargs):
    params = inspect.signature(blocks.launch).parameters
    return blocks.launch(**{k: v for k, v in kwargs.items() if k in params})


def quiet_gradio_environment() -> None:
    """No analytics, version checks, telemetry or hub calls from gradio / huggingface_hub (set before
    gradio is imported; values the user set explicitly are kept except analytics, which is forced off)."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    for key, value in (("HF_HUB_DISABLE_TELEMETRY", "1"), ("HF_HUB_OFFLINE", "1"), ("DO_NOT_TRACK", "1"),
                       ("GRADIO_SHARE", "False"), ("GRADIO_SSR_MODE", "False"), ("GRADIO_MCP_SERVER", "False"),
                       ("GRADIO_RUN_HISTORY", "False")):
        os.environ.setdefault(key, value)
