"""Defaults follow the papers, word for word (issue #15, item 1): DeepFool's default is the
papers' raw protocol (overshoot 0.02 on the total perturbation, no refinement), the refined
variant is an option, and every number says which protocol it used."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import robustbench_jr
from robustbench_jr.attacks import SEARCHES, build_search
from robustbench_jr.reports.report import write_report

README = Path(__file__).resolve().parents[1] / "README.md"

#: the papers' protocols (DESIGN.md "Protocols from the papers"): search → {config key: value}
PAPER = {
    "pgd": {"step_size": 1 / 255, "saturation": 32 / 255},
    "cw": {"lr": 0.005, "initial_const": 0.01, "binary_search_steps": 10, "confidence": 0.0},
    "deepfool": {"overshoot": 0.02, "max_iterations": 50, "candidates": None, "refine": False},
    "jsma": {"theta": 1.0},
}


class Affine(nn.Module):
    """Two classes, logits [w·x + b, 0] on flattened pixels: the boundary is one hyperplane."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.w = nn.Parameter(w.flatten().clone(), requires_grad=False)
        self.b = b

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([z, torch.zeros_like(z)], 1)


def affine_case(n: int = 6):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, generator=g)
    x = 0.4 + 0.2 * torch.rand(n, 1, 4, 4, generator=g)
    b = 1.0 - float((x[0].flatten() @ w))  # margins around 1, boundary inside the box
    model = Affine(w, b)
    with torch.no_grad():
        z = model(x)[:, 0]
    keep = z > 0
    x = x[keep]
    exact = (model(x)[:, 0] / w.norm()).detach().numpy()
    return model, x, torch.zeros(len(x), dtype=torch.int64), exact


@pytest.mark.parametrize("name", sorted(PAPER))
def test_search_defaults_are_the_papers_protocol(name):
    cfg = SEARCHES[name].Config()
    for key, want in PAPER[name].items():
        got = getattr(cfg, key)
        assert got == (pytest.approx(want) if isinstance(want, float) else want), (name, key)
    from robustbench_jr.evaluation.plan import paper_config, protocol
    assert protocol(name, paper_config(name)) == "paper"


def test_deepfool_default_is_raw_deepfool_and_refine_is_an_option():
    """On an affine classifier DeepFool converges in one step onto the hyperplane; the papers'
    protocol then applies the overshoot 0.02 to the total perturbation, so the distance is
    1.02·(exact + 1e-4) — the refined variant bisects back to the boundary."""
    model, x, y, exact = affine_case()
    raw = build_search("deepfool").run(model, x, y).l2.double().numpy()
    assert np.all(np.isfinite(raw))
    np.testing.assert_allclose(raw, 1.02 * (exact + 1e-4), rtol=1e-4)
    refined = build_search("deepfool", {"refine": True}).run(model, x, y).l2.double().numpy()
    assert np.all(refined <= raw) and np.all(refined < exact * 1.002) and np.all(refined >= exact * (1 - 1e-4))
    explicit_raw = build_search("deepfool", {"refine": False}).run(model, x, y).l2.double().numpy()
    np.testing.assert_array_equal(explicit_raw, raw)


def test_protocol_labels():
    from robustbench_jr.evaluation.plan import BUDGETS, paper_config, protocol
    assert protocol("deepfool", {**paper_config("deepfool"), "refine": True}) == "refined (refine=true)"
    quick = {**paper_config("cw"), **BUDGETS["quick"]["cw"]}
    label = protocol("cw", quick)
    assert label.startswith("quick (") and all(f"{k}=" in label for k in BUDGETS["quick"]["cw"])
    assert protocol("cw", {**paper_config("cw"), "lr": 0.1}) == "custom (lr=0.1)"
    # the earlier abort of never-fooled steps is cheaper but not the same computation: a departure
    assert paper_config("cw")["fail_check_every"] is None
    assert protocol("cw", {**paper_config("cw"), "fail_check_every": 10}) == "custom (fail_check_every=10)"
    # PGD's paper box is the dataset's: 16/255 on CIFAR is the paper, 32/255 is not
    cifar = {**paper_config("pgd"), "saturation": 16 / 255}
    assert protocol("pgd", cifar, "cifar10") == "paper"
    assert protocol("pgd", paper_config("pgd"), "cifar10").startswith("custom (saturation=")


def test_json_and_report_show_the_protocol_of_each_number(tmp_path):
    model, x, y, _ = affine_case()
    run = tmp_path / "run"
    res = robustbench_jr.audit(model, x, y, searches=["fgsm", "deepfool"], seed=0, store=run,
                               search_config={"deepfool": {"refine": True}})
    doc = json.loads(res.to_json())
    s = doc["models"][0]["searches"]
    assert s["fgsm"]["protocol"] == "paper" and s["deepfool"]["protocol"] == "refined (refine=true)"
    assert s["deepfool"]["config"]["refine"] is True and s["deepfool"]["config"]["overshoot"] == 0.02
    assert res.summary()["searches"]["deepfool"]["protocol"] == "refined (refine=true)"
    rep = write_report([run], tmp_path / "report")
    rows = {r["search"]: r for r in rep.summary["searches"]}
    assert rows["deepfool"]["protocol"] == "refined (refine=true)" and rows["fgsm"]["protocol"] == "paper"
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "refined (refine=true)" in md and "## Search settings" in md and "refine=true" in md
    assert "Search settings" in (tmp_path / "report" / "report.html").read_text()


def test_readme_defaults_follow_the_papers_word_for_word():
    """The README's list of search defaults says exactly what the configs do."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"\*\*Searches\*\* \(defaults follow the papers[^)]*\)(.*?)\n- \*\*", text, re.S)
    assert m, "the README's Searches bullet"
    bullet = " ".join(m.group(1).split())
    df = SEARCHES["deepfool"].Config()
    assert "`deepfool` (L2, overshoot 0.02 on the total perturbation, up to 50 iterations, all classes, " \
           "no refinement" in bullet
    assert (df.overshoot, df.max_iterations, df.candidates, df.refine) == (0.02, 50, None, False)
    assert "refine: true" in bullet  # the refined variant is named as an option
    cw = SEARCHES["cw"].Config()
    assert "Adam lr 0.005, c₀ = 0.01, 10 binary-search steps" in bullet
    assert (cw.lr, cw.initial_const, cw.binary_search_steps) == (0.005, 0.01, 10)
    pgd = SEARCHES["pgd"].Config()
    assert "1/255 sign steps inside a 32/255 (MNIST) or 16/255 (CIFAR) box" in bullet
    assert pgd.step_size == pytest.approx(1 / 255) and pgd.saturation == pytest.approx(32 / 255)
