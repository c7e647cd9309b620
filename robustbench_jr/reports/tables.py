"""Summary tables (Hoffman Table 1 / Jakubovitz–Giryes Table 3 style): rows, Markdown, CSV, JSON.

Every number comes from the metric registry (:mod:`robustbench_jr.evaluation.metrics`);
the terminal rendering of these rows (rich) lives in :mod:`robustbench_jr.cli.render`.
``summary.json`` is the ``robustbench-jr/report/v1`` document of the output schema
(:mod:`robustbench_jr.evaluation.output`); :func:`run_block_of` builds the run block of a stored
run that it and the gate's JSON share."""

from __future__ import annotations

import csv
import io
import math
from typing import Any, Optional

from ..evaluation import metrics, output
from ..evaluation.best import BEST, found_by
from .runs import ModelData, RunData, search_kind, search_label

CHECKPOINT_CAPTION = (
    "Clean test accuracy and mean Frobenius norm of the input–logit Jacobian ‖J‖_F per checkpoint, as stored "
    "by the audit over its N samples, w.r.t. the [0,1] pixel input and w.r.t. the normalised input "
    "(x − mean)/std (Hoffman et al.'s space), exact or estimated by random projections (± standard error); "
    "beside them the checkpoint card's values over the whole test set (its N)."
)
SEARCH_CAPTION = (
    "Per checkpoint × search. ρ̂_adv = mean of ‖δ_i‖₂ / ‖x_i‖₂ over the samples the search fooled, "
    "already-misclassified samples included with δ = 0 (n_ρ says how many it averages; samples not fooled "
    "within the budget are excluded and counted under Not fooled). ρ̂_adv (attacked) leaves the clean "
    "errors out. Success rate = fooled / N. Median/mean L2 (and L0 for JSMA) are over the same fooled samples. "
    "Protocol: paper = the papers' protocol; otherwise what departs from it. best known = per sample the "
    "smallest verified L2 over every search run (the headline estimate)."
)

#: the metrics whose definitions are written next to every table (summary.json "definitions")
DEFINED_METRICS = ("n", "already_misclassified", "success_rate", "not_fooled", "rho_adv", "rho_adv_attacked",
                   "median_l2", "mean_l2", "error_at")

SEARCH_FIELDS = ["checkpoint", "run", "model", "search", "n", "n_fooled", "already_misclassified", "not_fooled",
                 "success_rate", "rho_adv", "rho_adv_attacked", "n_rho", "median_l2", "mean_l2", "median_l0",
                 "mean_l0", "median_l0_frac", "clean_accuracy", "jacobian_norm", "protocol"]


def _meta_summary(meta: dict) -> dict:
    keep = {}
    for k in ("seed", "dataset", "device", "split", "n", "versions", "created", "started", "finished", "command"):
        if k in meta:
            keep[k] = meta[k]
    return keep


def search_metrics(r: dict, n_inputs: Optional[int] = None, l0: bool = False) -> dict:
    """The numbers of one checkpoint × search row (:func:`robustbench_jr.evaluation.output.search_numbers`):
    :func:`~robustbench_jr.evaluation.metrics.summarize` plus ``n_rho`` and, with ``l0`` (JSMA),
    ``median_l0, mean_l0`` over the fooled samples (and their fractions of the ``n_inputs`` input
    components when that is known)."""
    return output.search_numbers(r, n_inputs, l0)


def partial_note(row: dict) -> str:
    """`` (partial: 3 of 64)`` for a search row whose numbers miss samples of an unfinished run."""
    if row.get("complete", True):
        return ""
    n = row.get("n_expected")
    return f" (partial: {row.get('n')} of {n} samples)" if n is not None else " (partial)"


