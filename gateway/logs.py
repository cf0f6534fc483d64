"""Log lines a machine can read: ``server.log_format = json`` writes one JSON object per line.

A log collector (Loki, Elasticsearch, CloudWatch, ``jq``) should not have to parse free text to find which command
failed or why a stream closed: the gateway's access lines (``gateway.commands``, ``gateway.streams``) pass their
fields with ``extra={...}``, and this formatter puts them next to ``ts``, ``level``, ``logger`` and ``message``.
Every record is exactly one line, whatever its message or traceback holds (orjson escapes newlines), so a reader
that splits on newlines never sees half an object. The text format stays the default: people read it.

This module imports nothing of the gateway: the CLI installs it before anything else runs, in the supervisor and
in every worker alike (a worker is a re-executed ``gateway serve`` with the same flags and environment).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# What every LogRecord carries by itself: anything else on a record came from ``extra={...}``.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}
_OWN = ("ts", "level", "logger", "message", "pid", "exception", "stack")  # an extra field never replaces these


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``ts`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
    ``pid`` (workers share one stderr), ``exception`` and ``stack`` when there are some, then every field passed
    with ``extra``. A value orjson cannot encode is written as its ``str``: a log line is never lost to a type."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if record.exc_info and not record.exc_text:  # cached on the record, as logging.Formatter does
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in line and key not in _OWN:
                line[key] = value
        try:
            return orjson.dumps(line, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an integer past 64 bits, or a default() that failed: keep the line as strings
            return orjson.dumps({k: v if isinstance(v, str) else repr(v) for k, v in line.items()}).decode()


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``server.log_format``: ``json``, or ``text`` (the human format, also the default)."""
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
