"""Executing an audit plan: per model the clean accuracy, ‖J‖_F, noise accuracy and sanity
checks, then every search batch by batch into the store.

Resuming: a batch is identified by a key derived from its sample ids, the search's
resolved config and the seed; executing the same plan on the same store skips the
finished batches, and since all randomness is derived from (seed, search, sample id)
the resumed rows equal those of an uninterrupted run. A plan that only adds searches or
models to the stored run (everything they share unchanged) extends it: the stored rows
are kept, only the new (model, search) work runs, and the run's identity becomes the
union (:func:`.plan.extend_identity`). A store that holds a run whose shared parts differ
is refused instead of mixed (:func:`open_store`).

Progress and warnings leave through ``on_event`` (:class:`robustbench_jr.runtime.Event`):
task ``audit`` (one unit per model × search), task ``batches`` (per search),
``warning`` events (also stored in the run's meta) and ``info`` events.
"""

from __future__ import annotations

import os
import re
import sys
import time
import warnings as _warnings
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch
import yaml
from safetensors.torch import save as _st_save

from ..errors import ConfigError, InputError
from ..runtime import SINGLE, Dist, EventHandler, emit, generator, hardware, now, versions
from .metrics import SAMPLES_NOTE, order_violations
from .output import card_n_inputs, search_numbers
from . import jnorm
from .best import best_rows, found_by
from .plan import (AuditPlan, ModelEntry, batch_key, batches, extend_identity, extend_resolved, search_config,
                   search_settings, short_hash)
from .store import ResultStore, RunLock

#: (weaker, stronger) pairs checked for search-order violations, and the thresholds
ORDER_PAIRS = (("noise", "cw"), ("noise", "deepfool"))
ORDER_MAX_FRACTION = 0.10
ZERO_GRAD_MAX_FRACTION = 0.05
SANITY_SAMPLES = 100


# ---------------------------------------------------------------------------
# per-model measurements and sanity checks
# ---------------------------------------------------------------------------

def noise_correct(model, data, sigmas: Sequence[float], seed: int, batch_size: int, device: torch.device,
                  owns: Callable[[int], bool] = lambda bi: True) -> torch.Tensor:
    """Per σ, how many samples (of the batches ``owns`` accepts) are still classified correctly
    under x + σ·ε clipped to [0, 1], ε ~ N(0, I) drawn per sample from a generator seeded with
    (seed, sample id), the same ε for every σ. Returns int64 [len(sigmas)]."""
    correct = torch.zeros(len(sigmas), dtype=torch.int64)
    shape = tuple(data.input_shape)
    with torch.no_grad():
        for bi, sl in batches(len(data), batch_size):
            if not owns(bi):
                continue
            x = data.pixels(sl, device=device)
            y = data.labels[sl].to(device)
            eps = torch.stack([torch.randn(shape, generator=generator(seed, "noise-accuracy", int(i)))
                               for i in data.ids[sl].tolist()]).to(device=device, dtype=x.dtype)
            for k, s in enumerate(sigmas):
                xs = (x + s * eps).clamp_(0.0, 1.0)
                correct[k] += int((model(xs).argmax(dim=1) == y).sum())
    return correct


def noise_accuracy(model, data, sigmas: Sequence[float], seed: int, batch_size: int,
                   device: torch.device) -> list[tuple[float, float, int]]:
    """``(σ, accuracy, n)`` under clipped Gaussian noise (see :func:`noise_correct`)."""
    correct = noise_correct(model, data, sigmas, seed, batch_size, device)
    n = len(data)
    return [(float(s), float(correct[k]) / n, n) for k, s in enumerate(sigmas)]


def jacobian_norms(model, data, batch_size: int, device: torch.device,
                   owns: Callable[[int], bool] = lambda bi: True) -> torch.Tensor:
    """Exact per-sample ‖J(x)‖_F (pixel space, float64 [N]) over the batches ``owns`` accepts
    (0 elsewhere), batch by batch as the searches see them."""
    return jnorm.measure(model, data, batch_size, device, "exact", owns=owns)[0]


