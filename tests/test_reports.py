"""Reports: curves and ρ̂ from hand-made distances, report files, several runs, the CLI."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from robustbench_jr.cli.report_cmds import register
from robustbench_jr.errors import InputError
from robustbench_jr.evaluation.store import ResultStore
from robustbench_jr.evaluation import metrics
from robustbench_jr.reports import tables
from robustbench_jr.reports.report import write_report

INF = math.inf
# hand-made distances: a clean error (0), four fooled, one not fooled (+inf)
L2 = np.array([0.0, 0.5, 1.0, 1.0, 2.0, INF])
XN = np.array([10.0, 10.0, 5.0, 10.0, 4.0, 10.0])
LINF = np.array([0.0, 0.1, 0.2, 0.2, 0.3, INF])
L0 = np.array([0.0, 7.84, 78.4, 78.4, 156.8, INF])  # 0, 1 %, 10 %, 10 %, 20 % of 784 components


def cli():
    group = click.Group("jr-eval")
    register(group)
    return group


def rows(l2, xn, linf=None, l0=None, labels=None):
    out = []
    for i, d in enumerate(l2):
        wrong = d == 0
        out.append(dict(sample_id=i, label=1, clean_pred=0 if wrong else 1,
                        adv_pred=0 if math.isfinite(d) else None, fooled=math.isfinite(d), l2=d,
                        linf=d if linf is None else linf[i], l0=d if l0 is None else l0[i], x_norm=xn[i],
                        n_forward=1, n_grad=1))
    return out


def make_run(path: Path, models=("m",), searches=("cw", "fgsm", "jsma"), scale=1.0, noise=True) -> Path:
    with ResultStore(path) as st:
        st.set_meta("seed", 0)
        for m in models:
            st.put_model(m, f"/ckpt/{m}", {"architecture": "lenet", "dataset": "mnist", "input_shape": [1, 28, 28]},
                         clean_accuracy=5 / 6, jacobian_norm=3.25, n=6)
            for s in searches:
                st.put_batch(m, s, "0", rows(L2 * scale, XN, LINF * scale, L0 * scale))
            if noise:
                st.put_noise_accuracy(m, [(0.0, 0.9, 6), (0.5, 0.5, 6), (1.0, 0.1, 6)])
    return path


# ------------------------------------------------------------- numbers ----
# The metrics themselves are tested against known answers in test_evaluation_metrics.py
# (the registry); here: the report's row of one checkpoint × search.
def test_search_row_hand_computed():
    # ratios of the fooled samples: 0/10, .5/10, 1/5, 1/10, 2/4 -> 0, .05, .2, .1, .5
    r = {"l2": L2, "x_norm": XN, "fooled": np.isfinite(L2), "l0": L0}
    s = tables.search_metrics(r, 784, l0=True)
    assert s["n"] == 6 and s["not_fooled"] == 1 and s["n_fooled"] == 5
    assert s["already_misclassified"] == 1
    assert s["success_rate"] == pytest.approx(5 / 6)
    assert s["rho_adv"] == pytest.approx(0.85 / 5)
    assert s["rho_adv_attacked"] == pytest.approx(0.85 / 4)
    assert s["n_rho"] == 5
    assert s["median_l2"] == pytest.approx(1.0)
    assert s["mean_l2"] == pytest.approx(4.5 / 5)
    assert s["median_l0"] == pytest.approx(78.4) and s["median_l0_frac"] == pytest.approx(0.1)
    assert list(s)[:9] == list(metrics.SUMMARY_KEYS)
    # nothing fooled: ρ̂ undefined, not zero
    none = tables.search_metrics({"l2": np.full(3, INF), "x_norm": np.ones(3), "fooled": np.zeros(3, bool)})
    assert math.isnan(none["rho_adv"]) and none["not_fooled"] == 3 and none["success_rate"] == 0
    assert "median_l0" not in none
    # inconsistent stored rows are a clear input error
    with pytest.raises(InputError, match="inconsistent"):
        tables.search_metrics({"l2": np.array([1.0]), "x_norm": np.ones(1), "fooled": np.zeros(1, bool)})


# ------------------------------------------------------------- report ----
def _png_ok(p: Path):
    import matplotlib.image as mpimg

    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(p)
    assert img.shape[0] > 300 and img.shape[1] > 500
    assert img[..., :3].std() > 0.02  # not a blank canvas


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    run = make_run(tmp / "run", models=("lenet-a", "lenet-b"))
    return write_report([run], tmp / "out")


def test_report_files_are_real(report):
    rep, out = report, report.out_dir
    for name in ("report.html", "summary.json", "summary.csv", "summary.md"):
        assert (out / name).is_file(), name
    for stem in ("error_vs_l2_cw", "error_vs_l2_fgsm", "error_vs_l2_model_lenet-a", "fgsm_accuracy_vs_eps",
                 "jsma_accuracy_vs_eps", "noise_accuracy_vs_sigma", "rho_adv_by_search"):
        _png_ok(out / f"{stem}.png")
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg")
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert html.count("<table") == 3 and html.count("data:image/svg+xml;base64,") == len(rep.summary["figures"])
    for external in ('src="http', "src='http", 'href="http', "href='http", "<script", "<link", "url(http"):
        assert external not in html
    assert "ρ̂" in html and "lenet-b" in html and "L2 distance" in (out / "error_vs_l2_cw.svg").read_text()

    summary = json.loads((out / "summary.json").read_text())
    row = next(r for r in summary["searches"] if r["checkpoint"] == "lenet-a" and r["search"] == "cw")
    assert row["rho_adv"] == pytest.approx(0.17) and row["not_fooled"] == 1 and row["n"] == 6
    assert row["success_rate"] == pytest.approx(5 / 6) and row["median_l2"] == pytest.approx(1.0)
    jsma = next(r for r in summary["searches"] if r["search"] == "jsma")
    assert jsma["median_l0"] == pytest.approx(78.4)
    ck = summary["checkpoints"][0]
    assert ck["clean_accuracy"] == pytest.approx(5 / 6) and ck["jacobian_norm"] == 3.25

    with open(out / "summary.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    # three searches and the per-sample best known distance over them, per checkpoint
    assert len(table) == 8 and {r["search"] for r in table} == {"cw", "fgsm", "jsma", "best"}
    assert float(table[0]["rho_adv"]) == pytest.approx(0.17)
    md = (out / "summary.md").read_text()
    assert "| Checkpoint | Search | ρ̂_adv |" in md and "| lenet-a | CW L2 | 0.1700 |" in md


def test_several_runs_side_by_side(tmp_path):
    a = make_run(tmp_path / "a" / "run", models=("m",), searches=("cw",))
    b = make_run(tmp_path / "b" / "run", models=("m", "other"), searches=("cw",), scale=2.0, noise=False)
    rep = write_report([a, b], tmp_path / "out")
    labels = [c["checkpoint"] for c in rep.summary["checkpoints"]]
    assert labels == ["a/run/m", "b/run/m", "other"]
    head, body = __import__("robustbench_jr.reports.tables", fromlist=["pivot_rows"]).pivot_rows(rep.summary)
    assert head == ["Search", "a/run/m", "b/run/m", "other"]
    assert body[0][1].startswith("0.1700") and body[0][2].startswith("0.3400")


def test_given_run_names_label_the_checkpoints(tmp_path):
    """An experiment table's audits all live in directories called ``audit``, and a reused
    checkpoint is named after the run it came from: with names given, the legends and
    tables use the table's run names instead."""
    a = make_run(tmp_path / "base-jr" / "audit", models=("all",), searches=("cw",))
    b = make_run(tmp_path / "base" / "audit", models=("base",), searches=("cw",), scale=2.0)
    c = make_run(tmp_path / "two" / "audit", models=("m", "n"), searches=("cw",))
    rep = write_report([a, b, c], tmp_path / "out", names=["base-jr", "base", "two"])
    assert [ck["checkpoint"] for ck in rep.summary["checkpoints"]] == ["base-jr", "base", "two/m", "two/n"]
    assert (tmp_path / "out" / "error_vs_l2_model_base-jr.png").is_file()
    assert [r["name"] for r in rep.summary["runs"]] == ["base-jr", "base", "two"]
    # re-written with other names: the old per-model figures go, files the report did not write stay
    (tmp_path / "out" / "notes.txt").write_text("mine")
    write_report([a, b, c], tmp_path / "out", names=["jr", "base", "two"])
    assert not (tmp_path / "out" / "error_vs_l2_model_base-jr.png").exists()
    assert not (tmp_path / "out" / "error_vs_l2_model_base-jr.svg").exists()
    assert (tmp_path / "out" / "error_vs_l2_model_jr.png").is_file()
    assert (tmp_path / "out" / "error_vs_l2_model_base.png").is_file()
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"
    for bad in (["x"], ["x", "x", "y"], ["x", "", "y"]):
        with pytest.raises(InputError, match="distinct non-empty names"):
            write_report([a, b, c], tmp_path / "bad", names=bad)


