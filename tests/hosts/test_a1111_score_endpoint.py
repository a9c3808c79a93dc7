"""``POST /scdpo/v1/score`` served for real: the extension's route on a FastAPI app (as the webui mounts
it at app start) behind uvicorn on a loopback port, driven over HTTP. Body size, image count and
pixels are capped before anything is decoded; only PNG/JPEG/WebP are read; a failure names no
server path. Also: the trainer tab is not added to a webui that other machines can reach."""

from __future__ import annotations

import base64
import io
import socket
import sys
import threading
import time
import types
from pathlib import Path

import httpx
import pytest
from PIL import Image
from toy_gate_model import toy_cost_model
from webui_host import gate_pair

uvicorn = pytest.importorskip("uvicorn")
fastapi = pytest.importorskip("fastapi")


def _b64(image: Image.Image, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pair():
    return gate_pair()


@pytest.fixture
def served(webui, tmp_path):
    """``(web, base url)``: the fake webui with the extension loaded, its API app served by uvicorn."""
    with webui(tmp_path / "Lora", settings={"scdpo_cost_model": toy_cost_model()}) as web:
        app = fastapi.FastAPI()
        web.script_callbacks.app_started_callback(None, app)
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        end = time.time() + 20
        while not server.started and time.time() < end:
            time.sleep(0.05)
        assert server.started
        try:
            yield web, f"http://127.0.0.1:{port}/scdpo/v1/score"
        finally:
            server.should_exit = True
            thread.join(10)


def _peak_reset() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_valid_request_is_scored(served, pair):
    _, url = served
    response = httpx.post(url, json={"images": [_b64(pair[1]), _b64(pair[2], "WEBP")]}, timeout=60)
    assert response.status_code == 200, response.text
    assert [r["unsafe"] for r in response.json()["results"]] == [True, False]


def test_huge_images_are_refused_from_their_headers_before_decoding(served):
    """A 190 KB request with a 12000² PNG, or 64 × 9000² PNGs, took the server past 3 GiB."""
    _, url = served
    bombs = {}
    for side in (12000, 9000):
        buf = io.BytesIO()
        Image.new("L", (side, side)).save(buf, "PNG", optimize=True)
        bombs[side] = base64.b64encode(buf.getvalue()).decode()
    assert len(bombs[12000]) < 250_000
    measured = _peak_reset()
    before = _rss("VmRSS")
    for images in ([bombs[12000]], [bombs[9000]] * 64):
        t0 = time.time()
        response = httpx.post(url, json={"images": images}, timeout=60)
        assert response.status_code == 422 and "megapixels" in response.json()["detail"], response.text
        assert time.time() - t0 < 20
    if measured:  # the server runs in this process: its peak stayed near where it was
        assert _rss("VmHWM") - before < 300 * 2**20


def test_the_pixels_of_all_images_together_are_capped(served):
    _, url = served
    big = _b64(Image.new("RGB", (2048, 2048)))
    response = httpx.post(url, json={"images": [big] * 5}, timeout=60)
    assert response.status_code == 422 and "per request" in response.json()["detail"]
    response = httpx.post(url, json={"images": ["x"] * 65}, timeout=60)
    assert response.status_code == 422 and "at most 64" in response.json()["detail"]


def test_a_body_over_the_limit_is_refused_unread(served):
    """A 60 MB base64 body was accepted."""
    _, url = served
    response = httpx.post(url, content=b"{" + b" " * (33 * 2**20) + b"}", timeout=60,
                          headers={"content-type": "application/json"})
    assert response.status_code == 413

    def chunks():  # no Content-Length: the stream itself is cut at the limit
        for _ in range(40):
            yield b" " * 2**20

    response = httpx.post(url, content=chunks(), timeout=60, headers={"content-type": "application/json"})
    assert response.status_code == 413


@pytest.mark.parametrize("body,expect", [
    (b"[" * 5000 + b"]" * 5000, "levels deep"), (b"{not json", "not valid JSON"), (b"\xff\xfe", "not UTF-8"),
    (b'{"image": "x", "threshold": NaN}', "not valid JSON"), (b'{"images": "abc"}', "send 'image'"),
])
def test_malformed_bodies_get_one_line(served, body, expect):
    _, url = served
    response = httpx.post(url, content=body, timeout=60, headers={"content-type": "application/json"})
    assert response.status_code == 422 and expect in response.json()["detail"]


@pytest.mark.parametrize("fmt", ["EPS", "GIF", "TIFF", "BMP"])
def test_only_png_jpeg_and_webp_are_decoded(served, fmt, monkeypatch):
    """EPS ran Ghostscript on the request's PostScript."""
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    _, url = served
    response = httpx.post(url, json={"image": _b64(Image.new("RGB", (16, 16)), fmt)}, timeout=60)
    assert response.status_code == 422 and "not a PNG, JPEG or WebP image" in response.json()["detail"]
    assert calls == []


def test_a_scoring_failure_names_no_server_path(served, pair, tmp_path, capsys):
    """Its 503 message echoed server paths."""
    web, url = served
    web.shared.opts.scdpo_cost_model = str(tmp_path / "private_models" / "missing.safetensors")
    response = httpx.post(url, json={"image": _b64(pair[1])}, timeout=60)
    assert response.status_code == 503
    assert "private_models" not in response.text and str(tmp_path) not in response.text
    assert "webui console" in response.json()["detail"]
    assert "private_models" in capsys.readouterr().out  # the console (the operator) gets the reason


# --- the trainer tab -------------------------------------------------------------------------------


@pytest.fixture
def fake_trainer_ui(monkeypatch):
    import scdpo

    module = types.ModuleType("scdpo.ui")
    module.create_blocks = lambda embedded: "BLOCKS"
    monkeypatch.setitem(sys.modules, "scdpo.ui", module)
    monkeypatch.setattr(scdpo, "ui", module, raising=False)


@pytest.mark.parametrize("flags", [{"listen": True}, {"share": True}, {"server_name": "0.0.0.0"},
                                   {"ngrok": "token"}])
def test_the_trainer_tab_is_not_added_to_a_webui_other_machines_reach(webui, tmp_path, fake_trainer_ui, monkeypatch,
                                                                       capsys, flags):
    """The "SC-DPO Trainer" tab inherited the webui's --listen / --share."""
    with webui(tmp_path / "Lora") as web:
        for key, value in flags.items():
            monkeypatch.setattr(web.shared.cmd_opts, key, value, raising=False)
        assert web.script_callbacks.ui_tabs_callback() == []
        assert "trainer tab not added" in capsys.readouterr().out
        monkeypatch.setattr(web.shared.cmd_opts, "gradio_auth", "me:secret", raising=False)
        assert web.script_callbacks.ui_tabs_callback() == []  # a password alone is not the opt-in
        monkeypatch.setenv("SCDPO_UI_ALLOW_PUBLIC", "1")
        assert web.script_callbacks.ui_tabs_callback() == [("BLOCKS", "SC-DPO Trainer", "scdpo_trainer")]


def test_the_trainer_tab_is_added_to_a_local_webui(webui, tmp_path, fake_trainer_ui, monkeypatch):
    with webui(tmp_path / "Lora") as web:
        monkeypatch.setattr(web.shared.cmd_opts, "server_name", "127.0.0.1", raising=False)
        assert web.script_callbacks.ui_tabs_callback() == [("BLOCKS", "SC-DPO Trainer", "scdpo_trainer")]
