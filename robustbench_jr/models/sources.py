"""Where an architecture comes from: the registry, timm, torchvision, or the user's own code.

An architecture *spec* (``--arch``, ``TrainConfig.model``, a card's ``architecture``) is one of

* a registry name (:data:`~.architectures.ARCHITECTURES`): ``lenet``, ``resnet18-cifar``, …;
* ``timm:NAME`` — ``timm.create_model(NAME, pretrained=False, …)`` (timm is an optional extra:
  ``pip install 'robustbench-jr[timm]'``);
* ``torchvision:NAME`` — ``torchvision.models.get_model(NAME, weights=None, …)``;
* ``pkg.module:factory`` — a callable of an importable module (the current directory is
  searched after ``sys.path``);
* ``path/to/models.py:factory`` — a callable defined in a Python file. Running that file is
  the user's explicit choice, as with any Python script; weights files are still never
  unpickled.

A factory is called with the keyword arguments of ``--arch-kwargs`` (plus ``num_classes``
when it accepts that argument and a class count is given) and returns an ``nn.Module`` that
takes normalised input — or a :class:`~.pixel.PixelSpaceModel`, whose normalisation and input
shape are then used. For timm and torchvision the input size, mean and std come from the
model's own pretrained config (:func:`arch_defaults`); ``timm:NAME`` and
``torchvision:NAME`` given as a *checkpoint* mean the library's pretrained weights
(:func:`pretrained_weights`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import CheckpointError
from .architectures import ARCHITECTURES, build_model
from .formats import read_weights
from .pixel import PixelSpaceModel

#: prefixes of library architectures
LIBRARIES = ("timm", "torchvision")
#: where pretrained weights are looked for before any download: $JR_WEIGHTS_DIR or this
ENV_WEIGHTS_DIR = "JR_WEIGHTS_DIR"
FORMS = ("a registry name ({}), timm:NAME, torchvision:NAME, pkg.module:factory or path/to/models.py:factory")


@dataclass(frozen=True)
class ArchSpec:
    """A parsed architecture spec: ``kind`` is registry, timm, torchvision, module or file."""

    spec: str
    kind: str
    target: str  # registry name, library model name, module name or file path
    attr: str = ""  # the factory's (dotted) name for module/file

    @property
    def external(self) -> bool:
        return self.kind != "registry"


@dataclass
class ArchDefaults:
    """What a built architecture says about itself (None = it does not say)."""

    input_shape: Optional[tuple] = None
    mean: Optional[list] = None
    std: Optional[list] = None
    num_classes: Optional[int] = None
    #: how images are brought to the input size: {"resize": R, "crop": C} (timm/torchvision configs)
    preprocess: Optional[dict] = None
    #: card entries that say where the code came from (a file's sha256, library versions)
    provenance: dict = field(default_factory=dict)


def forms() -> str:
    return FORMS.format(", ".join(ARCHITECTURES))


def is_arch_spec(spec: Any) -> bool:
    """Whether ``spec`` is syntactically an architecture spec (without building it)."""
    try:
        parse_arch(spec)
        return True
    except CheckpointError:
        return False


def parse_arch(spec: str) -> ArchSpec:
    """Parse an architecture spec; an unknown one is a :class:`CheckpointError` listing the forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise CheckpointError(f"architecture must be {forms()}; got {spec!r}")
    spec = spec.strip()
    if spec in ARCHITECTURES:
        return ArchSpec(spec, "registry", spec)
    head, sep, tail = spec.rpartition(":")
    if not sep or not head or not tail:
        raise CheckpointError(f"unknown architecture {spec!r}; valid: {forms()}")
    if head in LIBRARIES:
        return ArchSpec(spec, head, tail)
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", tail):
        raise CheckpointError(f"architecture {spec!r}: {tail!r} is not a Python name; use "
                              f"pkg.module:factory or path/to/models.py:factory")
    if head.endswith(".py") or "/" in head or "\\" in head:
        return ArchSpec(spec, "file", head, tail)
    if re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", head):
        return ArchSpec(spec, "module", head, tail)
    raise CheckpointError(f"unknown architecture {spec!r}; valid: {forms()}")


