"""The robustness gate: rules over stored metrics, bootstrap bounds, verdicts for CI.

Rule expressions (parsed by a small recursive-descent parser, never ``eval``)::

    rule    := expr OP expr [ "for" "model" "=" PATTERN ("," PATTERN)* ]
    OP      := ">=" | "<=" | ">" | "<"
    expr    := term (("+" | "-") term)*
    term    := factor (("*" | "/") factor)*
    factor  := NUMBER ["%"] | "(" expr ")" | "-" factor | "baseline" | ["baseline" "."] METRIC ["[" ARGS "]"]

Metrics (``S`` a stored search name, distances in [0,1] pixel space)::

    clean_accuracy  clean_error  jacobian_norm  noise_accuracy[SIGMA]
    rho_adv[S]  rho_adv_attacked[S]  success_rate[S]  not_fooled[S]  not_fooled_rate[S]
    median_l2[S]  mean_l2[S]  n[S]
    error_at[S, D]  accuracy_at[S, D]                 (L2 distance D)
    error_at_linf[S, EPS]  accuracy_at_linf[S, EPS]   (L∞, e.g. FGSM)
    error_at_l0[S, FRAC]  accuracy_at_l0[S, FRAC]     (fraction of input components, e.g. JSMA)

``baseline`` alone means "the left-hand metric on the baseline run" (same model
name; a single-model baseline pairs with every model); ``baseline.METRIC[...]``
names one explicitly. A rule applies to every model of the run unless scoped with
``for model=PATTERN`` (shell-style patterns) or the policy's ``models:``.

Statistics: with ``confidence`` set, every per-sample metric is recomputed on
``bootstrap`` resamples of the samples (seeded; the same resample for every search
of a model, so rules mixing searches stay paired); clean and noise accuracies are
resampled as binomials; ``jacobian_norm`` is a stored mean and is taken as exact.
For a rule ``L OP R`` the gate bounds ``L − R`` (``R − L`` for ``<``/``<=``):

* ``decide: tolerant`` (default with ``confidence``): fail only when the one-sided
  upper bound of the margin is below 0, i.e. the data show the rule is violated at
  that confidence. A model that truly meets the threshold does not flake.
* ``decide: strict``: pass only when the one-sided lower bound is ≥ 0.
* ``decide: point`` (default without ``confidence``): compare the point estimates.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import yaml

from ..errors import ConfigError, InputError
from . import curves
from .runs import ModelData, RunData, load_run

OPS = (">=", "<=", ">", "<")
DECIDE = ("point", "tolerant", "strict")
POLICY_KEYS = ("rules", "baseline", "baseline_model", "confidence", "bootstrap", "seed", "decide", "models")


# ------------------------------------------------------------------ AST ----
@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Metric:
    name: str
    args: tuple = ()
    baseline: bool = False

    def __str__(self):
        a = f"[{', '.join(str(x) for x in self.args)}]" if self.args else ""
        return ("baseline." if self.baseline else "") + self.name + a


@dataclass(frozen=True)
class BaselineSame:
    """Bare ``baseline``: the rule's left-hand metric on the baseline run."""


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class Neg:
    operand: Any


@dataclass
class Rule:
    text: str
    lhs: Any
    op: str
    rhs: Any
    models: Optional[list[str]] = None  # patterns; None = every model (or the policy's default)
    name: Optional[str] = None

    @property
    def uses_baseline(self) -> bool:
        return _uses_baseline(self.lhs) or _uses_baseline(self.rhs)


def _uses_baseline(node) -> bool:
    if isinstance(node, BaselineSame):
        return True
    if isinstance(node, Metric):
        return node.baseline
    if isinstance(node, BinOp):
        return _uses_baseline(node.left) or _uses_baseline(node.right)
    if isinstance(node, Neg):
        return _uses_baseline(node.operand)
    return False


