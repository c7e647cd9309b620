"""Running experiment tables from start to end: train and evaluate the runs (:mod:`.runner`),
then collect the numbers, decide the checks and write the table (:mod:`.render`).

The one module that uses both, so that the runner never needs the renderer."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..errors import ConfigError
from ..runtime import emit
from .configs import Scaling  # noqa: F401  (re-exported for callers of run_tables)
from .render import collect, write_outputs
from .runner import Runner, RunnerOptions
from .spec import TABLE_FILE, load_table, table_dirs
from .verify import load_recorded, verify


def run_table(runner: Runner, table_dir: str | Path) -> dict:
    """Train and evaluate the table's (selected) runs, then write its table.md/json and report.

    With ``dry_run`` nothing is changed: the plan is returned (and sent to ``on_event`` as a
    ``log`` event named ``plan``); with ``table_only`` only the table is rewritten."""
    table = load_table(table_dir)
    runner.cat.add(table)
    selected = runner.select(table)
    runner.say("table", f"table {table.name} ({runner.opt.scaling.describe()}) → {runner.out_dir(table)}")
    if runner.opt.dry_run:
        plan = runner.plan(table, selected)
        emit(runner.opt.on_event, "log", name="plan", data=plan)
        return plan
    if not runner.opt.table_only:
        for r in selected:
            ckpt = runner.ensure_trained(table, r)
            if ckpt is not None:
                runner.evaluate(table, r, ckpt)
    data = collect(runner, table)
    write_outputs(runner, table, data)
    return data


def verify_table(table_dir: str | Path, options: RunnerOptions, against: Optional[str | Path] = None) -> dict:
    """Re-check the recorded table.json ``against`` (default: ``docs/reproduction/<table>.json``)
    against the cards and audits under ``options.results`` (:func:`.verify.verify`); nothing is
    trained or attacked."""
    p = Path(table_dir)
    if not (p / TABLE_FILE).is_file():
        raise ConfigError(f"{p} is not an experiment table (no {TABLE_FILE})")
    table = load_table(p)
    runner = Runner(p.resolve().parent, options)
    runner.cat.add(table)
    recorded = load_recorded(against if against is not None else Path("docs/reproduction") / f"{table.name}.json")
    return verify(runner, table, recorded)


def run_tables(root_or_table: str | Path, options: RunnerOptions, all_tables: bool = False) -> list[dict]:
    """Run one table directory, or (``all_tables``) every table under a root directory."""
    p = Path(root_or_table)
    if all_tables:
        dirs = table_dirs(p)
        if not dirs:
            raise ConfigError(f"no experiment tables under {p} (subdirectories with {TABLE_FILE})")
        root = p
    else:
        if not (p / TABLE_FILE).is_file():
            raise ConfigError(f"{p} is not an experiment table (no {TABLE_FILE}); to run every table under it use "
                              f"--all")
        dirs, root = [p], p.resolve().parent
    runner = Runner(root, options)
    return [run_table(runner, d) for d in dirs]
