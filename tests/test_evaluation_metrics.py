"""Metrics from hand-made distance lists (0 = already misclassified, +inf = not fooled)."""

import math

import numpy as np
import pytest

from robustbench_jr.evaluation.metrics import error_at, error_curve, order_violations, rho_adv, summarize

INF = float("inf")


def test_summarize_hand_computed():
    l2 = [0.0, 1.0, 2.0, INF, 4.0]
    x_norm = [10.0, 10.0, 20.0, 5.0, 8.0]
    s = summarize(l2, x_norm, [True, True, True, False, True])
    assert s["n"] == 5
    assert s["n_fooled"] == 4
    assert s["success_rate"] == pytest.approx(0.8)
    assert s["not_fooled"] == 1
    assert s["already_misclassified"] == 1
    assert s["median_l2"] == pytest.approx(1.5)          # median of 0, 1, 2, 4
    assert s["mean_l2"] == pytest.approx(7.0 / 4)
    assert s["rho_adv"] == pytest.approx((0 + 0.1 + 0.1 + 0.5) / 4)  # fooled samples, zeros included
    assert s["rho_adv_attacked"] == pytest.approx((0.1 + 0.1 + 0.5) / 3)
    assert rho_adv(l2, x_norm) == pytest.approx(0.175)
    # fooled defaults to the finite distances
    assert summarize(l2, x_norm) == s


def test_summarize_nothing_fooled_and_empty():
    s = summarize([INF, INF], [1.0, 2.0])
    assert s["success_rate"] == 0.0 and s["not_fooled"] == 2 and s["n_fooled"] == 0
    assert math.isnan(s["median_l2"]) and math.isnan(s["mean_l2"]) and math.isnan(s["rho_adv"])
    e = summarize([], [])
    assert e["n"] == 0 and math.isnan(e["success_rate"])


def test_summarize_all_misclassified_and_zero_norm():
    s = summarize([0.0, 0.0], [3.0, 4.0])
    assert s["success_rate"] == 1.0 and s["already_misclassified"] == 2
    assert s["median_l2"] == 0.0 and s["rho_adv"] == 0.0 and math.isnan(s["rho_adv_attacked"])
    # a black image (‖x‖ = 0) is left out of ρ̂ only
    s = summarize([1.0, 2.0], [0.0, 4.0])
    assert s["mean_l2"] == pytest.approx(1.5) and s["rho_adv"] == pytest.approx(0.5)


def test_summarize_rejects_bad_input():
    with pytest.raises(ValueError):
        summarize([float("nan")], [1.0])
    with pytest.raises(ValueError):
        summarize([1.0, INF], [1.0, 1.0], [True, True])  # fooled but infinite
    with pytest.raises(ValueError):
        summarize([1.0], [1.0, 2.0])


def test_error_curve():
    l2 = [0.0, 0.5, 0.5, 2.0, INF]
    assert error_at(l2, 0.0) == pytest.approx(0.2)
    assert error_at(l2, 0.5) == pytest.approx(0.6)
    assert error_at(l2, 1e9) == pytest.approx(0.8)
    d, e = error_curve(l2)
    np.testing.assert_allclose(d, [0.0, 0.5, 2.0])
    np.testing.assert_allclose(e, [0.2, 0.6, 0.8])
    d, e = error_curve(l2, [0.25, 3.0])
    np.testing.assert_allclose(e, [0.2, 0.8])


def test_order_violations():
    weak = [0.0, 1.0, 0.5, INF, 2.0, 0.9999999]
    strong = [0.0, 2.0, 1.0, 1.0, INF, 1.0]
    # compared: samples 1, 2, 5 (both fooled, d > 0); violations: 1, 2 (5 is within tolerance)
    assert order_violations(weak, strong) == (2, 3)


# ------------------------------------------------------------- the registry ----
from robustbench_jr.errors import ConfigError, InputError  # noqa: E402
from robustbench_jr.evaluation import metrics  # noqa: E402

# a clean error (0), four fooled, one not fooled (+inf)
L2 = np.array([0.0, 0.5, 1.0, 1.0, 2.0, INF])
XN = np.array([10.0, 10.0, 5.0, 10.0, 4.0, 10.0])
LINF = np.array([0.0, 0.1, 0.2, 0.2, 0.3, INF])
L0 = np.array([0.0, 7.84, 78.4, 78.4, 156.8, INF])  # 0, 1 %, 10 %, 10 %, 20 % of 784 components
S = metrics.Samples(L2, XN, LINF, L0, n_inputs=784)


