"""foolbox's real sample images, and few-shot subsets."""

import importlib.util

import pytest
import torch

from robustbench_jr.data import ImageDataset, bundled_mnist, few_shot, foolbox_samples
from robustbench_jr.data import samples as samples_mod
from robustbench_jr.errors import ConfigError, DataNotFoundError

needs_foolbox = pytest.mark.skipif(importlib.util.find_spec("foolbox") is None, reason="foolbox not installed")


@needs_foolbox
def test_foolbox_cifar10_samples():
    ds = foolbox_samples("cifar10")
    assert ds.name == "cifar10" and ds.split == "test"
    assert ds.images.shape == (20, 3, 32, 32) and ds.images.dtype == torch.uint8
    # the first 20 labels of the CIFAR-10 test set
    assert ds.labels.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1, 0, 9, 5, 7, 9, 8, 5, 7, 8, 6]
    assert ds.ids.tolist() == list(range(20))
    assert int(ds.images.max()) > 200 and float(ds.images.float().std()) > 20  # real images, not blank
    assert "foolbox" in ds.provenance


@needs_foolbox
@pytest.mark.parametrize("name,shape,classes", [
    ("cifar100", (3, 32, 32), 100), ("imagenet", (3, 224, 224), 1000),
    ("mnist", (1, 28, 28), 10), ("fashion-mnist", (1, 28, 28), 10)])
def test_other_foolbox_samples(name, shape, classes):
    ds = foolbox_samples(name)
    assert len(ds) == 20 and ds.input_shape == shape and ds.images.dtype == torch.uint8
    assert 0 <= int(ds.labels.min()) and int(ds.labels.max()) < classes


@needs_foolbox
def test_foolbox_mnist_samples_are_the_first_test_images():
    assert torch.equal(foolbox_samples("mnist").images, bundled_mnist().images[:20])


def test_foolbox_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(samples_mod, "foolbox_data_dir", lambda: None)
    with pytest.raises(DataNotFoundError) as exc:
        foolbox_samples("cifar10")
    msg = str(exc.value)
    assert "foolbox" in msg and "pip install foolbox" in msg and "Paths tried" in msg
    with pytest.raises(DataNotFoundError, match="valid: cifar10"):
        foolbox_samples("svhn")


def test_few_shot_counts_and_ids():
    ds = bundled_mnist()
    sub = few_shot(ds, k=5, seed=0)
    assert len(sub) == 50
    assert torch.bincount(sub.labels, minlength=10).tolist() == [5] * 10
    # ids preserved: each id points at the same image in the full set
    assert torch.equal(sub.images, ds.images[sub.ids]) and torch.equal(sub.labels, ds.labels[sub.ids])
    assert sub.ids.tolist() == sorted(sub.ids.tolist())
    assert "k=5" in sub.provenance and "seed=0" in sub.provenance


def test_few_shot_deterministic_and_seed_dependent():
    ds = bundled_mnist()
    a, b = few_shot(ds, 3, seed=123), few_shot(ds, 3, seed=123)
    assert torch.equal(a.ids, b.ids)
    assert not torch.equal(a.ids, few_shot(ds, 3, seed=124).ids)
    # unaffected by the global RNG
    torch.manual_seed(999)
    assert torch.equal(few_shot(ds, 3, seed=123).ids, a.ids)


def test_few_shot_ids_stable_under_subsets():
    ds = bundled_mnist().subset(torch.arange(100, 400))
    sub = few_shot(ds, 2, seed=1)
    assert all(100 <= i < 400 for i in sub.ids.tolist())


def test_few_shot_too_few_samples():
    ds = bundled_mnist().first(30)
    with pytest.raises(ConfigError, match="fewer samples") as exc:
        few_shot(ds, k=5, seed=0)
    assert "class" in str(exc.value)
    # an unregistered dataset uses the classes present
    toy = ImageDataset("toy", "test", torch.zeros(4, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 0, 1, 1]), "toy")
    assert len(few_shot(toy, 2, seed=0)) == 4
    with pytest.raises(ConfigError):
        few_shot(toy, 3, seed=0)
    with pytest.raises(ConfigError, match="positive"):
        few_shot(toy, 0, seed=0)
