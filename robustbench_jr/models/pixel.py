"""PixelSpaceModel: inputs in [0, 1], normalisation inside the model.

Training, the Jacobian and every attack see the same space: the [0, 1] pixel
space. This wrapper owns the normalisation so nobody else has to.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import unknown_name

#: name -> (mean per channel, std per channel); "cifar" is Hoffman's (x − 0.5)·2.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "none": ((0.0,), (1.0,)),
}


def normalization_stats(name: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    if name not in NORMALIZATIONS:
        raise unknown_name("normalization", name, NORMALIZATIONS)
    mean, std = NORMALIZATIONS[name]
    if len(mean) == 1 and channels > 1:
        mean, std = mean * channels, std * channels
    if len(mean) != channels:
        raise unknown_name("normalization for %d channels" % channels, name,
                           [k for k, v in NORMALIZATIONS.items() if len(v[0]) in (1, channels)])
    return torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)


class PixelSpaceModel(nn.Module):
    """Wraps a network that expects normalised input so that it takes [0, 1] pixels.

    ``forward(x) = net((x − mean) / std)`` with per-channel ``mean`` and ``std``.
    ``input_scale`` (= std, shape [1, C, 1, 1]) converts a pixel-space input gradient
    into the normalised-input gradient: ∂z/∂x_norm = ∂z/∂x · std.
    """

    def __init__(self, net: nn.Module, normalization: str = "none", input_shape: tuple = (1, 28, 28),
                 num_classes: int = 10):
        super().__init__()
        self.net = net
        self.normalization = normalization
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        mean, std = normalization_stats(normalization, self.input_shape[0])
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    @property
    def input_scale(self) -> torch.Tensor:
        return self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
