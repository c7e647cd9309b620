"""Report figures (matplotlib, Agg canvas, no pyplot global state).

* test error vs L2 distance: one figure per search with a curve per checkpoint
  (Hoffman et al. Fig. 3b–c) and one per checkpoint with a curve per search (Fig. S5),
  each curve with a shaded pointwise 95% bootstrap band (:func:`error_band`: the gate's
  seeded resamples of the samples, :class:`~.gate.Sampler`);
* accuracy vs σ of white noise (Fig. 3a);
* accuracy vs ε for FGSM (L∞) and JSMA (fraction of input components changed),
  Jakubovitz–Giryes Figs. 1–2;
* ρ̂_adv per search and checkpoint as grouped bars.

Every checkpoint keeps one colour in every figure; every search keeps one colour.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import JRError
from ..evaluation import metrics
from .gate import Policy, Sampler
from .runs import SEARCH_COLORS, ModelData, RunData, all_models, order_searches, search_kind, search_label

#: colour-blind-safe palette (Okabe–Ito), one colour per checkpoint in report order
CHECKPOINT_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
_EXTRA_SEARCH_COLORS = ["#6c757d", "#b5651d", "#17becf", "#bcbd22"]

L2_LABEL = "L2 distance in [0,1] pixel space"
#: the error curves' bands: pointwise two-sided percentile interval at this level over the
#: gate's default bootstrap (``Policy().bootstrap`` resamples of the samples, ``Policy().seed``,
#: tag ``run``), so a band shows the same resamples that ``jr-eval gate --confidence`` judges
BAND_LEVEL = 0.95
BAND_ALPHA = 0.16
STYLE = {
    "font.size": 10.5, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 10.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.color": "#e3e6ea",
    "grid.linewidth": 0.8, "axes.edgecolor": "#9aa0a6", "axes.axisbelow": True, "legend.frameon": False,
    "legend.fontsize": 9.5, "xtick.color": "#444", "ytick.color": "#444", "axes.labelcolor": "#222",
    "figure.facecolor": "white", "savefig.facecolor": "white", "svg.fonttype": "path", "lines.linewidth": 2.0,
}


def _mpl():
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is part of the report extra
        raise JRError("reports need matplotlib: pip install matplotlib") from None
    return matplotlib, Figure, FigureCanvasAgg


@contextmanager
def style():
    matplotlib, _, _ = _mpl()
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(w: float = 7.0, h: float = 4.3, **kw):
    _, Figure, FigureCanvasAgg = _mpl()
    fig = Figure(figsize=(w, h), layout="constrained", **kw)
    FigureCanvasAgg(fig)
    return fig


@dataclass
class ReportFigure:
    name: str  # file stem, unique within a report
    title: str
    caption: str
    fig: object
    section: str = "curves"
    wide: bool = False  # spans the whole width of the HTML page


def slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-").lower() or "x"


@dataclass(frozen=True)
class CheckpointStyle:
    """How one checkpoint is drawn. Past the 8 colours the palette repeats with another dash
    pattern (curves) and hatch (bars), so every checkpoint of a report stays distinguishable."""
    color: str
    linestyle: object
    hatch: Optional[str]

    @property
    def line(self) -> dict:
        """Keyword arguments for a curve of this checkpoint."""
        return {"color": self.color, "ls": self.linestyle}


_DASHES = ["-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2))]
_HATCHES = [None, "///", "...", "xxx"]


def checkpoint_styles(models: list[ModelData]) -> dict[int, CheckpointStyle]:
    n = len(CHECKPOINT_COLORS)
    return {id(m): CheckpointStyle(CHECKPOINT_COLORS[i % n], _DASHES[i // n % len(_DASHES)],
                                   _HATCHES[i // n % len(_HATCHES)]) for i, m in enumerate(models)}


def checkpoint_colors(models: list[ModelData]) -> dict[int, str]:
    return {k: st.color for k, st in checkpoint_styles(models).items()}


def search_color(name: str, extra: dict) -> str:
    lab = search_label(name)
    if lab in SEARCH_COLORS:
        return SEARCH_COLORS[lab]
    if lab not in extra:
        extra[lab] = _EXTRA_SEARCH_COLORS[len(extra) % len(_EXTRA_SEARCH_COLORS)]
    return extra[lab]


def _x_limit(dists: list[np.ndarray]) -> float:
    """Right edge for distance curves: the largest finite distance unless a few outliers stretch it."""
    fin = np.concatenate([d[np.isfinite(d) & (d > 0)] for d in dists]) if dists else np.zeros(0)
    if fin.size == 0:
        return 1.0
    hi, p99 = float(fin.max()), float(np.quantile(fin, 0.99))
    return 1.05 * (hi if hi <= 1.5 * p99 else 1.5 * p99)


def _plot_x(x: np.ndarray, xmax: float, log_x: bool) -> np.ndarray:
    """A step curve's x: its grid extended to the right edge; on a log axis 0 sits at half
    the smallest positive distance."""
    x = np.concatenate([x, [max(xmax, x[-1])]])
    if log_x:
        pos = x[x > 0]
        x = np.where(x > 0, x, (pos.min() if pos.size else 1e-3) / 2)
    return x


def _ext(y: np.ndarray) -> np.ndarray:
    return np.concatenate([y, [y[-1]]])


def _step(ax, dist: np.ndarray, xmax: float, log_x: bool, flip: bool = False, **kw):
    x, y = metrics.error_curve(dist)
    if flip:
        y = 1.0 - y
    return ax.step(_plot_x(x, xmax, log_x), _ext(y), where="post", **kw)[0]


def error_band(l2: np.ndarray, idx: np.ndarray, level: float = BAND_LEVEL) -> tuple[np.ndarray, ...]:
    """The test-error-vs-L2 curve with a pointwise bootstrap band: ``(grid, curve, lo, hi)``.

    ``grid, curve`` are :func:`metrics.error_curve` of ``l2``; ``idx`` (``[B, N]``) are
    bootstrap resamples of the samples (the gate's :meth:`Sampler.indices`). At every grid
    point ``lo``/``hi`` are the (1 − level)/2 and (1 + level)/2 quantiles over the B
    replicates of ``error_at`` (fraction of the resampled N with distance ≤ d). The curve is
    a step function that changes only at stored distances, and so is every replicate, so
    the band is exact between grid points too. All samples equal gives a zero-width band.
    """
    d = metrics.check_distances(l2).l2
    grid, curve = metrics.error_curve(d)
    n = d.size
    idx = np.asarray(idx, dtype=np.int64)
    if n == 0 or idx.size == 0:
        return grid, curve, curve.copy(), curve.copy()
    order = np.argsort(d, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    below = np.searchsorted(d[order], grid, side="right")  # samples with distance <= grid point
    reps = np.empty((idx.shape[0], grid.size), dtype=np.float64)
    for lo in range(0, idx.shape[0], 64):  # [64, N] counts at a time: memory O(64·N)
        chunk = rank[idx[lo:lo + 64]]
        b = chunk.shape[0]
        counts = np.bincount((chunk + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        cum = np.concatenate([np.zeros((b, 1), dtype=np.int64), np.cumsum(counts, axis=1)], axis=1)
        reps[lo:lo + b] = cum[:, below] / n
    a = (1.0 - level) / 2
    band_lo, band_hi = np.quantile(reps, [a, 1.0 - a], axis=0)
    return grid, curve, band_lo, band_hi


class Bands:
    """Bootstrap bands of a report's curves, computed once per checkpoint × search from the
    gate's seeded resamples (one resample of the samples per checkpoint, shared by its
    searches, as in the gate)."""

    def __init__(self, reps: Optional[int] = None, seed: Optional[int] = None, level: float = BAND_LEVEL):
        pol = Policy([])
        self.reps = pol.bootstrap if reps is None else int(reps)
        self.seed = pol.seed if seed is None else int(seed)
        self.level = level
        self.sampler = Sampler(self.reps, self.seed)
        self.cache: dict = {}

    def of(self, m: ModelData, search: str) -> tuple[np.ndarray, ...]:
        key = (id(m), search)
        if key not in self.cache:
            idx = self.sampler.indices("run", m, search)
            self.cache[key] = error_band(m.results[search]["l2"], idx, self.level)
        return self.cache[key]

    def draw(self, ax, m: ModelData, search: str, xmax: float, log_x: bool, color: str, alpha: float = BAND_ALPHA):
        grid, _, lo, hi = self.of(m, search)
        ax.fill_between(_plot_x(grid, xmax, log_x), _ext(lo), _ext(hi), step="post", color=color, alpha=alpha,
                        linewidth=0)


def _finish_distance_axes(ax, xmax, log_x, xlabel, ylabel, min_pos=None):
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(left=(min_pos or 1e-3) / 2, right=xmax)
    else:
        ax.set_xlim(0, xmax)
    ax.yaxis.set_major_formatter(_pct_formatter())


def pct_decimals(locs, most: int = 4) -> int:
    """The fewest decimals that write every tick location (fractions) exactly as a percentage,
    so that no two ticks read the same (0.5% is not written 0% or 1%)."""
    v = 100 * np.asarray(locs, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0
    tol = 1e-6 * max(1.0, float(np.abs(v).max()))
    for dec in range(most + 1):
        if np.all(np.abs(np.round(v, dec) - v) <= tol):
            return dec
    return most


def _pct_formatter():
    """Fractions as percentages, with the decimals the axis's ticks need (:func:`pct_decimals`)."""
    from matplotlib.ticker import Formatter

    class PercentTicks(Formatter):
        decimals = 0

        def set_locs(self, locs):
            super().set_locs(locs)
            self.decimals = pct_decimals(locs)

        def __call__(self, x, pos=None):
            return f"{100 * x + 0.0:.{self.decimals}f}%"  # + 0.0: no "-0%"

    return PercentTicks()


