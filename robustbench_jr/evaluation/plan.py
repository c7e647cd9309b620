"""Planning an audit: which models, which samples, which configured searches, under which identity.

Everything that can fail on bad input happens here, before anything is written:
models and data are loaded (or wrapped, for in-memory tensors), checked against each
other, the clean predictions are taken (NaN logits are refused), and the searches are
configured. The plan then fixes the run's *identity* — the audit config without the
fields that only place the work, each model's weights hash, its data fingerprint and
the resolved config of every search — whose hash keys the run directory and whose
parts key every stored batch. :mod:`.execute` runs a plan.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..attacks import SEARCHES, build_search
from ..config import to_dict
from ..data import ImageDataset, bundled_mnist, get_dataset_info, is_file_spec, load_dataset
from ..data.files import saturation
from ..errors import CheckpointError, ConfigError, DataFileError, DataNotFoundError, InputError
from ..models import (PixelSpaceModel, bundled_names, folder_options, is_pretrained_spec, load_checkpoint,
                      resolve_checkpoint, settle_model)
from ..models.checkpoint import WEIGHTS_FILE, sha256_file
from ..runtime import derive_seed

#: the six searches of DESIGN.md, weakest first, then DDN (the order ``all`` runs them in)
ALL_SEARCHES = ("noise", "fgsm", "pgd", "cw", "deepfool", "jsma", "ddn")
#: largest n for which the bundled MNIST slice (first 1,000 test images) can stand in
BUNDLED_MNIST_SIZE = 1000
#: config fields left out of a run's identity: ``device`` only places the work,
#: ``download`` only how the data is obtained (the data fingerprint counts),
#: ``budget``/``searches`` count through the resolved per-search configs instead, and
#: ``jacobian``/``jacobian_projections`` decide a per-model measurement that is stored with
#: its method and redone when another one is asked for (they decide no stored row)
NOT_IN_IDENTITY = ("device", "download", "budget", "searches", "jacobian", "jacobian_projections")
#: config fields in a run's identity only when set (the model and image-folder options), so
#: that adding them left the identity of every run that does not use them as it was
OPTIONAL_IN_IDENTITY = ("arch_kwargs", "num_classes", "mean", "std", "input_size", "image_size", "resize", "crop")
#: search budgets: ``paper`` = the attacks package defaults (the papers' protocols);
#: ``quick`` = cheaper CW and JSMA so that the bundled demo audit (2 LeNets × 100
#: samples × 7 searches) fits in about a minute on 2 idle CPU cores, and DDN with its
#: departures. ``searches`` overrides win.
BUDGETS = {
    "paper": {},
    "quick": {
        # CW at ~250 passes per image: c₀ = 1 (the first success needs c ≈ 0.3–3 on LeNets: the
        # papers' 0.01 spends two of the few steps failing), a larger step and more binary steps
        "cw": {"binary_search_steps": 7, "max_iterations": 100, "abort_check_every": 10, "lr": 0.05,
               "initial_const": 1.0},
        "jsma": {"targets": 2},
        # DDN's departures from the paper (adaptive norm step, ε-relative direction step along the sphere,
        # 3 candidate classes), 100 gradient passes per image
        "ddn": {"norm_update": "adaptive", "alpha_relative": True, "tangent": True, "candidates": 3},
    },
}


def known_searches() -> list[str]:
    """Search names in the order ``all`` runs them: DESIGN.md's six, then other registered ones."""
    return [s for s in ALL_SEARCHES if s in SEARCHES] + sorted(s for s in SEARCHES if s not in ALL_SEARCHES)


def canonical(obj: Any) -> str:
    """Canonical JSON of ``obj`` (sorted keys), the input of every identity hash."""
    return json.dumps(obj, sort_keys=True, default=str, separators=(",", ":"))


def short_hash(obj: Any, length: int = 16) -> str:
    """A hex sha256 prefix of :func:`canonical` ``(obj)``."""
    return hashlib.sha256(canonical(obj).encode()).hexdigest()[:length]


