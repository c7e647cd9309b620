"""`jr-train`: train with Jacobian regularization, or post-process a trained model."""

from __future__ import annotations

import json

import click

from ..config import read_yaml
from ..training import TrainConfig, train
from ..training.config import build_train_config
from .common import config_option, console, device_option, handle_errors


def _train_options(fn):
    """Options shared by `fit` and `finetune`; all default to None so that only what the
    user types overrides the config file."""
    opts = [
        click.option("--model", help="Architecture (lenet, ddnet, resnet18-cifar, resnet18, jg-mnist, jg-cifar)."),
        click.option("--dataset", help="Dataset (mnist, fashion-mnist, cifar10, cifar100, imagenet, digits)."),
        click.option("--data-root", type=click.Path(file_okay=False), help="Directory holding the data."),
        click.option("--download/--no-download", default=None, help="Let torchvision download missing data."),
        click.option("--optimizer", type=click.Choice(["sgd", "adam"]), help="Optimizer [default: sgd]."),
        click.option("--lr", type=float, help="Initial learning rate [default: 0.1]."),
        click.option("--momentum", type=float, help="SGD momentum [default: 0.9]."),
        click.option("--weight-decay", type=float, help="L2 weight decay [default: 5e-4]."),
        click.option("--lr-decay", type=float, help="Step-decay factor [default: 0.1]."),
        click.option("--lr-step", type=int, help="Decay every this many steps; 0 = constant [default: 50000]."),
        click.option("--steps", type=int, help="Total SGD steps [default: 150000]."),
        click.option("--epochs", type=float, help="Train for this many epochs instead of --steps."),
        click.option("--batch-size", type=int, help="Mini-batch size; 0 = full batch [default: 100]."),
        click.option("--dropout", type=float, help="Dropout rate [default: the architecture's]."),
        click.option("--regularizer", "-r", help="none, jr, jr-exact, datagrad, spectreg, frobreg, jacreg, onehot, "
                     "randomonehot, input-grad, cross-lipschitz [default: none]."),
        click.option("--lam", "--lambda", "lam", type=float, help="Regularizer weight λ."),
        click.option("--n-proj", type=int, help="Random projections for the jr estimator [default: 1]."),
        click.option("--reg-space", type=click.Choice(["pixel", "normalized"]),
                     help="Input space of the Jacobian penalty [default: pixel]."),
        click.option("--adv-fraction", type=float, help="Fraction of each batch replaced by FGSM examples."),
        click.option("--adv-eps-max", type=float, help="FGSM ε ~ U[0, ε_max] (pixel units) [default: 0.01]."),
        click.option("--few-shot", type=int, help="Use k training samples per class."),
        click.option("--train-limit", type=int, help="Use only the first N training images."),
        click.option("--seed", type=int, help="Random seed [default: 0]."),
        click.option("--eval-every", type=int, help="Held-out evaluation every N steps; 0 = end only."),
        click.option("--eval-samples", type=int, help="Held-out samples for periodic evaluation."),
        click.option("--save-every", type=int, help="Save resumable training state every N steps."),
        click.option("--log-every", type=int, help="Log metrics every N steps."),
        device_option, config_option,
        click.option("--out", type=click.Path(file_okay=False), required=True,
                     help="Output directory: model.safetensors, card.yaml, metrics.jsonl, config.yaml."),
        click.option("--resume", is_flag=True, help="Continue the interrupted run in --out."),
        click.option("--quiet", is_flag=True, help="No progress bar."),
        click.option("--json", "as_json", is_flag=True, help="Print the final card as JSON on stdout."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


_NOT_CONFIG = {"config_file", "out", "resume", "quiet", "as_json", "checkpoint", "arch", "num_classes"}


def _build(kwargs, base: dict | None = None, finetune: bool = False) -> TrainConfig:
    file_layer = read_yaml(kwargs["config_file"]) if kwargs.get("config_file") else {}
    cli_layer = {k: v for k, v in kwargs.items() if k not in _NOT_CONFIG}
    if cli_layer.get("device") == "auto" and "device" in file_layer:
        cli_layer["device"] = None  # the option's default must not override the file
    return build_train_config([base, file_layer, cli_layer], where="training config", finetune=finetune)


def _finish(card: dict, out: str, as_json: bool) -> None:
    m = card["metrics"]
    if as_json:
        click.echo(json.dumps(card, default=str))
    console.print(
        f"[green]done[/]: {out}  test accuracy [bold]{m['test_accuracy']:.4f}[/]  "
        f"mean ‖J‖_F {m['jacobian_norm']:.3f} (pixel space), {m['jacobian_norm_normalized_input']:.3f} "
        f"(normalised input) over {m['test_samples']} test images")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
    card = train(cfg, kwargs["out"], resume=kwargs["resume"], progress=not kwargs["quiet"])
    _finish(card, kwargs["out"], kwargs["as_json"])



@main.command()
@click.argument("checkpoint")
@click.option("--arch", help="Architecture of a bare .pt/.pth/.safetensors state dict.")
@click.option("--num-classes", type=int, help="Number of classes of a bare state dict.")
@_train_options
@handle_errors
def finetune(checkpoint, arch, num_classes, **kwargs):
    """Post-process a trained model with a Jacobian penalty (Jakubovitz & Giryes).

    CHECKPOINT is a bundled name (lenet-mnist), a checkpoint directory, or a plain
    PyTorch/torchvision state dict (.pt/.pth, loaded with weights_only=True) plus --arch.
    Defaults: Adam lr 1e-4, batch 500, 2000 steps, exact Jacobian penalty of
    Jakubovitz–Giryes eq. (4) with λ = 0.1. The card names the parent checkpoint.
    """
    from ..models import load_checkpoint

    model, parent_card = load_checkpoint(checkpoint, arch=arch, dataset=kwargs.get("dataset"), num_classes=num_classes)
    cfg = _build(kwargs, {"model": parent_card["architecture"], "dataset": parent_card["dataset"]}, finetune=True)
    parent = {"checkpoint": str(checkpoint), "architecture": parent_card["architecture"],
              "metrics": parent_card.get("metrics")}
    card = train(cfg, kwargs["out"], resume=kwargs["resume"], init_model=model, parent=parent,
                 progress=not kwargs["quiet"])
    _finish(card, kwargs["out"], kwargs["as_json"])


from ..experiments.cli import table as _table  # noqa: E402  (`jr-train table`)
main.add_command(_table)

if __name__ == "__main__":  # pragma: no cover
    main()
