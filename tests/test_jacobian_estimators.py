"""Known-answer tests for the estimators of ‖J‖²_F behind the ``jr`` regularizer (issue 19):
Algorithm 1 (``vjp``), the forward-mode probe (``jvp``) and the finite difference (``fd``).

Means are held to the exact ‖J‖²_F (by enumerating every Rademacher probe where the input is
small, else within 4 standard errors); parameter gradients to autograd's gradient of the same
random quantity built from the full Jacobian; the finite difference to its stated bias."""

import itertools
import math

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

from robustbench_jr.data import bundled_mnist
from robustbench_jr.errors import ConfigError
from robustbench_jr.jacobian import (
    AUTO_ESTIMATOR, Replay, build_regularizer, jacobian_rows, jacobian_sq_norms, jr_fd_per_sample,
    jr_jvp_per_sample, jr_projection_per_sample, jvp_forward, rademacher, resolve_estimator, unit_directions,
)
from robustbench_jr.models import PixelSpaceModel, load_model, make_model

C = 3


def smooth_mlp(d=4, seed=0):
    """A tanh MLP on a [1, 1, d] input (three times differentiable everywhere), float64."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(d, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, C))
    return PixelSpaceModel(net, "none", (1, 1, d), C).double().eval()


def all_signs(d):
    return torch.tensor(list(itertools.product((-1.0, 1.0), repeat=d)), dtype=torch.float64)


@pytest.fixture(scope="module")
def lenet64():
    torch.manual_seed(0)
    return make_model("lenet", 10, "mnist").double()


def _exact(model, x, scale=None):
    xl = x.detach().clone().requires_grad_(True)
    return jacobian_sq_norms(xl, model(xl), scale).detach()


# --- unbiasedness -------------------------------------------------------------------------------

def test_forward_mode_probe_is_exactly_unbiased_over_all_rademacher_probes():
    """E_u ‖J u‖² over all 2^D sign vectors equals ‖J‖²_F exactly (E uuᵀ = I), for every sample."""
    model = smooth_mlp()
    x = torch.rand(5, 1, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    signs = all_signs(4)
    means = torch.stack([jvp_forward(model, x, u.view(1, 1, 1, 4).expand_as(x))[1].pow(2).sum(1)
                         for u in signs]).mean(0)
    assert torch.allclose(means, _exact(model, x), rtol=1e-12, atol=0)


def test_forward_mode_probe_equals_the_jacobian_applied_to_the_probe(lenet64):
    """J u from forward mode is the autograd Jacobian times u (LeNet': conv, tanh, max-pool,
    dropout in train mode with the same masks), with and without the linear-layer rewrite."""
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u = rademacher(x.shape, torch.Generator().manual_seed(1), x)
    for mode in (False, True):
        lenet64.train(mode)
        torch.manual_seed(3)
        logits, ju = jvp_forward(lenet64, x, u)
        torch.manual_seed(3)
        xl = x.clone().requires_grad_(True)
        z = lenet64(xl)
        rows = jacobian_rows(xl, z).flatten(2)
        assert torch.allclose(logits, z.detach(), rtol=0, atol=1e-14)
        assert torch.allclose(ju, torch.einsum("bcd,bd->bc", rows, u.flatten(1)), rtol=1e-11, atol=1e-13)
        torch.manual_seed(3)
        with fwAD.dual_level():  # PyTorch's own formulas (with the zero weight tangents)
            _, ref = fwAD.unpack_dual(lenet64(fwAD.make_dual(x, u)))
        assert torch.allclose(ju, ref, rtol=1e-12, atol=1e-14)
    lenet64.eval()


def test_linear_layer_rewrite_keeps_every_call_form():
    """Keyword bias, no bias, grouped and strided convolutions, 1-d and 3-d: same J u as PyTorch's
    forward mode."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.w1 = nn.Parameter(torch.randn(4, 2, 3, 3, dtype=torch.float64))
            self.w2 = nn.Parameter(torch.randn(4, 2, 1, 1, dtype=torch.float64))
            self.b2 = nn.Parameter(torch.randn(4, dtype=torch.float64))
            self.w3 = nn.Parameter(torch.randn(3, 4, 2, dtype=torch.float64))
            self.w4 = nn.Parameter(torch.randn(2, 3, 1, 1, 1, dtype=torch.float64))
            self.lin = nn.Linear(8, C).double()

        def forward(self, x):
            h = torch.tanh(F.conv2d(x, self.w1, None, 2, 1))
            h = F.conv2d(h, self.w2, bias=self.b2, groups=2)
            h = torch.tanh(F.conv1d(h.flatten(2), self.w3, stride=2))
            h = F.conv3d(h.unsqueeze(2).unsqueeze(2), self.w4).flatten(1)
            return F.linear(h, self.lin.weight, bias=self.lin.bias)

    torch.manual_seed(0)
    net = Net()
    x = torch.rand(2, 2, 6, 6, dtype=torch.float64)
    u = torch.randn_like(x)
    _, ju = jvp_forward(net, x, u)
    with fwAD.dual_level():
        _, ref = fwAD.unpack_dual(net(fwAD.make_dual(x, u)))
    assert torch.allclose(ju, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("estimator", ["vjp", "jvp"])
def test_estimator_means_inside_confidence_interval_on_lenet(lenet64, estimator):
    """One MNIST-like input repeated n times (eval mode: the copies are independent draws of
    the estimator): the mean lies within 4 standard errors of the exact ‖J(x)‖²_F, pixel and
    normalised space."""
    n = 1000
    x1 = torch.rand(1, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    x = x1.expand(n, 1, 28, 28).contiguous()
    lenet64.eval()
    for space in ("pixel", "normalized"):
        scale = lenet64.input_scale if space == "normalized" else None
        exact = float(_exact(lenet64, x1, scale))
        reg = build_regularizer("jr", 1.0, estimator=estimator, space=space)
        xl = x.clone().requires_grad_(True)
        per = reg.per_sample(lenet64, xl, None, lenet64(xl), torch.Generator().manual_seed(7)).detach()
        mean, se = float(per.mean()), float(per.std()) / math.sqrt(n)
        assert abs(mean - exact) < 4 * se, (space, mean, exact, se)


def test_forward_mode_variance_is_the_rademacher_formula():
    """var ‖J u‖² = 2(‖JᵀJ‖²_F − Σ_i (JᵀJ)²_ii) for Rademacher u (linear model, known J = W)."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 20, generator=g, dtype=torch.float64)
    lin = nn.Linear(20, 6).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    model = PixelSpaceModel(nn.Sequential(nn.Flatten(), lin), "none", (1, 4, 5), 6).double()
    n = 20000
    x = torch.rand(n, 1, 4, 5, dtype=torch.float64, generator=g)
    _, per = jr_jvp_per_sample(model, x, 1, torch.Generator().manual_seed(2))
    A = W.T @ W
    theory = 2 * (A.pow(2).sum() - A.diagonal().pow(2).sum())
    m4 = (per - per.mean()).pow(4).mean()
    se = torch.sqrt((m4 - per.var() ** 2) / n)
    assert abs(float(per.var() - theory)) < 4 * float(se)
    assert abs(float(per.mean()) - float(W.pow(2).sum())) < 4 * float(per.std()) / math.sqrt(n)
    # n_proj probes: variance divided by n_proj
    _, per4 = jr_jvp_per_sample(model, x[:6000], 4, torch.Generator().manual_seed(3))
    assert float(per[:6000].var() / per4.var()) == pytest.approx(4.0, rel=0.15)


# --- finite difference: exact on linear models, bias O(h²) on smooth ones, stated failure on max-pool ties ---

def test_finite_difference_is_exact_for_a_linear_model_and_matches_jvp():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(6, 20, generator=g, dtype=torch.float64)
    lin = nn.Linear(20, 6).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    model = PixelSpaceModel(nn.Sequential(nn.Flatten(), lin), "mnist", (1, 4, 5), 6).double()
    x = torch.rand(8, 1, 4, 5, dtype=torch.float64, generator=g)
    for space in ("pixel", "normalized"):
        a = build_regularizer("jr", 1.0, estimator="fd", space=space)
        b = build_regularizer("jr", 1.0, estimator="jvp", space=space)
        fa = a.penalized_forward(model, x, None, torch.Generator().manual_seed(4))[1]
        fb = b.penalized_forward(model, x, None, torch.Generator().manual_seed(4))[1]
        assert float(fa.value) == pytest.approx(float(fb.value), rel=1e-9)
        ga = torch.autograd.grad(fa.loss, lin.weight)[0]
        gb = torch.autograd.grad(fb.loss, lin.weight)[0]
        assert torch.allclose(ga, gb, rtol=1e-8, atol=1e-10)


def _phi_derivatives(model, x, u, ts):
    """max over t in ts of ‖d²/dt² f(x + t u)‖ and ‖d³/dt³ f(x + t u)‖ (per sample, [B])."""
    f = lambda z: model(z)  # noqa: E731
    d1 = lambda z: torch.func.jvp(f, (z,), (u,))[1]  # noqa: E731
    d2 = lambda z: torch.func.jvp(d1, (z,), (u,))[1]  # noqa: E731
    d3 = lambda z: torch.func.jvp(d2, (z,), (u,))[1]  # noqa: E731
    m2 = torch.stack([d2(x + t * u).norm(dim=1) for t in ts]).amax(0)
    m3 = torch.stack([d3(x + t * u).norm(dim=1) for t in ts]).amax(0)
    return m2, m3


def test_finite_difference_bias_is_second_order_and_within_the_stated_bound():
    """Over all 2^D probes of a smooth MLP: the mean error is O(h²) (halving h quarters it; the
    O(h) term cancels between u and −u) while single probes err by O(h); and
    |E fd − ‖J‖²_F| ≤ h²(M₂²/4 + ‖J‖_F M₃/3) + h³M₂M₃/6 + h⁴M₃²/36 (core's docstring)."""
    model = smooth_mlp(seed=2)
    x = torch.rand(4, 1, 1, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    exact = _exact(model, x)
    signs = all_signs(4)
    with torch.no_grad():
        z = model(x)

    def errors(h):
        per = torch.stack([(model(x + h * u.view(1, 1, 1, 4)) - z).pow(2).sum(1) / h ** 2 for u in signs])
        ju = torch.stack([jvp_forward(model, x, u.view(1, 1, 1, 4).expand_as(x))[1].pow(2).sum(1) for u in signs])
        return (per.mean(0) - exact), (per - ju).abs().mean(0)

    bias1, probe1 = errors(1e-2)
    bias2, probe2 = errors(5e-3)
    assert torch.allclose(bias1 / bias2, torch.full_like(bias1, 4.0), rtol=0.02)
    assert torch.allclose(probe1 / probe2, torch.full_like(probe1, 2.0), rtol=0.02)
    h = 1e-2
    xs = x.repeat(len(signs), 1, 1, 1)  # every sample with every probe
    us = signs.repeat_interleave(len(x), 0).view_as(xs)
    m2, m3 = _phi_derivatives(model, xs, us, torch.linspace(0, h, 6, dtype=torch.float64))
    m2, m3 = m2.view(len(signs), -1).amax(0), m3.view(len(signs), -1).amax(0)
    bound = h ** 2 * (m2 ** 2 / 4 + exact.sqrt() * m3 / 3) + h ** 3 * m2 * m3 / 6 + h ** 4 * m3 ** 2 / 36
    assert (bias1.abs() <= bound).all(), (bias1, bound)


def test_finite_difference_parameter_gradient_converges_to_autograds_on_smooth_models():
    """The fd penalty's parameter gradient differs from the jvp one (same probes) by O(h)."""
    model = smooth_mlp(d=6, seed=4)
    x = torch.rand(16, 1, 1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    params = list(model.parameters())

    def grads(estimator, h=1e-3):
        reg = build_regularizer("jr", 1.0, estimator=estimator, fd_step=h)
        out = reg.penalized_forward(model, x, None, torch.Generator().manual_seed(6))[1]
        return torch.cat([g.flatten() for g in torch.autograd.grad(out.loss, params[:-1])])

    ref = grads("jvp")
    e1 = (grads("fd", 1e-3) - ref).norm() / ref.norm()
    e2 = (grads("fd", 1e-4) - ref).norm() / ref.norm()
    assert float(e1) < 1e-2 and float(e1 / e2) == pytest.approx(10, rel=0.1)
    # the last layer's bias cancels in f(x + hu) − f(x): no gradient, as for ‖J u‖²
    out = build_regularizer("jr", 1.0, estimator="fd").penalized_forward(model, x, None, None)[1]
    assert float(torch.autograd.grad(out.loss, params[-1])[0].abs().max()) == 0


def test_finite_difference_does_not_converge_on_max_pool_ties():
    """The documented failure: on LeNet' over real MNIST digits (max-pool ties on the constant
    background) the difference quotient's mean stays ≥ 10 % above the exact ‖J‖²_F as h → 0,
    while the forward-mode probe's mean is within its confidence interval."""
    model = load_model("lenet-mnist").double().eval()
    x = bundled_mnist().images[:20].double().div(255)
    exact = _exact(model, x)
    reps = 16
    xr = x.repeat(reps, 1, 1, 1)
    _, jv = jr_jvp_per_sample(model, xr, 1, torch.Generator().manual_seed(1))
    for h in (1e-3, 1e-5):
        _, fd = jr_fd_per_sample(model, xr, 1, torch.Generator().manual_seed(1), step=h)
        assert float(fd.mean()) > 1.1 * float(exact.mean())
    se = float(jv.view(reps, -1).mean(1).std()) / math.sqrt(reps)
    assert abs(float(jv.mean()) - float(exact.mean())) < 4 * se


# --- parameter gradients equal autograd's gradient of the same random quantity ---------------

@pytest.mark.parametrize("space", ["pixel", "normalized"])
@pytest.mark.parametrize("estimator", ["vjp", "jvp"])
def test_parameter_gradient_equals_autograd_of_the_same_draws(lenet64, estimator, space):
    """Train mode (dropout): penalized_forward's penalty and its parameter gradient equal
    C‖v̂ᵀJ‖² (vjp) or ‖J u‖² (jvp) built from the full autograd Jacobian with the same dropout
    masks and the same draws from the generator."""
    lenet64.train()
    x = torch.rand(5, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 10, (5,))
    params = list(lenet64.parameters())
    reg = build_regularizer("jr", 0.3, estimator=estimator, space=space)
    torch.manual_seed(11)
    logits, out = reg.penalized_forward(lenet64, x, y, torch.Generator().manual_seed(12))
    got = torch.autograd.grad(out.loss, params, allow_unused=True)

    torch.manual_seed(11)
    xl = x.clone().requires_grad_(True)
    z = lenet64(xl)
    rows = jacobian_rows(xl, z, create_graph=True).flatten(2)
    scale = lenet64.input_scale.flatten() if space == "normalized" else torch.ones((), dtype=x.dtype)
    gen = torch.Generator().manual_seed(12)
    if estimator == "vjp":
        v = unit_directions(5, 10, gen, z)
        value = (10 * (torch.einsum("bc,bcd->bd", v, rows) * scale).pow(2).sum(1)).mean()
    else:
        u = rademacher(x.shape, gen, x).flatten(1) * scale
        value = torch.einsum("bcd,bd->bc", rows, u).pow(2).sum(1).mean()
    ref = torch.autograd.grad(0.15 * value, params, allow_unused=True)
    assert torch.allclose(logits.detach(), z.detach(), rtol=0, atol=1e-14)
    assert float(out.value) == pytest.approx(float(value), rel=1e-12)
    for a, b in zip(got, ref):
        if b is None:
            assert a is None or float(a.abs().max()) == 0
        else:
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
    lenet64.eval()


def test_given_logits_auto_is_algorithm_1_and_explicit_estimators_run_their_own_forward(lenet64):
    lenet64.eval()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    xl = x.clone().requires_grad_(True)
    logits = lenet64(xl)
    auto = build_regularizer("jr", 1.0)(lenet64, xl, None, logits, generator=torch.Generator().manual_seed(1))
    alg1 = jr_projection_per_sample(xl, logits, 1, torch.Generator().manual_seed(1)).mean()
    assert float(auto.value) == pytest.approx(float(alg1), rel=1e-12)
    for estimator, fn in (("jvp", jr_jvp_per_sample), ("fd", jr_fd_per_sample)):
        reg = build_regularizer("jr", 1.0, estimator=estimator)
        assert not reg.needs_input_grad
        out = reg(lenet64, x, None, lenet64(x), generator=torch.Generator().manual_seed(1))  # x without grad
        assert float(out.value) == pytest.approx(float(fn(lenet64, x, 1, torch.Generator().manual_seed(1))[1].mean()),
                                                 rel=1e-12)


# --- auto, replay, options ----------------------------------------------------------------------

def test_auto_is_per_device_type():
    assert AUTO_ESTIMATOR == {("cpu", 1): "jvp"}
    assert resolve_estimator("auto", "cpu") == "jvp" == resolve_estimator("auto", torch.device("cpu"), 1)
    assert resolve_estimator("auto", "cpu", 3) == "vjp"  # measured: further probes are cheaper backward
    assert resolve_estimator("auto", torch.device("cuda", 0)) == "vjp"  # not measured: Algorithm 1
    assert resolve_estimator("auto", "meta") == "vjp"
    for name in ("vjp", "jvp", "fd"):
        assert resolve_estimator(name, "cpu") == name == resolve_estimator(name, "cuda", 3)
    with pytest.raises(ConfigError, match="auto, vjp, jvp, fd"):
        resolve_estimator("exact", "cpu")
    with pytest.raises(ConfigError, match="one of auto, vjp, jvp, fd"):
        build_regularizer("jr", 0.1, estimator="forward")
    with pytest.raises(ConfigError, match="fd_step must be a number > 0"):
        build_regularizer("jr", 0.1, fd_step=0.0)


class _NoForwardMode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 2

    @staticmethod
    def backward(ctx, g):
        return g * 2


def test_auto_falls_back_to_algorithm_1_without_forward_mode_and_leaves_no_trace():
    """A model with an operator that has no forward-mode formula: 'auto' warns once, undoes the
    failed pass (random state, generator, batch-norm statistics) and gives exactly the 'vjp' step."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(6)
            self.lin = nn.Linear(6, C)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.lin(_NoForwardMode.apply(self.drop(self.bn(x.flatten(1)))))

    def run(estimator):
        torch.manual_seed(0)
        net = PixelSpaceModel(Net(), "none", (1, 1, 6), C).double().train()
        x = torch.rand(8, 1, 1, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        reg = build_regularizer("jr", 1.0, estimator=estimator)
        outs = []
        for _ in range(2):
            torch.manual_seed(5)
            logits, out = reg.penalized_forward(net, x, None, torch.Generator().manual_seed(2))
            outs.append((logits.detach(), float(out.value), out.input_grad, torch.rand(1)))
        return outs, net.net.bn.running_mean.clone(), net.net.bn.num_batches_tracked.item()

    with pytest.warns(UserWarning, match="no forward-mode derivative") as rec:
        auto = run("auto")
    assert len(rec) == 1  # the second step knows
    vjp = run("vjp")
    for (la, va, ia, ra), (lv, vv, iv, rv) in zip(auto[0], vjp[0]):
        assert torch.equal(la, lv) and va == vv and ia and iv and torch.equal(ra, rv)
    assert torch.equal(auto[1], vjp[1]) and auto[2] == vjp[2] == 2
    with pytest.raises(NotImplementedError):
        run("jvp")


def test_replay_repeats_dropout_and_restores_batch_norm_and_random_state():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Dropout(0.5), nn.Linear(7, 2)).double().train()
    x = torch.rand(6, 5, dtype=torch.float64)
    torch.manual_seed(3)
    replay = Replay(net, x.device)
    first = net(x)
    stats = (net[1].running_mean.clone(), net[1].running_var.clone(), int(net[1].num_batches_tracked))
    after = torch.get_rng_state()
    again = replay(lambda: net(x))
    assert torch.equal(first, again)  # same dropout masks, same batch statistics
    assert torch.equal(net[1].running_mean, stats[0]) and torch.equal(net[1].running_var, stats[1])
    assert int(net[1].num_batches_tracked) == stats[2]
    assert torch.equal(torch.get_rng_state(), after)
    shifted = replay(lambda: net(x + 1e-3))
    ((shifted - first).pow(2).sum() + first.sum()).backward()  # restoring the statistics broke no graph
    # the fd and jvp (n_proj > 1) estimators leave the model as one plain forward does
    for fn in (lambda m, z: jr_fd_per_sample(m, z, 2, torch.Generator().manual_seed(1)),
               lambda m, z: jr_jvp_per_sample(m, z, 3, torch.Generator().manual_seed(1))):
        torch.manual_seed(0)
        a = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Dropout(0.5), nn.Linear(7, 2)).double().train()
        torch.manual_seed(0)
        b = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Dropout(0.5), nn.Linear(7, 2)).double().train()
        torch.manual_seed(9)
        la, _ = fn(a, x)
        ra = torch.rand(3)
        torch.manual_seed(9)
        lb = b(x)
        rb = torch.rand(3)
        assert torch.equal(la.detach(), lb.detach()) and torch.equal(ra, rb)
        assert torch.equal(a[1].running_mean, b[1].running_mean) and torch.equal(a[1].running_var, b[1].running_var)


def test_batch_norm_model_in_train_mode_works_with_every_estimator():
    """Batch norm in train mode (ReLU, residual add): every estimator's penalty back-propagates to
    the first layer, and jvp/fd keep the running statistics of one forward pass."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.bn = nn.BatchNorm2d(4)
            self.lin = nn.Linear(4 * 4 * 4, 10)

        def forward(self, x):
            h = self.conv(x)
            h = torch.relu(self.bn(h)) + h
            return self.lin(F.max_pool2d(h, 2).flatten(1))

    x = torch.rand(6, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plain = PixelSpaceModel(Net(), "cifar", (3, 8, 8), 10).double().train()
    plain(x)
    for estimator in ("vjp", "jvp", "fd"):
        torch.manual_seed(0)
        model = PixelSpaceModel(Net(), "cifar", (3, 8, 8), 10).double().train()
        reg = build_regularizer("jr", 1.0, estimator=estimator, n_proj=2)
        logits, out = reg.penalized_forward(model, x, None, torch.Generator().manual_seed(2))
        (grad,) = torch.autograd.grad(out.loss, [model.net.conv.weight])
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
        assert torch.allclose(model.net.bn.running_mean, plain.net.bn.running_mean, rtol=0, atol=1e-15)
        assert int(model.net.bn.num_batches_tracked) == 1
