"""VGG16 weights: resolve ``features.weights``, fetch the ImageNet file as Keras does, check it, build the base.

``imagenet`` means the notop file Keras caches in ``$KERAS_HOME/models`` (default ``~/.keras/models``). When it is
not there it is fetched the way ``keras.applications.VGG16(weights="imagenet")`` fetches it: with
``keras.utils.get_file`` and Keras's published MD5, into that same folder, so a file either of them fetched serves
the other. Unlike a bare ``get_file``, the download goes to a temporary name in that folder and is renamed only
once its MD5 matches (a cut or wrong download never sits in the cache under the real name), a cut connection,
a timeout or an HTTP 5xx/408/429 is retried a bounded number of times, while an HTTP 4xx, a wrong MD5 or a
local error is not, and progress is logged, never printed. A failure is one line (:class:`WeightsFetchError`)
that says what failed and how to place the file by hand.

The origin is ``CVPIPE_WEIGHTS_ORIGIN`` (:data:`ORIGIN_ENV`):

- unset or empty: Keras's own, :data:`KERAS_VGG16_ORIGIN`;
- a base URL (``http://``, ``https://`` or ``file://``; a mirror for air-gapped sites): the file is fetched from
  that URL joined with the file name, e.g. ``https://mirror.example/keras/vgg16/`` +
  ``vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5``. The mirror must serve Keras's file byte for byte:
  the same published MD5 is checked;
- ``off``: never download (the file must already be in the cache; the tests run this way).

``none`` means seeded random weights (an offline demo whose features are meaningless for accuracy); anything else
is a weights file path, never downloaded. The identity of the weights used (spec, file, sha256) goes into the
features cache's metadata and the lineage of every model built on them.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

import keras
import numpy as np

from cvpipe.config import FeaturesConfig
from cvpipe.errors import CvpipeError
from cvpipe.io import md5_file, sha256_file
from cvpipe.ml.device import dtype_policy, resolve_precision
from cvpipe.ml.models import vgg16_conv_base

logger = logging.getLogger(__name__)

NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
FULL_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
# The MD5s Keras itself checks (keras.applications.vgg16) before it trusts a cached download.
KERAS_VGG16_MD5: dict[str, str] = {
    NOTOP_FILE: "6d6bbae143d832006294945121d1f1fc",
    FULL_FILE: "64373286793e3c8b2b4e3219cbf3544b",
}
# Where keras.applications.vgg16 fetches its files from (WEIGHTS_PATH_NO_TOP's folder).
KERAS_VGG16_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
ORIGIN_ENV = "CVPIPE_WEIGHTS_ORIGIN"
DOWNLOADS_OFF = "off"
# Bounded retries of a transient failure: 4 attempts, 2 + 4 + 8 s apart (a nightly run must not hang or give
# up on one dropped connection).
FETCH_ATTEMPTS = 4
RETRY_BASE_SECONDS = 2.0
# urlretrieve sets no timeout: without one a stalled connection hangs the stage for ever.
SOCKET_TIMEOUT_SECONDS = 60.0
PROGRESS_SECONDS = 10.0
_RETRIED_HTTP = frozenset({408, 425, 429})
# The one place the retry loop waits: tests patch it to a no-op.
_sleep: Callable[[float], None] = time.sleep


class WeightsFetchError(CvpipeError):
    """The VGG16 ImageNet weights are not in the Keras cache and could not be fetched."""


# Seed of the 'none' (random) weights: fixed so that the offline demo's features are reproducible.
RANDOM_WEIGHTS_SEED = 0
RANDOM_WEIGHTS_FILE = "random (none)"
# The compute dtype policies params.yaml accepts (features.precision), in one place: the config's type.
PRECISIONS: tuple[str, ...] = get_args(FeaturesConfig.model_fields["precision"].annotation)


def keras_cache_dir() -> Path:
    """Return the folder where Keras caches downloaded model weights.

    Mirrors Keras (``$KERAS_HOME/models``, else ``~/.keras/models``) but reads ``KERAS_HOME`` at call time,
    whereas Keras reads it once at import.
    """
    home = os.environ.get("KERAS_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".keras"
    return base / "models"


def _check_published_md5(path: Path) -> None:
    """Reject a file named like one of Keras's published VGG16 files whose content is not that file."""
    expected = KERAS_VGG16_MD5.get(path.name)
    if expected is None:
        return
    actual = md5_file(path)
    if actual != expected:
        raise CvpipeError(
            f"{path}: MD5 {actual} does not match Keras's published {path.name} (MD5 {expected}); "
            "the file is truncated or not the original: replace it with the original file"
        )


