"""`jr-eval report | gate | cells`: registered on the jr-eval group by ``register``.

These commands read stored results (``report``, ``gate``) or a checkpoint's
decision function (``cells``); none of them re-runs a search.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..errors import ConfigError
from ..evaluation.cells import checkpoint_cross_sections
from ..reports.cells import save_cells
from ..reports.gate import evaluate, junit_xml, load_policy
from ..reports.report import write_report
from ..runtime import resolve_device
from . import render
from .common import console, device_option, handle_errors, model_data_options
from .common import results_console

os.environ.setdefault("MPLBACKEND", "Agg")

REPORT_HELP = """Write a report for one or more audit runs (RUN_DIR = the --out of `jr-eval run`).

\b
OUT/report.html      self-contained page (figures embedded), open it in a browser
OUT/summary.json|csv|md  the tables: per checkpoint × search ρ̂_adv, success rate,
                     not fooled, N, median/mean L2 (L0 for JSMA); clean accuracy, ‖J‖_F
OUT/*.png, *.svg     test error vs L2 distance per search and per checkpoint,
                     accuracy vs σ (white noise), vs ε (FGSM, JSMA), ρ̂_adv bars
Several RUN_DIRs put their checkpoints side by side (same colour per checkpoint in
every figure). Nothing is re-attacked."""

GATE_HELP = """Pass or fail RUN_DIR against robustness rules (for CI).

\b
Rules come from --policy FILE.yaml and/or repeated --rule, e.g.
  --rule "rho_adv[deepfool] >= 0.25"
  --rule "error_at[cw, 1.0] <= 0.30"
  --rule "clean_accuracy >= 0.98 for model=lenet-mnist-jr"
  --rule "rho_adv[cw] >= 0.95 * baseline" --baseline runs/main
With --confidence C the gate bootstraps the samples and, by default (decide:
tolerant), fails only when the data show the rule is violated at confidence C.
Baseline rules compare like with like: a baseline audited with another search
configuration, on other samples or other data is refused (exit 2, differences
listed) unless --allow-mismatch.
Exit status: 0 all rules pass, 1 some rule fails, 2 usage or policy error.
See docs/reports.md for the policy format and every metric."""

CELLS_HELP = """Decision-cell cross sections through test sample --index (Hoffman et al. Fig. 1, S1, S2).

\b
A 2-D plane through the sample: --plane random (two random orthonormal directions)
or --plane adversarial (spanned by the FGSM directions of the first two checkpoints;
with one checkpoint, its FGSM direction and a random one). Colour = predicted class,
opacity = max softmax, circle = distance to the closest decision boundary within the
plane. Every checkpoint is drawn on the same plane, side by side. The model sees every
point clipped to [0, 1], the box the searches use (hatched: points mostly outside it),
so the FGSM ε and L2 shown are the FGSM search's."""


def _writable(path: str, option: str) -> None:
    """Refuse an output file that cannot be written before anything is computed."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot create its directory ({exc.strerror}: {exc.filename}); "
                          f"give {option} a path in a writable directory") from None
    if p.is_dir() or not os.access(p.parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        why = "is a directory" if p.is_dir() else "cannot be written"
        raise ConfigError(f"{option} {path} {why}; give {option} a file path in a writable directory")


def _write_text(path: str, text: str, option: str = "output") -> None:
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot be written ({exc.strerror}); give {option} a path in a "
                          "writable directory") from None


@click.command("report", help=REPORT_HELP)
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", "out_dir", default="report", show_default=True, type=click.Path(file_okay=False),
              help="Directory for report.html, summary.* and the figures.")
@click.option("--log-x", is_flag=True, help="Logarithmic distance axis on the test-error curves.")
@click.option("--title", default=None, help="Title of the report.")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json on stdout.")
@click.option("--quiet", is_flag=True, help="No tables on the terminal.")
@handle_errors
def report_cmd(run_dirs, out_dir, log_x, title, as_json, quiet) -> None:
    rep = write_report(run_dirs, out_dir, log_x=log_x, title=title)
    for r in rep.summary.get("runs", []):
        if r.get("incomplete"):
            console.print(f"[bold yellow]run {r['name']} is not finished[/]: "
                          + "; ".join(r["incomplete"]) + " — its partial searches are marked in every table",
                          highlight=False, soft_wrap=True)
    if as_json:
        click.echo(rep.files["summary.json"].read_text(encoding="utf-8"))
    if not quiet:
        rcon = results_console(as_json)
        for t in render.report_tables(rep.summary):
            rcon.print(t)
        n_fig = sum(1 for p in rep.files if p.endswith(".png"))
        rcon.print(f"[green]report:[/] {rep.html}  ({n_fig} figures as PNG+SVG, summary.json/.csv/.md in "
                      f"{rep.out_dir})")


@click.command("gate", help=GATE_HELP)
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--policy", "policy_file", default=None, type=click.Path(dir_okay=False),
              help="YAML policy: rules, baseline, confidence, bootstrap, seed, decide, models.")
@click.option("--rule", "rules", multiple=True, metavar="EXPR", help="A rule; repeatable; added to the policy's.")
@click.option("--baseline", default=None, type=click.Path(file_okay=False), help="Baseline run for 'baseline' rules.")
@click.option("--baseline-model", default=None, help="Baseline model to compare with (default: same name).")
@click.option("--allow-mismatch", is_flag=True, default=None,
              help="Judge baseline rules even where the baseline differs from the run in search configuration, "
                   "sample ids or data (the verdict, JSON and JUnit list the differences). Without it such a "
                   "comparison is refused with exit status 2.")
@click.option("--allow-partial", is_flag=True,
              help="Judge a run (or baseline) that is not finished (still running, interrupted, searches with "
                   "missing samples) on the samples stored so far; the verdict, JSON and JUnit say how many "
                   "samples each metric covers. Without it such a run is refused with exit status 2.")
@click.option("--model", "models", multiple=True, metavar="PATTERN",
              help="Apply unscoped rules only to these models (shell patterns; repeatable).")
@click.option("--confidence", type=float, default=None, help="Use a one-sided bootstrap bound at this confidence.")
@click.option("--bootstrap", type=int, default=None, help="Bootstrap resamples.  [default: 1000]")
@click.option("--seed", type=int, default=None, help="Bootstrap seed.  [default: 0]")
@click.option("--decide", type=click.Choice(["point", "tolerant", "strict"]), default=None,
              help="point estimates; tolerant: fail only on evidence of a violation; strict: pass only on "
                   "evidence the rule holds.  [default: tolerant with --confidence, else point]")
@click.option("--junit", "junit_file", default=None, type=click.Path(dir_okay=False), help="Write JUnit XML here.")
@click.option("--json", "as_json", is_flag=True, help="Print the verdict as JSON on stdout.")
@click.option("--json-out", "json_file", default=None, type=click.Path(dir_okay=False), help="Write the JSON here.")
@click.option("--quiet", is_flag=True, help="No verdict table.")
@handle_errors
def gate_cmd(run_dir, policy_file, rules, baseline, baseline_model, allow_mismatch, allow_partial, models,
             confidence, bootstrap, seed, decide, junit_file, as_json, json_file, quiet) -> None:
    policy = load_policy(policy_file, extra_rules=rules, baseline=baseline, baseline_model=baseline_model,
                         models=list(models) or None, confidence=confidence, bootstrap=bootstrap, seed=seed,
                         decide=decide, allow_mismatch=allow_mismatch or None)
    for option, path in (("--junit", junit_file), ("--json-out", json_file)):
        if path:
            _writable(path, option)
    res = evaluate(run_dir, policy, allow_partial=allow_partial)
    if junit_file:
        _write_text(junit_file, junit_xml(res), "--junit")
    if json_file:
        _write_text(json_file, res.to_json(), "--json-out")
    if as_json:
        click.echo(res.to_json())
    if not quiet:
        rcon = results_console(as_json)
        rcon.print(render.gate_table(res))
        if res.incomplete:
            console.print("[bold yellow]unfinished run judged on the samples stored so far[/] (--allow-partial):\n"
                          + "\n".join(f"  - {d}" for d in res.incomplete), highlight=False)
        if res.mismatches:
            console.print("[bold yellow]baseline not comparable[/] (allowed by --allow-mismatch):\n"
                          + "\n".join(f"  - {d}" for d in res.mismatches), highlight=False)
        n_fail = sum(not c.passed for c in res.checks)
        rcon.print("[bold green]gate passed[/]" if res.passed else
                      f"[bold red]gate failed[/]: {n_fail} of {len(res.checks)} checks")
    sys.exit(res.exit_code)


@click.command("cells", help=CELLS_HELP)
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--index", "index", type=int, required=True, help="Test sample (position in the dataset split).")
@click.option("--plane", type=click.Choice(["random", "adversarial"]), default="random", show_default=True)
@click.option("--dataset", default=None, help="Dataset name, or folder:PATH / npz:PATH / safetensors:PATH (default: "
                                              "the bundled MNIST slice for MNIST checkpoints, else the first "
                                              "checkpoint card's dataset).")
@click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Where to look for the data.")
@click.option("--radius", type=float, default=None,
              help="Half-width of the plane in L2 units ([0,1] pixel space).  [default: from the boundary distances]")
@click.option("--resolution", type=int, default=161, show_default=True, help="Grid points per side.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random directions.")
@click.option("--out", "out_dir", default="cells", show_default=True, type=click.Path(file_okay=False),
              help="Directory for cells-<index>-<plane>.png/.svg/.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the boundary distances as JSON on stdout.")
@device_option
@model_data_options(arch=True)
@handle_errors
def cells_cmd(checkpoints, index, plane, dataset, data_root, radius, resolution, seed, out_dir, as_json,
              device, model_opts) -> None:
    from rich.table import Table

    res = checkpoint_cross_sections(list(checkpoints), index=index, plane=plane, dataset=dataset,
                                    data_root=data_root, radius=radius, resolution=resolution, seed=seed,
                                    device=resolve_device(device), options=model_opts)
    paths = save_cells(res, Path(out_dir))
    if as_json:
        click.echo(paths["json"].read_text(encoding="utf-8"))
    t = Table(title=f"Decision cells through sample {index} (label {res.label}), {plane} plane",
              header_style="bold cyan")
    for c in ("Checkpoint", "Prediction", "Max softmax", "Closest boundary in plane (L2)",
              "Its L2 after clipping", "FGSM ε (L2)"):
        t.add_column(c, justify="left" if c == "Checkpoint" else "right")
    for p in res.panels:
        t.add_row(p.name, str(p.center_pred), f"{p.center_conf:.3f}",
                  "none within the plane" if p.boundary is None else f"{p.boundary:.3f}",
                  "–" if p.boundary_l2 is None else f"{p.boundary_l2:.3f}",
                  "–" if p.fgsm_eps is None else f"{p.fgsm_eps:.4f}"
                  + ("" if p.fgsm_l2 is None else f" ({p.fgsm_l2:.3f})"))
    rcon = results_console(as_json)
    rcon.print(t)
    rcon.print(f"[green]figure:[/] {paths['png']} and {paths['svg']}")


def register(group) -> None:
    """Add the report, gate and cells commands to the ``jr-eval`` click group."""
    group.add_command(report_cmd, "report")
    group.add_command(gate_cmd, "gate")
    group.add_command(cells_cmd, "cells")