def _min_pos(dists):
    fin = np.concatenate([d[np.isfinite(d) & (d > 0)] for d in dists]) if dists else np.zeros(0)
    return float(fin.min()) if fin.size else None


def _legend(ax, n, bands: Optional[Bands] = None):
    handles, labels = ax.get_legend_handles_labels()
    if bands is not None:
        from matplotlib.patches import Patch
        handles.append(Patch(facecolor="#888888", alpha=0.35, linewidth=0))
        labels.append(f"{100 * bands.level:g}% bootstrap band")
        n += 1
    ax.legend(handles, labels, loc="lower right" if n <= 6 else "center left",
              bbox_to_anchor=None if n <= 6 else (1.0, 0.5))


def fig_error_by_search(models: list[ModelData], search: str, styles: dict, log_x: bool,
                        bands: Optional[Bands] = None) -> ReportFigure:
    have = [m for m in models if search in m.results]
    dists = [m.results[search]["l2"] for m in have]
    xmax, mp = _x_limit(dists), _min_pos(dists)
    fig = new_figure()
    ax = fig.add_subplot()
    for m in have:
        r = m.results[search]
        rho = metrics.rho_adv(r["l2"], r["x_norm"], r["fooled"])
        if bands is not None:
            bands.draw(ax, m, search, xmax, log_x, styles[id(m)].color)
        _step(ax, r["l2"], xmax, log_x, **styles[id(m)].line,
              label=f"{m.label}  (ρ̂_adv {float(rho):.3f}, N={len(r['l2'])})")
    _finish_distance_axes(ax, xmax, log_x, L2_LABEL + (" (log scale)" if log_x else ""),
                          "test error (fraction of N samples)", mp)
    ax.set_title(f"Test error vs L2 fooling distance — {search_label(search)}")
    _legend(ax, len(have), bands)
    cap = (f"{search_label(search)}: fraction of the evaluated samples whose fooling distance is ≤ d, one curve per "
           f"checkpoint. The value at d = 0 is the clean test error; a curve that stays below 100% has samples the "
           f"search did not fool within its budget." + (f" {_band_caption(bands)}" if bands is not None else ""))
    return ReportFigure(f"error_vs_l2_{slug(search)}", f"Test error vs L2 distance: {search_label(search)}", cap, fig)


