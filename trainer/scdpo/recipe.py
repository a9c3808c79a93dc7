"""``scdpo recipe``: the whole method on your own SD1.5 / SDXL checkpoint, in one resumable command.

Stages, each skipped when its output is already there (so ``kill -9`` anywhere and the same command
again loses no finished work; the data build resumes by chunk and the training from its last
checkpoint, both bit-identical to an uninterrupted run):

1. **prompts**: the shipped prompt set (docs/prompts.md) or the user's CSV, its ``train`` rows for
   the data and ``validation`` rows for the evaluation, ``--prompts-per-kind`` of each kind;
2. **data**: candidates from the base model, scored by the cost model and the CLIP reward, paired
   into SCP preference pairs (:func:`scdpo.scp.commands.build_dataset`);
3. **cost model**: a head on the CLIP image encoder trained on weak labels the zero-shot scorer
   gives the recipe's own candidates (what the hosts' gates load); skipped when the user named a
   cost-model file, or when too few candidates of a class exist (the zero-shot scorer then stays);
4. **train**: the SC-DPO safety LoRA (:func:`scdpo.dpo.train.train_lora`, winner anchor and concept
   augmentation on, gradient checkpointing, the frozen UNet in bf16 where supported);
5. **eval**: base vs LoRA on the held-out prompts with the same seeds: unsafe rate per category by the
   cost model, CLIP score of clean prompts, and picture grids;
6. **export**: ``recipe.json`` (stage seconds, images, peak memory, the configuration, the evaluation),
   ``report.html``, and the files for the hosts under ``hosts/``.

Before it starts the recipe prints its plan (stages, image counts, the memory estimate of
:mod:`scdpo.sd.memory` for this model and device) and refuses a CPU-only run of a full-size model
unless ``--cpu`` or ``--smoke`` asks for it. ``--smoke`` sets the smallest settings so a check can
walk every stage on a CPU, and pairs candidates by their cost relative to the prompt's other
candidates (the cost model's threshold is not used), so that the stages also run on a model whose
images no cost model tells apart (random weights): a smoke LoRA checks the plumbing, not safety.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import html
import io
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import InputFileError, ScdpoError

RECIPE_FILE = "recipe.json"
NUMERIC_OPTIONS = ("prompts_per_kind", "eval_prompts_per_kind", "candidates", "sampling_steps", "resolution",
                   "train_steps", "rank", "beta", "lr", "batch_size", "grad_accum", "attack_candidates", "seed")
KINDS = ("harmful", "near_miss", "clean")
MiB = 2**20


@dataclass
class RecipeConfig:
    """What a recipe run depends on; a folder holding another configuration's files is refused."""

    base: str
    prompts: str = "scdpo"
    categories: list[str] = field(default_factory=lambda: ["nudity", "gore", "weapon"])
    prompts_per_kind: int = 40  # train prompts per (harmful category | look-alike | clean)
    eval_prompts_per_kind: int = 12
    candidates: int = 4
    sampling_steps: int = 25
    resolution: Optional[int] = None  # None: the model's native size
    train_steps: int = 1000
    rank: int = 16
    beta: float = 5000.0
    lr: float = 1e-4
    batch_size: int = 1
    grad_accum: int = 4
    gradient_checkpointing: bool = True
    second_round: bool = False  # mine attacks with the first LoRA, train a second round on them
    attack_candidates: int = 2  # per harmful prompt, for the second round
    clip: str = ""
    cost_model: str = ""  # explicit spec or file; default from --clip / NudeNet
    reward: str = ""  # explicit reward spec; default clip:<--clip>
    seed: int = 0

    @classmethod
    def smoke(cls, base: str, **changes) -> "RecipeConfig":
        values = dict(base=base, prompts_per_kind=1, eval_prompts_per_kind=1, candidates=2, sampling_steps=2,
                      resolution=64, train_steps=2, rank=4, batch_size=1, grad_accum=1, gradient_checkpointing=False)
        values.update(changes)
        return cls(**values)


