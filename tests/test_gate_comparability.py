"""Baseline rules compare like with like (issue #15, item 4): a baseline audited with another
search configuration, on other sample ids or other data is refused (exit 2, differences
listed) unless --allow-mismatch, and then the JSON and JUnit say so."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import robustbench_jr
from robustbench_jr.cli.report_cmds import register
from robustbench_jr.errors import ConfigError
from robustbench_jr.reports.gate import build_policy, evaluate


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.lin = nn.Linear(16, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(3, 16, generator=g))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.flatten(1))


MODEL = Net()
X = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(6))
with torch.no_grad():
    Y = MODEL(X).argmax(1)


def audit(path, **kw):
    args = dict(searches=["noise", "fgsm"], seed=0, store=path)
    args.update(kw)
    x, y = args.pop("x", X), args.pop("y", Y)
    robustbench_jr.audit(MODEL, x, y, **args)
    return path


def gate(*args):
    group = click.Group("jr-eval")
    register(group)
    return CliRunner().invoke(group, ["gate", *map(str, args)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    t = tmp_path_factory.mktemp("runs")
    return {
        "base": audit(t / "base"),
        "same": audit(t / "same"),
        "crippled": audit(t / "crippled", search_config={"fgsm": {"grid_size": 2, "max_bisection": 1}}),
        "ids": audit(t / "ids", sample_ids=list(range(100, 108))),
        "data": audit(t / "data", x=X.flip(0), y=Y.flip(0)),
    }


def test_same_measurement_is_judged(runs):
    res = evaluate(runs["same"], build_policy({"rules": ["rho_adv[fgsm] >= 0.99 * baseline"],
                                               "baseline": str(runs["base"])}))
    assert res.passed and res.mismatches == []
    assert res.to_dict()["comparability"] == {"allow_mismatch": False, "comparable": True, "differences": []}


@pytest.mark.parametrize("which, needle", [
    ("crippled", "searches.fgsm.grid_size: 40 in the baseline, 2 in the run"),
    ("ids", "different samples"),
    ("data", "test data differ"),
])
def test_unlike_baseline_is_refused_with_the_differences(runs, which, needle):
    with pytest.raises(ConfigError, match="not measured like the run") as exc:
        evaluate(runs[which], build_policy({"rules": ["rho_adv[fgsm] >= 0.5 * baseline"],
                                            "baseline": str(runs["base"])}))
    assert needle in str(exc.value)
    r = gate(runs[which], "--rule", "rho_adv[fgsm] >= 0.5 * baseline", "--baseline", runs["base"])
    assert r.exit_code == 2 and needle in r.output and "--allow-mismatch" in r.output


def test_search_configs_only_matter_where_a_rule_reads_them(runs):
    # the crippled run differs only in FGSM: a baseline rule on noise compares like with like
    res = evaluate(runs["crippled"], build_policy({"rules": ["rho_adv[noise] >= 0.99 * baseline"],
                                                   "baseline": str(runs["base"])}))
    assert res.mismatches == []
    # best reads every search
    with pytest.raises(ConfigError, match="searches.fgsm.grid_size"):
        evaluate(runs["crippled"], build_policy({"rules": ["rho_adv[best] >= 0.5 * baseline"],
                                                 "baseline": str(runs["base"])}))
    # rules without baseline are never refused
    assert evaluate(runs["crippled"], build_policy({"rules": ["rho_adv[fgsm] >= 0"]})).passed


def test_allow_mismatch_judges_and_says_so(runs, tmp_path):
    junit, js = tmp_path / "gate.xml", tmp_path / "gate.json"
    r = gate(runs["crippled"], "--rule", "rho_adv[fgsm] >= 0.5 * baseline", "--baseline", runs["base"],
             "--allow-mismatch", "--junit", junit, "--json-out", js)
    assert r.exit_code in (0, 1), r.output
    assert "not comparable" in r.output
    doc = json.loads(js.read_text())
    comp = doc["comparability"]
    assert comp["allow_mismatch"] is True and comp["comparable"] is False
    assert any("searches.fgsm.grid_size" in d for d in comp["differences"])
    assert doc["policy"]["allow_mismatch"] is True
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert props["allow_mismatch"] == "true" and props["baseline_comparable"] == "false"
    assert "grid_size" in props["baseline_differences"]
    assert "baseline NOT comparable" in junit.read_text()
    # the policy file form
    pol = tmp_path / "policy.yaml"
    pol.write_text(f"rules: ['rho_adv[fgsm] >= 0.5 * baseline']\nbaseline: {runs['base']}\nallow_mismatch: true\n")
    assert gate(runs["crippled"], "--policy", pol).exit_code in (0, 1)
    pol.write_text("rules: ['rho_adv[fgsm] >= 0']\nallow_mismatch: maybe\n")
    assert gate(runs["crippled"], "--policy", pol).exit_code == 2
