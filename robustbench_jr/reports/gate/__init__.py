"""The robustness gate: rules over stored metrics, bootstrap bounds, verdicts for CI.

* :mod:`.rules` — the rule grammar, its syntax tree and the parser;
* :mod:`.policy` — the policy (rules, baseline, confidence, bootstrap, seed, decision);
* :mod:`.evaluator` — values, bootstrap resamples and :func:`judge`, the one place
  where a rule is decided (the experiment tables' checks use it too), and
  :func:`evaluate`, the gate on a stored run;
* :mod:`.render` — JUnit XML and plain text (the rich table is drawn by the CLI).

Metrics are those of the registry :mod:`robustbench_jr.evaluation.metrics`
(``S`` a stored search name, distances in [0,1] pixel space), e.g.::

    clean_accuracy  clean_error  jacobian_norm  noise_accuracy[SIGMA]
    rho_adv[S]  rho_adv_attacked[S]  success_rate[S]  not_fooled[S]  not_fooled_rate[S]
    median_l2[S]  mean_l2[S]  n[S]  d50[S]
    error_at[S, D]  accuracy_at[S, D]                 (L2 distance D)
    error_at_linf[S, EPS]  accuracy_at_linf[S, EPS]   (L∞, e.g. FGSM)
    error_at_l0[S, FRAC]  accuracy_at_l0[S, FRAC]     (fraction of input components, e.g. JSMA)
"""

from .evaluator import Check, GateResult, Judgement, Outcome, Sampler, Value, evaluate, judge, one_sided_bound, value
from .policy import DECIDE, POLICY_KEYS, Policy, build_policy, load_policy
from .render import junit_xml, text_report
from .rules import (FUNCS, GATE_VOCABULARY, OPS, BaselineSame, BinOp, Comparison, Func, Metric, Neg, Num, Rule,
                    Vocabulary, parse_expression, parse_rule)

__all__ = ["BaselineSame", "BinOp", "Check", "Comparison", "DECIDE", "FUNCS", "Func", "GATE_VOCABULARY",
           "GateResult", "Judgement", "Metric", "Neg", "Num", "OPS", "Outcome", "POLICY_KEYS", "Policy", "Rule",
           "Sampler", "Value", "Vocabulary", "build_policy", "evaluate", "judge", "junit_xml", "load_policy",
           "one_sided_bound", "parse_expression", "parse_rule", "text_report", "value"]
