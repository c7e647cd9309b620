"""Evaluating rules: values (point estimate plus bootstrap replicates), the decision of a
rule, and the gate's evaluation of a policy on a stored run.

:func:`judge` is the one place where a rule is decided. It reads metric values through
a resolver (``Metric`` node → :class:`Value`), so the gate (stored runs, bootstrap) and
the experiment tables (table cells, point values, possibly still missing) share it:

* a value may be *missing* (``Value(None)``: a number not measured yet); anything
  computed from it is missing and a comparison that needs it is ``pending``;
* a rule is a conjunction of comparisons, combined like Kleene's three-valued "and":
  ``fail`` when some comparison fails, else ``pending`` when some is pending, else ``pass``;
* a comparison whose point value is NaN (e.g. ρ̂_adv with nothing fooled) fails as undefined;
* with bootstrap replicates and a confidence, the rule is decided on a one-sided
  percentile bound of its margin (the smallest margin of its comparisons), see
  :mod:`.policy`.

Bootstrap seeds come from :func:`robustbench_jr.runtime.derive_seed` (the policy's seed,
the run, the model and what is resampled).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ...errors import ConfigError, InputError
from ...evaluation import metrics, output
from ...evaluation.best import BEST
from ...runtime import derive_seed
from ..runs import ModelData, RunData, load_run
from ..tables import run_block_of
from .policy import Policy
from .rules import BaselineSame, BinOp, Comparison, Func, Metric, Neg, Num, Rule, walk

UNDEFINED = "undefined: the metric has no samples to average (e.g. nothing fooled)"
PASS, FAIL, PENDING = "pass", "fail", "pending"


# ---------------------------------------------------------------- values ----
@dataclass
class Value:
    """A point estimate (None: missing) and, when resampled, its bootstrap replicates ``[B]``."""

    point: Optional[float]
    boot: Optional[np.ndarray] = None

    @property
    def missing(self) -> bool:
        return self.point is None


def combine(fn: Callable, *vals: Value) -> Value:
    """``fn`` applied to the points and, where any value is resampled, to the replicates."""
    if any(v.missing for v in vals):
        return Value(None)
    with np.errstate(all="ignore"):
        p = float(fn(*(np.float64(v.point) for v in vals)))
        boots = [v.boot for v in vals if v.boot is not None]
        if not boots:
            return Value(p)
        B = len(boots[0])
        return Value(p, np.asarray(fn(*(v.boot if v.boot is not None else np.full(B, v.point) for v in vals)),
                                   dtype=np.float64))


_BINOPS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}
_FUNCS = {"min": lambda *a: np.minimum.reduce(a), "max": lambda *a: np.maximum.reduce(a),
          "mean": lambda *a: np.add.reduce(a) / len(a), "abs": np.abs}

#: resolves a ``Metric`` node; ``lhs`` is the comparison's left-hand metric (for bare ``baseline``)
Resolver = Callable[[Metric, Optional[Metric]], Value]


def value(node, resolve: Resolver, lhs: Optional[Metric] = None) -> Value:
    """The value of an expression node."""
    if isinstance(node, Num):
        return Value(node.value)
    if isinstance(node, Neg):
        return combine(np.negative, value(node.operand, resolve, lhs))
    if isinstance(node, BinOp):
        return combine(_BINOPS[node.op], value(node.left, resolve, lhs), value(node.right, resolve, lhs))
    if isinstance(node, Func):
        return combine(_FUNCS[node.name], *(value(a, resolve, lhs) for a in node.args))
    if isinstance(node, (Metric, BaselineSame)):
        return resolve(node, lhs)
    raise TypeError(node)  # pragma: no cover


def one_sided_bound(samples: np.ndarray, confidence: float, side: str) -> float:
    """Percentile bootstrap bound: ``side='lower'`` → the (1−c) quantile, ``'upper'`` → the c quantile."""
    s = np.asarray(samples, dtype=np.float64)
    s = s[~np.isnan(s)]
    if s.size == 0:
        return float("nan")
    q = 1.0 - confidence if side == "lower" else confidence
    return float(np.quantile(s, q))


# -------------------------------------------------------------- decision ----
@dataclass
class Outcome:
    """One comparison of a rule, evaluated."""

    comparison: Comparison
    lhs: Value
    rhs: Value
    margin: Value  # lhs − rhs for > / >=, rhs − lhs for < / <=
    status: str  # pass | fail | pending
    message: str = ""


@dataclass
class Judgement:
    """A rule, decided: ``status``, the comparisons and the numbers the decision used."""

    status: str
    outcomes: list[Outcome]
    binding: Optional[Outcome]  # the comparison with the smallest margin (or the first pending one)
    margin: Optional[float] = None
    bound: Optional[float] = None
    lhs_interval: Optional[tuple] = None
    message: str = ""


def _compare(c: Comparison, resolve: Resolver) -> Outcome:
    lhs_metric = c.lhs if isinstance(c.lhs, Metric) else None
    lv, rv = value(c.lhs, resolve, lhs_metric), value(c.rhs, resolve, lhs_metric)
    sign = 1.0 if c.op in (">=", ">") else -1.0
    margin = combine(lambda a, b: sign * (a - b), lv, rv)
    if margin.missing:
        return Outcome(c, lv, rv, margin, PENDING)
    if math.isnan(margin.point):
        return Outcome(c, lv, rv, margin, FAIL, UNDEFINED)
    ok = margin.point > 0 if c.strict else margin.point >= 0
    return Outcome(c, lv, rv, margin, PASS if ok else FAIL,
                   f"{lv.point:.4g} {c.op} {rv.point:.4g}" + ("" if ok else " is false"))


def judge(rule: Rule, resolve: Resolver, decision: str = "point", confidence: Optional[float] = None) -> Judgement:
    """Decide ``rule`` with metric values from ``resolve`` (see the module docstring)."""
    outs = [_compare(c, resolve) for c in rule.comparisons]
    known = [o for o in outs if o.status != PENDING]
    statuses = {o.status for o in outs}
    if not known:
        return Judgement(PENDING, outs, outs[0], message="waiting for numbers")
    binding = min(known, key=lambda o: (not math.isnan(o.margin.point), o.margin.point))
    j = Judgement(FAIL if FAIL in statuses else PENDING if PENDING in statuses else PASS, outs, binding,
                  margin=min(o.margin.point for o in known) if not any(math.isnan(o.margin.point) for o in known)
                  else float("nan"))
    undefined = [o for o in known if o.message == UNDEFINED]
    resampled = [o for o in known if o.margin.boot is not None]
    if confidence and binding.lhs.boot is not None and binding.margin.boot is not None:
        j.lhs_interval = (one_sided_bound(binding.lhs.boot, 0.5 + confidence / 2, "lower"),
                          one_sided_bound(binding.lhs.boot, 0.5 + confidence / 2, "upper"))
    if undefined:
        j.status, j.message = FAIL, UNDEFINED
    elif decision != "point" and resampled and j.status != PENDING:
        B = len(resampled[0].margin.boot)
        joint = np.minimum.reduce([o.margin.boot if o.margin.boot is not None else np.full(B, o.margin.point)
                                   for o in known])
        side = "upper" if decision == "tolerant" else "lower"
        j.bound = one_sided_bound(joint, confidence, side)
        strict = any(o.comparison.strict for o in known)
        ok = (j.bound > 0 if strict else j.bound >= 0) and not math.isnan(j.bound)
        j.status = PASS if ok else FAIL
        j.message = f"margin {j.margin:+.4g}, {side} {100 * confidence:g}% bound {j.bound:+.4g}" + (
            " ≥ 0" if ok else " < 0")
    else:
        j.message = " and ".join(o.message for o in known)
    return j


# ------------------------------------------------------------ bootstrap ----
class Sampler:
    """Seeded, cached bootstrap resamples per (run, model): one resample of the samples per
    model shared by all its searches (rules mixing searches stay paired), binomial draws for
    stored accuracies."""

    def __init__(self, reps: int, seed: int):
        self.reps, self.seed = reps, seed
        self.cache: dict = {}

    def rng(self, *key) -> np.random.Generator:
        return np.random.default_rng(derive_seed(self.seed, "gate-bootstrap", *key))

    def indices(self, tag: str, m: ModelData, search: str) -> np.ndarray:
        """``[B, N]`` resampling indices (with replacement) of the search's samples."""
        ref = next(iter(m.results.values()))["sample_id"]
        ids = m.results[search]["sample_id"]
        same = len(ids) == len(ref) and np.array_equal(ids, ref)
        key = (tag, m.run.name, m.name, "samples", "__all__" if same else search)
        if key not in self.cache:
            n = len(ids)
            self.cache[key] = (self.rng(*key).integers(0, n, size=(self.reps, n)) if n
                               else np.zeros((self.reps, 0), dtype=np.int64))
        return self.cache[key]

    def binomial(self, tag: str, m: ModelData, what: str, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        """``[B, ...]`` accuracies drawn as binomial(n, p) / n."""
        key = (tag, m.run.name, m.name, what)
        if key not in self.cache:
            p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
            n = np.maximum(np.asarray(n, dtype=np.int64), 1)
            self.cache[key] = self.rng(*key).binomial(n, p, size=(self.reps,) + p.shape) / n
        return self.cache[key]


def model_stats(m: ModelData, sampler: Optional[Sampler] = None, tag: str = "run") -> metrics.ModelStats:
    """What the audit stored for ``m`` as registry input; with ``sampler``, the accuracies
    are bootstrap replicates (``[B]``, ``[B, K]``) and ‖J‖_F stays exact."""
    acc, n = m.clean_acc(), m.clean_n()
    sig = np.array([s for s, _, _ in m.noise]) if m.noise else None
    nacc = np.array([a for _, a, _ in m.noise]) if m.noise else None
    if sampler is not None:
        acc = None if acc is None else sampler.binomial(tag, m, "clean", acc, n or 1)
        nacc = None if nacc is None else sampler.binomial(tag, m, "noise", nacc, [k for _, _, k in m.noise])
    return metrics.ModelStats(acc, m.jacobian_norm, sig, nacc)


def metric_value(mt: Metric, m: ModelData, sampler: Optional[Sampler], tag: str) -> Value:
    """The registry metric ``mt`` of model ``m``: its point estimate and, with ``sampler``,
    the same function on every bootstrap replicate at once."""
    d = metrics.get(mt.name)
    try:
        if d.level == "model":
            point = float(d(model_stats(m), *mt.args))
            if sampler is None:
                return Value(point)
            boot = d(model_stats(m, sampler, tag), *mt.args)
            return Value(point, boot if boot.ndim else None)
        search, args = mt.args[0], mt.args[1:]
        if search not in m.results:
            raise InputError(f"{m.run.name}: model {m.name} has no results for search {search!r}; "
                             f"stored searches: {', '.join(m.results) or 'none'}")
        s = metrics.Samples.of(m.results[search], m.n_inputs)
        point = float(d(s, *args))
        if sampler is None:
            return Value(point)
        return Value(point, d(s.take(sampler.indices(tag, m, search)), *args))
    except InputError as exc:
        if str(exc).startswith(f"{m.run.name}: "):
            raise
        raise InputError(f"{m.run.name}: model {m.name}: {exc}") from None


# ------------------------------------------------------------------ gate ----
@dataclass
class Check:
    rule: str
    name: Optional[str]
    model: str
    run: str
    verdict: str  # "pass" | "fail"
    lhs: float
    rhs: float
    op: str
    margin: float
    bound: Optional[float] = None  # one-sided bound of the margin used for the decision
    lhs_interval: Optional[tuple] = None  # two-sided interval of the left-hand side at the confidence
    message: str = ""
    baseline_model: Optional[str] = None
    #: the samples the rule's per-sample metrics cover, per search: [stored, of the audit's]
    #: (filled in for every check; below the audit's count only on an unfinished run judged
    #: with ``allow_partial``)
    samples: Optional[dict] = None

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def partial(self) -> bool:
        return any(n is not None and k < n for k, n in (self.samples or {}).values())

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()} | {"passed": self.passed, "partial": self.partial}


