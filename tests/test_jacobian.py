"""Known-answer tests for the Jacobian core: exact norms, Algorithm 1 statistics, batched vs loop."""

import math

import pytest
import torch
from torch import nn

from robustbench_jr.errors import ConfigError
from robustbench_jr.jacobian import (
    build_regularizer, jacobian_rows, jacobian_sq_norms, jr_projection_estimate, jr_projection_per_sample,
    mean_jacobian_norm,
)
from robustbench_jr.models import PixelSpaceModel, make_model

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
SHAPE = (1, 4, 5)  # D = 20 inputs
C = 6


def linear_model(W, b=None, normalization="none", dtype=torch.float64, device="cpu"):
    """z = W x + b on the flattened (normalised) input, as a pixel-space model."""
    lin = nn.Linear(W.shape[1], W.shape[0]).to(dtype)
    with torch.no_grad():
        lin.weight.copy_(W)
        lin.bias.copy_(torch.zeros(W.shape[0]) if b is None else b)
    return PixelSpaceModel(nn.Sequential(nn.Flatten(), lin), normalization, SHAPE, W.shape[0]).to(device, dtype)


def weight_with_singular_values(s, d=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(len(s), len(s), generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(d, len(s), generator=g, dtype=torch.float64))
    return U @ torch.diag(torch.as_tensor(s, dtype=torch.float64)) @ V.T


@pytest.fixture
def W():
    return torch.randn(C, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _inputs(n, dtype=torch.float64, device="cpu", seed=2):
    x = torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype).to(device)
    return x.requires_grad_(True)


@pytest.mark.parametrize("device", DEVICES)
def test_linear_model_exact_penalty_is_frobenius_norm_of_W(W, device):
    model = linear_model(W, torch.randn(C, dtype=torch.float64), device=device)
    x = _inputs(7, device=device)
    w2 = float(W.pow(2).sum())
    for method in ("loop", "batched", "auto"):
        reg = build_regularizer("jr-exact", lam=0.3, method=method)
        out = reg(model, x, None, model(x))
        assert out.value.dtype == torch.float64 and out.value.device.type == device
        assert float(out.value) == pytest.approx(w2, rel=1e-12)
        assert float(out.loss.detach()) == pytest.approx(0.5 * 0.3 * w2, rel=1e-12)  # λ/2 (Hoffman eq. 5)
    jg = build_regularizer("jr-exact", lam=0.3, form="jg")(model, x, None, model(x))
    assert float(jg.value) == pytest.approx(math.sqrt(w2), rel=1e-12)  # RMS over the batch
    rows = jacobian_rows(x, model(x))
    assert torch.allclose(rows.flatten(2), W.to(device).expand(7, C, 20), rtol=0, atol=1e-13)


def test_mean_jacobian_norm_of_linear_model_is_frobenius_norm(W):
    model = linear_model(W)
    images = torch.rand(23, *SHAPE, dtype=torch.float64)
    wf = float(W.norm())
    for method in ("loop", "batched"):
        mean, per = mean_jacobian_norm(model, images, batch_size=10, method=method, return_per_sample=True)
        assert mean == pytest.approx(wf, rel=1e-12)
        assert per.shape == (23,) and torch.allclose(per.double(), torch.full((23,), wf, dtype=torch.float64))
    # uint8 images are scaled to [0, 1]; the Jacobian of a linear model does not change
    u8 = (torch.rand(5, *SHAPE) * 255).to(torch.uint8)
    assert mean_jacobian_norm(model, u8) == pytest.approx(wf, rel=1e-12)


def test_jr_random_projection_mean_inside_confidence_interval(W):
    """Algorithm 1 is unbiased (eq. 7): the mean of many single-projection estimates lies
    within 4 standard errors (from the sample std) of ‖W‖²_F."""
    model = linear_model(W)
    n = 4000
    x = _inputs(n)
    g = torch.Generator().manual_seed(3)
    per = jr_projection_per_sample(x, model(x), 1, g, create_graph=False).detach()
    exact = float(W.pow(2).sum())
    mean, se = float(per.mean()), float(per.std()) / math.sqrt(n)
    assert abs(mean - exact) < 4 * se, (mean, exact, se)
    # the batch estimate is the mean of the per-sample terms, and the regularizer uses it
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    xs = x[:50].detach().requires_grad_(True)
    est = jr_projection_estimate(xs, model(xs), 2, g1, create_graph=False)
    out = build_regularizer("jr", lam=1.0, n_proj=2)(model, xs, None, model(xs), generator=g2)
    assert float(est) == pytest.approx(float(out.value), rel=1e-12)
    assert float(out.loss.detach()) == pytest.approx(0.5 * float(out.value), rel=1e-12)


def test_jr_single_projection_variance_matches_hoffman_eq15():
    """Hoffman App. B eq. (15): var[C v̂ᵀJJᵀv̂] = 2C/(C+2) Tr(JJᵀJJᵀ) − 2/(C+2) ‖J‖⁴_F,
    i.e. with singular values s_i: (2C Σ s⁴ − 2 (Σ s²)²)/(C+2); and eq. (16):
    var/mean² ≤ 2(C−1)/(C+2)."""
    s = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.2, 0.1], dtype=torch.float64)
    W = weight_with_singular_values(s)
    model = linear_model(W)
    n = 20000
    x = _inputs(n)
    per = jr_projection_per_sample(x, model(x), 1, torch.Generator().manual_seed(7), create_graph=False).detach()
    theory = (2 * C * s.pow(4).sum() - 2 * s.pow(2).sum() ** 2) / (C + 2)
    emp = per.var()
    # standard error of the sample variance from the sample fourth central moment
    m4 = (per - per.mean()).pow(4).mean()
    se = torch.sqrt((m4 - emp ** 2) / n)
    assert abs(float(emp - theory)) < 4 * float(se), (float(emp), float(theory), float(se))
    bound = 2 * (C - 1) / (C + 2)
    assert float(theory) / float(s.pow(2).sum()) ** 2 <= bound
    # equality in eq. (16) for a rank-one Jacobian, where Tr(JJᵀJJᵀ) = ‖J‖⁴_F
    s1 = torch.tensor([2.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    W1 = weight_with_singular_values(s1)
    per1 = jr_projection_per_sample(x, linear_model(W1)(x), 1, torch.Generator().manual_seed(8),
                                    create_graph=False).detach()
    ratio = per1.var() / per1.mean() ** 2
    assert float(ratio) == pytest.approx(bound, rel=0.06)


def test_n_proj_reduces_variance_by_its_inverse():
    W = weight_with_singular_values([3.0, 2.0, 1.0, 0.5, 0.2, 0.1])
    model = linear_model(W)
    x = _inputs(6000)
    v1 = jr_projection_per_sample(x, model(x), 1, torch.Generator().manual_seed(9), create_graph=False).var()
    v4 = jr_projection_per_sample(x, model(x), 4, torch.Generator().manual_seed(9), create_graph=False).var()
    assert float(v1 / v4) == pytest.approx(4.0, rel=0.15)


def test_same_seed_same_estimate_and_draws_in_logits_dtype(W):
    model = linear_model(W)
    x = _inputs(9)
    a = build_regularizer("jr", 1.0)(model, x, None, model(x), generator=torch.Generator().manual_seed(0))
    b = build_regularizer("jr", 1.0)(model, x, None, model(x), generator=torch.Generator().manual_seed(0))
    c = build_regularizer("jr", 1.0)(model, x, None, model(x), generator=torch.Generator().manual_seed(1))
    assert float(a.value) == float(b.value) != float(c.value)
    assert a.value.dtype == torch.float64


@pytest.fixture(scope="module")
def lenet64():
    torch.manual_seed(0)
    return make_model("lenet", 10, "mnist").double().eval()


def test_batched_and_loop_jacobians_agree(lenet64):
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    loop = jacobian_rows(x, lenet64(x), method="loop")
    for chunk in (None, 3, 1):
        batched = jacobian_rows(x, lenet64(x), method="batched", chunk_size=chunk)
        assert batched.shape == (5, 10, 1, 28, 28)
        assert torch.allclose(batched, loop, rtol=1e-12, atol=1e-14)
    scale = lenet64.input_scale
    sq_loop = jacobian_sq_norms(x, lenet64(x), scale, method="loop")
    sq_b = jacobian_sq_norms(x, lenet64(x), scale, method="batched", chunk_size=4)
    assert torch.allclose(sq_loop, sq_b, rtol=1e-12)
    assert torch.allclose(sq_loop, (loop * scale).pow(2).flatten(1).sum(1), rtol=1e-12)
    # the gradients w.r.t. the parameters (create_graph) agree too
    params = list(lenet64.parameters())
    grads = {}
    for method in ("loop", "batched"):
        sq = jacobian_sq_norms(x, lenet64(x), create_graph=True, method=method)
        grads[method] = torch.autograd.grad(sq.mean(), params, allow_unused=True)
    for a, b in zip(grads["loop"], grads["batched"]):
        assert (a is None and b is None) or torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    assert mean_jacobian_norm(lenet64, x.detach(), method="loop") == pytest.approx(
        mean_jacobian_norm(lenet64, x.detach(), method="batched"), rel=1e-12)
    with pytest.raises(ConfigError, match="valid: auto, batched, loop"):
        jacobian_rows(x, lenet64(x), method="vmap")


def test_one_pass_norms_in_two_spaces_match_known_answer():
    """z = W x on 3-channel input: ‖J‖_F = ‖W‖_F in pixel space and ‖W·diag(std)‖_F in the
    normalised space, with a different std per channel — both from one Jacobian pass."""
    from robustbench_jr.jacobian import mean_jacobian_norms

    torch.manual_seed(0)
    Wc = torch.randn(4, 3, 2, 2, dtype=torch.float64)
    lin = torch.nn.Linear(12, 4, bias=False).double()
    lin.weight.data = Wc.reshape(4, 12)
    model = torch.nn.Sequential(torch.nn.Flatten(), lin)
    std = torch.tensor([0.2, 0.5, 2.0], dtype=torch.float64).view(1, 3, 1, 1)
    out = mean_jacobian_norms(model, torch.rand(5, 3, 2, 2, dtype=torch.float64), {"pix": None, "norm": std},
                              batch_size=2)
    assert out["pix"][0] == pytest.approx(float(Wc.norm()), rel=1e-12)
    assert out["norm"][0] == pytest.approx(float((Wc * std.view(1, 3, 1, 1)).norm()), rel=1e-12)
    assert len(out["pix"][1]) == 5
