"""OpenLineage events for every stage run: START, then COMPLETE or FAIL (ABORT on Ctrl-C).

Neither DVC nor Prefect emits OpenLineage, so cvpipe's stages do. Events are built with the client's typed
classes (``openlineage.client.event_v2`` and ``facet_v2``):

* the job is the DVC stage (namespace ``$OPENLINEAGE_NAMESPACE``, default ``cvpipe``); a Prefect flow run
  that started it is the ``parent`` run facet;
* inputs and outputs are the stage's data dependencies and outputs as local-file datasets (namespace
  ``file``, name the absolute path), versioned by their DVC hash (``version`` facet);
* tables get a ``schema`` facet and ``dataQualityMetrics`` (rows, bytes, files, distinct labels); outputs get
  ``outputStatistics``; the audit's input gets ``dataQualityAssertions``;
* custom facets, prefixed ``cvpipe_``, carry per-class counts, quarantine counts, the split policy and
  near-duplicate counts; their JSON Schema is ``docs/openlineage/cvpipe-facets.json``.

Transport: whatever the user configured the standard way (``openlineage.yml`` in the project or
``~/.openlineage/``, ``$OPENLINEAGE_CONFIG``, ``OPENLINEAGE__TRANSPORT__*`` or ``OPENLINEAGE_URL``;
``OPENLINEAGE_DISABLED=true`` turns emission off). Otherwise a JSON-lines file in the stage's lineage folder,
so nothing leaves the machine unless asked to. Sending never breaks a stage: a failure is logged and counted.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import traceback
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attr
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    DatasetFacet,
    RunFacet,
    data_quality_assertions_dataset,
    data_quality_metrics_dataset,
    dataset_version_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    processing_engine_run,
    schema_dataset,
    set_producer,
)

from cvpipe.io import read_json
from cvpipe.lineage.secrets import redact, secret_values
from cvpipe.lineage.transport import keep_event, make_client
from cvpipe.lineage.transport import user_configured as user_configured

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient

    # Only for type hints: the record module never imports this one, and this one reads a StageRun's
    # attributes without importing it, so the two stay out of each other's import graph.
    from cvpipe.lineage.record import StageRun

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "cvpipe"
DATASET_NAMESPACE = "file"  # OpenLineage's naming for a local file system: namespace "file", name the path
PRODUCER = "https://github.com/cvpipe/cvpipe"
# The JSON Schema of the custom facets below, published with the repository (docs/openlineage/).
FACETS_SCHEMA_URL = "https://github.com/cvpipe/cvpipe/blob/main/docs/openlineage/cvpipe-facets.json"
PARENT_JOB = "cvpipe"  # the Prefect flow's name (flows.pipeline.FLOW_NAME)
_CLOSE_TIMEOUT_S = 5.0


# -- custom facets --------------------------------------------------------------------------------------------


def _schema(name: str) -> str:
    return f"{FACETS_SCHEMA_URL}#/$defs/{name}"


@attr.define
class ClassCountsDatasetFacet(DatasetFacet):
    """Images per class (``{"cat": 1000}``), or per split and class (``{"train": {"cat": 1000}}``)."""

    counts: dict[str, Any] = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return _schema("ClassCountsDatasetFacet")


@attr.define
class QuarantineDatasetFacet(DatasetFacet):
    """How many archive members the manifest kept and quarantined, and why."""

    members: int
    ok: int
    quarantined: int
    perReason: dict[str, int] = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return _schema("QuarantineDatasetFacet")


@attr.define
class SplitPolicyDatasetFacet(DatasetFacet):
    """How the split was drawn."""

    seed: int | None = None
    perClass: dict[str, int] | None = None
    fractions: dict[str, float] | None = None
    nearDuplicateThreshold: int | None = None
    hash: str | None = None
    # The near-duplicate rule as the split report records it (hash bits, measure, threshold, guard bounds).
    nearDuplicateRule: dict[str, Any] | None = None

    @staticmethod
    def _get_schema() -> str:
        return _schema("SplitPolicyDatasetFacet")


@attr.define
class NearDuplicatesDatasetFacet(DatasetFacet):
    """Exact and near-duplicate counts, with the hash method and threshold they were found with."""

    method: str
    threshold: int
    exactDuplicateGroups: int | None = None
    nearDuplicateGroups: int | None = None
    pairsWithinSplit: int | None = None
    pairsCrossSplit: int | None = None
    labelConflicts: int | None = None
    rule: dict[str, Any] | None = None

    @staticmethod
    def _get_schema() -> str:
        return _schema("NearDuplicatesDatasetFacet")


@attr.define
class Vgg16WeightsDatasetFacet(DatasetFacet):
    """The VGG16 weights features were computed with: ``features.weights``, the file, its hashes (random: seed)."""

    spec: str
    file: str
    sha256: str | None = None
    md5: str | None = None
    seed: int | None = None

    @staticmethod
    def _get_schema() -> str:
        return _schema("Vgg16WeightsDatasetFacet")


@attr.define
class StageRunFacet(RunFacet):
    """The DVC stage, who started it, and the code it ran."""

    stage: str
    command: str
    orchestrator: str
    gitCommit: str | None = None
    gitDirty: bool | None = None
    params: dict[str, Any] = attr.field(factory=dict)

    @staticmethod
    def _get_schema() -> str:
        return _schema("StageRunFacet")


def namespace() -> str:
    """The job namespace: ``$OPENLINEAGE_NAMESPACE`` (the variable OpenLineage integrations read), or cvpipe."""
    return os.environ.get("OPENLINEAGE_NAMESPACE") or DEFAULT_NAMESPACE


# -- datasets -------------------------------------------------------------------------------------------------


def _parquet_facets(path: Path) -> dict[str, DatasetFacet]:
    """Schema and data-quality metrics of a parquet table (its label column's distinct and null counts)."""
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    schema = table.schema_arrow
    fields = [
        schema_dataset.SchemaDatasetFacetFields(name=name, type=str(schema.field(name).type), ordinal_position=i + 1)
        for i, name in enumerate(schema.names)
    ]
    columns: dict[str, data_quality_metrics_dataset.ColumnMetrics] = {}
    if "label" in schema.names:
        labels = table.read(columns=["label"]).column("label")
        columns["label"] = data_quality_metrics_dataset.ColumnMetrics(
            nullCount=labels.null_count, distinctCount=len(labels.unique()), count=float(len(labels))
        )
    return {
        "schema": schema_dataset.SchemaDatasetFacet(fields=fields),
        "dataQualityMetrics": data_quality_metrics_dataset.DataQualityMetricsDatasetFacet(
            columnMetrics=columns, rowCount=table.metadata.num_rows, bytes=path.stat().st_size, fileCount=1
        ),
    }


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path)
    return data if isinstance(data, dict) else {}


