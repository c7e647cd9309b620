"""Few-shot training subsets: k samples per class (Hoffman et al. 2019, Table 1)."""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import ImageDataset
from .registry import DATASETS


def few_shot(dataset: ImageDataset, k: int, seed: int) -> ImageDataset:
    """``k`` samples of every class, drawn without replacement with a ``torch.Generator``
    seeded with ``seed``.

    The same dataset, ``k`` and ``seed`` give the same subset on every machine. The
    subset keeps the original order of the samples and their ids. The classes are
    0..num_classes-1 of the registered dataset (the labels present otherwise); a class
    with fewer than ``k`` samples is an error naming it.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"few_shot: k must be a positive integer, got {k!r}")
    labels = dataset.labels.to("cpu", torch.int64)
    info = DATASETS.get(dataset.name)
    if info is not None:
        classes = list(range(info.num_classes))
    else:
        classes = torch.unique(labels).tolist()
    gen = torch.Generator().manual_seed(int(seed))
    chosen, short = [], []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) < k:
            short.append(f"class {c}: {len(idx)}")
            continue
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    if short:
        raise ConfigError(
            f"few_shot: k={k} per class, but {dataset.name} ({dataset.split}, {len(dataset)} samples) has fewer "
            f"samples in {len(short)} class(es): {', '.join(short[:10])}{' …' if len(short) > 10 else ''}. "
            f"Use a smaller k or a larger split."
        )
    idx = torch.sort(torch.cat(chosen)).values
    return dataset.subset(idx, note=f"few-shot k={k} per class, seed={seed}")
