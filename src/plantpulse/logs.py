"""Logging for `plantpulse serve`: uvicorn's configuration plus our loggers, secrets redacted.

Browsers cannot set headers on a WebSocket or an EventSource, so `/api/v1/ws` and
`/api/v1/stream` take the access token as `?token=`, and uvicorn writes the whole query string
into its access line (HTTP) and its `"WebSocket /path?query" [accepted]` line (the error
logger). Anyone who reads the log could then act as that user until the token expires. So every
handler we configure carries `RedactSecrets`, which replaces such values with `[redacted]` in
whatever reaches it: uvicorn's lines and our own (a 500's log line has the full URL).
"""

from __future__ import annotations

import copy
import logging
import re

REDACTED = "[redacted]"
# Query parameters whose values are credentials: `token` (WebSocket, SSE) and the usual names
# of others, in case a client sends them too.
_SECRET_PARAMETER = re.compile(
    r"(?P<key>[?&;](?:access_token|refresh_token|token|api_key|apikey))=[^&#\s\"']*",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with the values of credential query parameters replaced by `[redacted]`."""
    if "=" not in text:
        return text
    return _SECRET_PARAMETER.sub(rf"\g<key>={REDACTED}", text)


def _redact_arg(value: object) -> object:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, int | float):
        return value
    # A URL object (errors.py logs `request.url`) or anything else printed with %s.
    text = str(value)
    cleaned = redact(text)
    return value if cleaned == text else cleaned


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and arguments in place; never drops a record.

    The arguments keep their positions (uvicorn's access formatter unpacks them), and a value
    only changes when it held a secret.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_redact_arg(arg) for arg in args)
        elif isinstance(args, dict):
            record.args = {key: _redact_arg(value) for key, value in args.items()}
        return True


def log_config(level: str) -> dict[str, object]:
    """uvicorn's logging plus our own `plantpulse.*` loggers on the same handler, every
    handler redacting credentials."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"redact_secrets": {"()": f"{__name__}.RedactSecrets"}}
    config["formatters"]["plantpulse"] = {
        "format": "%(asctime)s %(levelname)s %(name)s: %(message)s",
    }
    config["handlers"]["plantpulse"] = {
        "formatter": "plantpulse",
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
    }
    for handler in config["handlers"].values():
        handler["filters"] = ["redact_secrets"]
    config["loggers"]["plantpulse"] = {
        "handlers": ["plantpulse"],
        "level": level,
        "propagate": False,
    }
    return config
