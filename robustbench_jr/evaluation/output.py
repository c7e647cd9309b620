"""The output contract: one versioned JSON schema for every JSON document robustbench-jr writes.

Three documents, one schema file (:data:`SCHEMA_FILE`, package data, JSON Schema draft 2020-12):

* ``robustbench-jr/audit/v1``: ``jr-eval run --json`` and ``AuditResult.to_json()``
  (:func:`robustbench_jr.evaluation.audit.json_document`);
* ``robustbench-jr/report/v1``: the report's ``summary.json`` (``jr-eval report --json``,
  :func:`robustbench_jr.reports.tables.to_json`);
* ``robustbench-jr/gate/v1``: the gate's verdict (``jr-eval gate --json/--json-out``,
  :meth:`robustbench_jr.reports.gate.evaluator.GateResult.to_json`).

Every document starts with ``schema`` (its kind and version) and ``schema_version``. The pieces
they share are defined once in the schema (``$defs``: ``run``, ``model``, ``search``, ``budget``)
and built here, once, for the three writers: :func:`run_block`, :func:`model_block`,
:func:`search_block` (its numbers from :func:`search_numbers`) and :func:`budget_block`.

Numbers that are not finite (:data:`NULL_MEANING`): JSON has no NaN and no infinity, and these
documents never contain the bare tokens ``NaN``/``Infinity``; such a value is written as ``null``
(:func:`encode`; :func:`dumps` refuses anything else).

Version rule: ``schema_version`` is bumped (and a new schema file added next to the old one) on a
breaking change: a field removed, renamed, retyped or given another meaning. Adding a field is not
breaking; readers ignore fields they do not know.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import PurePath
from typing import Any, Iterable, Mapping, Optional

import numpy as np
import torch

from .._version import __version__
from ..errors import InputError
from . import metrics
from .plan import BUDGETS

__all__ = ["KINDS", "NULL_MEANING", "SCHEMA_FILE", "SCHEMA_ID", "SCHEMA_VERSION", "budget_block", "card_n_inputs",
           "document", "dumps", "encode", "load_schema", "model_block", "run_block", "schema_name",
           "search_block", "search_numbers"]

SCHEMA_VERSION = 1
SCHEMA_FILE = f"schema/robustbench-jr-output.v{SCHEMA_VERSION}.schema.json"  # inside robustbench_jr.evaluation
SCHEMA_ID = f"urn:robustbench-jr:output:v{SCHEMA_VERSION}"
KINDS = ("audit", "report", "gate")
NULL_MEANING = ("A number field holds a finite number or null. null means the quantity has no finite value: "
                "not measured (e.g. ‖J‖_F with --jacobian off, a store without that number), undefined (NaN: "
                "an average over no samples, e.g. ρ̂_adv when nothing was fooled; n_rho = 0 says so) or "
                "infinite (a fooling distance of a sample not fooled within the budget is +∞; not_fooled "
                "counts those samples). The tokens NaN and Infinity are never written.")

#: the numbers of every search block, in this order (the registry's summary, then n_rho)
SEARCH_NUMBERS = tuple(metrics.SUMMARY_KEYS) + ("n_rho",)
#: JSMA's extra numbers (its L0 over the fooled samples, and as fractions of the input components)
L0_NUMBERS = ("median_l0", "mean_l0", "median_l0_frac", "mean_l0_frac")


def schema_name(kind: str) -> str:
    """``robustbench-jr/<kind>/v1``: the ``schema`` field of a document of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown document kind {kind!r}; kinds: {', '.join(KINDS)}")
    return f"robustbench-jr/{kind}/v{SCHEMA_VERSION}"


