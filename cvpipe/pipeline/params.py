"""A params file for one pipeline run: merged into ``params.yaml``, where DVC's stages read their params."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cvpipe import layout
from cvpipe.config import deep_merge, load_params, parse_params, read_overlay

PARAMS_YAML = str(layout.PARAMS_FILE)


def changed_keys(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (``split.seed``)."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        keys = list(dict.fromkeys([*before, *after]))
        return [name for key in keys for name in changed_keys(before.get(key), after.get(key), f"{prefix}{key}.")]
    return [] if before == after else [prefix.rstrip(".")]


def _merge_into(target: Any, overlay: Mapping[str, Any]) -> None:
    """Merge ``overlay`` into ``target`` in place, so a ruamel round-trip mapping keeps its comments."""
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), Mapping):
            _merge_into(target[key], value)
        else:
            target[key] = value


def apply_params_file(project_dir: Path, params_file: str) -> list[str]:
    """Validate the params, and merge ``params_file`` over ``params.yaml`` when it is another file.

    DVC stages read ``params.yaml`` (dvc.yaml lists its keys), so another file can only take effect by being
    written into it, as ``dvc exp run --set-param`` does: ``dvc.lock`` then records the values used, and a
    later ``dvc repro`` agrees with this run. The file may be partial (only the keys to change), like
    ``params.demo.yaml``. Comments in ``params.yaml`` are kept.

    Args:
        project_dir: the project's root.
        params_file: ``params.yaml``, or an overlay relative to ``project_dir``.

    Returns:
        The dotted keys whose values changed in ``params.yaml``.

    Raises:
        cvpipe.errors.ConfigError: a file is missing or the merged params are invalid; nothing is written.
    """
    target = project_dir / PARAMS_YAML
    source = (project_dir / params_file).resolve()
    load_params(target)
    if source == target.resolve():
        return []
    current = read_overlay(target)
    overlay = read_overlay(source)
    merged = deep_merge(current, overlay)
    parse_params(merged, origin=f"{params_file} merged over {PARAMS_YAML}")
    changed = changed_keys(current, merged)
    if changed:
        from dvc.utils.serialize import modify_yaml

        with modify_yaml(str(target)) as data:
            _merge_into(data, overlay)
    return changed
