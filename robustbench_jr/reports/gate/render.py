"""The gate's verdict as JUnit XML (for CI test reporters) and as plain text.

The rich verdict table of ``jr-eval gate`` is drawn by :mod:`robustbench_jr.cli.render`
from the same :class:`~.evaluator.GateResult`."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

from .evaluator import GateResult


def fmt(v) -> str:
    """A value as the verdicts show it (4 significant digits, – for none/NaN)."""
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def samples_text(ch) -> str:
    """``fgsm: 3 of 4 samples`` per search whose per-sample rows a check's metrics read."""
    return ", ".join(f"{s}: {k} of {'?' if n is None else n} samples" for s, (k, n) in (ch.samples or {}).items())


def junit_xml(res: GateResult) -> str:
    """JUnit XML: one test case per rule × model, a <failure> for each failed check."""
    n_fail = sum(not c.passed for c in res.checks)
    suites = ET.Element("testsuites", name="jr-eval gate", tests=str(len(res.checks)), failures=str(n_fail),
                        errors="0", time="0")
    suite = ET.SubElement(suites, "testsuite", name=f"robustness gate: {res.run}", tests=str(len(res.checks)),
                          failures=str(n_fail), errors="0", skipped="0", time="0")
    props = ET.SubElement(suite, "properties")
    for k, v in (("run_dir", res.run_dir), ("baseline", res.baseline_dir or ""), ("bound", res.policy.describe_bound()),
                 ("complete", "false" if res.incomplete else "true"),
                 ("allow_partial", "true" if res.allow_partial else "false"),
                 ("incomplete", "; ".join(res.incomplete)),
                 ("confidence", "" if res.policy.confidence is None else str(res.policy.confidence)),
                 ("bootstrap", str(res.policy.bootstrap)), ("seed", str(res.policy.seed)),
                 ("decide", res.policy.decision),
                 ("allow_mismatch", "true" if res.policy.allow_mismatch else "false"),
                 ("baseline_comparable", "false" if res.mismatches else "true"),
                 ("baseline_differences", "; ".join(res.mismatches))):
        ET.SubElement(props, "property", name=k, value=v)
    for ch in res.checks:
        tc = ET.SubElement(suite, "testcase", classname=f"robustness.{ch.model}", name=ch.name or ch.rule, time="0")
        detail = (f"model {ch.model}: {ch.rule}\nvalue {fmt(ch.lhs)} {ch.op} threshold {fmt(ch.rhs)}\n{ch.message}"
                  f"\n{res.policy.describe_bound()}")
        if ch.baseline_model is not None and res.mismatches:
            detail += "\nbaseline NOT comparable (allowed by --allow-mismatch):\n" + "\n".join(
                f"  - {d}" for d in res.mismatches)
        if res.incomplete:
            detail += "\nunfinished run judged on the samples stored so far (--allow-partial): " + (
                samples_text(ch) or "model-level metrics only")
        if ch.passed:
            ET.SubElement(tc, "system-out").text = detail
        else:
            f = ET.SubElement(tc, "failure", message=f"{ch.rule}: {ch.message}", type="RobustnessGateFailure")
            f.text = detail
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


def text_report(res: GateResult) -> str:
    """The verdict as plain text: one line per check, then the decision rule."""
    lines = [f"Robustness gate {'PASS' if res.passed else 'FAIL'} — run {res.run}"]
    for ch in res.checks:
        interval = f" ({ch.lhs_interval[0]:.4g}–{ch.lhs_interval[1]:.4g})" if ch.lhs_interval else ""
        bound = f", bound {ch.bound:+.3g}" if ch.bound is not None else ""
        lines.append(f"{'pass' if ch.passed else 'FAIL'}  {ch.model}: {ch.rule}  value {fmt(ch.lhs)}{interval} "
                     f"{ch.op} {fmt(ch.rhs)}{bound} — {ch.message}")
    if res.mismatches:
        lines.append("Baseline NOT comparable (allowed by --allow-mismatch):")
        lines += [f"  - {d}" for d in res.mismatches]
    if res.incomplete:
        lines.append("Unfinished run judged on the samples stored so far (--allow-partial):")
        lines += [f"  - {d}" for d in res.incomplete]
        lines += [f"  {ch.model}: {ch.rule}: {samples_text(ch)}" for ch in res.checks if ch.samples]
    lines.append(f"Decision: {res.policy.describe_bound()}")
    return "\n".join(lines) + "\n"
