"""Varga et al. and Jakubovitz–Giryes regularizers: known answers, options, batch independence."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustbench_jr.errors import ConfigError, InputError
from robustbench_jr.jacobian import REGULARIZERS, build_regularizer, jacobian_rows
from robustbench_jr.models import PixelSpaceModel, make_model

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]
ALL = sorted(REGULARIZERS)
RANDOM = {"jr", "spectreg", "randomonehot"}
DETERMINISTIC = sorted(set(ALL) - RANDOM - {"none"})
NEW = ["datagrad", "spectreg", "frobreg", "jacreg", "onehot", "randomonehot", "input-grad", "cross-lipschitz"]


@pytest.fixture(scope="module")
def lenet64():
    torch.manual_seed(0)
    return make_model("lenet", 10, "mnist").double().eval()


def batch(n=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 28, 28, generator=g, dtype=dtype).requires_grad_(True)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def per_sample(name, model, x, y, seed=0, **opts):
    reg = build_regularizer(name, 1.0, **opts)
    return reg.per_sample(model, x, y, model(x), torch.Generator().manual_seed(seed)).detach()


def test_all_names_registered():
    assert set(NEW) | {"none", "jr", "jr-exact"} == set(ALL)


def test_datagrad_equals_varga_claim2(lenet64):
    """Varga Claim 2: ‖∂L_CE/∂x‖² = ‖J_gᵀ(softmax(z) − y)‖², per sample."""
    x, y = batch()
    logits = lenet64(x)
    J = jacobian_rows(x, logits).flatten(2)  # [B, C, D]
    w = torch.softmax(logits, 1).detach() - F.one_hot(y, 10).double()
    expected = torch.einsum("bc,bcd->bd", w, J).pow(2).sum(1)
    for name in ("datagrad", "input-grad"):
        got = per_sample(name, lenet64, x, y)
        assert torch.allclose(got, expected, rtol=1e-10, atol=0)
    out = build_regularizer("datagrad", 0.7)(lenet64, x, y, lenet64(x))
    assert float(out.value) == pytest.approx(float(expected.mean()), rel=1e-10)
    assert float(out.loss.detach()) == pytest.approx(0.7 * float(expected.mean()), rel=1e-10)  # λ, not λ/2
    # soft labels: Claim 2 holds for any target that sums to one
    q = torch.softmax(torch.randn(6, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4)), 1)
    expected_q = torch.einsum("bc,bcd->bd", torch.softmax(logits, 1).detach() - q, J).pow(2).sum(1)
    assert torch.allclose(per_sample("datagrad", lenet64, x, q), expected_q, rtol=1e-10)


def test_exact_variants_against_the_full_jacobian(lenet64):
    x, y = batch()
    logits = lenet64(x)
    J = jacobian_rows(x, logits).flatten(2)
    p = torch.softmax(logits, 1).detach()
    frob = J.pow(2).sum((1, 2))
    Jf = (torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)) @ J  # ∂softmax/∂x
    brute_cl = torch.stack([
        sum((J[a, k] - J[a, l]).pow(2).sum() for k in range(10) for l in range(10)) for a in range(len(x))])
    for method in ("loop", "batched"):
        assert torch.allclose(per_sample("frobreg", lenet64, x, y, method=method), frob, rtol=1e-10)
        assert torch.allclose(per_sample("jr-exact", lenet64, x, y, method=method), frob, rtol=1e-10)
        assert torch.allclose(per_sample("jacreg", lenet64, x, y, method=method), Jf.pow(2).sum((1, 2)), rtol=1e-10)
        assert torch.allclose(per_sample("cross-lipschitz", lenet64, x, y, method=method), brute_cl, rtol=1e-9)
    onehot = J[torch.arange(len(x)), y].pow(2).sum(1)
    assert torch.allclose(per_sample("onehot", lenet64, x, y), onehot, rtol=1e-10)
    # weights: frobreg is λ·‖J‖²_F, jr-exact (Hoffman) λ/2·‖J‖²_F
    f = build_regularizer("frobreg", 0.2)(lenet64, x, y, lenet64(x))
    e = build_regularizer("jr-exact", 0.2)(lenet64, x, y, lenet64(x))
    assert float(f.loss.detach()) == pytest.approx(2 * float(e.loss.detach()), rel=1e-10)


def test_random_projections_use_the_generator(lenet64):
    x, y = batch()
    logits = lenet64(x)
    J = jacobian_rows(x, logits).flatten(2)
    # RandomOneHot: the class k comes from the generator (one draw of B integers per projection)
    k = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(11))
    expected = 10 * J[torch.arange(len(x)), k].pow(2).sum(1)
    assert torch.allclose(per_sample("randomonehot", lenet64, x, y, seed=11), expected, rtol=1e-10)
    # SpectReg: r ~ N(0, I) per sample, or one r for the batch (Varga Fig. 1)
    r = torch.randn(len(x), 10, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    assert torch.allclose(per_sample("spectreg", lenet64, x, y, seed=12),
                          torch.einsum("bc,bcd->bd", r, J).pow(2).sum(1), rtol=1e-10)
    r1 = torch.randn(1, 10, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    assert torch.allclose(per_sample("spectreg", lenet64, x, y, seed=12, shared=True),
                          torch.einsum("c,bcd->bd", r1[0], J).pow(2).sum(1), rtol=1e-10)


@pytest.mark.parametrize("name", ["spectreg", "randomonehot"])
def test_unbiased_estimators_of_frobenius_norm(name):
    """Varga Claim 1: E‖rJ‖² = ‖J‖²_F for r with identity covariance; CI from the sample std."""
    W = torch.randn(6, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lin = nn.Linear(20, 6).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    model = PixelSpaceModel(nn.Sequential(nn.Flatten(), lin), "none", (1, 4, 5), 6).double()
    n = 4000
    x = torch.rand(n, 1, 4, 5, dtype=torch.float64).requires_grad_(True)
    per = build_regularizer(name, 1.0).per_sample(model, x, None, model(x), torch.Generator().manual_seed(2))
    exact = float(W.pow(2).sum())
    per = per.detach()
    assert abs(float(per.mean()) - exact) < 4 * float(per.std()) / math.sqrt(n)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_eval_mode_results_do_not_depend_on_the_batch(lenet64, name):
    x, y = batch(5)
    full = per_sample(name, lenet64, x, y)
    perm = torch.tensor([3, 0, 4, 1, 2])
    xp = x.detach()[perm].requires_grad_(True)
    assert torch.allclose(per_sample(name, lenet64, xp, y[perm]), full[perm], rtol=1e-10, atol=1e-300)
    for i in (0, 3):
        xi = x.detach()[i:i + 1].requires_grad_(True)
        assert torch.allclose(per_sample(name, lenet64, xi, y[i:i + 1]), full[i:i + 1], rtol=1e-10, atol=1e-300)
    # the batch value is the per-sample mean
    out = build_regularizer(name, 1.0)(lenet64, x, y, lenet64(x))
    if name != "jr-exact":
        assert float(out.value) == pytest.approx(float(full.mean()), rel=1e-10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ALL)
def test_training_step_works_on_device_and_dtype(name, dtype, device):
    torch.manual_seed(0)
    model = make_model("lenet", 10, "mnist").to(device, dtype).train()
    x = torch.rand(4, 1, 28, 28, dtype=dtype, device=device).requires_grad_(True)
    y = torch.randint(0, 10, (4,), device=device)
    g = torch.Generator(device=device).manual_seed(0)
    logits = model(x)
    out = build_regularizer(name, 0.1)(model, x, y, logits, generator=g)
    assert out.value.dtype == dtype and out.value.device.type == device and out.value.dim() == 0
    assert not out.value.requires_grad and torch.isfinite(out.value)
    (F.cross_entropy(logits, y) + out.loss).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    if name != "none":
        # the penalty itself reaches the weights
        model.zero_grad()
        x2 = x.detach().requires_grad_(True)
        build_regularizer(name, 1.0)(model, x2, y, model(x2), generator=g).loss.backward()
        assert model.net.features[0].weight.grad.abs().sum() > 0


def test_cpu_generator_serves_other_devices_and_dtype_follows_logits():
    from robustbench_jr.jacobian.core import _randn, unit_directions

    like = torch.zeros(2, 3, dtype=torch.float64)
    v = unit_directions(2, 3, torch.Generator().manual_seed(0), like)
    assert v.dtype == torch.float64 and torch.allclose(v.norm(dim=1), torch.ones(2, dtype=torch.float64))
    assert _randn((2,), torch.Generator().manual_seed(0), like.float()).dtype == torch.float32


def _small_net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)).double()


@pytest.mark.parametrize("name", [n for n in ALL if n != "none"])
def test_normalized_space_is_pixel_jacobian_times_std(name):
    """space='normalized' on a PixelSpaceModel equals the pixel-space value of the bare net
    on the normalised input: J_norm = J_pixel · std (per channel, ImageNet stats)."""
    net = _small_net()
    model = PixelSpaceModel(net, "imagenet", (3, 6, 6), 5).double().eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 6, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    y = torch.randint(0, 5, (4,), generator=g)
    xn = ((x.detach() - model.mean) / model.std).requires_grad_(True)
    a = build_regularizer(name, 1.0, space="normalized")(model, x, y, model(x), generator=torch.Generator().manual_seed(1))
    b = build_regularizer(name, 1.0, space="pixel")(net, xn, y, net(xn), generator=torch.Generator().manual_seed(1))
    assert float(a.value) == pytest.approx(float(b.value), rel=1e-10)
    pix = build_regularizer(name, 1.0)(model, x, y, model(x), generator=torch.Generator().manual_seed(1))
    assert float(pix.value) != pytest.approx(float(a.value), rel=1e-3)


def test_normalized_space_linear_known_answer():
    W = torch.randn(6, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lin = nn.Linear(20, 6).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    model = PixelSpaceModel(nn.Sequential(nn.Flatten(), lin), "mnist", (1, 4, 5), 6).double()
    x = torch.rand(3, 1, 4, 5, dtype=torch.float64).requires_grad_(True)
    std = float(model.std)  # 0.3081 (stored as float32 by normalization_stats)
    for name in ("jr-exact", "frobreg"):
        norm = build_regularizer(name, 1.0, space="normalized")(model, x, None, model(x))
        pix = build_regularizer(name, 1.0, space="pixel")(model, x, None, model(x))
        assert float(norm.value) == pytest.approx(float(W.pow(2).sum()), rel=1e-12)
        assert float(pix.value) == pytest.approx(float(W.pow(2).sum()) / std ** 2, rel=1e-12)
    with pytest.raises(ConfigError, match="input_scale"):
        build_regularizer("frobreg", 1.0, space="normalized")(model.net, x, None, model.net(x))


@pytest.mark.parametrize("name", ALL)
def test_bad_options_raise_config_error_listing_valid_values(name):
    for lam in (-0.1, float("nan"), float("inf"), "x", None):
        with pytest.raises(ConfigError, match="λ must be"):
            build_regularizer(name, lam)
    with pytest.raises(ConfigError, match="unknown option.*valid: "):
        build_regularizer(name, 0.1, bogus=1)
    if "n_proj" in REGULARIZERS[name].options:
        for n in (0, -1, 1.5, True):
            with pytest.raises(ConfigError, match="n_proj must be an integer ≥ 1"):
                build_regularizer(name, 0.1, n_proj=n)
    if "space" in REGULARIZERS[name].options:
        with pytest.raises(ConfigError, match="'pixel' or 'normalized'"):
            build_regularizer(name, 0.1, space="raw")
    if "method" in REGULARIZERS[name].options:
        with pytest.raises(ConfigError, match="auto, batched, loop"):
            build_regularizer(name, 0.1, method="fast")


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_regularizer("jacobian", 0.1)
    for name in ALL:
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="shared must be true or false"):
        build_regularizer("spectreg", 0.1, shared="yes")
    with pytest.raises(ConfigError, match="'hoffman' or 'jg'"):
        build_regularizer("jr-exact", 0.1, form="sokolic")


def test_bad_inputs_raise_input_error(lenet64):
    x, y = batch(3)
    with pytest.raises(InputError, match="requires_grad"):
        xd = x.detach()
        build_regularizer("frobreg", 0.1)(lenet64, xd, y, lenet64(xd))
    with pytest.raises(InputError, match="class indices"):
        build_regularizer("onehot", 0.1)(lenet64, x, y.double(), lenet64(x))
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        build_regularizer("onehot", 0.1)(lenet64, x, y + 10, lenet64(x))
    with pytest.raises(InputError, match="needs the labels"):
        build_regularizer("datagrad", 0.1)(lenet64, x, None, lenet64(x))