def absolute_spec(spec: str) -> str:
    """The spec with a factory file's path made absolute (what a card records)."""
    a = parse_arch(spec)
    if a.kind == "file":
        return f"{Path(a.target).expanduser().resolve()}:{a.attr}"
    return a.spec


# ---------------------------------------------------------------------------
# libraries
# ---------------------------------------------------------------------------

def _timm():
    try:
        import timm
    except ImportError:
        raise CheckpointError("timm architectures need the optional package timm: "
                              "pip install 'robustbench-jr[timm]' (or pip install timm)") from None
    return timm


def _tv_weights(name: str):
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None
    return getattr(enum, "DEFAULT", None) or next(iter(enum), None)


def _library_defaults(a: ArchSpec, net: Optional[nn.Module] = None) -> ArchDefaults:
    if a.kind == "timm":
        timm = _timm()
        from timm.data import resolve_model_data_config

        cfg = resolve_model_data_config(net) if net is not None else {}
        size = tuple(int(v) for v in cfg.get("input_size", ())) or None
        crop_pct = cfg.get("crop_pct")
        pre = None
        if size and crop_pct:
            pre = {"resize": int(round(size[-1] / float(crop_pct))), "crop": int(size[-1])}
        nc = getattr(net, "num_classes", None) if net is not None else None
        return ArchDefaults(size, [float(v) for v in cfg.get("mean", ())] or None,
                            [float(v) for v in cfg.get("std", ())] or None, int(nc) if nc else None, pre,
                            {"library": f"timm {timm.__version__}"})
    import torchvision

    w = _tv_weights(a.target)
    d = ArchDefaults(provenance={"library": f"torchvision {torchvision.__version__}"})
    if w is not None:
        t = w.transforms()
        crop = int(t.crop_size[0])
        d.input_shape = (3, crop, crop)
        d.mean, d.std = [float(v) for v in t.mean], [float(v) for v in t.std]
        d.preprocess = {"resize": int(t.resize_size[0]), "crop": crop}
        d.num_classes = len(w.meta.get("categories") or []) or None
    return d


def _build_library(a: ArchSpec, num_classes: Optional[int], in_channels: Optional[int], kwargs: dict) -> nn.Module:
    kw = dict(kwargs)
    if num_classes:
        kw["num_classes"] = int(num_classes)
    if a.kind == "timm":
        timm = _timm()
        if in_channels and in_channels != 3:
            kw.setdefault("in_chans", int(in_channels))
        if not timm.is_model(a.target):
            close = timm.list_models(f"*{a.target.split('.')[0][:6]}*")[:10]
            raise CheckpointError(f"unknown timm architecture {a.target!r}"
                                  + (f"; similar names: {', '.join(close)}" if close else "")
                                  + " (all: python -c 'import timm; print(timm.list_models())')")
        try:
            return timm.create_model(a.target, pretrained=False, **kw)
        except Exception as exc:
            raise CheckpointError(f"timm could not build {a.target!r} with {kw}: "
                                  f"{type(exc).__name__}: {exc}") from None
    import torchvision

    try:
        return torchvision.models.get_model(a.target, weights=None, **kw)
    except ValueError as exc:
        if "Unknown model" in str(exc) or a.target not in torchvision.models.list_models():
            raise CheckpointError(f"unknown torchvision architecture {a.target!r}; valid: "
                                  f"{', '.join(torchvision.models.list_models(module=torchvision.models))}") from None
        raise CheckpointError(f"torchvision could not build {a.target!r} with {kw}: {exc}") from None
    except Exception as exc:
        raise CheckpointError(f"torchvision could not build {a.target!r} with {kw}: "
                              f"{type(exc).__name__}: {exc}") from None


