"""Path templates: the matcher (``gateway.core.paths``) and how commands and views declare their values."""

from __future__ import annotations

import asyncio

import pytest

from gateway import CommandContext, Gateway
from gateway.bus import Command
from gateway.commands import CommandSpec
from gateway.core.errors import ValidationFailed
from gateway.core.paths import PathTemplate, first_match
from gateway.web.asgi_util import StreamRequest

pytestmark = pytest.mark.unit


def test_a_name_matches_one_non_empty_segment() -> None:
    toggle = PathTemplate.parse("/todos/{id}/toggle")
    assert toggle.params == ("id",)
    assert toggle.match("/todos/7/toggle") == {"id": "7"}
    assert toggle.match("/todos/a%2Fb/toggle") == {"id": "a%2Fb"}
    for path in ("/todos//toggle", "/todos/7/8/toggle", "/todos/7", "/todos/7/toggle/", "/todo/7/toggle"):
        assert toggle.match(path) is None, path


def test_literal_paths_match_only_themselves() -> None:
    plain = PathTemplate.parse("/todos/add")
    assert plain.params == ()
    assert plain.match("/todos/add") == {}
    assert plain.match("/todos/ad") is None


@pytest.mark.parametrize("path", ["/todos/x{id}", "/todos/{id}{n}", "/todos/{1d}", "/todos/{id}/{id}", "/a/}"])
def test_malformed_templates_are_refused(path: str) -> None:
    with pytest.raises(ValueError, match="path"):
        PathTemplate.parse(path)


def test_templates_are_tried_in_order() -> None:
    templates = [PathTemplate.parse("/a/{x}/c"), PathTemplate.parse("/a/b/{y}")]
    found = first_match(templates, "/a/b/c")
    assert found is not None
    assert found == (templates[0], {"x": "b"})
    assert first_match(templates, "/a/z/z") is None
    assert PathTemplate.parse("/a/{x}").shape == PathTemplate.parse("/a/{y}").shape


async def toggle(id: int, done: bool, ctx: CommandContext) -> None:
    seen.append((id, done, ctx.path_params))


seen: list[tuple[int, bool, object]] = []


def test_path_values_are_typed_parameters_but_not_body_fields() -> None:
    spec = CommandSpec.from_handler("/todos/{id}/toggle", toggle)
    assert set(spec.model.model_fields) == {"done"}
    with pytest.raises(ValidationFailed) as caught:
        spec.validate_body(b'{"done": true, "id": 3}')
    assert caught.value.field == "id"
    assert spec.validate_path({"id": "7"}).id == 7  # type: ignore[union-attr]
    with pytest.raises(ValidationFailed) as caught:
        spec.validate_path({"id": "seven"})
    assert caught.value.field == "id"


@pytest.mark.asyncio
async def test_the_handler_gets_the_typed_path_value() -> None:
    seen.clear()
    spec = CommandSpec.from_handler("/todos/{id}/toggle", toggle)
    async with asyncio.timeout(5):
        await spec.run("1", Command("/todos/{id}/toggle", {"done": True}, context={"path": {"id": "7"}}))
    assert seen == [(7, True, {"id": "7"})]


def test_a_path_value_the_handler_does_not_take_is_a_registration_error() -> None:
    async def anonymous(done: bool) -> None: ...

    async def context_named(ctx: CommandContext) -> None: ...

    with pytest.raises(TypeError, match=r"\{id\} must be a parameter"):
        CommandSpec.from_handler("/todos/{id}/toggle", anonymous)
    with pytest.raises(TypeError, match=r"\{ctx\} must be a parameter"):
        CommandSpec.from_handler("/todos/{ctx}", context_named)


def test_registration_refuses_shadowing_templates() -> None:
    gw = Gateway()

    @gw.command("/todos/{id}/toggle")
    async def first(id: int) -> None: ...

    with pytest.raises(ValueError, match="matches the same paths"):
        @gw.command("/todos/{key}/toggle")
        async def second(key: str) -> None: ...

    with pytest.raises(ValueError, match=r"own /hub/publish"):
        @gw.command("/hub/{what}")
        async def stealing(what: str) -> None: ...


def test_a_view_with_path_values_takes_the_request() -> None:
    gw = Gateway()

    with pytest.raises(TypeError, match="must take the request"):
        @gw.view("/rooms/{room}/updates", topics=["rooms"])
        async def shared() -> str:
            return ""

    @gw.view("/rooms/{room}/updates", topics=["rooms"])
    async def per_room(request: StreamRequest) -> str:
        return request.path_params["room"]


def test_a_view_may_take_its_path_values_typed() -> None:
    gw = Gateway()

    @gw.view("/boards/{board}/cards/{n}", topics=["boards"])
    async def card(request: StreamRequest, n: int) -> str:
        return f"{n}"

    with pytest.raises(TypeError, match=r"parameter 'm' is not a value of the path"):
        @gw.view("/boards/{board}/lists/{n}", topics=["boards"])
        async def wrong(request: StreamRequest, m: int) -> str:
            return f"{m}"


@pytest.mark.asyncio
async def test_a_typed_view_renders_with_typed_values() -> None:
    gw = Gateway()

    @gw.view("/boards/{board}/cards/{n}", topics=["boards"])
    async def card(request: StreamRequest, n: int) -> str:
        return f"{n!r}:{type(n).__name__}"

    spec = gw._views["/boards/{board}/cards/{n}"]
    assert spec.per_request_render is not None
    request = StreamRequest("GET", "/boards/a/cards/4", {}, {}, None, "1.1", {"board": "a", "n": "4"})
    async with asyncio.timeout(5):
        assert await spec.per_request_render(request) == "4:int"
