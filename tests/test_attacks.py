"""Fast tests of the six fooling-distance searches (robustbench_jr.attacks).

Analytic cases use affine classifiers whose minimal L2 distance is known; the rest
use tiny random models so the whole file runs in well under a minute on one CPU core.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from robustbench_jr.attacks import SEARCHES, Search, SearchResult, build_search, verify_adversarials
from robustbench_jr.attacks.base import Found
from robustbench_jr.runtime import derive_seed
from robustbench_jr.attacks.jsma import best_pairs
from robustbench_jr.errors import ConfigError, InputError
from toy_models import Affine, Counting, TinyMLP, saturated_box

NAMES = ["noise", "fgsm", "pgd", "cw", "deepfool", "jsma", "ddn"]

#: quick settings per search for tests on random models (defaults are used where they are cheap)
FAST = {
    "noise": {},
    "fgsm": {},
    "pgd": {"max_steps": 60},
    "cw": {"max_iterations": 100, "binary_search_steps": 4, "abort_check_every": 20},
    "deepfool": {},
    "jsma": {"targets": 2, "gamma": 0.2},
    "ddn": {"steps": 40},
}


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------




class TinyConv3(nn.Module):
    """A small CIFAR-shaped (3×32×32) convnet."""

    def __init__(self, k=10, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.c = nn.Conv2d(3, 4, 5, stride=3)
        self.f = nn.Linear(4 * 10 * 10, k)

    def forward(self, x):
        return self.f(torch.relu(self.c(x)).flatten(1))




def affine_binary(n=4, side=8, seed=0, dist=(0.03, 0.15)):
    """A 2-logit affine model and n images near the middle of [0, 1] at known distances."""
    g = torch.Generator().manual_seed(seed)
    d = side * side
    w = torch.randn(d, generator=g, dtype=torch.float64)
    W = torch.stack([torch.zeros(d, dtype=torch.float64), w])
    x = 0.5 + 0.1 * (torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5)
    target = dist[0] + (dist[1] - dist[0]) * torch.rand(n, generator=g, dtype=torch.float64)
    sign = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0).double()
    # choose a common bias, then shift each x along w so that w·x + b = sign·target·|w|
    b = torch.tensor([0.0, 0.1], dtype=torch.float64)
    wn = w.norm()
    cur = x @ w + b[1]
    x = x + ((sign * target * wn - cur) / wn**2)[:, None] * w[None, :]
    y = (sign > 0).long()
    model = Affine(W, b)
    true = (x @ w + b[1]).abs() / wn
    return model, x.view(n, 1, side, side), y, true


def affine_multiclass(n=4, side=8, k=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    d = side * side
    W = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(k, generator=g, dtype=torch.float64)
    x = 0.5 + 0.04 * (torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5)
    model = Affine(W, b)
    with torch.no_grad():
        y = model(x).argmax(1)
    true = multiclass_distance(W, b, x, y)
    return model, x.view(n, 1, side, side), y, true


def multiclass_distance(W, b, x, y):
    """min_k |(w_k − w_y)ᵀx + (b_k − b_y)| / ‖w_k − w_y‖ (exact when the box is inactive)."""
    out = []
    for i in range(x.shape[0]):
        yi = int(y[i])
        ds = [((W[k] - W[yi]) @ x[i] + b[k] - b[yi]).abs() / (W[k] - W[yi]).norm()
              for k in range(W.shape[0]) if k != yi]
        out.append(torch.stack(ds).min())
    return torch.stack(out)


def mlp_data(n=8, seed=0, dtype=torch.float64):
    model = TinyMLP(seed=seed).to(dtype)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=dtype)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def run(name, model, x, y, seed=0, ids=None, **cfg):
    conf = dict(FAST[name])
    conf.update(cfg)
    return build_search(name, conf).run(model, x, y, seed=seed, sample_ids=ids)


# --------------------------------------------------------------------------------------
# analytic cases
# --------------------------------------------------------------------------------------
def test_affine_binary_box_is_inactive():
    model, x, y, true = affine_binary()
    w = model.W[1].detach()
    step = true[:, None] * w[None, :] / w.norm()
    moved = x.flatten(1) + step * torch.where(y == 1, -1.0, 1.0).double()[:, None]
    assert bool(((moved > 0) & (moved < 1)).all())
    assert bool((model(x).argmax(1) == y).all())


@pytest.mark.parametrize("name, config, bound", [
    # the papers' DeepFool: the boundary point times 1 + overshoot (0.02), plus the small
    # margin its last step takes to cross the boundary in float32
    ("deepfool", {}, 1.025),
    ("deepfool", {"refine": True}, 1.01),
    ("cw", {}, 1.01),
])
def test_affine_binary_within_one_percent(name, config, bound):
    model, x, y, true = affine_binary()
    r = build_search(name, config).run(model, x, y)
    assert bool(r.fooled.all())
    rel = r.l2 / true
    assert bool((rel >= 1 - 1e-6).all()), rel
    assert bool((rel <= bound).all()), rel


@pytest.mark.parametrize("name, config, bound", [
    # the papers' DeepFool: the boundary point times 1 + overshoot (0.02), plus the small
    # margin its last step takes to cross the boundary in float32
    ("deepfool", {}, 1.025),
    ("deepfool", {"refine": True}, 1.01),
    ("cw", {}, 1.01),
])
def test_affine_multiclass_within_one_percent(name, config, bound):
    model, x, y, true = affine_multiclass()
    r = build_search(name, config).run(model, x, y)
    assert bool(r.fooled.all())
    rel = r.l2 / true
    assert bool((rel >= 1 - 1e-6).all()), rel
    assert bool((rel <= bound).all()), rel


@pytest.mark.parametrize("case", ["binary", "multiclass"])
@pytest.mark.parametrize("name", NAMES)
def test_no_search_reports_below_true_minimum(name, case):
    model, x, y, true = affine_binary() if case == "binary" else affine_multiclass()
    r = run(name, model, x, y)
    fooled = r.fooled
    assert bool((r.l2[fooled] >= true[fooled] * (1 - 1e-6)).all()), (r.l2, true)
    assert bool(torch.isinf(r.l2[~fooled]).all())


def test_cw_moves_pixels_sitting_at_0_and_1():
    # a quarter of the pixels at exactly 0, a quarter at exactly 1, the rest at 0.5; the
    # closest boundary point moves every pixel by the same amount, inwards for the
    # saturated ones. With saturated pixels frozen (plain artanh, or a 1e-6 margin) CW
    # can only move the mid pixels and lands at 0.4·√2 ≈ 0.566 instead of 0.4.
    d, true_d = 64, 0.4
    model, xi = saturated_box(d, true_d)
    y = torch.tensor([0])
    r = build_search("cw").run(model, xi, y)
    assert bool(r.fooled.all())
    assert true_d * (1 - 1e-6) <= float(r.l2[0]) <= true_d * 1.02
    moved = r.adversarial.flatten(1)[0]
    assert bool((moved[: d // 4] > 0.03).all()) and bool((moved[d // 4: d // 2] < 0.97).all())


# --------------------------------------------------------------------------------------
# batching, seeding, masks
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_batch_size_and_composition_independence(name):
    model, x, y = mlp_data(n=8)
    ids = torch.arange(100, 108)
    full = run(name, model, x, y, seed=3, ids=ids)
    assert int(full.fooled.sum()) >= 4, "test model too robust to exercise the search"
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    shuffled = run(name, model, x[perm], y[perm], seed=3, ids=ids[perm])
    singles = [run(name, model, x[i:i + 1], y[i:i + 1], seed=3, ids=ids[i:i + 1]) for i in range(8)]
    one = SearchResult.concat(singles)
    inv = torch.argsort(perm)
    for other in (one, shuffled.select(inv)):
        assert torch.equal(other.fooled, full.fooled)
        assert torch.allclose(other.l2, full.l2, rtol=1e-6, atol=0, equal_nan=True)
        assert torch.equal(other.l0, full.l0)
        assert torch.equal(other.adv_pred, full.adv_pred)
        assert torch.equal(other.n_forward, full.n_forward)
        assert torch.equal(other.n_grad, full.n_grad)


def test_noise_same_seed_same_result_other_seed_differs():
    model, x, y = mlp_data(n=6)
    a = run("noise", model, x, y, seed=7)
    b = run("noise", model, x, y, seed=7)
    c = run("noise", model, x, y, seed=8)
    assert torch.equal(a.l2, b.l2) and torch.equal(a.adversarial.nan_to_num(-1), b.adversarial.nan_to_num(-1))
    assert not torch.equal(a.l2, c.l2)


def test_noise_seed_is_an_integer_independent_of_global_rng():
    model, x, y = mlp_data(n=4)
    a = build_search("noise").run(model, x, y, seed=11, sample_ids=torch.arange(4))
    torch.rand(5)  # advance the global generator: must not matter
    b = build_search("noise").run(model, x, y, seed=11, sample_ids=torch.arange(4))
    assert torch.equal(a.l2, b.l2)
    c = build_search("noise").run(model, x, y, seed=12, sample_ids=torch.arange(4))
    assert not torch.equal(a.l2, c.l2)
    assert derive_seed(11, "noise", 3) != derive_seed(11, "noise", 4)


def test_noise_more_directions_never_worse():
    model, x, y = mlp_data(n=6)
    one = run("noise", model, x, y, seed=1)
    five = run("noise", model, x, y, seed=1, n_directions=5)
    assert bool((five.l2 <= one.l2 * (1 + 1e-12)).all())  # the first direction is the same draw


@pytest.mark.parametrize("name", NAMES)
def test_model_sees_only_counted_rows_and_eval_mode_restored(name):
    inner, x, y = mlp_data(n=8)
    inner.drop.p = 0.5
    model = Counting(inner)
    model.train()
    y = y.clone()
    y[0] = (y[0] + 1) % 10  # one clean-misclassified sample: no search effort
    r = run(name, model, x, y)
    assert model.training and inner.training and inner.drop.training
    assert model.rows == int(r.n_forward.sum())
    assert int(r.n_forward[0]) == 1 and int(r.n_grad[0]) == 0
    # per-sample masks: no forward pass is ever larger than the batch
    assert max(model.batches) <= 8


def test_finished_samples_stop_costing_compute():
    model, x, y = mlp_data(n=8)
    r = run("pgd", model, x, y, max_steps=200)
    fooled = r.fooled & (r.n_grad > 0)
    assert len(set(r.n_forward[fooled].tolist())) > 1  # samples stop at different steps
    assert bool((r.n_grad[fooled] == r.n_forward[fooled] - 3).all())  # clean + verify + final forward


def test_fgsm_uses_exactly_one_gradient_per_sample():
    model, x, y = mlp_data(n=8)
    y = y.clone()
    y[1] = (y[1] + 1) % 10
    r = run("fgsm", model, x, y)
    expect = torch.ones(8, dtype=torch.int64)
    expect[1] = 0
    assert torch.equal(r.n_grad, expect)


# --------------------------------------------------------------------------------------
# conventions: verification, clean-misclassified, failures, bounds
# --------------------------------------------------------------------------------------
def test_verify_adversarials_catches_planted_non_fooling_image():
    model, x, y = mlp_data(n=4)
    adv = x.clone()
    adv[2] = 0.5  # whatever it is, check the others are the clean images: not fooling
    claimed = torch.tensor([True, True, False, True])
    fooled = verify_adversarials(model, x, y, adv, claimed)
    assert fooled.dtype == torch.bool and fooled.shape == (4,)
    assert not bool(fooled[[0, 1, 3]].any())
    assert not bool(fooled[2])  # not claimed: not counted
    nan_adv = torch.full_like(x, float("nan"))
    assert not bool(verify_adversarials(model, x, y, nan_adv, torch.ones(4, dtype=torch.bool)).any())


class _LyingSearch(Search):
    """Claims the clean image fools the model."""

    name = "liar"

    from dataclasses import dataclass as _dc

    @_dc
    class Config:
        pass

    def _search(self, model, x, y, ids, generator):
        b = x.shape[0]
        z = torch.zeros(b, dtype=torch.int64)
        return Found(x.clone(), torch.ones(b, dtype=torch.bool), z, z)


def test_run_rejects_planted_adversarial_with_inf_and_nan():
    model, x, y = mlp_data(n=3)
    with pytest.warns(RuntimeWarning, match="did not fool"):
        r = _LyingSearch().run(model, x, y)
    assert not bool(r.fooled.any())
    assert bool(torch.isinf(r.l2).all() and torch.isinf(r.linf).all() and torch.isinf(r.l0).all())
    assert bool(torch.isnan(r.adversarial).all())
    assert bool((r.adv_pred == -1).all())


@pytest.mark.parametrize("name", NAMES)
def test_already_misclassified_is_distance_zero(name):
    model, x, y = mlp_data(n=4)
    y = (y + 1) % 10
    r = run(name, model, x, y)
    assert bool(r.fooled.all())
    assert bool((r.l2 == 0).all() and (r.linf == 0).all() and (r.l0 == 0).all())
    assert torch.equal(r.adversarial, x)
    assert torch.equal(r.adv_pred, r.clean_pred)
    assert bool((r.n_grad == 0).all() and (r.n_forward == 1).all())


class Constant(nn.Module):
    """Always predicts class 0, whatever the input (zero input gradient)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        z = torch.zeros(x.shape[0], 3, dtype=x.dtype) + 0.0 * x.flatten(1).sum(1, keepdim=True) * self.dummy
        z[:, 0] = 1.0
        return z


