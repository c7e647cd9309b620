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
import itertools
import json
import os
import platform
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

from ._version import __version__
from .errors import ConfigError

__all__ = ["Dist", "Event", "EventHandler", "SINGLE", "derive_seed", "dist_context", "emit", "env_rank", "generator",
           "hardware", "now", "resolve_device", "versions"]


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


# ---------------------------------------------------------------------------
# torchrun / torch.distributed
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """Where this process stands in a ``torchrun`` job (world size 1 without torchrun).

    ``owns(i)`` says whether work item ``i`` is this rank's in a fixed round-robin (for
    items of equal cost, e.g. the batches of the clean pass and ‖J‖_F); ``queue()`` hands
    work items out to whichever rank asks first (for items of unequal cost); ``all_reduce_sum`` sums a tensor over ranks
    (a no-op for one process); ``barrier`` waits for every rank.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, item: int) -> bool:
        return item % self.world_size == self.rank

    def queue(self) -> Callable[[], int]:
        """A work queue shared by the ranks: each call returns the next unclaimed index 0, 1,
        2, … (every index goes to exactly one rank, whichever asks first), so a rank that
        finishes its items early takes more and none waits long for another however unequal
        the items' costs. It counts through the process group's key-value store (one atomic
        ``add`` per claim). One process: 0, 1, 2, … in order. Every rank must create its
        queues in the same order (the n-th queue of each rank is the same queue)."""
        n = next(_QUEUES)
        if not self.enabled:
            counter = iter(range(1 << 62))
            return lambda: next(counter)
        store = torch.distributed.distributed_c10d._get_default_store()
        key = f"robustbench_jr/queue/{n}"
        return lambda: store.add(key, 1) - 1

    def all_reduce_sum(self, t: torch.Tensor, device: Any = None) -> torch.Tensor:
        if not self.enabled:
            return t
        buf = t.to(device if device is not None and self.backend == "nccl" else "cpu").clone()
        torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
        return buf.to(t.device)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def describe(self) -> str:
        return f"rank {self.rank} of {self.world_size}" if self.enabled else "single process"


SINGLE = Dist()
#: numbers the work queues this process creates (see :meth:`Dist.queue`)
_QUEUES = itertools.count()


def dist_context(device: Any = "auto") -> tuple[Dist, torch.device]:
    """The process's :class:`Dist` and device. Under ``torchrun`` (``WORLD_SIZE`` > 1) this
    joins the process group — NCCL with CUDA device ``LOCAL_RANK`` when GPUs are present and
    ``device`` allows them, gloo on CPU otherwise; without torchrun it is :data:`SINGLE` and
    :func:`resolve_device` (``device``)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE, resolve_device(device)
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank, world, local, backend), dev


def env_rank() -> Optional[int]:
    """This process's rank under torchrun (None without it), for naming it in messages."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return int(os.environ.get("RANK", "0")) if world > 1 else None
