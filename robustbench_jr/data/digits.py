"""scikit-learn's bundled 8×8 handwritten digits, brought into MNIST's layout.

This is the domain-shift set that stands in for USPS (not shipped by any registry
reachable here): other writers, other scanner, other preprocessing than MNIST, same
ten classes. ``sklearn.datasets.load_digits()`` reads a file inside the
scikit-learn package, so no download is involved.

Conversion: values 0..16 are scaled to [0, 1], the 8×8 image is upsampled to 20×20
with bilinear interpolation and padded by 4 pixels on every side to 28×28, which
matches MNIST (digits normalised into a 20×20 box centred in a 28×28 frame); then
stored as uint8 0..255.

Split: the 1,797 samples keep scikit-learn's order; ``train`` is the first 1,000,
``test`` the remaining 797. Sample ids are positions within the split.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .base import DatasetInfo, ImageDataset
from .registry import not_found, register

TRAIN_SIZE = 1000
BOX, CANVAS = 20, 28


def digits_to_mnist_layout(images: np.ndarray, max_value: float = 16.0) -> torch.Tensor:
    """[N, 8, 8] values in 0..max_value -> uint8 [N, 1, 28, 28] (20×20 digit centred)."""
    x = torch.as_tensor(np.asarray(images, dtype=np.float32)).unsqueeze(1) / max_value
    x = F.interpolate(x, size=(BOX, BOX), mode="bilinear", align_corners=False)
    lo = (CANVAS - BOX) // 2
    hi = CANVAS - BOX - lo
    x = F.pad(x, (lo, hi, lo, hi))
    return (x.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def _load(split: str = "test", data_root: Optional[str] = None, download: bool = False) -> ImageDataset:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise not_found("digits", split, [f"sklearn.datasets.load_digits (scikit-learn not installed: {exc})"]) from None
    bunch = load_digits()
    images = digits_to_mnist_layout(bunch.images)
    labels = torch.as_tensor(np.asarray(bunch.target), dtype=torch.int64)
    sl = slice(0, TRAIN_SIZE) if split == "train" else slice(TRAIN_SIZE, None)
    first, last = (0, TRAIN_SIZE - 1) if split == "train" else (TRAIN_SIZE, len(labels) - 1)
    return ImageDataset(
        "digits", split, images[sl].clone(), labels[sl].clone(),
        provenance=(f"scikit-learn load_digits() samples {first}..{last} of {len(labels)}, 8×8 0..16 "
                    f"-> bilinear 20×20 padded to 28×28 uint8"),
    )


_HOW = (
    "  * ships with scikit-learn (no download): `pip install scikit-learn`\n"
    "    (or `pip install 'robustbench-jr[data]'`)"
)

DIGITS = register(DatasetInfo(
    "digits", 10, (1, CANVAS, CANVAS), "mnist", 32 / 255,
    "scikit-learn's 8×8 handwritten digits (1,797; train = first 1,000, test = other 797), upsampled "
    "to MNIST's 28×28 layout; the domain-shift set standing in for USPS",
    _HOW, _load))
