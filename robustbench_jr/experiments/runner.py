"""Run an experiment table's jobs: train (or skip) its runs and evaluate them.

Writing the table (numbers, checks, table.md/json) is :mod:`.render`'s; running a table
from start to end (train, evaluate, render) is :mod:`.pipeline`'s. Messages and progress
leave through ``RunnerOptions.on_event`` (:class:`robustbench_jr.runtime.Event`): ``info``
events carry a ``tag`` in their data (``skip``, ``train``, ``resume``, ``eval``, ``audit``).

Layout of the results (``--results``, default ``results/``)::

    results/<table>[@<scaling>]/<run>/      model.safetensors, card.yaml, metrics.jsonl, config.yaml
                                            (runs trained in this table), eval.json, audit/
    results/<table>[@<scaling>]/table.md, table.json, report/, training_curves.png

A run whose directory already holds ``card.yaml`` trained with the same resolved config
(and, for a fine-tune, the same parent weights) is skipped; an interrupted one (training
state but no card) is resumed; one with a *different* config is refused rather than
overwritten. Audits resume by themselves (see :mod:`robustbench_jr.evaluation.audit`).
A scaled run (``steps_scale`` < 1, ``max_steps``, ``audit_n``) writes into
``results/<table>@<scaling>/`` so it never mixes with the full runs. An audit cap alone
(``@n<N>``) changes no weights: its trained runs are read from (and, when missing, trained
into) ``results/<table>/``; only its evaluations and table go to ``@n<N>``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
import yaml

from .. import runtime
from ..config import build_config, to_dict
from ..data import load_dataset
from ..errors import ConfigError
from ..evaluation.audit import AuditConfig, run_audit
from ..evaluation.store import ResultStore
from ..models import load_checkpoint
from ..models.checkpoint import sha256_file
from ..runtime import EventHandler, emit
from ..training import train
from ..training.loop import accuracy
from .configs import EXECUTION_ONLY, Scaling, build_run_config, config_differences, finetune_defaults  # noqa: F401
from .spec import Catalog, RunSpec, TableSpec

EVAL_FILE = "eval.json"
AUDIT_DIR = "audit"
PROGRESS_EVENTS = ("task", "advance", "done")


# ---------------------------------------------------------------------------
# scaling and options
# ---------------------------------------------------------------------------

@dataclass
class RunnerOptions:
    results: Path = Path("results")
    scaling: Scaling = field(default_factory=Scaling)
    device: Optional[str] = None
    data_root: Optional[str] = None
    only: Optional[list[str]] = None
    dry_run: bool = False
    table_only: bool = False
    #: forward the progress events (task/advance/done) of training and audits to ``on_event``
    progress: bool = True
    #: receives the runner's messages and the training and audit progress events
    on_event: Optional[EventHandler] = None
    #: also copy each written table.md / table.json to DOCS/<table>.md / DOCS/<table>.json
    #: (full, unscaled tables only; e.g. docs/reproduction)
    docs: Optional[Path] = None


def results_dir(results: Path, table: str, scaling: Scaling, training_only: bool = False) -> Path:
    return Path(results) / f"{table}{scaling.suffix(training_only)}"


# ---------------------------------------------------------------------------
# cards and hardware
# ---------------------------------------------------------------------------

def _read_card(d: Path) -> Optional[dict]:
    p = d / "card.yaml"
    if not p.is_file():
        return None
    try:
        card = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: unreadable card ({exc}); delete the run directory to retrain it") from None
    return card if isinstance(card, dict) else None


def hardware() -> dict:
    """The machine of this invocation (from :func:`robustbench_jr.runtime.hardware`), with the
    logical CPU count and every GPU."""
    hw = runtime.hardware()
    out = {"cpu": hw["cpu"], "logical_cpus": os.cpu_count(), "torch_threads": hw["cpu_threads"],
           "torch": hw["torch"], "python": hw["python"], "platform": hw["platform"]}
    if torch.cuda.is_available():
        out["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return out


def hardware_line(hw: dict) -> str:
    s = f"{hw['cpu']} ({hw['logical_cpus']} logical CPUs, torch threads {hw['torch_threads']})"
    if hw.get("gpus"):
        s += "; GPU: " + ", ".join(hw["gpus"])
    return s + f"; torch {hw['torch']}, Python {hw['python']}"


# ---------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------

@dataclass
class TrainJob:
    table: TableSpec
    run: RunSpec
    out: Path
    status: str = ""       # done | resume | new | stale | waiting
    detail: str = ""


class Runner:
    """Trains and evaluates the runs of the tables under one experiments root."""

    def __init__(self, root: str | Path, options: RunnerOptions):
        self.cat = Catalog(root)
        self.opt = options
        self._trained: dict[str, Path] = {}

    # -- messages --
    def say(self, tag: str, message: str) -> None:
        """An ``info`` event (``data["tag"]`` says what kind of message it is)."""
        emit(self.opt.on_event, "info", message=message, data={"tag": tag})

    def warn(self, message: str) -> None:
        emit(self.opt.on_event, "warning", message=message)

    def on_event(self, ev: runtime.Event) -> None:
        """Forward training/audit events (progress only with ``progress``)."""
        if self.opt.on_event is not None and (self.opt.progress or ev.kind not in PROGRESS_EVENTS):
            self.opt.on_event(ev)

    # -- paths --
    def out_dir(self, table: TableSpec) -> Path:
        """Where the table's evaluations (audits, table.md) go."""
        return results_dir(self.opt.results, table.name, self.opt.scaling)

    def train_dir(self, table: TableSpec) -> Path:
        """Where the table's trained runs live: with only ``--audit-n`` given these are the
        full runs (same weights), so capped audits never retrain anything."""
        return results_dir(self.opt.results, table.name, self.opt.scaling, training_only=True)

    def ckpt_dir(self, table: TableSpec, run: RunSpec) -> Path:
        t, r = self.cat.resolve(table, run.name)
        return self.train_dir(t) / r.name

    def config(self, table: TableSpec, run: RunSpec):
        return build_run_config(self.cat, table, run, self.opt.device, self.opt.data_root, self.opt.scaling)

    # -- training --
    def status(self, table: TableSpec, run: RunSpec) -> TrainJob:
        """Where the trained run behind ``run`` stands, without training anything."""
        t, r = self.cat.resolve(table, run.name)
        out = self.train_dir(t) / r.name
        job = TrainJob(t, r, out)
        cfg = to_dict(self.config(t, r))
        parent_sha = None
        if r.finetune_from is not None:
            pjob = self.status(*self.cat.resolve(t, r.finetune_from))
            if pjob.status != "done":
                job.status, job.detail = "waiting", f"after its parent {pjob.table.name}/{pjob.run.name}"
                return job
            parent_sha = sha256_file(pjob.out / "model.safetensors")
        card = _read_card(out)
        if card is not None:
            diffs = config_differences(card.get("training") or {}, cfg)
            old_parent = (card.get("parent") or {}).get("weights_sha256") if r.finetune_from else None
            if r.finetune_from and old_parent != parent_sha:
                diffs.append("parent weights differ (the parent run was retrained)")
            if diffs:
                job.status, job.detail = "stale", "; ".join(diffs)
            else:
                job.status, job.detail = "done", f"{card.get('training', {}).get('steps_done')} steps"
            return job
        if (out / "train_state.pt").is_file():
            job.status, job.detail = "resume", "interrupted run"
        else:
            job.status, job.detail = "new", f"{cfg['steps']} steps"
        return job

    def ensure_trained(self, table: TableSpec, run: RunSpec) -> Optional[Path]:
        """Train the run behind ``run`` (and its parent) unless done; returns its directory
        (None in a dry run when it is not trained yet)."""
        t, r = self.cat.resolve(table, run.name)
        key = f"{t.name}/{r.name}"
        if key in self._trained:
            return self._trained[key]
        parent_dir = None
        if r.finetune_from is not None:
            pt, pr = self.cat.resolve(t, r.finetune_from)
            parent_dir = self.ensure_trained(pt, pr)
            if parent_dir is None:
                return None
        job = self.status(t, r)
        cfg = self.config(t, r)
        if job.status == "stale":
            raise ConfigError(
                f"{job.out} holds a run of {key} trained with a different config, refusing to overwrite it:\n"
                + "".join(f"  - {d}\n" for d in job.detail.split("; "))
                + "Delete that directory to retrain it, or use another --results directory.")
        if job.status == "done":
            self.say("skip", f"skip {key}: done ({job.detail}) in {job.out}")
            self._trained[key] = job.out
            return job.out
        if self.opt.dry_run or self.opt.table_only:
            return None
        self._train(t, r, cfg, job, parent_dir)
        self._trained[key] = job.out
        return job.out

    def _train(self, t: TableSpec, r: RunSpec, cfg, job: TrainJob, parent_dir: Optional[Path]) -> None:
        out = job.out
        resume = job.status == "resume"
        device = runtime.resolve_device(cfg.device)
        if resume and (out / "config.yaml").is_file():
            # a run resumed on another device / data root: keep the saved values so that the
            # training loop's config check passes, and place it where asked
            saved = yaml.safe_load((out / "config.yaml").read_text()) or {}
            for k in EXECUTION_ONLY:
                if k in saved:
                    setattr(cfg, k, saved[k])
        elif not resume and out.is_dir():
            # a start that never reached its first saved state: begin from scratch
            for name in ("metrics.jsonl", "config.yaml"):
                if (out / name).is_file():
                    (out / name).unlink()
        init_model, parent = None, None
        if parent_dir is not None:
            init_model, pcard = load_checkpoint(parent_dir)
            parent = {"checkpoint": str(parent_dir), "run": f"{self._ref_of(parent_dir)}",
                      "architecture": pcard["architecture"], "metrics": pcard.get("metrics"),
                      "weights_sha256": sha256_file(parent_dir / "model.safetensors")}
        what = "resume" if resume else "train"
        self.say(what, f"{what} {t.name}/{r.name}: {cfg.steps} steps on {device} → {out}")
        train(cfg, out, resume=resume, init_model=init_model, parent=parent, device=device, on_event=self.on_event)

    def _ref_of(self, d: Path) -> str:
        return f"{d.parent.name.split('@')[0]}/{d.name}"

    # -- evaluation --
    def evaluate(self, table: TableSpec, run: RunSpec, ckpt: Path) -> dict:
        """Domain-shift accuracy and the audit of one run (each skipped when done)."""
        edir = self.out_dir(table) / run.name
        edir.mkdir(parents=True, exist_ok=True)
        rec = read_eval(edir)
        sha = sha256_file(ckpt / "model.safetensors")
        changed = False
        if run.domain_shift:
            ds = rec.setdefault("domain_shift", {}).get(run.domain_shift)
            if not ds or ds.get("weights_sha256") != sha:
                self.say("eval", f"eval {table.name}/{run.name}: accuracy on {run.domain_shift}")
                rec["domain_shift"][run.domain_shift] = {**domain_shift_accuracy(ckpt, run.domain_shift,
                                                                                  self.opt.data_root, self.opt.device),
                                                         "weights_sha256": sha}
                changed = True
        if run.audit is not None:
            cfg = self.audit_config(run)
            adir = edir / AUDIT_DIR
            complete = False
            if (adir / "results.sqlite").is_file():
                with ResultStore(adir, readonly=True) as st:
                    complete = st.meta().get("status") == "complete"
            self.say("audit", f"audit {table.name}/{run.name}: {', '.join(cfg.attacks)} on {cfg.n} samples → {adir}")
            t0 = time.time()
            run_audit([str(ckpt)], cfg, adir, on_event=self.on_event)
            a = rec.setdefault("audit", {})
            if not complete or "wall_time_s" not in a:
                a["wall_time_s"] = round(a.get("wall_time_s", 0.0) + time.time() - t0, 1)
            a["weights_sha256"] = sha
            changed = True
        if changed:
            rec["hardware"] = hardware()
            write_eval(edir, rec)
        return rec

    def audit_config(self, run: RunSpec):
        over: dict = {}
        if self.opt.device:
            over["device"] = self.opt.device
        if self.opt.data_root:
            over["data_root"] = self.opt.data_root
        cfg = build_config(AuditConfig, run.audit, over, where=f"audit of run {run.name!r}")
        if self.opt.scaling.audit_n is not None:
            cfg.n = min(cfg.n, self.opt.scaling.audit_n)
        cfg.validate()
        return cfg

    def select(self, table: TableSpec) -> list[RunSpec]:
        """The table's runs that ``--only`` selects (all without it)."""
        if not self.opt.only:
            return list(table.runs)
        unknown = [n for n in self.opt.only if n not in {r.name for r in table.runs}]
        if unknown:
            raise ConfigError(f"--only: unknown run(s) {', '.join(unknown)} in table {table.name}; runs: "
                              f"{', '.join(r.name for r in table.runs)}")
        return [r for r in table.runs if r.name in self.opt.only]

    def plan(self, table: TableSpec, runs: list[RunSpec]) -> dict:
        """What a run of the table would train and evaluate (nothing is changed)."""
        rows = []
        for r in runs:
            job = self.status(table, r)
            cfg = self.config(table, r)
            evals = []
            if r.domain_shift:
                evals.append(f"accuracy on {r.domain_shift}")
            if r.audit is not None:
                ac = self.audit_config(r)
                evals.append(f"audit {','.join(ac.attacks)} n={ac.n}")
            how = f"{job.table.name}/{job.run.name}" + (f" ← finetune {job.run.finetune_from}"
                                                        if job.run.finetune_from else "")
            rows.append({"run": r.name, "trained_as": how, "status": job.status, "detail": job.detail,
                         "steps": cfg.steps, "lr_step": cfg.lr_step, "evaluations": evals, "dir": str(job.out)})
        return {"table": table.name, "plan": rows}


# ---------------------------------------------------------------------------
# eval.json, domain shift
# ---------------------------------------------------------------------------

def read_eval(d: Path) -> dict:
    p = Path(d) / EVAL_FILE
    if not p.is_file():
        return {}
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return {}


def write_eval(d: Path, rec: dict) -> None:
    p = Path(d) / EVAL_FILE
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(rec, indent=2, default=str))
    os.replace(tmp, p)


def domain_shift_accuracy(ckpt: Path, dataset: str, data_root: Optional[str] = None,
                          device: Optional[str] = None) -> dict:
    """Accuracy of the checkpoint on ``dataset``'s test split."""
    dev = runtime.resolve_device(device or "auto")
    model, _ = load_checkpoint(ckpt, device=dev)
    ds = load_dataset(dataset, "test", data_root)
    acc = accuracy(model, ds.images, ds.labels)
    return {"accuracy": acc, "n": len(ds), "provenance": ds.provenance}


def finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
