"""install.py, run as the webui runs it (a subprocess whose PYTHONPATH starts with the webui folder,
where ``launch`` is importable) and as other hosts run a repository-root install.py (no ``launch``)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from fake_hosts import REPO

FAKE_LAUNCH = '''
import json, os
LOG = os.environ["FAKE_LAUNCH_LOG"]
MISSING = set(os.environ.get("FAKE_MISSING", "").split(","))
def is_installed(package):
    return package not in MISSING
def run_pip(command, desc=None, live=False):
    pins = []
    if " -c " in command:  # keep what the constraints file pinned (install.py deletes it afterwards)
        pins = open(command.split(" -c ")[1].split('"')[1]).read().splitlines()
    with open(LOG, "a") as f:
        f.write(json.dumps([command, desc, pins]) + "\\n")
'''

SITECUSTOMIZE = '''
import importlib.util, os
_missing = set(os.environ.get("FAKE_MISSING", "").split(","))
_real = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name in _missing else _real(name, package)
importlib.util.find_spec = find_spec
'''


def _run(script, tmp_path, webui: bool, missing="", **environ):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCDPO_TRAINER_DIR", "SCDPO_INSTALL_NUDENET")}
    log = tmp_path / "pip.log"
    if webui:
        (tmp_path / "webui").mkdir(exist_ok=True)
        (tmp_path / "webui" / "launch.py").write_text(FAKE_LAUNCH)
        (tmp_path / "webui" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = str(tmp_path / "webui")
    env.update(FAKE_LAUNCH_LOG=str(log), FAKE_MISSING=missing, **environ)
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60,
                          cwd=str(tmp_path))
    calls = [line for line in log.read_text().splitlines()] if log.exists() else []
    return proc, calls


@pytest.mark.parametrize("script", [REPO / "install.py", REPO / "a1111_extension" / "install.py"],
                         ids=["root", "extension"])
def test_outside_a_webui_it_does_nothing(tmp_path, script):
    proc, calls = _run(script, tmp_path, webui=False)
    assert proc.returncode == 0 and calls == []
    assert "not inside an AUTOMATIC1111 / Forge webui" in proc.stdout


@pytest.mark.parametrize("script", [REPO / "install.py", REPO / "a1111_extension" / "install.py"],
                         ids=["root", "extension"])
def test_in_a_webui_it_installs_only_what_is_missing_and_never_torch(tmp_path, script):
    proc, calls = _run(script, tmp_path, webui=True)
    assert proc.returncode == 0, proc.stderr
    assert calls == []
    proc, calls = _run(script, tmp_path, webui=True, missing="tqdm,safetensors,torch")
    assert proc.returncode == 0, proc.stderr
    assert [c.split('"')[1] for c in calls] == ["install safetensors", "install tqdm"]
    assert not any("torch" in c for c in calls)


def test_the_extension_copied_away_from_its_repository_says_where_scdpo_must_come_from(tmp_path):
    import shutil

    copy = tmp_path / "extensions" / "sc-dpo-safety"
    shutil.copytree(REPO / "a1111_extension", copy, ignore=shutil.ignore_patterns("__pycache__"))
    proc, _ = _run(copy / "install.py", tmp_path, webui=True, missing="scdpo")
    assert proc.returncode == 0
    assert "SCDPO_TRAINER_DIR=<repo>/trainer" in proc.stdout


def test_nudenet_only_on_request_and_without_changing_the_webuis_packages(tmp_path):
    """A plain `pip install nudenet` would replace the webui's numpy 1.26 and protobuf 3.20 (A1111 v1.10.1):
    onnxruntime goes in under constraints pinning everything installed, nudenet with --no-deps."""
    import importlib.metadata
    import json

    script = REPO / "install.py"
    proc, calls = _run(script, tmp_path, webui=True, missing="nudenet,onnxruntime")
    assert proc.returncode == 0 and calls == []  # not requested: nothing
    (tmp_path / "pip.log").unlink(missing_ok=True)
    proc, calls = _run(script, tmp_path, webui=True, missing="nudenet,onnxruntime", SCDPO_INSTALL_NUDENET="1")
    assert proc.returncode == 0, proc.stderr
    commands = [json.loads(c) for c in calls]
    assert commands[0][0].startswith("install onnxruntime -c ") and commands[1][0] == "install --no-deps nudenet"
    pins = set(commands[0][2])
    for name in ("numpy", "torch", "safetensors"):
        assert f"{name}=={importlib.metadata.version(name)}" in pins, name
    assert "numpy, protobuf and torch unchanged" in proc.stdout
    assert not list(tmp_path.glob("scdpo_constraints_*"))
