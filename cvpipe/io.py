"""Atomic writes and content hashes shared by every stage.

A stage never leaves a half-written file in an output's place: it writes to a temporary file in the same
folder (same filesystem, so the final ``os.replace`` is atomic) and renames it only when complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

_CHUNK = 1 << 20


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` only if the block succeeds.

    Args:
        final: where the file must appear.

    Yields:
        A path in the same folder to write to; it is removed if the block raises.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600; give the output the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as stable, sorted, indented JSON (byte-identical for equal payloads)."""
    text = json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def _file_digest(path: Path, digest: Any) -> str:
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    return _file_digest(path, hashlib.sha256())


def md5_file(path: Path) -> str:
    """Return the hex MD5 of a file (what DVC and Keras's published weights use; not for security)."""
    return _file_digest(path, hashlib.md5(usedforsecurity=False))


def sha256_bytes(data: bytes) -> str:
    """Return the hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame as parquet atomically, without the index, so equal frames give equal bytes."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
