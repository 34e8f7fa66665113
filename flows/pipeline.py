"""The cvpipe DAG as a Prefect flow: one task run per DVC stage, on a schedule, with retries and a report.

The flow reads the DAG from DVC (``dvc.yaml`` through DVC's own stage graph), so a stage added to
``dvc.yaml`` is a task here with no change to this file. Each task reproduces its stage through DVC
(``tasks.dvc_stages``): DVC decides whether the stage is stale, so a Prefect run and ``dvc repro`` leave the
same ``dvc.lock``, and a second run skips every unchanged stage.

Run it once, locally, with no server to set up (Prefect starts a temporary one)::

    python -m flows.pipeline                      # the whole DAG
    python -m flows.pipeline --target decode      # decode and what it needs

Serve it on a schedule against a running Prefect server (``prefect.yaml`` declares the same deployment
for a worker)::

    python -m flows.pipeline --serve --cron "0 2 * * *" --timezone UTC

One run per project at a time. The deployment's concurrency limit (1, ``CANCEL_NEW``) has the server cancel a
scheduled run that would overlap the previous one; a run holds cvpipe's run lock on the project throughout and
refuses to start while another flow run holds it or a ``dvc repro`` is reproducing stages; DVC's own output
lock refuses a ``dvc repro`` that would touch a stage the flow is running (``tasks.dvc_stages``).
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from its signature,
# and string annotations failed to resolve when a served run loaded this file by path.
import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import queue
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError
from prefect.futures import PrefectFuture
from prefect.logging import get_run_logger
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from cvpipe.config import load_params, parse_params
from cvpipe.io import write_json_atomic
from cvpipe.pipeline.workspace import deep_merge, read_overlay
from tasks.dvc_stages import (
    ProjectBusyError,
    StageOutcome,
    StagePolicy,
    dvc_lock_holders,
    dvc_stage,
    lineage_env,
    project_run_lock,
    run_holder,
    select_stages,
    stage_graph,
    topological_order,
)

log = logging.getLogger(__name__)

FLOW_NAME = "cvpipe"
DEPLOYMENT_NAME = "nightly"
NIGHTLY_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"
MAX_WORKERS = 16  # the thread pool's size; the flow's max_parallel is the real bound
PARAMS_YAML = "params.yaml"
# Outside every DVC output, so writing it never makes a stage stale; .prefect/ is ignored by git.
RUN_RECORD = Path(".prefect") / "cvpipe-run.json"
METRICS_GLOB = "reports/metrics/*.json"
REPORT_HTML = Path("reports") / "index.html"


class PipelineFailedError(RuntimeError):
    """One or more stages failed; the message names them and the stages left unrun because of them."""


# -- environment ----------------------------------------------------------------------------------------------


def prefect_env_defaults(project_dir: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The Prefect settings cvpipe wants unless the user set them: a project-local home, no telemetry.

    Args:
        project_dir: the project's root; its ``.prefect/`` becomes ``PREFECT_HOME``.
        environ: the current environment (variables set there win).

    Returns:
        The variables to add.
    """
    defaults = {
        "PREFECT_HOME": str(Path(project_dir).resolve() / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "DVC_NO_ANALYTICS": "1",
        # The temporary server takes ~13 s to start on a small machine; Prefect's default gives up at 20 s.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    }
    return {name: value for name, value in defaults.items() if name not in environ}


def apply_prefect_env(project_dir: Path) -> dict[str, str]:
    """Set :func:`prefect_env_defaults` in ``os.environ`` and make Prefect's settings pick them up."""
    added = prefect_env_defaults(project_dir, os.environ)
    os.environ.update(added)
    if added:
        from prefect.context import refresh_global_settings_context

        # Prefect read its settings when it was imported, before main() could set these.
        refresh_global_settings_context()
    return added


# -- params ---------------------------------------------------------------------------------------------------


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
    if source == target.resolve():
        load_params(target)
        return []
    load_params(target)
    current = yaml.safe_load(target.read_text(encoding="utf-8"))
    overlay = read_overlay(source)
    merged = deep_merge(current, overlay)
    parse_params(merged, origin=f"{params_file} merged over {PARAMS_YAML}")
    changed = changed_keys(current, merged)
    if changed:
        from dvc.utils.serialize import modify_yaml

        with modify_yaml(str(target)) as data:
            _merge_into(data, overlay)
    return changed


# -- scheduling -----------------------------------------------------------------------------------------------


@dataclass
class DagScheduler:
    """Which stages may start now: upstream stages all succeeded, within the parallel and GPU bounds.

    Attributes:
        graph: ``{stage: upstream stages}``.
        max_parallel: stages running at once, at most.
        gpu_slots: GPU stages running at once, at most (0: no separate bound).
        uses_gpu: whether a stage needs a GPU slot.
    """

    graph: Mapping[str, Sequence[str]]
    max_parallel: int = 1
    gpu_slots: int = 1
    uses_gpu: Callable[[str], bool] = lambda _stage: False
    running: set[str] = field(default_factory=set)
    succeeded: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.order = topological_order(self.graph)

    def ready(self) -> list[str]:
        """Stages to start now, in topological order."""
        started = {*self.running, *self.succeeded, *self.failed}
        running = len(self.running)
        gpu = sum(1 for stage in self.running if self.uses_gpu(stage))
        picks: list[str] = []
        for stage in self.order:
            if running >= self.max_parallel:
                break
            if stage in started or not all(up in self.succeeded for up in self.graph[stage]):
                continue
            if self.gpu_slots and self.uses_gpu(stage):
                if gpu >= self.gpu_slots:
                    continue
                gpu += 1
            picks.append(stage)
            running += 1
        return picks

    def start(self, stage: str) -> None:
        """Record that ``stage`` was submitted."""
        self.running.add(stage)

    def finish(self, stage: str, ok: bool) -> None:
        """Record how ``stage`` ended; its downstream stages never start if it failed."""
        self.running.discard(stage)
        (self.succeeded if ok else self.failed).append(stage)

    def not_run(self) -> list[str]:
        """Stages that never started (downstream of a failure), in topological order."""
        started = {*self.running, *self.succeeded, *self.failed}
        return [stage for stage in self.order if stage not in started]


@dataclass
class RunReport:
    """The outcome of the DAG: each stage's result, failures with their reason, stages not run."""

    outcomes: dict[str, StageOutcome] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every selected stage succeeded."""
        return not self.failures and not self.not_run

    def failure_message(self) -> str:
        """One line naming the failed stages and why, and the stages left unrun."""
        parts = [f"{len(self.failures)} stage(s) failed: " + "; ".join(f"{s} ({m})" for s, m in self.failures.items())]
        if self.not_run:
            parts.append("not run because an upstream stage failed: " + ", ".join(self.not_run))
        return ". ".join(parts)


def _failure_reason(future: PrefectFuture[StageOutcome]) -> str:
    state = future.state
    error = state.result(raise_on_failure=False) if state.is_failed() or state.is_crashed() else None
    reason = str(error) if isinstance(error, BaseException) else (state.message or state.name or "failed")
    return f"{state.name}: {reason}" if state.name not in ("Failed", None) else reason


def run_dag(
    graph: Mapping[str, Sequence[str]],
    project_dir: Path,
    policy: StagePolicy,
    force: bool,
    max_parallel: int,
    gpu_slots: int,
) -> RunReport:
    """Submit each stage as a task once its upstream stages succeeded; wait for all; report.

    Stages downstream of a failure are never submitted; independent ones go on (a failed variant does not
    stop the other variants).
    """
    logger = _logger()
    scheduler = DagScheduler(graph, max_parallel, gpu_slots, policy.uses_gpu)
    futures: dict[str, PrefectFuture[StageOutcome]] = {}
    finished: queue.SimpleQueue[str] = queue.SimpleQueue()
    report = RunReport()
    while True:
        for stage in scheduler.ready():
            scheduler.start(stage)
            task = dvc_stage.with_options(**policy.task_options(stage))
            # wait_for on finished futures only draws the DAG's edges in the Prefect UI.
            futures[stage] = task.submit(
                stage,
                project_dir=str(project_dir),
                force=force,
                timeout_s=policy.timeout_s(stage),
                wait_for=[futures[up] for up in graph[stage]],
            )
            futures[stage].add_done_callback(lambda _future, done=stage: finished.put(done))
        if not scheduler.running:
            break
        stage = finished.get()
        future = futures[stage]
        future.wait()
        ok = future.state.is_completed()
        scheduler.finish(stage, ok)
        if ok:
            report.outcomes[stage] = future.result()
        else:
            report.failures[stage] = _failure_reason(future)
            logger.error("stage %s failed: %s", stage, report.failures[stage])
    report.not_run = scheduler.not_run()
    return report


# -- concurrent runs ------------------------------------------------------------------------------------------


def refuse_if_dvc_is_busy(project: Path) -> None:
    """Refuse to start while a DVC command (a ``dvc repro`` by hand) is reproducing stages in ``project``.

    DVC would refuse this run's first stage whose files that command holds anyway; refusing before the first
    stage says so at once, and leaves ``params.yaml`` alone while that command reads it. A ``dvc repro``
    started after this check is DVC's to stop: the later of the two to reach a stage is refused.

    Raises:
        ProjectBusyError: a live DVC process holds DVC's lock on some stage's files.
    """
    holders = dvc_lock_holders(project)
    if holders:
        raise ProjectBusyError(
            f"DVC is reproducing stages in {project} ({'; '.join(holders)}); this run did nothing: "
            "run it again when that command has finished"
        )


# -- lineage and artifacts ------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return {prefix.rstrip("."): value}
    return {}  # lists (confusion matrices, curves) do not fit a table cell


def metrics_rows(project_dir: Path) -> list[dict[str, Any]]:
    """One row per ``reports/metrics/<variant>.json``: the variant and its scalar metrics, flattened."""
    rows = []
    for path in sorted(project_dir.glob(METRICS_GLOB)):
        data = _read_json(path)
        if isinstance(data, Mapping):
            rows.append({"variant": path.stem, **_flatten(data)})
    return rows


def lineage(project_dir: Path) -> dict[str, Any]:
    """What the data stages recorded: source, archive sha256, split counts, quarantine count (when present)."""
    facts: dict[str, Any] = {}
    source = _read_json(project_dir / "data" / "raw" / "SOURCE.json")
    if isinstance(source, Mapping):
        archive = source.get("archive") or {}
        facts.update(
            source=source.get("source"), archive_sha256=archive.get("sha256"), archive_bytes=archive.get("bytes")
        )
        facts["retrieved_at"] = source.get("retrieved_at")
    manifest = _read_json(project_dir / "data" / "manifest" / "report.json")
    if isinstance(manifest, Mapping):
        summary = manifest.get("summary") or {}
        quarantine = manifest.get("quarantine")
        facts["members"] = summary.get("members")
        facts["quarantined"] = summary.get("quarantined", len(quarantine) if isinstance(quarantine, list) else None)
    splits = _read_json(project_dir / "data" / "splits" / "report.json")
    if isinstance(splits, Mapping) and isinstance(splits.get("counts"), Mapping):
        facts["split_counts"] = splits["counts"]
    return {key: value for key, value in facts.items() if value is not None}


def summary_markdown(report: RunReport, facts: Mapping[str, Any], run: Mapping[str, Any]) -> str:
    """The run's markdown summary: stages and what DVC did, failures, the data's lineage."""
    lines = [f"# cvpipe run {run.get('flow_run_name') or ''}".rstrip(), ""]
    lines += [f"- flow run id: `{run.get('flow_run_id')}`", f"- project: `{run.get('project_dir')}`", ""]
    lines += ["| stage | result | seconds |", "|---|---|---|"]
    for stage, outcome in report.outcomes.items():
        lines.append(f"| {stage} | {outcome.status} | {outcome.seconds:.1f} |")
    for stage, reason in report.failures.items():
        lines.append(f"| {stage} | **failed**: {reason.replace('|', '/')} | |")
    for stage in report.not_run:
        lines.append(f"| {stage} | not run (upstream failed) | |")
    lines += ["", "## Data lineage", ""]
    if "archive_sha256" in facts:
        lines.append(
            f"- source `{facts.get('source')}`, archive sha256 `{facts['archive_sha256']}` "
            f"({facts.get('archive_bytes')} bytes, retrieved {facts.get('retrieved_at')})"
        )
    if "quarantined" in facts:
        lines.append(f"- quarantined: {facts['quarantined']} of {facts.get('members', '?')} archive members")
    for split, counts in (facts.get("split_counts") or {}).items():
        per_class = ", ".join(f"{label} {count}" for label, count in counts.items())
        lines.append(f"- {split}: {per_class}")
    if lines[-1] == "":
        lines.append("- no data stage outputs yet")
    return "\n".join(lines) + "\n"


def publish_artifacts(project_dir: Path, report: RunReport, run: Mapping[str, Any]) -> list[str]:
    """Create the run's artifacts: metrics table (if any), markdown summary, link to the HTML report (if any).

    Returns:
        The artifact keys created.
    """
    keys = []
    rows = metrics_rows(project_dir)
    if rows:
        create_table_artifact(rows, key="cvpipe-metrics", description="Test metrics of the training variants")
        keys.append("cvpipe-metrics")
    markdown = summary_markdown(report, lineage(project_dir), run)
    create_markdown_artifact(markdown, key="cvpipe-summary", description="Stages run and the data's lineage")
    keys.append("cvpipe-summary")
    html = project_dir / REPORT_HTML
    if html.is_file():
        create_link_artifact(html.resolve().as_uri(), link_text="cvpipe report", key="cvpipe-report")
        keys.append("cvpipe-report")
    return keys


def write_run_record(project_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write ``.prefect/cvpipe-run.json``: the latest run's ids and outcome, for lineage records to read."""
    path = project_dir / RUN_RECORD
    write_json_atomic(path, dict(record))
    return path


def _logger() -> "logging.Logger | logging.LoggerAdapter[logging.Logger]":
    try:
        return get_run_logger()
    except MissingContextError:
        return log


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- the flow -------------------------------------------------------------------------------------------------


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=MAX_WORKERS), persist_result=False)
def cvpipe_pipeline(
    targets: list[str] | None = None,
    force: bool = False,
    params_file: str = PARAMS_YAML,
    project_dir: str = ".",
    max_parallel: Annotated[int, Field(ge=1, le=MAX_WORKERS)] = 2,
    gpu_slots: Annotated[int, Field(ge=0)] = 1,
    download_retries: Annotated[int, Field(ge=0, le=10)] = 3,
    download_retry_delay_seconds: Annotated[float, Field(ge=0)] = 60.0,
    train_timeout_minutes: Annotated[float, Field(gt=0)] | None = 360.0,
) -> dict[str, str] | State:
    """Reproduce the DVC pipeline, one task run per stage; DVC skips what has not changed.

    One run per project at a time: a run that finds another flow run, or a ``dvc repro``, reproducing stages in
    the project ends ``Failed`` at once with a one-line message saying which; it writes nothing, runs no stage.

    Args:
        targets: stages to reproduce with everything upstream (``decode``, ``train`` for every variant,
            ``evaluate@scratch``); all stages when empty.
        force: rerun the stages even if unchanged (``dvc repro --force``); the download too.
        params_file: ``params.yaml``, or a file of params merged over it before the run (as
            ``dvc exp run --set-param`` does, the values are written into ``params.yaml``).
        project_dir: the DVC project's root.
        max_parallel: stages running at once, at most (independent stages, e.g. training variants).
        gpu_slots: stages needing the GPU (features, train, evaluate) running at once, at most; 0: no bound.
        download_retries: retries of the download stage, with exponential backoff and jitter.
        download_retry_delay_seconds: the first retry's delay; it doubles each time.
        train_timeout_minutes: time limit of each training stage; it is killed after that.

    Returns:
        ``{stage: "ran" | "skipped" | "restored"}``; a ``Failed`` state when the run was refused.

    Raises:
        PipelineFailedError: a stage failed; the message names it and what was left unrun. The artifacts are
            created first.
    """
    logger = get_run_logger()
    project = Path(project_dir).resolve()
    if not (project / "dvc.yaml").is_file():
        raise FileNotFoundError(f"{project}: no dvc.yaml; pass project_dir= the cvpipe project's root")
    if not (project / ".dvc").is_dir():
        # The run lock lives in .dvc/tmp; creating .dvc/ here would make the folder look like a DVC repository.
        raise FileNotFoundError(f"{project}: not a DVC repository (no .dvc/ folder); run `dvc init` there first")
    ids = lineage_env()
    with contextlib.ExitStack() as guard:
        try:
            # Before anything is written (params.yaml, the run record): a refused run leaves the project as it was.
            guard.enter_context(project_run_lock(project, run_holder(ids)))
            refuse_if_dvc_is_busy(project)
        except ProjectBusyError as busy:
            # An expected refusal, not a bug: one line in the log and the state, no traceback.
            logger.error("%s", busy)
            return Failed(message=str(busy))
        changed = apply_params_file(project, params_file)
        if changed:
            logger.warning("params from %s written into %s: %s", params_file, PARAMS_YAML, ", ".join(changed))
        graph = select_stages(stage_graph(project), targets)
        logger.info("DAG from dvc.yaml, %d stage(s): %s", len(graph), ", ".join(topological_order(graph)))
        run: dict[str, Any] = {
            "flow_run_id": ids.get("CVPIPE_FLOW_RUN_ID"),
            "flow_run_name": ids.get("CVPIPE_FLOW_RUN_NAME"),
            "deployment_id": ids.get("CVPIPE_DEPLOYMENT_ID"),
            "project_dir": str(project),
            "targets": list(targets or []),
            "params_file": params_file,
            "started_at": _now(),
            "state": "running",
        }
        write_run_record(project, run)
        policy = StagePolicy(
            download_retries=download_retries,
            download_backoff_seconds=download_retry_delay_seconds,
            train_timeout_s=train_timeout_minutes * 60 if train_timeout_minutes else None,
        )
        report = run_dag(graph, project, policy, force, max_parallel, gpu_slots)
        keys = publish_artifacts(project, report, run)
        run.update(
            state="completed" if report.ok else "failed",
            finished_at=_now(),
            stages={stage: outcome.status for stage, outcome in report.outcomes.items()},
            failed=report.failures,
            not_run=report.not_run,
            artifacts=keys,
        )
        write_run_record(project, run)
    if not report.ok:
        raise PipelineFailedError(report.failure_message())
    return {stage: outcome.status for stage, outcome in report.outcomes.items()}


