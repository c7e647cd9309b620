"""The training loop: cross-entropy + input-gradient regularizer (+ FGSM adversarial
training), step-decay schedule, periodic held-out evaluation, atomic resumable state.

Resuming: the full state (model, optimizer, step, RNG states of the dropout / Jacobian
projection / adversarial generators) is saved atomically every ``save_every`` steps;
the data order is a pure function of (seed, epoch), so a resumed run continues to the
same final weights as an uninterrupted one (on CPU, where kernels are deterministic).
A finished run resumed with more steps (``--resume --steps N``) is extended the same way:
its weights and metrics log end as those of an uninterrupted run of N steps. A resume may
change only the fields of :data:`RESUME_MAY_CHANGE`; the others are refused.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Optional

import torch
import torch.nn.functional as F

import yaml

from .._version import __version__
from ..config import to_dict
from ..data import absolute_data_spec, bundled_mnist, few_shot, get_dataset_info, load_dataset
from ..errors import ConfigError, DataFileError, DataNotFoundError, InputError, JRError
from ..jacobian import mean_jacobian_norms
from ..models import PixelSpaceModel, folder_options, make_model, save_checkpoint, settle_model
from ..runtime import SINGLE, Dist, EventHandler, derive_seed, dist_context, emit, generator
from .config import TrainConfig, build_train_config

STATE_FILE = "train_state.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


class TrainingDiverged(JRError):
    """The loss became NaN or infinite."""


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Step decay: lr · lr_decay^(step // lr_step).

    The schedule does not depend on the total number of steps: a finished run extended with
    ``--resume --steps N`` follows, step for step, the schedule of an uninterrupted run of N
    steps (see :data:`RESUME_MAY_CHANGE`). A schedule relative to the total (cosine, decay at
    fractions of ``steps``) would change the steps already done; it must not be added
    without making a changed total refuse to resume."""
    if cfg.lr_step <= 0:
        return cfg.lr
    return cfg.lr * cfg.lr_decay ** (step // cfg.lr_step)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """Indices of the mini-batch at ``step``: epochs are seeded permutations, a pure
    function of (seed, epoch); a ragged tail is dropped so every batch has batch_size."""
    if batch_size == 0 or batch_size >= n:
        return torch.arange(n)
    epoch, pos = divmod(step, n // batch_size)
    return _epoch_permutation(n, seed, epoch)[pos * batch_size:(pos + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's seeded permutation, drawn once per epoch rather than once per step
    (callers only slice it, never modify it)."""
    return torch.randperm(n, generator=generator(seed, "shuffle", epoch))


def fgsm_perturb(model, x, y, eps_max: float, generator: Optional[torch.Generator] = None,
                 eps: Optional[torch.Tensor] = None) -> torch.Tensor:
    """FGSM with a per-sample ε ~ U[0, ε_max] (Hoffman et al.'s adversarial training), in
    [0, 1] pixel space, clipped to [0, 1]. ``eps`` ([len(x)] in [0, 1), scaled by ε_max)
    gives the draws; otherwise they come from ``generator``."""
    x = x.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x), y)
    (g,) = torch.autograd.grad(loss, x)
    if eps is None:
        eps = torch.rand(len(x), generator=generator, device=x.device, dtype=x.dtype)
    eps = eps.to(device=x.device, dtype=x.dtype) * eps_max
    return (x + eps.view(-1, *[1] * (x.ndim - 1)) * g.sign()).clamp_(0, 1).detach()


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct = 0
    for s in range(0, len(labels), batch_size):
        x = images[s:s + batch_size].to(dev)
        x = x.float().div(255) if x.dtype == torch.uint8 else x
        correct += (model(x).argmax(1).cpu() == labels[s:s + batch_size]).sum().item()
    model.train(was)
    return correct / max(len(labels), 1)


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _folder(cfg: TrainConfig, model=None) -> dict:
    """An image folder's resize/crop/channels (from the config, else the model's input)."""
    if not cfg.dataset.startswith("folder:"):
        return {}
    return folder_options(model, cfg.image_size, cfg.resize, cfg.crop)


