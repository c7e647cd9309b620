"""`jr-eval` end to end with the real searches (small N and small budgets)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from robustbench_jr.cli.eval import main
from robustbench_jr.models import bundled_names, make_model, save_checkpoint

SEARCHES = ["noise", "fgsm", "pgd", "cw", "deepfool", "jsma", "ddn"]
#: small budgets for the tests (CW and JSMA dominate the run time)
SMALL = {"searches": {"cw": {"binary_search_steps": 2, "max_iterations": 30, "abort_check_every": 10, "lr": 0.01},
                      "jsma": {"targets": 1, "gamma": 0.05},
                      "pgd": {"max_steps": 40}}}


@pytest.fixture(scope="module")
def ckpt():
    """The bundled lenet-mnist checkpoint (shipped inside the package)."""
    assert "lenet-mnist" in bundled_names()
    return "lenet-mnist"


@pytest.fixture(scope="module")
def small_cfg(tmp_path_factory):
    p = tmp_path_factory.mktemp("cfg") / "audit.yaml"
    p.write_text(yaml.safe_dump(SMALL))
    return str(p)


def invoke(args):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def err(r) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(r.stderr.split())


def rows(run_dir):
    con = sqlite3.connect(f"file:{Path(run_dir) / 'results.sqlite'}?mode=ro", uri=True)
    try:
        return con.execute("SELECT * FROM results ORDER BY model, search, sample_id").fetchall()
    finally:
        con.close()


def test_run_json_end_to_end(ckpt, small_cfg, tmp_path):
    out = tmp_path / "run"
    r = invoke(["run", ckpt, "--n", "8", "--batch-size", "4", "--source", "bundled", "--config", small_cfg,
                "--out", str(out), "--device", "cpu", "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)  # exactly one JSON document on stdout
    assert doc["run_dir"] == str(out)
    (m,) = doc["models"]
    assert set(m) >= {"name", "checkpoint", "clean_accuracy", "jacobian_norm", "searches"}
    assert 0.0 <= m["clean_accuracy"] <= 1.0 and m["jacobian_norm"] > 0
    assert list(m["searches"]) == SEARCHES
    assert doc["schema"] == "robustbench-jr/audit/v1" and doc["schema_version"] == 1  # the output schema
    assert doc["complete"] is True and doc["budget"]["name"] == "paper"
    for s, v in m["searches"].items():
        assert set(v) >= {"search", "n", "n_expected", "complete", "success_rate", "not_fooled", "median_l2",
                          "mean_l2", "rho_adv", "n_rho", "protocol", "config"}, s
        assert v["search"] == s and isinstance(v["config"], dict) and v["protocol"]
        assert v["n"] == v["n_expected"] == 8 and v["complete"] is True and 0.0 <= v["success_rate"] <= 1.0
        assert v["not_fooled"] == round(8 * (1 - v["success_rate"]))
        for k in ("median_l2", "mean_l2", "rho_adv"):
            assert v[k] is None or v[k] >= 0.0
    # DeepFool always succeeds on a LeNet; its ρ̂ is a small positive ratio
    assert m["searches"]["deepfool"]["success_rate"] == 1.0
    assert 0.0 < m["searches"]["deepfool"]["rho_adv"] < 1.0
    assert len(rows(out)) == len(SEARCHES) * 8
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["n"] == 8 and cfg["searches"]["pgd"]["saturation"] == pytest.approx(32 / 255)
    assert cfg["searches"]["cw"]["max_iterations"] == 30
    # the saved config reproduces the run: rerunning it on the same directory resumes (nothing new)
    r2 = invoke(["run", "--config", str(out / "config.yaml"), "--out", str(out), "--quiet"])
    assert r2.exit_code == 0, r2.output
    assert rows(out) == rows(out)


def test_table_output_and_quiet(ckpt, small_cfg, tmp_path):
    args = ["run", ckpt, "--n", "4", "--attacks", "noise,deepfool", "--source", "bundled", "--config", small_cfg,
            "--device", "cpu"]
    r = invoke(args + ["--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    # the result table goes to stdout (`jr-eval > out.txt` keeps it), progress to stderr (issue 18)
    out = " ".join(r.stdout.split())
    assert "ρ̂_adv" in out and "deepfool" in out and "clean acc" in out
    assert "clean acc" not in err(r)
    r = invoke(args + ["--out", str(tmp_path / "b"), "--quiet"])
    assert r.exit_code == 0 and r.stdout == "" and "ρ̂_adv" not in err(r)


def test_bad_inputs_exit_2(ckpt, tmp_path):
    out = str(tmp_path / "x")
    r = invoke(["run", ckpt, "--attacks", "noise,bim", "--out", out])
    assert r.exit_code == 2 and "unknown search 'bim'" in err(r) and "deepfool" in err(r)
    r = invoke(["run", ckpt, "--n", "1001", "--source", "bundled", "--out", out])
    assert r.exit_code == 2 and "larger than the dataset" in err(r)
    r = invoke(["run", str(tmp_path / "nope"), "--out", out])
    assert r.exit_code == 2 and "not found" in err(r)
    bad = tmp_path / "corrupt"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    (bad / "card.yaml").write_text("architecture: lenet\ndataset: mnist\n")
    r = invoke(["run", str(bad), "--out", out])
    assert r.exit_code == 2 and "corrupt" in err(r)
    p = save_checkpoint(tmp_path / "ddnet", make_model("ddnet", 10, "none"), {"architecture": "ddnet", "dataset": "mnist"})
    r = invoke(["run", str(p), "--out", out, "--source", "bundled"])
    assert r.exit_code == 2 and "shape" in err(r)
    nan = make_model("lenet", 10, "mnist")
    with torch.no_grad():
        nan.net.classifier[-1].weight.fill_(float("nan"))
    p = save_checkpoint(tmp_path / "nan", nan, {"architecture": "lenet", "dataset": "mnist"})
    r = invoke(["run", str(p), "--out", out, "--source", "bundled"])
    assert r.exit_code == 2 and "NaN" in err(r)
    r = invoke(["run", ckpt, "--config", str(tmp_path / "missing.yaml")])
    assert r.exit_code == 2 and "does not exist" in err(r)
    (tmp_path / "typo.yaml").write_text("attaks: [noise]\n")
    r = invoke(["run", ckpt, "--config", str(tmp_path / "typo.yaml")])
    assert r.exit_code == 2 and "unknown key 'attaks'" in err(r) and "attacks" in err(r)
    for line in r.stderr.strip().splitlines()[:1]:
        assert line.startswith("error:")


def test_different_config_refused(ckpt, small_cfg, tmp_path):
    out = str(tmp_path / "r")
    base = ["run", ckpt, "--attacks", "noise", "--source", "bundled", "--out", out, "--quiet", "--device", "cpu"]
    assert invoke(base + ["--n", "4"]).exit_code == 0
    before = rows(out)
    r = invoke(base + ["--n", "6"])
    assert r.exit_code == 2
    assert "different config" in err(r) and "n: 4 → 6" in err(r) and "--out" in err(r)
    assert rows(out) == before


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _count_batches(run_dir: Path) -> int:
    db = run_dir / "results.sqlite"
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_resume_after_kill_equals_uninterrupted(ckpt, small_cfg, tmp_path):
    """Kill the CLI (SIGKILL) after the first batches are committed, rerun, compare all rows."""
    args = [ckpt, "--attacks", "noise,cw", "--n", "12", "--batch-size", "2", "--source", "bundled",
            "--config", small_cfg, "--device", "cpu", "--quiet"]
    total = 2 * 6
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "robustbench_jr.cli.eval", "run", *args, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and proc.poll() is None and _count_batches(killed) < 2:
            time.sleep(0.02)
        assert proc.poll() is None, "the audit finished before it could be killed: " + proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    done = _count_batches(killed)
    assert 2 <= done < total
    resumed = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert _count_batches(killed) == total
    clean = tmp_path / "clean"
    r = invoke(["run", *args, "--out", str(clean)])
    assert r.exit_code == 0, r.output
    assert len(rows(clean)) == 2 * 12
    assert rows(killed) == rows(clean)


def test_batch_size_independence_real_searches(ckpt, small_cfg, tmp_path):
    base = ["run", ckpt, "--attacks", "noise,deepfool,fgsm", "--n", "10", "--source", "bundled",
            "--config", small_cfg, "--device", "cpu", "--quiet"]
    assert invoke(base + ["--batch-size", "3", "--out", str(tmp_path / "a")]).exit_code == 0
    assert invoke(base + ["--batch-size", "10", "--out", str(tmp_path / "b")]).exit_code == 0
    a, b = rows(tmp_path / "a"), rows(tmp_path / "b")
    assert len(a) == len(b) == 30
    # discrete outcomes are identical; float32 kernels may differ in the last digits
    # between batch shapes, so distances are compared to 1e-5 relative
    idx_float = [7, 8, 10]  # l2, linf, x_norm
    for ra, rb in zip(a, b):
        assert [v for i, v in enumerate(ra) if i not in idx_float] == [v for i, v in enumerate(rb) if i not in idx_float]
        for i in idx_float:
            assert ra[i] == pytest.approx(rb[i], rel=1e-5)


def test_no_arguments_is_the_bundled_quick_audit(monkeypatch):
    """`jr-eval` alone = `jr-eval run`: bundled checkpoints, bundled slice, N=100, all six, quick budget."""
    import robustbench_jr.cli.eval as ev

    seen = {}

    def fake_run_audit(checkpoints, config, out_dir, on_event=None):
        seen.update(checkpoints=checkpoints, config=config, out_dir=out_dir)
        return {"run_dir": "runs/x", "models": [], "warnings": []}

    monkeypatch.setattr(ev, "run_audit", fake_run_audit)
    threads = torch.get_num_threads()
    try:
        r = invoke([])
    finally:
        torch.set_num_threads(threads)
    assert r.exit_code == 0, r.output
    cfg = seen["config"]
    assert seen["checkpoints"] == [] and seen["out_dir"] is None
    assert cfg.attacks == SEARCHES and cfg.n == 100 and cfg.source == "bundled" and cfg.budget == "quick"
    r = invoke(["run", "some-ckpt", "--json"])
    assert seen["config"].budget == "paper" and seen["config"].source == "auto"
    doc = json.loads(r.stdout)
    assert doc["schema"] == "robustbench-jr/audit/v1" and doc["schema_version"] == 1
    assert {k: doc[k] for k in ("run_dir", "models", "warnings", "metrics_note")} == {
        "run_dir": "runs/x", "models": [], "warnings": [], "metrics_note": ev.SAMPLES_NOTE}


def test_bare_state_dict_needs_and_takes_arch(tmp_path):
    """A plain PyTorch state dict is audited given --arch (loaded with weights_only=True)."""
    import torch
    from click.testing import CliRunner

    from robustbench_jr.cli.eval import main
    from robustbench_jr.models import load_checkpoint

    model, _ = load_checkpoint("lenet-mnist")
    pt = tmp_path / "lenet.pt"
    torch.save(model.net.state_dict(), pt)
    args = ["run", str(pt), "--attacks", "fgsm", "--n", "4", "--source", "bundled", "--device", "cpu",
            "--quiet", "--json"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "a")])
    assert res.exit_code == 2 and "--arch" in res.output
    res = CliRunner().invoke(main, [*args, "--arch", "lenet", "--dataset", "mnist", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["models"][0]["clean_accuracy"] == 1.0 and doc["models"][0]["searches"]["fgsm"]["n"] == 4
