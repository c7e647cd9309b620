"""Reading model files, recognised by their content (not only their name).

* safetensors: tensors only, never code;
* PyTorch state dicts (``torch.save(model.state_dict())``, ``.pt``/``.pth``/``.bin``): read
  with ``torch.load(weights_only=True)``, so a file that needs arbitrary unpickling is refused;
* TorchScript archives (``torch.jit.save``): ``torch.jit.load``, whose own unpickler builds
  only TorchScript objects and tensors and whose code is TorchScript run by TorchScript's
  interpreter — no Python object of the file is unpickled;
* ``torch.export`` archives (``torch.export.save``, ``.pt2``): checked entry by entry before
  ``torch.export.load`` reads them: weights and constants must be raw tensor payloads,
  every pickle inside must load with ``weights_only=True``, and compiled code
  (AOTInductor shared libraries) is refused — so loading one unpickles nothing arbitrary.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from ..errors import CheckpointError

#: what :func:`sniff` answers
FORMATS = ("safetensors", "torch", "torchscript", "export", "unknown")


def _zip_names(path: Path) -> Optional[list[str]]:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return None


def _strip_root(name: str) -> str:
    """Archive entries sit under one root folder (``<stem>/…``); the part after it."""
    return name.split("/", 1)[1] if "/" in name else name


def sniff(path: str | Path) -> str:
    """The format of a model file from its first bytes and, for zip archives, its entries:
    one of :data:`FORMATS`."""
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
    except OSError:
        return "unknown"
    if head[:4] == b"PK\x03\x04":
        names = _zip_names(p)
        if names is None:
            return "unknown"
        inner = {_strip_root(n) for n in names}
        if "archive_format" in inner or "archive_version" in inner or any(n.startswith("models/") for n in inner):
            return "export"
        if "constants.pkl" in inner or any(n.startswith("code/") for n in inner):
            return "torchscript"
        if "data.pkl" in inner:
            return "torch"
        return "unknown"
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n < (1 << 30):
            return "safetensors"
    if head[:2] == b"\x80\x02":  # a legacy (non-zip) torch.save file starts with a protocol-2 pickle
        return "torch"
    return "unknown"


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({exc})") from None


def read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``torch.load(weights_only=True)``; ``{"state_dict": …}`` wrappers unwrapped."""
    if sniff(path) == "torchscript":
        raise CheckpointError(f"{path}: this is a TorchScript archive (torch.jit.save), not a state dict; "
                              f"audit it as it is (jr-eval run {path}) without --arch")
    if sniff(path) == "export":
        raise CheckpointError(f"{path}: this is a torch.export archive, not a state dict; "
                              f"audit it as it is (jr-eval run {path}) without --arch")
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
            f"(torch.save(model.state_dict(), ...)) from a trusted environment, or export the model "
            f"(torch.export.save or torch.jit.save). Detail: {detail}"
        ) from None
    except Exception as exc:  # truncated/garbage files fail as RuntimeError, EOFError, KeyError, …
        raise CheckpointError(
            f"{path}: truncated or corrupt PyTorch file ({type(exc).__name__}: {str(exc).strip()[:300]})"
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors)")
    return obj


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a PyTorch file, by content (then by suffix)."""
    kind = sniff(path)
    if kind == "safetensors" or (kind == "unknown" and path.suffix.lower() == ".safetensors"):
        return read_safetensors(path)
    return read_torch_state(path)


# ---------------------------------------------------------------------------
# exported programs
# ---------------------------------------------------------------------------

class ExportedNet(nn.Module):
    """An exported or scripted network as a module that takes normalised input.

    ``train()``/``eval()`` only set this wrapper's flag: an exported program was traced in one
    mode and keeps it (``torch.export``'s modules refuse ``eval()``), so the flag does not reach
    it. With a batch size fixed at export time (``static_batch``), inputs are run in chunks of
    that size (the last one padded by repeating its final row), so any batch size works.
    """

    def __init__(self, module: nn.Module, kind: str, static_batch: Optional[int] = None):
        super().__init__()
        self.module = module
        self.kind = kind
        self.static_batch = static_batch

    def train(self, mode: bool = True) -> "ExportedNet":
        self.training = bool(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.static_batch
        if not b or len(x) == b:
            return self.module(x)
        outs = []
        for s in range(0, len(x), b):
            chunk = x[s:s + b]
            k = len(chunk)
            if k < b:
                chunk = torch.cat([chunk, chunk[-1:].expand(b - k, *chunk.shape[1:])])
            outs.append(self.module(chunk)[:k])
        return torch.cat(outs)


def load_torchscript(path: Path) -> ExportedNet:
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise CheckpointError(f"{path}: a TorchScript archive that torch.jit.load cannot read "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}); re-save it with "
                              f"torch.jit.save from the PyTorch version that made it, or as a state dict") from None
    module.eval()
    return ExportedNet(module, "torchscript")


def _check_export_archive(path: Path) -> None:
    """Refuse a ``.pt2`` archive whose loading would unpickle arbitrary objects or run compiled code."""
    def refuse(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: refused. {why} Loading it could run code from the file; this tool loads "
                               f"torch.export archives whose weights and constants are plain tensors only. "
                               f"Re-export the model with torch.export.save from a trusted environment.")

    with zipfile.ZipFile(path) as z:
        entries = {_strip_root(n): n for n in z.namelist()}
        if any(n.startswith(("data/aotinductor/", "data/executorch/", "data/mtia/")) for n in entries):
            raise refuse("It holds compiled code (AOTInductor/ExecuTorch), not only an exported program.")
        if not any(n.startswith("models/") and n.endswith(".json") for n in entries):
            raise CheckpointError(f"{path}: a zip archive but not a torch.export program (no models/*.json); "
                                  f"save it with torch.export.save")
        for name, full in entries.items():
            if name.startswith(("data/weights/", "data/constants/")) and name.endswith("_config.json"):
                try:
                    cfg = json.loads(z.read(full))
                except ValueError:
                    raise CheckpointError(f"{path}: corrupt torch.export archive ({name} is not JSON)") from None
                for key, meta in (cfg.get("config") or {}).items():
                    pname = str(meta.get("path_name", ""))
                    if meta.get("use_pickle") or pname.startswith(("custom_obj_", "opaque_obj_")):
                        raise refuse(f"Its {'constant' if 'constants' in name else 'weight'} {key!r} is a "
                                     f"pickled Python object.")
            elif name.endswith((".pt", ".pkl")):
                try:
                    torch.load(io.BytesIO(z.read(full)), map_location="cpu", weights_only=True)
                except Exception:
                    raise refuse(f"Its entry {name} needs arbitrary unpickling.") from None


def _export_input_shape(ep) -> tuple[Optional[tuple], Optional[int]]:
    """(C, H, W) and the batch size of the first user input, where they are fixed numbers."""
    try:
        first = ep.graph_signature.user_inputs[0]
        node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name == first)
        shape = tuple(node.meta["val"].shape)
    except Exception:
        return None, None
    dims = [d if isinstance(d, int) else None for d in shape]
    chw = tuple(dims[1:]) if len(dims) == 4 and all(d is not None for d in dims[1:]) else None
    return chw, dims[0] if dims else None


def load_exported(path: Path) -> tuple[ExportedNet, Optional[tuple]]:
    """A ``torch.export`` archive as a module, and its input shape (C, H, W) where fixed."""
    _check_export_archive(path)
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise CheckpointError(f"{path}: a torch.export archive that torch.export.load cannot read "
                              f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}); "
                              f"re-export it with this PyTorch version ({torch.__version__})") from None
    chw, batch = _export_input_shape(ep)
    return ExportedNet(ep.module(), "export", static_batch=batch), chw
