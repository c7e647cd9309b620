"""The audit library: batch-size independence, resume, refusal, shards, sanity checks.

These tests use a small deterministic fake search (same contract as
``robustbench_jr.attacks``) so that they exercise the audit's own mechanics fast;
the real searches are exercised end to end in tests/test_cli_eval*.py.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_jr.config import build_config
from robustbench_jr.errors import CheckpointError, ConfigError, InputError
from robustbench_jr.evaluation import AuditConfig, ResultStore, run_audit
from robustbench_jr.evaluation.execute import sanity_checks
from robustbench_jr.models import make_model, save_checkpoint


@dataclass
class FakeConfig:
    scale: float = 1.0
    steps: int = 40
    saturation: Optional[float] = None


class FakeSearch:
    """Per-sample seeded Gaussian direction, magnitude grown on a fixed grid until fooled."""

    def __init__(self, name, overrides=None):
        self.name = name
        self.config = build_config(FakeConfig, overrides or {})
        self.calls = 0

    def run(self, model, x, y, seed=0, sample_ids=None):
        self.calls += 1
        base = seed
        dirs = []
        for sid in sample_ids.tolist():
            h = hashlib.sha256(f"{base}|{self.name}|{sid}".encode()).digest()
            g = torch.Generator().manual_seed(int.from_bytes(h[:7], "big"))
            d = torch.randn(x.shape[1:], generator=g)
            dirs.append(d / d.norm())
        dirs = torch.stack(dirs).to(x)
        b = x.shape[0]
        with torch.no_grad():
            clean = model(x).argmax(1)
        l2 = torch.full((b,), math.inf, dtype=torch.float64)
        adv = torch.full_like(x, math.nan)
        adv_pred = torch.full((b,), -1, dtype=torch.int64)
        n_fwd = torch.ones(b, dtype=torch.int64)
        wrong = clean != y
        l2[wrong], adv[wrong], adv_pred[wrong] = 0.0, x[wrong], clean[wrong]
        active = ~wrong
        for k in range(self.config.steps):
            idx = active.nonzero().squeeze(1)
            if not idx.numel():
                break
            cand = (x[idx] + self.config.scale * 0.05 * 1.3 ** k * dirs[idx]).clamp(0, 1)
            with torch.no_grad():
                p = model(cand).argmax(1)
            n_fwd[idx] += 1
            hit = p != y[idx]
            h = idx[hit]
            adv[h] = cand[hit]
            adv_pred[h] = p[hit]
            l2[h] = (cand[hit].double() - x[h].double()).flatten(1).norm(dim=1)
            active[h] = False
        fooled = torch.isfinite(l2)
        delta = torch.nan_to_num(adv.double() - x.double()).flatten(1)
        linf = torch.where(fooled, delta.abs().amax(1), torch.tensor(math.inf, dtype=torch.float64))
        l0 = torch.where(fooled, (delta != 0).sum(1).double(), torch.tensor(math.inf, dtype=torch.float64))
        return SimpleNamespace(l2=l2, linf=linf, l0=l0, adversarial=adv, fooled=fooled, adv_pred=adv_pred,
                               n_forward=n_fwd, n_grad=torch.zeros(b, dtype=torch.int64))


def fake_factory(name, overrides):
    return FakeSearch(name, overrides)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A LeNet trained for a few steps on the bundled slice (a mechanics test model)."""
    from robustbench_jr.data import bundled_mnist

    torch.manual_seed(0)
    model = make_model("lenet", 10, "mnist")
    ds = bundled_mnist()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        idx = torch.randint(0, len(ds), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(ds.pixels(idx)), ds.labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return str(save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-lenet", model,
                               {"architecture": "lenet", "dataset": "mnist"}))


def cfg(**kw):
    base = dict(attacks=["noise", "cw"], n=24, batch_size=8, source="bundled", device="cpu",
                noise_sigmas=[0.0, 0.3])
    base.update(kw)
    return build_config(AuditConfig, base)


