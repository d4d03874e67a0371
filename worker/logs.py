"""Structured logging: one JSON object per record (or readable text), `extra` fields included.

    log.info("verdict sent", extra={"request_id": rid, "topic": t, "partition": p, "offset": o})

gives `{"ts": "...", "level": "INFO", "logger": "worker.x", "msg": "verdict sent",
"request_id": ..., "topic": ..., "partition": ..., "offset": ...}` on one line.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
) | {"message", "asctime", "taskName"}
_HANDLER_NAME = "dfd-structured"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller attached to `record` with `extra=`."""
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD_ATTRIBUTES and not key.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: ts, level, logger, msg, extras, exc, stack."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            document.setdefault(key, value)
        if record.exc_info:
            document["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exc"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Human-readable lines for local runs, `extra` fields appended as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = extra_fields(record)
        if not extras:
            return line
        head, newline, tail = line.partition("\n")
        fields = " ".join(f"{key}={value}" for key, value in extras.items())
        return f"{head} [{fields}]{newline}{tail}"


def configure_logging(
    fmt: Literal["json", "text"] = "json",
    level: str | int = "INFO",
    stream: TextIO | None = None,
) -> None:
    """Send every log record to `stream` (default stderr) in the chosen format.

    Idempotent: calling it again replaces the handler it installed before.
    """
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
