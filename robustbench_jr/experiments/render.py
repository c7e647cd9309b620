"""Collect a table's numbers from its results, decide the checks, write table.md / table.json.

Audit numbers are read from the metric registry (:mod:`robustbench_jr.evaluation.metrics`);
the checks are gate rules decided by the gate's evaluator (:mod:`.checks`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from .._version import __version__
from ..attacks import SEARCHES
from ..config import to_dict
from ..errors import InputError
from ..evaluation import metrics
from ..evaluation.audit import summarize_run
from ..evaluation.best import BEST
from ..evaluation.output import card_n_inputs, encode
from ..evaluation.store import ResultStore
from ..models import NORMALIZATIONS
from ..models.checkpoint import sha256_file
from ..reports.report import write_report
from ..runtime import now
from .checks import FAIL, PASS, PENDING, _fmt, _telling_digits, evaluate_check  # noqa: F401
from .configs import config_hash
from .runner import AUDIT_DIR, Runner, _read_card, build_run_config, hardware, hardware_line, read_eval
from .spec import AUDIT_KEYS, CARD_METRICS, EVAL_METRICS, TableSpec, audit_metric


# ---------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------

def _sigma_key(s: Any) -> str:
    return f"{float(s):g}"


def audit_metrics(adir: Path, weights_sha: Optional[str], extra: tuple = ()) -> tuple[dict, str]:
    """Metrics of the one-model audit in ``adir`` and its state (complete | partial | stale | missing).

    Per model: ``audit.clean_accuracy``, ``audit.jacobian_norm``, ``audit.noise_accuracy@SIGMA``
    for every stored σ; per search (and ``best``, the per-sample best known distance over the
    searches) ``audit.SEARCH.KEY`` for :data:`~.spec.AUDIT_KEYS`; and the
    column metrics ``extra`` (``audit.…`` names), all computed by the metric registry."""
    if not (adir / "results.sqlite").is_file():
        return {}, "missing"
    out: dict = {}
    with ResultStore(adir, readonly=True) as store:
        meta = store.meta()
        models = store.models()
        if not models:
            return {}, "missing"
        name = models[0]["model"]
        ident = (meta.get("identity") or {}).get("models") or [{}]
        state = meta.get("status") or "partial"
        if weights_sha and ident[0].get("weights_sha256") not in (None, "", weights_sha):
            state = "stale"
        s = summarize_run(store, [name])["models"][0]
        noise = s.get("noise_accuracy") or []
        stats = metrics.ModelStats(s.get("clean_accuracy"), s.get("jacobian_norm"),
                                   np.array([row["sigma"] for row in noise]) if noise else None,
                                   np.array([row["accuracy"] for row in noise]) if noise else None)
        wanted = [(n, None, ()) for n in ("clean_accuracy", "jacobian_norm")]
        wanted += [("noise_accuracy", None, (float(row["sigma"]),)) for row in noise]
        searches = list(s.get("searches") or {}) + ([BEST] if s.get("best") else [])  # best: the per-sample minimum
        wanted += [(k, search, ()) for search in searches for k in AUDIT_KEYS]
        wanted += [am for am in map(audit_metric, extra) if am is not None and (am[1] is None or am[1] in searches)]
        samples = {search: metrics.Samples.of(store.results(name, search), card_n_inputs(models[0].get("card")))
                   for search in searches}
        for n, search, args in wanted:
            key = "audit." + (f"{search}.{n}" if search else n) + ("@" + _sigma_key(args[0]) if args else "")
            try:
                v = float(metrics.compute(n, samples[search] if search else stats, *args))
            except InputError:
                v = None  # not stored for this run (e.g. no clean accuracy, no input_shape for L0)
            out[key] = int(v) if v is not None and metrics.get(n).count and math.isfinite(v) else v
    return out, ("complete" if state == "complete" else state)


def audit_config_hash(adir: Path) -> Optional[str]:
    """The config hash (run identity) of the audit stored in ``adir`` (None without one)."""
    if not (adir / "results.sqlite").is_file():
        return None
    with ResultStore(adir, readonly=True) as store:
        return store.meta().get("config_hash")


def source_provenance() -> dict:
    """Which code wrote a table: the package version and, when it runs from a git checkout,
    the commit and whether tracked files differ from it (``dirty``)."""
    out: dict = {"package_version": __version__, "commit": None, "dirty": None}
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        if sha.returncode == 0:
            out["commit"] = sha.stdout.strip()
            st = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10)
            out["dirty"] = bool(st.stdout.strip()) if st.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def metric_value(metrics: dict, metric: str) -> Optional[float]:
    if metric.startswith("audit.noise_accuracy@"):
        metric = "audit.noise_accuracy@" + _sigma_key(metric.split("@", 1)[1])
    v = metrics.get(metric)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return float(v)


def collect(runner: Runner, table: TableSpec) -> dict:
    """Every run's status, numbers and cells (ours next to the paper's), and the checks."""
    cat = runner.cat
    rows = []
    for r in table.runs:
        t, tr = cat.resolve(table, r.name)
        ckpt = runner.train_dir(t) / tr.name
        edir = runner.out_dir(table) / r.name
        job = runner.status(table, r)
        full_steps = build_run_config(cat, t, tr).steps
        card = _read_card(ckpt) if job.status in ("done", "stale") else None
        metrics: dict = {}
        notes = []
        status = {"done": "done", "stale": "stale"}.get(job.status, "pending")
        if job.status == "stale":
            notes.append(f"trained with a different config ({job.detail}); numbers not used")
            card = None
        train = (card or {}).get("training") or {}
        sha = None
        if card is not None:
            m = card.get("metrics") or {}
            for k in ("test_accuracy", "jacobian_norm", "jacobian_norm_normalized_input"):
                metrics[k] = m.get(k)
            metrics["wall_time_s"] = train.get("wall_time_s")
            metrics["steps"] = train.get("steps_done")
            sha = sha256_file(ckpt / "model.safetensors")
        ev = read_eval(edir)
        if r.domain_shift:
            ds = (ev.get("domain_shift") or {}).get(r.domain_shift)
            if ds and sha and ds.get("weights_sha256") == sha:
                metrics["domain_shift_accuracy"] = ds.get("accuracy")
                metrics["domain_shift_n"] = ds.get("n")
            elif card is not None:
                notes.append(f"accuracy on {r.domain_shift} pending")
        audit_state = None
        audit_hash = None
        if r.audit is not None and card is not None:
            am, audit_state = audit_metrics(edir / AUDIT_DIR, sha, tuple(c.metric for c in table.columns))
            audit_hash = audit_config_hash(edir / AUDIT_DIR)
            if audit_state == "stale":
                notes.append("audit was run on other weights; rerun the table to redo it")
                am = {}
            elif audit_state != "complete":
                notes.append(f"audit {audit_state}")
            metrics.update(am)
        cells = {}
        searched = set(runner.audit_config(r).attacks) if r.audit is not None else set()
        for c in table.columns:
            v = metric_value(metrics, c.metric)
            cells[c.key] = {"ours": None if v is None else v * c.scale, "paper": r.paper.get(c.key)}
            if _not_measured(c.metric, r.audit is not None, searched):
                cells[c.key]["not_measured"] = True
        how = "trained here" if r.use is None else f"uses {t.name}/{tr.name}"
        if tr.finetune_from:
            how += f" (post-processing of {tr.finetune_from})"
        rows.append({
            "name": r.name, "label": r.label, "status": status, "source": how, "checkpoint": str(ckpt),
            # provenance: the numbers can be checked against the card without retraining
            # (`jr-train table --verify`): the planned config's hash, the trained card's, its metrics
            "config_hash": config_hash(to_dict(runner.config(table, r))),
            "card_config_hash": config_hash(card.get("training") or {}) if card is not None else None,
            "card_metrics": dict(card.get("metrics") or {}) if card is not None else None,
            "weights_sha256": sha, "audit_config_hash": audit_hash,
            "steps": metrics.get("steps"), "full_steps": full_steps,
            "steps_planned": runner.config(table, r).steps, "paper_steps": r.paper_steps,
            "train_wall_time_s": metrics.get("wall_time_s"),
            "audit_wall_time_s": (ev.get("audit") or {}).get("wall_time_s") if r.audit is not None else None,
            "audit_state": audit_state, "device": train.get("device"), "metrics": metrics, "cells": cells,
            "notes": notes + ([r.note] if r.note else []), "row": r.row, "col": r.col,
        })
    by_name = {row["name"]: row for row in rows}
    checks = [evaluate_check(c, table, by_name) for c in table.checks]
    return {"table": table.name, "title": table.title, "paper": table.paper, "description": table.description,
            "results_dir": str(runner.out_dir(table)), "scaling": runner.opt.scaling.describe(),
            "scaled": not runner.opt.scaling.is_full, "hardware": hardware(),
            "columns": [c.__dict__ for c in table.columns], "runs": rows, "checks": checks,
            "pivot": table.pivot, "generated": now(), "provenance": source_provenance(),
            "command": " ".join(["jr-train"] + sys.argv[1:]) if sys.argv and "jr-train" in sys.argv[0] else None}


# ---------------------------------------------------------------------------
# cells
# ---------------------------------------------------------------------------

def _not_measured(metric: str, audited: bool, searched: set) -> bool:
    """A column this run never produces (by design, not yet): an audit metric of a run
    without an audit, or of a search its audit does not run."""
    if not metric.startswith("audit."):
        return False
    if not audited:
        return True
    name = metric.split(".")[1].split("@")[0]
    if name == "noise_accuracy":
        name = "noise"
    return name in SEARCHES and name not in searched


def _cell(cell: dict, digits: int) -> str:
    return "–" if cell.get("not_measured") else _fmt(cell["ours"], digits)


# ---------------------------------------------------------------------------
# output
# ---------------------------------------------------------------------------

def _duration(s: Optional[float]) -> str:
    if s is None:
        return "–"
    s = float(s)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _md(s: Any) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def markdown(data: dict, table: TableSpec) -> str:
    cols = table.columns
    lines = [f"# {data['title']}", ""]
    if data["paper"]:
        lines += [f"Reproduces: {data['paper']}.", ""]
    if data["description"]:
        lines += [data["description"].strip(), ""]
    if data["scaled"]:
        lines += [f"> **Scaled run ({data['scaling']}).** A smoke/CPU run of the tooling: its numbers are not "
                  f"comparable with the paper's, and its checks say nothing about the reproduction.", ""]
    prov = data.get("provenance") or {}
    commit = prov.get("commit")
    lines += [f"- Results directory: `{data['results_dir']}` ({data['scaling']})",
              f"- Hardware of this invocation: {hardware_line(data['hardware'])}",
              f"- Written {data['generated']}" + (f" by `{data['command']}`" if data.get("command") else ""),
              f"- Code: robustbench-jr {prov.get('package_version', '?')}, commit "
              + (f"`{commit}`" + (" (with uncommitted changes)" if prov.get("dirty") else "") if commit
                 else "unknown (not a git checkout)"), ""]

    lines += ["## Results", ""]
    with_paper = {c.key for c in cols if any(r["cells"][c.key]["paper"] is not None for r in data["runs"])}
    head = ["Run"]
    for c in cols:
        head += [f"{c.label} (ours)", f"{c.label} (paper)"] if c.key in with_paper else [c.label]
    head += ["Steps: ours / paper", "Training time", "Audit time", "Device", "Status"]
    lines.append("| " + " | ".join(_md(h) for h in head) + " |")
    lines.append("|" + "---|" * len(head))
    for row in data["runs"]:
        cells = [_md(row["label"])]
        for c in cols:
            cell = row["cells"][c.key]
            cells.append(_cell(cell, c.digits))
            if c.key in with_paper:
                cells.append("–" if cell["paper"] is None else f"{cell['paper']:g}")
        steps = row["steps"] if row["steps"] is not None else f"({row['steps_planned']} planned)"
        ps = row["paper_steps"] if row["paper_steps"] is not None else "–"
        cells += [f"{steps} / {ps}", _duration(row["train_wall_time_s"]), _duration(row["audit_wall_time_s"]),
                  _md(row["device"] or "–"), row["status"] + (f" — {'; '.join(row['notes'])}" if row["notes"] else "")]
        lines.append("| " + " | ".join(_md(x) for x in cells) + " |")
    lines.append("")
    if any(cell.get("not_measured") for r in data["runs"] for cell in r["cells"].values()):
        lines += ["– : not measured for that run (its audit does not run that search).", ""]
    lines.append("Run directories: " + ", ".join(f"`{r['name']}` → {r['source']}" for r in data["runs"]) + ".")
    lines.append("")

    if table.pivot:
        pv = table.pivot
        col = table.column(pv["column"])
        lines += [f"### {col.label}: ours / paper", ""]
        lines.append("| | " + " | ".join(_md(c) for c in pv["cols"]) + " |")
        lines.append("|" + "---|" * (len(pv["cols"]) + 1))
        for rl in pv["rows"]:
            cells = [_md(rl)]
            for cl in pv["cols"]:
                match = [r for r in data["runs"] if r["row"] == rl and r["col"] == cl]
                if not match:
                    cells.append("")
                    continue
                cell = match[0]["cells"][col.key]
                paper = "–" if cell["paper"] is None else f"{cell['paper']:g}"
                cells.append(f"{_cell(cell, col.digits)} / {paper}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")

    if data["checks"]:
        lines += ["## Checks", ""]
        lines.append("| Check | Acceptance criterion | Result | Detail |")
        lines.append("|---|---|---|---|")
        for c in data["checks"]:
            res = f"**{c['status']}**" if c["status"] != PENDING else c["status"]
            lines.append(f"| {_md(c['name'])} | {'yes' if c['acceptance'] else 'no'} | {res} | "
                         f"{_md(c['detail'])}{(' — ' + _md(c['note'])) if c['note'] else ''} |")
        acc = [c for c in data["checks"] if c["acceptance"]]
        n_pass = sum(c["status"] == PASS for c in acc)
        n_pend = sum(c["status"] == PENDING for c in acc)
        if acc:
            lines += ["", f"Acceptance: {n_pass} of {len(acc)} acceptance checks pass"
                          + (f", {n_pend} pending" if n_pend else "") + ".", ""]
        else:
            lines += ["", "This table has no acceptance checks of the issue; its checks are informational.", ""]
    extras = []
    if data.get("report"):
        extras.append(f"- Audit report (figures, curves, ρ̂ tables): `{data['report']}`")
    if data.get("report_error"):
        extras.append(f"- The audit report could not be written: {data['report_error']}")
    for f in data.get("figures") or []:
        extras.append(f"- Figure: `{f}`")
    if extras:
        lines += ["## Figures", ""] + extras + [""]
    lines += ["## Provenance", "",
              "Each run's training-config hash (of the table's resolved config, and of the card's `training` "
              "section), its weights and the card's metrics are in table.json; `jr-train table --verify` re-checks "
              "these numbers against the cards present, without retraining.", "",
              "| Run | Config hash | Card's config hash | Weights (sha256) | Audit config hash |",
              "|---|---|---|---|---|"]
    for row in data["runs"]:
        lines.append(f"| {_md(row['label'])} | `{row.get('config_hash') or '–'}` | "
                     f"`{row.get('card_config_hash') or '–'}` | "
                     f"{('`' + row['weights_sha256'][:16] + '…`') if row.get('weights_sha256') else '–'} | "
                     f"`{row.get('audit_config_hash') or '–'}` |")
    lines.append("")
    lines += ["## Columns", ""]
    for c in cols:
        what = CARD_METRICS.get(c.metric) or EVAL_METRICS.get(c.metric) or c.metric
        lines.append(f"- {c.label}: `{c.metric}`" + (f" × {c.scale:g}" if c.scale != 1 else "") + f" — {what}")
    lines.append("")
    return "\n".join(lines)


def training_curves(runner: Runner, table: TableSpec, out: Path) -> Optional[Path]:
    """Held-out accuracy and ‖J‖_F against the step for the table's runs (Hoffman Fig. 2)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    series = []
    for r in table.runs:
        t, tr = runner.cat.resolve(table, r.name)
        d = runner.train_dir(t) / tr.name
        f = d / "metrics.jsonl"
        if not f.is_file() or not (d / "card.yaml").is_file():
            continue
        card = yaml.safe_load((d / "card.yaml").read_text()) or {}
        std = NORMALIZATIONS.get(card.get("normalization", ""), ((0,), (1,)))[1]
        scale, space = (std[0], "normalised input") if len(std) == 1 else (1.0, "pixel space")
        pts = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        pts = [p for p in pts if "heldout_acc" in p]
        if pts:
            series.append((r.label, [p["step"] for p in pts], [p["heldout_acc"] for p in pts],
                           [p["heldout_jacobian_norm"] * scale for p in pts], space))
    if not series:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, steps, acc, jn, space in series:
        axes[0].plot(steps, [100 * a for a in acc], marker="o", ms=3, label=label)
        axes[1].plot(steps, jn, marker="o", ms=3, label=label)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("held-out accuracy (%)")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel(f"mean ‖J‖_F ({series[0][4]})")
    axes[1].set_yscale("log")
    from matplotlib.ticker import FormatStrFormatter  # plain numbers on the log axis, not 9×10⁻¹

    for fmt in (axes[1].yaxis.set_major_formatter, axes[1].yaxis.set_minor_formatter):
        fmt(FormatStrFormatter("%.3g"))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{table.title}: held-out samples during training", fontsize=10)
    fig.tight_layout()
    path = out / "training_curves.png"
    fig.savefig(path, dpi=130)
    fig.savefig(out / "training_curves.svg")
    plt.close(fig)
    return path


