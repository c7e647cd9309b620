"""The audit's result store: one SQLite database per run directory (stdlib sqlite3).

One row per model × search × sample, keyed by (model, search, sample_id) so that
resuming and sharding are the same mechanism. Fooling distances are stored as REAL
with +inf for "not fooled within budget" and 0 for "already misclassified".

Tables
------
meta(key PRIMARY KEY, value)                 JSON values: config, seed, versions, device
models(model PRIMARY KEY, checkpoint, card, clean_accuracy, jacobian_norm, n, jacobian)
                                             jacobian_norm: mean ‖J‖_F in pixel space;
                                             jacobian: JSON of the whole measurement (method, N,
                                             both spaces, standard errors; .jnorm)
noise_accuracy(model, sigma, accuracy, n)    accuracy under clipped N(0, σ²) noise
batches(model, search, batch_key)            finished batches (for resume)
results(model, search, sample_id, label, clean_pred, adv_pred, fooled,
        l2, linf, l0, x_norm, n_forward, n_grad)
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
from pathlib import Path
from urllib.parse import quote
from typing import Any, Iterable, Optional

import numpy as np

from ..errors import InputError
from .best import BEST, best_rows

DB_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model TEXT PRIMARY KEY, checkpoint TEXT NOT NULL, card TEXT NOT NULL,
    clean_accuracy REAL, jacobian_norm REAL, n INTEGER, jacobian TEXT);
CREATE TABLE IF NOT EXISTS noise_accuracy (
    model TEXT NOT NULL, sigma REAL NOT NULL, accuracy REAL NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (model, sigma));
CREATE TABLE IF NOT EXISTS batches (
    model TEXT NOT NULL, search TEXT NOT NULL, batch_key TEXT NOT NULL,
    PRIMARY KEY (model, search, batch_key));
CREATE TABLE IF NOT EXISTS results (
    model TEXT NOT NULL, search TEXT NOT NULL, sample_id INTEGER NOT NULL,
    label INTEGER NOT NULL, clean_pred INTEGER NOT NULL, adv_pred INTEGER,
    fooled INTEGER NOT NULL, l2 REAL NOT NULL, linf REAL NOT NULL, l0 REAL NOT NULL,
    x_norm REAL NOT NULL, n_forward INTEGER NOT NULL, n_grad INTEGER NOT NULL,
    PRIMARY KEY (model, search, sample_id));
"""

RESULT_COLUMNS = ("sample_id", "label", "clean_pred", "adv_pred", "fooled", "l2", "linf", "l0",
                  "x_norm", "n_forward", "n_grad")


def _enc(v: float) -> float:
    # SQLite stores ±inf as REAL; NaN would become NULL, which we never want silently.
    if isinstance(v, float) and math.isnan(v):
        raise ValueError("NaN distance cannot be stored")
    return v


class RunLock:
    """An exclusive lock on a run directory (``RUN_DIR/.lock``, ``flock``), taken at once or
    refused: two audits writing one run directory could otherwise both pass the config check
    and mix their rows. Released when the process ends, however it ends."""

    def __init__(self, run_dir: str | Path):
        run_dir = Path(run_dir)
        self.path = run_dir / ".lock"
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "a+")
        except OSError as exc:
            raise InputError(f"run directory {run_dir} cannot be written ({exc.strerror}: {exc.filename}); "
                             "choose a writable directory with --out") from None
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise InputError(f"{run_dir} is in use by another run ({holder}); wait for it to finish, "
                             "or give another --out") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()}")
        self.fh.flush()

    def release(self) -> None:
        if not self.fh.closed:
            fcntl.flock(self.fh, fcntl.LOCK_UN)
            self.fh.close()