def _search_block(m: ModelData, s: str, r: dict) -> dict:
    """The search block of ``m`` × ``s`` (``best`` included) from its stored rows."""
    is_jsma = search_kind(s) == "jsma"
    numbers = search_metrics(r, m.n_inputs if is_jsma else None, l0=is_jsma)
    n_expected = m.samples(s)[1]
    if s == BEST:
        return output.search_block(s, numbers, config=None, protocol=f"best of {', '.join(m.run_searches)}",
                                   n_expected=n_expected, complete=not m.partial(s), over=m.run_searches,
                                   found_by=found_by(r))
    settings = m.settings.get(s) or {}
    return output.search_block(s, numbers, config=settings.get("config"), protocol=settings.get("protocol"),
                               n_expected=n_expected, complete=not m.partial(s))


def model_block_of(m: ModelData) -> dict:
    """The model block (:func:`robustbench_jr.evaluation.output.model_block`) of a stored model,
    with its display ``label`` and its ``run``'s name."""
    blocks = {s: _search_block(m, s, r) for s, r in m.results.items()}
    best = blocks.pop(BEST, None)
    return output.model_block(
        name=m.name, checkpoint=m.checkpoint, dataset=m.card.get("dataset"), n=m.clean_n(),
        clean_accuracy=m.clean_acc(), jacobian_norm=m.jacobian_norm, jacobian=m.jacobian,
        noise_accuracy=[{"sigma": s, "accuracy": a, "n": k} for s, a, k in m.noise], searches=blocks, best=best,
        label=m.label or m.name, run=m.run.name, architecture=m.card.get("architecture"))


def run_block_of(run: RunData, role: Optional[str] = None) -> dict:
    """The run block (:func:`robustbench_jr.evaluation.output.run_block`) of a stored run: its
    name, budget, seed, whether it is finished and every model's block; ``role`` (the gate:
    ``run`` or ``baseline``) when given."""
    extra = {"name": run.name, "meta": _meta_summary(run.meta)}
    if role is not None:
        extra["role"] = role
    budget = output.budget_block((run.meta.get("config") or {}).get("budget"))
    return output.run_block(run_dir=str(run.run_dir), budget=budget, seed=run.meta.get("seed"),
                            complete=not run.incomplete, incomplete=list(run.incomplete),
                            models=[model_block_of(m) for m in run.models], **extra)


def build_summary(runs: list[RunData]) -> dict:
    """Everything the tables show, as plain data (also the content of ``summary.json``): the run
    blocks (``runs``: every model's numbers per search, its config, protocol and N) and the table
    rows read from them (``checkpoints``, and ``searches``: one search block per checkpoint ×
    search with the checkpoint's columns, the best known distance last)."""
    blocks = [run_block_of(r) for r in runs]
    checkpoints, rows = [], []
    for run, rb in zip(runs, blocks):
        for m, mb in zip(run.models, rb["models"]):
            checkpoints.append({
                "checkpoint": mb["label"], "run": run.name, "model": m.name, "source": m.checkpoint,
                "architecture": mb["architecture"], "dataset": mb["dataset"],
                "clean_accuracy": mb["clean_accuracy"], "jacobian_norm": mb["jacobian_norm"], "n": mb["n"],
                "jacobian": mb["jacobian"],
                "searches": m.searches,
                "noise_accuracy": mb["noise_accuracy"],
            })
            for blk in list(mb["searches"].values()) + ([mb["best"]] if mb["best"] is not None else []):
                rows.append({"checkpoint": mb["label"], "run": run.name, "model": m.name, "search": blk["search"],
                             "search_label": search_label(blk["search"]), **blk,
                             "clean_accuracy": mb["clean_accuracy"], "jacobian_norm": mb["jacobian_norm"]})
    return {
        "definitions": metrics.definitions(DEFINED_METRICS),
        "captions": {"checkpoints": CHECKPOINT_CAPTION, "searches": SEARCH_CAPTION},
        "runs": blocks,
        "checkpoints": checkpoints,
        "searches": rows,
    }


# ------------------------------------------------------------- formatting ----
def fmt(v: Any, kind: str = "num") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "int":
        return str(int(v))
    if kind == "rho":
        return f"{v:.4f}"
    if isinstance(v, int) or float(v).is_integer() and abs(v) >= 100:
        return str(int(v))
    return f"{v:#.3g}" if 1e-3 <= abs(v) < 1e4 else f"{v:.3g}"