def jacobian_summary(row: dict) -> Optional[dict]:
    """A stored model row's ‖J‖_F measurement (:func:`.jnorm.summarize_norms`: method, N, both
    spaces, standard errors) with the card's whole-test-set values under ``card``
    (:func:`.jnorm.card_norms`). A row from before the measurement was stored whole reads
    as an exact pixel-space mean over the row's N."""
    if not row:
        return None
    j = row.get("jacobian")
    if j is None:
        if row.get("jacobian_norm") is None:
            return None
        j = {"method": "exact", "n": row.get("n"), "pixel": row.get("jacobian_norm"), "normalized": None,
             "se_pixel": 0.0, "se_normalized": None}
    return {**j, "card": jnorm.card_norms(row.get("card"))}


#: a clean accuracy at or below this multiple of chance (1 / classes) draws a warning
NEAR_CHANCE_FACTOR = 1.5


def chance_check(accuracy: Optional[float], classes: Optional[int]) -> Optional[tuple[str, str]]:
    """``("near-chance", message)`` when a model's clean accuracy is at most
    :data:`NEAR_CHANCE_FACTOR` / ``classes``, else None."""
    if accuracy is None or not classes or classes < 2 or accuracy > NEAR_CHANCE_FACTOR / classes:
        return None
    return ("near-chance", f"clean accuracy {accuracy:.1%} is near chance ({1 / classes:.1%} for {classes} classes): "
                           "the weights, the preprocessing (--mean/--std, input range, channel order) or the "
                           "dataset's labels are probably not the ones the model was trained with; fooling "
                           "distances of a model that barely classifies say little about its robustness")


def sanity_checks(model, x: torch.Tensor, y: torch.Tensor) -> list[tuple[str, str]]:
    """auto-attack-style checks; returns ``(check, message)`` pairs for the problems found."""
    found = []
    if model.training:
        found.append(("training-mode", "the model is in training mode (dropout/batch-norm active); "
                                       "audits need model.eval()"))
    with torch.no_grad():
        a = model(x)
        b = model(x)
    scale = float(a.abs().max()) + 1.0
    diff = float((a - b).abs().max())
    if diff > 1e-5 * scale:
        found.append(("randomised", f"two forward passes of the same input differ (max |Δlogit| = {diff:.3g}): "
                                    "the model is randomised, so fooling distances are not reproducible and "
                                    "gradient-based searches may be misled"))
    if ((a >= 0) & (a <= 1)).all() and float((a.sum(dim=1) - 1).abs().max()) < 1e-3:
        found.append(("probabilities", "the model's outputs look like probabilities (rows in [0, 1] summing to 1); "
                                       "searches and ‖J‖ expect logits — remove the final softmax"))
    xg = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = torch.nn.functional.cross_entropy(model(xg), y, reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)
    zero = (g.flatten(1).abs().amax(dim=1) == 0)
    frac = float(zero.float().mean())
    if frac > ZERO_GRAD_MAX_FRACTION:
        found.append(("zero-gradients", f"the loss gradient w.r.t. the input is exactly zero on {int(zero.sum())} of "
                                        f"{len(zero)} samples ({frac:.0%}): gradient masking or saturated outputs; "
                                        "gradient-based distances are unreliable for this model"))
    return found


# ---------------------------------------------------------------------------
# rows, shards, the store
# ---------------------------------------------------------------------------

def _to_np(t, dtype) -> np.ndarray:
    return torch.as_tensor(t).detach().cpu().numpy().astype(dtype).reshape(-1)


