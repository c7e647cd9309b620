"""The DDN minimal-norm search (robustbench_jr.attacks.ddn): known answers, batch
independence, pass counts, configuration, and its place in the audit's plan.

Known answers: for an affine classifier z = Wx + b with x well inside [0, 1] the smallest
fooling L2 distance is min_{k≠y} |(w_y − w_k)ᵀx + b_y − b_k| / ‖w_y − w_k‖; for the
piecewise-affine models below (a band |aᵀx + c| < t, and a max of equal-norm affine
pieces) it is the distance to the nearest piece. Models and data are float64, so that
differences between batch sizes stay at the last bits of a kernel's sums.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from robustbench_jr.attacks import SEARCHES, SearchResult, build_search
from robustbench_jr.attacks.ddn import DDNConfig, _tangent, keep_best_rows, phase_steps
from robustbench_jr.errors import ConfigError
from robustbench_jr.evaluation.plan import ALL_SEARCHES, BUDGETS, known_searches
from toy_models import Affine, Counting, TinyMLP, saturated_box

QUICK = dict(BUDGETS["quick"]["ddn"])
CONFIGS = {"paper": {}, "quick": QUICK}


# --------------------------------------------------------------------------------------
# models with known minimal distances
# --------------------------------------------------------------------------------------


class Band(nn.Module):
    """Class 0 inside the band |aᵀx + c| < t, class 1 outside: z = [0, |aᵀx + c| − t]."""

    def __init__(self, a: torch.Tensor, c: float, t: float):
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.c, self.t = c, t

    def forward(self, x):
        v = (x.flatten(1) @ self.a + self.c).abs() - self.t
        return torch.stack([torch.zeros_like(v), v], 1)


class MaxAffine(nn.Module):
    """z = [0, max_j (a_jᵀx + c_j)]: class 1 on the union of half-spaces."""

    def __init__(self, A: torch.Tensor, c: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.c = nn.Parameter(c.clone())

    def forward(self, x):
        v = (x.flatten(1) @ self.A.T + self.c).amax(1)
        return torch.stack([torch.zeros_like(v), v], 1)


def inside(n, d, g, spread=0.1):
    return 0.5 + spread * (torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5)


def affine_case(n=6, d=64, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(k, d, generator=g, dtype=torch.float64)
    b = 0.3 * torch.randn(k, generator=g, dtype=torch.float64)
    x = inside(n, d, g, 0.04)
    model = Affine(W, b)
    with torch.no_grad():
        y = model(x).argmax(1)
    true = []
    for i in range(n):
        yi = int(y[i])
        true.append(min(float(((W[yi] - W[j]) @ x[i] + b[yi] - b[j]).abs() / (W[yi] - W[j]).norm())
                        for j in range(k) if j != yi))
    return model, x.view(n, 1, 8, 8), y, torch.tensor(true, dtype=torch.float64)


def band_case(n=6, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, generator=g, dtype=torch.float64)
    x = inside(n, d, g)
    t = 0.15 * float(a.norm())
    c = -float((x @ a).mean())
    v = x @ a + c
    keep = v.abs() < 0.8 * t
    x = x[keep]
    model = Band(a, c, t)
    true = (t - (x @ a + c).abs()) / a.norm()
    return model, x.view(-1, 1, 8, 8), torch.zeros(x.shape[0], dtype=torch.int64), true


def max_affine_case(n=6, d=64, pieces=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(pieces, d, generator=g, dtype=torch.float64)
    A = A / A.norm(dim=1, keepdim=True)  # equal norms: the active piece is the nearest one
    x = inside(n, d, g)
    dist = 0.05 + 0.1 * torch.rand(pieces, generator=g, dtype=torch.float64)
    c = -(x.mean(0) @ A.T) - dist  # every piece negative at the mean image
    model = MaxAffine(A, c)
    vals = x @ A.T + c
    keep = (vals < 0).all(1)
    x, vals = x[keep], vals[keep]
    true = (-vals).min(1).values  # ‖a_j‖ = 1
    return model, x.view(-1, 1, 8, 8), torch.zeros(x.shape[0], dtype=torch.int64), true


CASES = {
    "affine-binary": lambda: affine_case(k=2),
    "affine-10-classes": lambda: affine_case(k=10, seed=1),
    "band": band_case,
    "max-affine": max_affine_case,
}


def _box_inactive(x, adv):
    return bool(((adv > 0) & (adv < 1)).all())


# --------------------------------------------------------------------------------------
# known answers
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_quick_settings_within_one_percent_and_never_below(case):
    model, x, y, true = CASES[case]()
    assert len(y) >= 3
    assert bool((model(x).argmax(1) == y).all())
    r = build_search("ddn", QUICK).run(model, x, y)
    assert bool(r.fooled.all())
    assert _box_inactive(x, r.adversarial)  # the analytic answer ignores the box: it must not bind
    rel = r.l2 / true
    assert bool((rel >= 1 - 1e-9).all()), rel
    assert bool((rel <= 1.01).all()), rel


@pytest.mark.parametrize("case", ["affine-binary", "band", "max-affine"])
def test_paper_settings_within_one_percent_on_two_class_models(case):
    model, x, y, true = CASES[case]()
    r = build_search("ddn").run(model, x, y)
    assert bool(r.fooled.all())
    rel = r.l2 / true
    assert bool((rel >= 1 - 1e-9).all()), rel
    assert bool((rel <= 1.01).all()), rel


def test_paper_settings_never_below_on_many_classes():
    # the paper's cross-entropy direction mixes classes: on a 10-class affine model it can
    # stop a few % above the minimum (the quick settings above do not), never below it
    model, x, y, true = CASES["affine-10-classes"]()
    r = build_search("ddn").run(model, x, y)
    assert bool(r.fooled.all())
    assert bool((r.l2 >= true * (1 - 1e-9)).all())


def test_more_steps_converge():
    model, x, y, true = affine_case(n=4, k=10, seed=2)
    short = build_search("ddn", {**QUICK, "steps": 30}).run(model, x, y)
    long = build_search("ddn", {**QUICK, "steps": 150}).run(model, x, y)
    assert bool((long.l2 <= short.l2 * 1.001).all())
    assert bool((long.l2 / true <= 1.002).all())


def test_box_constraint_respected():
    # pixels at 0 and 1: the closest point moves them inwards only; every iterate stays in [0, 1]
    model, x = saturated_box(64, 0.4)
    r = build_search("ddn", QUICK).run(model, x, torch.tensor([0]))
    assert bool(r.fooled.all())
    assert 0.4 * (1 - 1e-9) <= float(r.l2[0]) <= 0.4 * 1.01
    adv = r.adversarial.flatten(1)[0]
    assert bool(((adv >= 0) & (adv <= 1)).all())


# --------------------------------------------------------------------------------------
# batches, passes, determinism
# --------------------------------------------------------------------------------------




def mlp_data(n=8, seed=0):
    model = TinyMLP(seed=seed).double()
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(n, 1, 8, 8, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


@pytest.mark.parametrize("config", list(CONFIGS))
def test_batch_size_and_composition_independence(config):
    model, x, y = mlp_data(n=8)
    cfg = {**CONFIGS[config], "steps": 40}
    ids = torch.arange(100, 108)
    full = build_search("ddn", cfg).run(model, x, y, sample_ids=ids)
    assert bool(full.fooled.all())
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    shuffled = build_search("ddn", cfg).run(model, x[perm], y[perm], sample_ids=ids[perm]).select(torch.argsort(perm))
    one = SearchResult.concat([build_search("ddn", cfg).run(model, x[i:i + 1], y[i:i + 1], sample_ids=ids[i:i + 1])
                               for i in range(8)])
    for other in (one, shuffled):
        # float64 kernels still sum in a row-count-dependent order (last-bit differences)
        assert torch.equal(other.fooled, full.fooled)
        assert torch.allclose(other.l2, full.l2, rtol=1e-10, atol=0)
        assert torch.allclose(other.adversarial, full.adversarial, rtol=0, atol=1e-10)
        assert torch.equal(other.adv_pred, full.adv_pred)
        assert torch.equal(other.n_forward, full.n_forward)
        assert torch.equal(other.n_grad, full.n_grad)


@pytest.mark.parametrize("config", list(CONFIGS))
def test_pass_counts_are_the_budget_and_match_what_the_model_sees(config):
    inner, x, y = mlp_data(n=8)
    y = y.clone()
    y[0] = (y[0] + 1) % 10  # clean-misclassified: one forward pass, no search
    model = Counting(inner)
    r = build_search("ddn", {**CONFIGS[config], "steps": 50}).run(model, x, y)
    assert model.rows == int(r.n_forward.sum())
    assert model.grad_rows == int(r.n_grad.sum())
    assert int(r.n_forward[0]) == 1 and int(r.n_grad[0]) == 0 and float(r.l2[0]) == 0.0
    # every other sample: 50 gradient steps (+ the clean pass and the re-check)
    assert bool((r.n_grad[1:] == 50).all())
    assert bool((r.n_forward[1:] == 52).all())


def test_phase_split_adds_up_to_the_budget():
    for steps in (1, 3, 7, 100, 301, 1000):
        for t in (2, 3, 5):
            cfg = DDNConfig(steps=max(steps, t), candidates=t, explore=0.2, candidate_steps=0.15)
            e, p, rest = phase_steps(cfg)
            assert e >= 0 and p >= 1 and rest >= 0
            assert e + t * p + rest == cfg.steps
    assert phase_steps(DDNConfig(steps=100)) == (100, 0, 0)
    assert phase_steps(DDNConfig(steps=100, candidates=3)) == (20, 15, 35)


def test_tangent_step_turns_the_direction_by_arctan_of_alpha_sin_theta():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 1, 5, 5, generator=gen, dtype=torch.float64)
    delta = torch.randn(3, 1, 5, 5, generator=gen, dtype=torch.float64)
    delta[2] = 0  # the first step: the whole gradient
    gt = _tangent(g, delta)
    assert torch.allclose((gt[:2] * delta[:2]).flatten(1).sum(1), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    assert torch.equal(gt[2], g[2])
    assert torch.allclose(_tangent(-3 * delta[:2], delta[:2]), torch.zeros_like(delta[:2]), atol=1e-12)
    # δ ← δ − α·ε·tangent(∇L)/‖∇L‖, rescaled to ε, turns δ by arctan(α·sin θ)
    d, gg, t = delta[:2], g[:2], gt[:2]
    eps, gn = d.flatten(1).norm(dim=1), gg.flatten(1).norm(dim=1)
    sin = (1 - ((gg * d).flatten(1).sum(1) / (gn * eps)) ** 2).sqrt()
    for alpha in (0.01, 0.3, 1.0, 3.0):
        new = d - (alpha * eps / gn).view(-1, 1, 1, 1) * t
        cos = (new * d).flatten(1).sum(1) / (new.flatten(1).norm(dim=1) * eps)
        assert torch.allclose(torch.acos(cos.clamp(-1, 1)), torch.atan(alpha * sin), atol=1e-7)


@pytest.mark.parametrize("tangent", [True, False])
def test_tangent_option_decides_the_direction_step(tangent, monkeypatch):
    import robustbench_jr.attacks.ddn as ddn_module

    original, calls = ddn_module._tangent, []
    monkeypatch.setattr(ddn_module, "_tangent", lambda g, delta: calls.append(1) or original(g, delta))
    model, x, y, _ = CASES["max-affine"]()
    cfg = {**QUICK, "candidates": 1, "steps": 12}
    r = build_search("ddn", {**cfg, "tangent": tangent}).run(model, x, y)
    assert len(calls) == (12 if tangent else 0)  # once per step of the batch when on
    assert bool(r.fooled.all())
    other = build_search("ddn", {**cfg, "tangent": not tangent}).run(model, x, y)
    assert not torch.equal(r.l2, other.l2)  # the two direction steps differ


def test_keep_best_rows_prefers_found_then_smallest_eps_then_first():
    inf = float("inf")
    best = torch.tensor([inf, 2.0, 1.5, inf, inf, inf, 3.0, 3.0], dtype=torch.float64)
    eps = torch.tensor([0.1, 9.0, 9.0, 0.5, 0.2, 0.2, 1.0, 1.0], dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])
    assert keep_best_rows(best, eps, group, 3).tolist() == [2, 4, 6]


def test_patience_stops_samples_early():
    model, x, y = mlp_data(n=8)
    full = build_search("ddn", {**QUICK, "steps": 100}).run(model, x, y)
    early = build_search("ddn", {**QUICK, "steps": 100, "patience": 5}).run(model, x, y)
    assert bool(early.fooled.all())
    assert int(early.n_grad.sum()) < int(full.n_grad.sum())
    assert bool((early.n_grad < 100).any())


def test_deterministic_and_independent_of_global_rng():
    model, x, y = mlp_data(n=4)
    a = build_search("ddn", {**QUICK, "steps": 40}).run(model, x, y)
    torch.rand(7)
    b = build_search("ddn", {**QUICK, "steps": 40}).run(model, x, y, seed=5)
    assert torch.equal(a.l2, b.l2)


def test_zero_gradient_is_a_failure_with_a_warning():
    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.tensor([2.0, -0.5], dtype=torch.float64))

        def forward(self, x):
            return self.b.expand(x.shape[0], 2) + 0 * x.flatten(1).sum(1, keepdim=True)

    x = torch.full((2, 1, 4, 4), 0.5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="gradient is exactly zero"):
        r = build_search("ddn").run(Flat(), x, torch.zeros(2, dtype=torch.int64))
    assert not bool(r.fooled.any()) and bool(torch.isinf(r.l2).all())
    assert bool((r.n_grad == 1).all())  # stopped at its first step


# --------------------------------------------------------------------------------------
# configuration and the audit's plan
# --------------------------------------------------------------------------------------
def test_config_defaults_are_the_papers_and_errors_name_the_problem():
    cfg = build_search("ddn").config
    assert (cfg.steps, cfg.init_norm, cfg.gamma, cfg.alpha, cfg.alpha_final, cfg.loss) == (100, 1.0, 0.05, 1.0,
                                                                                            0.01, "ce")
    assert (cfg.norm_update, cfg.alpha_relative, cfg.candidates, cfg.patience) == ("fixed", False, 1, None)
    with pytest.raises(ConfigError, match="explore"):
        build_search("ddn", {"candidates": 5, "candidate_steps": 0.3})
    with pytest.raises(ConfigError, match="gamma_min"):
        build_search("ddn", {"gamma_min": 0.2, "gamma_max": 0.1})
    with pytest.raises(ConfigError, match="valid keys"):
        build_search("ddn", {"step": 10})
    with pytest.raises(ConfigError):
        build_search("ddn", {"loss": "hinge"})


def test_ddn_is_part_of_all_and_of_the_quick_budget():
    assert "ddn" in SEARCHES and "ddn" in ALL_SEARCHES and "ddn" in known_searches()
    assert BUDGETS["quick"]["ddn"]["candidates"] > 1
    assert build_search("ddn", BUDGETS["quick"]["ddn"]).config.steps <= 100


def test_audit_runs_ddn_next_to_the_others():
    import robustbench_jr

    model, x, y, true = affine_case(k=10, seed=3)
    model, x = model.float(), x.float()  # the audit hands the model float32 pixels
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = robustbench_jr.audit(model, x, y, searches=["deepfool", "ddn"], budget="quick")
    s = res.summary()
    assert s["searches"]["ddn"]["success_rate"] == 1.0
    assert s["searches"]["ddn"]["median_l2"] <= float(true.median()) * 1.01