FacetBuilders = Mapping[str, Callable[[], Any]]


def _built(run: StageRun, what: str, builders: FacetBuilders) -> dict[str, Any]:
    """Each facet that can be built; one that cannot is left out with one warning naming it and the cause.

    Facets are extras: a summary field renamed or a table unreadable must be seen, yet never cost the event
    or fail the stage.
    """
    facets: dict[str, Any] = {}
    for name, build in builders.items():
        try:
            facets[name] = build()
        except Exception as error:
            log.warning(
                "OpenLineage: facet %s of %s (%s) left out: %s: %s",
                name,
                what,
                run.stage,
                type(error).__name__,
                redact(str(error)),
            )
    return facets


def _first(paths: Sequence[str], suffix: str) -> str | None:
    return next((path for path in paths if path.endswith(suffix)), None)


def _ingest_facets(run: StageRun) -> dict[str, dict[str, DatasetFacet]]:
    """Quarantine and class counts on the manifest, from the ingest stage's summary."""
    summary = run.summary
    manifest = _first(run.outputs, ".parquet")
    if manifest is None:
        return {}
    builders = {
        "cvpipe_quarantine": lambda: QuarantineDatasetFacet(
            members=int(summary.members),
            ok=int(summary.ok),
            quarantined=int(summary.quarantined),
            perReason=dict(summary.quarantined_per_reason),
        ),
        "cvpipe_classCounts": lambda: ClassCountsDatasetFacet(counts=dict(summary.ok_per_class)),
    }
    return {manifest: _built(run, manifest, builders)}


