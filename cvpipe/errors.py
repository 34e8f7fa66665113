"""Errors a user can act on.

Every failure that is the user's to fix (bad params, missing credentials, bad data) is raised as a
``CvpipeError`` with one line that says what happened and what to do; the CLI prints that line and exits
with code 2. Anything else is a bug and exits with code 1.
"""

from __future__ import annotations


class CvpipeError(Exception):
    """A failure the user can fix; its message is one line that says what to do."""

    exit_code = 2


class ConfigError(CvpipeError):
    """params.yaml is missing, malformed, or has a wrong, unknown or out-of-range key."""


class SourceError(CvpipeError):
    """The data source (Kaggle, a local archive or folder) could not be read or downloaded."""


class DataError(CvpipeError):
    """The data does not satisfy what a stage needs (too few images, a failed schema check, ...)."""


class DiskFullError(CvpipeError):
    """A write ran out of disk space or quota; the output being written was left as it was."""