@dataclass
class GateResult:
    run: str
    run_dir: str
    policy: Policy
    checks: list[Check] = field(default_factory=list)
    baseline_dir: Optional[str] = None
    #: judged although the run (or its baseline) is unfinished, and why it is (see :func:`evaluate`)
    allow_partial: bool = False
    incomplete: list[str] = field(default_factory=list)
    #: how the run differs from its baseline where baseline rules compare them (only ever
    #: non-empty with ``allow_mismatch``: otherwise the gate refuses, see :func:`evaluate`)
    mismatches: list[str] = field(default_factory=list)
    #: the run blocks (output schema ``$defs/run``) of the run judged and of its baseline: every
    #: model's numbers per search with the budget, each search's config, protocol and N
    runs: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {"passed": self.passed, "exit_code": self.exit_code, "run": self.run, "run_dir": self.run_dir,
                "baseline": self.baseline_dir, "bound": self.policy.describe_bound(),
                "comparability": {"allow_mismatch": self.policy.allow_mismatch,
                                  "comparable": not self.mismatches, "differences": list(self.mismatches)},
                "completeness": {"complete": not self.incomplete, "allow_partial": self.allow_partial,
                                 "incomplete": list(self.incomplete)},
                "policy": self.policy.to_dict(), "checks": [c.to_dict() for c in self.checks],
                "summary": {"checks": len(self.checks), "passed": sum(c.passed for c in self.checks),
                            "failed": sum(not c.passed for c in self.checks)},
                "runs": list(self.runs)}

    def to_json(self) -> str:
        """The ``robustbench-jr/gate/v1`` document of the output schema (:mod:`robustbench_jr.evaluation.output`;
        non-finite numbers, e.g. an undefined margin, are null)."""
        return output.dumps(output.document("gate", self.to_dict()))


