"""An experiment table's checks, as rules of the robustness gate.

``table.yaml`` keeps its check format (``kind: ratio | paper | order | compare | spread``
with the keys of :data:`CHECK_KINDS`). Each check is translated, when the table is
loaded, into a rule expression over the table's cells — ``COLUMN[RUN]`` is the value
shown in that column for that run — and decided by the gate's evaluator
(:func:`robustbench_jr.reports.gate.judge`), the project's one check engine:

====================  =============================================================
kind                  rule
====================  =============================================================
ratio                 ``jnorm[none] / jnorm[jr] >= 10 [and jnorm[none] / jnorm[jr] <= MAX]``
paper                 ``abs(acc[none] - 98.9) <= 1 and abs(acc[l2] - 99.2) <= 1 …``
                      (relative: ``abs(acc[none] - 98.9) / 98.9 <= 0.5 …``)
order                 ``rho[a] < rho[b] < rho[c]`` (``>`` when decreasing), or over the
                      columns of one run: ``noise_d50[base] < cw_d50[base]``
compare               ``min(acc[h1], acc[h2]) > max(acc[l1], acc[l2])``
spread                ``max(acc[a], acc[b]) - min(acc[a], acc[b]) <= MAX_ABS and
                      (max(…) - min(…)) / abs(mean(…)) <= MAX_REL``
====================  =============================================================

A cell that has no number yet is missing, so a check is PASS, FAIL, or PENDING while a
value it needs is missing — unless the numbers it has already decide it (a ``paper`` check
with one run off by more than the tolerance, an ``order`` with two runs already out of
order): then it is FAIL. The detail strings say what was compared, with the numbers.

This module does not import :mod:`.spec` (which imports it): a table is read through its
``columns`` (``key``, ``label``, ``digits``) and ``runs`` (``name``, ``paper``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ..errors import ConfigError
from ..reports.gate import Metric, Rule, Value, Vocabulary, judge, parse_expression, parse_rule
from ..reports.gate import value as expression_value

PASS, FAIL, PENDING = "PASS", "FAIL", "PENDING"
_STATUS = {"pass": PASS, "fail": FAIL, "pending": PENDING}

CHECK_KINDS = {
    # kind: (required keys, optional keys)
    "ratio": (("numerator", "denominator"), ("column", "min", "max")),
    "paper": (("tolerance",), ("column", "runs", "relative")),
    "order": ((), ("column", "runs", "run", "columns", "direction")),
    "compare": (("higher", "lower"), ("column",)),
    "spread": (("runs",), ("column", "max_abs", "max_rel")),
}
CHECK_COMMON = ("name", "kind", "acceptance", "note")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class Check:
    name: str
    kind: str
    column: str
    acceptance: bool = True
    note: str = ""
    params: dict = field(default_factory=dict)
    rule: Optional[Rule] = None  # the gate rule it is decided by (None: nothing to compare yet)


# ---------------------------------------------------------------------------
# reading a check from table.yaml
# ---------------------------------------------------------------------------

def finite_number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise ConfigError(f"{where} must be a finite number, got {v!r}")
    return float(v)


def name_list(v: Any, where: str) -> list[str]:
    if isinstance(v, str):
        v = [s.strip() for s in v.split(",") if s.strip()]
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise ConfigError(f"{where} must be a list of names, got {v!r}")
    return list(v)


def check_keys(d: Any, valid, where: str, required=()) -> dict:
    """``d`` is a mapping with only ``valid`` keys and every ``required`` one (the key check of
    every table.yaml section)."""
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


def parse_check(c: Any, where: str, run_names: set, col_keys: set) -> Check:
    """A :class:`Check` from one entry of ``checks:`` (unknown keys and bad values are errors)."""
    if not isinstance(c, dict) or "kind" not in c:
        raise ConfigError(f"{where}: each check is a mapping with a 'kind' ({', '.join(CHECK_KINDS)})")
    kind = c["kind"]
    if kind not in CHECK_KINDS:
        raise ConfigError(f"{where}: unknown check kind {kind!r}; valid: {', '.join(CHECK_KINDS)}")
    req, opt = CHECK_KINDS[kind]
    valid = CHECK_COMMON + req + opt
    check_keys(c, valid, where)
    for k in req:
        if k not in c:
            raise ConfigError(f"{where}: a {kind!r} check needs {k!r}")
    params = {k: c[k] for k in req + opt if k in c and k != "column"}
    if kind != "order" and "column" not in c:
        raise ConfigError(f"{where}: a {kind!r} check needs 'column'")
    _check_params(kind, params, run_names, where, c)
    col = str(c.get("column") if c.get("column") is not None else params["columns"][0])
    for ck in [col] + list(params.get("columns", [])):
        if ck not in col_keys:
            raise ConfigError(f"{where}: unknown column {ck!r}; columns: {', '.join(sorted(col_keys))}")
        if not _IDENT.match(ck):
            raise ConfigError(f"{where}: column {ck!r} is read by a check, so its key must be a name of letters, "
                              f"digits and _ (it is written as {ck}[RUN] in the check's rule)")
    return Check(name=str(c.get("name") or f"{kind} {col}"), kind=kind, column=col,
                 acceptance=bool(c.get("acceptance", True)), note=str(c.get("note", "") or ""), params=params)


def _check_params(kind: str, p: dict, names: set, where: str, given: dict) -> None:
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
                p[k] = finite_number(p[k], f"{where}: {k}")
    elif kind == "paper":
        p["tolerance"] = finite_number(p["tolerance"], f"{where}: tolerance")
        p["relative"] = bool(p.get("relative", False))
        if "runs" in p:
            p["runs"] = name_list(p["runs"], f"{where}: runs")
            for r in p["runs"]:
                run_name(r, "runs entry")
    elif kind == "order":
        by_runs = "runs" in p and "column" in given and "run" not in p and "columns" not in p
        by_cols = "run" in p and "columns" in p and "runs" not in p and "column" not in given
        if not (by_runs or by_cols):
            raise ConfigError(f"{where}: an 'order' check takes either 'column' + 'runs' (one column over several "
                              f"runs) or 'run' + 'columns' (several columns of one run)")
        key = "runs" if by_runs else "columns"
        p[key] = name_list(p[key], f"{where}: {key}")
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
            p[k] = name_list(p[k], f"{where}: {k}")
            for r in p[k]:
                run_name(r, f"{k} entry")
    elif kind == "spread":
        p["runs"] = name_list(p["runs"], f"{where}: runs")
        for r in p["runs"]:
            run_name(r, "runs entry")
        if "max_abs" not in p and "max_rel" not in p:
            raise ConfigError(f"{where}: a 'spread' check needs 'max_abs' and/or 'max_rel'")
        for k in ("max_abs", "max_rel"):
            if k in p:
                p[k] = finite_number(p[k], f"{where}: {k}")


def check_columns(check: Check) -> list[str]:
    """The columns a check reads: its 'column', or an 'order' check's 'columns'."""
    return list(check.params["columns"]) if "columns" in check.params else [check.column]


