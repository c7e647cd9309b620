"""One interface for every input-gradient regularizer.

A regularizer is built by name with λ and its own options::

    reg = build_regularizer("jr", lam=0.01, n_proj=1)
    x.requires_grad_(True); logits = model(x)
    out = reg(model, x, y, logits, generator=g)
    loss = cross_entropy(logits, y) + out.loss

``out.loss`` is the λ-weighted term (with its graph, to back-propagate);
``out.value`` is the unweighted quantity, detached, for logging.

A training step calls ``logits, out = reg.penalized_forward(model, x, y, generator=g)``
instead: the regularizer runs the forward pass itself, the cheapest way it knows (``jr``'s
forward-mode estimator needs no input gradient at all), and says in ``out.input_grad``
whether the graph reaches an input leaf, so that the step back-propagates into the
parameters only (:func:`robustbench_jr.training.step_loss`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch

from ..config import Spec, check_value
from ..errors import ConfigError, InputError, unknown_name
from .core import JACOBIAN_METHODS


@dataclass
class RegOutput:
    loss: torch.Tensor
    value: torch.Tensor
    #: the graph of ``loss`` goes through an input leaf with requires_grad (the penalty
    #: differentiates an input gradient); nothing needs that leaf's own gradient
    input_grad: bool = False


REGULARIZERS: dict[str, type["Regularizer"]] = {}


def register(cls):
    REGULARIZERS[cls.name] = cls
    return cls


class Regularizer:
    """Base class. Subclasses set ``name``, ``options`` (name -> default) and ``description``
    and implement :meth:`compute`.

    Every option value must have its default's type (an int option takes no bool, a
    bool one only true/false) and fit its :class:`~robustbench_jr.config.Spec` in
    ``option_specs`` — declared once here for the options several regularizers share;
    a subclass adds its own as ``option_specs = {**Regularizer.option_specs, ...}``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    options: ClassVar[dict] = {}
    option_specs: ClassVar[dict[str, Spec]] = {
        "n_proj": Spec(ge=1),
        "space": Spec(choices=("pixel", "normalized")),
        "method": Spec(choices=JACOBIAN_METHODS),
    }
    #: the logits must come from an input with requires_grad
    needs_input_grad: ClassVar[bool] = True

    def __init__(self, lam: float = 0.0, **opts):
        where = f"regularizer {self.name!r}"
        check_value("λ", lam, float, Spec(ge=0), where)
        self.lam = float(lam)
        unknown = set(opts) - set(self.options)
        if unknown:
            raise ConfigError(
                f"regularizer {self.name!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                f"valid: {', '.join(sorted(self.options)) or 'none'}"
            )
        self.opts = {**self.options, **{k: v for k, v in opts.items() if v is not None}}
        for key, value in self.opts.items():
            default = self.options[key]
            check_value(key, value, Any if default is None else type(default), self.option_specs.get(key), where)
        self.validate()

    def validate(self) -> None:
        """Checks across options (none by default; each option's own range is in ``option_specs``)."""

    def input_scale(self, model) -> Optional[torch.Tensor]:
        """The factor turning pixel-space input gradients into the configured space.

        ``space='normalized'`` needs a model with ``input_scale`` (a PixelSpaceModel,
        possibly wrapped in DDP); anything else is an error rather than a silent
        pixel-space number.
        """
        if self.opts.get("space", "pixel") != "normalized":
            return None
        for m in (model, getattr(model, "module", None)):
            scale = getattr(m, "input_scale", None) if m is not None else None
            if scale is not None:
                return scale
        raise ConfigError(
            f"regularizer {self.name!r}: space='normalized' needs a model with an input_scale "
            f"(wrap the network in robustbench_jr.models.PixelSpaceModel), or use space='pixel'")

    def per_sample(self, model, x, y, logits, generator) -> torch.Tensor:  # pragma: no cover
        """The unweighted per-sample quantity, a [B] tensor (with graph)."""
        raise NotImplementedError

    def compute(self, model, x, y, logits, generator) -> torch.Tensor:
        """The unweighted batch quantity (default: the mean of :meth:`per_sample`)."""
        return self.per_sample(model, x, y, logits, generator).mean()

    def weight(self, value: torch.Tensor) -> torch.Tensor:
        """λ times the value (subclasses may use λ/2, as Hoffman et al. do)."""
        return self.lam * value

    def __call__(self, model, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 generator: Optional[torch.Generator] = None) -> RegOutput:
        if self.needs_input_grad:
            if not x.requires_grad:
                raise InputError(f"regularizer {self.name!r} needs the logits of an input with requires_grad: "
                                 f"call x.requires_grad_(True) before logits = model(x)")
            if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
                raise InputError(f"regularizer {self.name!r}: logits must have shape [B, C] with B = x.shape[0] "
                                 f"= {x.shape[0]}, got {tuple(logits.shape)}")
        value = self.compute(model, x, y, logits, generator)
        return RegOutput(loss=self.weight(value), value=value.detach())

    def penalized_forward(self, model, x: torch.Tensor, y: torch.Tensor,
                          generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, RegOutput]:
        """The logits ``model(x)`` and the penalty, from one forward pass: what a training step needs.

        ``x`` is taken detached. Here (the default) a regularizer that needs the input gradient
        gets a leaf copy of ``x`` with requires_grad, one forward pass and :meth:`__call__`, and the
        output is marked ``input_grad=True``; others get a plain forward. Subclasses with a cheaper
        route override it.
        """
        x = x.detach()
        if self.needs_input_grad:
            x = x.requires_grad_(True)
        logits = model(x)
        out = self(model, x, y, logits, generator)
        out.input_grad = self.needs_input_grad
        return logits, out

    def describe(self) -> dict:
        return {"name": self.name, "lambda": self.lam, **self.opts}


def build_regularizer(name: str, lam: float = 0.0, **opts) -> Regularizer:
    if name not in REGULARIZERS:
        raise unknown_name("regularizer", name, REGULARIZERS)
    return REGULARIZERS[name](lam=lam, **opts)
