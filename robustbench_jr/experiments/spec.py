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

    A check is PASS, FAIL, or PENDING while a value it needs is missing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import build_config, read_yaml
from ..errors import ConfigError

TABLE_FILE = "table.yaml"

TABLE_KEYS = ("title", "paper", "description", "paper_steps", "audit", "report", "figures", "columns", "runs",
              "pivot", "checks")
RUN_KEYS = ("name", "label", "config", "finetune_from", "use", "paper", "paper_steps", "domain_shift", "audit",
            "note", "row", "col")
COLUMN_KEYS = ("key", "label", "metric", "scale", "digits")
PIVOT_KEYS = ("column", "rows", "cols")
FIGURES = ("training_curves",)
CHECK_KINDS = {
    # kind: (required keys, optional keys)
    "ratio": (("numerator", "denominator"), ("column", "min", "max")),
    "paper": (("tolerance",), ("column", "runs", "relative")),
    "order": ((), ("column", "runs", "run", "columns", "direction")),
    "compare": (("higher", "lower"), ("column",)),
    "spread": (("runs",), ("column", "max_abs", "max_rel")),
}
CHECK_COMMON = ("name", "kind", "acceptance", "note")

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
AUDIT_KEYS = ("n", "n_fooled", "success_rate", "not_fooled", "already_misclassified", "median_l2", "mean_l2",
              "rho_adv", "rho_adv_attacked", "d50")
METRICS_HELP = (
    "card metrics: " + ", ".join(CARD_METRICS) + "; domain_shift_accuracy; audit metrics: "
    "audit.clean_accuracy, audit.jacobian_norm, audit.noise_accuracy@SIGMA, audit.SEARCH.KEY with KEY one of "
    + ", ".join(AUDIT_KEYS) + " (d50: the L2 distance at which the test error reaches 50%, i.e. the median "
    "fooling distance over all evaluated samples with not-fooled ones counted as +inf)")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class Column:
    key: str
    label: str
    metric: str
    scale: float = 1.0
    digits: int = 2


@dataclass
class Check:
    name: str
    kind: str
    column: str
    acceptance: bool = True
    note: str = ""
    params: dict = field(default_factory=dict)


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


