"""Experiment tables: ``experiments/<table>/table.yaml`` plus one training YAML per run.

A table directory holds

* one YAML per trained run: a training config with :class:`~robustbench_jr.training.TrainConfig`
  keys only (what ``jr-train fit --config`` reads; for a run with ``finetune_from``,
  what ``jr-train finetune PARENT --config`` reads: the keys override the post-processing
  defaults of ``jr-train finetune``);
* ``table.yaml``, which says which runs make the table (in order), how each run is
  obtained (trained from its YAML, fine-tuned from another run, or ``use``-d from another
  table), what is evaluated per run (the card's accuracy and ‖J‖_F always; optionally the
  accuracy on a domain-shift data set and an audit), the columns of the table, the paper's
  numbers per run and column, and the acceptance checks.

``table.yaml`` keys (unknown keys are an error listing the valid ones)::

    title: str                      # heading of table.md
    paper: str                      # what is reproduced (paper, table/figure)
    description: str                # optional, shown under the heading
    paper_steps: int | str          # default steps of the paper's runs ("not stated" allowed)
    audit: {AuditConfig keys}       # default audit of the runs that ask for one (audit: true)
    report: bool                    # write results/<table>/report/ from the audits (default: true if any)
    figures: [training_curves]      # extra figures (held-out accuracy and ‖J‖_F vs step)
    columns:                        # the table's columns, in order
      - key: acc                    # used by `paper:` and the checks
        label: "Test accuracy (%)"
        metric: test_accuracy       # see METRICS_HELP
        scale: 100                  # value shown = metric × scale (paper units)
        digits: 2
    runs:
      - name: none                  # results/<table>/<name>/
        label: "No regularization"
        config: none.yaml           # default: <name>.yaml (omit for `use`)
        finetune_from: base         # or other-table/run: post-process that run's checkpoint
        use: other-table/run        # no training here: that table's run (evaluated here)
        paper: {acc: 98.9, jnorm: 32.9}
        paper_steps: 150000
        domain_shift: digits        # accuracy on that data set's test split
        audit: true | false | {AuditConfig keys}   # merged over the table's `audit`
        note: str
    pivot:                          # optional second view: one column spread over a grid
      column: acc
      rows: [..labels..]            # runs carry `row:` and `col:` labels
      cols: [..labels..]
    checks:                         # evaluated on the shown values (metric × scale)
      - name: str
        acceptance: true            # false: a paper claim, reported but not an acceptance criterion
        note: str
        kind: ratio                 # column, numerator: run, denominator: run, min and/or max
        kind: paper                 # column, tolerance [, relative: true] [, runs]: |ours − paper| ≤ tolerance
                                    #   (relative: |ours/paper − 1| ≤ tolerance) for every run with a paper number
        kind: order                 # column + runs: strictly increasing along the runs, or
                                    # run + columns: strictly increasing along the columns [, direction: decreasing]
        kind: compare               # column, higher: [runs], lower: [runs]: min(higher) > max(lower)
        kind: spread                # column, runs, max_abs and/or max_rel: max − min (relative to the mean)

    Each check is translated into a rule of the robustness gate over the table's cells
    (``COLUMN[RUN]``) and decided by the gate's evaluator; see :mod:`.checks`. A check is
    PASS, FAIL, or PENDING while a value it needs is missing (FAIL when the numbers it has
    already decide it).

Column metrics: the card's (:data:`CARD_METRICS`), ``domain_shift_accuracy``, and the
audit's, read from the metric registry (:mod:`robustbench_jr.evaluation.metrics`):
``audit.NAME`` / ``audit.NAME@ARG`` for a per-model metric (``audit.clean_accuracy``,
``audit.noise_accuracy@0.5``) and ``audit.SEARCH.NAME`` for a per-sample metric without
arguments (``audit.deepfool.rho_adv``, ``audit.pgd.d50``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import build_config, read_yaml
from ..data import get_dataset_info
from ..errors import ConfigError
from ..evaluation import metrics
from ..evaluation.audit import AuditConfig
from .checks import Check, attach_rule, check_columns, check_keys, check_runs, finite_number, name_list, parse_check

TABLE_FILE = "table.yaml"

TABLE_KEYS = ("title", "paper", "description", "paper_steps", "audit", "report", "figures", "columns", "runs",
              "pivot", "checks")
RUN_KEYS = ("name", "label", "config", "finetune_from", "use", "paper", "paper_steps", "domain_shift", "audit",
            "note", "row", "col")
COLUMN_KEYS = ("key", "label", "metric", "scale", "digits")
PIVOT_KEYS = ("column", "rows", "cols")
FIGURES = ("training_curves",)
#: metrics read from the training card
CARD_METRICS = {
    "test_accuracy": "test accuracy (fraction) from card.yaml metrics.test_accuracy",
    "jacobian_norm": "mean exact ‖J‖_F over the test set, pixel space [0, 1] (card metrics.jacobian_norm)",
    "jacobian_norm_normalized_input": "mean exact ‖J‖_F w.r.t. the normalised input (card; Hoffman's space)",
    "wall_time_s": "training wall time in seconds (card training.wall_time_s)",
    "steps": "training steps done (card training.steps_done)",
}
EVAL_METRICS = {
    "domain_shift_accuracy": "accuracy on the run's domain_shift data set (its test split)",
}
#: per-search audit metrics listed in a run's numbers (table.json) by default; a column may
#: name any per-sample registry metric without arguments
AUDIT_KEYS = metrics.SUMMARY_KEYS + ("d50",)


def _audit_metric_names() -> tuple[list[str], list[str]]:
    """Registry metrics a column can read: per-model (``audit.NAME[@ARG]``), per-search (``audit.S.NAME``)."""
    model = [n for n, m in metrics.METRICS.items() if m.level == "model" and len(m.params) <= 1]
    search = [n for n, m in metrics.METRICS.items() if m.level == "samples" and not m.params]
    return model, search


def metrics_help() -> str:
    model, search = _audit_metric_names()
    return ("card metrics: " + ", ".join(CARD_METRICS) + "; domain_shift_accuracy; audit metrics: "
            + ", ".join(f"audit.{n}" + ("@" + metrics.get(n).params[0].upper() if metrics.get(n).params else "")
                        for n in model)
            + ", audit.SEARCH.KEY with KEY one of " + ", ".join(search)
            + " (d50: " + metrics.get("d50").doc + ")")


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Column:
    key: str
    label: str
    metric: str
    scale: float = 1.0
    digits: int = 2


@dataclass
class RunSpec:
    name: str
    label: str
    config: Optional[str] = None
    finetune_from: Optional[str] = None
    use: Optional[str] = None
    paper: dict = field(default_factory=dict)
    paper_steps: Any = None
    domain_shift: Optional[str] = None
    audit: Optional[dict] = None  # resolved mapping (table defaults merged) or None
    note: str = ""
    row: Optional[str] = None
    col: Optional[str] = None

    @property
    def trains(self) -> bool:
        return self.use is None


@dataclass
class TableSpec:
    name: str
    dir: Path
    title: str
    paper: str
    description: str
    paper_steps: Any
    columns: list[Column]
    runs: list[RunSpec]
    checks: list[Check]
    report: bool
    figures: list[str]
    pivot: Optional[dict] = None

    def run(self, name: str) -> RunSpec:
        for r in self.runs:
            if r.name == name:
                return r
        raise ConfigError(f"table {self.name!r} has no run {name!r}; runs: {', '.join(r.name for r in self.runs)}")

    def column(self, key: str) -> Column:
        for c in self.columns:
            if c.key == key:
                return c
        raise ConfigError(f"table {self.name!r} has no column {key!r}; columns: "
                          f"{', '.join(c.key for c in self.columns)}")


def _where(path: Path, what: str = "") -> str:
    return f"{path}{(': ' + what) if what else ''}"


def audit_metric(metric: str) -> Optional[tuple[str, Optional[str], tuple]]:
    """``(registry name, search or None, arguments)`` of an ``audit.…`` column metric, else None."""
    if not metric.startswith("audit."):
        return None
    model, search = _audit_metric_names()
    rest = metric[len("audit."):]
    name, _, arg = rest.partition("@")
    if name in model:
        n_params = len(metrics.get(name).params)
        if n_params == 0 and not arg:
            return name, None, ()
        if n_params == 1 and arg:
            try:
                return name, None, (float(arg),)
            except ValueError:
                return None
        return None
    parts = rest.split(".")
    if len(parts) == 2 and parts[1] in search and parts[0]:
        return parts[1], parts[0], ()
    return None


def check_metric_name(metric: str, where: str) -> None:
    if metric in CARD_METRICS or metric in EVAL_METRICS or audit_metric(metric) is not None:
        return
    raise ConfigError(f"{where}: unknown metric {metric!r}; valid: {metrics_help()}")


def audit_search_of(metric: str) -> Optional[str]:
    """The search a metric needs (``audit.pgd.d50`` → ``pgd``), else None."""
    am = audit_metric(metric)
    return None if am is None else am[1]


def _audit_mapping(v: Any, defaults: Optional[dict], where: str) -> Optional[dict]:
    if v is None or v is False:
        return None
    if v is True:
        if defaults is None:
            raise ConfigError(f"{where}: 'audit: true' needs a table-level 'audit:' mapping")
        return dict(defaults)
    if not isinstance(v, dict):
        raise ConfigError(f"{where} must be true, false or a mapping of audit config keys, got {v!r}")
    merged = dict(defaults or {})
    merged.update(v)
    return merged


def validate_audit_config(audit: dict, where: str) -> None:
    """Build an AuditConfig from ``audit`` (unknown keys and bad values are errors)."""
    cfg = build_config(AuditConfig, audit, where=where)
    cfg.validate()


def load_table(table_dir: str | Path) -> TableSpec:
    """Parse and check ``table_dir/table.yaml`` on its own (references to other tables
    are checked by :func:`validate_experiments` and when the table runs)."""
    d = Path(table_dir)
    path = d / TABLE_FILE
    if not path.is_file():
        raise ConfigError(f"{d} is not an experiment table: no {TABLE_FILE} in it (an experiment table is a "
                          f"directory with {TABLE_FILE} and one training YAML per run; see experiments/README.md)")
    raw = check_keys(read_yaml(path), TABLE_KEYS, _where(path), required=("title", "columns", "runs"))
    name = d.resolve().name
    table_audit = raw.get("audit")
    if table_audit is not None and not isinstance(table_audit, dict):
        raise ConfigError(f"{path}: 'audit' must be a mapping of audit config keys (see `jr-eval run --help`)")

    # columns
    if not isinstance(raw["columns"], list) or not raw["columns"]:
        raise ConfigError(f"{path}: 'columns' must be a non-empty list")
    columns: list[Column] = []
    for i, c in enumerate(raw["columns"]):
        w = f"{path}: columns[{i}]"
        check_keys(c, COLUMN_KEYS, w, required=("key", "metric"))
        check_metric_name(str(c["metric"]), w)
        col = Column(key=str(c["key"]), label=str(c.get("label", c["key"])), metric=str(c["metric"]),
                     scale=finite_number(c.get("scale", 1.0), f"{w}.scale"), digits=int(c.get("digits", 2)))
        if any(o.key == col.key for o in columns):
            raise ConfigError(f"{w}: duplicate column key {col.key!r}")
        columns.append(col)
    col_keys = {c.key for c in columns}

    # runs
    if not isinstance(raw["runs"], list) or not raw["runs"]:
        raise ConfigError(f"{path}: 'runs' must be a non-empty list")
    runs: list[RunSpec] = []
    for i, r in enumerate(raw["runs"]):
        w = f"{path}: runs[{i}]"
        check_keys(r, RUN_KEYS, w, required=("name",))
        rname = str(r["name"])
        w = f"{path}: run {rname!r}"
        if not _NAME_RE.match(rname):
            raise ConfigError(f"{w}: run names may only contain letters, digits and . _ + - (they name directories)")
        if any(o.name == rname for o in runs):
            raise ConfigError(f"{w}: duplicate run name")
        use = r.get("use")
        if use is not None:
            if r.get("config") is not None or r.get("finetune_from") is not None:
                raise ConfigError(f"{w}: 'use' takes another table's run as it is; it cannot have 'config' or "
                                  f"'finetune_from'")
            if not isinstance(use, str) or use.count("/") != 1:
                raise ConfigError(f"{w}: 'use' must be 'other-table/run', got {use!r}")
        config = None
        if use is None:
            config = str(r.get("config") or f"{rname}.yaml")
            if not (d / config).is_file():
                raise ConfigError(f"{w}: training config {str(d / config)!r} does not exist")
        ft = r.get("finetune_from")
        if ft is not None and (not isinstance(ft, str) or ft.count("/") > 1 or ft == rname):
            raise ConfigError(f"{w}: 'finetune_from' must name another run ('run' or 'table/run'), got {ft!r}")
        paper = r.get("paper") or {}
        if not isinstance(paper, dict):
            raise ConfigError(f"{w}: 'paper' must map column keys to the paper's numbers")
        for k, v in paper.items():
            if k not in col_keys:
                raise ConfigError(f"{w}: paper number for unknown column {k!r}; columns: {', '.join(col_keys)}")
            finite_number(v, f"{w}: paper.{k}")
        ds = r.get("domain_shift")
        if ds is not None:
            get_dataset_info(str(ds))
        audit = _audit_mapping(r.get("audit"), table_audit, f"{w}: audit")
        if audit is not None:
            validate_audit_config(audit, f"{w}: audit")
        runs.append(RunSpec(
            name=rname, label=str(r.get("label", rname)), config=config, finetune_from=ft, use=use,
            paper={k: float(v) for k, v in paper.items()}, paper_steps=r.get("paper_steps", raw.get("paper_steps")),
            domain_shift=None if ds is None else str(ds), audit=audit, note=str(r.get("note", "") or ""),
            row=None if r.get("row") is None else str(r["row"]), col=None if r.get("col") is None else str(r["col"])))
    names = {r.name for r in runs}
    for r in runs:
        if r.finetune_from and "/" not in r.finetune_from and r.finetune_from not in names:
            raise ConfigError(f"{path}: run {r.name!r}: finetune_from {r.finetune_from!r} is not a run of this table; "
                              f"runs: {', '.join(sorted(names))}")

    # column metrics that need something from a run
    for r in runs:
        for c in columns:
            if c.metric == "domain_shift_accuracy" and r.paper.get(c.key) is not None and not r.domain_shift:
                raise ConfigError(f"{path}: run {r.name!r} has a paper number for column {c.key!r} "
                                  f"(domain_shift_accuracy) but no 'domain_shift'")

    # pivot
    pivot = raw.get("pivot")
    if pivot is not None:
        check_keys(pivot, PIVOT_KEYS, f"{path}: pivot", required=PIVOT_KEYS)
        if pivot["column"] not in col_keys:
            raise ConfigError(f"{path}: pivot.column {pivot['column']!r} is not a column")
        pivot = {"column": str(pivot["column"]), "rows": name_list(pivot["rows"], f"{path}: pivot.rows"),
                 "cols": [str(c) for c in pivot["cols"]]}
        for r in runs:
            if (r.row is None) != (r.col is None):
                raise ConfigError(f"{path}: run {r.name!r}: set both 'row' and 'col' (pivot position) or neither")
            if r.row is not None and (r.row not in pivot["rows"] or r.col not in pivot["cols"]):
                raise ConfigError(f"{path}: run {r.name!r}: pivot position ({r.row!r}, {r.col!r}) is not in "
                                  f"pivot.rows × pivot.cols")

    # figures
    figures = name_list(raw.get("figures") or [], f"{path}: figures")
    for f in figures:
        if f not in FIGURES:
            raise ConfigError(f"{path}: unknown figure {f!r}; valid: {', '.join(FIGURES)}")

    table = TableSpec(name=name, dir=d, title=str(raw["title"]), paper=str(raw.get("paper", "")),
                      description=str(raw.get("description", "") or ""), paper_steps=raw.get("paper_steps"),
                      columns=columns, runs=runs, checks=[],
                      report=bool(raw.get("report", any(r.audit for r in runs))), figures=figures, pivot=pivot)

    # checks: each one a gate rule over the table's cells
    checks_raw = raw.get("checks") or []
    if not isinstance(checks_raw, list):
        raise ConfigError(f"{path}: 'checks' must be a list")
    for i, c in enumerate(checks_raw):
        w = f"{path}: checks[{i}]"
        check = attach_rule(parse_check(c, w, names, col_keys), table)
        table.checks.append(check)
        # every run a check reads must be able to produce the columns' metrics
        for ck in check_columns(check):
            for rn in check_runs(check, table):
                _check_run_provides(table, table.run(rn), table.column(ck), w)
    return table


def _check_run_provides(table: TableSpec, run: RunSpec, column: Column, where: str) -> None:
    m = column.metric
    if m == "domain_shift_accuracy" and not run.domain_shift:
        raise ConfigError(f"{where}: run {run.name!r} has no 'domain_shift', so column {column.key!r} ({m}) is "
                          f"always empty for it")
    if m.startswith("audit."):
        if run.audit is None:
            raise ConfigError(f"{where}: run {run.name!r} has no 'audit', so column {column.key!r} ({m}) is "
                              f"always empty for it")
        if m.startswith("audit.noise_accuracy@"):
            sigma = float(m.split("@", 1)[1])
            sigmas = run.audit.get("noise_sigmas")
            if sigmas is None:
                sigmas = AuditConfig().noise_sigmas
            if isinstance(sigmas, (int, float)):
                sigmas = [sigmas]
            if not any(abs(float(s) - sigma) < 1e-12 for s in sigmas):
                raise ConfigError(f"{where}: run {run.name!r}'s audit does not measure the accuracy at σ = {sigma:g} "
                                  f"(noise_sigmas: {', '.join(f'{float(s):g}' for s in sigmas)}), so column "
                                  f"{column.key!r} is always empty for it")
        search = audit_search_of(m)
        if search is not None:
            attacks = run.audit.get("attacks", "all")
            attacks = name_list(attacks, f"{where}: audit.attacks") if attacks != "all" else None
            if attacks is not None and search not in attacks:
                raise ConfigError(f"{where}: run {run.name!r}'s audit does not run {search!r} (attacks: "
                                  f"{', '.join(attacks)}), so column {column.key!r} ({m}) is always empty for it")


# ---------------------------------------------------------------------------
# references between tables
# ---------------------------------------------------------------------------

class Catalog:
    """Tables by name under one experiments root, loaded on demand."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._tables: dict[str, TableSpec] = {}

    def add(self, table: TableSpec) -> None:
        self._tables[table.name] = table

    def table(self, name: str) -> TableSpec:
        if name not in self._tables:
            d = self.root / name
            if not (d / TABLE_FILE).is_file():
                raise ConfigError(f"no experiment table {name!r}: {d / TABLE_FILE} does not exist")
            self._tables[name] = load_table(d)
        return self._tables[name]

    def resolve(self, table: TableSpec, ref: str, seen: Optional[list] = None) -> tuple[TableSpec, RunSpec]:
        """The trained run behind ``ref`` ('run' of ``table`` or 'table/run'), following ``use`` chains."""
        seen = list(seen or [])
        if "/" in ref:
            tname, rname = ref.split("/", 1)
            t = self.table(tname)
        else:
            t, rname = table, ref
        key = f"{t.name}/{rname}"
        if key in seen:
            raise ConfigError(f"circular reference between runs: {' → '.join(seen + [key])}")
        run = t.run(rname)
        if run.use is not None:
            return self.resolve(t, run.use, seen + [key])
        if run.finetune_from is not None:
            # check the parent chain, too (a cycle through finetune_from is an error)
            self.resolve(t, run.finetune_from, seen + [key])
        return t, run


def table_dirs(root: str | Path) -> list[Path]:
    """Experiment tables under ``root``: its subdirectories with a table.yaml (sorted)."""
    r = Path(root)
    if not r.is_dir():
        raise ConfigError(f"{r} is not a directory")
    return sorted(p for p in r.iterdir() if p.is_dir() and (p / TABLE_FILE).is_file())
