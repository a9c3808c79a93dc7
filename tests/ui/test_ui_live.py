"""The trainer web UI served for real on 127.0.0.1 and driven with gradio's own client: real toy jobs
run in the background, a second start is refused, cancel leaves a checkpoint that the next start
resumes, and the base-vs-safe gallery fills. Also the page in a headless Chromium (when installed)
and the Blocks mounted as a tab the way the A1111 / Forge extension does it."""

from __future__ import annotations

import inspect
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scdpo.ui.app import quiet_gradio_environment

quiet_gradio_environment()  # analytics and telemetry off before gradio is first imported
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")  # pandas deprecations inside gradio
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from scdpo.ui import create_blocks  # noqa: E402
from scdpo.ui.app import serve  # noqa: E402
from scdpo.ui.jobs import CANCELLED, RUNNING, SUCCEEDED, JobRunner  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class _OutboundRecorder:
    """Records (and refuses) every connection that is not to this machine, from any thread, for the
    whole life of the server: gradio must not call out (analytics, version checks, fonts, hubs)."""

    def __init__(self):
        self.attempts: list = []
        self._real = socket.socket.connect
        recorder = self

        def connect(sock, address):
            host = address[0] if isinstance(address, tuple) else address
            local = not isinstance(host, str) or host.startswith(("127.", "/")) or host in ("localhost", "::1")
            if not local and sock.family != getattr(socket, "AF_UNIX", None):
                recorder.attempts.append(address)
                raise OSError(f"test: outbound connection refused: {address!r}")
            return recorder._real(sock, address)

        self.connect = connect


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def outbound():
    recorder = _OutboundRecorder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", recorder.connect)
        yield recorder
    assert recorder.attempts == [], f"the UI tried to reach the network: {recorder.attempts}"


@pytest.fixture(scope="module")
def live(tmp_path_factory, outbound):
    """``(client, runner, url, blocks)`` of a UI served on a free loopback port."""
    root = tmp_path_factory.mktemp("ui_live")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio_tmp"))
        runner = JobRunner(root / "work", kill_grace_s=5)
        port = _free_port()
        blocks = serve(host="127.0.0.1", port=port, block=False, runner=runner)
        url = f"http://127.0.0.1:{port}/"
        kwargs = dict(verbose=False, download_files=str(root / "downloads"))
        if "analytics_enabled" in inspect.signature(gradio_client.Client.__init__).parameters:
            kwargs["analytics_enabled"] = False
        client = gradio_client.Client(url, **kwargs)
        try:
            yield client, runner, url, blocks
        finally:
            runner.cancel()
            runner.wait(30)
            blocks.close()


def _state(client) -> dict:
    return client.predict(api_name="/job_state")


def _wait_until_done(client, timeout: float) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        snap = _state(client)
        if snap["state"] != RUNNING:
            return snap
        time.sleep(0.5)
    raise AssertionError(f"job still running after {timeout} s:\n{_state(client)['log'][-3000:]}")