def result_rows(res, ids, labels, clean_pred, x_norm, search_name: str) -> list[dict]:
    """The store rows of one search result over a batch (checked for shape, NaN, consistency)."""
    b = len(ids)
    l2 = _to_np(res.l2, np.float64)
    linf = _to_np(res.linf, np.float64)
    l0 = _to_np(res.l0, np.float64)
    fooled = _to_np(res.fooled, bool)
    adv_pred = _to_np(res.adv_pred, np.int64)
    n_fwd = _to_np(res.n_forward, np.int64)
    n_grad = _to_np(res.n_grad, np.int64)
    for arr in (l2, linf, l0, fooled, adv_pred, n_fwd, n_grad):
        if arr.shape != (b,):
            raise RuntimeError(f"search {search_name} returned {arr.shape[0]} results for a batch of {b}")
    for name, arr in (("L2", l2), ("Linf", linf), ("L0", l0)):
        if np.isnan(arr).any():
            bad = [int(i) for i in np.asarray(ids)[np.isnan(arr)]][:10]
            raise InputError(f"search {search_name} returned NaN {name} distances on sample ids {bad}; "
                             "the model's outputs are probably NaN on perturbed inputs")
    if (fooled != np.isfinite(l2)).any():
        raise RuntimeError(f"search {search_name}: 'fooled' disagrees with finite L2 distances")
    return [dict(sample_id=int(ids[j]), label=int(labels[j]), clean_pred=int(clean_pred[j]),
                 adv_pred=None if adv_pred[j] < 0 else int(adv_pred[j]), fooled=bool(fooled[j]),
                 l2=float(l2[j]), linf=float(linf[j]), l0=float(l0[j]), x_norm=float(x_norm[j]),
                 n_forward=int(n_fwd[j]), n_grad=int(n_grad[j])) for j in range(b)]


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name) or "model"


def save_shard(path: Path, adversarial, ids, meta: dict) -> None:
    """Write one batch's adversarial images and sample ids as a safetensors file (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    adv = torch.as_tensor(adversarial).detach().to("cpu", torch.float32).contiguous()
    data = _st_save({"adversarial": adv, "sample_ids": torch.as_tensor(ids, dtype=torch.int64).contiguous()},
                    metadata={k: str(v) for k, v in meta.items()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def open_store(out: Optional[Path], plan: AuditPlan) -> ResultStore:
    """The run's store at ``out`` (None: in memory). A store holding a run with another
    identity is extended when ``plan`` only adds searches or models to it
    (:func:`.plan.extend_identity`): ``plan.identity``, ``plan.config_hash`` and
    ``plan.resolved`` then become the union's, which :func:`execute` records. Otherwise
    it is refused with the list of differences."""
    if out is None:
        return ResultStore(None)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory for the run")
    lock = RunLock(out)  # held until the run's store is closed: one writer per run directory
    if (out / "results.sqlite").exists():
        store = ResultStore(out, lock=lock)
        meta = store.meta()
        old_hash = meta.get("config_hash")
        has_rows = store.conn.execute("SELECT 1 FROM results LIMIT 1").fetchone() is not None
        diffs = ["no recorded config"] if old_hash is None and has_rows else []
        if old_hash is not None and old_hash != plan.config_hash:
            union, diffs = extend_identity(meta.get("identity") or {}, plan.identity)
            if union is not None:
                plan.resolved = extend_resolved(meta.get("config") or {}, plan.resolved, union, plan.models,
                                                meta.get("identity") or {})
                plan.identity, plan.config_hash = union, short_hash(union)
        if diffs:
            store.close()
            raise ConfigError(
                f"{out} already holds an audit run with a different config, refusing to mix results.\n"
                + "".join(f"  - {d}\n" for d in diffs)
                + "Searches and models can be added to a run only when everything they share with it is "
                  "unchanged. Use another --out directory, or delete this one to start over.")
        return store
    return ResultStore(out, lock=lock)


# ---------------------------------------------------------------------------
# execution
# ---------------------------------------------------------------------------

SHARDS_DIR = "shards"


def shard_paths(run_dir: Path) -> list[Path]:
    """The rank stores of a sharded run (``RUN_DIR/shards/rank-K.sqlite``) not yet merged."""
    return sorted((run_dir / SHARDS_DIR).glob("rank-*.sqlite"))


def merge_shards(store: ResultStore) -> int:
    """Merge every rank store left in ``store``'s run directory into it (rows, finished
    batches, model measurements; warnings appended, timings summed), then delete them.
    Returns how many were merged. Rows are keyed by (model, search, sample id), so a shard
    from any world size merges the same way."""
    if store.run_dir is None:
        return 0
    paths = shard_paths(store.run_dir)
    if not paths:
        return 0
    meta = store.meta()
    warnings = list(meta.get("warnings", []))
    timings = dict(meta.get("timings", {}))
    for path in paths:
        shard_meta = store.merge_from(path)
        for w in shard_meta.get("warnings", []):
            if w not in warnings:
                warnings.append(w)
        for model, per in shard_meta.get("timings", {}).items():
            mine = timings.setdefault(model, {})
            for sname, sec in per.items():
                mine[sname] = round(mine.get(sname, 0.0) + sec, 3)
    store.set_meta("warnings", warnings)
    store.set_meta("timings", timings)
    for path in paths:
        for extra in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            extra.unlink(missing_ok=True)
    return len(paths)


def _rows_done(store: ResultStore) -> int:
    return int(store.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


class _Run:
    """The state of one execution: the stores, warnings, timings, provenance.

    ``store`` is the run's store; ``writer`` is where this process commits rows — the same
    store for one process, the rank's own ``shards/rank-K.sqlite`` under torchrun."""

    def __init__(self, plan: AuditPlan, store: ResultStore, writer: ResultStore,
                 on_event: Optional[EventHandler], dist: Dist):
        self.plan, self.store, self.writer, self.on_event, self.dist = plan, store, writer, on_event, dist
        self.meta = store.meta()
        # the sanity and order checks of the planned models are redone on every invocation;
        # warnings that the searches raised on batches finished earlier, and every warning of a
        # stored model this invocation does not audit (a run extended with another model), are kept
        planned = {m.name for m in plan.models}
        self.warnings: list[dict] = [w for w in self.meta.get("warnings", [])
                                     if str(w.get("check", "")).startswith("search:") or w.get("model") not in planned]
        self.timings: dict = self.meta.get("timings", {}) if writer is store else {}
        self.computing = False

    def start_computing(self) -> None:
        """What ran the numbers (versions, device, command) is written by an invocation that
        computes something: rerunning a complete audit keeps the provenance of the one that did."""
        if self.computing or not self.dist.is_main:
            return
        self.computing = True
        cfg, store = self.plan.config, self.store
        hw = hardware(self.plan.device)
        store.set_meta("versions", versions())
        store.set_meta("device", {"requested": cfg.device, "resolved": str(self.plan.device),
                                  "cpu_threads": hw["cpu_threads"], "name": hw["name"],
                                  "world_size": self.dist.world_size, "backend": self.dist.backend})
        store.set_meta("command", sys.argv)
        store.set_meta("started", self.meta.get("started", now()))
        store.set_meta("status", "running")

    def warn(self, model: str, check: str, message: str) -> None:
        self.warnings.append({"model": model, "check": check, "message": message})
        self.writer.set_meta("warnings", self.warnings)  # kept even if the process dies later
        emit(self.on_event, "warning", message=f"{model}: {message}", data={"model": model, "check": check})

    def batch_done(self, model: str, search: str, key: str) -> bool:
        return self.store.batch_done(model, search, key) or (
            self.writer is not self.store and self.writer.batch_done(model, search, key))


