"""Checks on a command's request body, before anything reaches the bus.

Order matters and mirrors the status codes: the media type and content coding are judged from headers alone
(415), the size from the bytes (413), then syntax (400: orjson refuses NaN and Infinity, which are not JSON),
then shape (400: nesting deeper than a sane limit, a top level that is not an object).
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.core.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType


def check_headers(content_type: str | None, content_encoding: str | None) -> None:
    """Refuse compressed bodies (the gateway never inflates client input) and non-JSON media types.

    A command without arguments needs the JSON media type too: a body-less POST with no Content-Type is what a
    cross-site ``fetch(..., {mode: "no-cors"})`` or ``navigator.sendBeacon`` sends without a preflight."""
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType(
            f"request bodies must not be compressed (Content-Encoding: {content_encoding.strip()})"
        )
    if content_type is None or not content_type.strip():
        raise UnsupportedMediaType("Content-Type must be application/json")
    media, _, params = content_type.partition(";")
    media = media.strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {media!r}")
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset" and value.strip().strip('"').lower() not in ("utf-8", "utf8"):
            raise UnsupportedMediaType(f"JSON must be UTF-8, got charset={value.strip()}")


def check_size(length: int, limit: int) -> None:
    if length > limit:
        raise PayloadTooLarge(f"request body is {length} bytes; the limit is {limit} bytes")


def depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value (scalars are 0), computed without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            level += 1
            stack.extend((v, level) for v in node.values())
        elif isinstance(node, list):
            level += 1
            stack.extend((v, level) for v in node)
        deepest = max(deepest, level)
    return deepest


def parse_object(body: bytes, *, max_depth: int) -> dict[str, Any]:
    """Parse a command body into a JSON object; an empty body is ``{}``."""
    if not body.strip():
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if any(word in body for word in (b"NaN", b"Infinity")):
            raise BadRequest(f"malformed JSON: NaN and Infinity are not JSON numbers ({exc})") from exc
        raise BadRequest(f"malformed JSON: {exc}") from exc
    # Each level of nesting opens with a bracket, so a body with no more brackets than ``max_depth`` (counted in C,
    # those inside strings too) cannot be too deep: the walk is left for the bodies that might be.
    if body.count(b"{") + body.count(b"[") > max_depth and depth(value) > max_depth:
        raise BadRequest(f"JSON nested deeper than {max_depth} levels")
    if not isinstance(value, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(value).__name__}")
    return value