def load_schema() -> dict:
    """The JSON Schema (draft 2020-12) of the three documents, from the package data."""
    return json.loads(resources.files(__package__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


# ------------------------------------------------------------- encoding ----
def encode(obj: Any, infinity: Optional[str] = None) -> Any:
    """``obj`` as strict JSON data: NaN and ±inf → None (:data:`NULL_MEANING`), numpy scalars and
    arrays → Python numbers and lists, tuples → lists, paths → strings, mapping keys → strings.
    ``infinity="inf"`` writes ±inf as the strings ``"inf"``/``"-inf"`` instead (the experiments'
    ``table.json``, which :mod:`robustbench_jr.experiments.verify` reads back; not one of the
    schema's documents)."""
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, Mapping):
        return {str(k): encode(v, infinity) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return [encode(v, infinity) for v in obj.tolist()]
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [encode(v, infinity) for v in obj]
    if isinstance(obj, (np.generic, torch.Tensor)) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        if infinity is not None and math.isinf(obj):
            return infinity if obj > 0 else "-" + infinity
        return None
    return obj


def document(kind: str, body: Mapping) -> dict:
    """The document of ``kind`` (``audit``, ``report``, ``gate``): ``schema``, ``schema_version``,
    ``tool`` and then ``body``, encoded (:func:`encode`)."""
    head = {"schema": schema_name(kind), "schema_version": SCHEMA_VERSION,
            "tool": {"name": "robustbench-jr", "version": __version__}}
    return encode({**head, **{k: v for k, v in body.items() if k not in head}})


def dumps(doc: Mapping, indent: Optional[int] = 2) -> str:
    """``doc`` as JSON text; never writes NaN/Infinity (they are null, see :func:`encode`)."""
    return json.dumps(encode(doc), indent=indent, ensure_ascii=False, allow_nan=False)


# --------------------------------------------------------------- blocks ----
def card_n_inputs(card: Any) -> Optional[int]:
    """Number of input components (C·H·W) from a checkpoint card's ``input_shape`` (None when unknown)."""
    shape = card.get("input_shape") if isinstance(card, dict) else None
    if not shape:
        return None
    try:
        return int(np.prod([int(s) for s in shape]))
    except (TypeError, ValueError):
        return None


def search_numbers(rows: Mapping, n_inputs: Optional[int] = None, l0: bool = False) -> dict:
    """The numbers of one model × search from its per-sample rows (``l2``, ``x_norm``, ``fooled``,
    and ``l0`` for ``l0=True``): :data:`SEARCH_NUMBERS` from the metric registry and, with ``l0``
    (JSMA), ``median_l0, mean_l0`` over the fooled samples (and their fractions of the
    ``n_inputs`` input components when that is known). Inconsistent rows are an :class:`InputError`."""
    try:
        out = metrics.summarize(rows["l2"], rows["x_norm"], rows["fooled"])
    except ValueError as exc:
        raise InputError(f"stored results are inconsistent: {exc}") from None
    names = ["n_rho"]
    if l0:
        names += ["median_l0", "mean_l0"] + (["median_l0_frac", "mean_l0_frac"] if n_inputs else [])
    out.update(metrics.values(metrics.Samples.of(rows, n_inputs), names))
    return out


def search_block(name: str, numbers: Mapping, *, config: Optional[Mapping], protocol: Optional[str],
                 n_expected: Optional[int], complete: Optional[bool] = None, over: Optional[Iterable[str]] = None,
                 found_by: Optional[Mapping] = None) -> dict:
    """The ``search`` block (schema ``$defs/search``) of one model × search.

    ``numbers``: :func:`search_numbers` (or at least :data:`SEARCH_NUMBERS`); ``n`` in it is the
    number of samples stored for this search, ``n_expected`` the number the audit has (None when
    unknown), so a search that covers fewer samples (an unfinished run) says so (``complete``:
    false; default: ``n >= n_expected``). ``config``: the resolved config its numbers used (None
    for a derived search such as ``best`` or a store that recorded none), ``protocol``: ``paper``
    or its departures (:func:`.plan.protocol`). ``over``/``found_by``: the best known distance's
    searches and how many samples each one holds it for."""
    block: dict = {"search": name}
    block.update({k: numbers.get(k) for k in SEARCH_NUMBERS})
    block.update({k: numbers[k] for k in L0_NUMBERS if k in numbers})
    n = block["n"]
    block["n_expected"] = None if n_expected is None else int(n_expected)
    if complete is None:
        complete = n_expected is None or (n is not None and n >= n_expected)
    block["complete"] = bool(complete)
    block["protocol"] = protocol
    block["config"] = None if config is None else dict(config)
    if over is not None:
        block["over"] = list(over)
    if found_by is not None:
        block["found_by"] = {str(k): int(v) for k, v in found_by.items()}
    return block


def model_block(*, name: str, checkpoint: Optional[str], dataset: Optional[str], n: Optional[int],
                clean_accuracy: Optional[float], jacobian_norm: Optional[float], jacobian: Optional[Mapping],
                noise_accuracy: Iterable[Mapping], searches: Mapping[str, dict], best: Optional[dict],
                **extra: Any) -> dict:
    """The ``model`` block (schema ``$defs/model``) of one audited model: ``n`` samples, clean
    accuracy, mean ‖J‖_F (pixel space; ``jacobian``: method, N, both spaces, standard errors, the
    card's values), accuracy under noise, the :func:`search_block` of every search by name and
    ``best`` (the per-sample best known distance over them, the headline; None without rows).
    ``extra`` (e.g. ``label``, ``run``, ``architecture``) is added after these fields."""
    return {"name": name, "checkpoint": None if checkpoint is None else str(checkpoint), "dataset": dataset,
            "n": None if n is None else int(n), "clean_accuracy": clean_accuracy, "jacobian_norm": jacobian_norm,
            "jacobian": None if jacobian is None else dict(jacobian),
            "noise_accuracy": [{"sigma": p["sigma"], "accuracy": p["accuracy"], "n": p.get("n")}
                               for p in noise_accuracy],
            "searches": dict(searches), "best": best, **extra}


def budget_block(name: Optional[str]) -> dict:
    """The ``budget`` block: the run's search budget (``paper``, ``quick``; None when the store
    did not record one) and what it overrides of the papers' defaults in this version of
    robustbench-jr. Each search block's ``config`` is the resolved config its numbers used."""
    return {"name": name, "overrides": None if name not in BUDGETS else {k: dict(v) for k, v in BUDGETS[name].items()}}


def run_block(*, run_dir: Optional[str], budget: Mapping, complete: bool, incomplete: Iterable[str],
              models: Iterable[dict], seed: Optional[int] = None, **extra: Any) -> dict:
    """The ``run`` block (schema ``$defs/run``): one stored audit, its budget and seed, whether it is
    finished (``incomplete``: why not) and its :func:`model_block` s. ``extra`` (e.g. ``name``,
    ``role``, ``meta``) is added after these fields."""
    return {"run_dir": None if run_dir is None else str(run_dir), "budget": dict(budget), "seed": seed,
            "complete": bool(complete), "incomplete": list(incomplete), "models": list(models), **extra}
