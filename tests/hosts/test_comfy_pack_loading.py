"""The repository root loads as a ComfyUI node pack: what it registers, what importing it does."""

import os
import subprocess
import sys
import textwrap

import pytest
from comfy_host import FAKE_COMFYUI, REPO_ROOT, load_pack

pytestmark = pytest.mark.usefixtures("comfyui")  # every test runs inside the fake ComfyUI

NODE_IDS = {"SCDPOSafeUNet": "SC-DPO Safe UNet", "SCDPOCostModelLoader": "SC-DPO Cost Model Loader",
            "SCDPOSafetyGate": "SC-DPO Safety Gate", "SCDPOCostScore": "SC-DPO Cost Score",
            "SCDPOSafeKSampler": "SC-DPO Safe KSampler"}


def test_registers_exactly_the_five_nodes_with_v3_schemas(comfy_models):
    pack = load_pack(REPO_ROOT)
    assert pack.display_names == NODE_IDS
    assert set(pack.node_classes) == set(NODE_IDS)
    assert [n for n in dir(pack.module) if not n.startswith("_") and n.isupper()] == [
        "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
    from comfy_api.internal import _ComfyNodeInternal

    for node_id, cls in pack.node_classes.items():
        assert issubclass(cls, _ComfyNodeInternal), "executed as a V3 node by ComfyUI"
        info = cls.GET_NODE_INFO_V1()  # what /object_info serves
        assert info["name"] == node_id and info["display_name"] == NODE_IDS[node_id]
        assert info["category"] == "SC-DPO safety"
        assert info["python_module"] == f"custom_nodes.{REPO_ROOT.name}"
    gate = pack.node_classes["SCDPOSafetyGate"].GET_NODE_INFO_V1()
    assert gate["output"] == ["IMAGE", "FLOAT", "BOOLEAN", "MASK", "STRING"]
    assert gate["output_is_list"] == [False, True, True, False, False]
    assert gate["input"]["required"]["images"][0] == "IMAGE"
    assert gate["input"]["required"]["cost_model"][0] == "SCDPO_COST_MODEL"
    assert pack.node_classes["SCDPOCostModelLoader"].GET_NODE_INFO_V1()["output"] == ["SCDPO_COST_MODEL"]
    unet = pack.node_classes["SCDPOSafeUNet"].GET_NODE_INFO_V1()
    assert unet["input"]["required"]["model"][0] == "MODEL" and unet["output"] == ["MODEL"]
    sampler = pack.node_classes["SCDPOSafeKSampler"].GET_NODE_INFO_V1()
    assert sampler["output"] == ["LATENT"] and sampler["input"]["required"]["cost_model"][0] == "SCDPO_COST_MODEL"
    assert list(sampler["input"]["required"])[:2] == ["model", "cost_model"]
    assert sampler["input"]["required"]["seed"][1]["control_after_generate"] is True  # as KSampler's seed


def test_safety_models_folder_is_registered_and_extra_paths_are_kept(tmp_path):
    import folder_paths

    from comfy_host import pack_module

    folder_paths.reset(str(tmp_path / "ComfyUI"))
    folder_paths.add_model_folder_path("safety_models", "/data/shared/safety")  # from extra_model_paths.yaml
    default = pack_module("model_folders").register_safety_models_folder()
    paths, extensions = folder_paths.folder_names_and_paths["safety_models"]
    assert paths == ["/data/shared/safety", os.path.join(folder_paths.models_dir, "safety_models")] and paths[1] == default
    assert extensions == {".safetensors"}
    pack_module("model_folders").register_safety_models_folder()
    assert len(folder_paths.folder_names_and_paths["safety_models"][0]) == 2  # idempotent


def _run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(FAKE_COMFYUI))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                          cwd=str(REPO_ROOT.parent), timeout=300)


def test_import_is_cheap_and_offline():
    """Import as ComfyUI does in a fresh interpreter: no model loaded, no torch module built, no socket,
    no diffusers/transformers import, sys.path untouched when `scdpo` is installed."""
    result = _run_python(f"""
        import importlib.util, socket, sys
        def no_network(*a, **k): raise AssertionError("network access during import")
        socket.socket.connect = no_network
        import torch
        built = []
        torch.nn.Module.__init__ = (lambda orig: lambda self, *a, **k: (built.append(type(self).__name__), orig(self, *a, **k))[1])(torch.nn.Module.__init__)
        root = {str(REPO_ROOT)!r}
        path_before = list(sys.path)
        spec = importlib.util.spec_from_file_location(root.replace(".", "_x_"), root + "/__init__.py")
        module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
        import comfy.model_management as mm
        assert len(module.NODE_CLASS_MAPPINGS) == 5
        assert mm.loaded_patchers == [], mm.loaded_patchers
        assert built == [], built
        heavy = [m for m in ("diffusers", "transformers", "peft", "nudenet", "onnxruntime") if m in sys.modules]
        assert heavy == [], heavy
        print("sys.path changed", sys.path != path_before)
    """)
    assert result.returncode == 0, result.stderr
    assert "sys.path changed False" in result.stdout  # scdpo is installed here; the ComfyUI rig covers the other case


