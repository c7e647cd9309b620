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
