"""What a pipeline run reports: each stage's outcome, failures, stages not run, metrics and the data's lineage.

The flow publishes these as Prefect artifacts; they are plain data here, read from the stages' outputs on disk
(the paths in :mod:`cvpipe.layout`), so they can be built and tested without Prefect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvpipe import layout
from cvpipe.io import read_json
from cvpipe.pipeline.repro import StageOutcome


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

    def statuses(self) -> dict[str, str]:
        """``{stage: "ran" | "skipped"}`` for the stages that succeeded."""
        return {stage: outcome.status for stage, outcome in self.outcomes.items()}

    def failure_message(self) -> str:
        """One line naming the failed stages and why, and the stages left unrun."""
        parts = [f"{len(self.failures)} stage(s) failed: " + "; ".join(f"{s} ({m})" for s, m in self.failures.items())]
        if self.not_run:
            parts.append("not run because an upstream stage failed: " + ", ".join(self.not_run))
        return ". ".join(parts)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, (int, float, str, bool)) or value is None:
        return {prefix.rstrip("."): value}
    return {}  # lists (confusion matrices, curves) do not fit a table cell


def metrics_rows(project_dir: Path) -> list[dict[str, Any]]:
    """One row per ``reports/metrics/<variant>.json``: the variant and its scalar metrics, flattened."""
    rows = []
    for path in sorted((project_dir / layout.METRICS_DIR).glob("*.json")):
        data = read_json(path)
        if isinstance(data, Mapping):
            rows.append({"variant": path.stem, **_flatten(data)})
    return rows


def lineage(project_dir: Path) -> dict[str, Any]:
    """What the data stages recorded: source, archive sha256, split counts, quarantine count (when present)."""
    facts: dict[str, Any] = {}
    source = read_json(project_dir / layout.SOURCE)
    if isinstance(source, Mapping):
        archive = source.get("archive") or {}
        facts.update(
            source=source.get("source"), archive_sha256=archive.get("sha256"), archive_bytes=archive.get("bytes")
        )
        facts["retrieved_at"] = source.get("retrieved_at")
    manifest = read_json(project_dir / layout.MANIFEST_REPORT)
    if isinstance(manifest, Mapping):
        summary = manifest.get("summary") or {}
        quarantine = manifest.get("quarantine")
        facts["members"] = summary.get("members")
        facts["quarantined"] = summary.get("quarantined", len(quarantine) if isinstance(quarantine, list) else None)
    splits = read_json(project_dir / layout.SPLIT_REPORT)
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
