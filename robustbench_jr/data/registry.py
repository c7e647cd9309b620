"""Dataset registry by name, data-root search and the one "data not found" message."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Iterable, Optional

from ..errors import ConfigError, DataNotFoundError, unknown_name
from .base import DatasetInfo, ImageDataset
from .files import file_dataset_info, is_file_spec, load_file_dataset

DATASETS: dict[str, DatasetInfo] = {}

ENV_DATA_ROOT = "JR_DATA_ROOT"


def register(info: DatasetInfo) -> DatasetInfo:
    DATASETS[info.name] = info
    return info


def get_dataset_info(name: str) -> DatasetInfo:
    """A registered dataset's info, or one made for ``folder:``/``npz:``/``safetensors:PATH``."""
    if is_file_spec(name):
        return file_dataset_info(name)
    if name not in DATASETS:
        err = unknown_name("dataset", name, DATASETS)
        raise ConfigError(f"{err}; or the user's data as folder:PATH, npz:PATH or safetensors:PATH")
    return DATASETS[name]


def is_dataset(name) -> bool:
    """A registered name or a ``folder:``/``npz:``/``safetensors:`` spec (not checked on disk)."""
    return name in DATASETS or is_file_spec(name)


def data_roots(data_root: Optional[str | os.PathLike] = None) -> list[Path]:
    """Directories searched for data, in order: ``data_root``, $JR_DATA_ROOT, ./data,
    ~/.cache/robustbench_jr/data."""
    roots: list[Path] = []
    if data_root:
        roots.append(Path(data_root).expanduser())
    if os.environ.get(ENV_DATA_ROOT):
        roots.append(Path(os.environ[ENV_DATA_ROOT]).expanduser())
    roots.append(Path("data"))
    roots.append(Path.home() / ".cache" / "robustbench_jr" / "data")
    seen, out = set(), []
    for r in roots:
        key = str(r.resolve()) if r.exists() else str(r)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def not_found(name: str, split: str, tried: Iterable[Path | str], how: Optional[str] = None) -> DataNotFoundError:
    """The one "data not found" error: what was looked for, every path tried, how to get it.

    ``how`` overrides the dataset's registered ``how_to_obtain`` text.
    """
    info = DATASETS.get(name)
    tried_s = "\n".join(f"  - {t}" for t in tried) or "  (none)"
    if how is None:
        how = info.how_to_obtain if info else ""
    return DataNotFoundError(
        f"{name} ({split} split) not found. Paths tried:\n{tried_s}\nHow to obtain it:\n{how}"
    )


def _accepts_limit(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "limit" or p.kind is p.VAR_KEYWORD for p in params)


def load_dataset(
    name: str,
    split: str = "test",
    data_root: Optional[str | os.PathLike] = None,
    download: bool = False,
    limit: Optional[int] = None,
    *,
    image_size: Optional[int] = None,
    resize: Optional[int] = None,
    crop: Optional[int] = None,
    channels: Optional[int] = None,
) -> ImageDataset:
    """Load dataset ``name`` (see ``DATASETS``), ``split`` 'train' or 'test'.

    ``download=True`` lets torchvision download into ``data_root`` where the network
    allows it; without it only local files are used.

    ``name`` may also be the user's data: ``folder:PATH`` (with ``image_size``/``resize``/
    ``crop`` and ``channels``), ``npz:PATH`` or ``safetensors:PATH`` (see :mod:`.files`).

    ``limit`` caps the number of samples. Loaders that can avoid reading the rest
    (ImageNet) honour it themselves and say in the provenance how they chose the
    samples; for the others the first ``limit`` samples are kept. Sample ids stay
    those of the full split either way.
    """
    if split not in ("train", "test"):
        raise DataNotFoundError(f"unknown split {split!r}; valid splits: test, train")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    if is_file_spec(name):
        ds = load_file_dataset(name, split, image_size=image_size, resize=resize, crop=crop, channels=channels)
        return ds.first(limit) if limit is not None and len(ds) > limit else ds
    if any(v is not None for v in (image_size, resize, crop)):
        raise ConfigError(f"--image-size/--resize/--crop apply to image folders (folder:PATH), not to {name!r}")
    info = get_dataset_info(name)
    kwargs = dict(split=split, data_root=data_root, download=download)
    if limit is not None and _accepts_limit(info.loader):
        kwargs["limit"] = limit
    ds = info.loader(**kwargs)
    if limit is not None and len(ds) > limit:
        ds = ds.first(limit)
    return ds