# --------------------------------------------------------------- metrics ----
@dataclass(frozen=True)
class MetricSpec:
    args: tuple  # kinds of the bracket arguments: "search" or "number"
    doc: str


METRICS: dict[str, MetricSpec] = {
    "clean_accuracy": MetricSpec((), "clean test accuracy"),
    "clean_error": MetricSpec((), "1 − clean accuracy"),
    "jacobian_norm": MetricSpec((), "mean ‖J‖_F stored by the audit (no resampling)"),
    "noise_accuracy": MetricSpec(("number",), "accuracy under white noise of std SIGMA (interpolated)"),
    "rho_adv": MetricSpec(("search",), "ρ̂_adv over fooled samples"),
    "rho_adv_attacked": MetricSpec(("search",), "ρ̂_adv without already-misclassified samples"),
    "success_rate": MetricSpec(("search",), "fooled / N"),
    "not_fooled": MetricSpec(("search",), "number of samples not fooled"),
    "not_fooled_rate": MetricSpec(("search",), "not fooled / N"),
    "median_l2": MetricSpec(("search",), "median L2 over fooled samples"),
    "mean_l2": MetricSpec(("search",), "mean L2 over fooled samples"),
    "n": MetricSpec(("search",), "samples evaluated"),
    "error_at": MetricSpec(("search", "number"), "fraction with L2 distance ≤ D"),
    "accuracy_at": MetricSpec(("search", "number"), "fraction with L2 distance > D"),
    "error_at_linf": MetricSpec(("search", "number"), "fraction with L∞ distance ≤ EPS"),
    "accuracy_at_linf": MetricSpec(("search", "number"), "fraction with L∞ distance > EPS"),
    "error_at_l0": MetricSpec(("search", "number"), "fraction with L0/components ≤ FRAC"),
    "accuracy_at_l0": MetricSpec(("search", "number"), "fraction with L0/components > FRAC"),
}


