"""The training configuration: one dataclass, read from YAML with CLI overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError


@dataclass
class TrainConfig:
    """Every knob of a `jr-train` run. Defaults are Hoffman et al.'s LeNet'/MNIST protocol
    (SGD momentum 0.9, batch 100, lr 0.1 ×0.1 every 50k steps, 150k steps, weight decay
    5e-4, dropout 0.5), without a Jacobian penalty."""

    model: str = "lenet"
    dataset: str = "mnist"
    data_root: Optional[str] = None
    download: bool = False
    # optimisation
    optimizer: str = "sgd"            # sgd | adam
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_decay: float = 0.1             # multiply the learning rate by this ...
    lr_step: int = 50_000             # ... every lr_step steps (0: constant)
    steps: Optional[int] = 150_000    # total SGD steps (iterations); or set epochs
    epochs: Optional[float] = None
    batch_size: int = 100             # 0: full batch
    dropout: Optional[float] = None   # None: the architecture's default
    # input-gradient regularization
    regularizer: str = "none"         # see robustbench_jr.jacobian.REGULARIZERS
    lam: float = 0.0
    n_proj: int = 1                   # projections, for the 'jr' estimator
    reg_space: str = "pixel"          # pixel | normalized (Hoffman reports ‖J‖ w.r.t. normalised input)
    reg_options: dict = field(default_factory=dict)
    # adversarial training (Hoffman: FGSM with ε ~ U[0, ε_max] on part of each batch)
    adv_fraction: float = 0.0
    adv_eps_max: float = 0.01         # in [0,1] pixel units
    # data subsets
    few_shot: Optional[int] = None    # k training samples per class
    train_limit: Optional[int] = None  # use only the first N training images (smoke tests)
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    eval_every: int = 2_000           # held-out evaluation interval (steps); 0: only at the end
    eval_samples: int = 1_000         # held-out samples for periodic evaluation
    save_every: int = 1_000           # training-state interval for --resume (steps)
    log_every: int = 50

    def validate(self) -> None:
        from ..jacobian import REGULARIZERS
        from ..models import ARCHITECTURES
        from ..data import DATASETS

        if self.model not in ARCHITECTURES:
            raise ConfigError(f"unknown model {self.model!r}; valid models: {', '.join(sorted(ARCHITECTURES))}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; valid datasets: {', '.join(sorted(DATASETS))}")
        if self.regularizer not in REGULARIZERS:
            raise ConfigError(f"unknown regularizer {self.regularizer!r}; valid regularizers: {', '.join(sorted(REGULARIZERS))}")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid optimizers: adam, sgd")
        checks = [
            (self.lam >= 0, f"lam (λ) must be ≥ 0, got {self.lam}"),
            (self.n_proj >= 1, f"n_proj must be ≥ 1, got {self.n_proj}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be ≥ 0, got {self.weight_decay}"),
            (0 < self.lr_decay <= 1, f"lr_decay must be in (0, 1], got {self.lr_decay}"),
            (self.lr_step >= 0, f"lr_step must be ≥ 0, got {self.lr_step}"),
            (self.batch_size >= 0, f"batch_size must be ≥ 0 (0 = full batch), got {self.batch_size}"),
            (self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (0 <= self.adv_fraction <= 1, f"adv_fraction must be in [0, 1], got {self.adv_fraction}"),
            (self.adv_eps_max >= 0, f"adv_eps_max must be ≥ 0, got {self.adv_eps_max}"),
            (self.few_shot is None or self.few_shot >= 1, f"few_shot must be ≥ 1, got {self.few_shot}"),
            (self.train_limit is None or self.train_limit >= 1, f"train_limit must be ≥ 1, got {self.train_limit}"),
            (self.reg_space in ("pixel", "normalized"), f"reg_space must be pixel or normalized, got {self.reg_space!r}"),
            (self.save_every >= 1, f"save_every must be ≥ 1, got {self.save_every}"),
            (self.eval_every >= 0, f"eval_every must be ≥ 0, got {self.eval_every}"),
            (self.log_every >= 1, f"log_every must be ≥ 1, got {self.log_every}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)
        if self.steps is None and self.epochs is None:
            raise ConfigError("set either steps or epochs")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"steps must be ≥ 1, got {self.steps}")
        if self.epochs is not None and self.epochs <= 0:
            raise ConfigError(f"epochs must be > 0, got {self.epochs}")
        if self.regularizer != "none" and self.lam == 0:
            raise ConfigError(f"regularizer {self.regularizer!r} needs lam > 0 (or use regularizer: none)")
        # options are checked by building the regularizer once
        self.build_regularizer()

    def build_regularizer(self):
        from ..jacobian import REGULARIZERS, build_regularizer

        cls = REGULARIZERS[self.regularizer]
        opts = dict(self.reg_options or {})
        if "n_proj" in cls.options:
            opts.setdefault("n_proj", self.n_proj)
        if "space" in cls.options:
            opts.setdefault("space", self.reg_space)
        return build_regularizer(self.regularizer, self.lam, **opts)


#: Post-processing defaults (Jakubovitz & Giryes): Adam, batch 500, exact Jacobian penalty
#: in their form (see jr-exact ``form='jg'``), λ = 0.1 (MNIST).
FINETUNE_DEFAULTS = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "lr_step": 0, "steps": 2000,
                     "batch_size": 500, "regularizer": "jr-exact", "lam": 0.1, "eval_every": 500}


def build_train_config(layers, where: str = "training config", finetune: bool = False) -> TrainConfig:
    """The resolved TrainConfig from mappings in increasing priority (e.g. a parent's
    model/dataset, a YAML file, command-line options; ``None`` values = not given).

    - ``epochs`` given without ``steps`` replaces the default step count;
    - ``finetune``: the post-processing defaults come first, and ``jr-exact`` gets
      Jakubovitz–Giryes' penalty form unless the layers name one.
    This is what `jr-train fit|finetune` and `jr-train table` both use.
    """
    from ..config import build_config

    layers = [dict(layer or {}) for layer in layers]
    cfg = build_config(TrainConfig, FINETUNE_DEFAULTS if finetune else {}, *layers, where=where)
    given = {k: v for layer in layers for k, v in layer.items() if v is not None}
    changed = False
    if given.get("epochs") is not None and given.get("steps") is None:
        cfg.steps = None
        changed = True
    if finetune and cfg.regularizer == "jr-exact" and "form" not in (cfg.reg_options or {}):
        cfg.reg_options = {**(cfg.reg_options or {}), "form": "jg"}
        changed = True
    if changed:
        cfg.validate()
    return cfg
