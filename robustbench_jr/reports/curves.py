"""Curves and summary numbers derived from stored per-sample fooling distances.

Conventions (DESIGN.md, the store): a distance of ``0`` means the sample was already
misclassified, ``+inf`` means the search did not fool it within its budget; a
sample is *fooled* exactly when its distance is finite (clean errors included).

* Test error at distance ``d`` is the fraction of *evaluated* samples (all N rows,
  clean errors included) whose fooling distance is ``<= d``; so ``error_at(0)`` is
  the clean test error and the curve never reaches 1 if some samples were not fooled.
* Accuracy at ``ε`` (FGSM: L∞ budget; JSMA: fraction of pixels changed) is
  ``1 − error_at(ε)``: the fraction of samples whose smallest fooling ``ε`` is ``> ε``.
* The scalar summary (``success_rate``, ``not_fooled``, ``median_l2``, ``mean_l2``,
  ``rho_adv``, ``rho_adv_attacked``) is the project's one definition in
  :mod:`robustbench_jr.evaluation.metrics`; :func:`summarize` calls it. ρ̂_adv
  averages ``d_i / ||x_i||_2`` over the fooled samples (``d_i = 0`` of clean errors
  included); ``rho_adv_attacked`` leaves the clean errors out. The vectorised
  versions below (used by the bootstrap) follow the same definitions, and a test
  holds them to it.

Every vectorised function accepts arrays with leading batch axes (``[..., N]``); the
bootstrap uses that to evaluate all replicates at once.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

_DEFS = {
    "n": "number of evaluated samples (rows stored for this checkpoint and search)",
    "already_misclassified": "samples misclassified before any perturbation (distance 0; they count as fooled)",
    "success_rate": "fooled / n over all n samples (clean errors count as fooled at distance 0)",
    "not_fooled": "samples the search did not fool within its budget (distance +inf)",
    "rho_adv": "mean of L2 distance / ||x||_2 over the fooled samples, clean errors included with d = 0 "
               "(Jakubovitz–Giryes ρ̂_adv over the successfully attacked samples; n_rho samples)",
    "rho_adv_attacked": "the same mean without the already-misclassified samples (d > 0 only)",
    "median_l2": "median L2 fooling distance over the fooled samples (same samples as rho_adv)",
    "mean_l2": "mean L2 fooling distance over the fooled samples (same samples as rho_adv)",
    "error_at(d)": "fraction of all N samples with fooling distance <= d (clean errors count at d = 0)",
}


def definitions() -> dict:
    """Plain-language definitions written next to every table."""
    return dict(_DEFS)


# ---------------------------------------------------------------- curves ----
def error_at(dist: np.ndarray, d: float) -> np.ndarray:
    """Fraction of samples (last axis) with distance ``<= d``."""
    dist = np.asarray(dist, dtype=np.float64)
    if dist.shape[-1] == 0:
        return np.full(dist.shape[:-1], np.nan)
    return np.mean(dist <= d, axis=-1)


def accuracy_at(dist: np.ndarray, eps: float) -> np.ndarray:
    """Fraction of samples whose smallest fooling size is ``> eps`` (= 1 − error_at)."""
    return 1.0 - error_at(dist, eps)


def error_curve(dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact step curve of :func:`error_at`.

    Returns ``(x, y)`` for ``step(x, y, where='post')``: ``x[0] = 0`` with the clean
    error, then every distinct finite positive distance with the error just after it.
    Not-fooled samples (+inf) never enter the curve, so it ends below 1 when some
    survive the search.
    """
    dist = np.asarray(dist, dtype=np.float64).ravel()
    n = dist.size
    if n == 0:
        return np.zeros(1), np.full(1, np.nan)
    finite = np.sort(dist[np.isfinite(dist) & (dist > 0)])
    xs, counts = np.unique(finite, return_counts=True)
    zero = float(np.sum(dist <= 0))
    x = np.concatenate([[0.0], xs])
    y = np.concatenate([[zero], zero + np.cumsum(counts)]) / n
    return x, y