def write_outputs(runner: Runner, table: TableSpec, data: dict) -> None:
    out = runner.out_dir(table)
    out.mkdir(parents=True, exist_ok=True)
    if table.report:
        audited = [r.name for r in table.runs
                   if r.audit is not None and (out / r.name / AUDIT_DIR / "results.sqlite").is_file()]
        if audited:
            try:
                # legends name each model as the table does (a reused checkpoint is not
                # shown under the name of the run it came from)
                write_report([str(out / n / AUDIT_DIR) for n in audited], out / "report", title=table.title,
                             names=audited)
                data["report"] = str(out / "report" / "report.html")
            except Exception as exc:  # the table must not be lost over a figure
                data["report_error"] = f"{type(exc).__name__}: {exc}"
                runner.warn(f"audit report not written: {data['report_error']}")
    if "training_curves" in table.figures:
        try:
            p = training_curves(runner, table, out)
            if p is not None:
                data.setdefault("figures", []).append(str(p))
        except Exception as exc:
            runner.warn(f"training curves not drawn: {type(exc).__name__}: {exc}")
    files = (("table.md", markdown(data, table)),
             ("table.json", json.dumps(encode(data, infinity="inf"), indent=2, ensure_ascii=False) + "\n"))
    for name, text in files:
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)
    docs = runner.opt.docs
    if docs is not None:
        if data["scaled"]:
            runner.warn(f"table {table.name} is a scaled run ({data['scaling']}): not copied to {docs}")
        else:
            Path(docs).mkdir(parents=True, exist_ok=True)
            for name, text in files:
                target = Path(docs) / f"{table.name}{Path(name).suffix}"
                tmp = target.with_name(target.name + ".tmp")
                tmp.write_text(text, encoding="utf-8")
                os.replace(tmp, target)
            runner.say("written", f"table {table.name} copied to {Path(docs) / table.name}.md and .json")
    acc = [c for c in data["checks"] if c["acceptance"]]
    summary = ", ".join(f"{c['name']}: {c['status']}" for c in acc) or "no acceptance checks"
    runner.say("written", f"table {out / 'table.md'} — {summary}")
