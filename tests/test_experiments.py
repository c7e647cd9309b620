"""`jr-train table`: experiment tables (table.yaml + one training YAML per run).

Fast: tiny LeNet' runs on a fake MNIST root built from the bundled slice (CI has no full
MNIST). The last tests validate every YAML of the real experiments/ directory.
"""

import json
import textwrap
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from robustbench_jr.cli.train import main as jr_train
from robustbench_jr.errors import ConfigError
from robustbench_jr.experiments import RunnerOptions, Scaling, load_table, run_tables, validate_experiments
from robustbench_jr.experiments.spec import Catalog
from robustbench_jr.experiments.runner import build_run_config, config_differences
from robustbench_jr.training import TrainConfig
from helpers_data import fake_mnist_root

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"

TINY = dict(model="lenet", dataset="mnist", batch_size=50, steps=8, lr=0.05, lr_step=4, eval_every=0,
            eval_samples=50, save_every=4, log_every=4, seed=0)


def _audit_available() -> bool:
    """The audit is part of the package: if it vanishes, the tests that use it fail (an
    ImportError here), they are never skipped."""
    from robustbench_jr.evaluation.audit import run_audit  # noqa: F401
    from robustbench_jr.attacks import build_search  # noqa: F401
    return True


def _sklearn_available() -> bool:
    """scikit-learn is a test dependency (pyproject's ``test`` extra; the digits domain-shift
    set): without it the tests fail, they are never skipped."""
    import sklearn  # noqa: F401
    return True


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(fake_mnist_root(tmp_path_factory.mktemp("data")))


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def _tiny_tables(root: Path, audit: bool = False) -> Path:
    """Two tables: t1 (runs `plain` and `jr`) and t2 (uses t1/plain, fine-tunes it)."""
    t1 = root / "t1"
    _write(t1 / "plain.yaml", dict(TINY, regularizer="none"))
    _write(t1 / "jr.yaml", dict(TINY, regularizer="jr", lam=0.5, reg_space="normalized"))
    runs = [
        {"name": "plain", "label": "No regularization", "paper": {"acc": 50.0, "jnorm": 30.0}},
        {"name": "jr", "label": "Jacobian", "paper": {"acc": 50.0, "jnorm": 1.0}},
    ]
    if audit:
        runs[0]["audit"] = {"attacks": ["noise"], "n": 6, "batch_size": 6, "noise_sigmas": [0.0, 0.5]}
    _write(t1 / "table.yaml", {
        "title": "tiny table", "paper": "nobody (2024), Table 0", "paper_steps": 100, "report": False,
        "columns": [
            {"key": "acc", "label": "Test accuracy (%)", "metric": "test_accuracy", "scale": 100, "digits": 1},
            {"key": "jnorm", "label": "‖J‖_F", "metric": "jacobian_norm_normalized_input", "digits": 3},
        ],
        "runs": runs,
        "checks": [
            {"name": "ratio that holds", "kind": "ratio", "column": "jnorm", "numerator": "plain",
             "denominator": "jr", "min": 0.0},
            {"name": "ratio that fails", "kind": "ratio", "column": "jnorm", "numerator": "plain",
             "denominator": "jr", "min": 1e9},
            {"name": "accuracy near the paper", "kind": "paper", "column": "acc", "tolerance": 100.0},
            {"name": "an order", "kind": "order", "column": "jnorm", "runs": ["jr", "plain"],
             "acceptance": False},
        ],
    })
    t2 = root / "t2"
    _write(t2 / "post.yaml", {"steps": 4, "batch_size": 50, "lam": 0.1, "eval_every": 0, "save_every": 4,
                              "eval_samples": 50})
    shift = _sklearn_available()
    _write(t2 / "table.yaml", {
        "title": "tiny post-processing",
        "columns": [{"key": "acc", "label": "acc", "metric": "test_accuracy", "scale": 100}]
        + ([{"key": "shift", "label": "digits", "metric": "domain_shift_accuracy", "scale": 100}] if shift else []),
        "runs": [dict({"name": "base", "use": "t1/plain"}, **({"domain_shift": "digits"} if shift else {}),
                      **({"audit": {"attacks": ["noise"], "n": 4, "batch_size": 4, "noise_sigmas": [0.0, 0.5]}}
                         if audit else {})),
                 {"name": "post", "finetune_from": "base"}],
        "checks": [{"kind": "compare", "column": "acc", "higher": ["post"], "lower": ["base"],
                    "acceptance": False}],
    })
    return root