def _l0_cell(row: dict) -> str:
    if row.get("median_l0") is None:
        return "–"
    s = f"{row['median_l0']:g}"
    if row.get("median_l0_frac") is not None:
        s += f" ({100 * row['median_l0_frac']:.1f}% px)"
    return s


def jacobian_cell(j: Optional[dict], space: str) -> str:
    """``13.3 (exact, N=100)``, ``13.2 ± 0.13 (estimate, N=100)``, ``–``: a ‖J‖_F with its N."""
    if not j or j.get(space) is None:
        return "not measured" if j and j.get("method") == "off" else "–"
    se = j.get(f"se_{space}")
    pm = f" ± {fmt(se)}" if j.get("method") == "estimate" and se is not None else ""
    n = j.get("n")
    return f"{fmt(j[space])}{pm} ({j.get('method', 'exact')}, N={'?' if n is None else n})"


def checkpoint_table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    head = ["Checkpoint", "Run", "Clean accuracy", "‖J‖_F pixel", "‖J‖_F normalised input",
            "Card ‖J‖_F pixel / normalised (N)", "N", "Source"]
    body = []
    for c in summary["checkpoints"]:
        j = c.get("jacobian") or ({"method": "exact", "pixel": c["jacobian_norm"], "n": c["n"]}
                                  if c.get("jacobian_norm") is not None else None)
        card = (j or {}).get("card")
        card_cell = "–" if not card else (f"{fmt(card.get('pixel'))} / {fmt(card.get('normalized'))} "
                                          f"(N={card.get('n') if card.get('n') is not None else '?'})")
        body.append([c["checkpoint"], c["run"], fmt(c["clean_accuracy"], "pct"), jacobian_cell(j, "pixel"),
                     jacobian_cell(j, "normalized"), card_cell, fmt(c["n"], "int"), str(c["source"])])
    return head, body


def settings_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """Each run's search settings: per run, model and search its protocol and resolved config."""
    head = ["Run", "Model", "Search", "Protocol", "Config"]
    body = []
    for r in summary["runs"]:
        for m in r["models"]:
            for s, v in m["searches"].items():
                if v.get("config") is None:  # a store that recorded no config (by hand, older versions)
                    continue
                cfg = ", ".join(f"{k}={_cfg_value(x)}" for k, x in v["config"].items())
                body.append([r["name"], m["name"], search_label(s), str(v.get("protocol") or "–"), cfg])
    return head, body


def _cfg_value(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "null"}[v]
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def search_table_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    has_l0 = any(r.get("median_l0") is not None for r in summary["searches"])
    head = ["Checkpoint", "Search", "ρ̂_adv", "n_ρ", "ρ̂_adv (attacked)", "Success rate", "Not fooled", "N",
            "Median L2", "Mean L2"]
    if has_l0:
        head.append("Median L0 (JSMA)")
    head.append("Protocol")
    body = []
    for r in summary["searches"]:
        line = [r["checkpoint"], r["search_label"] + partial_note(r), fmt(r["rho_adv"], "rho"),
                fmt(r["n_rho"], "int"),
                fmt(r.get("rho_adv_attacked"), "rho"),
                fmt(r["success_rate"], "pct"), fmt(r["not_fooled"], "int"), fmt(r["n"], "int"),
                fmt(r["median_l2"]), fmt(r["mean_l2"])]
        if has_l0:
            line.append(_l0_cell(r))
        line.append(str(r.get("protocol") or "–"))
        body.append(line)
    return head, body