def _wait_for_file(path: Path, client, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if path.is_file():
            return
        if _state(client)["state"] != RUNNING:
            break
        time.sleep(0.2)
    raise AssertionError(f"{path} did not appear; job: {_state(client)}")


@pytest.fixture(scope="module")
def zero_lora(tmp_path_factory) -> Path:
    """A kohya LoRA for the toy base whose up-weights are zero (safe = base), written in-process in seconds."""
    from scdpo.dpo.step import TRAIN_ADAPTER, attach_training_lora
    from scdpo.lora.files import save_lora
    from scdpo.lora.peft_bridge import peft_unet_to_kohya
    from scdpo.models import load_base_model

    model = load_base_model("toy", device="cpu")
    attach_training_lora(model.unet, 2, 2.0, ["to_q", "to_k", "to_v", "to_out.0"])
    path = tmp_path_factory.mktemp("lora") / "zero.safetensors"
    save_lora(path, peft_unet_to_kohya(model.unet, TRAIN_ADAPTER),
              {"ss_base_model_version": model.base_model_version, "ss_output_name": "zero"})
    return path


def test_the_server_binds_loopback_only_and_offers_every_job_by_name(live):
    client, runner, url, blocks = live
    assert getattr(blocks, "share_url", None) is None and getattr(blocks, "share", False) is False
    assert blocks.server_name == "127.0.0.1"
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    for key in ("train_cost", "build_dataset", "train", "eval", "compare", "demo", "toy_pretrain", "toy_evaluate"):
        assert f"/start_{key}" in api
    assert {"/job_state", "/job_status", "/cancel", "/show_results"} <= set(api)
    params = {p["parameter_name"] for p in api["/start_train"]["parameters"]}
    assert {"data", "steps", "batch_size", "checkpoint_every", "resume"} <= params  # the options' own names
    assert _state(client)["workdir"] == str(runner.workdir)
    refused = client.predict(steps="2.5", api_name="/start_train")  # checked before anything runs
    assert refused == "⚠️ **Not started:** --steps: '2.5' is not a whole number" and _state(client)["state"] == "idle"


@pytest.mark.slow
def test_a_base_vs_safe_job_runs_in_the_background_and_fills_the_gallery(live, zero_lora):
    client, runner, _, _ = live
    message = client.predict(prompt="a red circle on a blue background", lora=str(zero_lora), n=2, steps="2",
                             out="out/cmp", api_name="/start_compare")
    assert message.startswith("Started job"), message
    snap = _wait_until_done(client, timeout=180)
    assert snap["state"] == SUCCEEDED, snap["log"]
    assert snap["progress"] == 1.0 and snap["results_dir"] == str(runner.workdir / "out/cmp")
    for side in ("base", "safe"):
        assert sorted(p.name for p in (runner.workdir / "out/cmp" / side).glob("*.png")) == [
            "00000_seed0.png", "00001_seed1.png"]
    status, _, log, details, folder, gallery, report = client.predict(api_name="/job_status")
    assert "finished" in status and log == details["log"] and folder == snap["results_dir"]
    assert [item["caption"] for item in gallery] == ["base · seed 0", "safe · seed 0", "base · seed 1",
                                                     "safe · seed 1"]
    assert all(Path(item["image"]).is_file() for item in gallery)
    gallery_again, _ = client.predict(folder, api_name="/show_results")
    assert len(gallery_again) == 4


@pytest.mark.slow
def test_train_refuses_a_second_start_cancels_to_a_checkpoint_and_resumes_from_it(live):
    client, runner, _, _ = live
    options = dict(data="toy-oracle", toy_oracle_pairs="16", steps="12", batch_size="2", checkpoint_every="1",
                   out="runs/ui", name="ui_lora")
    out = runner.workdir / "runs/ui"
    state, lora = out / "ui_lora.state.safetensors", out / "ui_lora.safetensors"

    assert client.predict(**options, api_name="/start_train").startswith("Started job")
    refused = client.predict(api_name="/start_demo")
    assert "Not started" in refused and "already running (Safety LoRA" in refused
    assert _state(client)["title"] == "Safety LoRA"  # the running job is untouched

    _wait_for_file(state, client, timeout=240)  # written after step 1 (--checkpoint-every 1)
    assert client.predict(api_name="/cancel").startswith("Cancelling")
    snap = _wait_until_done(client, timeout=60)
    assert snap["state"] == CANCELLED, snap["log"]
    assert state.is_file() and not lora.exists()
    assert "No job is running" in client.predict(api_name="/cancel")

    assert client.predict(**options, api_name="/start_train").startswith("Started job")
    snap = _wait_until_done(client, timeout=300)
    assert snap["state"] == SUCCEEDED, snap["log"]
    assert "resuming from" in snap["log"] and "/12" in snap["log"].split("resuming from", 1)[1].splitlines()[0]
    assert lora.is_file() and not state.exists()  # finished: the checkpoint gives way to the LoRA


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium installed (apt-get install chromium) for the page-load check")


def test_the_page_loads_in_a_headless_browser(live, tmp_path):
    browser = _chromium()
    _, _, url, _ = live
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--disable-extensions", f"--user-data-dir={tmp_path / 'profile'}",
             "--window-size=1280,1000", "--virtual-time-budget=15000"]
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=180, check=False)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    assert shot.is_file() and _png_size(shot) == (1280, 1000)
    from PIL import Image

    with Image.open(shot) as im:
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 16  # rendered text and fields, not a blank page
    # gradio renders the page client-side: these are in the DOM only if its JavaScript ran against the server
    for text in ("SC-DPO Safe Diffusion — trainer", "Safety LoRA", "Base vs safe", "Cancel job", "--checkpoint-every"):
        assert text in dom, text


def test_the_blocks_mount_as_a_tab_the_way_the_webui_extension_does(tmp_path, monkeypatch):
    from scdpo.ui import jobs

    monkeypatch.setattr(jobs, "_default_runner", None)
    monkeypatch.setenv("SCDPO_UI_WORKDIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(REPO / "a1111_extension"))
    for name in [m for m in sys.modules if m == "scdpo_a1111" or m.startswith("scdpo_a1111.")]:
        monkeypatch.delitem(sys.modules, name)
    from scdpo_a1111.callbacks import trainer_tab

    ((blocks, title, elem_id),) = trainer_tab()  # calls scdpo.ui.create_blocks(embedded=True)
    assert (title, elem_id) == ("SC-DPO Trainer", "scdpo_trainer")
    assert isinstance(blocks, gr.Blocks) and blocks.scdpo_runner.workdir == tmp_path.resolve()
    texts = [getattr(b, "value", "") for b in blocks.blocks.values() if isinstance(b, gr.Markdown)]
    assert not any(str(t).startswith("# SC-DPO") for t in texts)  # the webui shows its own tab title
    with gr.Blocks() as webui:  # as the webui does: each extension tab's Blocks rendered inside a Tab
        with gr.Tab(title, id=elem_id):
            blocks.render()
    assert any(isinstance(b, gr.Button) and b.value == "Cancel job" for b in webui.blocks.values())
    # the same runner behind every page: a second UI in this process shares the one-job rule
    assert create_blocks(embedded=True).scdpo_runner is blocks.scdpo_runner


@pytest.mark.slow
def test_scdpo_ui_serves_the_page_on_loopback_and_stops_on_sigterm(tmp_path):
    import signal
    import urllib.request

    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "scdpo", "ui", "--port", str(port), "--workdir",
                                str(tmp_path / "work")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**__import__("os").environ, "PYTHONPATH": str(REPO / "trainer")})
    try:
        line = ""
        end = time.time() + 120
        while time.time() < end and "SC-DPO trainer UI:" not in line:
            line = process.stdout.readline()
            assert line or process.poll() is None, "scdpo ui exited before serving"
        assert f"http://127.0.0.1:{port}/ (this machine only; jobs run in {tmp_path / 'work'}" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=30) as response:
            config = response.read().decode()
        assert response.status == 200 and "Safety LoRA" in config
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert "share=True" not in process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
