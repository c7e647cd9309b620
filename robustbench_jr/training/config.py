"""The training configuration: one dataclass, read from YAML with CLI overrides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..config import build_config, check_constraints, param
from ..data import DATASETS, is_dataset
from ..jacobian import REGULARIZERS, build_regularizer
from ..models import ARCHITECTURES, is_arch_spec
from ..errors import ConfigError, unknown_name


@dataclass
class TrainConfig:
    """Every knob of a `jr-train` run. Defaults are Hoffman et al.'s LeNet'/MNIST protocol
    (SGD momentum 0.9, batch 100, lr 0.1 ×0.1 every 50k steps, 150k steps, weight decay
    5e-4, dropout 0.5), without a Jacobian penalty.

    Ranges, choices and help texts are declared on the fields (:func:`~robustbench_jr.config.param`);
    `jr-train`'s options are generated from them."""

    model: str = param("lenet", doc="Architecture: a registry name, timm:NAME, torchvision:NAME, "
                                    "pkg.module:factory or path/to/models.py:factory")
    dataset: str = param("mnist", doc="Dataset: a registered name, or your data as folder:PATH, npz:PATH or "
                                      "safetensors:PATH")
    data_root: Optional[str] = param(None, doc="Directory holding the data")
    # the user's architectures and data
    arch_kwargs: dict = param(default_factory=dict, doc="Keyword arguments of a timm/torchvision/factory "
                                                        "architecture, e.g. '{width: 16}' or width=16")
    mean: Optional[list[float]] = param(None, doc="Per-channel mean the model subtracts, in [0,1] pixel units "
                                                  "(default: the checkpoint's, the dataset's or the pretrained config's)")
    std: Optional[list[float]] = param(None, doc="Per-channel std the model divides by (with --mean)")
    input_size: Optional[list[int]] = param(None, doc="Input shape C,H,W the model takes (default: its card or "
                                                      "config, else the data's)")
    image_size: Optional[int] = param(None, ge=1, doc="Image folders: resize the shorter side and centre crop "
                                                      "to this (default: the model's input size)")
    resize: Optional[int] = param(None, ge=1, doc="Image folders: resize the shorter side to this")
    crop: Optional[int] = param(None, ge=1, doc="Image folders: centre crop of this size after --resize")
    download: bool = param(False, doc="Let torchvision download missing data")
    # optimisation
    optimizer: str = param("sgd", choices=("sgd", "adam"), doc="Optimizer")
    lr: float = param(0.1, gt=0, doc="Initial learning rate")
    momentum: float = param(0.9, ge=0, lt=1, doc="SGD momentum")
    weight_decay: float = param(5e-4, ge=0, doc="L2 weight decay")
    lr_decay: float = param(0.1, gt=0, le=1, doc="Step-decay factor: the learning rate is multiplied by it "
                                               "every --lr-step steps")
    lr_step: int = param(50_000, ge=0, doc="Decay every this many steps; 0 = constant")
    steps: Optional[int] = param(150_000, ge=1, doc="Total SGD steps (iterations); or set --epochs")
    epochs: Optional[float] = param(None, gt=0, doc="Train for this many epochs instead of --steps")
    batch_size: int = param(100, ge=0, doc="Mini-batch size; 0 = full batch")
    dropout: Optional[float] = param(None, ge=0, lt=1, doc="Dropout rate; unset = the architecture's default")
    # input-gradient regularization
    regularizer: str = param("none", doc="Input-gradient regularizer")  # see robustbench_jr.jacobian.REGULARIZERS
    lam: float = param(0.0, ge=0, doc="Regularizer weight λ")
    n_proj: int = param(1, ge=1, doc="Random projections, for the jr estimator")
    reg_space: str = param("pixel", choices=("pixel", "normalized"),
                           doc="Input space of the Jacobian penalty (Hoffman reports ‖J‖ w.r.t. the normalised input)")
    reg_options: dict = param(default_factory=dict, doc="Further options of the regularizer (YAML mapping)")
    # adversarial training (Hoffman: FGSM with ε ~ U[0, ε_max] on part of each batch)
    adv_fraction: float = param(0.0, ge=0, le=1, doc="Fraction of each batch replaced by FGSM examples")
    adv_eps_max: float = param(0.01, ge=0, doc="FGSM ε ~ U[0, ε_max], in [0, 1] pixel units")
    # data subsets
    few_shot: Optional[int] = param(None, ge=1, doc="Use k training samples per class")
    train_limit: Optional[int] = param(None, ge=1, doc="Use only the first N training images (smoke tests)")
    # bookkeeping
    seed: int = param(0, doc="Random seed")
    device: str = param("auto", doc="auto (CUDA when present), cpu, cuda or cuda:N")
    eval_every: int = param(2_000, ge=0, doc="Held-out evaluation every N steps; 0 = only at the end")
    eval_samples: int = param(1_000, ge=1, doc="Held-out samples for periodic evaluation")
    save_every: int = param(1_000, ge=1, doc="Save resumable training state every N steps (for --resume)")
    log_every: int = param(50, ge=1, doc="Log metrics every N steps")

    def validate(self) -> None:
        """Checks across fields and against the registries; each field's own range is
        declared on it and checked by :func:`~robustbench_jr.config.check_constraints`."""
        # open registries (names are registered at import), with the shared unknown-name wording
        if not is_arch_spec(self.model):
            err = unknown_name("model", self.model, ARCHITECTURES)
            raise ConfigError(f"{err}; or timm:NAME, torchvision:NAME, pkg.module:factory, path/to/models.py:factory")
        if not is_dataset(self.dataset):
            err = unknown_name("dataset", self.dataset, DATASETS)
            raise ConfigError(f"{err}; or your data as folder:PATH, npz:PATH or safetensors:PATH")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("give both mean and std (one value, or one per channel)")
        if self.regularizer not in REGULARIZERS:
            raise unknown_name("regularizer", self.regularizer, REGULARIZERS)
        if self.steps is None and self.epochs is None:
            raise ConfigError("set either steps or epochs")
        if self.regularizer != "none" and self.lam == 0:
            raise ConfigError(f"regularizer {self.regularizer!r} needs lam > 0 (or use regularizer: none)")
        # options are checked by building the regularizer once
        self.build_regularizer()

    def build_regularizer(self):

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
    model/dataset, a YAML file, command-line options with the untyped ones dropped; an explicit
    ``None`` is a null, see :func:`~robustbench_jr.config.build_config`).

    - ``epochs`` given without ``steps`` replaces the default step count; a layer giving both is
      an error, and of two layers the later one's choice counts;
    - ``finetune``: the post-processing defaults come first, and ``jr-exact`` gets
      Jakubovitz–Giryes' penalty form unless the layers name one.
    This is what `jr-train fit|finetune` and `jr-train table` both use.
    """

    layers = [dict(layer or {}) for layer in layers]
    cfg = build_config(TrainConfig, FINETUNE_DEFAULTS if finetune else {}, *layers, where=where)
    changed = False
    # steps and epochs say how long, two ways: one layer (the command line, a file) giving both is
    # a contradiction; across layers the later one wins (a file's steps, then --epochs)
    for layer in layers:
        if layer.get("steps") is not None and layer.get("epochs") is not None:
            raise ConfigError(f"{where}: both steps ({layer['steps']}) and epochs ({layer['epochs']}) are given; "
                              "they set the same length two ways: keep one (--steps N or --epochs E)")
    last = next((k for layer in reversed(layers) for k in ("steps", "epochs") if layer.get(k) is not None), None)
    if last == "epochs" and cfg.steps is not None:
        cfg.steps = None
        changed = True
    elif last == "steps" and cfg.epochs is not None:
        cfg.epochs = None
        changed = True
    if finetune and cfg.regularizer == "jr-exact" and "form" not in (cfg.reg_options or {}):
        cfg.reg_options = {**(cfg.reg_options or {}), "form": "jg"}
        changed = True
    if changed:
        check_constraints(cfg, where)
        cfg.validate()
    return cfg