def check_runs(check: Check, table) -> list[str]:
    """The runs a check reads (a 'paper' check: those given, else every run with a paper number)."""
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


# ---------------------------------------------------------------------------
# the check as a gate rule
# ---------------------------------------------------------------------------

def vocabulary(table) -> Vocabulary:
    """The names of a table's rules: its columns, each taking a run (``acc[none]``)."""
    return Vocabulary({c.key: ("run",) for c in table.columns}, "column", baseline=False,
                      arg_examples={"run": table.runs[0].name if table.runs else "RUN"})


def _num(v: float) -> str:
    return repr(float(v))


def _paper_runs(check: Check, table) -> list[tuple[str, float]]:
    paper = {r.name: r.paper.get(check.column) for r in table.runs}
    return [(rn, paper[rn]) for rn in check_runs(check, table) if paper.get(rn) is not None]


def _spread_exprs(check: Check) -> tuple[str, str]:
    cells = ", ".join(f"{check.column}[{r}]" for r in check.params["runs"])
    spread = f"max({cells}) - min({cells})"
    return spread, f"({spread}) / abs(mean({cells}))"


def rule_text(check: Check, table) -> Optional[str]:
    """The gate rule of ``check`` over ``table``'s cells (None when it has nothing to compare)."""
    p, col = check.params, check.column
    if check.kind == "ratio":
        ratio = f"{col}[{p['numerator']}] / {col}[{p['denominator']}]"
        parts = ([f"{ratio} >= {_num(p['min'])}"] if "min" in p else []) + (
            [f"{ratio} <= {_num(p['max'])}"] if "max" in p else [])
    elif check.kind == "paper":
        tol = _num(p["tolerance"])
        parts = [f"abs({col}[{rn}] - {_num(v)}) / {_num(abs(v))} <= {tol}" if p.get("relative")
                 else f"abs({col}[{rn}] - {_num(v)}) <= {tol}" for rn, v in _paper_runs(check, table)]
    elif check.kind == "order":
        op = " < " if p["direction"] == "increasing" else " > "
        cells = ([f"{col}[{rn}]" for rn in p["runs"]] if "runs" in p
                 else [f"{k}[{p['run']}]" for k in p["columns"]])
        parts = [op.join(cells)]
    elif check.kind == "compare":
        parts = [f"min({', '.join(f'{col}[{r}]' for r in p['higher'])}) > "
                 f"max({', '.join(f'{col}[{r}]' for r in p['lower'])})"]
    else:  # spread
        spread, rel = _spread_exprs(check)
        parts = ([f"{spread} <= {_num(p['max_abs'])}"] if "max_abs" in p else []) + (
            [f"{rel} <= {_num(p['max_rel'])}"] if "max_rel" in p else [])
    return " and ".join(parts) or None