def _select(models: list[ModelData], patterns: Optional[list[str]]) -> list[ModelData]:
    if not patterns:
        return list(models)
    return [m for m in models if any(fnmatch.fnmatchcase(m.name, p) for p in patterns)]


def _pair_baseline(m: ModelData, base: RunData, policy: Policy) -> ModelData:
    names = [b.name for b in base.models]
    if policy.baseline_model:
        for b in base.models:
            if b.name == policy.baseline_model:
                return b
        raise ConfigError(f"baseline_model {policy.baseline_model!r} is not in the baseline run; it has: "
                          f"{', '.join(names)}")
    for b in base.models:
        if b.name == m.name:
            return b
    if len(base.models) == 1:
        return base.models[0]
    raise ConfigError(f"the baseline run has no model named {m.name!r} (it has {', '.join(names)}); set "
                      f"baseline_model in the policy or --baseline-model")


def rule_searches(rule: Rule) -> set[str]:
    """The searches a rule's per-sample metrics read (``best`` stands for every search)."""
    out = set()
    for c in rule.comparisons:
        lhs = c.lhs if isinstance(c.lhs, Metric) else None
        for side in (c.lhs, c.rhs):
            for n in walk(side):
                mt = lhs if isinstance(n, BaselineSame) else n
                if isinstance(mt, Metric) and mt.name in metrics.METRICS and \
                        metrics.get(mt.name).level == "samples" and mt.args:
                    out.add(str(mt.args[0]))
    return out


