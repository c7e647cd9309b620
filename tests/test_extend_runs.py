"""Extending finished work (issue 18): a finished training run resumed with more steps, and an
audit's --out given more searches or models, where the finished work stays valid.

- `jr-train fit --resume --steps N` on a finished run ends with the weights and metrics log of
  an uninterrupted N-step run (the step-decay schedule does not depend on the total); fewer
  steps than are done, or a change to anything but the length and the cadences, is refused.
- `jr-eval run --out DIR` on a DIR holding a run keeps its rows and runs only the new
  (model, search) work when everything they share is unchanged; the stored identity becomes
  the union, which the reports, the gate and config.yaml read. A changed search config, N or
  seed is refused with the differences.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from robustbench_jr.attacks import build_search
from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.cli.train import main as jr_train
from robustbench_jr.config import build_config
from robustbench_jr.errors import ConfigError
from robustbench_jr.evaluation import AuditConfig, ResultStore, run_audit
from robustbench_jr.reports.runs import load_run
from robustbench_jr.training import TrainConfig, train
from helpers_data import fake_mnist_root


# ---------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(fake_mnist_root(tmp_path_factory.mktemp("data"), n_train=960))  # 40 held-out images


def _cfg(data_root, **over):
    # the lr decays at steps 8 and 16 (across the extension), logs every 8 steps (so that the
    # 12-step run closes off the cadence), evaluates every 8 and saves every 10
    base = dict(model="lenet", dataset="mnist", data_root=data_root, batch_size=50, lr=0.05, lr_step=8,
                lr_decay=0.5, log_every=8, eval_every=8, eval_samples=20, save_every=10, device="cpu")
    return build_config(TrainConfig, {**base, **over})


def _log(d: Path) -> list[dict]:
    recs = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    for r in recs:
        r.pop("time")
    return recs


def test_finished_run_extended_with_more_steps_equals_the_uninterrupted_run(tmp_path, data_root):
    ref, ext = tmp_path / "ref", tmp_path / "ext"
    train(_cfg(data_root, steps=20), ref)
    train(_cfg(data_root, steps=12), ext)
    assert [r["step"] for r in _log(ext)] == [8, 12]  # closed off the cadence
    card = train(_cfg(data_root, steps=20), ext, resume=True)
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(ext / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _log(ext) == _log(ref) and [r["step"] for r in _log(ext)] == [8, 16, 20]
    assert card["training"]["steps"] == card["training"]["steps_done"] == 20
    assert yaml.safe_load((ext / "config.yaml").read_text())["steps"] == 20
    assert torch.load(ext / "train_state.pt", weights_only=True)["config"]["steps"] == 20
    # the cadences may change with it (they leave the steps done as they were); the closing
    # line at 20 is on the new 5-step cadence, so it stays and the next line covers 21…25
    card = train(_cfg(data_root, steps=25, log_every=5, save_every=5, eval_every=0), ext, resume=True)
    assert card["training"]["steps_done"] == 25 and [r["step"] for r in _log(ext)] == [8, 16, 20, 25]


def test_fewer_steps_than_done_and_other_changes_are_refused(tmp_path, data_root):
    out = tmp_path / "r"
    common = [*sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in dict(
        model="lenet", dataset="mnist", data_root=data_root, batch_size=50, lr_step=20, log_every=10,
        eval_every=0, eval_samples=50, save_every=10, device="cpu").items()), []), "--quiet", "--out", str(out)]
    res = CliRunner().invoke(jr_train, ["fit", *common, "--steps", "20"])
    assert res.exit_code == 0, res.output
    weights = (out / "model.safetensors").read_bytes()
    res = CliRunner().invoke(jr_train, ["fit", *common, "--steps", "10", "--resume"])
    assert res.exit_code == 2 and "already trained 20 steps" in res.output and "--steps 10" in res.output
    # the refused resume changed nothing
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 20
    assert (out / "model.safetensors").read_bytes() == weights
    # the schedule and the optimisation are the work done: refused, naming the field
    res = CliRunner().invoke(jr_train, ["fit", *[a if a != "20" else "25" for a in common], "--steps", "30",
                                        "--resume"])
    assert res.exit_code == 2 and "different config" in res.output and "lr_step" in res.output
    res = CliRunner().invoke(jr_train, ["fit", *common, "--eval-samples", "60", "--steps", "30", "--resume"])
    assert res.exit_code == 2 and "(differs in: eval_samples);" in res.output  # steps may change, it is not named


# ---------------------------------------------------------------------------
# audits
# ---------------------------------------------------------------------------

class _Counted:
    """A real search whose batches are counted."""

    def __init__(self, name, overrides, calls):
        self.inner, self.name, self.calls = build_search(name, overrides), name, calls

    def config_dict(self):
        return self.inner.config_dict()

    def run(self, *args, **kwargs):
        self.calls.append(self.name)
        return self.inner.run(*args, **kwargs)


def _audit(ckpts, out, calls=None, **over):
    cfg = build_config(AuditConfig, {"n": 8, "batch_size": 4, "source": "bundled", "device": "cpu",
                                     "attacks": ["fgsm"], "noise_sigmas": [0.0, 0.5], "jacobian": "off", **over})
    calls = [] if calls is None else calls
    return run_audit(ckpts, cfg, out, search_factory=lambda n, o: _Counted(n, o, calls)), calls


def _rows(out: Path, search=None) -> list:
    con = sqlite3.connect(out / "results.sqlite")
    try:
        q = "SELECT model, search, sample_id, fooled, l2, linf, l0, n_forward, n_grad FROM results"
        args = ()
        if search is not None:
            q, args = q + " WHERE search=?", (search,)
        return sorted(con.execute(q, args).fetchall())
    finally:
        con.close()


def _meta(out: Path) -> dict:
    with ResultStore(out, readonly=True) as st:
        return st.meta()


def test_adding_a_search_keeps_the_rows_and_runs_only_the_new_one(tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr("sys.argv", ["jr-eval", "first"])
    _, calls = _audit(["lenet-mnist"], out)
    assert calls == ["fgsm", "fgsm"]
    fgsm = _rows(out, "fgsm")
    monkeypatch.setattr("sys.argv", ["jr-eval", "second"])
    summary, calls = _audit(["lenet-mnist"], out, attacks=["fgsm", "deepfool"])
    assert calls == ["deepfool", "deepfool"]  # the fgsm rows were not recomputed
    assert _rows(out, "fgsm") == fgsm and len(_rows(out, "deepfool")) == 8
    assert list(summary["models"][0]["searches"]) == ["fgsm", "deepfool"]
    meta = _meta(out)
    assert meta["identity"]["audit"]["attacks"] == ["fgsm", "deepfool"]
    assert list(meta["identity"]["models"][0]["searches"]) == ["fgsm", "deepfool"]
    assert meta["status"] == "complete" and meta["command"][-1] == "second"
    assert yaml.safe_load((out / "config.yaml").read_text())["attacks"] == ["fgsm", "deepfool"]
    # the extended run is the run one command would have made: same identity, same rows
    _audit(["lenet-mnist"], tmp_path / "fresh", attacks=["fgsm", "deepfool"])
    assert meta["config_hash"] == _meta(tmp_path / "fresh")["config_hash"]
    assert _rows(out) == _rows(tmp_path / "fresh")
    # the reports and the gate read the union: both searches, finished
    run = load_run(out)
    assert run.incomplete == [] and set(run.models[0].settings) == {"fgsm", "deepfool"}
    res = CliRunner().invoke(jr_eval, ["gate", str(out), "--rule", "rho_adv[deepfool] >= 0",
                                       "--rule", "rho_adv[fgsm] >= 0"])
    assert res.exit_code == 0, res.output
    # rerunning the first command finds nothing to do and leaves the union as it is
    monkeypatch.setattr("sys.argv", ["jr-eval", "third"])
    _, calls = _audit(["lenet-mnist"], out)
    assert calls == [] and _meta(out)["identity"] == meta["identity"] and _meta(out)["command"][-1] == "second"


def test_adding_a_model(tmp_path, monkeypatch):
    out = tmp_path / "r"
    _audit(["lenet-mnist"], out)
    before = _rows(out)
    summary, calls = _audit(["lenet-mnist-jr"], out)
    assert calls == ["fgsm", "fgsm"]
    rows = _rows(out)
    assert [r for r in rows if r[0] == "lenet-mnist"] == before
    assert len([r for r in rows if r[0] == "lenet-mnist-jr"]) == 8
    assert [m["name"] for m in summary["models"]] == ["lenet-mnist", "lenet-mnist-jr"]
    meta = _meta(out)
    assert [m["name"] for m in meta["identity"]["models"]] == ["lenet-mnist", "lenet-mnist-jr"]
    with ResultStore(out, readonly=True) as st:
        assert st.completeness()["complete"]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["checkpoints"] == ["lenet-mnist", "lenet-mnist-jr"]
    # the union's config.yaml reproduces the union: rerun from it, nothing is computed
    monkeypatch.setattr("sys.argv", ["jr-eval", "from-config"])
    res = CliRunner().invoke(jr_eval, ["run", "--config", str(out / "config.yaml"), "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    assert _meta(out)["config_hash"] == meta["config_hash"] and _meta(out)["command"] == meta["command"]
    assert _rows(out) == rows


def test_changed_search_config_or_data_is_refused(tmp_path):
    out = tmp_path / "r"
    _audit(["lenet-mnist"], out)
    before, meta = _rows(out), _meta(out)
    with pytest.raises(ConfigError, match=r"(?s)different config.*searches\.fgsm\.grid_size: 40 → 20"):
        _audit(["lenet-mnist"], out, attacks=["fgsm", "deepfool"], searches={"fgsm": {"grid_size": 20}})
    with pytest.raises(ConfigError, match=r"(?s)different config.*n: 8 → 6"):
        _audit(["lenet-mnist", "lenet-mnist-jr"], out, n=6)
    with pytest.raises(ConfigError, match=r"(?s)seed: 0 → 1"):
        _audit(["lenet-mnist"], out, attacks=["deepfool"], seed=1)
    assert _rows(out) == before and _meta(out) == meta
    # the CLI says it the same way, exit status 2
    res = CliRunner().invoke(jr_eval, ["run", "lenet-mnist", "--source", "bundled", "--n", "8", "--batch-size", "4",
                                       "--attacks", "fgsm,deepfool", "--subset", "random", "--out", str(out),
                                       "--quiet", "--device", "cpu"])
    assert res.exit_code == 2 and "subset: 'first' → 'random'" in res.stderr
