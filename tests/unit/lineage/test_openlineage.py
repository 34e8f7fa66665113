from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import jsonschema
import pandas as pd
import pytest
import yaml
from openlineage.client import event_v2
from openlineage.client.serde import Serde

from cvpipe.config import IngestConfig, Params
from cvpipe.lineage.dvcfile import dvc_hash
from cvpipe.lineage.openlineage import (
    ClassCountsDatasetFacet,
    NearDuplicatesDatasetFacet,
    QuarantineDatasetFacet,
    SplitPolicyDatasetFacet,
    StageRunFacet,
    Vgg16WeightsDatasetFacet,
    build_event,
    make_client,
    user_configured,
)
from cvpipe.lineage.record import StageRun

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = json.loads((ROOT / "docs/openlineage/cvpipe-facets.json").read_text())
CVPIPE = str(Path(sys.executable).parent / "cvpipe")
FLOW_RUN = "2f0e7c1a-9b7d-4c41-8a55-3d2e1f0a9b8c"


def assert_spec_fields(event: dict[str, Any]) -> None:
    """The OpenLineage spec's required fields of a run event."""
    assert event["eventType"] in {"START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"}
    assert "T" in event["eventTime"] and event["producer"] and event["schemaURL"].startswith("https://openlineage.io/")
    assert uuid.UUID(event["run"]["runId"])
    assert event["job"]["namespace"] and event["job"]["name"]
    for dataset in [*event["inputs"], *event["outputs"]]:
        assert dataset["namespace"] and dataset["name"]
        for facet in dataset.get("facets", {}).values():
            assert facet["_producer"] and facet["_schemaURL"]


def _run(root: Path, **fields: Any) -> StageRun:
    defaults: dict[str, Any] = {
        "stage": "split",
        "command": "split",
        "root": root,
        "inputs": ["data/manifest/images.parquet"],
        "outputs": ["data/splits/splits.parquet", "data/splits/report.json"],
        "code": [],
        "params": {"split.seed": 42},
        "record_dir": None,
        "run_id": str(uuid.uuid4()),
    }
    return StageRun(**{**defaults, **fields})


