"""Test data built from the real MNIST slice bundled in the package (CI has no full MNIST)."""

from pathlib import Path

from robustbench_jr.data import bundled_mnist, write_idx


def fake_mnist_root(root: Path, n_train: int = 800) -> Path:
    """An MNIST directory in the plain layout: the bundled slice's first ``n_train`` images
    as the train split, the rest as the test split."""
    d = bundled_mnist()
    imgs, lbls = d.images[:, 0].numpy(), d.labels.numpy().astype("uint8")
    out = Path(root) / "mnist"
    out.mkdir(parents=True, exist_ok=True)
    write_idx(out / "train-images-idx3-ubyte.gz", imgs[:n_train])
    write_idx(out / "train-labels-idx1-ubyte.gz", lbls[:n_train])
    write_idx(out / "t10k-images-idx3-ubyte.gz", imgs[n_train:])
    write_idx(out / "t10k-labels-idx1-ubyte.gz", lbls[n_train:])
    return Path(root)
