"""Tests fail, never skip, when a feature of the package vanishes (issue #15, item 7).

A test may skip for what the machine lacks (CUDA, chromium, timm, the full MNIST files),
never because a module, function or test dependency of robustbench-jr itself is missing: a
refactor that drops ``few_shot`` or the audit must turn the suite red, not quietly shorter."""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
#: packages whose absence is a broken install, not a missing optional tool
OWN = ("robustbench_jr", "sklearn")


def _imports_own(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").split(".")[0] in OWN):
            return True
        if isinstance(n, ast.Import) and any(a.name.split(".")[0] in OWN for a in n.names):
            return True
    return False


def _is_call(node: ast.AST, name: str) -> bool:
    f = node.func if isinstance(node, ast.Call) else None
    return (isinstance(f, ast.Attribute) and f.attr == name) or (isinstance(f, ast.Name) and f.id == name)


def violations(source: str, filename: str) -> list[str]:
    tree = ast.parse(source)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _is_call(node, "importorskip") and node.args and \
                isinstance(node.args[0], ast.Constant) and str(node.args[0].value).split(".")[0] in OWN:
            out.append(f"{filename}:{node.lineno}: importorskip of the package's own {node.args[0].value!r}")
        if isinstance(node, ast.Try) and _imports_own(ast.Module(body=node.body, type_ignores=[])):
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else list(h.type.elts)
                if any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in names):
                    out.append(f"{filename}:{h.lineno}: an ImportError of the package is caught (skip or fallback)")
        if isinstance(node, ast.If) and any(_is_call(n, "skip") for b in node.body for n in ast.walk(b)):
            cond = ast.unparse(node.test)
            if "hasattr(" in cond or re.search(r"(?<![.\w])_\w*available\w*\(", cond):
                out.append(f"{filename}:{node.lineno}: skips when a feature is missing ({cond})")
    return out


def test_the_rule_catches_the_old_patterns():
    old_training = '''
def test_few_shot(tmp_path):
    pytest.importorskip("robustbench_jr.data", minversion=None)
    from robustbench_jr import data as d
    if not hasattr(d, "few_shot"):
        pytest.skip("few_shot not available")
'''
    old_experiments = '''
def _audit_available():
    try:
        from robustbench_jr.evaluation.audit import run_audit
    except ImportError:
        return False
    return True

def test_x():
    if not _audit_available():
        pytest.skip("audit package not in this checkout")
'''
    assert len(violations(old_training, "t")) == 2
    assert len(violations(old_experiments, "t")) == 2
    # skipping for what the machine lacks stays allowed
    assert violations('if not torch.cuda.is_available():\n    pytest.skip("no CUDA")\n', "t") == []
    assert violations('timm = pytest.importorskip("timm")\n', "t") == []


def test_no_test_skips_when_a_package_feature_vanishes():
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        found += violations(path.read_text(encoding="utf-8"), path.name)
    assert not found, "tests that skip instead of failing:\n" + "\n".join(found)
