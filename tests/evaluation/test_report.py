"""report.json / report.html / plots / grids, and relative reductions on a hand-made report."""

import json

import pytest
import torch
from PIL import Image

from scdpo.evaluation.report import SUITES, image_grid, relative_reductions, tradeoff_plot, write_reports


def _method(rates, fid=0.9, spi=0.01, desc=""):
    return {
        "unsafe_rate": dict(zip(SUITES, rates)),
        "unsafe_rate_by_category": {},
        "adversarial_by_strength": {"1": rates[4]},
        "clean_fidelity": fid,
        "clean_object_accuracy": fid,
        "near_miss_fidelity": fid - 0.1,
        "near_miss_flagged_unsafe": 0.0,
        "clean_kid": 0.0123,
        "seconds_per_image": spi,
        "n_images": 30,
        "description": desc,
    }


def _report():
    return {
        "schema_version": 1,
        "world": "toy",
        "config": {"n": 1},
        "methods": {
            #                 direct synonym misspelled indirect adversarial
            "base": _method([0.5, 0.4, 0.2, 0.0, 0.8], fid=0.95),
            "sc-dpo": _method([0.25, 0.1, 0.2, 0.0, 0.4], fid=0.9),
            "worse<b>": _method([1.0, 0.4, 0.0, 0.3, 0.8], fid=0.6),
        },
    }


def test_relative_reductions_hand_computed():
    rel = relative_reductions(_report())
    assert set(rel) == {"base", "sc-dpo", "worse<b>"}
    assert rel["base"] == {"direct": 0.0, "synonym": 0.0, "misspelled": 0.0, "indirect": None, "adversarial": 0.0,
                           "direct+synonym+misspelled": 0.0}
    s = rel["sc-dpo"]
    assert s["direct"] == pytest.approx(0.5)  # 1 - 0.25/0.5
    assert s["synonym"] == pytest.approx(0.75)  # 1 - 0.1/0.4
    assert s["misspelled"] == pytest.approx(0.0)
    assert s["indirect"] is None  # base rate 0: undefined, not inf or 0
    assert s["adversarial"] == pytest.approx(0.5)
    assert s["direct+synonym+misspelled"] == pytest.approx(1 - 0.55 / 1.1)  # pooled, not a mean of ratios
    w = rel["worse<b>"]
    assert w["direct"] == pytest.approx(-1.0)  # twice the base rate: negative reduction
    assert w["misspelled"] == pytest.approx(1.0)
    assert w["direct+synonym+misspelled"] == pytest.approx(1 - 1.4 / 1.1)


def test_relative_reductions_needs_the_base():
    r = _report()
    assert relative_reductions(r, base="nope") == {}
    r["methods"]["base"]["unsafe_rate"].update(direct=0.0, synonym=0.0, misspelled=0.0)
    assert relative_reductions(r)["sc-dpo"]["direct+synonym+misspelled"] is None
    assert relative_reductions(r, base="sc-dpo")["base"]["adversarial"] == pytest.approx(1 - 0.8 / 0.4)


def test_image_grid_geometry_and_pixels():
    red = torch.zeros(2, 4, 4, 3)
    red[..., 0] = 1.0
    blue = torch.zeros(1, 4, 4, 3)
    blue[..., 2] = 1.0
    g = image_grid([red, blue], scale=3, pad=2)
    assert g.size == (2 * (12 + 2) + 2, 2 * (12 + 2) + 2)
    assert g.getpixel((2, 2)) == (255, 0, 0) and g.getpixel((2 + 14 + 11, 2 + 11)) == (255, 0, 0)
    assert g.getpixel((2, 2 + 14)) == (0, 0, 255)
    assert g.getpixel((2 + 14, 2 + 14)) == (255, 255, 255)  # the short row is padded with white
    assert g.getpixel((0, 0)) == (255, 255, 255)


def test_tradeoff_plot_draws_each_method():
    img = tradeoff_plot(_report())
    assert img.size == (640, 480)
    colours = {c for _, c in img.getcolors(640 * 480)}
    assert (255, 0, 0) in colours and (0, 128, 0) in colours and (0, 0, 255) in colours  # base, sc-dpo, other


