"""Lineage, audit, OpenLineage and the HTML report after one full tiny `dvc repro` of the real dvc.yaml.

One workspace, run once (as if by a Prefect flow run, with fake Kaggle credentials in the environment), then
queried by every test here; the last test changes the split seed, so it runs last.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from cvpipe.pipeline.commands import dvc, run_tool
from cvpipe.pipeline.workspace import prepare_workspace
from tests.e2e.test_dvc_full_dag import ALL_STAGES, ROOT, TINY_MODELS
from tests.e2e.test_dvc_pipeline import repro, set_param
from tests.unit.lineage.test_openlineage import assert_spec_fields
from tests.unit.report.test_html import check_offline

pytestmark = pytest.mark.slow

FAKE_USER = "fake-kaggle-user-5h2k"
FAKE_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
FLOW_RUN = "7d3c5b1e-2a4f-4e6d-9c8b-1a2b3c4d5e6f"
CHAIN = {"train@fine_tuning", "train@feature_extraction_aug", "decode", "split", "ingest", "download"}


@dataclass
class Pipeline:
    """The workspace after the full run, the commit it ran on, and everything DVC printed."""

    root: Path
    commit: str
    output: str


def git(root: Path, *args: str) -> str:
    return run_tool(["git", *args], root).stdout.strip()


def cvpipe(root: Path, *args: str) -> str:
    return run_tool(["cvpipe", "-q", *args], root).stdout


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    with pytest.MonkeyPatch.context() as env:
        for name in [name for name in os.environ if name.startswith(("OPENLINEAGE", "CVPIPE_", "DVC_"))]:
            env.delenv(name)
        env.setenv("KAGGLE_USERNAME", FAKE_USER)
        env.setenv("KAGGLE_KEY", FAKE_KEY)
        env.setenv("CVPIPE_FLOW_RUN_ID", FLOW_RUN)  # as tasks.dvc_stages passes it to every stage
        env.setenv("CVPIPE_FLOW_RUN_NAME", "tiny-lineage-run")
        env.setenv("DVC_NO_ANALYTICS", "1")
        for name in ("AUTHOR", "COMMITTER"):
            env.setenv(f"GIT_{name}_NAME", "cvpipe-tests")
            env.setenv(f"GIT_{name}_EMAIL", "tests@cvpipe.invalid")
        root = prepare_workspace(ROOT, tmp_path_factory.mktemp("lineage") / "ws", TINY_MODELS)  # one commit
        commit = git(root, "rev-parse", "HEAD")
        result = run_tool(dvc("repro"), root)
        assert set(re.findall(r"Running stage '([^']+)'", result.stdout)) == ALL_STAGES
        git(root, "add", "-A")
        git(root, "commit", "-qm", "tiny experiment: results")
    return Pipeline(root, commit, result.stdout + result.stderr)


def lock(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"]


def plain(value: Any) -> Any:
    """``value`` with numbers written as strings read as numbers (PyYAML reads dvc.lock's ``1e-05`` as text)."""
    if isinstance(value, dict):
        return {key: plain(entry) for key, entry in value.items()}
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def record(root: Path, stage: str) -> dict[str, Any]:
    return json.loads((root / f"reports/lineage/{stage}/record.json").read_text())


def test_every_stage_has_a_record_matching_dvc_lock(pipeline: Pipeline) -> None:
    for stage, entry in lock(pipeline.root).items():
        data = record(pipeline.root, stage)
        assert data["stage"] == stage and data["status"] == "completed" and uuid.UUID(data["run_id"])
        produced = {out["path"]: out["md5"] for out in data["outputs"]}
        expected = {out["path"]: out["md5"] for out in entry["outs"] if not out["path"].startswith("reports/lineage")}
        assert produced == expected, stage  # our hashes are DVC's, folders included
        assert data["git"] == {**data["git"], "commit": pipeline.commit, "dirty": False}
        assert data["orchestrator"]["flow_run_id"] == FLOW_RUN and data["orchestrator"]["kind"] == "prefect"
        assert plain(data["params"]) == plain(entry.get("params", {}).get("params.yaml", {})), stage
        assert data["openlineage"] == {"transport": "file", "sent": 2, "failed": 0}


def test_model_lineage_names_the_actual_split_hashes(pipeline: Pipeline) -> None:
    root, stages = pipeline.root, lock(pipeline.root)
    answer = json.loads(cvpipe(root, "lineage", "model", "models/fine_tuning.keras", "--json"))
    splits_md5 = next(out["md5"] for out in stages["split"]["outs"] if out["path"].endswith("splits.parquet"))
    manifest_md5 = next(out["md5"] for out in stages["ingest"]["outs"] if out["path"].endswith("images.parquet"))
    assert answer["split"]["md5"] == splits_md5 and answer["manifest"]["md5"] == manifest_md5
    split_report = json.loads((root / "data/splits/report.json").read_text())
    assert answer["split"]["counts"] == split_report["counts"]
    source = json.loads((root / "data/raw/SOURCE.json").read_text())
    assert answer["source"]["archive_sha256"] == source["archive"]["sha256"]
    assert answer["source"]["retrieved_at"] == source["retrieved_at"]
    assert answer["conv_base"]["spec"] == "none"  # inherited from feature_extraction_aug
    assert answer["matches_file"] and answer["matches_dvc_lock"] and answer["broken_links"] == []
    assert {step["stage"] for step in answer["chain"]} == CHAIN
    run = answer["run"]
    assert run["orchestrator"]["flow_run_id"] == FLOW_RUN and run["git"]["commit"] == pipeline.commit
    assert run["params"]["train.fine_tuning"]["epochs"] == 1 and "keras" in run["packages"]
    assert run["device"] and run["started_at"] < run["finished_at"]
    features = json.loads(cvpipe(root, "lineage", "model", "models/feature_extraction.keras", "--json"))
    assert features["features"]["spec"] == "none" and "features" in {step["stage"] for step in features["chain"]}
    text = cvpipe(root, "lineage", "model", "models/fine_tuning.keras")
    assert f"splits.parquet md5 {splits_md5[:12]}" in text and FLOW_RUN in text and pipeline.commit in text


def test_audit_finds_every_planted_duplicate_and_none_crosses_splits(pipeline: Pipeline) -> None:
    planted = json.loads((pipeline.root / "data/raw/SOURCE.json").read_text())["planted"]
    report = json.loads((pipeline.root / "reports/audit/report.json").read_text())
    exact = {tuple(sorted(group["members"])) for group in report["exact_duplicates"]}
    assert {tuple(sorted(pair)) for pair in planted["exact_duplicates"]} <= exact
    near = {tuple(sorted((pair["a"], pair["b"]))): pair for pair in report["pairs"]}
    assert planted["near_duplicates"]
    for pair in planted["near_duplicates"]:
        assert tuple(sorted(pair)) in near, pair
    assert all(pair["kind"] != "cross_split" for pair in report["pairs"])
    assert report["summary"]["cross_split_pairs"] == 0 and report["summary"]["passed"]
    shown = json.loads(run_tool(dvc("metrics", "show", "--json"), pipeline.root).stdout)
    metrics = next(iter(shown.values()))["data"]["reports/audit/metrics.json"]["data"]
    assert metrics["cross_split_pairs"] == 0 and metrics["near_duplicate_pairs"] == len(report["pairs"])


def test_an_image_query_returns_its_split_row_and_models(pipeline: Pipeline) -> None:
    root = pipeline.root
    splits = pd.read_parquet(root / "data/splits/splits.parquet")
    train = splits[splits["split"] == "train"].iloc[3]
    answer = json.loads(cvpipe(root, "lineage", "image", train["member"], "--json"))
    assert (answer["split"], answer["row"], answer["sha256"]) == ("train", 3, train["sha256"])
    assert {cache["path"] for cache in answer["caches"]} == {
        "data/cache/images/train.npy",
        "data/cache/vgg16/train.npy",
    }
    assert {model["stage"] for model in answer["models"]} == {f"train@{name}" for name in TINY_MODELS["train"]}
    assert all(model["same_split_version"] and model["chain_intact"] for model in answer["models"])
    test = splits[splits["split"] == "test"].iloc[0]
    answer = json.loads(cvpipe(root, "lineage", "image", test["sha256"][:12], "--json"))
    assert answer["split"] == "test" and answer["row"] == 0
    assert {model["stage"] for model in answer["models"]} == {f"evaluate@{name}" for name in TINY_MODELS["train"]}
    dropped = json.loads((root / "data/splits/report.json").read_text())["exact_duplicates"][0]
    copy = json.loads(cvpipe(root, "lineage", "image", dropped["dropped"][0], "--json"))
    assert copy["kept_member"] == dropped["kept"]
    assert set(copy["exact_copies"]) == {dropped["kept"], *dropped["dropped"]}
    quarantined = json.loads((root / "data/manifest/report.json").read_text())["quarantine"][0]["member"]
    answer = json.loads(cvpipe(root, "lineage", "image", quarantined, "--json"))
    assert answer["status"] == "quarantined" and answer["split"] is None and answer["models"] == []


def test_every_stage_sent_start_then_complete_with_its_datasets(pipeline: Pipeline) -> None:
    root = pipeline.root
    for stage, entry in lock(root).items():
        events = [
            json.loads(line) for line in (root / f"reports/lineage/{stage}/events.jsonl").read_text().splitlines()
        ]
        assert [event["eventType"] for event in events] == ["START", "COMPLETE"], stage
        for event in events:
            assert_spec_fields(event)
            assert event["run"]["runId"] == record(root, stage)["run_id"] and event["job"]["name"] == stage
            assert event["run"]["facets"]["parent"]["run"]["runId"] == FLOW_RUN
        complete = events[1]
        deps = {
            (root / dep["path"]).as_posix(): dep for dep in entry.get("deps", []) if not dep["path"].endswith(".py")
        }
        outs = {(root / out["path"]).as_posix(): out for out in entry["outs"]}
        outs = {name: out for name, out in outs.items() if "/reports/lineage/" not in name}
        assert {dataset["name"] for dataset in complete["inputs"]} == set(deps), stage
        assert {dataset["name"] for dataset in complete["outputs"]} == set(outs), stage
        for dataset in complete["outputs"]:
            assert dataset["facets"]["version"]["datasetVersion"] == outs[dataset["name"]]["md5"]
    ingest = json.loads((root / "reports/lineage/ingest/events.jsonl").read_text().splitlines()[1])
    manifest = next(d for d in ingest["outputs"] if d["name"].endswith("images.parquet"))
    assert {"schema", "dataQualityMetrics", "cvpipe_quarantine", "cvpipe_classCounts"} <= set(manifest["facets"])
    assert manifest["facets"]["cvpipe_quarantine"]["quarantined"] == 3
    split = json.loads((root / "reports/lineage/split/events.jsonl").read_text().splitlines()[1])
    table = next(d for d in split["outputs"] if d["name"].endswith("splits.parquet"))
    assert table["facets"]["cvpipe_splitPolicy"]["seed"] == 42 and "cvpipe_nearDuplicates" in table["facets"]


def _chromium() -> str:
    found = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
    assert found, "no Chromium: install Debian's chromium package (.ci/run does)"
    return found


def test_the_report_shows_the_metrics_files_and_renders_in_chromium(pipeline: Pipeline, tmp_path: Path) -> None:
    html = pipeline.root / "reports/index.html"
    page = check_offline(html.read_text())
    for path in sorted((pipeline.root / "reports/metrics").glob("*.json")):
        metrics = json.loads(path.read_text())
        for key in ("accuracy", "loss", "roc_auc"):
            (cell,) = page.cells(variant=path.stem, metric=key)
            assert json.loads(cell["data-value"]) == metrics[key]
    grid = [attrs for tag, attrs in page.tags if tag == "img" and attrs.get("class") == "grid"]
    assert len(grid) == 1 and grid[0]["src"].startswith("data:image/jpeg;base64,")
    words = " ".join(page.text)
    assert "Leakage audit passed." in words and "train@fine_tuning" in words
    artifacts = Path(os.environ.get("CVPIPE_TEST_ARTIFACTS", tmp_path))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report.png"
    args = [
        _chromium(),
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--hide-scrollbars",
        "--enable-logging=stderr",
        "--v=0",
        "--window-size=1280,6000",
        f"--screenshot={shot}",
        html.as_uri(),
    ]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.stat().st_size > 10_000
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Failed to load resource" in line]
    assert console == []


def test_fake_kaggle_credentials_appear_nowhere(pipeline: Pipeline) -> None:
    outputs = [pipeline.output, cvpipe(pipeline.root, "lineage", "model", "models/scratch.keras", "--json")]
    for text in outputs:
        assert FAKE_KEY not in text and FAKE_USER not in text
    checked = 0
    for path in pipeline.root.rglob("*"):
        if path.is_file() and ".git" not in path.parts:
            data = path.read_bytes()
            assert FAKE_KEY.encode() not in data and FAKE_USER.encode() not in data, path
            checked += 1
    assert checked > 50


def test_nothing_reruns_after_the_run_records_its_lineage(pipeline: Pipeline) -> None:
    ran, skipped = repro(pipeline.root)
    assert ran == set() and skipped == ALL_STAGES


def test_a_diff_between_two_split_seeds_lists_exactly_the_moved_images(pipeline: Pipeline) -> None:
    root = pipeline.root
    before = pd.read_parquet(root / "data/splits/splits.parquet")
    set_param(root, "split", "seed", 7)
    assert repro(root, "split")[0] == {"split"}
    after = pd.read_parquet(root / "data/splits/splits.parquet")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "split seed 7")
    answer = json.loads(cvpipe(root, "lineage", "diff", "HEAD~1", "HEAD", "--json"))
    assert (answer["rev1"], answer["rev2"]) == ("HEAD~1", "HEAD")
    moved = 0
    for split, change in answer["splits"].items():
        was = set(before.loc[before["split"] == split, "sha256"])
        now = set(after.loc[after["split"] == split, "sha256"])
        assert {image["sha256"] for image in change["entered"]} == now - was, split
        assert {image["sha256"] for image in change["left"]} == was - now, split
        assert sum(change["entered_per_class"].values()) == len(now - was)
        moved += len(now - was)
    assert moved > 0
    assert answer == {**json.loads(cvpipe(root, "lineage", "diff", "HEAD~1", "--json")), "rev2": "HEAD"}
    assert "entered" in cvpipe(root, "lineage", "diff", "HEAD~1", "HEAD", "--limit", "2")
