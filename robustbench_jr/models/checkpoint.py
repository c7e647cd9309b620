"""Checkpoints: safetensors weights plus a YAML card; plain PyTorch state dicts.

A checkpoint directory holds ``model.safetensors`` and ``card.yaml``. The card records
architecture, dataset, number of classes, input shape, normalisation, the full
training config, seed, measured metrics, data provenance, package version and the
parent checkpoint of a fine-tune.

``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` only: a file
that needs arbitrary unpickling is refused and no code from it runs. Files are recognised
by content (:func:`.formats.sniff`): TorchScript and ``torch.export`` archives load as
the networks they hold. An architecture is any spec of :mod:`.sources` (registry name,
``timm:NAME``, ``torchvision:NAME``, ``pkg.module:factory``, ``path/to/models.py:factory``);
``timm:NAME``/``torchvision:NAME`` given as the checkpoint itself means the library's
pretrained weights.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch import nn

from .._version import __version__
from ..data import DATASETS, get_dataset_info
from ..errors import CheckpointError, InputError, yaml_problem
from .architectures import ARCHITECTURES, build_model
from .formats import load_exported, load_torchscript, read_safetensors, read_torch_state, sniff
from .pixel import CUSTOM, NORMALIZATIONS, PixelSpaceModel
from .sources import LIBRARIES, absolute_spec, build_network, file_sha256, forms, parse_arch, pretrained_weights

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.yaml"


def bundled_names() -> list[str]:
    """Names of the checkpoints shipped inside the package (e.g. ``lenet-mnist``)."""
    base = resources.files("robustbench_jr.models") / "bundled"
    try:
        return sorted(p.name for p in base.iterdir() if p.is_dir() and (p / CARD_FILE).is_file())
    except FileNotFoundError:
        return []


def bundled_path(name: str) -> Path:
    return Path(str(resources.files("robustbench_jr.models") / "bundled" / name))


def resolve_checkpoint(spec: str | os.PathLike) -> Path:
    """A checkpoint path from a path or a bundled name."""
    p = Path(spec)
    if p.exists():
        return p
    if str(spec) in bundled_names():
        return bundled_path(str(spec))
    raise CheckpointError(
        f"checkpoint {str(spec)!r} not found: it is neither an existing path nor a bundled name "
        f"(bundled: {', '.join(bundled_names()) or 'none'}) nor timm:NAME / torchvision:NAME (pretrained weights)"
    )


def is_pretrained_spec(spec) -> bool:
    """``timm:NAME`` / ``torchvision:NAME`` that is not an existing path: the library's pretrained weights."""
    s = str(spec)
    return s.split(":", 1)[0] in LIBRARIES and ":" in s and not Path(s).exists()


def make_model(arch: str, num_classes: Optional[int], normalization: Optional[str] = "none",
               input_shape: Optional[tuple] = None, dropout: Optional[float] = None, *,
               arch_kwargs: Optional[dict] = None, mean=None, std=None) -> PixelSpaceModel:
    """A freshly initialised pixel-space model of any architecture spec (see :mod:`.sources`).

    Normalisation: explicit ``mean``/``std``, else the named ``normalization`` (unless
    ``none``), else the architecture's pretrained config (timm/torchvision), else none.
    ``num_classes`` None: the architecture's own (read from its output where needed).
    """
    if normalization not in (None, CUSTOM) and normalization not in NORMALIZATIONS:
        raise CheckpointError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    a = parse_arch(arch)
    if a.kind == "registry":
        shape = tuple(input_shape) if input_shape else ARCHITECTURES[arch].input_shape
        if arch_kwargs:
            raise CheckpointError(f"architecture {arch!r} takes no arch_kwargs (got {arch_kwargs})")
        net = build_model(arch, num_classes=num_classes or 10, in_channels=shape[0], dropout=dropout)
        return PixelSpaceModel(net, normalization or "none", shape, num_classes or 10, mean, std)
    shape = tuple(input_shape) if input_shape else None
    net, d = build_network(arch, num_classes, in_channels=shape[0] if shape else None, dropout=dropout,
                           kwargs=arch_kwargs)
    shape = shape or d.input_shape
    if mean is None and std is None and normalization in (None, "none", CUSTOM) and d.mean:
        mean, std = d.mean, d.std
    model = PixelSpaceModel(net, normalization if normalization not in (None, CUSTOM) else "none", shape,
                            num_classes or d.num_classes or 0, mean, std)
    model.arch_card = _arch_card(arch, arch_kwargs, d)
    settle_model(model, source=f"architecture {arch}")
    return model