def _load_train_data(cfg: TrainConfig, model=None):
    train = load_dataset(cfg.dataset, "train", cfg.data_root, cfg.download, **_folder(cfg, model))
    if cfg.train_limit:
        train = train.first(cfg.train_limit)
    if cfg.few_shot:
        train = few_shot(train, cfg.few_shot, cfg.seed)
    return train


def _load_heldout(cfg: TrainConfig, model=None):
    try:
        return load_dataset(cfg.dataset, "test", cfg.data_root, cfg.download, **_folder(cfg, model))
    except DataNotFoundError as exc:
        if cfg.dataset == "mnist" and not isinstance(exc, DataFileError):  # an unreadable file is an error
            return bundled_mnist()
        raise


def _check_model_data(model: PixelSpaceModel, *datasets) -> None:
    """The model takes the data's input shape and has a class for every label (one clear
    :class:`InputError` otherwise); a model that did not declare its shape takes the data's."""
    for ds in datasets:
        ds.check()  # images, [0, 1] finite pixels, integer labels (as the audit requires)
        settle_model(model, ds.input_shape, source=f"model {getattr(model, 'card', {}).get('architecture') or ''}".strip())
        if tuple(model.input_shape) != tuple(ds.input_shape):
            hint = ("pass --image-size (or --resize/--crop)" if ds.name.startswith("folder:")
                    else "pass the model's dataset with --dataset")
            raise InputError(f"the model takes inputs of shape {list(model.input_shape)} but the {ds.name} "
                             f"{ds.split} images have shape {list(ds.input_shape)}; {hint}, or "
                             f"--input-size {','.join(map(str, ds.input_shape))} if the model takes that size too")
        if len(ds) and int(ds.labels.max()) >= model.num_classes:
            raise InputError(f"the model has {model.num_classes} classes but the {ds.name} {ds.split} split has "
                             f"label {int(ds.labels.max())}; labels must be 0…{model.num_classes - 1}: fix the labels, "
                             f"or use a model with that many classes")


def step_loss(model, reg, x: torch.Tensor, y: torch.Tensor, generator=None):
    """One training step's loss: cross-entropy + the regularizer's λ-weighted term.

    Returns (loss, ce, reg_output, logits); the caller back-propagates ``loss``, which reaches
    the parameters only. One forward pass (``reg.penalized_forward``; ``jr``'s ``fd`` estimator
    adds its shifted pass). When the penalty differentiates an input gradient, its graph also
    leads to the input, whose gradient nobody uses: the parameter gradients are then taken here
    by one ``torch.autograd.grad`` into the parameters alone, and ``loss`` carries them
    (:func:`_into_parameters`) — ``loss.backward()`` deposits them without computing ∂loss/∂x.
    """
    logits, r = reg.penalized_forward(model, x, y, generator=generator)
    ce = F.cross_entropy(logits, y)
    loss = ce + r.loss
    if r.input_grad:
        loss = _into_parameters(loss, model)
    return loss, ce, r, logits