# -- command line ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m flows.pipeline`` command line."""
    parser = argparse.ArgumentParser(
        prog="python -m flows.pipeline",
        description="Run the cvpipe DVC pipeline as a Prefect flow once, or serve it on a schedule.",
    )
    parser.add_argument("--project-dir", default=".", help="the DVC project's root (default: .)")
    parser.add_argument("--target", action="append", dest="targets", metavar="STAGE", help="stage (repeatable)")
    parser.add_argument("--force", action="store_true", help="rerun stages even if unchanged")
    parser.add_argument("--params-file", default=PARAMS_YAML, help="params merged over params.yaml first")
    parser.add_argument("--max-parallel", type=int, default=2, help="stages running at once (default: 2)")
    parser.add_argument("--gpu-slots", type=int, default=1, help="GPU stages running at once (default: 1)")
    serve = parser.add_argument_group("serve on a schedule (needs a running Prefect server, PREFECT_API_URL)")
    serve.add_argument("--serve", action="store_true", help="create the deployment and run its schedule")
    serve.add_argument("--name", default=DEPLOYMENT_NAME, help=f"deployment name (default: {DEPLOYMENT_NAME})")
    when = serve.add_mutually_exclusive_group()
    when.add_argument("--cron", help=f'cron schedule (default: "{NIGHTLY_CRON}")')
    when.add_argument("--interval", type=float, metavar="SECONDS", help="fixed interval instead of cron")
    serve.add_argument("--timezone", default=DEFAULT_TIMEZONE, help=f"cron timezone (default: {DEFAULT_TIMEZONE})")
    return parser