def _arch_card(arch: str, arch_kwargs: Optional[dict], defaults) -> dict:
    """Card entries that say how to rebuild an architecture: its spec (a file's path absolute),
    keyword arguments, the code's provenance and the preprocessing of its pretrained config."""
    out: dict[str, Any] = {"architecture": absolute_spec(arch)}
    if arch_kwargs:
        out["arch_kwargs"] = dict(arch_kwargs)
    out.update(defaults.provenance)
    if defaults.preprocess:
        out["preprocess"] = dict(defaults.preprocess)
    return out


def folder_options(model=None, image_size: Optional[int] = None, resize: Optional[int] = None,
                   crop: Optional[int] = None) -> dict:
    """How an image folder is brought to ``model``'s input: the given ``image_size``/``resize``/
    ``crop``, else the model's own (its pretrained config's resize + centre crop when that crop
    is its input size, else its square input size); ``channels`` the model's."""
    opts = {"image_size": image_size, "resize": resize, "crop": crop}
    shape = getattr(model, "input_shape", None)
    if shape:
        if all(v is None for v in opts.values()):
            pre = ((getattr(model, "arch_card", None) or {}).get("preprocess")
                   or (getattr(model, "card", None) or {}).get("preprocess"))
            if pre and int(pre.get("crop", 0)) == shape[-1] == shape[-2]:
                opts["resize"], opts["crop"] = int(pre["resize"]), int(pre["crop"])
            elif shape[-1] == shape[-2]:
                opts["image_size"] = int(shape[-1])
        opts["channels"] = int(shape[0])
    return {k: v for k, v in opts.items() if v is not None}


def settle_model(model: PixelSpaceModel, input_shape: Optional[tuple] = None, source: str = "the model") -> None:
    """Fix what a model did not declare: its input shape (from ``input_shape``, the data it
    will see) and its class count (from one forward pass). An :class:`InputError` when it
    cannot run on that shape, returns no [batch, classes] scores, or contradicts a declared
    class count."""
    if model.input_shape is None and input_shape is not None:
        model.input_shape = tuple(int(v) for v in input_shape)
    if model.input_shape is None:
        return
    ref = next(iter(list(model.parameters()) + list(model.buffers())), None)
    x = torch.full((2, *model.input_shape), 0.5, device=ref.device if ref is not None else "cpu",
                   dtype=ref.dtype if ref is not None and ref.is_floating_point() else torch.float32)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise InputError(f"{source} cannot run on inputs of shape {list(model.input_shape)} "
                         f"({type(exc).__name__}: {first}); declare the input it takes with --input-size C,H,W "
                         f"(and bring the images to it: --image-size for image folders)") from None
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise InputError(f"{source} returned {type(out).__name__ if not isinstance(out, torch.Tensor) else list(out.shape)}"
                         f" for a batch of 2; expected class scores of shape [batch, classes]")
    if model.num_classes and out.shape[1] != model.num_classes:
        raise InputError(f"{source} returns {out.shape[1]} class scores but {model.num_classes} classes were "
                         f"declared (--num-classes or the card); pass --num-classes {out.shape[1]} or the "
                         f"architecture that matches")
    model.num_classes = int(out.shape[1])


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _NoAliases(yaml.SafeDumper):
    """A card is read by people: a value that occurs twice is written twice, not as an alias."""

    def ignore_aliases(self, data):
        return True