def _band_caption(bands: Bands) -> str:
    return (f"Shaded: pointwise {100 * bands.level:g}% bootstrap band of each curve (percentile interval over "
            f"{bands.reps} resamples, with replacement, of the N samples; seed {bands.seed}, the gate's default "
            f"resamples): the sampling uncertainty of the estimate from N samples, not a spread over seeds or "
            f"searches.")


def fig_error_by_model(m: ModelData, color_of_search, log_x: bool, xlim: Optional[tuple] = None,
                       bands: Optional[Bands] = None) -> ReportFigure:
    """``xlim = (min positive distance, right edge)`` shared by all checkpoints keeps their figures comparable."""
    dists = [r["l2"] for r in m.results.values()]
    xmax, mp = xlim if xlim else (_x_limit(dists), _min_pos(dists))
    fig = new_figure()
    ax = fig.add_subplot()
    for s, r in m.results.items():
        if bands is not None:
            bands.draw(ax, m, s, xmax, log_x, color_of_search(s), alpha=BAND_ALPHA * 0.75)
        _step(ax, r["l2"], xmax, log_x, color=color_of_search(s), label=search_label(s))
    _finish_distance_axes(ax, xmax, log_x, L2_LABEL + (" (log scale)" if log_x else ""),
                          "test error (fraction of N samples)", mp)
    ax.set_title(f"Test error vs L2 fooling distance — {m.label}")
    _legend(ax, len(m.results), bands)
    cap = (f"Checkpoint {m.label}: the same samples under every search (Hoffman et al. Fig. S5). The stronger a "
           f"search, the further left its curve." + (f" {_band_caption(bands)}" if bands is not None else ""))
    return ReportFigure(f"error_vs_l2_model_{slug(m.label)}", f"All searches on {m.label}", cap, fig, "checkpoints")


