"""``write_report``: tables, figures and the HTML page for one or more stored runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from . import tables
from .html import render_html
from .plots import checkpoint_colors, make_figures, save_figure
from .runs import RunData, all_models, load_runs


@dataclass
class Report:
    out_dir: Path
    summary: dict
    runs: list[RunData]
    files: dict[str, Path] = field(default_factory=dict)  # name -> path

    @property
    def html(self) -> Path:
        return self.files["report.html"]


def write_report(run_dirs, out_dir: str | Path, log_x: bool = False, title: Optional[str] = None,
                 names: Optional[list[str]] = None) -> Report:
    """Read the stored results of ``run_dirs`` and write into ``out_dir``:

    ``report.html`` (self-contained), ``summary.json``/``.csv``/``.md`` and every
    figure as ``.png`` and ``.svg``. ``summary.json`` is the ``robustbench-jr/report/v1``
    document of the output schema (:mod:`robustbench_jr.evaluation.output`: the run blocks, the
    table rows, non-finite numbers as null). Nothing is re-attacked. ``names``: display names of
    the runs (see :func:`~robustbench_jr.reports.runs.load_runs`).
    """
    runs = load_runs(run_dirs, names)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stale = _previous_figure_files(out)
    summary = tables.build_summary(runs)
    figures = make_figures(runs, log_x=log_x)
    title = title or ("Robustness report — " + ", ".join(r.name for r in runs))
    rep = Report(out, summary, runs)
    svgs = {}
    for f in figures:
        for ext, p in save_figure(f, out).items():
            rep.files[p.name] = p
        svgs[f.name] = (out / f"{f.name}.svg").read_bytes()
    summary["figures"] = [{"name": f.name, "title": f.title, "caption": f.caption,
                           "png": f"{f.name}.png", "svg": f"{f.name}.svg"} for f in figures]
    files = {
        "summary.json": tables.to_json(summary),
        "summary.csv": tables.to_csv(summary),
        "summary.md": tables.markdown(summary, title),
    }
    models = all_models(runs)
    cols = checkpoint_colors(models)
    color_of = {m.label: cols[id(m)] for m in models}
    files["report.html"] = render_html(summary, figures, svgs, color_of, title)
    for name, text in files.items():
        p = out / name
        p.write_text(text, encoding="utf-8")
        rep.files[name] = p
    for f in figures:  # free figure memory
        f.fig.clear()
    for name in stale - set(rep.files):  # figures of an earlier report that this one no longer draws
        (out / name).unlink(missing_ok=True)
    return rep


def _previous_figure_files(out: Path) -> set[str]:
    """The figure files an earlier report in ``out`` listed in its summary.json (only
    those: nothing else in the folder is touched)."""
    try:
        figs = json.loads((out / "summary.json").read_text(encoding="utf-8")).get("figures", [])
        return {Path(f[k]).name for f in figs for k in ("png", "svg") if isinstance(f.get(k), str)}
    except (OSError, ValueError, AttributeError, TypeError):
        return set()
