"""Decision-cell cross sections (Hoffman et al. 2019, Fig. 1, S1, S2): the figure and its files.

Drawing only: reads a :class:`~robustbench_jr.evaluation.cells.CellsResult` computed by
:func:`robustbench_jr.evaluation.cells.cross_sections` (in-memory models) or
:func:`~robustbench_jr.evaluation.cells.checkpoint_cross_sections` (checkpoints). Every
panel is coloured by the predicted class with opacity set by the max softmax; a circle
marks the distance to the closest decision boundary within the plane; on adversarial
planes the FGSM points are marked. In the box the searches use (the default), the
model sees every point clipped to [0, 1]; the region where clipping removes more than
half of a point's offset (it lies mostly outside the image box) is hatched.
"""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np

from ..evaluation.cells import CellsResult
from .plots import new_figure, style

__all__ = ["CLASS_COLORS", "OUTSIDE_MARK", "render", "save_cells"]

#: hatch the grid points whose offset lies more than this fraction outside [0, 1]
OUTSIDE_MARK = 0.5

#: one colour per class (matplotlib's tab10), the same in every panel
CLASS_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"]


def _class_color(k: int) -> str:
    if k < len(CLASS_COLORS):
        return CLASS_COLORS[k]
    h = (k * 0.61803398875) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.55, 0.85)
    return "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))


def render(res: CellsResult):
    """The figure: the sample, then one panel per checkpoint on the same plane."""
    import matplotlib
    from matplotlib.colors import to_rgb
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Patch

    n = len(res.panels)
    with style():
        fig = new_figure(1.6 + 4.3 * n, 4.9)
        gs = fig.add_gridspec(1, n + 1, width_ratios=[0.42] + [1] * n)
        ax0 = fig.add_subplot(gs[0, 0])
        ax0.imshow(res.image, cmap="gray" if res.image.ndim == 2 else None, vmin=0, vmax=1)
        ax0.set_title(f"sample {res.index}\nlabel {res.label}", fontsize=10)
        ax0.set_xticks([])
        ax0.set_yticks([])
        ax0.grid(False)
        for s in ax0.spines.values():
            s.set_visible(True)
        R = res.radius
        extent = (-R, R, -R, R)
        used = set()
        floor = 1.0 / max(res.num_classes, 2)
        for k, p in enumerate(res.panels):
            ax = fig.add_subplot(gs[0, k + 1])
            rgb = np.array([to_rgb(_class_color(c)) for c in range(res.num_classes)])[p.pred]
            alpha = 0.18 + 0.82 * np.clip((p.conf - floor) / (1 - floor), 0, 1)
            ax.imshow(np.dstack([rgb, alpha]), origin="lower", extent=extent, interpolation="nearest")
            used.update(np.unique(p.pred).tolist())
            ax.contour(res.coords, res.coords, p.conf, levels=[0.5, 0.9, 0.99], colors="#222", linewidths=0.5,
                       alpha=0.45)
            if res.box and res.outside is not None and (res.outside > OUTSIDE_MARK).any():
                with matplotlib.rc_context({"hatch.color": "#555555", "hatch.linewidth": 0.4}):
                    ax.contourf(res.coords, res.coords, (res.outside > OUTSIDE_MARK).astype(float),
                                levels=[0.5, 1.5], colors="none", hatches=["...."], zorder=3)
                ax.contour(res.coords, res.coords, res.outside, levels=[OUTSIDE_MARK], colors="#555555",
                           linewidths=0.8, linestyles=":", zorder=3)
            if p.boundary is not None and p.boundary <= 1.5 * R:
                ax.add_patch(Circle((0, 0), p.boundary, fill=False, ec="white", lw=2.6))
                ax.add_patch(Circle((0, 0), p.boundary, fill=False, ec="black", lw=1.2, ls="--"))
            ax.plot([0], [0], "o", ms=6.5, mfc="black", mec="white", mew=1.2, zorder=5)
            for j, q in enumerate(res.panels):
                if q.fgsm_point is not None and max(map(abs, q.fgsm_point)) <= R:
                    ax.plot(*q.fgsm_point, "o", ms=7, mfc="#404040" if j == 0 else "#d9d9d9", mec="black", mew=0.8,
                            zorder=5)
            ax.set_xlim(-R, R)
            ax.set_ylim(-R, R)
            ax.set_aspect("equal")
            ax.grid(False)
            bd = "no boundary in plane" if p.boundary is None else f"closest boundary in plane: {p.boundary:.2f}"
            if p.boundary is not None and res.box and p.boundary_l2 is not None:
                bd = f"boundary {p.boundary:.2f} in plane, L2 {p.boundary_l2:.2f} clipped"
            ax.set_title(f"{p.name}\n{bd}", fontsize=10.5)
            ax.set_xlabel(f"{res.axis_labels[0]} (L2)", fontsize=9)
            if k == 0:
                ax.set_ylabel(f"{res.axis_labels[1]} (L2)", fontsize=9)
        handles = [Patch(color=_class_color(c), label=f"class {c}") for c in sorted(used)]
        handles.append(Line2D([], [], marker="o", ls="", mfc="black", mec="white", label="test sample"))
        handles.append(Line2D([], [], ls="--", color="black", label="closest boundary (in plane)"))
        if res.box and res.outside is not None and (res.outside > OUTSIDE_MARK).any():
            handles.append(Patch(facecolor="white", edgecolor="#555555", hatch="....",
                                 label=f"> {OUTSIDE_MARK:.0%} of the offset outside [0, 1] (clipped)"))
        for j, q in enumerate(res.panels):
            if q.fgsm_point is not None and max(map(abs, q.fgsm_point)) <= R:
                handles.append(Line2D([], [], marker="o", ls="", mfc="#404040" if j == 0 else "#d9d9d9", mec="black",
                                      label=f"FGSM point of {q.name} (ε={q.fgsm_eps:.3f}"
                                            + (f", L2 {q.fgsm_l2:.2f})" if q.fgsm_l2 is not None else ")")))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8.5)
        box = ("points clipped to [0,1] as the searches clip" if res.box else
               "geometric plane, not clipped to [0,1]")
        fig.suptitle(f"Decision cells through test sample {res.index}, {res.plane} plane ({box})\n"
                     f"colour = predicted class · opacity = max softmax · distances are L2 in [0,1] pixel space",
                     fontsize=11.5)
    return fig