# ---- prompts -------------------------------------------------------------------------------------
def _prompt_rows(source: str, split: str, categories: list[str], per_kind: int) -> list[dict]:
    """Rows of ``source`` (``scdpo`` or a CSV) in ``split`` (all rows of a CSV without a split
    column): ``per_kind`` harmful rows per category, look-alike rows and clean rows."""
    from .scp.commands import read_csv_rows, resolve_prompt_file

    path = resolve_prompt_file(source)
    if not path.is_file():
        raise InputFileError(f"prompt CSV not found: {path}; pass --prompts scdpo or a CSV with columns prompt, "
                             "category, safe_prompt, erased_prompt")
    rows, columns = read_csv_rows(path)
    missing = [c for c in ("prompt", "category") if c not in columns]
    if missing:
        raise InputFileError(f"{path} lacks the column(s) {', '.join(missing)}; a prompt CSV needs prompt, category "
                             "(empty = clean), and optionally safe_prompt, erased_prompt, split")
    if "split" in columns:
        rows = [r for r in rows if (r.get("split") or "").strip() == split]
    picked: list[dict] = []
    for cat in categories:
        mine = [r for r in rows if (r.get("category") or "").strip() == cat and (r.get("prompt") or "").strip()]
        if not mine:
            raise InputFileError(f"{path} has no {split} prompts of category {cat!r}; add some, or drop it from "
                                 "--categories")
        picked += mine[:per_kind]
    clean = [r for r in rows if not (r.get("category") or "").strip() and (r.get("prompt") or "").strip()]
    near = [r for r in clean if (r.get("erased_prompt") or "").strip()
            and (r.get("resembles") or "").strip() in ("", *categories)]
    plain = [r for r in clean if not (r.get("erased_prompt") or "").strip()]
    return picked + near[:per_kind] + plain[:per_kind]


def _write_prompts(rows: list[dict], path: Path) -> None:
    from .fileio import write_text_atomic

    buf = io.StringIO()
    fields = ["prompt", "category", "safe_prompt", "erased_prompt"]
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows({k: (r.get(k) or "") for k in fields} for r in rows)
    write_text_atomic(path, buf.getvalue())


# ---- scorers ---------------------------------------------------------------------------------------
def scorer_specs(cfg: RecipeConfig) -> tuple[str, str, list[str]]:
    """``(cost-model spec, reward spec, notes)`` from what the user has; one clear error when the
    recipe cannot score what it must."""
    from .cost.clip_setup import missing_clip_help, nudenet_installed

    notes: list[str] = []
    cost = cfg.cost_model
    if not cost:
        if cfg.clip:
            cost = (f"nudenet+clip-zero-shot:{cfg.clip}" if "nudity" in cfg.categories and nudenet_installed()
                    else f"clip-zero-shot:{cfg.clip}")
        elif cfg.categories == ["nudity"] and nudenet_installed():
            cost = "nudenet"
            notes.append("no --clip: NudeNet scores nudity")
        else:
            raise ScdpoError(missing_clip_help(cfg.categories).replace("\n", " "))
    reward = cfg.reward or (f"clip:{cfg.clip}" if cfg.clip else "")
    if not reward:
        raise ScdpoError("the recipe ranks candidates by a preference reward: pass --clip PATH (a full CLIP model) "
                         "or --reward package.module:function; " + missing_clip_help(cfg.categories).split("\n")[0])
    return cost, reward, notes


# ---- memory / progress bookkeeping -----------------------------------------------------------------
class _Peak:
    """Peak memory of one stage: CUDA ``max_memory_allocated`` and the process's peak resident memory."""

    def __enter__(self) -> "_Peak":
        import torch

        from .sd.memory import _reset_peak

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        with contextlib.suppress(OSError):  # not Linux: no resident-memory peak
            _reset_peak()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        from .sd.memory import _rss_bytes

        self.gpu = torch.cuda.max_memory_allocated() if self.cuda else None
        self.rss = None
        with contextlib.suppress(OSError, RuntimeError):
            self.rss = _rss_bytes("VmHWM")


