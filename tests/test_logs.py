"""``server.log_format = json``: every line a JSON object a collector can index, and the access lines of
``server.access_log`` (one per command run, one per stream closed) carrying their fields.

Unit: the formatter's fields, exceptions, ``extra`` fields, one line whatever the message holds. Live: a real
``gateway serve`` with json logs and access lines, a command and a view stream, and its log read back."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from gateway.logs import TEXT_FORMAT, JsonFormatter, formatter
from tests.support.server import start_server
from tests.support.sse_client import SSEReader
from tests.support.wait import poll_until


def _record(message: str = "hello %s", args: tuple[Any, ...] = ("world",), *, level: int = logging.INFO,
            exc_info: Any = None, extra: dict[str, Any] | None = None) -> logging.LogRecord:
    return logging.getLogger("gateway.test").makeRecord("gateway.test", level, __file__, 1, message, args,
                                                        exc_info, extra=extra)


def _json(record: logging.LogRecord) -> dict[str, Any]:
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one record, one line: a reader splitting on newlines never sees half an object
    parsed: dict[str, Any] = orjson.loads(line)
    return parsed


@pytest.mark.unit
def test_a_record_has_ts_level_logger_message() -> None:
    record = _record()
    record.created = 1_700_000_000.25
    line = _json(record)
    assert line["ts"] == "2023-11-14T22:13:20.250Z"
    assert line["level"] == "info"
    assert line["logger"] == "gateway.test"
    assert line["message"] == "hello world"
    assert isinstance(line["pid"], int)
    assert "exception" not in line


@pytest.mark.unit
def test_an_exception_is_one_field_and_the_line_stays_one_line() -> None:
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        record = _record("it failed:\nsee below", (), level=logging.ERROR, exc_info=sys.exc_info())
    line = _json(record)
    assert line["level"] == "error"
    assert line["message"] == "it failed:\nsee below"
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "ValueError: bad\nvalue" in line["exception"]


@pytest.mark.unit
def test_extra_fields_are_fields_and_never_replace_the_own_ones() -> None:
    extra = {"command_id": "1-0", "duration_ms": 1.5, "delivery": 2, "ok": True, "when": Path("/x"),
             "level": "forged", "ts": "forged"}
    line = _json(_record(extra=extra))
    assert (line["command_id"], line["duration_ms"], line["delivery"]) == ("1-0", 1.5, 2)
    assert line["ok"] is True
    assert line["when"] == "/x"  # what orjson cannot encode is written as its str
    assert line["level"] == "info"
    assert line["ts"] != "forged"
    for own in ("args", "msg", "lineno", "pathname", "exc_text", "threadName"):
        assert own not in line


@pytest.mark.unit
def test_a_value_orjson_refuses_still_gives_a_line() -> None:
    line = _json(_record(extra={"huge": 1 << 70}))
    assert line["huge"] == str(1 << 70)
    assert line["message"] == "hello world"


@pytest.mark.unit
def test_text_stays_the_default_format() -> None:
    text = formatter("text")
    assert not isinstance(text, JsonFormatter)
    assert text._fmt == TEXT_FORMAT
    assert isinstance(formatter("json"), JsonFormatter)


def _lines(output: str) -> list[dict[str, Any]]:
    """Every line of the server's output, each of which must be a JSON object."""
    parsed = []
    for raw in output.splitlines():
        try:
            line = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pytest.fail(f"a log line is not JSON: {raw!r}")
        assert isinstance(line, dict), raw
        parsed.append(line)
    return parsed


def _access(output: str, logger: str) -> list[dict[str, Any]]:
    return [line for line in _lines(output) if line["logger"] == logger]


@pytest.mark.live
@pytest.mark.asyncio
async def test_json_logs_carry_one_line_per_command_and_per_stream_closed(tmp_path: Path,
                                                                         certs: tuple[Path, Path]) -> None:
    srv = start_server(tmp_path, certs, env={"GATEWAY_SERVER_LOG_FORMAT": "json",
                                             "GATEWAY_SERVER_ACCESS_LOG": "true"})
    try:
        async with httpx.AsyncClient(base_url=srv.http, timeout=10) as client:
            answer = await client.post("/todos/add", json={"text": "logged"})
            assert answer.status_code == 204, answer.text
            command_id = answer.headers["command-id"]
            async with client.stream("GET", "/todos/updates", headers={"accept-encoding": "identity"}) as response:
                reader = SSEReader(response.aiter_raw(), response.headers.get("content-encoding"))
                await reader.next_event()

        def logged() -> bool:
            output = srv.output()
            return any(f'"{command_id}"' in raw and "gateway.commands" in raw for raw in output.splitlines()) \
                and '"gateway.streams"' in output

        poll_until(logged, 10.0, what="the command's and the stream's access lines in the log")
        output = srv.output()
        commands = [line for line in _access(output, "gateway.commands") if line.get("command_id") == command_id]
        assert len(commands) == 1, commands
        command = commands[0]
        assert command["route"] == "/todos/add"
        assert command["outcome"] == "ok"
        assert command["delivery"] == 1
        assert command["duration_ms"] >= 0
        assert command["level"] == "info"
        assert command["ts"].endswith("Z")

        streams = [line for line in _access(output, "gateway.streams") if "reason" in line]
        assert len(streams) == 1, streams
        stream = streams[0]
        assert stream["reason"] == "client_closed"
        assert (stream["kind"], stream["route"]) == ("view", "/todos/updates")
        assert (stream["protocol"], stream["encoding"]) == ("h1", "identity")
        assert stream["events"] >= 1
        assert stream["bytes_out"] > 0
        assert stream["duration_ms"] > 0
        assert any(line["logger"] == "hypercorn.access" for line in _lines(output))  # Hypercorn's own, as JSON
    finally:
        assert srv.stop() == 0
    _lines(srv.output())  # the shutdown's lines too
