"""torchrun with 2 CPU processes (gloo): sharded audits and DDP training.

Each test starts real `torchrun` jobs of the console scripts, as a user would.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from helpers_data import fake_mnist_root
from robustbench_jr.evaluation import ResultStore
from robustbench_jr.evaluation.plan import ALL_SEARCHES

BIN = Path(sys.executable).parent
AUDIT = ["lenet-mnist", "--source", "bundled", "--budget", "quick", "--quiet"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _torchrun(script: str, args: list, nproc: int = 2) -> list:
    return [str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={nproc}", "--", str(BIN / script), *args]


def _run(cmd: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, **kw)


def _rows(run_dir: Path) -> dict:
    with ResultStore(run_dir, readonly=True) as st:
        return {(m["model"], s): st.results(m["model"], s) for m in st.models() for s in st.searches(m["model"])}


def _assert_same_rows(a: Path, b: Path) -> None:
    ra, rb = _rows(a), _rows(b)
    assert ra.keys() == rb.keys() and ra
    for key in ra:
        for col in ra[key]:
            np.testing.assert_array_equal(ra[key][col], rb[key][col], err_msg=f"{key} {col}")


def _shard_rows(run_dir: Path) -> int:
    n = 0
    for p in (run_dir / "shards").glob("rank-*.sqlite"):
        try:
            con = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            n += con.execute("SELECT COUNT(*) FROM results").fetchone()[0]
            con.close()
        except sqlite3.Error:
            pass
    return n


def _job_pids(mark: str, rank: str | None = None) -> list[int]:
    """Processes of the torchrun job started with ``JR_TEST_MARK=mark`` (optionally one rank)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"JR_TEST_MARK={mark}".encode() in env and (rank is None or f"RANK={rank}".encode() in env):
            pids.append(int(d.name))
    return pids


