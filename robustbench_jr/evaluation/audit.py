"""The audit: models × fooling-distance searches × test samples, into a resumable store.

Two ways in, one engine:

* :func:`audit` — a pixel-space ``nn.Module`` held in memory and tensors::

      result = robustbench_jr.audit(model, x, y, searches="all", seed=0)
      result.summary(); result.curve("cw")

* :func:`run_audit` — checkpoint specs (paths or bundled names) and a registry dataset,
  what ``jr-eval run`` calls; it writes ``RUN_DIR/results.sqlite`` and ``config.yaml``.

Both build an :class:`~.plan.AuditPlan` (:mod:`.plan`: models, samples, configured
searches, the run's identity) and run it with :func:`.execute.execute` (:mod:`.execute`:
clean accuracy, ‖J‖_F, noise accuracy, sanity checks, every search batch by batch into the
store, resuming finished batches). Progress and warnings are reported through an
``on_event`` callback (:class:`robustbench_jr.runtime.Event`); the library prints nothing.
Given the same samples (ids), seed and config, both give the same per-sample rows.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ..attacks import is_peer_name, peer_name
from ..attacks.base import eval_mode
from ..config import build_config, check_constraints, param
from ..data import get_dataset_info
from ..errors import ConfigError
from ..runtime import EventHandler, dist_context, resolve_device
from .execute import execute, open_store, run_scope, summarize_run
from .best import BEST, best_rows
from .jnorm import DEFAULT_PROJECTIONS, JACOBIAN_MODES
from .jnorm import describe as jnorm_describe
from .metrics import SAMPLES_NOTE, error_curve
from .output import budget_block, document, model_block, run_block, search_block
from .plan import (ALL_SEARCHES, BUDGETS, DataEntry, ModelEntry, batch_key, data_from_tensors, known_searches,
                   load_data, model_options, models_from_checkpoints, plan_audit, weights_sha256)
from .store import ResultStore

__all__ = ["ALL_SEARCHES", "AuditConfig", "AuditResult", "BUDGETS", "ModelResult", "audit", "batch_key",
           "json_document", "run_audit", "summarize_run"]

SUBSETS = ("first", "random")
SOURCES = ("auto", "bundled", "local")
#: σ grid of the noise-accuracy curve (Hoffman et al. Fig. 3a), pixel units in [0, 1]
DEFAULT_SIGMAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0)
#: the per-search override example of the docs and messages (YAML; a key of :class:`CWConfig`)
SEARCHES_EXAMPLE = "{cw: {max_iterations: 500}}"


@dataclass
class AuditConfig:
    """Everything that decides an audit's results (plus ``device``, which only places it).

    attacks: searches to run (``all`` = noise, fgsm, pgd, cw, deepfool, jsma, ddn; a peer
    library's attack as ``lib:Attack``, e.g. ``advlib:fmn``, see :mod:`..attacks.adapters`).
    budget: ``paper`` (the searches' defaults, the papers' protocols) or ``quick``
    (cheaper CW and JSMA, see ``BUDGETS``); ``searches`` overrides apply on top.
    n: number of test samples; subset: ``first`` n or a ``random`` n drawn with ``seed``.
    dataset: overrides the checkpoint card's dataset (a registered name, or the user's data as
    ``folder:PATH``, ``npz:PATH``, ``safetensors:PATH``); data_root: where to look for it;
    download: let torchvision download a missing registered dataset into ``data_root``.
    arch, arch_kwargs, num_classes, mean, std, input_size: how to build and wrap checkpoints that
    have no card (see :func:`robustbench_jr.models.load_checkpoint`); image_size, resize, crop:
    how an image folder is brought to the model's input (default: the model's own).
    source: ``auto`` (local files; for MNIST with n ≤ 1000 the bundled slice when the full
    test set is not found), ``bundled`` (the bundled MNIST slice) or ``local``.
    searches: per-search config overrides, e.g. ``{cw: {max_iterations: 500}}`` (the keys are
    the search's config fields, see :mod:`..attacks`); PGD's
    ``saturation`` defaults to the dataset's (32/255 MNIST-like, 16/255 CIFAR-like).
    noise_sigmas: σ grid for the accuracy under clipped N(0, σ²) noise.
    save_adversarials: also write the adversarial images as safetensors shards.
    jacobian: how mean ‖J‖_F is measured (:mod:`.jnorm`): ``exact``, ``estimate`` (random
    projections, ``jacobian_projections`` per sample, with a standard error), ``off``, or
    ``auto`` (exact where classes × input components ≤ 10⁶, else estimate).
    """

    attacks: list[str] = param(default_factory=lambda: list(ALL_SEARCHES), doc="searches to run")
    budget: str = param("paper", choices=tuple(BUDGETS), doc="search budget")
    n: int = param(100, ge=1, doc="number of test samples")
    subset: str = param("first", choices=SUBSETS, doc="the first n test samples or n random ones")
    batch_size: int = param(50, ge=1, doc="samples per batch")
    dataset: Optional[str] = None
    arch: Optional[str] = None  # architecture of bare .pt/.pth/.safetensors state dicts
    # the model options (for checkpoints without a card) and the image-folder options
    arch_kwargs: dict = param(default_factory=dict, doc="keyword arguments of a timm/torchvision/factory --arch")
    num_classes: Optional[int] = param(None, ge=1, doc="classes of bare weights (default: the architecture's)")
    mean: Optional[list[float]] = param(None, doc="per-channel mean the model subtracts (pixel space)")
    std: Optional[list[float]] = param(None, doc="per-channel std the model divides by")
    input_size: Optional[list[int]] = param(None, doc="C,H,W the model takes (default: its card or config)")
    image_size: Optional[int] = param(None, ge=1, doc="image folders: resize the shorter side and centre crop")
    resize: Optional[int] = param(None, ge=1, doc="image folders: resize the shorter side to this")
    crop: Optional[int] = param(None, ge=1, doc="image folders: centre crop of this size")
    data_root: Optional[str] = None
    download: bool = param(False, doc="let torchvision download a missing dataset into data_root")
    source: str = param("auto", choices=SOURCES, doc="where the test samples come from")
    device: str = "auto"
    seed: int = param(0, doc="seed of all random draws")
    searches: dict = field(default_factory=dict)
    noise_sigmas: list[float] = field(default_factory=lambda: list(DEFAULT_SIGMAS))
    save_adversarials: bool = False
    jacobian: str = param("auto", choices=JACOBIAN_MODES,
                          doc="mean ‖J‖_F: exact, estimate (random projections, with a standard error), off; "
                              "auto = exact where classes × input size is small")
    jacobian_projections: int = param(DEFAULT_PROJECTIONS, ge=1, doc="random projections per sample (estimate)")

    def validate(self) -> None:
        """Normalise the search list (``all`` expanded, names checked), the per-search
        overrides and the σ grid; ranges and choices are the fields' (``param``)."""
        valid = known_searches()
        attacks = self.attacks
        if isinstance(attacks, str):
            attacks = [a.strip() for a in attacks.split(",") if a.strip()]
        if not isinstance(attacks, (list, tuple)) or not all(isinstance(a, str) for a in attacks):
            raise ConfigError(f"attacks must be a list of search names; valid: all, {', '.join(valid)}")
        expanded: list[str] = []
        for a in attacks:
            # peer-library searches ``lib:Attack`` (attacks.adapters) keep their attack's spelling
            a = peer_name(a) if is_peer_name(a) else a.strip().lower()
            for name in (valid if a == "all" else [a]):
                if name not in valid and not is_peer_name(name):
                    raise ConfigError(f"unknown search {name!r}; valid searches: all, {', '.join(valid)}")
                if name not in expanded:
                    expanded.append(name)
        if not expanded:
            raise ConfigError(f"no search selected; valid searches: all, {', '.join(valid)}")
        self.attacks = expanded
        if self.searches is None:
            self.searches = {}
        if not isinstance(self.searches, dict):
            raise ConfigError(f"searches must map search names to config mappings, e.g. {SEARCHES_EXAMPLE}")
        for name, over in self.searches.items():
            if name not in valid and not is_peer_name(name):
                raise ConfigError(f"searches: unknown search {name!r}; valid searches: {', '.join(valid)}, "
                                  "or a peer library's attack as lib:Attack (foolbox:, advlib:, torchattacks:)")
            if over is not None and not isinstance(over, dict):
                raise ConfigError(f"searches.{name} must be a mapping of config keys, got {over!r}")
        self.searches = {(peer_name(k) if is_peer_name(k) else k): dict(v or {}) for k, v in self.searches.items()}
        sig = self.noise_sigmas
        if isinstance(sig, (int, float)):
            sig = [sig]
        try:
            sig = sorted({float(s) for s in sig})
        except (TypeError, ValueError):
            raise ConfigError(f"noise_sigmas must be a list of numbers, got {self.noise_sigmas!r}") from None
        if any(not math.isfinite(s) or s < 0 for s in sig):
            raise ConfigError(f"noise_sigmas must be finite and >= 0, got {sig}")
        self.noise_sigmas = sig


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

def json_document(summary: dict) -> dict:
    """The ``jr-eval run --json`` document (schema ``robustbench-jr/audit/v1``, see
    :mod:`.output` and docs/reports.md "Output schema") of a run summary (:func:`summarize_run`):
    the run block (run_dir, budget, seed, complete/incomplete) with per model the model block
    (:func:`.output.model_block`: N, clean accuracy, ‖J‖_F, noise accuracy, per search the search
    block with its numbers, N stored and expected, protocol and resolved config, and ``best``, the
    per-sample best known distance over the searches, the headline, with ``found_by``), then
    ``warnings`` and ``metrics_note``. Non-finite numbers are null (:data:`.output.NULL_MEANING`)."""
    models = []
    for m in summary["models"]:
        settings = m.get("search_settings") or {}
        coverage = m.get("coverage") or {}
        n_model = m.get("n")

        def expected(s: str) -> Optional[int]:
            cov = coverage.get(s)
            return cov[1] if cov is not None and cov[1] is not None else n_model

        searches = {s: search_block(s, v, config=(settings.get(s) or {}).get("config"),
                                    protocol=v.get("protocol") or (settings.get(s) or {}).get("protocol"),
                                    n_expected=expected(s))
                    for s, v in m["searches"].items()}
        b = m.get("best")
        best = None if b is None else search_block(
            BEST, b, config=None, protocol=b.get("protocol"), n_expected=n_model,
            complete=all(v["complete"] for v in searches.values()), over=b.get("over", list(searches)),
            found_by=b.get("found_by") or {})
        models.append(model_block(
            name=m["name"], checkpoint=m.get("checkpoint"), dataset=m.get("dataset"), n=n_model,
            clean_accuracy=m.get("clean_accuracy"), jacobian_norm=m.get("jacobian_norm"), jacobian=m.get("jacobian"),
            noise_accuracy=m.get("noise_accuracy") or [], searches=searches, best=best))
    incomplete = list(summary.get("incomplete") or [])
    body = run_block(run_dir=summary.get("run_dir"), budget=budget_block(summary.get("budget")),
                     seed=summary.get("seed"), complete=summary.get("complete", not incomplete),
                     incomplete=incomplete, models=models)
    body.update(warnings=summary.get("warnings", []), metrics_note=summary.get("metrics_note", SAMPLES_NOTE))
    return document("audit", body)


@dataclass
class ModelResult:
    """One audited model: clean accuracy, mean ‖J‖_F (pixel space; ``jacobian`` has both spaces,
    N and the method), noise accuracy, and per search the per-sample rows (arrays ordered by
    sample id: ``sample_id``, ``label``, ``clean_pred``, ``adv_pred``, ``fooled``, ``l2``,
    ``linf``, ``l0``, ``x_norm``, ``n_forward``, ``n_grad``) and their summary; ``rows["best"]``
    is the per-sample best known distance (with ``search``: which one found it)."""

    name: str
    checkpoint: Optional[str]
    dataset: Optional[str]
    clean_accuracy: Optional[float]
    jacobian_norm: Optional[float]
    noise_accuracy: list = field(default_factory=list)
    rows: dict = field(default_factory=dict)  # search -> column -> np.ndarray ("best" included)
    summaries: dict = field(default_factory=dict)  # search -> summary dict
    best: Optional[dict] = None  # summary of the per-sample best known distance (the headline)
    jacobian: Optional[dict] = None  # the ‖J‖_F measurement: method, N, both spaces, standard errors, card


@dataclass
class AuditResult:
    """What an audit found, read back from its store (in memory or ``run_dir``).

    ``summary()`` per search, ``distances(search)`` per sample, ``curve(search)`` the
    test-error-vs-L2 curve, ``to_json()`` the ``jr-eval run --json`` document. With more
    than one model, pass ``model=`` (default: the first).
    """

    models: list[ModelResult]
    run_dir: Optional[str]
    warnings: list = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary_dict: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_store(cls, store: ResultStore, models: Optional[Sequence[str]] = None,
                   searches: Optional[Sequence[str]] = None) -> "AuditResult":
        summ = summarize_run(store, models, searches)
        out = []
        for m in summ["models"]:
            rows = {s: store.results(m["name"], s) for s in m["searches"]}
            if m.get("best") is not None:
                rows[BEST] = best_rows(rows, list(m["searches"]))
            out.append(ModelResult(m["name"], m["checkpoint"], m["dataset"], m["clean_accuracy"],
                                   m["jacobian_norm"], m["noise_accuracy"], rows, m["searches"], m.get("best"),
                                   m.get("jacobian")))
        return cls(out, summ["run_dir"], summ["warnings"], store.meta().get("config", {}), summ)

    def model(self, name: Optional[str] = None) -> ModelResult:
        if name is None:
            return self.models[0]
        for m in self.models:
            if m.name == name:
                return m
        raise ConfigError(f"no model {name!r} in this audit; models: {', '.join(m.name for m in self.models)}")

    @property
    def searches(self) -> list[str]:
        return list(self.models[0].summaries) if self.models else []

    def _rows(self, search: str, model: Optional[str]) -> dict:
        m = self.model(model)
        if search not in m.rows:
            raise ConfigError(f"search {search!r} was not run; searches: {', '.join(m.rows)}")
        return m.rows[search]

    def summary(self, model: Optional[str] = None) -> dict:
        """``best`` (the headline: the per-sample best known distance over the searches, with
        ``found_by``) and per search: n, n_fooled, success_rate, not_fooled,
        already_misclassified, median_l2, mean_l2, rho_adv, rho_adv_attacked (see
        :mod:`.metrics` for which samples each averages) and ``protocol``, plus the model's
        clean_accuracy, jacobian_norm (pixel space) and ``jacobian`` (method, N, both spaces)."""
        m = self.model(model)
        return {"model": m.name, "clean_accuracy": m.clean_accuracy, "jacobian_norm": m.jacobian_norm,
                "jacobian": m.jacobian, "best": None if m.best is None else dict(m.best),
                "searches": {s: dict(v) for s, v in m.summaries.items()}}

    def distances(self, search: str, model: Optional[str] = None) -> np.ndarray:
        """Per-sample L2 fooling distances (0 = already misclassified, +inf = not fooled);
        ``search="best"``: the smallest over every search run."""
        return self._rows(search, model)["l2"]

    def curve(self, search: str, model: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
        """``(distances, test_error)``: the exact step curve of test error vs L2 distance
        (``search="best"``: of the best known distances, the headline curve)."""
        return error_curve(self.distances(search, model))

    def to_dict(self) -> dict:
        """The run summary (:func:`summarize_run`'s dict)."""
        return self.summary_dict

    def to_json(self, indent: Optional[int] = 2) -> str:
        """The ``jr-eval run --json`` document."""
        return json.dumps(json_document(self.summary_dict), indent=indent)

    def __str__(self) -> str:
        lines = []
        for m in self.models:
            acc = "–" if m.clean_accuracy is None else f"{m.clean_accuracy:.2%}"
            lines.append(f"{m.name}: clean acc {acc}, mean ‖J‖_F {jnorm_describe(m.jacobian, 'pixel')}"
                         + (f", {jnorm_describe(m.jacobian, 'normalized')}"
                            if m.jacobian and m.jacobian.get("normalized") is not None else ""))
            lines.append(f"  {'search':<10}{'n':>6}{'success':>9}{'median L2':>11}{'ρ̂_adv':>9}{'not fooled':>12}"
                         "  protocol")
            rows = list(m.summaries.items()) + ([(BEST, m.best)] if m.best is not None else [])
            for s, v in rows:
                lines.append(f"  {s:<10}{v['n']:>6}{v['success_rate']:>9.1%}{v['median_l2']:>11.4f}"
                             f"{v['rho_adv']:>9.4f}{v['not_fooled']:>12}  {v.get('protocol') or ''}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# the two entry points
# ---------------------------------------------------------------------------

def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return x.device


def audit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, searches: Any = "all", seed: int = 0,
          store: Optional[str | os.PathLike] = None, *, budget: str = "paper", batch_size: int = 50,
          sample_ids: Any = None, name: str = "model", dataset: Optional[str] = None,
          search_config: Optional[dict] = None, noise_sigmas: Optional[Sequence[float]] = None,
          device: Any = None, on_event: Optional[EventHandler] = None,
          search_factory: Optional[Callable] = None, jacobian: str = "auto") -> AuditResult:
    """Audit an in-memory pixel-space classifier on images ``x`` ([N, C, H, W] in [0, 1])
    with labels ``y`` ([N]).

    ``searches``: ``"all"``, a name or a list (noise, fgsm, pgd, cw, deepfool, jsma, ddn, or a
    peer library's ``lib:Attack``);
    ``seed``: every random draw derives from it and the sample ids (default 0..N-1);
    ``store``: a run directory to write (resumable, readable by ``jr-eval report/gate``),
    or None to keep the results in memory. ``budget`` (``paper``/``quick``) and
    ``search_config`` (``{name: {key: value}}``) configure the searches; ``dataset``
    (a registry name, e.g. ``mnist``) sets PGD's saturation box the way ``jr-eval`` does.
    ``jacobian``: how mean ‖J‖_F is measured (``auto``, ``exact``, ``estimate``, ``off``; see
    :mod:`.jnorm`). The model runs in eval mode (its own flags are restored afterwards), on
    its own device unless ``device`` is given. Returns an :class:`AuditResult`.
    """
    sat = None if dataset is None else get_dataset_info(dataset).pgd_saturation
    data = data_from_tensors(x, y, sample_ids, name=dataset or "tensors", pgd_saturation=sat)
    dev = resolve_device(device) if device is not None else _model_device(model, x)
    layer = {"attacks": searches, "budget": budget, "n": len(data.dataset), "batch_size": batch_size,
             "seed": seed, "searches": search_config or {}, "dataset": dataset, "device": str(dev),
             "jacobian": jacobian}
    if noise_sigmas is not None:
        layer["noise_sigmas"] = list(noise_sigmas)
    config = build_config(AuditConfig, layer, where="audit arguments")
    entry = ModelEntry(name, model, data.name, "<in-memory>", weights_sha256(model),
                       {"dataset": data.name, "source": "in-memory"})
    with eval_mode(model):
        plan = plan_audit(config, [entry], {data.name: data}, dev, search_factory)
        st = open_store(None if store is None else Path(store), plan)
        try:
            execute(plan, st, on_event, adversarials_dir=None)
            return AuditResult.from_store(st, [entry.name], config.attacks)
        finally:
            st.close()


def run_audit(checkpoints: Sequence[str], config: Optional[AuditConfig] = None,
              out_dir: Optional[str | os.PathLike] = None, on_event: Optional[EventHandler] = None,
              search_factory: Optional[Callable] = None) -> Optional[dict]:
    """Audit ``checkpoints`` (paths or bundled names; none = the bundled checkpoints).

    Writes ``out_dir/results.sqlite`` and ``out_dir/config.yaml`` (default out dir:
    ``runs/audit-<config hash>``, so rerunning the same command resumes) and returns
    the summary of :func:`summarize_run`. An ``out_dir`` holding a run that this one only
    adds searches or models to is extended (see :func:`.execute.open_store`); the summary
    is then the whole run's. ``search_factory(name, overrides)`` replaces
    :func:`robustbench_jr.attacks.build_search` (for tests and plug-ins).

    Under ``torchrun`` every rank calls this: the work is sharded by rank (see
    :func:`.execute.execute`), rank 0 returns the merged run's summary and the other
    ranks return None.
    """
    config = config if config is not None else AuditConfig()
    check_constraints(config, "audit config")
    config.validate()
    dist, device = dist_context(config.device)
    # everything that can fail on bad input happens before anything is written
    models = models_from_checkpoints(checkpoints, config.dataset, device, config.arch, model_options(config))
    data: dict[str, DataEntry] = {}
    for m in models:
        if m.dataset not in data:
            data[m.dataset] = load_data(m.dataset, config, m.model)
    plan = plan_audit(config, models, data, device, search_factory)
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"audit-{plan.config_hash[:8]}"
    store = open_store(out, plan) if dist.is_main else None
    dist.barrier()
    store = store or ResultStore(out)
    try:
        execute(plan, store, on_event, adversarials_dir=out / "adversarials" if config.save_adversarials else None,
                dist=dist)
        # the whole run: a run extended with searches or models shows the stored ones too
        return summarize_run(store, *run_scope(plan)) if dist.is_main else None
    finally:
        store.close()
