"""The metric registry: every robustness number of the project, defined once.

Conventions (the store's): a fooling distance is ``0`` for a sample the model already
misclassifies, ``+inf`` for a sample the search did not fool within its budget, and
a positive finite L2 distance (in [0, 1] pixel space) otherwise.

Each metric is registered once, by name, with its arguments, the data it reads and a
plain-language definition (:data:`METRICS`, :func:`get`, :func:`definitions`). The
report tables, the ``--json`` summaries, the gate and the experiment tables all read
metrics through it. Two kinds of data:

* :class:`Samples` — the per-sample columns of one model × search (``l2``, ``x_norm``,
  ``linf``, ``l0``). Every function is vectorised over leading axes: arrays ``[..., N]``
  give results ``[...]``, so the gate's bootstrap evaluates all ``[B, N]`` replicates in
  one call of the same function that computes the point estimate from ``[N]``.
* :class:`ModelStats` — what the audit stores per model (clean accuracy, mean ‖J‖_F,
  white-noise accuracies); fields may carry leading (bootstrap) axes, too.

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
* ``error_at[d]`` is the fraction of *all* n samples with distance ≤ d (so
  ``error_at[0]`` is the clean error and +inf never counts).

Every function returns NaN where its set of samples is empty.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Mapping, Optional

import numpy as np

from ..errors import InputError, unknown_name

__all__ = ["METRICS", "MetricDef", "ModelStats", "SAMPLES_NOTE", "SUMMARY_KEYS", "Samples", "check_distances",
           "compute", "definitions", "error_at", "error_curve", "get", "order_violations", "rho_adv", "summarize",
           "values"]

SAMPLES_NOTE = (
    "median/mean L2 and ρ̂_adv average the fooled samples only (finite distance, "
    "already-misclassified samples counted with d = 0); not-fooled samples (d = +inf) are excluded "
    "and counted in not_fooled"
)

#: the keys of :func:`summarize` (the per-search summary of ``jr-eval run --json``), in order
SUMMARY_KEYS = ("n", "n_fooled", "success_rate", "not_fooled", "already_misclassified", "median_l2", "mean_l2",
                "rho_adv", "rho_adv_attacked")


# ------------------------------------------------------------------ data ----
@dataclass(frozen=True)
class Samples:
    """Per-sample columns of one model × search, each ``[..., N]`` (None where not stored).

    ``n_inputs`` (C·H·W from the checkpoint card) turns L0 counts into fractions of the
    input components (JSMA).
    """

    l2: np.ndarray
    x_norm: Optional[np.ndarray] = None
    linf: Optional[np.ndarray] = None
    l0: Optional[np.ndarray] = None
    n_inputs: Optional[int] = None

    def __post_init__(self):
        for name in ("l2", "x_norm", "linf", "l0"):
            v = getattr(self, name)
            if v is not None:
                object.__setattr__(self, name, np.asarray(v, dtype=np.float64))

    @classmethod
    def of(cls, columns: Mapping[str, Any], n_inputs: Optional[int] = None) -> "Samples":
        """From a mapping with (some of) the store's columns ``l2, x_norm, linf, l0``."""
        return cls(**{k: columns.get(k) for k in ("l2", "x_norm", "linf", "l0")}, n_inputs=n_inputs)

    def take(self, idx: np.ndarray) -> "Samples":
        """The samples at ``idx`` along the last axis (``[B, N]`` indices give ``[B, N]`` columns)."""
        return replace(self, **{k: None if getattr(self, k) is None else getattr(self, k)[..., idx]
                                for k in ("l2", "x_norm", "linf", "l0")})

    def need(self, name: str) -> np.ndarray:
        v = getattr(self, name)
        if v is None:
            raise InputError(f"the stored results have no {name} column")
        return v

    @property
    def fooled(self) -> np.ndarray:
        """Fooled samples: finite distance (clean errors, d = 0, included)."""
        return np.isfinite(self.l2)

    @property
    def size(self) -> int:
        return int(self.l2.shape[-1])


@dataclass(frozen=True)
class ModelStats:
    """What the audit stores per model. ``clean_accuracy`` and ``noise_accuracy``
    (``[..., K]``, at ``noise_sigma`` ``[K]``) may carry leading (bootstrap) axes."""

    clean_accuracy: Any = None
    jacobian_norm: Optional[float] = None
    noise_sigma: Optional[np.ndarray] = None
    noise_accuracy: Any = None


