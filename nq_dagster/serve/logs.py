"""The server's structured logs: one JSON object per line on stderr for the server, the engine and uvicorn.
Access lines carry the request id and the key's id, never a key or the server secret."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys


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


def configure_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    for name in ("nq.serve", "nq.serve.access", "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(level)
        lg.propagate = False