@dataclass
class ModelEntry:
    """One audited model: its name, the pixel-space module, where it came from, its identity."""

    name: str
    model: nn.Module
    dataset: str  # key of the plan's data this model is evaluated on
    checkpoint: str  # the spec, resolved path, or "<in-memory>"
    weights_sha256: str
    card: dict = field(default_factory=dict)
    searches: dict = field(default_factory=dict)  # search name -> configured search
    clean_pred: list = field(default_factory=list)  # clean predictions on the evaluated samples


@dataclass
class DataEntry:
    """The evaluated samples of one dataset (with stable sample ids) and their fingerprint."""

    name: str
    dataset: ImageDataset
    provenance: str
    fingerprint: str
    pgd_saturation: Optional[float] = None  # the dataset's PGD box (None: the search's default)


@dataclass
class AuditPlan:
    """A checked, resolved audit: run it with :func:`.execute.execute`."""

    config: Any  # AuditConfig
    device: torch.device
    models: list[ModelEntry]
    data: dict[str, DataEntry]
    identity: dict
    config_hash: str
    resolved: dict  # the resolved config written as RUN_DIR/config.yaml

    def data_of(self, m: ModelEntry) -> DataEntry:
        return self.data[m.dataset]


# ---------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------

def model_name(spec: str, path: Optional[Path]) -> str:
    """Readable name: the bundled name, else the checkpoint directory's (or file's) name;
    ``timm-resnet18`` for the library's pretrained ``timm:resnet18``."""
    if path is None:
        return spec.replace(":", "-")
    if not Path(spec).exists() and spec in bundled_names():
        return spec
    p = path.resolve()
    if p.is_file():
        return p.parent.name if p.stem in ("model", "weights", "checkpoint") else p.stem
    return p.name


def unique_names(names: Sequence[str]) -> list[str]:
    """``names`` with repeats suffixed ``-2``, ``-3``, …"""
    out: list[str] = []
    for n in names:
        cand, k = n, 2
        while cand in out:
            cand, k = f"{n}-{k}", k + 1
        out.append(cand)
    return out


