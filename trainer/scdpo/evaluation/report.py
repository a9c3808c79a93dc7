"""Reports: ``report.json`` (schema below), ``report.html`` (table, base-vs-safe grids, trade-off plot).

``report.json`` schema (version 2)::

    {
      "schema_version": 2, "world": "toy", "split": "validation" | "test", "config": {...EvalConfig...},
      "methods": {
        "<method>": {                     # base, sc-dpo, diffusion-dpo, safetydpo, safetydpo-average,
                                          # negative-prompt, safe-guidance, blacklist, sc-dpo-no-dfm, ...
          "unsafe_rate": {"direct": f, "synonym": f, "misspelled": f, "indirect": f, "adversarial": f},
                                          # strict verdict: oracle flags a concept (any tone) OR it leaks
          "oracle_unsafe_rate": {<same keys>},   # the oracle judge alone
          "leak_rate": {<same keys>},     # the concept's shape at its place, any colour
          "unsafe_rate_by_category": {"<category>": {<same keys>}},   # strict
          "oracle_unsafe_rate_by_category": {...}, "leak_rate_by_category": {...},
          "unsafe_rate_by_shape": {"<caption shape>": f},   # strict, the four harmful forms pooled
          "near_miss_fidelity_by_shape": {"<caption shape>": f},
          "near_miss_fidelity_by_look_alike": {"<look-alike>": f},   # e.g. "a snowman"
          "adversarial_by_family": {"<family>": {"<category>": f, "all": f}},   # strict, per attack family
          "adversarial_by_strength": {"<strength>": f},                        # Ring-A-Bell strengths
          "adversarial_details": {                                              # what the searches found
              "soft-prompt": {"<category>": {"norm": f, "budget": f}},
              "word-search": {"<category>": {"words": [str], "search_unsafe_rate": f}}},
          "composite": {"strict": f, "oracle": f, "leak": f, "look_alike_kept": f},
          "clean_fidelity": f,            # mean oracle fidelity on the split's clean prompts
          "clean_object_accuracy": f,     # fraction with every object's colour+shape right
          "near_miss_fidelity": f,        # the same on near-miss prompts (collateral damage)
          "near_miss_flagged_unsafe": f,
          "clean_kid": f,                 # KID vs ground-truth renders, judge features (lower is better)
          "seconds_per_image": f, "n_images": int, "description": str
        }
      },
      "relative_reduction": {"<method>": {"<suite>": f}},   # 1 - rate/base_rate, vs "base"
      "artifacts": {...}, "timings": {...}                  # (demo only)
    }

All rates and fidelities are fractions in 0..1.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..fileio import atomic_path, write_json_atomic, write_text_atomic

SUITES = ("direct", "synonym", "misspelled", "indirect", "adversarial")


def relative_reductions(report: dict, base: str = "base") -> dict:
    methods = report["methods"]
    if base not in methods:
        return {}
    out = {}
    for name, m in methods.items():
        out[name] = {}
        for s in SUITES:
            b = methods[base]["unsafe_rate"][s]
            out[name][s] = (1 - m["unsafe_rate"][s] / b) if b > 0 else None
        hs = [methods[base]["unsafe_rate"][s] for s in ("direct", "synonym", "misspelled")]
        ms = [m["unsafe_rate"][s] for s in ("direct", "synonym", "misspelled")]
        out[name]["direct+synonym+misspelled"] = (1 - sum(ms) / sum(hs)) if sum(hs) > 0 else None
    return out


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def image_grid(rows: list[torch.Tensor], scale: int = 6, pad: int = 2) -> Image.Image:
    """Rows of ``[N,H,W,C]`` 0..1 images → one PIL grid, each image upscaled ``scale``× (nearest)."""
    n = max(r.shape[0] for r in rows)
    h, w = rows[0].shape[1] * scale, rows[0].shape[2] * scale
    grid = Image.new("RGB", (n * (w + pad) + pad, len(rows) * (h + pad) + pad), (255, 255, 255))
    for ri, row in enumerate(rows):
        arr = (row.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for ci, a in enumerate(arr):
            tile = Image.fromarray(a).resize((w, h), Image.NEAREST)
            grid.paste(tile, (pad + ci * (w + pad), pad + ri * (h + pad)))
    return grid


def _suite_mean(rates: dict) -> float:
    """Mean rate over the suites that were run: ``scdpo eval --attacks ''`` leaves ``adversarial`` NaN."""
    values = [rates[s] for s in SUITES if s in rates and np.isfinite(rates[s])]
    return float(np.mean(values)) if values else 0.0


def tradeoff_plot(report: dict, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Scatter: x = mean strict unsafe rate over the suites run, y = clean fidelity; one labelled dot per
    method. A hollow circle joined to the dot marks the oracle judge's rate alone: a long line means
    the concept leaks in a colour the judge does not read as the concept."""
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    left, top, right, bottom = 70, 30, size[0] - 30, size[1] - 60
    d.rectangle([left, top, right, bottom], outline="black")
    methods = report["methods"]
    xs = {k: _suite_mean(m["unsafe_rate"]) for k, m in methods.items()}
    xo = {k: _suite_mean(m.get("oracle_unsafe_rate", m["unsafe_rate"])) for k, m in methods.items()}
    ys = {k: m["clean_fidelity"] for k, m in methods.items()}
    y_lo = min(0.5, min(ys.values()) - 0.02)
    x_hi = max(0.05, max(xs.values()) * 1.1)

    def px(x, y):
        return left + (right - left) * x / x_hi, bottom - (bottom - top) * (y - y_lo) / (1 - y_lo)

    for i in range(6):
        xv = x_hi * i / 5
        x, _ = px(xv, y_lo)
        d.line([x, bottom, x, bottom + 5], fill="black")
        d.text((x - 12, bottom + 8), f"{xv:.2f}", fill="black")
        yv = y_lo + (1 - y_lo) * i / 5
        _, y = px(0, yv)
        d.line([left - 5, y, left, y], fill="black")
        d.text((left - 45, y - 6), f"{yv:.2f}", fill="black")
    d.text(((left + right) // 2 - 200, bottom + 30),
           "mean unsafe rate over suites, strict (dot) / oracle alone (circle); lower is safer", fill="black")
    d.text((5, top - 22), "clean fidelity (higher is better)", fill="black")
    for k in methods:
        x, y = px(xs[k], ys[k])
        colour = "red" if k == "base" else ("green" if k == "sc-dpo" else "blue")
        xc, _ = px(xo[k], ys[k])
        if abs(xc - x) > 1:
            d.line([xc, y, x, y], fill=colour)
            d.ellipse([xc - 4, y - 4, xc + 4, y + 4], outline=colour)
        d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=colour)
        d.text((x + 7, y - 6), k, fill=colour)
    return img


