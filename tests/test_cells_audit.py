"""Decision cells and the audit tell the same story (issue #15, item 6): the planes are drawn
in the box the searches use (points clipped to [0, 1], what lies outside marked), so the FGSM
point of the cells is the FGSM search's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robustbench_jr.attacks import build_search
from robustbench_jr.attacks.fgsm import fgsm_direction
from robustbench_jr.data import bundled_mnist
from robustbench_jr.evaluation.cells import checkpoint_cross_sections
from robustbench_jr.models import load_checkpoint
from robustbench_jr.reports.cells import save_cells


@pytest.fixture(scope="module")
def cells():
    return checkpoint_cross_sections(["lenet-mnist", "lenet-mnist-jr"], index=0, plane="adversarial",
                                     resolution=21, angles=36)


@pytest.mark.parametrize("k, name", [(0, "lenet-mnist"), (1, "lenet-mnist-jr")])
def test_cells_fgsm_point_is_the_audits_fgsm(cells, k, name):
    model, _ = load_checkpoint(name)
    ds = bundled_mnist()
    x, y = ds.pixels([0]), ds.labels[:1]
    audit = build_search("fgsm").run(model, x, y, seed=0, sample_ids=ds.ids[:1])
    assert bool(audit.fooled[0])
    p = cells.panels[k]
    # the same ε (its L∞ after clipping) and the same clipped L2 distance as the audit's FGSM search
    assert p.fgsm_eps is not None
    assert p.fgsm_eps == pytest.approx(float(audit.linf[0]), rel=1e-6)
    assert p.fgsm_l2 == pytest.approx(float(audit.l2[0]), rel=1e-6)
    # the mark is the FGSM adversarial itself: on the first model's axis, at ε·‖sign ∇‖
    if k == 0:
        d = fgsm_direction(model, x, y)
        assert p.fgsm_point[0] == pytest.approx(p.fgsm_eps * float(d.norm()), rel=1e-5)
        assert abs(p.fgsm_point[1]) < 1e-4
    # the boundary point's real distance after clipping never exceeds its in-plane radius
    assert p.boundary is not None and p.boundary_l2 <= p.boundary + 1e-6


def test_cells_mark_what_lies_outside_the_box(cells, tmp_path):
    assert cells.box and cells.outside.shape == (21, 21)
    assert cells.outside[10, 10] == 0.0 and (cells.outside >= 0).all() and (cells.outside <= 1 + 1e-6).all()
    assert (cells.outside > 0.5).any()  # MNIST's black background: most offsets leave [0, 1]
    doc = json.loads(save_cells(cells, tmp_path)["json"].read_text())
    assert doc["box"].startswith("clipped to [0, 1]") and 0 < doc["mostly_outside_fraction_of_grid"] <= 1
    assert doc["checkpoints"][0]["fgsm_eps"] == pytest.approx(cells.panels[0].fgsm_eps)
    assert doc["checkpoints"][0]["fgsm_l2"] == pytest.approx(cells.panels[0].fgsm_l2)
    # the grid's predictions are the model's on the clipped points
    model, _ = load_checkpoint("lenet-mnist")
    x = bundled_mnist().pixels([0])
    u, v = cells.basis
    a, b = cells.coords[3], cells.coords[17]
    pt = (x + float(a) * u + float(b) * v).clamp(0, 1)
    with torch.no_grad():
        assert int(model(pt).argmax(1)[0]) == int(cells.panels[0].pred[17, 3])
    assert np.isfinite(cells.radius)
