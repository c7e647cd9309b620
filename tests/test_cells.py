"""Decision-cell cross sections: the in-plane boundary distance on an analytic model, files, CLI."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from robustbench_jr.cli.report_cmds import register
from robustbench_jr.errors import InputError
from robustbench_jr.evaluation.cells import boundary_in_plane
from robustbench_jr.evaluation.cells import checkpoint_cross_sections as cross_sections
from robustbench_jr.evaluation.cells import cross_sections as model_cross_sections
from robustbench_jr.models import make_model, save_checkpoint
from robustbench_jr.reports.cells import save_cells


class Affine(nn.Module):
    """Two classes; logits [w·x + b, 0]: class 0 while w·x + b > 0."""

    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = w, b

    def forward(self, x):
        z = (x.flatten(1) * self.w.flatten()).sum(1) + self.b
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_boundary_in_plane_matches_affine_geometry():
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, 6, 6)
    w = torch.randn(shape, generator=g)
    x = torch.rand(shape, generator=g)
    u = torch.randn(shape, generator=g)
    u /= u.norm()
    v = torch.randn(shape, generator=g)
    v -= (v * u).sum() * u
    v /= v.norm()
    b = 2.0 - float((w * x).sum())  # w·x + b = 2 at the sample
    model = Affine(w, b)
    expected = 2.0 / float(torch.hypot((w * u).sum(), (w * v).sum()))  # distance to the line in the plane
    got = boundary_in_plane(model, x, u, v, 0, r_max=3 * expected, angles=720, steps=64, bisect=20)
    assert got == pytest.approx(expected, rel=2e-3)  # angular resolution 0.5° → cos error < 4e-5
    assert boundary_in_plane(model, x, u, v, 0, r_max=0.5 * expected, angles=64) is None


def _affine_case(shape=(1, 1, 6, 6), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g)
    x = 0.25 + 0.5 * torch.rand(shape, generator=g)
    return w, x


def test_cross_sections_on_affine_models_match_the_analytic_boundaries():
    """In-memory models and a tensor: the plane of two affine models' FGSM directions is known in closed
    form, and so is every distance — boundary along u: m/|w·u|, within the plane: m/‖(w·u, w·v)‖,
    FGSM ε: m/‖w‖₁ (the sign direction of label 0 is −sign(w)), with the margin m = w·x + b."""
    w1, x = _affine_case(seed=1)
    w2, _ = _affine_case(seed=2)
    m1, m2 = 0.8, 1.3
    models = [Affine(w1, m1 - float((w1 * x).sum())), Affine(w2, m2 - float((w2 * x).sum()))]
    res = model_cross_sections(models, x[0], 0, "adversarial", names=["a", "b"], resolution=21, angles=1440)
    # the plane: u = −sign(w1)/√n, v = −sign(w2) orthogonalised against u
    n = x.numel()
    u = -w1.sign() / n ** 0.5
    v = -w2.sign() - (-w2.sign() * u).sum() * u
    v = v / v.norm()
    assert torch.allclose(res.basis[0], u, atol=1e-6) and torch.allclose(res.basis[1], v, atol=1e-6)
    for (w, m), p in zip(((w1, m1), (w2, m2)), res.panels):
        assert p.center_pred == 0 and p.center_conf == pytest.approx(1 / (1 + np.exp(-m)), rel=1e-5)
        wu, wv = float((w * u).sum()), float((w * v).sum())
        expected = m / float(np.hypot(wu, wv))
        assert p.boundary == pytest.approx(expected, rel=1e-3)  # angular resolution 0.25°
        assert p.boundary <= m / abs(wu) + 1e-6  # the distance along u bounds it from above
        eps = m / float(w.abs().sum())
        assert p.fgsm_eps == pytest.approx(eps, rel=2e-3)  # the FGSM search's rtol 1e-3
        d = p.fgsm_eps * -w.sign()
        assert p.fgsm_point == pytest.approx((float((d * u).sum()), float((d * v).sum())), abs=1e-5)
    # the first model's FGSM point lies on the first axis, at ε·‖sign(w1)‖₂ = ε·√n
    assert res.panels[0].fgsm_point[0] == pytest.approx(m1 / float(w1.abs().sum()) * n ** 0.5, rel=2e-3)
    assert res.panels[0].fgsm_point[1] == pytest.approx(0, abs=1e-5)
    assert res.axis_labels[0] == "FGSM direction of a" and res.label == 0 and res.num_classes == 2


def test_cross_sections_random_plane_on_an_affine_model():
    """Random plane: the traced radius is m/‖(w·u, w·v)‖ in the returned basis; along the direction
    (cos θ, sin θ) of the boundary's normal it is |w·x+b| / |w·d|; the same seed gives the same plane."""
    w, x = _affine_case(seed=3)
    m = 0.6
    model = Affine(w, m - float((w * x).sum()))
    res = model_cross_sections(model, x, 0, "random", seed=5, resolution=31, angles=1440, box=False)  # geometry
    u, v = res.basis
    assert float((u * u).sum()) == pytest.approx(1, abs=1e-5) and abs(float((u * v).sum())) < 1e-5
    wu, wv = float((w * u).sum()), float((w * v).sum())
    d = (wu * u + wv * v) / float(np.hypot(wu, wv))  # the unit direction in the plane towards the boundary
    assert res.panels[0].boundary == pytest.approx(m / abs(float((w * d).sum())), rel=1e-3)
    assert res.panels[0].fgsm_eps is None and res.radius == pytest.approx(1.8 * res.panels[0].boundary)
    # the grid agrees with the line: class 0 where w·(a·u + b·v) + m > 0
    A, B = np.meshgrid(res.coords, res.coords)  # row = b, column = a
    margin = m + wu * A + wv * B
    clear = np.abs(margin) > 1e-3
    assert (res.panels[0].pred[clear] == (margin[clear] < 0)).all()
    again = model_cross_sections(model, x, 0, "random", seed=5, resolution=11, angles=8)
    other = model_cross_sections(model, x, 0, "random", seed=6, resolution=11, angles=8)
    assert torch.equal(again.basis[0], u) and not torch.equal(other.basis[0], u)


