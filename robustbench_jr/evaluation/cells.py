"""Decision-cell cross sections (Hoffman et al. 2019, Fig. 1, S1, S2): the computation.

A 2-D plane ``x + a·u + b·v`` through a test sample ``x`` (``u``, ``v`` orthonormal
in [0,1] pixel space, so ``a`` and ``b`` are L2 distances). Every grid point gets the
predicted class and the max softmax; the distance to the closest decision boundary
*within the plane* is found by casting rays from ``x`` and bisecting the first change
of prediction.

The plane lives in the box the searches use (``box=True``, the default): the model
sees every point clipped to [0, 1], clip(x + a·u + b·v, 0, 1), exactly as the searches
clip their candidates, so the picture and the audit tell the same story. The plane's
coordinates stay the unclipped offsets (a, b); where clipping takes away part of an
offset, the point lies (partly) outside [0, 1]: :attr:`CellsResult.outside` is the
fraction of each grid point's offset that clipping removes, and the figure hatches the
region where it is more than half. Each panel also gives the real L2 distance of its
closest boundary point after clipping (``boundary_l2``), the number to hold against the
audit's distances. ``box=False`` gives the geometric cross section (no clipping; far from
``x`` the points leave the image box and the model is evaluated where no image lies).

``adversarial`` planes are spanned by FGSM directions (the FGSM search's own direction,
:func:`robustbench_jr.attacks.fgsm.fgsm_direction`); the FGSM point marked on the plane is
the smallest ε along that direction that changes the prediction away from the label,
found with the FGSM search's grid-then-bisection
(:func:`robustbench_jr.attacks.fgsm.smallest_fooling_eps`) in the same box — so in the
box its ε and its L2 distance (``fgsm_l2``) are the FGSM search's.

:func:`cross_sections` works on in-memory models and one image tensor (a notebook
user's own ``nn.Module`` in pixel space); :func:`checkpoint_cross_sections` loads
checkpoints and a test sample first (what ``jr-eval cells`` calls). Drawing and files:
:mod:`robustbench_jr.reports.cells`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..attacks.base import eval_mode
from ..attacks.fgsm import FGSMConfig, fgsm_direction, smallest_fooling_eps
from ..data import bundled_mnist, is_file_spec, load_dataset
from ..errors import InputError
from ..models import folder_options, is_pretrained_spec, load_checkpoint, resolve_checkpoint, settle_model
from ..runtime import generator, resolve_device

__all__ = ["CellsResult", "PLANES", "Panel", "boundary_in_plane", "checkpoint_cross_sections", "clipped_distance",
           "cross_sections", "fgsm_eps_on_line", "orthonormal_plane", "outside_fraction", "predict", "random_plane"]

#: the kinds of plane
PLANES = ("adversarial", "random")


@dataclass
class Panel:
    """One model's view of the plane."""

    name: str
    source: str
    pred: np.ndarray  # [R, R] predicted class on the grid (row = direction-2 coordinate)
    conf: np.ndarray  # [R, R] max softmax
    center_pred: int
    center_conf: float
    boundary: Optional[float]  # closest boundary in the plane (L2), None if none within the search radius
    #: adversarial plane: smallest fooling ε along this model's FGSM direction (0 when the sample is
    #: already misclassified, None when no ε ≤ 1 fools)
    fgsm_eps: Optional[float] = None
    #: its (a, b) coordinates in the plane (None when ε is 0 or None: nothing to mark)
    fgsm_point: Optional[tuple] = None
    #: L2 distance of the FGSM point from the sample (after clipping in the box: the FGSM search's distance)
    fgsm_l2: Optional[float] = None
    #: L2 distance from the sample of the closest boundary point found in the plane, after clipping
    #: (in the box; without it, equal to ``boundary``)
    boundary_l2: Optional[float] = None


@dataclass
class CellsResult:
    """The cross sections of every model on one shared plane through one sample."""

    index: int
    sample_id: int
    label: int
    plane: str
    radius: float
    coords: np.ndarray  # [R] grid coordinates along each axis (L2), −radius … radius
    image: np.ndarray  # [H, W] or [H, W, C] for the inset
    axis_labels: tuple
    num_classes: int
    seed: int
    panels: list[Panel] = field(default_factory=list)
    #: the plane's orthonormal directions (u, v), each shaped like the sample, on the CPU
    basis: Optional[tuple] = None
    #: whether the model saw the plane's points clipped to [0, 1] (the searches' box)
    box: bool = True
    #: [R, R] fraction of each grid point's offset ‖a·u + b·v‖ that lies outside [0, 1]
    #: (‖(x + p) − clip(x + p)‖ / ‖p‖; 0 at the sample)
    outside: Optional[np.ndarray] = None


