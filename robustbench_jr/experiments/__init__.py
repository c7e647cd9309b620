"""Experiment tables: one YAML per run plus table.yaml, run by `jr-train table`.

See :mod:`robustbench_jr.experiments.spec` for the table.yaml format and
:mod:`robustbench_jr.experiments.runner` for what a run of a table does.
"""

from .runner import RunnerOptions, Scaling, build_run_config, run_tables
from .spec import Catalog, TableSpec, load_table, validate_experiments

__all__ = ["Catalog", "RunnerOptions", "Scaling", "TableSpec", "build_run_config", "load_table", "run_tables",
           "validate_experiments"]
