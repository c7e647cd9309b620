"""The robustness gate: rule parsing, exit codes 0/1/2, bootstrap bounds, JUnit XML and JSON."""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET

import click
import numpy as np
import pytest
from click.testing import CliRunner

from robustbench_jr.cli.report_cmds import register
from robustbench_jr.errors import ConfigError
from robustbench_jr.evaluation.store import ResultStore
from robustbench_jr.reports.gate import BaselineSame, Metric, build_policy, evaluate, parse_rule


def cli():
    group = click.Group("jr-eval")
    register(group)
    return group


def write_run(path, models=("m",), l2=None, x_norm=10.0, clean_accuracy=0.99, n=None):
    """Each model gets searches cw and deepfool with the given distances."""
    l2 = np.asarray([0.0, 1.0, 2.0, 3.0, math.inf] if l2 is None else l2, dtype=float)
    with ResultStore(path) as st:
        for m in models:
            st.put_model(m, m, {"architecture": "lenet", "input_shape": [1, 28, 28]}, clean_accuracy=clean_accuracy,
                         jacobian_norm=2.0, n=n or len(l2))
            for s in ("cw", "deepfool"):
                st.put_batch(m, s, "0", [dict(sample_id=i, label=1, clean_pred=0 if d == 0 else 1, adv_pred=None,
                                              fooled=math.isfinite(d), l2=float(d), linf=float(d) / 10, l0=1.0,
                                              x_norm=x_norm, n_forward=1, n_grad=1) for i, d in enumerate(l2)])
            st.put_noise_accuracy(m, [(0.0, 0.99, 100), (0.4, 0.5, 100)])
    return path


# ------------------------------------------------------------- parsing ----
def test_parse_rules():
    r = parse_rule("rho_adv[deepfool] >= 0.25")
    assert r.lhs == Metric("rho_adv", ("deepfool",)) and r.op == ">=" and r.rhs.value == 0.25
    r = parse_rule("error_at[cw, 1.0] <= 30%")
    assert r.lhs == Metric("error_at", ("cw", 1.0)) and r.rhs.value == pytest.approx(0.3)
    r = parse_rule("rho_adv[cw] >= 0.95 * baseline for model=lenet-*, x")
    assert r.models == ["lenet-*", "x"] and r.rhs.right == BaselineSame() and r.uses_baseline
    r = parse_rule("clean_accuracy - baseline.clean_accuracy > -0.005")
    assert r.lhs.right == Metric("clean_accuracy", (), True)
    assert parse_rule("(rho_adv[cw] + rho_adv[deepfool]) / 2 >= 0.1").op == ">="


@pytest.mark.parametrize("bad", [
    "rho_adv[deepfool] >=", "rho_adv[deepfool] 0.25", "rho_adv >= 0.2", "nonsense[cw] >= 1",
    "rho_adv[cw] = 0.2", "__import__('os') >= 1", "error_at[cw] <= 0.3", "error_at[cw, x] <= 0.3",
    "0.1 >= 0.2", "baseline >= rho_adv[cw]", "rho_adv[cw] >= 0.2 for lenet", "rho_adv[cw] >= 0.2; rm -rf /", "",
])
def test_malformed_rules_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_rule(bad)


def test_policy_validation():
    with pytest.raises(ConfigError, match="valid keys"):
        build_policy({"rules": ["clean_accuracy >= 0.9"], "confidance": 0.95})
    with pytest.raises(ConfigError, match="baseline"):
        build_policy({"rules": ["rho_adv[cw] >= 0.9 * baseline"]})
    with pytest.raises(ConfigError, match="no rules"):
        build_policy({})
    with pytest.raises(ConfigError, match="confidence"):
        build_policy({"rules": ["clean_accuracy >= 0.9"], "confidence": 2})
    p = build_policy({"rules": ["clean_accuracy >= 0.9"], "confidence": 0.9})
    assert p.decision == "tolerant" and "90%" in p.describe_bound() and "1000" in p.describe_bound()


