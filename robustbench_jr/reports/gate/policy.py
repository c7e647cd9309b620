"""The gate's policy: rules plus baseline, confidence, bootstrap, seed and decision mode.

A policy is a YAML mapping (``jr-eval gate --policy FILE``) whose keys are
:data:`POLICY_KEYS`; command-line options override it and ``--rule`` adds rules.
Statistics: with ``confidence`` set, every per-sample metric is recomputed on
``bootstrap`` resamples of the samples and a rule ``L OP R`` is decided on a
one-sided bound of its margin ``L − R`` (``R − L`` for ``<``/``<=``):

* ``decide: tolerant`` (default with ``confidence``): fail only when the one-sided
  upper bound of the margin is below 0, i.e. the data show the rule is violated at
  that confidence. A model that truly meets the threshold does not flake.
* ``decide: strict``: pass only when the one-sided lower bound is ≥ 0.
* ``decide: point`` (default without ``confidence``): compare the point estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import yaml

from ...errors import ConfigError
from .rules import Rule, parse_rule

DECIDE = ("point", "tolerant", "strict")
POLICY_KEYS = ("rules", "baseline", "baseline_model", "confidence", "bootstrap", "seed", "decide", "models",
               "allow_mismatch")


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
    #: judge baseline rules even where the baseline was measured differently (recorded in the verdict)
    allow_mismatch: bool = False

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
                "decide": self.decision, "models": self.models, "allow_mismatch": self.allow_mismatch}


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
    allow = data.get("allow_mismatch", False)
    if not isinstance(allow, bool):
        raise ConfigError(f"policy: allow_mismatch must be true or false, got {allow!r}")
    return Policy(rules, baseline, bm, conf, boot, seed, decide, models, allow)


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
