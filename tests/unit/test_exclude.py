"""split.exclude: the label audit's opt-in drops every copy of a listed image, and nothing else."""

from __future__ import annotations

import pandas as pd
import pytest

from cvpipe.config import parse_params
from cvpipe.errors import ConfigError
from cvpipe.exclude import excluding


def test_listed_sha256_leave_with_all_their_copies() -> None:
    manifest = pd.DataFrame({"member": ["a", "b", "c"], "sha256": ["1" * 64, "2" * 64, "1" * 64]})
    assert excluding(manifest, ["1" * 64, "f" * 64])["member"].tolist() == ["b"]
    assert excluding(manifest, []) is manifest


def test_only_sha256_are_accepted() -> None:
    assert parse_params({"split": {"exclude": ["a" * 64]}}).split.exclude == ["a" * 64]
    with pytest.raises(ConfigError, match=r"split\.exclude"):
        parse_params({"split": {"exclude": ["train/cat.1.jpg"]}})
