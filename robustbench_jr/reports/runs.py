"""Read stored audit runs for reports and the gate (never re-runs a search)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import InputError
from ..evaluation.best import BEST, best_rows
from ..evaluation.execute import jacobian_summary
from ..evaluation.output import card_n_inputs
from ..evaluation.plan import search_settings
from ..evaluation.store import ResultStore

#: display names of the searches of DESIGN.md (unknown names are shown as stored)
SEARCH_LABELS = {
    "noise": "white noise", "white_noise": "white noise", "whitenoise": "white noise",
    "fgsm": "FGSM", "pgd": "PGD", "cw": "CW L2", "cw_l2": "CW L2", "deepfool": "DeepFool", "jsma": "JSMA",
    BEST: "best known",
}
#: fixed colour per search so that every per-checkpoint figure reads the same way
SEARCH_COLORS = {
    "white noise": "#8c8c8c", "FGSM": "#e6a000", "PGD": "#d1495b", "CW L2": "#3b4cc0",
    "DeepFool": "#2a9d8f", "JSMA": "#8e44ad", "best known": "#111111",
}
#: searches listed in this order (weakest → strongest), others after them; the best known
#: distance (the per-sample minimum over the searches) last
SEARCH_ORDER = ["noise", "white_noise", "whitenoise", "fgsm", "pgd", "cw", "cw_l2", "deepfool", "jsma"]


def search_label(name: str) -> str:
    return SEARCH_LABELS.get(name.lower(), name)


def search_kind(name: str) -> str:
    """``fgsm``, ``jsma`` or ``other``: which extra accuracy-vs-ε curve a search has."""
    low = name.lower()
    if low.startswith("fgsm"):
        return "fgsm"
    if low.startswith("jsma"):
        return "jsma"
    return "other"


def order_searches(names) -> list[str]:
    def key(s):
        low = s.lower()
        if low == BEST:
            return (len(SEARCH_ORDER) + 1, s)
        return (SEARCH_ORDER.index(low) if low in SEARCH_ORDER else len(SEARCH_ORDER), s)
    return sorted(set(names), key=key)


@dataclass
class ModelData:
    """One checkpoint of one run: its card row, per-search arrays and noise accuracy."""

    run: "RunData"
    name: str
    checkpoint: str
    card: dict
    clean_accuracy: Optional[float]
    jacobian_norm: Optional[float]
    n: Optional[int]
    results: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # "best" included
    noise: list[tuple[float, float, int]] = field(default_factory=list)
    label: str = ""
    #: per search of the run's config: [rows stored, samples of the model] (see
    #: :meth:`~robustbench_jr.evaluation.store.ResultStore.completeness`)
    coverage: dict = field(default_factory=dict)
    #: the ‖J‖_F measurement (method, N, both spaces, standard errors) and the card's values
    jacobian: Optional[dict] = None
    #: per search: its resolved ``config`` and ``protocol`` (:func:`~robustbench_jr.evaluation.plan.search_settings`)
    settings: dict = field(default_factory=dict)
    #: the fingerprint of the test samples the model was audited on ("" when not recorded)
    data_fingerprint: str = ""

    @property
    def searches(self) -> list[str]:
        return list(self.results)

    @property
    def run_searches(self) -> list[str]:
        """The searches that ran (without the derived best known distance)."""
        return [s for s in self.results if s != BEST]

    @property
    def n_inputs(self) -> Optional[int]:
        """Number of input components (C·H·W) from the card, for JSMA's pixel fraction."""
        return card_n_inputs(self.card)

    def clean_correct(self) -> Optional[np.ndarray]:
        """Per-sample clean correctness from any stored search (they share the clean pass)."""
        for r in self.results.values():
            if len(r["label"]):
                return r["clean_pred"] == r["label"]
        return None

    def clean_acc(self) -> Optional[float]:
        """Stored clean accuracy, else the one implied by the per-sample rows."""
        if self.clean_accuracy is not None:
            return float(self.clean_accuracy)
        cc = self.clean_correct()
        return float(np.mean(cc)) if cc is not None and len(cc) else None

    def samples(self, search: str) -> tuple[int, Optional[int]]:
        """(samples stored, samples the audit has) for ``search``; a derived search (the best
        known distance) has the rows it was derived from."""
        if search in self.coverage:
            k, n = self.coverage[search]
            return int(k), n
        r = self.results.get(search)
        return (0 if r is None else len(r["sample_id"])), self.n

    def partial(self, search: str) -> bool:
        """Whether ``search``'s numbers cover fewer samples than the audit has (a derived search:
        whether any search it is derived from does)."""
        short = {s for s, (k, n) in self.coverage.items() if n is not None and k < n}
        return search in short if search in self.coverage else bool(short)

    def clean_n(self) -> Optional[int]:
        if self.n:
            return int(self.n)
        cc = self.clean_correct()
        return int(len(cc)) if cc is not None else None