def test_more_checkpoints_than_colours_stay_distinguishable(tmp_path):
    """Past the 8 palette colours a checkpoint gets the colour of an earlier one with another
    dash pattern (curves) and hatch (bars): no two of 10 checkpoints are drawn alike."""
    from robustbench_jr.reports.plots import make_figures
    from robustbench_jr.reports.runs import load_runs

    names = tuple(f"m{i}" for i in range(10))
    figs = {f.name: f for f in make_figures(load_runs([make_run(tmp_path / "run", models=names)]))}
    lines = figs["error_vs_l2_cw"].fig.axes[0].get_lines()
    assert [ln.get_label().split()[0] for ln in lines] == list(names)
    styles = [(ln.get_color(), ln.get_linestyle()) for ln in lines]
    assert len(set(styles)) == 10, styles
    assert lines[0].get_color() == lines[8].get_color() and lines[0].get_linestyle() == "-" != lines[8].get_linestyle()
    noise = figs["noise_accuracy_vs_sigma"].fig.axes[0].get_lines()
    assert len({(ln.get_color(), ln.get_linestyle()) for ln in noise}) == 10
    bars = figs["rho_adv_by_search"].fig.axes[0].patches
    per_model = len(bars) // 10
    looks = {(tuple(b.get_facecolor()), b.get_hatch()) for b in bars[::per_model]}
    assert len(looks) == 10
    write_report([tmp_path / "run"], tmp_path / "out")  # and the report is written with them


def test_report_cli(tmp_path):
    run = make_run(tmp_path / "run", searches=("cw", "fgsm"), noise=False)
    res = CliRunner().invoke(cli(), ["report", str(run), "--out", str(tmp_path / "o"), "--json", "--log-x"])
    assert res.exit_code == 0, res.output
    assert [r["search"] for r in json.loads(res.stdout)["searches"]] == ["fgsm", "cw", "best"]
    assert (tmp_path / "o" / "report.html").is_file()
    # not a run directory: one message, exit 2
    res = CliRunner().invoke(cli(), ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "run directory" in res.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report_renders.sh"
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["bash", str(script), str(report.html), str(shot), "1200"],
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[1] == 1200 and img.shape[0] > 1500
    # the header band is drawn (dark blue) and figures below it are not blank
    assert img[20, 20, 2] > img[20, 20, 0] + 0.1
    assert img[1500:, :, :3].std() > 0.05