def all_rows(run_dir):
    with ResultStore(run_dir, readonly=True) as st:
        return st.conn.execute("SELECT * FROM results ORDER BY model, search, sample_id").fetchall()


def test_audit_writes_store_and_summary(ckpt, tmp_path):
    out = tmp_path / "run"
    s = run_audit([ckpt], cfg(), out, search_factory=fake_factory)
    assert s["run_dir"] == str(out)
    (m,) = s["models"]
    assert m["name"] == "tiny-lenet"
    assert 0.0 <= m["clean_accuracy"] <= 1.0 and m["jacobian_norm"] > 0
    assert [r["sigma"] for r in m["noise_accuracy"]] == [0.0, 0.3]
    assert m["noise_accuracy"][0]["accuracy"] == pytest.approx(m["clean_accuracy"])
    assert set(m["searches"]) == {"noise", "cw"}
    assert m["searches"]["noise"]["n"] == 24
    rows = all_rows(out)
    assert len(rows) == 2 * 24
    assert (out / "config.yaml").is_file()
    with ResultStore(out, readonly=True) as st:
        meta = st.meta()
        assert meta["status"] == "complete" and meta["seed"] == 0
        assert meta["versions"]["torch"] == torch.__version__
        assert meta["device"]["resolved"] == "cpu"
        assert meta["config"]["n"] == 24 and meta["config"]["checkpoints"] == [str(Path(ckpt).resolve())]
        assert "bundled" in meta["data"]["mnist"]["provenance"]
        assert st.conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 2 * 3
        r = st.results("tiny-lenet", "noise")
        assert list(r["sample_id"]) == list(range(24))
        np.testing.assert_allclose(r["x_norm"], bundled_norms(24))


def bundled_norms(n):
    from robustbench_jr.data import bundled_mnist

    return bundled_mnist().pixels(slice(0, n)).flatten(1).double().norm(dim=1).numpy()


def test_batch_size_independence(ckpt, tmp_path):
    run_audit([ckpt], cfg(batch_size=5), tmp_path / "a", search_factory=fake_factory)
    run_audit([ckpt], cfg(batch_size=24), tmp_path / "b", search_factory=fake_factory)
    assert all_rows(tmp_path / "a") == all_rows(tmp_path / "b")


def test_resume_after_crash_equals_uninterrupted(ckpt, tmp_path):
    calls = {"n": 0}

    class Boom(RuntimeError):
        pass

    def crashing(name, overrides):
        s = FakeSearch(name, overrides)
        run = s.run

        def run_then_crash(*a, **k):
            calls["n"] += 1
            if calls["n"] == 4:
                raise Boom("killed")
            return run(*a, **k)
        s.run = run_then_crash
        return s

    with pytest.raises(Boom):
        run_audit([ckpt], cfg(), tmp_path / "r", search_factory=crashing)
    with ResultStore(tmp_path / "r", readonly=True) as st:
        assert st.conn.execute("SELECT COUNT(*) FROM batches").fetchone()[0] == 3
        assert st.meta()["status"] == "running"
    counting = []

    def counted(name, overrides):
        s = FakeSearch(name, overrides)
        counting.append(s)
        return s

    run_audit([ckpt], cfg(), tmp_path / "r", search_factory=counted)
    assert sum(s.calls for s in counting) == 3  # only the 3 unfinished batches ran
    run_audit([ckpt], cfg(), tmp_path / "clean", search_factory=fake_factory)
    assert all_rows(tmp_path / "r") == all_rows(tmp_path / "clean")


