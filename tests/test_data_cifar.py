"""CIFAR loaders: restricted unpickler on fake batches written here; malicious pickles refused."""

import os
import pickle
import struct

import numpy as np
import pytest
import torch

from robustbench_jr.data import (
    RestrictedUnpickler, UnsafePickleError, load_dataset, read_cifar_batches, safe_unpickle,
)
from robustbench_jr.errors import DataNotFoundError


def _short_str(s: bytes) -> bytes:
    return b"U" + bytes([len(s)]) + s  # SHORT_BINSTRING: a Python 2 str


def py2_cifar_pickle(data: np.ndarray, labels: list, label_key: bytes = b"labels") -> bytes:
    """A batch pickled the way the real files are: Python 2, protocol 2, str keys and data,
    numpy.core.multiarray._reconstruct (hand-assembled opcodes)."""
    n, width = data.shape
    raw = data.astype(np.uint8).tobytes()
    out = b"\x80\x02}(" + _short_str(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + _short_str(b"b")
    out += b"\x87R("  # _reconstruct(ndarray, (0,), 'b'), then the state tuple
    out += b"K\x01" + b"M" + struct.pack("<H", n) + b"M" + struct.pack("<H", width) + b"\x86"
    out += b"cnumpy\ndtype\n" + _short_str(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + _short_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + b"T" + struct.pack("<I", len(raw)) + raw + b"tb"
    out += _short_str(label_key) + b"](" + b"".join(b"K" + bytes([int(v)]) for v in labels) + b"e"
    out += _short_str(b"batch_label") + _short_str(b"testing batch 1 of 1")
    return out + b"u."


def _batch(n, num_classes, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), [int(v) for v in rng.integers(0, num_classes, n)]


def write_fake_cifar10(d, style="py2", n=5):
    d.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i, fname in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data, labels = _batch(n, 10, i)
        truth[fname] = (data, labels)
        if style == "py2":
            blob = py2_cifar_pickle(data, labels)
        elif style == "py3-proto2-bytes-keys":
            blob = pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"}, protocol=2)
        else:
            blob = pickle.dumps({"data": data, "labels": labels, "filenames": ["a.png"] * n}, protocol=4)
        (d / fname).write_bytes(blob)
    return truth


@pytest.mark.parametrize("style", ["py2", "py3-proto2-bytes-keys", "py3-proto4"])
def test_fake_cifar10_loads(isolated, style):
    root = isolated / "root"
    truth = write_fake_cifar10(root / "cifar-10-batches-py", style)
    test = load_dataset("cifar10", "test", data_root=root)
    data, labels = truth["test_batch"]
    assert test.images.shape == (5, 3, 32, 32) and test.images.dtype == torch.uint8
    np.testing.assert_array_equal(test.images.numpy(), data.reshape(5, 3, 32, 32))
    assert test.labels.tolist() == labels and test.labels.dtype == torch.int64
    train = load_dataset("cifar10", "train", data_root=root)
    assert len(train) == 25 and train.ids.tolist() == list(range(25))
    assert train.labels[5:10].tolist() == truth["data_batch_2"][1]


def test_fake_cifar100_fine_labels(isolated):
    d = isolated / "root" / "cifar-100-python"
    d.mkdir(parents=True)
    data, labels = _batch(4, 100, 7)
    labels[0] = 99
    for fname in ("train", "test"):
        (d / fname).write_bytes(py2_cifar_pickle(data, labels, b"fine_labels"))
    ds = load_dataset("cifar100", data_root=isolated / "root")
    assert ds.labels.tolist() == labels and ds.images.shape == (4, 3, 32, 32)


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Evaluator:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('MARKER').touch()",))


def test_malicious_pickle_refused_and_not_executed(isolated):
    root = isolated / "root"
    d = root / "cifar-10-batches-py"
    write_fake_cifar10(d, "py3-proto4")
    marker = isolated / "pwned"
    evil = {"data": _System(f"touch {marker}"), "labels": [0]}
    (d / "test_batch").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafePickleError) as exc:
        load_dataset("cifar10", "test", data_root=root)
    msg = str(exc.value)
    assert "refusing to unpickle global" in msg and "system" in msg
    assert str(d / "test_batch") in msg and "nothing in it was executed" in msg
    assert isinstance(exc.value, DataNotFoundError)
    assert not marker.exists()


def test_eval_pickle_refused(isolated, monkeypatch):
    path = isolated / "batch"
    path.write_bytes(pickle.dumps({"data": _Evaluator()}, protocol=4))
    monkeypatch.chdir(isolated)
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_unpickle(path)
    assert not (isolated / "MARKER").exists()


def test_codecs_encode_only_latin1(isolated):
    # _codecs.encode is allowed for protocol-2 bytes, but only with latin1.
    path = isolated / "p"
    path.write_bytes(b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R.")
    with pytest.raises(UnsafePickleError, match="latin1"):
        safe_unpickle(path)


def test_restricted_unpickler_is_a_pickle_unpickler():
    assert issubclass(RestrictedUnpickler, pickle.Unpickler)


def test_truncated_batch_is_a_clear_error(isolated):
    root = isolated / "root"
    d = root / "cifar-10-batches-py"
    write_fake_cifar10(d, "py2")
    blob = (d / "test_batch").read_bytes()
    (d / "test_batch").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataNotFoundError, match="truncated or corrupt pickle") as exc:
        load_dataset("cifar10", data_root=root)
    assert str(d / "test_batch") in str(exc.value)


def test_wrong_content_is_a_clear_error(isolated):
    d = isolated / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 10), np.uint8), "labels": [0, 1]}))
    with pytest.raises(DataNotFoundError, match=r"uint8 array \[N, 3072\]"):
        read_cifar_batches(d, "cifar10", "test")
    (d / "test_batch").write_bytes(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 10]}))
    with pytest.raises(DataNotFoundError, match="labels"):
        read_cifar_batches(d, "cifar10", "test")


def test_download_route_reads_with_restricted_unpickler(isolated, monkeypatch):
    from robustbench_jr.data import cifar as cifar_mod

    calls = []

    def fake_download(name, root):
        calls.append((name, root))
        write_fake_cifar10(root / "cifar-10-batches-py", "py2", n=3)
        return root / "cifar-10-batches-py"

    monkeypatch.setattr(cifar_mod, "_download", fake_download)
    root = isolated / "dl"
    ds = load_dataset("cifar10", data_root=root, download=True)
    assert len(ds) == 3 and calls == [("cifar10", root)] and "download" in ds.provenance

    def failing(name, root):
        raise OSError("no network")

    monkeypatch.setattr(cifar_mod, "_download", failing)
    with pytest.raises(DataNotFoundError, match="download into .* failed: no network"):
        load_dataset("cifar10", data_root=isolated / "dl2", download=True)
