"""Reproducing one DVC stage, as the flow's tasks do: ask DVC whether it is stale, run it, say what happened.

DVC, not Prefect, decides what is stale: ``dvc status --json STAGE`` compares the stage's command, deps,
params and outs with ``dvc.lock`` (DVC's structured answer, not its human log lines). A stale stage is
reproduced with ``dvc repro --single-item STAGE``: DVC looks at that stage only; the flow runs stages in
topological order, so the upstream stages are up to date by then and the result is the same as one
``dvc repro``. ``--single-item`` also lets independent stages (the training variants) run at the same time:
DVC releases its repository lock while a stage's command runs, and ``--wait-for-lock`` makes a second DVC
wait for the short locked parts (collecting the stages, committing outputs) instead of failing after 3 s.

An up-to-date stage is not handed to ``dvc repro`` at all: DVC would skip it anyway, and one DVC start-up per
stage is the floor of a night with nothing to do. DVC's JSON does not say whether a stale stage's outputs
came from its run cache (command not run) or from running the command: both count as ``ran`` (DVC brought
the outputs up to date).
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cvpipe.pipeline.commands import StageTimeoutError, dvc, run_streaming, tool_env

log = logging.getLogger(__name__)

RAN = "ran"
SKIPPED = "skipped"
TAIL_LINES = 20

# cvpipe's CLI log format ("%(asctime)s %(levelname)s %(name)s: %(message)s") and DVC's "ERROR: ..." lines:
# read for their log level only, so a stage's warning is a warning in Prefect too.
_CVPIPE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<name>[\w.]+): (?P<msg>.*)$"
)
_DVC_LINE = re.compile(r"^(?P<level>ERROR|WARNING): ")
_CVPIPE_ERROR = re.compile(r"^(?:internal )?error: ")
# How DVC names the command holding a lock: its argv joined, "/.../site-packages/dvc/__main__.py repro".
DVC_ARGV0 = re.compile(r"^\S*(?:/dvc/__main__\.py|/bin/dvc)(?=\s|$)")

Logger = logging.Logger | logging.LoggerAdapter[logging.Logger]


class StageFailedError(RuntimeError):
    """``dvc repro`` of one stage exited non-zero.

    Attributes:
        stage: the stage's DVC name.
        returncode: DVC's exit status.
        tail: the last lines DVC and the stage printed.
    """

    def __init__(self, stage: str, returncode: int, tail: Sequence[str]) -> None:
        self.stage, self.returncode, self.tail = stage, returncode, list(tail)
        super().__init__(f"stage {stage!r} failed (dvc exit {returncode}): {failure_line(self.tail)}")


@dataclass(frozen=True)
class StageOutcome:
    """What happened to one stage.

    Attributes:
        stage: the stage's DVC name.
        status: ``ran`` (DVC brought its outputs up to date) or ``skipped`` (up to date already).
        seconds: wall time, DVC's status check included.
    """

    stage: str
    status: str
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy."""
        return asdict(self)


def repro_argv(stage: str, force: bool = False) -> list[str]:
    """The DVC command line that reproduces ``stage`` alone."""
    return dvc("--wait-for-lock", "repro", "--single-item", *(["--force"] if force else []), stage)


def status_argv(stage: str) -> list[str]:
    """The DVC command line that says, as JSON, whether ``stage`` (alone, not its upstream) is stale."""
    return dvc("--wait-for-lock", "status", "--json", stage)


