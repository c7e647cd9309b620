"""Run directories with one writer, and resumed training logs equal to uninterrupted ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers_data import fake_mnist_root
from robustbench_jr.errors import InputError
from robustbench_jr.evaluation.store import RunLock

BIN = Path(sys.executable).parent


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_run_lock_admits_one_writer(tmp_path):
    first = RunLock(tmp_path / "run")
    with pytest.raises(InputError, match="in use by another run"):
        RunLock(tmp_path / "run")
    first.release()
    RunLock(tmp_path / "run").release()


def test_a_second_audit_into_a_busy_run_directory_exits_2_and_changes_nothing(tmp_path):
    out = tmp_path / "r"
    base = ["lenet-mnist", "--source", "bundled", "--attacks", "cw", "--n", "8", "--batch-size", "1", "--quiet",
            "--out", str(out)]
    first = subprocess.Popen([str(BIN / "jr-eval"), "run", *base, "--seed", "0"], env=_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        t0 = time.time()
        while not (out / "results.sqlite").exists():
            assert first.poll() is None and time.time() - t0 < 120
            time.sleep(0.05)
        second = subprocess.run([str(BIN / "jr-eval"), "run", *base, "--seed", "1"], env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first audit finished before the second started: make it longer"
        assert second.returncode == 2
        assert "in use by another run" in second.stderr and "Traceback" not in second.stderr
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()


def test_resumed_metrics_log_equals_the_uninterrupted_one(tmp_path):
    root = fake_mnist_root(tmp_path / "data")
    args = ["fit", "--model", "lenet", "--dataset", "mnist", "--data-root", str(root), "--batch-size", "50",
            "--steps", "120", "--log-every", "10", "--save-every", "25", "--eval-every", "0", "--eval-samples", "50",
            "--device", "cpu", "--quiet"]
    ref = subprocess.run([str(BIN / "jr-train"), *args, "--out", str(tmp_path / "ref")], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp_path / "cut"
    proc = subprocess.Popen([str(BIN / "jr-train"), *args, "--out", str(out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    t0 = time.time()
    # kill after a save and after more steps were logged past it (25 does not divide into 10s)
    while not ((out / "train_state.pt").exists() and (out / "metrics.jsonl").exists()
               and len((out / "metrics.jsonl").read_text().splitlines()) >= 3):
        assert proc.poll() is None, "training ended before it could be interrupted"
        assert time.time() - t0 < 300
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] < 120
    res = subprocess.run([str(BIN / "jr-train"), *args, "--out", str(out), "--resume"], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]

    def lines(d):
        recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        for r in recs:
            r.pop("time")
        return recs

    assert lines(out) == lines(tmp_path / "ref")
