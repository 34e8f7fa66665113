"""The ``cvpipe`` Typer app: logging, progress bars, and the mapping of failures to exit codes.

The CLI is a shell around the library: it parses options, loads params, sets up logging and progress bars,
calls the stage function and maps failures to exit codes: 0 success, 2 a problem the user can fix (one
line on stderr saying what to do), 1 a bug (one line; ``--debug`` shows the traceback). The command groups
live beside this module (:mod:`cvpipe.cli.stages`, :mod:`cvpipe.cli.lineage`, ...).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
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


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option(DEBUG_FLAG, help="Show tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors.")] = False,
) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "urllib3", "h5py", "absl", "openlineage"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # TensorFlow's C++ start-up lines ("Could not find cuda drivers", "failed call to cuInit" on a CPU
    # machine) drown the stage's own log; cvpipe logs the device it uses. An explicit setting wins.
    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and map failures to exit codes and one clear line."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging(args)
    try:
        app(args=args, standalone_mode=False)
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
        typer.echo(f"internal error: {type(error).__name__}: {error} (rerun with --debug for the traceback)", err=True)
        return 1
    return 0