def test_events_are_typed_and_carry_the_spec_fields(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVPIPE_FLOW_RUN_ID", FLOW_RUN)
    (tmp_path / "data/splits").mkdir(parents=True)
    pd.DataFrame({"split": ["train", "test"], "label": ["cat", "dog"]}).to_parquet(
        tmp_path / "data/splits/splits.parquet"
    )
    report = {
        "counts": {"train": {"cat": 1}},
        "policy": {"seed": 42, "near_duplicate": {"hash_bits": 10, "hash": "phash"}},
    }
    (tmp_path / "data/splits/report.json").write_text(json.dumps(report))
    run = _run(tmp_path)
    run.input_hashes = {"data/manifest/images.parquet": {"md5": "a" * 32}}
    start = build_event(run, event_v2.RunState.START)
    assert isinstance(start, event_v2.RunEvent) and isinstance(start.run, event_v2.Run)
    run.output_hashes = {path: dvc_hash(tmp_path / path) for path in run.outputs}
    complete = Serde.to_dict(build_event(run, event_v2.RunState.COMPLETE))
    for event in (Serde.to_dict(start), complete):
        assert_spec_fields(event)
        assert event["run"]["runId"] == run.run_id and event["job"] == {**event["job"], "name": "split"}
        assert event["run"]["facets"]["parent"]["run"]["runId"] == FLOW_RUN
    assert [d["name"] for d in complete["inputs"]] == [(tmp_path / "data/manifest/images.parquet").as_posix()]
    assert complete["inputs"][0]["facets"]["version"]["datasetVersion"] == "a" * 32
    table = complete["outputs"][0]
    assert table["namespace"] == "file" and table["name"] == (tmp_path / "data/splits/splits.parquet").as_posix()
    assert table["facets"]["version"]["datasetVersion"] == dvc_hash(tmp_path / "data/splits/splits.parquet")["md5"]
    assert [f["name"] for f in table["facets"]["schema"]["fields"]] == ["split", "label"]
    assert table["facets"]["dataQualityMetrics"]["rowCount"] == 2
    assert table["facets"]["dataQualityMetrics"]["columnMetrics"]["label"]["distinctCount"] == 2
    assert table["outputFacets"]["outputStatistics"]["rowCount"] == 2
    assert table["facets"]["cvpipe_splitPolicy"]["seed"] == 42
    assert table["facets"]["cvpipe_classCounts"]["counts"] == {"train": {"cat": 1}}
    assert Serde.to_dict(start)["outputs"][0].get("facets") in (None, {})  # no versions before the stage ran


@pytest.mark.parametrize(
    ("facet", "name"),
    [
        (ClassCountsDatasetFacet(counts={"train": {"cat": 3}, "test": {"cat": 1}}), "ClassCountsDatasetFacet"),
        (QuarantineDatasetFacet(members=5, ok=4, quarantined=1, perReason={"empty file": 1}), "QuarantineDatasetFacet"),
        (SplitPolicyDatasetFacet(seed=1, perClass={"train": 2}, nearDuplicateThreshold=10), "SplitPolicyDatasetFacet"),
        (NearDuplicatesDatasetFacet(method="phash", threshold=10, pairsCrossSplit=0), "NearDuplicatesDatasetFacet"),
        (StageRunFacet(stage="split", command="split", orchestrator="dvc", gitDirty=False), "StageRunFacet"),
        (Vgg16WeightsDatasetFacet(spec="imagenet", file="notop.h5", sha256="0" * 64), "Vgg16WeightsDatasetFacet"),
    ],
)
def test_custom_facets_follow_their_published_schema(facet: Any, name: str) -> None:
    data = Serde.to_dict(facet)
    assert data["_schemaURL"].endswith(f"cvpipe-facets.json#/$defs/{name}")
    jsonschema.validate(data, {"$ref": f"#/$defs/{name}", "$defs": SCHEMA["$defs"]})


def test_standard_configuration_wins_over_the_default_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert not user_configured()
    assert make_client(tmp_path / "default.jsonl").transport.kind == "file"
    configured = tmp_path / "configured.jsonl"
    config = {"transport": {"type": "file", "log_file_path": str(configured), "append": True}}
    (tmp_path / "openlineage.yml").write_text(yaml.safe_dump(config))
    assert user_configured()
    client = make_client(tmp_path / "default.jsonl")
    run = _run(tmp_path, outputs=[])
    client.emit(build_event(run, event_v2.RunState.START))
    assert json.loads(configured.read_text())["run"]["runId"] == run.run_id
    assert not (tmp_path / "default.jsonl").exists()
    assert user_configured({"OPENLINEAGE_URL": "http://127.0.0.1:1"}, cwd=tmp_path / "home")


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, Any]]]] = []  # each server gets its own subclass and list

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, json.loads(body)))
        self.send_response(201)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def lineage_server() -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """An OpenLineage HTTP endpoint on 127.0.0.1 that records what it receives."""
    received: list[tuple[str, dict[str, Any]]] = []
    handler = type("Handler", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()


def test_a_stage_posts_its_events_to_an_http_endpoint(
    tmp_path: Path, synthetic_archive: tuple[Path, dict], lineage_server: tuple[str, list]
) -> None:
    from cvpipe.stages import ingest

    url, received = lineage_server
    paths = ingest.IngestPaths(archive=synthetic_archive[0], out=tmp_path / "data/manifest")
    ingest.run(Params(ingest=IngestConfig(workers=1)), paths)
    # The split reads the pixels of its near-duplicate candidates from the archive.
    (tmp_path / "data/raw").mkdir(parents=True)
    (tmp_path / "data/raw/images.zip").write_bytes(synthetic_archive[0].read_bytes())
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"split": {"per_class": {"train": 30, "val": 10, "test": 15}}})
    )
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["split"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"split": stage}}))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OPENLINEAGE", "DVC_", "CVPIPE_"))},
        "OPENLINEAGE__TRANSPORT__TYPE": "http",
        "OPENLINEAGE__TRANSPORT__URL": url,
        "OPENLINEAGE__TRANSPORT__ENDPOINT": "api/v1/lineage",
        "OPENLINEAGE_NAMESPACE": "cvpipe-test",
        "NO_PROXY": "127.0.0.1",
    }
    result = subprocess.run([CVPIPE, "split"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert [path for path, _ in received] == ["/api/v1/lineage"] * 2
    start, complete = (event for _, event in received)
    for event in (start, complete):
        assert_spec_fields(event)
        assert event["job"] == {**event["job"], "namespace": "cvpipe-test", "name": "split"}
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    inputs = [(tmp_path / path).as_posix() for path in ("data/raw/images.zip", "data/manifest/images.parquet")]
    assert [d["name"] for d in complete["inputs"]] == inputs
    outputs = {Path(d["name"]).name: d for d in complete["outputs"]}
    assert set(outputs) == {"splits.parquet", "report.json", "thumbnails"}
    version = outputs["splits.parquet"]["facets"]["version"]["datasetVersion"]
    assert version == dvc_hash(tmp_path / "data/splits/splits.parquet")["md5"]
    assert outputs["splits.parquet"]["facets"]["cvpipe_nearDuplicates"]["nearDuplicateGroups"] == 4
    assert outputs["splits.parquet"]["facets"]["cvpipe_splitPolicy"]["nearDuplicateRule"]["measure"] == "ncc"
    record = json.loads((tmp_path / "reports/lineage/split/record.json").read_text())
    assert record["run_id"] == start["run"]["runId"] and record["openlineage"]["transport"] == "http"
    assert not (tmp_path / "reports/lineage/split/events.jsonl").exists()  # the configured transport replaces it


def _manifest_run(root: Path, summary: Any) -> StageRun:
    (root / "data/manifest").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"member": ["a.jpg", "b.jpg"], "label": ["cat", None]}).to_parquet(
        root / "data/manifest/images.parquet"
    )
    run = _run(
        root,
        stage="ingest",
        command="ingest",
        inputs=["data/raw/images.zip"],
        outputs=["data/manifest/images.parquet"],
    )
    run.output_hashes = {path: dvc_hash(root / path) for path in run.outputs}
    run.summary = summary
    return run


