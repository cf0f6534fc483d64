"""Tests for the small sans-IO pieces: mailboxes, the stream state machine, JSON body checks, versions, the
error tree, and command argument validation built from a handler's signature.

Each of these decides a status code, a dropped or kept event, or a closed connection, so the tests pin the
decision itself (result enum, status, field name), not only "it raised".
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
import pytest

from gateway.bus.base import Command
from gateway.commands import CommandSpec
from gateway.core.errors import (
    BadRequest,
    Forbidden,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    SettingsError,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from gateway.core.jsonbody import check_headers, check_size, depth, parse_object
from gateway.core.mailbox import BoundedMailbox, ConflatingMailbox, Limits, PutResult
from gateway.core.versions import ZERO, latest, try_version_key, version_key

pytestmark = pytest.mark.unit

# --- ConflatingMailbox ---------------------------------------------------------------------------------------


def test_conflating_mailbox_latest_wins_and_counts_skipped() -> None:
    """A slow view client only ever gets the newest render; every superseded one is counted."""
    box: ConflatingMailbox[str] = ConflatingMailbox()
    assert len(box) == 0
    assert box.take() is None
    assert box.put("v1") is PutResult.QUEUED
    assert box.put("v2") is PutResult.REPLACED
    assert box.put("v3") is PutResult.REPLACED
    assert len(box) == 1
    assert box.skipped == 2
    assert box.take() == "v3"
    assert len(box) == 0
    assert box.take() is None
    # After a take the slot is free again: the next put is not a replacement.
    assert box.put("v4") is PutResult.QUEUED
    assert box.skipped == 2
    assert box.take() == "v4"


# --- BoundedMailbox ------------------------------------------------------------------------------------------


def test_bounded_mailbox_take_all_is_fifo_and_resets() -> None:
    box: BoundedMailbox[int] = BoundedMailbox(Limits(max_items=10, max_bytes=1000))
    for i in range(5):
        assert box.put(i, 10) is PutResult.QUEUED
    assert len(box) == 5
    assert box.bytes == 50
    assert box.take_all() == [0, 1, 2, 3, 4]
    assert len(box) == 0
    assert box.bytes == 0
    assert box.take_all() == []


def test_bounded_mailbox_items_limit_disconnect() -> None:
    """Policy ``disconnect``: the put that does not fit is refused and nothing queued is dropped."""
    box: BoundedMailbox[int] = BoundedMailbox(Limits(max_items=3, max_bytes=10_000, policy="disconnect"))
    for i in range(3):
        assert box.put(i, 1) is PutResult.QUEUED
    assert box.put(3, 1) is PutResult.OVERFLOW
    assert box.dropped == 0
    assert box.take_gap() is None
    assert box.take_all() == [0, 1, 2]


def test_bounded_mailbox_bytes_limit_disconnect() -> None:
    """Bytes are bounded independently of items: a few large frames fill it too."""
    box: BoundedMailbox[str] = BoundedMailbox(Limits(max_items=100, max_bytes=100, policy="disconnect"))
    assert box.put("a", 60) is PutResult.QUEUED
    assert box.put("b", 40) is PutResult.QUEUED  # exactly at the limit is allowed
    assert box.bytes == 100
    assert box.put("c", 1) is PutResult.OVERFLOW
    assert box.bytes == 100
    assert box.take_all() == ["a", "b"]


def test_bounded_mailbox_drop_oldest_by_items() -> None:
    """Policy ``drop-oldest``: the newest item is kept, the oldest go, and the first lost one is remembered."""
    box: BoundedMailbox[int] = BoundedMailbox(Limits(max_items=3, max_bytes=10_000, policy="drop-oldest"))
    for i in range(3):
        box.put(i, 1)
    assert box.put(3, 1) is PutResult.DROPPED_OLDEST
    assert box.put(4, 1) is PutResult.DROPPED_OLDEST
    assert box.dropped == 2
    assert box.first_dropped == 0
    assert box.take_all() == [2, 3, 4]
    assert box.take_gap() == 0
    assert box.take_gap() is None  # the gap is announced once


def test_bounded_mailbox_drop_oldest_by_bytes() -> None:
    """One big item may push out several small ones; the byte count stays within the limit."""
    box: BoundedMailbox[str] = BoundedMailbox(Limits(max_items=100, max_bytes=100, policy="drop-oldest"))
    for name in "abcd":
        box.put(name, 25)
    assert box.put("big", 60) is PutResult.DROPPED_OLDEST
    assert box.dropped == 3
    assert box.bytes == 85
    assert box.take_all() == ["d", "big"]
    assert box.take_gap() == "a"


def test_bounded_mailbox_gap_restarts_after_take_gap() -> None:
    """After the writer announced one gap, the next drop starts a new gap from its own first item."""
    box: BoundedMailbox[int] = BoundedMailbox(Limits(max_items=2, max_bytes=10_000, policy="drop-oldest"))
    for i in range(4):
        box.put(i, 1)
    assert box.take_gap() == 0
    assert box.take_all() == [2, 3]
    for i in range(4, 8):
        box.put(i, 1)
    assert box.take_gap() == 4
    assert box.dropped == 4  # a running total, for metrics


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_items": 0}, "positive"),
        ({"max_bytes": 0}, "positive"),
        ({"max_items": -1}, "positive"),
        ({"policy": "block"}, "policy"),
    ],
)
def test_limits_validation(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Limits(**kwargs)


def test_limits_defaults() -> None:
    limits = Limits()
    assert (limits.max_items, limits.max_bytes, limits.policy) == (1000, 4 * 1024 * 1024, "disconnect")
    Limits(max_items=1, max_bytes=1, policy="drop-oldest")


# --- jsonbody --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "content_encoding"),
    [
        ("application/json", None),
        ("application/json; charset=utf-8", None),
        ("application/json;charset=UTF-8", None),
        ('application/json; charset="utf-8"', None),
        ("application/json; charset=utf8", None),
        ("Application/JSON", None),
        ("application/merge-patch+json", None),
        ("application/vnd.api+json; charset=utf-8", None),
        ("application/json", "identity"),
        ("application/json", ""),
    ],
)
def test_check_headers_accepts(content_type: str | None, content_encoding: str | None) -> None:
    check_headers(content_type, content_encoding)


@pytest.mark.parametrize(
    ("content_type", "content_encoding", "match"),
    [
        ("application/json; charset=latin-1", None, "UTF-8"),
        ("application/json; charset=iso-8859-1", None, "UTF-8"),
        ("text/plain", None, "application/json"),
        ("text/json", None, "application/json"),
        ("application/x-www-form-urlencoded", None, "application/json"),
        ("multipart/form-data; boundary=x", None, "application/json"),
        ("application/json", "gzip", "compressed"),
        ("application/json", "br", "compressed"),
        ("application/json", "GZIP ", "compressed"),
        (None, None, "application/json"),  # a body needs a media type
        ("", None, "application/json"),  # and so does a command without a body: no-cors fetch, sendBeacon
    ],
)
def test_check_headers_refuses(content_type: str | None, content_encoding: str | None, match: str) -> None:
    with pytest.raises(UnsupportedMediaType, match=match) as info:
        check_headers(content_type, content_encoding)
    assert info.value.status == 415


def test_check_size() -> None:
    check_size(100, 100)  # the limit itself is allowed
    with pytest.raises(PayloadTooLarge, match="101 bytes") as info:
        check_size(101, 100)
    assert info.value.status == 413


def _nested(levels: int) -> bytes:
    """``levels`` nested objects: {"a": {"a": ... {} }}, depth ``levels``."""
    return (b'{"a":' * (levels - 1)) + b"{}" + (b"}" * (levels - 1))


@pytest.mark.parametrize(
    "body",
    [b"NaN", b'{"x": NaN}', b'{"x": Infinity}', b'{"x": -Infinity}', b'{"x": [1, NaN]}', b"{", b'{"x": 1,}'],
)
def test_parse_object_refuses_non_json(body: bytes) -> None:
    """NaN and Infinity are JavaScript, not JSON; a handler must never see a float that is not a number."""
    with pytest.raises(BadRequest, match="malformed JSON") as info:
        parse_object(body, max_depth=32)
    assert info.value.status == 400


def test_parse_object_nan_message_explains() -> None:
    with pytest.raises(BadRequest, match="NaN and Infinity are not JSON"):
        parse_object(b'{"x": NaN}', max_depth=32)


def test_parse_object_depth_limit() -> None:
    assert depth(json.loads(_nested(32))) == 32
    assert depth(parse_object(_nested(32), max_depth=32)) == 32
    with pytest.raises(BadRequest, match="deeper than 32"):
        parse_object(_nested(33), max_depth=32)
    # Arrays count as levels too: an object holding 32 nested arrays is 33 deep.
    with pytest.raises(BadRequest, match="deeper than 32"):
        parse_object(b'{"a":' + b"[" * 32 + b"]" * 32 + b"}", max_depth=32)


def test_depth_of_scalars_and_siblings() -> None:
    assert depth(1) == 0
    assert depth({}) == 1
    assert depth([]) == 1
    assert depth({"a": [1, {"b": 2}], "c": 3}) == 3


@pytest.mark.parametrize(("body", "kind"), [(b"[]", "list"), (b"[1, 2]", "list"), (b'"x"', "str"), (b"3", "int")])
def test_parse_object_refuses_non_object(body: bytes, kind: str) -> None:
    with pytest.raises(BadRequest, match=f"JSON object, got {kind}"):
        parse_object(body, max_depth=32)


@pytest.mark.parametrize("body", [b"", b"  ", b"\n\t"])
def test_parse_object_empty_body_is_empty_object(body: bytes) -> None:
    """A command without arguments may be posted with no body at all."""
    assert parse_object(body, max_depth=32) == {}


def test_parse_object_ok() -> None:
    assert parse_object(b'{"text": "caf\xc3\xa9", "n": 1.5}', max_depth=32) == {"text": "café", "n": 1.5}


# --- versions --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "key"),
    [("0", (0, 0)), ("41", (41, 0)), ("1700000000000-3", (1700000000000, 3)), ("5-0", (5, 0))],
)
def test_version_key(version: str, key: tuple[int, int]) -> None:
    assert version_key(version) == key
    assert try_version_key(version) == key


@pytest.mark.parametrize(
    "garbage", ["", "abc", "-", "1-", "-3", "1-2-3", "1.5", " 41", "41 ", "+41", "0x10", "1-a", "9" * 41, "²"]
)
def test_version_key_refuses_garbage(garbage: str) -> None:
    with pytest.raises(ValueError, match=r"not a state version|invalid literal"):
        version_key(garbage)
    assert try_version_key(garbage) is None


def test_version_key_refuses_non_ascii_digits() -> None:
    with pytest.raises(ValueError, match="not a state version"):
        version_key("\u0664\u0661")


def test_try_version_key_none() -> None:
    assert try_version_key(None) is None


def test_version_order_is_numeric() -> None:
    """Versions compare as numbers, not as strings ("10" > "9"), with the sequence part breaking ties."""
    assert version_key("10") > version_key("9")
    assert version_key("1700000000000-10") > version_key("1700000000000-9")
    assert version_key("1700000000001-0") > version_key("1700000000000-99")


def test_latest() -> None:
    assert latest([]) == ZERO == "0"
    assert latest(["9", "10", "2"]) == "10"
    assert latest(["1700000000000-9", "1700000000000-10"]) == "1700000000000-10"
    with pytest.raises(ValueError, match="not a state version"):
        latest(["1", "x"])


# --- errors ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (GatewayError("x"), 500, "internal_error"),
        (BadRequest("x"), 400, "bad_request"),
        (Unauthorized("x"), 401, "unauthorized"),
        (Forbidden("x"), 403, "forbidden"),
        (NotFound("x"), 404, "not_found"),
        (MethodNotAllowed("x", ("GET",)), 405, "method_not_allowed"),
        (PayloadTooLarge("x"), 413, "payload_too_large"),
        (UnsupportedMediaType("x"), 415, "unsupported_media_type"),
        (ValidationFailed("x"), 422, "validation_failed"),
        (TooManyRequests("x"), 429, "too_many_requests"),
        (Unavailable("x"), 503, "unavailable"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, GatewayError) else None,
)
def test_error_status_and_body(error: GatewayError, status: int, code: str) -> None:
    """Every refusal is a ``GatewayError`` whose body is ``{"error": code, "detail": text}``."""
    assert isinstance(error, GatewayError)
    assert error.status == status
    assert error.body() == {"error": code, "detail": "x"}
    assert str(error) == "x"


def test_error_headers() -> None:
    assert GatewayError("x").headers() == {}
    assert BadRequest("x").headers() == {}
    assert Unauthorized("x").headers() == {"WWW-Authenticate": 'Bearer realm="gateway"'}
    assert MethodNotAllowed("x", ("GET", "POST")).headers() == {"Allow": "GET, POST"}
    assert Unavailable("x").headers() == {"Retry-After": "1"}
    assert Unavailable("x", 7).headers() == {"Retry-After": "7"}
    assert TooManyRequests("x", retry_after=30).headers() == {"Retry-After": "30"}
    assert Unavailable("x", 7).retry_after == 7


def test_validation_failed_body_names_field_and_errors() -> None:
    errors = [{"field": "text", "message": "Field required", "type": "missing"}]
    error = ValidationFailed("text: Field required", field="text", errors=errors)
    assert error.body() == {
        "error": "validation_failed",
        "detail": "text: Field required",
        "field": "text",
        "errors": errors,
    }


def test_settings_error_message() -> None:
    """The one line the CLI prints must say which key, what value and what would have been accepted."""
    error = SettingsError("bus.history", -5, "a positive integer", source="GATEWAY_BUS_HISTORY")
    assert isinstance(error, ValueError)
    assert str(error) == "invalid setting bus.history=-5 (from GATEWAY_BUS_HISTORY): a positive integer"
    assert (error.key, error.value, error.allowed, error.source) == (
        "bus.history",
        -5,
        "a positive integer",
        "GATEWAY_BUS_HISTORY",
    )
    assert str(SettingsError("encodings", "lzma", "br, gzip, zstd, identity")) == (
        "invalid setting encodings='lzma': br, gzip, zstd, identity"
    )


# --- CommandSpec.from_handler ----------------------------------------------------------------------------

_calls: list[tuple[str, int]] = []


async def _add(text: str, n: int = 3) -> None:
    """A module-level handler: ``get_type_hints`` resolves its (postponed) annotations from this module."""
    _calls.append((text, n))


@pytest.fixture
def spec() -> CommandSpec:
    _calls.clear()
    return CommandSpec.from_handler("/todos/add", _add)


def _failure(spec: CommandSpec, body: bytes) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as info:
        spec.validate_body(body)
    assert info.value.status == 422
    return info.value


def test_command_spec_shape(spec: CommandSpec) -> None:
    assert spec.path == "/todos/add"
    assert spec.handler is _add
    assert set(spec.model.model_fields) == {"text", "n"}


@pytest.mark.parametrize("body", [b'{"text": "milk"}', b'{"text": "milk", "n": 5}', b'{"text": ""}'])
def test_valid_body(spec: CommandSpec, body: bytes) -> None:
    spec.validate_body(body)


def test_missing_field(spec: CommandSpec) -> None:
    error = _failure(spec, b'{"n": 1}')
    assert error.field == "text"
    assert error.body()["field"] == "text"
    assert error.detail.startswith("text: ")
    # An empty body is ``{}``: the required field is still missing.
    assert _failure(spec, b"").field == "text"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"text": 5}', "text"),  # no coercion of 5 -> "5"
        (b'{"text": "a", "n": "5"}', "n"),  # no coercion of "5" -> 5
        (b'{"text": "a", "n": true}', "n"),  # bool is not an int here
        (b'{"text": "a", "n": 1.5}', "n"),
        (b'{"text": null}', "text"),
        (b'{"text": ["a"]}', "text"),
    ],
)
def test_wrong_type_is_not_coerced(spec: CommandSpec, body: bytes, field: str) -> None:
    """Strict JSON types: a client bug must surface as 422 on the right field, not be silently converted."""
    assert _failure(spec, body).field == field


def test_unexpected_field(spec: CommandSpec) -> None:
    error = _failure(spec, b'{"text": "a", "colour": "red"}')
    assert error.field == "colour"
    assert error.detail == "colour: unexpected field"
    assert error.errors[0] == {"field": "colour", "message": "unexpected field", "type": "extra_forbidden"}


def test_all_errors_are_reported(spec: CommandSpec) -> None:
    """The first error names the field in ``detail``; ``errors`` carries every one for the client to show."""
    error = _failure(spec, b'{"n": "x", "extra": 1}')
    assert {e["field"] for e in error.errors} == {"text", "n", "extra"}


@pytest.mark.asyncio
async def test_run_calls_handler_with_typed_args(spec: CommandSpec) -> None:
    """A command that crossed a networked bus (only its JSON object travels) is validated again by the same
    strict JSON validator, defaults filled in."""
    async with asyncio.timeout(5):
        await spec.run("1", Command("/add", {"text": "milk"}))
        await spec.run("1", Command("/add", {"text": "eggs", "n": 12}))
    assert _calls == [("milk", 3), ("eggs", 12)]
    assert all(type(text) is str and type(n) is int for text, n in _calls)


@pytest.mark.asyncio
async def test_the_handler_receives_exactly_what_was_validated() -> None:
    """In process, the handler gets the very objects validation produced; across a bus, equal ones from the
    same validator. Neither path re-parses with other rules (a lax re-validation once accepted values the
    door had refused, and the reverse)."""
    received: list[dict[str, object]] = []

    async def handler(when: datetime, items: tuple[int, ...], tag: Literal["a", "b"] = "a") -> None:
        received.append({"when": when, "items": items, "tag": tag})

    spec = CommandSpec.from_handler("/typed", handler)
    body = b'{"when": "2026-12-07T08:00:00Z", "items": [1, 2, 3], "tag": "b"}'
    validated = spec.validate_body(body)
    async with asyncio.timeout(5):
        await spec.run("1", Command("/typed", orjson.loads(body), None, validated))
        await spec.run("1", Command("/typed", orjson.loads(body)))
    assert received[0]["items"] is validated.items  # type: ignore[attr-defined]
    assert received[0]["when"] is validated.when  # type: ignore[attr-defined]
    assert received[1] == received[0]
    assert received[0]["when"] == datetime(2026, 12, 7, 8, tzinfo=UTC)
    with pytest.raises(ValidationFailed):
        await spec.run("1", Command("/typed", {"when": "2026-12-07T08:00:00Z", "items": ["1"]}))  # strict: no coercion


def test_sync_handler_refused() -> None:
    def sync(text: str) -> None:
        """Would block the event loop; must be refused at registration."""

    with pytest.raises(TypeError, match=r"/sync.*async function"):
        CommandSpec.from_handler("/sync", sync)  # type: ignore[arg-type]


def test_var_args_refused() -> None:
    async def star(*items: str) -> None:
        """Positional-only or variadic arguments have no JSON field name."""

    with pytest.raises(TypeError, match="'items' must be a plain keyword"):
        CommandSpec.from_handler("/star", star)


def test_parse_object_brackets_inside_strings_are_not_levels() -> None:
    # More brackets than the limit (the bracket count cannot clear the body), all inside a string: one level deep.
    assert parse_object(b'{"s": "' + b"[{" * 40 + b'"}', max_depth=32) == {"s": "[{" * 40}
    with pytest.raises(BadRequest, match="deeper than 2"):
        parse_object(b'{"a": {"b": [1]}}', max_depth=2)