@pytest.mark.parametrize("name", NAMES)
def test_failure_is_inf_and_nan_never_clean_or_zero(name):
    model = Constant()
    x = torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(3, dtype=torch.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        r = run(name, model, x, y)
    assert not bool(r.fooled.any())
    for t in (r.l2, r.linf, r.l0):
        assert t.dtype == torch.float64 and bool(torch.isposinf(t).all())
    assert bool(torch.isnan(r.adversarial).all())
    assert bool((r.adv_pred == -1).all())


@pytest.mark.parametrize("name", NAMES)
def test_outputs_types_and_bounds(name):
    model, x, y = mlp_data(n=6, dtype=torch.float32)
    r = run(name, model, x, y)
    assert r.l2.dtype == r.linf.dtype == r.l0.dtype == torch.float64
    assert r.fooled.dtype == torch.bool
    assert r.adv_pred.dtype == r.n_forward.dtype == r.n_grad.dtype == torch.int64
    assert r.adversarial.shape == x.shape and r.adversarial.dtype == x.dtype
    adv = r.adversarial[r.fooled]
    assert bool(((adv >= 0) & (adv <= 1)).all())
    # distances are those of the returned (clipped) adversarial, which really fools
    d = (adv.double() - x[r.fooled].double()).flatten(1)
    assert torch.allclose(r.l2[r.fooled], d.norm(dim=1))
    assert torch.allclose(r.linf[r.fooled], d.abs().amax(1))
    assert torch.equal(r.l0[r.fooled], (d != 0).sum(1).double())
    with torch.no_grad():
        assert bool((model(adv).argmax(1) != y[r.fooled]).all())
    assert bool((r.adv_pred[r.fooled] != y[r.fooled]).all())
    assert bool(torch.isnan(r.adversarial[~r.fooled]).all())


def test_pgd_respects_saturation_box():
    model, x, y = mlp_data(n=8, dtype=torch.float32)
    r = run("pgd", model, x, y, saturation=8 / 255, max_steps=100)
    assert bool((r.linf[r.fooled] <= 8 / 255 + 1e-6).all())


def test_jsma_bounded_l0_and_chunking_matches_full_search():
    model, x, y = mlp_data(n=4, dtype=torch.float32)
    r = run("jsma", model, x, y, gamma=0.25)
    assert bool((r.l0[r.fooled] <= math.floor(0.25 * 64)).all())
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 50, generator=g), torch.randn(3, 50, generator=g)
    dom = torch.rand(3, 50, generator=g) > 0.3
    full = best_pairs(a, b, dom, chunk_elements=10**9)
    for chunk in (1, 7, 3 * 50 * 4):
        got = best_pairs(a, b, dom, chunk_elements=chunk)
        for u, v in zip(full, got):
            assert torch.equal(u, v)
    p, q, valid = full
    assert bool(valid.all()) and bool((p < q).all())
    assert bool(dom.gather(1, p[:, None]).all() and dom.gather(1, q[:, None]).all())


