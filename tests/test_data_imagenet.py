"""ImageNet ImageFolder loader on a tiny fake val folder; preprocessing; limit."""

import numpy as np
import pytest
import torch
from PIL import Image

from robustbench_jr.data import imagenet_preprocess, load_dataset
from robustbench_jr.data.imagenet import class_balanced_order
from robustbench_jr.errors import DataNotFoundError

WNIDS = [f"n{i:08d}" for i in range(1000)]


def _img(path, colour, size=(40, 30), mode="RGB"):
    Image.new(mode, size, colour).save(path)


def make_val(root, counts, all_classes=True):
    """counts: {class index: number of images}; optionally all 1000 (mostly empty) class folders."""
    val = root / "imagenet" / "val"
    for i in (range(1000) if all_classes else counts):
        (val / WNIDS[i]).mkdir(parents=True, exist_ok=True)
    for c, n in counts.items():
        for j in range(n):
            _img(val / WNIDS[c] / f"ILSVRC2012_val_{c:04d}{j:04d}.png", (c % 256, j * 40, 7))
    return val


def test_preprocess_resize_and_centre_crop():
    im = Image.new("RGB", (512, 256), (255, 0, 0))
    im.paste((0, 0, 255), (256, 0, 512, 256))  # right half blue
    out = imagenet_preprocess(im)
    assert out.shape == (3, 224, 224) and out.dtype == np.uint8
    # shorter side is already 256; the crop takes columns 144..368: 112 red then 112 blue
    assert (out[:, :, :110] == np.array([255, 0, 0])[:, None, None]).all()
    assert (out[:, :, 114:] == np.array([0, 0, 255])[:, None, None]).all()
    grey = imagenet_preprocess(Image.new("L", (300, 500), 77))
    assert grey.shape == (3, 224, 224) and (grey == 77).all()


def test_fake_imagenet_folder_and_limit(isolated):
    root = isolated / "root"
    make_val(root, {0: 3, 5: 2, 999: 1})
    ds = load_dataset("imagenet", data_root=root)
    assert ds.images.shape == (6, 3, 224, 224) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 5, 5, 999] and ds.ids.tolist() == list(range(6))
    assert int(ds.images[5, 0, 0, 0]) == 999 % 256 and int(ds.images[1, 1, 0, 0]) == 40
    lim = load_dataset("imagenet", data_root=root, limit=4)
    # round-robin over classes; ids are positions in the full listing
    assert lim.ids.tolist() == [0, 3, 5, 1] and lim.labels.tolist() == [0, 5, 999, 0]
    assert torch.equal(lim.images, ds.images[lim.ids])
    assert "round-robin" in lim.provenance


def test_class_balanced_order_prefixes():
    labels = [0, 0, 0, 1, 1, 2]
    assert class_balanced_order(labels) == [0, 3, 5, 1, 4, 2]


def test_partial_folder_needs_class_list(isolated):
    root = isolated / "root"
    val = make_val(root, {3: 1, 7: 1}, all_classes=False)
    with pytest.raises(DataNotFoundError, match="expected 1000"):
        load_dataset("imagenet", data_root=root)
    # A wnid list next to val/ fixes the class order (Kaggle's LOC_synset_mapping.txt format).
    mapping = "\n".join(f"{w} some class name" for w in WNIDS)
    (val.parent / "LOC_synset_mapping.txt").write_text(mapping)
    ds = load_dataset("imagenet", data_root=root)
    assert ds.labels.tolist() == [3, 7]


def test_flat_val_folder_is_explained(isolated):
    root = isolated / "root"
    val = root / "imagenet" / "val"
    val.mkdir(parents=True)
    _img(val / "ILSVRC2012_val_00000001.JPEG", (1, 2, 3))
    with pytest.raises(DataNotFoundError) as exc:
        load_dataset("imagenet", data_root=root)
    msg = str(exc.value)
    assert "flat folder" in msg and "torchvision.datasets.ImageNet" in msg


def test_corrupt_image_names_the_file(isolated):
    root = isolated / "root"
    val = make_val(root, {1: 1})
    bad = val / WNIDS[1] / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(DataNotFoundError, match="broken.JPEG"):
        load_dataset("imagenet", data_root=root)
