"""``cvpipe flow run|serve``: the pipeline as a Prefect flow, once or on a schedule (``flows/pipeline.py``).

Prefect is imported only when a flow command runs, so the stage commands DVC calls start without it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from cvpipe import layout
from cvpipe.cli.core import app
from cvpipe.errors import ConfigError, CvpipeError

flow_app = typer.Typer(
    help="The pipeline as a Prefect flow: one task run per DVC stage, once or on a schedule.", no_args_is_help=True
)
app.add_typer(flow_app, name="flow")

# The flow's own defaults (flows/pipeline.py), repeated here for the help text; a test holds them together.
DEFAULT_MAX_PARALLEL = 2
DEFAULT_GPU_SLOTS = 1
SERVER_HINT = (
    "a running Prefect server: `prefect server start --host 127.0.0.1 --port 4200`, "
    "then export PREFECT_API_URL=http://127.0.0.1:4200/api"
)

ProjectOption = Annotated[Path, typer.Option("--project-dir", help="The DVC project's root.")]
TargetOption = Annotated[
    list[str] | None, typer.Option("--target", metavar="STAGE", help="A stage or foreach group (repeatable).")
]
ForceOption = Annotated[bool, typer.Option("--force", help="Rerun stages even if unchanged (dvc repro --force).")]
ParamsFileOption = Annotated[str, typer.Option("--params-file", help="Params merged over params.yaml first.")]
ParallelOption = Annotated[int, typer.Option("--max-parallel", min=1, max=16, help="Stages running at once.")]
GpuOption = Annotated[int, typer.Option("--gpu-slots", min=0, help="GPU stages running at once (0: no bound).")]


class FlowRunFailedError(CvpipeError):
    """The flow run ended without every stage succeeding (or was refused); its message says why."""

    exit_code = 1


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
    """Set :func:`prefect_env_defaults` in ``os.environ``; Prefect, if imported already, rereads its settings."""
    added = prefect_env_defaults(project_dir, os.environ)
    os.environ.update(added)
    if added and "prefect" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return added


def flow_parameters(
    project_dir: Path, targets: list[str] | None, force: bool, params_file: str, max_parallel: int, gpu_slots: int
) -> dict[str, Any]:
    """The flow's parameters from the command line's options."""
    return {
        "targets": list(targets) if targets else None,
        "force": force,
        "params_file": params_file,
        "project_dir": str(Path(project_dir).resolve()),
        "max_parallel": max_parallel,
        "gpu_slots": gpu_slots,
    }


def check_params(project_dir: Path, params_file: str) -> None:
    """Validate the whole of ``params.yaml`` (with ``params_file`` merged over it) and the files it names.

    Raises:
        ConfigError: every problem, one a line.
    """
    from cvpipe.config import deep_merge, missing_files, parse_params, read_overlay

    project = Path(project_dir)
    target = project / layout.PARAMS_FILE
    merged = read_overlay(target)
    origin = str(target)
    if (project / params_file).resolve() != target.resolve():
        merged = deep_merge(merged, read_overlay(project / params_file))
        origin = f"{params_file} merged over {target}"
    problems = missing_files(parse_params(merged, origin=origin), project)
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))


@flow_app.command("run")
def run(
    project_dir: ProjectOption = Path("."),
    target: TargetOption = None,
    force: ForceOption = False,
    params_file: ParamsFileOption = "params.yaml",
    max_parallel: ParallelOption = DEFAULT_MAX_PARALLEL,
    gpu_slots: GpuOption = DEFAULT_GPU_SLOTS,
) -> None:
    """Run the flow once (Prefect starts a temporary server); exit 1 unless every stage succeeded."""
    parameters = flow_parameters(project_dir, target, force, params_file, max_parallel, gpu_slots)
    check_params(project_dir, params_file)  # before Prefect starts a server: a typo is one line, exit 2
    apply_prefect_env(project_dir)
    from flows.pipeline import cvpipe_pipeline

    state = cvpipe_pipeline(**parameters, return_state=True)
    if not state.is_completed():
        raise FlowRunFailedError(f"flow run ended {state.name}: {state.message or 'see its log'}")


@flow_app.command("serve")
def serve(
    project_dir: ProjectOption = Path("."),
    target: TargetOption = None,
    force: ForceOption = False,
    params_file: ParamsFileOption = "params.yaml",
    max_parallel: ParallelOption = DEFAULT_MAX_PARALLEL,
    gpu_slots: GpuOption = DEFAULT_GPU_SLOTS,
    name: Annotated[str, typer.Option(help="The deployment's name.")] = "nightly",
    cron: Annotated[str | None, typer.Option(help='Cron schedule (default: "0 2 * * *").')] = None,
    interval: Annotated[float | None, typer.Option(metavar="SECONDS", help="Fixed interval instead of cron.")] = None,
    timezone: Annotated[str, typer.Option(help="The cron schedule's IANA timezone.")] = "UTC",
) -> None:
    """Create the deployment on a running Prefect server and execute its scheduled runs until interrupted."""
    if cron and interval:
        raise typer.BadParameter("give --cron or --interval, not both", param_hint="--cron/--interval")
    parameters = flow_parameters(project_dir, target, force, params_file, max_parallel, gpu_slots)
    apply_prefect_env(project_dir)
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect's temporary server refuses to schedule; say what to do instead of its traceback.
        raise CvpipeError(f"flow serve needs {SERVER_HINT}")
    from flows.pipeline import serve as serve_flow

    serve_flow(name=name, cron=cron, interval_s=interval, timezone=timezone, parameters=parameters)
