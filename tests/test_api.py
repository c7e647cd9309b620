"""The public Python API: robustbench_jr.audit on in-memory models, and its agreement with jr-eval."""

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
from robustbench_jr.data import bundled_mnist
from robustbench_jr.errors import ConfigError, InputError
from robustbench_jr.evaluation import ResultStore
from robustbench_jr.models import make_model, save_checkpoint


class Affine(nn.Module):
    """z = W x + b on flattened [0, 1] pixels: the minimal L2 fooling distance is analytic."""

    def __init__(self, d: int, k: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.lin = nn.Linear(d, k)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(k, d, generator=g))
            self.lin.bias.copy_(0.3 * torch.randn(k, generator=g))

    def forward(self, x):
        return self.lin(x.flatten(1))


def affine_case(n: int = 6):
    d, k = 16, 3
    model = Affine(d, k)
    g = torch.Generator().manual_seed(1)
    # points near the middle of the cube, so that the closest boundary point stays inside [0, 1]
    x = 0.5 + 0.02 * (torch.rand(n, 1, 4, 4, generator=g) - 0.5)
    with torch.no_grad():
        y = model(x).argmax(1)
    W, b = model.lin.weight.detach().double(), model.lin.bias.detach().double()
    xf = x.flatten(1).double()
    exact = []
    for i in range(n):
        yi = int(y[i])
        dists = [float(((W[yi] - W[j]) @ xf[i] + b[yi] - b[j]).abs() / (W[yi] - W[j]).norm())
                 for j in range(k) if j != yi]
        exact.append(min(dists))
    return model, x, y, np.asarray(exact)


def test_three_line_audit_on_a_model_defined_here():
    model, x, y, exact = affine_case()
    result = robustbench_jr.audit(model, x, y, searches=["deepfool", "cw"], seed=0,
                                  search_config={"cw": {"binary_search_steps": 6, "max_iterations": 300}})
    s = result.summary()
    assert set(s["searches"]) == {"deepfool", "cw"}
    assert s["clean_accuracy"] == 1.0
    # ‖J‖_F of an affine map is ‖W‖_F at every input
    assert s["jacobian_norm"] == pytest.approx(float(model.lin.weight.detach().norm()), rel=1e-5)
    for search in ("deepfool", "cw"):
        d = result.distances(search)
        assert np.all(np.isfinite(d))
        assert np.all(d >= exact * (1 - 1e-4)), search  # nothing closer than the boundary exists
    assert np.all(result.distances("deepfool") <= exact * 1.03)  # overshoot 0.02 on the total perturbation
    assert np.all(result.distances("cw") <= exact * 1.05)
    grid, err = result.curve("deepfool")
    assert err[0] == 0.0 and err[-1] == 1.0 and np.all(np.diff(err) > 0)
    doc = json.loads(result.to_json())
    assert doc["models"][0]["searches"]["cw"]["n"] == len(x)
    assert "model:" in str(result)


def test_audit_reports_through_events_and_prints_nothing(capsys):
    model, x, y, _ = affine_case(4)
    events = []
    robustbench_jr.audit(model, x, y, searches="fgsm", on_event=events.append)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""
    kinds = [(e.kind, e.name) for e in events]
    assert ("task", "audit") in kinds and ("task", "samples") in kinds and ("done", "audit") in kinds
    assert sum(e.amount for e in events if e.kind == "advance" and e.name == "audit") == 1


def test_audit_keeps_the_models_mode_and_refuses_bad_inputs():
    model, x, y, _ = affine_case(4)
    model.train()
    robustbench_jr.audit(model, x, y, searches="fgsm")
    assert model.training
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        robustbench_jr.audit(model, x * 3, y, searches="fgsm")
    with pytest.raises(InputError, match="labels"):
        robustbench_jr.audit(model, x, y[:2], searches="fgsm")
    with pytest.raises(ConfigError, match="unknown search 'nope'"):
        robustbench_jr.audit(model, x, y, searches="nope")
    with pytest.raises(InputError, match="unique"):
        robustbench_jr.audit(model, x, y, searches="fgsm", sample_ids=[0, 0, 1, 2])


def test_api_rows_equal_jr_eval_rows(tmp_path):
    """A model made here, saved as a checkpoint: jr-eval run and robustbench_jr.audit give the
    same per-sample rows on the same samples and seed."""
    torch.manual_seed(3)
    model = make_model("lenet", 10, "mnist", (1, 28, 28)).eval()
    ckpt = tmp_path / "mine"
    save_checkpoint(ckpt, model, {"architecture": "lenet", "dataset": "mnist", "normalization": "mnist"})
    n, searches = 6, ["noise", "fgsm", "deepfool"]
    res = CliRunner().invoke(jr_eval, ["run", str(ckpt), "--n", str(n), "--attacks", ",".join(searches),
                                       "--source", "bundled", "--seed", "5", "--out", str(tmp_path / "cli"),
                                       "--quiet", "--batch-size", "4"])
    assert res.exit_code == 0, res.output
    ds = bundled_mnist().first(n)
    loaded = robustbench_jr.load_model(ckpt)
    result = robustbench_jr.audit(loaded, ds.pixels(), ds.labels, searches=searches, seed=5, sample_ids=ds.ids,
                                  dataset="mnist", store=tmp_path / "api", batch_size=3)
    with ResultStore(tmp_path / "cli", readonly=True) as a, ResultStore(tmp_path / "api", readonly=True) as b:
        for s in searches:
            ra, rb = a.results("mine", s), b.results("model", s)
            for col in ra:
                np.testing.assert_array_equal(ra[col], rb[col], err_msg=f"{s}.{col}")
        cli_model = a.models()[0]
    assert result.model().clean_accuracy == cli_model["clean_accuracy"]
    assert math.isclose(result.model().jacobian_norm, cli_model["jacobian_norm"], rel_tol=1e-6)


def test_search_run_takes_an_integer_seed():
    model, x, y, _ = affine_case(4)
    search = robustbench_jr.build_search("noise")
    a = search.run(model, x, y, seed=7, sample_ids=torch.arange(4))
    b = search.run(model, x, y, 7, torch.arange(4))
    assert torch.equal(a.l2, b.l2)


def test_docs_api_example_runs(capsys):
    """Every ``python`` block of docs/api.md, in order, in one namespace."""
    import pathlib
    import re

    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 4
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), ns)  # noqa: S102 - our own documentation
    assert "progress events" in capsys.readouterr().out
