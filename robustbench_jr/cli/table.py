"""`jr-train table`: run a whole experiment table (registered on the jr-train group)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ..experiments import RunnerOptions, Scaling, run_tables, validate_experiments
from ..experiments.pipeline import verify_table
from ..experiments.spec import TABLE_FILE
from ..runtime import Event
from .common import console, handle_errors
from .progress import RichEvents
from .render import plan_table

TABLE_HELP = """Run the experiment table in EXPERIMENT_DIR (table.yaml + one training YAML per run).

\b
Trains every run that is not done yet (a run whose results directory holds card.yaml
from the same resolved config is skipped; an interrupted one resumes; one trained with
another config is refused), evaluates it (card accuracy and ‖J‖_F; accuracy on a
domain-shift set; an audit, which resumes by itself), then writes
RESULTS/<table>/table.md and table.json: our numbers next to the paper's, the
acceptance checks (PASS/FAIL/PENDING), steps used vs the paper's, wall times, hardware.

\b
--steps-scale F (< 1) and --max-steps N shorten every run (steps and lr_step
alike) and --audit-n N caps the audits; such runs go to RESULTS/<table>@<scaling>/
and never mix with full ones. --audit-n alone keeps the full schedule, so its trained
runs are the full ones in RESULTS/<table>/ (reused, or trained there); only its audits
and table go to RESULTS/<table>@n<N>/.

\b
Every table records the commit of the code that wrote it, each run's training-config
hash, its weights' hash and its card's metrics. --docs DIR copies table.md and
table.json to DIR/<table>.md/.json (docs/reproduction holds the published ones);
--verify re-checks such a table.json against the cards and audits present under
--results, without training or attacking anything.

\b
Examples:
  jr-train table experiments/hoffman-table1
  jr-train table --all experiments --dry-run
  jr-train table experiments/jg-table3 --max-steps 20 --audit-n 20      (smoke run)
  jr-train table --validate experiments
  jr-train table experiments/hoffman-table1 --verify    (against docs/reproduction/hoffman-table1.json)
"""

#: how the runner's messages (info events, by their data["tag"]) are styled
_STYLES = {"table": "bold", "skip": "dim", "train": "bold cyan", "resume": "bold cyan", "eval": "bold cyan",
           "audit": "bold cyan", "written": "green"}


def verify_rich(rep: dict) -> Table:
    """The verdict of `jr-train table --verify`: one row per run, what differs."""
    t = Table(title=f"verify {rep['table']}", title_justify="left", header_style="bold cyan")
    for c in ("run", "status", "checked", "differences / note"):
        t.add_column(c)
    for r in rep["runs"]:
        decided = [c for c in r["checks"] if c["ok"] is not None]
        bad = [c for c in decided if not c["ok"]]
        style = {"verified": "green", "differs": "red"}.get(r["status"], "dim")
        note = "; ".join(f"{c['what']}: recorded {c['recorded']!r}, present {c['present']!r}" for c in bad) \
            or r.get("note", "")
        t.add_row(escape(str(r["name"])), f"[{style}]{r['status']}[/]", str(len(decided)), escape(note))
    return t


class TableEvents(RichEvents):
    """The runner's messages as styled lines, its plan as a table; progress bars and
    warnings as for every command."""

    def __call__(self, ev: Event) -> None:
        if ev.kind == "info" and ev.data.get("tag") in _STYLES:
            word, _, rest = ev.message.partition(" ")
            self.console.print(f"[{_STYLES[ev.data['tag']]}]{escape(word)}[/] {escape(rest)}", highlight=False)
        elif ev.kind == "log" and ev.name == "plan":
            self.console.print(plan_table(ev.data))
        else:
            super().__call__(ev)


@click.command("table", help=TABLE_HELP)
@click.argument("experiment_dir", type=click.Path(file_okay=False))
@click.option("--results", default="results", show_default=True, type=click.Path(file_okay=False),
              help="Root of the results folders.")
@click.option("--steps-scale", type=float, default=1.0, show_default=True,
              help="Multiply every run's steps and lr_step by F (0 < F ≤ 1).")
@click.option("--max-steps", type=int, default=None, help="Cap every run at N steps (lr_step shrinks in proportion).")
@click.option("--audit-n", type=int, default=None, help="Audit at most N test samples per run.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N for training and audits [default: the configs'].")
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Where to look for the data.")
@click.option("--only", default=None, metavar="RUN,...", help="Only these runs (their parents are trained as needed).")
@click.option("--all", "all_tables", is_flag=True, help="EXPERIMENT_DIR is a root: run every table under it.")
@click.option("--dry-run", is_flag=True, help="Show what would be trained and evaluated; change nothing.")
@click.option("--table-only", is_flag=True, help="Train and evaluate nothing; rewrite table.md/json from the results.")
@click.option("--validate", is_flag=True,
              help="Check every table under EXPERIMENT_DIR (or its parent, for a table) and exit.")
@click.option("--docs", "docs_dir", default=None, type=click.Path(file_okay=False),
              help="Also copy the written table.md/table.json to DOCS/<table>.md/.json (full tables only), "
                   "e.g. docs/reproduction.")
@click.option("--verify", is_flag=True,
              help="Train and attack nothing: re-check a recorded table.json (see --against) against the cards "
                   "and audits under --results (config hashes, card metrics, every cell). Exit 0 when at "
                   "least one run was checked and nothing differs, 1 otherwise.")
@click.option("--against", default=None, type=click.Path(dir_okay=False),
              help="The recorded table.json for --verify.  [default: docs/reproduction/<table>.json]")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@handle_errors
def table(experiment_dir, results, steps_scale, max_steps, audit_n, device, data_root, only, all_tables, dry_run,
          table_only, validate, docs_dir, verify, against, quiet):
    if verify:
        opts = RunnerOptions(results=Path(results), scaling=Scaling(steps_scale, max_steps, audit_n),
                             device=device, data_root=data_root, table_only=True, progress=False)
        rep = verify_table(experiment_dir, opts, against)
        console.print(verify_rich(rep))
        verdict = "[bold green]verified[/]" if rep["passed"] else "[bold red]not verified[/]"
        console.print(f"{verdict}: {rep['checked']} of {len(rep['runs'])} runs checked against the cards in "
                      f"{escape(rep['results_dir'])}" + (" (recorded values rounded as published)"
                                                        if rep["reconstructed"] else ""), highlight=False)
        sys.exit(0 if rep["passed"] else 1)
    if validate:
        p = Path(experiment_dir)
        root = p.parent if (p / TABLE_FILE).is_file() and not all_tables else p
        tables = validate_experiments(root)
        n_runs = sum(len(t.runs) for t in tables)
        console.print(f"[green]ok[/]: {len(tables)} tables, {n_runs} runs under {root}")
        return
    with TableEvents(console, enabled=not quiet) as on_event:
        opts = RunnerOptions(results=Path(results), scaling=Scaling(steps_scale, max_steps, audit_n), device=device,
                             data_root=data_root,
                             only=[s.strip() for s in only.split(",") if s.strip()] if only else None,
                             dry_run=dry_run, table_only=table_only, progress=not quiet, on_event=on_event,
                             docs=Path(docs_dir) if docs_dir else None)
        run_tables(experiment_dir, opts, all_tables=all_tables)
