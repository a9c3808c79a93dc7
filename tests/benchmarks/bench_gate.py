"""How much time the SC-DPO Safety Gate adds per 512x512 image, next to a 20-step toy sampling time.

Run: ``.venv/bin/python tests/benchmarks/bench_gate.py [--batch 4] [--repeats 3] [--patch 32 16]``

The gate runs as ComfyUI runs it (node schema -> execute, through the stand-in ComfyUI modules of
tests/hosts) with a cost model on a **randomly initialised CLIP ViT-B-sized vision tower**
(hidden 768, 12 layers, 12 heads, 224 px, projection 512; patch 32 = ViT-B/32, 16 = ViT-B/16),
saved to disk and loaded by the Cost Model Loader like a user's model. Random weights cost the
same time as trained ones. Prints one line per measurement and a final JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "hosts"))


def vit_b_cost_model(folder: Path, patch: int) -> Path:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from scdpo.cost import ClipVisionEncoder, SafetyCostModel
    from scdpo.fileio import save_safetensors_atomic

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           patch_size=patch, image_size=224, projection_dim=512, hidden_act="quick_gelu")
    clip = CLIPVisionModelWithProjection(cfg).eval()
    clip_file = folder / "clip_vision" / f"vit_b{patch}_random.safetensors"
    save_safetensors_atomic(clip.state_dict(), clip_file, {"config": json.dumps(cfg.to_dict())})
    model = SafetyCostModel(ClipVisionEncoder(clip), ["nudity", "gore", "weapons"], feature_dim=128)
    path = folder / "safety_models" / f"cost_vit_b{patch}.safetensors"
    model.save(path)
    return path


def time_gate(batch: int, repeats: int, patch: int) -> dict:
    from fake_hosts import installed

    with installed("comfyui"):
        return _time_gate_in_comfyui(batch, repeats, patch)


def _time_gate_in_comfyui(batch: int, repeats: int, patch: int) -> dict:
    import folder_paths
    from comfy_host import load_pack, pack_module, run_node

    from scdpo.gate import redact

    tmp = Path(tempfile.mkdtemp(prefix="bench_gate_"))
    folder_paths.reset(str(tmp / "ComfyUI"))
    load_pack()
    pack_module("model_folders").register_safety_models_folder()
    models = Path(folder_paths.models_dir)
    cost_file = vit_b_cost_model(models, patch)
    loader, gate = pack_module("cost_model_loader").CostModelLoader, pack_module("safety_gate").SafetyGate
    t0 = time.perf_counter()
    cost_model = run_node(loader, cost_model=cost_file.name, device="cpu",
                          backbone=f"vit_b{patch}_random.safetensors").outputs[0]
    load_s = time.perf_counter() - t0
    images = torch.rand(batch, 512, 512, 3, generator=torch.Generator().manual_seed(0))
    run_node(gate, images=images[:1], cost_model=cost_model, threshold=0.5, action="pass")  # warm-up
    per_image = []  # scoring + verdicts + outputs (action "pass": no image redacted)
    for _ in range(repeats):
        t0 = time.perf_counter()
        run_node(gate, images=images, cost_model=cost_model, threshold=0.5, action="pass")
        per_image.append((time.perf_counter() - t0) / batch)
    redact_s = {}
    for action in ("blur", "pixelate"):
        redact(images[0], action)  # warm-up
        t0 = time.perf_counter()
        for i in range(batch):
            redact(images[i], action)
        redact_s[action] = round((time.perf_counter() - t0) / batch, 4)
    return {"backbone": f"random CLIP ViT-B/{patch}", "load_s": round(load_s, 2), "batch": batch,
            "gate_s_per_image_median": round(statistics.median(per_image), 3),
            "gate_s_per_image_all": [round(t, 3) for t in per_image],
            "extra_s_per_unsafe_image": redact_s}


def time_toy_sampling(batch: int, repeats: int, steps: int = 20) -> dict:
    from scdpo.errors import InputFileError
    from scdpo.models import load_base_model

    try:
        model, weights = load_base_model("toy"), "shipped"
    except InputFileError:  # same architecture and compute with random weights
        from scdpo.toy.model import ToyTextToImage

        model, weights = ToyTextToImage.from_scratch(0), "random (weights/toy_base.safetensors not shipped)"
    prompts = ["a red circle on a blue background"] * batch
    model.generate(prompts[:1], seed=0, steps=2)  # warm-up
    per_image = []
    for r in range(repeats):
        t0 = time.perf_counter()
        model.generate(prompts, seed=list(range(r * batch, (r + 1) * batch)), steps=steps)
        per_image.append((time.perf_counter() - t0) / batch)
    return {"toy_steps": steps, "toy_weights": weights, "batch": batch, "toy_s_per_image_median": round(statistics.median(per_image), 3),
            "toy_s_per_image_all": [round(t, 3) for t in per_image]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--patch", type=int, nargs="*", default=[32, 16], help="ViT-B patch sizes (none: skip the gate)")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {"torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(), "gate": []}
    for patch in a.patch:
        r = time_gate(a.batch, a.repeats, patch)
        results["gate"].append(r)
        print(f"gate, {r['backbone']}: {r['gate_s_per_image_median']:.3f} s per 512x512 image "
              f"(batch {a.batch}; load {r['load_s']} s); + per unsafe image: {r['extra_s_per_unsafe_image']}")
    try:
        toy = time_toy_sampling(a.batch, a.repeats)
        results["toy_sampling"] = toy
        print(f"toy model, 20 steps: {toy['toy_s_per_image_median']:.3f} s per image (batch {a.batch})")
    except Exception as exc:  # noqa: BLE001 - the benchmark still reports the gate
        results["toy_sampling"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"toy sampling not measured: {exc}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