def _split_facets(run: StageRun) -> dict[str, dict[str, DatasetFacet]]:
    """Class counts, policy and duplicate counts on the split table, from the split report.

    The report, not the summary: the policy and the duplicate groups are written there only.
    """
    table = _first(run.outputs, ".parquet")
    report_path = _first(run.outputs, ".json")
    if table is None or report_path is None:
        return {}
    report = _read_json(run.root / report_path)
    policy = report.get("policy") or {}
    rule = policy.get("near_duplicate") or {}
    builders = {
        "cvpipe_classCounts": lambda: ClassCountsDatasetFacet(counts=report.get("counts") or {}),
        "cvpipe_splitPolicy": lambda: SplitPolicyDatasetFacet(
            seed=policy.get("seed"),
            perClass=policy.get("per_class"),
            fractions=policy.get("fractions"),
            nearDuplicateThreshold=rule.get("hash_bits"),
            hash=rule.get("hash"),
            nearDuplicateRule=rule or None,
        ),
        "cvpipe_nearDuplicates": lambda: NearDuplicatesDatasetFacet(
            method=str(rule.get("hash") or "phash"),
            threshold=int(rule.get("hash_bits") or 0),
            rule=rule or None,
            exactDuplicateGroups=len(report.get("exact_duplicates") or []),
            nearDuplicateGroups=len(report.get("near_duplicate_groups") or []),
            labelConflicts=len(report.get("label_conflicts") or []),
        ),
    }
    return {table: _built(run, table, builders)}


def _audit_facets(run: StageRun) -> dict[str, dict[str, DatasetFacet]]:
    """Near-duplicate counts on the audit report, from the audit stage's summary."""
    summary = run.summary
    report = _first(run.outputs, "report.json")
    if report is None:
        return {}
    builders = {
        "cvpipe_nearDuplicates": lambda: NearDuplicatesDatasetFacet(
            method=str(summary.method),
            threshold=int(summary.threshold),
            exactDuplicateGroups=summary.exact_duplicate_groups,
            pairsWithinSplit=summary.within_split_pairs,
            pairsCrossSplit=summary.cross_split_pairs,
            labelConflicts=summary.label_conflict_pairs,
        )
    }
    return {report: _built(run, report, builders)}


def _audit_assertions(run: StageRun) -> dict[str, dict[str, Any]]:
    """The audit's verdicts, as dataQualityAssertions on the split table it checked."""
    summary = run.summary
    table = _first(run.inputs, "splits.parquet")
    if table is None:
        return {}

    def assertions() -> data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet:
        allowed = int(summary.max_cross_split_pairs)
        exact = int(summary.exact_cross_split)
        cross = int(summary.cross_split_pairs)
        checks = [
            data_quality_assertions_dataset.Assertion(
                assertion="no_exact_duplicates_across_splits",
                success=exact == 0,
                column="sha256",
                expected="0",
                actual=str(exact),
            ),
            data_quality_assertions_dataset.Assertion(
                assertion="near_duplicates_across_splits_at_most",
                success=cross <= allowed,
                column="group",
                expected=f"<= {allowed}",
                actual=str(cross),
            ),
        ]
        return data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(assertions=checks)

    return {table: _built(run, table, {"dataQualityAssertions": assertions})}


def _features_facets(run: StageRun) -> dict[str, dict[str, DatasetFacet]]:
    """The VGG16 weights on the feature cache, from the features stage's summary (``weights_record``'s keys)."""
    weights = {"cvpipe_vgg16Weights": lambda: Vgg16WeightsDatasetFacet(**run.summary.weights)}
    return {path: _built(run, path, weights) for path in run.outputs[:1]}


_STAGE_FACETS: dict[str, Callable[[StageRun], dict[str, dict[str, DatasetFacet]]]] = {
    "ingest": _ingest_facets,
    "split": _split_facets,
    "features": _features_facets,
    "audit": _audit_facets,
}