def test_jsma_runs_on_3x32x32_inputs():
    model = TinyConv3()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    r = build_search("jsma", {"targets": 1, "gamma": 0.02, "chunk_elements": 1 << 20}).run(model, x, y)
    assert r.l0.shape == (2,) and r.l2.shape == (2,)
    n = 3 * 32 * 32
    assert bool((r.l0[r.fooled] <= math.floor(0.02 * n)).all())
    assert bool((r.n_grad > 0).all())


# --------------------------------------------------------------------------------------
# registry, configs and bad inputs
# --------------------------------------------------------------------------------------
def test_registry_names():
    assert set(SEARCHES) == set(NAMES)
    for name, cls in SEARCHES.items():
        assert cls.name == name
        s = build_search(name)
        assert isinstance(s, Search) and isinstance(s.config, cls.Config)
        assert isinstance(s.config_dict(), dict)


def test_unknown_search_name_lists_valid_names():
    with pytest.raises(ConfigError) as e:
        build_search("deepfoool")
    msg = str(e.value)
    assert "deepfoool" in msg
    for name in NAMES:
        assert name in msg


def test_config_errors_and_overrides():
    with pytest.raises(ConfigError, match="valid keys"):
        build_search("pgd", {"stepsize": 0.1})
    with pytest.raises(ConfigError):
        build_search("cw", {"lr": -1})
    with pytest.raises(ConfigError):
        build_search("jsma", {"stop_on": "never"})
    s = SEARCHES["pgd"]({"saturation": 16 / 255}, max_steps=5)
    assert s.config.max_steps == 5 and abs(s.config.saturation - 16 / 255) < 1e-12
    assert SEARCHES["pgd"](s.config).config == s.config
    assert build_search("cw", {"lr": "0.01"}).config.lr == 0.01  # YAML/CLI strings coerced


