"""The trainer UI as an attacker meets it, served for real on 127.0.0.1 and driven with gradio's own client
and raw HTTP: it shows and writes only inside its work folder, answers only requests addressed to this
machine (no DNS rebinding), and refuses to serve beyond the loopback without ``--public`` and a password."""

from __future__ import annotations

import inspect
import os
import socket
from pathlib import Path

import httpx
import pytest
from PIL import Image

from scdpo.ui.app import quiet_gradio_environment

quiet_gradio_environment()
pytestmark = pytest.mark.filterwarnings("ignore:::gradio.queueing")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from scdpo.cli import main  # noqa: E402
from scdpo.serving import PublicBindError, check_public_bind, host_allowed  # noqa: E402
from scdpo.ui.app import serve  # noqa: E402
from scdpo.ui.jobs import JobRunner  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _results(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), "red").save(folder / "grid_base.png")
    (folder / "report.json").write_text('{"methods": {"secret": 1}}')
    return folder


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui_untrusted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GRADIO_TEMP_DIR", str(root / "gradio_tmp"))
        runner = JobRunner(root / "work", kill_grace_s=5)
        runner.workdir.mkdir(parents=True)
        port = _free_port()
        blocks = serve(host="127.0.0.1", port=port, block=False, runner=runner)
        kwargs = dict(verbose=False, download_files=str(root / "downloads"))
        if "analytics_enabled" in inspect.signature(gradio_client.Client.__init__).parameters:
            kwargs["analytics_enabled"] = False
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", **kwargs)
        try:
            yield client, runner, port, root
        finally:
            runner.cancel()
            runner.wait(30)
            blocks.close()


def test_show_results_serves_only_the_work_folder(live):
    """/show_results returned images and report.json of any folder (absolute or ../)."""
    client, runner, _, root = live
    outside = _results(root / "outside")
    inside = _results(runner.workdir / "out" / "eval")
    os.symlink(outside / "grid_base.png", inside / "grid_leak.png")  # a link inside that points out
    for folder in (str(outside), "../outside", str(runner.workdir / ".." / "outside")):
        gallery, report = client.predict(folder, api_name="/show_results")
        assert gallery == [] and "secret" not in report and "outside the UI's work folder" in report
    gallery, report = client.predict("out/eval", api_name="/show_results")
    assert [item["caption"] for item in gallery] == ["base (grid)"]  # the link is left out
    assert "secret" in report


@pytest.mark.parametrize("task,values", [
    ("compare", dict(prompt="x", lora="some.safetensors", out="/tmp/elsewhere")),
    ("compare", dict(prompt="x", lora="some.safetensors", out="../escape")),
    ("train_cost", dict(cache_dir="/var/tmp/cache")),
    ("train", dict(data="toy-oracle", name="../../x")),
    ("eval", dict(out="out/../../escape")),
])
def test_jobs_write_only_inside_the_work_folder(live, task, values):
    """/start_compare wrote outside its work folder."""
    client, runner, _, root = live
    message = client.predict(**values, api_name=f"/start_{task}")
    assert message.startswith("⚠️ **Not started:**") and ("work folder" in message or "plain file name" in message)
    assert client.predict(api_name="/job_state")["state"] == "idle"
    assert not (root / "escape").exists()


@pytest.mark.parametrize("host,allowed", [
    ("127.0.0.1:{port}", True), ("localhost:{port}", True), ("[::1]:{port}", True),
    ("evil.example:{port}", False), ("127.0.0.1.nip.io:{port}", False), ("", False),
])
def test_requests_must_name_this_machine_in_their_host_header(live, host, allowed):
    """The Host header was not checked, so a DNS-rebinding page could drive the UI."""
    _, _, port, _ = live
    if not host:  # HTTP/1.0 without a Host header (httpx always sends one)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /gradio_api/info HTTP/1.0\r\n\r\n")
            status = int(sock.recv(100).split()[1])
    else:
        response = httpx.get(f"http://127.0.0.1:{port}/gradio_api/info", headers={"host": host.format(port=port)})
        status = response.status_code
    assert status == (200 if allowed else 403)


def test_a_public_bind_needs_the_flag_and_a_password(capsys, monkeypatch):
    monkeypatch.delenv("SCDPO_UI_PASSWORD", raising=False)
    assert main(["ui", "--host", "0.0.0.0"]) == 2
    assert "--public" in capsys.readouterr().err
    assert main(["ui", "--host", "0.0.0.0", "--public"]) == 2
    assert "needs a password" in capsys.readouterr().err
    with pytest.raises(PublicBindError):
        serve(host="192.0.2.1", port=_free_port(), block=False)
    check_public_bind("127.0.0.1", False, None)
    check_public_bind("0.0.0.0", True, "pw")


def test_a_public_ui_accepts_addresses_and_its_own_names_only():
    assert host_allowed("192.168.1.5:7870", "0.0.0.0") and host_allowed("[fe80::1]:7870", "0.0.0.0")
    assert host_allowed(f"{socket.gethostname()}:7870", "0.0.0.0")
    assert not host_allowed("attacker.example:7870", "0.0.0.0")
    assert host_allowed("trainer.lan", "0.0.0.0", extra=["trainer.lan"])
    assert not host_allowed("192.168.1.5:7870", "127.0.0.1")  # a loopback UI answers loopback names only