@torch.no_grad()
def predict(model: nn.Module, pts: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, max softmax) for every row of ``pts``, ``chunk`` rows per forward pass."""
    preds, confs = [], []
    for i in range(0, len(pts), chunk):
        p = torch.softmax(model(pts[i:i + chunk]).float(), dim=1)
        c, k = p.max(dim=1)
        preds.append(k)
        confs.append(c)
    return torch.cat(preds), torch.cat(confs)


def _plane_points(x, u, v, a: torch.Tensor, b: torch.Tensor, box: bool = False) -> torch.Tensor:
    pts = x + a.view(-1, 1, 1, 1) * u + b.view(-1, 1, 1, 1) * v
    return pts.clamp(0.0, 1.0) if box else pts


@torch.no_grad()
def _predict_plane(model, x, u, v, a: torch.Tensor, b: torch.Tensor, chunk: int = 4096, box: bool = False):
    """:func:`predict` on the plane points (a, b) — clipped to [0, 1] with ``box`` — built
    ``chunk`` at a time (memory stays O(chunk))."""
    preds, confs = [], []
    for i in range(0, len(a), chunk):
        k, c = predict(model, _plane_points(x, u, v, a[i:i + chunk], b[i:i + chunk], box), chunk)
        preds.append(k)
        confs.append(c)
    return torch.cat(preds), torch.cat(confs)


@torch.no_grad()
def outside_fraction(x, u, v, a: torch.Tensor, b: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Per plane point (a, b): the fraction of its offset ‖a·u + b·v‖ that lies outside [0, 1],
    ‖(x + p) − clip(x + p, 0, 1)‖ / ‖p‖ (0 where p = 0)."""
    out = []
    for i in range(0, len(a), chunk):
        pts = _plane_points(x, u, v, a[i:i + chunk], b[i:i + chunk])
        lost = (pts - pts.clamp(0.0, 1.0)).flatten(1).norm(dim=1)
        off = torch.hypot(a[i:i + chunk], b[i:i + chunk])
        out.append(torch.where(off > 0, lost / off.clamp_min(1e-30), torch.zeros_like(off)))
    return torch.cat(out)


@torch.no_grad()
def clipped_distance(x, u, v, a: float, b: float) -> float:
    """L2 distance from ``x`` of the plane point (a, b) after clipping to [0, 1]."""
    p = _plane_points(x, u, v, torch.tensor([a], dtype=x.dtype, device=x.device),
                      torch.tensor([b], dtype=x.dtype, device=x.device), box=True)
    return float((p - x).flatten().norm())