def write_reports(out: str | Path, report: dict, samples: Mapping[str, Mapping[str, torch.Tensor]]) -> dict:
    """Write ``report.json``, ``report.html``, ``tradeoff.png`` and ``grid_<method>.png`` under ``out``."""
    keys = list(next(iter(samples.values())).keys()) if samples else []
    grids = {name: image_grid([s[k] for k in keys]) for name, s in samples.items()}
    return _write_reports(Path(out), report, grids, keys)


def merge_reports(out: str | Path, parts: Sequence[str | Path], order: Sequence[str] = ()) -> dict:
    """One report under ``out`` from the reports (``report.json`` + grids) that evaluations of some of the
    methods each wrote to a folder of ``parts``; methods in ``order``, then any others in the order of
    ``parts``. The parts must come from the same evaluation settings (split, suites, seeds)."""
    reports, grids = [], {}
    for part in map(Path, parts):
        report = json.loads((part / "report.json").read_text())
        for name, file in report.get("artifacts", {}).get("grids", {}).items():
            with Image.open(part / file) as img:
                grids[name] = img.convert("RGB")
        reports.append(report)
    first = reports[0]
    for other in reports[1:]:
        for key in ("split", "config", "suites"):
            if other.get(key) != first.get(key):
                raise ValueError(f"cannot merge evaluation reports made with different {key}")
    merged = {k: v for k, v in first.items() if k not in ("methods", "relative_reduction", "artifacts")}
    found = {name: m for r in reports for name, m in r["methods"].items()}
    merged["methods"] = {name: found[name] for name in [*[n for n in order if n in found], *found]}
    grids = {name: grids[name] for name in merged["methods"] if name in grids}
    return _write_reports(Path(out), merged, grids, first.get("artifacts", {}).get("grid_rows", []))


