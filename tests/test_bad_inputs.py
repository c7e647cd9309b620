"""Bad inputs end with one line naming the problem and the fix, exit status 2, no traceback
and nothing already computed lost (issue #17, item 4); an unexpected exception anywhere in
the CLI is one line and exit 2 too (never 1, which CI reads as "gate failed"), with
JR_DEBUG=1 showing the traceback.

Every case goes through the command line (in process, with click's runner; the cases that
need a read-only directory run the command in a subprocess under a read-only bind mount)."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from helpers_data import fake_mnist_root
from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.cli.train import main as jr_train
from robustbench_jr.data import bundled_mnist, write_idx
from robustbench_jr.models import resolve_checkpoint

BIN = Path(sys.executable).parent
FIT = ["--model", "lenet", "--dataset", "mnist", "--batch-size", "50", "--steps", "2", "--eval-every", "0",
       "--eval-samples", "50", "--log-every", "1", "--save-every", "1", "--device", "cpu", "--quiet"]
AUDIT = ["lenet-mnist", "--source", "bundled", "--attacks", "fgsm", "--n", "4", "--quiet"]


# ------------------------------------------------------------------ fixtures ----
@pytest.fixture(scope="module")
def w(tmp_path_factory):
    """A workspace with what the cases break: a finished audit, MNIST files, checkpoints."""
    t = tmp_path_factory.mktemp("bad")
    ws = {"t": t, "root": fake_mnist_root(t / "data", n_train=800)}
    r = CliRunner().invoke(jr_eval, ["run", *AUDIT, "--out", str(t / "run")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    ws["run"] = t / "run"
    (t / "file").write_text("a regular file\n")
    # checkpoints: the bundled lenet-mnist, copied and spoiled
    src = resolve_checkpoint("lenet-mnist")
    for name in ("nan", "tagged", "strclasses"):
        shutil.copytree(src, t / name)
    st = load_file(t / "nan" / "model.safetensors")
    st = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in st.items()}
    save_file(st, t / "nan" / "model.safetensors")
    card = (t / "tagged" / "card.yaml").read_text()
    (t / "tagged" / "card.yaml").write_text(card + "extra: !!python/object/apply:os.system ['echo pwned']\n")
    c = yaml.safe_load((t / "strclasses" / "card.yaml").read_text())
    c["num_classes"] = "ten"
    (t / "strclasses" / "card.yaml").write_text(yaml.safe_dump(c))
    return ws


def _mnist(root: Path, images=None, labels=None, *, corrupt: str = "") -> Path:
    """An MNIST root (bundled slice) with the test/train files replaced as asked."""
    d = bundled_mnist()
    imgs = d.images[:, 0].numpy() if images is None else images
    lbls = d.labels.numpy().astype("uint8") if labels is None else labels
    out = root / "mnist"
    out.mkdir(parents=True, exist_ok=True)
    for split, sl in (("train", slice(0, 800)), ("t10k", slice(800, None))):
        _write(out / f"{split}-images-idx3-ubyte", imgs[sl])
        write_idx(out / f"{split}-labels-idx1-ubyte", lbls[sl], compress=False)
    if corrupt == "truncated":
        p = out / "t10k-images-idx3-ubyte"
        p.write_bytes(p.read_bytes()[:5000])
    elif corrupt == "magic":
        p = out / "t10k-images-idx3-ubyte"
        p.write_bytes(b"\x12\x34" + p.read_bytes()[2:])
    return root


def _write(path: Path, arr: np.ndarray) -> None:
    """IDX of any dtype (uint8 via write_idx; float32 as type 0x0D, big endian)."""
    if arr.dtype == np.uint8:
        write_idx(path, arr, compress=False)
        return
    header = bytes([0, 0, 0x0D, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    path.write_bytes(header + arr.astype(">f4").tobytes())


def _float_pixels(nan: bool = False) -> np.ndarray:
    x = bundled_mnist().images[:, 0].numpy().astype(np.float32)  # 0..255 as floats
    if nan:
        x = x / 255
        x[3, 10, 10] = np.nan
    return x


def _labels_200() -> np.ndarray:
    y = bundled_mnist().labels.numpy().astype("uint8")
    y[5] = 200
    return y


def _store(path: Path, content: bytes) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.sqlite").write_bytes(content)
    return path


def _train_state(out: Path, payload: bytes) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_state.pt").write_bytes(payload)
    return out


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pickle_state(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "payload": _Evil()}, out / "train_state.pt")
    return out


# ---------------------------------------------------------------- the table ----
# (id, command, arguments (a function of the workspace), what the message must name)
CASES = [
    ("run-out-under-file", jr_eval, lambda w: ["run", *AUDIT, "--out", str(w["t"] / "file" / "run")], "file"),
    ("fit-out-under-file", jr_train,
     lambda w: ["fit", *FIT, "--data-root", str(w["root"]), "--out", str(w["t"] / "file" / "fit")], "file"),
    ("gate-junit-under-file", jr_eval,
     lambda w: ["gate", str(w["run"]), "--rule", "rho_adv[fgsm] >= 0", "--junit", str(w["t"] / "file" / "j.xml")],
     "file"),
    ("report-corrupt-store", jr_eval,
     lambda w: ["report", str(_store(w["t"] / "corrupt", b"this is not sqlite" * 100)), "--out",
                str(w["t"] / "rep1")], "results.sqlite"),
    ("report-empty-store", jr_eval,
     lambda w: ["report", str(_store(w["t"] / "empty", b"")), "--out", str(w["t"] / "rep2")], "results.sqlite"),
    ("gate-corrupt-store", jr_eval,
     lambda w: ["gate", str(_store(w["t"] / "corrupt2", b"this is not sqlite" * 100)), "--rule",
                "rho_adv[fgsm] >= 0"], "results.sqlite"),
    ("gate-empty-store", jr_eval,
     lambda w: ["gate", str(_store(w["t"] / "empty2", b"")), "--rule", "rho_adv[fgsm] >= 0"], "results.sqlite"),
    ("audit-truncated-local-mnist", jr_eval,
     lambda w: ["run", "lenet-mnist", "--source", "auto", "--attacks", "fgsm", "--n", "4", "--quiet",
                "--data-root", str(_mnist(w["t"] / "trunc", corrupt="truncated")), "--out", str(w["t"] / "a1")],
     "truncated"),
    ("audit-wrong-magic-local-mnist", jr_eval,
     lambda w: ["run", "lenet-mnist", "--source", "auto", "--attacks", "fgsm", "--n", "4", "--quiet",
                "--data-root", str(_mnist(w["t"] / "magic", corrupt="magic")), "--out", str(w["t"] / "a2")],
     "magic"),
    ("fit-float-pixels-0-255", jr_train,
     lambda w: ["fit", *FIT, "--data-root", str(_mnist(w["t"] / "f255", images=_float_pixels())),
                "--out", str(w["t"] / "f1")], "[0, 1]"),
    ("fit-nan-pixel", jr_train,
     lambda w: ["fit", *FIT, "--data-root", str(_mnist(w["t"] / "fnan", images=_float_pixels(nan=True))),
                "--out", str(w["t"] / "f2")], "NaN"),
    ("fit-label-200", jr_train,
     lambda w: ["fit", *FIT, "--data-root", str(_mnist(w["t"] / "l200", labels=_labels_200())),
                "--out", str(w["t"] / "f3")], "200"),
    ("fit-epochs-nan", jr_train,
     lambda w: ["fit", *FIT[:4], "--epochs", "nan", "--data-root", str(w["root"]), "--out", str(w["t"] / "f4")],
     "epochs"),
    ("fit-epochs-inf", jr_train,
     lambda w: ["fit", *FIT[:4], "--epochs", "inf", "--data-root", str(w["root"]), "--out", str(w["t"] / "f5")],
     "epochs"),
    ("fit-epochs-and-steps", jr_train,
     lambda w: ["fit", *FIT, "--epochs", "1", "--data-root", str(w["root"]), "--out", str(w["t"] / "f6")],
     "epochs"),
    ("fit-eval-samples-0", jr_train,
     lambda w: ["fit", *FIT, "--eval-samples", "0", "--data-root", str(w["root"]), "--out", str(w["t"] / "f7")],
     "eval"),
    ("fit-eval-samples-negative", jr_train,
     lambda w: ["fit", *FIT, "--eval-samples", "-5", "--data-root", str(w["root"]), "--out", str(w["t"] / "f8")],
     "eval"),
    ("finetune-num-classes-negative", jr_train,
     lambda w: ["finetune", "lenet-mnist", *FIT[4:], "--num-classes", "-1", "--data-root", str(w["root"]),
                "--out", str(w["t"] / "f9")], "num-classes"),
    ("finetune-num-classes-0", jr_train,
     lambda w: ["finetune", "lenet-mnist", *FIT[4:], "--num-classes", "0", "--data-root", str(w["root"]),
                "--out", str(w["t"] / "f10")], "num-classes"),
    ("resume-corrupt-state", jr_train,
     lambda w: ["fit", *FIT, "--data-root", str(w["root"]), "--resume",
                "--out", str(_train_state(w["t"] / "f11", b"\x00garbage" * 50))], "train_state.pt"),
    ("resume-pickle-state", jr_train,
     lambda w: ["fit", *FIT, "--data-root", str(w["root"]), "--resume",
                "--out", str(_pickle_state(w["t"] / "f12"))], "train_state.pt"),
    ("cells-nan-weights", jr_eval,
     lambda w: ["cells", str(w["t"] / "nan"), "--index", "0", "--resolution", "11", "--out", str(w["t"] / "c1")],
     "NaN"),
    ("finetune-card-python-tag", jr_train,
     lambda w: ["finetune", str(w["t"] / "tagged" / "model.safetensors"), "--arch", "lenet", *FIT[4:],
                "--data-root", str(w["root"]), "--out", str(w["t"] / "f13")], "card"),
    ("finetune-card-num-classes-string", jr_train,
     lambda w: ["finetune", str(w["t"] / "strclasses"), *FIT[4:], "--data-root", str(w["root"]),
                "--out", str(w["t"] / "f14")], "num_classes"),
    ("cells-card-num-classes-string", jr_eval,
     lambda w: ["cells", str(w["t"] / "strclasses"), "--index", "0", "--resolution", "11",
                "--out", str(w["t"] / "c2")], "num_classes"),
    ("fit-empty-dataset", jr_train,
     lambda w: ["fit", *FIT, "--data-root", str(_mnist(w["t"] / "emptyds", images=np.zeros((0, 28, 28), np.uint8),
                                                      labels=np.zeros((0,), np.uint8))),
                "--out", str(w["t"] / "f15")], "no"),
    ("gate-rule-syntax-error", jr_eval,
     lambda w: ["gate", str(w["run"]), "--rule", "rho_adv[fgsm] >>= 0.3"], "rho_adv[fgsm] >>= 0.3"),
]


def one_line(res) -> str:
    """The failure's output: exactly one non-empty line, an error, no traceback."""
    text = res.stderr if hasattr(res, "stderr") else res.output
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert "Traceback" not in text, text
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(w, case):
    _, cmd, args, needle = case
    res = CliRunner().invoke(cmd, args(w))
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    line = one_line(res)
    assert needle.lower() in line.lower(), line


