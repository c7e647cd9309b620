"""Architectures from the papers, in one registry by name.

Every network here takes *normalised* input; wrap it in
:class:`robustbench_jr.models.PixelSpaceModel` to get a model on [0, 1] pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..errors import unknown_name


def _xavier(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class LeNetPrime(nn.Module):
    """LeNet' of Hoffman et al. (2019), Appendix D.

    conv [5, 1→6, stride 1, pad 2] → tanh → maxpool 2 → conv [5, 6→16, stride 1, pad 0]
    → tanh → maxpool 2 → dropout → fc [400→120] → tanh → dropout → fc [120→84] → tanh
    → fc [84→C]. Xavier (Glorot) initialisation, zero biases.

    The paper writes the first fully-connected layer as [2100 → 120]; with 28×28
    inputs and the stated convolutions the flattened width is 16·5·5 = 400, so this
    implementation uses 400 — the width the architecture actually produces.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, stride=1, padding=2), nn.Tanh(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, stride=1, padding=0), nn.Tanh(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(16 * 5 * 5, 120), nn.Tanh(),
            nn.Dropout(dropout), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes),
        )
        _xavier(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DDNet(nn.Module):
    """The defensive-distillation CIFAR network (Hoffman et al. App. D, Papernot et al.).

    conv [3,3→64] relu, conv [3,64→64] relu, maxpool 2, conv [3,64→128] relu,
    conv [3,128→128] relu, maxpool 2 (no padding), fc [3200→256] relu + dropout,
    fc [256→256] relu + dropout, fc [256→C]. Xavier initialisation.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 64, 3), nn.ReLU(),
            nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3), nn.ReLU(),
            nn.Conv2d(128, 128, 3), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(128 * 5 * 5, 256), nn.ReLU(),
            nn.Dropout(dropout), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )
        _xavier(self)

    def forward(self, x):
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet18Cifar(nn.Module):
    """ResNet-18 for 32×32 inputs (3×3 stem, no max-pool), standard PyTorch init."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers.append(nn.Sequential(_BasicBlock(in_planes, planes, stride), _BasicBlock(planes, planes, 1)))
            in_planes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.linear(out)


class JGMnistNet(nn.Module):
    """Jakubovitz–Giryes (2018) §4 MNIST network: the TensorFlow tutorial CNN.

    conv 5×5 1→32 (same) relu, maxpool 2, conv 5×5 32→64 (same) relu, maxpool 2,
    fc 3136→1024 relu, dropout 0.5, fc 1024→C.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(1024, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class JGCifarNet(nn.Module):
    """Jakubovitz–Giryes (2018) §4 CIFAR network: four sets of two 3×3 convolutions,
    max-pool and dropout (keep 0.75), then two fully-connected layers.

    The paper gives no channel widths; this uses 32, 64, 128, 256 and a 512-unit
    hidden layer.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.25):
        super().__init__()
        blocks, c_in = [], in_channels
        for c in (32, 64, 128, 256):
            blocks += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), nn.ReLU(),
                       nn.MaxPool2d(2), nn.Dropout(dropout)]
            c_in = c
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(256 * 2 * 2, 512), nn.ReLU(),
                                        nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def _torchvision_resnet18(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.0):
    """torchvision's ResNet-18 for ImageNet (standard init, no pretrained download).

    ``dropout`` is ignored (the architecture has none); ``in_channels`` other than 3
    replaces the stem convolution with one of the same geometry.
    """
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    return net


@dataclass(frozen=True)
class ArchInfo:
    name: str
    builder: Callable[..., nn.Module]
    input_shape: tuple
    default_dropout: float
    description: str


ARCHITECTURES: dict[str, ArchInfo] = {a.name: a for a in (
    ArchInfo("lenet", LeNetPrime, (1, 28, 28), 0.5, "LeNet' (Hoffman et al. App. D), tanh, MNIST-sized"),
    ArchInfo("ddnet", DDNet, (3, 32, 32), 0.5, "DDNet (Papernot et al.; Hoffman et al. App. D), CIFAR-sized"),
    ArchInfo("resnet18-cifar", ResNet18Cifar, (3, 32, 32), 0.0, "ResNet-18 for 32×32 inputs"),
    ArchInfo("resnet18", _torchvision_resnet18, (3, 224, 224), 0.0, "torchvision ResNet-18 (ImageNet)"),
    ArchInfo("jg-mnist", JGMnistNet, (1, 28, 28), 0.5, "Jakubovitz–Giryes MNIST network (TF tutorial CNN)"),
    ArchInfo("jg-cifar", JGCifarNet, (3, 32, 32), 0.25, "Jakubovitz–Giryes CIFAR network"),
)}


def build_model(arch: str, num_classes: int = 10, in_channels: int | None = None,
                dropout: float | None = None) -> nn.Module:
    """Build architecture ``arch`` (see ``ARCHITECTURES``), expecting normalised inputs."""
    if arch not in ARCHITECTURES:
        raise unknown_name("architecture", arch, ARCHITECTURES)
    info = ARCHITECTURES[arch]
    return info.builder(
        num_classes=num_classes,
        in_channels=info.input_shape[0] if in_channels is None else in_channels,
        dropout=info.default_dropout if dropout is None else dropout,
    )
