"""Experiment tables: one YAML per run plus table.yaml, run by `jr-train table`.

Modules, each importing only those before it: :mod:`.checks` (a table's checks as gate
rules) → :mod:`.spec` (the table.yaml format) → :mod:`.configs` (the runs' training
configs, validation of an experiments directory) → :mod:`.runner` (train and evaluate
runs) → :mod:`.render` (numbers, checks, table.md/json) → :mod:`.verify` (a recorded
table.json re-checked against the cards present) → :mod:`.pipeline` (a whole table).
"""

from .configs import Scaling, build_run_config, validate_experiments
from .pipeline import run_table, run_tables
from .runner import Runner, RunnerOptions
from .spec import Catalog, TableSpec, load_table

__all__ = ["Catalog", "Runner", "RunnerOptions", "Scaling", "TableSpec", "build_run_config", "load_table",
           "run_table", "run_tables", "validate_experiments"]
