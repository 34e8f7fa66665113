"""The Kaggle source, with the real ``kaggle`` client talking to a fake Kaggle on 127.0.0.1.

HOME and KAGGLE_CONFIG_DIR are per test, KAGGLE_API_TOKEN is unset, and nothing really sleeps: the source's
waits go to an injected ``sleep``, the client's own waits to a clock patched into its module.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cvpipe.errors import SourceError
from cvpipe.sources.kaggle import ENDPOINT_ENV, fetch_kaggle
from tests.support.fake_kaggle import DROP, FakeKaggle, Reply, competition_archive, free_port, zip_bytes

COMPETITION = "dogs-vs-cats"
MIB = 1 << 20
REPO = Path(__file__).resolve().parents[3]
_ISOLATED_UNSET = (
    "KAGGLE_API_TOKEN",
    "KAGGLE_USERNAME",
    "KAGGLE_KEY",
    "KAGGLE_API_ENVIRONMENT",
    "KAGGLE_KERNEL_RUN_TYPE",
    "KAGGLE_API_V1_TOKEN",
    "XDG_CONFIG_HOME",
    "VERBOSE",
    "VERBOSE_OUTPUT",
    ENDPOINT_ENV,
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


class ClientClock:
    """Stands in for the ``time`` module inside the client: records its sleeps instead of waiting."""

    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def _isolate(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    for name in _ISOLATED_UNSET:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def client_module(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The client's module, imported once in an isolated, credential-less environment (it prints help then)."""
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()):
        _isolate(patch, tmp_path_factory.mktemp("import-home"))
        return importlib.import_module("kaggle.api.kaggle_api_extended")


@pytest.fixture(scope="module")
def archives() -> tuple[bytes, bytes]:
    """The outer competition zip (a bit over 3 MiB, so a cut body can resume mid-way) and its train.zip."""
    return competition_archive(per_class=3, padding=3 * MIB)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, client_module: Any) -> Iterator[ClientClock]:
    """An isolated HOME and config folder, no token, no proxy; yields the clock the client sleeps on."""
    home = tmp_path / "home"
    (home / ".kaggle").mkdir(parents=True)
    _isolate(monkeypatch, home)
    clock = ClientClock()
    monkeypatch.setattr(client_module, "time", clock)
    yield clock


@pytest.fixture
def server(archives: tuple[bytes, bytes], env: ClientClock, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKaggle]:
    """The fake Kaggle, used through CVPIPE_KAGGLE_ENDPOINT, with a private kaggle.json accepted by it."""
    with FakeKaggle(archives[0], competition=COMPETITION) as fake:
        monkeypatch.setenv(ENDPOINT_ENV, fake.endpoint)
        write_key_file(Path(os.environ["KAGGLE_CONFIG_DIR"]), fake.username, fake.key)
        yield fake


def write_key_file(config_dir: Path, username: str, key: str, mode: int = 0o600) -> Path:
    path = config_dir / "kaggle.json"
    path.write_text(json.dumps({"username": username, "key": key}), encoding="utf-8")
    path.chmod(mode)
    return path


class Run:
    """Calls ``fetch_kaggle`` with the test's paths and records the source's own sleeps."""

    def __init__(self, root: Path) -> None:
        self.archive = root / "data" / "raw" / "images.zip"
        self.staging = root / "data" / "staging"
        self.sleeps: list[float] = []

    @property
    def download(self) -> Path:
        return self.staging / f"{COMPETITION}.zip"

    def __call__(self, competition: str = COMPETITION, member: str = "train.zip", retries: int = 3) -> dict[str, Any]:
        return fetch_kaggle(
            competition,
            member,
            self.archive,
            self.staging,
            retries=retries,
            backoff_seconds=1.0,
            sleep=self.sleeps.append,
        )


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(tmp_path)