def fig_noise(models: list[ModelData], styles: dict) -> Optional[ReportFigure]:
    have = [m for m in models if m.noise]
    if not have:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    for m in have:
        s, a, _ = zip(*m.noise)
        ax.plot(s, a, marker="o", ms=4, **styles[id(m)].line, label=m.label)
    ax.set_xlabel("white-noise σ (per pixel, [0,1] pixel space, clipped)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.yaxis.set_major_formatter(_pct_formatter())
    ax.set_title("Accuracy under white noise")
    ax.legend(loc="lower left")
    cap = ("Test accuracy when every pixel gets independent N(0, σ²) noise and the image is clipped to [0, 1] "
           "(Hoffman et al. Fig. 3a), as stored by the audit.")
    return ReportFigure("noise_accuracy_vs_sigma", "Accuracy vs white-noise σ", cap, fig, "accuracy")


def fig_eps(models: list[ModelData], kind: str, styles: dict) -> Optional[ReportFigure]:
    pairs = [(m, s) for m in models for s in m.results if search_kind(s) == kind]
    if not pairs:
        return None
    fig = new_figure()
    ax = fig.add_subplot()
    xs = []
    for m, s in pairs:
        r = m.results[s]
        if kind == "fgsm":
            e = r["linf"]
        else:
            e = r["l0"] / m.n_inputs if m.n_inputs else r["l0"]
        xs.append(e)
    xmax = _x_limit(xs)
    multi = len({s for _, s in pairs}) > 1
    for (m, s), e in zip(pairs, xs):
        _step(ax, e, xmax, False, flip=True, **styles[id(m)].line,
              label=m.label + (f" ({search_label(s)})" if multi else ""))
    if kind == "fgsm":
        ax.set_xlabel("ε = L∞ size of the FGSM step ([0,1] pixel space)")
        title, name = "Accuracy vs ε — FGSM", "fgsm_accuracy_vs_eps"
        cap = ("FGSM: accuracy at ε = fraction of samples whose smallest fooling ε (L∞, after clipping) is larger "
               "than ε; clean errors count as wrong at every ε (Jakubovitz–Giryes Fig. 1).")
    else:
        unit = "fraction of input components changed" if all(m.n_inputs for m, _ in pairs) else "input components changed"
        ax.set_xlabel(f"ε = {unit} (L0)")
        if all(m.n_inputs for m, _ in pairs):
            ax.xaxis.set_major_formatter(_pct_formatter())
        title, name = "Accuracy vs ε — JSMA", "jsma_accuracy_vs_eps"
        cap = ("JSMA: accuracy at ε = fraction of samples that need more than a fraction ε of the input components "
               "changed to be fooled (L0 / number of components from the checkpoint card; Jakubovitz–Giryes Fig. 2).")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, xmax)
    ax.yaxis.set_major_formatter(_pct_formatter())
    ax.set_title(title)
    ax.legend(loc="upper right")
    return ReportFigure(name, title, cap, fig, "accuracy")


