"""The package's import graph: layers point one way, no UI below the CLI, no cycles, no
hidden imports, one seed scheme, one definition of each metric.

Layers (DESIGN.md): data/config/jacobian → models/attacks → evaluation/training →
reports → experiments → cli, with ``errors``, ``runtime`` and ``_version`` at the bottom and
the package's ``__init__`` (the public API) on top of everything but the CLI.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "robustbench_jr"
PKG = "robustbench_jr"

LEVELS = {
    "_version": 0, "errors": 0, "runtime": 1, "config": 1, "data": 2, "jacobian": 2,
    "models": 3, "attacks": 3, "evaluation": 4, "training": 4, "reports": 5, "experiments": 6,
    "": 7,  # robustbench_jr/__init__.py: the public API
    "cli": 8,
}
UI_PACKAGES = ("click", "rich")


def _modules() -> dict[str, tuple[pathlib.Path, bool]]:
    mods = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


MODULES = _modules()


def _targets(mod: str, is_pkg: bool, node: ast.AST) -> list[str]:
    """Absolute names a (relative or absolute) import statement refers to."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = mod.split(".")
        if not is_pkg:
            base = base[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    out = []
    for a in node.names:
        cand = f"{target}.{a.name}"
        out.append(cand if cand in MODULES else target)
    return out


def _imports():
    """(module, line, imported name, at top level?) for every import statement."""
    rows = []
    for mod, (path, is_pkg) in MODULES.items():
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for stmt in tree.body:  # imports under `if TYPE_CHECKING:` / `if __name__` count as top level
            if isinstance(stmt, ast.If):
                top.update(id(n) for n in ast.walk(stmt))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for t in _targets(mod, is_pkg, node):
                    rows.append((mod, node.lineno, t, id(node) in top))
    return rows


IMPORTS = _imports()


def _layer(mod: str) -> int:
    sub = mod.split(".")[1] if "." in mod else ""
    return LEVELS[sub]


def _own(target: str) -> str | None:
    """The package module an import refers to (None for third-party imports)."""
    if target != PKG and not target.startswith(PKG + "."):
        return None
    while target not in MODULES:
        target = target.rsplit(".", 1)[0]
    return target


def test_every_subpackage_has_a_layer():
    subs = {m.split(".")[1] if "." in m else "" for m in MODULES}
    assert subs <= set(LEVELS), subs - set(LEVELS)


def test_no_ui_or_cli_imports_below_the_cli():
    bad = [(m, line, t) for m, line, t, _ in IMPORTS
           if not m.startswith(f"{PKG}.cli")
           and (t.split(".")[0] in UI_PACKAGES or t == f"{PKG}.cli" or t.startswith(f"{PKG}.cli."))]
    assert not bad, bad


def test_layers_point_one_way():
    bad = []
    for m, line, t, _ in IMPORTS:
        dep = _own(t)
        if dep is None or dep == PKG and m.startswith(f"{PKG}.") and _layer(m) < LEVELS[""]:
            if dep == PKG:
                bad.append((m, line, t))
            continue
        if _layer(dep) > _layer(m):
            bad.append((m, line, t))
    assert not bad, bad


def test_package_imports_are_top_level():
    bad = [(m, line, t) for m, line, t, top in IMPORTS if _own(t) is not None and not top]
    assert not bad, bad


def test_no_import_cycles():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, _, t, _ in IMPORTS:
        dep = _own(t)
        if dep is not None and dep != m:
            graph[m].add(dep)
    # a package's __init__ importing its own submodules is not a cycle with them
    def edges(m):
        return {d for d in graph[m] if not (MODULES[d][1] and m.startswith(d + "."))}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in edges(m):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " → ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m)


def test_no_import_error_fallbacks_for_own_modules():
    bad = []
    for mod, (path, is_pkg) in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Try):
                continue
            catches = any(isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                          for h in node.handlers)
            own = [t for n in node.body for s in ast.walk(n) if isinstance(s, (ast.Import, ast.ImportFrom))
                   for t in _targets(mod, is_pkg, s) if _own(t)]
            if catches and own:
                bad.append((mod, node.lineno, own))
    assert not bad, bad


def _source() -> str:
    return "\n".join(p.read_text() for p, _ in MODULES.values())


def test_one_seed_scheme():
    src = _source()
    assert len(re.findall(r"^def derive_seed\(", src, flags=re.M)) == 1
    for pattern in (r"crc32", r"1_000_003", r"def sample_seed", r"initial_seed\(\)", r"manual_seed\(\w+\s*[+*]"):
        assert not re.search(pattern, src), pattern


@pytest.mark.parametrize("metric", ["rho_adv", "rho_adv_attacked", "success_rate", "not_fooled", "median_l2",
                                    "mean_l2", "error_at", "error_curve"])
def test_one_definition_per_metric(metric):
    """Each metric is defined once, in the registry's module; nothing else re-implements it."""
    from robustbench_jr.evaluation import metrics

    if metric != "error_curve":
        assert metrics.get(metric).doc
    where = [str(p.relative_to(ROOT)) for p, _ in MODULES.values()
             if re.search(rf"^\s*def _?{metric}\(", p.read_text(), flags=re.M)]
    assert set(where) <= {"evaluation/metrics.py"}, where
