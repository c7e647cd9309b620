"""The gate and reports know when a run is unfinished (issue #17, item 2).

A gate on a run that is still running or was interrupted (meta status not ``complete``), or
whose ruled search has fewer rows than the run's samples or fewer finished batches than it
has batches, exits 2 saying so; with ``--allow-partial`` it judges the stored samples and
says how many each metric covers (table, JSON, JUnit). A report marks incomplete searches."""

from __future__ import annotations

import json
import shutil
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from robustbench_jr.cli.eval import main as jr_eval
from robustbench_jr.evaluation.store import ResultStore

RULE = ["--rule", "rho_adv[fgsm] >= 0"]


def _sql(run: Path, *statements) -> Path:
    con = sqlite3.connect(run / "results.sqlite")
    with con:
        for st, args in statements:
            con.execute(st, args)
    con.close()
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished audit (fgsm, 4 samples in 2 batches) and copies made unfinished in each way."""
    t = tmp_path_factory.mktemp("unfinished")
    done = t / "done"
    r = CliRunner().invoke(jr_eval, ["run", "lenet-mnist", "--source", "bundled", "--attacks", "fgsm", "--n", "4",
                                     "--batch-size", "2", "--quiet", "--out", str(done)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = {"done": done}
    for name in ("running", "rows", "batches", "empty"):
        shutil.copytree(done, t / name)
        out[name] = t / name
    status = ("INSERT OR REPLACE INTO meta VALUES ('status', ?)", (json.dumps("running"),))
    _sql(out["running"], status)  # interrupted (or still writing), every row there
    # the second batch of fgsm lost (a run stopped after its first batch)
    first = "(SELECT MIN(batch_key) FROM batches WHERE search='fgsm')"
    _sql(out["rows"], ("DELETE FROM results WHERE search='fgsm' AND sample_id >= 2", ()),
         (f"DELETE FROM batches WHERE search='fgsm' AND batch_key != {first}", ()))
    _sql(out["batches"], (f"DELETE FROM batches WHERE search='fgsm' AND batch_key = {first}", ()))
    _sql(out["empty"], status, ("DELETE FROM results", ()), ("DELETE FROM batches", ()))  # 0 of 4 rows
    return out


def gate(*args):
    return CliRunner().invoke(jr_eval, ["gate", *map(str, args)])


def test_completeness_of_the_stores(runs):
    with ResultStore(runs["done"], readonly=True) as st:
        c = st.completeness()
    assert c == {"complete": True, "reasons": [], "coverage": {"lenet-mnist": {"fgsm": [4, 4]}}}
    expected = {"running": "status is 'running'", "rows": "fgsm has 2 of 4 samples",
                "batches": "fgsm has 1 of 2 batches", "empty": "fgsm has 0 of 4 samples"}
    for name, needle in expected.items():
        with ResultStore(runs[name], readonly=True) as st:
            c = st.completeness()
        assert not c["complete"] and any(needle in r for r in c["reasons"]), (name, c)


@pytest.mark.parametrize("name", ["running", "rows", "batches", "empty"])
def test_gate_refuses_an_unfinished_run(runs, name):
    res = gate(runs[name], *RULE)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not a finished audit" in lines[0] and "--allow-partial" in lines[0], res.stderr


def test_gate_refuses_an_unfinished_baseline(runs):
    res = gate(runs["done"], "--rule", "rho_adv[fgsm] >= 0.5 * baseline", "--baseline", runs["running"])
    assert res.exit_code == 2 and "baseline" in res.stderr and "not a finished audit" in res.stderr


def test_gate_on_a_finished_run_says_it_is_complete(runs, tmp_path):
    res = gate(runs["done"], *RULE, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["completeness"] == {"complete": True, "allow_partial": False, "incomplete": []}
    assert doc["checks"][0]["samples"] == {"fgsm": [4, 4]} and doc["checks"][0]["partial"] is False


def test_allow_partial_judges_and_says_how_many_samples(runs, tmp_path):
    junit = tmp_path / "gate.xml"
    res = gate(runs["rows"], *RULE, "--rule", "clean_accuracy >= 0", "--allow-partial", "--json",
               "--junit", junit)
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    comp = doc["completeness"]
    assert comp["complete"] is False and comp["allow_partial"] is True
    assert any("fgsm has 2 of 4 samples" in r for r in comp["incomplete"])
    fg, clean = doc["checks"]
    assert fg["samples"] == {"fgsm": [2, 4]} and fg["partial"] is True
    assert clean["samples"] == {} and clean["partial"] is False
    # the table says it (stderr), and the JUnit XML
    assert "Samples" in res.stderr and "fgsm 2 of 4" in res.stderr and "--allow-partial" in res.stderr
    root = ET.parse(junit).getroot()
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["complete"] == "false" and props["allow_partial"] == "true"
    assert "fgsm has 2 of 4 samples" in props["incomplete"]
    out = [tc.find("system-out").text for tc in root.iter("testcase")]
    assert "fgsm: 2 of 4 samples" in out[0] and "--allow-partial" in out[0]


def test_report_marks_incomplete_searches(runs, tmp_path):
    res = CliRunner().invoke(jr_eval, ["report", str(runs["rows"]), "--out", str(tmp_path / "rep"), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    run = doc["runs"][0]
    assert run["complete"] is False and any("fgsm has 2 of 4 samples" in r for r in run["incomplete"])
    rows = {r["search"]: r for r in doc["searches"]}
    assert rows["fgsm"]["complete"] is False and rows["fgsm"]["n"] == 2 and rows["fgsm"]["n_expected"] == 4
    md = (tmp_path / "rep" / "summary.md").read_text()
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "(partial: 2 of 4 samples)" in md and "(partial: 2 of 4 samples)" in html
    assert "is not finished" in res.stderr
    # a finished run: nothing marked
    res = CliRunner().invoke(jr_eval, ["report", str(runs["done"]), "--out", str(tmp_path / "rep2"), "--json"])
    doc = json.loads(res.stdout)
    assert doc["runs"][0]["complete"] is True and all(r["complete"] for r in doc["searches"])
    assert "(partial" not in (tmp_path / "rep2" / "summary.md").read_text()
