from __future__ import annotations

from cvpipe.lineage.secrets import REDACTED, redact, secret_values

FAKE_KEY = "kaggle-secret-0123456789abcdef"


def test_redact_replaces_credentials_everywhere_but_not_ordinary_short_values() -> None:
    environ = {
        "KAGGLE_KEY": FAKE_KEY,
        "KAGGLE_USERNAME": "someone-x",
        "MY_API_TOKEN": "tok-123456789",
        "TOKEN_COUNT": "1",
        "GIT_AUTHOR_NAME": "cvpipe-tests",
        "KAGGLE_API_TOKEN": "short",
        "PATH": "/usr/bin",
    }
    secrets = secret_values(environ)
    assert set(secrets) == {FAKE_KEY, "someone-x", "tok-123456789"}
    record = {"a": [f"url?key={FAKE_KEY}", {"someone-x": "by someone-x"}], "n": 1, "t": "1 token"}
    assert redact(record, secrets) == {
        "a": [f"url?key={REDACTED}", {REDACTED: f"by {REDACTED}"}],
        "n": 1,
        "t": "1 token",
    }