def test_older_comfyui_without_v3_schema_gets_classic_nodes():
    """A ComfyUI build from before comfy_api existed: the same nodes through INPUT_TYPES/RETURN_TYPES/FUNCTION."""
    result = _run_python(f"""
        import importlib.abc, importlib.util, sys, torch
        class OldComfyUI(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("comfy_api", "comfy_execution"):
                    raise ImportError(name)
        sys.meta_path.insert(0, OldComfyUI())
        root = {str(REPO_ROOT)!r}
        spec = importlib.util.spec_from_file_location(root.replace(".", "_x_"), root + "/__init__.py")
        module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
        comfy_nodes = sys.modules[spec.name + ".comfy_nodes"]
        assert comfy_nodes.HAS_V3_SCHEMA is False
        gate = module.NODE_CLASS_MAPPINGS["SCDPOSafetyGate"]
        spec_in = gate.INPUT_TYPES()
        assert spec_in["required"]["threshold"] == ("FLOAT", {{"default": 0.5, "min": 0.01, "max": 0.99, "step": 0.01,
            "tooltip": spec_in["required"]["threshold"][1]["tooltip"]}}), spec_in["required"]["threshold"]
        assert spec_in["required"]["action"][0] == ["blur", "pixelate", "black", "replace", "stop", "pass"]
        assert gate.RETURN_TYPES == ("IMAGE", "FLOAT", "BOOLEAN", "MASK", "STRING")
        assert gate.OUTPUT_IS_LIST == (False, True, True, False, False) and gate.CATEGORY == "SC-DPO safety"
        sampler = module.NODE_CLASS_MAPPINGS["SCDPOSafeKSampler"]
        assert sampler.RETURN_TYPES == ("LATENT",) and sampler.INPUT_TYPES()["required"]["positive"][0] == "CONDITIONING"
        from scdpo.cost.scorer import make_result
        class Scorer:
            categories, threshold = ["nudity"], 0.0
            def __init__(self, costs, fail=False): self.costs, self.fail = costs, fail
            def score(self, images, batch_size=16, progress=None):
                if self.fail: raise RuntimeError("backbone exploded")
                return make_result(torch.tensor(self.costs), self.categories, self.threshold)
        Model = sys.modules[spec.name + ".comfy_nodes.cost_model_loader"].ComfyCostModel
        x = torch.rand(2, 8, 8, 3)
        out = getattr(gate(), gate.FUNCTION)(images=x, cost_model=Model(Scorer([[-2.0], [3.0]]), "s"), threshold=0.5, action="black")
        images, costs, unsafe, mask, report = out["result"]
        assert torch.equal(images[0], x[0]) and images[1].abs().max() == 0 and unsafe == [False, True]
        assert "UNSAFE" in out["ui"]["text"][0]
        try:
            getattr(gate(), gate.FUNCTION)(images=x, cost_model=Model(Scorer(None, fail=True), "s"), threshold=0.5, action="pass")
        except RuntimeError as exc:
            print("blocked:", exc)
    """)
    assert result.returncode == 0, result.stderr
    assert ("blocked: blocked by SC-DPO gate: all 2 images withheld, scoring failed (RuntimeError: backbone exploded)"
            in result.stdout)


def test_a_clone_without_its_requirements_says_what_is_missing_once_at_import():
    """ComfyUI-Manager runs `pip install -r requirements.txt`; a plain `git clone` does not. The nodes still
    register, and one console line at start-up names each missing package, what needs it and the command."""
    result = _run_python(f"""
        import importlib.abc, importlib.util, logging, sys
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
        class NotInstalled(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("diffusers", "nudenet"):
                    raise ModuleNotFoundError(f"No module named {{name!r}}")
        sys.meta_path.insert(0, NotInstalled())
        root = {str(REPO_ROOT)!r}
        spec = importlib.util.spec_from_file_location(root.replace(".", "_x_"), root + "/__init__.py")
        module = importlib.util.module_from_spec(spec); sys.modules[spec.name] = module; spec.loader.exec_module(module)
        assert len(module.NODE_CLASS_MAPPINGS) >= 4
    """)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "[SC-DPO]" in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("WARNING [SC-DPO] missing Python packages: diffusers (the Cost Model Loader), "
                               "nudenet (the Cost Model Loader's NudeNet choice);")
    assert lines[0].endswith(f"-m pip install -r {REPO_ROOT / 'requirements.txt'}")


def test_the_import_check_covers_requirements_txt_and_is_silent_when_all_is_there(monkeypatch):
    from comfy_host import pack_module

    deps = pack_module("dependencies")
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    listed = {line.split(">")[0].split("=")[0].split("<")[0].strip().lower() for line in lines
              if line.strip() and not line.startswith("#")}
    assert {name for name, _ in deps.REQUIREMENTS.values()} == listed
    monkeypatch.setattr(deps, "_findable", lambda module: True)
    assert deps.missing_message(str(REPO_ROOT)) is None
