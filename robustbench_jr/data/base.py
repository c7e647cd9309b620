"""Dataset container and registry entries shared by every loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from ..errors import InputError


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: shape, classes, the model normalisation it uses, defaults."""

    name: str
    num_classes: int
    input_shape: tuple  # (C, H, W)
    normalization: str  # key of robustbench_jr.models.NORMALIZATIONS
    pgd_saturation: float  # per-pixel Linf box of the PGD search (Hoffman App. F)
    description: str
    how_to_obtain: str
    loader: Callable = field(repr=False, compare=False, default=None)


@dataclass
class ImageDataset:
    """Images as uint8 [N, C, H, W] (or float in [0, 1]) plus int64 labels.

    ``ids`` are stable sample ids (the index in the original split), so that results
    stay keyed to the same image across subsets, shards and resumes.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    provenance: str
    ids: Optional[torch.Tensor] = None

    def __post_init__(self):
        if self.ids is None:
            self.ids = torch.arange(len(self.labels), dtype=torch.int64)
        if not (len(self.images) == len(self.labels) == len(self.ids)):
            raise ValueError("images, labels and ids must have the same length")

    def __len__(self) -> int:
        return len(self.labels)

    def check(self) -> None:
        """One :class:`InputError` unless there are images, they are uint8 or finite floating
        point pixels in [0, 1], and the labels are non-negative integers (what every search and
        the training loop assume)."""
        what = f"the {self.name} {self.split} split ({self.provenance})"
        if not len(self):
            raise InputError(f"{what} has no images; point --dataset/--data-root at data that has some")
        x = self.images
        if x.dtype != torch.uint8:
            if not x.is_floating_point():
                raise InputError(f"{what}: images must be uint8 or floating point pixels in [0, 1], got {x.dtype}")
            bad = ~torch.isfinite(x)
            if bool(bad.any()):
                raise InputError(f"{what}: {int(bad.flatten(1).any(1).sum())} image(s) contain NaN or infinite "
                                 "pixels; fix or drop them")
            lo, hi = float(x.min()), float(x.max())
            if lo < 0 or hi > 1:
                hint = " (0..255 values: divide them by 255, or store the images as uint8)" if hi > 1.5 else ""
                raise InputError(f"{what}: pixel values outside [0, 1] (min {lo:.4g}, max {hi:.4g}); float images "
                                 f"must be [0, 1] pixels{hint}")
        y = self.labels
        if y.is_floating_point() or y.dtype == torch.bool:
            raise InputError(f"{what}: labels must be integer class indices, got {y.dtype}")
        if len(y) and int(y.min()) < 0:
            raise InputError(f"{what}: negative label {int(y.min())}; labels must be class indices 0, 1, …")

    @property
    def input_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    def pixels(self, index=None, dtype=torch.float32, device=None) -> torch.Tensor:
        """Images in [0, 1] pixel space as ``dtype`` on ``device``."""
        imgs = self.images if index is None else self.images[index]
        if imgs.dtype == torch.uint8:
            return imgs.to(device=device).to(dtype).div_(255.0)
        return imgs.to(device=device, dtype=dtype)

    def subset(self, indices: Sequence[int] | torch.Tensor, note: str = "") -> "ImageDataset":
        idx = torch.as_tensor(indices, dtype=torch.int64)
        prov = self.provenance + (f"; {note}" if note else "")
        return ImageDataset(self.name, self.split, self.images[idx], self.labels[idx], prov, self.ids[idx])

    def first(self, n: int) -> "ImageDataset":
        return self.subset(torch.arange(min(n, len(self))), note=f"first {min(n, len(self))}")
