"""Real sample images shipped inside foolbox (an optional dependency: the ``test`` extra).

foolbox 3 keeps 20 images per dataset in its package folder ``foolbox/data/`` as
``<dataset>_<index>_<label>.png`` (``.jpg`` for ImageNet). They are the first 20
images of each test split (checked against the real MNIST, Fashion-MNIST and
CIFAR-10 test sets), so the index in the name is used as the sample id. The files
are read directly; foolbox itself is not imported.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import DataNotFoundError
from .base import ImageDataset
from .imagenet import imagenet_preprocess
from .registry import not_found

#: our dataset name -> foolbox's file prefix
FOOLBOX_DATASETS = {
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "imagenet": "imagenet",
    "mnist": "mnist",
    "fashion-mnist": "fashionMNIST",
}

_HOW = "  * `pip install foolbox` (or `pip install 'robustbench-jr[test]'`); its package data holds the images"


def foolbox_data_dir() -> Path | None:
    """foolbox's sample folder, found without importing foolbox, or None if not installed."""
    try:
        spec = importlib.util.find_spec("foolbox")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _foolbox_version() -> str:
    try:
        from importlib.metadata import version

        return version("foolbox")
    except Exception:
        return "unknown version"


def foolbox_samples(dataset: str = "cifar10") -> ImageDataset:
    """foolbox's 20 real test images of ``dataset`` as an :class:`ImageDataset`.

    ``dataset`` is one of ``FOOLBOX_DATASETS`` (cifar10, cifar100, imagenet, mnist,
    fashion-mnist). Images are uint8 [20, C, H, W]: 32×32 RGB for CIFAR, 28×28 grey
    for (Fashion-)MNIST, and for ImageNet the 512×512 files go through the same
    resize 256 + centre crop 224 as the ImageNet loader. Labels come from the file
    names. Raises :class:`DataNotFoundError` when foolbox is not installed.
    """
    if dataset not in FOOLBOX_DATASETS:
        raise DataNotFoundError(
            f"foolbox has no sample images for {dataset!r}; valid: {', '.join(sorted(FOOLBOX_DATASETS))}")
    prefix = FOOLBOX_DATASETS[dataset]
    what = f"foolbox sample images of {dataset}"
    folder = foolbox_data_dir()
    if folder is None:
        raise not_found(what, "test", ["python package 'foolbox' (not installed)"], how=_HOW)
    pattern = re.compile(rf"^{re.escape(prefix)}_(\d+)_(\d+)\.(png|jpe?g)$", re.IGNORECASE)
    found = []
    if folder.is_dir():
        for f in folder.iterdir():
            m = pattern.match(f.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2)), f))
    if not found:
        raise not_found(what, "test", [folder / f"{prefix}_XX_<label>.png"], how=_HOW)
    found.sort()
    from PIL import Image

    images = []
    for _, _, f in found:
        try:
            with Image.open(f) as im:
                if dataset == "imagenet":
                    arr = imagenet_preprocess(im)
                else:
                    arr = np.asarray(im.convert("L" if dataset in ("mnist", "fashion-mnist") else "RGB"),
                                     dtype=np.uint8)
                    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        except OSError as exc:
            raise DataNotFoundError(f"{f}: unreadable image in foolbox's package data ({exc})") from None
        images.append(arr)
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise DataNotFoundError(f"{what}: images of different shapes {sorted(shapes)} in {folder}")
    return ImageDataset(
        dataset, "test", torch.from_numpy(np.stack(images)),
        torch.as_tensor([lab for _, lab, _ in found], dtype=torch.int64),
        provenance=f"foolbox {_foolbox_version()} package data {folder}/{prefix}_XX_<label>: "
                   f"first {len(found)} test images",
        ids=torch.as_tensor([i for i, _, _ in found], dtype=torch.int64),
    )