def _check_output(out: Path, cfg: RecipeConfig) -> dict:
    """The recipe record in ``out``: new, or the one of this same configuration (resume)."""
    from .limits import read_json_file

    record_path = out / RECIPE_FILE
    want = dataclasses.asdict(cfg)
    if record_path.is_file():
        old = read_json_file(record_path, "recipe record", "delete it or choose another --out")
        if not isinstance(old, dict) or old.get("config") != json.loads(json.dumps(want)):
            theirs = old.get("config", {}) if isinstance(old, dict) else {}
            diff = next((k for k in want if theirs.get(k) != want[k]), "config")
            raise ScdpoError(f"{out} holds another recipe's files ({diff} was {theirs.get(diff)!r}, now "
                             f"{want.get(diff)!r}); rerun with the same options to resume, or choose another --out")
        return old
    if out.exists() and any(out.iterdir()):
        raise ScdpoError(f"{out} is not empty and holds no {RECIPE_FILE}; choose an empty or new --out")
    return {"config": want, "stages": {}}


def _save_record(out: Path, record: dict) -> None:
    from .fileio import write_json_atomic

    write_json_atomic(out / RECIPE_FILE, record)


# ---- the recipe ----------------------------------------------------------------------------------
def plan_text(cfg: RecipeConfig, device, info, n_train: int, n_eval: int, cost: str, reward: str) -> str:
    from .sd.memory import estimate_training_memory

    res = cfg.resolution or (1024 if info.family == "sdxl" else 512)
    images = n_train * cfg.candidates
    lines = [f"scdpo recipe: {info.path} ({info.family}, {info.layout}) on {device}",
             f"  1 prompts  {n_train} training prompts, {n_eval} held-out prompts ({cfg.prompts})",
             f"  2 data     about {images} candidates at {res} px, {cfg.sampling_steps} sampling steps; cost {cost}; "
             f"reward {reward}",
             "  3 cost     a CLIP head on weak labels of those candidates (when a CLIP model is given)",
             f"  4 train    {cfg.train_steps} steps, rank {cfg.rank}, batch {cfg.batch_size} x {cfg.grad_accum}",
             f"  5 eval     {2 * n_eval} images (base and LoRA, same seeds)",
             "  6 export   recipe.json, report.html, hosts/"]
    try:
        plan = estimate_training_memory(info.family, res, cfg.rank)
        lines.append(f"  memory estimate for training ({info.family}, {res} px, rank {cfg.rank}): "
                     f"{plan.total_bytes / 2**30:.2f} GiB ({'GPU' if device.type == 'cuda' else 'on the GPU; here RAM'})")
    except Exception as exc:  # noqa: BLE001 - the estimate needs the real architecture; a custom size may not fit it
        lines.append(f"  memory estimate unavailable ({type(exc).__name__})")
    return "\n".join(lines)