def execute(plan: AuditPlan, store: ResultStore, on_event: Optional[EventHandler] = None,
            adversarials_dir: Optional[Path] = None, dist: Dist = SINGLE) -> None:
    """Run ``plan`` into ``store`` (resuming finished batches); see the module docstring.

    Under torchrun (``dist.world_size`` > 1) every rank calls this with the same plan: rank 0
    first merges rank stores an interrupted run left behind and writes the run's meta; the
    per-model measurements are sharded by batch and summed over ranks (per-sample values,
    so the numbers equal one process's); every (model, search, batch) job goes to rank
    ``job % world_size`` and its rows to the rank's own store; at the end rank 0 merges them
    into ``store``. Batches are the same at every world size, so the rows are identical to a
    single process's and a run resumes under any world size.
    """
    cfg = plan.config
    if dist.is_main:
        merge_shards(store)
        _write_meta(plan, store, on_event)
    dist.barrier()
    writer = store
    if dist.enabled:
        if store.run_dir is None:
            raise ConfigError("a sharded audit (torchrun) needs a run directory to merge the ranks' rows in")
        writer = ResultStore(store.run_dir / SHARDS_DIR / f"rank-{dist.rank}.sqlite", file=True)
        writer.set_meta("finished", False)
    run = _Run(plan, store, writer, on_event, dist)
    try:
        if run.meta.get("status") != "complete":
            run.start_computing()
        for m in plan.models:
            _measure_model(run, m)
        jobs = [(m, s, bi, sl) for m in plan.models for s in cfg.attacks
                for bi, sl in batches(len(plan.data_of(m).dataset), cfg.batch_size)]
        if dist.enabled:
            _run_jobs_sharded(run, jobs, adversarials_dir)
        else:
            _run_jobs(run, jobs, adversarials_dir)
    finally:
        if writer is not store:
            writer.close()
    dist.barrier()
    if not dist.is_main:
        return
    merge_shards(store)
    run.warnings = [w for w in store.meta().get("warnings", []) if str(w.get("check", "")).startswith("search:")] \
        + [w for w in run.warnings if not str(w.get("check", "")).startswith("search:")]
    run.writer = store
    for m in plan.models:
        _order_checks(run, m)
    store.set_meta("warnings", run.warnings)
    if run.computing:
        store.set_meta("finished", now())
        store.set_meta("status", "complete")