def test_rerunning_a_complete_audit_keeps_its_provenance(ckpt, tmp_path, monkeypatch):
    """A rerun that finds every batch done computes nothing, so the command, versions,
    device and finish time stay those of the invocation that produced the numbers."""
    keys = ("command", "versions", "device", "started", "finished", "status")
    monkeypatch.setattr("sys.argv", ["jr-eval", "run", "first"])
    run_audit([ckpt], cfg(), tmp_path / "r", search_factory=fake_factory)
    with ResultStore(tmp_path / "r", readonly=True) as st:
        first = {k: st.meta()[k] for k in keys}
    rows = all_rows(tmp_path / "r")
    calls = []

    def counted(name, overrides):
        calls.append(FakeSearch(name, overrides))
        return calls[-1]

    monkeypatch.setattr("sys.argv", ["jr-eval", "run", "second"])
    run_audit([ckpt], cfg(), tmp_path / "r", search_factory=counted)
    assert sum(s.calls for s in calls) == 0
    with ResultStore(tmp_path / "r", readonly=True) as st:
        assert {k: st.meta()[k] for k in keys} == first
    assert first["command"][-1] == "first" and first["status"] == "complete"
    assert all_rows(tmp_path / "r") == rows


def test_different_config_is_refused(ckpt, tmp_path):
    run_audit([ckpt], cfg(), tmp_path / "r", search_factory=fake_factory)
    before = all_rows(tmp_path / "r")
    with pytest.raises(ConfigError, match="different config.*\n.*n: 24 → 16"):
        run_audit([ckpt], cfg(n=16), tmp_path / "r", search_factory=fake_factory)
    with pytest.raises(ConfigError, match="searches"):
        run_audit([ckpt], cfg(searches={"cw": {"steps": 5}}), tmp_path / "r",
                  search_factory=fake_factory)
    assert all_rows(tmp_path / "r") == before
    # the device is placement only: a rerun with another device spelling resumes
    run_audit([ckpt], cfg(device="auto"), tmp_path / "r", search_factory=fake_factory)


