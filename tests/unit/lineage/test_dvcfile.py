from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cvpipe.lineage.dvcfile import dvc_hash, lock_outputs, param_values, stage_spec

ROOT = Path(__file__).resolve().parents[3]


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