def evaluate_curve(dist: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """:func:`error_at` on every point of ``grid`` (vectorised by sorting)."""
    dist = np.sort(np.asarray(dist, dtype=np.float64).ravel())
    if dist.size == 0:
        return np.full(np.shape(grid), np.nan)
    return np.searchsorted(dist, np.asarray(grid, dtype=np.float64), side="right") / dist.size


# -------------------------------------------------------------- summaries ----
def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    cnt = mask.sum(axis=-1)
    tot = np.where(mask, values, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def _masked_median(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = np.where(mask, values, np.nan)
    if v.shape[-1] == 0:
        return np.full(v.shape[:-1], np.nan)
    with np.errstate(all="ignore"):
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(v, axis=-1)


def fooled_mask(l2: np.ndarray) -> np.ndarray:
    """Fooled samples: finite distance (clean errors, d = 0, included)."""
    return np.isfinite(np.asarray(l2, dtype=np.float64))


def _ratio(l2, x_norm, attacked_only: bool) -> tuple[np.ndarray, np.ndarray]:
    l2 = np.asarray(l2, dtype=np.float64)
    x_norm = np.asarray(x_norm, dtype=np.float64)
    mask = fooled_mask(l2) & (x_norm > 0)
    if attacked_only:
        mask &= l2 > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(mask, l2 / np.where(x_norm > 0, x_norm, 1.0), 0.0)
    return ratio, mask


def rho_adv(l2: np.ndarray, x_norm: np.ndarray, fooled=None) -> np.ndarray:
    """ρ̂_adv: mean ``l2 / ||x||`` over fooled samples with ``||x|| > 0`` (NaN when none)."""
    return _masked_mean(*_ratio(l2, x_norm, False))


def rho_adv_attacked(l2: np.ndarray, x_norm: np.ndarray, fooled=None) -> np.ndarray:
    """ρ̂_adv without the already-misclassified samples (``d > 0`` only)."""
    return _masked_mean(*_ratio(l2, x_norm, True))


def n_rho(l2, x_norm) -> int:
    """How many samples :func:`rho_adv` averages."""
    return int(_ratio(l2, x_norm, False)[1].sum())


def success_rate(l2: np.ndarray, fooled=None) -> np.ndarray:
    """Fooled / n over all samples."""
    l2 = np.asarray(l2, dtype=np.float64)
    if l2.shape[-1] == 0:
        return np.full(l2.shape[:-1], np.nan)
    return fooled_mask(l2).mean(axis=-1)


def not_fooled(l2: np.ndarray) -> np.ndarray:
    return np.isinf(np.asarray(l2, dtype=np.float64)).sum(axis=-1)


def median_l2(l2: np.ndarray) -> np.ndarray:
    return _masked_median(np.asarray(l2, dtype=np.float64), fooled_mask(l2))


def mean_l2(l2: np.ndarray) -> np.ndarray:
    l2 = np.asarray(l2, dtype=np.float64)
    return _masked_mean(np.where(fooled_mask(l2), l2, 0.0), fooled_mask(l2))


def _fallback_summarize(l2, x_norm, fooled=None) -> dict:
    l2 = np.asarray(l2, dtype=np.float64)
    n = int(l2.size)
    n_f = int(fooled_mask(l2).sum())
    return {"n": n, "n_fooled": n_f, "success_rate": n_f / n if n else float("nan"), "not_fooled": n - n_f,
            "already_misclassified": int(np.sum(l2 == 0)), "median_l2": _f(median_l2(l2)),
            "mean_l2": _f(mean_l2(l2)), "rho_adv": _f(rho_adv(l2, x_norm)),
            "rho_adv_attacked": _f(rho_adv_attacked(l2, x_norm))}


def core_summarize(l2, x_norm, fooled=None) -> dict:
    """The project's summary (:func:`robustbench_jr.evaluation.metrics.summarize`).

    Falls back to the identical definitions above when that module is absent.
    """
    try:
        from ..evaluation.metrics import summarize as _summarize
    except ImportError:
        _summarize = _fallback_summarize
    try:
        return dict(_summarize(l2, x_norm, fooled))
    except ValueError as exc:
        from ..errors import InputError
        raise InputError(f"stored results are inconsistent: {exc}") from None


def summarize(l2, x_norm, fooled, l0: Optional[np.ndarray] = None, n_inputs: Optional[int] = None) -> dict:
    """The numbers of one checkpoint × search row of the report tables.

    :func:`core_summarize` plus ``n_rho`` (samples ρ̂_adv averages) and, when ``l0``
    is given, ``median_l0, mean_l0`` over the fooled samples (and their fractions of
    ``n_inputs`` components when that is given).
    """
    out = core_summarize(l2, x_norm, fooled)
    out["n_rho"] = n_rho(l2, x_norm)
    if l0 is not None:
        l0 = np.asarray(l0, dtype=np.float64)
        mask = fooled_mask(l2) & np.isfinite(l0)
        out["median_l0"] = _f(_masked_median(l0, mask))
        out["mean_l0"] = _f(_masked_mean(np.where(mask, l0, 0.0), mask))
        if n_inputs:
            out["median_l0_frac"] = _f(out["median_l0"] / n_inputs)
            out["mean_l0_frac"] = _f(out["mean_l0"] / n_inputs)
    return out


def _f(v) -> float:
    return float(np.asarray(v, dtype=np.float64))


# -------------------------------------------------------------- bootstrap ----
def bootstrap_indices(n: int, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``[reps, n]`` resampling indices (with replacement)."""
    if n == 0:
        return np.zeros((reps, 0), dtype=np.int64)
    return rng.integers(0, n, size=(reps, n))


def one_sided_bound(samples: np.ndarray, confidence: float, side: str) -> float:
    """Percentile bootstrap bound: ``side='lower'`` → the (1−c) quantile, ``'upper'`` → the c quantile."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("nan")
    q = 1.0 - confidence if side == "lower" else confidence
    return float(np.quantile(s, q))