def one_line(exc: pytest.ExceptionInfo[SourceError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# -- success --------------------------------------------------------------------------------------------------


def test_download_copies_member_and_records_provenance(
    server: FakeKaggle, run: Run, archives: tuple[bytes, bytes], capsys: pytest.CaptureFixture[str], caplog: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    outer, train = archives

    provenance = run()

    assert run.archive.read_bytes() == train
    assert run.download.read_bytes() == outer  # kept in staging for the next run
    assert not list(run.staging.glob("*.kaggle-partial"))
    assert provenance == {
        "competition": COMPETITION,
        "download": {
            "file": f"{COMPETITION}.zip",
            "bytes": len(outer),
            "sha256": hashlib.sha256(outer).hexdigest(),
            "last_modified": "Wed, 21 Oct 2015 07:28:00 GMT",
            "api_host": f"127.0.0.1:{server.port}",
        },
        "member": "train.zip",
    }
    recorded = json.dumps(provenance) + caplog.text
    assert server.key not in recorded and server.username not in recorded
    assert server.count("download") == 1 and server.count("file") == 1
    assert server.received[0].headers["Authorization"].startswith("Basic ")
    assert run.sleeps == []
    assert capsys.readouterr().out == ""


def test_endpoint_override_is_undone_after_the_download(server: FakeKaggle, run: Run) -> None:
    from kagglesdk import kaggle_env

    run()

    assert kaggle_env._env_to_endpoint[kaggle_env.KaggleEnv.PROD] == "https://api.kaggle.com"


def test_rerun_skips_the_body(
    server: FakeKaggle, run: Run, client_module: Any, monkeypatch: pytest.MonkeyPatch, archives: tuple[bytes, bytes]
) -> None:
    run()
    before = run.download.stat()
    bodies: list[str] = []
    real_download_file = client_module.KaggleApi.download_file

    def counting_download_file(self: Any, response: Any, outfile: str, *args: Any, **kwargs: Any) -> Any:
        bodies.append(outfile)
        return real_download_file(self, response, outfile, *args, **kwargs)

    monkeypatch.setattr(client_module.KaggleApi, "download_file", counting_download_file)
    run.archive.unlink()

    provenance = run()

    assert bodies == []  # the client compared size and date and did not fetch the body again
    after = run.download.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert run.archive.read_bytes() == archives[1]
    assert provenance["download"]["sha256"] == hashlib.sha256(archives[0]).hexdigest()
    assert server.count("download") == 2 and server.ranges() == []


def test_credentials_from_environment(server: FakeKaggle, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    (Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json").unlink()
    monkeypatch.setenv("KAGGLE_USERNAME", server.username)
    monkeypatch.setenv("KAGGLE_KEY", server.key)

    run()

    download = next(r for r in server.received if r.route == "download")
    assert download.headers["Authorization"] == "Basic " + base64.b64encode(f"alice:{server.key}".encode()).decode()
    assert run.archive.is_file()


def test_access_token(server: FakeKaggle, run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    (Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json").unlink()
    server.token = "KGAT_test_token"
    monkeypatch.setenv("KAGGLE_API_TOKEN", server.token)

    run()

    assert server.count("introspect") >= 1
    download = next(r for r in server.received if r.route == "download")
    assert download.headers["Authorization"] == f"Bearer {server.token}"


def test_last_modified_does_not_depend_on_local_timezone(server: FakeKaggle, run: Run) -> None:
    if not hasattr(time, "tzset") or not Path("/usr/share/zoneinfo/Asia/Kolkata").exists():
        pytest.skip("needs time.tzset and the tz database")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TZ", "Asia/Kolkata")  # UTC+05:30, no DST
        time.tzset()
        try:
            provenance = run()
        finally:
            patch.undo()
            time.tzset()

    assert provenance["download"]["last_modified"] == server.last_modified


def test_member_found_by_base_name(env: ClientClock, run: Run, archives: tuple[bytes, bytes]) -> None:
    train = archives[1]
    nested = zip_bytes([("dogs-vs-cats/sampleSubmission.csv", b"id,label\n"), ("dogs-vs-cats/train.zip", train)])
    with FakeKaggle(nested, competition=COMPETITION) as fake, pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENDPOINT_ENV, fake.endpoint)
        write_key_file(Path(os.environ["KAGGLE_CONFIG_DIR"]), fake.username, fake.key)
        provenance = run()

    assert provenance["member"] == "dogs-vs-cats/train.zip"
    assert run.archive.read_bytes() == train


# -- credentials ----------------------------------------------------------------------------------------------


def test_missing_credentials_name_the_three_ways(
    env: ClientClock, run: Run, archives: tuple[bytes, bytes], client_module: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(self: Any) -> None:
        raise AssertionError("the client was reached without credentials (it would print help and exit)")

    monkeypatch.setattr(client_module.KaggleApi, "authenticate", must_not_run)
    with FakeKaggle(archives[0]) as fake, pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENDPOINT_ENV, fake.endpoint)
        with pytest.raises(SourceError) as exc:
            run()
        received = len(fake.received)

    message = one_line(exc)
    assert message.startswith("no Kaggle credentials found")
    for needle in ("KAGGLE_USERNAME", "KAGGLE_KEY", "~/.kaggle/kaggle.json", "KAGGLE_CONFIG_DIR", "KAGGLE_API_TOKEN"):
        assert needle in message
    assert received == 0
    assert not run.archive.exists()


def test_rejected_token_is_a_source_error_not_an_exit(
    server: FakeKaggle, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    (Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json").unlink()
    server.token = "the-right-token"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "an-expired-token")

    with pytest.raises(SourceError) as exc:
        run()

    message = one_line(exc)
    assert "KAGGLE_API_TOKEN" in message and "an-expired-token" not in message
    assert server.count("download") == 0


def test_key_file_readable_by_others_is_warned(server: FakeKaggle, run: Run, caplog: Any) -> None:
    write_key_file(Path(os.environ["KAGGLE_CONFIG_DIR"]), server.username, server.key, mode=0o644)
    caplog.set_level(logging.WARNING, logger="cvpipe.sources.kaggle")

    run()

    warnings = [
        r.getMessage() for r in caplog.records if r.name == "cvpipe.sources.kaggle" and r.levelname == "WARNING"
    ]
    assert any("chmod 600" in message for message in warnings)


def test_wrong_key_is_401(server: FakeKaggle, run: Run) -> None:
    write_key_file(Path(os.environ["KAGGLE_CONFIG_DIR"]), server.username, "not-the-key")

    with pytest.raises(SourceError) as exc:
        run()

    message = one_line(exc)
    assert "Kaggle rejected the credentials (401)" in message and "KAGGLE_USERNAME/KAGGLE_KEY" in message
    assert "not-the-key" not in message
    assert server.count("download") == 1 and run.sleeps == []


# -- refusals and retries -------------------------------------------------------------------------------------


def test_rules_not_accepted_is_403_with_rules_url(server: FakeKaggle, run: Run) -> None:
    server.script("download", Reply(403, "You must accept this competition's rules before you'll be able to download"))

    with pytest.raises(SourceError) as exc:
        run()

    message = one_line(exc)
    assert "https://www.kaggle.com/competitions/dogs-vs-cats/rules" in message
    assert "403" in message
    assert server.count("download") == 1 and run.sleeps == []


def test_unknown_competition_is_404(server: FakeKaggle, run: Run) -> None:
    with pytest.raises(SourceError) as exc:
        run(competition="dogs-vs-kats")

    message = one_line(exc)
    assert "dogs-vs-kats" in message and "404" in message and "data.competition" in message
    assert server.count("download") == 1 and run.sleeps == []


@pytest.mark.parametrize(("retry_after", "expected_wait"), [("7", 7.0), (None, 1.0)])
def test_rate_limit_is_retried(
    server: FakeKaggle, run: Run, archives: tuple[bytes, bytes], retry_after: str | None, expected_wait: float
) -> None:
    server.script("download", Reply(429, "Too many requests", retry_after=retry_after))

    run()

    assert run.sleeps == [expected_wait]  # Retry-After when given, else the first backoff
    assert server.count("download") == 2
    assert run.archive.read_bytes() == archives[1]


def test_server_errors_beyond_retries_give_a_clear_error(server: FakeKaggle, run: Run) -> None:
    server.script("download", *[Reply(500)] * 4)

    with pytest.raises(SourceError) as exc:
        run(retries=3)

    message = one_line(exc)
    assert "after 4 attempts" in message and "HTTP 500" in message and "rerun" in message
    assert run.sleeps == [1.0, 2.0, 4.0]
    assert server.count("download") == 4
    assert not run.archive.exists()


def test_file_host_error_after_redirect_is_retried(server: FakeKaggle, run: Run, archives: tuple[bytes, bytes]) -> None:
    server.script("file", Reply(503))

    run()

    assert run.sleeps == [1.0]
    assert server.count("download") == 2 and server.count("file") == 2
    assert run.archive.read_bytes() == archives[1]


def test_dropped_connection_is_retried(server: FakeKaggle, run: Run, archives: tuple[bytes, bytes]) -> None:
    server.script("download", DROP)

    run()

    assert run.sleeps == [1.0]
    assert run.archive.read_bytes() == archives[1]


def test_connection_refused_gives_a_clear_error_after_retries(
    env: ClientClock, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_key_file(Path(os.environ["KAGGLE_CONFIG_DIR"]), "alice", "a-key")
    monkeypatch.setenv(ENDPOINT_ENV, f"http://127.0.0.1:{free_port()}")

    with pytest.raises(SourceError) as exc:
        run(retries=2)

    message = one_line(exc)
    assert "after 3 attempts" in message and "Connection refused" in message and "rerun" in message
    assert run.sleeps == [1.0, 2.0]


def test_body_cut_midway_is_resumed_by_the_client(
    server: FakeKaggle, run: Run, env: ClientClock, archives: tuple[bytes, bytes]
) -> None:
    server.cut_body(after=MIB + MIB // 2)

    run()

    assert server.ranges() == [f"bytes={MIB}-"]  # the client keeps whole 1 MiB chunks and asks for the rest
    assert len(env.sleeps) == 1 and run.sleeps == []
    assert run.download.read_bytes() == archives[0]
    assert run.archive.read_bytes() == archives[1]


def test_body_cut_beyond_client_retries_is_resumed_by_the_next_attempt(
    server: FakeKaggle, run: Run, env: ClientClock, archives: tuple[bytes, bytes]
) -> None:
    # The first body and the client's 5 ranged retries are cut; so is the body the next attempt opens and
    # abandons in favour of resuming the partial file.
    server.cut_body(after=MIB + MIB // 2, times=7)

    run()

    assert len(env.sleeps) == 5 and run.sleeps == [1.0]
    assert server.count("download") == 2
    resumed_from = int(server.ranges()[-1].removeprefix("bytes=").rstrip("-"))
    assert resumed_from > 0 and resumed_from % MIB == 0
    assert run.download.read_bytes() == archives[0]
    assert run.archive.read_bytes() == archives[1]


# -- the downloaded archive -----------------------------------------------------------------------------------


def test_missing_member_lists_the_archive(server: FakeKaggle, run: Run) -> None:
    with pytest.raises(SourceError) as exc:
        run(member="train.tar")

    message = one_line(exc)
    for name in ("train.tar", "train.zip", "test1.zip", "sampleSubmission.csv"):
        assert name in message
    assert not run.archive.exists()


def test_broken_download_says_delete_and_rerun(env: ClientClock, run: Run) -> None:
    with FakeKaggle(b"PK\x03\x04 this is not really a zip" * 100) as fake, pytest.MonkeyPatch.context() as patch:
        patch.setenv(ENDPOINT_ENV, fake.endpoint)
        write_key_file(Path(os.environ["KAGGLE_CONFIG_DIR"]), fake.username, fake.key)
        with pytest.raises(SourceError) as exc:
            run()

    message = one_line(exc)
    assert str(run.download) in message and "delete" in message and "rerun" in message
    assert not run.archive.exists()


@pytest.mark.parametrize(
    ("competition", "endpoint"), [("../etc", None), ("dogs vs cats", None), (COMPETITION, "ftp://127.0.0.1/")]
)
def test_bad_settings_are_refused_before_any_request(
    server: FakeKaggle, run: Run, monkeypatch: pytest.MonkeyPatch, competition: str, endpoint: str | None
) -> None:
    if endpoint:
        monkeypatch.setenv(ENDPOINT_ENV, endpoint)

    with pytest.raises(SourceError):
        run(competition=competition)

    assert server.received == []


# -- a fresh process ------------------------------------------------------------------------------------------


def test_fresh_process_keeps_stdout_clean(server: FakeKaggle, tmp_path: Path, archives: tuple[bytes, bytes]) -> None:
    """The client authenticates and prints when first imported; none of it may reach the pipeline's stdout."""
    # A key file others can read makes the client print a warning at import and at authentication.
    write_key_file(Path(os.environ["KAGGLE_CONFIG_DIR"]), server.username, server.key, mode=0o644)
    script = textwrap.dedent(
        f"""
        import logging, sys
        from pathlib import Path
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        from cvpipe.sources.kaggle import fetch_kaggle
        fetch_kaggle({COMPETITION!r}, "train.zip", Path({str(tmp_path / "out.zip")!r}),
                     Path({str(tmp_path / "staging")!r}), retries=0, backoff_seconds=0)
        """
    )
    child_env = {**os.environ, "PYTHONPATH": str(REPO)}

    done = subprocess.run([sys.executable, "-c", script], env=child_env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert "chmod 600" in done.stderr
    assert (tmp_path / "out.zip").read_bytes() == archives[1]


def test_fake_archive_layout(archives: tuple[bytes, bytes]) -> None:
    """The fake serves Kaggle's layout: train.zip of cat.N.jpg/dog.N.jpg, test1.zip, sampleSubmission.csv."""
    outer, train = archives
    with zipfile.ZipFile(io.BytesIO(outer)) as archive:
        assert sorted(archive.namelist()) == ["sampleSubmission.csv", "test1.zip", "train.zip"]
    with zipfile.ZipFile(io.BytesIO(train)) as inner:
        names = sorted(inner.namelist())
    assert names == sorted(f"train/{label}.{i}.jpg" for label in ("cat", "dog") for i in range(3))