def _into_parameters(loss: torch.Tensor, model) -> torch.Tensor:
    """``loss``'s value, with a graph whose backward gives every parameter of ``model`` that
    requires grad its gradient ∂loss/∂θ — computed now by one backward pass restricted to
    the parameters, so that no input gradient (and no pass towards the input) is computed.

    The result is loss + (s − s.detach()) with s = Σ_θ ⟨θ, g_θ⟩ (g_θ detached): the same value
    bit for bit, and ∂/∂θ = g_θ. ``backward`` on it (scaled or not) accumulates into ``.grad``
    and runs the post-accumulate hooks (DDP's all-reduce) as a plain backward does; the inner
    pass accumulates nothing. Tensor hooks registered with ``p.register_hook`` see both passes.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    s = sum((p * g).sum() for p, g in zip(params, grads) if g is not None)
    if not isinstance(s, torch.Tensor):  # no parameter depends on the loss
        return loss.detach()
    return loss.detach() + (s - s.detach())


def total_steps(cfg: TrainConfig, n_train: int) -> int:
    if cfg.steps is not None:
        return int(cfg.steps)
    per_epoch = 1 if cfg.batch_size == 0 else max(n_train // cfg.batch_size, 1)
    return max(int(math.ceil(cfg.epochs * per_epoch)), 1)


def evaluate(model: PixelSpaceModel, images, labels, jacobian_samples: Optional[int] = None,
             dist: Dist = SINGLE) -> dict:
    """Accuracy and mean exact ‖J‖_F, in pixel space and w.r.t. the normalised input.

    Under torchrun each rank takes every ``world_size``-th sample; correct counts and norm
    sums are summed over ranks (sums and counts, never averages of averages)."""
    dev = next(model.parameters()).device
    n = len(labels)
    n_jac = n if jacobian_samples is None else min(int(jacobian_samples), n)
    mine = torch.arange(dist.rank, n, dist.world_size)
    mine_jac = torch.arange(dist.rank, n_jac, dist.world_size)
    correct = accuracy(model, images[mine], labels[mine]) * len(mine)
    norms = mean_jacobian_norms(model, images[mine_jac], {"pixel": None, "normalized": model.input_scale}, 500, dev)
    sums = torch.tensor([correct, float(norms["pixel"][1].sum()), float(norms["normalized"][1].sum())],
                        dtype=torch.float64)
    sums = dist.all_reduce_sum(sums, dev).tolist()
    nan = float("nan")
    return {"accuracy": round(sums[0]) / n if n else nan,
            "jacobian_norm": sums[1] / n_jac if n_jac else nan,
            "jacobian_norm_normalized_input": sums[2] / n_jac if n_jac else nan,
            "n": n, "n_jacobian": n_jac}


def _rank_batch(idx: torch.Tensor, dist: Dist) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of a global batch (every ``world_size``-th position) and the positions."""
    pos = torch.arange(dist.rank, len(idx), dist.world_size, device=idx.device)
    return idx[pos], pos


#: config fields a ``--resume`` may change: they leave the steps already done as they were.
#: ``steps``/``epochs`` (the length; never below the steps done — :func:`learning_rate` does
#: not depend on the total, so a longer run continues the same schedule and ends where an
#: uninterrupted run of that length would), ``eval_every``/``save_every``/``log_every``
#: (when to measure, save and log) and ``device``/``download`` (where the work runs, whether
#: missing data may be fetched). Every other field changes the optimisation, the data or what
#: the logged numbers measure (``eval_samples``), and is refused.
RESUME_MAY_CHANGE = ("steps", "epochs", "eval_every", "save_every", "log_every", "device", "download")


def resume_differences(saved: Mapping, new: Mapping) -> list[str]:
    """The fields of config ``new`` that a resume of a run started with ``saved`` refuses
    (differing fields outside :data:`RESUME_MAY_CHANGE`), sorted."""
    return sorted(k for k in set(saved) | set(new)
                  if k not in RESUME_MAY_CHANGE and saved.get(k) != new.get(k))


#: what a train_state.pt holds (written by ``save_state`` in :func:`train`)
_STATE_KEYS = ("step", "config", "model", "optimizer")


def _load_state(path: Path) -> dict:
    """The saved training state, read with ``weights_only=True`` (no code in the file can run);
    one :class:`InputError` when the file is corrupt or is not a jr-train state."""
    fix = (f"move it away to start again in {path.parent} without --resume, or train into another --out")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
        text = str(exc)
        glob = re.search(r"unsupported GLOBAL (\S+)|Unsupported global: GLOBAL (\S+)", text)
        if glob:
            why = (f"it holds Python code ({glob.group(1) or glob.group(2)}), which a weights-only load refuses "
                   "(nothing in it was run)")
        else:
            detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n|$)", text)
            first = detail.group(1) if detail else " ".join(text.split())[:120]
            why = f"it is corrupt, truncated or not a PyTorch file ({type(exc).__name__}: {first})"
        raise InputError(f"--resume: {path} is not a readable training state: {why}; {fix}") from None
    if not isinstance(saved, dict) or any(k not in saved for k in _STATE_KEYS):
        raise InputError(f"--resume: {path} is not a jr-train training state (expected a mapping with "
                         f"{', '.join(_STATE_KEYS)}); {fix}")
    return saved


