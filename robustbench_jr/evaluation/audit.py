"""The audit: checkpoints × fooling-distance searches × test samples, into a resumable store.

``run_audit(checkpoints, config, out_dir)`` loads every checkpoint, picks the test
samples, measures per model the clean accuracy, the exact mean ‖J‖_F (pixel space)
and the accuracy under clipped Gaussian noise over a σ grid (Hoffman et al. Fig. 3a),
runs every search batch by batch and commits each finished batch to
``RUN_DIR/results.sqlite`` (see :mod:`.store`).

Resuming: a batch is identified by a key derived from its sample ids, the search's
resolved config and the seed; rerunning the same command on the same directory skips
the finished batches, and since all randomness is derived from (seed, sample id) the
resumed rows equal those of an uninterrupted run. A directory that holds a run with a
different config is refused instead of mixed.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import re
import sys
import time
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import yaml

from .. import __version__
from ..config import to_dict
from ..errors import CheckpointError, ConfigError, DataNotFoundError, InputError
from ..models.checkpoint import sha256_file
from .metrics import SAMPLES_NOTE, order_violations, summarize
from .store import ResultStore

#: the six searches of DESIGN.md, weakest first (the order ``all`` runs them in)
ALL_SEARCHES = ("noise", "fgsm", "pgd", "cw", "deepfool", "jsma")
SUBSETS = ("first", "random")
SOURCES = ("auto", "bundled", "local")
#: σ grid of the noise-accuracy curve (Hoffman et al. Fig. 3a), pixel units in [0, 1]
DEFAULT_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
#: largest n for which the bundled MNIST slice (first 1,000 test images) can stand in
BUNDLED_MNIST_SIZE = 1000
#: config fields left out of a run's identity: ``device`` only places the work, and
#: ``budget``/``searches`` count through the resolved per-search configs instead
NOT_IN_IDENTITY = ("device", "budget", "searches")
#: (weaker, stronger) pairs checked for search-order violations, and the thresholds
ORDER_PAIRS = (("noise", "cw"), ("noise", "deepfool"))
ORDER_MAX_FRACTION = 0.10
ZERO_GRAD_MAX_FRACTION = 0.05
SANITY_SAMPLES = 100
#: search budgets: ``paper`` = the attacks package defaults (the papers' protocols);
#: ``quick`` = cheaper CW and JSMA so that the bundled demo audit (2 LeNets × 100
#: samples × 6 searches) fits in a few minutes on 2 CPU cores. ``searches`` overrides win.
BUDGETS = {
    "paper": {},
    "quick": {
        "cw": {"binary_search_steps": 5, "max_iterations": 100, "abort_check_every": 10, "lr": 0.02},
        "jsma": {"targets": 2},
    },
}


def known_searches() -> list[str]:
    """Search names: the attacks registry when available, DESIGN.md's six otherwise."""
    try:
        from ..attacks import SEARCHES  # type: ignore[attr-defined]
        names = list(SEARCHES)
    except ImportError:
        names = []
    return [s for s in ALL_SEARCHES if s in names or not names] + sorted(s for s in names if s not in ALL_SEARCHES)


