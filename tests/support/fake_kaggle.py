"""A fake Kaggle API on 127.0.0.1, for testing the real ``kaggle`` client without the internet.

It answers the calls ``KaggleApi.competition_download_files`` makes (read from the installed ``kaggle`` 2.2.x
and ``kagglesdk`` sources and checked by running them):

- ``POST /v1/competitions.CompetitionApiService/DownloadDataFiles`` with JSON ``{"competitionName": ...}`` and
  ``Authorization: Basic base64(user:key)`` (or ``Bearer <token>``): a 302 to the archive's URL on this server,
  whose path ends in ``.zip`` (the client names the saved file ``<competition>.<extension of the URL>``).
- ``GET /files/<competition>.zip``: the archive with ``Content-Length``, ``Last-Modified`` (RFC 1123, the
  only format the client parses), ``ETag`` and ``Accept-Ranges: bytes``; ``Range: bytes=N-`` gives a 206,
  honouring ``If-Range``.
- ``POST /v1/security.OAuthService/IntrospectToken``: what the client asks when it finds an access token.

Failures are scripted per route (``download``, ``file``, ``introspect``): a queue of :class:`Reply` served
before normal answers resume, and :meth:`FakeKaggle.cut_body` to drop the connection part-way through the
archive's body. Every request received is recorded in :attr:`FakeKaggle.received`.

Use it as a context manager::

    with FakeKaggle(archive_bytes) as server:
        os.environ["CVPIPE_KAGGLE_ENDPOINT"] = server.endpoint
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import email.utils
import hashlib
import io
import json
import re
import socket
import sys
import threading
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DOWNLOAD_PATH = "/v1/competitions.CompetitionApiService/DownloadDataFiles"
INTROSPECT_PATH = "/v1/security.OAuthService/IntrospectToken"
FILES_PREFIX = "/files/"
LAST_MODIFIED = dt.datetime(2015, 10, 21, 7, 28, 0, tzinfo=dt.UTC)
_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    Attributes:
        status: the HTTP status; 0 drops the connection without answering.
        message: the message of the JSON error body ``{"code": status, "message": message}``.
        retry_after: the ``Retry-After`` header, if any.
    """

    status: int
    message: str = ""
    retry_after: str | None = None


DROP = Reply(0)


@dataclass(frozen=True)
class Received:
    """One request the server received."""

    route: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class _Script:
    replies: collections.defaultdict[str, collections.deque[Reply]] = field(
        default_factory=lambda: collections.defaultdict(collections.deque)
    )
    cut_after: int = 0
    cuts_left: int = 0


