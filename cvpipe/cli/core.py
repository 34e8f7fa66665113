"""The ``cvpipe`` Typer app: logging, progress bars, and the mapping of failures to exit codes.

The CLI is a shell around the library: it parses options, loads params, sets up logging and progress bars,
calls the stage function and maps failures to exit codes: 0 success, 2 a problem the user can fix (one
line on stderr saying what to do), 1 a bug (one line; ``--debug`` shows the traceback). The command groups
live beside this module (:mod:`cvpipe.cli.stages`, :mod:`cvpipe.cli.lineage`, ...).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated

import click
import typer

from cvpipe.config import Params, load_params
from cvpipe.errors import CvpipeError
from cvpipe.io import disk_full_error, failed_path, is_disk_full

app = typer.Typer(
    help="cvpipe: dogs-vs-cats convnet and VGG16 transfer learning as a versioned, auditable pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Like every cvpipe module: logging.getLogger(__name__), so all sit under "cvpipe" and the root handler below.
log = logging.getLogger(__name__)

# Recent typer vendors its own click; catch usage errors from either.
_USAGE_ERRORS: tuple[type[Exception], ...] = (click.ClickException,)
if hasattr(typer, "exceptions") and hasattr(typer.exceptions, "TyperException"):
    _USAGE_ERRORS += (typer.exceptions.TyperException,)
_ABORTS: tuple[type[BaseException], ...] = (click.exceptions.Abort, typer.Abort)
DEBUG_FLAG = "--debug"

ParamsOption = Annotated[Path, typer.Option("--params", help="The params file.", dir_okay=False)]

# What TensorFlow's C++ side writes to fd 2 while its shared libraries load (twice: two libraries), before absl
# logging is initialised: TF_CPP_MIN_LOG_LEVEL does not reach these lines (measured with TF 2.21), and
# TF_ENABLE_ONEDNN_OPTS=0 would change the numerics, so they are dropped at the file descriptor instead.
_NATIVE_NOISE = re.compile(
    r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|^[IWE]\d{4} [\d:.]+ +\d+ \S+\] (oneDNN custom operations are on|Could not find cuda drivers"
    r"|This TensorFlow binary is optimized|failed call to cuInit|Unable to register cu\w+ factory"
    r"|computation placer already registered|TF-TRT Warning)"
    r"|^To enable the following instructions: .* in other operations, rebuild TensorFlow"
    r"|^All log messages before absl::InitializeLog"
)
_state = {"debug": False}


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option(DEBUG_FLAG, help="Show tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    _state["debug"] = debug
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "urllib3", "h5py", "absl", "openlineage"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not debug:
        # urllib3's "Retrying (Retry(total=...))" lines: the caller logs one line saying what failed.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    # TensorFlow's C++ log lines after start-up ("failed call to cuInit" on a CPU machine) drown the stage's
    # own log; cvpipe logs the device it uses. An explicit setting wins. Must be set before TF loads.
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@contextlib.contextmanager
def native_noise_filtered() -> Iterator[None]:
    """Drop TensorFlow's native start-up lines from fd 2 while the block runs; everything else is kept.

    Python's own stderr writes in the block are captured too and replayed in order afterwards. Off under
    ``--debug``, where every line matters.
    """
    if _state["debug"]:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [
                line
                for line in sink.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not _NATIVE_NOISE.search(line)
            ]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def load_keras() -> None:
    """Import Keras (and its backend, TensorFlow by default) once, without the backend's start-up noise.

    Stage commands call it after their arguments and params are checked, so a usage error never waits for
    TensorFlow; later ``import keras`` lines are then free and silent.
    """
    with native_noise_filtered():
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # TensorFlow initialises CUDA (and prints "failed call to cuInit" on a CPU machine) at its first
            # device query, which may come after the import: make it happen here, inside the filter.
            tf.config.list_physical_devices()


@contextlib.contextmanager
def progress_bar(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress callback: a live bar on a terminal, a log line every 10% otherwise (DVC, CI, Prefect)."""
    if sys.stderr.isatty():
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda done: bar.advance(task, done)
        return
    seen = {"done": 0, "next": 0.1}

    def advance(done: int) -> None:
        seen["done"] += done
        if total and seen["done"] / total >= seen["next"]:
            log.info("%s: %d/%d", label, seen["done"], total)
            while seen["done"] / total >= seen["next"]:
                seen["next"] += 0.1

    yield advance


def read_params(path: Path) -> Params:
    """The validated params file a command runs with."""
    return load_params(path)


def _debugging(argv: Sequence[str]) -> bool:
    """Whether ``--debug`` was given before the command (the app's own option)."""
    return DEBUG_FLAG in argv


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM (``kill``, ``docker stop``) reached the CLI.

    A ``BaseException`` that is not ``KeyboardInterrupt``: typer turns a ``KeyboardInterrupt`` into a *return*
    value of 130 under ``standalone_mode=False``, which an exit code must not depend on.
    """

    def __init__(self, signum: int) -> None:
        """The signal received."""
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` in the main thread while the command runs.

    Without it SIGTERM kills the CLI on the spot, leaving its pool workers orphaned. A signal the caller
    ignores (``nohup``, a background job's SIGINT) stays ignored.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) in (signal.SIG_DFL, signal.default_int_handler):
            previous[signum] = signal.signal(signum, _raise_interrupted)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _fixable(error: Exception) -> str:
    """One line for a failure outside cvpipe's own errors that the user can fix, or ''.

    A read-only or foreign-owned output folder, and a truncated or corrupt parquet file (a stage run with
    ``--single-item`` after its input was damaged): both used to be reported as internal errors.
    """
    if isinstance(error, PermissionError) or (isinstance(error, OSError) and error.errno == errno.EROFS):
        where = error.filename or "a file"
        return f"cannot write or read {where}: {error.strerror}; make it writable (or readable) and rerun"
    if type(error).__module__.startswith("pyarrow") and "Parquet" in str(error):
        return f"{error}; the file is truncated or corrupt: rerun the stage that writes it (dvc repro -f <stage>)"
    return ""


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map failures to exit codes and one clear line.

    An interrupted command exits ``128 + signal``: 130 on Ctrl-C, 143 on SIGTERM. DVC records a stage as done
    only when its command exits 0, so an interrupted stage is never committed half-written.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging(args)
    try:
        with _interruptible():
            result = app(args=args, standalone_mode=False)
    except Interrupted as interrupt:
        typer.echo(f"interrupted ({signal.Signals(interrupt.signum).name})", err=True)
        return 128 + interrupt.signum
    except CvpipeError as error:
        if debug:
            raise
        typer.echo(f"error: {error}", err=True)
        return error.exit_code
    except _ABORTS:
        typer.echo("aborted", err=True)
        return 130
    except _USAGE_ERRORS as error:
        error.show()  # type: ignore[attr-defined]
        return int(getattr(error, "exit_code", 2))
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as error:
        if debug:
            raise
        if is_disk_full(error):
            # A full disk is the user's to fix, whichever library hit it (pyarrow, h5py, Keras, dvclive).
            full = disk_full_error(failed_path(error))
            typer.echo(f"error: {full}", err=True)
            return full.exit_code
        fixable = _fixable(error)
        if fixable:
            typer.echo(f"error: {fixable}", err=True)
            return 2
        typer.echo(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", err=True)
        return 1
    # Under standalone_mode=False typer *returns* an exit code (typer.Exit, or 130 for a KeyboardInterrupt it
    # caught itself); commands return None.
    if isinstance(result, int) and not isinstance(result, bool):
        if result == 130:
            typer.echo("interrupted", err=True)
        return result
    return 0
