from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cvpipe.config import Params, load_params, parse_params
from cvpipe.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_repository_params_are_valid_and_match_the_seed() -> None:
    params = load_params(ROOT / "params.yaml")
    assert params.data.source == "kaggle" and params.data.competition == "dogs-vs-cats"
    assert params.split.per_class is not None
    assert params.split.per_class.model_dump() == {"train": 1000, "val": 500, "test": 1000}
    assert params.image.size == 180


def test_demo_overlay_is_valid() -> None:
    from cvpipe.config import deep_merge

    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    overlay = yaml.safe_load((ROOT / "params.demo.yaml").read_text())
    assert parse_params(deep_merge(base, overlay)).data.source == "synthetic"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"split": {"sede": 1}}, "split.sede: unknown key"),
        (
            {"split": {"per_class": {"train": -1, "val": 1, "test": 1}}},
            "split.per_class.train: Input should be greater than 0",
        ),
        ({"split": {"per_class": {"train": 0, "val": 1, "test": 1}}}, "split.per_class.train"),
        ({"image": {"size": "big"}}, "image.size: Input should be a valid integer"),
        ({"data": {"source": "ftp"}}, "data.source: Input should be 'kaggle', 'synthetic' or 'local'"),
        ({"data": {"source": "local"}}, "data: source 'local' needs data.path"),
        ({"data": {"classes": ["cat"]}}, "data.classes: List should have at least 2 items"),
        ({"data": {"classes": ["cat", "Cat"]}}, "class names must be unique"),
        (
            {"split": {"per_class": None, "fractions": {"train": 0.5, "val": 0.2, "test": 0.2}}},
            "split.fractions: train + val + test must add up to 1, got 0.9",
        ),
        (
            {"split": {"fractions": {"train": 0.8, "val": 0.1, "test": 0.1}}},
            "set exactly one of per_class and fractions",
        ),
        (
            {"train": {"precision": "bf16"}},
            "train.precision: Input should be 'auto', 'float32', 'mixed_bfloat16' or 'mixed_float16'",
        ),
        ({"nonsense": {}}, "nonsense: unknown key"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_bad_params_give_one_line_naming_the_key(raw: object, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    text = str(caught.value)
    assert message in text
    assert "\n" not in text


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("split:\n  seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_params(bad)
    bad.write_text("")
    assert load_params(bad) == Params()
