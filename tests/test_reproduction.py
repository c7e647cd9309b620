"""Reproduction numbers checkable without retraining (issue #15, item 8): every table records
the commit, each run's config hash and its card's metrics; `jr-train table --docs DIR` copies
table.json beside table.md; `jr-train table --verify` re-checks a recorded table.json against
the cards present; the published tables' table.json files are committed under docs/reproduction/."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from robustbench_jr.cli.train import main as jr_train
from robustbench_jr.config import to_dict
from robustbench_jr.experiments.configs import build_run_config
from robustbench_jr.experiments.spec import Catalog, load_table, table_dirs
from helpers_data import fake_mnist_root

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs" / "reproduction"
TINY = dict(model="lenet", dataset="mnist", batch_size=50, steps=6, lr=0.05, lr_step=3, eval_every=0,
            eval_samples=50, save_every=3, log_every=3, seed=0)


def _write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("repro")
    data_root = str(fake_mnist_root(tmp / "data"))
    t = tmp / "experiments" / "tiny"
    _write(t / "plain.yaml", dict(TINY, regularizer="none"))
    _write(t / "table.yaml", {
        "title": "tiny", "report": False,
        "columns": [{"key": "acc", "label": "Test accuracy (%)", "metric": "test_accuracy", "scale": 100,
                     "digits": 1},
                    {"key": "jn", "label": "‖J‖_F", "metric": "jacobian_norm", "digits": 3},
                    {"key": "rho", "label": "ρ̂ noise", "metric": "audit.noise.rho_adv", "digits": 3}],
        "runs": [{"name": "plain", "label": "Plain", "audit": {"attacks": ["noise"], "n": 4, "batch_size": 4,
                                                                "noise_sigmas": [0.0]}}],
    })
    results, docs = tmp / "results", tmp / "docs"
    r = CliRunner().invoke(jr_train, ["table", str(t), "--results", str(results), "--data-root", data_root,
                                      "--device", "cpu", "--quiet", "--docs", str(docs)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"table": t, "results": results, "docs": docs, "data_root": data_root}


def verify(t, *args):
    return CliRunner().invoke(jr_train, ["table", str(t["table"]), "--results", str(t["results"]), "--verify",
                                         *map(str, args)])


def test_table_records_commit_config_hashes_and_card_metrics(trained):
    rec = json.loads((trained["docs"] / "tiny.json").read_text())
    assert (trained["docs"] / "tiny.md").read_text() == (trained["results"] / "tiny" / "table.md").read_text()
    prov = rec["provenance"]
    assert len(prov["commit"]) == 40 and isinstance(prov["dirty"], bool) and prov["package_version"]
    (run,) = rec["runs"]
    from robustbench_jr.experiments.configs import config_hash
    card = yaml.safe_load((trained["results"] / "tiny" / "plain" / "card.yaml").read_text())
    assert run["card_metrics"] == card["metrics"]
    assert run["config_hash"] == run["card_config_hash"] == config_hash(card["training"])
    assert len(run["weights_sha256"]) == 64 and run["audit_config_hash"]
    md = (trained["docs"] / "tiny.md").read_text()
    assert f"commit `{prov['commit']}`" in md and "## Provenance" in md and run["config_hash"] in md


def test_verify_against_the_cards_present(trained, tmp_path):
    rec_path = trained["docs"] / "tiny.json"
    r = verify(trained, "--against", rec_path)
    assert r.exit_code == 0, r.output
    assert "verified" in r.output and "1 of 1 runs checked" in " ".join(r.output.split())
    # a recorded number that the card does not back: exit 1, the difference named
    rec = json.loads(rec_path.read_text())
    rec["runs"][0]["card_metrics"]["test_accuracy"] += 0.01
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rec))
    r = verify(trained, "--against", bad)
    assert r.exit_code == 1 and "differs" in r.output and "test_accuracy" in r.output
    # a config the card was not trained with
    rec = json.loads(rec_path.read_text())
    rec["runs"][0]["card_config_hash"] = "0" * 16
    bad.write_text(json.dumps(rec))
    assert verify(trained, "--against", bad).exit_code == 1
    # numbers as published (rounded), marked reconstructed: half a unit of the shown digit
    rec = json.loads(rec_path.read_text())
    rec["reconstructed"] = {"from": "tiny.md"}
    rec["runs"][0]["card_metrics"] = None
    for key, digits in (("acc", 1), ("jn", 3), ("rho", 3)):
        cell = rec["runs"][0]["cells"][key]
        cell["ours"] = round(cell["ours"], digits)
    bad.write_text(json.dumps(rec))
    assert verify(trained, "--against", bad).exit_code == 0
    rec["runs"][0]["cells"]["jn"]["ours"] += 0.002
    bad.write_text(json.dumps(rec))
    r = verify(trained, "--against", bad)
    assert r.exit_code == 1 and "‖J‖_F" in r.output
    # no cards here: nothing verified, which is not a pass
    r = CliRunner().invoke(jr_train, ["table", str(trained["table"]), "--results", str(tmp_path / "none"),
                                      "--verify", "--against", str(rec_path)])
    assert r.exit_code == 1 and "not checked" in r.output


def test_published_tables_have_their_table_json():
    """Every published docs/reproduction/<table>.md has its table.json beside it, for the same
    table, with each run's training-config hash equal to the one the experiment spec resolves."""
    from robustbench_jr.experiments.configs import config_hash
    exp = REPO / "experiments"
    cat = Catalog(exp)
    specs = {d.name: load_table(d) for d in table_dirs(exp)}
    for t in specs.values():
        cat.add(t)
    published = sorted(p for p in DOCS.glob("*.md") if p.stem in specs)
    assert published, "no published tables under docs/reproduction"
    for md in published:
        js = md.with_suffix(".json")
        assert js.is_file(), f"{js} missing: run `jr-train table experiments/{md.stem} --docs docs/reproduction`"
        rec = json.loads(js.read_text(encoding="utf-8"))
        assert rec["table"] == md.stem and rec["runs"]
        assert rec["provenance"]["commit"] or (rec.get("reconstructed") or {}).get("commit")
        t = specs[md.stem]
        for run in rec["runs"]:
            tt, tr = cat.resolve(t, run["name"])
            assert run["config_hash"] == config_hash(to_dict(build_run_config(cat, tt, tr))), (md.stem, run["name"])
            assert any(c.get("ours") is not None for c in run["cells"].values()), (md.stem, run["name"])
