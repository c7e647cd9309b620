"""The best known distance (issue #15, item 2): per sample the smallest verified L2 over every
search run, with which search found it — in the store's summaries, tables, curves, ``--json``,
``AuditResult`` and gate rules; the per-search rows remain."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robustbench_jr
from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.evaluation import ResultStore, summarize_run
from robustbench_jr.evaluation.metrics import error_curve, rho_adv
from robustbench_jr.reports.gate import build_policy, evaluate
from robustbench_jr.reports.report import write_report


class Net(nn.Module):
    """A small nonlinear classifier on 4×4 images (no search dominates on every sample)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.a = nn.Linear(16, 12)
        self.b = nn.Linear(12, 4)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x):
        return self.b(torch.tanh(self.a(x.flatten(1))))


def case(n=12):
    model = Net()
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = (y[0] + 1) % 4  # one clean error: distance 0 in every search
    return model, x, y


def test_best_rows_take_the_per_sample_minimum():
    from robustbench_jr.evaluation.best import best_rows, found_by
    cols = lambda l2, ids: {"sample_id": np.asarray(ids), "l2": np.asarray(l2, float),  # noqa: E731
                            "x_norm": np.ones(len(ids)), "fooled": np.isfinite(l2), "n_forward": np.ones(len(ids),
                                                                                                   int)}
    per = {"a": cols([0.0, 2.0, math.inf, 5.0], [0, 1, 2, 3]), "b": cols([0.0, 1.0, 3.0, math.inf], [0, 1, 2, 3])}
    b = best_rows(per)
    assert b["l2"].tolist() == [0.0, 1.0, 3.0, 5.0]
    assert b["search"].tolist() == ["a", "b", "b", "a"]
    assert b["n_forward"].tolist() == [2, 2, 2, 2] and b["n_searches"].tolist() == [2, 2, 2, 2]
    assert found_by(b) == {"a": 2, "b": 2}
    none = best_rows({"a": cols([math.inf], [7])})
    assert none["search"].tolist() == [""] and found_by(none) == {"none": 1}


def test_audit_result_best_is_the_headline(tmp_path):
    model, x, y = case()
    run = tmp_path / "run"
    searches = ["noise", "fgsm", "deepfool"]
    res = robustbench_jr.audit(model, x, y, searches=searches, seed=0, store=run)
    d = {s: res.distances(s) for s in searches}
    best = res.distances("best")
    np.testing.assert_array_equal(best, np.minimum.reduce([d[s] for s in searches]))
    assert best[0] == 0.0
    grid, err = res.curve("best")
    g2, e2 = error_curve(best)
    np.testing.assert_array_equal(grid, g2)
    np.testing.assert_array_equal(err, e2)
    s = res.summary()
    assert s["best"]["rho_adv"] == pytest.approx(rho_adv(best, res.model().rows["noise"]["x_norm"]))
    assert sum(s["best"]["found_by"].values()) == len(x)
    assert set(s["searches"]) == set(searches)  # the per-search rows remain
    assert s["best"]["rho_adv"] <= min(v["rho_adv"] for v in s["searches"].values()) + 1e-12
    rows = res.model().rows["best"]
    assert set(rows["search"]) <= set(searches) | {""}
    for i, who in enumerate(rows["search"]):
        if who:
            assert d[who][i] == best[i]
    doc = json.loads(res.to_json())["models"][0]
    assert doc["best"]["rho_adv"] == pytest.approx(s["best"]["rho_adv"]) and doc["best"]["found_by"]
    # the store's summaries and the store read "best" like a search
    with ResultStore(run, readonly=True) as st:
        assert st.results("model", "best")["l2"].tolist() == best.tolist()
        summ = summarize_run(st)
    assert summ["models"][0]["best"]["n"] == len(x)
    # tables and curves of the report
    rep = write_report([run], tmp_path / "report")
    row = next(r for r in rep.summary["searches"] if r["search"] == "best")
    assert row["rho_adv"] == pytest.approx(s["best"]["rho_adv"]) and row["search_label"] == "best known"
    assert (tmp_path / "report" / "error_vs_l2_best.png").is_file()
    # gate rules over best
    ok = evaluate(run, build_policy({"rules": [f"rho_adv[best] >= {s['best']['rho_adv'] - 1e-9}",
                                               "error_at[best, 0.0] >= 0.05"]}))
    assert ok.passed and ok.checks[0].lhs == pytest.approx(s["best"]["rho_adv"])
    err1 = float(np.mean(best <= 1.0))
    got = evaluate(run, build_policy({"rules": ["error_at[best, 1.0] <= 1"]})).checks[0].lhs
    assert got == pytest.approx(err1)


def test_jr_eval_json_and_table_show_best(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(jr_eval, ["run", "lenet-mnist", "--attacks", "noise,fgsm", "--n", "4", "--source",
                                     "bundled", "--out", str(out), "--device", "cpu", "--json",
                                     "--jacobian", "off"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.stdout)["models"][0]
    assert m["best"]["n"] == 4 and m["best"]["protocol"] == "best of noise, fgsm"
    assert m["best"]["median_l2"] <= min(m["searches"][s]["median_l2"] for s in ("noise", "fgsm")) + 1e-12
    r = CliRunner().invoke(jr_eval, ["run", "lenet-mnist", "--attacks", "noise,fgsm", "--n", "4", "--source",
                                     "bundled", "--out", str(out), "--device", "cpu", "--jacobian", "off"])
    assert r.exit_code == 0 and "best" in r.output and "found by" in r.output