@dataclass(frozen=True)
class MetricDef:
    """One registered metric: ``fn(data, *args)`` with ``data`` a :class:`Samples`
    (``level='samples'``) or :class:`ModelStats` (``level='model'``)."""

    name: str
    fn: Callable[..., Any]
    doc: str
    params: tuple[str, ...] = ()  # names of the numeric arguments, e.g. ("d",)
    level: str = "samples"  # "samples" | "model"
    columns: tuple[str, ...] = ()  # stored per-sample columns read (level "samples")
    count: bool = False  # an integer count

    @property
    def signature(self) -> str:
        """``error_at(d)``, ``rho_adv`` — how the definitions name it."""
        return self.name + (f"({', '.join(self.params)})" if self.params else "")

    def __call__(self, data, *args) -> np.ndarray:
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} argument(s) ({', '.join(self.params) or 'none'}), "
                            f"got {len(args)}")
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(self.fn(data, *(float(a) for a in args)), dtype=np.float64)


#: name → :class:`MetricDef`, in the order of registration
METRICS: dict[str, MetricDef] = {}


def register(name: str, doc: str, params: tuple = (), level: str = "samples", columns: tuple = ("l2",),
             count: bool = False):
    """Decorator: add ``fn`` to :data:`METRICS` under ``name``."""
    def deco(fn):
        if name in METRICS:
            raise ValueError(f"metric {name!r} is registered twice")
        METRICS[name] = MetricDef(name, fn, doc, tuple(params), level, tuple(columns) if level == "samples" else (),
                                  count)
        return fn
    return deco


def get(name: str) -> MetricDef:
    """The registered metric ``name`` (a :class:`ConfigError` lists the valid ones)."""
    try:
        return METRICS[name]
    except KeyError:
        raise unknown_name("metric", name, METRICS) from None


def compute(name: str, data, *args) -> np.ndarray:
    """``get(name)(data, *args)``: an array over the leading axes of ``data``."""
    return get(name)(data, *args)


def values(data, names: Iterable[str]) -> dict:
    """Argument-free metrics ``names`` of one (unbatched) ``data`` as plain numbers
    (ints for counts, floats otherwise)."""
    out = {}
    for n in names:
        m = get(n)
        v = float(m(data))
        out[n] = int(v) if m.count and np.isfinite(v) else v
    return out


def definitions(names: Optional[Iterable[str]] = None) -> dict:
    """``{signature: doc}`` of ``names`` (default: every metric), written next to tables."""
    return {get(n).signature: get(n).doc for n in (METRICS if names is None else names)}


# --------------------------------------------------------------- helpers ----
def _count(s: Samples) -> np.ndarray:
    return np.full(s.l2.shape[:-1], float(s.size))


def _frac(mask: np.ndarray) -> np.ndarray:
    if mask.shape[-1] == 0:
        return np.full(mask.shape[:-1], np.nan)
    return mask.mean(axis=-1)


def _masked_mean(values_: np.ndarray, mask: np.ndarray) -> np.ndarray:
    cnt = mask.sum(axis=-1)
    tot = np.where(mask, values_, 0.0).sum(axis=-1)
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), np.nan)


