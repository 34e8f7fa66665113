"""What a run reports: outcomes, failures, stages not run, metrics and the data's lineage."""

from __future__ import annotations

import json
from pathlib import Path

from cvpipe import layout
from cvpipe.pipeline.repro import RAN, SKIPPED, StageOutcome
from cvpipe.pipeline.summary import RunReport, lineage, metrics_rows, summary_markdown


def _write_json(path: Path, payload: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_failure_message_names_failed_and_unrun_stages() -> None:
    report = RunReport(failures={"train@scratch": "exit 1"}, not_run=["evaluate@scratch"])
    assert not report.ok
    message = report.failure_message()
    assert (
        "train@scratch (exit 1)" in message and "not run because an upstream stage failed: evaluate@scratch" in message
    )
    done = RunReport(outcomes={"split": StageOutcome("split", RAN, 1.0), "decode": StageOutcome("decode", SKIPPED, 0)})
    assert done.ok and done.statuses() == {"split": "ran", "decode": "skipped"}


def test_lineage_and_metrics_come_from_the_stage_reports(tmp_path: Path) -> None:
    _write_json(
        tmp_path / layout.SOURCE,
        {"source": "synthetic", "archive": {"sha256": "ab" * 32, "bytes": 10}, "retrieved_at": "2026-01-01"},
    )
    _write_json(tmp_path / layout.MANIFEST_REPORT, {"summary": {"members": 91, "quarantined": 3}})
    _write_json(tmp_path / layout.SPLIT_REPORT, {"counts": {"train": {"cat": 20, "dog": 20}}})
    _write_json(tmp_path / "reports/metrics/scratch.json", {"accuracy": 0.7, "loss": {"test": 0.6}, "roc": [1, 2]})
    facts = lineage(tmp_path)
    assert facts["archive_sha256"] == "ab" * 32 and facts["quarantined"] == 3 and facts["members"] == 91
    assert facts["split_counts"] == {"train": {"cat": 20, "dog": 20}}
    assert metrics_rows(tmp_path) == [{"variant": "scratch", "accuracy": 0.7, "loss.test": 0.6}]
    report = RunReport(outcomes={"split": StageOutcome("split", RAN, 1.5)}, failures={"train@x": "a | b"})
    markdown = summary_markdown(report, facts, {"flow_run_id": "id-1", "flow_run_name": "calm-cat"})
    assert "| split | ran | 1.5 |" in markdown and "**failed**: a / b" in markdown
    assert "ab" * 32 in markdown and "quarantined: 3 of 91" in markdown and "train: cat 20, dog 20" in markdown


def test_lineage_of_an_empty_project_is_empty(tmp_path: Path) -> None:
    assert lineage(tmp_path) == {} and metrics_rows(tmp_path) == []
    assert "no data stage outputs yet" in summary_markdown(RunReport(), {}, {})