# ---------------------------------------------------------------- parser ----
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)
  | (?P<op>>=|<=|>|<|==|!=|=)
  | (?P<args>\[[^\]]*\])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[-+*/().,])
  | (?P<bad>\S)
)""", re.X)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks: list[tuple[str, str]] = []
        pos = 0
        body, scope = _split_scope(text)
        self.scope = scope
        for m in _TOKEN.finditer(body):
            kind = m.lastgroup
            if kind == "bad":
                self.fail(f"unexpected character {m.group('bad')!r}")
            self.toks.append((kind, m.group(kind)))
            pos = m.end()
        if body[pos:].strip():
            self.fail(f"cannot read {body[pos:].strip()!r}")
        self.i = 0

    def fail(self, msg: str):
        raise ConfigError(f"rule {self.text!r}: {msg}. Example rules: 'rho_adv[deepfool] >= 0.25', "
                          f"'error_at[cw, 1.0] <= 0.30', 'rho_adv[cw] >= 0.95 * baseline'")

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def rule(self) -> Rule:
        lhs = self.expr()
        kind, op = self.take()
        if kind != "op" or op not in OPS:
            self.fail(f"expected a comparison ({', '.join(OPS)}) after the left-hand side"
                      + (f", got {op!r}" if op else ""))
        rhs = self.expr()
        if self.peek()[0] is not None:
            self.fail(f"unexpected {self.peek()[1]!r} after the right-hand side")
        if isinstance(lhs, BaselineSame):
            self.fail("bare 'baseline' belongs on the right-hand side")
        if isinstance(rhs, BaselineSame) or _contains_bare_baseline(rhs):
            if not isinstance(lhs, Metric) or lhs.baseline:
                self.fail("bare 'baseline' needs a single metric on the left (e.g. 'rho_adv[cw] >= 0.95 * baseline')")
        if _contains_bare_baseline(lhs):
            self.fail("bare 'baseline' belongs on the right-hand side")
        if not (_has_metric(lhs) or _has_metric(rhs)):
            self.fail("a rule must mention at least one metric")
        return Rule(self.text, lhs, op, rhs, self.scope)

    def expr(self):
        node = self.term()
        while self.peek() in (("punct", "+"), ("punct", "-")):
            op = self.take()[1]
            node = BinOp(op, node, self.term())
        return node

    def term(self):
        node = self.factor()
        while self.peek() in (("punct", "*"), ("punct", "/")):
            op = self.take()[1]
            node = BinOp(op, node, self.factor())
        return node

    def factor(self):
        kind, val = self.take()
        if kind == "num":
            return Num(float(val[:-1]) / 100 if val.endswith("%") else float(val))
        if (kind, val) == ("punct", "("):
            node = self.expr()
            if self.take() != ("punct", ")"):
                self.fail("missing ')'")
            return node
        if (kind, val) == ("punct", "-"):
            return Neg(self.factor())
        if kind == "ident":
            base = False
            if val == "baseline":
                if self.peek() != ("punct", "."):
                    return BaselineSame()
                self.take()
                kind, val = self.take()
                if kind != "ident":
                    self.fail("expected a metric name after 'baseline.'")
                base = True
            return self.metric(val, base)
        if kind is None:
            self.fail("the rule ends too early")
        self.fail(f"unexpected {val!r}")

    def metric(self, name: str, base: bool) -> Metric:
        if name not in METRICS:
            self.fail(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
        spec = METRICS[name]
        args: tuple = ()
        if self.peek()[0] == "args":
            raw = self.take()[1][1:-1]
            parts = [p.strip() for p in raw.split(",")] if raw.strip() else []
            conv = []
            for kind, p in zip(spec.args, parts):
                if kind == "number":
                    try:
                        conv.append(float(p[:-1]) / 100 if p.endswith("%") else float(p))
                    except ValueError:
                        self.fail(f"{name}[...]: {p!r} is not a number")
                else:
                    if not re.fullmatch(r"[A-Za-z0-9_.:-]+", p):
                        self.fail(f"{name}[...]: {p!r} is not a search name")
                    conv.append(p)
            args = tuple(conv)
            if len(parts) != len(spec.args):
                self.fail(f"{name} takes {len(spec.args)} argument(s) in brackets "
                          f"({', '.join(spec.args) or 'none'}), got {len(parts)}")
        elif spec.args:
            self.fail(f"{name} needs [{', '.join(a.upper() for a in spec.args)}], e.g. "
                      f"{name}[{', '.join('cw' if a == 'search' else '1.0' for a in spec.args)}]")
        return Metric(name, args, base)


def _contains_bare_baseline(node) -> bool:
    if isinstance(node, BaselineSame):
        return True
    if isinstance(node, BinOp):
        return _contains_bare_baseline(node.left) or _contains_bare_baseline(node.right)
    if isinstance(node, Neg):
        return _contains_bare_baseline(node.operand)
    return False


def _has_metric(node) -> bool:
    if isinstance(node, (Metric, BaselineSame)):
        return True
    if isinstance(node, BinOp):
        return _has_metric(node.left) or _has_metric(node.right)
    if isinstance(node, Neg):
        return _has_metric(node.operand)
    return False


_SCOPE = re.compile(r"\s+for\s+model\s*=\s*(?P<pats>.+?)\s*$")


def _split_scope(text: str) -> tuple[str, Optional[list[str]]]:
    m = _SCOPE.search(text)
    if not m:
        if re.search(r"\bfor\b", text):
            raise ConfigError(f"rule {text!r}: a scope is written 'for model=NAME' (patterns like lenet-* allowed, "
                              f"several separated by commas)")
        return text, None
    pats = [p.strip() for p in m.group("pats").split(",") if p.strip()]
    if not pats:
        raise ConfigError(f"rule {text!r}: empty model pattern after 'for model='")
    return text[:m.start()], pats


def parse_rule(text: str, models: Optional[list[str]] = None, name: Optional[str] = None) -> Rule:
    """Parse one rule expression; ``models`` scopes it unless the text has ``for model=...``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"a rule must be a non-empty string, got {text!r}")
    r = _Parser(text.strip()).rule()
    if r.models is None and models:
        r.models = list(models)
    r.name = name
    return r


