"""PixelSpaceModel: inputs in [0, 1], normalisation inside the model.

Training, the Jacobian and every attack see the same space: the [0, 1] pixel
space. This wrapper owns the normalisation so nobody else has to.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from ..errors import ConfigError, unknown_name

#: name -> (mean per channel, std per channel); "cifar" is Hoffman's (x − 0.5)·2.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}
#: the ``normalization`` name of a model wrapped with explicit ``mean``/``std`` (``--mean/--std``,
#: a timm or torchvision pretrained config)
CUSTOM = "custom"


def normalization_stats(name: str, channels: Optional[int], mean: Optional[Sequence[float]] = None,
                        std: Optional[Sequence[float]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) as [1, C, 1, 1] tensors: the named normalisation, or the explicit
    ``mean``/``std`` (one value, or one per channel) when given. ``channels`` None: as declared."""
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise ConfigError("give both mean and std (one value, or one per channel)")
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if not mean or len(mean) != len(std):
            raise ConfigError(f"mean and std need the same number of values (one, or one per channel), got "
                              f"{len(mean)} and {len(std)}")
        if any(not math.isfinite(v) for v in mean + std) or any(v <= 0 for v in std):
            raise ConfigError(f"mean must be finite and std finite and > 0, got mean {list(mean)}, std {list(std)}")
    else:
        if name not in NORMALIZATIONS:
            raise unknown_name("normalization", name, NORMALIZATIONS)
        mean, std = NORMALIZATIONS[name]
    if channels and len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if channels and len(mean) != channels:
        if name in NORMALIZATIONS and name != CUSTOM:
            raise unknown_name("normalization for %d channels" % channels, name,
                               [k for k, v in NORMALIZATIONS.items() if len(v[0]) in (1, channels)])
        raise ConfigError(f"mean/std have {len(mean)} values but the model takes {channels} channels; "
                          f"give one value or {channels}")
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


class PixelSpaceModel(nn.Module):
    """Wraps a network that expects normalised input so that it takes [0, 1] pixels.

    ``forward(x) = net((x − mean) / std)`` with per-channel ``mean`` and ``std``.
    ``input_scale`` (= std, shape [1, C, 1, 1]) converts a pixel-space input gradient
    into the normalised-input gradient: ∂z/∂x_norm = ∂z/∂x · std.
    """

    def __init__(self, net: nn.Module, normalization: str = "none", input_shape: Optional[tuple] = (1, 28, 28),
                 num_classes: int = 10, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        self.net = net
        explicit = mean is not None or std is not None
        self.normalization = CUSTOM if explicit else normalization
        #: (C, H, W), or None when not known yet (a user's factory: taken from the data it first runs on)
        self.input_shape = None if input_shape is None else tuple(int(v) for v in input_shape)
        self.num_classes = int(num_classes)
        m, s = normalization_stats(self.normalization, self.input_shape[0] if self.input_shape else None,
                                   mean if explicit else None, std if explicit else None)
        self.register_buffer("mean", m, persistent=False)
        self.register_buffer("std", s, persistent=False)

    @property
    def input_scale(self) -> torch.Tensor:
        return self.std

    def mean_std(self) -> tuple[list[float], list[float]]:
        """The per-channel mean and std (as lists, for a card)."""
        return ([float(v) for v in self.mean.flatten()], [float(v) for v in self.std.flatten()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
