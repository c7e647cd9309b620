"""Dataset container and registry entries shared by every loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch


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
