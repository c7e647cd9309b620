"""An explicit null means null (issue #15, item 3): in YAML and API layers a key given as
``null`` sets the field to None, an absent key keeps the default, and command-line options
the user did not type are "not given" (dropped before the config is built)."""

from __future__ import annotations

import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

import robustbench_jr
from robustbench_jr.attacks import SEARCHES, build_search
from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.cli.train import _layers
from robustbench_jr.config import build_config
from robustbench_jr.errors import ConfigError
from robustbench_jr.evaluation.audit import AuditConfig
from robustbench_jr.training.config import build_train_config


class Affine(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(16, 3)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(3, 16, generator=g))

    def forward(self, x):
        return self.lin(x.flatten(1))


def test_build_config_null_versus_absent():
    PGD, JSMA = SEARCHES["pgd"].Config, SEARCHES["jsma"].Config
    assert build_config(PGD, {"saturation": None}).saturation is None
    assert build_config(PGD, {}).saturation == pytest.approx(32 / 255)
    # a later null overrides an earlier value; a later absent key does not
    assert build_config(JSMA, {"targets": 2}, {"targets": None}).targets is None
    assert build_config(JSMA, {"targets": 2}, {}).targets == 2
    # null where the field is not Optional: one clear error, not a silent default
    with pytest.raises(ConfigError, match="max_steps must be an integer ≥ 1, got null"):
        build_config(PGD, {"max_steps": None}, where="pgd search config")
    from robustbench_jr.config import given
    assert given({"a": None, "b": 0, "c": False}) == {"b": 0, "c": False}


def test_searches_null_reaches_the_search():
    assert build_search("pgd", {"saturation": None}).config.saturation is None
    model = Affine()
    x = 0.5 + 0.01 * torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = model(x).argmax(1).detach()
    # PGD without a box on MNIST data (the dataset's box would be 32/255)
    res = robustbench_jr.audit(model, x, y, searches=["pgd", "jsma"], seed=0, dataset="mnist", budget="quick",
                               search_config={"pgd": {"saturation": None, "max_steps": 5},
                                              "jsma": {"targets": None}})
    cfg = res.config["searches"]
    assert cfg["pgd"]["saturation"] is None      # not 32/255
    assert cfg["jsma"]["targets"] is None        # the quick budget's 2 targets undone
    s = res.summary()["searches"]
    assert s["pgd"]["protocol"].startswith("custom (") and "saturation=null" in s["pgd"]["protocol"]
    # CIFAR: null is null, not 32/255 (nor the dataset's 16/255)
    xc = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    mc = nn.Sequential(nn.Flatten(), nn.Linear(48, 10))
    yc = mc(xc).argmax(1).detach()
    rc = robustbench_jr.audit(mc, xc, yc, searches=["pgd"], seed=0, dataset="cifar10",
                              search_config={"pgd": {"saturation": None, "max_steps": 2}}, jacobian="off")
    assert rc.config["searches"]["pgd"]["saturation"] is None
    rd = robustbench_jr.audit(mc, xc, yc, searches=["pgd"], seed=0, dataset="cifar10",
                              search_config={"pgd": {"max_steps": 2}}, jacobian="off")
    assert rd.config["searches"]["pgd"]["saturation"] == pytest.approx(16 / 255)


def test_cli_untyped_options_are_not_given_and_yaml_null_is_null(tmp_path):
    cfg_file = tmp_path / "audit.yaml"
    cfg_file.write_text(yaml.safe_dump({"n": 3, "attacks": "pgd", "seed": 5,
                                        "searches": {"pgd": {"saturation": None, "max_steps": 3}}}))
    out = tmp_path / "run"
    r = CliRunner().invoke(jr_eval, ["run", "lenet-mnist", "--config", str(cfg_file), "--source", "bundled",
                                     "--out", str(out), "--device", "cpu", "--jacobian", "off", "--quiet"])
    assert r.exit_code == 0, r.output
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["searches"]["pgd"]["saturation"] is None
    # untyped options (--seed, --n, ...) did not override the file
    assert resolved["seed"] == 5 and resolved["n"] == 3
    # a null where a number is needed is refused, naming the key
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: null\n")
    r = CliRunner().invoke(jr_eval, ["run", "lenet-mnist", "--config", str(bad), "--source", "bundled",
                                     "--out", str(tmp_path / "bad"), "--quiet"])
    assert r.exit_code == 2 and "n must be an integer" in r.output and "null" in r.output


def test_jr_train_layers_drop_untyped_options_but_keep_file_nulls(tmp_path):
    f = tmp_path / "train.yaml"
    f.write_text("dropout: 0.3\nfew_shot: null\nsteps: 10\n")
    kwargs = {"config_file": str(f), "out": "x", "resume": False, "quiet": True, "as_json": False,
              "dropout": None, "lr": None, "steps": None, "few_shot": None, "device": "auto"}
    file_layer, cli_layer = _layers(kwargs)
    assert cli_layer == {"device": "auto"}  # nothing typed (--device has a default)
    assert _layers({**kwargs, "config_file": None}) == [{}, {"device": "auto"}]
    cfg = build_train_config([file_layer, cli_layer])
    assert cfg.dropout == 0.3 and cfg.few_shot is None and cfg.steps == 10 and cfg.lr == 0.1
    assert build_config(AuditConfig, {"dataset": None}).dataset is None