def resolve_weights(spec: str) -> Path | None:
    """Turn ``features.weights`` into a local weights file, fetching the ImageNet one if it is not cached.

    Args:
        spec: ``imagenet`` (the notop file in the Keras cache, fetched there if missing: see the module
            docstring), ``none`` (random weights) or a file path (never downloaded).

    Returns:
        The weights file to load, or ``None`` for random weights.

    Raises:
        WeightsFetchError: the ImageNet file is not cached and could not be fetched.
        CvpipeError: the file is missing, or is named like a Keras VGG16 file but its MD5 differs.
    """
    keyword = spec.strip().lower()
    if keyword == "none":
        logger.warning(
            "features.weights is 'none': the VGG16 base has random weights, so its features are meaningless "
            "for accuracy (offline demo only)"
        )
        return None
    if keyword == "imagenet":
        path = imagenet_weights_path()
    else:
        path = Path(spec.strip()).expanduser()
        if not path.is_file():
            raise CvpipeError(f"features.weights: no such weights file {path} (use 'imagenet', 'none' or a path)")
    _check_published_md5(path)
    return path


def weights_origin(environ: Mapping[str, str] | None = None) -> str | None:
    """The base URL the ImageNet weights are fetched from (ending in ``/``), or ``None`` when downloads are off.

    Args:
        environ: the environment to read :data:`ORIGIN_ENV` from (default ``os.environ``).

    Raises:
        CvpipeError: the variable is neither empty, ``off`` nor an http(s):// or file:// URL.
    """
    value = (os.environ if environ is None else environ).get(ORIGIN_ENV, "").strip()
    if not value:
        return KERAS_VGG16_ORIGIN
    if value.lower() == DOWNLOADS_OFF:
        return None
    if urllib.parse.urlsplit(value).scheme.lower() not in ("http", "https", "file"):
        raise CvpipeError(
            f"{ORIGIN_ENV}={_shown(value)!r}: expected the base URL of a mirror of {KERAS_VGG16_ORIGIN} "
            f"(http://, https:// or file://), or '{DOWNLOADS_OFF}' to never download"
        )
    return value if value.endswith("/") else value + "/"


def imagenet_weights_path() -> Path:
    """The notop file in the Keras cache; fetched there first when missing, or when its MD5 is not Keras's.

    A cached file with the wrong MD5 is fetched again as Keras does (and replaced only by a verified one);
    with downloads off it is returned as it is, for :func:`resolve_weights` to reject.

    Raises:
        WeightsFetchError: the file is not cached and could not be fetched (or downloads are off).
    """
    target = keras_cache_dir() / NOTOP_FILE
    base = weights_origin()
    if target.is_file():
        if base is None:
            return target
        actual = md5_file(target)
        if actual == KERAS_VGG16_MD5[NOTOP_FILE]:
            return target
        logger.warning("%s: MD5 %s is not Keras's published one; fetching it again", target, actual)
    elif base is None:
        raise WeightsFetchError(
            f"VGG16 ImageNet weights not found and downloads are off ({ORIGIN_ENV}={DOWNLOADS_OFF}): "
            + _place_by_hand(target)
        )
    return fetch_imagenet_notop(base, target.parent)


def _place_by_hand(target: Path) -> str:
    return (
        f"put {NOTOP_FILE} (MD5 {KERAS_VGG16_MD5[NOTOP_FILE]}) at {target} (e.g. copy it from ~/.keras/models of a "
        f"machine that ran keras.applications.VGG16(include_top=False)), or set {ORIGIN_ENV} to the base URL of a "
        "mirror, or set features.weights to a file path, or set features.weights: none to run with random weights "
        "(offline demo)"
    )


