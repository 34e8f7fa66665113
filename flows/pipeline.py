"""The cvpipe DAG as a Prefect flow: one task run per DVC stage, on a schedule, with retries and a report.

The flow reads the DAG from DVC (``dvc.yaml`` through DVC's own stage graph), so a stage added to
``dvc.yaml`` is a task here with no change to this file. Each task reproduces its stage through DVC
(``tasks.dvc_stages``): DVC decides whether the stage is stale, so a Prefect run and ``dvc repro`` leave the
same ``dvc.lock``, and a second run skips every unchanged stage. Prefect orders the stages (``wait_for`` on
the upstream stages' futures): a stage whose upstream failed ends ``NotReady`` and never runs, while
independent stages (the other variants) go on.

``cvpipe flow run`` runs it once (Prefect starts a temporary server); ``cvpipe flow serve`` serves it on a
schedule against a running server; ``prefect.yaml`` declares the same deployment for a worker.

One run per project at a time. The deployment's concurrency limit (1, ``CANCEL_NEW``) has the server cancel a
scheduled run that would overlap the previous one; a run holds cvpipe's run lock on the project throughout and
refuses to start while another flow run holds it or a ``dvc repro`` is reproducing stages; DVC's own output
lock refuses a ``dvc repro`` that would touch a stage the flow is running (:mod:`cvpipe.pipeline.lock`).
"""

# No `from __future__ import annotations` here: Prefect builds the flow's parameter model from its signature,
# and string annotations failed to resolve when a served run loaded this file by path.
import contextlib
import datetime as dt
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from prefect import flow
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture, wait
from prefect.logging import get_run_logger
from prefect.states import Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import Field

from cvpipe import layout
from cvpipe.config import load_params, missing_files
from cvpipe.errors import ConfigError, CvpipeError
from cvpipe.io import write_json_atomic
from cvpipe.pipeline.graph import select_stages, stage_graph, topological_order
from cvpipe.pipeline.lock import ProjectBusyError, project_run_lock, refuse_if_dvc_is_busy, run_holder
from cvpipe.pipeline.params import PARAMS_YAML, apply_params_file
from cvpipe.pipeline.repro import StageOutcome
from cvpipe.pipeline.summary import RunReport, lineage, metrics_rows, summary_markdown
from tasks.dvc_stages import Slots, StagePolicy, dvc_stage, lineage_env

FLOW_NAME = "cvpipe"
DEPLOYMENT_NAME = "nightly"
NIGHTLY_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "UTC"
# Threads for the stages' task runs: a stage waiting on its upstream (wait_for) or for a slot holds one, so
# this is above any DAG's width; the flow's max_parallel is the bound on stages running.
MAX_WORKERS = 16
# Outside every DVC output, so writing it never makes a stage stale; .prefect/ is ignored by git.
RUN_RECORD = Path(".prefect") / "cvpipe-run.json"


def _failure_reason(future: PrefectFuture[StageOutcome]) -> str:
    state = future.state
    error = state.result(raise_on_failure=False) if state.is_failed() or state.is_crashed() else None
    reason = str(error) if isinstance(error, BaseException) else (state.message or state.name or "failed")
    return f"{state.name}: {reason}" if state.name not in ("Failed", None) else reason


def run_dag(
    graph: Mapping[str, tuple[str, ...]], project: Path, policy: StagePolicy, force: bool, slots: Slots
) -> RunReport:
    """Submit every stage at once, each waiting for its upstream stages (Prefect's ``wait_for``); report.

    Prefect leaves a stage whose upstream did not complete ``NotReady`` (pending, never run); independent
    stages go on (a failed variant does not stop the other variants).
    """
    futures: dict[str, PrefectFuture[StageOutcome]] = {}
    for stage in topological_order(graph):  # upstream futures exist before a stage waits for them
        futures[stage] = dvc_stage.with_options(**policy.task_options(stage)).submit(
            stage,
            project_dir=str(project),
            force=force,
            timeout_s=policy.timeout_s(stage),
            slots=slots,
            gpu=policy.uses_gpu(stage),
            wait_for=[futures[up] for up in graph[stage]],
        )
    wait(list(futures.values()))
    report = RunReport()
    for stage, future in futures.items():
        state = future.state
        if state.is_completed():
            report.outcomes[stage] = future.result()
        elif state.is_failed() or state.is_crashed() or state.is_cancelled():
            report.failures[stage] = _failure_reason(future)
        else:  # NotReady: an upstream stage did not complete
            report.not_run.append(stage)
    return report


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
    html = project_dir / layout.REPORT_HTML
    if html.is_file():
        create_link_artifact(html.resolve().as_uri(), link_text="cvpipe report", key="cvpipe-report")
        keys.append("cvpipe-report")
    return keys


