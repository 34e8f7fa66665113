"""Kaggle source: download a competition's data with the official client and take one archive out of it.

The official ``kaggle`` client (2.2.x) downloads ``<competition>.zip`` into a staging folder that is kept between
runs, outside DVC's outputs: the client resumes a partial file (``Range``, guarded by ``If-Range``) and skips the
body when the local copy's size and date match the server's, so a rerun does not fetch 800 MB again. The member
the pipeline needs (``train.zip`` for dogs-vs-cats) is then streamed out of that zip to the stage's output; nothing
is extracted to loose files.

Credentials are the client's own. They are checked to exist before the client is imported (it authenticates at
import and calls ``exit(1)`` when it finds none) and are never logged or recorded:

- ``KAGGLE_USERNAME`` and ``KAGGLE_KEY``, or ``kaggle.json`` (``{"username": ..., "key": ...}``, from
  https://www.kaggle.com/settings/api) in ``$KAGGLE_CONFIG_DIR``, else ``~/.kaggle``, else (on Linux, when
  ``~/.kaggle`` does not exist) ``$XDG_CONFIG_HOME/kaggle`` or ``~/.config/kaggle``;
- an access token: ``KAGGLE_API_TOKEN`` (the token, or a file holding it) or ``~/.kaggle/access_token``;
- OAuth credentials saved by ``kaggle auth login`` (``~/.kaggle/credentials.json``).

Environment variable read here:

``CVPIPE_KAGGLE_ENDPOINT``
    Base URL of the Kaggle API to use instead of ``https://api.kaggle.com``: a mirror, a proxy, or the fake server
    of the tests, e.g. ``http://127.0.0.1:8080``. The client then calls ``<endpoint>/v1/<service>/<method>`` and
    follows the redirect it gets to the file. The client has no setting for this (``KAGGLE_API_ENVIRONMENT`` only
    picks among Kaggle's own hosts, and ``KaggleApi`` ignores it except for ``LOCALHOST``), so the production
    entry of ``kagglesdk.kaggle_env._env_to_endpoint`` is replaced while the download runs, then restored.

Failures: 401, 403 (competition rules not accepted) and 404 stop at once with what to do. 429 (after its
``Retry-After``), 5xx and dropped connections are retried ``retries`` times, ``backoff_seconds * 2**attempt``
apart, each retry resuming the partial file. Inside one attempt the client itself retries a body cut mid-way
5 times, 2 to 32 s apart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import email.utils
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from cvpipe.errors import SourceError
from cvpipe.io import atomic_path, sha256_file

log = logging.getLogger(__name__)

ENDPOINT_ENV = "CVPIPE_KAGGLE_ENDPOINT"
DEFAULT_API_HOST = "api.kaggle.com"
RULES_URL = "https://www.kaggle.com/competitions/{competition}/rules"
_COMPETITION_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_CHUNK = 1 << 20
_MAX_LISTED = 20
# What a dropped or stalled connection looks like, whether the client gave up retrying it or never tried.
_DROPPED = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
)


def fetch_kaggle(
    competition: str,
    member: str,
    archive_path: Path,
    staging_dir: Path,
    *,
    retries: int,
    backoff_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Download a Kaggle competition's files and copy one archive out of them.

    Args:
        competition: the competition's slug, e.g. ``dogs-vs-cats``.
        member: the file to take from the competition's zip: an exact top-level name, else a unique base name.
        archive_path: where the member is written (atomically).
        staging_dir: a folder kept between runs where the client downloads ``<competition>.zip``.
        retries: extra attempts after a rate limit, a server error or a dropped connection.
        backoff_seconds: the first wait between attempts; it doubles at each retry.
        sleep: how to wait (injected by tests).

    Returns:
        Provenance without any secret: ``competition``, ``download`` (``file``, ``bytes``, ``sha256``,
        ``last_modified`` as an HTTP-date, ``api_host``) and ``member`` (its name inside the download).

    Raises:
        SourceError: no credentials, a refusal by Kaggle, a download still failing after the retries, or a
            download that is not a readable zip holding ``member``.
    """
    _check_competition(competition)
    config_dir = kaggle_config_dir()
    _require_credentials(config_dir)
    endpoint = _endpoint_from_env()
    api_host = _host_of(endpoint) if endpoint else DEFAULT_API_HOST
    staging_dir = Path(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    _require_resolvable(api_host)
    log.info("downloading Kaggle competition %s from %s into %s", competition, api_host, staging_dir)
    with _client_output_to_log(), _api_endpoint(endpoint):
        api = _authenticated_api(config_dir)
        _download(
            api,
            competition,
            staging_dir,
            retries=retries,
            backoff_seconds=backoff_seconds,
            sleep=sleep,
            api_host=api_host,
        )
    download = _staged_download(staging_dir, competition)
    found = _copy_member(download, member, Path(archive_path))
    info = download.stat()
    return {
        "competition": competition,
        "download": {
            "file": download.name,
            "bytes": info.st_size,
            "sha256": sha256_file(download),
            "last_modified": _http_date_from_mtime(info.st_mtime),
            "api_host": api_host,
        },
        "member": found,
    }


def _check_competition(competition: str) -> None:
    """Refuse a name that is not a Kaggle slug: the client builds the saved file's path from it."""
    if not _COMPETITION_SLUG.match(competition):
        raise SourceError(
            f"data.competition {competition!r} is not a Kaggle competition slug (letters, digits, '-', '_'), "
            "e.g. dogs-vs-cats"
        )


# -- credentials ----------------------------------------------------------------------------------------------


def kaggle_config_dir() -> Path:
    """The folder the client reads ``kaggle.json`` from, by the same rule as ``kaggle`` 2.2's ``KaggleApi``."""
    explicit = os.environ.get("KAGGLE_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    legacy = Path.home() / ".kaggle"
    if sys.platform.startswith("linux") and not legacy.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "kaggle"
    return legacy


def _require_credentials(config_dir: Path) -> None:
    """Raise unless the client will find some credentials; warn about a kaggle.json others can read."""
    key_file = config_dir / "kaggle.json"
    _warn_if_exposed(key_file)
    source = _credential_source(key_file)
    if source is None:
        raise SourceError(
            "no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY, or save the kaggle.json from "
            f"https://www.kaggle.com/settings/api as ~/.kaggle/kaggle.json or $KAGGLE_CONFIG_DIR/kaggle.json "
            f"(looked for {_looked_for(key_file)}), or set KAGGLE_API_TOKEN"
        )
    log.debug("Kaggle credentials from %s", source)


def _looked_for(key_file: Path) -> str:
    """Where kaggle.json was looked for: the client reads ~/.config/kaggle/ on Linux while ~/.kaggle/ is absent."""
    legacy = Path.home() / ".kaggle" / "kaggle.json"
    return str(key_file) if key_file == legacy else f"{legacy} and {key_file}"


def _require_resolvable(api_host: str) -> None:
    """Fail at once, with one line, when the API's host name does not resolve (offline, or a typo'd endpoint).

    The client would retry a DNS failure for about a minute, and the stage's retries multiply that; a rate
    limit, a 5xx or a dropped connection are still retried. Skipped when a proxy resolves names for us.
    """
    import urllib.request

    host, _, port = api_host.partition(":")
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return
    try:
        socket.getaddrinfo(host, int(port) if port else 443)
    except socket.gaierror as error:
        raise SourceError(
            f"cannot reach Kaggle: the name {host} does not resolve ({error.strerror or error}); check the network "
            f"connection (or {ENDPOINT_ENV}), or use data.source: local with the downloaded archive"
        ) from None
    except (OSError, ValueError):
        return  # not a name problem: the download's own retries handle it


def _credential_source(key_file: Path) -> str | None:
    """Name where the client's credentials will come from (never their value), or None if there are none."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    # The client looks for these under ~/.kaggle whatever KAGGLE_CONFIG_DIR says.
    for name in ("access_token", "access_token.txt", "credentials.json"):
        if (Path.home() / ".kaggle" / name).is_file():
            return f"~/.kaggle/{name}"
    notebook_token = os.environ.get("KAGGLE_API_V1_TOKEN")
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") and notebook_token and Path(notebook_token).is_file():
        return "KAGGLE_API_V1_TOKEN"
    # As the client does: kaggle.json first, each KAGGLE_* variable overriding its key.
    values = _read_key_file(key_file)
    username = os.environ.get("KAGGLE_USERNAME", values.get("username"))
    key = os.environ.get("KAGGLE_KEY", values.get("key"))
    if username and key:
        return "KAGGLE_USERNAME/KAGGLE_KEY" if "KAGGLE_KEY" in os.environ else str(key_file)
    return None


def _read_key_file(path: Path) -> dict[str, Any]:
    """The contents of kaggle.json, or {} when it is missing or unreadable (as the client treats it)."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        log.warning("ignoring %s: it is not readable JSON", path)
        return {}
    return values if isinstance(values, dict) else {}


def _warn_if_exposed(key_file: Path) -> None:
    """Warn when the API key file can be read by other users."""
    try:
        mode = key_file.stat().st_mode
    except OSError:
        return
    if os.name != "nt" and mode & (stat.S_IRGRP | stat.S_IROTH):
        log.warning("%s is readable by other users of this machine; run: chmod 600 %s", key_file, key_file)


# -- the client -----------------------------------------------------------------------------------------------


def _endpoint_from_env() -> str | None:
    """The API base URL from ``CVPIPE_KAGGLE_ENDPOINT``, or None for Kaggle's own."""
    raw = os.environ.get(ENDPOINT_ENV, "").strip()
    if not raw:
        return None
    parts = urlsplit(raw)
    # The value is not echoed: a proxy URL may carry a password.
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SourceError(
            f"{ENDPOINT_ENV} must be an http(s) base URL without query, such as http://127.0.0.1:8080 "
            "or https://mirror.example.org/kaggle"
        )
    return raw.rstrip("/")


def _host_of(url: str) -> str:
    """host[:port] of ``url``, without any user or password."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


@contextlib.contextmanager
def _api_endpoint(endpoint: str | None) -> Iterator[None]:
    """Point clients built inside the block at ``endpoint`` (when given) instead of https://api.kaggle.com."""
    if endpoint is None:
        yield
        return
    try:
        from kagglesdk import kaggle_env
    except ImportError as exc:
        raise SourceError(f"the Kaggle client is not installed ({exc}): pip install 'kaggle>=1.7,<3'") from exc
    table = getattr(kaggle_env, "_env_to_endpoint", None)
    if not isinstance(table, dict) or kaggle_env.KaggleEnv.PROD not in table:
        raise SourceError(f"{ENDPOINT_ENV} is not supported by this version of kagglesdk; unset it")
    previous = table[kaggle_env.KaggleEnv.PROD]
    table[kaggle_env.KaggleEnv.PROD] = endpoint
    try:
        yield
    finally:
        table[kaggle_env.KaggleEnv.PROD] = previous


def _authenticated_api(config_dir: Path) -> Any:
    """Import the client (it authenticates at import, so only now) and authenticate a fresh ``KaggleApi``."""
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi
    except (ImportError, OSError) as exc:
        raise SourceError(f"could not load the Kaggle client ({exc}): pip install 'kaggle>=1.7,<3'") from exc
    api = KaggleApi()
    # The class fixed its config location when first imported; a long-lived process (a Prefect worker, tests)
    # may have changed HOME or KAGGLE_CONFIG_DIR since.
    api.config_dir = str(config_dir)
    api.config = str(config_dir / "kaggle.json")
    # No --local (the endpoint comes from CVPIPE_KAGGLE_ENDPOINT) and no --verbose, which prints request headers,
    # the Authorization header included.
    api.args = []
    try:
        api.authenticate()
    except SystemExit:
        raise SourceError(
            "the Kaggle client accepted none of the credentials found (an access token in KAGGLE_API_TOKEN or "
            "~/.kaggle/access_token may be invalid or expired): set KAGGLE_USERNAME and KAGGLE_KEY, or save "
            "kaggle.json as ~/.kaggle/kaggle.json or $KAGGLE_CONFIG_DIR/kaggle.json, or set a valid KAGGLE_API_TOKEN"
        ) from None
    return api


_CLIENT_PERMISSIONS_WARNING = "Kaggle API key is readable by other users"


class _LogWriter(io.TextIOBase):
    """A text stream that logs each line written to it: the client prints where a library should log."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self._level = level
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._emit(line)
        return len(text)

    def flush(self) -> None:
        self._emit(self._pending)
        self._pending = ""

    def _emit(self, line: str) -> None:
        # The client prints its own kaggle.json permissions warning at import and again at authentication;
        # _warn_if_exposed said it once already.
        if line.strip() and _CLIENT_PERMISSIONS_WARNING not in line:
            log.log(self._level, "kaggle client: %s", line.rstrip())


@contextlib.contextmanager
def _client_output_to_log() -> Iterator[None]:
    """Send what the client prints to the log, keeping the pipeline's stdout and stderr clean."""
    out, err = _LogWriter(logging.INFO), _LogWriter(logging.WARNING)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            yield
    finally:
        out.flush()
        err.flush()


# -- downloading ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """A failed attempt worth retrying."""

    reason: str
    retry_after: float | None = None


def _download(
    api: Any,
    competition: str,
    staging_dir: Path,
    *,
    retries: int,
    backoff_seconds: float,
    sleep: Callable[[float], None],
    api_host: str,
) -> None:
    """Run the client's download until it succeeds, fails for good, or the retries are spent."""
    attempts = max(retries, 0) + 1
    for attempt in range(attempts):
        try:
            api.competition_download_files(competition, path=str(staging_dir), force=False, quiet=True)
            return
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            failure = _classify(exc, competition, api_host)
        except ValueError as exc:
            # The client checks Content-Length and parses Last-Modified, and raises ValueError when they are off.
            raise SourceError(
                f"the Kaggle client rejected the download of '{competition}' ({_one_line(str(exc))}): delete "
                f"{staging_dir / competition}.zip* and rerun the stage"
            ) from exc
        except OSError as exc:
            raise SourceError(f"could not write the Kaggle download into {staging_dir}: {exc}") from exc
        if attempt + 1 < attempts:
            delay = failure.retry_after if failure.retry_after is not None else backoff_seconds * 2**attempt
            log.warning(
                "Kaggle download attempt %d/%d failed (%s); retrying in %.1f s",
                attempt + 1,
                attempts,
                failure.reason,
                delay,
            )
            sleep(delay)
    partial = staging_dir / f"{competition}.zip"
    then = (
        f"rerun the stage to resume the download from the partial file {partial}"
        if partial.is_file()
        else "rerun the stage to try again"
    )
    raise SourceError(
        f"could not download Kaggle competition '{competition}' from {api_host} after {attempts} "
        f"attempt{'s' if attempts > 1 else ''}: {failure.reason}; {then}"
    )


def _classify(exc: Exception, competition: str, api_host: str) -> _Failure:
    """Describe a failure worth retrying; raise SourceError for one that retrying cannot fix."""
    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None:
        return _classify_http(exc, response, competition, api_host)
    if isinstance(exc, _DROPPED):
        return _Failure(f"connection to {api_host} failed: {_network_reason(exc)}")
    raise SourceError(f"the Kaggle download of '{competition}' failed: {type(exc).__name__}: {_one_line(str(exc))}")


def _classify_http(exc: requests.HTTPError, response: requests.Response, competition: str, api_host: str) -> _Failure:
    """Map an HTTP error status to a message the user can act on, or to a retry."""
    status = response.status_code
    detail = _server_message(exc, status)
    # After the API's redirect, the error comes from the file's host (a signed link that may have expired).
    from_api = not response.history
    if status == 401:
        raise SourceError(
            "Kaggle rejected the credentials (401): check KAGGLE_USERNAME/KAGGLE_KEY or kaggle.json "
            "(or KAGGLE_API_TOKEN)"
        )
    if status == 403 and from_api:
        rules = RULES_URL.format(competition=competition)
        raise SourceError(
            f"Kaggle refused the download of '{competition}' (403: {detail}): accept the competition rules at "
            f"{rules} while logged in as the account of your API key, then rerun"
        )
    if status == 404 and from_api:
        raise SourceError(
            f"Kaggle has no competition '{competition}' (404: {detail}): check data.competition in params.yaml"
        )
    if status == 429:
        return _Failure(f"rate limited (429: {detail})", _retry_after_seconds(response))
    if status >= 500 or status == 403:
        source = api_host if from_api else "the file host"
        return _Failure(f"HTTP {status} from {source}" + ("" if detail == f"HTTP {status}" else f" ({detail})"))
    raise SourceError(f"Kaggle answered HTTP {status} ({detail}) to the download of '{competition}'")


def _server_message(exc: Exception, status: int) -> str:
    """The server's error message, or the status line, without the (possibly signed) URL."""
    text = str(exc).split(" for url: ")[0]
    return _one_line(text) or f"HTTP {status}"


def _retry_after_seconds(response: requests.Response) -> float | None:
    """The ``Retry-After`` header as seconds from now (it may be a number or an HTTP-date), or None."""
    value = (response.headers.get("Retry-After") or "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return max(0.0, (moment - dt.datetime.now(dt.UTC)).total_seconds())


def _network_reason(exc: Exception) -> str:
    """A short reason for a network failure: the OS's words when there are some."""
    text = str(exc)
    errno_text = re.search(r"\[Errno -?\d+\] ([^'\"\]\)]+)", text)
    if errno_text:
        return f"{type(exc).__name__}: {errno_text.group(1).strip()}"
    return f"{type(exc).__name__}: {_one_line(text)}"


def _one_line(text: str, limit: int = 200) -> str:
    """``text`` on one line, query strings (signed links) masked, cut to ``limit`` characters."""
    flat = re.sub(r"\s+", " ", re.sub(r"\?[^\s'\")]*", "?...", text)).strip()
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _staged_download(staging_dir: Path, competition: str) -> Path:
    """The zip the client saved (it names it after the competition and the extension of the file's URL)."""
    path = staging_dir / f"{competition}.zip"
    if path.is_file():
        return path
    found = sorted(p.name for p in staging_dir.glob(f"{competition}.*")) or ["nothing"]
    raise SourceError(
        f"the Kaggle client did not save {path.name} in {staging_dir} (found: {', '.join(found)}); "
        "Kaggle may serve this competition's data in another format"
    )


def _http_date_from_mtime(mtime: float) -> str:
    """The HTTP-date the client stored as the file's mtime (it reads Last-Modified as local time)."""
    # kaggle 2.2 sets the mtime with time.mktime() on the GMT wall time, i.e. shifted by the local UTC offset;
    # reading it back as local wall time and labelling it GMT undoes that shift.
    wall = dt.datetime.fromtimestamp(mtime).replace(tzinfo=dt.UTC)
    return email.utils.format_datetime(wall, usegmt=True)


# -- the member -----------------------------------------------------------------------------------------------


def _copy_member(download: Path, member: str, target: Path) -> str:
    """Stream ``member`` out of the downloaded zip into ``target``; return its name inside the zip."""
    try:
        with zipfile.ZipFile(download) as outer:
            info = _find_member(outer, member, download)
            with atomic_path(target) as tmp:
                with outer.open(info) as source, open(tmp, "wb") as sink:
                    shutil.copyfileobj(source, sink, _CHUNK)
                if info.filename.lower().endswith(".zip") and not zipfile.is_zipfile(tmp):
                    raise SourceError(f"{info.filename} in {download} is not a zip archive")
    except NotImplementedError as exc:
        # Kaggle builds some large archives with Deflate64, which Python's zipfile cannot read.
        raise SourceError(
            f"{download} uses a compression Python cannot read ({exc}): extract {member} with unzip or 7z and use "
            "data.source: local with data.path pointing at it"
        ) from exc
    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise SourceError(
            f"{download} is not a complete zip archive ({exc}): delete it and rerun the stage to download it again"
        ) from exc
    log.info("copied %s (%d bytes) from %s to %s", info.filename, info.file_size, download.name, target)
    return info.filename


def _find_member(outer: zipfile.ZipFile, member: str, download: Path) -> zipfile.ZipInfo:
    """The entry named ``member`` exactly, else the only file whose base name is ``member``."""
    try:
        return outer.getinfo(member)
    except KeyError:
        pass
    files = [info for info in outer.infolist() if not info.is_dir()]
    matches = [info for info in files if PurePosixPath(info.filename).name == member]
    if len(matches) == 1:
        return matches[0]
    if matches:
        names = ", ".join(info.filename for info in matches)
        raise SourceError(f"{download.name} holds several files named {member} ({names}): set data.member to one")
    names = [info.filename for info in files]
    listed = ", ".join(names[:_MAX_LISTED]) + (f", ... ({len(names)} files)" if len(names) > _MAX_LISTED else "")
    raise SourceError(f"{download.name} has no {member}; it holds: {listed or 'nothing'} (set data.member)")
