"""A run's params file is validated, then merged into ``params.yaml`` keeping its comments."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cvpipe.errors import ConfigError
from cvpipe.pipeline.params import apply_params_file, changed_keys

ROOT = Path(__file__).resolve().parents[3]


def test_changed_keys_lists_dotted_keys() -> None:
    before = {"split": {"seed": 1, "per_class": {"train": 2}}, "image": {"size": 32}}
    after = {"split": {"seed": 7, "per_class": {"train": 2}}, "image": {"size": 64}}
    assert changed_keys(before, after) == ["split.seed", "image.size"]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


def test_params_yaml_itself_is_validated_and_left_alone(project: Path) -> None:
    before = (project / "params.yaml").read_text()
    assert apply_params_file(project, "params.yaml") == []
    assert (project / "params.yaml").read_text() == before
    (project / "params.yaml").write_text("split:\n  sede: 7\n")
    with pytest.raises(ConfigError, match=r"split\.sede"):
        apply_params_file(project, "params.yaml")


def test_params_file_is_merged_into_params_yaml_keeping_comments(project: Path) -> None:
    comments = [line.split("#", 1)[1] for line in (project / "params.yaml").read_text().splitlines() if "#" in line]
    assert comments
    (project / "nightly.yaml").write_text("split:\n  seed: 7\nimage:\n  size: 64\n")
    assert apply_params_file(project, "nightly.yaml") == ["split.seed", "image.size"]
    text = (project / "params.yaml").read_text()
    assert all(comment in text for comment in comments)
    params = yaml.safe_load(text)
    assert params["split"]["seed"] == 7 and params["image"]["size"] == 64
    assert params["split"]["per_class"] == {"train": 1000, "val": 500, "test": 1000}
    assert apply_params_file(project, "nightly.yaml") == []


def test_invalid_params_file_writes_nothing(project: Path) -> None:
    before = (project / "params.yaml").read_text()
    (project / "bad.yaml").write_text("split:\n  sede: 7\n")
    with pytest.raises(ConfigError, match=r"split\.sede"):
        apply_params_file(project, "bad.yaml")
    with pytest.raises(ConfigError, match="no such overlay"):
        apply_params_file(project, "missing.yaml")
    assert (project / "params.yaml").read_text() == before
