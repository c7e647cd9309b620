"""Rule expressions: the grammar, its syntax tree and a small recursive-descent parser (never ``eval``).

::

    rule       := condition ("and" condition)* [ "for" "model" "=" PATTERN ("," PATTERN)* ]
    condition  := expr OP expr (OP expr)*          a chain: "a < b < c" is "a < b and b < c"
    OP         := ">=" | "<=" | ">" | "<"
    expr       := term (("+" | "-") term)*
    term       := factor (("*" | "/") factor)*
    factor     := NUMBER ["%"] | "(" expr ")" | "-" factor
                | FUNC "(" expr ("," expr)* ")"    FUNC: min, max, mean (one or more arguments), abs (one)
                | "baseline" | ["baseline" "."] NAME ["[" ARGS "]"]

Which ``NAME`` s exist and which bracket arguments they take is a :class:`Vocabulary`:
the gate's (:data:`GATE_VOCABULARY`) is the metric registry of
:mod:`robustbench_jr.evaluation.metrics` — a per-sample metric takes the search first
(``rho_adv[cw]``, ``error_at[cw, 1.0]``), a per-model metric its numeric arguments only
(``clean_accuracy``, ``noise_accuracy[0.3]``); an experiment table's vocabulary is its
columns, each taking a run (``jnorm[none]``: the table's cell).

``baseline`` alone means "the left-hand metric on the baseline run"; ``baseline.NAME[...]``
names one explicitly (gate only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional

from ...errors import ConfigError
from ...evaluation import metrics

OPS = (">=", "<=", ">", "<")
FUNCS = {"min": (1, None), "max": (1, None), "mean": (1, None), "abs": (1, 1)}  # name: (min args, max args)


# ------------------------------------------------------------------ AST ----
@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Metric:
    """A named value with bracket arguments: a registry metric or a table cell."""

    name: str
    args: tuple = ()
    baseline: bool = False

    def __str__(self):
        a = f"[{', '.join(_arg_text(x) for x in self.args)}]" if self.args else ""
        return ("baseline." if self.baseline else "") + self.name + a


@dataclass(frozen=True)
class BaselineSame:
    """Bare ``baseline``: the comparison's left-hand metric on the baseline run."""


@dataclass(frozen=True)
class BinOp:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class Neg:
    operand: Any


@dataclass(frozen=True)
class Func:
    name: str
    args: tuple


@dataclass(frozen=True)
class Comparison:
    lhs: Any
    op: str
    rhs: Any

    @property
    def strict(self) -> bool:
        return self.op in (">", "<")


@dataclass
class Rule:
    """A conjunction of comparisons (``comparisons``); ``lhs``/``op``/``rhs`` are the first one's."""

    text: str
    comparisons: list[Comparison]
    models: Optional[list[str]] = None  # patterns; None = every model (or the policy's default)
    name: Optional[str] = None

    @property
    def lhs(self):
        return self.comparisons[0].lhs

    @property
    def op(self) -> str:
        return self.comparisons[0].op

    @property
    def rhs(self):
        return self.comparisons[0].rhs

    @property
    def uses_baseline(self) -> bool:
        return any(isinstance(n, BaselineSame) or isinstance(n, Metric) and n.baseline
                   for c in self.comparisons for side in (c.lhs, c.rhs) for n in walk(side))

    def metrics(self) -> list[Metric]:
        """Every metric the rule reads, in order of appearance (duplicates removed)."""
        out: list[Metric] = []
        for c in self.comparisons:
            for side in (c.lhs, c.rhs):
                for n in walk(side):
                    if isinstance(n, Metric) and n not in out:
                        out.append(n)
        return out


def walk(node) -> Iterator[Any]:
    """``node`` and every node below it."""
    yield node
    if isinstance(node, BinOp):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, Neg):
        yield from walk(node.operand)
    elif isinstance(node, Func):
        for a in node.args:
            yield from walk(a)


