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
    with open(LOG, "a") as f:
        f.write(json.dumps([command, desc]) + "\\n")
'''

SITECUSTOMIZE = '''
import importlib.util, os
_missing = set(os.environ.get("FAKE_MISSING", "").split(","))
_real = importlib.util.find_spec
def find_spec(name, package=None):
    return None if name in _missing else _real(name, package)
importlib.util.find_spec = find_spec
'''


def _run(script, tmp_path, webui: bool, missing=""):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SCDPO_TRAINER_DIR")}
    log = tmp_path / "pip.log"
    if webui:
        (tmp_path / "webui").mkdir(exist_ok=True)
        (tmp_path / "webui" / "launch.py").write_text(FAKE_LAUNCH)
        (tmp_path / "webui" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env["PYTHONPATH"] = str(tmp_path / "webui")
    env.update(FAKE_LAUNCH_LOG=str(log), FAKE_MISSING=missing)
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
