"""What the tree says, read from source: the cvpipe import graph (from the AST) and dvc.yaml as DVC expands it.

The architecture, dvc.yaml and layout tests compute their expectations from here instead of hand lists, so
a module moved, split or added is checked without editing a test.
"""

from __future__ import annotations

import ast
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "cvpipe"


@dataclass(frozen=True)
class Import:
    """One import statement's target inside the project.

    Attributes:
        source: the importing module (``cvpipe.stages.train``).
        target: the imported cvpipe module (``cvpipe.ml.models``), resolved to a module file.
        line: where the statement is.
        lazy: inside a function (runs when called), not at import time.
    """

    source: str
    target: str
    line: int
    lazy: bool


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package``: dotted name -> file (packages by their ``__init__.py``)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def is_package(name: str, root: Path = ROOT) -> bool:
    """Whether a dotted name is a package (a folder with ``__init__.py``)."""
    return (root / Path(*name.split(".")) / "__init__.py").is_file()


def is_substantive(path: Path) -> bool:
    """Whether a module runs anything beyond its docstring (an empty package ``__init__`` changes no output)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return any(not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) for node in body)


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of a dotted name that is a cvpipe module (``cvpipe.ml.models.build`` -> the module)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def _absolute(node: ast.ImportFrom, module: str, root: Path) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved against the importing module)."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package(module, root):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.AST, bool]]:
    """Every import node under ``node``, with whether it runs lazily; ``if TYPE_CHECKING:`` bodies never run."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _walk_one(other, lazy)
            continue
        yield from _walk_one(child, lazy)


