"""One interface for every input-gradient regularizer.

A regularizer is built by name with λ and its own options::

    reg = build_regularizer("jr", lam=0.01, n_proj=1)
    x.requires_grad_(True); logits = model(x)
    out = reg(model, x, y, logits, generator=g)
    loss = cross_entropy(logits, y) + out.loss

``out.loss`` is the λ-weighted term (with its graph, to back-propagate);
``out.value`` is the unweighted quantity, detached, for logging.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

from ..errors import ConfigError, unknown_name


@dataclass
class RegOutput:
    loss: torch.Tensor
    value: torch.Tensor


REGULARIZERS: dict[str, type["Regularizer"]] = {}


def register(cls):
    REGULARIZERS[cls.name] = cls
    return cls


class Regularizer:
    """Base class. Subclasses set ``name``, ``options`` (name -> default) and ``description``
    and implement :meth:`compute`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[dict] = {}
    #: the logits must come from an input with requires_grad
    needs_input_grad: ClassVar[bool] = True

    def __init__(self, lam: float = 0.0, **opts):
        if lam is None or not (float(lam) >= 0.0):
            raise ConfigError(f"regularizer {self.name!r}: λ must be ≥ 0, got {lam}")
        self.lam = float(lam)
        unknown = set(opts) - set(self.options)
        if unknown:
            raise ConfigError(
                f"regularizer {self.name!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(sorted(self.options)) or 'none'}"
            )
        self.opts = {**self.options, **{k: v for k, v in opts.items() if v is not None}}
        self.validate()

    def validate(self) -> None:
        space = self.opts.get("space")
        if space is not None and space not in ("pixel", "normalized"):
            raise ConfigError(f"regularizer {self.name!r}: space must be 'pixel' or 'normalized', got {space!r}")

    def input_scale(self, model) -> Optional[torch.Tensor]:
        """The factor turning pixel-space input gradients into the configured space."""
        if self.opts.get("space", "pixel") == "normalized":
            return getattr(model, "input_scale", None)
        return None

    def compute(self, model, x, y, logits, generator) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def weight(self, value: torch.Tensor) -> torch.Tensor:
        """λ times the value (subclasses may use λ/2, as Hoffman et al. do)."""
        return self.lam * value

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> RegOutput:
        value = self.compute(model, x, y, logits, generator)
        return RegOutput(loss=self.weight(value), value=value.detach())

    def describe(self) -> dict:
        return {"name": self.name, "lambda": self.lam, **self.opts}


def build_regularizer(name: str, lam: float = 0.0, **opts) -> Regularizer:
    if name not in REGULARIZERS:
        raise unknown_name("regularizer", name, REGULARIZERS)
    return REGULARIZERS[name](lam=lam, **opts)
