"""Ranges and choices declared once on config fields (``param``), checked by ``build_config``."""

import dataclasses
from dataclasses import dataclass
from typing import Optional

import pytest
from click.testing import CliRunner

from robustbench_jr.attacks import SEARCHES
from robustbench_jr.cli.train import main as jr_train
from robustbench_jr.config import Spec, build_config, check_constraints, param, spec_of
from robustbench_jr.errors import ConfigError
from robustbench_jr.training import TrainConfig

CW = SEARCHES["cw"].Config
PGD = SEARCHES["pgd"].Config
DEEPFOOL = SEARCHES["deepfool"].Config


@dataclass
class Toy:
    n: int = param(1, ge=1)
    rate: float = param(0.5, gt=0, lt=1)
    limit: Optional[int] = param(None, ge=0)
    mode: str = param("a", choices=("a", "b", "c"))
    flag: bool = param(True)
    free: float = 1.0


@pytest.mark.parametrize("cls, key, value, message", [
    (CW, "lr", 0, "cw search config: lr must be a number > 0, got 0.0"),
    (CW, "lr", -1, "cw search config: lr must be a number > 0, got -1.0"),
    (CW, "tanh_margin", 1, "tanh_margin must be a number in (0, 1), got 1.0"),
    (CW, "beta2", 1.0, "beta2 must be a number in [0, 1), got 1.0"),
    (CW, "success_patience", -1, "success_patience must be an integer ≥ 0 (or null), got -1"),
    (PGD, "max_steps", 0, "pgd search config: max_steps must be an integer ≥ 1, got 0"),
    (PGD, "step_size", float("nan"), "step_size must be a number > 0, got nan"),
    (PGD, "saturation", float("inf"), "saturation must be a number > 0 (or null), got inf"),
    (DEEPFOOL, "jacobian", "fast", "jacobian must be one of auto, batched, loop, got 'fast'"),
    (DEEPFOOL, "candidates", 1, "candidates must be an integer ≥ 2 (or null), got 1"),
])
def test_search_config_bounds_name_key_range_and_value(cls, key, value, message):
    name = next(n for n, s in SEARCHES.items() if s.Config is cls)
    with pytest.raises(ConfigError) as exc:
        SEARCHES[name]({key: value})
    assert message in str(exc.value)
    # the same check through build_config directly, with its own `where`
    with pytest.raises(ConfigError, match=f"^here: {key} must be"):
        build_config(cls, {key: value}, where="here")


@pytest.mark.parametrize("layer, message", [
    ({"lam": -0.5}, "training config: lam must be a number ≥ 0, got -0.5"),
    ({"n_proj": 0}, "training config: n_proj must be an integer ≥ 1, got 0"),
    ({"momentum": 1}, "momentum must be a number in [0, 1), got 1.0"),
    ({"lr_decay": 0}, "lr_decay must be a number in (0, 1], got 0.0"),
    ({"steps": 0}, "steps must be an integer ≥ 1 (or null), got 0"),
    ({"optimizer": "rmsprop"}, "optimizer must be 'sgd' or 'adam', got 'rmsprop'"),
    ({"reg_space": "raw"}, "reg_space must be 'pixel' or 'normalized', got 'raw'"),
])
def test_train_config_bounds_and_choices(layer, message):
    with pytest.raises(ConfigError) as exc:
        build_config(TrainConfig, layer, where="training config")
    assert message in str(exc.value)


def test_cross_field_checks_stay_in_validate():
    with pytest.raises(ConfigError, match="lam > 0"):
        build_config(TrainConfig, {"regularizer": "jr"})
    with pytest.raises(ConfigError, match="set either steps or epochs"):
        TrainConfig(steps=None).validate()
    with pytest.raises(ConfigError, match="eps_min ≤ eps_max"):
        SEARCHES["fgsm"]({"eps_min": 0.5, "eps_max": 0.1})
    with pytest.raises(ConfigError, match="valid models"):
        build_config(TrainConfig, {"model": "nope"})


def test_optional_none_accepted_and_defaults_pass():
    for cls in [TrainConfig, *(s.Config for s in SEARCHES.values()), Toy]:
        check_constraints(build_config(cls), "defaults")
    assert build_config(PGD, {"saturation": None}).saturation is None  # an explicit null means null
    assert build_config(PGD, {}).saturation is not None  # an absent key means the default
    cfg = PGD(saturation=None)
    check_constraints(cfg, "pgd")
    assert build_config(TrainConfig, {"steps": 10, "dropout": 0.0, "few_shot": 5}).few_shot == 5
    toy = Toy(limit=None)
    check_constraints(toy, "toy")
    with pytest.raises(ConfigError, match=r"^toy: limit must be an integer ≥ 0 \(or null\), got -1$"):
        check_constraints(Toy(limit=-1), "toy")