def _start(cmd: list) -> tuple[subprocess.Popen, str]:
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(cmd, env=_env(JR_TEST_MARK=mark), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, mark


def _kill_when(proc: subprocess.Popen, mark: str, ready, timeout: float = 300) -> None:
    """SIGKILL the whole job — torchrun and every worker (workers live in sessions of their
    own, so killing torchrun's process group alone would leave them running) — once ready()."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, "the job ended before it could be interrupted"
        assert time.time() - t0 < timeout
        time.sleep(0.05)
    for pid in _job_pids(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    t0 = time.time()
    while _job_pids(mark) and time.time() - t0 < 30:
        time.sleep(0.05)


def test_sharded_audit_equals_single_process_row_for_row(tmp_path):
    args = [*AUDIT, "--n", "6", "--batch-size", "2"]
    multi = _run(_torchrun("jr-eval", ["run", *args, "--out", str(tmp_path / "two"), "--json"]))
    assert multi.returncode == 0, multi.stderr[-3000:]
    doc = json.loads(multi.stdout)  # one JSON document, printed once (rank 0)
    single = _run([str(BIN / "jr-eval"), "run", *args, "--out", str(tmp_path / "one")])
    assert single.returncode == 0, single.stderr[-3000:]
    _assert_same_rows(tmp_path / "one", tmp_path / "two")
    assert set(ALL_SEARCHES) <= set(doc["models"][0]["searches"])  # every search of `all` (and `best`)
    with ResultStore(tmp_path / "one", readonly=True) as a, ResultStore(tmp_path / "two", readonly=True) as b:
        ma, mb = a.models()[0], b.models()[0]
        assert ma["clean_accuracy"] == mb["clean_accuracy"]
        assert mb["jacobian_norm"] == pytest.approx(ma["jacobian_norm"], rel=1e-9)
        assert a.noise_accuracy("lenet-mnist") == b.noise_accuracy("lenet-mnist")
        meta = b.meta()
        assert meta["status"] == "complete" and meta["device"]["world_size"] == 2
    assert not list((tmp_path / "two" / "shards").glob("*.sqlite"))  # merged into one store


QUEUE_SCRIPT = """
import json, sys, time
import torch
from robustbench_jr.runtime import dist_context

dist, _ = dist_context("cpu")
first, second = dist.queue(), dist.queue()
dist.barrier()
got = []
while (j := first()) < 60:
    got.append(j)
    time.sleep(0.1 if dist.rank == 1 else 0.0)  # rank 1's items are slow ones
dist.barrier()
again = [second() for _ in range(3)]
with open(f"{sys.argv[1]}/rank-{dist.rank}.json", "w") as f:
    json.dump({"got": got, "again": again}, f)
dist.barrier()
torch.distributed.destroy_process_group()
"""


def test_work_queue_hands_every_item_to_exactly_one_rank_and_the_free_rank_takes_more(tmp_path):
    script = tmp_path / "claim_items.py"  # not queue.py: the stdlib module of that name
    script.write_text(QUEUE_SCRIPT)
    res = _run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", str(script), str(tmp_path)])
    assert res.returncode == 0, res.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert sorted(r0["got"] + r1["got"]) == list(range(60))  # each item once, none lost
    assert r0["got"] == sorted(r0["got"]) and r1["got"] == sorted(r1["got"])
    assert len(r0["got"]) >= 3 * len(r1["got"])  # the rank whose items are quick takes most of them
    assert sorted(r0["again"] + r1["again"]) == list(range(6))  # a second queue counts from 0 on its own


def test_audit_killed_under_two_ranks_resumes_under_one(tmp_path):
    args = [*AUDIT, "--attacks", "noise,cw", "--n", "12", "--batch-size", "1"]
    out = tmp_path / "r"
    proc, mark = _start(_torchrun("jr-eval", ["run", *args, "--out", str(out)]))
    _kill_when(proc, mark, lambda: _shard_rows(out) >= 3)
    with ResultStore(out, readonly=True) as st:
        assert st.meta().get("status") != "complete"
    kept = _shard_rows(out)
    assert kept >= 3
    resumed = _run([str(BIN / "jr-eval"), "run", *args, "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref = _run([str(BIN / "jr-eval"), "run", *args, "--out", str(tmp_path / "ref")])
    assert ref.returncode == 0, ref.stderr[-3000:]
    _assert_same_rows(out, tmp_path / "ref")
    assert not list((out / "shards").glob("*.sqlite"))


def test_a_failing_rank_ends_the_job_naming_it_and_keeps_committed_rows(tmp_path):
    args = [*AUDIT, "--attacks", "noise,cw", "--n", "12", "--batch-size", "1"]
    out = tmp_path / "r"
    mark = uuid.uuid4().hex
    proc = subprocess.Popen(_torchrun("jr-eval", ["run", *args, "--out", str(out)]), env=_env(JR_TEST_MARK=mark),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    t0 = time.time()
    while _shard_rows(out) < 2:
        assert proc.poll() is None and time.time() - t0 < 300
        time.sleep(0.05)
    pids = [p for p in _job_pids(mark, rank="1") if b"LOCAL_RANK=1" in Path(f"/proc/{p}/environ").read_bytes()]
    assert pids
    os.kill(pids[0], signal.SIGKILL)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "rank: 1" in output or "rank 1" in output, output[-3000:]
    assert _shard_rows(out) >= 2  # committed rows are kept
    resumed = _run([str(BIN / "jr-eval"), "run", *args, "--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(fake_mnist_root(tmp_path_factory.mktemp("data")))


TRAIN = ["--model", "lenet", "--dataset", "mnist", "--batch-size", "50", "--eval-samples", "50", "--eval-every", "10",
         "--log-every", "5", "--save-every", "10", "--device", "cpu", "--quiet", "--lr", "0.05"]


def test_ddp_training_equals_one_process_with_the_same_global_batch(tmp_path, data_root):
    args = [*TRAIN, "--data-root", data_root, "--steps", "20", "--dropout", "0"]
    two = _run(_torchrun("jr-train", ["fit", *args, "--out", str(tmp_path / "two")]))
    assert two.returncode == 0, two.stderr[-3000:]
    one = _run([str(BIN / "jr-train"), "fit", *args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = load_file(str(tmp_path / "one" / "model.safetensors")), load_file(str(tmp_path / "two" / "model.safetensors"))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-4, atol=1e-5, err_msg=k)
    ca, cb = (yaml.safe_load((tmp_path / d / "card.yaml").read_text()) for d in ("one", "two"))
    assert cb["training"]["world_size"] == 2 and cb["training"]["devices"] == ["cpu", "cpu"]
    assert cb["metrics"]["test_accuracy"] == ca["metrics"]["test_accuracy"]
    la = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == [r["step"] for r in lb] == [5, 10, 15, 20]
    for ra, rb in zip(la, lb):
        assert rb["loss"] == pytest.approx(ra["loss"], rel=1e-5) and rb["train_acc"] == pytest.approx(ra["train_acc"])


def test_ddp_jr_run_completes_resumes_across_world_sizes_and_reports_once(tmp_path, data_root):
    out = tmp_path / "jr"
    args = [*TRAIN, "--data-root", data_root, "--steps", "40", "--regularizer", "jr", "--lam", "0.01",
            "--out", str(out)]
    proc, mark = _start(_torchrun("jr-train", ["fit", *args]))
    _kill_when(proc, mark, lambda: (out / "train_state.pt").exists())
    assert not (out / "card.yaml").exists()
    res = _run(_torchrun("jr-train", ["fit", *args, "--resume"], nproc=2))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (res.stdout + res.stderr).count("done:") == 1  # the final line, from rank 0 only
    card = yaml.safe_load((out / "card.yaml").read_text())
    assert card["training"]["world_size"] == 2 and card["metrics"]["jacobian_norm"] > 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20, 25, 30, 35, 40]  # each logged step once, also after the resume
    # a finished two-rank run's state resumes in one process: nothing left to do, same card
    again = _run([str(BIN / "jr-train"), "fit", *args, "--resume"])
    assert again.returncode == 0, again.stderr[-3000:]
