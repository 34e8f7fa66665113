"""What cvpipe changes in the OpenLineage client's transports: an HTTP backend that is down costs little.

The client's HTTP defaults (5 s timeout, 5 retries with backoff) cost ~9 s per event when the backend is
unreachable: a 1 s stage took 19 s and logged 13 warning lines. cvpipe gives HTTP a short timeout and one retry
(unless the user set them), warns once per stage, and keeps every event the backend did not take in the
stage's events file, which DVC versions with the stage's outputs.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from openlineage.client import OpenLineageClient

log = logging.getLogger(__name__)

HTTP_TIMEOUT_S = 2.0
_RETRY = {"total": 1, "connect": 1, "read": 1, "backoff_factor": 0.2}
_CONFIG_ENV_PREFIXES = ("OPENLINEAGE__", "OPENLINEAGE_URL", "OPENLINEAGE_CONFIG")


def user_configured(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> bool:
    """Whether the user configured OpenLineage the standard way (then the client's own resolution applies)."""
    environ = os.environ if environ is None else environ
    if any(name.startswith(_CONFIG_ENV_PREFIXES) for name in environ):
        return True
    cwd = Path.cwd() if cwd is None else cwd
    home = Path(environ.get("HOME") or Path.home())
    return (cwd / "openlineage.yml").is_file() or (home / ".openlineage" / "openlineage.yml").is_file()


def make_client(default_file: Path) -> OpenLineageClient:
    """An OpenLineage client: the user's configuration if any, else append to ``default_file`` (JSON lines)."""
    from openlineage.client import OpenLineageClient

    if os.environ.get("OPENLINEAGE_DISABLED", "").strip().lower() == "true" or user_configured():
        client = OpenLineageClient()
        bound_http(client.transport, os.environ)
        return client
    default_file.parent.mkdir(parents=True, exist_ok=True)
    return OpenLineageClient(config={"transport": {"type": "file", "log_file_path": str(default_file), "append": True}})


def bound_http(transport: Any, environ: Mapping[str, str]) -> None:
    """A short timeout and one retry for an HTTP transport, unless the user configured them."""
    if str(getattr(transport, "kind", "")) != "http":
        return
    if "OPENLINEAGE__TRANSPORT__TIMEOUT" not in environ and hasattr(transport, "timeout"):
        transport.timeout = HTTP_TIMEOUT_S
    config = getattr(transport, "config", None)
    if not any(name.startswith("OPENLINEAGE__TRANSPORT__RETRY") for name in environ) and hasattr(config, "retry"):
        config.retry = {**config.retry, **_RETRY}


def keep_event(path: Path, event: Any) -> Path | None:
    """Append an event the backend did not take to ``path`` (JSON lines, as the file transport writes).

    Returns:
        ``path``, or None when it could not be written (logged at debug level: lineage never fails a stage).
    """
    from openlineage.client.serde import Serde

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as sink:
            sink.write(Serde.to_json(event) + "\n")
    except OSError as error:
        log.debug("OpenLineage: keeping the event in %s failed: %s", path, error)
        return None
    return path