# ---------------------------------------------------------- evaluation ----
def test_point_values_hand_computed(tmp_path):
    run = write_run(tmp_path / "run")
    pol = build_policy({"rules": ["rho_adv[cw] >= 0.15", "error_at[cw, 2.0] <= 0.6", "success_rate[cw] >= 0.8",
                                  "not_fooled[cw] <= 0", "noise_accuracy[0.2] >= 0.7", "clean_error <= 0.02"]})
    res = evaluate(run, pol)
    got = {c.rule: (c.lhs, c.passed) for c in res.checks}
    assert got["rho_adv[cw] >= 0.15"] == (pytest.approx(0.15), True)  # (0 + .1 + .2 + .3) / 4
    assert got["error_at[cw, 2.0] <= 0.6"] == (pytest.approx(0.6), True)
    assert got["success_rate[cw] >= 0.8"] == (pytest.approx(0.8), True)
    assert got["not_fooled[cw] <= 0"] == (1, False)
    assert got["noise_accuracy[0.2] >= 0.7"] == (pytest.approx(0.745), True)  # interpolated
    assert got["clean_error <= 0.02"] == (pytest.approx(0.01), True)
    assert not res.passed and res.exit_code == 1


def test_bootstrap_bound_keeps_noisy_runs_from_flaking(tmp_path):
    rng = np.random.default_rng(0)
    l2 = rng.normal(2.0, 0.6, 200).clip(0.1)
    run = write_run(tmp_path / "run", l2=l2)
    rho = float(np.mean(l2 / 10))
    rule = f"rho_adv[cw] >= {rho + 0.003:.6f}"  # a hair above the point estimate: noise, not a regression
    assert not evaluate(run, build_policy({"rules": [rule]})).passed
    tol = evaluate(run, build_policy({"rules": [rule], "confidence": 0.95, "bootstrap": 400, "seed": 3}))
    assert tol.passed and tol.checks[0].bound > 0 and "95%" in tol.policy.describe_bound()
    assert tol.checks[0].lhs_interval[0] < rho < tol.checks[0].lhs_interval[1]
    # a clear violation still fails
    far = evaluate(run, build_policy({"rules": [f"rho_adv[cw] >= {rho + 0.05:.6f}"], "confidence": 0.95}))
    assert not far.passed
    # strict: a hair *below* the point estimate is not enough evidence
    strict = evaluate(run, build_policy({"rules": [f"rho_adv[cw] >= {rho - 0.003:.6f}"], "confidence": 0.95,
                                         "decide": "strict"}))
    assert not strict.passed
    # same seed, same numbers
    again = evaluate(run, build_policy({"rules": [rule], "confidence": 0.95, "bootstrap": 400, "seed": 3}))
    assert again.checks[0].bound == tol.checks[0].bound


def test_baseline_and_model_scope(tmp_path):
    base = write_run(tmp_path / "base", models=("a", "b"))
    worse = write_run(tmp_path / "worse", models=("a", "b"), l2=[0.0, 0.5, 1.0, 1.5, math.inf])
    ok = evaluate(base, build_policy({"rules": ["rho_adv[cw] >= 0.95 * baseline"], "baseline": str(base)}))
    assert ok.passed and [c.model for c in ok.checks] == ["a", "b"]
    bad = evaluate(worse, build_policy({"rules": ["rho_adv[cw] >= 0.95 * baseline for model=b"],
                                        "baseline": str(base)}))
    assert [c.model for c in bad.checks] == ["b"] and not bad.passed
    assert bad.checks[0].rhs == pytest.approx(0.95 * 0.15) and bad.checks[0].baseline_model == "b"
    scoped = build_policy({"rules": ["clean_accuracy >= 0.5", {"rule": "clean_accuracy >= 0.5", "model": "a",
                                                               "name": "acc-a"}], "models": ["b"]})
    res = evaluate(base, scoped)
    assert [(c.model, c.name) for c in res.checks] == [("b", None), ("a", "acc-a")]


