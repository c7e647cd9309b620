"""The user's own data: an image folder, or image and label arrays in a file.

Dataset specs (``--dataset``, ``TrainConfig.dataset``):

* ``folder:PATH`` — ImageFolder layout, ``PATH/<class>/<image>`` (PNG, JPEG, BMP, GIF, WebP,
  TIFF). Classes are the sub-folder names in sorted order; when every name is an integer
  (``0/``, ``7/``, ``281/``) that integer is the label, so a folder of some classes keeps a
  model's class indices. ``PATH/train`` and ``PATH/test`` (or ``PATH/val``), each in that
  layout, are the two splits; otherwise the one folder serves both. Images are brought to one
  size with ``image_size`` (resize the shorter side, centre crop a square) or ``resize`` +
  ``crop`` (torchvision's Resize + CenterCrop); greyscale folders stay one channel.
* ``npz:PATH`` / ``safetensors:PATH`` — arrays ``images`` (N×H×W×C, N×C×H×W or N×H×W; uint8,
  or float in [0, 1]) and ``labels`` (N integers); ``x``/``y`` work too, and
  ``train_images``/``test_images`` (or Keras' ``x_train``/``x_test``) give the splits. An
  optional ``ids`` array holds stable sample ids, ``num_classes`` the class count.
  ``.npz`` files are read with ``allow_pickle=False``.

Every problem (missing file, pixel range, dtype, shape, labels) is one :class:`InputError`
or :class:`DataNotFoundError` naming it and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..errors import DataNotFoundError, InputError
from .base import DatasetInfo, ImageDataset

#: dataset spec prefixes of this module
KINDS = ("folder", "npz", "safetensors")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
#: PGD's per-pixel box for the user's data: MNIST-like (one channel) 32/255, else CIFAR-like 16/255
SATURATION = {1: 32 / 255, 3: 16 / 255}
_IMAGE_KEYS = ("images", "x", "X", "data", "inputs")
_LABEL_KEYS = ("labels", "y", "Y", "targets", "label")


@dataclass(frozen=True)
class FileSpec:
    kind: str
    path: Path


def is_file_spec(name) -> bool:
    """Whether ``name`` is ``folder:PATH``, ``npz:PATH`` or ``safetensors:PATH``."""
    return isinstance(name, str) and ":" in name and name.split(":", 1)[0] in KINDS and bool(name.split(":", 1)[1])


def parse_spec(name: str) -> FileSpec:
    kind, _, path = name.partition(":")
    if kind not in KINDS or not path:
        raise InputError(f"dataset {name!r}: expected folder:PATH, npz:PATH or safetensors:PATH")
    return FileSpec(kind, Path(path).expanduser())


def absolute_data_spec(name: str) -> str:
    """``name`` with its path made absolute (what a card records); registry names unchanged."""
    if not is_file_spec(name):
        return name
    s = parse_spec(name)
    return f"{s.kind}:{s.path.resolve()}"


def saturation(channels: int) -> float:
    return SATURATION.get(int(channels), 16 / 255)


def _square(v, what: str) -> Optional[int]:
    if v is None:
        return None
    if isinstance(v, (list, tuple)):
        if len(v) == 2 and v[0] == v[1]:
            v = v[0]
        elif len(v) == 1:
            v = v[0]
        else:
            raise InputError(f"--{what} takes one size (a square), got {list(v)}")
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise InputError(f"--{what} must be a positive integer, got {v!r}")
    return int(v)


# ---------------------------------------------------------------------------
# folders
# ---------------------------------------------------------------------------

def _split_dir(root: Path, split: str) -> tuple[Path, str]:
    names = {p.name for p in root.iterdir() if p.is_dir()}
    if "train" in names and ({"test", "val"} & names):
        sub = split if split in names else ("val" if split == "test" else split)
        return root / sub, f"{sub}/"
    return root, ""


def folder_classes(root: Path) -> tuple[list[str], list[int]]:
    """Class folder names (sorted) and their labels (the integer names, or the sorted positions)."""
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise InputError(f"{root}: no class folders; an image folder holds PATH/<class>/<image> "
                         f"(ImageFolder layout)")
    if all(d.isdigit() for d in dirs):
        return sorted(dirs, key=int), sorted(int(d) for d in dirs)
    return dirs, list(range(len(dirs)))


def _to_size(im, image_size: Optional[int], resize: Optional[int], crop: Optional[int]):
    from PIL import Image

    if image_size is not None:
        resize, crop = (resize or image_size), (crop or image_size)
    if resize is not None:
        w, h = im.size
        if min(w, h) != resize:
            scale = resize / min(w, h)
            im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    if crop is not None:
        w, h = im.size
        if w < crop or h < crop:
            raise InputError(f"an image of {w}×{h} is smaller than the crop {crop}; pass --resize {crop} (or more)")
        left, top = int(round((w - crop) / 2.0)), int(round((h - crop) / 2.0))
        im = im.crop((left, top, left + crop, top + crop))
    return im


def load_folder(root: Path, split: str, image_size=None, resize=None, crop=None,
                channels: Optional[int] = None) -> ImageDataset:
    from PIL import Image, UnidentifiedImageError

    if not root.is_dir():
        raise DataNotFoundError(f"image folder {str(root)!r} does not exist (folder:PATH takes a directory in "
                                f"ImageFolder layout: PATH/<class>/<image>)")
    image_size, resize, crop = _square(image_size, "image-size"), _square(resize, "resize"), _square(crop, "crop")
    base, sub = _split_dir(root, split)
    names, labels = folder_classes(base)
    files: list[tuple[Path, int]] = []
    for name, lab in zip(names, labels):
        for f in sorted((base / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, lab))
    if not files:
        raise InputError(f"{base}: no images in the class folders (looked for {', '.join(IMAGE_SUFFIXES)})")
    pil = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                im.load()
                pil.append(im.copy())
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"{f}: unreadable image ({exc})") from None
    if channels is None:
        channels = 1 if all(im.mode in ("1", "L", "I", "I;16", "F", "LA") for im in pil) else 3
    if channels not in (1, 3):
        raise InputError(f"image folders give 1 (greyscale) or 3 (RGB) channels; the model takes {channels}")
    arrays = []
    for (f, _), im in zip(files, pil):
        im = _to_size(im.convert("L" if channels == 1 else "RGB"), image_size, resize, crop)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    sizes = sorted({a.shape[1:] for a in arrays})
    if len(sizes) != 1:
        raise InputError(f"{base}: images of different sizes ({', '.join(f'{h}×{w}' for h, w in sizes[:4])}"
                         f"{' …' if len(sizes) > 4 else ''}); pass --image-size S (or --resize R --crop C) to "
                         f"bring them to one size")
    how = ("" if image_size is None and resize is None and crop is None else
           f", resize {resize or image_size} + centre crop {crop or image_size}")
    shown = ", ".join(names[:10]) + (" …" if len(names) > 10 else "")
    prov = (f"image folder {base} ({len(names)} classes: {shown}; {len(files)} images{how}"
            f"{'' if sub else '; the same images serve the train and test splits'})")
    return ImageDataset(f"folder:{root}", split, torch.from_numpy(np.stack(arrays)),
                        torch.as_tensor([lab for _, lab in files], dtype=torch.int64), prov)


# ---------------------------------------------------------------------------
# arrays in a file
# ---------------------------------------------------------------------------

def _read_arrays(spec: FileSpec) -> dict[str, np.ndarray]:
    p = spec.path
    if not p.is_file():
        raise DataNotFoundError(f"{spec.kind} file {str(p)!r} does not exist")
    if spec.kind == "npz":
        try:
            with np.load(p, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except ValueError as exc:
            if "pickle" in str(exc).lower():
                raise InputError(f"{p}: an array holds Python objects (it needs pickle, which is not loaded); "
                                 f"save plain numeric arrays with numpy.savez") from None
            raise InputError(f"{p}: not a readable .npz file ({exc})") from None
        except (OSError, EOFError) as exc:
            raise InputError(f"{p}: not a readable .npz file ({exc})") from None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(p))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{p}: not a readable safetensors file ({exc})") from None


def _pick(arrays: dict, split: str, path: Path) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], str]:
    splits = [split] + (["val"] if split == "test" else [])
    for s in splits:
        for ik, lk in ((f"{s}_images", f"{s}_labels"), (f"x_{s}", f"y_{s}"), (f"images_{s}", f"labels_{s}")):
            if ik in arrays and lk in arrays:
                ids = arrays.get(f"{s}_ids")
                return arrays[ik], arrays[lk], ids, f"keys {ik}/{lk}"
    ik = next((k for k in _IMAGE_KEYS if k in arrays), None)
    lk = next((k for k in _LABEL_KEYS if k in arrays), None)
    if ik is None or lk is None:
        raise InputError(f"{path}: no images and labels for the {split} split; arrays found: "
                         f"{', '.join(sorted(arrays)) or 'none'}. Name them 'images' and 'labels' "
                         f"(or '{split}_images'/'{split}_labels')")
    return arrays[ik], arrays[lk], arrays.get("ids"), f"keys {ik}/{lk}; the same images serve the train and test splits"


def to_nchw(images: np.ndarray, what: str) -> np.ndarray:
    """N×C×H×W from N×H×W×C, N×C×H×W or N×H×W (C = 1 or 3)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise InputError(f"{what}: images must be N×H×W×C, N×C×H×W or N×H×W, got shape {list(images.shape)}")
    first, last = images.shape[1] in (1, 3), images.shape[3] in (1, 3)
    if last and not first:
        return images.transpose(0, 3, 1, 2)
    if first:
        return images
    raise InputError(f"{what}: images of shape {list(images.shape)} have no channel axis of 1 or 3 "
                     f"(expected N×H×W×C or N×C×H×W)")


