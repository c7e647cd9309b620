"""Attacks from peer libraries as searches: ``foolbox:L2DeepFoolAttack``, ``advlib:ddn``,
``torchattacks:FAB``.

A search named ``LIB:ATTACK`` runs attack ATTACK of library LIB on the samples the
model classifies correctly and hands its output to the shared base (:class:`.base.Search`),
which re-verifies every adversarial with a fresh forward pass and computes the distances,
exactly as for our own searches. The search's config is the attack's keyword arguments
(``searches: {"advlib:ddn": {steps: 300}}`` in the audit's YAML); unknown keywords are an
error that lists the attack's valid ones. The resolved config (what identifies the run)
is the attack's keyword defaults that are plain values (numbers, strings, booleans,
None), the L2 defaults below, and the given keywords.

Libraries (optional dependencies; a missing one is a :class:`ConfigError` naming the
extra to install):

* ``foolbox`` (foolbox 3): any minimisation attack of ``foolbox.attacks``
  (``L2DeepFoolAttack``, ``DDNAttack``, ``L2CarliniWagnerAttack``, ``L2FMNAttack``, …), run
  as ``attack.run(PyTorchModel(model, bounds=(0, 1)), x, Misclassification(y))``.
  Keywords go to the attack's constructor, or to ``run`` for the ones only it takes.
  Fixed-ε attacks give no fooling distance and are refused.
* ``advlib`` (adv-lib): any function of ``adv_lib.attacks`` (``ddn``, ``fmn``, ``alma``,
  ``fab``, ``df``, ``carlini_wagner_l2``, …), called as ``f(model, x, y, **keywords)``.
  A ``norm`` keyword the function requires defaults to 2. adv-lib imports visdom for its
  optional live-plot callback only; where visdom is not installed (it does not build on
  current Pythons, hence adv-lib's ``--no-deps`` install), a stand-in module that
  refuses to plot is registered as ``visdom`` before adv-lib is imported.
* ``torchattacks``: any attack class of ``torchattacks``, called as
  ``Attack(model, **keywords)(x, y)``. A ``norm`` keyword defaults to ``"L2"``; FAB's
  ``eps`` (the largest perturbation it may return) defaults to +inf, so that it returns
  its closest point; an ``n_classes`` keyword not given is the model's number of classes.

The audit is untargeted: a ``targeted`` keyword is refused.

Counting and failures. The model is wrapped in :class:`PassCounter`, which counts the
rows of every forward pass and, through a gradient hook on its output, of every
backward pass through it. Peer attacks do not say which row belongs to which sample, so
a batch's counts are split evenly over its samples (exact for attacks that always
evaluate the whole batch, such as adv-lib's DDN, FMN and ALMA). One more forward pass
per sample screens the returned points before the base's verification: a point equal to
the clean image (adv-lib's and torchattacks' answer for a failure), an all-zero image
(foolbox CW's), a non-finite one, or one the model still classifies correctly counts as
not fooled (+inf). Parameter gradients a peer accumulates on the model are restored.

Randomness: peers draw from torch's global generator; it is seeded with
``derive_seed(seed, name, sample ids)`` inside ``torch.random.fork_rng`` (the caller's
global state is left as it was), so the same batch with the same seed gives the same
result. Unlike our searches, a peer attack's result may depend on the batch it runs in
(several decide on batch statistics), so compare peers with the same batch size.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import types
from typing import Any, Callable, Mapping, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..runtime import derive_seed
from .base import Found, Search

__all__ = ["PEER_LIBRARIES", "PassCounter", "PeerSearch", "is_peer_name", "peer_name"]

#: library prefix -> (import name, pip extra, install hint)
PEER_LIBRARIES: dict[str, tuple[str, str, str]] = {
    "foolbox": ("foolbox", "foolbox", "pip install 'robustbench-jr[foolbox]'"),
    "advlib": ("adv_lib", "advlib", "pip install 'robustbench-jr[advlib]' && pip install --no-deps adv-lib==0.2.8"),
    "torchattacks": ("torchattacks", "torchattacks", "pip install 'robustbench-jr[torchattacks]'"),
}
#: keywords that would change what the search means (the audit is untargeted)
_REFUSED = {"targeted": "the audit looks for untargeted fooling points",
            "callback": "live plotting is not supported"}
_PLAIN = (bool, int, float, str, type(None))


def is_peer_name(name: Any) -> bool:
    """Whether ``name`` has the form ``LIB:ATTACK`` of a peer-library search."""
    return isinstance(name, str) and ":" in name


# ---------------------------------------------------------------------------------------
# libraries
# ---------------------------------------------------------------------------------------
def _visdom_stand_in() -> None:
    """adv-lib imports visdom for its optional plotting callback; register a module that
    refuses to plot where visdom is not installed."""
    if "visdom" in sys.modules or importlib.util.find_spec("visdom") is not None:
        return
    mod = types.ModuleType("visdom")
    mod.__doc__ = "robustbench-jr stand-in: visdom is not installed (adv-lib needs it only for plotting)"

    class Visdom:  # noqa: D401 - mimics the real class name
        def __init__(self, *args, **kwargs):
            raise ConfigError("visdom is not installed: adv-lib's live plotting (callback) is unavailable")

    mod.Visdom = Visdom
    sys.modules["visdom"] = mod


def _import(lib: str):
    module, extra, hint = PEER_LIBRARIES[lib]
    if lib == "advlib":
        _visdom_stand_in()
        module = "adv_lib.attacks"
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"search '{lib}:…' needs the {PEER_LIBRARIES[lib][0]} library, which is not "
                          f"installed ({exc}); install the '{extra}' extra: {hint}") from None


def _version(lib: str) -> str:
    from importlib import metadata

    dist = {"foolbox": "foolbox", "advlib": "adv-lib", "torchattacks": "torchattacks"}[lib]
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def _attacks_of(lib: str, mod) -> dict[str, Any]:
    """The attacks library ``lib`` offers, by name."""
    out = {}
    if lib == "foolbox":
        from foolbox.attacks.base import MinimizationAttack

        for n in dir(mod.attacks):
            obj = getattr(mod.attacks, n)
            if inspect.isclass(obj) and issubclass(obj, MinimizationAttack) and obj is not MinimizationAttack:
                out[n] = obj
    elif lib == "advlib":
        for n in dir(mod):
            obj = getattr(mod, n)
            if not n.startswith("_") and inspect.isfunction(obj):
                out[n] = obj
    else:
        base = mod.attack.Attack
        for n in dir(mod):
            obj = getattr(mod, n)
            if inspect.isclass(obj) and issubclass(obj, base) and obj is not base:
                out[n] = obj
    return out


def _fixed_eps_foolbox(mod, name: str) -> bool:
    obj = getattr(mod.attacks, name, None)
    from foolbox.attacks.base import FixedEpsilonAttack

    return inspect.isclass(obj) and issubclass(obj, FixedEpsilonAttack)


def peer_name(name: str) -> str:
    """The canonical ``lib:Attack`` spelling of a peer search name (library prefix in
    lower case, the attack as the library spells it, matched case-insensitively).

    Raises :class:`ConfigError` for an unknown library, a library that is not installed
    (naming the extra) or an unknown attack (listing the library's attacks)."""
    lib, _, attack = name.strip().partition(":")
    lib = lib.strip().lower().replace("-", "").replace("_", "")
    attack = attack.strip()
    if lib not in PEER_LIBRARIES:
        raise ConfigError(f"unknown attack library {name.split(':')[0]!r} in search {name!r}; "
                          f"valid: {', '.join(PEER_LIBRARIES)} (e.g. foolbox:L2DeepFoolAttack, advlib:ddn, "
                          "torchattacks:FAB)")
    mod = _import(lib)
    attacks = _attacks_of(lib, mod)
    match = [a for a in attacks if a.lower() == attack.lower()]
    if not match:
        if lib == "foolbox" and attack and _fixed_eps_foolbox(mod, attack):
            raise ConfigError(f"foolbox:{attack} is a fixed-ε attack and gives no fooling distance; "
                              f"use a minimisation attack: {', '.join(sorted(attacks))}")
        raise ConfigError(f"unknown {lib} attack {attack!r}; valid: {', '.join(sorted(attacks))}")
    return f"{lib}:{match[0]}"


# ---------------------------------------------------------------------------------------
# counting
# ---------------------------------------------------------------------------------------
class PassCounter(nn.Module):
    """Wraps a model; counts the rows of its forward passes and of the backward passes
    through its output (a gradient hook on the logits fires once per backward pass)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_rows = 0
        self.backward_rows = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        rows = int(x.shape[0])
        self.forward_rows += rows
        if out.requires_grad:
            def hook(grad: torch.Tensor, rows: int = rows) -> None:
                self.backward_rows += rows

            out.register_hook(hook)
        return out


def _plain_defaults(fn: Callable, skip: set) -> dict:
    out = {}
    for p in inspect.signature(fn).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is not p.empty and isinstance(p.default, _PLAIN):
            out[p.name] = p.default
    return out


def _keywords(fn: Callable, skip: set) -> dict[str, inspect.Parameter]:
    return {p.name: p for p in inspect.signature(fn).parameters.values()
            if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


# ---------------------------------------------------------------------------------------
# the search
# ---------------------------------------------------------------------------------------
class PeerSearch(Search):
    """A peer library's attack behind the :class:`.base.Search` contract (see the module docstring)."""

    name = "peer"
    Config = dict
    uses_gradients = True

    def __init__(self, name: str, config: Optional[Mapping[str, Any]] = None, **overrides: Any):
        self.name = peer_name(name)
        self.library, _, self.attack = self.name.partition(":")
        if config is not None and not isinstance(config, Mapping):
            raise ConfigError(f"config for search {self.name!r} must be a mapping of the attack's keyword "
                              f"arguments, got {type(config).__name__}")
        given = {**dict(config or {}), **overrides}
        # ``precision`` belongs to the base (Search.run computes in that dtype), not to the attack
        self.precision = given.pop("precision", None)
        if self.precision not in (None, "float32", "float64"):
            raise ConfigError(f"{self.name} search config: precision must be float32 or float64 (or null: the "
                              f"input's dtype), got {self.precision!r}")
        mod = _import(self.library)
        self._obj = _attacks_of(self.library, mod)[self.attack]
        self._init_keys, self._run_keys, defaults = self._signature()
        valid = sorted(set(self._init_keys) | set(self._run_keys))
        for key in given:
            if key in _REFUSED:
                raise ConfigError(f"{self.name} search config: {key!r} is not allowed ({_REFUSED[key]})")
            if key not in valid:
                raise ConfigError(f"{self.name} search config: unknown key {key!r}; valid keys: "
                                  f"{', '.join(k for k in valid if k not in _REFUSED) or '(none)'}")
        for key, p in {**self._init_keys, **self._run_keys}.items():
            if p.default is p.empty and key not in given and key not in defaults:
                raise ConfigError(f"{self.name} search config: the attack needs {key!r}")
        self.config = {**defaults, **given}
        self._given_n_classes = "n_classes" in given

    def _signature(self):
        """(constructor / call keywords, run-only keywords, resolved defaults)."""
        lib, obj = self.library, self._obj
        if lib == "foolbox":
            init = _keywords(obj.__init__, {"self"})
            run = {k: p for k, p in _keywords(obj.run, {"self", "model", "inputs", "criterion"}).items()
                   if k not in init}
            defaults = {**_plain_defaults(obj.run, {"self", "model", "inputs", "criterion", "early_stop"}),
                        **_plain_defaults(obj.__init__, {"self"})}
            run.pop("early_stop", None)
        elif lib == "advlib":
            init = _keywords(obj, {"model", "inputs", "labels"})
            run = {}
            defaults = _plain_defaults(obj, {"model", "inputs", "labels"})
            if "norm" in init and init["norm"].default is inspect.Parameter.empty:
                defaults["norm"] = 2
        else:
            init = _keywords(obj.__init__, {"self", "model"})
            run = {}
            defaults = _plain_defaults(obj.__init__, {"self", "model"})
            if "norm" in init:
                defaults["norm"] = "L2"
            if self.attack == "FAB":
                defaults["eps"] = math.inf
            defaults.pop("n_classes", None)  # the model's number of classes unless given
        for k in _REFUSED:
            defaults.pop(k, None)
        return init, run, defaults

    def __repr__(self) -> str:
        return f"PeerSearch({self.name!r}, {self.config!r})"

    # -- running ------------------------------------------------------------------------
    def _call(self, counter: PassCounter, x: torch.Tensor, y: torch.Tensor, n_classes: int) -> torch.Tensor:
        lib, cfg = self.library, dict(self.config)
        if lib == "foolbox":
            import foolbox as fb

            init = {k: v for k, v in cfg.items() if k in self._init_keys}
            run = {k: v for k, v in cfg.items() if k in self._run_keys}
            fmodel = fb.PyTorchModel(counter, bounds=(0, 1), device=x.device)
            return self._obj(**init).run(fmodel, x, fb.criteria.Misclassification(y), **run)
        if lib == "advlib":
            return self._obj(counter, x, y, **cfg)
        if "n_classes" in self._init_keys and not self._given_n_classes:
            cfg["n_classes"] = n_classes
        attack = self._obj(counter, **cfg)
        return attack(x, y)

    def _search(self, model, x, y, ids, seed):
        b = x.shape[0]
        dev = x.device
        counter = PassCounter(model).eval()
        n_classes = 0
        if "n_classes" in self._init_keys and not self._given_n_classes:
            with torch.no_grad():  # counted: one row of this batch
                n_classes = int(counter(x[:1]).shape[1])
        params = list(model.parameters())
        grads = [p.grad for p in params]  # stashed: a peer's backward passes accumulate into fresh ones
        for p in params:
            p.grad = None
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(derive_seed(seed, self.name, [int(i) for i in ids.tolist()]))
                adv = self._call(counter, x, y, n_classes)
        finally:
            for p, g in zip(params, grads):
                p.grad = g
        if isinstance(adv, (tuple, list)):  # e.g. attacks that also return targets
            adv = adv[0]
        if not isinstance(adv, torch.Tensor) or tuple(adv.shape) != tuple(x.shape):
            shape = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
            raise RuntimeError(f"{self.name} returned {shape} for inputs of shape {tuple(x.shape)}")
        adv = adv.detach().to(device=dev, dtype=x.dtype)
        flat, clean = adv.flatten(1), x.flatten(1)
        candidate = (torch.isfinite(flat).all(1) & (flat != clean).any(1)
                     & ~((flat == 0).all(1) & (clean != 0).any(1)))
        found = torch.zeros(b, dtype=torch.bool, device=dev)
        screen = candidate.nonzero().squeeze(1)
        if screen.numel():
            with torch.no_grad():
                pred = model(adv[screen].clamp(0, 1)).argmax(1)
            found[screen] = pred != y[screen]
        # the batch's passes split evenly over its samples (peers do not say which row is whose)
        n_forward = torch.full((b,), _share(counter.forward_rows, b), dtype=torch.int64, device=dev)
        n_forward += candidate.to(torch.int64)
        n_grad = torch.full((b,), _share(counter.backward_rows, b), dtype=torch.int64, device=dev)
        return Found(adv, found, n_forward, n_grad)


def _share(rows: int, b: int) -> int:
    """A batch's pass count per sample (rounded half up)."""
    return int(math.floor(rows / b + 0.5)) if b else 0
