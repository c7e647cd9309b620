"""Robustness metrics as pure functions of stored per-sample distances.

Conventions (the store's): a fooling distance is ``0`` for a sample the model already
misclassifies, ``+inf`` for a sample the search did not fool within its budget, and
a positive finite L2 distance (in [0, 1] pixel space) otherwise.

Which samples each number averages
----------------------------------
* ``success_rate`` = (#fooled) / n over all n evaluated samples, where *fooled*
  includes the already-misclassified samples (distance 0).
* ``not_fooled`` = number of samples with distance ``+inf``.
* ``median_l2`` and ``mean_l2`` are taken over the fooled samples only (finite
  distances, zeros of already-misclassified samples included); samples that were
  not fooled are left out, so read them together with ``success_rate``.
* ``rho_adv`` (Jakubovitz & Giryes 2018, §4.1) = mean_i d_i / ‖x_i‖₂ over the same
  fooled samples (zeros included; a sample with ‖x‖₂ = 0 is left out, since the
  ratio is undefined). JG average over the successfully attacked samples; with a
  search that always succeeds (DeepFool) this is the mean over all samples.
* ``rho_adv_attacked`` is the same mean without the already-misclassified samples
  (d_i > 0 only), for comparison with papers that attack correctly classified
  samples only.

Every function returns NaN where its set of samples is empty.
"""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np

SAMPLES_NOTE = (
    "median/mean L2 and ρ̂_adv average the fooled samples only (finite distance, "
    "already-misclassified samples counted with d = 0); not-fooled samples (d = +inf) are excluded "
    "and counted in not_fooled"
)


def _arrays(l2, x_norm=None, fooled=None):
    d = np.asarray(l2, dtype=np.float64).reshape(-1)
    if np.isnan(d).any():
        raise ValueError("distances contain NaN; use +inf for 'not fooled'")
    if (d < 0).any():
        raise ValueError("distances must be >= 0")
    f = np.isfinite(d) if fooled is None else np.asarray(fooled, dtype=bool).reshape(-1)
    if f.shape != d.shape:
        raise ValueError(f"fooled has {f.size} entries, distances {d.size}")
    if (f & ~np.isfinite(d)).any() or (~f & np.isfinite(d)).any():
        raise ValueError("fooled must be exactly the samples with a finite distance")
    xn = None
    if x_norm is not None:
        xn = np.asarray(x_norm, dtype=np.float64).reshape(-1)
        if xn.shape != d.shape:
            raise ValueError(f"x_norm has {xn.size} entries, distances {d.size}")
    return d, xn, f


def _mean(a: np.ndarray) -> float:
    return float(a.mean()) if a.size else float("nan")


def summarize(l2, x_norm, fooled=None) -> dict:
    """Per model × search summary of stored distances.

    ``l2``: [n] fooling distances (0 = already misclassified, +inf = not fooled);
    ``x_norm``: [n] ‖x_i‖₂ of the clean inputs (pixel space); ``fooled``: [n] bool
    (defaults to ``isfinite(l2)``). Returns n, n_fooled, success_rate, not_fooled,
    already_misclassified, median_l2, mean_l2, rho_adv, rho_adv_attacked (see the
    module docstring for which samples each averages).
    """
    d, xn, f = _arrays(l2, x_norm, fooled)
    n = int(d.size)
    n_fooled = int(f.sum())
    fooled_d = d[f]
    valid = f & (xn > 0)
    attacked = valid & (d > 0)
    return {
        "n": n,
        "n_fooled": n_fooled,
        "success_rate": n_fooled / n if n else float("nan"),
        "not_fooled": n - n_fooled,
        "already_misclassified": int((f & (d == 0)).sum()),
        "median_l2": float(np.median(fooled_d)) if fooled_d.size else float("nan"),
        "mean_l2": _mean(fooled_d),
        "rho_adv": _mean(d[valid] / xn[valid]),
        "rho_adv_attacked": _mean(d[attacked] / xn[attacked]),
    }


def rho_adv(l2, x_norm, fooled=None) -> float:
    """ρ̂_adv = mean over fooled samples (zeros included, ‖x‖₂ > 0) of d_i / ‖x_i‖₂."""
    return summarize(l2, x_norm, fooled)["rho_adv"]


def error_at(l2, distance: float) -> float:
    """Test error at fooling distance ``distance``: fraction of all evaluated samples
    with d ≤ distance (already-misclassified samples count from distance 0)."""
    d, _, _ = _arrays(l2)
    return float((d <= distance).mean()) if d.size else float("nan")


def error_curve(l2, distances: Optional[Iterable[float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """The test-error-vs-distance curve (Hoffman et al. Fig. S5).

    Returns ``(distances, errors)``; by default the distances are 0 and the sorted
    finite stored distances, so the curve is exact (a step function, right-continuous).
    """
    d, _, _ = _arrays(l2)
    if distances is None:
        grid = np.unique(np.concatenate([[0.0], d[np.isfinite(d)]]))
    else:
        grid = np.asarray(list(distances), dtype=np.float64)
    if not d.size:
        return grid, np.full(grid.shape, np.nan)
    errs = np.searchsorted(np.sort(d), grid, side="right") / d.size
    return grid, errs.astype(np.float64)


def order_violations(weaker, stronger, rel_tol: float = 1e-3) -> tuple[int, int]:
    """Samples where a weaker search found a clearly closer point than a stronger one.

    Counts samples that both searches fooled with d > 0 (already-misclassified
    samples are left out) and where ``weaker < stronger · (1 − rel_tol)``.
    Returns ``(violations, compared)``.
    """
    w, _, _ = _arrays(weaker)
    s, _, _ = _arrays(stronger)
    if w.shape != s.shape:
        raise ValueError("both searches must cover the same samples")
    both = np.isfinite(w) & np.isfinite(s) & (w > 0) & (s > 0)
    viol = both & (w < s * (1.0 - rel_tol))
    return int(viol.sum()), int(both.sum())
