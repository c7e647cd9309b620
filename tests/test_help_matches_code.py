"""Help, messages and docs that match the code (issue 18).

Every example a message or a help text shows is run through the code that would read it:
options named in data-missing messages exist on the commands they name, per-search override
examples are accepted, the gate's hinted rules parse. The report's figures: percent axes
whose tick labels stay distinct, error curves with a seeded bootstrap band, and a full-page
screenshot of the HTML page.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import click
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from robustbench_jr.attacks import build_search
from robustbench_jr.cli.eval import main as eval_main
from robustbench_jr.cli.train import main as train_main
from robustbench_jr.config import build_config
from robustbench_jr.data import DATASETS
from robustbench_jr.data.mnist import DOWNLOAD_COMMANDS
from robustbench_jr.errors import ConfigError, DataNotFoundError
from robustbench_jr.evaluation import metrics
from robustbench_jr.evaluation.audit import SEARCHES_EXAMPLE, AuditConfig
from robustbench_jr.evaluation.plan import NOT_IN_IDENTITY
from robustbench_jr.evaluation.store import ResultStore
from robustbench_jr.reports.gate.rules import GATE_VOCABULARY, parse_expression, parse_rule

ROOT = Path(__file__).resolve().parents[1]
ROOTS = {"jr-eval": eval_main, "jr-train": train_main}


def command(line: str) -> tuple[click.Command, list[str]]:
    """The click command a shell line names (``jr-train data fetch mnist …``) and the rest of its words."""
    words = line.split()
    cmd = ROOTS[words[0]]
    rest = words[1:]
    while isinstance(cmd, click.Group) and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    assert not isinstance(cmd, click.Group), f"{line!r} names a group, not a command"
    return cmd, rest


def options(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


# ------------------------------------------------------------ a: --download ----
def test_download_commands_have_the_options_the_message_names():
    for line in DOWNLOAD_COMMANDS:
        cmd, rest = command(line)
        assert not rest and {"--download", "--data-root"} <= options(cmd), line


@pytest.mark.parametrize("name", sorted(n for n, i in DATASETS.items() if "--" in (i.how_to_obtain or "")))
def test_data_missing_message_names_only_options_that_exist(name):
    how = DATASETS[name].how_to_obtain
    # commands quoted in the message: each is a real command and takes the options written with it
    quoted = [q for q in re.findall(r"`([^`]+)`", how) if q.startswith("jr-")]
    for q in quoted:
        cmd, rest = command(q)
        for opt in (w.split("=")[0] for w in rest if w.startswith("--")):
            assert opt in options(cmd), f"{name}: `{q}`: {cmd.name} has no {opt}"
    # options outside the quotes are to be added to the commands it names for --download
    bare = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", re.sub(r"`[^`]+`", "", how)))
    assert bare, how
    if "--download" in bare:
        assert all(f"`{c}`" in how for c in DOWNLOAD_COMMANDS), how
    for line in DOWNLOAD_COMMANDS:
        assert bare <= options(command(line)[0]), f"{name}: {bare - options(command(line)[0])} not on {line}"


def test_eval_run_download_reaches_the_loader(tmp_path, monkeypatch):
    import robustbench_jr.evaluation.plan as plan

    calls = []

    def fake_load(name, split="test", data_root=None, download=False, **kw):
        calls.append((name, data_root, download))
        raise DataNotFoundError(f"{name} not found (test)")

    monkeypatch.setattr(plan, "load_dataset", fake_load)
    base = ["run", "lenet-mnist", "--dataset", "cifar10", "--data-root", str(tmp_path / "d"), "--n", "2", "--quiet",
            "--attacks", "fgsm", "--device", "cpu"]
    for extra, want in ((["--download"], True), ([], False), (["--no-download"], False)):
        calls.clear()
        res = CliRunner().invoke(eval_main, base + ["--out", str(tmp_path / f"o{len(extra)}{want}")] + extra)
        assert res.exit_code == 2, res.output
        assert calls == [("cifar10", str(tmp_path / "d"), want)], (extra, calls)
    # how the data is obtained does not change what a run is (its data fingerprint does)
    assert "download" in NOT_IN_IDENTITY
    assert build_config(AuditConfig, {"download": True}).download is True


# ------------------------------------------------- b: per-search overrides ----
def _search_examples(text: str) -> list[str]:
    return re.findall(r"\{\w+: \{[^{}]*\}\}", text)


def _accepted(example: str) -> None:
    searches = yaml.safe_load(example)
    cfg = build_config(AuditConfig, {"searches": searches})
    for name, over in cfg.searches.items():
        build_search(name, over)  # unknown keys raise ConfigError listing the valid ones


def test_searches_example_is_accepted():
    _accepted(SEARCHES_EXAMPLE)
    with pytest.raises(ConfigError) as exc:
        build_config(AuditConfig, {"searches": ["cw"]})
    assert SEARCHES_EXAMPLE in str(exc.value)
    shown = _search_examples(str(exc.value))
    assert shown
    for ex in shown:
        _accepted(ex)


def test_every_searches_example_in_docs_and_help_is_accepted():
    run_help = eval_main.commands["run"].help
    texts = {"AuditConfig": AuditConfig.__doc__, "jr-eval run --help": run_help}
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        texts[p.name] = p.read_text(encoding="utf-8")
    found = 0
    for where, text in texts.items():
        for ex in _search_examples(text):
            found += 1
            try:
                _accepted(ex)
            except ConfigError as e:  # pragma: no cover - the failure message
                pytest.fail(f"{where}: example {ex} is rejected: {e}")
    assert _search_examples(AuditConfig.__doc__) and _search_examples(run_help) and found >= 2


def test_a_rejected_key_is_rejected():  # the check above has teeth: the old example fails
    with pytest.raises(ConfigError, match="steps"):
        _accepted("{cw: {steps: 500}}")


# --------------------------------------------------------- c: gate hints ----
BAD_RULES = ["rho_adv >= 0.25", "rho_adv[cw] >= baseline.rho_adv", "error_at[cw] <= 0.3", "rho_adv[cw] 0.2",
             "foo >= 1", "rho_adv[cw] >=", "baseline >= 1", "0.2 >= 0.1", "rho_adv[cw] = 1", "abs(rho_adv[cw], 1) >= 0",
             "rho_adv[c w] >= 0", "error_at[cw, x] <= 0.3", "rho_adv[cw] >= 1 and", "clean_accuracy[cw] >= 1", "$",
             "rho_adv[cw] >= 2 * baseline * baseline.rho_adv"]


def _hints(msg: str) -> tuple[list[str], list[str]]:
    """(example rules, example expressions) a rule error shows."""
    body, _, ex = msg.partition(" Example rules: ")
    rules = re.findall(r"'([^']+)'", ex)
    exprs = re.findall(r"e\.g\. ([^\s'(][^\s']*\])", body)
    quoted = [q for q in re.findall(r"\(e\.g\. '([^']+)'\)", body)]
    return rules + quoted, exprs


@pytest.mark.parametrize("bad", BAD_RULES)
def test_every_hint_of_a_rule_error_parses(bad):
    with pytest.raises(ConfigError) as exc:
        parse_rule(bad)
    rules, exprs = _hints(str(exc.value))
    assert rules, str(exc.value)
    for r in rules:
        parse_rule(r)
    for e in exprs:
        parse_expression(e)


def test_hint_for_a_baseline_metric_keeps_the_prefix():
    with pytest.raises(ConfigError) as exc:
        parse_rule("rho_adv[cw] >= baseline.rho_adv")
    assert "e.g. baseline.rho_adv[cw]" in str(exc.value)
    parse_rule("rho_adv[cw] >= baseline.rho_adv[cw]")


def test_gate_examples_in_help_and_docs_parse():
    from robustbench_jr.cli.report_cmds import GATE_HELP

    for r in GATE_VOCABULARY.examples:
        parse_rule(r)
    help_rules = re.findall(r'--rule "([^"]+)"', GATE_HELP)
    doc_rules = re.findall(r'^\s*- "([^"]+)"', (ROOT / "docs" / "reports.md").read_text(encoding="utf-8"), re.M)
    assert help_rules and doc_rules
    for r in help_rules + doc_rules:
        parse_rule(r)
    pol = ROOT / "docs" / "examples" / "gate-policy.yaml"
    if pol.is_file():
        for item in yaml.safe_load(pol.read_text()).get("rules", []):
            parse_rule(item if isinstance(item, str) else item["rule"])


# ------------------------------------------------------- d, e: the figures ----
def _run(path: Path, models: dict, n_inputs: int = 784) -> Path:
    """A stored run: per model, per search the L2 (and L0) distances given."""
    with ResultStore(path) as st:
        st.set_meta("seed", 0)
        for m, searches in models.items():
            first = next(iter(searches.values()))
            st.put_model(m, f"/ckpt/{m}", {"architecture": "lenet", "dataset": "mnist", "input_shape": [1, 28, 28]},
                         clean_accuracy=float(np.mean(np.asarray(first[0]) > 0)), jacobian_norm=1.0, n=len(first[0]))
            for s, (l2, l0) in searches.items():
                rows = [dict(sample_id=i, label=1, clean_pred=0 if d == 0 else 1,
                             adv_pred=0 if math.isfinite(d) else None, fooled=math.isfinite(d), l2=float(d),
                             linf=float(d) / 10, l0=float(l0[i]), x_norm=10.0, n_forward=1, n_grad=1)
                        for i, d in enumerate(l2)]
                st.put_batch(m, s, "0", rows)
    return path


def _figures(run: Path, **kw):
    from robustbench_jr.reports.plots import make_figures
    from robustbench_jr.reports.runs import load_runs

    return {f.name: f for f in make_figures(load_runs([run]), **kw)}


def _tick_labels(ax, axis: str) -> list[str]:
    ax.figure.canvas.draw()
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    return [t.get_text() for t in ticks if lo - 1e-12 <= (t.get_position()[0 if axis == "x" else 1]) <= hi + 1e-12]


def test_jsma_axis_labels_are_distinct(tmp_path):
    rng = np.random.default_rng(0)
    # JSMA on MNIST changes a handful of the 784 pixels: a range of about 2%
    l0 = rng.integers(1, 17, size=40).astype(float)
    l2 = l0 / 10
    run = _run(tmp_path / "run", {"m": {"jsma": (l2, l0), "cw": (l2, l0)}})
    fig = _figures(run, bands=False)["jsma_accuracy_vs_eps"].fig
    ax = fig.axes[0]
    labels = _tick_labels(ax, "x")
    assert len(labels) >= 3 and all(lab.endswith("%") for lab in labels)
    assert len(set(labels)) == len(labels), labels
    ylabels = _tick_labels(ax, "y")
    assert ylabels[:2] == ["0%", "20%"] and len(set(ylabels)) == len(ylabels)  # whole percents stay whole


def test_pct_decimals():
    from robustbench_jr.reports.plots import pct_decimals

    assert pct_decimals([0, 0.2, 0.4, 1.0]) == 0
    assert pct_decimals([0, 0.005, 0.01, 0.015]) == 1
    assert pct_decimals([0, 0.0025, 0.005]) == 2
    assert pct_decimals([]) == 0


def _band(l2, reps=400, seed=0):
    from robustbench_jr.reports.plots import error_band

    n = len(l2)
    idx = np.random.default_rng(seed).integers(0, n, size=(reps, n))
    return error_band(np.asarray(l2, dtype=float), idx)


def test_band_contains_the_curve_and_matches_the_metric():
    rng = np.random.default_rng(1)
    l2 = np.concatenate([[0.0, 0.0], rng.exponential(1.0, 60), [np.inf] * 5])
    grid, curve, lo, hi = _band(l2)
    g2, c2 = metrics.error_curve(l2)
    np.testing.assert_array_equal(grid, g2)
    np.testing.assert_array_equal(curve, c2)
    assert np.all(lo <= curve + 1e-12) and np.all(curve <= hi + 1e-12)
    assert np.all(lo <= hi) and np.all((lo >= 0) & (hi <= 1))
    assert hi[-1] < 1  # the not-fooled samples keep the band below 100% too
    # replicates are error_at of the resampled samples (the registry's definition)
    from robustbench_jr.reports.plots import error_band

    idx = np.random.default_rng(3).integers(0, len(l2), size=(3, len(l2)))
    for b in range(3):
        _, one, lo1, hi1 = error_band(l2, idx[b:b + 1])
        want = [metrics.error_at(l2[idx[b]], g) for g in grid]
        np.testing.assert_allclose(lo1, want)
        np.testing.assert_allclose(hi1, want)


def test_band_is_degenerate_when_all_samples_are_equal():
    for l2 in ([0.7] * 50, [np.inf] * 20, [0.0] * 10):
        _, curve, lo, hi = _band(l2)
        np.testing.assert_array_equal(lo, curve)
        np.testing.assert_array_equal(hi, curve)


def test_band_is_wider_with_fewer_samples():
    rng = np.random.default_rng(2)
    big = rng.exponential(1.0, 2000)
    small = big[:40]
    grid = np.linspace(0.2, 2.0, 10)

    def width(l2):
        g, _, lo, hi = _band(l2)
        at = np.searchsorted(g, grid, side="right") - 1
        return float(np.mean(hi[at] - lo[at]))

    assert width(small) > 2 * width(big)


def test_report_curves_have_seeded_bands(tmp_path):
    from matplotlib.collections import PolyCollection

    rng = np.random.default_rng(4)
    l2 = rng.exponential(1.0, 80)
    run = _run(tmp_path / "run", {"a": {"cw": (l2, l2), "fgsm": (2 * l2, l2)}, "b": {"cw": (3 * l2, l2)}})
    figs = _figures(run, band_reps=200)
    for name in ("error_vs_l2_cw", "error_vs_l2_model_a"):
        f = figs[name]
        polys = [c for c in f.fig.axes[0].collections if isinstance(c, PolyCollection)]
        assert polys, name
        assert "95% bootstrap band" in f.caption and "200 resamples" in f.caption and "seed 0" in f.caption
        legend = [t.get_text() for t in f.fig.axes[0].get_legend().get_texts()]
        assert "95% bootstrap band" in legend

    def verts(figs):
        ax = figs["error_vs_l2_cw"].fig.axes[0]
        return [c.get_paths()[0].vertices.copy() for c in ax.collections if isinstance(c, PolyCollection)]

    same, other = verts(_figures(run, band_reps=200)), verts(_figures(run, band_reps=200, band_seed=1))
    assert all(np.array_equal(a, b) for a, b in zip(verts(figs), same))  # seeded: the same band again
    assert not all(np.array_equal(a, b) for a, b in zip(same, other))
    assert not any(isinstance(c, PolyCollection) for c in _figures(run, bands=False)["error_vs_l2_cw"].fig.axes[0]
                   .collections)


# ------------------------------------------------------ f: full-page shot ----
@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (apt-get install chromium)")
def test_screenshot_is_the_full_page(tmp_path):
    import matplotlib.image as mpimg

    page = tmp_path / "tall.html"
    # far taller than any window: a red band at the very bottom must be in the picture
    page.write_text('<!DOCTYPE html><html><body style="margin:0"><div style="height:7000px;background:#fff">'
                    '</div><div style="height:40px;background:#f00"></div></body></html>')
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "check_report_renders.sh"), str(page), str(shot), "800"],
                          capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr
    img = mpimg.imread(shot)
    assert img.shape[:2] == (7040, 800)
    assert img[-20, 400, 0] > 0.9 and img[-20, 400, 1] < 0.1  # the red band at the bottom
    assert img[100, 400, :3].min() > 0.9
