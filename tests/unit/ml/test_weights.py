"""VGG16 weights: resolved, fetched as Keras does and checksummed, loaded in both layouts Keras 3 reads, identified.

No test touches the internet: 'imagenet' is resolved against a KERAS_HOME in a temp folder, with downloads off
(tests/conftest.py) or fetched from a loopback HTTP server started here, whose file's MD5 is patched in as the
published one; the weights files loaded here are written by the tests (:mod:`tests.support.vgg16`).
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest

from cvpipe.errors import CvpipeError
from cvpipe.io import md5_file, sha256_file
from cvpipe.ml import weights
from cvpipe.ml.weights import NOTOP_FILE, ORIGIN_ENV, WeightsFetchError, load_conv_base, resolve_weights
from tests.support.vgg16 import SHAPE, other_weights_base, write_legacy_h5


@pytest.fixture(autouse=True)
def _isolated_keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return home


@dataclass
class WeightsServer:
    """A loopback origin serving ``body`` as the notop file; ``plan`` scripts the first answers, then 'ok'."""

    body: bytes
    plan: list[str] = field(default_factory=list)  # 'ok', 'slow', 'cut' (half the body, then closed), '404'
    requests: list[str] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)  # the retry loop's waits, not slept
    base: str = ""


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[WeightsServer]:
    """Serve a small fake weights file on 127.0.0.1 as CVPIPE_WEIGHTS_ORIGIN, its MD5 trusted, retries unslept."""
    state = WeightsServer(body=b"fake VGG16 weights " * 4096)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append(self.path)
            action = state.plan.pop(0) if state.plan else "ok"
            if action == "404" or not self.path.endswith("/" + NOTOP_FILE):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            if action == "slow":  # four pieces a tenth of a second apart: long enough for progress lines
                for piece in range(4):
                    self.wfile.write(state.body[piece * len(state.body) // 4 : (piece + 1) * len(state.body) // 4])
                    self.wfile.flush()
                    time.sleep(0.1)
                return
            if action == "cut":
                self.wfile.write(state.body[: len(state.body) // 2])
                self.close_connection = True
                return
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}/mirror/keras/vgg16"
    monkeypatch.setenv(ORIGIN_ENV, state.base)
    monkeypatch.setitem(weights.KERAS_VGG16_MD5, NOTOP_FILE, md5_bytes(state.body))
    monkeypatch.setattr(weights, "_sleep", state.sleeps.append)
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def md5_bytes(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def cache_listing(home: Path) -> list[str]:
    folder = home / "models"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_imagenet_is_fetched_once_then_served_from_the_cache(
    server: WeightsServer, _isolated_keras_home: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture
) -> None:
    target = _isolated_keras_home / "models" / NOTOP_FILE
    with caplog.at_level(logging.INFO, logger="cvpipe.ml.weights"):
        assert resolve_weights("imagenet") == target
    assert server.requests == [f"/mirror/keras/vgg16/{NOTOP_FILE}"]
    assert target.read_bytes() == server.body
    assert cache_listing(_isolated_keras_home) == [NOTOP_FILE]  # no temporary file left beside it
    assert "attempt 1 of 4" in caplog.text and "matches Keras's published one" in caplog.text
    assert capsys.readouterr().out == ""  # Keras's "Downloading data from" and progress bar were not printed

    assert resolve_weights("imagenet") == target
    assert weights.weights_identity("imagenet")["sha256"] == sha256_file(target)
    assert len(server.requests) == 1  # the second run used the cache


def test_a_long_download_logs_its_progress(
    server: WeightsServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    server.plan = ["slow"]
    monkeypatch.setattr(weights, "PROGRESS_SECONDS", 0.05)
    with caplog.at_level(logging.INFO, logger="cvpipe.ml.weights"):
        assert resolve_weights("imagenet").read_bytes() == server.body
    assert "MB so far" in caplog.text


def test_a_body_with_the_wrong_md5_is_rejected_and_not_kept(
    server: WeightsServer, _isolated_keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(weights.KERAS_VGG16_MD5, NOTOP_FILE, "0" * 32)
    with pytest.raises(WeightsFetchError) as caught:
        resolve_weights("imagenet")
    message = str(caught.value)
    assert f"sent a file with MD5 {md5_bytes(server.body)}, not Keras's published {'0' * 32}" in message
    assert "not kept" in message and ORIGIN_ENV in message and "\n" not in message
    assert cache_listing(_isolated_keras_home) == []
    assert len(server.requests) == 1  # a wrong file is not fetched again


def test_a_cut_connection_is_retried_then_succeeds(server: WeightsServer, _isolated_keras_home: Path) -> None:
    server.plan = ["cut", "cut"]
    assert resolve_weights("imagenet").read_bytes() == server.body
    assert len(server.requests) == 3
    assert server.sleeps == [2.0, 4.0]
    assert cache_listing(_isolated_keras_home) == [NOTOP_FILE]


def test_cut_on_every_attempt_gives_up_with_one_line(server: WeightsServer, _isolated_keras_home: Path) -> None:
    server.plan = ["cut"] * weights.FETCH_ATTEMPTS
    with pytest.raises(WeightsFetchError) as caught:
        resolve_weights("imagenet")
    message = str(caught.value)
    assert "retrieval incomplete" in message and f"{weights.FETCH_ATTEMPTS} attempts" in message
    assert "\n" not in message
    assert len(server.requests) == weights.FETCH_ATTEMPTS
    assert server.sleeps == [2.0, 4.0, 8.0]
    assert cache_listing(_isolated_keras_home) == []


def test_a_404_fails_at_once_with_one_line(server: WeightsServer, _isolated_keras_home: Path) -> None:
    server.plan = ["404"]
    with pytest.raises(WeightsFetchError) as caught:
        resolve_weights("imagenet")
    message = str(caught.value)
    assert "HTTP 404" in message and f"{server.base}/{NOTOP_FILE}" in message
    assert str(_isolated_keras_home / "models" / NOTOP_FILE) in message and ORIGIN_ENV in message
    assert "\n" not in message
    assert len(server.requests) == 1 and server.sleeps == []
    assert cache_listing(_isolated_keras_home) == []


def test_an_unreachable_origin_is_retried_then_one_line(
    server: WeightsServer, _isolated_keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ORIGIN_ENV, "http://127.0.0.1:1/vgg16/")  # nothing listens on port 1: connection refused
    with pytest.raises(WeightsFetchError, match=r"could not fetch .*refused.*4 attempts\): put "):
        resolve_weights("imagenet")
    assert cache_listing(_isolated_keras_home) == []


def test_a_cached_file_with_the_wrong_md5_is_fetched_again(server: WeightsServer, _isolated_keras_home: Path) -> None:
    target = _isolated_keras_home / "models" / NOTOP_FILE
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    assert resolve_weights("imagenet").read_bytes() == server.body
    assert len(server.requests) == 1


def test_a_file_url_mirror_is_copied(
    tmp_path: Path, _isolated_keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / NOTOP_FILE).write_bytes(b"mirrored weights")
    monkeypatch.setitem(weights.KERAS_VGG16_MD5, NOTOP_FILE, md5_bytes(b"mirrored weights"))
    monkeypatch.setenv(ORIGIN_ENV, mirror.as_uri())
    assert resolve_weights("imagenet").read_bytes() == b"mirrored weights"


def test_fetched_legacy_file_loads_into_the_base(
    server: WeightsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = other_weights_base(seed=5)
    write_legacy_h5(tmp_path / "served.h5", source)
    server.body = (tmp_path / "served.h5").read_bytes()
    monkeypatch.setitem(weights.KERAS_VGG16_MD5, NOTOP_FILE, md5_bytes(server.body))
    loaded = load_conv_base("imagenet", SHAPE)
    np.testing.assert_array_equal(loaded.get_weights()[0], source.get_weights()[0])
    assert len(server.requests) == 1


def test_origin_contract() -> None:
    assert weights.weights_origin({}) == weights.KERAS_VGG16_ORIGIN
    assert weights.weights_origin({ORIGIN_ENV: "  "}) == weights.KERAS_VGG16_ORIGIN
    assert weights.weights_origin({ORIGIN_ENV: "OFF"}) is None
    assert weights.weights_origin({ORIGIN_ENV: "https://mirror.example/vgg16"}) == "https://mirror.example/vgg16/"
    with pytest.raises(CvpipeError, match=rf"{ORIGIN_ENV}='ftp://mirror.example/x': expected the base URL") as caught:
        weights.weights_origin({ORIGIN_ENV: "ftp://user:secret@mirror.example/x"})
    assert "secret" not in str(caught.value)


def test_none_is_random_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cvpipe.ml.weights"):
        assert resolve_weights("none") is None
    assert "meaningless" in caplog.text


def test_missing_imagenet_file_names_the_full_path(_isolated_keras_home: Path) -> None:
    expected = _isolated_keras_home / "models" / NOTOP_FILE
    with pytest.raises(CvpipeError) as caught:
        resolve_weights("imagenet")
    message = str(caught.value)
    assert str(expected) in message and "features.weights: none" in message
    assert "\n" not in message
    assert not expected.exists()  # nothing was downloaded


def test_imagenet_file_with_wrong_md5_is_rejected(_isolated_keras_home: Path) -> None:
    target = _isolated_keras_home / "models" / NOTOP_FILE
    target.parent.mkdir(parents=True)
    target.write_bytes(b"not the weights")
    with pytest.raises(CvpipeError, match="MD5"):
        resolve_weights("imagenet")


def test_notop_named_path_with_wrong_md5_is_rejected(tmp_path: Path) -> None:
    target = tmp_path / NOTOP_FILE
    target.write_bytes(b"truncated")
    with pytest.raises(CvpipeError, match=f"does not match Keras's published {NOTOP_FILE}"):
        resolve_weights(str(target))


def test_missing_weights_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CvpipeError, match="no such weights file"):
        resolve_weights(str(tmp_path / "absent.h5"))


# Keras's own save_weights trips NumPy 2's __array__(copy=...) deprecation on the TensorFlow backend.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
def test_keras3_weights_h5_loads(tmp_path: Path) -> None:
    source = other_weights_base(seed=11)
    path = tmp_path / "base.weights.h5"
    source.save_weights(path)
    loaded = load_conv_base(str(path), SHAPE)
    for got, want in zip(loaded.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_imagenet_resolves_the_cached_notop_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, _isolated_keras_home: Path
) -> None:
    # The real file cannot be had offline: stand in a legacy-layout file and trust its MD5 instead.
    source = other_weights_base(seed=3)
    target = _isolated_keras_home / "models" / NOTOP_FILE
    target.parent.mkdir(parents=True)
    write_legacy_h5(target, source)
    monkeypatch.setitem(weights.KERAS_VGG16_MD5, NOTOP_FILE, md5_file(target))

    assert resolve_weights("imagenet") == target
    loaded = load_conv_base("imagenet", SHAPE)
    np.testing.assert_array_equal(loaded.get_weights()[0], source.get_weights()[0])
    assert weights.weights_identity("imagenet") == {
        "spec": "imagenet",
        "file": NOTOP_FILE,
        "sha256": sha256_file(target),
    }


def test_a_file_that_does_not_fit_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "wrong.h5"
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = np.array([b"dense"])
        group = handle.create_group("dense")
        group.attrs["weight_names"] = np.array([b"dense_W:0"])
        group.create_dataset("dense_W:0", data=np.zeros((2, 2), np.float32))
    with pytest.raises(CvpipeError, match="cannot load into the VGG16 conv base"):
        load_conv_base(str(path), SHAPE)


def test_random_weights_are_seeded_and_identified_as_such() -> None:
    first, second = load_conv_base("none", SHAPE), load_conv_base("none", SHAPE)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert weights.weights_identity("none") == {"spec": "none", "file": "random (none)"}
    assert weights.weights_record("none", None) == {
        "spec": "none",
        "file": "random (none)",
        "seed": weights.RANDOM_WEIGHTS_SEED,
    }


def test_unknown_precision_is_one_clear_error() -> None:
    with pytest.raises(CvpipeError, match=r"'float64': expected one of .*float32"):
        weights.check_precision("float64")
