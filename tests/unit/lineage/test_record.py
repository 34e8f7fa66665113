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
from cvpipe.lineage.query import find_image, link, split_diff
from cvpipe.lineage.record import (
    REDACTED,
    dvc_hash,
    git_info,
    lock_outputs,
    orchestrator,
    param_values,
    redact,
    secret_values,
    stage_spec,
    track_stage,
)

ROOT = Path(__file__).resolve().parents[3]
FAKE_KEY = "kaggle-secret-0123456789abcdef"


def test_dvc_hash_matches_dvc_data_for_files_and_folders(tmp_path: Path) -> None:
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_data.hashfile.hash import hash_file
    from dvc_objects.fs.local import LocalFileSystem

    folder = tmp_path / "cache"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.npy").write_bytes(b"\x93NUMPY" + bytes(range(200)))
    (folder / "sub/b.txt").write_bytes(b"line\r\n")  # DVC 3 hashes bytes as they are (no dos2unix)
    (folder / ".gitignore").write_text("/x\n")
    fs = LocalFileSystem()
    assert dvc_hash(folder / "sub/b.txt")["md5"] == hash_file(str(folder / "sub/b.txt"), fs, "md5")[1].value
    _, meta, tree = build(HashFileDB(fs, str(tmp_path / "odb")), str(folder), fs, "md5", dry_run=True)
    assert dvc_hash(folder) == {"md5": tree.hash_info.value, "size": meta.size, "nfiles": meta.nfiles}
    with pytest.raises(FileNotFoundError):
        dvc_hash(tmp_path / "missing")


def test_stage_spec_resolves_the_real_foreach_stages() -> None:
    spec = stage_spec(ROOT, "train@fine_tuning")
    assert spec is not None
    assert "models/feature_extraction_aug.keras" in spec.deps and "data/cache/images" in spec.deps
    assert spec.outs == ("models/fine_tuning.keras", "reports/train/fine_tuning", "reports/lineage/train@fine_tuning")
    assert {"train.fine_tuning", "features.weights", "train.seed"} <= set(spec.params)
    evaluate = stage_spec(ROOT, "evaluate@feature_extraction")
    assert evaluate is not None and "data/cache/vgg16/test.npy" in evaluate.deps
    assert "reports/metrics/feature_extraction.json" in evaluate.outs  # metrics are outputs too
    assert stage_spec(ROOT, "split") is not None and stage_spec(ROOT, "train@nope") is None
    assert stage_spec(ROOT, "train") is None and stage_spec(ROOT, "no_such_stage") is None


def test_lock_outputs_and_param_values(tmp_path: Path) -> None:
    lock = {"split": {"outs": [{"path": "data/splits/splits.parquet", "md5": "ab", "size": 3}]}}
    assert lock_outputs(lock) == {"data/splits/splits.parquet": {"stage": "split", "md5": "ab", "size": 3}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"split": {"seed": 4}, "train": {"scratch": {"epochs": 2}}}))
    values = param_values(tmp_path / "params.yaml", ["split.seed", "train.scratch", "split.nope", "other.yaml:x"])
    assert values == {"split.seed": 4, "train.scratch": {"epochs": 2}, "split.nope": None}


def test_redact_replaces_credentials_everywhere_but_not_ordinary_short_values() -> None:
    environ = {
        "KAGGLE_KEY": FAKE_KEY,
        "KAGGLE_USERNAME": "someone-x",
        "MY_API_TOKEN": "tok-123456789",
        "TOKEN_COUNT": "1",
        "GIT_AUTHOR_NAME": "cvpipe-tests",
        "KAGGLE_API_TOKEN": "short",
        "PATH": "/usr/bin",
    }
    secrets = secret_values(environ)
    assert set(secrets) == {FAKE_KEY, "someone-x", "tok-123456789"}
    record = {"a": [f"url?key={FAKE_KEY}", {"someone-x": "by someone-x"}], "n": 1, "t": "1 token"}
    assert redact(record, secrets) == {
        "a": [f"url?key={REDACTED}", {REDACTED: f"by {REDACTED}"}],
        "n": 1,
        "t": "1 token",
    }


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
    assert record["openlineage"] == {"transport": "http", "sent": 0, "failed": 2}
    assert run.output_hashes and "not sent" in caplog.text