# ---------------------------------------------------------------------------
# the user's code
# ---------------------------------------------------------------------------

_FILE_MODULES: dict[tuple, Any] = {}


def file_sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _import_file(path: Path):
    path = path.expanduser().resolve()
    if not path.is_file():
        raise CheckpointError(f"architecture file {str(path)!r} does not exist (give path/to/models.py:factory)")
    key = (str(path), path.stat().st_mtime_ns)
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    name = "_jr_user_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CheckpointError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise CheckpointError(f"running {path} (the architecture file) failed: {type(exc).__name__}: {exc}") from None
    _FILE_MODULES[key] = module
    return module


def _import_module(name: str):
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise CheckpointError(f"cannot import module {name!r} for the architecture: no module named "
                                  f"{exc.name!r} (searched sys.path and the current directory). For a file, "
                                  f"give path/to/{name.split('.')[-1]}.py:factory") from None
        raise CheckpointError(f"importing module {name!r} failed: {type(exc).__name__}: {exc}") from None
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise CheckpointError(f"importing module {name!r} failed: {type(exc).__name__}: {exc}") from None
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def _factory(a: ArchSpec):
    module = _import_file(Path(a.target)) if a.kind == "file" else _import_module(a.target)
    obj = module
    for part in a.attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", None) == module.__name__)
            raise CheckpointError(f"{a.target} has no {a.attr!r}; callables defined there: "
                                  f"{', '.join(names) or 'none'}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CheckpointError(f"{a.spec}: {a.attr!r} is not callable (a factory or an nn.Module class)")
    return obj


def _accepts(fn, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def _call_factory(a: ArchSpec, num_classes: Optional[int], kwargs: dict) -> tuple[nn.Module, ArchDefaults]:
    fn = _factory(a)
    kw = dict(kwargs)
    if num_classes and "num_classes" not in kw and _accepts(fn, "num_classes"):
        kw["num_classes"] = int(num_classes)
    try:
        out = fn(**kw)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise CheckpointError(f"the architecture factory {a.spec} raised {type(exc).__name__}: {exc}"
                              + (f" (called with {kw})" if kw else "")) from None
    defaults = ArchDefaults()
    if a.kind == "file":
        defaults.provenance["architecture_sha256"] = file_sha256(Path(a.target).expanduser())
    if isinstance(out, PixelSpaceModel):
        defaults.input_shape = out.input_shape
        defaults.mean, defaults.std = out.mean_std()
        defaults.num_classes = out.num_classes or None
        out = out.net
    if not isinstance(out, nn.Module):
        raise CheckpointError(f"the architecture factory {a.spec} returned {type(out).__name__}, not a torch.nn.Module")
    return out, defaults


# ---------------------------------------------------------------------------
# building
# ---------------------------------------------------------------------------

def build_network(spec: str, num_classes: Optional[int] = None, in_channels: Optional[int] = None,
                  dropout: Optional[float] = None, kwargs: Optional[dict] = None) -> tuple[nn.Module, ArchDefaults]:
    """Build the (normalised-input) network of ``spec`` and what it says about its inputs."""
    a = parse_arch(spec)
    kwargs = dict(kwargs or {})
    if a.kind == "registry":
        if kwargs:
            raise CheckpointError(f"architecture {spec!r} takes no --arch-kwargs (got {kwargs}); they are for "
                                  f"timm, torchvision and factory architectures")
        info = ARCHITECTURES[spec]
        net = build_model(spec, num_classes=num_classes or 10, in_channels=in_channels, dropout=dropout)
        return net, ArchDefaults(input_shape=info.input_shape, num_classes=num_classes or None)
    if a.kind in LIBRARIES:
        net = _build_library(a, num_classes, in_channels, kwargs)
        d = _library_defaults(a, net)
        if in_channels and d.input_shape and d.input_shape[0] != in_channels:
            # the pretrained config's per-channel statistics do not fit another channel count
            d.input_shape = (int(in_channels), *d.input_shape[1:])
            d.mean = d.std = None
        return net, d
    return _call_factory(a, num_classes, kwargs)


# ---------------------------------------------------------------------------
# pretrained weights of timm / torchvision
# ---------------------------------------------------------------------------

def weights_dir() -> Path:
    return Path(os.environ.get(ENV_WEIGHTS_DIR) or Path.home() / ".cache" / "robustbench_jr" / "weights")


def _local_candidates(a: ArchSpec) -> list[Path]:
    base = weights_dir() / a.kind
    return [base / f"{a.target}{ext}" for ext in (".safetensors", ".pth", ".pt", ".bin")]


def _source_of(a: ArchSpec, net: nn.Module) -> tuple[Optional[str], Optional[str]]:
    """(download URL, Hugging Face repo id) of the library's pretrained weights."""
    if a.kind == "timm":
        cfg = getattr(net, "pretrained_cfg", None) or {}
        hub = cfg.get("hf_hub_id")
        url = (f"https://huggingface.co/{hub}/resolve/main/model.safetensors" if hub else cfg.get("url")) or None
        return url, hub
    w = _tv_weights(a.target)
    return (w.url if w is not None else None), None


def _why(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _reachable(url: str, timeout: float = 5.0) -> None:
    """Raise OSError at once when the download host does not answer (offline), instead of
    letting a client retry for minutes."""
    host = urlparse(url).hostname or ""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            pass
    except OSError as exc:
        raise OSError(f"cannot reach {host}: {exc}") from None


def pretrained_weights(spec: str, net: nn.Module) -> tuple[dict[str, torch.Tensor], Path, str]:
    """The library's pretrained weights for ``spec`` (``timm:NAME``/``torchvision:NAME``):
    ``(state dict, file, where from)``.

    Looked for, in order: ``$JR_WEIGHTS_DIR/<timm|torchvision>/NAME.{safetensors,pth}``
    (default ``~/.cache/robustbench_jr/weights``), the library's own cache, then a download
    where the network allows it. Offline, one :class:`CheckpointError` says where to put the file.
    """
    a = parse_arch(spec)
    if a.kind not in LIBRARIES:
        raise CheckpointError(f"{spec!r}: only timm:NAME and torchvision:NAME have library pretrained weights")
    for p in _local_candidates(a):
        if p.is_file():
            return read_weights(p), p, f"local file {p}"
    url, hub = _source_of(a, net)
    if url is None:
        raise CheckpointError(f"{spec}: the library has no pretrained weights for this architecture; pass a "
                              f"weights file with --arch {spec}")
    errors = []
    if hub:
        try:
            from huggingface_hub import hf_hub_download

            try:  # the library's cache first, then the network (where it answers at all)
                path = Path(hf_hub_download(hub, "model.safetensors", local_files_only=True))
            except Exception:
                _reachable(url)
                path = Path(hf_hub_download(hub, "model.safetensors"))
            return read_weights(path), path, f"Hugging Face Hub {hub}"
        except CheckpointError:
            raise
        except Exception as exc:  # offline, no such file, …
            errors.append(_why(exc))
    else:
        hub_file = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
        if hub_file.is_file():
            return read_weights(hub_file), hub_file, f"torch hub cache {hub_file}"
        try:
            _reachable(url)
            hub_file.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(hub_file), progress=False)
            return read_weights(hub_file), hub_file, url
        except CheckpointError:
            raise
        except Exception as exc:
            errors.append(_why(exc))
    target = _local_candidates(a)[0 if url.endswith(".safetensors") else 1]
    raise CheckpointError(
        f"the pretrained weights of {spec} could not be fetched ({'; '.join(errors) or 'no network'}). "
        f"Offline: download {url} on a machine with network access and put the file at {target} "
        f"(or point ${ENV_WEIGHTS_DIR} at a folder holding {a.kind}/{target.name}); any state dict of the "
        f"architecture also works as a checkpoint: jr-eval run FILE --arch {spec}")
