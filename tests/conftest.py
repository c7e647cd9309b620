"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No data anywhere: cwd, HOME and $JR_DATA_ROOT point into an empty tmp dir, and the
    system data folders (Debian's Fashion-MNIST) are not searched. Returns tmp_path."""
    from robustbench_jr.data import mnist as mnist_mod

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("JR_DATA_ROOT", raising=False)
    monkeypatch.setattr(mnist_mod, "_SYSTEM_DIRS", {"mnist": [], "fashion-mnist": []})
    return tmp_path
