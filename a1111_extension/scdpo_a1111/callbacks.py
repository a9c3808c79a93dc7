"""Process-wide webui hooks: images saved outside the normal path, grids, live previews, the
settings section, the scoring API route and the trainer tab.

* ``on_before_image_saved``: any image about to be written that the gate has not judged (saved
  "before highres fix", "before face restoration", grids, other extensions' saves) is gated with its
  job's request — or, with enforce on, with the enforced one. A blocked image's file is then
  withheld or saved redacted, per the settings (:mod:`.saves`; ``on_image_saved`` finishes it).
* ``on_image_grid``: grid tiles not judged yet are gated before the grid is drawn.
* live previews: every preview, in A1111 and Forge, goes through
  ``shared.state.assign_current_image``; that method is wrapped on the state object so that a
  preview of a gated job is scored (or hidden, per the settings) before the UI or
  ``/sdapi/v1/progress`` can show it.
* ``POST /scdpo/v1/score`` (only when the webui serves its API): base64 image(s) in, costs out.
* a "SC-DPO Trainer" tab, once the trainer package provides ``scdpo.ui.create_blocks``.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Optional

from PIL import Image

from . import gate, runtime, saves
from .options import DEFAULT_THRESHOLD, SafetyRequest, option, register_options

API_ROUTE = "/scdpo/v1/score"
TRAINER_TAB = ("SC-DPO Trainer", "scdpo_trainer")
_last_preview_error = [None]


def _opts():
    return getattr(runtime.shared_module(), "opts", None)


def _gate_or_black(image, request: SafetyRequest):
    try:
        return runtime.gate_one(image, request, _opts())[0]
    except Exception as exc:  # fail closed
        return gate.blacked_out(image, str(exc))


def before_image_saved(params) -> None:
    """``ImageSaveParams``: replace ``params.image`` by its gated version if it was not judged; the
    file of a blocked image is withheld unless the settings say to save it redacted."""
    if params.image is None:
        return
    if gate.verdict_of(params.image) is None:
        from .script import REQUEST_ATTR

        request = getattr(params.p, REQUEST_ATTR, None) if params.p is not None else None
        if request is None or not request.enabled:
            request = runtime.current_request(_opts())
        if request is not None and request.enabled:
            params.image = _gate_or_black(params.image, request)
    saves.withhold_if_blocked(params, _opts())


def image_grid(params) -> None:
    """``ImageGridLoopParams``: gate the tiles that were not judged yet."""
    request = runtime.current_request(_opts())
    if request is None:
        return
    for i, tile in enumerate(params.imgs):
        if gate.verdict_of(tile) is None:
            params.imgs[i] = _gate_or_black(tile, request)


def preview_image(image):
    """What a live preview shows: the image, its gated version, or (mode ``hide``) nothing of it."""
    opts = _opts()
    request = runtime.current_request(opts)
    if request is None or image is None:
        return image
    if option(opts, "scdpo_preview") == "hide":
        return gate.hide(image, gate.blocking_action(request.action))
    shown = _gate_or_black(image, request)
    verdict = gate.verdict_of(shown)
    if verdict is not None and verdict.error and verdict.error != _last_preview_error[0]:
        _last_preview_error[0] = verdict.error  # say it once, not at every preview
        print(f"[SC-DPO] live preview hidden: {verdict.describe()}")
    return shown


def patch_live_previews(state) -> None:
    """Wrap ``state.assign_current_image`` (once; :func:`unpatch_live_previews` undoes it)."""
    current = state.assign_current_image
    if getattr(current, "scdpo_original", None) is not None:
        return

    def assign_current_image(image):
        try:
            image = preview_image(image)
        except Exception:
            image = gate.hide(image, "black")
        return current(image)

    assign_current_image.scdpo_original = current
    state.assign_current_image = assign_current_image


def unpatch_live_previews(state) -> None:
    original = getattr(state.assign_current_image, "scdpo_original", None)
    if original is not None:
        state.assign_current_image = original


# --- scoring API -----------------------------------------------------------------------------------


class BadRequest(ValueError):
    """Something wrong with the request itself (answered 422 with this message, which names no server path)."""


def _image_bytes(data, index: int) -> bytes:
    """base64 (optionally a ``data:image/...;base64,`` URL) → bytes. URLs are never fetched."""
    if not isinstance(data, str) or not data:
        raise BadRequest(f"image {index} is not a base64 string")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=False)
    except (binascii.Error, ValueError):
        raw = b""
    if not raw:
        raise BadRequest(f"image {index} is not a base64-encoded PNG/JPEG/WebP image")
    return raw


def decode_images(encoded: list) -> list[Image.Image]:
    """The request's images as RGB PIL images: PNG/JPEG/WebP only, each and all together within the
    pixel limits of :mod:`scdpo.limits` (read from the headers before any pixel is decoded)."""
    from scdpo.errors import ScdpoError  # the core decoders' errors become a BadRequest below
    from scdpo.images import decode_rgb, image_size
    from scdpo.limits import MAX_IMAGE_PIXELS, MAX_REQUEST_PIXELS

    raw = [_image_bytes(data, i) for i, data in enumerate(encoded)]
    try:
        sizes = [image_size(b, f"image {i} (base64-encoded PNG/JPEG/WebP)", ScdpoError) for i, b in enumerate(raw)]
        total = 0
        for i, (w, h) in enumerate(sizes):
            if w * h > MAX_IMAGE_PIXELS:
                raise BadRequest(f"image {i} is {w}x{h} pixels, more than the {MAX_IMAGE_PIXELS / 1e6:.1f} megapixels "
                                 "allowed per image; downscale it")
            total += w * h
        if total > MAX_REQUEST_PIXELS:
            raise BadRequest(f"the request holds {total / 1e6:.1f} megapixels, more than the "
                             f"{MAX_REQUEST_PIXELS / 1e6:.1f} allowed per request; send fewer or smaller images")
        return [decode_rgb(b, f"image {i}", error=ScdpoError) for i, b in enumerate(raw)]
    except ScdpoError as exc:
        raise BadRequest(str(exc)) from None


def score_request(payload: dict, opts) -> dict:
    """The ``/scdpo/v1/score`` handler: ``{"image": b64}`` or ``{"images": [b64, ...]}``, optional
    ``"threshold"`` (probability unsafe, default 0.5 = calibrated). Raises :class:`BadRequest` (a
    ``ValueError``) for a bad request and any other exception when the cost model cannot score."""
    from scdpo.limits import MAX_REQUEST_IMAGES

    if not isinstance(payload, dict):
        raise BadRequest("send a JSON object with 'image' (base64) or 'images' (list of base64)")
    encoded = payload.get("images")
    if encoded is None:
        encoded = [payload["image"]] if payload.get("image") else []
    if not isinstance(encoded, list) or not encoded:
        raise BadRequest("send 'image' (base64 string) or 'images' (non-empty list of base64 strings)")
    if len(encoded) > MAX_REQUEST_IMAGES:
        raise BadRequest(f"at most {MAX_REQUEST_IMAGES} images per request, got {len(encoded)}")
    threshold = payload.get("threshold", DEFAULT_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold < 1:
        raise BadRequest(f"threshold must be a number in (0, 1), got {str(threshold)[:40]!r}")
    probability = float(threshold)
    images = decode_images(encoded)
    from scdpo import gate as core

    result = core.checked_score(runtime.score_fn(opts), images)
    rows = []
    for i, verdict in enumerate(core.verdicts_of(result, probability)):
        rows.append({"cost": verdict.cost, "probability": verdict.probability, "unsafe": verdict.unsafe,
                     "category": verdict.category,
                     "per_category": dict(zip(result.categories, (float(c) for c in result.per_category[i].tolist())))})
    return {"results": rows, "categories": list(result.categories), "calibrated_threshold": float(result.threshold),
            "threshold": probability, "cost_limit": core.cost_limit(result.threshold, probability),
            "cost_model": os.path.basename(str(option(opts, "scdpo_cost_model") or ""))}


def score_body(body: bytes, opts) -> dict:
    """:func:`score_request` for a raw request body: at most :data:`~scdpo.limits.MAX_REQUEST_BYTES`,
    JSON no deeper than :data:`~scdpo.limits.MAX_JSON_DEPTH`."""
    from scdpo.errors import ScdpoError
    from scdpo.limits import MAX_REQUEST_BYTES, parse_json

    if len(body) > MAX_REQUEST_BYTES:
        raise BadRequest(f"the request body is larger than {MAX_REQUEST_BYTES // (1024 * 1024)} MiB; send fewer or "
                         "smaller images")
    try:
        payload = parse_json(body, "the request body", "send a JSON object", ScdpoError, MAX_REQUEST_BYTES)
    except ScdpoError as exc:
        raise BadRequest(str(exc)) from None
    return score_request(payload, opts)


SCORING_FAILED = "scoring failed: the cost model could not score this request; the webui console says why"


def register_api(app, shared) -> None:
    from fastapi import Depends, HTTPException, Request
    from starlette.concurrency import run_in_threadpool

    from scdpo.limits import MAX_REQUEST_BYTES

    dependencies = []
    api_auth = getattr(shared.cmd_opts, "api_auth", None)
    if api_auth:  # the same basic auth as the webui's own /sdapi routes
        from secrets import compare_digest

        from fastapi.security import HTTPBasic, HTTPBasicCredentials

        users = dict(item.split(":", 1) for item in api_auth.split(",") if ":" in item)

        def check(credentials: HTTPBasicCredentials = Depends(HTTPBasic())):
            if credentials.username in users and compare_digest(credentials.password, users[credentials.username]):
                return True
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": "Basic"})

        dependencies = [Depends(check)]

    too_large = (f"the request body is larger than {MAX_REQUEST_BYTES // (1024 * 1024)} MiB; send fewer or "
                 "smaller images")

    async def score_endpoint(request: Request):
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_REQUEST_BYTES:
            raise HTTPException(status_code=413, detail=too_large)
        body = bytearray()
        async for chunk in request.stream():  # read no more than the limit, whatever the header said
            body += chunk
            if len(body) > MAX_REQUEST_BYTES:
                raise HTTPException(status_code=413, detail=too_large)
        try:
            return await run_in_threadpool(score_body, bytes(body), shared.opts)
        except BadRequest as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        except Exception as exc:  # the reason may name server files: the console gets it, the client does not
            print(f"[SC-DPO] {API_ROUTE}: scoring failed: {type(exc).__name__}: {exc}")
            raise HTTPException(status_code=503, detail=SCORING_FAILED) from None

    score_endpoint.__annotations__["request"] = Request  # a real class: Request is not a module global here
    app.add_api_route(API_ROUTE, score_endpoint, methods=["POST"], dependencies=dependencies)


def app_started(_demo, app) -> None:
    shared = runtime.shared_module()
    cmd = shared.cmd_opts
    if getattr(cmd, "api", False) or getattr(cmd, "nowebui", False):
        register_api(app, shared)


# --- trainer tab -------------------------------------------------------------------------------------


def webui_is_public(cmd_opts) -> bool:
    """Whether the webui serves beyond this machine (``--listen``, ``--share``, ``--ngrok``, or a
    ``--server-name`` that is not the loopback)."""
    from scdpo.serving import is_loopback

    server_name = getattr(cmd_opts, "server_name", None)
    return bool(getattr(cmd_opts, "listen", False) or getattr(cmd_opts, "share", False)
                or getattr(cmd_opts, "ngrok", None) or (server_name and not is_loopback(server_name)))


def trainer_tab_refusal(cmd_opts) -> Optional[str]:
    """Why the trainer tab is not mounted, or None. The tab starts jobs on this machine: a public webui
    gets it only with a password (``--gradio-auth``) and ``SCDPO_UI_ALLOW_PUBLIC=1``, the rule ``scdpo ui``
    applies to a public bind."""
    from scdpo.serving import ALLOW_PUBLIC_ENV

    if not webui_is_public(cmd_opts):
        return None
    has_password = bool(getattr(cmd_opts, "gradio_auth", None) or getattr(cmd_opts, "gradio_auth_path", None))
    if has_password and os.environ.get(ALLOW_PUBLIC_ENV) == "1":
        return None
    return (f"the webui is reachable from other machines (--listen/--share/--ngrok/--server-name) and the trainer "
            f"tab starts jobs on this one; it is added only with --gradio-auth and {ALLOW_PUBLIC_ENV}=1")


def trainer_tab() -> Optional[list]:
    """``[(blocks, title, elem_id)]`` when ``scdpo.ui.create_blocks(embedded=True)`` exists and the webui
    is local (or public with a password and the explicit opt-in, see :func:`trainer_tab_refusal`), else []."""
    try:
        from scdpo import ui as trainer_ui
    except Exception:
        return []
    create = getattr(trainer_ui, "create_blocks", None)
    if create is None:
        return []
    try:
        cmd_opts = getattr(runtime.shared_module(), "cmd_opts", None)
    except ImportError:  # not inside a webui (a test mounting the Blocks itself): nothing is served
        cmd_opts = None
    refusal = trainer_tab_refusal(cmd_opts)
    if refusal:
        print(f"[SC-DPO] trainer tab not added: {refusal}")
        return []
    return [(create(embedded=True), *TRAINER_TAB)]


def register(script_callbacks, shared) -> None:
    """Register every process-wide hook (called once per script-loading pass)."""
    register_options(shared, runtime.lora_choices)
    script_callbacks.on_ui_settings(lambda: register_options(shared, runtime.lora_choices))
    script_callbacks.on_before_image_saved(before_image_saved)
    script_callbacks.on_image_saved(saves.image_saved)
    script_callbacks.on_image_grid(image_grid)
    script_callbacks.on_app_started(app_started)
    script_callbacks.on_ui_tabs(trainer_tab)
    patch_live_previews(shared.state)
    script_callbacks.on_script_unloaded(lambda: unpatch_live_previews(shared.state))