def is_stale(stage: str, project_dir: Path, env: Mapping[str, str]) -> bool:
    """Whether DVC would reproduce ``stage``: ``dvc status --json`` lists its changes (``{}`` when none).

    A status DVC cannot give (bad ``dvc.yaml``, DVC's own error) counts as stale, so that ``dvc repro``
    reports the error in the stage's log.
    """
    result = subprocess.run(
        status_argv(stage), cwd=project_dir, env=dict(env), capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        return True
    try:
        changes = json.loads(result.stdout or "{}")
    except ValueError:
        return True
    return not isinstance(changes, dict) or bool(changes)


def line_level(line: str) -> tuple[int, str]:
    """The level and message of one output line: cvpipe's log and ``error:`` lines, DVC's errors keep their level."""
    match = _CVPIPE_LINE.match(line)
    if match:
        return logging.getLevelName(match["level"]), f"{match['name']}: {match['msg']}"
    match = _DVC_LINE.match(line)
    if match:
        return logging.getLevelName(match["level"]), line
    if _CVPIPE_ERROR.match(line):  # the CLI's one line on a failure (exit 2), or on a bug
        return logging.ERROR, line
    return logging.INFO, line


def failure_line(lines: Sequence[str]) -> str:
    """The one line that says why a stage failed, from what DVC and the stage printed.

    cvpipe's own ``error: ...`` line when the stage's command printed one (it says what to do); else DVC's
    last ``ERROR:`` line, followed by the processes it names when another DVC command holds the stage's files
    (DVC puts them, and a hint about stale locks, on the lines after); else the last line.
    """
    cvpipe_error = next((line for line in reversed(lines) if _CVPIPE_ERROR.match(line)), None)
    if cvpipe_error is not None:
        return cvpipe_error
    for index in range(len(lines) - 1, -1, -1):
        line = lines[index]
        if not line.startswith("ERROR: "):
            continue
        if line.endswith("blocked by:"):
            holders = []
            for holder in lines[index + 1 :]:
                if not holder.strip().startswith("(PID "):
                    break
                holders.append(short_command(holder.strip()))
            line = f"{line} {'; '.join(dict.fromkeys(holders))} (another DVC command is using this stage's files)"
        return line
    return next((line for line in reversed(lines) if line.strip()), "")


def short_command(text: str) -> str:
    """``(PID 7): /venv/.../dvc/__main__.py repro x`` -> ``(PID 7): dvc repro x``."""
    prefix, sep, command = text.partition("): ")
    return f"{prefix}{sep}{DVC_ARGV0.sub('dvc', command)}" if sep else DVC_ARGV0.sub("dvc", text)


def run_stage(
    stage: str,
    project_dir: str | Path,
    force: bool = False,
    timeout_s: float | None = None,
    extra_env: Mapping[str, str] | None = None,
    logger: Logger = log,
) -> StageOutcome:
    """Reproduce one DVC stage if DVC finds it stale, logging DVC's and the stage's output line by line.

    Args:
        stage: the stage's DVC name (``train@scratch``).
        project_dir: the DVC repository's root.
        force: rerun even if DVC finds nothing changed (``dvc repro --force``; no status check).
        timeout_s: kill the stage after this many seconds.
        extra_env: added to the stage's environment (run ids for lineage).
        logger: where the output lines go (the Prefect run logger inside a task run).

    Returns:
        Whether DVC ran or skipped the stage, and how long it took.

    Raises:
        StageFailedError: DVC or the stage's command failed.
        StageTimeoutError: the stage ran past ``timeout_s``.
    """
    project = Path(project_dir)
    env = {**tool_env(), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    started = time.monotonic()
    if not force and not is_stale(stage, project, env):
        outcome = StageOutcome(stage, SKIPPED, round(time.monotonic() - started, 3))
        logger.info("stage %s: skipped (DVC finds it up to date) in %.1f s", stage, outcome.seconds)
        return outcome
    lines: list[str] = []

    def on_line(line: str) -> None:
        lines.append(line)
        if line.strip():
            level, message = line_level(line)
            logger.log(level, "%s", message)

    try:
        returncode = run_streaming(repro_argv(stage, force), project, env, on_line, timeout_s)
    except StageTimeoutError as exc:
        raise StageTimeoutError(f"stage {stage!r} ran past its time limit and was {exc}") from None
    if returncode != 0:
        raise StageFailedError(stage, returncode, lines[-TAIL_LINES:])
    outcome = StageOutcome(stage, RAN, round(time.monotonic() - started, 3))
    logger.info("stage %s: %s in %.1f s", stage, outcome.status, outcome.seconds)
    return outcome