def orthonormal_plane(u: torch.Tensor, v: torch.Tensor,
                      gen: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gram–Schmidt on (u, v); when v is (nearly) parallel to u, a random direction from ``gen`` replaces it."""
    u = u / u.norm()
    v = v - (v * u).sum() * u
    if v.norm() < 1e-6 * max(1.0, float(u.numel()) ** 0.5):  # degenerate: fall back to a random direction
        v = torch.randn(u.shape, generator=gen, dtype=u.dtype).to(u.device)
        v = v - (v * u).sum() * u
    return u, v / v.norm()


def _plane_generator(seed: int) -> torch.Generator:
    # on the CPU, so that a seed gives the same plane on every device
    return generator(int(seed), "cells")


def random_plane(x: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random orthonormal directions shaped like ``x`` (Gaussian, then Gram–Schmidt), seeded
    with ``runtime.generator(seed, "cells")``."""
    gen = _plane_generator(seed)
    u0 = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    v0 = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
    return orthonormal_plane(u0, v0, gen)


@torch.no_grad()
def boundary_in_plane(model: nn.Module, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor, center_pred: int,
                      r_max: float, angles: int = 120, steps: int = 64, bisect: int = 12,
                      box: bool = False, with_point: bool = False):
    """Distance from ``x`` to the nearest change of prediction within the plane ``x + a·u + b·v``
    (the model sees the points clipped to [0, 1] with ``box``).

    ``angles`` rays from ``x``, each sampled at ``steps`` radii up to ``r_max``; on every
    ray that leaves class ``center_pred`` the first change is bisected ``bisect`` times.
    Returns the smallest such radius (an upper bound, exact up to the angular
    resolution), or None when no ray leaves the class within ``r_max``; with
    ``with_point``, ``(radius, (a, b))`` of that boundary point (``(None, None)`` when none).
    """
    theta = torch.arange(angles, dtype=x.dtype, device=x.device) * (2 * np.pi / angles)
    r = torch.linspace(0, r_max, steps + 1, dtype=x.dtype, device=x.device)[1:]
    ca, sa = torch.cos(theta), torch.sin(theta)
    A = (r.view(1, -1) * ca.view(-1, 1)).reshape(-1)
    B = (r.view(1, -1) * sa.view(-1, 1)).reshape(-1)
    with eval_mode(model):
        pred, _ = _predict_plane(model, x, u, v, A, B, box=box)
        diff = (pred != center_pred).view(angles, steps)
        hit = diff.any(dim=1)
        if not hit.any():
            return (None, None) if with_point else None
        first = torch.where(hit, diff.float().argmax(dim=1), torch.zeros_like(hit, dtype=torch.long))
        idx = hit.nonzero().view(-1)
        hi = r[first[idx]]
        lo = torch.where(first[idx] > 0, r[(first[idx] - 1).clamp(min=0)], torch.zeros_like(hi))
        c, s = ca[idx], sa[idx]
        for _ in range(bisect):
            mid = (lo + hi) / 2
            p, _ = _predict_plane(model, x, u, v, mid * c, mid * s, box=box)
            out = p != center_pred
            hi = torch.where(out, mid, hi)
            lo = torch.where(out, lo, mid)
    j = int(hi.argmin())
    if with_point:
        return float(hi[j]), (float(hi[j] * c[j]), float(hi[j] * s[j]))
    return float(hi[j])


def fgsm_eps_on_line(model: nn.Module, x: torch.Tensor, direction: torch.Tensor, label: int,
                     config: Optional[FGSMConfig] = None, box: bool = False) -> Optional[float]:
    """Smallest ε with ``model(x + ε·direction)`` ≠ ``label`` — with ``box``, of
    ``model(clip(x + ε·direction, 0, 1))``, the FGSM search's own ε; without, unclipped.

    The FGSM search's grid-then-bisection (:func:`~robustbench_jr.attacks.fgsm.smallest_fooling_eps`,
    ``config`` defaults to :class:`FGSMConfig`'s); 0 when ``x`` is already misclassified, None when
    no ε ≤ ``eps_max`` changes the prediction. ``x`` is one sample, [1, C, H, W].
    """
    y = torch.tensor([int(label)], device=x.device)
    with eval_mode(model), torch.no_grad():
        if int(model(x).argmax(1)[0]) != int(label):
            return 0.0
        eps, _ = smallest_fooling_eps(model, x, y, direction, config, clip=box)
    e = float(eps[0])
    return e if np.isfinite(e) else None


def _as_sample(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"the sample must be a torch.Tensor of shape [C, H, W] or [1, C, H, W], "
                         f"got {type(x).__name__}")
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1:
        raise InputError(f"the sample must have shape [C, H, W] or [1, C, H, W], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"the sample must be floating point pixels in [0, 1], got dtype {x.dtype}; "
                         "convert 8-bit images with x.float() / 255")
    x = x.detach()
    if not bool(torch.isfinite(x).all()):
        raise InputError("the sample contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise InputError(f"pixel values must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); pass unnormalised "
                         "pixels: the model does its own normalisation")
    return x


def _check_options(plane: str, radius: Optional[float], resolution: int) -> None:
    if plane not in PLANES:
        raise InputError(f"unknown plane {plane!r}; valid planes: {', '.join(PLANES)}")
    if resolution < 11 or resolution > 1001:
        raise InputError(f"--resolution {resolution}: use 11 … 1001 grid points per side")
    if radius is not None and not (radius > 0 and np.isfinite(radius)):
        raise InputError(f"--radius must be a positive number, got {radius}")