def test_save_adversarials(ckpt, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "r"
    run_audit([ckpt], cfg(save_adversarials=True, attacks=["noise"]), out,
              search_factory=fake_factory)
    shards = sorted((out / "adversarials" / "tiny-lenet" / "noise").glob("batch-*.safetensors"))
    assert [p.name for p in shards] == ["batch-0000.safetensors", "batch-0001.safetensors", "batch-0002.safetensors"]
    t = load_file(str(shards[1]))
    assert t["sample_ids"].tolist() == list(range(8, 16))
    assert t["adversarial"].shape == (8, 1, 28, 28)
    with ResultStore(out, readonly=True) as st:
        r = st.results("tiny-lenet", "noise")
    for j, sid in enumerate(range(8, 16)):
        assert bool(torch.isnan(t["adversarial"][j]).all()) == (not r["fooled"][sid])


def test_random_subset_and_duplicate_names(ckpt, tmp_path):
    s = run_audit([ckpt, ckpt], cfg(subset="random", n=10, attacks=["noise"]), tmp_path / "r",
                  search_factory=fake_factory)
    assert [m["name"] for m in s["models"]] == ["tiny-lenet", "tiny-lenet-2"]
    with ResultStore(tmp_path / "r", readonly=True) as st:
        ids = st.results("tiny-lenet", "noise")["sample_id"]
    assert len(ids) == 10 and len(set(ids)) == 10 and ids.max() < 1000 and list(ids) != list(range(10))
    assert s["models"][0]["searches"] == s["models"][1]["searches"]


def test_pgd_saturation_from_dataset(ckpt, tmp_path):
    seen = {}

    def factory(name, overrides):
        seen[name] = dict(overrides or {})
        return FakeSearch(name, overrides)

    run_audit([ckpt], cfg(attacks=["pgd"], n=4), tmp_path / "a", search_factory=factory)
    assert seen["pgd"]["saturation"] == pytest.approx(32 / 255)
    run_audit([ckpt], cfg(attacks=["pgd"], n=4, searches={"pgd": {"saturation": 0.1}}), tmp_path / "b",
              search_factory=factory)
    assert seen["pgd"]["saturation"] == pytest.approx(0.1)


def test_order_violation_warning(ckpt, tmp_path):
    def factory(name, overrides):
        over = dict(overrides or {})
        over["scale"] = 1.0 if name == "noise" else 3.0  # "cw" lands 3x farther out
        return FakeSearch(name, over)

    s = run_audit([ckpt], cfg(), tmp_path / "r", search_factory=factory)
    checks = [w["check"] for w in s["warnings"]]
    assert "search-order" in checks
    with ResultStore(tmp_path / "r", readonly=True) as st:
        assert any(w["check"] == "search-order" for w in st.meta()["warnings"])


def test_bad_inputs(ckpt, tmp_path):
    with pytest.raises(InputError, match="larger than the dataset"):
        run_audit([ckpt], cfg(n=1001), tmp_path / "a", search_factory=fake_factory)
    with pytest.raises(ConfigError, match="unknown search 'bim'.*valid searches: all, noise, fgsm"):
        run_audit([ckpt], cfg(attacks=["noise", "bim"]), tmp_path / "a", search_factory=fake_factory)
    with pytest.raises(CheckpointError):
        run_audit([str(tmp_path / "missing")], cfg(), tmp_path / "a", search_factory=fake_factory)
    cifar = make_model("ddnet", 10, "none")
    p = save_checkpoint(tmp_path / "ddnet", cifar, {"architecture": "ddnet", "dataset": "mnist"})
    with pytest.raises(InputError, match="takes inputs of shape \\[3, 32, 32\\] but the mnist images"):
        run_audit([str(p)], cfg(), tmp_path / "a", search_factory=fake_factory)
    nan = make_model("lenet", 10, "mnist")
    with torch.no_grad():
        nan.net.classifier[-1].bias.fill_(float("nan"))
    p = save_checkpoint(tmp_path / "nan", nan, {"architecture": "lenet", "dataset": "mnist"})
    with pytest.raises(CheckpointError, match="NaN"):  # refused when the weights load
        run_audit([str(p)], cfg(), tmp_path / "a", search_factory=fake_factory)
    assert not (tmp_path / "a" / "results.sqlite").exists()  # nothing written on bad input


class _Softmax(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x).softmax(1)


class _Step(nn.Module):
    """Piecewise-constant in x: zero input gradient everywhere."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(784, 10)

    def forward(self, x):
        return self.lin(torch.round(x).flatten(1))


def test_sanity_checks():
    from robustbench_jr.data import bundled_mnist

    ds = bundled_mnist()
    x, y = ds.pixels(slice(0, 20)), ds.labels[:20]
    torch.manual_seed(0)
    lenet = make_model("lenet", 10, "mnist").eval()
    assert sanity_checks(lenet, x, y) == []
    assert {c for c, _ in sanity_checks(_Softmax(lenet).eval(), x, y)} == {"probabilities"}
    assert {c for c, _ in sanity_checks(_Step().eval(), x, y)} == {"zero-gradients"}
    lenet.train()
    assert {c for c, _ in sanity_checks(lenet, x, y)} == {"training-mode", "randomised"}
    lenet.eval()


def test_auto_source_falls_back_to_bundled_slice(ckpt, tmp_path, monkeypatch):
    from robustbench_jr.errors import DataNotFoundError

    monkeypatch.chdir(tmp_path)  # no ./data here
    monkeypatch.delenv("JR_DATA_ROOT", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    empty = tmp_path / "empty"
    empty.mkdir()
    run_audit([ckpt], cfg(source="auto", data_root=str(empty), n=4, attacks=["noise"]), tmp_path / "r",
              search_factory=fake_factory)
    with ResultStore(tmp_path / "r", readonly=True) as st:
        assert "not found locally; using the bundled slice" in st.meta()["data"]["mnist"]["provenance"]
    with pytest.raises(DataNotFoundError):
        run_audit([ckpt], cfg(source="auto", data_root=str(empty), n=1001, attacks=["noise"]), tmp_path / "r2",
                  search_factory=fake_factory)