def _write_meta(plan: AuditPlan, store: ResultStore, on_event: Optional[EventHandler]) -> None:
    cfg = plan.config
    store.set_meta("config", plan.resolved)
    store.set_meta("identity", plan.identity)
    store.set_meta("config_hash", plan.config_hash)
    store.set_meta("seed", cfg.seed)
    # a run extended with a model on another dataset keeps the stored datasets' entries
    store.set_meta("data", {**(store.meta().get("data") or {}),
                            **{d.name: {"provenance": d.provenance, "n": len(d.dataset), "subset": cfg.subset,
                                        "fingerprint": d.fingerprint} for d in plan.data.values()}})
    store.set_meta("metrics_note", SAMPLES_NOTE)
    if store.run_dir is not None:
        tmp = store.run_dir / "config.yaml.tmp"
        tmp.write_text("# resolved config of this audit; rerun with: jr-eval run --config config.yaml\n"
                       + yaml.safe_dump(plan.resolved, sort_keys=False))
        os.replace(tmp, store.run_dir / "config.yaml")
    for d in plan.data.values():
        if "bundled" in d.provenance:
            emit(on_event, "info", message=f"data: {d.name}: {d.provenance}")


def _run_jobs(run: _Run, jobs: list, adversarials_dir: Optional[Path]) -> None:
    """One process: every job in order; a task ``audit`` (one unit per model × search) and a
    task ``samples`` per search, advanced by each batch's samples."""
    cfg = run.plan.config
    emit(run.on_event, "task", name="audit", total=len(run.plan.models) * len(cfg.attacks), description="audit")
    todo: dict = {}  # (model, search) -> samples this command still computes
    for m, sname, _, sl in jobs:
        todo[m.name, sname] = todo.get((m.name, sname), 0) + (0 if _job_done(run, m, sname, sl) else sl.stop - sl.start)
    current = None
    t_search = 0.0
    first = False
    for m, sname, bi, sl in jobs:
        if (m.name, sname) != current:
            if current is not None:
                _search_done(run, *current, t_search)
            current, t_search, first = (m.name, sname), time.perf_counter(), True
            n_all = len(run.plan.data_of(m).dataset)
            emit(run.on_event, "advance", name="audit", amount=0, description=f"{m.name}: {sname}")
            emit(run.on_event, "task", name="samples", total=n_all, amount=n_all - todo[current],
                 description="  samples")
        t_batch = time.perf_counter()
        if not _run_batch(run, m, sname, bi, sl, adversarials_dir):
            continue  # stored by an earlier run: counted in the task's start
        emit(run.on_event, "advance", name="samples", amount=sl.stop - sl.start)
        rest = todo[current] - (sl.stop - sl.start)
        spent = time.perf_counter() - t_batch
        if first and rest > 0 and spent * rest / (sl.stop - sl.start) >= ESTIMATE_MIN_SECONDS:
            # what the search costs, from its first computed batch, before the rest runs
            emit(run.on_event, "info", message=f"{m.name}: {sname}: {sl.stop - sl.start} samples in "
                                               f"{_duration(spent)}, so about {_duration(spent * rest / (sl.stop - sl.start))} "
                                               f"for the other {rest}",
                 data={"model": m.name, "search": sname, "seconds_per_sample": spent / (sl.stop - sl.start),
                       "remaining": rest})
        first = False
    if current is not None:
        _search_done(run, *current, t_search)
    emit(run.on_event, "done", name="audit", description="done")