def test_bool_rejected_for_int_and_float_ints_accepted_for_float():
    with pytest.raises(ConfigError, match="True"):
        build_config(PGD, {"max_steps": True})
    with pytest.raises(ConfigError, match="True"):
        build_config(TrainConfig, {"lr": True})
    with pytest.raises(ConfigError, match="True"):
        build_config(TrainConfig, {"few_shot": True})  # Optional[int]
    with pytest.raises(ConfigError, match=r"^toy: n must be an integer ≥ 1, got True$"):
        check_constraints(Toy(n=True), "toy")
    with pytest.raises(ConfigError, match=r"^toy: n must be an integer ≥ 1, got 2.0$"):
        check_constraints(Toy(n=2.0), "toy")
    with pytest.raises(ConfigError, match=r"^toy: flag must be true or false, got 1$"):
        check_constraints(Toy(flag=1), "toy")
    with pytest.raises(ConfigError, match=r"^toy: rate must be a number in \(0, 1\), got True$"):
        check_constraints(Toy(rate=True), "toy")
    assert build_config(CW, {"lr": 1}).lr == 1.0  # int for a float field
    check_constraints(Toy(rate=0.25, free=float("nan")), "toy")  # unbounded floats may be anything
    assert build_config(PGD, {"max_steps": 3.0}).max_steps == 3  # an integral float read as int


def test_nan_and_inf_rejected_for_bounded_floats():
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ConfigError, match="rate must be a number in"):
            check_constraints(Toy(rate=bad), "toy")
        with pytest.raises(ConfigError, match="lam must be a number ≥ 0"):
            build_config(TrainConfig, {"lam": bad})


def test_choices_and_param_metadata():
    with pytest.raises(ConfigError, match=r"^toy: mode must be one of a, b, c, got 'd'$"):
        check_constraints(Toy(mode="d"), "toy")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    assert spec_of(fields["lr"]) == Spec(gt=0, doc="Initial learning rate")
    assert spec_of(fields["reg_space"]).choices == ("pixel", "normalized")
    assert TrainConfig().reg_options == {} and TrainConfig().reg_options is not TrainConfig().reg_options
    assert spec_of(dataclasses.fields(Toy)[-1]) is None


def _leading_flags(entry: str) -> list:
    out = []
    for tok in entry.split():
        if not tok.startswith("-"):
            break
        out.append(tok.rstrip(","))
    return out


def test_train_help_shows_defaults_from_train_config():
    res = CliRunner().invoke(jr_train, ["fit", "--help"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    # one help entry per option: a line starting with "  -" opens the next one
    entries, cur = [], []
    for line in res.output.splitlines():
        if line.startswith("  -") and cur:
            entries.append(" ".join(" ".join(cur).split()))
            cur = []
        cur.append(line)
    entries.append(" ".join(" ".join(cur).split()))
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in ("lr", "momentum", "weight_decay", "lr_decay", "lr_step", "steps", "batch_size", "lam",
                 "n_proj", "adv_eps_max", "seed", "eval_every", "eval_samples", "save_every", "log_every",
                 "optimizer", "reg_space", "model", "dataset", "regularizer"):
        f = fields[name]
        flag = "--" + name.replace("_", "-")
        (entry,) = [e for e in entries if flag in _leading_flags(e)]
        assert spec_of(f).doc in entry, (name, entry)
        assert entry.endswith(f"[default: {f.default}]."), (name, entry)
    assert "[default: 0.1]" in text and "[default: 150000]" in text and "[default: 0.0005]" in text
    assert "--lam, --lambda FLOAT" in text and "-r, --regularizer" in text
    assert "--download / --no-download" in text and "[default: no-download]" in text
    assert "--optimizer [sgd|adam]" in text and "--reg-space [pixel|normalized]" in text
    assert "--reg-options" not in text  # a mapping: YAML only


def test_train_options_default_to_none_so_the_file_wins(tmp_path, monkeypatch):
    import robustbench_jr.cli.train as cli_train

    seen = {}

    def fake_train(cfg, out, **kw):
        seen["cfg"] = cfg
        raise ConfigError("stop here")

    monkeypatch.setattr(cli_train, "train", fake_train)
    cfgfile = tmp_path / "c.yaml"
    cfgfile.write_text("lr: 0.05\nmomentum: 0.5\ndownload: true\noptimizer: adam\n")
    res = CliRunner().invoke(jr_train, ["fit", "--config", str(cfgfile), "--lambda", "0.2", "-r", "jr",
                                        "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "stop here" in res.output, res.output
    cfg = seen["cfg"]
    assert (cfg.lr, cfg.momentum, cfg.download, cfg.optimizer) == (0.05, 0.5, True, "adam")
    assert (cfg.lam, cfg.regularizer, cfg.steps) == (0.2, "jr", 150_000)
    res = CliRunner().invoke(jr_train, ["fit", "--optimizer", "rmsprop", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "rmsprop" in res.output