def _cfg_text(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def baseline_differences(m: ModelData, bm: ModelData, searches: set[str]) -> list[str]:
    """How model ``m`` of the run and ``bm`` of the baseline were measured differently, where a
    baseline rule over ``searches`` compares them: the search configurations (every search when
    ``best`` is read), the sample ids, the data fingerprint. Empty when they compare like with like."""
    who = f"{m.name} vs baseline {bm.name}"
    diffs = []
    if m.data_fingerprint and bm.data_fingerprint and m.data_fingerprint != bm.data_fingerprint:
        diffs.append(f"{who}: test data differ (fingerprint {bm.data_fingerprint} in the baseline, "
                     f"{m.data_fingerprint} in the run)")
    elif bool(m.data_fingerprint) != bool(bm.data_fingerprint):
        diffs.append(f"{who}: only the {'run' if m.data_fingerprint else 'baseline'} recorded its data fingerprint")
    names = set(searches)
    if BEST in names:
        names |= set(m.run_searches) | set(bm.run_searches)
        if set(m.run_searches) != set(bm.run_searches):
            diffs.append(f"{who}: best is over different searches ({', '.join(bm.run_searches)} in the baseline, "
                         f"{', '.join(m.run_searches)} in the run)")
    names.discard(BEST)
    for s in sorted(names):
        if s not in m.results or s not in bm.results:
            continue  # reading it fails with its own message
        a, b = m.settings.get(s), bm.settings.get(s)
        if a is None and b is None:
            pass  # neither run recorded its configuration (not written by jr-eval run)
        elif a is None or b is None:
            diffs.append(f"{who}: {s}: only the {'run' if a else 'baseline'} recorded its search configuration")
        else:
            ca, cb = a.get("config") or {}, b.get("config") or {}
            for k in sorted(set(ca) | set(cb)):
                if _cfg_text(ca.get(k)) != _cfg_text(cb.get(k)):
                    diffs.append(f"{who}: searches.{s}.{k}: {cb.get(k)!r} in the baseline, {ca.get(k)!r} in the run")
    ids_of = lambda md, s: md.results[s]["sample_id"]  # noqa: E731
    for s in sorted(set(searches) | ({BEST} if not searches else set())):
        if s in m.results and s in bm.results:
            ia, ib = ids_of(m, s), ids_of(bm, s)
            if len(ia) != len(ib) or not np.array_equal(ia, ib):
                only_b, only_a = np.setdiff1d(ib, ia), np.setdiff1d(ia, ib)
                diffs.append(f"{who}: {s}: different samples ({len(ib)} in the baseline, {len(ia)} in the run; "
                             f"{len(only_b)} only in the baseline, {len(only_a)} only in the run)")
    return diffs


def _metric_searches(rule: Rule) -> list[str]:
    """The searches whose per-sample rows a rule's metrics read, in order of appearance."""
    out: list[str] = []
    for c in rule.comparisons:
        lhs = c.lhs if isinstance(c.lhs, Metric) else None
        for side in (c.lhs, c.rhs):
            for node in walk(side):
                mt = lhs if isinstance(node, BaselineSame) else node
                if isinstance(mt, Metric) and mt.args and mt.name in metrics.METRICS and \
                        metrics.get(mt.name).level == "samples" and str(mt.args[0]) not in out:
                    out.append(str(mt.args[0]))
    return out


def _refuse_unfinished(run: RunData, role: str) -> None:
    reasons = run.incomplete
    more = f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
    raise InputError(f"the {role} {run.run_dir} is not a finished audit ({'; '.join(reasons[:3])}{more}): its "
                     f"numbers would be judged as if they were final. Let `jr-eval run` finish (rerun the same "
                     f"command to resume it), or pass --allow-partial to judge the samples stored so far (the "
                     f"verdict then says how many each metric covers)")


def evaluate(run_dir: str | Path, policy: Policy, allow_partial: bool = False) -> GateResult:
    """Evaluate every rule on every model it selects; raises JRError on usage/config errors.

    Baseline rules compare like with like: where the run's model and its baseline differ in
    a search configuration the rule reads, in their sample ids or in their data fingerprint
    (:func:`baseline_differences`), the gate refuses with the differences listed (a
    :class:`ConfigError`, exit status 2), unless ``policy.allow_mismatch``: then the rules are
    judged and the result records the differences (``mismatches``; JSON and JUnit say so)."""
    run = load_run(run_dir)
    base = load_run(policy.baseline) if policy.baseline is not None else None
    # an unfinished run is never judged as if it were finished (issue #17)
    for r, role in ((run, "run"), (base, "baseline")):
        if r is not None and r.incomplete and not allow_partial:
            _refuse_unfinished(r, role)
    sampler = Sampler(policy.bootstrap, policy.seed) if policy.decision != "point" else None
    res = GateResult(run.name, str(run.run_dir), policy, baseline_dir=str(policy.baseline) if base else None)
    pairs = []
    for rule in policy.rules:
        selected = _select(run.models, rule.models)
        if not selected:
            raise ConfigError(f"rule {rule.text!r} selects no model (patterns {', '.join(rule.models or [])}); "
                              f"models in the run: {', '.join(m.name for m in run.models)}")
        if rule.uses_baseline:
            for m in selected:
                pairs.append((rule, m, _pair_baseline(m, base, policy)))
    for rule, m, bm in pairs:
        for d in baseline_differences(m, bm, rule_searches(rule)):
            if d not in res.mismatches:
                res.mismatches.append(d)
    if res.mismatches and not policy.allow_mismatch:
        raise ConfigError(
            f"the baseline {policy.baseline} was not measured like the run {run.run_dir}, so baseline rules would "
            f"compare unlike numbers:\n" + "".join(f"  - {d}\n" for d in res.mismatches)
            + "Audit both with the same search configuration on the same samples, or pass --allow-mismatch "
              "(allow_mismatch: true) to compare anyway (the verdict then records the differences).")
    for rule in policy.rules:
        for m in _select(run.models, rule.models):
            bm = _pair_baseline(m, base, policy) if rule.uses_baseline else None

            def resolve(node, lhs, m=m, bm=bm):
                if isinstance(node, BaselineSame):
                    return metric_value(lhs, bm, sampler, "baseline")
                if node.baseline:
                    return metric_value(node, bm, sampler, "baseline")
                return metric_value(node, m, sampler, "run")

            j = judge(rule, resolve, policy.decision, policy.confidence)
            b = j.binding
            msg = j.message
            if bm is not None and res.mismatches:
                msg += " (baseline not comparable, allowed by --allow-mismatch)"
            res.checks.append(Check(rule.text, rule.name, m.label or m.name, run.name, j.status, b.lhs.point,
                                    b.rhs.point, b.comparison.op, j.margin, j.bound, j.lhs_interval, msg,
                                    bm.name if bm else None))

    res.allow_partial = allow_partial
    res.runs = [run_block_of(run, "run")] + ([run_block_of(base, "baseline")] if base is not None else [])
    res.incomplete = [f"run: {x}" for x in run.incomplete] + \
        ([f"baseline: {x}" for x in base.incomplete] if base is not None else [])
    checks = iter(res.checks)
    for rule in policy.rules:
        for m in _select(run.models, rule.models):
            ch = next(checks)
            ch.samples = {s: list(m.samples(s)) for s in _metric_searches(rule)}
    return res