def test_ingest_facets_read_the_typed_summary(tmp_path: Path) -> None:
    from cvpipe.stages.ingest import IngestSummary

    summary = IngestSummary(
        members=5,
        ok=4,
        quarantined=1,
        ok_per_class={"cat": 2, "dog": 2},
        quarantined_per_reason={"empty file": 1},
        formats={"JPEG": 4},
        unique_sha256=4,
        width={},
        height={},
    )
    event = Serde.to_dict(build_event(_manifest_run(tmp_path, summary), event_v2.RunState.COMPLETE))
    facets = event["outputs"][0]["facets"]
    assert facets["cvpipe_quarantine"] == {
        **facets["cvpipe_quarantine"],
        "members": 5,
        "ok": 4,
        "quarantined": 1,
        "perReason": {"empty file": 1},
    }
    assert facets["cvpipe_classCounts"]["counts"] == {"cat": 2, "dog": 2}


def test_audit_facets_and_assertions_read_the_typed_summary(tmp_path: Path) -> None:
    from cvpipe.stages.audit import AuditSummary

    (tmp_path / "reports/audit").mkdir(parents=True)
    (tmp_path / "reports/audit/report.json").write_text("{}")
    counts = dict.fromkeys(("images", "images_in_splits", "exact_duplicate_groups", "near_duplicate_pairs"), 3)
    summary = AuditSummary(
        method="imagehash.phash 64-bit, also of the mirrored image",
        hash="phash",
        threshold=10,
        exact_cross_split=0,
        cross_split_pairs=2,
        within_split_pairs=1,
        one_unused_pairs=0,
        unused_pairs=0,
        label_conflict_pairs=0,
        cross_split_pairs_by_splits={"train/test": 2},
        max_cross_split_pairs=1,
        passed=False,
        **counts,
    )
    run = _run(
        tmp_path,
        stage="audit",
        command="audit",
        inputs=["data/splits/splits.parquet"],
        outputs=["reports/audit/report.json"],
    )
    run.output_hashes = {path: dvc_hash(tmp_path / path) for path in run.outputs}
    run.summary = summary
    event = Serde.to_dict(build_event(run, event_v2.RunState.COMPLETE))
    near = event["outputs"][0]["facets"]["cvpipe_nearDuplicates"]
    assert (near["threshold"], near["exactDuplicateGroups"], near["pairsCrossSplit"]) == (10, 3, 2)
    jsonschema.validate(near, {"$ref": "#/$defs/NearDuplicatesDatasetFacet", "$defs": SCHEMA["$defs"]})
    assertions = event["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert [(a["assertion"], a["success"], a["actual"]) for a in assertions] == [
        ("no_exact_duplicates_across_splits", True, "0"),
        ("near_duplicates_across_splits_at_most", False, "2"),
    ]


def test_a_facet_that_cannot_be_built_is_left_out_with_one_warning_naming_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from types import SimpleNamespace

    # A summary without ok_per_class: what a renamed field in the ingest stage would give.
    summary = SimpleNamespace(members=2, ok=1, quarantined=1, quarantined_per_reason={"empty file": 1})
    with caplog.at_level(logging.WARNING, logger="cvpipe.lineage.openlineage"):
        event = Serde.to_dict(build_event(_manifest_run(tmp_path, summary), event_v2.RunState.COMPLETE))
    facets = event["outputs"][0]["facets"]
    assert "cvpipe_quarantine" in facets and "cvpipe_classCounts" not in facets
    assert "schema" in facets  # the other facets of the dataset are still there
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "cvpipe_classCounts" in warnings[0] and "ok_per_class" in warnings[0], warnings