def _resume_log(path: Path, step: int, drop_last: bool = False) -> None:
    """Keep the metrics log lines up to ``step`` (the saved state): the steps after it are
    redone and logged again, so the resumed log equals the uninterrupted one. ``drop_last``
    also drops the line at ``step`` itself: the closing line of a finished run that is now
    extended, logged off the ``log_every`` cadence only because the run ended there (the
    saved running statistics still hold its steps, so the next line covers them again)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip()
            and (json.loads(line)["step"] < step or (json.loads(line)["step"] == step and not drop_last))]
    path.write_text("".join(line + "\n" for line in keep))


def train(
    cfg: TrainConfig | Mapping,
    out_dir: str | os.PathLike,
    resume: bool = False,
    init_model: Optional[PixelSpaceModel] = None,
    parent: Optional[dict] = None,
    device: Optional[torch.device] = None,
    on_event: Optional[EventHandler] = None,
) -> dict:
    """Run ``cfg`` and write ``out_dir/{model.safetensors, card.yaml, metrics.jsonl,
    config.yaml, train_state.pt}``. Returns the card.

    ``init_model`` starts from a trained model (post-processing, see :func:`finetune`);
    ``parent`` is recorded in the card. Progress leaves through ``on_event``: a task
    ``train`` (total = steps) advanced at every logged step with the running statistics
    in ``data["stats"]`` and the logged record in ``data["record"]``.

    Randomness is drawn per step from ``runtime.derive_seed(seed, …, step)`` (shuffles,
    dropout, regularizer projections, FGSM ε), so a resumed run ends with the weights of an
    uninterrupted one and needs no saved generator state.

    Under ``torchrun`` the model is wrapped in DistributedDataParallel: every step's global
    batch of ``batch_size`` samples is split over the ranks (each takes every
    ``world_size``-th sample) and each rank's loss is weighted by its share, so that the
    averaged gradient is the global batch's and λ, lr and steps mean what they mean on one
    device. The regularizers draw from rank-specific generators; held-out evaluation is
    sharded and summed exactly; rank 0 alone writes files. ``--resume`` works at any world
    size.
    """
    if not isinstance(cfg, TrainConfig):
        cfg = build_train_config([cfg])
    dist, ctx_device = dist_context(cfg.device)
    device = device or ctx_device
    out = Path(out_dir)
    state_path = out / STATE_FILE
    if not resume and state_path.exists():
        raise ConfigError(f"{out} already holds a training run; pass --resume to continue it or choose another --out")
    if resume and state_path.exists():
        saved = _load_state(state_path)
        diff = resume_differences(saved["config"], to_dict(cfg))
        if diff:
            raise ConfigError(
                f"--resume: {out} was started with a different config (differs in: {', '.join(diff)}); a resumed "
                f"run may change only {', '.join(RESUME_MAY_CHANGE)}, which leave the steps already done as they "
                "were: give the other values it was started with (its config.yaml), or train into another --out")
    else:
        saved = None

    info = get_dataset_info(cfg.dataset)
    train_set = _load_train_data(cfg, init_model)
    heldout = _load_heldout(cfg, init_model)
    n_train = len(train_set)
    steps = total_steps(cfg, n_train)
    bs = n_train if cfg.batch_size == 0 else min(cfg.batch_size, n_train)
    if saved is not None and steps < int(saved["step"]):
        asked = f"--steps {cfg.steps}" if cfg.steps is not None else f"--epochs {cfg.epochs} ({steps} steps)"
        raise ConfigError(f"--resume: {out} has already trained {int(saved['step'])} steps and {asked} asks for "
                          f"fewer; a run cannot be shortened: ask for at least {int(saved['step'])} steps to "
                          "continue it, or train the shorter run into another --out")
    dist.barrier()  # every rank has read the state and checked the config before rank 0 writes anything
    if dist.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            # a resumed run's config becomes the new one (it differs at most in RESUME_MAY_CHANGE)
            (out / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        except OSError as exc:
            raise InputError(f"--out {out} cannot be written ({exc.strerror}: {exc.filename}); choose a writable "
                             "directory") from None

    torch.manual_seed(derive_seed(cfg.seed, "init"))
    if init_model is None:
        model = make_model(cfg.model, info.num_classes, info.normalization, cfg.input_size or train_set.input_shape,
                           cfg.dropout, arch_kwargs=cfg.arch_kwargs or None, mean=cfg.mean, std=cfg.std)
    else:
        model = init_model
    _check_model_data(model, train_set, heldout)
    if init_model is not None:
        if cfg.dropout is not None:
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = cfg.dropout
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    reg = cfg.build_regularizer()
    start = 0
    # running sums of the logged statistics (loss, ce, reg, accuracy) since the last log line
    sums = torch.zeros(4, device=device, dtype=torch.float64)
    count = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = int(saved["step"])
        if "log_sums" in saved:
            sums += saved["log_sums"].to(device)
            count = int(saved["log_count"])
    # a finished run extended with more steps whose closing log line was off the cadence: the
    # saved sums still hold that line's steps; the line is dropped and the next one covers them
    # again, unless a changed --log-every puts it on the cadence (then it stays, the sums restart)
    closing = (saved is not None and start < steps and start % int(saved["config"].get("log_every") or 1) != 0
               and start == total_steps(SimpleNamespace(**saved["config"]), n_train))
    if closing and start % cfg.log_every == 0:
        sums.zero_()
        count = 0
    if dist.is_main:
        _resume_log(out / METRICS_FILE, start, drop_last=closing and start % cfg.log_every != 0)
    net = model
    if dist.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    x_all = train_set.pixels(device=device)
    y_all = train_set.labels.to(device)
    eval_x, eval_y = heldout.images[:cfg.eval_samples], heldout.labels[:cfg.eval_samples]

    last_saved = start

    def diverged(step: int, what: str) -> TrainingDiverged:
        kept = (f"the last good training state (step {last_saved}) is kept in {state_path}" if state_path.exists()
                else f"no training state was saved before (the first save was due at step {cfg.save_every})")
        return TrainingDiverged(f"{what} at step {step}; stopped, {kept}. Lower --lr or --lam and start again.")

    def save_state(step: int) -> None:
        nonlocal last_saved
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise diverged(step, "the weights became NaN or infinite")
        last_saved = step
        if dist.is_main:
            _atomic_torch_save({
                "step": step, "config": to_dict(cfg), "model": model.state_dict(), "optimizer": opt.state_dict(),
                "log_sums": sums.detach().cpu(), "log_count": count, "elapsed": time.time() - t0,
                "world_size": dist.world_size,
            }, state_path)

    metrics_f = open(out / METRICS_FILE, "a") if dist.is_main else None
    n_adv = int(round(cfg.adv_fraction * bs))
    # training time so far: a resumed run goes on counting from its last saved state (the time
    # while it was stopped, and the steps redone after it, are not counted twice)
    t0 = time.time() - (float(saved.get("elapsed", 0.0)) if saved is not None else 0.0)
    last_eval: dict = {}
    try:
        emit(on_event, "task", name="train", total=steps, amount=start, description="train")
        for step in range(start, steps):
            lr = learning_rate(cfg, step)
            for grp in opt.param_groups:
                grp["lr"] = lr
            torch.manual_seed(derive_seed(cfg.seed, "step", dist.rank, step))  # dropout
            idx, pos = _rank_batch(batch_indices(n_train, cfg.batch_size, step, cfg.seed).to(device), dist)
            x, y = x_all[idx], y_all[idx]
            share = len(idx) / bs  # this rank's part of the global batch
            if n_adv > 0:
                k = int((pos < n_adv).sum())
                if k:
                    eps = torch.rand(bs, generator=generator(cfg.seed, "adversarial", step, device=device),
                                     device=device)[pos[:k]]
                    x = torch.cat([fgsm_perturb(model, x[:k], y[:k], cfg.adv_eps_max, eps=eps), x[k:]])
            loss, ce, r, logits = step_loss(net, reg, x, y, generator(cfg.seed, "regularizer", dist.rank, step,
                                                                       device=device))
            if not torch.isfinite(loss):
                raise diverged(step, f"the loss became {loss.item()}")
            opt.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients: weighting each rank's mean by its share times the
            # world size makes that average the gradient of the global batch's mean loss
            (loss * (share * dist.world_size) if dist.enabled else loss).backward()
            opt.step()
            sums += torch.stack([loss.detach(), ce.detach(), r.value.to(loss.dtype),
                                 (logits.argmax(1) == y).sum().to(loss.dtype) / len(y)]).double() * share
            count += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == steps:
                m = (dist.all_reduce_sum(sums, device) / count).tolist()
                rec = {"step": done, "lr": lr, "loss": m[0], "ce": m[1], "reg": m[2], "train_acc": m[3],
                       "time": round(time.time() - t0, 2)}
                if cfg.eval_every and (done % cfg.eval_every == 0):
                    ev = evaluate(model, eval_x, eval_y, jacobian_samples=min(200, len(eval_y)), dist=dist)
                    model.train()
                    rec.update({"heldout_acc": ev["accuracy"], "heldout_jacobian_norm": ev["jacobian_norm"]})
                    last_eval = ev
                if metrics_f is not None:
                    metrics_f.write(json.dumps(rec) + "\n")
                    metrics_f.flush()
                stats = f"loss {m[0]:.4f} ce {m[1]:.4f} reg {m[2]:.3g} acc {m[3]:.3f}"
                if last_eval:
                    stats += f" | held-out acc {last_eval['accuracy']:.4f} ‖J‖ {last_eval['jacobian_norm']:.2f}"
                emit(on_event, "advance", name="train", data={"completed": done, "stats": stats, "record": rec})
                if done % cfg.log_every == 0:
                    # the closing line of a run off the cadence keeps its steps in the sums (saved with
                    # the state): extended with more steps, the next line on the cadence covers them
                    sums.zero_()
                    count = 0
            if done % cfg.save_every == 0 or done == steps:
                save_state(done)
    finally:
        if metrics_f is not None:
            metrics_f.close()
    emit(on_event, "done", name="train")

    wall = time.time() - t0
    final = evaluate(model, heldout.images, heldout.labels, dist=dist)
    devices = [str(device)]
    if dist.enabled:
        devices = [None] * dist.world_size
        torch.distributed.all_gather_object(devices, str(device))
    card = {
        "architecture": cfg.model,
        "dataset": absolute_data_spec(cfg.dataset),
        "normalization": model.normalization,
        "training": {**to_dict(cfg), "steps_done": steps, "device": str(device),
                     "world_size": dist.world_size, "devices": devices,
                     "wall_time_s": round(wall, 1), "torch_version": str(torch.__version__)},
        "seed": cfg.seed,
        "metrics": {
            "test_accuracy": final["accuracy"],
            "jacobian_norm": final["jacobian_norm"],
            "jacobian_norm_normalized_input": final["jacobian_norm_normalized_input"],
            "test_samples": final["n"],
            "test_set": heldout.provenance,
        },
        "data_provenance": {"train": train_set.provenance, "n_train": n_train, "test": heldout.provenance},
        "parent": parent,
        "package_version": __version__,
    }
    if dist.is_main:
        save_checkpoint(out, model, card)
    dist.barrier()
    return card
