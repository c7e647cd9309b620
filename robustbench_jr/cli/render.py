"""Terminal rendering (rich) of what the library returns: report tables, gate verdicts,
experiment-table plans. The library below ``cli/`` returns plain data; only this module
turns it into rich tables."""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..reports import tables
from ..reports.gate import GateResult
from ..reports.gate.render import fmt as _fmt


def report_tables(summary: dict) -> list[Table]:
    """The report's terminal tables (:func:`robustbench_jr.reports.tables.terminal_tables`)."""
    out = []
    for title, caption, (head, body) in tables.terminal_tables(summary):
        t = Table(title=title, caption=caption, caption_justify="left", header_style="bold cyan")
        left = 1 if head[0] == "Search" else 2
        for i, h in enumerate(head):
            width = max([len(line[i]) for line in body] or [1])
            t.add_column(h, justify="left" if i < left or h == "Source" else "right", overflow="fold",
                         min_width=None if h == "Source" else width)
        prev = None
        for line in body:
            if title == "Fooling distances" and prev is not None and line[0] != prev:
                t.add_section()
            prev = line[0]
            t.add_row(*(escape(c) for c in line))
        out.append(t)
    return out


def _plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def samples_cell(ch) -> str:
    """``fgsm 3 of 4`` per search a check's metrics read (– for model-level metrics)."""
    parts = [f"{s} {k} of {'?' if n is None else n}" for s, (k, n) in (ch.samples or {}).items()]
    return ("[yellow]" + escape(", ".join(parts)) + "[/]") if ch.partial else (escape(", ".join(parts)) or "–")


def gate_table(res: GateResult) -> Table:
    """The gate's verdict table: one row per check (rule × model)."""
    verdict = "[bold green]PASS[/]" if res.passed else "[bold red]FAIL[/]"
    t = Table(title=f"Robustness gate {verdict} — run {res.run}", header_style="bold cyan",
              caption=f"Decision: {res.policy.describe_bound()}", caption_justify="left")
    level = f"{100 * res.policy.confidence:g}% " if res.policy.confidence else ""
    rows = []
    for ch in res.checks:
        val = _fmt(ch.lhs) + (f"\n[dim]{ch.lhs_interval[0]:.4g}–{ch.lhs_interval[1]:.4g}[/]" if ch.lhs_interval else "")
        v = "[green]✔ pass[/]" if ch.passed else "[red]✘ fail[/]"
        if ch.bound is not None:
            v += f"\n[dim]bound {ch.bound:+.3g}[/]"
        rule = escape(ch.rule) + (f"\n[dim]{ch.message}[/]" if ch.message.startswith("undefined") else "")
        row = (escape(ch.model), rule, val, f"{ch.op} {_fmt(ch.rhs)}", v)
        if res.incomplete:  # an unfinished run judged with --allow-partial: how many samples each metric has
            row += (samples_cell(ch),)
        rows.append(row)
    cols = (("Model", "left"), ("Rule", "left"), (f"Value ({level}interval)" if level else "Value", "right"),
            ("Threshold", "right"), ("Verdict (margin bound)" if level else "Verdict", "center"))
    if res.incomplete:
        cols += (("Samples", "left"),)
    for i, (col, just) in enumerate(cols):
        width = None if i == 1 else max(len(line) for r in rows for line in _plain(r[i]).split("\n"))
        t.add_column(col, justify=just, overflow="fold", min_width=width)
    for r in rows:
        t.add_row(*r)
    return t


def plan_table(plan: dict) -> Table:
    """What `jr-train table --dry-run` would train and evaluate (:meth:`Runner.plan`)."""
    t = Table(title=f"plan: {plan['table']}", title_justify="left")
    for c in ("run", "trained as", "status", "steps", "lr_step", "evaluations", "directory"):
        t.add_column(c)
    for row in plan["plan"]:
        t.add_row(row["run"], row["trained_as"], f"{row['status']} ({row['detail']})" if row["detail"] else row["status"],
                  str(row["steps"]), str(row["lr_step"]), "; ".join(row["evaluations"]) or "card only", row["dir"])
    return t
