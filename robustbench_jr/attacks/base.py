"""Shared base of the fooling-distance searches.

A *search* looks, for every sample of a batch, for a misclassified image close to
the clean one (in the [0, 1] pixel space the model takes) and reports per sample:
the L2 / Linf / L0 distance, the adversarial image, whether it fooled, its predicted
class and the forward / gradient passes spent. The base class owns everything that
is the same for all six searches:

* input validation (shape [B, C, H, W], floating point, finite, within [0, 1]);
* eval mode for the duration of :meth:`Search.run` (each module's own flag is
  restored afterwards);
* samples the model already gets wrong: distance 0, the clean image as adversarial,
  no search effort (one forward pass, the clean classification);
* the final re-check: every adversarial a search claims is classified again by a
  fresh eval-mode forward pass (:func:`verify_adversarials`); a claim that does not
  hold becomes a failure (``+inf``, NaN image) and a warning is issued;
* distances, computed in float64 on the final clipped adversarial.

Conventions: failures are ``+inf`` with a NaN-filled adversarial and
``adv_pred == -1``, never a clean or zero image. ``n_forward`` counts the clean
classification, every forward pass of the search and the verification pass;
``n_grad`` counts vector–Jacobian products (backward passes) of the search.

Randomness and batch independence: searches that draw random numbers (``noise``)
use one ``torch.Generator`` per sample, seeded with
``runtime.derive_seed(seed, search name, sample_id)`` (see :func:`sample_generators`),
so a sample gets the same draws whichever batch carries it, at whichever position.
Pass ``sample_ids`` (stable ids, e.g. the dataset's) to :meth:`Search.run` for that
guarantee; without them the position in the batch is used as id. Every search works
only on the samples that are still
active, so the model sees (and spends compute on) only those.

Precision and batch size: the searches never couple samples (per-sample masks, no
batch sums), but a float32 model does: its kernels pick reductions by the number of
rows they get (on x86 CPUs a ``Linear`` with 1–3 rows sums in another order than with
4 or more, ~1e-6 apart in the logits), and a batch's last active samples always run
with few rows. Discrete decisions (CW's aborts and binary-search flags, PGD's sign
steps) amplify that: CW distances of one sample differed by up to 5 % between batch
sizes 1 and 64. ``precision: float64`` (every search; a key of its config mapping)
runs the search, its clean pass and the re-check in float64 (the model's floating-point
parameters and buffers are converted for the call and put back exactly afterwards;
the adversarial is returned in float64): per-sample distances then agree across batch
sizes to ~1e-14 (tests/test_batch_independence.py; the cost is in benchmarks/README.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Mapping, Optional

import torch
from torch import nn

from ..config import build_config, to_dict
from ..errors import ConfigError, InputError
from ..runtime import generator

__all__ = [
    "PRECISIONS", "Found", "Search", "SearchResult", "Tally", "eval_mode", "margin_to_label", "model_dtype",
    "sample_generators", "verify_adversarials",
]


@dataclass
class SearchResult:
    """Per-sample outcome of one search over a batch of ``B`` samples.

    ``l2``/``linf``/``l0`` are float64 [B]: 0 where the clean image is already
    misclassified, ``+inf`` where the search did not fool the model. ``l0`` counts
    changed input components (one per pixel-channel). ``adversarial`` is
    [B, C, H, W] in [0, 1] (the clean image where the distance is 0, NaN where not
    fooled). ``adv_pred`` is the class predicted for the adversarial (-1 where not
    fooled). ``clean_pred`` (extra) is the class predicted for the clean image.
    """

    l2: torch.Tensor
    linf: torch.Tensor
    l0: torch.Tensor
    adversarial: torch.Tensor
    fooled: torch.Tensor
    adv_pred: torch.Tensor
    n_forward: torch.Tensor
    n_grad: torch.Tensor
    clean_pred: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return int(self.l2.shape[0])

    def select(self, index) -> "SearchResult":
        """The rows ``index`` (anything that indexes a tensor's first dimension)."""
        return SearchResult(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name)[index])
                               for f in dataclasses.fields(self)})

    @staticmethod
    def concat(results: "list[SearchResult]") -> "SearchResult":
        """Concatenate the results of several batches, in order."""
        if not results:
            raise ValueError("concat needs at least one SearchResult")
        out = {}
        for f in dataclasses.fields(SearchResult):
            vals = [getattr(r, f.name) for r in results]
            out[f.name] = None if any(v is None for v in vals) else torch.cat(vals)
        return SearchResult(**out)


