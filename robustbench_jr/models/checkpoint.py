"""Checkpoints: safetensors weights plus a YAML card; plain PyTorch state dicts.

A checkpoint directory holds ``model.safetensors`` and ``card.yaml``. The card records
architecture, dataset, number of classes, input shape, normalisation, the full
training config, seed, measured metrics, data provenance, package version and the
parent checkpoint of a fine-tune.

``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)`` only: a file
that needs arbitrary unpickling is refused and no code from it runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import pickle
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from torch import nn

from .._version import __version__
from ..data import get_dataset_info
from ..errors import CheckpointError
from .architectures import ARCHITECTURES, build_model
from .pixel import NORMALIZATIONS, PixelSpaceModel

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
        f"(bundled: {', '.join(bundled_names()) or 'none'})"
    )


def make_model(arch: str, num_classes: int, normalization: str, input_shape: Optional[tuple] = None,
               dropout: Optional[float] = None) -> PixelSpaceModel:
    """A freshly initialised pixel-space model."""
    if normalization not in NORMALIZATIONS:
        raise CheckpointError(f"unknown normalization {normalization!r}; valid: {', '.join(NORMALIZATIONS)}")
    shape = tuple(input_shape) if input_shape else ARCHITECTURES[arch].input_shape if arch in ARCHITECTURES else None
    net = build_model(arch, num_classes=num_classes, in_channels=shape[0] if shape else None, dropout=dropout)
    return PixelSpaceModel(net, normalization, shape, num_classes)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


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
        "input_shape": list(model.input_shape),
        "normalization": model.normalization,
        "package_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }
    full.update({k: v for k, v in card.items() if k not in full or v is not None})
    _atomic_write(out / WEIGHTS_FILE, save(state, metadata={"format": "pt", "architecture": str(full["architecture"])}))
    _atomic_write(out / CARD_FILE, yaml.safe_dump(full, sort_keys=False).encode())
    return out


def read_card(path: str | os.PathLike) -> dict:
    p = Path(path)
    card_path = p / CARD_FILE if p.is_dir() else p.with_name(CARD_FILE)
    if not card_path.is_file():
        raise CheckpointError(f"{p}: no {CARD_FILE} next to the weights; pass --arch and --dataset to load bare weights")
    try:
        card = yaml.safe_load(card_path.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{card_path}: card is not valid YAML ({exc})") from None
    if not isinstance(card, dict) or "architecture" not in card:
        raise CheckpointError(f"{card_path}: card must be a mapping with at least 'architecture'")
    return card


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


def _load_torch(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "weights only" not in msg.lower() and "weights_only" not in msg:
            # A damaged pickle stream, not a refused global.
            raise CheckpointError(f"{path}: truncated or corrupt PyTorch file ({msg.strip()})") from None
        lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        raise CheckpointError(
            f"{path}: refused. The file needs arbitrary unpickling (it stores Python objects, "
            f"not just tensors), and this tool loads .pt/.pth files with weights_only=True only, "
            f"so that no code from the file can run. Re-save it as a plain state dict "
            f"(torch.save(model.state_dict(), ...)) from a trusted environment. Detail: {detail}"
        ) from None
    except Exception as exc:  # truncated/garbage files fail as RuntimeError, EOFError, KeyError, …
        raise CheckpointError(
            f"{path}: truncated or corrupt PyTorch file ({type(exc).__name__}: {str(exc).strip()[:300]})"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return obj


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
        lines.append("  Check --arch (and --num-classes) against the model that produced the file.")
        raise CheckpointError("\n".join(lines))
    net.load_state_dict(state, strict=True)


def load_checkpoint(
    spec: str | os.PathLike,
    arch: Optional[str] = None,
    dataset: Optional[str] = None,
    num_classes: Optional[int] = None,
    normalization: Optional[str] = None,
    device: str | torch.device = "cpu",
) -> tuple[PixelSpaceModel, dict]:
    """Load a checkpoint into an eval-mode :class:`PixelSpaceModel` and return it with its card.

    ``spec`` is a bundled name, a checkpoint directory, a ``.safetensors`` file, or a
    ``.pt``/``.pth`` state dict. Bare weights (no card) need ``arch``; dataset
    (for normalisation, shape, classes) defaults to the architecture's usual one.
    """
    path = resolve_checkpoint(spec)
    if path.is_dir():
        weights = path / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"{path}: directory has no {WEIGHTS_FILE}")
    else:
        weights = path
    suffix = weights.suffix.lower()
    if suffix == ".safetensors":
        try:
            card = read_card(weights)
        except CheckpointError:
            if arch is None:
                raise
            card = {}
        state = _load_safetensors(weights)
    elif suffix in (".pt", ".pth", ".bin"):
        card = {}
        state = _load_torch(weights)
    else:
        raise CheckpointError(f"{weights}: unknown checkpoint format {suffix!r}; expected a directory, "
                              f".safetensors, .pt or .pth")

    card = dict(card)
    if arch:
        card["architecture"] = arch
    if not card.get("architecture"):
        raise CheckpointError(f"{weights}: a bare state dict needs --arch; valid: {', '.join(ARCHITECTURES)}")
    if card["architecture"] not in ARCHITECTURES:
        raise CheckpointError(f"{weights}: unknown architecture {card['architecture']!r}; valid: {', '.join(ARCHITECTURES)}")
    if dataset:
        card["dataset"] = dataset
    if not card.get("dataset"):
        card["dataset"] = {"lenet": "mnist", "jg-mnist": "mnist", "resnet18": "imagenet"}.get(card["architecture"], "cifar10")
    info = get_dataset_info(card["dataset"])
    card.setdefault("num_classes", info.num_classes)
    card.setdefault("input_shape", list(info.input_shape))
    card.setdefault("normalization", info.normalization)
    if num_classes:
        card["num_classes"] = int(num_classes)
    if normalization:
        card["normalization"] = normalization
    card.setdefault("source", str(weights))
    model = make_model(card["architecture"], int(card["num_classes"]), card["normalization"], card["input_shape"])
    load_state_into(model.net, state, str(weights))
    model.eval()
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
               device: str | torch.device = "cpu") -> PixelSpaceModel:
    """An eval-mode pixel-space model from any checkpoint form ``jr-eval`` accepts (a bundled
    name, a checkpoint directory, ``.safetensors``, or a ``.pt``/``.pth`` state dict with
    ``arch``; never unpickling code). Its card is kept as ``model.card``."""
    model, card = load_checkpoint(spec, arch=arch, dataset=dataset, num_classes=num_classes,
                                  normalization=normalization, device=device)
    model.card = card
    return model
