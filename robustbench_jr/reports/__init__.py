"""Reports: curves, ρ̂ tables, plots, the HTML page, the CI gate and decision cells.

Everything here reads stored results (``robustbench_jr.evaluation.store``) or result
objects and never re-runs a search. Entry points: :func:`report.write_report`,
:func:`gate.evaluate` with :func:`gate.load_policy`, :func:`cells.save_cells` (the
cross sections themselves are computed by :mod:`robustbench_jr.evaluation.cells`).
"""