def weights_sha256(model: nn.Module) -> str:
    """SHA-256 of an in-memory model's state dict (names, dtypes, shapes and values)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        t = v.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


#: model options of :func:`models_from_checkpoints` (AuditConfig fields → load_checkpoint arguments)
MODEL_OPTIONS = {"arch_kwargs": "arch_kwargs", "num_classes": "num_classes", "mean": "mean", "std": "std",
                 "input_size": "input_size"}


def model_options(config: Any) -> dict:
    """The model options set in an audit config (``arch_kwargs``, ``num_classes``, ``mean``,
    ``std``, ``input_size``), as :func:`~robustbench_jr.models.load_checkpoint` arguments."""
    out = {}
    for field_name, arg in MODEL_OPTIONS.items():
        v = getattr(config, field_name, None)
        if v not in (None, {}, []):
            out[arg] = v
    return out


def models_from_checkpoints(checkpoints: Sequence[str], dataset: Optional[str], device: torch.device,
                            arch: Optional[str] = None, options: Optional[dict] = None) -> list[ModelEntry]:
    """Load checkpoint specs (paths, bundled names, ``timm:NAME``/``torchvision:NAME``; none =
    the bundled checkpoints). ``arch`` and the model ``options`` (:func:`model_options`) apply
    to checkpoints without a card (bare weights, exported programs, library pretrained
    weights); a checkpoint directory's card says the rest."""
    specs = [str(c) for c in checkpoints]
    if not specs:
        specs = bundled_names()
        if not specs:
            raise CheckpointError("no checkpoint given and no bundled checkpoints are installed; "
                                  "pass CHECKPOINT paths (directories with model.safetensors + card.yaml)")
    loaded = []
    for spec in specs:
        path = None if is_pretrained_spec(spec) else resolve_checkpoint(spec)
        bare = path is None or not path.is_dir()
        try:
            model, card = load_checkpoint(spec, arch=arch if bare else None, dataset=dataset, device=device,
                                          **(options or {} if bare else {}))
        except (CheckpointError, ConfigError, InputError):
            raise
        except Exception as exc:  # a file that parses but is not a checkpoint
            raise CheckpointError(f"{spec}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
        if not card.get("dataset"):
            raise ConfigError(f"{spec}: no dataset to audit it on; pass --dataset (a registered name, or the "
                              f"data as folder:PATH, npz:PATH or safetensors:PATH)")
        weights = Path(card["weights_file"]) if card.get("weights_file") else (
            path / WEIGHTS_FILE if path.is_dir() else path)
        sha = sha256_file(weights) if weights.is_file() else ""
        loaded.append((spec, path, model, card, sha))
    names = unique_names([model_name(s, p) for s, p, *_ in loaded])
    out = []
    for name, (spec, path, model, card, sha) in zip(names, loaded):
        ckpt = spec if path is None or (not Path(spec).exists() and spec in bundled_names()) else str(path.resolve())
        out.append(ModelEntry(name, model, str(card["dataset"]), ckpt, sha, dict(card)))
    return out


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def check_pixels(images: torch.Tensor, what: str) -> None:
    """Float images must be finite and in [0, 1] (uint8 images always are)."""
    if images.dtype == torch.uint8:
        return
    if not images.is_floating_point():
        raise InputError(f"{what}: images must be floating point pixels in [0, 1] or uint8, got {images.dtype}")
    if torch.isnan(images).any():
        raise InputError(f"{what}: the test images contain NaN values")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise InputError(f"{what}: pixel values outside [0, 1] (min {float(images.min()):.3g}, "
                         f"max {float(images.max()):.3g}); images must be in [0, 1] pixel space")


def data_entry(name: str, ds: ImageDataset, provenance: Optional[str] = None,
               pgd_saturation: Optional[float] = None) -> DataEntry:
    """A :class:`DataEntry` for ``ds`` with its fingerprint (ids, labels and pixels)."""
    check_pixels(ds.images, name)
    h = hashlib.sha256()
    h.update(ds.ids.numpy().tobytes())
    h.update(ds.labels.numpy().tobytes())
    h.update(ds.images.contiguous().numpy().tobytes())
    return DataEntry(name, ds, provenance or ds.provenance, h.hexdigest()[:16], pgd_saturation)


def data_from_tensors(x: torch.Tensor, y: torch.Tensor, sample_ids=None, name: str = "tensors",
                      pgd_saturation: Optional[float] = None) -> DataEntry:
    """Wrap in-memory images [N, C, H, W] in [0, 1] (or uint8) and labels [N] as audit data."""
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not len(x):
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"images must be a non-empty tensor of shape [N, C, H, W] in [0, 1], got {shape}")
    y = torch.as_tensor(y)
    if y.dim() != 1 or len(y) != len(x) or y.is_floating_point() or y.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices of shape [{len(x)}], got shape "
                         f"{tuple(y.shape)} and dtype {y.dtype}")
    ids = None
    if sample_ids is not None:
        ids = torch.as_tensor(sample_ids)
        if ids.dim() != 1 or len(ids) != len(x) or ids.is_floating_point():
            raise InputError(f"sample_ids must be integers of shape [{len(x)}], got shape {tuple(ids.shape)}")
        ids = ids.to(torch.int64).cpu()
        if len(torch.unique(ids)) != len(ids):
            raise InputError("sample_ids must be unique (rows are keyed by sample id)")
    images = x.detach().cpu()
    ds = ImageDataset(name, "test", images, y.detach().cpu().to(torch.int64), f"{len(x)} in-memory images", ids)
    return data_entry(name, ds, pgd_saturation=pgd_saturation)


def data_options(config: Any, model: Optional[nn.Module] = None) -> dict:
    """How an image folder is brought to the model's input: ``image_size``/``resize``/``crop``
    from the config, else the model's (:func:`~robustbench_jr.models.folder_options`)."""
    return folder_options(model, *(getattr(config, k, None) for k in ("image_size", "resize", "crop")))


