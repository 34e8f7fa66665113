"""The house rules of DESIGN.md that the AST can check: no import cycles, small modules, Keras-only ML code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.codemap import ROOT, Import, external_imports, imports, module_files

MAX_LINES = 600
# Lazy (in-function) imports that close a cycle, each with why it is kept. Empty: none is needed.
LAZY_CYCLES: dict[frozenset[str], str] = {}
# Code that must run under any Keras 3 backend: keras + numpy, never these (directly or through cvpipe).
BACKEND_NEUTRAL = ["cvpipe/ml", "cvpipe/stages/features.py", "cvpipe/stages/train.py", "cvpipe/stages/evaluate.py"]
FORBIDDEN = {"tensorflow", "prefect", "pandera"}
# Where a backend is imported inside the branch that runs only when it is the backend in use, and why.
BACKEND_DISPATCH: dict[str, str] = {
    "cvpipe/ml/device.py": "the one place that asks the running backend for its GPUs, determinism switch and "
    "multi-GPU strategy: it imports tensorflow (like jax and torch) lazily, under `backend == 'tensorflow'`",
}


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def describe(component: list[str], edges: list[Import]) -> str:
    inside = [e for e in edges if e.source in component and e.target in component]
    return "; ".join(f"{e.source}:{e.line} -> {e.target}{' (lazy)' if e.lazy else ''}" for e in inside)


def test_the_import_graph_is_found() -> None:
    edges = imports()
    assert edges and any(edge.lazy for edge in edges)


def test_no_module_level_import_cycle() -> None:
    edges = [edge for edge in imports() if not edge.lazy]
    found = cycles(edges)
    assert not found, "module-level import cycles: " + " | ".join(describe(c, edges) for c in found)


def test_no_lazy_import_cycle_without_a_reason() -> None:
    edges = list(imports())
    found = [c for c in cycles(edges) if frozenset(c) not in LAZY_CYCLES]
    assert not found, "import cycles closed by a lazy import: " + " | ".join(describe(c, edges) for c in found)


def test_lazy_cycle_exceptions_are_still_cycles() -> None:
    present = {frozenset(c) for c in cycles(list(imports()))}
    stale = [sorted(c) for c in LAZY_CYCLES if c not in present]
    assert not stale, f"LAZY_CYCLES lists cycles that are gone: {stale}"


SOURCES = sorted(p for folder in ("cvpipe", "flows", "tasks") for p in (ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_over_600_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)}: {lines} lines (at most {MAX_LINES}): split it by concern"


def backend_neutral_modules() -> dict[str, Path]:
    files = module_files()
    return {
        module: path
        for module, path in files.items()
        if any(path == ROOT / entry or (ROOT / entry) in path.parents for entry in BACKEND_NEUTRAL)
    }


def test_backend_neutral_modules_are_found() -> None:
    found = backend_neutral_modules()
    assert found
    for entry in [*BACKEND_NEUTRAL, *BACKEND_DISPATCH]:
        assert (ROOT / entry).exists(), f"{entry} is gone: update the lists of test_architecture.py"


@pytest.mark.parametrize("module", sorted(backend_neutral_modules()))
def test_ml_code_imports_keras_not_tensorflow_prefect_or_pandera(module: str) -> None:
    files = module_files()
    edges: dict[str, set[str]] = {}
    for edge in imports():
        edges.setdefault(edge.source, set()).add(edge.target)
    # Through cvpipe too: a stage module that imports a cvpipe module importing pandera loads pandera.
    seen, todo, bad = set(), [module], []
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(edges.get(current, ()))
        path = files[current]
        dispatch = path.relative_to(ROOT).as_posix() in BACKEND_DISPATCH
        bad.extend(
            f"{path.relative_to(ROOT)}:{line} imports {name}{' (lazy)' if lazy else ''}"
            for name, line, lazy in external_imports(path)
            if name in FORBIDDEN and not (dispatch and lazy and name == "tensorflow")
        )
    assert not bad, f"{module} must run under any Keras 3 backend: {bad}"


def module_loggers(path: Path) -> list[tuple[int, str]]:
    """Module-level ``name = logging.getLogger(...)``: (line, the argument's source)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            if isinstance(func, ast.Attribute) and func.attr == "getLogger" and node.value.args:
                found.append((node.lineno, ast.unparse(node.value.args[0])))
    return found


def test_every_module_logs_under_its_own_name() -> None:
    assert any(module_loggers(path) for path in SOURCES)
    strays = [
        f"{path.relative_to(ROOT)}:{line} getLogger({arg})"
        for path in SOURCES
        for line, arg in module_loggers(path)
        if arg != "__name__"
    ]
    assert not strays, f"a module logs to logging.getLogger(__name__), under the 'cvpipe' tree: {strays}"
