"""The server's structured logs: one JSON object per line on stderr for the server, the engine and uvicorn.
Access lines carry the request id and the key's id, never a key or the server secret."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys

# a key in a URL's query (`ws://...?api_key=...`, which uvicorn's log names) or anywhere in a message
_KEY_IN_QUERY = re.compile(r"((?:api_key|apikey|key|token|access_token)=)[^&\s\"']+", re.IGNORECASE)
_KEY = re.compile(r"\b(nq_[0-9a-f]{12}_)[A-Za-z0-9_-]+")
REDACTED = "<redacted>"


def iso(t: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 in UTC (None stays None)."""
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


class JsonFormatter(logging.Formatter):
    """Time, level, logger and the message's fields (a message that is a JSON object is merged in), plus the
    traceback of an exception."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        try:
            payload = json.loads(msg) if msg.startswith("{") else {"message": msg}
        except json.JSONDecodeError:
            payload = {"message": msg}
        doc = {"ts": iso(record.created), "level": record.levelname, "logger": record.name, **payload}
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def redact(text: str) -> str:
    """`text` without API keys: a query parameter's value and anything shaped like a key (`nq_<id>_...`)."""
    return _KEY.sub(r"\1" + REDACTED, _KEY_IN_QUERY.sub(r"\1" + REDACTED, text))


class RedactKeys(logging.Filter):
    """Keys never reach a log (issue 26: `ws://...?api_key=<key>` was in uvicorn's log): the record's message
    is rendered and redacted before any handler sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


SERVER_LOGGERS = ("nq.serve", "nq.serve.access", "uvicorn", "uvicorn.error", "uvicorn.access")


def redact_server_logs() -> None:
    """The key filter on the server's loggers and uvicorn's (once each); a filter on a logger applies to the
    records logged through it, whatever handler then writes them."""
    for name in SERVER_LOGGERS:
        lg = logging.getLogger(name)
        if not any(isinstance(f, RedactKeys) for f in lg.filters):
            lg.addFilter(RedactKeys())


def configure_logging(level: str = "INFO") -> None:
    redact_server_logs()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("nq.serve", "nq.serve.access", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