#: a search whose remaining batches should take less than this is not announced
ESTIMATE_MIN_SECONDS = 10.0


def _duration(seconds: float) -> str:
    """``42 s``, ``13 min``, ``2.4 h``: a cost estimate in words."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _search_done(run: _Run, model: str, sname: str, t_search: float) -> None:
    emit(run.on_event, "done", name="samples")
    emit(run.on_event, "advance", name="audit", amount=1)
    spent = run.timings.setdefault(model, {})
    spent[sname] = round(spent.get(sname, 0.0) + time.perf_counter() - t_search, 3)
    run.writer.set_meta("timings", run.timings)


def _run_jobs_sharded(run: _Run, jobs: list, adversarials_dir: Optional[Path]) -> None:
    """Under torchrun: this rank's share of the jobs; rank 0 shows every rank's samples."""
    dist, store = run.dist, run.store
    total = sum(sl.stop - sl.start for *_, sl in jobs)

    def progress() -> bool:
        """Rank 0: all ranks' committed samples; True once every rank has finished."""
        done, finished = _rows_done(store), 0
        for path in shard_paths(store.run_dir):
            with ResultStore(path, readonly=True, file=True) as shard:
                done += _rows_done(shard)
                finished += bool(shard.meta().get("finished"))
        emit(run.on_event, "advance", name="audit", data={"completed": done})
        return finished >= dist.world_size

    if dist.is_main:
        emit(run.on_event, "task", name="audit", total=total,
             description=f"audit: samples × searches on {dist.world_size} ranks")
    # jobs go to whichever rank is free (a shared queue): CW batches differ in cost by 2× and
    # more, and a fixed round-robin left one rank ~10 % behind (benchmarks/README.md); which
    # rank computes a batch does not change its rows
    claim = dist.queue()
    while (j := claim()) < len(jobs):
        m, sname, bi, sl = jobs[j]
        t0 = time.perf_counter()
        _run_batch(run, m, sname, bi, sl, adversarials_dir)
        spent = run.timings.setdefault(m.name, {})
        spent[sname] = round(spent.get(sname, 0.0) + time.perf_counter() - t0, 3)
        run.writer.set_meta("timings", run.timings)
        if dist.is_main:
            progress()
    run.writer.set_meta("finished", True)
    if dist.is_main:
        while not progress():
            time.sleep(0.2)
        emit(run.on_event, "done", name="audit", description="done")


def _measure_model(run: _Run, m: ModelEntry) -> None:
    """Clean accuracy, mean ‖J‖_F, noise accuracy (each only when not stored; sharded by batch
    over the ranks and summed) and, on rank 0, the sanity checks."""
    plan, store, cfg, dist = run.plan, run.store, run.plan.config, run.dist
    d = plan.data_of(m)
    ds = d.dataset
    emit(run.on_event, "advance", name="audit", amount=0, description=f"{m.name}: clean / ‖J‖_F / noise")
    stored = {r["model"]: r for r in store.models()}.get(m.name)
    card = {**m.card, "checkpoint_sha256": m.weights_sha256, "data": d.provenance}
    shape = tuple(ds.input_shape)
    classes = getattr(m.model, "num_classes", None) or m.card.get("num_classes")
    if not classes and len(ds) and cfg.jacobian == "auto":
        with torch.no_grad():
            classes = int(m.model(ds.pixels(slice(0, 1), device=plan.device)).shape[1])
    mode = jnorm.resolve_mode(cfg.jacobian, classes, int(np.prod(shape)) if shape else None)
    want = {"method": mode, **({"n_proj": cfg.jacobian_projections} if mode == "estimate" else {})}
    have = (stored or {}).get("jacobian") or ({"method": "exact"} if (stored or {}).get("jacobian_norm") is not None
                                              else {})
    if stored is None or stored["clean_accuracy"] is None or any(have.get(k) != v for k, v in want.items()):
        run.start_computing()
        acc = float(np.mean(np.asarray(m.clean_pred) == ds.labels.numpy()))
        if mode == "off":
            summary = {"method": "off", "n": len(ds), "pixel": None, "normalized": None, "se_pixel": None,
                       "se_normalized": None}
        else:
            per = dist.all_reduce_sum(jnorm.measure(m.model, ds, cfg.batch_size, plan.device, mode,
                                                    cfg.jacobian_projections, cfg.seed, dist.owns), plan.device)
            summary = jnorm.summarize_norms(per, mode, cfg.jacobian_projections)
        if dist.is_main:
            run.writer.put_model(m.name, m.checkpoint, card, clean_accuracy=acc, jacobian_norm=summary["pixel"],
                                 n=len(ds), jacobian=summary)
    elif dist.is_main:
        run.writer.put_model(m.name, m.checkpoint, card)
    have = {round(s, 12) for s, _, _ in store.noise_accuracy(m.name)}
    if any(round(s, 12) not in have for s in cfg.noise_sigmas):
        run.start_computing()
        correct = dist.all_reduce_sum(noise_correct(m.model, ds, cfg.noise_sigmas, cfg.seed, cfg.batch_size,
                                                    plan.device, dist.owns), plan.device)
        if dist.is_main:
            n = len(ds)
            run.writer.put_noise_accuracy(m.name, [(float(s), float(correct[k]) / n, n)
                                                   for k, s in enumerate(cfg.noise_sigmas)])
    if dist.is_main:
        k = min(len(ds), SANITY_SAMPLES)
        for check, msg in sanity_checks(m.model, ds.pixels(slice(0, k), device=plan.device),
                                        ds.labels[:k].to(plan.device)):
            run.warn(m.name, check, msg)
        if len(ds):
            if not classes:
                with torch.no_grad():
                    classes = int(m.model(ds.pixels(slice(0, 1), device=plan.device)).shape[1])
            near = chance_check(float(np.mean(np.asarray(m.clean_pred) == ds.labels.numpy())), classes)
            if near is not None:
                run.warn(m.name, *near)


