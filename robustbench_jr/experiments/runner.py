"""Run an experiment table: train (or skip) its runs, evaluate them, write table.md/json.

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
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ..config import build_config, read_yaml, to_dict
from ..training.config import build_train_config
from ..errors import ConfigError
from ..models.checkpoint import sha256_file
from .spec import Catalog, RunSpec, TableSpec, load_table, table_dirs

#: TrainConfig fields that place a run but do not change its results
EXECUTION_ONLY = ("device", "data_root")
EVAL_FILE = "eval.json"
AUDIT_DIR = "audit"


# ---------------------------------------------------------------------------
# scaling and options
# ---------------------------------------------------------------------------

@dataclass
class Scaling:
    """Shorter runs for smoke tests and CPU: steps (and lr_step) × ``steps_scale``, then
    capped at ``max_steps`` (lr_step shrinks in proportion); audits capped at ``audit_n``."""

    steps_scale: float = 1.0
    max_steps: Optional[int] = None
    audit_n: Optional[int] = None

    def __post_init__(self):
        if not (isinstance(self.steps_scale, (int, float)) and 0 < self.steps_scale <= 1):
            raise ConfigError(f"--steps-scale must be in (0, 1], got {self.steps_scale!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"--max-steps must be ≥ 1, got {self.max_steps}")
        if self.audit_n is not None and self.audit_n < 1:
            raise ConfigError(f"--audit-n must be ≥ 1, got {self.audit_n}")

    @property
    def is_full(self) -> bool:
        return self.steps_scale == 1 and self.max_steps is None and self.audit_n is None

    def suffix(self, training_only: bool = False) -> str:
        """``@scale0.1-max20-n50`` and the like ("" when full). ``training_only``: the part
        that changes what is trained — an audit cap alone reuses the full runs' weights."""
        parts = []
        if self.steps_scale != 1:
            parts.append(f"scale{self.steps_scale:g}")
        if self.max_steps is not None:
            parts.append(f"max{self.max_steps}")
        if self.audit_n is not None and not training_only:
            parts.append(f"n{self.audit_n}")
        return "" if not parts else "@" + "-".join(parts)

    def describe(self) -> str:
        if self.is_full:
            return "full schedule"
        bits = []
        if self.steps_scale != 1:
            bits.append(f"steps × {self.steps_scale:g}")
        if self.max_steps is not None:
            bits.append(f"at most {self.max_steps} steps")
        if self.audit_n is not None:
            bits.append(f"audits on at most {self.audit_n} samples")
        return ", ".join(bits)

    def apply(self, cfg) -> float:
        """Shorten ``cfg`` in place; returns the factor its steps were multiplied by."""
        factor = float(self.steps_scale)
        if cfg.steps is None:  # an epochs-based config
            if self.max_steps is not None:
                raise ConfigError("--max-steps needs configs with 'steps'; this one sets 'epochs' "
                                  "(use --steps-scale)")
            cfg.epochs = cfg.epochs * factor
            return factor
        full = int(cfg.steps)
        steps = max(1, int(round(full * factor)))
        if self.max_steps is not None and steps > self.max_steps:
            steps = self.max_steps
        factor = steps / full
        if steps != full:
            cfg.steps = steps
            if cfg.lr_step > 0:
                cfg.lr_step = max(1, int(round(cfg.lr_step * factor)))
            if cfg.eval_every > steps:
                cfg.eval_every = steps
            if cfg.save_every > steps:
                cfg.save_every = steps
        return factor


@dataclass
class RunnerOptions:
    results: Path = Path("results")
    scaling: Scaling = field(default_factory=Scaling)
    device: Optional[str] = None
    data_root: Optional[str] = None
    only: Optional[list[str]] = None
    dry_run: bool = False
    table_only: bool = False
    progress: bool = True


def results_dir(results: Path, table: str, scaling: Scaling, training_only: bool = False) -> Path:
    return Path(results) / f"{table}{scaling.suffix(training_only)}"


# ---------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------

def finetune_defaults() -> dict:
    """The post-processing defaults of `jr-train finetune` (Jakubovitz–Giryes)."""
    from ..training.config import FINETUNE_DEFAULTS

    return dict(FINETUNE_DEFAULTS)