# ------------------------------------------------------------------ CLI ----
def test_gate_cli_exit_codes_junit_and_json(tmp_path):
    run = write_run(tmp_path / "run", models=("lenet-mnist", "lenet-mnist-jr"))
    good = tmp_path / "good.yaml"
    good.write_text("rules:\n  - rho_adv[deepfool] >= 0.10\n  - error_at[cw, 1.0] <= 0.40\n"
                    "  - clean_accuracy >= 0.98\nconfidence: 0.95\nbootstrap: 200\nseed: 0\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - rule: rho_adv[deepfool] >= 0.5\n    model: lenet-mnist-jr\n")
    junit = tmp_path / "junit" / "gate.xml"

    res = CliRunner().invoke(cli(), ["gate", str(run), "--policy", str(good), "--junit", str(junit), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["passed"] and doc["summary"] == {"checks": 6, "passed": 6, "failed": 0} and "95%" in doc["bound"]
    root = ET.parse(junit).getroot()
    assert root.tag == "testsuites" and root.get("tests") == "6" and root.get("failures") == "0"

    res = CliRunner().invoke(cli(), ["gate", str(run), "--policy", str(bad), "--junit", str(junit),
                                     "--json-out", str(tmp_path / "v.json")])
    assert res.exit_code == 1, res.output
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) == 1 and cases[0].find("failure") is not None
    assert cases[0].get("classname") == "robustness.lenet-mnist-jr"
    assert json.loads((tmp_path / "v.json").read_text())["passed"] is False

    res = CliRunner().invoke(cli(), ["gate", str(run), "--rule", "rho_adv[cw] >= 0.1", "--rule",
                                     "clean_accuracy >= 0.98"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("policy, rules, needle", [
    ("rules: [rho_adv[cw] >= ]\n", [], "rule"),
    ("rules:\n  - rho_adv[cw] >= 0.1\nconfidance: 0.9\n", [], "valid keys"),
    ("rules: [\n", [], "YAML"),
    (None, ["rho_adv[pgd] >= 0.1"], "no results for search 'pgd'"),
    (None, ["rho_adv[cw] >= 0.1 for model=nope"], "selects no model"),
    (None, ["rho_adv[cw] >= 0.9 * baseline"], "baseline"),
    (None, [], "no rules"),
])
def test_gate_cli_usage_errors_exit_2(tmp_path, policy, rules, needle):
    run = write_run(tmp_path / "run")
    args = ["gate", str(run)]
    if policy is not None:
        (tmp_path / "p.yaml").write_text(policy)
        args += ["--policy", str(tmp_path / "p.yaml")]
    for r in rules:
        args += ["--rule", r]
    res = CliRunner().invoke(cli(), args)
    assert res.exit_code == 2, res.output
    assert needle in res.output


def test_gate_cli_missing_run_and_bad_flag(tmp_path):
    res = CliRunner().invoke(cli(), ["gate", str(tmp_path / "none"), "--rule", "clean_accuracy >= 0.9"])
    assert res.exit_code == 2
    res = CliRunner().invoke(cli(), ["gate", str(tmp_path), "--decide", "maybe"])
    assert res.exit_code == 2


def test_docs_example_policy_parses():
    from pathlib import Path

    from robustbench_jr.reports.gate import load_policy

    p = load_policy(Path(__file__).resolve().parents[1] / "docs" / "examples" / "gate-policy.yaml")
    assert len(p.rules) == 8 and p.confidence == 0.95 and p.decision == "tolerant" and p.baseline is not None


# ------------------------------------------------- grammar extensions ----
def test_functions_chains_and_conjunctions_parse():
    from robustbench_jr.reports.gate import Func

    r = parse_rule("min(rho_adv[cw], rho_adv[deepfool]) >= 0.1")
    assert r.lhs == Func("min", (Metric("rho_adv", ("cw",)), Metric("rho_adv", ("deepfool",))))
    r = parse_rule("0.1 <= rho_adv[cw] <= 0.2")  # a chain: two comparisons sharing the middle term
    assert [(c.op, c.rhs) for c in r.comparisons] == [("<=", Metric("rho_adv", ("cw",))), ("<=", r.comparisons[1].rhs)]
    r = parse_rule("abs(clean_accuracy - 0.99) <= 0.01 and d50[cw] > 1 for model=a")
    assert len(r.comparisons) == 2 and r.models == ["a"] and r.comparisons[1].strict
    assert [str(m) for m in r.metrics()] == ["clean_accuracy", "d50[cw]"]


@pytest.mark.parametrize("bad", [
    "min() >= 1", "abs(rho_adv[cw], 1) >= 0", "rho_adv[cw] >= 0.1 and", "max(rho_adv[cw] >= 1",
    "rho_adv[cw] >= 0.1 or clean_accuracy >= 0.9", "rho_adv[cw] >= baseline >= 0.1",
])
def test_malformed_extended_rules_are_config_errors(bad):
    with pytest.raises(ConfigError):
        parse_rule(bad)


def test_extended_rules_evaluate(tmp_path):
    run = write_run(tmp_path / "run")  # cw/deepfool: 0, 1, 2, 3, inf at ‖x‖ = 10
    res = evaluate(run, build_policy({"rules": [
        "0.1 <= rho_adv[cw] <= 0.2",                                   # 0.15
        "max(rho_adv[cw], 1) - min(rho_adv[cw], rho_adv[deepfool]) >= 0.85",
        "abs(clean_accuracy - 1) <= 0.02 and d50[cw] >= 2",           # d50: median of 0, 1, 2, 3, inf
        "mean(success_rate[cw], 0) < 0.3",                             # 0.4 < 0.3 is false
    ]}))
    got = {c.rule: c for c in res.checks}
    assert got["0.1 <= rho_adv[cw] <= 0.2"].passed and got["0.1 <= rho_adv[cw] <= 0.2"].margin == pytest.approx(0.05)
    assert got["max(rho_adv[cw], 1) - min(rho_adv[cw], rho_adv[deepfool]) >= 0.85"].lhs == pytest.approx(0.85)
    assert got["abs(clean_accuracy - 1) <= 0.02 and d50[cw] >= 2"].passed
    bad = got["mean(success_rate[cw], 0) < 0.3"]
    assert not bad.passed and bad.lhs == pytest.approx(0.4) and "is false" in bad.message
    # with the bootstrap, a conjunction is decided on the bound of its smallest margin
    boot = evaluate(run, build_policy({"rules": ["0.1 <= rho_adv[cw] <= 0.2"], "confidence": 0.9,
                                       "bootstrap": 200}))
    assert boot.checks[0].bound is not None and boot.checks[0].bound <= boot.checks[0].margin


def test_judge_with_missing_values_is_three_valued():
    """Missing values (an experiment table's cells not measured yet) make a comparison
    pending; a rule fails as soon as one comparison fails, else is pending while any is."""
    from robustbench_jr.reports.gate import Value, Vocabulary, judge

    vocab = Vocabulary({"acc": ("run",)}, "column", baseline=False)
    cells = {"a": 1.0, "b": 2.0, "c": None}

    def resolve(node, lhs):
        return Value(cells[node.args[0]])

    def status(text):
        return judge(parse_rule(text, vocabulary=vocab), resolve).status

    assert status("acc[a] < acc[b]") == "pass"
    assert status("acc[a] < acc[b] < acc[c]") == "pending"
    assert status("acc[b] < acc[a] < acc[c]") == "fail"      # decided already, whatever c will be
    assert status("min(acc[a], acc[c]) > 0") == "pending"
    assert status("acc[a] / 0 - acc[a] / 0 >= 0") == "fail"   # NaN: undefined
    with pytest.raises(ConfigError, match="unknown column"):
        parse_rule("rho_adv[cw] >= 1", vocabulary=vocab)