def test_divergence_before_any_save_does_not_claim_a_saved_state(w):
    out = w["t"] / "diverged"
    args = ["fit", *FIT[:4], "--steps", "30", "--save-every", "1000", "--eval-every", "0", "--eval-samples", "50",
            "--lr", "1e30", "--device", "cpu", "--quiet", "--data-root", str(w["root"]), "--out", str(out)]
    res = CliRunner().invoke(jr_train, args)
    assert res.exit_code == 2, res.output
    line = one_line(res)
    assert "became" in line and "no training state was saved" in line and "is kept" not in line, line
    assert not (out / "train_state.pt").exists()


# ----------------------------------------------------- unexpected errors ----
def test_an_unexpected_exception_is_one_line_and_exit_2(w, monkeypatch):
    from robustbench_jr.cli import report_cmds

    def boom(*a, **k):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(report_cmds, "evaluate", boom)
    args = ["gate", str(w["run"]), "--rule", "rho_adv[fgsm] >= 0"]
    monkeypatch.delenv("JR_DEBUG", raising=False)
    res = CliRunner().invoke(jr_eval, args)
    assert res.exit_code == 2
    line = one_line(res)
    assert "RuntimeError: boom second line" in line and "JR_DEBUG=1" in line
    monkeypatch.setenv("JR_DEBUG", "1")
    res = CliRunner().invoke(jr_eval, args)
    assert res.exit_code == 2 and "Traceback" in res.stderr and "RuntimeError: boom" in res.stderr