def attach_rule(check: Check, table) -> Check:
    """Translate ``check`` into its gate rule (parsed against the table's columns)."""
    text = rule_text(check, table)
    check.rule = None if text is None else parse_rule(text, name=check.name, vocabulary=vocabulary(table))
    return check


# ---------------------------------------------------------------------------
# evaluation and detail strings
# ---------------------------------------------------------------------------

def _fmt(v: Optional[float], digits: int = 2) -> str:
    if v is None:
        return "pending"
    if isinstance(v, float) and math.isinf(v):
        return "∞" if v > 0 else "-∞"
    if isinstance(v, float) and math.isnan(v):
        return "–"
    return f"{v:.{digits}f}"


def _telling_digits(pairs, digits: int) -> int:
    """Digits (at most 3 more than ``digits``) at which the compared values of ``pairs`` show as
    different numbers, so a detail never reads "64.1 > 64.1" when 64.13 > 64.09 decided it."""
    d = digits
    while d < digits + 3 and any(a != b and _fmt(a, d) == _fmt(b, d) for a, b in pairs):
        d += 1
    return d


def _ratio_text(v: float, digits: int) -> str:
    return "undefined" if math.isnan(v) else f"{v:.{digits}f}"


def _column(table, key: str):
    return next(c for c in table.columns if c.key == key)


