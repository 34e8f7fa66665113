from __future__ import annotations

import json
import logging
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cvpipe.errors import CvpipeError
from cvpipe.lineage import track_stage
from cvpipe.lineage.dvcfile import dvc_hash
from cvpipe.lineage.record import git_info, jsonable, orchestrator
from cvpipe.lineage.secrets import REDACTED

FAKE_KEY = "kaggle-secret-0123456789abcdef"


def test_orchestrator_names_the_prefect_flow_run_or_dvc() -> None:
    flow = orchestrator({"CVPIPE_FLOW_RUN_ID": "f-1", "CVPIPE_FLOW_RUN_NAME": "nightly-x", "DVC_STAGE": "split"})
    assert flow == {"kind": "prefect", "flow_run_id": "f-1", "flow_run_name": "nightly-x", "dvc_stage": "split"}
    assert orchestrator({"DVC_STAGE": "split"})["kind"] == "dvc"
    assert orchestrator({}) == {"kind": "manual"}


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


def test_git_info_reports_commit_and_dirty_but_not_dvc_lock(tmp_path: Path) -> None:
    assert git_info(tmp_path)["commit"] is None
    _git(tmp_path, "init", "-q")
    assert git_info(tmp_path) == {"commit": None, "dirty": None, "repository": True}
    (tmp_path / "params.yaml").write_text("a: 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "one")
    clean = git_info(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # DVC rewrites it during the run
    assert git_info(tmp_path)["dirty"] is False
    (tmp_path / "params.yaml").write_text("a: 2\n")
    dirty = git_info(tmp_path)
    assert dirty["dirty"] is True and dirty["dirty_paths"] == ["params.yaml"]


# -- a stage run in a small project ---------------------------------------------------------------------------

DVC_YAML = {
    "stages": {
        "split": {
            "cmd": "cvpipe split",
            "deps": ["data/manifest/images.parquet", "cvpipe/stages/split.py"],
            "params": ["split.seed"],
            "outs": ["data/splits/splits.parquet", "data/splits/report.json", "reports/lineage/split"],
        }
    }
}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"split": {"seed": 7}}))
    (tmp_path / "cvpipe/stages").mkdir(parents=True)
    (tmp_path / "cvpipe/stages/split.py").write_text("# code\n")
    (tmp_path / "data/manifest").mkdir(parents=True)
    pd.DataFrame({"member": ["a.jpg"], "label": ["cat"]}).to_parquet(tmp_path / "data/manifest/images.parquet")
    monkeypatch.chdir(tmp_path)
    for name in ("DVC_ROOT", "DVC_STAGE", "CVPIPE_FLOW_RUN_ID", "OPENLINEAGE_DISABLED", "OPENLINEAGE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_KEY", FAKE_KEY)
    return tmp_path


def _split_outputs(root: Path) -> None:
    (root / "data/splits").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"split": ["train"], "label": ["cat"]}).to_parquet(root / "data/splits/splits.parquet")
    (root / "data/splits/report.json").write_text(json.dumps({"counts": {"train": {"cat": 1}}}))


def _track(root: Path):
    return track_stage(
        "split",
        inputs=[root / "data/manifest/images.parquet"],
        outputs=[root / "data/splits/splits.parquet", root / "data/splits/report.json"],
        params_file=root / "params.yaml",
        sections=["split"],
    )


