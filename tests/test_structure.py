"""The house keeps its shape: packages talk through public doors, data flows one way, no import cycles.

The arrows (``../shared/DESIGN.md``): the contract imports no stage; featurize and sql import only the contract;
regress imports the contract and sql; explain imports the contract, sql, regress and featurize; synth (the synthetic
cohorts and their ground truth) imports the contract and sql; no library package imports the command line. A module whose name starts with ``_`` is imported only inside its own package.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: Source folder → installed package.
FOLDERS = {
    "featurize": "slide2expr.featurize",
    "sql": "slide2expr.sql",
    "regress": "slide2expr.regress",
    "explain": "slide2expr.explain",
    "slide2expr": "slide2expr",
}
#: Library packages and what each may import (besides itself).
ALLOWED = {
    "slide2expr.contract": set(),
    "slide2expr.synth": {"slide2expr.contract", "slide2expr.sql"},
    "slide2expr.featurize": {"slide2expr.contract"},
    "slide2expr.sql": {"slide2expr.contract"},
    "slide2expr.regress": {"slide2expr.contract", "slide2expr.sql"},
    "slide2expr.explain": {
        "slide2expr.contract",
        "slide2expr.sql",
        "slide2expr.regress",
        "slide2expr.featurize",
    },
}
#: The command line (``slide2expr.cli``, ``slide2expr.commands``, …) may import every package.
CLI = "slide2expr"


def _modules() -> dict[str, Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _package(module: str) -> str:
    """The package a module belongs to: a library package of :data:`ALLOWED`, or the command line."""
    for package in ALLOWED:
        if module == package or module.startswith(package + "."):
            return package
    return CLI


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every import of a slide2expr module in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                visit(child, False)
                continue
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, False)
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")
                    base = base if is_package else base[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append((target, child.lineno, top))
                for a in child.names:  # `from pkg import _module` imports a module too
                    if f"{target}.{a.name}" in MODULES:
                        found.append((f"{target}.{a.name}", child.lineno, top))
            visit(child, top)

    visit(tree, True)
    return [(t, line, top) for t, line, top in found if t == "slide2expr" or t.startswith("slide2expr.")]


EDGES = {m: _imports(m, p) for m, p in MODULES.items()}


def _where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_the_packages_are_found():
    for package in (*ALLOWED, "slide2expr.cli"):
        assert package in MODULES, package


def test_no_private_module_of_another_package():
    bad = []
    for module, edges in EDGES.items():
        for target, line, _ in edges:
            private = any(part.startswith("_") and part != "__init__" for part in target.split(".")[1:])
            if private and _package(target) != _package(module):
                bad.append(f"{_where(module, line)} imports {target}")
    assert not bad, "private modules imported across packages:\n" + "\n".join(bad)


def test_imports_follow_the_pipeline():
    bad = []
    for module, edges in EDGES.items():
        package = _package(module)
        if package == CLI:
            continue
        for target, line, _ in edges:
            other = _package(target)
            if other == package or target == "slide2expr":
                continue
            if other not in ALLOWED[package]:
                bad.append(f"{_where(module, line)}: {package} imports {target}")
    assert not bad, "imports against the arrows of DESIGN.md:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {
        m: sorted({t for t, _, top in edges if top and t in MODULES and t != m}) for m, edges in EDGES.items()
    }
    # a package's __init__ importing its own modules is not a cycle through them unless one imports the package
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, "module-level import cycles:\n" + "\n".join(" ↔ ".join(c) for c in cycles)


def test_only_slide2expr_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == "slide2expr" or p.startswith("slide2expr.") for p in config["packages"])
    # outside the repository (where the stage folders would shadow), no top-level `sql` or `explain` exists
    code = "import importlib.util as u; print([n for n in ('sql', 'explain', 'regress', 'featurize') if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("folder", ["tests", "benchmarks"])
def test_tests_and_benchmarks_use_the_installed_names(folder):
    bad = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            bad += [
                f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                for n in names
                if n.split(".")[0] in {"featurize", "sql", "regress", "explain"}
            ]
    assert not bad, "\n".join(bad)


def test_the_namespaces_are_lazy_attributes():
    code = (
        "import sys, slide2expr as s2e; assert 'slide2expr.regress' not in sys.modules; "
        "print(s2e.sql.__name__, s2e.regress.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["slide2expr.sql", "slide2expr.regress"]
    assert importlib.util.find_spec("slide2expr.contract") is not None