@dataclass
class Found:
    """What a search's ``_search`` hands back to the base for its ``b`` samples.

    ``adversarial`` [b, C, H, W] (anything where ``found`` is False), ``found`` [b]
    bool, ``n_forward``/``n_grad`` [b] int64 (effort of the search proper).
    """

    adversarial: torch.Tensor
    found: torch.Tensor
    n_forward: torch.Tensor
    n_grad: torch.Tensor


class Tally:
    """Per-sample counters of forward and gradient passes for ``n`` samples."""

    def __init__(self, n: int, device: torch.device):
        self.forward = torch.zeros(n, dtype=torch.int64, device=device)
        self.grad = torch.zeros(n, dtype=torch.int64, device=device)

    def add_forward(self, idx: torch.Tensor, k: int = 1) -> None:
        self.forward[idx] += k

    def add_grad(self, idx: torch.Tensor, k: int = 1) -> None:
        self.grad[idx] += k


#: ``precision`` of a search: compute in the input's dtype (None) or in this one
PRECISIONS = {"float32": torch.float32, "float64": torch.float64}


@contextlib.contextmanager
def model_dtype(model: nn.Module, dtype: torch.dtype) -> Iterator[nn.Module]:
    """Compute with ``model`` in ``dtype``: its floating-point parameters and buffers are
    converted for the duration and their original tensors put back afterwards (exactly,
    the same Parameter objects: an optimiser holding them is not disturbed)."""
    saved = []
    try:
        for t in itertools.chain(model.parameters(), model.buffers()):
            if t.is_floating_point() and t.dtype != dtype:
                saved.append((t, t.data))
                t.data = t.data.to(dtype)
    except RuntimeError as exc:
        for t, data in saved:
            t.data = data
        raise InputError(f"precision {str(dtype).replace('torch.', '')}: the model's parameters cannot be "
                         f"converted ({exc}); use the default precision for this model") from None
    try:
        yield model
    finally:
        for t, data in saved:
            t.data = data


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module of ``model`` in eval mode; restore each module's flag after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


def sample_generators(seed: int, sample_ids: torch.Tensor, salt: str,
                      device: torch.device) -> list[torch.Generator]:
    """One generator per sample on ``device``, seeded with ``derive_seed(seed, salt, id)``."""
    return [generator(int(seed), salt, int(sid), device=device) for sid in sample_ids.tolist()]