def save_cells(res: CellsResult, out_dir: Path) -> dict[str, Path]:
    """Write ``cells-<index>-<plane>.png/.svg/.json`` into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"cells-{res.index}-{res.plane}"
    fig = render(res)
    paths = {}
    with style():
        for ext in ("png", "svg"):
            p = stem.with_suffix(f".{ext}")
            fig.savefig(p, dpi=150 if ext == "png" else None,
                        metadata={"Date": None} if ext == "svg" else {"Software": "robustbench-jr"})
            paths[ext] = p
    fig.clear()
    doc = {"index": res.index, "sample_id": res.sample_id, "label": res.label, "plane": res.plane,
           "radius": res.radius, "resolution": len(res.coords), "seed": res.seed, "axes": list(res.axis_labels),
           "box": "clipped to [0, 1] (the searches' box)" if res.box else "not clipped (geometric plane)",
           "outside_fraction_of_grid": None if res.outside is None else float((res.outside > 0).mean()),
           "mostly_outside_fraction_of_grid": None if res.outside is None
           else float((res.outside > OUTSIDE_MARK).mean()),
           "checkpoints": [{"name": p.name, "source": p.source, "prediction": p.center_pred,
                            "max_softmax": p.center_conf, "boundary_in_plane": p.boundary,
                            "boundary_l2": p.boundary_l2, "fgsm_eps": p.fgsm_eps, "fgsm_l2": p.fgsm_l2,
                            "fgsm_point": p.fgsm_point,
                            "classes_in_plane": sorted(int(c) for c in np.unique(p.pred))} for p in res.panels]}
    paths["json"] = stem.with_suffix(".json")
    paths["json"].write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return paths
