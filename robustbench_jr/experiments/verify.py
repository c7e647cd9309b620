"""Re-check a table's recorded numbers against the cards (and audits) present — no retraining.

A table.json (written by `jr-train table`, committed under ``docs/reproduction/``) records,
per run, the hash of its training config, the trained card's config hash and metrics, and
every cell. :func:`verify` collects the same table again from the results present (the
cards of the trained runs and their stored audits; nothing is trained or attacked) and
compares:

* the training-config hash the table recorded with the hash of the present card's
  ``training`` section (the card is the run it says it is);
* every recorded card metric with the present card's (relative tolerance
  :data:`RTOL`);
* every recorded cell with the one collected now: to :data:`RTOL` for a generated
  table.json, to half a unit of the shown digit for one reconstructed from the published
  markdown (``reconstructed`` in the file).

A run whose card is not present is reported as not checked; an audit cell whose audit is
not present likewise. The verdict passes when at least one run was checked and nothing
differs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, InputError
from .render import collect
from .runner import Runner
from .spec import TableSpec

__all__ = ["RTOL", "load_recorded", "verify"]

#: relative tolerance of recorded full-precision numbers (they are re-reads of the same files)
RTOL = 1e-9


def load_recorded(path: str | Path) -> dict:
    """A recorded table.json (strict JSON; ``"inf"`` strings read back as floats)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no recorded table to verify; write one with `jr-train table ... --docs DIR` or "
                         f"pass --against FILE")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"{p}: not a JSON table ({exc})") from None
    if not isinstance(data, dict) or "runs" not in data or "table" not in data:
        raise InputError(f"{p}: not a table.json of `jr-train table` (no 'table'/'runs')")
    return data


def _num(v: Any) -> Optional[float]:
    if v in ("inf", "-inf"):
        return float(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def _same(a: float, b: float, abs_tol: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=abs_tol)


def verify(runner: Runner, table: TableSpec, recorded: dict) -> dict:
    """Compare ``recorded`` (a table.json of ``table``) with the numbers the results present
    give now; see the module docstring. Returns ``{"table", "passed", "checked", "runs": [...]}``
    with per run its ``status`` (``verified``, ``differs``, ``not checked``) and the ``checks``."""
    if recorded.get("table") != table.name:
        raise ConfigError(f"the recorded table is {recorded.get('table')!r}, not {table.name!r}")
    reconstructed = recorded.get("reconstructed") is not None
    data = collect(runner, table)
    now = {row["name"]: row for row in data["runs"]}
    out_runs = []
    for rec in recorded["runs"]:
        name = rec.get("name")
        cur = now.get(name)
        entry: dict = {"name": name, "label": rec.get("label", name), "checks": []}
        out_runs.append(entry)
        if cur is None:
            entry.update(status="differs", note=f"the table has no run {name!r} now")
            continue
        if cur.get("card_metrics") is None:
            entry.update(status="not checked", note=f"no card at {cur['checkpoint']} ({cur['status']})")
            continue
        checks = entry["checks"]
        want = rec.get("card_config_hash") or rec.get("config_hash")
        if want:
            checks.append({"what": "training config hash", "recorded": want, "present": cur["card_config_hash"],
                           "ok": want == cur["card_config_hash"]})
        for k, v in (rec.get("card_metrics") or {}).items():
            rv, pv = _num(v), _num((cur["card_metrics"] or {}).get(k))
            if rv is None:
                if v is not None and v != (cur["card_metrics"] or {}).get(k):
                    checks.append({"what": f"card {k}", "recorded": v, "present": cur["card_metrics"].get(k),
                                   "ok": False})
                continue
            checks.append({"what": f"card {k}", "recorded": rv, "present": pv,
                           "ok": pv is not None and _same(rv, pv, 0.0)})
        for key, cell in (rec.get("cells") or {}).items():
            rv = _num((cell or {}).get("ours"))
            if rv is None or (cell or {}).get("not_measured"):
                continue
            pv = _num(((cur.get("cells") or {}).get(key) or {}).get("ours"))
            col = next((c for c in table.columns if c.key == key), None)
            if col is None:
                checks.append({"what": f"cell {key}", "recorded": rv, "present": None, "ok": False,
                               "note": "the table has no such column now"})
                continue
            if pv is None:
                checks.append({"what": f"cell {col.label}", "recorded": rv, "present": None, "ok": None,
                               "note": "not checked: not measured here (its audit or evaluation is not present)"})
                continue
            tol = 0.5 * 10.0 ** (-col.digits) + 1e-12 if reconstructed else 0.0
            checks.append({"what": f"cell {col.label}", "recorded": rv, "present": pv, "ok": _same(rv, pv, tol)})
        decided = [c for c in checks if c["ok"] is not None]
        if not decided:
            entry.update(status="not checked", note="nothing recorded to compare")
        elif all(c["ok"] for c in decided):
            entry["status"] = "verified"
        else:
            entry["status"] = "differs"
    checked = sum(r["status"] in ("verified", "differs") for r in out_runs)
    passed = checked > 0 and all(r["status"] != "differs" for r in out_runs)
    return {"table": table.name, "passed": passed, "checked": checked, "runs": out_runs,
            "reconstructed": reconstructed, "results_dir": data["results_dir"],
            "recorded_provenance": recorded.get("provenance")}