def margin_to_label(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Z_y − max_{k≠y} Z_k per row (negative once the label is no longer on top)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
    return true - other


def _check_inputs(x: Any, y: Any, sample_ids: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if not isinstance(x, torch.Tensor):
        raise InputError(f"images must be a torch.Tensor of shape [B, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        hint = " (add the batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise InputError(f"images must have shape [B, C, H, W] (4 dimensions), got shape {tuple(x.shape)}{hint}")
    if not x.is_floating_point():
        raise InputError(f"images must be floating point pixels in [0, 1], got dtype {x.dtype}; "
                         "convert 8-bit images with x.float() / 255")
    x = x.detach()
    if x.numel():
        finite = torch.isfinite(x)
        if not bool(finite.all()):
            bad = int((~finite.flatten(1)).any(1).sum())
            raise InputError(f"images contain NaN or infinite values ({bad} of {x.shape[0]} images); "
                             "fix the data or drop those images")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(f"pixel values must lie in [0, 1] (got min {lo:.4g}, max {hi:.4g}); pass "
                             "unnormalised pixels (e.g. uint8 / 255): the model wrapper does the normalisation")
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(y)
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"labels must have shape [B] = [{x.shape[0]}], got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise InputError(f"labels must be integer class indices, got dtype {y.dtype}")
    y = y.to(device=x.device, dtype=torch.int64)
    if sample_ids is None:
        ids = torch.arange(x.shape[0], dtype=torch.int64)
    else:
        ids = torch.as_tensor(sample_ids)
        if ids.dim() != 1 or ids.shape[0] != x.shape[0] or ids.is_floating_point():
            raise InputError(f"sample_ids must be an integer tensor of shape [B] = [{x.shape[0]}], "
                             f"got shape {tuple(ids.shape)} and dtype {ids.dtype}")
        ids = ids.to(torch.int64).cpu()
    return x, y, ids


def _check_logits(logits: torch.Tensor, batch: int, y: torch.Tensor) -> None:
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise InputError(f"the model must return logits of shape [B, classes] = [{batch}, K], "
                         f"got shape {tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise InputError(f"the model must return at least 2 class logits, got {logits.shape[1]}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise InputError(f"labels must lie in [0, {logits.shape[1] - 1}] for a model with "
                         f"{logits.shape[1]} classes, got min {int(y.min())}, max {int(y.max())}")
    if not bool(torch.isfinite(logits).all()):
        raise InputError("the model returned NaN or infinite logits on the clean images")


def _warn_softmax(logits: torch.Tensor) -> None:
    if logits.shape[0] and bool((logits >= 0).all()) and bool(
            torch.allclose(logits.sum(1), torch.ones_like(logits[:, 0]), atol=1e-4)):
        warnings.warn("the model's outputs look like probabilities (non-negative, rows sum to 1); the "
                      "searches expect logits — gradient-based searches (CW, DeepFool) can underestimate "
                      "robustness on softmax outputs", RuntimeWarning, stacklevel=3)


def _verify(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor,
            claimed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(fooled, predicted class or -1, which rows got a forward pass)."""
    claimed = torch.as_tensor(claimed, dtype=torch.bool, device=x.device)
    flat = adv.flatten(1)
    valid = claimed & torch.isfinite(flat).all(1) & (flat >= 0).all(1) & (flat <= 1).all(1)
    fooled = torch.zeros_like(claimed)
    pred = torch.full((x.shape[0],), -1, dtype=torch.int64, device=x.device)
    idx = valid.nonzero().squeeze(1)
    if idx.numel():
        with eval_mode(model), torch.no_grad():
            p = model(adv[idx]).argmax(1)
        fooled[idx] = p != y[idx]
        pred[idx] = p
    return fooled, torch.where(fooled, pred, torch.full_like(pred, -1)), valid


def verify_adversarials(model: nn.Module, x: torch.Tensor, y: torch.Tensor, adv: torch.Tensor,
                        claimed_fooled: torch.Tensor) -> torch.Tensor:
    """Re-check claimed adversarials with a fresh eval-mode forward pass.

    Returns a [B] bool tensor: True where ``claimed_fooled`` is True, ``adv`` is finite
    and within [0, 1], and the model (in eval mode, without gradients) predicts a
    class other than ``y``. Rows not claimed are not evaluated and are False. ``x``
    fixes the batch size and device.
    """
    return _verify(model, x, torch.as_tensor(y, device=x.device), adv, claimed_fooled)[0]


class Search:
    """Base of the fooling-distance searches (a minimisation search per sample).

    Subclasses set ``name``, a ``Config`` dataclass with the paper defaults (an
    optional ``validate()`` raises :class:`ConfigError`), and implement
    ``_search(model, x, y, ids, seed) -> Found`` for samples the model currently
    classifies correctly. ``config`` may be a ``Config`` instance, a mapping or None;
    keyword ``overrides`` win over it. Unknown keys raise :class:`ConfigError`.
    """

    name: ClassVar[str] = "search"
    Config: ClassVar[type] = type(None)
    #: whether the search needs gradients of the model (for the sanity warnings)
    uses_gradients: ClassVar[bool] = True

    def __init__(self, config: Any = None, **overrides: Any):
        if dataclasses.is_dataclass(config) and not isinstance(config, type):
            if not isinstance(config, self.Config):
                raise ConfigError(f"config for search {self.name!r} must be a {self.Config.__name__}, "
                                  f"got {type(config).__name__}")
            base = dataclasses.asdict(config)
        elif config is None or isinstance(config, Mapping):
            base = dict(config or {})
        else:
            raise ConfigError(f"config for search {self.name!r} must be a mapping or "
                              f"{self.Config.__name__}, got {type(config).__name__}")
        # ``precision`` is the base's, every search has it (module docstring)
        precision = overrides.pop("precision", base.pop("precision", None))
        if precision is not None and precision not in PRECISIONS:
            raise ConfigError(f"{self.name} search config: precision must be one of {', '.join(PRECISIONS)} "
                              f"(or null: the input's dtype), got {precision!r}")
        self.precision: Optional[str] = precision
        self.config = build_config(self.Config, base, overrides, where=f"{self.name} search config")

    def config_dict(self) -> dict:
        """The resolved configuration as a plain, YAML-safe dict (with ``precision`` when set)."""
        out = to_dict(self.config)
        if self.precision is not None:
            out["precision"] = self.precision
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r})"

    # -- the one public entry point ---------------------------------------------------------
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
            seed: int = 0, sample_ids: Optional[torch.Tensor] = None) -> SearchResult:
        """Search every sample of ``x`` ([B, C, H, W] pixels in [0, 1]) with labels ``y``.

        ``seed`` (an integer, e.g. the run's seed) seeds the random draws;
        ``sample_ids`` ([B] integers, stable across batches) make per-sample randomness
        independent of batch size and composition (see the module docstring).
        """
        x, y, ids = _check_inputs(x, y, sample_ids)
        dtype = PRECISIONS.get(self.precision)
        if dtype is not None and x.dtype != dtype:
            with model_dtype(model, dtype):
                return self.run(model, x.to(dtype), y, seed, ids)
        n = x.shape[0]
        dev = x.device
        with eval_mode(model):
            with torch.no_grad():
                logits = model(x)
            _check_logits(logits, n, y)
            _warn_softmax(logits)
            clean_pred = logits.argmax(1)
            clean_wrong = clean_pred != y
            n_forward = torch.ones(n, dtype=torch.int64, device=dev)
            n_grad = torch.zeros(n, dtype=torch.int64, device=dev)
            adv = torch.full_like(x, float("nan"))
            claimed = torch.zeros(n, dtype=torch.bool, device=dev)
            todo = (~clean_wrong).nonzero().squeeze(1)
            if todo.numel():
                found = self._search(model, x[todo], y[todo], ids[todo.cpu()], seed)
                ok = found.found.to(dev)
                cand = torch.where(ok.view(-1, 1, 1, 1), found.adversarial.to(x.dtype).clamp(0, 1),
                                   torch.full_like(x[todo], float("nan")))
                adv[todo] = cand
                claimed[todo] = ok
                n_forward[todo] += found.n_forward.to(dev)
                n_grad[todo] += found.n_grad.to(dev)
            fooled, adv_pred, checked = _verify(model, x, y, adv, claimed)
            n_forward += checked.to(torch.int64)
        rejected = int((claimed & ~fooled).sum())
        if rejected:
            warnings.warn(f"{self.name}: {rejected} claimed adversarial(s) did not fool the model on a fresh "
                          "forward pass and are reported as not fooled (+inf); a randomised or "
                          "non-deterministic model, or a search bug, can cause this", RuntimeWarning,
                          stacklevel=2)
        adv[~fooled] = float("nan")
        # clean-misclassified samples: distance 0, the clean image itself
        adv[clean_wrong] = x[clean_wrong]
        fooled = fooled | clean_wrong
        adv_pred = torch.where(clean_wrong, clean_pred, adv_pred)
        delta = (adv.double() - x.double()).flatten(1)
        inf = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        safe = torch.where(fooled[:, None], delta, torch.zeros_like(delta))
        l2 = torch.where(fooled, safe.norm(dim=1), inf)
        linf = torch.where(fooled, safe.abs().amax(1) if delta.shape[1] else torch.zeros_like(inf), inf)
        l0 = torch.where(fooled, (safe != 0).sum(1).double(), inf)
        return SearchResult(l2=l2, linf=linf, l0=l0, adversarial=adv, fooled=fooled, adv_pred=adv_pred,
                            n_forward=n_forward, n_grad=n_grad, clean_pred=clean_pred)

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                seed: int) -> Found:  # pragma: no cover - abstract
        raise NotImplementedError


def input_gradient(model: nn.Module, x: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, ∂ loss_fn(logits).sum() / ∂x) with one forward and one backward pass."""
    with torch.enable_grad():
        xin = x.detach().requires_grad_(True)
        logits = model(xin)
        (g,) = torch.autograd.grad(loss_fn(logits).sum(), xin)
    return logits.detach(), g


def bisect_fooling(lo: torch.Tensor, hi: torch.Tensor, adv: torch.Tensor, evaluate, rtol: float,
                   max_rounds: Optional[int] = None, allowed=None) -> None:
    """Per-sample bisection of a fooling magnitude, in place.

    ``hi`` (finite where a fooling magnitude is known) fools, ``lo`` does not; each round
    evaluates the midpoint of every bracket still wider than ``rtol · hi`` (and, if given,
    where ``allowed()`` is True) with ``evaluate(idx, m) -> (candidates, fooled)``, and
    narrows it; the fooling candidates go to ``adv``. Stops after ``max_rounds`` rounds.
    """
    rounds = 0
    while max_rounds is None or rounds < max_rounds:
        act = torch.isfinite(hi) & (hi - lo > rtol * hi)
        if allowed is not None:
            act &= allowed()
        idx = act.nonzero().squeeze(1)
        if not idx.numel():
            break
        mid = 0.5 * (lo[idx] + hi[idx])
        cand, fooled = evaluate(idx, mid)
        f_idx = idx[fooled]
        hi[f_idx] = mid[fooled]
        adv[f_idx] = cand[fooled]
        lo[idx[~fooled]] = mid[~fooled]
        rounds += 1


def warn_zero_gradients(name: str, count: int) -> None:
    """Warn that ``count`` samples have an all-zero input gradient (auto-attack style check)."""
    if count:
        warnings.warn(f"{name}: the input gradient is exactly zero for {count} sample(s); the search cannot "
                      "move them (gradient masking or saturated outputs?) and reports them as not fooled",
                      RuntimeWarning, stacklevel=3)
