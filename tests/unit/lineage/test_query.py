from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cvpipe.errors import CvpipeError
from cvpipe.lineage.query import find_image, link, split_diff


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