def pivot_rows(summary: dict) -> tuple[list[str], list[list[str]]]:
    """ρ̂_adv at a glance: one row per search, one column per checkpoint (side by side across runs)."""
    cks = [c["checkpoint"] for c in summary["checkpoints"]]
    searches: list[str] = []
    for r in summary["searches"]:
        if r["search_label"] not in searches:
            searches.append(r["search_label"])
    cell = {(r["search_label"], r["checkpoint"]): r for r in summary["searches"]}
    body = []
    for s in searches:
        line = [s]
        for c in cks:
            r = cell.get((s, c))
            line.append("–" if r is None else f"{fmt(r['rho_adv'], 'rho')} ({fmt(r['success_rate'], 'pct')})"
                        + ("" if r.get("complete", True) else " partial"))
        body.append(line)
    return ["Search"] + cks, body


PIVOT_CAPTION = "ρ̂_adv per search (rows) and checkpoint (columns), with the success rate in brackets; larger ρ̂_adv is more robust."
SETTINGS_CAPTION = ("Each run's search settings: the protocol (paper = the papers' protocol; otherwise what departs "
                    "from it) and the resolved config every number of that search used.")


#: columns of the fooling-distance table shown on the terminal (the files have all of them)
TERMINAL_COLUMNS = ("Checkpoint", "Search", "ρ̂_adv", "Success rate", "Not fooled", "Median L2", "Protocol")


def terminal_tables(summary: dict) -> list[tuple[str, str, tuple[list[str], list[list[str]]]]]:
    """``(title, caption, (head, body))`` of the tables shown on the terminal: checkpoints, a
    compact fooling-distance table and ρ̂_adv side by side (every column is in summary.md/.csv/.json)."""
    head, body = search_table_rows(summary)
    keep = [head.index(c) for c in TERMINAL_COLUMNS]
    short = {"Success rate": "Success", "Not fooled": "Not fooled", "Median L2": "Med. L2"}
    compact = ([short.get(head[i], head[i]) for i in keep], [[line[i] for i in keep] for line in body])
    return [("Checkpoints", CHECKPOINT_CAPTION, checkpoint_table_rows(summary)),
            ("Fooling distances", SEARCH_CAPTION, compact),
            ("ρ̂_adv side by side", PIVOT_CAPTION, pivot_rows(summary))]


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(summary: dict, title: str = "Robustness report") -> str:
    parts = [f"# {title}", ""]
    for r in summary["runs"]:
        meta = ", ".join(f"{k}={v}" for k, v in r["meta"].items() if not isinstance(v, (dict, list)))
        parts.append(f"- run `{r['name']}` ({r['run_dir']}): {', '.join(m['name'] for m in r['models'])}"
                     + (f" — {meta}" if meta else ""))
    parts.append("")
    for title2, caption, (head, body) in (
        ("Checkpoints", CHECKPOINT_CAPTION, checkpoint_table_rows(summary)),
        ("ρ̂_adv side by side", PIVOT_CAPTION, pivot_rows(summary)),
        ("Fooling distances", SEARCH_CAPTION, search_table_rows(summary)),
        ("Search settings", SETTINGS_CAPTION, settings_rows(summary)),
    ):
        left = 1 if head[0] == "Search" else 2
        parts += [f"## {title2}", "", "| " + " | ".join(head) + " |",
                  "|" + "|".join("---" if i < left or h == "Source" else "---:" for i, h in enumerate(head)) + "|"]
        parts += ["| " + " | ".join(_md_escape(c) for c in line) + " |" for line in body]
        parts += ["", f"*{caption}*", ""]
    return "\n".join(parts)


def _csv_value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return v


def to_csv(summary: dict) -> str:
    """One row per checkpoint × search with the checkpoint's columns repeated."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SEARCH_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in summary["searches"]:
        w.writerow({k: _csv_value(r.get(k)) for k in SEARCH_FIELDS})
    return buf.getvalue()




def to_json(summary: dict, extra: Optional[dict] = None) -> str:
    """``summary.json``: the ``robustbench-jr/report/v1`` document of :func:`build_summary`'s
    dict (plus ``extra``), non-finite numbers as null (:mod:`robustbench_jr.evaluation.output`)."""
    data = dict(summary)
    if extra:
        data.update(extra)
    return output.dumps(output.document("report", data))
