"""Hostile params files (issue 15): what DVC refuses or chokes on, refused by ``cvpipe check`` first, in one line.

Kept apart from ``test_config.py`` (the models' own rules) because these are about reading the file.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cvpipe import cli
from cvpipe.config import load_params, read_overlay
from cvpipe.errors import ConfigError


def _check(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "params.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = cli.main(["check", "--params", str(path)])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("split:\n  seed: -1\n", "split.seed: Input should be greater than or equal to 0"),
        ("train:\n  seed: 1180591620717411303424\n", "train.seed: Input should be less than 4294967296"),
        ("split:\n  seed: 4294967296\n", "split.seed: Input should be less than 4294967296"),
        ("split:\n  per_class: {train: 3, val: 0, test: 1}\n", "split.per_class.val: Input should be greater than 0"),
        (
            "split:\n  per_class: null\n  fractions: {train: 0.9, val: 0.0, test: 0.1}\n",
            "train, val and test must each be greater than 0",
        ),
        ("split:\n  seed: 1\nimage:\n  size: 64\nsplit:\n  seed: 2\n", "duplicate key 'split' at line 5; DVC refuses"),
        ("split:\n  seed: 1\n  seed: 2\n", "duplicate key 'seed' at line 3"),
    ],
)
def test_bad_params_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    """Seeds out of 0 <= seed < 2**32 ended in ``internal error: ValueError`` inside a stage (exit 1)."""
    code, err = _check(tmp_path, text, capsys)
    assert code == 2 and message in err and "\n" not in err, err


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DVC expands aliases (24 GB, OOM-killed after 256 s): cvpipe refuses any alias before building anything."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 12)]
    text = "report:\n  seed: 0\n" + "\n".join(lines) + "\n"
    started = time.monotonic()
    code, err = _check(tmp_path, text, capsys)
    assert time.monotonic() - started < 2
    assert code == 2 and "YAML alias *a0 at line 4" in err and "write the value out" in err, err
    (tmp_path / "overlay.yaml").write_text(text)
    with pytest.raises(ConfigError, match="YAML alias"):
        read_overlay(tmp_path / "overlay.yaml")


def test_a_utf16_params_file_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _check(tmp_path, "split:\n  seed: 1\n".encode("utf-16"), capsys)
    assert code == 2 and "the file is UTF-16" in err and "save it as UTF-8" in err, err
    code, err = _check(tmp_path, b"split:\n  seed: 1 # caf\xe9\n", capsys)
    assert code == 2 and "not UTF-8" in err, err


def test_the_projects_params_file_still_loads() -> None:
    load_params(Path(__file__).resolve().parents[2] / "params.yaml")