@dataclass
class AuditConfig:
    """Everything that decides an audit's results (plus ``device``, which only places it).

    attacks: searches to run (``all`` = noise, fgsm, pgd, cw, deepfool, jsma).
    budget: ``paper`` (the searches' defaults, the papers' protocols) or ``quick``
    (cheaper CW and JSMA, see ``BUDGETS``); ``searches`` overrides apply on top.
    n: number of test samples; subset: ``first`` n or a ``random`` n drawn with ``seed``.
    dataset: overrides the checkpoint card's dataset; data_root: where to look for it.
    source: ``auto`` (local files; for MNIST with n ≤ 1000 the bundled slice when the full
    test set is not found), ``bundled`` (the bundled MNIST slice) or ``local``.
    searches: per-search config overrides, e.g. ``{cw: {steps: 500}}``; PGD's
    ``saturation`` defaults to the dataset's (32/255 MNIST-like, 16/255 CIFAR-like).
    noise_sigmas: σ grid for the accuracy under clipped N(0, σ²) noise.
    save_adversarials: also write the adversarial images as safetensors shards.
    """

    attacks: list[str] = field(default_factory=lambda: list(ALL_SEARCHES))
    budget: str = "paper"
    n: int = 100
    subset: str = "first"
    batch_size: int = 50
    dataset: Optional[str] = None
    arch: Optional[str] = None  # architecture of bare .pt/.pth/.safetensors state dicts
    data_root: Optional[str] = None
    source: str = "auto"
    device: str = "auto"
    seed: int = 0
    searches: dict = field(default_factory=dict)
    noise_sigmas: list[float] = field(default_factory=lambda: list(DEFAULT_SIGMAS))
    save_adversarials: bool = False

    def validate(self) -> None:
        valid = known_searches()
        attacks = self.attacks
        if isinstance(attacks, str):
            attacks = [a.strip() for a in attacks.split(",") if a.strip()]
        if not isinstance(attacks, (list, tuple)) or not all(isinstance(a, str) for a in attacks):
            raise ConfigError(f"attacks must be a list of search names; valid: all, {', '.join(valid)}")
        expanded: list[str] = []
        for a in attacks:
            a = a.strip().lower()
            names = valid if a == "all" else [a]
            for name in names:
                if name not in valid:
                    raise ConfigError(f"unknown search {name!r}; valid searches: all, {', '.join(valid)}")
                if name not in expanded:
                    expanded.append(name)
        if not expanded:
            raise ConfigError(f"no search selected; valid searches: all, {', '.join(valid)}")
        self.attacks = expanded
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise ConfigError(f"n must be a positive integer, got {self.n!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if self.budget not in BUDGETS:
            raise ConfigError(f"unknown budget {self.budget!r}; valid: {', '.join(BUDGETS)}")
        if self.subset not in SUBSETS:
            raise ConfigError(f"unknown subset {self.subset!r}; valid: {', '.join(SUBSETS)}")
        if self.source not in SOURCES:
            raise ConfigError(f"unknown source {self.source!r}; valid: {', '.join(SOURCES)}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.searches is None:
            self.searches = {}
        if not isinstance(self.searches, dict):
            raise ConfigError("searches must map search names to config mappings, e.g. {cw: {steps: 500}}")
        for name, over in self.searches.items():
            if name not in valid:
                raise ConfigError(f"searches: unknown search {name!r}; valid searches: {', '.join(valid)}")
            if over is not None and not isinstance(over, dict):
                raise ConfigError(f"searches.{name} must be a mapping of config keys, got {over!r}")
        self.searches = {k: dict(v or {}) for k, v in self.searches.items()}
        sig = self.noise_sigmas
        if isinstance(sig, (int, float)):
            sig = [sig]
        try:
            sig = sorted({float(s) for s in sig})
        except (TypeError, ValueError):
            raise ConfigError(f"noise_sigmas must be a list of numbers, got {self.noise_sigmas!r}") from None
        if any(not math.isfinite(s) or s < 0 for s in sig):
            raise ConfigError(f"noise_sigmas must be finite and >= 0, got {sig}")
        self.noise_sigmas = sig


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (stable across runs, processes and machines)."""
    h = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


def resolve_device(spec: Optional[str]) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a usage error."""
    spec = (spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA device is available; use --device cpu or auto")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"invalid device {spec!r}; use auto, cpu, cuda or cuda:N") from None


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def _hash(obj: Any, length: int = 16) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:length]


def _versions() -> dict:
    return {"robustbench_jr": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) or "model"


def _default_search_factory(name: str, overrides: Optional[dict]):
    from ..attacks import build_search

    return build_search(name, overrides)


# ---------------------------------------------------------------------------
# models and data
# ---------------------------------------------------------------------------

@dataclass
class _Model:
    name: str
    spec: str
    checkpoint: str
    weights_sha256: str
    model: torch.nn.Module
    card: dict
    dataset: str
    searches: dict = field(default_factory=dict)  # name -> search object
    clean_pred: list = field(default_factory=list)  # clean predictions on the evaluated samples


@dataclass
class _Data:
    name: str
    dataset: Any  # ImageDataset (the selected subset)
    provenance: str
    fingerprint: str


def model_name(spec: str, path: Path) -> str:
    """Readable name: the bundled name, else the checkpoint directory's (or file's) name."""
    from ..models import bundled_names

    if not Path(spec).exists() and spec in bundled_names():
        return spec
    p = path.resolve()
    if p.is_file():
        return p.parent.name if p.stem in ("model", "weights", "checkpoint") else p.stem
    return p.name


def _unique_names(names: Sequence[str]) -> list[str]:
    out: list[str] = []
    for n in names:
        cand, k = n, 2
        while cand in out:
            cand, k = f"{n}-{k}", k + 1
        out.append(cand)
    return out


def _weights_file(path: Path) -> Path:
    from ..models.checkpoint import WEIGHTS_FILE

    return path / WEIGHTS_FILE if path.is_dir() else path


def load_models(checkpoints: Sequence[str], dataset: Optional[str], device: torch.device,
                arch: Optional[str] = None) -> list[_Model]:
    from ..models import bundled_names, load_checkpoint, resolve_checkpoint

    specs = [str(c) for c in checkpoints]
    if not specs:
        specs = bundled_names()
        if not specs:
            raise CheckpointError("no checkpoint given and no bundled checkpoints are installed; "
                                  "pass CHECKPOINT paths (directories with model.safetensors + card.yaml)")
    loaded = []
    for spec in specs:
        path = resolve_checkpoint(spec)
        try:
            model, card = load_checkpoint(spec, arch=arch if not Path(spec).is_dir() else None,
                                          dataset=dataset, device=device)
        except (CheckpointError, ConfigError, InputError):
            raise
        except Exception as exc:  # a file that parses but is not a checkpoint
            raise CheckpointError(f"{spec}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
        weights = _weights_file(path)
        sha = sha256_file(weights) if weights.is_file() else ""
        loaded.append((spec, path, model, card, sha))
    names = _unique_names([model_name(s, p) for s, p, *_ in loaded])
    out = []
    for name, (spec, path, model, card, sha) in zip(names, loaded):
        ckpt = spec if (not Path(spec).exists() and spec in bundled_names()) else str(path.resolve())
        out.append(_Model(name, spec, ckpt, sha, model, dict(card), str(card["dataset"])))
    return out


def load_data(name: str, config: AuditConfig) -> _Data:
    """The evaluated test samples of dataset ``name`` (``config.n`` of them)."""
    from ..data import bundled_mnist, get_dataset_info, load_dataset

    get_dataset_info(name)  # unknown name -> ConfigError listing the valid ones
    note = ""
    if config.source == "bundled":
        if name != "mnist":
            raise ConfigError(f"source 'bundled' is only available for mnist (dataset is {name!r}); "
                              f"use --source auto or local")
        ds = bundled_mnist()
        note = "bundled MNIST slice requested"
    else:
        try:
            ds = load_dataset(name, "test", data_root=config.data_root)
        except DataNotFoundError:
            if config.source == "local" or name != "mnist" or config.n > BUNDLED_MNIST_SIZE:
                raise
            ds = bundled_mnist()
            note = "full MNIST test set not found locally; using the bundled slice"
    if config.n > len(ds):
        raise InputError(f"n = {config.n} is larger than the dataset ({name} test split from "
                         f"{ds.provenance}: {len(ds)} samples); use --n {len(ds)} or fewer")
    if config.subset == "first":
        sub = ds.first(config.n)
    else:
        g = torch.Generator().manual_seed(derive_seed(config.seed, "subset", name))
        idx = torch.randperm(len(ds), generator=g)[: config.n].sort().values
        sub = ds.subset(idx, note=f"random {config.n} (seed {config.seed})")
    imgs = sub.images
    if imgs.dtype != torch.uint8:
        if torch.isnan(imgs).any():
            raise InputError(f"{name}: the test images contain NaN values")
        if imgs.min() < 0 or imgs.max() > 1:
            raise InputError(f"{name}: pixel values outside [0, 1] (min {float(imgs.min()):.3g}, "
                             f"max {float(imgs.max()):.3g}); images must be in [0, 1] pixel space")
    h = hashlib.sha256()
    h.update(sub.ids.numpy().tobytes())
    h.update(sub.labels.numpy().tobytes())
    h.update(imgs.contiguous().numpy().tobytes())
    prov = sub.provenance + (f" ({note})" if note else "")
    return _Data(name, sub, prov, h.hexdigest()[:16])


def _check_compatible(m: _Model, data: _Data, device: torch.device) -> None:
    shape = tuple(data.dataset.input_shape)
    want = tuple(getattr(m.model, "input_shape", shape))
    if shape != want:
        raise InputError(f"model {m.name} expects inputs of shape {list(want)} but the {data.name} images "
                         f"have shape {list(shape)}; pass the model's dataset with --dataset")
    labels = data.dataset.labels
    nc = int(getattr(m.model, "num_classes", 0) or 0)
    if nc and len(labels) and int(labels.max()) >= nc:
        raise InputError(f"model {m.name} has {nc} classes but {data.name} has label {int(labels.max())}; "
                         f"pass the model's dataset with --dataset")
    try:
        with torch.no_grad():
            out = m.model(data.dataset.pixels(slice(0, 1), device=device))
    except RuntimeError as exc:
        raise InputError(f"model {m.name} cannot run on {data.name} inputs of shape {list(shape)}: "
                         f"{str(exc).splitlines()[0]}") from None
    if out.ndim != 2 or (nc and out.shape[1] != nc):
        raise InputError(f"model {m.name} returned outputs of shape {list(out.shape)}; expected [batch, classes]")


# ---------------------------------------------------------------------------
# per-model measurements and sanity checks
# ---------------------------------------------------------------------------

def _batches(n: int, size: int):
    for i, start in enumerate(range(0, n, size)):
        yield i, slice(start, min(start + size, n))


def clean_predictions(model, data, batch_size: int, device: torch.device, name: str = "the model") -> torch.Tensor:
    """Clean predicted classes (cpu int64); NaN/inf logits are an :class:`InputError`."""
    preds = []
    with torch.no_grad():
        for _, sl in _batches(len(data), batch_size):
            logits = model(data.pixels(sl, device=device))
            bad = ~torch.isfinite(logits).all(dim=1)
            if bad.any():
                ids = data.ids[sl][bad.cpu()].tolist()
                raise InputError(f"{name} produces NaN/inf logits on sample ids {ids[:10]}"
                                 f"{' …' if len(ids) > 10 else ''}; the checkpoint or the inputs are broken")
            preds.append(logits.argmax(dim=1).cpu())
    return torch.cat(preds)


def noise_accuracy(model, data, sigmas: Sequence[float], seed: int, batch_size: int,
                   device: torch.device) -> list[tuple[float, float, int]]:
    """Accuracy under x + σ·ε clipped to [0, 1], ε ~ N(0, I) drawn per sample from
    a generator seeded with (seed, sample id), the same ε for every σ."""
    correct = torch.zeros(len(sigmas), dtype=torch.int64)
    shape = tuple(data.input_shape)
    with torch.no_grad():
        for _, sl in _batches(len(data), batch_size):
            x = data.pixels(sl, device=device)
            y = data.labels[sl].to(device)
            eps = torch.stack([
                torch.randn(shape, generator=torch.Generator().manual_seed(derive_seed(seed, "noise-accuracy", int(i))))
                for i in data.ids[sl].tolist()]).to(device=device, dtype=x.dtype)
            for k, s in enumerate(sigmas):
                xs = (x + s * eps).clamp_(0.0, 1.0)
                correct[k] += int((model(xs).argmax(dim=1) == y).sum())
    n = len(data)
    return [(float(s), float(correct[k]) / n, n) for k, s in enumerate(sigmas)]


def sanity_checks(model, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, str]]:
    """auto-attack-style checks; returns ``(check, message)`` pairs for the problems found."""
    found = []
    if model.training:
        found.append(("training-mode", "the model is in training mode (dropout/batch-norm active); "
                                       "audits need model.eval()"))
    with torch.no_grad():
        a = model(x)
        b = model(x)
    scale = float(a.abs().max()) + 1.0
    diff = float((a - b).abs().max())
    if diff > 1e-5 * scale:
        found.append(("randomised", f"two forward passes of the same input differ (max |Δlogit| = {diff:.3g}): "
                                    "the model is randomised, so fooling distances are not reproducible and "
                                    "gradient-based searches may be misled"))
    if ((a >= 0) & (a <= 1)).all() and float((a.sum(dim=1) - 1).abs().max()) < 1e-3:
        found.append(("probabilities", "the model's outputs look like probabilities (rows in [0, 1] summing to 1); "
                                       "searches and ‖J‖ expect logits — remove the final softmax"))
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    zero = (g.flatten(1).abs().amax(dim=1) == 0)
    frac = float(zero.float().mean())
    if frac > ZERO_GRAD_MAX_FRACTION:
        found.append(("zero-gradients", f"the loss gradient w.r.t. the input is exactly zero on {int(zero.sum())} of "
                                        f"{len(zero)} samples ({frac:.0%}): gradient masking or saturated outputs; "
                                        "gradient-based distances are unreliable for this model"))
    return found


# ---------------------------------------------------------------------------
# resolution, identity and the store
# ---------------------------------------------------------------------------

def _build_searches(config: AuditConfig, models: list[_Model], factory: Callable) -> None:
    from ..data import get_dataset_info

    cache: dict[tuple, Any] = {}
    for m in models:
        sat = get_dataset_info(m.dataset).pgd_saturation
        for name in config.attacks:
            over = {**BUDGETS[config.budget].get(name, {}), **config.searches.get(name, {})}
            if name == "pgd" and "saturation" not in over:
                over["saturation"] = sat
            key = (name, _canonical(over))
            if key not in cache:
                cache[key] = factory(name, over or None)
            m.searches[name] = cache[key]


def _search_config(search) -> dict:
    cfg = getattr(search, "config", None)
    if cfg is None:
        return {}
    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def resolved_config(checkpoints_out: list[str], config: AuditConfig, models: list[_Model]) -> dict:
    """The resolved config saved as ``RUN_DIR/config.yaml`` (reusable with ``--config``)."""
    d = to_dict(config)
    searches = {}
    for name in config.attacks:
        per = [_search_config(m.searches[name]) for m in models]
        full = per[0] if all(p == per[0] for p in per) else dict(config.searches.get(name, {}))
        searches[name] = full
    d["searches"] = searches
    return {"checkpoints": checkpoints_out, **d}


def _identity(config: AuditConfig, models: list[_Model], data: dict[str, _Data]) -> dict:
    audit = {k: v for k, v in to_dict(config).items() if k not in NOT_IN_IDENTITY}
    return {
        "audit": audit,
        "models": [{"name": m.name, "weights_sha256": m.weights_sha256, "dataset": m.dataset,
                    "data": data[m.dataset].fingerprint,
                    "searches": {s: _search_config(m.searches[s]) for s in config.attacks}} for m in models],
    }


def _differences(old: dict, new: dict) -> list[str]:
    diffs = []
    oa, na = old.get("audit", {}), new.get("audit", {})
    for k in sorted(set(oa) | set(na)):
        if oa.get(k) != na.get(k):
            diffs.append(f"{k}: {oa.get(k)!r} → {na.get(k)!r}")
    om = {m["name"]: m for m in old.get("models", [])}
    nm = {m["name"]: m for m in new.get("models", [])}
    if list(om) != list(nm):
        diffs.append(f"models: {list(om)} → {list(nm)}")
    for name in [n for n in nm if n in om]:
        for k in ("weights_sha256", "dataset", "data"):
            if om[name].get(k) != nm[name].get(k):
                what = {"weights_sha256": "weights", "data": "test samples"}.get(k, k)
                diffs.append(f"{name}: {what} differ")
        os_, ns_ = om[name].get("searches", {}), nm[name].get("searches", {})
        for sname in [s for s in ns_ if s in os_]:
            o, n = os_[sname], ns_[sname]
            for key in sorted(set(o) | set(n)):
                if o.get(key) != n.get(key):
                    d = f"searches.{sname}.{key}: {o.get(key)!r} → {n.get(key)!r}"
                    if d not in diffs:
                        diffs.append(d)
    return diffs or ["(config hash differs)"]


def batch_key(sample_ids: Sequence[int], search: str, search_config: dict, seed: int) -> str:
    """Deterministic key of one batch: its sample ids, the search and its config, the seed."""
    return _hash({"ids": [int(i) for i in sample_ids], "search": search, "config": search_config, "seed": seed}, 24)


def _open_store(out: Path, identity: dict, config_hash: str) -> ResultStore:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the run")
    db = out / "results.sqlite"
    if db.exists():
        store = ResultStore(out)
        meta = store.meta()
        old_hash = meta.get("config_hash")
        has_rows = store.conn.execute("SELECT 1 FROM results LIMIT 1").fetchone() is not None
        if (old_hash is not None and old_hash != config_hash) or (old_hash is None and has_rows):
            store.close()
            diffs = _differences(meta.get("identity", {}), identity) if old_hash else ["no recorded config"]
            raise ConfigError(
                f"{out} already holds an audit run with a different config, refusing to mix results.\n"
                + "".join(f"  - {d}\n" for d in diffs)
                + "Use another --out directory, or delete this one to start over.")
        return store
    return ResultStore(out)


# ---------------------------------------------------------------------------
# the audit
# ---------------------------------------------------------------------------

def _to_np(t, dtype) -> np.ndarray:
    return torch.as_tensor(t).detach().cpu().numpy().astype(dtype).reshape(-1)


def _rows(res, ids, labels, clean_pred, x_norm, search_name: str) -> list[dict]:
    b = len(ids)
    l2 = _to_np(res.l2, np.float64)
    linf = _to_np(res.linf, np.float64)
    l0 = _to_np(res.l0, np.float64)
    fooled = _to_np(res.fooled, bool)
    adv_pred = _to_np(res.adv_pred, np.int64)
    n_fwd = _to_np(res.n_forward, np.int64)
    n_grad = _to_np(res.n_grad, np.int64)
    for arr in (l2, linf, l0, fooled, adv_pred, n_fwd, n_grad):
        if arr.shape != (b,):
            raise RuntimeError(f"search {search_name} returned {arr.shape[0]} results for a batch of {b}")
    for name, arr in (("L2", l2), ("Linf", linf), ("L0", l0)):
        if np.isnan(arr).any():
            bad = [int(i) for i in np.asarray(ids)[np.isnan(arr)]][:10]
            raise InputError(f"search {search_name} returned NaN {name} distances on sample ids {bad}; "
                             "the model's outputs are probably NaN on perturbed inputs")
    if (fooled != np.isfinite(l2)).any():
        raise RuntimeError(f"search {search_name}: 'fooled' disagrees with finite L2 distances")
    return [dict(sample_id=int(ids[j]), label=int(labels[j]), clean_pred=int(clean_pred[j]),
                 adv_pred=None if adv_pred[j] < 0 else int(adv_pred[j]), fooled=bool(fooled[j]),
                 l2=float(l2[j]), linf=float(linf[j]), l0=float(l0[j]), x_norm=float(x_norm[j]),
                 n_forward=int(n_fwd[j]), n_grad=int(n_grad[j])) for j in range(b)]


def _save_shard(path: Path, adversarial, ids, meta: dict) -> None:
    from safetensors.torch import save

    path.parent.mkdir(parents=True, exist_ok=True)
    adv = torch.as_tensor(adversarial).detach().to("cpu", torch.float32).contiguous()
    data = save({"adversarial": adv, "sample_ids": torch.as_tensor(ids, dtype=torch.int64).contiguous()},
                metadata={k: str(v) for k, v in meta.items()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _progress(console, enabled: bool):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, disable=not enabled, transient=False)


def run_audit(checkpoints: Sequence[str], config: Optional[AuditConfig] = None,
              out_dir: Optional[str | os.PathLike] = None, progress: bool = True, console=None,
              search_factory: Optional[Callable] = None) -> dict:
    """Audit ``checkpoints`` (paths or bundled names; none = the bundled checkpoints).

    Writes ``out_dir/results.sqlite`` and ``out_dir/config.yaml`` (default out dir:
    ``runs/audit-<config hash>``, so rerunning the same command resumes) and returns
    the summary of :func:`summarize_run`. ``search_factory(name, overrides)`` replaces
    :func:`robustbench_jr.attacks.build_search` (for tests and plug-ins).
    """
    from rich.console import Console

    config = config if config is not None else AuditConfig()
    config.validate()
    console = console or Console(stderr=True)
    factory = search_factory or _default_search_factory
    device = resolve_device(config.device)

    # --- everything that can fail on bad input happens before anything is written ---
    models = load_models(checkpoints, config.dataset, device, config.arch)
    data: dict[str, _Data] = {}
    for m in models:
        if m.dataset not in data:
            data[m.dataset] = load_data(m.dataset, config)
        _check_compatible(m, data[m.dataset], device)
        m.clean_pred = clean_predictions(m.model, data[m.dataset].dataset, config.batch_size, device,
                                       name=f"model {m.name}").tolist()
    _build_searches(config, models, factory)

    identity = _identity(config, models, data)
    config_hash = _hash(identity)
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"audit-{config_hash[:8]}"
    ckpts_out = [m.checkpoint for m in models]
    resolved = resolved_config(ckpts_out, config, models)

    store = _open_store(out, identity, config_hash)
    try:
        meta = store.meta()
        store.set_meta("config", resolved)
        store.set_meta("identity", identity)
        store.set_meta("config_hash", config_hash)
        store.set_meta("seed", config.seed)
        store.set_meta("data", {d.name: {"provenance": d.provenance, "n": len(d.dataset),
                                         "subset": config.subset, "fingerprint": d.fingerprint}
                                for d in data.values()})
        store.set_meta("metrics_note", SAMPLES_NOTE)
        # what ran the numbers (versions, device, command, finished) is written by an invocation
        # that computes something: rerunning a complete audit keeps the provenance of the one that did
        computing = False

        def start_computing() -> None:
            nonlocal computing
            if computing:
                return
            computing = True
            store.set_meta("versions", _versions())
            store.set_meta("device", {"requested": config.device, "resolved": str(device),
                                      "cpu_threads": torch.get_num_threads(),
                                      "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                                      else platform.processor() or platform.machine()})
            store.set_meta("command", sys.argv)
            store.set_meta("started", meta.get("started", _now()))
            store.set_meta("status", "running")

        if meta.get("status") != "complete":
            start_computing()
        tmp = out / "config.yaml.tmp"
        tmp.write_text("# resolved config of this audit; rerun with: jr-eval run --config config.yaml\n"
                       + yaml.safe_dump(resolved, sort_keys=False))
        os.replace(tmp, out / "config.yaml")
        for d in data.values():
            if "bundled" in d.provenance:
                console.print(f"[cyan]data:[/] {d.name}: {d.provenance}", highlight=False)

        # the sanity and order checks are redone on every invocation; warnings that the
        # searches raised on batches finished earlier are kept
        warnings: list[dict] = [w for w in meta.get("warnings", []) if str(w.get("check", "")).startswith("search:")]
        timings: dict = meta.get("timings", {})  # seconds spent per model × search, summed over invocations

        def warn(model: str, check: str, message: str) -> None:
            warnings.append({"model": model, "check": check, "message": message})
            store.set_meta("warnings", warnings)  # kept even if the process dies later
            console.print(f"[bold yellow]warning:[/] {model}: {message}", highlight=False)

        with _progress(console, progress) as prog:
            total = len(models) * len(config.attacks)
            t_all = prog.add_task("audit", total=total)
            t_batch = prog.add_task("", total=1, visible=False)
            for m in models:
                ds = data[m.dataset].dataset
                ids = ds.ids.tolist()
                labels = ds.labels.tolist()
                model = m.model
                prog.update(t_all, description=f"{m.name}: clean / ‖J‖_F / noise")
                clean = m.clean_pred
                stored = {r["model"]: r for r in store.models()}.get(m.name)
                card = {**m.card, "checkpoint_sha256": m.weights_sha256, "data": data[m.dataset].provenance}
                if stored is None or stored["clean_accuracy"] is None or stored["jacobian_norm"] is None:
                    from ..jacobian import mean_jacobian_norm

                    start_computing()

                    acc = float(np.mean(np.asarray(clean) == np.asarray(labels)))
                    jac = mean_jacobian_norm(model, ds.pixels(), batch_size=config.batch_size, device=device)
                    store.put_model(m.name, m.checkpoint, card, clean_accuracy=acc, jacobian_norm=float(jac),
                                    n=len(ds))
                else:
                    store.put_model(m.name, m.checkpoint, card)
                have = {round(s, 12) for s, _, _ in store.noise_accuracy(m.name)}
                if any(round(s, 12) not in have for s in config.noise_sigmas):
                    start_computing()
                    store.put_noise_accuracy(m.name, noise_accuracy(model, ds, config.noise_sigmas, config.seed,
                                                                    config.batch_size, device))
                k = min(len(ds), SANITY_SAMPLES)
                for check, msg in sanity_checks(model, ds.pixels(slice(0, k), device=device),
                                                ds.labels[:k].to(device)):
                    warn(m.name, check, msg)

                x_norm_all = ds.pixels().flatten(1).double().norm(dim=1).numpy()
                for sname in config.attacks:
                    search = m.searches[sname]
                    seen_msgs = {re.sub(r"\d+", "#", w["message"].rsplit(" (first seen", 1)[0])
                                 for w in warnings if w["model"] == m.name and w["check"] == f"search:{sname}"}
                    scfg = _search_config(search)
                    gseed = derive_seed(config.seed, "search", sname)
                    nb = math.ceil(len(ds) / config.batch_size)
                    prog.update(t_all, description=f"{m.name}: {sname}")
                    prog.reset(t_batch, total=nb, visible=True, description="  batches")
                    t_search = time.perf_counter()
                    for bi, sl in _batches(len(ds), config.batch_size):
                        bids = ids[sl]
                        key = batch_key(bids, sname, scfg, config.seed)
                        if store.batch_done(m.name, sname, key):
                            prog.advance(t_batch)
                            continue
                        start_computing()
                        x = ds.pixels(sl, device=device)
                        y = ds.labels[sl].to(device)
                        sid = torch.as_tensor(bids, dtype=torch.int64)
                        gen = torch.Generator(device=device).manual_seed(gseed)
                        with _warnings.catch_warnings(record=True) as caught:
                            _warnings.simplefilter("always")
                            res = search.run(model, x, y, generator=gen, sample_ids=sid)
                        for w in caught:
                            msg = str(w.message)
                            dedupe = re.sub(r"\d+", "#", msg)  # once per model × search, not per batch
                            if dedupe not in seen_msgs:
                                seen_msgs.add(dedupe)
                                warn(m.name, f"search:{sname}", f"{msg} (first seen in batch {bi})")
                        rows = _rows(res, bids, labels[sl], clean[sl], x_norm_all[sl], sname)
                        if config.save_adversarials:
                            _save_shard(out / "adversarials" / _safe_name(m.name) / _safe_name(sname)
                                        / f"batch-{bi:04d}.safetensors", res.adversarial, bids,
                                        {"model": m.name, "search": sname, "batch_key": key})
                        store.put_batch(m.name, sname, key, rows)
                        prog.advance(t_batch)
                    spent = timings.setdefault(m.name, {})
                    spent[sname] = round(spent.get(sname, 0.0) + time.perf_counter() - t_search, 3)
                    store.set_meta("timings", timings)
                    prog.advance(t_all)

                results = {s: store.results(m.name, s) for s in config.attacks}
                for weak, strong in ORDER_PAIRS:
                    if weak in results and strong in results:
                        v, c = order_violations(results[weak]["l2"], results[strong]["l2"])
                        if c and v / c > ORDER_MAX_FRACTION:
                            warn(m.name, "search-order",
                                 f"{weak} found a closer fooling point than {strong} on {v} of {c} samples "
                                 f"({v / c:.0%}) that both fooled: {strong} is probably under-budgeted or the "
                                 "model masks gradients; its distances overstate robustness")
            prog.update(t_all, description="done")
            prog.update(t_batch, visible=False)

        store.set_meta("warnings", warnings)
        if computing:
            store.set_meta("finished", _now())
            store.set_meta("status", "complete")
        return summarize_run(store, [m.name for m in models], config.attacks)
    finally:
        store.close()


def summarize_run(store: ResultStore, models: Optional[Sequence[str]] = None,
                  searches: Optional[Sequence[str]] = None) -> dict:
    """The run's summary from stored rows: per model clean accuracy, ‖J‖_F, noise accuracy
    and per search :func:`.metrics.summarize`."""
    meta = store.meta()
    rows = {r["model"]: r for r in store.models()}
    names = list(models) if models is not None else list(rows)
    out_models = []
    for name in names:
        r = rows.get(name, {})
        snames = list(searches) if searches is not None else store.searches(name)
        per = {}
        for s in snames:
            res = store.results(name, s)
            per[s] = summarize(res["l2"], res["x_norm"], res["fooled"])
        out_models.append({
            "name": name,
            "checkpoint": r.get("checkpoint"),
            "dataset": (r.get("card") or {}).get("dataset"),
            "clean_accuracy": r.get("clean_accuracy"),
            "jacobian_norm": r.get("jacobian_norm"),
            "noise_accuracy": [{"sigma": s, "accuracy": a, "n": n} for s, a, n in store.noise_accuracy(name)],
            "searches": per,
        })
    return {"run_dir": str(store.run_dir), "models": out_models, "warnings": meta.get("warnings", []),
            "metrics_note": SAMPLES_NOTE}
