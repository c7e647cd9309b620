"""The training configs of an experiment table's runs: scaling, resolution, comparison,
and the validation of a whole experiments directory.

A trained run's config is built exactly as ``jr-train fit --config`` (or, for a run with
``finetune_from``, ``jr-train finetune PARENT --config``) would build it from the run's
YAML, plus the device/data-root overrides and the :class:`Scaling` of a shortened run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..config import given, read_yaml, to_dict
from ..errors import ConfigError
from ..evaluation.plan import short_hash
from ..training import TrainConfig
from ..training.config import FINETUNE_DEFAULTS, build_train_config
from .spec import TABLE_FILE, Catalog, RunSpec, TableSpec, load_table, table_dirs

#: TrainConfig fields that place a run but do not change its results
EXECUTION_ONLY = ("device", "data_root")


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


def finetune_defaults() -> dict:
    """The post-processing defaults of `jr-train finetune` (Jakubovitz–Giryes)."""
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
    cli_layer = given({"device": device, "data_root": data_root})  # None: not given (no override)
    cfg = build_train_config([base, file_layer, cli_layer], where=f"training config {str(path)!r}",
                             finetune=run.finetune_from is not None)
    if scaling is not None:
        scaling.apply(cfg)
        cfg.validate()
    return cfg


def _comparable(cfg_dict: dict) -> dict:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in cfg_dict.items() if k in names and k not in EXECUTION_ONLY}


def config_hash(cfg_dict: dict) -> str:
    """The hash of a run's training config (:func:`~robustbench_jr.evaluation.plan.short_hash`
    of the fields that change results and differ from TrainConfig's defaults,
    :data:`EXECUTION_ONLY` left out): equal for the config a table plans and the
    ``training`` section of the card it produced, and unchanged when TrainConfig gains a
    field whose default keeps the old behaviour."""
    defaults = _comparable(to_dict(TrainConfig()))
    return short_hash({k: v for k, v in _comparable(cfg_dict).items() if k not in defaults or defaults[k] != v})


def config_differences(old: dict, new: dict) -> list[str]:
    """``key: old → new`` for every TrainConfig field that changes results and differs."""
    a, b = _comparable(old), _comparable(new)
    return [f"{k}: {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def validate_experiments(root: str | Path) -> list[TableSpec]:
    """Check every table under ``root``: table.yaml parses, every run's training YAML
    builds a TrainConfig (fine-tunes on top of the post-processing defaults), every
    reference (``use``, ``finetune_from``) exists, and every YAML in a table directory
    belongs to a run. Returns the tables; raises :class:`ConfigError` listing every problem."""
    dirs = table_dirs(root)
    if not dirs:
        raise ConfigError(f"no experiment tables under {root} (subdirectories with {TABLE_FILE})")
    cat = Catalog(root)
    problems: list[str] = []
    tables = []
    for d in dirs:
        try:
            t = load_table(d)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        cat.add(t)
        tables.append(t)
    for t in tables:
        used = {TABLE_FILE}
        for r in t.runs:
            try:
                cat.resolve(t, r.name)
                if r.trains:
                    used.add(r.config)
                    build_run_config(cat, t, r)
            except ConfigError as exc:
                problems.append(f"{t.name}/{r.name}: {exc}")
        for y in sorted(p.name for p in t.dir.iterdir() if p.suffix in (".yaml", ".yml")):
            if y not in used:
                problems.append(f"{t.dir / y}: not the config of any run in {t.dir / TABLE_FILE} "
                                f"(one YAML per run; remove it or add the run)")
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in {root}:\n" + "\n".join(f"  - {p}" for p in problems))
    return tables
