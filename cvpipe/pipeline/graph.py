"""DVC's stage graph, read from ``dvc.yaml`` through DVC itself: what the flow, its tasks and the demo follow."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def family(stage: str) -> str:
    """The stage's family: ``train@scratch`` -> ``train``, ``sub/dvc.yaml:split`` -> ``split``."""
    return stage.rsplit(":", 1)[-1].split("@", 1)[0]


def stage_graph(project_dir: Path) -> dict[str, tuple[str, ...]]:
    """Read DVC's own stage graph: each stage and the stages it directly depends on.

    Data sources (``dvc add``-ed files) are left out: they have no command and no upstream, so nothing runs
    for them, and leaving them out removes no path between stages.

    Args:
        project_dir: the DVC repository's root.

    Returns:
        ``{stage: (upstream stages, ...)}`` keyed by DVC's addressing (``train@scratch``, or
        ``sub/dvc.yaml:name`` for stages outside the root ``dvc.yaml``), in DVC's order.
    """
    from dvc.repo import Repo

    with Repo(str(project_dir)) as repo:
        graph = repo.index.graph
        stages = [stage for stage in graph.nodes if not stage.is_data_source]
        # DVC's edges point from a stage to the stage it depends on.
        return {
            _address(stage, repo.root_dir): tuple(
                sorted(_address(dep, repo.root_dir) for dep in graph.successors(stage) if not dep.is_data_source)
            )
            for stage in stages
        }


def _address(stage: Any, root: str) -> str:
    """The stage's name as ``dvc repro`` takes it from the repository root (DVC's own is relative to cwd)."""
    dvcfile = os.path.relpath(stage.path, root)
    name = getattr(stage, "name", None)
    if not name:
        return dvcfile  # a .dvc file stage (import): its path is its name
    return name if dvcfile == "dvc.yaml" else f"{dvcfile}:{name}"


def topological_order(graph: Mapping[str, Sequence[str]]) -> list[str]:
    """Stages ordered so that each comes after its upstream stages; ties keep the graph's order.

    Raises:
        ValueError: the graph names an unknown stage or has a cycle (DVC refuses both, so this is a bug).
    """
    missing = {up for ups in graph.values() for up in ups if up not in graph}
    if missing:
        raise ValueError(f"upstream stages not in the graph: {sorted(missing)}")
    order: list[str] = []
    remaining = list(graph)
    while remaining:
        # One layer at a time: every stage whose upstream stages are all placed already.
        layer = [stage for stage in remaining if all(up in order for up in graph[stage])]
        if not layer:
            raise ValueError(f"cycle among stages {remaining}")
        order.extend(layer)
        remaining = [stage for stage in remaining if stage not in layer]
    return order


def select_stages(graph: Mapping[str, Sequence[str]], targets: Iterable[str] | None) -> dict[str, tuple[str, ...]]:
    """The part of the graph ``dvc repro TARGETS`` would reproduce: the targets and everything upstream.

    A target is a stage name (``evaluate@scratch``) or a foreach group (``train`` selects every
    ``train@...``), as ``dvc repro`` accepts them.

    Raises:
        ValueError: a target names no stage; the message lists the stages there are.
    """
    if not targets:
        return {stage: tuple(ups) for stage, ups in graph.items()}
    wanted: set[str] = set()
    for target in targets:
        matches = [stage for stage in graph if stage == target or stage.startswith(f"{target}@")]
        if not matches:
            raise ValueError(f"no stage {target!r} in dvc.yaml; stages: {', '.join(graph)}")
        wanted.update(matches)
    closure: set[str] = set()
    pending = list(wanted)
    while pending:
        stage = pending.pop()
        if stage not in closure:
            closure.add(stage)
            pending.extend(graph[stage])
    return {stage: tuple(ups) for stage, ups in graph.items() if stage in closure}