def http_date(moment: dt.datetime) -> str:
    """Format ``moment`` as an RFC 1123 HTTP-date, e.g. ``Wed, 21 Oct 2015 07:28:00 GMT``."""
    return email.utils.format_datetime(moment.astimezone(dt.UTC), usegmt=True)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet when the client hangs up (it abandons responses whose body it does not need)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeKaggle:
    """A threaded HTTP server on 127.0.0.1 that plays Kaggle's API for one competition.

    Args:
        archive: the bytes served as ``<competition>.zip``.
        competition: the only competition that exists; any other name gets a 404.
        username: the accepted Basic-auth user.
        key: the accepted Basic-auth key.
        token: an accepted access token (Bearer), if any.
        last_modified: the archive's ``Last-Modified``.
    """

    def __init__(
        self,
        archive: bytes,
        *,
        competition: str = "dogs-vs-cats",
        username: str = "alice",
        key: str = "0123456789abcdef-secret",
        token: str | None = None,
        last_modified: dt.datetime = LAST_MODIFIED,
    ) -> None:
        self.archive = archive
        self.competition = competition
        self.username = username
        self.key = key
        self.token = token
        self.last_modified = http_date(last_modified)
        self.etag = '"' + hashlib.sha256(archive).hexdigest()[:32] + '"'
        self.received: list[Received] = []
        self._script = _Script()
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------------------

    def start(self) -> FakeKaggle:
        """Listen on a free port of 127.0.0.1 and serve in a background thread."""
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._httpd = _Server(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-kaggle", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FakeKaggle:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._httpd is not None, "server not started"
        return int(self._httpd.server_address[1])

    @property
    def endpoint(self) -> str:
        """The base URL to give the client (``CVPIPE_KAGGLE_ENDPOINT``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def file_url(self) -> str:
        """Where the archive is served; signed-URL style query, as Kaggle's storage links have."""
        return f"{self.endpoint}{FILES_PREFIX}{self.competition}.zip?X-Goog-Signature=fake"

    # -- scripting --------------------------------------------------------------------------------------------

    def script(self, route: str, *replies: Reply) -> None:
        """Queue ``replies`` for the next requests on ``route`` (``download``, ``file`` or ``introspect``)."""
        with self._lock:
            self._script.replies[route].extend(replies)

    def cut_body(self, after: int, times: int = 1) -> None:
        """Drop the connection part-way through the next ``times`` archive bodies.

        Each of them is cut after ``after`` bytes, or one byte short of its end if it is shorter. The client
        writes whole 1 MiB chunks only, so a cut resumes from the last full MiB received.
        """
        with self._lock:
            self._script.cut_after, self._script.cuts_left = after, times

    def count(self, route: str, method: str | None = None) -> int:
        """How many requests were received on ``route`` (and with ``method``, if given)."""
        with self._lock:
            return sum(1 for r in self.received if r.route == route and (method is None or r.method == method))

    def ranges(self) -> list[str]:
        """The ``Range`` headers of the archive requests, in order (absent ones left out)."""
        with self._lock:
            return [r.headers["Range"] for r in self.received if r.route == "file" and "Range" in r.headers]

    # -- used by the handler ----------------------------------------------------------------------------------

    def _record(self, request: Received) -> None:
        with self._lock:
            self.received.append(request)

    def _next_reply(self, route: str) -> Reply | None:
        with self._lock:
            queue = self._script.replies[route]
            return queue.popleft() if queue else None

    def _take_cut(self) -> int | None:
        with self._lock:
            if self._script.cuts_left <= 0:
                return None
            self._script.cuts_left -= 1
            return self._script.cut_after

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        if scheme == "Bearer":
            return self.token is not None and value == self.token
        if scheme == "Basic":
            expected = base64.b64encode(f"{self.username}:{self.key}".encode()).decode()
            return value == expected
        return False


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the :class:`FakeKaggle` bound as ``fake`` by :meth:`FakeKaggle.start`."""

    fake: FakeKaggle
    protocol_version = "HTTP/1.1"  # keep-alive, as the real service; every answer has a Content-Length

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output quiet."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        path = self.path.split("?")[0]
        route = {DOWNLOAD_PATH: "download", INTROSPECT_PATH: "introspect"}.get(path, "unknown")
        self.fake._record(Received(route, "POST", self.path, dict(self.headers.items()), body))
        if self._scripted(route):
            return
        if route == "introspect":
            self._introspect(body)
        elif route == "download":
            self._download(body)
        else:
            self._json(404, {"code": 404, "message": f"No route {path}"})

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        route = "file" if path == f"{FILES_PREFIX}{self.fake.competition}.zip" else "unknown"
        self.fake._record(Received(route, "GET", self.path, dict(self.headers.items()), b""))
        if self._scripted(route):
            return
        if route == "file":
            self._archive()
        else:
            self._json(404, {"code": 404, "message": f"No route {path}"})

    # -- answers ----------------------------------------------------------------------------------------------

    def _scripted(self, route: str) -> bool:
        reply = self.fake._next_reply(route)
        if reply is None:
            return False
        if reply.status == 0:
            self._drop()
            return True
        headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
        self._json(reply.status, {"code": reply.status, "message": reply.message or f"HTTP {reply.status}"}, headers)
        return True

    def _download(self, body: bytes) -> None:
        if not self.fake._authorized(self.headers.get("Authorization")):
            self._json(401, {"code": 401, "message": "Unauthenticated"})
            return
        try:
            name = json.loads(body or b"{}").get("competitionName")
        except ValueError:
            name = None
        if name != self.fake.competition:
            self._json(404, {"code": 404, "message": f"Competition {name!r} not found"})
            return
        self.send_response(302)
        self.send_header("Location", self.fake.file_url)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _introspect(self, body: bytes) -> None:
        token = json.loads(body or b"{}").get("token")
        if self.fake.token is None or token != self.fake.token:
            self._json(200, {"active": False})
        else:
            self._json(200, {"active": True, "username": self.fake.username})

    def _archive(self) -> None:
        data = self.fake.archive
        start = self._range_start(len(data))
        if start is None:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start or 0 :]
        # Taken before answering: the client may send its next request as soon as it has these headers.
        cut = self.fake._take_cut()
        self.send_response(200 if start is False else 206)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Last-Modified", self.fake.last_modified)
        self.send_header("ETag", self.fake.etag)
        self.send_header("Accept-Ranges", "bytes")
        if start is not False:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if cut is not None:
            # Never the whole body: the client must see the connection drop before the end.
            self.wfile.write(body[: min(cut, len(body) - 1)])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(body)

    def _range_start(self, size: int) -> int | bool | None:
        """Where a ranged body starts; False to send the whole archive (200); None if unsatisfiable (416).

        A ``Range`` whose ``If-Range`` names another version of the archive gets the whole archive, as RFC 9110
        says, so a client never appends bytes of a different object.
        """
        match = _RANGE.match(self.headers.get("Range") or "")
        if_range = self.headers.get("If-Range")
        if match is None or (if_range is not None and if_range not in (self.fake.etag, self.fake.last_modified)):
            return False
        start = int(match.group(1))
        return start if start < size else None

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _drop(self) -> None:
        """Close the connection at once, as a dropped network link would."""
        self.close_connection = True
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# -- test data ------------------------------------------------------------------------------------------------


def tiny_jpeg(seed: int, size: int = 8) -> bytes:
    """A small valid JPEG whose pixels depend on ``seed``."""
    from PIL import Image

    image = Image.new("RGB", (size, size), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def zip_bytes(members: Iterable[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip archive, in memory, holding ``members`` (name, data) in order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members:
            archive.writestr(zipfile.ZipInfo(name, date_time=(2013, 9, 25, 0, 0, 0)), data, compress_type=compression)
    return buffer.getvalue()


def competition_archive(per_class: int = 3, padding: int = 0) -> tuple[bytes, bytes]:
    """Kaggle's ``dogs-vs-cats.zip`` in miniature: ``train.zip``, ``test1.zip`` and ``sampleSubmission.csv``.

    Args:
        per_class: cat and dog images in ``train.zip``.
        padding: bytes of incompressible filler added to ``test1.zip`` (to make the body long enough to cut).

    Returns:
        The outer archive and the inner ``train.zip``, as bytes.
    """
    images = [
        (f"train/{label}.{i}.jpg", tiny_jpeg(2 * i + (label == "dog")))
        for label in ("cat", "dog")
        for i in range(per_class)
    ]
    train = zip_bytes(images, compression=zipfile.ZIP_STORED)
    test_members = [(f"test1/{i + 1}.jpg", tiny_jpeg(100 + i)) for i in range(2)]
    if padding:
        test_members.append(("test1/padding.bin", hashlib.shake_256(b"padding").digest(padding)))
    test = zip_bytes(test_members, compression=zipfile.ZIP_STORED)
    submission = b"id,label\n1,0\n2,0\n"
    outer = zip_bytes([("sampleSubmission.csv", submission), ("test1.zip", test), ("train.zip", train)])
    return outer, train


def free_port() -> int:
    """A port on 127.0.0.1 with nothing listening (bound then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
