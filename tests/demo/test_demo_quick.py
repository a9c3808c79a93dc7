"""`scdpo demo --quick` end to end on the shipped toy base: every stage runs, report.json follows
its documented schema and report.html is written."""

import json

import pytest

from scdpo.cli import main
from scdpo.workers import default_workers

METHODS = {"base", "sc-dpo", "diffusion-dpo", "safetydpo", "safetydpo-average", "negative-prompt",
           "safe-guidance", "blacklist", "sc-dpo-preference-only"}
SUITES = {"direct", "synonym", "misspelled", "indirect", "adversarial"}


# the release run reports each method once; the ablations come with --variant (validation material)
VARIANTS = ["--variant", "sc-dpo-preference-only", "--variant", "safetydpo-average"]


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--out", str(out), *VARIANTS]) == 0
    return out


@pytest.mark.slow
def test_quick_demo_writes_the_report_with_every_method(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    assert set(report["methods"]) == METHODS and report["split"] == "test"
    for name, m in report["methods"].items():
        assert set(m["unsafe_rate"]) == SUITES, name
        for v in list(m["unsafe_rate"].values()) + [m["clean_fidelity"], m["near_miss_fidelity"]]:
            assert 0.0 <= v <= 1.0, name
    html = (demo_out / "report.html").read_text()
    assert "<table>" in html and "sc-dpo" in html and "data:image/png;base64" in html
    assert (demo_out / "tradeoff.png").stat().st_size > 1000
    assert "concept leak" in html and "look-alike kept" in html
    for name in ("sc-dpo", "diffusion-dpo", "safetydpo-activation", "safetydpo-average"):
        assert (demo_out / "loras" / f"{name}.safetensors").exists()
    config = (demo_out / "loras" / "sc-dpo.config.toml").read_text()
    assert "winner_anchor = 0.5" in config and "adversarial_share = 0.5" in config
    assert 'adversarial_mode = "universal"' in config and "train_ff = true" in config
    assert "erase_weight = 0.5" in config and "preserve_weight = 8.0" in config
    assert "adversarial_restart = 0" in config and 'adversarial_objective = "erasure"' in config
    assert "adversarial_refresh = 25" in config and "export_strength = 1.25" in config
    assert "\nseed = 3\n" in config  # the training seed validation chose (scdpo.demo.TUNED)
    from scdpo.lora import load_lora

    shipped = load_lora(demo_out / "loras" / "sc-dpo.safetensors")
    assert set(shipped.alphas.values()) == {1.25 * 8.0}  # the strength travels in the file's alpha
    preference = (demo_out / "loras" / "sc-dpo-preference-only.config.toml").read_text()
    assert "winner_anchor = 0.5" in preference and "adversarial_share = 0.0" in preference
    assert "erase_weight = 0.0" in preference and "train_ff = false" in preference
    assert "adversarial_restart = 0" in preference and "export_strength = 1.0" in preference
    baseline = (demo_out / "loras" / "diffusion-dpo.config.toml").read_text()
    assert "winner_anchor = 0.0" in baseline and "lam = 0.0" in baseline and "\nseed = 0\n" in baseline
    summary = json.loads((demo_out / "scp" / "dataset.json").read_text())
    assert summary["config"]["composite_frac"] == 0.2
    assert set(report["timings"]) and all(v >= 0 for v in report["timings"].values())
    if default_workers() > 1:  # training stages side by side, each in its own one-thread process
        assert any(k.startswith("side by side: lora train: sc-dpo,") and "sc-dpo-preference-only" in k
                   for k in report["timings"])
        assert "wrote" in (demo_out / "logs" / "lora_train__sc-dpo.log").read_text()
        assert (demo_out / "loras" / "jobs" / "sc-dpo.toml").exists()


@pytest.mark.slow
def test_quick_demo_already_makes_the_base_safer(demo_out):
    report = json.loads((demo_out / "report.json").read_text())
    base, safe = report["methods"]["base"], report["methods"]["sc-dpo"]
    assert base["unsafe_rate"]["direct"] >= 0.5  # there is something to remove
    assert safe["unsafe_rate"]["direct"] < base["unsafe_rate"]["direct"]


@pytest.mark.slow
def test_rerunning_the_demo_skips_finished_stages(demo_out, capsys):
    assert main(["demo", "--quick", "--out", str(demo_out), *VARIANTS]) == 0
    out = capsys.readouterr().out
    assert out.count("already done, skipped") >= 10
    workers = default_workers()
    n_stages = 11 + (workers if workers > 1 else 0)  # one data shard per worker when there are several
    assert f"[{n_stages}/{n_stages}] eval" in out  # the stage counter counts the stages that run
    assert "eval: all methods on the test split: already done" in out


def test_a_report_is_reused_only_for_the_same_methods_split_and_cell_size(tmp_path):
    """A re-run with a --variant added or dropped, another split or another --n evaluates again; so does one
    after a LoRA was retrained, or over a report written before reports held their config."""
    import os

    from scdpo.demo import DemoPlan, report_fresh

    plan, lora = DemoPlan(), tmp_path / "sc-dpo.safetensors"
    lora.write_bytes(b"x")
    report = tmp_path / "report.json"
    methods = ["base", "sc-dpo"]
    assert not report_fresh(report, methods, [lora], plan)  # none yet
    report.write_text(json.dumps({"methods": {"base": {}, "sc-dpo": {}}, "split": "test", "config": {"n": 20}}))
    os.utime(lora, (1, 1))
    assert report_fresh(report, methods, [lora], plan)
    assert not report_fresh(report, [*methods, "sc-dpo-preference-only"], [lora], plan)  # a variant added
    assert not report_fresh(report, ["base"], [lora], plan)  # one dropped
    assert not report_fresh(report, methods, [lora], DemoPlan(eval_split="validation"))
    assert not report_fresh(report, methods, [lora], DemoPlan(eval_n=10))
    os.utime(lora, None)
    os.utime(report, (1, 1))
    assert not report_fresh(report, methods, [lora], plan)  # the LoRA is newer: retrained
    report.write_text(json.dumps({"methods": {"base": {}, "sc-dpo": {}}, "split": "test"}))
    assert not report_fresh(report, methods, [lora], plan)  # no config: an older report
    assert DemoPlan().variants == () and DemoPlan().eval_n == 20  # the release run: no ablations, 20 per cell