def cross_sections(models: Union[nn.Module, Sequence[nn.Module]], x: torch.Tensor, label: int,
                   plane: str = "random", *, names: Optional[Sequence[str]] = None,
                   sources: Optional[Sequence[str]] = None, radius: Optional[float] = None, resolution: int = 201,
                   seed: int = 0, angles: int = 120, index: int = 0, sample_id: Optional[int] = None,
                   fgsm: Optional[FGSMConfig] = None, box: bool = True) -> CellsResult:
    """Cross sections of every model on one shared plane through the sample ``x``.

    ``models``: one pixel-space ``nn.Module`` (inputs in [0, 1], logits out) or several,
    on ``x``'s device; they are put in eval mode for the computation (each module's
    flag is restored). ``x``: one image, [C, H, W] or [1, C, H, W], in [0, 1];
    ``label``: its class. ``plane``: ``random`` (two random orthonormal directions from
    ``seed``) or ``adversarial`` (the FGSM directions of the first two models,
    orthogonalised; with one model, its FGSM direction and a random one). ``radius``:
    half-width of the grid in L2 (default: from the boundary distances and FGSM
    points); ``resolution``: grid points per side; ``angles``: rays of the boundary
    search. ``names``/``sources`` label the panels; ``index``/``sample_id`` label the
    sample (file names, titles). ``fgsm``: the ε search's grid (FGSM search defaults).
    ``box``: the model sees the points clipped to [0, 1], as the searches do (default);
    ``False`` for the geometric cross section (see the module docstring).
    """
    _check_options(plane, radius, resolution)
    models = [models] if isinstance(models, nn.Module) else list(models)
    if not models:
        raise InputError("cross_sections needs at least one model")
    names = [f"model {i}" for i in range(len(models))] if names is None else [str(n) for n in names]
    sources = list(names) if sources is None else [str(s) for s in sources]
    if len(names) != len(models) or len(sources) != len(models):
        raise InputError(f"got {len(models)} models but {len(names)} names and {len(sources)} sources")
    x = _as_sample(x)
    y = int(label)
    device = x.device
    gen = _plane_generator(seed)

    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(eval_mode(m))
        centers = []
        for m, name in zip(models, names):
            with torch.no_grad():
                logits = m(x)
            if logits.dim() != 2 or logits.shape[0] != 1 or logits.shape[1] < 2:
                raise InputError(f"{name}: the model must return logits of shape [1, K≥2] for one sample, "
                                 f"got shape {tuple(logits.shape)}")
            centers.append(logits)
        n_classes = max(int(z.shape[1]) for z in centers)
        if not 0 <= y < n_classes:
            raise InputError(f"label {y} is out of range for models with {n_classes} classes")

        marks: list[Optional[torch.Tensor]] = [None] * len(models)
        if plane == "random":
            u, v = random_plane(x, seed)
            axis_labels = ("random direction 1", "random direction 2")
        else:
            yt = torch.tensor([y], device=device)
            dirs = []
            for i, m in enumerate(models[:2]):
                marks[i] = fgsm_direction(m, x, yt)
                dirs.append(marks[i])
            if len(dirs) == 1:
                dirs.append(torch.randn(x.shape, generator=gen).to(device, x.dtype))
            u, v = orthonormal_plane(dirs[0], dirs[1], gen)
            axis_labels = (f"FGSM direction of {names[0]}",
                           f"FGSM direction of {names[1]} (orthogonalised)" if len(models) > 1
                           else "random direction (orthogonalised)")

        r_max = float(np.sqrt(x[0].numel()))  # the diagonal of the [0,1] box: no image is farther from another
        panels = []
        for i, m in enumerate(models):
            p = torch.softmax(centers[i].float(), dim=1)
            cc, cp = p.max(dim=1)
            center_pred, center_conf = int(cp[0]), float(cc[0])
            bd, at = boundary_in_plane(m, x, u, v, center_pred, r_max if radius is None else radius * 1.5, angles,
                                       box=box, with_point=True)
            panel = Panel(names[i], sources[i], np.zeros(0), np.zeros(0), center_pred, center_conf, bd)
            if at is not None:
                panel.boundary_l2 = clipped_distance(x, u, v, *at) if box else bd
            if marks[i] is not None:
                eps = fgsm_eps_on_line(m, x, marks[i], y, fgsm, box=box)
                panel.fgsm_eps = eps
                if eps:
                    d = eps * marks[i]
                    panel.fgsm_point = (float((d * u).sum()), float((d * v).sum()))
                    adv = (x + d).clamp(0.0, 1.0) if box else x + d
                    panel.fgsm_l2 = float((adv - x).flatten().norm())
                elif eps == 0.0:
                    panel.fgsm_l2 = 0.0
            panels.append(panel)
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
        A, B = A.reshape(-1), B.reshape(-1)
        for m, p in zip(models, panels):
            pred, conf = _predict_plane(m, x, u, v, A, B, box=box)
            p.pred = pred.view(resolution, resolution).cpu().numpy()
            p.conf = conf.view(resolution, resolution).cpu().numpy()
        outside = outside_fraction(x, u, v, A, B).view(resolution, resolution).cpu().numpy()
    img = x[0].cpu().numpy()
    img = img[0] if img.shape[0] == 1 else np.transpose(img, (1, 2, 0))
    return CellsResult(int(index), int(index if sample_id is None else sample_id), y, plane, radius, coords, img,
                       axis_labels, n_classes, int(seed), panels, basis=(u.cpu(), v.cpu()), box=bool(box),
                       outside=outside)


