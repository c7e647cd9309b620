"""IDX reader/writer: round trips, gzip detection by magic bytes, corrupt files."""

import gzip

import numpy as np
import pytest

from robustbench_jr.data import read_idx, write_idx
from robustbench_jr.errors import DataNotFoundError


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    arr = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    path = tmp_path / name
    write_idx(path, arr)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28)
    np.testing.assert_array_equal(out, arr)


def test_idx_gzip_detected_by_content_not_name(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-idx1-ubyte"  # no .gz suffix, gzip content
    write_idx(path, arr, compress=True)
    np.testing.assert_array_equal(read_idx(path), arr)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_is_a_clear_error(tmp_path, gz):
    arr = np.zeros((4, 28, 28), dtype=np.uint8)
    full = tmp_path / "full"
    write_idx(full, arr, compress=False)
    raw = full.read_bytes()[:-100]
    path = tmp_path / ("cut.gz" if gz else "cut")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataNotFoundError, match="truncated or corrupt IDX") as exc:
        read_idx(path)
    assert str(path) in str(exc.value)


def test_bad_magic_and_corrupt_gzip(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x56\x78" + bytes(20))
    with pytest.raises(DataNotFoundError, match="bad magic"):
        read_idx(bad)
    cut_gz = tmp_path / "cut.gz"
    cut_gz.write_bytes(gzip.compress(bytes(4000))[:30])
    with pytest.raises(DataNotFoundError, match="corrupt gzip"):
        read_idx(cut_gz)
