"""Runtime: device resolution, the one seed derivation, provenance, progress events.

Everything in the library that picks a device, derives a random seed or records what
ran a computation goes through this module, so that the audit, the searches, training,
the gate's bootstrap and the experiment tables agree:

* :func:`resolve_device` — ``auto`` is CUDA when present, else CPU.
* :func:`derive_seed` — the one seed scheme: a 63-bit integer from a sha256 of the
  parts, stable across runs, processes, machines and Python versions.
* :func:`versions`, :func:`hardware`, :func:`now` — provenance written with results.
* :class:`Event` and :data:`EventHandler` — how long-running library calls report
  progress and warnings without importing a UI (the CLI renders them with rich).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from ._version import __version__
from .errors import ConfigError

__all__ = ["Event", "EventHandler", "derive_seed", "emit", "generator", "hardware", "now", "resolve_device",
           "versions"]


def resolve_device(spec: Any = "auto") -> torch.device:
    """``auto`` (or None) picks CUDA when present; ``cuda`` without a GPU is a :class:`ConfigError`."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    spec = str(spec or "auto").lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device cuda was requested but no CUDA device is available; use --device cpu or auto")
    try:
        return torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"invalid device {spec!r}; use auto, cpu, cuda or cuda:N") from None


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from ``parts`` (ints, strings, …; JSON-encoded, sha256, big-endian).

    The project's one seed scheme: the audit's sample subsets, the searches' per-sample
    draws, the noise-accuracy draws, training's shuffles and regularizer draws and the
    gate's bootstrap all derive their seeds with it from the run's seed.
    """
    h = hashlib.sha256(json.dumps(parts, default=str).encode()).digest()
    return int.from_bytes(h[:8], "big") & ((1 << 63) - 1)


def generator(*parts: Any, device: Any = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``derive_seed(*parts)``."""
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(*parts))
    return g


def versions() -> dict:
    """Versions of the packages that produce the numbers."""
    return {"robustbench_jr": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` where available)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: Any = None) -> dict:
    """Where a computation ran: the device, its name, CPU threads, torch/python, platform."""
    dev = resolve_device(device) if device is not None else None
    name = (torch.cuda.get_device_name(dev) if dev is not None and dev.type == "cuda" else cpu_name())
    return {"device": str(dev) if dev is not None else None, "name": name, "cpu": cpu_name(),
            "cpu_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "platform": platform.platform()}


def now() -> str:
    """The current UTC time, ISO 8601, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


@dataclass
class Event:
    """One progress or warning report from a long-running library call.

    ``kind`` is one of

    * ``"task"`` — a unit of work starts: ``name`` (e.g. ``audit``, ``batches``),
      ``total`` (units, or None), ``description``;
    * ``"advance"`` — ``name`` advanced by ``amount`` (``description`` may change);
    * ``"done"`` — ``name`` finished;
    * ``"warning"`` — ``message`` (``data`` holds ``model`` and ``check``);
    * ``"info"`` — ``message`` worth showing once (e.g. which data were used);
    * ``"log"`` — ``data`` holds a record (e.g. training metrics at a step).
    """

    kind: str
    name: str = ""
    total: Optional[float] = None
    amount: float = 0.0
    description: str = ""
    message: str = ""
    data: dict = field(default_factory=dict)


#: a callable that receives :class:`Event` s (the CLI's renders them with rich)
EventHandler = Callable[[Event], None]


def emit(handler: Optional[EventHandler], kind: str, **kwargs: Any) -> None:
    """Send an :class:`Event` to ``handler`` (nothing when it is None)."""
    if handler is not None:
        handler(Event(kind, **kwargs))