def test_a_usage_error_is_one_line_and_exit_2():
    res = CliRunner().invoke(jr_eval, ["run", "--no-such-option"])
    assert res.exit_code == 2
    assert "--no-such-option" in one_line(res)
    res = CliRunner().invoke(jr_eval, ["gate"])
    assert res.exit_code == 2 and "RUN_DIR" in one_line(res)


# ------------------------------------------------------- read-only media ----
def _read_only(directory: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` with ``directory`` read-only: chmod for a normal user; for root (whom
    permission bits do not stop) a read-only bind mount in a private user and mount namespace."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "JR_DEBUG")}
    env["OMP_NUM_THREADS"] = "1"
    if os.geteuid() != 0:
        mode = directory.stat().st_mode
        for p in [directory, *directory.rglob("*")]:
            p.chmod(p.stat().st_mode & ~0o222)
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
        finally:
            for p in [directory, *directory.rglob("*")]:
                p.chmod(p.stat().st_mode | 0o200)
            directory.chmod(mode)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("running as root without user namespaces (unshare -rm): no way to make a read-only directory")
    script = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(directory), *argv],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def ro(w):
    """A read-only directory holding a copy of the finished audit."""
    d = w["t"] / "ro"
    d.mkdir()
    shutil.copytree(w["run"], d / "run")
    sqlite3.connect(d / "run" / "results.sqlite").close()  # the last connection merges a WAL and removes it
    assert not (d / "run" / "results.sqlite-wal").exists()  # as a finished `jr-eval run` leaves it
    return d


@pytest.mark.parametrize("what", ["run-out", "fit-out"])
def test_writing_into_a_read_only_directory_is_one_line_and_exit_2(w, ro, what):
    if what == "run-out":
        argv = [str(BIN / "jr-eval"), "run", *AUDIT, "--out", str(ro / "new")]
    else:
        argv = [str(BIN / "jr-train"), "fit", *FIT, "--data-root", str(w["root"]), "--out", str(ro / "new")]
    res = _read_only(ro, argv)
    assert res.returncode == 2, res.stderr
    line = one_line(res)
    assert "read-only" in line.lower() and "--out" in line, line


@pytest.mark.parametrize("what", ["report", "gate"])
def test_a_finished_run_on_read_only_media_can_be_read(w, ro, what):
    if what == "report":
        argv = [str(BIN / "jr-eval"), "report", str(ro / "run"), "--out", str(w["t"] / "ro-report"), "--quiet"]
    else:
        argv = [str(BIN / "jr-eval"), "gate", str(ro / "run"), "--rule", "rho_adv[fgsm] >= 0", "--quiet"]
    res = _read_only(ro, argv)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (ro / "run").iterdir()) == sorted(p.name for p in w["run"].iterdir())