def _table_facets(run: StageRun, path: str) -> dict[str, DatasetFacet]:
    """``schema`` and ``dataQualityMetrics`` of a parquet table, both read in one pass (or both left out)."""
    try:
        return _parquet_facets(run.root / path)
    except Exception as error:
        log.warning(
            "OpenLineage: facets schema, dataQualityMetrics of %s (%s) left out: %s: %s",
            path,
            run.stage,
            type(error).__name__,
            redact(str(error)),
        )
        return {}


def input_datasets(run: StageRun, final: bool) -> list[InputDataset]:
    """The run's data inputs, versioned by DVC hash; with their facets once the run completed."""
    extra = _audit_assertions(run) if final and run.command == "audit" else {}
    datasets = []
    for path in run.inputs:
        info = run.input_hashes.get(path, {})
        facets: dict[str, Any] = {}
        if info.get("md5"):
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=info["md5"])
        if final and path.endswith(".parquet"):
            facets.update(_table_facets(run, path))
        datasets.append(
            InputDataset(
                namespace=DATASET_NAMESPACE, name=_name(run, path), facets=facets, inputFacets=extra.get(path, {})
            )
        )
    return datasets


def output_datasets(run: StageRun, final: bool) -> list[OutputDataset]:
    """The run's outputs; once it completed, with version, schema, statistics and cvpipe's facets."""
    custom = _STAGE_FACETS[run.command](run) if final and run.command in _STAGE_FACETS else {}
    datasets = []
    for path in run.outputs:
        info = run.output_hashes.get(path, {}) if final else {}
        facets: dict[str, Any] = {}
        output_facets: dict[str, Any] = {}
        if info.get("md5"):
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=info["md5"])
            rows = None
            if path.endswith(".parquet"):
                table_facets = _table_facets(run, path)
                facets.update(table_facets)
                metrics = table_facets.get("dataQualityMetrics")
                rows = getattr(metrics, "rowCount", None)
            output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                rowCount=rows, size=info.get("size"), fileCount=info.get("nfiles", 1)
            )
        facets.update(custom.get(path, {}))
        datasets.append(
            OutputDataset(namespace=DATASET_NAMESPACE, name=_name(run, path), facets=facets, outputFacets=output_facets)
        )
    return datasets


def _name(run: StageRun, path: str) -> str:
    return (run.root / path).resolve().as_posix()


# -- events ---------------------------------------------------------------------------------------------------


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("cvpipe")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _client_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("openlineage-python")
    except metadata.PackageNotFoundError:
        return None


def run_facets(run: StageRun, environ: Mapping[str, str] | None = None) -> dict[str, RunFacet]:
    """Facets of the run: the engine, the stage and commit, and the Prefect flow run that started it."""
    environ = os.environ if environ is None else environ
    who, git = run.who, run.git
    facets: dict[str, RunFacet] = {
        "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
            version=_version(), name="cvpipe", openlineageAdapterVersion=_client_version()
        ),
        "cvpipe_stage": StageRunFacet(
            stage=run.stage,
            command=run.command,
            orchestrator=who.get("kind", "manual"),
            gitCommit=git.get("commit"),
            gitDirty=git.get("dirty"),
            params=redact(run.params),
        ),
    }
    flow_run = environ.get("CVPIPE_FLOW_RUN_ID")
    if flow_run and _is_uuid(flow_run):
        facets["parent"] = parent_run.ParentRunFacet(
            run=parent_run.Run(runId=flow_run),
            job=parent_run.Job(namespace=namespace(), name=PARENT_JOB),
            root=parent_run.Root(
                run=parent_run.RootRun(runId=flow_run), job=parent_run.RootJob(namespace=namespace(), name=PARENT_JOB)
            ),
        )
    return facets


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def error_facet(error: BaseException) -> error_message_run.ErrorMessageRunFacet:
    """The failure, redacted: the exception's one line and its traceback."""
    secrets = secret_values()
    message = redact(f"{type(error).__name__}: {error}", secrets)
    stack = redact("".join(traceback.format_exception(type(error), error, error.__traceback__)), secrets)
    return error_message_run.ErrorMessageRunFacet(message=message, programmingLanguage="python", stackTrace=stack)


