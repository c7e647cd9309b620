"""The best known distance: per sample, the smallest verified L2 fooling distance over every
search run on it, and which search found it.

No single search dominates on every sample (AttackBench's finding across libraries), so
the per-sample minimum is the audit's headline robustness estimate; the per-search rows
stay beside it. Every stored distance is already verified (the searches re-check each
adversarial with a fresh forward pass before it is counted), so the minimum of verified
distances is itself verified.

``best`` is a reserved name: it reads like a search everywhere a search is named
(``store.results(model, "best")``, ``result.curve("best")``, the gate's ``rho_adv[best]``,
the report's rows and curves) but is computed from the stored rows, never stored.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["BEST", "best_rows", "found_by"]

#: the name under which the best known distance appears beside the searches
BEST = "best"


def best_rows(per_search: Mapping[str, Mapping[str, np.ndarray]],
              order: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """The per-sample best of ``per_search`` (search name → the store's columns, ordered by
    sample id): the store's columns for every sample id any search holds, each taken from the
    row with the smallest L2 (ties: the first search in ``order``, default the mapping's
    order), plus ``search`` (the winning search's name; ``""`` where no search fooled the
    sample) and ``n_searches`` (how many searches hold the sample). ``n_forward`` and
    ``n_grad`` are summed over the searches (the cost of the best known distance)."""
    names = [s for s in (order or list(per_search)) if s in per_search and s != BEST]
    if not names:
        raise ValueError("the best known distance needs at least one search")
    ids = np.unique(np.concatenate([np.asarray(per_search[s]["sample_id"], dtype=np.int64) for s in names]))
    n, k = len(ids), len(names)
    l2 = np.full((k, n), np.inf)
    have = np.zeros((k, n), dtype=bool)
    pos = []
    for j, s in enumerate(names):
        p = np.searchsorted(ids, np.asarray(per_search[s]["sample_id"], dtype=np.int64))
        pos.append(p)
        l2[j, p] = per_search[s]["l2"]
        have[j, p] = True
    # the winner: smallest L2; a sample nobody fooled takes the first search that holds it
    win = np.where(np.isfinite(l2).any(axis=0), np.argmin(l2, axis=0), np.argmax(have, axis=0))
    out: dict[str, np.ndarray] = {"sample_id": ids}
    columns = [c for c in per_search[names[0]] if c != "sample_id"]
    for col in columns:
        first = np.asarray(per_search[names[0]][col])
        vals = np.zeros((k, n), dtype=first.dtype)
        for j, s in enumerate(names):
            vals[j, pos[j]] = per_search[s][col]
        if col in ("n_forward", "n_grad"):
            out[col] = np.where(have, vals, 0).sum(axis=0).astype(first.dtype)
        else:
            out[col] = vals[win, np.arange(n)]
    fooled_any = np.isfinite(l2).any(axis=0)
    out["search"] = np.where(fooled_any, np.asarray(names, dtype=object)[win], "").astype(object)
    out["n_searches"] = have.sum(axis=0).astype(np.int64)
    return out


def found_by(rows: Mapping[str, np.ndarray]) -> dict[str, int]:
    """How many samples each search holds the best known distance for (clean errors, found at
    distance 0 by every search, count under the first; ``none``: fooled by no search)."""
    names, counts = np.unique(np.asarray(rows["search"], dtype=str), return_counts=True)
    out = {str(s): int(c) for s, c in zip(names, counts) if s}
    missing = int(sum(c for s, c in zip(names, counts) if not s))
    if missing:
        out["none"] = missing
    return out