def _checkpoint_name(spec: str, card: dict) -> str:
    if card.get("name"):
        return str(card["name"])
    p = Path(str(spec))
    return p.stem if p.suffix in (".safetensors", ".pt", ".pth") else p.name or str(spec)


def _load_sample(card: dict, dataset: Optional[str], data_root, index: int, folder: Optional[dict] = None):
    name = dataset or card.get("dataset") or "mnist"
    if name in ("bundled", "bundled-mnist") or (name == "mnist" and dataset is None and index < 1000):
        ds = bundled_mnist()
    elif is_file_spec(name):
        ds = load_dataset(name, "test", **(folder or {} if name.startswith("folder:") else {}))
    else:
        ds = load_dataset(name, "test", data_root=data_root)
    if not (0 <= index < len(ds)):
        raise InputError(f"--index {index} is out of range: the {ds.name} {ds.split} set here has {len(ds)} samples "
                         f"(valid: 0 … {len(ds) - 1})")
    return ds


def checkpoint_cross_sections(checkpoints: Sequence[str], index: int, plane: str = "random",
                              dataset: Optional[str] = None, data_root=None, radius: Optional[float] = None,
                              resolution: int = 201, seed: int = 0, device="cpu", angles: int = 120,
                              options: Optional[dict] = None) -> CellsResult:
    """:func:`cross_sections` of checkpoints (bundled names, directories, files) through test sample ``index``.

    The sample comes from ``dataset`` (default: the bundled MNIST slice for MNIST
    checkpoints and ``index`` < 1000, else the first checkpoint card's dataset, test
    split). ``device`` goes through :func:`robustbench_jr.runtime.resolve_device`.
    ``options``: ``arch``, ``arch_kwargs``, ``num_classes``, ``mean``, ``std``, ``input_size``
    for checkpoints without a card (as ``jr-eval run``), and ``image_size``, ``resize``,
    ``crop`` for an image folder (default: the first model's input size).
    """
    _check_options(plane, radius, resolution)
    device = resolve_device(device)
    opts = dict(options or {})
    folder = {k: opts.pop(k) for k in ("image_size", "resize", "crop") if opts.get(k) is not None}
    loaded = []
    for spec in checkpoints:
        card_dir = not is_pretrained_spec(spec) and resolve_checkpoint(spec).is_dir()
        loaded.append((spec, *load_checkpoint(spec, device=device, **({} if card_dir else {"dataset": dataset, **opts}))))
    first = loaded[0][1]
    folder = folder_options(first, *(folder.get(k) for k in ("image_size", "resize", "crop")))
    ds0 = _load_sample(loaded[0][2], dataset, data_root, index, folder)
    for _, m, _ in loaded:
        settle_model(m, ds0.input_shape, source="the model")
    shapes = {tuple(m.input_shape) for _, m, _ in loaded}
    if len(shapes) != 1:
        raise InputError(f"the checkpoints take different input shapes ({', '.join(map(str, shapes))}); "
                         f"cross sections need one shared input space")
    ds = ds0
    x = ds.pixels([index], device=device)
    if tuple(x.shape[1:]) != next(iter(shapes)):
        raise InputError(f"dataset {ds.name} has inputs of shape {tuple(x.shape[1:])} but the checkpoints take "
                         f"{next(iter(shapes))}; pass --dataset")
    return cross_sections([m for _, m, _ in loaded], x, int(ds.labels[index]), plane,
                          names=[_checkpoint_name(spec, card) for spec, _, card in loaded],
                          sources=[str(spec) for spec, _, _ in loaded], radius=radius, resolution=resolution,
                          seed=seed, angles=angles, index=index, sample_id=int(ds.ids[index]))