def test_tradeoff_plot_without_attacks_averages_the_suites_run():
    # `scdpo eval --attacks ''` leaves the adversarial rate NaN: the dots sit at the mean of the other four
    # suites, where a report whose adversarial rate equals that mean puts them
    no_attacks, same_mean = _report(), _report()
    for name, m in no_attacks["methods"].items():
        m["unsafe_rate"]["adversarial"] = float("nan")
        rates = [m["unsafe_rate"][s] for s in SUITES[:4]]
        same_mean["methods"][name]["unsafe_rate"]["adversarial"] = sum(rates) / 4
    drawn = tradeoff_plot(no_attacks)
    assert drawn.tobytes() == tradeoff_plot(same_mean).tobytes()
    assert drawn.tobytes() != tradeoff_plot(_report()).tobytes()


def test_write_reports_writes_every_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    samples = {name: {"direct/gore": torch.rand(2, 16, 16, 3, generator=g), "clean": torch.rand(3, 16, 16, 3, generator=g)}
               for name in ("base", "sc-dpo", "worse<b>")}
    original = _report()
    out = write_reports(tmp_path, original, samples)
    assert "relative_reduction" not in original  # the caller's dict is not modified
    for f in ("report.json", "report.html", "tradeoff.png", "grid_base.png", "grid_sc-dpo.png", "grid_worse<b>.png"):
        assert (tmp_path / f).is_file(), f
    assert not list(tmp_path.glob("*.tmp*"))  # atomic writes leave no temporaries
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(out))
    assert on_disk["relative_reduction"]["sc-dpo"]["direct"] == pytest.approx(0.5)
    assert on_disk["relative_reduction"]["sc-dpo"]["indirect"] is None
    assert on_disk["artifacts"] == {"tradeoff_plot": "tradeoff.png", "grid_rows": ["direct/gore", "clean"],
                                    "grids": {n: f"grid_{n}.png" for n in ("base", "sc-dpo", "worse<b>")}}
    with Image.open(tmp_path / "grid_base.png") as im:  # 2 rows of up to 3 images, 16px x6, pad 2
        assert im.size == (3 * (96 + 2) + 2, 2 * (96 + 2) + 2)
    with Image.open(tmp_path / "tradeoff.png") as im:
        assert im.size == (640, 480)
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!doctype html>") and html.rstrip().endswith("</html>")
    assert "<th>sc-dpo</th>" in html and "worse&lt;b&gt;" in html and "worse<b>" not in html  # escaped
    row = html.split("<tr><th>sc-dpo</th>")[1].split("</tr>")[0]
    # 5 unsafe rates, clean fidelity, near-miss fidelity, KID, pooled reduction, time per image
    assert row == ("<td>25.0%</td><td>10.0%</td><td>20.0%</td><td>0.0%</td><td>40.0%</td><td>90.0%</td>"
                   "<td>80.0%</td><td>0.0123</td><td>50.0%</td><td>10.0 ms</td>")
    assert html.count("data:image/png;base64,") == 1 + 2 * 2  # plot + (base, method) per non-base method
    assert "sc-dpo vs base" in html


def test_the_html_report_shows_near_miss_fidelity_per_look_alike(tmp_path):
    report = _report()
    report["methods"]["sc-dpo"]["near_miss_fidelity_by_look_alike"] = {"a snowman": 0.75, "a knitting <needle>": 0.5}
    write_reports(tmp_path, report, {})
    html = (tmp_path / "report.html").read_text()
    table = html.split("<h2>Near-miss fidelity per look-alike</h2>")[1].split("</table>")[0]
    assert "<th>a knitting &lt;needle&gt;</th><th>a snowman</th>" in table  # sorted, escaped
    assert "<tr><th>sc-dpo</th><td>50.0%</td><td>75.0%</td></tr>" in table
    assert "<tr><th>base</th><td>" in table  # a method without the field gets empty cells, not an error
    write_reports(tmp_path, _report(), {})  # no method has the field: no table
    assert "Near-miss fidelity per look-alike" not in (tmp_path / "report.html").read_text()


def test_write_reports_without_samples(tmp_path):
    out = write_reports(tmp_path, _report(), {})
    assert out["artifacts"]["grids"] == {} and out["artifacts"]["grid_rows"] == []
    assert (tmp_path / "report.json").is_file() and (tmp_path / "tradeoff.png").is_file()