# ---------------------------------------------------------------- policy ----
@dataclass
class Policy:
    rules: list[Rule]
    baseline: Optional[Path] = None
    baseline_model: Optional[str] = None
    confidence: Optional[float] = None
    bootstrap: int = 1000
    seed: int = 0
    decide: Optional[str] = None  # None → "tolerant" with confidence, else "point"
    models: Optional[list[str]] = None

    @property
    def decision(self) -> str:
        return self.decide or ("tolerant" if self.confidence else "point")

    def describe_bound(self) -> str:
        if self.decision == "point":
            return "point estimates (no confidence bound)"
        c = f"{100 * self.confidence:g}%"
        side = "upper" if self.decision == "tolerant" else "lower"
        what = ("fail only if the rule is violated with " if self.decision == "tolerant"
                else "pass only if the rule holds with ")
        return (f"one-sided {c} {side} percentile-bootstrap bound of the margin ({self.bootstrap} resamples of the "
                f"samples, seed {self.seed}): {what}{c} confidence ({self.decision})")

    def to_dict(self) -> dict:
        return {"rules": [r.text if not r.name else {"rule": r.text, "name": r.name} for r in self.rules],
                "baseline": str(self.baseline) if self.baseline else None, "baseline_model": self.baseline_model,
                "confidence": self.confidence, "bootstrap": self.bootstrap, "seed": self.seed,
                "decide": self.decision, "models": self.models}


def _check_number(key, v, lo, hi, kind=float):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()):
        raise ConfigError(f"policy: {key} must be {'an integer' if kind is int else 'a number'}, got {v!r}")
    if not (lo <= v <= hi):
        raise ConfigError(f"policy: {key} must be in [{lo}, {hi}], got {v!r}")
    return kind(v)


def build_policy(data: Optional[dict] = None, base_dir: Optional[Path] = None, extra_rules=(), **overrides) -> Policy:
    """A validated :class:`Policy` from a YAML mapping plus command-line overrides (not None)."""
    data = dict(data or {})
    unknown = sorted(set(data) - set(POLICY_KEYS))
    if unknown:
        raise ConfigError(f"policy: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(POLICY_KEYS)}")
    for k, v in overrides.items():
        if k not in POLICY_KEYS:
            raise ConfigError(f"unknown policy override {k!r}")
        if v is not None and v != ():
            data[k] = v
    models = data.get("models")
    if isinstance(models, str):
        models = [models]
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise ConfigError("policy: models must be a model name pattern or a list of them")
    models = list(models) if models else None
    raw_rules = data.get("rules") or []
    if not isinstance(raw_rules, list):
        raise ConfigError("policy: rules must be a list of rule strings (or mappings with 'rule', 'model', 'name')")
    rules = []
    for item in list(raw_rules) + list(extra_rules):
        if isinstance(item, str):
            rules.append(parse_rule(item, models))
        elif isinstance(item, dict):
            bad = sorted(set(item) - {"rule", "model", "models", "name"})
            if bad or "rule" not in item:
                raise ConfigError(f"policy: a rule mapping needs 'rule' and may have 'model'/'models', 'name'; got "
                                  f"{sorted(item)}")
            scope = item.get("models", item.get("model"))
            scope = [scope] if isinstance(scope, str) else scope
            rules.append(parse_rule(item["rule"], scope or models, item.get("name")))
        else:
            raise ConfigError(f"policy: each rule must be a string or a mapping, got {item!r}")
    if not rules:
        raise ConfigError("no rules: give --rule EXPR (repeatable) or a --policy FILE with a 'rules:' list")
    conf = data.get("confidence")
    if conf is not None:
        conf = _check_number("confidence", conf, 0.5, 0.9999)
    boot = _check_number("bootstrap", data.get("bootstrap", 1000), 50, 100000, int)
    seed = _check_number("seed", data.get("seed", 0), 0, 2**32 - 1, int)
    decide = data.get("decide")
    if decide is not None and decide not in DECIDE:
        raise ConfigError(f"policy: decide must be one of {', '.join(DECIDE)}, got {decide!r}")
    if decide in ("tolerant", "strict") and conf is None:
        raise ConfigError(f"policy: decide: {decide} needs a confidence (e.g. confidence: 0.95)")
    baseline = data.get("baseline")
    if baseline is not None:
        baseline = Path(str(baseline))
        if not baseline.is_absolute() and base_dir is not None and not baseline.exists():
            baseline = base_dir / baseline
    if any(r.uses_baseline for r in rules) and baseline is None:
        raise ConfigError("a rule uses 'baseline' but no baseline run was given: add 'baseline: RUN_DIR' to the "
                          "policy or pass --baseline RUN_DIR")
    bm = data.get("baseline_model")
    return Policy(rules, baseline, bm, conf, boot, seed, decide, models)


