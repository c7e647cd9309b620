"""Post-processing (Jakubovitz & Giryes 2018): fine-tune a trained model with a Jacobian penalty."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from torch import nn

from ..errors import ConfigError
from ..models import PixelSpaceModel, is_pretrained_spec, load_checkpoint
from ..runtime import EventHandler
from .config import TrainConfig, build_train_config
from .loop import train


def _layers(config: Any) -> list:
    if config is None:
        return []
    if isinstance(config, TrainConfig):
        raise ConfigError("finetune takes the config as a mapping of TrainConfig keys (the post-processing "
                          "defaults apply underneath it), not a TrainConfig")
    if isinstance(config, Mapping):
        return [dict(config)]
    return [dict(layer or {}) for layer in config]


def finetune(checkpoint: Any, out_dir: str | os.PathLike, config: Optional[Mapping | Sequence[Mapping]] = None, *,
             arch: Optional[str] = None, num_classes: Optional[int] = None, resume: bool = False,
             on_event: Optional[EventHandler] = None) -> dict:
    """Post-process ``checkpoint`` with a Jacobian penalty and write the result to ``out_dir``.

    ``checkpoint``: a bundled name, a checkpoint directory, a weights file (``.safetensors`` or a
    state dict) with ``arch`` (a registry name, ``timm:NAME``, ``torchvision:NAME``,
    ``pkg.module:factory`` or ``path/to/models.py:factory``; ``num_classes``, and ``arch_kwargs``,
    ``mean``, ``std``, ``input_size`` in ``config``), ``timm:NAME``/``torchvision:NAME`` (the
    library's pretrained weights), or an in-memory :class:`PixelSpaceModel` (then ``config``
    must name ``model`` and ``dataset``). The data may be the user's (``folder:PATH``,
    ``npz:PATH``, ``safetensors:PATH``). The new card records the parent and how to load the
    result (``jr-eval run OUT`` / ``load_model(OUT)``).
    ``config``: TrainConfig keys (a mapping, or mappings in increasing priority) over the
    post-processing defaults (Adam lr 1e-4, batch 500, 2000 steps, exact penalty of
    Jakubovitz–Giryes eq. (4), λ = 0.1). Returns the new card, which names the parent.
    """
    layers = _layers(config)
    if isinstance(checkpoint, nn.Module):
        if not isinstance(checkpoint, PixelSpaceModel):
            raise ConfigError("finetune needs a PixelSpaceModel (inputs in [0, 1], normalisation inside); "
                              "wrap the network with robustbench_jr.models.PixelSpaceModel")
        given = {k: v for layer in layers for k, v in layer.items() if v is not None}
        if "model" not in given or "dataset" not in given:
            raise ConfigError("finetune of an in-memory model: config must give 'model' (architecture name) "
                              "and 'dataset'")
        model, parent_card, spec = checkpoint, {"architecture": given["model"], "dataset": given["dataset"]}, "<in-memory>"
    else:
        def last(key):
            return next((layer[key] for layer in reversed(layers) if layer.get(key) is not None), None)

        dataset = last("dataset")
        model, parent_card = load_checkpoint(checkpoint, arch=arch, dataset=dataset, num_classes=num_classes,
                                             arch_kwargs=last("arch_kwargs"), mean=last("mean"), std=last("std"),
                                             input_size=last("input_size"))
        if parent_card.get("format") in ("torchscript", "export"):
            raise ConfigError(f"{checkpoint}: a {parent_card['format']} archive is an inference graph without an "
                              f"architecture to rebuild, so it cannot be fine-tuned and saved as weights; fine-tune "
                              f"the model it was exported from (its weights with --arch)")
        if not parent_card.get("dataset"):
            raise ConfigError(f"{checkpoint}: no dataset to fine-tune on; pass --dataset (a registered name, or "
                              f"your data as folder:PATH, npz:PATH or safetensors:PATH)")
        spec = str(checkpoint)
    base = {"model": parent_card["architecture"], "dataset": parent_card["dataset"]}
    cfg = build_train_config([base, *layers], where="training config", finetune=True)
    parent = {"checkpoint": spec if spec == "<in-memory>" or is_pretrained_spec(spec) else str(Path(spec).resolve()),
              "architecture": parent_card["architecture"], "metrics": parent_card.get("metrics"),
              "source": parent_card.get("source"), "normalization": parent_card.get("normalization"),
              "mean": parent_card.get("mean"), "std": parent_card.get("std")}
    if parent_card.get("arch_kwargs"):
        parent["arch_kwargs"] = parent_card["arch_kwargs"]
    return train(cfg, out_dir, resume=resume, init_model=model, parent=parent, on_event=on_event)