def run_recipe(cfg: RecipeConfig, out: str | Path, device: str = "auto", allow_cpu: bool = False,
               smoke: bool = False, progress: bool = True) -> dict:
    from .demo import Stage, StageRunner
    from .models import resolve_device
    from .sd.detect import inspect_base_model
    from .sd.memory import parameter_counts

    out = Path(out)
    info = inspect_base_model(cfg.base)  # SD2/SD3/Flux/refiner/LoRA files are refused here, in one line
    dev = resolve_device(device)
    if dev.type == "cpu" and not (allow_cpu or smoke):
        full = _unet_parameters(info) >= 0.5 * parameter_counts(info.family)["unet"]
        if full:
            raise ScdpoError(f"{info.path} is a full-size {info.family} model and no GPU is available: the recipe would "
                             "take days on a CPU. Run it on a GPU, pass --smoke for a quick check of every stage, or "
                             "--cpu to run it anyway")
    cost, reward, notes = scorer_specs(cfg)
    train_rows = _prompt_rows(cfg.prompts, "train", cfg.categories, cfg.prompts_per_kind)
    eval_rows = _prompt_rows(cfg.prompts, "validation", cfg.categories, cfg.eval_prompts_per_kind)
    print(plan_text(cfg, dev, info, len(train_rows), len(eval_rows), cost, reward), flush=True)
    for note in notes:
        print("  note: " + note, flush=True)
    record = _check_output(out, cfg)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"prompts": out / "prompts.csv", "eval_prompts": out / "prompts_eval.csv", "data": out / "data",
             "cost": out / "cost_model.safetensors", "lora": out / "lora" / "safety_lora.safetensors",
             "data2": out / "data_round2", "lora1": out / "lora" / "safety_lora.safetensors",
             "eval": out / "eval" / "eval.json", "hosts": out / "hosts"}
    if cfg.second_round:  # the LoRA evaluated and shipped is the second round's
        paths["lora"] = out / "lora" / "safety_lora_round2.safetensors"
    runner = StageRunner(verbose=progress)

    def stage(name: str, fn, done) -> Stage:
        def run() -> None:
            t0 = time.time()
            with _Peak() as peak:
                result = fn()
            record["stages"][name] = {"seconds": round(time.time() - t0, 1), "peak_rss_mib": _mib(peak.rss),
                                      "peak_gpu_mib": _mib(peak.gpu), **(result or {})}
            _save_record(out, record)
        return Stage(name, run, lambda: done() and name in record["stages"])

    def prompts() -> dict:
        _write_prompts(train_rows, paths["prompts"])
        _write_prompts(eval_rows, paths["eval_prompts"])
        return {"train_prompts": len(train_rows), "eval_prompts": len(eval_rows)}

    def data() -> dict:
        from .scp.builder import BuildConfig
        from .scp.commands import build_dataset

        build = BuildConfig(candidates=cfg.candidates, steps=cfg.sampling_steps, resolution=cfg.resolution,
                            batch_size=max(1, min(8, cfg.candidates * 2)), chunk_prompts=4, seed=cfg.seed,
                            source="generated", erased_candidates=1 if smoke else 2, pairs_per_prompt=2,
                            relative_verdicts=smoke)
        result = build_dataset(paths["data"], build, prompts_csv=str(paths["prompts"]), cost_model=cost,
                               backbone=cfg.clip or None, reward=reward, base=cfg.base, device=str(dev),
                               prompt_split="all")
        if result.n_pairs == 0:
            skipped = result.summary.get("skipped_prompts", {})
            raise ScdpoError(
                f"the data stage built no preference pairs from {result.summary.get('prompts', 0)} prompts (skipped: "
                f"{', '.join(f'{k} {v}' for k, v in skipped.items()) or 'none'}): the cost model {cost} found no safe "
                "candidate to prefer or no unsafe one to reject. Check that it fits this model's images (scdpo cost "
                f"score on a few of them), or raise --candidates / --prompts-per-kind; then delete {paths['data']} "
                "and rerun")
        return {"pairs": int(result.n_pairs), "prompts": int(result.summary.get("prompts", 0)),
                "pairs_by_kind": result.summary.get("pairs_by_kind", {})}

    def cost_model() -> dict:
        return _train_cost_head(cfg, cost, paths, dev)

    def train_round(data: Path, name: str, init_lora: str = "") -> dict:
        from .dpo.config import TrainConfig
        from .dpo.train import summary_of, train_lora

        tc = TrainConfig(base=cfg.base, data=str(data), out=str(paths["lora1"].parent), name=name,
                         steps=cfg.train_steps, rank=cfg.rank, alpha=float(cfg.rank), beta=cfg.beta, lr=cfg.lr,
                         batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, warmup_steps=min(20, cfg.train_steps // 10),
                         gradient_checkpointing=cfg.gradient_checkpointing, winner_anchor=0.5, concept_augment=0.5,
                         concept_scale=2.0, seed=cfg.seed, checkpoint_every=max(1, min(50, cfg.train_steps // 10)),
                         cost_model=cost, cpu=dev.type == "cpu", init_lora=init_lora).validate()
        path = train_lora(tc, progress=progress)
        return {"summary": summary_of(path)}

    def train() -> dict:
        return train_round(paths["data"], "safety_lora")

    def mine() -> dict:
        from .cost.scorer import load_cost_model
        from .models import load_base_model
        from .scp.builder import BuildConfig, mine_attack_pairs
        from .scp.commands import _load_attack_lora
        from .scp.rewards import make_reward

        build = BuildConfig(candidates=cfg.candidates, steps=cfg.sampling_steps, resolution=cfg.resolution,
                            batch_size=max(1, min(8, cfg.attack_candidates * 2)), seed=cfg.seed, source="generated",
                            attack_candidates=cfg.attack_candidates, relative_verdicts=smoke)
        model = load_base_model(cfg.base, device=str(dev))
        result = mine_attack_pairs(model, load_cost_model(cost, backbone=cfg.clip or None, device=str(dev)),
                                   make_reward(reward, device=str(dev)), paths["data"], paths["data2"], build,
                                   _load_attack_lora(str(paths["lora1"]), model), progress=progress)
        return {"pairs": int(result.n_pairs), "mined": result.summary.get("mined", {})}

    def train2() -> dict:
        return train_round(paths["data2"], "safety_lora_round2", init_lora=str(paths["lora1"]))

    def evaluate() -> dict:
        return _evaluate(cfg, eval_rows, paths, cost, reward, dev)

    def export() -> dict:
        return _export(cfg, out, paths, record)

    stages = [stage("prompts", prompts, lambda: paths["prompts"].is_file()),
              stage("data", data, lambda: (paths["data"] / "pairs.parquet").is_file()),
              stage("cost model", cost_model, lambda: True),
              stage("train", train, lambda: paths["lora1"].is_file()),
              *([stage("mine attacks", mine, lambda: (paths["data2"] / "pairs.parquet").is_file()),
                 stage("train round 2", train2, lambda: paths["lora"].is_file())] if cfg.second_round else []),
              stage("eval", evaluate, lambda: paths["eval"].is_file()),
              stage("export", export, lambda: (out / "report.html").is_file())]
    runner.run_all(stages)
    for line in record.get("hosts", []):
        print(line)
    return record


def _mib(value: Optional[int]) -> Optional[float]:
    return round(value / MiB, 1) if value is not None else None


def _unet_parameters(info) -> int:
    """Parameters of the UNet in a base model file or folder, from its header (no weights read)."""
    import math

    from .fileio import read_safetensors_header
    from .sd.detect import SD_UNET_PREFIX

    if info.layout == "single_file":
        header = read_safetensors_header(info.path, "base model checkpoint")
        return sum(math.prod(v["shape"]) for k, v in header.items() if k.startswith(SD_UNET_PREFIX))
    total = 0
    for file in sorted((info.path / "unet").glob("*.safetensors")):
        header = read_safetensors_header(file, "UNet weights")
        total += sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    return total


def _train_cost_head(cfg: RecipeConfig, cost: str, paths: dict, dev) -> dict:
    """A cost head on the CLIP encoder from weak labels of the dataset's images, when that can be done."""
    if cfg.cost_model and Path(cfg.cost_model).is_file():
        return {"cost_model": str(cfg.cost_model), "note": "the cost model you named"}
    if not cfg.clip:
        return {"cost_model": cost, "note": "no CLIP model: the scorer itself is the cost model"}
    from .cost.backbones import load_backbone
    from .cost.commands import train_cost
    from .cost.data import manifest_examples, weak_label_manifest
    from .cost.scorer import load_cost_model
    from .cost.training import CostTrainConfig
    from .scp.dataset import load_scp_dataset

    dataset = load_scp_dataset(paths["data"])
    images, groups = [], []
    for i in range(len(dataset)):
        item = dataset[i]
        images += [item["winner"], item["loser"]]
        groups += [item["prompt"]] * 2
    labeller = load_cost_model(cost, backbone=cfg.clip, device=str(dev))
    labels_dir = paths["cost"].parent / "cost_labels"
    labelled = weak_label_manifest(images, labeller, labels_dir, groups=groups)
    try:
        examples = manifest_examples(labelled["manifest"], seed=cfg.seed)
        report = train_cost(paths["cost"], examples, {"source": "recipe weak labels", **labelled["labels"]},
                            load_backbone(cfg.clip, device=str(dev)), CostTrainConfig(seed=cfg.seed))
    except ScdpoError as exc:
        return {"cost_model": cost, "weak_labels": labelled["labels"],
                "note": f"no head trained ({exc}); the zero-shot scorer stays the cost model"}
    return {"cost_model": str(paths["cost"]), "weak_labels": labelled["labels"],
            "auroc": report.get("calibration", {}).get("auroc")}


def _evaluate(cfg: RecipeConfig, rows: list[dict], paths: dict, cost: str, reward: str, dev) -> dict:
    """Base vs LoRA on the held-out prompts, same seeds: unsafe rate per category, clean CLIP score."""
    import numpy as np
    import torch

    from .cost.scorer import load_cost_model
    from .fileio import write_json_atomic
    from .lora import load_lora
    from .lora.peft_bridge import apply_lora, remove_lora
    from .models import load_base_model
    from .scp.rewards import make_reward

    model = load_base_model(cfg.base, device=str(dev))
    scorer = load_cost_model(str(paths["cost"]) if paths["cost"].is_file() else cost, backbone=cfg.clip or None,
                             device=str(dev))
    scorer_reward = make_reward(reward, device=str(dev)) if reward.startswith("clip") else None
    texts = [r["prompt"] for r in rows]
    seeds = [cfg.seed * 1000 + i for i in range(len(texts))]
    res = cfg.resolution

    def images() -> torch.Tensor:
        return torch.cat([model.generate(texts[i:i + 4], seed=seeds[i:i + 4], steps=cfg.sampling_steps, height=res,
                                         width=res) for i in range(0, len(texts), 4)])

    base_images = images()
    apply_lora(model, load_lora(paths["lora"]))
    lora_images = images()
    remove_lora(model.unet)
    out: dict[str, Any] = {"prompts": len(texts), "unsafe_rate": {}, "clean_clip_score": {}}
    for name, imgs in (("base", base_images), ("lora", lora_images)):
        result = scorer.score(imgs)
        rates = {}
        for cat in cfg.categories:
            idx = [i for i, r in enumerate(rows) if (r.get("category") or "").strip() == cat]
            rates[cat] = float(np.mean([bool(result.unsafe[i]) for i in idx])) if idx else None
        out["unsafe_rate"][name] = rates
        clean = [i for i, r in enumerate(rows) if not (r.get("category") or "").strip()]
        if scorer_reward is not None and clean:
            scores = scorer_reward.score(imgs[clean], [texts[i] for i in clean])
            out["clean_clip_score"][name] = float(scores.mean())
    _save_grid(base_images, paths["eval"].parent / "base.png")
    _save_grid(lora_images, paths["eval"].parent / "lora.png")
    write_json_atomic(paths["eval"], out)
    return {"evaluation": out}


def _save_grid(images, path: Path) -> None:
    import numpy as np
    from PIL import Image

    from .fileio import atomic_path

    arr = (images.clamp(0, 1) * 255).round().byte().numpy()
    n, h, w, _ = arr.shape
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    grid = np.zeros((rows * h, cols * w, 3), np.uint8)
    for i in range(n):
        grid[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = arr[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")


def _export(cfg: RecipeConfig, out: Path, paths: dict, record: dict) -> dict:
    """Files for the hosts, report.html, and the lines telling where each goes."""
    from .fileio import atomic_path, write_text_atomic

    hosts = paths["hosts"]
    stem = Path(cfg.base).stem
    lora_name = f"{stem}_scdpo_safety.safetensors"
    for sub in ("ComfyUI/models/loras", "ComfyUI/models/safety_models", "webui/models/Lora",
                "webui/models/scdpo"):
        (hosts / sub).mkdir(parents=True, exist_ok=True)
    for dst in (hosts / "ComfyUI/models/loras" / lora_name, hosts / "webui/models/Lora" / lora_name):
        with atomic_path(dst) as tmp:
            shutil.copyfile(paths["lora"], tmp)
    cost_note = "the cost model spec " + str(record["stages"].get("cost model", {}).get("cost_model"))
    if paths["cost"].is_file():
        cost_name = f"{stem}_scdpo_cost.safetensors"
        for dst in (hosts / "ComfyUI/models/safety_models" / cost_name, hosts / "webui/models/scdpo" / cost_name):
            with atomic_path(dst) as tmp:
                shutil.copyfile(paths["cost"], tmp)
        cost_note = cost_name
    if paths["cost"].is_file():
        comfy_cost = (f" and {hosts / 'ComfyUI/models/safety_models' / cost_note} to ComfyUI/models/safety_models/ "
                      "(the SC-DPO Safety Gate's cost model)")
        webui_cost = (f" and {hosts / 'webui/models/scdpo' / cost_note} to stable-diffusion-webui/models/scdpo/, "
                      "then set Settings > SC-DPO Safety > cost model to that path")
    else:
        comfy_cost = webui_cost = (" (no cost-model file was trained here, so the gate uses NudeNet or a cost model "
                                   "you train with `scdpo cost train`)")
    lines = [f"ComfyUI: copy {hosts / 'ComfyUI/models/loras' / lora_name} to ComfyUI/models/loras/ (the SC-DPO Safe "
             f"UNet's safety LoRA){comfy_cost}",
             f"A1111 / Forge: copy {hosts / 'webui/models/Lora' / lora_name} to stable-diffusion-webui/models/Lora/ "
             f"(the SC-DPO panel's safety LoRA){webui_cost}"]
    record["hosts"] = lines
    evaluation = record["stages"].get("eval", {}).get("evaluation", {})
    rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{_pct(evaluation.get('unsafe_rate', {}).get('base', {}).get(c))}"
                   f"</td><td>{_pct(evaluation.get('unsafe_rate', {}).get('lora', {}).get(c))}</td></tr>"
                   for c in cfg.categories)
    clip = evaluation.get("clean_clip_score", {})
    stages = "".join(f"<tr><td>{html.escape(k)}</td><td>{v.get('seconds')}</td><td>{v.get('peak_rss_mib')}</td>"
                     f"<td>{v.get('peak_gpu_mib')}</td></tr>" for k, v in record["stages"].items())
    page = f"""<!doctype html><meta charset="utf-8"><title>scdpo recipe: {html.escape(stem)}</title>
<h1>Safety LoRA for {html.escape(str(cfg.base))}</h1>
<h2>Unsafe rate on held-out prompts (cost model), base vs LoRA, same seeds</h2>
<table border=1><tr><th>category</th><th>base</th><th>LoRA</th></tr>{rows}</table>
<p>Clean prompts, CLIP score: base {clip.get('base', '-')}, LoRA {clip.get('lora', '-')}</p>
<h2>Held-out prompts: base (top), LoRA (bottom)</h2>
<img src="eval/base.png"><br><img src="eval/lora.png">
<h2>Stages</h2><table border=1><tr><th>stage</th><th>seconds</th><th>peak RSS MiB</th><th>peak GPU MiB</th></tr>{stages}</table>
<h2>For the hosts</h2><ul>{''.join(f'<li>{html.escape(x)}</li>' for x in lines)}</ul>"""
    write_text_atomic(out / "report.html", page)
    return {"lora": lora_name, "cost_model": cost_note}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


# ---- CLI -------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recipe", help="the whole method on your own SD1.5 / SDXL checkpoint: data, cost model, safety LoRA, "
        "evaluation, files for ComfyUI and A1111",
        description=__doc__.split("\n\n")[0] + " Stages: prompts, data, cost model, train, eval, export; rerun the "
        "same command after an interruption to continue. See docs/training.md.")
    p.add_argument("--base", required=True, help="SD1.5 or SDXL checkpoint (.safetensors) or diffusers folder")
    p.add_argument("--out", required=True, help="output folder (new, or one this same recipe wrote)")
    p.add_argument("--clip", default="", help="a full CLIP model (folder or open_clip file): reward and cost model")
    p.add_argument("--cost-model", default="", help="cost model file or spec instead of the CLIP/NudeNet default")
    p.add_argument("--reward", default="", help="reward spec instead of clip:<--clip>")
    p.add_argument("--prompts", default="scdpo", help="`scdpo` (the shipped set) or your CSV in the same schema")
    p.add_argument("--categories", default="nudity,gore,weapon", help="comma list of categories to remove")
    defaults = RecipeConfig(base="")
    helps = {"prompts_per_kind": "training prompts per harmful category, for look-alikes and for clean prompts",
             "eval_prompts_per_kind": "held-out (validation split) prompts per kind for the evaluation",
             "candidates": "images sampled per prompt", "sampling_steps": "sampling steps per image",
             "resolution": "image size in px", "train_steps": "optimiser steps of each training round",
             "rank": "LoRA rank (alpha = rank)", "beta": "DPO temperature beta", "lr": "learning rate",
             "batch_size": "pairs per micro-batch", "grad_accum": "micro-batches per optimiser step",
             "attack_candidates": "attack samples per harmful prompt for --second-round", "seed": "seed of every stage"}
    assert set(helps) == set(NUMERIC_OPTIONS)
    for name, text in helps.items():
        value = getattr(defaults, name)
        p.add_argument("--" + name.replace("_", "-"), type=float if isinstance(value, float) else int, default=None,
                       help=f"{text} (default {value if value is not None else 'the model native size'}; --smoke "
                       "sets its own smallest values, which these flags override)")
    p.add_argument("--second-round", action="store_true",
                   help="after the first LoRA, sample attacks against it (scdpo data mine-attacks) and train a second "
                   "round from it on the data plus those attack pairs; the second round's LoRA is evaluated and exported")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cuda, cpu")
    p.add_argument("--cpu", action="store_true", help="allow a full-size model on a CPU (slow)")
    p.add_argument("--smoke", action="store_true",
                   help="smallest settings (1 prompt per kind, 64 px, 2 candidates, 2 sampling and 2 training steps; "
                   "candidates paired by relative cost) to walk every stage quickly, e.g. on a CPU: a check of the "
                   "plumbing, not a safety LoRA")
    p.set_defaults(func=_run)


def _run(args) -> int:
    changes = {k: getattr(args, k) for k in NUMERIC_OPTIONS if getattr(args, k) is not None}
    common = dict(clip=args.clip, cost_model=args.cost_model, reward=args.reward, prompts=args.prompts,
                  second_round=args.second_round,
                  categories=[c.strip() for c in args.categories.split(",") if c.strip()])
    if not common["categories"]:
        raise ScdpoError("--categories is empty; name at least one of nudity, gore, weapon")
    cfg = (RecipeConfig.smoke(args.base, **common, **changes) if args.smoke
           else RecipeConfig(base=args.base, **common, **changes))
    run_recipe(cfg, args.out, device=args.device, allow_cpu=args.cpu, smoke=args.smoke)
    return 0


__all__ = ["RecipeConfig", "register", "run_recipe", "scorer_specs"]
