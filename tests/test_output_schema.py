"""One output contract (issue 18): `jr-eval run --json`, the report's summary.json and the gate's
JSON are documents of one versioned JSON Schema (robustbench_jr/evaluation/schema/, package data),
built from the same blocks, with every non-finite number written as null.

A tiny real audit (bundled lenet-mnist, bundled MNIST, N = 8, FGSM and DeepFool) produces all
three; each is validated against the schema and checked for what the contract promises: the
budget, every search's resolved config, protocol and N (stored and expected)."""

from __future__ import annotations

import copy
import json
import shutil
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

jsonschema = pytest.importorskip("jsonschema", reason="pip install 'robustbench-jr[test]' (jsonschema)")

from robustbench_jr.cli.eval import main as jr_eval  # noqa: E402
from robustbench_jr.evaluation import ResultStore, json_document, output, summarize_run  # noqa: E402

N = 8
SEARCHES = ["fgsm", "deepfool"]


@pytest.fixture(scope="module")
def validator():
    schema = output.load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$id"] == output.SCHEMA_ID and schema["$schema"].endswith("/draft/2020-12/schema")
    return jsonschema.Draft202012Validator(schema)


def _invoke(*args):
    res = CliRunner().invoke(jr_eval, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """The three documents of one tiny real audit (and the run directory)."""
    t = tmp_path_factory.mktemp("schema")
    run = t / "run"
    audit = json.loads(_invoke("run", "lenet-mnist", "--n", N, "--attacks", ",".join(SEARCHES), "--source", "bundled",
                               "--device", "cpu", "--threads", 1, "--out", run, "--quiet", "--json").stdout)
    report = json.loads(_invoke("report", run, "--out", t / "report", "--json").stdout)
    gate_file = t / "gate.json"
    _invoke("gate", run, "--rule", "rho_adv[fgsm] >= 0", "--rule", "success_rate[deepfool] >= 0.5",
            "--json-out", gate_file)
    return {"run": run, "audit": audit, "report": report, "report_file": t / "report" / "summary.json",
            "gate": json.loads(gate_file.read_text(encoding="utf-8"))}


def _assert_valid(validator, doc):
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    assert not errors, "\n".join(errors[:10])


def _assert_search_blocks(model: dict, run_dir: str):
    assert list(model["searches"]) == SEARCHES
    for name, s in model["searches"].items():
        assert s["search"] == name and s["n"] == s["n_expected"] == N and s["complete"] is True
        assert s["protocol"] == "paper" and isinstance(s["config"], dict) and s["config"], (run_dir, name)
    assert model["searches"]["deepfool"]["config"]["overshoot"] == 0.02  # the resolved config, not the overrides
    best = model["best"]
    assert best["search"] == "best" and best["over"] == SEARCHES and best["config"] is None
    assert sum(best["found_by"].values()) == N and best["n"] == N


@pytest.mark.parametrize("kind", ["audit", "report", "gate"])
def test_each_document_is_valid_and_states_budget_configs_and_n(validator, docs, kind):
    doc = docs[kind]
    _assert_valid(validator, doc)
    assert doc["schema"] == f"robustbench-jr/{kind}/v1" and doc["schema_version"] == output.SCHEMA_VERSION == 1
    runs = [doc] if kind == "audit" else doc["runs"]  # the audit document is the run block itself
    for run in runs:
        assert run["budget"] == {"name": "paper", "overrides": {}} and run["seed"] == 0 and run["complete"] is True
        (model,) = run["models"]
        assert model["name"] == "lenet-mnist" and model["n"] == N and model["dataset"] == "mnist"
        _assert_search_blocks(model, run["run_dir"])
    if kind == "gate":
        assert [r["role"] for r in doc["runs"]] == ["run"] and doc["passed"] is True
    if kind == "report":  # the file is the document `report --json` prints; its table rows are search blocks
        assert json.loads(docs["report_file"].read_text(encoding="utf-8")) == doc
        assert [r["search"] for r in doc["searches"]] == SEARCHES + ["best"]
        assert all(r["n_expected"] == N and "config" in r for r in doc["searches"])


def test_the_three_documents_share_their_blocks(docs):
    """The same run gives the same model block in all three (the report and the gate add label and run)."""
    audit_model = docs["audit"]["models"][0]
    for kind in ("report", "gate"):
        m = dict(docs[kind]["runs"][0]["models"][0])
        assert m.pop("label") == "lenet-mnist" and m.pop("run") == "run" and "architecture" in m
        m.pop("architecture")
        assert m == audit_model, kind


def test_a_gate_with_a_baseline_carries_both_run_blocks(validator, docs, tmp_path):
    out = tmp_path / "gate.json"
    _invoke("gate", docs["run"], "--baseline", docs["run"], "--rule", "rho_adv[fgsm] >= 0.9 * baseline",
            "--json-out", out)
    doc = json.loads(out.read_text(encoding="utf-8"))
    _assert_valid(validator, doc)
    assert [r["role"] for r in doc["runs"]] == ["run", "baseline"] and doc["baseline"] == str(docs["run"])
    assert doc["runs"][1]["models"][0]["searches"]["fgsm"] == doc["runs"][0]["models"][0]["searches"]["fgsm"]


def test_in_memory_audit_document_is_valid(validator, docs):
    """``AuditResult.to_json()`` (no run directory) is the same kind of document."""
    import robustbench_jr
    from robustbench_jr.data import bundled_mnist
    from robustbench_jr.models import load_checkpoint

    model, _ = load_checkpoint("lenet-mnist")
    data = bundled_mnist()
    x, y = data.pixels(list(range(4))), data.labels[:4]
    doc = json.loads(robustbench_jr.audit(model, x, y, searches="fgsm", dataset="mnist", device="cpu").to_json())
    _assert_valid(validator, doc)
    assert doc["run_dir"] is None and doc["models"][0]["searches"]["fgsm"]["n"] == 4


def test_non_finite_numbers_are_null(validator, docs):
    """NaN and ±inf are written as null, never as the bare tokens NaN/Infinity."""
    text = output.dumps(output.document("gate", {"a": float("nan"), "b": [float("inf"), -float("inf")],
                                                 "c": np.float64("nan"), "d": {"e": np.array([1.0, np.inf])}}))
    for token in ("NaN", "Infinity"):
        assert token not in text
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-finite token {c} written"))
    assert data["a"] is None and data["b"] == [None, None] and data["c"] is None and data["d"]["e"] == [1.0, None]
    # a real case: a search that fooled nothing has undefined ρ̂_adv and median L2 (null), n_rho = 0
    summary = copy.deepcopy(_summary(docs["run"]))
    rows = {"l2": np.full(N, np.inf), "x_norm": np.ones(N), "fooled": np.zeros(N, bool)}
    summary["models"][0]["searches"]["fgsm"].update(output.search_numbers(rows))
    doc = json_document(summary)
    text = json.dumps(doc, allow_nan=False)  # raises on any NaN/inf left in the document
    fgsm = json.loads(text)["models"][0]["searches"]["fgsm"]
    assert fgsm["rho_adv"] is None and fgsm["median_l2"] is None and fgsm["not_fooled"] == N and fgsm["n_rho"] == 0
    _assert_valid(validator, doc)


def _summary(run_dir):
    with ResultStore(run_dir, readonly=True) as st:
        return summarize_run(st)


def test_a_partial_search_shows_its_n(validator, docs, tmp_path):
    """An unfinished run: the search that lost rows says n < n_expected and complete: false."""
    run = tmp_path / "partial"
    shutil.copytree(docs["run"], run)
    con = sqlite3.connect(run / "results.sqlite")
    with con:
        con.execute("DELETE FROM results WHERE search='deepfool' AND sample_id >= 3")
    con.close()
    doc = json_document(_summary(run))
    _assert_valid(validator, doc)
    df = doc["models"][0]["searches"]["deepfool"]
    assert (df["n"], df["n_expected"], df["complete"]) == (3, N, False)
    assert doc["complete"] is False and any("deepfool has 3 of 8 samples" in r for r in doc["incomplete"])
    assert doc["models"][0]["best"]["complete"] is False


@pytest.mark.parametrize("kind, path", [
    ("audit", ["models", 0, "searches", "fgsm", "n_expected"]),
    ("audit", ["budget"]),
    ("audit", ["schema_version"]),
    ("report", ["runs", 0, "models", 0, "searches", "deepfool", "config"]),
    ("report", ["searches", 0, "n"]),
    ("gate", ["runs"]),
    ("gate", ["checks", 0, "margin"]),
])
def test_a_document_missing_a_required_field_fails(validator, docs, kind, path):
    doc = copy.deepcopy(docs[kind])
    _assert_valid(validator, doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    assert not validator.is_valid(doc), path


def test_wrong_kind_version_or_type_fails(validator, docs):
    doc = copy.deepcopy(docs["audit"])
    doc["schema"] = "robustbench-jr/audit/v2"
    assert not validator.is_valid(doc)
    doc = copy.deepcopy(docs["audit"])
    doc["models"][0]["searches"]["fgsm"]["rho_adv"] = "inf"  # the old summary.json spelling of ∞
    assert not validator.is_valid(doc)
    doc = copy.deepcopy(docs["gate"])
    doc["schema"] = "robustbench-jr/report/v1"  # a gate verdict is not a report
    assert not validator.is_valid(doc)


def test_an_unexpected_error_in_run_is_one_line_and_exit_2(monkeypatch):
    import robustbench_jr.cli.eval as ev

    def boom(summary):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(ev, "run_audit", lambda *a, **k: {"run_dir": "x", "models": [], "warnings": []})
    monkeypatch.setattr(ev, "json_document", boom)
    monkeypatch.delenv("JR_DEBUG", raising=False)
    res = CliRunner().invoke(jr_eval, ["run", "some-ckpt", "--json"])
    assert res.exit_code == 2
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(" ".join(lines).split("RuntimeError")) == 2 and "boom second line" in " ".join(lines), res.stderr