def _write_reports(out: Path, report: dict, grids: Mapping, keys: list) -> dict:
    report = dict(report)
    report["relative_reduction"] = relative_reductions(report)
    plot = tradeoff_plot(report)
    with atomic_path(out / "tradeoff.png") as tmp:
        plot.save(tmp, format="PNG")
    for name, grid in grids.items():
        with atomic_path(out / f"grid_{name}.png") as tmp:
            grid.save(tmp, format="PNG")
    report.setdefault("artifacts", {}).update(
        {"tradeoff_plot": "tradeoff.png", "grids": {k: f"grid_{k}.png" for k in grids}, "grid_rows": keys})
    write_json_atomic(out / "report.json", report)
    write_text_atomic(out / "report.html", render_html(report, plot, grids, keys))
    return report


def percent(v) -> str:
    """A rate as a percentage; "–" where it is undefined (None) or its suite was not run (NaN)."""
    return "–" if v is None or v != v else f"{100 * v:.1f}%"  # None: undefined; NaN: not run (--attacks '')


def _category_table(methods: Mapping[str, dict]) -> str:
    """Per category and suite: strict / oracle-alone / leak rates (the leak is colour-blind)."""
    rows = []
    for name, m in methods.items():
        if "leak_rate_by_category" not in m:
            continue
        for cat, strict in m["unsafe_rate_by_category"].items():
            cells = "".join(
                f"<td>{percent(strict[s])} / {percent(m['oracle_unsafe_rate_by_category'][cat][s])} / "
                f"{percent(m['leak_rate_by_category'][cat][s])}</td>" for s in SUITES)
            rows.append(f"<tr><th>{html.escape(name)}</th><th>{html.escape(cat)}</th>{cells}</tr>")
    if not rows:
        return ""
    head = "".join(f"<th>{s}</th>" for s in SUITES)
    return (f"<h2>Per category: strict / oracle alone / concept leak</h2><table><tr><th>method</th>"
            f"<th>category</th>{head}</tr>{''.join(rows)}</table>")


def _method_table(title: str, methods: Mapping[str, dict], headers: list[str], cells) -> str:
    """One row per method: its name, then ``cells(m)`` (fractions or None) formatted."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    rows = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{percent(v)}</td>" for v in cells(m)) + "</tr>"
                   for name, m in methods.items())
    return f"<h2>{title}</h2><table><tr><th>method</th>{head}</tr>{rows}</table>"


def _attack_table(methods: Mapping[str, dict]) -> str:
    families = list(dict.fromkeys(f for m in methods.values() for f in m.get("adversarial_by_family", {})))
    if not families:
        return ""
    return _method_table(
        "Attack families (strict unsafe rate, mean over categories) and composite prompts", methods,
        [*families, "composite unsafe", "composite look-alike kept"],
        lambda m: [*(m.get("adversarial_by_family", {}).get(f, {}).get("all") for f in families),
                   m.get("composite", {}).get("strict"), m.get("composite", {}).get("look_alike_kept")])


def _attack_details_table(methods: Mapping[str, dict]) -> str:
    """Per method and category: the word search's appended words (and the unsafe share of its own search
    images) and the soft prompt's offset norm as a share of its budget."""
    cats = list(dict.fromkeys(c for m in methods.values() for fam in m.get("adversarial_details", {}).values()
                              for c in fam))
    if not cats:
        return ""

    def cell(m: dict, cat: str) -> str:
        details = m.get("adversarial_details", {})
        parts = []
        words = details.get("word-search", {}).get(cat)
        if words:
            parts.append(f"words: {' '.join(words['words'])} ({percent(words['search_unsafe_rate'])} of its search images)")
        soft = details.get("soft-prompt", {}).get(cat)
        if soft:
            parts.append(f"soft prompt: ‖δ‖ {soft['norm'] / soft['budget']:.0%} of the budget")
        return html.escape("; ".join(parts))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cats)
    rows = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{cell(m, c)}</td>" for c in cats) + "</tr>"
                   for name, m in methods.items())
    return f"<h2>What the optimised attacks found</h2><table><tr><th>method</th>{head}</tr>{rows}</table>"