def _invoke(args):
    return CliRunner().invoke(jr_train, ["table", *args], catch_exceptions=False)


def test_table_runs_writes_table_and_skips_on_rerun(tmp_path, data_root):
    root = _tiny_tables(tmp_path / "experiments", audit=_audit_available())
    results = tmp_path / "results"
    res = _invoke([str(root / "t1"), "--results", str(results), "--data-root", data_root, "--device", "cpu",
                   "--quiet"])
    assert res.exit_code == 0, res.output
    out = results / "t1"
    for run in ("plain", "jr"):
        card = yaml.safe_load((out / run / "card.yaml").read_text())
        assert card["training"]["steps_done"] == 8
    data = json.loads((out / "table.json").read_text())
    status = {c["name"]: c["status"] for c in data["checks"]}
    assert status == {"ratio that holds": "PASS", "ratio that fails": "FAIL", "accuracy near the paper": "PASS",
                      "an order": status["an order"]}
    assert status["an order"] in ("PASS", "FAIL")
    rows = {r["name"]: r for r in data["runs"]}
    assert rows["plain"]["steps"] == 8 and rows["plain"]["paper_steps"] == 100
    assert rows["plain"]["cells"]["jnorm"]["paper"] == 30.0
    assert rows["plain"]["cells"]["acc"]["ours"] == pytest.approx(
        100 * yaml.safe_load((out / "plain" / "card.yaml").read_text())["metrics"]["test_accuracy"])
    assert rows["plain"]["train_wall_time_s"] is not None
    assert data["hardware"]["cpu"]
    md = (out / "table.md").read_text()
    assert "**PASS**" in md and "**FAIL**" in md and "tiny table" in md
    assert "8 / 100" in md  # steps: ours / paper
    if _audit_available():
        assert (out / "plain" / "audit" / "results.sqlite").is_file()
        ev = json.loads((out / "plain" / "eval.json").read_text())
        assert ev["audit"]["wall_time_s"] >= 0

    # rerun: nothing is retrained
    mtimes = {r: (out / r / "model.safetensors").stat().st_mtime_ns for r in ("plain", "jr")}
    res = _invoke([str(root / "t1"), "--results", str(results), "--data-root", data_root, "--device", "cpu",
                   "--quiet"])
    assert res.exit_code == 0, res.output
    assert "skip" in res.output
    assert {r: (out / r / "model.safetensors").stat().st_mtime_ns for r in ("plain", "jr")} == mtimes

    # an audit cap alone audits the full runs' weights: nothing retrained, audits apart
    res = _invoke([str(root / "t1"), "--audit-n", "3", "--results", str(results), "--data-root", data_root,
                   "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert {r: (out / r / "model.safetensors").stat().st_mtime_ns for r in ("plain", "jr")} == mtimes
    capped = results / "t1@n3"
    assert not (capped / "plain" / "model.safetensors").exists()
    data = json.loads((capped / "table.json").read_text())
    assert data["scaled"] and {r["name"]: r["status"] for r in data["runs"]} == {"plain": "done", "jr": "done"}
    assert data["runs"][0]["cells"]["acc"] == rows["plain"]["cells"]["acc"]
    if _audit_available():
        from robustbench_jr.evaluation.store import ResultStore

        with ResultStore(capped / "plain" / "audit", readonly=True) as st:
            assert st.meta()["status"] == "complete"
            assert st.meta()["config"]["n"] == 3

    # a changed config is refused, not overwritten
    _write(root / "t1" / "jr.yaml", dict(TINY, regularizer="jr", lam=0.25, reg_space="normalized"))
    res = CliRunner().invoke(jr_train, ["table", str(root / "t1"), "--results", str(results), "--data-root",
                                        data_root, "--device", "cpu", "--quiet"])
    assert res.exit_code == 2
    assert "different config" in res.output and "lam" in res.output
    assert (out / "jr" / "model.safetensors").stat().st_mtime_ns == mtimes["jr"]


def test_use_and_finetune_across_tables_and_scaled_results(tmp_path, data_root):
    root = _tiny_tables(tmp_path / "experiments", audit=_audit_available())
    results = tmp_path / "results"
    opts = RunnerOptions(results=results, scaling=Scaling(steps_scale=0.5), device="cpu", data_root=data_root,
                         progress=False)
    run_tables(root / "t2", opts)
    # the used run is trained in its own table's (scaled) folder, halved, lr_step too
    base = results / "t1@scale0.5" / "plain"
    card = yaml.safe_load((base / "card.yaml").read_text())
    assert card["training"]["steps_done"] == 4 and card["training"]["lr_step"] == 2
    post = yaml.safe_load((results / "t2@scale0.5" / "post" / "card.yaml").read_text())
    assert post["training"]["steps_done"] == 2
    # fine-tune: jr-train finetune defaults (Adam, jr-exact form jg) under the run's YAML
    assert post["training"]["optimizer"] == "adam" and post["training"]["regularizer"] == "jr-exact"
    assert post["training"]["reg_options"] == {"form": "jg"} and post["training"]["lam"] == 0.1
    assert len(post["parent"]["weights_sha256"]) == 64

    # the runner's post-processing config is exactly the one `jr-train finetune PARENT --config` builds
    res = CliRunner().invoke(jr_train, ["finetune", str(base), "--config", str(root / "t2" / "post.yaml"),
                                        "--steps", "2", "--save-every", "2", "--data-root", data_root, "--device", "cpu", "--quiet",
                                        "--out", str(tmp_path / "by-hand")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    by_hand = yaml.safe_load((tmp_path / "by-hand" / "card.yaml").read_text())["training"]
    assert config_differences(by_hand, post["training"]) == []
    assert not (results / "t1").exists() and not (results / "t2").exists()  # never mixed with full runs
    data = json.loads((results / "t2@scale0.5" / "table.json").read_text())
    assert data["scaled"] and {r["name"]: r["status"] for r in data["runs"]} == {"base": "done", "post": "done"}
    if _sklearn_available():  # accuracy on the digits test split, stored next to the table's run
        ev = json.loads((results / "t2@scale0.5" / "base" / "eval.json").read_text())
        assert ev["domain_shift"]["digits"]["n"] == 797
        base_row = data["runs"][0]
        assert base_row["cells"]["shift"]["ours"] == pytest.approx(100 * ev["domain_shift"]["digits"]["accuracy"])
    assert "Scaled run" in (results / "t2@scale0.5" / "table.md").read_text()
    if _audit_available():  # the report names the reused checkpoint as this table does: base, not plain
        summary = json.loads((results / "t2@scale0.5" / "report" / "summary.json").read_text())
        assert [c["checkpoint"] for c in summary["checkpoints"]] == ["base"]


def test_dry_run_and_max_steps_change_nothing(tmp_path, data_root):
    root = _tiny_tables(tmp_path / "experiments")
    results = tmp_path / "results"
    res = _invoke([str(root), "--all", "--dry-run", "--max-steps", "3", "--results", str(results),
                   "--data-root", data_root])
    assert res.exit_code == 0, res.output
    assert "plan: t1" in res.output and "plan: t2" in res.output and "new" in res.output
    assert not results.exists()
    cfg = build_run_config(Catalog(root), load_table(root / "t1"), load_table(root / "t1").run("jr"),
                           scaling=Scaling(max_steps=3))
    assert cfg.steps == 3 and cfg.lr_step == 2  # 4 × 3/8 rounded


def _bad_table(tmp_path, mutate) -> Path:
    root = _tiny_tables(tmp_path / "experiments")
    p = root / "t1" / "table.yaml"
    d = yaml.safe_load(p.read_text())
    mutate(d)
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return root


@pytest.mark.parametrize("mutate, needles", [
    (lambda d: d.update(colums=[]), ["unknown key", "'colums'", "valid keys", "columns"]),
    (lambda d: d["runs"][0].update(finetune="x"), ["unknown key", "'finetune'", "finetune_from"]),
    (lambda d: d["checks"].append({"kind": "ratios", "column": "acc"}), ["unknown check kind", "ratio"]),
    (lambda d: d["checks"].append({"kind": "ratio", "column": "acc", "numerator": "plain",
                                   "denominator": "ghost", "min": 1}), ["ghost", "not a run"]),
    (lambda d: d["checks"][0].update(treshold=3), ["unknown key", "'treshold'"]),
    (lambda d: d["columns"][0].update(metric="accuracy"), ["unknown metric", "test_accuracy"]),
    (lambda d: d["runs"].append({"name": "other", "use": "t9/plain"}), ["t9", "does not exist"]),
    (lambda d: d["runs"][0].update(audit={"attacks": ["noise"], "nn": 3}), ["unknown key", "'nn'"]),
])
def test_bad_table_yaml_is_a_clear_config_error(tmp_path, mutate, needles):
    root = _bad_table(tmp_path, mutate)
    assert _audit_available()
    with pytest.raises(ConfigError) as exc:
        validate_experiments(root)
    for n in needles:
        assert n in str(exc.value), str(exc.value)
    # and through the command: exit status 2, the message, no traceback
    res = CliRunner().invoke(jr_train, ["table", "--validate", str(root)])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert needles[0] in res.output


def test_bad_run_yaml_and_orphan_yaml(tmp_path):
    root = _tiny_tables(tmp_path / "experiments")
    _write(root / "t1" / "jr.yaml", dict(TINY, regularizer="jr", lam=0.5, lamda=1))
    _write(root / "t1" / "forgotten.yaml", dict(TINY))
    with pytest.raises(ConfigError) as exc:
        validate_experiments(root)
    msg = str(exc.value)
    assert "'lamda'" in msg and "valid keys" in msg and "jr.yaml" in msg
    assert "forgotten.yaml" in msg and "not the config of any run" in msg


def test_cycle_and_unknown_only_are_errors(tmp_path, data_root):
    root = _tiny_tables(tmp_path / "experiments")
    t2 = yaml.safe_load((root / "t2" / "table.yaml").read_text())
    t2["runs"][0] = {"name": "base", "use": "t2/base2"}
    t2["runs"].append({"name": "base2", "use": "t2/base"})
    _write(root / "t2" / "table.yaml", t2)
    with pytest.raises(ConfigError, match="circular"):
        validate_experiments(root)
    res = CliRunner().invoke(jr_train, ["table", str(root / "t1"), "--only", "plain,nope", "--dry-run",
                                        "--data-root", data_root])
    assert res.exit_code == 2 and "nope" in res.output


# ---------------------------------------------------------------------------
# the real experiments/ directory
# ---------------------------------------------------------------------------

def test_every_real_experiment_table_validates():
    tables = validate_experiments(EXPERIMENTS)
    names = {t.name for t in tables}
    assert {"hoffman-table1", "hoffman-fig2", "hoffman-fewshot", "hoffman-robustness", "hoffman-domain-shift",
            "jg-table3", "jg-table13", "fashion-mnist"} <= names
    cat = Catalog(EXPERIMENTS)
    for t in tables:
        cat.add(t)
    for t in tables:
        assert t.checks, f"{t.name} has no checks"
        for r in t.runs:
            tt, tr = cat.resolve(t, r.name)  # every reference exists
            cfg = build_run_config(cat, tt, tr)
            assert isinstance(cfg, TrainConfig)
            # and the CPU-scaled variant builds too
            small = build_run_config(cat, tt, tr, scaling=Scaling(steps_scale=0.01, max_steps=50))
            assert small.steps <= 50


def test_every_real_training_yaml_builds_a_trainconfig():
    """Each run YAML holds TrainConfig keys only (what `jr-train fit/finetune --config` reads)."""
    from robustbench_jr.config import build_config, read_yaml
    from robustbench_jr.experiments.runner import finetune_defaults

    n = 0
    cat = Catalog(EXPERIMENTS)
    for t in validate_experiments(EXPERIMENTS):
        for r in t.runs:
            if r.config is None:
                continue
            layer = read_yaml(t.dir / r.config)
            base = {}
            if r.finetune_from:  # `jr-train finetune PARENT --config`: the defaults, the parent's model/dataset
                parent = build_run_config(cat, *cat.resolve(t, r.finetune_from))
                base = dict(finetune_defaults(), model=parent.model, dataset=parent.dataset)
            cfg = build_config(TrainConfig, base, layer, where=str(t.dir / r.config))
            assert cfg.steps is not None and cfg.seed == 0
            n += 1
    assert n >= 40


def test_acceptance_checks_of_the_issue_are_present():
    t1 = load_table(EXPERIMENTS / "hoffman-table1")
    ratio = [c for c in t1.checks if c.kind == "ratio" and c.acceptance]
    assert any(c.params["numerator"] == "none" and c.params["denominator"] == "jacobian" and c.params["min"] == 10
               for c in ratio)
    assert any(c.kind == "paper" and c.column == "acc" and c.params["tolerance"] == 1.0 and c.acceptance
               for c in t1.checks)
    assert t1.column("jnorm").metric == "jacobian_norm_normalized_input"
    jg = load_table(EXPERIMENTS / "jg-table3")
    assert any(c.kind == "ratio" and c.params["min"] == 1.4 and c.acceptance and c.column == "rho"
               for c in jg.checks)
    assert jg.column("rho").metric == "audit.deepfool.rho_adv"


def test_columns_a_run_never_measures_are_dashes_not_pending():
    from robustbench_jr.experiments.render import _cell, _not_measured

    assert _not_measured("audit.cw.d50", True, {"noise"})            # its audit skips CW
    assert not _not_measured("audit.noise.d50", True, {"noise"})
    assert not _not_measured("audit.noise_accuracy@0.5", True, {"noise"})
    assert _not_measured("audit.noise_accuracy@0.5", True, {"cw"})
    assert _not_measured("audit.deepfool.rho_adv", False, set())     # no audit at all
    assert not _not_measured("test_accuracy", False, set())
    assert _cell({"ours": None, "not_measured": True}, 2) == "–"
    assert _cell({"ours": None}, 2) == "pending"


def test_training_curves_figure_is_drawn_from_the_held_out_evaluations(tmp_path, data_root):
    root = tmp_path / "experiments" / "fig"
    for name, reg in (("n1", {"regularizer": "jr", "lam": 0.5}), ("exact", {"regularizer": "jr-exact", "lam": 0.5})):
        _write(root / f"{name}.yaml", dict(TINY, eval_every=4, reg_space="normalized", **reg))
    _write(root / "table.yaml", {
        "title": "curves", "report": False, "figures": ["training_curves"],
        "columns": [{"key": "acc", "label": "acc", "metric": "test_accuracy", "scale": 100}],
        "runs": [{"name": "n1", "label": "JR, n_proj = 1"}, {"name": "exact", "label": "JR, exact"}],
    })
    results = tmp_path / "results"
    res = _invoke([str(root), "--results", str(results), "--data-root", data_root, "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    png = results / "fig" / "training_curves.png"
    assert png.is_file() and (results / "fig" / "training_curves.svg").is_file()
    data = json.loads((results / "fig" / "table.json").read_text())
    assert data["figures"] == [str(png)]
    # one curve per run, each with the held-out points of its metrics.jsonl (steps 4 and 8)
    svg = (results / "fig" / "training_curves.svg").read_text()
    assert "JR, n_proj = 1" in svg and "JR, exact" in svg
    for run in ("n1", "exact"):
        pts = [json.loads(x) for x in (results / "fig" / run / "metrics.jsonl").read_text().splitlines()]
        assert [p["step"] for p in pts if "heldout_acc" in p] == [4, 8]


def test_check_details_show_enough_digits_to_tell_compared_values_apart():
    from robustbench_jr.experiments.render import _telling_digits

    assert _telling_digits([(64.13, 64.09)], 1) == 2          # "64.13 > 64.09", not "64.1 > 64.1"
    assert _telling_digits([(83.3, 80.1)], 1) == 1            # already apart: unchanged
    assert _telling_digits([(0.5, 0.5)], 2) == 2              # a true tie stays as it is
    assert _telling_digits([(1.00001, 1.0)], 1) == 4          # at most 3 more digits


def test_checks_are_gate_rules_decided_by_the_gate_evaluator(tmp_path):
    """Each check of table.yaml becomes a rule over the table's cells (COLUMN[RUN]) that the
    gate's evaluator decides: PASS/FAIL, PENDING while a number is missing, FAIL as soon as
    the numbers it has decide it."""
    from robustbench_jr.experiments.checks import evaluate_check
    from robustbench_jr.reports.gate import Rule

    root = _tiny_tables(tmp_path / "experiments")
    t = load_table(root / "t1")
    rules = {c.name: c.rule.text for c in t.checks}
    assert rules == {
        "ratio that holds": "jnorm[plain] / jnorm[jr] >= 0.0",
        "ratio that fails": "jnorm[plain] / jnorm[jr] >= 1000000000.0",
        "accuracy near the paper": "abs(acc[plain] - 50.0) <= 100.0 and abs(acc[jr] - 50.0) <= 100.0",
        "an order": "jnorm[jr] < jnorm[plain]",
    }
    assert all(isinstance(c.rule, Rule) for c in t.checks)

    def rows(plain_acc, jr_acc, plain_j, jr_j):
        return {"plain": {"cells": {"acc": {"ours": plain_acc, "paper": 50.0}, "jnorm": {"ours": plain_j, "paper": 30.0}}},
                "jr": {"cells": {"acc": {"ours": jr_acc, "paper": 50.0}, "jnorm": {"ours": jr_j, "paper": 1.0}}}}

    def results(r):
        return {c.name: evaluate_check(c, t, r) for c in t.checks}

    done = results(rows(97.0, 98.0, 30.0, 1.5))
    assert {k: v["status"] for k, v in done.items()} == {
        "ratio that holds": "PASS", "ratio that fails": "FAIL", "accuracy near the paper": "PASS", "an order": "PASS"}
    assert done["ratio that holds"]["detail"] == "plain / jr = 30.000 / 1.500 = 20.00 (≥ 0)"
    assert done["ratio that holds"]["value"] == 20.0 and done["an order"]["rule"] == "jnorm[jr] < jnorm[plain]"
    assert done["accuracy near the paper"]["detail"] == ("|ours − paper| ≤ 100: plain 97.0 vs 50 (+47.0); "
                                                          "jr 98.0 vs 50 (+48.0)")
    assert done["an order"]["detail"] == "jr 1.500 < plain 30.000"

    waiting = results(rows(None, 98.0, None, 1.5))
    assert {k: v["status"] for k, v in waiting.items()} == {
        "ratio that holds": "PENDING", "ratio that fails": "PENDING", "accuracy near the paper": "PENDING",
        "an order": "PENDING"}
    assert waiting["an order"]["detail"] == "jr < plain: waiting for numbers"
    assert waiting["accuracy near the paper"]["detail"] == "|ours − paper| ≤ 100: plain pending (paper 50); jr 98.0 vs 50 (+48.0)"
    # one run already off by more than the tolerance: FAIL whatever the missing number will be
    off = results(rows(None, 200.0, None, 1.5))["accuracy near the paper"]
    assert off["status"] == "FAIL" and off["detail"].endswith("jr 200.0 vs 50 (+150.0) ✗")
