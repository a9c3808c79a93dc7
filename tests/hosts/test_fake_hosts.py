"""The fake hosts are there for the test that asks for them, and gone after it."""

import importlib.util
import sys

from fake_hosts import HOSTS, installed


def test_a_fake_host_is_importable_inside_and_forgotten_after():
    real_gradio = sys.modules.get("gradio")
    for host, probe in (("comfyui", "folder_paths"), ("webui", "gradio")):
        path_before, modules_before = list(sys.path), set(sys.modules)
        with installed(host) as folder:
            module = __import__(probe)
            assert module.__file__.startswith(str(folder))
            assert (folder / "README.md").is_file()  # names the host commit it follows
        assert sys.path == path_before
        roots = HOSTS[host].modules
        # nothing the fake brought stays (the real gradio and its submodules may have been loaded before)
        assert [name for name in sys.modules if name.split(".")[0] in roots and name not in modules_before] == []
    assert sys.modules.get("gradio") is real_gradio  # the real gradio (if imported) is back
    assert importlib.util.find_spec("folder_paths") is None


def test_the_two_fakes_own_distinct_module_names():
    comfy, webui = (set(HOSTS[h].modules) for h in ("comfyui", "webui"))
    assert not comfy & webui