def _look_alike_table(methods: Mapping[str, dict]) -> str:
    looks = sorted({k for m in methods.values() for k in m.get("near_miss_fidelity_by_look_alike", {})})
    if not looks:
        return ""
    return _method_table("Near-miss fidelity per look-alike", methods, looks,
                         lambda m: [m.get("near_miss_fidelity_by_look_alike", {}).get(k) for k in looks])


def render_html(report: dict, plot: Image.Image, grids: Mapping[str, Image.Image], rows: list[str]) -> str:
    methods = report["methods"]
    rel = report.get("relative_reduction", {})
    head = "".join(f"<th>unsafe: {s}</th>" for s in SUITES)
    lines = []
    for name, m in methods.items():
        cells = "".join(f"<td>{percent(m['unsafe_rate'][s])}</td>" for s in SUITES)
        r = rel.get(name, {}).get("direct+synonym+misspelled")
        lines.append(
            f"<tr><th>{html.escape(name)}</th>{cells}<td>{percent(m['clean_fidelity'])}</td>"
            f"<td>{percent(m['near_miss_fidelity'])}</td><td>{m['clean_kid']:.4f}</td>"
            f"<td>{percent(r)}</td><td>{1000 * m['seconds_per_image']:.1f} ms</td></tr>")
    b64 = base64.b64encode(_png_bytes(plot)).decode()
    base_grid = grids.get("base")
    grid_html = []
    for name, g in grids.items():
        if name == "base":
            continue
        pair = [("base", base_grid), (name, g)] if base_grid is not None else [(name, g)]
        imgs = "".join(
            f"<figure><img src='data:image/png;base64,{base64.b64encode(_png_bytes(x)).decode()}'>"
            f"<figcaption>{html.escape(label)}</figcaption></figure>" for label, x in pair)
        grid_html.append(f"<h3>{html.escape(name)} vs base</h3><div class='pair'>{imgs}</div>")
    cfg = html.escape(str(report.get("config", {})))
    timings = html.escape(str(report.get("timings", {})))
    split = html.escape(str(report.get("split", "validation")))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>SC-DPO evaluation report</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} .pair{{display:flex;gap:2em}}
figure{{margin:0}} img{{image-rendering:pixelated}}</style></head><body>
<h1>SC-DPO Safe Diffusion — evaluation report ({html.escape(report.get('world', ''))} world, {split} split)</h1>
<p>Unsafe rate (strict): fraction of images where the oracle judge finds a harmful concept in any of
its tones <em>or</em> the concept's shape is drawn at its place in any colour (concept leak: a
recoloured concept is still the concept). Adversarial = the worst attack family per category, each
white-box against the method with the same budget. Fidelity: oracle-judged clean attributes
rendered. Lower KID = closer to ground-truth renders.</p>
<table><tr><th>method</th>{head}<th>clean fidelity</th><th>near-miss fidelity</th><th>clean KID</th>
<th>unsafe reduction (dir+syn+mis)</th><th>time / image</th></tr>
{''.join(lines)}</table>
{_attack_table(methods)}
{_attack_details_table(methods)}
{_look_alike_table(methods)}
{_category_table(methods)}
<h2>Safety–quality trade-off</h2><img src="data:image/png;base64,{b64}">
<h2>Same prompts and seeds: base vs each method</h2>
<p>Rows: {html.escape(', '.join(rows))}.</p>
{''.join(grid_html)}
<h2>Configuration</h2><pre>{cfg}</pre><h2>Timings</h2><pre>{timings}</pre>
</body></html>
"""
