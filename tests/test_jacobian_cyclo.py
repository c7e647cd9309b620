"""Cyclopropagation (Hoffman et al. App. C) against autograd double backpropagation."""

import pytest
import torch
from torch import nn

from robustbench_jr.errors import ConfigError
from robustbench_jr.jacobian import cyclopropagation, jacobian_sq_norms


def autograd_reference(mlp, x, reduction):
    x = x.detach().requires_grad_(True)
    sq = jacobian_sq_norms(x, mlp(x), create_graph=True, method="loop")
    R = 0.5 * (sq.mean() if reduction == "mean" else sq.sum())
    names, params = zip(*mlp.named_parameters())
    grads = torch.autograd.grad(R, params, allow_unused=True)
    return R.detach(), {n: torch.zeros_like(p) if g is None else g for n, p, g in zip(names, params, grads)}


def mlp_variants():
    torch.manual_seed(0)
    yield "logit-linear", nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.Linear(9, 8), nn.Tanh(), nn.Linear(8, 4))
    yield "all-tanh (paper eqs. 17-19)", nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh())
    yield "flatten, no bias", nn.Sequential(nn.Flatten(), nn.Linear(7, 6, bias=False), nn.Tanh(),
                                            nn.Linear(6, 6), nn.Tanh(), nn.Identity(), nn.Linear(6, 3))
    yield "single layer", nn.Sequential(nn.Linear(7, 3), nn.Tanh())


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label,mlp", list(mlp_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_cyclopropagation_matches_autograd(label, mlp, reduction):
    mlp = mlp.double()
    x = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 1.5
    res = cyclopropagation(mlp, x, reduction=reduction)
    R, ref = autograd_reference(mlp, x, reduction)
    assert float(res.value) == pytest.approx(float(R), rel=1e-12)
    assert set(res.grads) == set(ref)
    for name, g in ref.items():
        assert res.grads[name].shape == g.shape
        if float(g.norm()) == 0:  # the last layer's bias when it has no tanh: J does not depend on it
            assert float(res.grads[name].norm()) == 0, name
        else:
            err = float((res.grads[name] - g).norm() / g.norm())
            assert err < 1e-6, (name, err)


def test_cyclopropagation_sum_is_batch_times_mean():
    mlp = next(mlp_variants())[1].double()
    x = torch.randn(6, 7, dtype=torch.float64)
    m, s = cyclopropagation(mlp, x, "mean"), cyclopropagation(mlp, x, "sum")
    assert torch.allclose(s.value, 6 * m.value)
    assert all(torch.allclose(s.grads[k], 6 * m.grads[k]) for k in m.grads)


def test_cyclopropagation_rejects_other_layers():
    for bad in (nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 2)),
                nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Tanh()),
                nn.Sequential(nn.Tanh()),
                nn.Linear(3, 2)):
        with pytest.raises(ConfigError):
            cyclopropagation(bad, torch.randn(2, 3))
    with pytest.raises(ConfigError, match="'mean' or 'sum'"):
        cyclopropagation(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 3), reduction="avg")
