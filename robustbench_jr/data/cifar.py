"""CIFAR-10 and CIFAR-100 from the "python version" pickles (torchvision layout).

The batch files are Python pickles. They are read with :class:`RestrictedUnpickler`,
which resolves only the handful of globals that rebuild numpy arrays and refuses
every other one, so a tampered file cannot run code. (torchvision's own CIFAR
classes unpickle without restriction; they are used here only to download.)
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ..errors import DataNotFoundError
from .base import DatasetInfo, ImageDataset
from .mnist import download_hint
from .registry import data_roots, not_found, register


class UnsafePickleError(DataNotFoundError):
    """A pickle referenced a global outside the numpy-array allow-list; nothing was run."""


def _latin1_encode(obj: Any, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, 'latin1').
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refusing _codecs.encode with encoding {encoding!r} (only latin1 is needed)")
    return codecs.encode(obj, "latin1")


def _allowed_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    out: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = multiarray._reconstruct
        out[(mod, "scalar")] = multiarray.scalar
    return out


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that only rebuilds numpy arrays, dicts, lists, strings and numbers.

    Any other global (``os.system``, ``builtins.eval``, a class from some module…)
    raises :class:`UnsafePickleError` before it is called.
    """

    _ALLOWED: Optional[dict] = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._ALLOWED is None:
            RestrictedUnpickler._ALLOWED = _allowed_globals()
        try:
            return RestrictedUnpickler._ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only numpy array reconstruction "
                f"globals are allowed"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refusing a pickle with persistent ids")


def safe_unpickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (latin1 for Python 2 strings).

    A file that references any other global raises :class:`UnsafePickleError`; a
    truncated or corrupt one raises :class:`DataNotFoundError`. Both name the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(
            f"{path}: {exc}. CIFAR batch files hold only numpy arrays, lists and strings, so this "
            f"file is corrupt or has been tampered with; nothing in it was executed. Delete it and "
            f"obtain the dataset again."
        ) from None
    except OSError as exc:
        raise DataNotFoundError(f"{path}: cannot read file ({exc})") from None
    except Exception as exc:  # a damaged pickle can fail in many ways
        raise DataNotFoundError(
            f"{path}: truncated or corrupt pickle ({type(exc).__name__}: {exc}); obtain the dataset again"
        ) from None


def _str_keys(d: Any, path: Path) -> dict:
    if not isinstance(d, dict):
        raise DataNotFoundError(f"{path}: not a CIFAR batch (expected a dict, got {type(d).__name__})")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


# name -> (torchvision class name, base folder, files per split, label key, classes)
_SPECS = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}, "labels", 10),
    "cifar100": ("CIFAR100", "cifar-100-python", {"train": ["train"], "test": ["test"]}, "fine_labels", 100),
}


def read_cifar_batches(directory: str | Path, name: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 [N, 3, 32, 32] and int64 labels from a ``cifar-10-batches-py`` or
    ``cifar-100-python`` directory, read with the restricted unpickler."""
    _, _, files, label_key, num_classes = _SPECS[name]
    directory = Path(directory)
    images, labels = [], []
    for fname in files[split]:
        path = directory / fname
        batch = _str_keys(safe_unpickle(path), path)
        data, lab = batch.get("data"), batch.get(label_key)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            raise DataNotFoundError(f"{path}: not a {name} batch ('data' must be a uint8 array [N, 3072])")
        try:
            lab = np.asarray(lab, dtype=np.int64)
        except (TypeError, ValueError):
            lab = None
        if lab is None or lab.shape != (len(data),) or (len(lab) and (lab.min() < 0 or lab.max() >= num_classes)):
            raise DataNotFoundError(f"{path}: not a {name} batch ('{label_key}' must hold {len(data)} labels "
                                    f"in 0..{num_classes - 1})")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def _candidate_dirs(root: Path, base: str, name: str) -> list[Path]:
    return [root / base, root / name / base, root / name.upper() / base, root]


def _download(name: str, root: Path) -> Path:
    import torchvision
    from torchvision.datasets.utils import download_and_extract_archive

    cls = getattr(torchvision.datasets, _SPECS[name][0])
    root.mkdir(parents=True, exist_ok=True)
    # Download and check the archive's md5 only; reading stays with the restricted unpickler.
    download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
    return root / cls.base_folder


def _loader(name: str):
    _, base, files, _, _ = _SPECS[name]

    def load(split: str = "test", data_root: Optional[str] = None, download: bool = False) -> ImageDataset:
        roots = data_roots(data_root)
        tried: list = []
        for root in roots:
            for d in _candidate_dirs(root, base, name):
                tried.append(d / files[split][0])
                if all((d / f).is_file() for f in files[split]):
                    images, labels = read_cifar_batches(d, name, split)
                    return ImageDataset(name, split, images, labels, provenance=f"{name} python batches {d}")
        if download:
            root = roots[0]
            try:
                d = _download(name, root)
            except Exception as exc:  # network errors come in many types
                tried.append(f"torchvision download into {root} failed: {exc}")
            else:
                images, labels = read_cifar_batches(d, name, split)
                return ImageDataset(name, split, images, labels, provenance=f"torchvision download {d}")
        raise not_found(name, split, tried)

    return load


def _how(name: str, base: str, archive: str) -> str:
    return (
        download_hint(archive, first=True) +
        f"  * or, with the archive at hand: `mkdir -p data && tar xzf {archive} -C data`\n"
        f"    (this gives data/{base}/; point --data-root or $JR_DATA_ROOT at its parent)\n"
        f"  * the files are pickles; they are read with a restricted unpickler that rebuilds numpy\n"
        f"    arrays only\n"
        f"  * for tests without the full set, foolbox ships its first 20 test images:\n"
        f"    `pip install foolbox` and use robustbench_jr.data.foolbox_samples('{name}')"
    )


CIFAR10 = register(DatasetInfo(
    "cifar10", 10, (3, 32, 32), "cifar", 16 / 255,
    "CIFAR-10 natural images, 10 classes (50,000 train / 10,000 test)",
    _how("cifar10", "cifar-10-batches-py", "cifar-10-python.tar.gz"), _loader("cifar10")))
CIFAR100 = register(DatasetInfo(
    "cifar100", 100, (3, 32, 32), "cifar", 16 / 255,
    "CIFAR-100 natural images, 100 fine classes (50,000 train / 10,000 test)",
    _how("cifar100", "cifar-100-python", "cifar-100-python.tar.gz"), _loader("cifar100")))
