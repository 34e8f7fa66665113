"""Secrets never written: which environment variables are credentials, and masking their values.

Records hold no environment variables, and :func:`redact` replaces the value of any credential-like variable
(``KAGGLE_KEY``, ``*_TOKEN``, ...) wherever it might still appear: a summary, an error message, a traceback,
the report.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

REDACTED = "***"

# Credentials cvpipe knows by name, and any variable whose name has a credential word in it (KAGGLE_KEY,
# GITHUB_TOKEN, AWS_SECRET_ACCESS_KEY; not GIT_AUTHOR_NAME).
SECRET_VARIABLES = ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN", "OPENLINEAGE_API_KEY")
_SECRET_NAME = re.compile(r"(^|_)(KEY|APIKEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH)(_|$)", re.IGNORECASE)
# Shorter values ("1", "true", a short user name such as "test") would redact ordinary text and paths.
_MIN_SECRET_LENGTH = 6


def secret_values(environ: Mapping[str, str] | None = None) -> list[str]:
    """Values of credential variables set in the environment, longest first (so substrings go last)."""
    environ = os.environ if environ is None else environ
    values = {
        value
        for name, value in environ.items()
        if len(value) >= _MIN_SECRET_LENGTH and (name in SECRET_VARIABLES or _SECRET_NAME.search(name))
    }
    return sorted(values, key=len, reverse=True)


def redact(value: Any, secrets: Sequence[str] | None = None) -> Any:
    """``value`` with every secret's text replaced by ``***`` in every string it holds (keys included)."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return value
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, REDACTED)
        return value
    if isinstance(value, dict):
        return {redact(key, secrets): redact(entry, secrets) for key, entry in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(entry, secrets) for entry in value]
    return value