def save_checkpoint(out_dir: str | os.PathLike, model: PixelSpaceModel, card: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``card.yaml`` into ``out_dir`` (atomically)."""
    from safetensors.torch import save

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.net.state_dict().items()}
    full = {
        "architecture": card.get("architecture"),
        "dataset": card.get("dataset"),
        "num_classes": model.num_classes,
        "input_shape": list(model.input_shape) if model.input_shape else None,
        "normalization": model.normalization,
        "mean": model.mean_std()[0],
        "std": model.mean_std()[1],
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    full.update({k: v for k, v in getattr(model, "arch_card", {}).items() if card.get(k) is None})
    full.update({k: v for k, v in card.items() if k not in full or v is not None})
    if full.get("input_shape") is None and model.input_shape is None:
        full["input_shape"] = None
    full["architecture"] = absolute_spec(str(full["architecture"])) if full.get("architecture") else None
    full.setdefault("load", {"cli": f"jr-eval run {out.resolve()}",
                             "python": f"robustbench_jr.load_model({str(out.resolve())!r})"})
    _atomic_write(out / WEIGHTS_FILE, save(state, metadata={"format": "pt", "architecture": str(full["architecture"])}))
    _atomic_write(out / CARD_FILE, yaml.dump(full, Dumper=_NoAliases, sort_keys=False, allow_unicode=True).encode())
    return out


def read_card(path: str | os.PathLike) -> dict:
    p = Path(path)
    card_path = p / CARD_FILE if p.is_dir() else p.with_name(CARD_FILE)
    if not card_path.is_file():
        raise CheckpointError(f"{p}: no {CARD_FILE} next to the weights; pass --arch and --dataset to load bare weights")
    try:
        card = yaml.safe_load(card_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{card_path}: card is not valid YAML: {yaml_problem(exc)}; fix or replace the "
                              "card") from None
    if not isinstance(card, dict) or "architecture" not in card:
        raise CheckpointError(f"{card_path}: card must be a mapping with at least 'architecture'")
    nc = card.get("num_classes")
    if nc is not None and (isinstance(nc, bool) or not isinstance(nc, int) or nc < 1):
        raise CheckpointError(f"{card_path}: num_classes must be a positive integer, got {nc!r}; fix the card")
    shape = card.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in shape)):
        raise CheckpointError(f"{card_path}: input_shape must be a list of positive integers such as [1, 28, 28], "
                              f"got {shape!r}; fix the card")
    return card


#: the readers of :mod:`.formats` under their earlier names
_load_safetensors = read_safetensors
_load_torch = read_torch_state


def _strip_prefixes(state: dict[str, torch.Tensor], target_keys: set[str]) -> dict[str, torch.Tensor]:
    for prefix in ("module.", "net.", "model."):
        if state and all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in target_keys):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state_into(net: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly; mismatches list missing and unexpected keys."""
    target = net.state_dict()
    state = _strip_prefixes(state, set(target))
    missing = sorted(set(target) - set(state))
    unexpected = sorted(set(state) - set(target))
    shape_bad = sorted(k for k in set(target) & set(state) if target[k].shape != state[k].shape)
    if missing or unexpected or shape_bad:
        def fmt(keys):
            return ", ".join(keys[:8]) + (f" … (+{len(keys) - 8} more)" if len(keys) > 8 else "")
        lines = [f"{source}: weights do not match the architecture."]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {fmt(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {fmt(unexpected)}")
        if shape_bad:
            lines.append("  shape mismatches: " + fmt([f"{k} {tuple(state[k].shape)} vs {tuple(target[k].shape)}" for k in shape_bad]))
        heads = {int(state[k].shape[0]) for k in shape_bad
                 if state[k].ndim >= 1 and target[k].ndim == state[k].ndim and state[k].shape[1:] == target[k].shape[1:]}
        if not missing and not unexpected and len(heads) == 1:
            lines.append(f"  Only the output width differs: the weights have {heads.pop()} classes; "
                         f"pass --num-classes {int(next(state[k] for k in shape_bad).shape[0])}.")
        else:
            lines.append("  Check --arch (and --num-classes) against the model that produced the file.")
        raise CheckpointError("\n".join(lines))
    net.load_state_dict(state, strict=True)


def _weights_file(path: Path) -> tuple[Path, str]:
    """The weights file of a checkpoint path and its format (by content, then by suffix)."""
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path}: directory has no {WEIGHTS_FILE}")
        return weights, "safetensors"
    kind = sniff(path)
    if kind == "unknown":
        kind = {".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch",
                ".pt2": "export"}.get(path.suffix.lower(), "unknown")
    if kind == "unknown":
        raise CheckpointError(f"{path}: unknown checkpoint format {path.suffix.lower()!r}; expected a directory, "
                              f".safetensors, a .pt/.pth state dict, a TorchScript archive or a torch.export .pt2")
    return path, kind


def _normalisation(card: dict, explicit_name: Optional[str], mean, std, fallback: Optional[tuple]) -> tuple:
    """(name, mean, std): explicit --mean/--std, else an explicit name, else the card's, else ``fallback``
    (name or (mean, std)), else none."""
    if mean is not None or std is not None:
        return CUSTOM, mean, std
    if explicit_name:
        return explicit_name, None, None
    name = card.get("normalization")
    if name and name in NORMALIZATIONS:
        return name, None, None
    if card.get("mean") is not None and card.get("std") is not None:
        return CUSTOM, card["mean"], card["std"]
    if isinstance(fallback, str):
        return fallback, None, None
    if fallback and fallback[0]:
        return CUSTOM, fallback[0], fallback[1]
    return "none", None, None


def load_checkpoint(
    spec: str | os.PathLike,
    arch: Optional[str] = None,
    dataset: Optional[str] = None,
    num_classes: Optional[int] = None,
    normalization: Optional[str] = None,
    device: str | torch.device = "cpu",
    *,
    arch_kwargs: Optional[dict] = None,
    mean=None,
    std=None,
    input_size=None,
) -> tuple[PixelSpaceModel, dict]:
    """Load a checkpoint into an eval-mode :class:`PixelSpaceModel` and return it with its card.

    ``spec`` is a bundled name, a checkpoint directory, a ``.safetensors`` file, a
    ``.pt``/``.pth`` state dict, a TorchScript or ``torch.export`` archive, or
    ``timm:NAME``/``torchvision:NAME`` (the library's pretrained weights). Bare weights
    (no card) need ``arch`` (any spec of :mod:`.sources`, with ``arch_kwargs``). Registry
    architectures take classes, shape and normalisation from ``dataset`` (default: the
    architecture's usual one); other architectures from ``num_classes``/``input_size``/
    ``mean``/``std``, the card, or their pretrained config — classes otherwise from the
    model's output, never a default of 10. ``input_size`` is (C, H, W).
    """
    if mean is not None and std is None or std is not None and mean is None:
        raise CheckpointError("give both --mean and --std (one value, or one per channel)")
    if is_pretrained_spec(spec):
        if arch and arch != str(spec):
            raise CheckpointError(f"{spec} as a checkpoint means the library's pretrained weights; --arch is for "
                                  f"weights files (e.g. jr-eval run FILE --arch {spec})")
        weights, kind, card = None, "pretrained", {"architecture": str(spec)}
    else:
        path = resolve_checkpoint(spec)
        weights, kind = _weights_file(path)
        card = {}
        if kind == "safetensors":
            try:
                card = read_card(weights)
            except CheckpointError:
                # --arch stands in for a missing card, never for one that is there but unreadable
                if arch is None or weights.with_name(CARD_FILE).is_file():
                    raise
        elif kind in ("torchscript", "export") and arch:
            raise CheckpointError(f"{weights} is a {'TorchScript' if kind == 'torchscript' else 'torch.export'} "
                                  f"archive: it carries its own network, so --arch does not apply; drop it")
    source = str(weights) if weights is not None else f"{spec} (pretrained)"
    card = dict(card)
    if arch:
        card["architecture"] = arch
        card.pop("architecture_sha256", None)
        if arch_kwargs is None:
            card.pop("arch_kwargs", None)
    if arch_kwargs is not None:
        card["arch_kwargs"] = dict(arch_kwargs)
    if dataset:
        card["dataset"] = dataset
    if num_classes:
        card["num_classes"] = int(num_classes)
    if input_size:
        card["input_shape"] = [int(v) for v in input_size]
    card.setdefault("source", source)

    if kind in ("torchscript", "export"):
        if kind == "torchscript":
            net, shape = load_torchscript(weights), None
        else:
            net, shape = load_exported(weights)
        card["architecture"] = f"<{kind} {weights.name}>"
        card["format"] = kind
        shape = card.get("input_shape") or shape
        name, m, s = _normalisation(card, normalization, mean, std, None)
        model = PixelSpaceModel(net, name, shape, card.get("num_classes") or 0, m, s)
        return _finish(model, card, source, device)

    if not card.get("architecture"):
        raise CheckpointError(f"{weights}: a bare state dict needs --arch; valid: {forms()}")
    try:
        a = parse_arch(str(card["architecture"]))
    except CheckpointError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    registry_ds = card.get("dataset") in DATASETS
    state = None
    if kind == "safetensors":
        state = read_safetensors(weights)
    elif kind == "torch":
        state = read_torch_state(weights)
    if a.kind == "registry":
        if not card.get("dataset"):
            card["dataset"] = {"lenet": "mnist", "jg-mnist": "mnist", "resnet18": "imagenet"}.get(a.target, "cifar10")
        info = get_dataset_info(card["dataset"]) if card["dataset"] in DATASETS else None
        card.setdefault("num_classes", info.num_classes if info else None)
        card.setdefault("input_shape", list(info.input_shape) if info else list(ARCHITECTURES[a.target].input_shape))
        if not card.get("num_classes"):  # a dataset given as a file: the classes of the weights' last layer
            card["num_classes"] = _head_classes(state) or 10
        name, m, s = _normalisation(card, normalization, mean, std, info.normalization if info else "none")
        model = make_model(a.target, int(card["num_classes"]), name, card["input_shape"], mean=m, std=s)
    else:
        if a.kind == "file" and card.get("architecture_sha256"):
            target = Path(a.target).expanduser()
            if target.is_file() and file_sha256(target) != card["architecture_sha256"]:
                card.setdefault("notes", []).append(
                    f"the architecture file {target} changed since this checkpoint was written")
        shape = card.get("input_shape")
        net, d = build_network(a.spec, card.get("num_classes"), in_channels=shape[0] if shape else None,
                               kwargs=card.get("arch_kwargs"))
        if shape is None:
            shape = d.input_shape
            if shape is None and registry_ds and a.kind in ("module", "file"):
                shape = get_dataset_info(card["dataset"]).input_shape
        fallback = (d.mean, d.std) if d.mean else (
            get_dataset_info(card["dataset"]).normalization if registry_ds and a.kind in ("module", "file") else None)
        name, m, s = _normalisation(card, normalization, mean, std, fallback)
        model = PixelSpaceModel(net, name, shape, card.get("num_classes") or d.num_classes or 0, m, s)
        for k, v in _arch_card(a.spec, card.get("arch_kwargs"), d).items():
            card.setdefault(k, v)
        card["architecture"] = absolute_spec(a.spec)
        model.arch_card = {k: card[k] for k in ("architecture", "arch_kwargs", "architecture_sha256", "library",
                                                  "preprocess") if card.get(k) is not None}
    if kind == "pretrained":
        state, weights, where = pretrained_weights(a.spec, model.net)
        card["source"] = source = f"{a.spec} pretrained weights ({where})"
        card["weights_file"] = str(weights)
    load_state_into(model.net, state, source)
    return _finish(model, card, source, device)


def _head_classes(state: Optional[dict]) -> Optional[int]:
    """Output width of the last 2-D weight of a state dict (the classifier of the registry networks)."""
    last = None
    for k, v in (state or {}).items():
        if k.endswith("weight") and getattr(v, "ndim", 0) == 2:
            last = int(v.shape[0])
    return last


def _finish(model: PixelSpaceModel, card: dict, source: str, device) -> tuple[PixelSpaceModel, dict]:
    """Settle classes and shape from a forward pass, record them in the card, eval mode on ``device``."""
    bad = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"{source}: the weights hold NaN or infinite values ({len(bad)} tensor(s), e.g. "
                              f"{bad[0]}); the checkpoint is broken (a diverged training run?): use another one")
    model.eval()
    settle_model(model, source=source)
    card["num_classes"] = model.num_classes or None
    card["input_shape"] = list(model.input_shape) if model.input_shape else None
    card["normalization"] = model.normalization
    card["mean"], card["std"] = model.mean_std()
    return model.to(device), card


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file (a checkpoint's weights), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_model(spec: str | os.PathLike, *, arch: Optional[str] = None, dataset: Optional[str] = None,
               num_classes: Optional[int] = None, normalization: Optional[str] = None,
               device: str | torch.device = "cpu", arch_kwargs: Optional[dict] = None, mean=None, std=None,
               input_size=None) -> PixelSpaceModel:
    """An eval-mode pixel-space model from any checkpoint form ``jr-eval`` accepts: a bundled
    name, a checkpoint directory, ``.safetensors``, a ``.pt``/``.pth`` state dict with ``arch``
    (a registry name, ``timm:NAME``, ``torchvision:NAME``, ``pkg.module:factory`` or
    ``path/to/models.py:factory``, with ``arch_kwargs``), a TorchScript or ``torch.export``
    archive, or ``timm:NAME``/``torchvision:NAME`` for the library's pretrained weights; never
    unpickling code. ``mean``/``std`` (per channel) wrap the network in the pixel-space model;
    ``input_size`` is (C, H, W). Its card is kept as ``model.card``."""
    model, card = load_checkpoint(spec, arch=arch, dataset=dataset, num_classes=num_classes,
                                  normalization=normalization, device=device, arch_kwargs=arch_kwargs,
                                  mean=mean, std=std, input_size=input_size)
    model.card = card
    return model