def _shown(url: str) -> str:
    """``url`` without any user:password@ (a mirror URL may carry credentials; they are never logged)."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class _TransientFetchError(Exception):
    """One attempt failed in a way another attempt may not (a cut connection, a timeout, an HTTP 5xx)."""


def fetch_imagenet_notop(base: str, folder: Path) -> Path:
    """Fetch the notop file from ``base`` into ``folder`` with ``keras.utils.get_file``, retrying transient failures.

    Args:
        base: the origin's base URL, ending in ``/`` (see :func:`weights_origin`).
        folder: the Keras cache folder (``$KERAS_HOME/models``).

    Returns:
        ``folder / NOTOP_FILE``, whose MD5 is Keras's published one.

    Raises:
        WeightsFetchError: an HTTP 4xx, a wrong MD5, a local error, or transient failures on every attempt;
            nothing is left in ``folder`` but what was there before.
    """
    url = urllib.parse.urljoin(base, NOTOP_FILE)
    target = folder / NOTOP_FILE
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WeightsFetchError(
            f"cannot create the Keras cache {folder} ({error.strerror}): " + _place_by_hand(target)
        ) from None
    for attempt in range(1, FETCH_ATTEMPTS + 1):
        try:
            return _fetch_once(url, target, attempt)
        except _TransientFetchError as error:
            if attempt == FETCH_ATTEMPTS:
                raise WeightsFetchError(
                    f"VGG16 ImageNet weights: could not fetch {_shown(url)} ({error}; {FETCH_ATTEMPTS} attempts): "
                    + _place_by_hand(target)
                ) from None
            delay = RETRY_BASE_SECONDS * 2 ** (attempt - 1)
            logger.warning(
                "fetching %s failed (%s); attempt %d of %d in %.0f s",
                _shown(url),
                error,
                attempt + 1,
                FETCH_ATTEMPTS,
                delay,
            )
            _sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises


def _fetch_once(url: str, target: Path, attempt: int) -> Path:
    """One download to a temporary name beside ``target``, renamed onto it only once Keras has checked the MD5."""
    expected = KERAS_VGG16_MD5[target.name]
    # Hidden, per process: never mistaken for the weights, and two concurrent fetches never share one.
    temp = target.with_name(f".{target.name}.{os.getpid()}.part")
    logger.info(
        "fetching VGG16 ImageNet weights %s from %s into %s (attempt %d of %d)",
        target.name,
        _shown(url),
        target.parent,
        attempt,
        FETCH_ATTEMPTS,
    )
    started = time.monotonic()
    try:
        with _keras_quiet(), _socket_timeout(SOCKET_TIMEOUT_SECONDS), _log_progress(temp, started):
            fetched = keras.utils.get_file(
                fname=temp.name,
                origin=url,
                file_hash=expected,
                hash_algorithm="md5",
                cache_dir=str(target.parent),
                cache_subdir=str(target.parent),  # absolute: get_file never falls back to /tmp/.keras
                force_download=True,
            )
        os.replace(fetched, target)
    except ValueError:
        # get_file raises ValueError on an MD5 mismatch and leaves the file: say what came instead.
        actual = md5_file(temp) if temp.is_file() else "unknown"
        raise WeightsFetchError(
            f"VGG16 ImageNet weights: {_shown(url)} sent a file with MD5 {actual}, not Keras's published {expected} "
            "(not kept; the origin serves another or a corrupted file): " + _place_by_hand(target)
        ) from None
    except Exception as error:  # get_file wraps urllib's errors in a bare Exception; the cause is its context
        transient, reason = _classify(error)
        if transient:
            raise _TransientFetchError(reason) from error
        raise WeightsFetchError(
            f"VGG16 ImageNet weights: fetching {_shown(url)} failed ({reason}): " + _place_by_hand(target)
        ) from None
    finally:
        temp.unlink(missing_ok=True)
    size = target.stat().st_size
    logger.info(
        "fetched %s: %.1f MB in %.1f s, MD5 %s matches Keras's published one",
        target,
        size / 1e6,
        time.monotonic() - started,
        expected,
    )
    return target


def _classify(error: BaseException) -> tuple[bool, str]:
    """Whether another attempt may succeed, and the failure in a few words."""
    cause = error.__context__ if type(error) is Exception and error.__context__ is not None else error
    if isinstance(cause, urllib.error.HTTPError):
        return cause.code in _RETRIED_HTTP or cause.code >= 500, f"HTTP {cause.code} {cause.msg}".strip()
    if isinstance(cause, urllib.error.URLError):
        # A file:// mirror without the file is a 404; an unreachable host or a cut body may pass.
        return not isinstance(cause.reason, FileNotFoundError), str(cause.reason)
    if isinstance(cause, (ConnectionError, TimeoutError, http.client.HTTPException)):
        return True, f"{type(cause).__name__}: {cause}".rstrip(": ")
    if isinstance(cause, OSError):
        return False, cause.strerror or str(cause)  # disk full, permissions: the same next time
    return False, f"{type(cause).__name__}: {cause}"


@contextlib.contextmanager
def _keras_quiet() -> Iterator[None]:
    """Send Keras's download line and progress bar to a muted logger instead of stdout: a stage never prints."""
    interactive = keras.config.is_interactive_logging_enabled()
    absl_logger = logging.getLogger("absl")
    muted = absl_logger.disabled
    keras.config.disable_interactive_logging()
    absl_logger.disabled = True
    try:
        yield
    finally:
        absl_logger.disabled = muted
        if interactive:
            keras.config.enable_interactive_logging()


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """A default socket timeout for this block (urlretrieve takes none), unless one is set already."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


@contextlib.contextmanager
def _log_progress(partial: Path, started: float) -> Iterator[None]:
    """Log the size of ``partial`` every :data:`PROGRESS_SECONDS` while the block runs (get_file takes no hook)."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(PROGRESS_SECONDS):
            with contextlib.suppress(OSError):
                size = partial.stat().st_size
                elapsed = max(time.monotonic() - started, 1e-9)
                logger.info("fetching %s: %.1f MB so far (%.1f MB/s)", partial.name, size / 1e6, size / 1e6 / elapsed)

    thread = threading.Thread(target=watch, name="cvpipe-weights-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def seed_random_weights(model: keras.Model, seed: int) -> None:
    """Re-draw every kernel (Glorot uniform) and zero every bias from a NumPy seed.

    Keras's own initialisers are unseeded here, so 'none' would otherwise give different features on every
    run; NumPy draws are also identical on every backend.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        values = layer.get_weights()
        if values:
            layer.set_weights([_glorot_uniform(rng, v.shape) if v.ndim > 1 else np.zeros_like(v) for v in values])


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        CvpipeError: it is not.
    """
    if precision not in PRECISIONS:
        raise CvpipeError(f"features precision {precision!r}: expected one of {', '.join(PRECISIONS)}")
    return precision


def build_conv_base(weights_path: Path | None, input_shape: Sequence[int], precision: str = "float32") -> keras.Model:
    """Build the VGG16 base under the dtype policy ``precision`` and load ``weights_path`` into it.

    ``None`` gives seeded random weights. The global dtype policy is left as it was.

    Raises:
        CvpipeError: the file does not fit the conv base, or the precision is unknown.
    """
    with dtype_policy(resolve_precision(check_precision(precision))):
        base = vgg16_conv_base(input_shape)
    if weights_path is None:
        seed_random_weights(base, RANDOM_WEIGHTS_SEED)
        return base
    try:
        # Legacy .h5 (Keras's published file) loads by layer order; .weights.h5 by Keras 3's object layout.
        base.load_weights(str(weights_path))
    except (ValueError, OSError, KeyError) as error:
        hint = (
            f" ({FULL_FILE} has the classifier; the conv base needs {NOTOP_FILE})"
            if weights_path.name == FULL_FILE
            else ""
        )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CvpipeError(f"{weights_path}: cannot load into the VGG16 conv base{hint}: {first_line}") from None
    return base


def load_conv_base(weights: str, input_shape: Sequence[int], precision: str = "float32") -> keras.Model:
    """Build the VGG16 convolutional base (no classifier) with local weights.

    Args:
        weights: ``imagenet``, ``none`` or a weights file path (see :func:`resolve_weights`).
        input_shape: (height, width, 3).
        precision: the compute dtype policy, one of :data:`PRECISIONS`.

    Returns:
        The base; its output is (h, w, 512), 5 x 5 x 512 at 180 x 180.

    Raises:
        CvpipeError: the weights cannot be found, verified or loaded, or the precision is unknown.
    """
    return build_conv_base(resolve_weights(weights), input_shape, precision)


def weights_record(spec: str, path: Path | None) -> dict[str, Any]:
    """The weights as the features cache records them (``features.json``): spec, file, sha256 and MD5, or seed."""
    if path is None:
        return {"spec": spec, "file": RANDOM_WEIGHTS_FILE, "seed": RANDOM_WEIGHTS_SEED}
    return {"spec": spec, "file": path.name, "sha256": sha256_file(path), "md5": md5_file(path)}


def weights_identity(spec: str) -> dict[str, Any]:
    """The VGG16 weights a model was built on, for its lineage: spec, file and sha256 (random weights: none).

    Raises:
        CvpipeError: the weights cannot be found or verified (see :func:`resolve_weights`).
    """
    path = resolve_weights(spec)
    if path is None:
        return {"spec": spec, "file": RANDOM_WEIGHTS_FILE}
    return {"spec": spec, "file": path.name, "sha256": sha256_file(path)}
