"""What DVC knows: its hashes of files and folders, ``dvc.yaml``'s stages and ``dvc.lock``'s outputs, param values.

Hashes are DVC's own (MD5 of a file; for a folder, MD5 of its sorted ``.dir`` listing plus ``.dir``), so a
lineage record's hashes can be matched against ``dvc.lock`` and used as OpenLineage dataset versions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cvpipe.io import md5_file

log = logging.getLogger(__name__)

# Folders DVC never includes in a directory's hash.
_DVC_SKIPPED_DIRS = frozenset({".git", ".dvc", ".hg"})
_TEMPLATE = re.compile(r"\$\{\s*(key|item(?:\.[A-Za-z0-9_-]+)*)\s*\}")


# -- hashes ---------------------------------------------------------------------------------------------------


def dvc_hash(path: Path) -> dict[str, Any]:
    """DVC's hash of a file or folder, as ``dvc.lock`` writes it: ``md5``, ``size`` and, for folders, ``nfiles``.

    A folder's hash is the MD5 of its JSON listing (``[{"md5": ..., "relpath": ...}]`` sorted by path) with
    ``.dir`` appended, as ``dvc_data`` computes it.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return {"md5": md5_file(path), "size": path.stat().st_size}
    if not path.is_dir():
        raise FileNotFoundError(path)
    entries, size = [], 0
    for folder, dirs, files in os.walk(path):
        dirs[:] = [name for name in dirs if name not in _DVC_SKIPPED_DIRS]
        for name in files:
            file = Path(folder) / name
            entries.append({"md5": md5_file(file), "relpath": file.relative_to(path).as_posix()})
            size += file.stat().st_size
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode("utf-8")
    digest = hashlib.md5(listing, usedforsecurity=False).hexdigest()
    return {"md5": f"{digest}.dir", "size": size, "nfiles": len(entries)}


# -- dvc.yaml and dvc.lock ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageSpec:
    """One stage of ``dvc.yaml`` with its templates resolved: paths relative to the project root."""

    name: str
    deps: tuple[str, ...]
    outs: tuple[str, ...]
    params: tuple[str, ...]


def _substitute(value: Any, key: str, item: Any) -> Any:
    """Resolve ``${key}`` and ``${item.a.b}`` in a ``foreach`` body, as DVC does for our dvc.yaml."""
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            parts = match.group(1).split(".")
            if parts[0] == "key":
                return key
            found = item
            for part in parts[1:]:
                found = found[part]
            return str(found)

        return _TEMPLATE.sub(lookup, value)
    if isinstance(value, list):
        return [_substitute(entry, key, item) for entry in value]
    if isinstance(value, dict):
        return {_substitute(name, key, item): _substitute(entry, key, item) for name, entry in value.items()}
    return value


def _entry_paths(entries: Any) -> list[str]:
    """Paths from a deps/outs/metrics/plots list, whose entries are strings or ``{path: options}``."""
    paths = []
    for entry in entries or []:
        if isinstance(entry, str):
            paths.append(entry)
        elif isinstance(entry, dict):
            paths.extend(str(name) for name in entry)
    return [os.path.normpath(path) for path in paths]


def _param_keys(entries: Any) -> list[str]:
    keys: list[str] = []
    for entry in entries or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):  # {other_file.yaml: [keys]}: keys of another file, kept with its name
            keys.extend(f"{name}:{key}" for name, values in entry.items() for key in values or [])
    return keys


def stage_spec(root: Path, stage: str) -> StageSpec | None:
    """The stage named ``stage`` (``split``, ``train@scratch``) in ``root/dvc.yaml``, or None.

    Only what cvpipe's ``dvc.yaml`` uses is resolved (``foreach`` over a mapping or a list with ``${key}``,
    ``${item}`` and ``${item.field}``); anything else gives None, and the caller falls back to what the CLI
    knows.
    """
    try:
        data = yaml.safe_load((Path(root) / "dvc.yaml").read_text(encoding="utf-8")) or {}
        group, _, key = stage.partition("@")
        definition = (data.get("stages") or {}).get(group)
        if not isinstance(definition, dict):
            return None
        if key:
            foreach = definition.get("foreach")
            if isinstance(foreach, dict):
                item = foreach.get(key)
            elif isinstance(foreach, list) and key in [str(entry) for entry in foreach]:
                item = key
            else:
                return None
            definition = _substitute(definition.get("do") or {}, key, item)
        elif "foreach" in definition or "matrix" in definition:
            return None
        text = json.dumps(definition)
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if "${" in text:
        log.debug("dvc.yaml stage %s uses templates cvpipe does not resolve", stage)
        return None
    outs = [*_entry_paths(definition.get("outs")), *_entry_paths(definition.get("metrics"))]
    outs += _entry_paths(definition.get("plots"))
    return StageSpec(
        stage, tuple(_entry_paths(definition.get("deps"))), tuple(outs), tuple(_param_keys(definition.get("params")))
    )


def read_lock(root: Path) -> dict[str, Any]:
    """The ``stages`` mapping of ``root/dvc.lock`` (empty when there is none yet)."""
    try:
        data = yaml.safe_load((Path(root) / "dvc.lock").read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        return {}
    stages = data.get("stages")
    return stages if isinstance(stages, dict) else {}


def lock_outputs(lock: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{output path: {"stage", "md5", "size", "nfiles"}}`` over every stage of a ``dvc.lock``."""
    found: dict[str, dict[str, Any]] = {}
    for stage, entry in lock.items():
        for out in (entry or {}).get("outs") or []:
            if isinstance(out, dict) and "path" in out:
                info = {name: out[name] for name in ("md5", "size", "nfiles") if name in out}
                found[os.path.normpath(out["path"])] = {"stage": stage, **info}
    return found


def param_values(params_file: Path, keys: Sequence[str]) -> dict[str, Any]:
    """The values of dotted ``keys`` (``split.seed``, ``train.scratch``) in a params file."""
    try:
        data = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) or {}
    except OSError:
        return {}
    values: dict[str, Any] = {}
    for key in keys:
        if ":" in key:
            continue  # another file's key: DVC tracks it; cvpipe reads only params.yaml
        found: Any = data
        for part in key.split("."):
            found = found.get(part) if isinstance(found, dict) else None
        values[key] = found
    return values


def producing_stage(path: str, produced: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The stage whose output is ``path`` or a folder holding it (``data/cache/images/test.npy``)."""
    candidate = os.path.normpath(path)
    while candidate not in ("", ".", "/"):
        if candidate in produced:
            return str(produced[candidate]["stage"])
        candidate = os.path.dirname(candidate)
    return None