def fig_rho_bars(models: list[ModelData], styles: dict) -> Optional[ReportFigure]:
    searches = order_searches(s for m in models for s in m.results)
    if not searches:
        return None
    fig = new_figure(11.5, 3.9)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(models))
    for i, m in enumerate(models):
        vals = []
        for s in searches:
            r = m.results.get(s)
            vals.append(float(metrics.rho_adv(r["l2"], r["x_norm"], r["fooled"])) if r is not None else np.nan)
        pos = np.arange(len(searches)) + (i - (len(models) - 1) / 2) * width
        st = styles[id(m)]
        bars = ax.bar(pos, np.nan_to_num(vals), width * 0.92, color=st.color, hatch=st.hatch,
                      edgecolor="white" if st.hatch else None, linewidth=0, label=m.label)
        for b, v in zip(bars, vals):
            if not np.isnan(v):
                ax.annotate(f"{v:.3f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                            fontsize=7.5, xytext=(0, 2), textcoords="offset points", color="#333")
    ax.set_xticks(np.arange(len(searches)), [search_label(s) for s in searches])
    ax.set_ylabel("ρ̂_adv  (mean ‖δ‖₂ / ‖x‖₂)")
    ax.grid(axis="x", visible=False)
    ax.set_title("ρ̂_adv by search")
    top = np.nanmax([p.get_height() for p in ax.patches]) if ax.patches else 1.0
    ax.set_ylim(0, 1.18 * top)
    if len(models) <= 4:  # one legend row fits the headroom above the bars
        ax.legend(loc="upper right", ncols=len(models))
    else:  # more rows would cover the bars and their labels: beside the axes instead
        ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), ncols=1 + (len(models) - 1) // 12)
    cap = ("ρ̂_adv per search and checkpoint: mean of ‖δ_i‖₂/‖x_i‖₂ over the samples each search fooled "
           "(larger is more robust; see the table for how many samples each bar averages).")
    return ReportFigure("rho_adv_by_search", "ρ̂_adv by search", cap, fig, "overview", wide=True)


def make_figures(runs: list[RunData], log_x: bool = False, bands: bool = True, band_reps: Optional[int] = None,
                 band_seed: Optional[int] = None) -> list[ReportFigure]:
    """Every figure of a report. ``bands``: shade the error curves' bootstrap bands
    (``band_reps`` resamples, seed ``band_seed``; default the gate's, see :class:`Bands`)."""
    models = all_models(runs)
    styles = checkpoint_styles(models)
    extra: dict = {}
    figs: list[ReportFigure] = []
    bnd = Bands(band_reps, band_seed) if bands else None
    with style():
        f = fig_rho_bars(models, styles)
        if f:
            figs.append(f)
        for s in order_searches(s for m in models for s in m.results):
            figs.append(fig_error_by_search(models, s, styles, log_x, bnd))
        for f in (fig_noise(models, styles), fig_eps(models, "fgsm", styles), fig_eps(models, "jsma", styles)):
            if f:
                figs.append(f)
        all_d = [r["l2"] for m in models for r in m.results.values()]
        xlim = (_x_limit(all_d), _min_pos(all_d))
        for m in models:
            if m.results:
                figs.append(fig_error_by_model(m, lambda s: search_color(s, extra), log_x, xlim, bnd))
    seen: dict[str, int] = {}
    for f in figs:  # unique file names
        if f.name in seen:
            seen[f.name] += 1
            f.name = f"{f.name}-{seen[f.name]}"
        else:
            seen[f.name] = 0
    return figs


def save_figure(f: ReportFigure, out_dir: Path, dpi: int = 150) -> dict[str, Path]:
    """Write ``NAME.png`` and ``NAME.svg``; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ext in ("png", "svg"):
        p = out_dir / f"{f.name}.{ext}"
        p.write_bytes(figure_bytes(f, ext, dpi))
        paths[ext] = p
    return paths


def _metadata(ext):
    # reproducible files: no creation dates
    return {"Date": None} if ext == "svg" else {"Software": "robustbench-jr"}


def figure_bytes(f: ReportFigure, ext: str = "svg", dpi: int = 150) -> bytes:
    import io

    buf = io.BytesIO()
    with style():
        f.fig.savefig(buf, format=ext, dpi=dpi if ext == "png" else None, metadata=_metadata(ext))
    return buf.getvalue()