def build_run_config(cat: Catalog, table: TableSpec, run: RunSpec, device: Optional[str] = None,
                     data_root: Optional[str] = None, scaling: Optional[Scaling] = None):
    """The resolved TrainConfig of a trained run (a ``use`` run: of the run it uses),
    exactly as ``jr-train fit --config`` (or ``jr-train finetune PARENT --config``) would
    build it, plus the device/data-root overrides and the scaling."""

    if run.use is not None:
        t, r = cat.resolve(table, run.name)
        return build_run_config(cat, t, r, device, data_root, scaling)
    path = table.dir / run.config
    file_layer = read_yaml(path)
    base: dict = {}
    if run.finetune_from is not None:
        pt, pr = cat.resolve(table, run.finetune_from)
        parent = build_run_config(cat, pt, pr)
        base = {"model": parent.model, "dataset": parent.dataset}
    cli_layer = {"device": device, "data_root": data_root}
    cfg = build_train_config([base, file_layer, cli_layer], where=f"training config {str(path)!r}",
                             finetune=run.finetune_from is not None)
    if scaling is not None:
        scaling.apply(cfg)
        cfg.validate()
    return cfg


def _comparable(cfg_dict: dict) -> dict:
    from ..training import TrainConfig
    import dataclasses

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in cfg_dict.items() if k in names and k not in EXECUTION_ONLY}


def config_differences(old: dict, new: dict) -> list[str]:
    a, b = _comparable(old), _comparable(new)
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _read_card(d: Path) -> Optional[dict]:
    p = d / "card.yaml"
    if not p.is_file():
        return None
    try:
        card = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: unreadable card ({exc}); delete the run directory to retrain it") from None
    return card if isinstance(card, dict) else None


# ---------------------------------------------------------------------------
# hardware
# ---------------------------------------------------------------------------