def load_data(name: str, config: Any, model: Optional[nn.Module] = None) -> DataEntry:
    """The evaluated test samples of dataset ``name`` (``config.n`` of them): a registered
    dataset, or the user's ``folder:``/``npz:``/``safetensors:PATH`` (an image folder brought
    to ``model``'s input, see :func:`data_options`)."""
    if is_file_spec(name):
        if config.source == "bundled":
            raise ConfigError(f"source 'bundled' is only available for mnist (dataset is {name!r}); "
                              f"use --source auto or local")
        ds = load_dataset(name, "test", **(data_options(config, model) if name.startswith("folder:") else {}))
        info = None
    else:
        if any(getattr(config, k, None) is not None for k in ("image_size", "resize", "crop")):
            raise ConfigError(f"--image-size/--resize/--crop apply to image folders (folder:PATH), not to {name!r}")
        info = get_dataset_info(name)  # unknown name -> ConfigError listing the valid ones
    note = ""
    if info is None:
        pass
    elif config.source == "bundled":
        if name != "mnist":
            raise ConfigError(f"source 'bundled' is only available for mnist (dataset is {name!r}); "
                              f"use --source auto or local")
        ds = bundled_mnist()
        note = "bundled MNIST slice requested"
    else:
        try:
            ds = load_dataset(name, "test", data_root=config.data_root,
                              download=bool(getattr(config, "download", False)))
        except DataNotFoundError as exc:
            # a file that is there but unreadable is an error, not a reason to use the bundled slice
            if config.source == "local" or name != "mnist" or config.n > BUNDLED_MNIST_SIZE or \
                    isinstance(exc, DataFileError):
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
    prov = sub.provenance + (f" ({note})" if note else "")
    return data_entry(name, sub, prov, info.pgd_saturation if info is not None else saturation(sub.input_shape[0]))


# ---------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------

def batches(n: int, size: int):
    """``(index, slice)`` of consecutive batches of ``size`` over ``n`` samples."""
    for i, start in enumerate(range(0, n, size)):
        yield i, slice(start, min(start + size, n))


def check_compatible(m: ModelEntry, data: DataEntry, device: torch.device) -> None:
    """The model runs on the data's shape and has a class for every label. A model that did
    not declare its input shape (a user's factory, a TorchScript archive) takes the data's."""
    shape = tuple(data.dataset.input_shape)
    if isinstance(m.model, PixelSpaceModel) and (m.model.input_shape is None or not m.model.num_classes):
        settle_model(m.model, shape, source=f"model {m.name}")
        m.card["input_shape"], m.card["num_classes"] = list(m.model.input_shape), m.model.num_classes
    want = tuple(getattr(m.model, "input_shape", None) or shape)
    if shape != want:
        hint = ("pass --image-size (or --resize/--crop) to bring the images to it" if data.name.startswith("folder:")
                else "pass the model's dataset with --dataset")
        raise InputError(f"model {m.name} takes inputs of shape {list(want)} but the {data.name} images have shape "
                         f"{list(shape)}; {hint}, or --input-size {','.join(map(str, shape))} if the model "
                         f"takes that size too")
    labels = data.dataset.labels
    nc = int(getattr(m.model, "num_classes", 0) or 0)
    if nc and len(labels) and int(labels.max()) >= nc:
        raise InputError(f"model {m.name} has {nc} classes but {data.name} has label {int(labels.max())}; "
                         f"pass the model's dataset with --dataset (or --num-classes for bare weights)")
    if nc and data.name.startswith("folder:"):
        classes = get_dataset_info(data.name).num_classes
        if classes != nc:
            raise InputError(f"model {m.name} has {nc} classes but the image folder {data.name[7:]} has "
                             f"{classes}; its class folders must be the model's classes (name them by class "
                             f"index, 0 … {nc - 1}, to use some of them)")
    try:
        with torch.no_grad():
            out = m.model(data.dataset.pixels(slice(0, 1), device=device))
    except RuntimeError as exc:
        raise InputError(f"model {m.name} cannot run on {data.name} inputs of shape {list(shape)}: "
                         f"{str(exc).splitlines()[0]}") from None
    if out.ndim != 2 or (nc and out.shape[1] != nc):
        raise InputError(f"model {m.name} returned outputs of shape {list(out.shape)}; expected [batch, classes]")
    if len(labels) and int(labels.max()) >= out.shape[1]:
        raise InputError(f"model {m.name} returns {out.shape[1]} class scores but {data.name} has label "
                         f"{int(labels.max())}")