def test_disabled_openlineage_sends_nothing(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENLINEAGE_DISABLED", "true")
    with _track(project):
        _split_outputs(project)
    record = json.loads((project / "reports/lineage/split/record.json").read_text())
    assert record["openlineage"] == {"transport": "noop", "sent": 0, "failed": 0}
    assert not (project / "reports/lineage/split/events.jsonl").exists()


# -- queries --------------------------------------------------------------------------------------------------


def _table(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"sha256": sha * 8, "member": member, "label": member.split(".")[0], "split": split}
            for sha, member, split in rows
        ]
    )


def test_split_diff_lists_exactly_what_entered_and_left() -> None:
    before = _table([("a", "cat.1", "train"), ("b", "cat.2", "test"), ("c", "dog.1", "val"), ("d", "dog.2", "train")])
    after = _table([("a", "cat.1", "train"), ("b", "cat.2", "train"), ("c", "dog.1", "test"), ("e", "dog.3", "val")])
    diff = split_diff(before, after)
    train, test, val = (diff["splits"][name] for name in ("train", "test", "val"))
    assert [image["member"] for image in train["entered"]] == ["cat.2"] and train["entered"][0]["other_side"] == "test"
    assert [image["member"] for image in train["left"]] == ["dog.2"] and train["left"][0]["other_side"] is None
    assert [image["member"] for image in test["entered"]] == ["dog.1"]
    assert [image["member"] for image in test["left"]] == ["cat.2"]
    assert [image["member"] for image in val["entered"]] == ["dog.3"] and val["left_per_class"] == {"dog": 1}
    assert train["entered_per_class"] == {"cat": 1} and diff["unchanged"] == 1


def test_find_image_by_member_sha256_or_unique_prefix() -> None:
    manifest = pd.DataFrame({"member": ["train/cat.1.jpg", "train/cat.2.jpg"], "sha256": ["ab12" * 16, "ab13" * 16]})
    assert find_image(manifest, "train/cat.2.jpg")["sha256"].iloc[0] == "ab13" * 16
    assert find_image(manifest, "ab12ab12")["member"].iloc[0] == "train/cat.1.jpg"
    with pytest.raises(CvpipeError, match="no archive member or sha256"):
        find_image(manifest, "ab1")  # too short for a prefix: not even tried
    with pytest.raises(CvpipeError, match="matches 2 images"):
        find_image(pd.concat([manifest, manifest.assign(sha256=["ab12" * 15 + "ffff"] * 2)]), "ab12ab12")


def test_link_checks_an_input_against_its_producer(tmp_path: Path) -> None:
    upstream = {
        "outputs": [{"path": "data/splits/splits.parquet", "md5": "aa"}, {"path": "data/cache", "md5": "d1.dir"}]
    }
    assert link(tmp_path, {"path": "data/splits/splits.parquet", "md5": "aa"}, upstream) == "ok"
    assert link(tmp_path, {"path": "data/splits/splits.parquet", "md5": "bb"}, upstream) == "broken"
    assert link(tmp_path, {"path": "data/cache/test.npy", "md5": "cc"}, upstream) == "unknown"  # no DVC cache here
    cache = tmp_path / ".dvc/cache/files/md5/d1"
    cache.mkdir(parents=True)
    (cache / ".dir").write_text(json.dumps([{"md5": "cc", "relpath": "test.npy"}]))
    assert link(tmp_path, {"path": "data/cache/test.npy", "md5": "cc"}, upstream) == "ok"
    assert link(tmp_path, {"path": "data/cache/test.npy", "md5": "cd"}, upstream) == "broken"
    assert link(tmp_path, {"path": "x", "md5": "cc"}, None) == "unknown"


def test_lineage_commands_say_what_to_do_when_there_is_nothing_to_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cvpipe import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert cli.main(["lineage", "model", "models/scratch.keras"]) == 2
    assert "no stage in dvc.lock produced it; run `dvc repro`" in capsys.readouterr().err
    assert cli.main(["lineage", "image", "train/cat.1.jpg"]) == 2
    assert "data/manifest/images.parquet: cannot read it" in capsys.readouterr().err
    assert cli.main(["lineage", "diff", "HEAD~1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data/splits/splits.parquet@HEAD~1: cannot read it") and len(err.splitlines()) == 1


def test_jsonable_writes_a_typed_summary_field_by_field() -> None:
    from dataclasses import dataclass

    import numpy as np

    from cvpipe.lineage.record import jsonable

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