def _check_keys(d: Any, valid, where: str, required=()) -> dict:
    """``d`` is a mapping with only ``valid`` keys and every ``required`` one."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    unknown = [k for k in d if k not in valid]
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(repr(k) for k in unknown)} in {where}; "
                          f"valid keys: {', '.join(valid)}")
    for k in required:
        if k not in d:
            raise ConfigError(f"{where}: missing key {k!r}")
    return d


def _str_list(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"{where} must be a list of names, got {v!r}")
    return list(v)


def check_metric_name(metric: str, where: str) -> None:
    if metric in CARD_METRICS or metric in EVAL_METRICS or metric in ("audit.clean_accuracy", "audit.jacobian_norm"):
        return
    if metric.startswith("audit.noise_accuracy@"):
        try:
            float(metric.split("@", 1)[1])
            return
        except ValueError:
            pass
    parts = metric.split(".")
    if len(parts) == 3 and parts[0] == "audit" and parts[2] in AUDIT_KEYS:
        return
    raise ConfigError(f"{where}: unknown metric {metric!r}; valid: {METRICS_HELP}")


def audit_search_of(metric: str) -> Optional[str]:
    """The search a metric needs (``audit.pgd.d50`` → ``pgd``), else None."""
    if "@" in metric:
        return None
    parts = metric.split(".")
    if len(parts) == 3 and parts[0] == "audit":
        return parts[1]
    return None


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ConfigError(f"{where} must be a finite number, got {v!r}")
    return float(v)


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
    """Build an AuditConfig from ``audit`` (unknown keys and bad values are errors).

    Skipped when the audit package is not importable (it is then reported when the
    run's audit starts)."""
    try:
        from ..evaluation.audit import AuditConfig
    except ImportError:  # pragma: no cover - the audit is an optional part of a checkout
        return
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
    raw = _check_keys(read_yaml(path), TABLE_KEYS, _where(path), required=("title", "columns", "runs"))
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
        _check_keys(c, COLUMN_KEYS, w, required=("key", "metric"))
        check_metric_name(str(c["metric"]), w)
        col = Column(key=str(c["key"]), label=str(c.get("label", c["key"])), metric=str(c["metric"]),
                     scale=_number(c.get("scale", 1.0), f"{w}.scale"), digits=int(c.get("digits", 2)))
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
        _check_keys(r, RUN_KEYS, w, required=("name",))
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
            _number(v, f"{w}: paper.{k}")
        ds = r.get("domain_shift")
        if ds is not None:
            from ..data import get_dataset_info

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
        _check_keys(pivot, PIVOT_KEYS, f"{path}: pivot", required=PIVOT_KEYS)
        if pivot["column"] not in col_keys:
            raise ConfigError(f"{path}: pivot.column {pivot['column']!r} is not a column")
        pivot = {"column": str(pivot["column"]), "rows": _str_list(pivot["rows"], f"{path}: pivot.rows"),
                 "cols": [str(c) for c in pivot["cols"]]}
        for r in runs:
            if (r.row is None) != (r.col is None):
                raise ConfigError(f"{path}: run {r.name!r}: set both 'row' and 'col' (pivot position) or neither")
            if r.row is not None and (r.row not in pivot["rows"] or r.col not in pivot["cols"]):
                raise ConfigError(f"{path}: run {r.name!r}: pivot position ({r.row!r}, {r.col!r}) is not in "
                                  f"pivot.rows × pivot.cols")

    # figures
    figures = _str_list(raw.get("figures") or [], f"{path}: figures")
    for f in figures:
        if f not in FIGURES:
            raise ConfigError(f"{path}: unknown figure {f!r}; valid: {', '.join(FIGURES)}")

    table = TableSpec(name=name, dir=d, title=str(raw["title"]), paper=str(raw.get("paper", "")),
                      description=str(raw.get("description", "") or ""), paper_steps=raw.get("paper_steps"),
                      columns=columns, runs=runs, checks=[],
                      report=bool(raw.get("report", any(r.audit for r in runs))), figures=figures, pivot=pivot)

    # checks
    checks_raw = raw.get("checks") or []
    if not isinstance(checks_raw, list):
        raise ConfigError(f"{path}: 'checks' must be a list")
    for i, c in enumerate(checks_raw):
        w = f"{path}: checks[{i}]"
        if not isinstance(c, dict) or "kind" not in c:
            raise ConfigError(f"{w}: each check is a mapping with a 'kind' ({', '.join(CHECK_KINDS)})")
        kind = c["kind"]
        if kind not in CHECK_KINDS:
            raise ConfigError(f"{w}: unknown check kind {kind!r}; valid: {', '.join(CHECK_KINDS)}")
        req, opt = CHECK_KINDS[kind]
        _check_keys(c, CHECK_COMMON + req + opt, w)
        for k in req:
            if k not in c:
                raise ConfigError(f"{w}: a {kind!r} check needs {k!r}")
        params = {k: c[k] for k in req + opt if k in c and k != "column"}
        if kind != "order" and "column" not in c:
            raise ConfigError(f"{w}: a {kind!r} check needs 'column'")
        _check_params(kind, params, names, col_keys, w, c)
        col = str(c.get("column") if c.get("column") is not None else params["columns"][0])
        for ck in [col] + list(params.get("columns", [])):
            if ck not in col_keys:
                raise ConfigError(f"{w}: unknown column {ck!r}; columns: {', '.join(sorted(col_keys))}")
        checks_name = str(c.get("name") or f"{kind} {col}")
        check = Check(name=checks_name, kind=kind, column=col, acceptance=bool(c.get("acceptance", True)),
                      note=str(c.get("note", "") or ""), params=params)
        table.checks.append(check)
        # every run a check reads must be able to produce the columns' metrics
        for ck in check_columns(check):
            for rn in check_runs(check, table):
                _check_run_provides(table, table.run(rn), table.column(ck), w)
    return table


def _check_params(kind: str, p: dict, names: set, col_keys: set, where: str, given: dict) -> None:
    def run_name(v, key):
        if not isinstance(v, str) or v not in names:
            raise ConfigError(f"{where}: {key} {v!r} is not a run of this table; runs: {', '.join(sorted(names))}")

    if kind == "ratio":
        run_name(p["numerator"], "numerator")
        run_name(p["denominator"], "denominator")
        if "min" not in p and "max" not in p:
            raise ConfigError(f"{where}: a 'ratio' check needs 'min' and/or 'max'")
        for k in ("min", "max"):
            if k in p:
                p[k] = _number(p[k], f"{where}: {k}")
    elif kind == "paper":
        p["tolerance"] = _number(p["tolerance"], f"{where}: tolerance")
        p["relative"] = bool(p.get("relative", False))
        if "runs" in p:
            p["runs"] = _str_list(p["runs"], f"{where}: runs")
            for r in p["runs"]:
                run_name(r, "runs entry")
    elif kind == "order":
        by_runs = "runs" in p and "column" in given and "run" not in p and "columns" not in p
        by_cols = "run" in p and "columns" in p and "runs" not in p and "column" not in given
        if not (by_runs or by_cols):
            raise ConfigError(f"{where}: an 'order' check takes either 'column' + 'runs' (one column over several "
                              f"runs) or 'run' + 'columns' (several columns of one run)")
        key = "runs" if by_runs else "columns"
        p[key] = _str_list(p[key], f"{where}: {key}")
        if len(p[key]) < 2:
            raise ConfigError(f"{where}: '{key}' needs at least two entries")
        if by_runs:
            for r in p["runs"]:
                run_name(r, "runs entry")
        else:
            run_name(p["run"], "run")
        d = p.get("direction", "increasing")
        if d not in ("increasing", "decreasing"):
            raise ConfigError(f"{where}: direction must be 'increasing' or 'decreasing', got {d!r}")
        p["direction"] = d
    elif kind == "compare":
        for k in ("higher", "lower"):
            p[k] = _str_list(p[k], f"{where}: {k}")
            for r in p[k]:
                run_name(r, f"{k} entry")
    elif kind == "spread":
        p["runs"] = _str_list(p["runs"], f"{where}: runs")
        for r in p["runs"]:
            run_name(r, "runs entry")
        if "max_abs" not in p and "max_rel" not in p:
            raise ConfigError(f"{where}: a 'spread' check needs 'max_abs' and/or 'max_rel'")
        for k in ("max_abs", "max_rel"):
            if k in p:
                p[k] = _number(p[k], f"{where}: {k}")


def check_columns(check: Check) -> list[str]:
    """The columns a check reads: its 'column', or an 'order' check's 'columns'."""
    return list(check.params["columns"]) if "columns" in check.params else [check.column]


def check_runs(check: Check, table: TableSpec) -> list[str]:
    p = check.params
    if check.kind == "ratio":
        return [p["numerator"], p["denominator"]]
    if check.kind == "paper":
        return p.get("runs") or [r.name for r in table.runs if check.column in r.paper]
    if check.kind == "order":
        return p["runs"] if "runs" in p else [p["run"]]
    if check.kind == "compare":
        return p["higher"] + p["lower"]
    return p["runs"]


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
                try:
                    from ..evaluation.audit import DEFAULT_SIGMAS as sigmas
                except ImportError:  # pragma: no cover
                    sigmas = [sigma]
            if isinstance(sigmas, (int, float)):
                sigmas = [sigmas]
            if not any(abs(float(s) - sigma) < 1e-12 for s in sigmas):
                raise ConfigError(f"{where}: run {run.name!r}'s audit does not measure the accuracy at σ = {sigma:g} "
                                  f"(noise_sigmas: {', '.join(f'{float(s):g}' for s in sigmas)}), so column "
                                  f"{column.key!r} is always empty for it")
        search = audit_search_of(m)
        if search is not None:
            attacks = run.audit.get("attacks", "all")
            attacks = _str_list(attacks, f"{where}: audit.attacks") if attacks != "all" else None
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


def validate_experiments(root: str | Path) -> list[TableSpec]:
    """Check every table under ``root``: table.yaml parses, every run's training YAML
    builds a TrainConfig (fine-tunes on top of the post-processing defaults), every
    reference (``use``, ``finetune_from``) exists, and every YAML in a table directory
    belongs to a run. Returns the tables; raises :class:`ConfigError` listing every problem."""
    from .runner import build_run_config

    dirs = table_dirs(root)
    if not dirs:
        raise ConfigError(f"no experiment tables under {root} (subdirectories with {TABLE_FILE})")
    cat = Catalog(root)
    problems: list[str] = []
    tables = []
    for d in dirs:
        try:
            t = load_table(d)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        cat.add(t)
        tables.append(t)
    for t in tables:
        used = {TABLE_FILE}
        for r in t.runs:
            try:
                cat.resolve(t, r.name)
                if r.trains:
                    used.add(r.config)
                    build_run_config(cat, t, r)
            except ConfigError as exc:
                problems.append(f"{t.name}/{r.name}: {exc}")
        for y in sorted(p.name for p in t.dir.iterdir() if p.suffix in (".yaml", ".yml")):
            if y not in used:
                problems.append(f"{t.dir / y}: not the config of any run in {t.dir / TABLE_FILE} "
                                f"(one YAML per run; remove it or add the run)")
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {root}:\n" + "\n".join(f"  - {p}" for p in problems))
    return tables
