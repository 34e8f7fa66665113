"""dvc.yaml's code deps are exactly the code each stage runs, computed from the AST of cvpipe/.

For each stage: its ``cmd`` names a ``cvpipe`` command; the command's function in ``cvpipe/cli/`` imports stage
modules (lazily or not); the closure of their cvpipe imports is what a code change can reach. Every module of
that closure must be covered by a code dep (a file, or a folder holding it), so that a change a stage runs makes
it stale; and every code dep must cover a module of the closure, so that a change elsewhere does not.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.codemap import (
    ROOT,
    closure,
    command_entries,
    commands,
    dvc_stages,
    invocation,
    module_files,
    paths,
)

# Plumbing whose changes cannot change an output's bytes: needs no code dep (a stage may still list it).
PLUMBING: dict[str, str] = {
    "cvpipe/cli": "the shell: parses options, sets up logging and progress; the command line it gets is the "
    "stage's cmd, which DVC tracks",
    "cvpipe/config.py": "params loading: DVC tracks the value of every param key a stage lists, not the parser",
    "cvpipe/errors.py": "exception types and messages: a failing stage leaves no new output",
    "cvpipe/io.py": "atomic writes and file hashes: the bytes written are the caller's (tests/unit/test_io.py)",
    "cvpipe/layout.py": "the path table: a moved path changes a cmd or outs in dvc.yaml, which reruns the stage "
    "(tests/unit/test_layout.py holds them together)",
    "cvpipe/parallel.py": "worker pools: results come back in input order whatever the worker count (the e2e "
    "determinism test compares one worker with all cores, byte for byte)",
    "cvpipe/lineage": "track_stage writes each stage's lineage record and events, outputs of their own: a change "
    "there must not rerun the DAG (the report, which renders records, lists it)",
}
# Stages that list no code at all, on purpose.
NO_CODE_DEPS: dict[str, str] = {
    "download": "a refactor must not make DVC re-download 800 MB; the archive's bytes are the source's "
    "(SOURCE.json records their sha256), not the code's",
}
STAGES = dvc_stages()


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def covers(dep: str, file: str) -> bool:
    """Whether a dep (a file or a folder) covers a module file."""
    return file == dep or file.startswith(dep.rstrip("/") + "/")


def is_plumbing(file: str) -> bool:
    return any(covers(entry, file) for entry in PLUMBING)


def code_deps(stage: dict) -> list[str]:
    return [dep for dep in paths(stage.get("deps")) if dep == "cvpipe" or dep.startswith("cvpipe/")]


def stage_closure(name: str) -> set[str]:
    """The files of every cvpipe module the stage's command can run (plumbing reached, not followed)."""
    command = commands()[invocation(STAGES[name]["cmd"]).command]
    files = module_files()
    leaves = {module for module, path in files.items() if is_plumbing(relative(path))}
    return {relative(files[module]) for module in closure(command_entries(command), leaves)}


def suggestion(name: str) -> str:
    needed = sorted(file for file in stage_closure(name) if not is_plumbing(file))
    return f"{name} runs: " + ", ".join(needed)


CODED = [name for name in STAGES if name not in NO_CODE_DEPS]


def test_stages_are_found() -> None:
    assert CODED, "dvc.yaml lists no stage"
    assert set(NO_CODE_DEPS) <= set(STAGES), "an exempt stage is not in dvc.yaml"


@pytest.mark.parametrize("name", CODED)
def test_every_stage_runs_a_registered_command(name: str) -> None:
    assert invocation(STAGES[name]["cmd"]).command in commands(), f"{name}: no `cvpipe` command for its cmd"


@pytest.mark.parametrize("name", CODED)
def test_code_deps_cover_every_module_the_stage_runs(name: str) -> None:
    deps = code_deps(STAGES[name])
    reached = stage_closure(name)
    assert reached, f"{name}: its command imports no cvpipe module"
    missing = sorted(file for file in reached if not is_plumbing(file) and not any(covers(d, file) for d in deps))
    assert not missing, f"stage {name} runs {missing} but no code dep covers them ({suggestion(name)})"


@pytest.mark.parametrize("name", CODED)
def test_code_deps_are_nothing_more(name: str) -> None:
    reached = stage_closure(name)
    deps = code_deps(STAGES[name])
    for dep in deps:
        assert (ROOT / dep).exists(), f"stage {name}: code dep {dep} does not exist"
    extra = [dep for dep in deps if not any(covers(dep, file) for file in reached)]
    assert not extra, f"stage {name} lists {extra}, which it never runs ({suggestion(name)})"


@pytest.mark.parametrize("name", sorted(NO_CODE_DEPS))
def test_exempt_stages_list_no_code(name: str) -> None:
    assert not code_deps(STAGES[name]), f"{name}: {NO_CODE_DEPS[name]}"


def test_plumbing_list_names_real_paths() -> None:
    assert PLUMBING
    for entry, reason in PLUMBING.items():
        assert (ROOT / entry).exists(), f"PLUMBING names {entry}, which is gone ({reason})"
