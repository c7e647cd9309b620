"""An example of a user's own architecture file, for `--arch examples/user_models.py:resnet18_narrow`.

A CIFAR-style ResNet-18 (3×3 stem, no max-pool, four stages of two basic blocks) whose
widths are ``width``, 2·width, 4·width, 8·width (``width=64`` is the usual ResNet-18). The
factory takes ``num_classes`` (passed by robustbench-jr when a class count is known) and
any keyword arguments given with ``--arch-kwargs``; the network takes normalised input
(robustbench-jr wraps it with the mean/std of the card, ``--mean/--std`` or the dataset).
"""

import torch
from torch import nn


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18Narrow(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        stages, c = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            c_out = width * 2 ** i
            stages += [_Block(c, c_out, stride), _Block(c_out, c_out, 1)]
            c = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def resnet18_narrow(num_classes: int = 10, in_channels: int = 1, width: int = 16) -> nn.Module:
    return ResNet18Narrow(num_classes, in_channels, width)