@pytest.mark.parametrize("bad, match", [
    (lambda x: x.clone().fill_(float("nan")), "NaN"),
    (lambda x: x * 2 + 0.1, r"\[0, 1\]"),
    (lambda x: x - 0.5, r"\[0, 1\]"),
    (lambda x: x[0], "shape"),
    (lambda x: x.flatten(1), "shape"),
    (lambda x: (x * 255).to(torch.uint8), "floating point"),
])
def test_bad_inputs_raise_input_error(bad, match):
    model, x, y = mlp_data(n=2, dtype=torch.float32)
    for name in ("noise", "deepfool"):
        with pytest.raises(InputError, match=match):
            build_search(name).run(model, bad(x), y)


def test_bad_labels_raise_input_error():
    model, x, y = mlp_data(n=2, dtype=torch.float32)
    with pytest.raises(InputError, match="labels"):
        build_search("fgsm").run(model, x, y[:1])
    with pytest.raises(InputError, match="labels"):
        build_search("fgsm").run(model, x, torch.tensor([0, 10]))
    with pytest.raises(InputError, match="sample_ids"):
        build_search("fgsm").run(model, x, y, sample_ids=torch.arange(3))


def test_deepfool_batched_and_loop_jacobians_agree_and_topk_candidates():
    model, x, y = mlp_data(n=6)
    a = run("deepfool", model, x, y, jacobian="loop")
    b = run("deepfool", model, x, y, jacobian="batched")
    assert torch.allclose(a.l2, b.l2, rtol=1e-9) and torch.equal(a.fooled, b.fooled)
    c = run("deepfool", model, x, y, candidates=3, class_chunk=1)
    assert bool(c.fooled.any())
    assert bool((c.n_grad[c.n_grad > 0] % 2 == 0).all())  # 2 candidate classes ≠ y per iteration
    raw = run("deepfool", model, x, y, refine=False)  # the default: the papers' raw DeepFool
    assert torch.equal(raw.l2, a.l2)
    refined = run("deepfool", model, x, y, refine=True)
    both = raw.fooled & refined.fooled
    assert bool((refined.l2[both] <= raw.l2[both] * (1 + 1e-12)).all())


def test_empty_batch():
    model, x, y = mlp_data(n=2)
    r = build_search("cw").run(model, x[:0], y[:0])
    assert len(r) == 0 and r.adversarial.shape == (0, 1, 8, 8)