def flow_parameters(args: argparse.Namespace, project_dir: Path) -> dict[str, Any]:
    """The flow's parameters from the command line."""
    return {
        "targets": args.targets,
        "force": args.force,
        "params_file": args.params_file,
        "project_dir": str(project_dir),
        "max_parallel": args.max_parallel,
        "gpu_slots": args.gpu_slots,
    }


def serve(args: argparse.Namespace, project_dir: Path) -> None:
    """Create the deployment on the running server and execute its scheduled runs until interrupted."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron, Interval

    schedule = (
        Interval(dt.timedelta(seconds=args.interval))
        if args.interval
        else Cron(args.cron or NIGHTLY_CRON, timezone=args.timezone)
    )
    cvpipe_pipeline.serve(
        name=args.name,
        schedules=[schedule],
        parameters=flow_parameters(args, project_dir),
        # One run at a time; a run due while one is still going is cancelled, not queued: the next run
        # catches up anyway, since DVC reruns whatever is stale.
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        # Stopping this process must not pause the schedule for the worker-based deployment or a restart.
        pause_on_shutdown=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the flow once (exit 0 if every stage succeeded, 1 if not), or serve it with ``--serve``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    project_dir = Path(args.project_dir).resolve()
    apply_prefect_env(project_dir)
    if args.serve:
        if not os.environ.get("PREFECT_API_URL"):
            # Prefect's temporary server refuses to schedule; say what to do instead of its traceback.
            parser.error(
                "--serve needs a running Prefect server: `prefect server start --host 127.0.0.1 --port 4200`, "
                "then export PREFECT_API_URL=http://127.0.0.1:4200/api"
            )
        serve(args, project_dir)
        return 0
    state = cvpipe_pipeline(**flow_parameters(args, project_dir), return_state=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