def _job_key(run: _Run, m: ModelEntry, sname: str, sl: slice) -> str:
    """The store key of one (model, search, batch) job."""
    ids = run.plan.data_of(m).dataset.ids[sl].tolist()
    return batch_key(ids, sname, search_config(m.searches[sname]), run.plan.config.seed)


def _job_done(run: _Run, m: ModelEntry, sname: str, sl: slice) -> bool:
    return run.batch_done(m.name, sname, _job_key(run, m, sname, sl))


def _run_batch(run: _Run, m: ModelEntry, sname: str, bi: int, sl: slice, adversarials_dir: Optional[Path]) -> bool:
    """Compute and commit one job; False (nothing done) when it is stored already."""
    plan, cfg, device = run.plan, run.plan.config, run.plan.device
    ds = plan.data_of(m).dataset
    search = m.searches[sname]
    bids = ds.ids[sl].tolist()
    key = _job_key(run, m, sname, sl)
    if run.batch_done(m.name, sname, key):
        return False
    run.start_computing()
    x = ds.pixels(sl, device=device)
    y = ds.labels[sl].to(device)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        res = search.run(m.model, x, y, seed=cfg.seed, sample_ids=torch.as_tensor(bids, dtype=torch.int64))
    seen = {re.sub(r"\d+", "#", w["message"].rsplit(" (first seen", 1)[0])
            for w in run.warnings if w["model"] == m.name and w["check"] == f"search:{sname}"}
    for w in caught:
        msg = str(w.message)
        dedupe = re.sub(r"\d+", "#", msg)  # once per model × search, not per batch
        if dedupe not in seen:
            seen.add(dedupe)
            run.warn(m.name, f"search:{sname}", f"{msg} (first seen in batch {bi})")
    x_norm = ds.pixels(sl).flatten(1).double().norm(dim=1).numpy()
    rows = result_rows(res, bids, ds.labels[sl].tolist(), m.clean_pred[sl], x_norm, sname)
    if adversarials_dir is not None:
        save_shard(adversarials_dir / _safe_name(m.name) / _safe_name(sname) / f"batch-{bi:04d}.safetensors",
                   res.adversarial, bids, {"model": m.name, "search": sname, "batch_key": key})
    run.writer.put_batch(m.name, sname, key, rows)
    return True


