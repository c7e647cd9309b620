"""Decision-cell cross sections (Hoffman et al. 2019, Fig. 1, S1, S2).

A 2-D plane ``x + a·u + b·v`` through a test sample ``x`` (``u``, ``v`` orthonormal
in [0,1] pixel space, so ``a`` and ``b`` are L2 distances). Every grid point is
coloured by the predicted class with opacity set by the max softmax; a circle
marks the distance to the closest decision boundary *within the plane*, found by
casting rays from ``x`` and bisecting the first change of prediction.

The plane is a geometric cross section of the model: points are not clipped to
[0, 1] (clipping would bend the plane), so far from ``x`` they can leave the image
box. ``adversarial`` planes are spanned by FGSM directions (sign of the input
gradient of the cross-entropy at ``x``), computed here directly; the FGSM point
marked on the plane is the smallest ε along that direction that changes the
prediction (unclipped, so that it lies on the plane).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import InputError

#: one colour per class (matplotlib's tab10), the same in every panel
CLASS_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                "#bcbd22", "#17becf"]


@dataclass
class Panel:
    name: str
    source: str
    pred: np.ndarray  # [R, R] predicted class on the grid (row = direction-2 coordinate)
    conf: np.ndarray  # [R, R] max softmax
    center_pred: int
    center_conf: float
    boundary: Optional[float]  # closest boundary in the plane (L2), None if none within the search radius
    fgsm_eps: Optional[float] = None  # adversarial plane: smallest fooling ε along this model's FGSM direction
    fgsm_point: Optional[tuple] = None  # its (a, b) coordinates in the plane


@dataclass
class CellsResult:
    index: int
    sample_id: int
    label: int
    plane: str
    radius: float
    coords: np.ndarray
    image: np.ndarray  # [H, W] or [H, W, C] for the inset
    axis_labels: tuple
    num_classes: int
    seed: int
    panels: list[Panel] = field(default_factory=list)


def _class_color(k: int) -> str:
    if k < len(CLASS_COLORS):
        return CLASS_COLORS[k]
    import colorsys
    h = (k * 0.61803398875) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.55, 0.85)
    return "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))


def _checkpoint_name(spec: str, card: dict) -> str:
    if card.get("name"):
        return str(card["name"])
    p = Path(str(spec))
    return p.stem if p.suffix in (".safetensors", ".pt", ".pth") else p.name or str(spec)


def _load_sample(card: dict, dataset: Optional[str], data_root, index: int):
    from ..data import bundled_mnist, load_dataset

    name = dataset or card.get("dataset") or "mnist"
    if name in ("bundled", "bundled-mnist") or (name == "mnist" and dataset is None and index < 1000):
        ds = bundled_mnist()
    else:
        ds = load_dataset(name, "test", data_root=data_root)
    if not (0 <= index < len(ds)):
        raise InputError(f"--index {index} is out of range: the {ds.name} {ds.split} set here has {len(ds)} samples "
                         f"(valid: 0 … {len(ds) - 1})")
    return ds


@torch.no_grad()
def _predict(model, pts: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    preds, confs = [], []
    for i in range(0, len(pts), chunk):
        p = torch.softmax(model(pts[i:i + chunk]).float(), dim=1)
        c, k = p.max(dim=1)
        preds.append(k)
        confs.append(c)
    return torch.cat(preds), torch.cat(confs)


def _fgsm_direction(model, x: torch.Tensor, y: int) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([y], device=x.device))
    (g,) = torch.autograd.grad(loss, x)
    return g.sign()


def _orthonormal(u: torch.Tensor, v: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    u = u / u.norm()
    v = v - (v * u).sum() * u
    if v.norm() < 1e-6 * max(1.0, float(u.numel()) ** 0.5):  # degenerate: fall back to a random direction
        v = torch.randn(u.shape, generator=gen, dtype=u.dtype).to(u.device)
        v = v - (v * u).sum() * u
    return u, v / v.norm()


def _plane_points(x, u, v, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return x + a.view(-1, 1, 1, 1) * u + b.view(-1, 1, 1, 1) * v


@torch.no_grad()
def boundary_in_plane(model, x, u, v, center_pred: int, r_max: float, angles: int = 120, steps: int = 64,
                      bisect: int = 12) -> Optional[float]:
    """Distance from ``x`` to the nearest change of prediction within the plane (rays + bisection)."""
    theta = torch.arange(angles, dtype=x.dtype, device=x.device) * (2 * np.pi / angles)
    r = torch.linspace(0, r_max, steps + 1, dtype=x.dtype, device=x.device)[1:]
    ca, sa = torch.cos(theta), torch.sin(theta)
    A = (r.view(1, -1) * ca.view(-1, 1)).reshape(-1)
    B = (r.view(1, -1) * sa.view(-1, 1)).reshape(-1)
    pred, _ = _predict(model, _plane_points(x, u, v, A, B))
    diff = (pred != center_pred).view(angles, steps)
    hit = diff.any(dim=1)
    if not hit.any():
        return None
    first = torch.where(hit, diff.float().argmax(dim=1), torch.zeros_like(hit, dtype=torch.long))
    idx = hit.nonzero().view(-1)
    hi = r[first[idx]]
    lo = torch.where(first[idx] > 0, r[(first[idx] - 1).clamp(min=0)], torch.zeros_like(hi))
    c, s = ca[idx], sa[idx]
    for _ in range(bisect):
        mid = (lo + hi) / 2
        p, _ = _predict(model, _plane_points(x, u, v, mid * c, mid * s))
        out = p != center_pred
        hi = torch.where(out, mid, hi)
        lo = torch.where(out, lo, mid)
    return float(hi.min())


@torch.no_grad()
def _fgsm_eps(model, x, d, y: int, eps_max: float = 1.0, steps: int = 200) -> Optional[float]:
    eps = torch.linspace(0, eps_max, steps + 1, dtype=x.dtype, device=x.device)[1:]
    pred, _ = _predict(model, x + eps.view(-1, 1, 1, 1) * d)
    wrong = (pred != y).nonzero()
    return float(eps[wrong[0, 0]]) if len(wrong) else None


def cross_sections(checkpoints: list[str], index: int, plane: str = "random", dataset: Optional[str] = None,
                   data_root=None, radius: Optional[float] = None, resolution: int = 201, seed: int = 0,
                   device="cpu", angles: int = 120) -> CellsResult:
    """Compute the cross sections of every checkpoint on one shared plane through sample ``index``."""
    from ..models import load_checkpoint

    if plane not in ("random", "adversarial"):
        raise InputError(f"unknown plane {plane!r}; valid planes: adversarial, random")
    if resolution < 11 or resolution > 1001:
        raise InputError(f"--resolution {resolution}: use 11 … 1001 grid points per side")
    if radius is not None and not (radius > 0 and np.isfinite(radius)):
        raise InputError(f"--radius must be a positive number, got {radius}")
    device = torch.device(device)
    loaded = [(spec, *load_checkpoint(spec, device=device)) for spec in checkpoints]
    shapes = {tuple(m.input_shape) for _, m, _ in loaded}
    if len(shapes) != 1:
        raise InputError(f"the checkpoints take different input shapes ({', '.join(map(str, shapes))}); "
                         f"cross sections need one shared input space")
    n_classes = max(m.num_classes for _, m, _ in loaded)
    ds = _load_sample(loaded[0][2], dataset, data_root, index)
    x = ds.pixels([index], device=device)
    if tuple(x.shape[1:]) != next(iter(shapes)):
        raise InputError(f"dataset {ds.name} has inputs of shape {tuple(x.shape[1:])} but the checkpoints take "
                         f"{next(iter(shapes))}; pass --dataset")
    y = int(ds.labels[index])
    gen = torch.Generator().manual_seed(int(seed))

    marks: list[Optional[torch.Tensor]] = [None] * len(loaded)
    if plane == "random":
        u0 = torch.randn(x.shape, generator=gen).to(device, x.dtype)
        v0 = torch.randn(x.shape, generator=gen).to(device, x.dtype)
        u, v = _orthonormal(u0, v0, gen)
        names = ("random direction 1", "random direction 2")
    else:
        dirs = []
        for i, (_, model, _) in enumerate(loaded[:2]):
            with torch.enable_grad():
                d = _fgsm_direction(model, x, y)
            marks[i] = d
            dirs.append(d)
        if len(dirs) == 1:
            dirs.append(torch.randn(x.shape, generator=gen).to(device, x.dtype))
        u, v = _orthonormal(dirs[0], dirs[1], gen)
        n0 = _checkpoint_name(loaded[0][0], loaded[0][2])
        names = (f"FGSM direction of {n0}",
                 f"FGSM direction of {_checkpoint_name(loaded[1][0], loaded[1][2])} (orthogonalised)"
                 if len(loaded) > 1 else "random direction (orthogonalised)")

    r_max = float(np.sqrt(x[0].numel()))  # the diagonal of the [0,1] box: no image is farther from another
    panels = []
    for i, (spec, model, card) in enumerate(loaded):
        cp, cc = _predict(model, x)
        center_pred, center_conf = int(cp[0]), float(cc[0])
        bd = boundary_in_plane(model, x, u, v, center_pred, r_max if radius is None else radius * 1.5, angles)
        p = Panel(_checkpoint_name(spec, card), str(spec), np.zeros(0), np.zeros(0), center_pred, center_conf, bd)
        if marks[i] is not None:
            eps = _fgsm_eps(model, x, marks[i], y)
            if eps is not None:
                d = eps * marks[i]
                p.fgsm_eps = eps
                p.fgsm_point = (float((d * u).sum()), float((d * v).sum()))
        panels.append(p)
    if radius is None:
        found = [p.boundary for p in panels if p.boundary is not None]
        radius = min(r_max, 1.8 * max(found)) if found else r_max
        for p in panels:  # show FGSM points when they are not far outside
            if p.fgsm_point is not None and max(map(abs, p.fgsm_point)) < 2 * radius:
                radius = max(radius, 1.15 * max(map(abs, p.fgsm_point)))
        radius = float(radius)

    coords = np.linspace(-radius, radius, resolution)
    ct = torch.as_tensor(coords, dtype=x.dtype, device=device)
    B, A = torch.meshgrid(ct, ct, indexing="ij")  # row = b (direction 2), column = a (direction 1)
    pts = _plane_points(x, u, v, A.reshape(-1), B.reshape(-1))
    for (_, model, _), p in zip(loaded, panels):
        pred, conf = _predict(model, pts)
        p.pred = pred.view(resolution, resolution).cpu().numpy()
        p.conf = conf.view(resolution, resolution).cpu().numpy()
    img = x[0].detach().cpu().numpy()
    img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    return CellsResult(index, int(ds.ids[index]), y, plane, radius, coords, img, names, n_classes, int(seed), panels)


def render(res: CellsResult):
    """The figure: the sample, then one panel per checkpoint on the same plane."""
    from matplotlib.colors import to_rgb
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle, Patch

    from .plots import new_figure, style

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
            ax.set_title(f"{p.name}\n{bd}", fontsize=10.5)
            ax.set_xlabel(f"{res.axis_labels[0]} (L2)", fontsize=9)
            if k == 0:
                ax.set_ylabel(f"{res.axis_labels[1]} (L2)", fontsize=9)
        handles = [Patch(color=_class_color(c), label=f"class {c}") for c in sorted(used)]
        handles.append(Line2D([], [], marker="o", ls="", mfc="black", mec="white", label="test sample"))
        handles.append(Line2D([], [], ls="--", color="black", label="closest boundary (in plane)"))
        for j, q in enumerate(res.panels):
            if q.fgsm_point is not None and max(map(abs, q.fgsm_point)) <= R:
                handles.append(Line2D([], [], marker="o", ls="", mfc="#404040" if j == 0 else "#d9d9d9", mec="black",
                                      label=f"FGSM point of {q.name} (ε={q.fgsm_eps:.3f})"))
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8.5)
        fig.suptitle(f"Decision cells through test sample {res.index}, {res.plane} plane\n"
                     f"colour = predicted class · opacity = max softmax · distances are L2 in [0,1] pixel space",
                     fontsize=11.5)
    return fig


def save_cells(res: CellsResult, out_dir: Path) -> dict[str, Path]:
    """Write ``cells-<index>-<plane>.png/.svg/.json`` into ``out_dir``."""
    from .plots import style

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
           "checkpoints": [{"name": p.name, "source": p.source, "prediction": p.center_pred,
                            "max_softmax": p.center_conf, "boundary_in_plane": p.boundary, "fgsm_eps": p.fgsm_eps,
                            "fgsm_point": p.fgsm_point,
                            "classes_in_plane": sorted(int(c) for c in np.unique(p.pred))} for p in res.panels]}
    paths["json"] = stem.with_suffix(".json")
    paths["json"].write_text(json.dumps(doc, indent=2), encoding="utf-8")
    return paths