def test_a_completed_stage_writes_its_record_and_start_complete_events(project: Path) -> None:
    with _track(project) as run:
        _split_outputs(project)
        run.summary = {"counts": {"train": {"cat": 1}}, "note": f"key {FAKE_KEY}"}
    folder = project / "reports/lineage/split"
    record = json.loads((folder / "record.json").read_text())
    assert record["stage"] == "split" and record["status"] == "completed"
    assert uuid.UUID(record["run_id"])
    assert record["params"] == {"split.seed": 7}
    assert record["inputs"] == [
        {"path": "data/manifest/images.parquet", **dvc_hash(project / "data/manifest/images.parquet")}
    ]
    assert record["code"] == [{"path": "cvpipe/stages/split.py", **dvc_hash(project / "cvpipe/stages/split.py")}]
    outputs = {entry["path"]: entry for entry in record["outputs"]}
    assert set(outputs) == {"data/splits/splits.parquet", "data/splits/report.json"}
    assert outputs["data/splits/splits.parquet"]["md5"] == dvc_hash(project / "data/splits/splits.parquet")["md5"]
    assert outputs["data/splits/splits.parquet"]["rows"] == 1
    assert record["orchestrator"]["kind"] == "manual" and "packages" in record["environment"]
    assert record["openlineage"] == {"transport": "file", "sent": 2, "failed": 0}
    assert FAKE_KEY not in (folder / "record.json").read_text() and REDACTED in record["summary"]["note"]
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [event["eventType"] for event in events] == ["START", "COMPLETE"]
    assert {event["run"]["runId"] for event in events} == {record["run_id"]}
    assert FAKE_KEY not in (folder / "events.jsonl").read_text()


def test_a_failed_stage_sends_fail_and_writes_no_record(project: Path) -> None:
    with pytest.raises(CvpipeError, match="boom"), _track(project):
        raise CvpipeError(f"boom {FAKE_KEY}")
    folder = project / "reports/lineage/split"
    assert not (folder / "record.json").exists()
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    assert [event["eventType"] for event in events] == ["START", "FAIL"]
    error = events[1]["run"]["facets"]["errorMessage"]
    assert error["message"] == f"CvpipeError: boom {REDACTED}" and error["programmingLanguage"] == "python"
    assert FAKE_KEY not in (folder / "events.jsonl").read_text()


def test_a_run_by_hand_with_other_paths_gets_events_but_no_record(project: Path) -> None:
    with track_stage(
        "split",
        inputs=[],
        outputs=[project / "elsewhere.parquet"],
        params_file=project / "params.yaml",
        sections=["split"],
    ) as run:
        (project / "elsewhere.parquet").write_bytes(b"x")
    assert run.record_dir is None and run.params == {"split": {"seed": 7}}
    assert run.output_hashes == {} and run.input_hashes == {}  # nothing re-read outside the pipeline
    assert not (project / "reports/lineage/split").exists()
    assert len((project / "reports/openlineage.jsonl").read_text().splitlines()) == 2


def test_an_unreachable_transport_never_breaks_the_stage(
    project: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TYPE", "http")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__TIMEOUT", "0.5")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__RETRY", json.dumps({"total": 0}))
    with caplog.at_level(logging.WARNING), _track(project) as run:
        _split_outputs(project)
    record = json.loads((project / "reports/lineage/split/record.json").read_text())
    # Both events kept in the stage's events file; one warning for the stage, not one per event.
    assert record["openlineage"] == {"transport": "http", "sent": 0, "failed": 2, "kept": 2}
    events = (project / "reports/lineage/split/events.jsonl").read_text().splitlines()
    assert [json.loads(line)["eventType"] for line in events] == ["START", "COMPLETE"]
    assert run.output_hashes and caplog.text.count("not sent") == 1 and "kept in" in caplog.text


def test_disabled_openlineage_sends_nothing(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    with _track(project):
        _split_outputs(project)
    record = json.loads((project / "reports/lineage/split/record.json").read_text())
    assert record["openlineage"] == {"transport": "noop", "sent": 0, "failed": 0}
    assert not (project / "reports/lineage/split/events.jsonl").exists()


def test_jsonable_writes_a_typed_summary_field_by_field() -> None:
    from dataclasses import dataclass

    import numpy as np

    @dataclass(frozen=True)
    class Summary:
        images: int
        ratio: float
        per_class: dict[str, int]

    assert jsonable(Summary(np.int64(3), float("nan"), {"cat": 1})) == {
        "images": 3,
        "ratio": None,
        "per_class": {"cat": 1},
    }