def _order_checks(run: _Run, m: ModelEntry) -> None:
    # every search stored for the model (a run extended with more searches holds earlier ones too)
    stored = {x.get("name"): x.get("searches") or {} for x in run.plan.identity.get("models") or []}.get(m.name, {})
    configs = {**stored, **{s: search_config(m.searches[s]) for s in run.plan.config.attacks}}
    results = {s: run.store.results(m.name, s) for s in configs}
    for weak, strong in ORDER_PAIRS:
        if weak in results and strong in results:
            v, c = order_violations(results[weak]["l2"], results[strong]["l2"])
            if c and v / c > ORDER_MAX_FRACTION:
                why = ("raw DeepFool (the papers' protocol) returns its first fooling iterate, which can lie "
                       "far past the boundary; 'best' takes the smaller distance per sample, and "
                       "'searches: {deepfool: {refine: true}}' bisects back to the boundary"
                       if strong == "deepfool" and not (configs[strong] or {}).get("refine") else
                       f"{strong} is probably under-budgeted or the model masks gradients; its distances "
                       "overstate robustness")
                run.warn(m.name, "search-order",
                         f"{weak} found a closer fooling point than {strong} on {v} of {c} samples "
                         f"({v / c:.0%}) that both fooled: {why}")


def run_scope(plan: AuditPlan) -> tuple[list[str], dict[str, list[str]]]:
    """The models of ``plan``'s identity and each one's searches, in order: after
    :func:`open_store`, the whole run a plan extended (the stored models and searches too)."""
    ident = plan.identity.get("models") or []
    return [m["name"] for m in ident], {m["name"]: list(m.get("searches") or {}) for m in ident}


def summarize_run(store: ResultStore, models: Optional[Sequence[str]] = None,
                  searches: Optional[Sequence[str] | Mapping[str, Sequence[str]]] = None) -> dict:
    """The run's summary from stored rows: per model clean accuracy, ‖J‖_F (:func:`jacobian_summary`),
    noise accuracy, per search :func:`.output.search_numbers` with its ``protocol``
    (:func:`.plan.protocol`), ``search_settings`` (each search's resolved config and protocol)
    and ``best``: the summary of the per-sample best known distance over the searches
    (:mod:`.best`; ``found_by``: how many samples each search holds it for), the headline.
    ``searches``: one list for every model, or a list per model name (:func:`run_scope`)."""
    meta = store.meta()
    rows = {r["model"]: r for r in store.models()}
    names = list(models) if models is not None else list(rows)
    settings = search_settings(meta)
    done = store.completeness()
    out_models = []
    for name in names:
        r = rows.get(name, {})
        if isinstance(searches, Mapping):
            snames = list(searches.get(name) or store.searches(name))
        else:
            snames = list(searches) if searches is not None else store.searches(name)
        per = {}
        cols = {}
        for s in snames:
            res = cols[s] = store.results(name, s)
            jsma = s.lower().startswith("jsma")  # JSMA's L0 numbers beside its L2 ones
            per[s] = search_numbers(res, card_n_inputs(r.get("card")) if jsma else None, l0=jsma)
            per[s]["protocol"] = settings.get(name, {}).get(s, {}).get("protocol")
        best = None
        if cols and any(len(c["l2"]) for c in cols.values()):
            b = best_rows(cols, snames)
            best = {**search_numbers(b), "protocol": f"best of {', '.join(snames)}",
                    "over": list(snames), "found_by": found_by(b)}
        out_models.append({
            "name": name,
            "checkpoint": r.get("checkpoint"),
            "dataset": (r.get("card") or {}).get("dataset"),
            "clean_accuracy": r.get("clean_accuracy"),
            "jacobian_norm": r.get("jacobian_norm"),
            "jacobian": jacobian_summary(r),
            "noise_accuracy": [{"sigma": s, "accuracy": a, "n": n} for s, a, n in store.noise_accuracy(name)],
            "best": best,
            "searches": per,
            "search_settings": settings.get(name, {}),
            "n": r.get("n"),
            "coverage": done["coverage"].get(name, {}),
        })
    return {"run_dir": None if store.run_dir is None else str(store.run_dir), "models": out_models,
            "budget": (meta.get("config") or {}).get("budget"), "seed": meta.get("seed"),
            "complete": done["complete"], "incomplete": done["reasons"],
            "warnings": meta.get("warnings", []), "metrics_note": SAMPLES_NOTE}