def load_policy(path: Optional[str | Path], extra_rules=(), **overrides) -> Policy:
    data, base = None, None
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"policy file {p} not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ConfigError(f"policy file {p} is not valid YAML: {exc}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"policy file {p} must be a mapping with a 'rules:' list")
        base = p.resolve().parent
    return build_policy(data, base, extra_rules, **overrides)


# ------------------------------------------------------------ evaluation ----
@dataclass
class Value:
    point: float
    boot: Optional[np.ndarray] = None  # [B] or None when exact

    def _b(self, B):
        return self.boot if self.boot is not None else np.full(B, self.point)

    def combine(self, other: "Value", fn: Callable) -> "Value":
        with np.errstate(all="ignore"):
            p = float(fn(np.float64(self.point), np.float64(other.point)))
            if self.boot is None and other.boot is None:
                return Value(p)
            B = len(self.boot if self.boot is not None else other.boot)
            return Value(p, fn(self._b(B), other._b(B)))


class _Sampler:
    """Seeded, cached bootstrap resamples per (run, model)."""

    def __init__(self, reps: int, seed: int):
        self.reps, self.seed = reps, seed
        self.cache: dict = {}

    def rng(self, *key) -> np.random.Generator:
        h = zlib.crc32("\x1f".join(map(str, key)).encode())
        return np.random.default_rng([self.seed, h])

    def indices(self, tag: str, m: ModelData, search: str) -> np.ndarray:
        ref = next(iter(m.results.values()))["sample_id"]
        ids = m.results[search]["sample_id"]
        same = len(ids) == len(ref) and np.array_equal(ids, ref)
        key = (tag, m.name, "__all__" if same else search)
        if key not in self.cache:
            self.cache[key] = curves.bootstrap_indices(len(ids), self.reps, self.rng(*key))
        return self.cache[key]

    def binomial(self, tag: str, m: ModelData, what: str, p: float, n: int) -> np.ndarray:
        key = (tag, m.name, what)
        if key not in self.cache:
            self.cache[key] = self.rng(*key).binomial(int(n), min(max(p, 0.0), 1.0), size=self.reps) / max(int(n), 1)
        return self.cache[key]


