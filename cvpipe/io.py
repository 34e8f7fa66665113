"""Atomic writes and content hashes shared by every stage.

A stage never leaves a half-written file in an output's place: it writes to a temporary file in the same
folder (same filesystem, so the final ``os.replace`` is atomic) and renames it only when complete.

Temporary names are ``.<name>.<pid>@<host>.<random>.tmp``: hidden, never matching an output's name or a
``*.npy``/``*.json`` glob, and naming their writer. A writer killed outright (SIGKILL, OOM killer, power
loss) cannot remove its temporary file, so the next write of the same output removes the temporary files of
writers that are gone: repeated kills do not fill the disk, and a folder another stage reads (DVC hashes
``reports/metrics`` whole) holds the same files as after an uninterrupted run.

A write that fails because the disk (or the user's quota) is full removes its temporary file, leaves the
previous output untouched and raises :class:`~cvpipe.errors.DiskFullError`, which the CLI reports as one
line saying what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvpipe.errors import CvpipeError, DiskFullError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

_CHUNK = 1 << 20
TEMP_SUFFIX = ".tmp"
# ENOSPC: the filesystem is full; EDQUOT: the user's quota is. Both are fixed the same way.
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Libraries that wrap the OS error in their own text (HDF5 through h5py) still quote strerror.
_DISK_FULL_TEXT = tuple(os.strerror(code) for code in sorted(_DISK_FULL_ERRNOS))


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _host() -> str:
    """This machine's name as a file-name-safe token (no dots: they separate the parts of a temp name)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:32] or "host"


def _writer_tag() -> str:
    return f"{os.getpid()}@{_host()}"


def _temp_pattern(final: Path) -> re.Pattern[str]:
    """Temporary names of ``final``: ``.<name>.<pid>@<host>.<random><suffix>``."""
    return re.compile(rf"\.{re.escape(final.name)}\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9-]+)\.[^.]+\..+")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temps(final: Path) -> list[Path]:
    """Remove temporary files of ``final`` left by writers on this machine that no longer run.

    A temporary file whose writer still runs (another process writing the same output), or that another
    machine wrote (a shared folder), is left alone.

    Args:
        final: the output whose temporary siblings to look for.

    Returns:
        The paths removed.
    """
    final = Path(final)
    prefix, pattern, host, me = f".{final.name}.", _temp_pattern(final), _host(), os.getpid()
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(final.parent):
            # The prefix test first: a folder of many outputs (thumbnails) is scanned once per write.
            match = pattern.fullmatch(entry.name) if entry.name.startswith(prefix) else None
            if match is None or match["host"] != host:
                continue
            pid = int(match["pid"])
            if pid != me and not _alive(pid):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return removed


def temp_path(final: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """Create and return an empty temporary file next to ``final``, after removing stale ones.

    For writers that rename the file into place themselves (a Keras checkpoint needs a ``.keras`` suffix:
    pass ``suffix=".partial.keras"``); everything else uses :func:`atomic_path`.

    Raises:
        DiskFullError: the filesystem has no room for even the empty file.
    """
    final = Path(final)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final)
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.{_writer_tag()}.", suffix=suffix, dir=final.parent)
    except OSError as error:
        if is_disk_full(error):
            raise disk_full_error(final) from error
        raise
    os.close(fd)
    return Path(name)


def _exception_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then the exception it was raised from or while handling, and so on (each once)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_disk_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an exception it was raised from or while handling, says the disk is full."""
    return any(
        (isinstance(link, OSError) and link.errno in _DISK_FULL_ERRNOS)
        or any(text in str(link) for text in _DISK_FULL_TEXT)
        for link in _exception_chain(error)
    )


def failed_path(error: BaseException | None) -> str | None:
    """The file an OS error (or one it was raised from or while handling) names, if any."""
    for link in _exception_chain(error):
        if isinstance(link, OSError) and isinstance(link.filename, str | bytes | os.PathLike):
            return os.fsdecode(link.filename)
    return None


def _free_space(folder: Path) -> str:
    """Free space on the filesystem holding ``folder``, for a person ("12.3 MiB"); "unknown" if unreadable."""
    try:
        free = float(shutil.disk_usage(folder).free)
    except OSError:
        return "unknown"
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"  # pragma: no cover - the loop always returns


def disk_full_error(path: Path | str | None) -> DiskFullError:
    """The one-line error for a write that ran out of space (``path``: what was being written, if known)."""
    if path is None:
        return DiskFullError(
            "no space left on device: free some space (or move the workspace to a larger disk), then rerun"
        )
    path = Path(path)
    folder = next((parent for parent in path.parents if parent.exists()), Path("."))
    return DiskFullError(
        f"no space left on device writing {path} ({_free_space(folder)} free there): free some space or move "
        "the workspace to a larger disk, then rerun; nothing partial was left in its place"
    )


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` only if the block succeeds.

    Args:
        final: where the file must appear.

    Yields:
        A path in the same folder to write to; it is removed if the block raises.

    Raises:
        DiskFullError: the disk or quota filled up while writing; ``final`` is as it was before.
    """
    final = Path(final)
    tmp = temp_path(final)
    try:
        yield tmp
        # mkstemp creates 0600; give the output the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    except Exception as error:
        if isinstance(error, CvpipeError) or not is_disk_full(error):
            raise
        # Remove it first, so the message reports the space this write leaves free.
        tmp.unlink(missing_ok=True)
        raise disk_full_error(final) from error
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file atomically."""
    import numpy as np  # numpy is imported by every stage that writes arrays anyway

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        # A file handle, because np.save would append '.npy' to the temporary name.
        np.save(handle, array)


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (an optional input: a report, a record)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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


@contextlib.contextmanager
def system_memory_pool() -> Iterator[None]:
    """Make pyarrow allocate with the system allocator (malloc) in this block, pandas' Arrow strings included.

    pyarrow's default pool (mimalloc) keeps what it once touched, so a stage that reads a table of N rows
    keeps memory that grows with N resident long after the table is gone (~30 MB at 25,000 manifest rows);
    malloc gives large blocks back when they are freed. ``read_table`` and pyarrow's compute functions take
    no pool argument everywhere, hence a swap of the default. Not thread-safe: the default is process-wide.
    """
    import pyarrow as pa  # only stages that read Arrow data pay for the import

    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    """Write a frame as parquet atomically, without the index, so equal frames give equal bytes."""
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