def clean_predictions(model, data: ImageDataset, batch_size: int, device: torch.device,
                      name: str = "the model") -> torch.Tensor:
    """Clean predicted classes (cpu int64); NaN/inf logits are an :class:`InputError`."""
    preds = []
    with torch.no_grad():
        for _, sl in batches(len(data), batch_size):
            logits = model(data.pixels(sl, device=device))
            bad = ~torch.isfinite(logits).all(dim=1)
            if bad.any():
                ids = data.ids[sl][bad.cpu()].tolist()
                raise InputError(f"{name} produces NaN/inf logits on sample ids {ids[:10]}"
                                 f"{' …' if len(ids) > 10 else ''}; the checkpoint or the inputs are broken")
            preds.append(logits.argmax(dim=1).cpu())
    return torch.cat(preds)


# ---------------------------------------------------------------------------
# searches, identity, resolved config
# ---------------------------------------------------------------------------

def search_config(search) -> dict:
    """A configured search's resolved config as a plain dict (a :class:`Search`'s ``config_dict()``,
    which adds the base's ``precision`` when set)."""
    if callable(getattr(search, "config_dict", None)):
        return search.config_dict()
    cfg = getattr(search, "config", None)
    if cfg is None:
        return {}
    return to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)


def build_searches(config: Any, models: list[ModelEntry], data: dict[str, DataEntry],
                   factory: Callable = build_search) -> None:
    """Configure every model's searches: the budget's overrides, then ``config.searches``;
    PGD's saturation defaults to the dataset's. Identical configs share one search object."""
    cache: dict[tuple, Any] = {}
    for m in models:
        sat = data[m.dataset].pgd_saturation
        for name in config.attacks:
            over = {**BUDGETS[config.budget].get(name, {}), **config.searches.get(name, {})}
            if name == "pgd" and "saturation" not in over and sat is not None:
                over["saturation"] = sat
            key = (name, canonical(over))
            if key not in cache:
                cache[key] = factory(name, over or None)
            m.searches[name] = cache[key]


def paper_config(name: str, dataset: Optional[str] = None) -> Optional[dict]:
    """The papers' protocol of search ``name`` as a resolved config: the search's defaults,
    with PGD's saturation box of ``dataset`` (32/255 MNIST-like, 16/255 CIFAR-like).
    None for a search that is not registered."""
    cls = SEARCHES.get(name)
    if cls is None:
        return None
    cfg = to_dict(cls.Config())
    if name == "pgd" and dataset is not None:
        try:
            sat = get_dataset_info(dataset).pgd_saturation
        except ConfigError:  # an in-memory dataset without registry entry
            sat = None
        if sat is not None:
            cfg["saturation"] = sat
    return cfg