class _Evaluator:
    def __init__(self, policy: Policy, sampler: Optional[_Sampler]):
        self.policy = policy
        self.sampler = sampler

    def value(self, node, m: ModelData, tag: str, base: Optional[ModelData], lhs_metric: Optional[Metric]) -> Value:
        if isinstance(node, Num):
            return Value(node.value)
        if isinstance(node, Neg):
            v = self.value(node.operand, m, tag, base, lhs_metric)
            return v.combine(Value(0.0), lambda a, b: -a)
        if isinstance(node, BinOp):
            a = self.value(node.left, m, tag, base, lhs_metric)
            b = self.value(node.right, m, tag, base, lhs_metric)
            fn = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[node.op]
            return a.combine(b, fn)
        if isinstance(node, BaselineSame):
            return self.metric(lhs_metric, base, "baseline")
        if isinstance(node, Metric):
            return self.metric(node, base if node.baseline else m, "baseline" if node.baseline else tag)
        raise TypeError(node)  # pragma: no cover

    def metric(self, mt: Metric, m: ModelData, tag: str) -> Value:
        name, args = mt.name, mt.args
        s = self.sampler
        if name in ("clean_accuracy", "clean_error"):
            acc, n = m.clean_acc(), m.clean_n()
            if acc is None:
                raise InputError(f"{m.run.name}: model {m.name} has no stored clean accuracy")
            boot = s.binomial(tag, m, "clean", acc, n or 1) if s else None
            v = Value(acc, boot)
            return v if name == "clean_accuracy" else Value(1 - acc, None if boot is None else 1 - boot)
        if name == "jacobian_norm":
            if m.jacobian_norm is None:
                raise InputError(f"{m.run.name}: model {m.name} has no stored jacobian_norm")
            return Value(float(m.jacobian_norm))
        if name == "noise_accuracy":
            return self.noise(m, args[0], tag)
        search = args[0]
        if search not in m.results:
            raise InputError(f"{m.run.name}: model {m.name} has no results for search {search!r}; "
                             f"stored searches: {', '.join(m.results) or 'none'}")
        r = m.results[search]
        fn = self.metric_fn(name, args, m, search)
        point = float(fn(r, None))
        if not s:
            return Value(point)
        return Value(point, np.asarray(fn(r, s.indices(tag, m, search)), dtype=np.float64))

    @staticmethod
    def metric_fn(name: str, args: tuple, m: ModelData, search: str):
        def take(a, idx):
            return a if idx is None else a[idx]

        if name == "rho_adv":
            return lambda r, i: curves.rho_adv(take(r["l2"], i), take(r["x_norm"], i))
        if name == "rho_adv_attacked":
            return lambda r, i: curves.rho_adv_attacked(take(r["l2"], i), take(r["x_norm"], i))
        if name == "success_rate":
            return lambda r, i: curves.success_rate(take(r["l2"], i))
        if name == "not_fooled":
            return lambda r, i: curves.not_fooled(take(r["l2"], i))
        if name == "not_fooled_rate":
            return lambda r, i: curves.not_fooled(take(r["l2"], i)) / max(len(r["l2"]), 1)
        if name == "median_l2":
            return lambda r, i: curves.median_l2(take(r["l2"], i))
        if name == "mean_l2":
            return lambda r, i: curves.mean_l2(take(r["l2"], i))
        if name == "n":
            return lambda r, i: np.full(() if i is None else len(i), float(len(r["l2"])))
        col = {"error_at": "l2", "accuracy_at": "l2", "error_at_linf": "linf", "accuracy_at_linf": "linf",
               "error_at_l0": "l0", "accuracy_at_l0": "l0"}[name]
        scale = 1.0
        if col == "l0":
            if not m.n_inputs:
                raise InputError(f"{m.run.name}: model {m.name}'s card has no input_shape, so L0 cannot be turned "
                                 f"into a fraction of input components")
            scale = 1.0 / m.n_inputs
        thr = float(args[1])
        if name.startswith("error"):
            return lambda r, i: curves.error_at(take(r[col], i) * scale, thr)
        return lambda r, i: curves.accuracy_at(take(r[col], i) * scale, thr)

    def noise(self, m: ModelData, sigma: float, tag: str) -> Value:
        if not m.noise:
            raise InputError(f"{m.run.name}: model {m.name} has no stored white-noise accuracies")
        sig = np.array([x[0] for x in m.noise])
        acc = np.array([x[1] for x in m.noise])
        n = int(min(x[2] for x in m.noise))
        if sigma < sig.min() - 1e-12 or sigma > sig.max() + 1e-12:
            raise InputError(f"noise_accuracy[{sigma:g}]: σ outside the stored range "
                             f"[{sig.min():g}, {sig.max():g}] for model {m.name}")
        a = float(np.interp(sigma, sig, acc))
        boot = self.sampler.binomial(tag, m, f"noise{sigma!r}", a, n) if self.sampler else None
        return Value(a, boot)


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

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()} | {"passed": self.passed}


