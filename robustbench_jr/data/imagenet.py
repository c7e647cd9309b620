"""ImageNet (ILSVRC 2012) from an ImageFolder layout: ``imagenet/val/<wnid>/*.JPEG``.

Every image is decoded with Pillow, converted to RGB, resized so that its shorter
side is 256 (bilinear, antialiased) and centre-cropped to 224×224: uint8
[N, 3, 224, 224], the standard evaluation view. Labels are indices into the sorted
list of the 1,000 wnids, the class order of torchvision and of every public
ImageNet checkpoint.

Sample ids are positions in the full ImageFolder listing (classes in sorted order,
files sorted by name within a class), so they do not depend on ``limit``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DataNotFoundError
from .base import DatasetInfo, ImageDataset
from .registry import data_roots, not_found, register

NUM_CLASSES = 1000
RESIZE, CROP = 256, 224
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
WNID = re.compile(r"^n\d{8}$")

# Sub-directories of a data root that may hold the ImageNet folders.
_SUBDIRS = ["imagenet", "ImageNet", "ILSVRC2012", "ilsvrc2012"]
_SPLIT_DIR = {"test": "val", "train": "train"}
# Optional files (next to val/) giving the 1,000 wnids in class order, one per line
# (first token): Kaggle's LOC_synset_mapping.txt or a plain wnid list.
_CLASS_FILES = ["LOC_synset_mapping.txt", "wnids.txt", "synsets.txt"]


def imagenet_preprocess(image) -> np.ndarray:
    """A PIL image -> uint8 [3, 224, 224]: RGB, shorter side resized to 256, centre crop 224."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    image = image.convert("RGB")
    image = TF.resize(image, RESIZE, interpolation=InterpolationMode.BILINEAR)
    image = TF.center_crop(image, CROP)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return imagenet_preprocess(im)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise DataNotFoundError(f"{path}: unreadable or corrupt image ({exc}); replace the file") from None


def _class_order(split_dir: Path, present: list[str]) -> list[str]:
    for fname in _CLASS_FILES:
        f = split_dir.parent / fname
        if f.is_file():
            wnids = [ln.split()[0] for ln in f.read_text().splitlines() if ln.strip()]
            unknown = sorted(set(present) - set(wnids))
            if unknown:
                raise DataNotFoundError(f"{split_dir}: class folders {', '.join(unknown[:5])} are not listed in {f}")
            return wnids
    if len(present) != NUM_CLASSES:
        raise DataNotFoundError(
            f"{split_dir}: found {len(present)} wnid class folders, expected {NUM_CLASSES}. Labels are "
            f"indices into the sorted list of all {NUM_CLASSES} wnids, so with a partial folder they "
            f"would be wrong. Add the missing (possibly empty) class folders, or put a file "
            f"{_CLASS_FILES[0]} or {_CLASS_FILES[1]} listing all {NUM_CLASSES} wnids in class order "
            f"next to {split_dir.name}/."
        )
    return sorted(present)


def list_image_folder(split_dir: Path) -> tuple[list[Path], list[int], list[str]]:
    """Files and labels of an ImageFolder ``split_dir`` in ImageFolder order, and the classes."""
    present = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and WNID.match(p.name))
    classes = _class_order(split_dir, present)
    index = {w: i for i, w in enumerate(classes)}
    files, labels = [], []
    for wnid in sorted(present, key=index.__getitem__):
        for f in sorted((split_dir / wnid).iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(f)
                labels.append(index[wnid])
    return files, labels, classes


def class_balanced_order(labels: list[int]) -> list[int]:
    """Positions taken round-robin over classes: the first image of every class, then the
    second, … so that any prefix (``limit``) covers the classes evenly."""
    seen: dict[int, int] = {}
    rank = []
    for lab in labels:
        rank.append(seen.get(lab, 0))
        seen[lab] = rank[-1] + 1
    return sorted(range(len(labels)), key=lambda i: (rank[i], labels[i], i))


def _find_split_dir(roots: list[Path], split: str) -> tuple[Optional[Path], list]:
    tried: list = []
    for root in roots:
        for sub in _SUBDIRS:
            d = root / sub / _SPLIT_DIR[split]
            if d.is_dir() and any(p.is_dir() and WNID.match(p.name) for p in d.iterdir()):
                return d, tried
            if d.is_dir() and any(p.suffix.lower() in IMAGE_EXTENSIONS for p in d.iterdir()):
                tried.append(f"{d} (flat folder of images without <wnid>/ class folders; "
                             f"sort it into class folders, see below)")
            else:
                tried.append(d / "<wnid>" / "*.JPEG")
    return None, tried


def _load(split: str = "test", data_root: Optional[str] = None, download: bool = False,
          limit: Optional[int] = None) -> ImageDataset:
    roots = data_roots(data_root)
    split_dir, tried = _find_split_dir(roots, split)
    if split_dir is None:
        if download:
            tried.append("download: ImageNet cannot be downloaded automatically (registration and licence "
                         "at image-net.org)")
        raise not_found("imagenet", split, tried)
    files, labels, _ = list_image_folder(split_dir)
    if not files:
        raise not_found("imagenet", split, [f"{split_dir}/<wnid>/ (class folders hold no images)"])
    order = list(range(len(files)))
    how = "all images"
    if limit is not None and limit < len(files):
        order = class_balanced_order(labels)[:limit]
        how = f"{limit} of {len(files)} images, taken round-robin over classes"
    images = np.empty((len(order), 3, CROP, CROP), dtype=np.uint8)
    for j, i in enumerate(order):
        images[j] = read_image(files[i])
    return ImageDataset(
        "imagenet", split, torch.from_numpy(images),
        torch.as_tensor([labels[i] for i in order], dtype=torch.int64),
        provenance=f"ImageNet folder {split_dir}, resize {RESIZE} + centre crop {CROP}, {how}",
        ids=torch.as_tensor(order, dtype=torch.int64),
    )


_HOW = (
    "  * ImageNet needs registration at image-net.org and cannot be downloaded automatically\n"
    "  * put ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz into data/imagenet/ and let\n"
    "    torchvision sort them into class folders (offline):\n"
    "    `python -c \"import torchvision; torchvision.datasets.ImageNet('data/imagenet', split='val')\"`\n"
    "    which creates data/imagenet/val/<wnid>/*.JPEG\n"
    "  * or place an existing ImageFolder copy at --data-root/imagenet/val/<wnid>/*.JPEG\n"
    "  * load_dataset('imagenet', limit=N) reads only N images (round-robin over the classes)\n"
    "  * foolbox ships 20 sample ImageNet images: robustbench_jr.data.foolbox_samples('imagenet')"
)

IMAGENET = register(DatasetInfo(
    "imagenet", NUM_CLASSES, (3, CROP, CROP), "imagenet", 16 / 255,
    "ImageNet ILSVRC 2012 validation set (50,000 images, 1,000 classes), resize 256 + centre crop 224",
    _HOW, _load))