def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: Optional[str] = None) -> dict:
    import torch

    hw = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
          "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hw


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
    def __init__(self, root: str | Path, options: RunnerOptions, console=None):
        from rich.console import Console

        self.cat = Catalog(root)
        self.opt = options
        self.console = console or Console(stderr=True)
        self._trained: dict[str, Path] = {}

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
            self.console.print(f"[dim]skip[/] {key}: done ({job.detail}) in {job.out}", highlight=False)
            self._trained[key] = job.out
            return job.out
        if self.opt.dry_run or self.opt.table_only:
            return None
        self._train(t, r, cfg, job, parent_dir)
        self._trained[key] = job.out
        return job.out

    def _train(self, t: TableSpec, r: RunSpec, cfg, job: TrainJob, parent_dir: Optional[Path]) -> None:
        from ..cli.common import resolve_device
        from ..training import train

        out = job.out
        resume = job.status == "resume"
        device = resolve_device(cfg.device)
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
            from ..models import load_checkpoint

            init_model, pcard = load_checkpoint(parent_dir)
            parent = {"checkpoint": str(parent_dir), "run": f"{self._ref_of(parent_dir)}",
                      "architecture": pcard["architecture"], "metrics": pcard.get("metrics"),
                      "weights_sha256": sha256_file(parent_dir / "model.safetensors")}
        what = "resume" if resume else "train"
        self.console.print(f"[bold cyan]{what}[/] {t.name}/{r.name}: {cfg.steps} steps on {device} → {out}",
                           highlight=False)
        train(cfg, out, resume=resume, init_model=init_model, parent=parent, progress=self.opt.progress,
              device=device)

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
                self.console.print(f"[bold cyan]eval[/] {table.name}/{run.name}: accuracy on "
                                   f"{run.domain_shift}", highlight=False)
                rec["domain_shift"][run.domain_shift] = {**domain_shift_accuracy(ckpt, run.domain_shift,
                                                                                  self.opt.data_root, self.opt.device),
                                                         "weights_sha256": sha}
                changed = True
        if run.audit is not None:
            cfg = self.audit_config(run)
            from ..evaluation.audit import run_audit
            from ..evaluation.store import ResultStore

            adir = edir / AUDIT_DIR
            complete = False
            if (adir / "results.sqlite").is_file():
                with ResultStore(adir, readonly=True) as st:
                    complete = st.meta().get("status") == "complete"
            self.console.print(f"[bold cyan]audit[/] {table.name}/{run.name}: {', '.join(cfg.attacks)} on "
                               f"{cfg.n} samples → {adir}", highlight=False)
            t0 = time.time()
            run_audit([str(ckpt)], cfg, adir, progress=self.opt.progress, console=self.console)
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
        from ..evaluation.audit import AuditConfig

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

    # -- one table --
    def run_table(self, table_dir: str | Path) -> dict:
        from .render import collect, write_outputs

        table = load_table(table_dir)
        self.cat.add(table)
        selected = table.runs
        if self.opt.only:
            unknown = [n for n in self.opt.only if n not in {r.name for r in table.runs}]
            if unknown:
                raise ConfigError(f"--only: unknown run(s) {', '.join(unknown)} in table {table.name}; runs: "
                                  f"{', '.join(r.name for r in table.runs)}")
            selected = [r for r in table.runs if r.name in self.opt.only]
        out = self.out_dir(table)
        self.console.print(f"[bold]table {table.name}[/] ({self.opt.scaling.describe()}) → {out}", highlight=False)
        if self.opt.dry_run:
            return self.plan(table, selected)
        if not self.opt.table_only:
            for r in selected:
                ckpt = self.ensure_trained(table, r)
                if ckpt is not None:
                    self.evaluate(table, r, ckpt)
        data = collect(self, table)
        write_outputs(self, table, data)
        return data

    def plan(self, table: TableSpec, runs: list[RunSpec]) -> dict:
        from rich.table import Table

        t = Table(title=f"plan: {table.name}", title_justify="left")
        for c in ("run", "trained as", "status", "steps", "lr_step", "evaluations", "directory"):
            t.add_column(c)
        rows = []
        for r in runs:
            job = self.status(table, r)
            cfg = self.config(table, r)
            evals = []
            if r.domain_shift:
                evals.append(f"accuracy on {r.domain_shift}")
            if r.audit is not None:
                try:
                    ac = self.audit_config(r)
                    evals.append(f"audit {','.join(ac.attacks)} n={ac.n}")
                except ImportError:
                    evals.append("audit (audit package missing)")
            how = f"{job.table.name}/{job.run.name}" + (f" ← finetune {job.run.finetune_from}"
                                                        if job.run.finetune_from else "")
            row = {"run": r.name, "trained_as": how, "status": job.status, "detail": job.detail,
                   "steps": cfg.steps, "lr_step": cfg.lr_step, "evaluations": evals, "dir": str(job.out)}
            rows.append(row)
            t.add_row(r.name, how, f"{job.status} ({job.detail})" if job.detail else job.status, str(cfg.steps),
                      str(cfg.lr_step), "; ".join(evals) or "card only", str(job.out))
        self.console.print(t)
        return {"table": table.name, "plan": rows}


def run_tables(root_or_table: str | Path, options: RunnerOptions, all_tables: bool = False, console=None) -> list[dict]:
    """Run one table directory, or (``all_tables``) every table under a root directory."""
    p = Path(root_or_table)
    if all_tables:
        dirs = table_dirs(p)
        if not dirs:
            raise ConfigError(f"no experiment tables under {p} (subdirectories with table.yaml)")
        root = p
    else:
        if not (p / "table.yaml").is_file():
            raise ConfigError(f"{p} is not an experiment table (no table.yaml); to run every table under it use "
                              f"--all")
        dirs, root = [p], p.resolve().parent
    runner = Runner(root, options, console)
    return [runner.run_table(d) for d in dirs]


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
    from ..cli.common import resolve_device
    from ..data import load_dataset
    from ..models import load_checkpoint
    from ..training.loop import accuracy

    dev = resolve_device(device or "auto")
    model, _ = load_checkpoint(ckpt, device=dev)
    ds = load_dataset(dataset, "test", data_root)
    acc = accuracy(model, ds.images, ds.labels)
    return {"accuracy": acc, "n": len(ds), "provenance": ds.provenance}


def finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
