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
from robustbench_jr.models import make_model, save_checkpoint
from robustbench_jr.reports.cells import boundary_in_plane, cross_sections, save_cells


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