@dataclass
class GateResult:
    run: str
    run_dir: str
    policy: Policy
    checks: list[Check] = field(default_factory=list)
    baseline_dir: Optional[str] = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1

    def to_dict(self) -> dict:
        return {"passed": self.passed, "exit_code": self.exit_code, "run": self.run, "run_dir": self.run_dir,
                "baseline": self.baseline_dir, "bound": self.policy.describe_bound(),
                "policy": self.policy.to_dict(), "checks": [c.to_dict() for c in self.checks],
                "summary": {"checks": len(self.checks), "passed": sum(c.passed for c in self.checks),
                            "failed": sum(not c.passed for c in self.checks)}}

    def to_json(self) -> str:
        from .tables import jsonable

        return json.dumps(jsonable(self.to_dict()), indent=2, ensure_ascii=False)


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


def evaluate(run_dir: str | Path, policy: Policy) -> GateResult:
    """Evaluate every rule on every model it selects; raises JRError on usage/config errors."""
    run = load_run(run_dir)
    base = load_run(policy.baseline) if policy.baseline is not None else None
    sampler = _Sampler(policy.bootstrap, policy.seed) if policy.decision != "point" else None
    ev = _Evaluator(policy, sampler)
    res = GateResult(run.name, str(run.run_dir), policy, baseline_dir=str(policy.baseline) if base else None)
    c = policy.confidence
    for rule in policy.rules:
        selected = _select(run.models, rule.models)
        if not selected:
            raise ConfigError(f"rule {rule.text!r} selects no model (patterns {', '.join(rule.models or [])}); "
                              f"models in the run: {', '.join(m.name for m in run.models)}")
        for m in selected:
            bm = _pair_baseline(m, base, policy) if rule.uses_baseline else None
            lhs_metric = rule.lhs if isinstance(rule.lhs, Metric) else None
            lhs = ev.value(rule.lhs, m, "run", bm, lhs_metric)
            rhs = ev.value(rule.rhs, m, "run", bm, lhs_metric)
            sign = 1.0 if rule.op in (">=", ">") else -1.0
            margin = lhs.combine(rhs, lambda a, b: sign * (a - b))
            strict_op = rule.op in (">", "<")
            chk = Check(rule.text, rule.name, m.label or m.name, run.name, "pass", lhs.point, rhs.point, rule.op,
                        margin.point, baseline_model=bm.name if bm else None)
            if margin.boot is not None and lhs.boot is not None and c:
                lo = curves.one_sided_bound(lhs.boot, 0.5 + c / 2, "lower")
                hi = curves.one_sided_bound(lhs.boot, 0.5 + c / 2, "upper")
                chk.lhs_interval = (lo, hi)
            if math.isnan(margin.point):
                chk.verdict, chk.message = "fail", "undefined: the metric has no samples to average (e.g. nothing fooled)"
            else:
                if policy.decision == "point" or margin.boot is None:
                    decide_on = margin.point
                else:
                    side = "upper" if policy.decision == "tolerant" else "lower"
                    decide_on = curves.one_sided_bound(margin.boot, c, side)
                    chk.bound = decide_on
                ok = decide_on > 0 if strict_op else decide_on >= 0
                if math.isnan(decide_on):
                    ok = False
                chk.verdict = "pass" if ok else "fail"
                if policy.decision == "point" or margin.boot is None:
                    chk.message = f"{lhs.point:.4g} {rule.op} {rhs.point:.4g}" + ("" if ok else " is false")
                else:
                    kind = "upper" if policy.decision == "tolerant" else "lower"
                    chk.message = (f"margin {margin.point:+.4g}, {kind} {100 * c:g}% bound {decide_on:+.4g}"
                                   + (" ≥ 0" if ok else " < 0"))
            res.checks.append(chk)
    return res


