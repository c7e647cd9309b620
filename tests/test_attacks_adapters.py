"""Peer-library attacks behind the audit (robustbench_jr.attacks.adapters): foolbox 3,
adv-lib and torchattacks as searches named ``lib:Attack``.

The libraries are installed by the test extra (``scripts/setup-env.sh``); nothing here is
skipped when one is missing. Each adapter runs on a tiny model: its adversarials are
re-verified, its pass counts equal what the model saw, and a returned clean (or all-zero)
image is recorded as not fooled.
"""

from __future__ import annotations

import math
import sys
import warnings

import pytest
import torch

from robustbench_jr.attacks import build_search, is_peer_name, peer_name
from robustbench_jr.attacks.adapters import PassCounter
from robustbench_jr.errors import ConfigError
from robustbench_jr.evaluation.audit import AuditConfig
from toy_models import Counting, TinyMLP






def data(n=6, seed=0):
    model = TinyMLP(seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    x = torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


#: one attack per library, with small budgets; all of them evaluate the whole batch at every
#: step, so the pass counts split evenly and exactly over the samples
PEERS = {
    "advlib:ddn": {"steps": 30},
    "foolbox:L2DeepFoolAttack": {"steps": 20},
    "torchattacks:FAB": {"steps": 10},
}


def run(name, model, x, y, config=None, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return build_search(name, config).run(model, x, y, **kw)


@pytest.mark.parametrize("name", list(PEERS))
def test_adapter_results_are_verified(name):
    model, x, y = data()
    r = run(name, model, x, y, PEERS[name])
    assert r.fooled.sum() >= 4, "test model too robust to exercise the attack"
    f = r.fooled
    with torch.no_grad():
        assert bool((model(r.adversarial[f]).argmax(1) != y[f]).all())
    d = (r.adversarial[f].double() - x[f].double()).flatten(1).norm(dim=1)
    assert torch.allclose(r.l2[f], d)
    assert bool((r.adversarial[f] >= 0).all() and (r.adversarial[f] <= 1).all())
    assert bool(torch.isinf(r.l2[~f]).all()) and bool(torch.isnan(r.adversarial[~f]).all())


@pytest.mark.parametrize("name", ["advlib:ddn", "foolbox:L2DeepFoolAttack"])
def test_adapter_pass_counts_match_what_the_model_saw(name):
    inner, x, y = data(n=6)
    model = Counting(inner)
    r = run(name, model, x, y, PEERS[name])
    assert model.rows == int(r.n_forward.sum())
    assert model.grad_rows == int(r.n_grad.sum())
    assert bool((r.n_grad > 0).all())
    if name == "advlib:ddn":
        # 30 steps: one forward and one backward pass each, plus clean, screening and re-check passes
        assert bool((r.n_grad == 30).all())
        assert bool((r.n_forward == 30 + 3).all())


def test_torchattacks_counts_split_over_the_batch():
    # FAB works on the samples still to fool, so its rows are shared out evenly: the totals
    # agree with what the model saw up to the rounding of one share per sample
    inner, x, y = data(n=6)
    model = Counting(inner)
    r = run("torchattacks:FAB", model, x, y, PEERS["torchattacks:FAB"])
    assert abs(model.rows - int(r.n_forward.sum())) <= len(y)
    assert abs(model.grad_rows - int(r.n_grad.sum())) <= len(y)
    assert int(r.n_grad.sum()) > 10 * len(y)  # a gradient per class and iteration


def test_clean_image_returned_on_failure_is_not_fooled():
    # adv-lib's DDN returns the clean image where it found nothing; with one step from a
    # tiny initial norm nothing is found: every row must be a failure, without the base's
    # "claimed adversarial did not fool" warning (the adapter screens before claiming)
    model, x, y = data(n=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        r = build_search("advlib:ddn", {"steps": 1, "init_norm": 1e-6}).run(model, x, y)
    assert not bool(r.fooled.any())
    assert bool(torch.isinf(r.l2).all()) and bool((r.adv_pred == -1).all())


def test_zero_image_returned_on_failure_is_not_fooled():
    # foolbox's CW returns an all-zero image where it found nothing (here: one step with a
    # tiny constant); the zero image may even be misclassified, it still is no result
    model, x, y = data(n=4)
    with torch.no_grad():
        zero_pred = model(torch.zeros_like(x)).argmax(1)
    assert bool((zero_pred != y).any()), "test needs a misclassified zero image"
    r = run("foolbox:L2CarliniWagnerAttack", model, x, y,
            {"steps": 1, "binary_search_steps": 1, "initial_const": 1e-6})
    assert not bool(r.fooled.any())


def test_adversarial_that_does_not_fool_is_a_failure():
    # foolbox's DeepFool returns its last iterate when it runs out of steps
    model, x, y = data(n=6)
    r = run("foolbox:L2DeepFoolAttack", model, x, y, {"steps": 1, "overshoot": 0.0})
    with torch.no_grad():
        assert bool((model(r.adversarial[r.fooled]).argmax(1) != y[r.fooled]).all())
    assert bool(torch.isinf(r.l2[~r.fooled]).all())


def test_clean_misclassified_samples_cost_one_pass():
    model, x, y = data(n=4)
    y = y.clone()
    y[1] = (y[1] + 1) % 10
    r = run("advlib:ddn", model, x, y, {"steps": 5})
    assert float(r.l2[1]) == 0.0 and int(r.n_forward[1]) == 1 and int(r.n_grad[1]) == 0


# --------------------------------------------------------------------------------------
# names, configs, missing libraries
# --------------------------------------------------------------------------------------
def test_names_are_canonical_and_case_insensitive():
    assert is_peer_name("advlib:ddn") and not is_peer_name("ddn")
    assert peer_name("advlib:DDN") == "advlib:ddn"
    assert peer_name("Foolbox:l2deepfoolattack") == "foolbox:L2DeepFoolAttack"
    assert peer_name("torchattacks:fab") == "torchattacks:FAB"
    assert peer_name("adv-lib:fmn") == "advlib:fmn"
    assert build_search("advlib:DDN").name == "advlib:ddn"


def test_unknown_library_attack_and_keys_are_config_errors():
    with pytest.raises(ConfigError, match="valid: foolbox, advlib, torchattacks"):
        build_search("cleverhans:fgm")
    with pytest.raises(ConfigError, match="fmn"):
        build_search("advlib:nope")
    with pytest.raises(ConfigError, match="fixed-ε"):
        build_search("foolbox:LinfPGD")
    with pytest.raises(ConfigError, match="valid keys: init_norm, levels, steps"):
        build_search("advlib:ddn", {"stepz": 3})
    with pytest.raises(ConfigError, match="untargeted"):
        build_search("advlib:ddn", {"targeted": True})


def test_resolved_config_holds_defaults_and_the_l2_choices():
    cfg = build_search("advlib:fmn", {"steps": 50}).config_dict()
    assert cfg["steps"] == 50 and cfg["norm"] == 2
    fab = build_search("torchattacks:FAB").config_dict()
    assert fab["norm"] == "L2" and fab["eps"] == math.inf and "n_classes" not in fab
    df = build_search("foolbox:L2DeepFoolAttack", {"overshoot": 0.05}).config_dict()
    assert df == {"steps": 50, "candidates": 10, "overshoot": 0.05, "loss": "logits"}


@pytest.mark.parametrize("lib, extra", [("torchattacks", "torchattacks"), ("foolbox", "foolbox"),
                                        ("advlib", "advlib")])
def test_missing_library_names_the_extra(monkeypatch, lib, extra):
    module = {"advlib": "adv_lib.attacks"}.get(lib, lib)
    monkeypatch.setitem(sys.modules, module, None)  # import raises ModuleNotFoundError
    with pytest.raises(ConfigError, match=rf"install the '{extra}' extra"):
        build_search(f"{lib}:anything")


def test_peer_run_leaves_global_rng_and_parameter_gradients_alone():
    model, x, y = data(n=4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run("torchattacks:FAB", model, x, y, PEERS["torchattacks:FAB"])  # FAB seeds the global generator
    assert torch.equal(torch.rand(3), expected)
    assert all(bool((p.grad == 1).all()) for p in model.parameters())


def test_same_seed_same_result():
    model, x, y = data(n=4)
    a = run("torchattacks:FAB", model, x, y, {"steps": 5, "n_restarts": 2}, seed=3)
    b = run("torchattacks:FAB", model, x, y, {"steps": 5, "n_restarts": 2}, seed=3)
    assert torch.equal(a.l2, b.l2)


def test_pass_counter_counts_forward_and_backward_rows():
    c = PassCounter(TinyMLP())
    x = torch.rand(5, 1, 8, 8, requires_grad=True)
    c(x).sum().backward()
    with torch.no_grad():
        c(x[:2])
    assert (c.forward_rows, c.backward_rows) == (7, 5)


# --------------------------------------------------------------------------------------
# the audit
# --------------------------------------------------------------------------------------
def test_audit_config_accepts_and_canonicalises_peer_names():
    cfg = AuditConfig(attacks="ddn,advlib:DDN,foolbox:l2deepfoolattack",
                      searches={"advlib:DDN": {"steps": 10}})
    cfg.validate()
    assert cfg.attacks == ["ddn", "advlib:ddn", "foolbox:L2DeepFoolAttack"]
    assert cfg.searches == {"advlib:ddn": {"steps": 10}}
    bad = AuditConfig(attacks=["nolib:x"])
    with pytest.raises(ConfigError, match="unknown attack library"):
        bad.validate()


def test_audit_with_a_peer_search_stores_verified_rows(tmp_path):
    import robustbench_jr

    model, x, y = data(n=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = robustbench_jr.audit(model, x, y, searches=["deepfool", "advlib:ddn"], store=tmp_path / "run",
                                   search_config={"advlib:ddn": {"steps": 30}})
    s = res.summary()
    assert set(s["searches"]) == {"deepfool", "advlib:ddn"}
    assert s["searches"]["advlib:ddn"]["success_rate"] > 0.5
    assert "advlib:ddn" in s["best"]["over"]