@pytest.mark.parametrize("name, args, expected", [
    ("n", (), 6), ("n_fooled", (), 5), ("already_misclassified", (), 1), ("not_fooled", (), 1),
    ("success_rate", (), 5 / 6), ("not_fooled_rate", (), 1 / 6),
    # ratios of the fooled samples: 0/10, .5/10, 1/5, 1/10, 2/4 -> 0, .05, .2, .1, .5
    ("rho_adv", (), 0.85 / 5), ("rho_adv_attacked", (), 0.85 / 4), ("n_rho", (), 5),
    ("median_l2", (), 1.0), ("mean_l2", (), 4.5 / 5),
    ("d50", (), 1.0),                                   # median of 0, .5, 1, 1, 2, inf
    ("error_at", (0.0,), 1 / 6), ("error_at", (0.49,), 1 / 6), ("error_at", (0.5,), 2 / 6),
    ("error_at", (1.0,), 4 / 6), ("error_at", (1e9,), 5 / 6),  # "≤ d"; +inf never counts
    ("accuracy_at", (1.0,), 2 / 6),
    ("error_at_linf", (0.1,), 2 / 6), ("accuracy_at_linf", (0.1,), 4 / 6), ("accuracy_at_linf", (0.0,), 5 / 6),
    ("error_at_l0", (0.10,), 4 / 6), ("accuracy_at_l0", (0.10,), 2 / 6),
    ("median_l0", (), 78.4), ("mean_l0", (), 321.44 / 5), ("median_l0_frac", (), 0.1),
    ("mean_l0_frac", (), 321.44 / 5 / 784),
])
def test_registry_known_answers(name, args, expected):
    assert float(metrics.compute(name, S, *args)) == pytest.approx(expected)


def test_registry_model_metrics():
    m = metrics.ModelStats(clean_accuracy=0.99, jacobian_norm=2.0, noise_sigma=[0.4, 0.0],
                           noise_accuracy=[0.5, 0.99])
    assert float(metrics.compute("clean_error", m)) == pytest.approx(0.01)
    assert float(metrics.compute("jacobian_norm", m)) == 2.0
    assert float(metrics.compute("noise_accuracy", m, 0.2)) == pytest.approx(0.745)  # interpolated
    assert float(metrics.compute("noise_accuracy", m, 0.4)) == pytest.approx(0.5)
    # leading (bootstrap) axes
    boot = metrics.ModelStats(clean_accuracy=np.array([0.9, 0.8]), noise_sigma=[0.0, 0.4],
                              noise_accuracy=np.array([[1.0, 0.0], [0.5, 0.5]]))
    np.testing.assert_allclose(metrics.compute("clean_error", boot), [0.1, 0.2])
    np.testing.assert_allclose(metrics.compute("noise_accuracy", boot, 0.1), [0.75, 0.5])
    with pytest.raises(InputError, match="outside the stored range"):
        metrics.compute("noise_accuracy", m, 0.5)
    with pytest.raises(InputError, match="clean accuracy"):
        metrics.compute("clean_accuracy", metrics.ModelStats())


def test_registry_empty_and_nothing_fooled_are_nan_not_zero():
    none = metrics.Samples(np.full(3, INF), np.ones(3), np.full(3, INF), np.full(3, INF), 784)
    empty = metrics.Samples(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 784)
    for name, m in metrics.METRICS.items():
        if m.level != "samples":
            continue
        args = (1.0,) * len(m.params)
        v_none, v_empty = float(m(none, *args)), float(m(empty, *args))
        if m.count:
            assert v_empty == 0, name
        elif name in ("success_rate", "not_fooled_rate") or name.startswith(("error_at", "accuracy_at")):
            assert math.isnan(v_empty), name
            assert not math.isnan(v_none), name  # a rate over 3 samples is defined
        else:
            assert math.isnan(v_empty), name
    assert float(metrics.compute("rho_adv", none)) != float(metrics.compute("rho_adv", none))  # NaN
    assert float(metrics.compute("d50", none)) == INF
    assert float(metrics.compute("success_rate", none)) == 0.0


def test_registry_is_vectorised_over_leading_axes():
    rng = np.random.default_rng(0)
    l2 = rng.exponential(1.0, 50)
    l2[rng.random(50) < 0.1] = 0.0
    l2[rng.random(50) < 0.1] = INF
    s = metrics.Samples(l2, rng.uniform(5, 12, 50), l2 / 10, np.where(np.isfinite(l2), 7.0, INF), 784)
    idx = rng.integers(0, 50, size=(4, 3, 50))  # two leading axes
    batched = s.take(idx)
    for name, m in metrics.METRICS.items():
        if m.level != "samples":
            continue
        args = (0.8,) * len(m.params)
        got = m(batched, *args)
        assert got.shape == (4, 3), name
        want = [[float(m(s.take(idx[i, j]), *args)) for j in range(3)] for i in range(4)]
        np.testing.assert_allclose(got, want, err_msg=name)


def test_registry_lookup_and_definitions():
    with pytest.raises(ConfigError, match="valid metrics"):
        metrics.get("rho")
    d = metrics.definitions(["n", "error_at"])
    assert list(d) == ["n", "error_at(d)"] and "<= d" in d["error_at(d)"]
    assert set(metrics.SUMMARY_KEYS) <= set(metrics.METRICS)
    with pytest.raises(InputError, match="input_shape"):
        metrics.compute("error_at_l0", metrics.Samples(L2, l0=L0), 0.1)