def test_cross_sections_rejects_bad_inputs():
    w, x = _affine_case()
    model = Affine(w, 0.5 - float((w * x).sum()))
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        model_cross_sections(model, x * 3, 0)
    with pytest.raises(InputError, match="shape"):
        model_cross_sections(model, x.repeat(2, 1, 1, 1), 0)
    with pytest.raises(InputError, match="plane"):
        model_cross_sections(model, x, 0, "diagonal")
    with pytest.raises(InputError, match="names"):
        model_cross_sections([model, model], x, 0, names=["one"])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    out = []
    for i, name in enumerate(("lenet-a", "lenet-b")):
        torch.manual_seed(i)
        m = make_model("lenet", 10, "mnist")
        with torch.no_grad():  # make the untrained nets less flat so the planes hold several cells
            for p in m.parameters():
                p.mul_(3.0)
        out.append(str(save_checkpoint(tmp / name, m, {"architecture": "lenet", "dataset": "mnist", "name": name})))
    return out


def test_cross_sections_random_and_adversarial(checkpoints, tmp_path):
    for plane in ("random", "adversarial"):
        res = cross_sections(checkpoints, index=3, plane=plane, resolution=25, angles=24, radius=4.0)
        assert res.radius == 4.0 and res.coords.shape == (25,) and len(res.panels) == 2
        for p in res.panels:
            assert p.pred.shape == (25, 25) and p.conf.shape == (25, 25)
            assert ((p.conf > 0) & (p.conf <= 1)).all()
            assert p.pred[12, 12] == p.center_pred  # the grid centre is the sample
        paths = save_cells(res, tmp_path)
        assert paths["png"].read_bytes()[:4] == b"\x89PNG" and paths["svg"].stat().st_size > 1000
        doc = json.loads(paths["json"].read_text())
        assert doc["plane"] == plane and [c["name"] for c in doc["checkpoints"]] == ["lenet-a", "lenet-b"]
    # adversarial plane: the first axis is the first model's FGSM direction
    p0 = res.panels[0]
    if p0.fgsm_point is not None:
        assert abs(p0.fgsm_point[1]) < 1e-4 and p0.fgsm_point[0] > 0


def test_cells_cli(checkpoints, tmp_path):
    group = click.Group("jr-eval")
    register(group)
    res = CliRunner().invoke(group, ["cells", checkpoints[0], "--index", "0", "--plane", "adversarial",
                                     "--resolution", "21", "--radius", "3", "--out", str(tmp_path), "--json",
                                     "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["checkpoints"][0]["name"] == "lenet-a"
    assert (tmp_path / "cells-0-adversarial.png").is_file()
    # the bundled slice is always there (CI has no full MNIST): 1,000 images, ids 0 … 999
    res = CliRunner().invoke(group, ["cells", checkpoints[0], "--dataset", "bundled", "--index", "1000",
                                     "--resolution", "21"])
    assert res.exit_code == 2 and "out of range" in res.output
    res = CliRunner().invoke(group, ["cells", str(tmp_path / "missing"), "--index", "0"])
    assert res.exit_code == 2
