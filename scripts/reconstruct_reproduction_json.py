#!/usr/bin/env python
"""Write docs/reproduction/<table>.json for published tables whose table.json was not kept.

The reproduction tables under docs/reproduction/ were published as markdown only (their
results/ directories are not in the repository). This reads each published
``<table>.md`` back — its numbers as shown (rounded to the column's digits), the checks,
steps and statuses — and adds what the experiment spec determines without training: each
run's training-config hash (:func:`robustbench_jr.experiments.configs.config_hash` of the
config the table resolves). The commit recorded is the one that published the markdown.
The file says it is ``reconstructed``: ``jr-train table --verify`` then compares the
present cards' numbers to half a unit of the shown digit. A table written by
``jr-train table --docs docs/reproduction`` replaces it with the full record (card
metrics, weights hashes, full-precision cells).

    .venv/bin/python scripts/reconstruct_reproduction_json.py [--docs docs/reproduction] [--experiments experiments]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

from robustbench_jr.config import to_dict
from robustbench_jr.experiments.configs import build_run_config, config_hash
from robustbench_jr.experiments.spec import Catalog, load_table, table_dirs

REPO = Path(__file__).resolve().parents[1]


def _cells(line: str) -> list[str]:
    parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
    return [p.strip().replace("\\|", "|") for p in parts]


def _table_after(lines: list[str], heading: str) -> list[list[str]]:
    """The first markdown table under ``## heading``: header row first."""
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == f"## {heading}")
    except StopIteration:
        return []
    rows = []
    for ln in lines[start + 1:]:
        if ln.startswith("## "):
            break
        if ln.startswith("|"):
            if re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", ln.strip()):
                continue
            rows.append(_cells(ln))
        elif rows:
            break
    return rows


def _number(text: str):
    t = text.strip().replace("**", "")
    if t in ("–", "-", "", "pending"):
        return None
    if t == "∞":
        return "inf"
    try:
        return float(t)
    except ValueError:
        return None


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def reconstruct(md_path: Path, table_dir: Path, cat: Catalog) -> dict:
    text = md_path.read_text(encoding="utf-8")
    lines = text.splitlines()
    table = load_table(table_dir)
    cat.add(table)
    written = re.search(r"^- Written (\S+)(?: by `([^`]*)`)?", text, re.M)
    results = re.search(r"^- Results directory: `([^`]*)` \(([^)]*)\)", text, re.M)
    head, *body = _table_after(lines, "Results") or [[]]
    by_label = {r.label: r for r in table.runs}
    col_of = {}
    for i, h in enumerate(head):
        for c in table.columns:
            if h == c.label or h == f"{c.label} (ours)":
                col_of[i] = (c.key, "ours")
            elif h == f"{c.label} (paper)":
                col_of[i] = (c.key, "paper")
    runs = []
    for row in body:
        label = row[0]
        r = by_label.get(label)
        if r is None:
            raise SystemExit(f"{md_path}: row {label!r} is not a run of {table_dir / 'table.yaml'}")
        t, tr = cat.resolve(table, r.name)
        cfg = to_dict(build_run_config(cat, t, tr))
        cells = {c.key: {"ours": None, "paper": r.paper.get(c.key)} for c in table.columns}
        for i, (key, which) in col_of.items():
            v = _number(row[i])
            if which == "ours":
                cells[key]["ours"] = v
                if row[i].strip() == "–":
                    cells[key]["shown"] = "–"
        steps_i = head.index("Steps: ours / paper") if "Steps: ours / paper" in head else None
        status_i = head.index("Status") if "Status" in head else None
        steps = None
        if steps_i is not None:
            m = re.match(r"\s*(\d+)", row[steps_i])
            steps = int(m.group(1)) if m else None
        status = row[status_i].split(" — ")[0].strip() if status_i is not None else None
        runs.append({"name": r.name, "label": label, "status": status, "steps": steps,
                     "source": f"{t.name}/{tr.name}", "config_hash": config_hash(cfg), "card_config_hash": None,
                     "card_metrics": None, "weights_sha256": None, "audit_config_hash": None, "cells": cells,
                     "notes": [row[status_i].split(" — ", 1)[1]] if status_i is not None and " — " in row[status_i]
                     else []})
    checks = []
    chead, *cbody = _table_after(lines, "Checks") or [[]]
    for row in cbody:
        if len(row) >= 4:
            checks.append({"name": row[0], "acceptance": row[1] == "yes", "status": row[2].replace("**", ""),
                           "detail": row[3]})
    rel = md_path.resolve().relative_to(REPO)
    commit = _git("log", "-1", "--format=%H", "--", str(rel))
    return {
        "table": table.name, "title": table.title, "paper": table.paper,
        "results_dir": results.group(1) if results else None, "scaling": results.group(2) if results else None,
        "scaled": False, "generated": written.group(1) if written else None,
        "command": written.group(2) if written else None,
        "provenance": {"package_version": None, "commit": commit or None, "dirty": None},
        "reconstructed": {
            "from": str(rel), "commit": commit or None,
            "note": ("read back from the published markdown: cells are the values as shown (rounded to the "
                     "column's digits); config_hash is the hash of the training config the table resolves "
                     "(config_hash of experiments/<table>); card metrics and weights hashes were not "
                     "published. `jr-train table --verify` compares to half a unit of the shown digit."),
        },
        "columns": [c.__dict__ for c in table.columns], "runs": runs, "checks": checks,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", default=str(REPO / "docs" / "reproduction"))
    ap.add_argument("--experiments", default=str(REPO / "experiments"))
    ap.add_argument("--force", action="store_true", help="Overwrite a table.json that is not reconstructed.")
    args = ap.parse_args(argv)
    cat = Catalog(args.experiments)
    dirs = {d.name: d for d in table_dirs(args.experiments)}
    for name, d in dirs.items():
        cat.add(load_table(d))
    for md in sorted(Path(args.docs).glob("*.md")):
        if md.stem not in dirs:
            continue
        out = md.with_suffix(".json")
        if out.is_file() and not args.force:
            old = json.loads(out.read_text(encoding="utf-8"))
            if old.get("reconstructed") is None:
                print(f"keep {out}: written by jr-train table (not reconstructed)")
                continue
        data = reconstruct(md, dirs[md.stem], cat)
        out.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"wrote {out} ({len(data['runs'])} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