@dataclass
class RunData:
    run_dir: Path
    name: str
    meta: dict
    models: list[ModelData]
    #: why the run is not finished (empty when it is): reports mark it, the gate refuses it
    incomplete: list[str] = field(default_factory=list)


def load_run(run_dir: str | Path, name: Optional[str] = None) -> RunData:
    """Everything a report needs from ``RUN_DIR/results.sqlite``, read-only."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise InputError(f"{run_dir}: run directory does not exist; pass the --out DIR of a `jr-eval run`")
    with ResultStore(run_dir, readonly=True) as store:
        meta = store.meta()
        run = RunData(run_dir=run_dir, name=name or run_dir.resolve().name, meta=meta, models=[])
        settings = search_settings(meta)
        fingerprints = {m.get("name"): m.get("data", "") for m in (meta.get("identity") or {}).get("models") or []}
        for row in store.models():
            md = ModelData(run=run, name=row["model"], checkpoint=row["checkpoint"], card=row["card"] or {},
                           clean_accuracy=row["clean_accuracy"], jacobian_norm=row["jacobian_norm"], n=row["n"],
                           jacobian=jacobian_summary(row), settings=settings.get(row["model"], {}),
                           data_fingerprint=fingerprints.get(row["model"]) or "")
            names = order_searches(s for s in store.searches(row["model"]) if s != BEST)
            for s in names:
                md.results[s] = store.results(row["model"], s)
            if md.results:
                md.results[BEST] = best_rows(md.results, names)
            md.noise = [(float(s), float(a), int(k)) for s, a, k in store.noise_accuracy(row["model"])]
            run.models.append(md)
        done = store.completeness()
        run.incomplete = done["reasons"]
        for md in run.models:
            md.coverage = done["coverage"].get(md.name, {})
    if not run.models:
        raise InputError(f"{run_dir}: the run has no models stored yet; has `jr-eval run` finished a batch?")
    return run


def load_runs(run_dirs, names: Optional[list[str]] = None) -> list[RunData]:
    """Load several runs and give every checkpoint a unique display label.

    Run names are the directory names, made unique with their parents when two are
    equal, unless ``names`` gives one (unique) name per run — e.g. the run names of an
    experiment table, whose audits all live in directories called ``audit``. With given
    names, a run's only checkpoint is shown under its run's name (a table run that reuses
    another run's checkpoint is then labelled as the table calls it, not after the
    checkpoint's directory). Otherwise a checkpoint keeps its model name when that is
    unique across the runs and is shown as ``RUN/MODEL`` when not.
    """
    dirs = [Path(d) for d in run_dirs]
    if not dirs:
        raise InputError("no RUN_DIR given; pass one or more run directories written by `jr-eval run --out DIR`")
    given = names is not None
    if given:
        names = [str(n) for n in names]
        if len(names) != len(dirs) or len(set(names)) != len(names) or not all(names):
            raise InputError(f"run names must be {len(dirs)} distinct non-empty names, one per run directory; "
                             f"got {names!r}")
    else:
        base = [d.resolve().name for d in dirs]
        names = ["/".join(d.resolve().parts[-2:]) if base.count(b) > 1 else b for d, b in zip(dirs, base)]
        for i in range(len(names)):
            if names.count(names[i]) > 1:
                names[i] = f"{names[i]}#{i + 1}"
    runs = [load_run(d, n) for d, n in zip(dirs, names)]
    all_names = [m.name for r in runs for m in r.models]
    for r in runs:
        for m in r.models:
            if given:
                m.label = r.name if len(r.models) == 1 else f"{r.name}/{m.name}"
            else:
                m.label = m.name if all_names.count(m.name) == 1 else f"{r.name}/{m.name}"
    return runs


def all_models(runs: list[RunData]) -> list[ModelData]:
    return [m for r in runs for m in r.models]
