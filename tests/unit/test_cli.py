from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from cvpipe import cli
from tests.support.codemap import dvc_stages, invocation

CVPIPE = str(Path(sys.executable).parent / "cvpipe")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CVPIPE, *args], cwd=cwd, capture_output=True, text=True, check=False)


def registered_commands() -> dict[str, click.Command]:
    """The app's top-level commands and groups, as typer registers them."""
    return typer.main.get_command(cli.app).commands  # type: ignore[attr-defined]


def test_help_lists_every_stage() -> None:
    result = run("--help")
    assert result.returncode == 0
    registered = registered_commands()
    assert registered
    for name in registered:
        assert name in result.stdout, f"cvpipe --help does not list {name}"
        assert CliRunner().invoke(cli.app, [name, "--help"]).exit_code == 0, f"cvpipe {name} --help fails"
    stages = {invocation(stage["cmd"]).command for stage in dvc_stages().values()}
    assert stages and stages <= set(registered), f"dvc.yaml runs unregistered commands: {stages - set(registered)}"


def test_user_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("split:\n  sede: 3\n")
    result = run("check", cwd=tmp_path)
    assert result.returncode == 2
    expected = "error: params.yaml: split.sede: unknown key (check its spelling against params.yaml's documented keys)"
    assert result.stderr.strip() == expected
    (tmp_path / "params.yaml").write_text("split:\n  seed: 3\n")
    missing = run("ingest", "--archive", str(tmp_path / "none.zip"), "--out", str(tmp_path / "m"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert missing.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "not a readable zip archive" in missing.stderr


def test_usage_error_exits_2() -> None:
    result = run("split", "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr


def test_bugs_exit_1_with_one_line_and_debug_shows_traceback(monkeypatch, capsys, tmp_path: Path) -> None:
    def broken(path: Path) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli.core, "load_params", broken)
    assert cli.main(["check", "--params", str(tmp_path / "p.yaml")]) == 1
    err = capsys.readouterr().err
    assert err.strip() == "internal error: RuntimeError: boom (rerun with --debug for the traceback)"
    with pytest.raises(RuntimeError):
        cli.main(["--debug", "check"])


def test_check_prints_effective_params(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("image:\n  size: 64\n")
    result = run("check", cwd=tmp_path)
    assert result.returncode == 0
    assert "size: 64" in result.stdout and "competition: dogs-vs-cats" in result.stdout