def check_files(project: Path) -> None:
    """Fail before any stage runs when ``params.yaml`` names a file that does not exist.

    Raises:
        ConfigError: one problem a line.
    """
    problems = missing_files(load_params(project / PARAMS_YAML), project)
    if problems:
        raise ConfigError(f"{PARAMS_YAML}: " + "; ".join(problems))


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


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
        ``{stage: "ran" | "skipped"}``; a ``Failed`` state when the run was refused, or when a stage failed: its
        message names the failed stages with their one line each and the stages left unrun (the artifacts are
        created first).
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
        try:
            # The whole file, not only the keys a stale stage lists: `dvc repro` would pass a typo'd key silently.
            changed = apply_params_file(project, params_file)
            check_files(project)
        except CvpipeError as error:
            # The user's to fix: one line in the log and the state, no traceback.
            logger.error("%s", error)
            return Failed(message=str(error))
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
        write_json_atomic(project / RUN_RECORD, run)
        policy = StagePolicy(
            download_retries=download_retries,
            download_backoff_seconds=download_retry_delay_seconds,
            train_timeout_s=train_timeout_minutes * 60 if train_timeout_minutes else None,
        )
        report = run_dag(graph, project, policy, force, Slots(max_parallel, gpu_slots))
        keys = publish_artifacts(project, report, run)
        run.update(
            state="completed" if report.ok else "failed",
            finished_at=_now(),
            stages=report.statuses(),
            failed=report.failures,
            not_run=report.not_run,
            artifacts=keys,
        )
        write_json_atomic(project / RUN_RECORD, run)
    if not report.ok:
        # A state, not an exception: Prefect logs a raised one with its traceback, which says nothing here (each
        # task's state says why its stage failed); Prefect logs this state's message once, when the run ends.
        return Failed(message=report.failure_message())
    return report.statuses()


def serve(
    name: str = DEPLOYMENT_NAME,
    cron: str | None = None,
    interval_s: float | None = None,
    timezone: str = DEFAULT_TIMEZONE,
    parameters: Mapping[str, Any] | None = None,
) -> None:
    """Create the deployment on the running server and execute its scheduled runs until interrupted.

    Args:
        name: the deployment's name.
        cron: a cron schedule (default: nightly at 02:00); ignored when ``interval_s`` is given.
        interval_s: a fixed interval instead of the cron schedule.
        timezone: the cron schedule's IANA timezone.
        parameters: the flow's parameters for every scheduled run.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron, Interval

    schedule = (
        Interval(dt.timedelta(seconds=interval_s)) if interval_s else Cron(cron or NIGHTLY_CRON, timezone=timezone)
    )
    cvpipe_pipeline.serve(
        name=name,
        schedules=[schedule],
        parameters=dict(parameters or {}),
        # One run at a time; a run due while one is still going is cancelled, not queued: the next run
        # catches up anyway, since DVC reruns whatever is stale.
        global_limit=ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
        # Stopping this process must not pause the schedule for the worker-based deployment or a restart.
        pause_on_shutdown=False,
    )


if __name__ == "__main__":
    # `python -m flows.pipeline [options]` is `cvpipe flow run [options]`.
    from cvpipe.cli import main

    sys.exit(main(["flow", "run", *sys.argv[1:]]))