def _short(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def protocol(name: str, config: dict, dataset: Optional[str] = None) -> str:
    """Which protocol a search's numbers used, in words: ``paper`` (its resolved ``config``
    equals :func:`paper_config`; ``default`` for a search outside the papers' six, whose
    defaults are its own), else the departures, named ``refined (...)`` for a DeepFool with
    boundary refinement, ``quick (...)`` for exactly the quick budget's overrides and
    ``custom (...)`` otherwise, each listing ``key=value`` of what differs from the defaults."""
    paper = paper_config(name, dataset)
    if paper is None:
        return "custom"
    diffs = {k: v for k, v in config.items() if k in paper and paper[k] != v}
    if not diffs:
        return "paper" if name in ALL_SEARCHES else "default"
    if name == "deepfool" and diffs.get("refine") is True:
        kind = "refined"
    elif diffs == BUDGETS["quick"].get(name):
        kind = "quick"
    else:
        kind = "custom"
    return f"{kind} ({', '.join(f'{k}={_short(v)}' for k, v in diffs.items())})"


def search_settings(meta: dict) -> dict[str, dict[str, dict]]:
    """Per model and search of a stored run (its ``identity`` meta): ``{"config": resolved
    config, "protocol": :func:`protocol`}``. Empty for a run that recorded no identity."""
    out: dict[str, dict[str, dict]] = {}
    for m in (meta.get("identity") or {}).get("models") or []:
        out[m.get("name")] = {s: {"config": dict(c or {}), "protocol": protocol(s, dict(c or {}), m.get("dataset"))}
                              for s, c in (m.get("searches") or {}).items()}
    return out


def resolved_config(config: Any, models: list[ModelEntry], checkpoints_out: Optional[list[str]] = None) -> dict:
    """The resolved config saved as ``RUN_DIR/config.yaml`` (reusable with ``--config``)."""
    d = to_dict(config)
    searches = {}
    for name in config.attacks:
        per = [search_config(m.searches[name]) for m in models]
        searches[name] = per[0] if all(p == per[0] for p in per) else dict(config.searches.get(name, {}))
    d["searches"] = searches
    ckpts = checkpoints_out if checkpoints_out is not None else [m.checkpoint for m in models]
    return {"checkpoints": ckpts, **d}


def identity(config: Any, models: list[ModelEntry], data: dict[str, DataEntry]) -> dict:
    """What decides the run's rows: audit config (less NOT_IN_IDENTITY), weights, data, searches."""
    audit = {k: v for k, v in to_dict(config).items()
             if k not in NOT_IN_IDENTITY and not (k in OPTIONAL_IN_IDENTITY and v in (None, {}, []))}
    return {
        "audit": audit,
        "models": [{"name": m.name, "weights_sha256": m.weights_sha256, "dataset": m.dataset,
                    "data": data[m.dataset].fingerprint,
                    "searches": {s: search_config(m.searches[s]) for s in config.attacks}} for m in models],
    }


def differences(old: dict, new: dict) -> list[str]:
    """Readable differences between two run identities."""
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


#: audit fields of an identity that a run extended with more searches may differ in (the
#: search list, which becomes the union); every other audit field is shared by all the rows
EXTENDS = ("attacks",)


def _config_diffs(prefix: str, old: dict, new: dict) -> list[str]:
    return [f"{prefix}{key}: {old.get(key)!r} → {new.get(key)!r}"
            for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]


def extend_identity(old: dict, new: dict) -> tuple[Optional[dict], list[str]]:
    """Whether the run ``new`` (an :func:`identity`) may be added to the stored run ``old``:
    ``(union, [])`` when every part they share is unchanged — the audit config (data
    selection, N, subset, seed, batch size, σ grid, … all but the search list), each shared
    model's weights, dataset and test samples, each shared (model, search)'s resolved config,
    and the test samples of each shared dataset — else ``(None, conflicts)``, the readable
    list of what changed.

    The union holds the stored models in their order, each with its stored searches and the
    new ones, then the new models; its search list is the stored one followed by the new
    names. Stored rows stay valid under it (their keys are unchanged) and only the new
    (model, search) pairs have work to do. A ``new`` that is part of ``old`` gives ``old``."""
    conflicts: list[str] = []
    oa, na = old.get("audit") or {}, new.get("audit") or {}
    for k in sorted(set(oa) | set(na)):
        if k not in EXTENDS and oa.get(k) != na.get(k):
            conflicts.append(f"{k}: {oa.get(k)!r} → {na.get(k)!r}")
    om = {m.get("name"): m for m in old.get("models") or []}
    nm = {m.get("name"): m for m in new.get("models") or []}
    samples = {m.get("dataset"): m.get("data") for m in om.values()}
    for name, n in nm.items():
        o = om.get(name)
        if o is None:
            if n.get("dataset") in samples and samples[n.get("dataset")] != n.get("data"):
                conflicts.append(f"{n.get('dataset')}: test samples differ (model {name})")
            continue
        for k, what in (("weights_sha256", "weights"), ("dataset", "dataset"), ("data", "test samples")):
            if o.get(k) != n.get(k):
                conflicts.append(f"{name}: {what} differ" + (" (another model with this name: give it another "
                                                             "directory name)" if k == "weights_sha256" else ""))
        os_, ns_ = o.get("searches") or {}, n.get("searches") or {}
        for sname in [s for s in ns_ if s in os_]:
            for d in _config_diffs(f"searches.{sname}.", os_[sname] or {}, ns_[sname] or {}):
                if d not in conflicts:
                    conflicts.append(d)
    if conflicts:
        return None, conflicts
    attacks = list(oa.get("attacks") or [])
    attacks += [a for a in na.get("attacks") or [] if a not in attacks]
    models = []
    for name, o in om.items():
        searches = dict(o.get("searches") or {})
        for sname, c in ((nm.get(name) or {}).get("searches") or {}).items():
            searches.setdefault(sname, c)
        models.append({**o, "searches": searches})
    models += [n for name, n in nm.items() if name not in om]
    return {**old, "audit": {**oa, "attacks": attacks}, "models": models}, []


def extend_resolved(old: dict, new: dict, union: dict, models: Sequence[ModelEntry], stored: dict) -> dict:
    """The resolved config (``config.yaml``) of a run extended by a plan: the plan's resolved
    config ``new`` with the search list of the ``union`` identity, the stored run's search
    configs (``old``) and the plan's for the added searches, and the stored checkpoints followed
    by those of the plan's ``models`` that the ``stored`` identity did not hold."""
    out = dict(new)
    out["attacks"] = list((union.get("audit") or {}).get("attacks") or new.get("attacks") or [])
    searches = {**(new.get("searches") or {}), **(old.get("searches") or {})}
    out["searches"] = {a: searches[a] for a in out["attacks"] if a in searches}
    ckpts = list(old.get("checkpoints") or [])
    had = {m.get("name") for m in stored.get("models") or []}
    new_ckpts = list(new.get("checkpoints") or [])
    if len(new_ckpts) == len(models):
        added = [c for c, m in zip(new_ckpts, models) if m.name not in had]
    else:
        added = new_ckpts
    out["checkpoints"] = ckpts + [c for c in added if c not in ckpts]
    return {"checkpoints": out.pop("checkpoints"), **out}


def batch_key(sample_ids: Sequence[int], search: str, search_config: dict, seed: int) -> str:
    """Deterministic key of one batch: its sample ids, the search and its config, the seed."""
    return short_hash({"ids": [int(i) for i in sample_ids], "search": search, "config": search_config,
                       "seed": seed}, 24)


def plan_audit(config: Any, models: list[ModelEntry], data: dict[str, DataEntry], device: torch.device,
               search_factory: Optional[Callable] = None,
               checkpoints_out: Optional[list[str]] = None) -> AuditPlan:
    """Check ``models`` against their ``data``, take the clean predictions, configure the
    searches and fix the run's identity. ``config`` must be validated."""
    for m in models:
        if m.dataset not in data:
            raise ConfigError(f"model {m.name}: no data named {m.dataset!r} in the plan")
        d = data[m.dataset]
        check_compatible(m, d, device)
        m.clean_pred = clean_predictions(m.model, d.dataset, config.batch_size, device,
                                         name=f"model {m.name}").tolist()
    build_searches(config, models, data, search_factory or build_search)
    ident = identity(config, models, data)
    return AuditPlan(config, device, models, data, ident, short_hash(ident),
                     resolved_config(config, models, checkpoints_out))