# ------------------------------------------------------------ rendering ----
def rich_table(res: GateResult):
    from rich.markup import escape
    from rich.table import Table

    verdict = "[bold green]PASS[/]" if res.passed else "[bold red]FAIL[/]"
    t = Table(title=f"Robustness gate {verdict} — run {res.run}", header_style="bold cyan",
              caption=f"Decision: {res.policy.describe_bound()}", caption_justify="left")
    level = f"{100 * res.policy.confidence:g}% " if res.policy.confidence else ""
    rows = []
    for ch in res.checks:
        val = _fmt(ch.lhs) + (f"\n[dim]{ch.lhs_interval[0]:.4g}–{ch.lhs_interval[1]:.4g}[/]" if ch.lhs_interval else "")
        v = "[green]✔ pass[/]" if ch.passed else "[red]✘ fail[/]"
        if ch.bound is not None:
            v += f"\n[dim]bound {ch.bound:+.3g}[/]"
        rule = escape(ch.rule) + (f"\n[dim]{ch.message}[/]" if ch.message.startswith("undefined") else "")
        rows.append((escape(ch.model), rule, val, f"{ch.op} {_fmt(ch.rhs)}", v))
    cols = (("Model", "left"), ("Rule", "left"), (f"Value ({level}interval)" if level else "Value", "right"),
            ("Threshold", "right"), ("Verdict (margin bound)" if level else "Verdict", "center"))
    for i, (col, just) in enumerate(cols):
        width = None if i == 1 else max(len(line) for r in rows for line in _plain(r[i]).split("\n"))
        t.add_column(col, justify=just, overflow="fold", min_width=width)
    for r in rows:
        t.add_row(*r)
    return t


def _plain(markup: str) -> str:
    from rich.text import Text

    return Text.from_markup(markup).plain


def _fmt(v: float) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def junit_xml(res: GateResult) -> str:
    """JUnit XML: one test case per rule × model, a <failure> for each failed check."""
    import xml.etree.ElementTree as ET

    n_fail = sum(not c.passed for c in res.checks)
    suites = ET.Element("testsuites", name="jr-eval gate", tests=str(len(res.checks)), failures=str(n_fail),
                        errors="0", time="0")
    suite = ET.SubElement(suites, "testsuite", name=f"robustness gate: {res.run}", tests=str(len(res.checks)),
                          failures=str(n_fail), errors="0", skipped="0", time="0")
    props = ET.SubElement(suite, "properties")
    for k, v in (("run_dir", res.run_dir), ("baseline", res.baseline_dir or ""), ("bound", res.policy.describe_bound()),
                 ("confidence", "" if res.policy.confidence is None else str(res.policy.confidence)),
                 ("bootstrap", str(res.policy.bootstrap)), ("seed", str(res.policy.seed)),
                 ("decide", res.policy.decision)):
        ET.SubElement(props, "property", name=k, value=v)
    for ch in res.checks:
        tc = ET.SubElement(suite, "testcase", classname=f"robustness.{ch.model}", name=ch.name or ch.rule, time="0")
        detail = (f"model {ch.model}: {ch.rule}\nvalue {_fmt(ch.lhs)} {ch.op} threshold {_fmt(ch.rhs)}\n{ch.message}"
                  f"\n{res.policy.describe_bound()}")
        if ch.passed:
            ET.SubElement(tc, "system-out").text = detail
        else:
            f = ET.SubElement(tc, "failure", message=f"{ch.rule}: {ch.message}", type="RobustnessGateFailure")
            f.text = detail
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"
