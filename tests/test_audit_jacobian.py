"""‖J‖_F in the audit (issue #15, item 5): every value names its N and its space (pixel and
normalised input), the card's whole-test-set value stands beside the audit's, and
``--jacobian exact|estimate|off`` (estimate: random projections with a standard error),
exact by default only where it is cheap."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

import robustbench_jr
from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.data import ImageDataset
from robustbench_jr.models import PixelSpaceModel, bundled_names
from robustbench_jr.models.checkpoint import resolve_checkpoint
from robustbench_jr.reports.report import write_report


def affine(k=5, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, k)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(k, d, generator=g))
    net = nn.Sequential(nn.Flatten(), lin)
    return PixelSpaceModel(net, "cifar", input_shape=(3, 2, 2), num_classes=k), lin.weight.detach()


def test_resolve_mode_exact_only_where_cheap():
    from robustbench_jr.evaluation import jnorm
    assert jnorm.resolve_mode("auto", 10, 784) == "exact"            # MNIST
    assert jnorm.resolve_mode("auto", 100, 3 * 32 * 32) == "exact"   # CIFAR-100
    assert jnorm.resolve_mode("auto", 1000, 3 * 224 * 224) == "estimate"  # ImageNet
    for m in ("exact", "estimate", "off"):
        assert jnorm.resolve_mode(m, 1000, 3 * 224 * 224) == m


def test_exact_both_spaces_and_estimate_within_its_standard_error():
    """For z = W((x − 0.5)/0.5): J_pixel = 2W, J_normalised = W, at every input."""
    model, W = affine()
    x = torch.rand(40, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1).detach()
    wf = float(W.norm())
    from robustbench_jr.evaluation import jnorm
    ex = robustbench_jr.audit(model, x, y, searches=["noise"], seed=0, jacobian="exact").summary()["jacobian"]
    assert ex["method"] == "exact" and ex["n"] == 40 and ex["se_pixel"] == 0.0
    assert ex["pixel"] == pytest.approx(2 * wf, rel=1e-5) and ex["normalized"] == pytest.approx(wf, rel=1e-5)
    es = robustbench_jr.audit(model, x, y, searches=["noise"], seed=0, jacobian="estimate").summary()["jacobian"]
    assert es["method"] == "estimate" and es["n_proj"] == jnorm.DEFAULT_PROJECTIONS and es["n"] == 40
    assert 0 < es["se_pixel"] < 0.1 * es["pixel"]
    assert abs(es["pixel"] - 2 * wf) < 4 * es["se_pixel"]
    assert abs(es["normalized"] - wf) < 4 * es["se_normalized"]
    again = robustbench_jr.audit(model, x, y, searches=["noise"], seed=0, jacobian="estimate", batch_size=7)
    assert again.summary()["jacobian"]["pixel"] == pytest.approx(es["pixel"], rel=1e-9)  # batching-independent
    off = robustbench_jr.audit(model, x, y, searches=["noise"], seed=0, jacobian="off")
    assert off.summary()["jacobian"]["method"] == "off" and off.summary()["jacobian_norm"] is None
    assert "(pixel, exact, N=40)" in str(robustbench_jr.audit(model, x, y, searches=["noise"], seed=0))


def test_estimator_statistics_on_many_seeds():
    """The stated standard error is honest: over seeds, the z-scores against the exact value
    have mean ≈ 0 and spread ≈ 1 (a nonlinear net, where ‖J‖ varies across samples)."""
    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 6))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    model = PixelSpaceModel(net, "none", input_shape=(3, 2, 2), num_classes=6)
    from robustbench_jr.evaluation import jnorm
    ds = ImageDataset("t", "test", torch.rand(30, 3, 2, 2, generator=g), torch.zeros(30, dtype=torch.int64), "t")
    exact = jnorm.summarize_norms(jnorm.measure(model, ds, 30, "cpu", "exact"), "exact")["pixel"]
    z = []
    for seed in range(40):
        est = jnorm.summarize_norms(jnorm.measure(model, ds, 30, "cpu", "estimate", 16, seed), "estimate", 16)
        z.append((est["pixel"] - exact) / est["se_pixel"])
    z = np.asarray(z)
    assert abs(z.mean()) < 0.6 and 0.5 < z.std() < 1.6


def test_jr_eval_shows_n_space_and_the_card(tmp_path):
    assert "lenet-mnist" in bundled_names()
    card = yaml.safe_load((resolve_checkpoint("lenet-mnist") / "card.yaml").read_text())["metrics"]
    out = tmp_path / "run"
    args = ["run", "lenet-mnist", "--attacks", "noise", "--n", "4", "--source", "bundled", "--out", str(out),
            "--device", "cpu"]
    r = CliRunner().invoke(jr_eval, args + ["--json"])
    assert r.exit_code == 0, r.output
    j = json.loads(r.stdout)["models"][0]["jacobian"]
    assert j["method"] == "exact" and j["n"] == 4  # auto: exact for 10 classes × 784 inputs
    assert j["pixel"] > 0 and j["normalized"] == pytest.approx(j["pixel"] * 0.3081, rel=1e-6)
    assert j["card"]["pixel"] == pytest.approx(card["jacobian_norm"])
    assert j["card"]["normalized"] == pytest.approx(card["jacobian_norm_normalized_input"])
    assert j["card"]["n"] == card["test_samples"] == 10000
    r = CliRunner().invoke(jr_eval, args)
    text = " ".join(r.output.split())
    assert "(pixel, exact, N=4)" in text and "(normalised input, exact, N=4)" in text
    assert "card (whole test set)" in text and "N=10000" in text
    # the report's checkpoint table: both spaces with N, and the card beside them
    rep = write_report([out], tmp_path / "report")
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "‖J‖_F pixel" in md and "‖J‖_F normalised input" in md and "(exact, N=4)" in md and "N=10000" in md
    assert rep.summary["checkpoints"][0]["jacobian"]["card"]["n"] == 10000
    # --jacobian estimate: a stated standard error; the stored measurement is redone on request
    r = CliRunner().invoke(jr_eval, args + ["--json", "--jacobian", "estimate"])
    assert r.exit_code == 0, r.output
    j2 = json.loads(r.stdout)["models"][0]["jacobian"]
    assert j2["method"] == "estimate" and j2["se_pixel"] > 0 and j2["n"] == 4
    assert abs(j2["pixel"] - j["pixel"]) < 5 * j2["se_pixel"]