def build_event(run: StageRun, state: RunState, error: BaseException | None = None) -> RunEvent:
    """The run's event for ``state`` (START, COMPLETE, FAIL or ABORT)."""
    # Facets name their producer too; the default is the client library, but cvpipe builds them.
    set_producer(PRODUCER)
    final = state == RunState.COMPLETE
    facets = run_facets(run)
    if error is not None:
        facets["errorMessage"] = error_facet(error)
    return RunEvent(
        eventType=state,
        eventTime=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        producer=PRODUCER,
        run=Run(runId=run.run_id, facets=facets),
        job=Job(
            namespace=namespace(),
            name=run.stage,
            facets={
                "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="DVC", jobType="STAGE")
            },
        ),
        inputs=input_datasets(run, final),
        outputs=output_datasets(run, final),
    )


class EventEmitter:
    """Sends a run's events; a failure to build or send one is logged and counted, never raised.

    Args:
        default_file: where events go (JSON lines, appended) when OpenLineage is not configured.
    """

    def __init__(self, default_file: Path) -> None:
        self.default_file = Path(default_file)
        self.sent = 0
        self.failed = 0
        self.transport: str | None = None
        self._client: OpenLineageClient | None = None
        self._unavailable = False
        self._backend_down = False
        self.kept = 0

    def _get_client(self) -> OpenLineageClient | None:
        if self._client is None and not self._unavailable:
            try:
                self._client = make_client(self.default_file)
                self.transport = str(self._client.transport.kind)
            except Exception as error:
                self._unavailable = True
                log.warning("OpenLineage: no client (%s: %s); events are not sent", type(error).__name__, error)
        return self._client

    def emit(self, run: StageRun, state: RunState, error: BaseException | None = None) -> bool:
        """Build and send one event; return whether it was sent."""
        event: RunEvent | None = None
        try:
            client = self._get_client()
            if client is None:
                self.failed += 1
                return False
            event = build_event(run, state, error)
            if self._backend_down:
                self.failed += 1
                self._keep(event)
                return False
            client.emit(event)
        except Exception as failure:
            self.failed += 1
            # A backend that refused one event is not tried again in this stage: one warning, not one per event.
            self._backend_down = event is not None and self.transport not in ("file", "noop")
            kept = f"; this stage's events are kept in {self._keep(event)}" if self._backend_down and event else ""
            log.warning(
                "OpenLineage: %s event of %s not sent (%s: %s)%s",
                state.value,
                run.stage,
                type(failure).__name__,
                redact(str(failure))[:300],
                kept,
            )
            return False
        if self.transport != "noop":
            self.sent += 1
        return True

    def _keep(self, event: RunEvent) -> Path | None:
        self.kept += (kept := keep_event(self.default_file, event)) is not None
        return kept

    def start(self, run: StageRun) -> bool:
        """Send START."""
        return self.emit(run, RunState.START)

    def complete(self, run: StageRun) -> bool:
        """Send COMPLETE, with the outputs' versions and facets."""
        return self.emit(run, RunState.COMPLETE)

    def fail(self, run: StageRun, error: BaseException) -> bool:
        """Send FAIL with the error, or ABORT when the user interrupted the stage."""
        state = RunState.ABORT if isinstance(error, KeyboardInterrupt) else RunState.FAIL
        return self.emit(run, state, error)

    def close(self) -> None:
        """Let asynchronous transports drain (bounded); errors are only logged."""
        if self._client is None:
            return
        try:
            self._client.close(_CLOSE_TIMEOUT_S)
        except Exception as error:
            log.debug("OpenLineage: closing the transport failed: %s", error)

    def stats(self) -> dict[str, Any]:
        """What the record says about emission: the transport, events sent and events lost."""
        stats = {"transport": self.transport, "sent": self.sent, "failed": self.failed}
        return {**stats, "kept": self.kept} if self.kept else stats