def _masked_median(values_: np.ndarray, mask: np.ndarray) -> np.ndarray:
    v = np.where(mask, values_, np.nan)
    if v.shape[-1] == 0:
        return np.full(v.shape[:-1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices are NaN, as documented
        return np.nanmedian(v, axis=-1)


def _ratio_mask(s: Samples, attacked_only: bool) -> tuple[np.ndarray, np.ndarray]:
    xn = s.need("x_norm")
    mask = s.fooled & (xn > 0)
    if attacked_only:
        mask &= s.l2 > 0
    return s.l2 / np.where(xn > 0, xn, 1.0), mask


def _l0_frac(s: Samples) -> np.ndarray:
    if not s.n_inputs:
        raise InputError("the card has no input_shape, so L0 cannot be turned into a fraction of input components")
    return s.need("l0") / s.n_inputs


def _l0_mask(s: Samples) -> np.ndarray:
    return s.fooled & np.isfinite(s.need("l0"))


# ------------------------------------------------------- per-sample metrics ----
@register("n", "number of evaluated samples (rows stored for this checkpoint and search)", count=True)
def _n(s: Samples):
    return _count(s)


@register("n_fooled", "samples the search fooled (finite distance; clean errors count at distance 0)", count=True)
def _n_fooled(s: Samples):
    return s.fooled.sum(axis=-1)


@register("already_misclassified",
          "samples misclassified before any perturbation (distance 0; they count as fooled)", count=True)
def _already(s: Samples):
    return (s.l2 == 0).sum(axis=-1)


@register("success_rate", "fooled / n over all n samples (clean errors count as fooled at distance 0)")
def _success_rate(s: Samples):
    return _frac(s.fooled)


@register("not_fooled", "samples the search did not fool within its budget (distance +inf)", count=True)
def _not_fooled(s: Samples):
    return (~s.fooled).sum(axis=-1)


@register("not_fooled_rate", "not_fooled / n")
def _not_fooled_rate(s: Samples):
    return _frac(~s.fooled)


@register("rho_adv", "mean of L2 distance / ||x||_2 over the fooled samples, clean errors included with d = 0 "
                     "(Jakubovitz–Giryes ρ̂_adv over the successfully attacked samples; n_rho samples)",
          columns=("l2", "x_norm"))
def _rho_adv(s: Samples):
    return _masked_mean(*_ratio_mask(s, False))


@register("rho_adv_attacked", "the same mean without the already-misclassified samples (d > 0 only)",
          columns=("l2", "x_norm"))
def _rho_adv_attacked(s: Samples):
    return _masked_mean(*_ratio_mask(s, True))


@register("n_rho", "samples that rho_adv averages (fooled, ||x||_2 > 0)", columns=("l2", "x_norm"), count=True)
def _n_rho(s: Samples):
    return _ratio_mask(s, False)[1].sum(axis=-1)


@register("median_l2", "median L2 fooling distance over the fooled samples (same samples as rho_adv)")
def _median_l2(s: Samples):
    return _masked_median(s.l2, s.fooled)


@register("mean_l2", "mean L2 fooling distance over the fooled samples (same samples as rho_adv)")
def _mean_l2(s: Samples):
    return _masked_mean(s.l2, s.fooled)


@register("d50", "the L2 distance at which the test error reaches 50%: the median distance over all n samples, "
                 "not-fooled ones counted as +inf")
def _d50(s: Samples):
    if s.size == 0:
        return np.full(s.l2.shape[:-1], np.nan)
    return np.median(s.l2, axis=-1)


@register("error_at", "fraction of all N samples with fooling distance <= d (clean errors count at d = 0)",
          params=("d",))
def _error_at(s: Samples, d: float):
    return _frac(s.l2 <= d)


@register("accuracy_at", "fraction of all N samples with L2 fooling distance > d (1 − error_at)", params=("d",))
def _accuracy_at(s: Samples, d: float):
    return 1.0 - _frac(s.l2 <= d)


@register("error_at_linf", "fraction of all N samples with L∞ fooling distance <= eps (e.g. FGSM)",
          params=("eps",), columns=("linf",))
def _error_at_linf(s: Samples, eps: float):
    return _frac(s.need("linf") <= eps)


@register("accuracy_at_linf", "fraction of all N samples whose smallest fooling L∞ step is > eps (FGSM)",
          params=("eps",), columns=("linf",))
def _accuracy_at_linf(s: Samples, eps: float):
    return 1.0 - _frac(s.need("linf") <= eps)


@register("error_at_l0", "fraction of all N samples fooled by changing at most a fraction f of the input "
                         "components (JSMA; L0 / C·H·W)", params=("f",), columns=("l0",))
def _error_at_l0(s: Samples, f: float):
    return _frac(_l0_frac(s) <= f)


@register("accuracy_at_l0", "fraction of all N samples not fooled by changing a fraction f of the input "
                            "components (JSMA)", params=("f",), columns=("l0",))
def _accuracy_at_l0(s: Samples, f: float):
    return 1.0 - _frac(_l0_frac(s) <= f)


@register("median_l0", "median number of changed input components (L0) over the fooled samples (JSMA)",
          columns=("l2", "l0"))
def _median_l0(s: Samples):
    return _masked_median(s.need("l0"), _l0_mask(s))


@register("mean_l0", "mean L0 over the fooled samples (JSMA)", columns=("l2", "l0"))
def _mean_l0(s: Samples):
    return _masked_mean(s.need("l0"), _l0_mask(s))


@register("median_l0_frac", "median_l0 as a fraction of the input components", columns=("l2", "l0"))
def _median_l0_frac(s: Samples):
    return _masked_median(_l0_frac(s), _l0_mask(s))


@register("mean_l0_frac", "mean_l0 as a fraction of the input components", columns=("l2", "l0"))
def _mean_l0_frac(s: Samples):
    return _masked_mean(_l0_frac(s), _l0_mask(s))


# ------------------------------------------------------------ model metrics ----
def _stored(v, what: str):
    if v is None:
        raise InputError(f"no stored {what}")
    return np.asarray(v, dtype=np.float64)


@register("clean_accuracy", "clean test accuracy stored by the audit", level="model")
def _clean_accuracy(m: ModelStats):
    return _stored(m.clean_accuracy, "clean accuracy")


@register("clean_error", "1 − clean accuracy", level="model")
def _clean_error(m: ModelStats):
    return 1.0 - _stored(m.clean_accuracy, "clean accuracy")


@register("jacobian_norm", "mean ‖J‖_F (pixel space) stored by the audit", level="model")
def _jacobian_norm(m: ModelStats):
    return _stored(m.jacobian_norm, "jacobian_norm")


@register("noise_accuracy", "accuracy under white noise of standard deviation sigma (linear interpolation "
                            "between the stored σ)", params=("sigma",), level="model")
def _noise_accuracy(m: ModelStats, sigma: float):
    if m.noise_sigma is None or not len(m.noise_sigma):
        raise InputError("no stored white-noise accuracies")
    sig = np.asarray(m.noise_sigma, dtype=np.float64)
    acc = np.asarray(m.noise_accuracy, dtype=np.float64)
    order = np.argsort(sig, kind="stable")
    sig, acc = sig[order], acc[..., order]
    if sigma < sig[0] - 1e-12 or sigma > sig[-1] + 1e-12:
        raise InputError(f"noise_accuracy[{sigma:g}]: σ outside the stored range [{sig[0]:g}, {sig[-1]:g}]")
    if sig.size == 1:
        return acc[..., 0]
    i = int(np.clip(np.searchsorted(sig, sigma, side="right") - 1, 0, sig.size - 2))
    w = float(np.clip((sigma - sig[i]) / (sig[i + 1] - sig[i]), 0.0, 1.0)) if sig[i + 1] > sig[i] else 0.0
    return acc[..., i] * (1.0 - w) + acc[..., i + 1] * w


# ----------------------------------------------- checked scalar entry points ----
def check_distances(l2, x_norm=None, fooled=None) -> Samples:
    """Validate stored distances (1-D) and return them as :class:`Samples`.

    Raises ValueError for NaN or negative distances, for ``fooled`` that is not exactly
    ``isfinite(l2)``, and for columns of different lengths."""
    d = np.asarray(l2, dtype=np.float64).reshape(-1)
    if np.isnan(d).any():
        raise ValueError("distances contain NaN; use +inf for 'not fooled'")
    if (d < 0).any():
        raise ValueError("distances must be >= 0")
    if fooled is not None:
        f = np.asarray(fooled, dtype=bool).reshape(-1)
        if f.shape != d.shape:
            raise ValueError(f"fooled has {f.size} entries, distances {d.size}")
        if (f != np.isfinite(d)).any():
            raise ValueError("fooled must be exactly the samples with a finite distance")
    xn = None
    if x_norm is not None:
        xn = np.asarray(x_norm, dtype=np.float64).reshape(-1)
        if xn.shape != d.shape:
            raise ValueError(f"x_norm has {xn.size} entries, distances {d.size}")
    return Samples(d, xn)


def summarize(l2, x_norm, fooled=None) -> dict:
    """Per model × search summary of stored distances (:data:`SUMMARY_KEYS`).

    ``l2``: [n] fooling distances (0 = already misclassified, +inf = not fooled);
    ``x_norm``: [n] ‖x_i‖₂ of the clean inputs (pixel space); ``fooled``: [n] bool
    (defaults to ``isfinite(l2)``). See the module docstring for which samples each
    number averages.
    """
    return values(check_distances(l2, x_norm, fooled), SUMMARY_KEYS)


def rho_adv(l2, x_norm, fooled=None) -> float:
    """ρ̂_adv = mean over fooled samples (zeros included, ‖x‖₂ > 0) of d_i / ‖x_i‖₂."""
    return float(METRICS["rho_adv"](check_distances(l2, x_norm, fooled)))


def error_at(l2, distance: float) -> float:
    """Test error at fooling distance ``distance``: fraction of all evaluated samples
    with d ≤ distance (already-misclassified samples count from distance 0)."""
    return float(METRICS["error_at"](check_distances(l2), distance))


def error_curve(l2, distances: Optional[Iterable[float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """The test-error-vs-distance curve (Hoffman et al. Fig. S5): ``error_at`` on a grid.

    Returns ``(distances, errors)``; by default the distances are 0 and the sorted
    distinct finite stored distances, so the curve is exact (a step function,
    right-continuous: ``step(x, y, where='post')``). Not-fooled samples (+inf) never
    enter it, so it ends below 1 when some survive the search.
    """
    d = check_distances(l2).l2
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
    w = check_distances(weaker).l2
    s = check_distances(stronger).l2
    if w.shape != s.shape:
        raise ValueError("both searches must cover the same samples")
    both = np.isfinite(w) & np.isfinite(s) & (w > 0) & (s > 0)
    viol = both & (w < s * (1.0 - rel_tol))
    return int(viol.sum()), int(both.sum())