def _arg_text(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


# ----------------------------------------------------------- vocabulary ----
@dataclass(frozen=True)
class Vocabulary:
    """The names a rule may use: name → kinds of its bracket arguments (``"number"``, or a
    name kind such as ``"search"``/``"run"``), what they are called, example rules."""

    names: Mapping[str, tuple[str, ...]]
    what: str = "metric"
    examples: tuple[str, ...] = ()
    baseline: bool = True
    arg_examples: Mapping[str, str] = field(default_factory=dict)


def _gate_names() -> dict[str, tuple[str, ...]]:
    return {name: (("search",) if m.level == "samples" else ()) + ("number",) * len(m.params)
            for name, m in metrics.METRICS.items()}


#: the gate's names: every metric of the registry
GATE_VOCABULARY = Vocabulary(
    _gate_names(), "metric",
    ("rho_adv[deepfool] >= 0.25", "error_at[cw, 1.0] <= 0.30", "rho_adv[cw] >= 0.95 * baseline"),
    True, {"search": "cw", "number": "1.0"})


# ---------------------------------------------------------------- parser ----
_TOKEN = re.compile(r"""\s*(?:
    (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?%?)
  | (?P<op>>=|<=|>|<|==|!=|=)
  | (?P<args>\[[^\]]*\])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[-+*/().,])
  | (?P<bad>\S)
)""", re.X)
_NAME_ARG = re.compile(r"[A-Za-z0-9_.:+-]+")


def _number(text: str) -> float:
    return float(text[:-1]) / 100 if text.endswith("%") else float(text)


class _Parser:
    def __init__(self, text: str, vocab: Vocabulary):
        self.text, self.vocab = text, vocab
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
        ex = ", ".join(repr(e) for e in self.vocab.examples)
        raise ConfigError(f"rule {self.text!r}: {msg}." + (f" Example rules: {ex}" if ex else ""))

    def peek(self):
        return self.toks[self.i] if self.i < len(self.toks) else (None, None)

    def take(self):
        t = self.peek()
        self.i += 1
        return t

    def rule(self) -> Rule:
        comps = self.condition()
        while self.peek() == ("ident", "and"):
            self.take()
            comps += self.condition()
        if self.peek()[0] is not None:
            self.fail(f"unexpected {self.peek()[1]!r} after the right-hand side")
        for c in comps:
            if _has(c.lhs, BaselineSame):
                self.fail("bare 'baseline' belongs on the right-hand side")
            if _has(c.rhs, BaselineSame) and (not isinstance(c.lhs, Metric) or c.lhs.baseline):
                self.fail("bare 'baseline' needs a single metric on the left (e.g. 'rho_adv[cw] >= 0.95 * baseline')")
        if not any(_has(side, (Metric, BaselineSame)) for c in comps for side in (c.lhs, c.rhs)):
            self.fail(f"a rule must mention at least one {self.vocab.what}")
        return Rule(self.text, comps, self.scope)

    def condition(self) -> list[Comparison]:
        terms, ops = [self.expr()], []
        while True:
            kind, op = self.peek()
            if kind != "op":
                break
            if op not in OPS:
                self.fail(f"expected a comparison ({', '.join(OPS)}), got {op!r}")
            self.take()
            ops.append(op)
            terms.append(self.expr())
        if not ops:
            got = self.peek()[1]
            self.fail(f"expected a comparison ({', '.join(OPS)}) after the left-hand side"
                      + (f", got {got!r}" if got else ""))
        return [Comparison(terms[i], ops[i], terms[i + 1]) for i in range(len(ops))]

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
            return Num(_number(val))
        if (kind, val) == ("punct", "("):
            node = self.expr()
            if self.take() != ("punct", ")"):
                self.fail("missing ')'")
            return node
        if (kind, val) == ("punct", "-"):
            return Neg(self.factor())
        if kind == "ident":
            if val in FUNCS and self.peek() == ("punct", "("):
                return self.func(val)
            base = False
            if val == "baseline" and self.vocab.baseline:
                if self.peek() != ("punct", "."):
                    return BaselineSame()
                self.take()
                kind, val = self.take()
                if kind != "ident":
                    self.fail(f"expected a {self.vocab.what} name after 'baseline.'")
                base = True
            return self.metric(val, base)
        if kind is None:
            self.fail("the rule ends too early")
        self.fail(f"unexpected {val!r}")

    def func(self, name: str) -> Func:
        self.take()  # "("
        args = [self.expr()]
        while self.peek() == ("punct", ","):
            self.take()
            args.append(self.expr())
        if self.take() != ("punct", ")"):
            self.fail(f"missing ')' after the arguments of {name}(...)")
        lo, hi = FUNCS[name]
        if len(args) < lo or (hi is not None and len(args) > hi):
            self.fail(f"{name}(...) takes {'exactly ' + str(hi) if hi == lo else 'at least ' + str(lo)} "
                      f"argument(s), got {len(args)}")
        return Func(name, tuple(args))

    def metric(self, name: str, base: bool) -> Metric:
        names = self.vocab.names
        if name not in names:
            self.fail(f"unknown {self.vocab.what} {name!r}; valid {self.vocab.what}s: {', '.join(names)}")
        kinds = names[name]
        args: tuple = ()
        if self.peek()[0] == "args":
            raw = self.take()[1][1:-1]
            parts = [p.strip() for p in raw.split(",")] if raw.strip() else []
            conv = []
            for kind, p in zip(kinds, parts):
                if kind == "number":
                    try:
                        conv.append(_number(p))
                    except ValueError:
                        self.fail(f"{name}[...]: {p!r} is not a number")
                else:
                    if not _NAME_ARG.fullmatch(p):
                        self.fail(f"{name}[...]: {p!r} is not a {kind} name")
                    conv.append(p)
            args = tuple(conv)
            if len(parts) != len(kinds):
                self.fail(f"{name} takes {len(kinds)} argument(s) in brackets "
                          f"({', '.join(kinds) or 'none'}), got {len(parts)}")
        elif kinds:
            ex = self.vocab.arg_examples
            shown = ("baseline." if base else "") + name  # the hint is written as the rule would be
            self.fail(f"{shown} needs [{', '.join(a.upper() for a in kinds)}], e.g. "
                      f"{shown}[{', '.join(ex.get(a, a) for a in kinds)}]")
        return Metric(name, args, base)


def _has(node, types) -> bool:
    return any(isinstance(n, types) for n in walk(node))


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


def parse_rule(text: str, models: Optional[list[str]] = None, name: Optional[str] = None,
               vocabulary: Vocabulary = GATE_VOCABULARY) -> Rule:
    """Parse one rule expression over ``vocabulary`` (default: the gate's metrics);
    ``models`` scopes it unless the text has ``for model=...``."""
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"a rule must be a non-empty string, got {text!r}")
    r = _Parser(text.strip(), vocabulary).rule()
    if r.models is None and models:
        r.models = list(models)
    r.name = name
    return r


def parse_expression(text: str, vocabulary: Vocabulary = GATE_VOCABULARY):
    """Parse an expression (no comparison) over ``vocabulary``: the syntax tree of ``expr``."""
    p = _Parser(text.strip(), vocabulary)
    node = p.expr()
    if p.peek()[0] is not None:
        p.fail(f"unexpected {p.peek()[1]!r} after the expression")
    return node