def evaluate_check(check: Check, table, rows: dict) -> dict:
    """Decide ``check`` on the table's ``rows`` (run name → row with ``cells``) with the
    gate's evaluator; returns its status (PASS/FAIL/PENDING), a readable detail and the rule."""
    p = check.params
    d = _column(table, check.column).digits

    def val(run: str, key: Optional[str] = None) -> Optional[float]:
        return rows[run]["cells"][key or check.column]["ours"]

    def resolve(node: Metric, lhs) -> Value:
        return Value(val(node.args[0], node.name))

    res = {"name": check.name, "kind": check.kind, "acceptance": check.acceptance, "note": check.note,
           "column": check.column, "runs": check_runs(check, table), "columns": check_columns(check),
           "rule": check.rule.text if check.rule else None}
    j = judge(check.rule, resolve) if check.rule is not None else None
    status = _STATUS[j.status] if j is not None else PENDING
    waiting = status == PENDING

    if check.kind == "ratio":
        bounds = " and ".join(x for x in (f"≥ {p['min']:g}" if "min" in p else "",
                                          f"≤ {p['max']:g}" if "max" in p else "") if x)
        if waiting:
            detail = f"{p['numerator']} / {p['denominator']} {bounds}: waiting for numbers"
        else:
            ratio = j.outcomes[0].lhs.point
            detail = (f"{p['numerator']} / {p['denominator']} = {_fmt(val(p['numerator']), d)} / "
                      f"{_fmt(val(p['denominator']), d)} = {_ratio_text(ratio, 2)} ({bounds})")
            res["value"] = ratio
    elif check.kind == "paper":
        tol = p["tolerance"]
        outcome = dict(zip([rn for rn, _ in _paper_runs(check, table)], j.outcomes if j else []))
        parts = []
        for rn in res["runs"]:
            ours, paper = val(rn), rows[rn]["cells"][check.column]["paper"]
            if paper is None:
                continue
            if ours is None:
                parts.append(f"{rn} pending (paper {paper:g})")
                continue
            diff = ours - paper
            shown = (f"{(diff / abs(paper) if paper else math.inf):+.0%}" if p.get("relative")
                     else f"{diff:+.{d}f}")
            bad = rn in outcome and outcome[rn].status == "fail"
            parts.append(f"{rn} {_fmt(ours, d)} vs {paper:g} ({shown}){' ✗' if bad else ''}")
        rule = f"|ours/paper − 1| ≤ {tol:g}" if p.get("relative") else f"|ours − paper| ≤ {tol:g}"
        detail = f"{rule}: " + "; ".join(parts)
    elif check.kind == "order":
        sign = " < " if p["direction"] == "increasing" else " > "
        if "runs" in p:
            items = [(rn, val(rn)) for rn in p["runs"]]
        else:
            items = [(_column(table, k).label, val(p["run"], k)) for k in p["columns"]]
        if waiting:
            detail = sign.join(n for n, _ in items) + ": waiting for numbers"
        else:
            vals = [v for _, v in items]
            d = _telling_digits([(a, b) for a, b in zip(vals, vals[1:]) if a is not None and b is not None], d)
            detail = sign.join(f"{n} {_fmt(v, d)}" for n, v in items)
            if "run" in p:
                detail = f"{p['run']}: " + detail
    elif check.kind == "compare":
        if waiting:
            detail = f"min({', '.join(p['higher'])}) > max({', '.join(p['lower'])}): waiting for numbers"
        else:
            o = j.outcomes[0]
            d = _telling_digits([(o.lhs.point, o.rhs.point)], d)
            detail = (f"min({', '.join(f'{n} {_fmt(val(n), d)}' for n in p['higher'])}) > "
                      f"max({', '.join(f'{n} {_fmt(val(n), d)}' for n in p['lower'])})")
    else:  # spread
        lim = " and ".join(x for x in (f"max − min ≤ {p['max_abs']:g}" if "max_abs" in p else "",
                                       f"(max − min)/mean ≤ {p['max_rel']:g}" if "max_rel" in p else "") if x)
        if waiting:
            detail = f"{lim}: waiting for numbers"
        else:
            voc = vocabulary(table)
            spread, rel = (expression_value(parse_expression(e, voc), resolve).point for e in _spread_exprs(check))
            detail = (", ".join(f"{n} {_fmt(val(n), d)}" for n in p["runs"])
                      + f": max − min = {_ratio_text(spread, d)}, relative {_ratio_text(rel, 3)} ({lim})")
    res["status"], res["detail"] = status, detail
    return res