def _walk_one(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.AST, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, lazy
        return
    inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    yield from _walk(node, inner)


def import_targets(node: ast.Import | ast.ImportFrom, module: str, modules: dict[str, Path], root: Path) -> list[str]:
    """The cvpipe modules one import statement loads (``from cvpipe.ml import models`` -> ``cvpipe.ml.models``)."""
    targets = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (found := _resolve(alias.name, modules)) is not None:
                targets.append(found)
        return targets
    base = _absolute(node, module, root)
    if base != PACKAGE and not base.startswith(PACKAGE + "."):
        return targets
    for alias in node.names:
        found = _resolve(f"{base}.{alias.name}", modules)
        if found is not None and found != base:
            targets.append(found)  # a submodule imported by name
        elif (found := _resolve(base, modules)) is not None:
            targets.append(found)
    return sorted(set(targets))


@cache
def imports(root: Path = ROOT) -> tuple[Import, ...]:
    """Every cvpipe -> cvpipe import in the package, module-level and lazy (``TYPE_CHECKING`` ones left out)."""
    modules = module_files(root)
    found = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, lazy in _walk(tree, lazy=False):
            assert isinstance(node, ast.Import | ast.ImportFrom)
            for target in import_targets(node, module, modules, root):
                if target != module:
                    found.append(Import(module, target, node.lineno, lazy))
    return tuple(found)


def external_imports(path: Path) -> list[tuple[str, int, bool]]:
    """Top-level names of every absolute import in one file: (name, line, lazy)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node, lazy in _walk(tree, lazy=False):
        if isinstance(node, ast.Import):
            found.extend((alias.name.split(".")[0], node.lineno, lazy) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.module.split(".")[0], node.lineno, lazy))
    return found


def parent_packages(module: str) -> list[str]:
    """The packages Python initialises before a module: ``cvpipe.ml.models`` -> ``cvpipe``, ``cvpipe.ml``."""
    parts = module.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


def closure(entries: set[str], leaves: set[str] | None = None, root: Path = ROOT) -> set[str]:
    """Every cvpipe module that importing ``entries`` can run, module-level and lazy imports alike.

    A parent package counts when its ``__init__`` runs code. ``leaves`` are reached but not followed (plumbing
    whose own imports cannot matter to the caller).
    """
    modules = module_files(root)
    edges: dict[str, set[str]] = {}
    for edge in imports(root):
        edges.setdefault(edge.source, set()).add(edge.target)
    seen: set[str] = set()
    todo = list(entries)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        if module in (leaves or ()):
            continue
        todo.extend(edges.get(module, ()))
        todo.extend(p for p in parent_packages(module) if p in modules and is_substantive(modules[p]))
    return seen


# -- the CLI ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A top-level ``cvpipe <name>`` command found in ``cvpipe/cli/``."""

    name: str
    module: str
    function: ast.FunctionDef
    tree: ast.Module


def _command_name(decorator: ast.expr, function: ast.FunctionDef) -> str | None:
    """The command name a ``@app.command(...)`` decorator registers, or None for another decorator."""
    call = decorator if isinstance(decorator, ast.Call) else None
    target = call.func if call else decorator
    if not (isinstance(target, ast.Attribute) and target.attr == "command"):
        return None
    if not (isinstance(target.value, ast.Name) and target.value.id == "app"):
        return None  # a sub-app's command (``cvpipe lineage show``): dvc.yaml calls top-level ones only
    if call:
        for keyword in call.keywords:
            if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                return str(keyword.value.value)
        if call.args and isinstance(call.args[0], ast.Constant):
            return str(call.args[0].value)
    return function.name.replace("_", "-")


@cache
def commands(root: Path = ROOT) -> dict[str, Command]:
    """Every top-level command of the ``cvpipe`` app, by name, read from the AST of ``cvpipe/cli/``."""
    found: dict[str, Command] = {}
    for path in sorted((root / PACKAGE / "cli").glob("*.py")):
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    if (name := _command_name(decorator, node)) is not None:
                        assert name not in found, f"cvpipe {name} is registered twice"
                        found[name] = Command(name, module, node, tree)
    return found


def _bindings(tree: ast.Module, module: str, modules: dict[str, Path], root: Path) -> dict[str, set[str]]:
    """Module-level names -> the cvpipe modules they come from (imports), or that their definition uses."""
    bound: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                name = (alias.asname or alias.name).split(".")[0]
                if isinstance(node, ast.Import):
                    bound.setdefault(name, set()).update(import_targets(node, module, modules, root))
                else:
                    single = ast.ImportFrom(module=node.module, names=[alias], level=node.level)
                    bound.setdefault(name, set()).update(import_targets(single, module, modules, root))
    return bound


def command_entries(command: Command, root: Path = ROOT) -> set[str]:
    """The cvpipe modules a command's function runs: its lazy imports, the module-level imports it uses, and
    those of the same module's helpers it calls (followed by name)."""
    modules = module_files(root)
    bound = _bindings(command.tree, command.module, modules, root)
    local = {
        node.name: node
        for node in command.tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    entries: set[str] = set()
    seen: set[str] = set()
    todo: list[ast.AST] = list(command.function.body)
    while todo:
        node = todo.pop()
        for child in ast.walk(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                entries.update(import_targets(child, command.module, modules, root))
            elif isinstance(child, ast.Name) and child.id not in seen:
                seen.add(child.id)
                entries.update(bound.get(child.id, ()))
                if child.id in local:
                    todo.extend(local[child.id].body)
    return entries


# -- dvc.yaml -----------------------------------------------------------------------------------------------------


@cache
def dvc_stages(root: Path = ROOT) -> dict[str, dict[str, Any]]:
    """dvc.yaml's stages as DVC itself expands them (``foreach`` items, ``${...}``), by stage name."""
    import yaml
    from dvc.parsing import DataResolver
    from dvc.repo import Repo

    definition = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))
    with Repo(str(root)) as repo:
        resolved = DataResolver(repo, repo.root_dir, definition).resolve()
    return resolved["stages"]


def dvc_top_plots(root: Path = ROOT) -> list[Any]:
    """dvc.yaml's top-level ``plots`` section."""
    import yaml

    return yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8")).get("plots", [])


def paths(entries: list[Any] | None) -> list[str]:
    """The paths of a deps/outs/metrics list (an entry may be ``{path: {options}}``)."""
    found = []
    for entry in entries or []:
        found.extend(entry) if isinstance(entry, dict) else found.append(entry)
    return [str(path) for path in found]


@dataclass(frozen=True)
class Invocation:
    """A stage's ``cmd`` parsed: ``cvpipe <command> [arguments] --option value ...``."""

    command: str
    arguments: tuple[str, ...]
    options: dict[str, str]


def invocation(cmd: str) -> Invocation:
    """Parse a stage's ``cmd`` (one ``bin/cvpipe`` call, every option with a value)."""
    words = shlex.split(cmd)
    # bin/cvpipe, not a bare cvpipe: DVC runs cmds with the caller's PATH (see bin/cvpipe).
    assert words[0] == "bin/cvpipe", f"{cmd!r}: a stage runs one bin/cvpipe command"
    arguments: list[str] = []
    options: dict[str, str] = {}
    rest = words[2:]
    while rest:
        word = rest.pop(0)
        if word.startswith("--"):
            key, _, value = word.partition("=")
            options[key] = value if value else rest.pop(0)
        else:
            arguments.append(word)
    return Invocation(words[1], tuple(arguments), options)
