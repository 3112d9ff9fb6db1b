"""Logging set-up: console or JSON lines, events with ids, never content or secrets."""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# The id of the HTTP request being handled (set by app.metrics.ObserveRequests), added
# to every log line written while it runs.
request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
# The name of the service key a request authenticated with (API_KEYS `name:key`); never
# the key. Set by the service-key check, added to the lines logged after it.
actor_var: ContextVar[str | None] = ContextVar("actor", default=None)

# Attributes every LogRecord has; anything else was passed in `extra=` and is logged.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    extras = {key: value for key, value in record.__dict__.items() if key not in _STANDARD}
    request_id = request_id_var.get()
    if request_id is not None:
        extras.setdefault("request_id", request_id)
    actor = actor_var.get()
    if actor is not None:
        extras.setdefault("actor", actor)
    return extras


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "event": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            entry["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class ConsoleFormatter(logging.Formatter):
    """`time level logger event key=value ...` for people."""

    _second = -1
    _moment = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # formatted once a second, not once a line
            self._second = second
            self._moment = time.strftime("%H:%M:%S", time.gmtime(second))
        moment = self._moment
        pairs = " ".join(f"{key}={value}" for key, value in _extras(record).items())
        line = f"{moment} {record.levelname:<7} {record.name} {record.getMessage()} {pairs}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line.rstrip()


def configure_logging(level: str, log_format: str) -> None:
    """Install one handler on the root logger for the service's own events."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else ConsoleFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    # Every request writes an access line: skip what no formatter here prints. These
    # switches are the ones the Python logging HOWTO ("Optimization") documents: the
    # calling frame's file and line, and the thread and process of each record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root.setLevel(level)
    # uvicorn's access log would print full paths, session ids included; ours does not.
    logging.getLogger("uvicorn.access").disabled = True
    # Libraries that narrate every step at INFO; httpx would log full URLs, which may
    # carry tokens (webhooks) or session ids (tests, tools calling the API).
    for name in ("pgserver", "alembic.runtime.plugins", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