def open_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to the store file ``path``, checked to hold a store (one
    :class:`InputError` when it is corrupt, empty or something else). Where its directory
    cannot be written (read-only media, a read-only mount), SQLite's WAL mode could not
    create its side files, so the file is opened as immutable: nobody can be writing it."""
    uri = f"file:{quote(str(path))}?mode=ro"
    if not os.access(path.parent, os.W_OK):
        wal = path.with_name(path.name + "-wal")
        if wal.is_file() and wal.stat().st_size:
            raise InputError(f"{path}: the run is on read-only storage and {wal.name} holds rows not yet merged "
                             f"into {path.name}; copy the run directory to writable storage and read it there")
        uri += "&immutable=1"
    conn = sqlite3.connect(uri, uri=True)
    try:
        conn.execute("SELECT key, value FROM meta LIMIT 1").fetchall()
        conn.execute("SELECT model FROM models LIMIT 1").fetchall()
        conn.execute("SELECT sample_id FROM results LIMIT 1").fetchall()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise InputError(f"{path}: cannot be read as an audit's results ({exc}); the file is corrupt, empty or "
                         "not written by `jr-eval run`: rerun the audit (into a new --out)") from None
    return conn


class ResultStore:
    """Read/write access to ``RUN_DIR/results.sqlite``."""

    def __init__(self, run_dir: Optional[str | Path], readonly: bool = False, file: bool = False,
                 lock: Optional[RunLock] = None):
        """Open ``run_dir/results.sqlite`` (created unless ``readonly``); ``run_dir=None``
        keeps the store in memory (an audit from Python that writes no files); ``file=True``
        opens the database file ``run_dir`` itself (a rank's shard of a sharded run); ``lock``
        (a :class:`RunLock`) is released when the store is closed."""
        self.lock = lock
        if file:
            self.path = Path(run_dir)
            self.run_dir = self.path.parent
        else:
            self.run_dir = None if run_dir is None else Path(run_dir)
            self.path = None if run_dir is None else self.run_dir / DB_NAME
        if self.path is None:
            self.conn = sqlite3.connect(":memory:")
            self.conn.executescript(_SCHEMA)
        elif readonly:
            if not self.path.is_file():
                raise InputError(f"{self.run_dir}: not a run directory (no {DB_NAME}); run `jr-eval run --out DIR` first")
            self.conn = open_readonly(self.path)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path))
            try:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.executescript(_SCHEMA)
            except sqlite3.DatabaseError as exc:
                self.conn.close()
                raise InputError(f"{self.path}: not a usable results store ({exc}); it is corrupt or not written "
                                 "by `jr-eval run`: move it away or choose another --out") from None
            if "jacobian" not in self._model_columns():  # a store written before the column existed
                self.conn.execute("ALTER TABLE models ADD COLUMN jacobian TEXT")
            self.conn.commit()

    def close(self) -> None:
        self.conn.close()
        if self.lock is not None:
            self.lock.release()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- meta -------------------------------------------------------------
    def set_meta(self, key: str, value: Any) -> None:
        with self.conn:
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def meta(self) -> dict:
        return {k: json.loads(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    # ---- models -----------------------------------------------------------
    def _model_columns(self) -> list[str]:
        return [r[1] for r in self.conn.execute("PRAGMA table_info(models)")]

    def put_model(self, model: str, checkpoint: str, card: dict, clean_accuracy: Optional[float] = None,
                  jacobian_norm: Optional[float] = None, n: Optional[int] = None,
                  jacobian: Optional[dict] = None) -> None:
        """Insert or update a model's row; None leaves a stored value as it is, except that a
        new ``jacobian`` measurement replaces the stored one together with ``jacobian_norm``."""
        with self.conn:
            self.conn.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(model) DO UPDATE SET "
                "checkpoint=excluded.checkpoint, card=excluded.card, "
                "clean_accuracy=COALESCE(excluded.clean_accuracy, clean_accuracy), "
                "jacobian_norm=CASE WHEN excluded.jacobian IS NOT NULL THEN excluded.jacobian_norm "
                "ELSE COALESCE(excluded.jacobian_norm, jacobian_norm) END, n=COALESCE(excluded.n, n), "
                "jacobian=COALESCE(excluded.jacobian, jacobian)",
                (model, checkpoint, json.dumps(card, default=str), clean_accuracy, jacobian_norm, n,
                 None if jacobian is None else json.dumps(jacobian)))

    def models(self) -> list[dict]:
        jac = "jacobian" if "jacobian" in self._model_columns() else "NULL"
        cur = self.conn.execute(f"SELECT model, checkpoint, card, clean_accuracy, jacobian_norm, n, {jac} FROM models "
                                "ORDER BY rowid")
        return [dict(model=m, checkpoint=c, card=json.loads(card), clean_accuracy=a, jacobian_norm=j, n=n,
                     jacobian=None if jd is None else json.loads(jd))
                for m, c, card, a, j, n, jd in cur]

    def put_noise_accuracy(self, model: str, rows: Iterable[tuple[float, float, int]]) -> None:
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO noise_accuracy VALUES (?, ?, ?, ?)",
                                  [(model, float(s), float(a), int(n)) for s, a, n in rows])

    def noise_accuracy(self, model: str) -> list[tuple[float, float, int]]:
        return list(self.conn.execute(
            "SELECT sigma, accuracy, n FROM noise_accuracy WHERE model=? ORDER BY sigma", (model,)))

    # ---- per-sample results ----------------------------------------------
    def batch_done(self, model: str, search: str, batch_key: str) -> bool:
        return self.conn.execute("SELECT 1 FROM batches WHERE model=? AND search=? AND batch_key=?",
                                 (model, search, batch_key)).fetchone() is not None

    def put_batch(self, model: str, search: str, batch_key: str, rows: list[dict]) -> None:
        """Write one batch's rows and mark the batch finished, in one transaction."""
        values = [(model, search, int(r["sample_id"]), int(r["label"]), int(r["clean_pred"]),
                   None if r.get("adv_pred") is None else int(r["adv_pred"]), int(bool(r["fooled"])),
                   _enc(float(r["l2"])), _enc(float(r["linf"])), _enc(float(r["l0"])), float(r["x_norm"]),
                   int(r["n_forward"]), int(r["n_grad"])) for r in rows]
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", values)
            self.conn.execute("INSERT OR REPLACE INTO batches VALUES (?, ?, ?)", (model, search, batch_key))

    def batch_count(self) -> int:
        """Number of finished batches (all models and searches)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0])

    def merge_from(self, other: "str | Path") -> dict:
        """Copy every row of the store file ``other`` (a rank's shard) into this one, in one
        transaction, and return ``other``'s meta (warnings, timings) for the caller to combine."""
        src = sqlite3.connect(f"file:{other}?mode=ro", uri=True)
        try:
            meta = {k: json.loads(v) for k, v in src.execute("SELECT key, value FROM meta")}
            jac = "jacobian" if "jacobian" in [r[1] for r in src.execute("PRAGMA table_info(models)")] else "NULL"
            models = src.execute(f"SELECT model, checkpoint, card, clean_accuracy, jacobian_norm, n, {jac} "
                                 "FROM models").fetchall()
            noise = src.execute("SELECT * FROM noise_accuracy").fetchall()
            batches = src.execute("SELECT * FROM batches").fetchall()
            results = src.execute("SELECT * FROM results").fetchall()
        finally:
            src.close()
        for m, c, card, a, j, n, jd in models:
            self.put_model(m, c, json.loads(card), a, j, n, None if jd is None else json.loads(jd))
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO noise_accuracy VALUES (?, ?, ?, ?)", noise)
            self.conn.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", results)
            self.conn.executemany("INSERT OR REPLACE INTO batches VALUES (?, ?, ?)", batches)
        return meta

    def searches(self, model: str) -> list[str]:
        return [s for (s,) in self.conn.execute(
            "SELECT DISTINCT search FROM results WHERE model=? ORDER BY rowid", (model,))]

    def results(self, model: str, search: str) -> dict[str, np.ndarray]:
        """Columns of the stored rows for (model, search), ordered by sample_id.

        ``search = "best"`` (:data:`.best.BEST`) gives the per-sample best known distance
        over every stored search of ``model``, with the extra columns ``search`` (which one
        found it) and ``n_searches`` (:func:`.best.best_rows`)."""
        if search == BEST:
            names = self.searches(model)
            if not names:
                return self.results(model, "")  # no rows: empty columns
            return best_rows({s: self.results(model, s) for s in names}, names)
        cur = self.conn.execute(
            f"SELECT {', '.join(RESULT_COLUMNS)} FROM results WHERE model=? AND search=? ORDER BY sample_id",
            (model, search))
        rows = cur.fetchall()
        out: dict[str, np.ndarray] = {}
        for i, col in enumerate(RESULT_COLUMNS):
            vals = [r[i] for r in rows]
            if col in ("l2", "linf", "l0", "x_norm"):
                out[col] = np.asarray(vals, dtype=np.float64)
            elif col == "adv_pred":
                out[col] = np.asarray([-1 if v is None else v for v in vals], dtype=np.int64)
            elif col == "fooled":
                out[col] = np.asarray(vals, dtype=bool)
            else:
                out[col] = np.asarray(vals, dtype=np.int64)
        return out

    # ---- is the run finished? ---------------------------------------------
    def completeness(self) -> dict:
        """Whether the stored audit is finished, for reports and the gate (which never judge an
        unfinished run as if it were finished): ``{"complete": bool, "reasons": [str],
        "coverage": {model: {search: [rows stored, samples of the model]}}}``.

        Unfinished: the meta ``status`` is not ``complete`` (``jr-eval run`` sets ``running``
        when it starts computing and ``complete`` at its end), a model of the run's identity has
        no row yet, or a search of the run's config has fewer rows than the model's samples or
        fewer finished batches than it has batches (the searches of a model are those the identity
        lists for it, else the run's). A store written without a status (by hand,
        by an older version) is judged by its rows alone."""
        meta = self.meta()
        reasons: list[str] = []
        status = meta.get("status")
        if status is not None and status != "complete":
            reasons.append(f"its status is {status!r} (the audit is still running, or was interrupted)")
        ident = meta.get("identity") if isinstance(meta.get("identity"), dict) else {}
        audit = ident.get("audit") or meta.get("config") or {}
        wanted = audit.get("attacks") if isinstance(audit.get("attacks"), list) else None
        bs = audit.get("batch_size") if isinstance(audit.get("batch_size"), int) and audit["batch_size"] > 0 else None
        stored = {m: n for m, n in self.conn.execute("SELECT model, n FROM models ORDER BY rowid")}
        # each model's own searches (a run extended with searches or models need not run every
        # search on every model); the run's search list for a model the identity does not list
        per_model = {m["name"]: list(m["searches"]) for m in ident.get("models") or []
                     if isinstance(m, dict) and m.get("name") and isinstance(m.get("searches"), dict)}
        for m in ident.get("models") or []:
            name = m.get("name") if isinstance(m, dict) else None
            if name and name not in stored:
                reasons.append(f"model {name} has not been audited yet")
        coverage: dict = {}
        for model, n in stored.items():
            rows = dict(self.conn.execute("SELECT search, COUNT(*) FROM results WHERE model=? GROUP BY search",
                                          (model,)))
            done = dict(self.conn.execute("SELECT search, COUNT(*) FROM batches WHERE model=? GROUP BY search",
                                          (model,)))
            cov = coverage[model] = {}
            for search in per_model.get(model, wanted if wanted is not None else list(rows)):
                k = int(rows.get(search, 0))
                cov[search] = [k, n]
                if n is not None and k < n:
                    reasons.append(f"{model}: {search} has {k} of {n} samples")
                elif n and bs and int(done.get(search, 0)) < -(-n // bs):
                    reasons.append(f"{model}: {search} has {int(done.get(search, 0))} of {-(-n // bs)} batches")
        return {"complete": not reasons, "reasons": reasons, "coverage": coverage}