def check_images(images: np.ndarray, what: str) -> torch.Tensor:
    """uint8 stays uint8; floats must be finite and in [0, 1]; anything else is refused."""
    if images.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(images))
    if not np.issubdtype(images.dtype, np.floating):
        raise InputError(f"{what}: images of dtype {images.dtype} are not supported; store uint8 (0–255) or "
                         f"floats in [0, 1]")
    x = images.astype(np.float32, copy=False)
    if not np.isfinite(x).all():
        raise InputError(f"{what}: the images contain NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = ("; they look like 0–255 values stored as floats: divide by 255 or store uint8" if lo >= 0 and hi <= 255
                else "; scale them to [0, 1] pixel space (undo any mean/std normalisation: pass --mean/--std instead)")
        raise InputError(f"{what}: pixel values outside [0, 1] (min {lo:.4g}, max {hi:.4g}){hint}")
    return torch.from_numpy(np.ascontiguousarray(x))


def check_labels(labels: np.ndarray, n: int, what: str, num_classes: Optional[int] = None) -> torch.Tensor:
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1 or len(labels) != n:
        raise InputError(f"{what}: labels must be {n} class indices (one per image), got shape {list(labels.shape)}")
    if labels.dtype == bool or not (np.issubdtype(labels.dtype, np.integer)
                                    or (np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels)))):
        raise InputError(f"{what}: labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if n and labels.min() < 0:
        raise InputError(f"{what}: labels must be ≥ 0, found {int(labels.min())}")
    if num_classes is not None and n and labels.max() >= num_classes:
        raise InputError(f"{what}: label {int(labels.max())} but the file declares {num_classes} classes "
                         f"(labels must be 0 … {num_classes - 1})")
    return torch.from_numpy(labels)


def load_arrays(spec: FileSpec, split: str) -> ImageDataset:
    arrays = _read_arrays(spec)
    images, labels, ids, keys = _pick(arrays, split, spec.path)
    what = f"{spec.path}"
    x = check_images(to_nchw(np.asarray(images), what), what)
    nc = arrays.get("num_classes")
    nc = int(np.asarray(nc).reshape(-1)[0]) if nc is not None else None
    y = check_labels(labels, len(x), what, nc)
    if len(x) == 0:
        raise InputError(f"{what}: no images")
    sid = None
    if ids is not None:
        sid = np.asarray(ids).reshape(-1)
        if len(sid) != len(x) or not np.issubdtype(sid.dtype, np.integer) or len(np.unique(sid)) != len(sid):
            raise InputError(f"{what}: ids must be {len(x)} unique integers (one per image)")
        sid = torch.from_numpy(sid.astype(np.int64))
    dtype = "uint8" if x.dtype == torch.uint8 else "float in [0, 1]"
    prov = f"{spec.kind} file {spec.path} ({keys}; {len(x)} images {list(x.shape[1:])}, {dtype})"
    return ImageDataset(f"{spec.kind}:{spec.path}", split, x, y, prov, sid)


# ---------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------

def load_file_dataset(name: str, split: str = "test", image_size=None, resize=None, crop=None,
                      channels: Optional[int] = None) -> ImageDataset:
    """The ``split`` of the dataset spec ``name`` (``folder:``, ``npz:``, ``safetensors:``).

    ``image_size``/``resize``/``crop`` and ``channels`` apply to image folders; array files
    are taken as they are (resizing them is left to the user)."""
    spec = parse_spec(name)
    if spec.kind == "folder":
        ds = load_folder(spec.path, split, image_size, resize, crop, channels)
    else:
        if any(v is not None for v in (image_size, resize, crop)):
            raise InputError(f"--image-size/--resize/--crop apply to image folders (folder:PATH); the arrays of "
                             f"{name} are used as they are")
        ds = load_arrays(spec, split)
    ds.name = name
    return ds


def file_dataset_info(name: str) -> DatasetInfo:
    """A :class:`DatasetInfo` for a dataset spec: classes from the folders or the labels, no
    normalisation (the model brings its own), PGD box from the channel count where known."""
    spec = parse_spec(name)
    if spec.kind == "folder":
        if not spec.path.is_dir():
            raise DataNotFoundError(f"image folder {str(spec.path)!r} does not exist")
        base, _ = _split_dir(spec.path, "test")
        _, labels = folder_classes(base)
        num_classes, shape = max(labels) + 1, None
    else:
        ds = load_arrays(spec, "test")
        arrays = _read_arrays(spec)
        nc = arrays.get("num_classes")
        num_classes = int(np.asarray(nc).reshape(-1)[0]) if nc is not None else int(ds.labels.max()) + 1
        shape = tuple(ds.input_shape)
    return DatasetInfo(name, num_classes, shape, "none", saturation(shape[0]) if shape else 16 / 255,
                       f"the user's {spec.kind} data at {spec.path}", _HOW,
                       loader=lambda split="test", data_root=None, download=False: load_file_dataset(name, split))


_HOW = ("  * folder:PATH — PATH/<class>/<image files>, optionally PATH/train and PATH/test\n"
        "  * npz:PATH or safetensors:PATH — arrays 'images' (N×H×W×C or N×C×H×W, uint8 or [0, 1]) and 'labels'")
