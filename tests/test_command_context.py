"""The command context: declared by a handler parameter's type, kept out of the body, filled when it runs."""

from __future__ import annotations

import asyncio

import pytest

from gateway import CommandContext
from gateway.bus import Command
from gateway.commands import CommandSpec
from gateway.core.auth import parse_cookies
from gateway.core.errors import ValidationFailed

pytestmark = pytest.mark.unit

received: list[tuple[str, CommandContext]] = []


async def add(text: str, ctx: CommandContext) -> None:
    received.append((text, ctx))


def test_the_context_parameter_is_not_part_of_the_body() -> None:
    spec = CommandSpec.from_handler("/add", add)
    assert set(spec.model.model_fields) == {"text"}
    assert spec.context_param == "ctx"
    with pytest.raises(ValidationFailed) as caught:
        spec.validate_body(b'{"text": "a", "ctx": {"command_id": "forged"}}')
    assert caught.value.field == "ctx"


def test_any_name_but_only_one_context() -> None:
    async def named(anything: CommandContext) -> None: ...

    async def twice(a: CommandContext, b: CommandContext) -> None: ...

    assert CommandSpec.from_handler("/named", named).context_param == "anything"
    with pytest.raises(TypeError, match=r"/twice.*'a' and 'b'"):
        CommandSpec.from_handler("/twice", twice)


@pytest.mark.asyncio
async def test_the_handler_gets_its_context_at_run_time() -> None:
    received.clear()
    spec = CommandSpec.from_handler("/add", add)
    claims = {"sub": "ann", "mercure": {"publish": ["todos"]}}
    context = {"client": "203.0.113.9", "headers": {"x-trace": "t-1"}, "cookies": {"theme": "dark"},
               "identity": claims, "path": {"id": "7"}}
    async with asyncio.timeout(5):
        await spec.run("1-0", Command("/add", {"text": "milk"}, "key-1", context=context, delivery=2))
        await spec.run("2", Command("/add", {"text": "eggs"}))  # an entry written without a context
    (_, ctx), (_, bare) = received
    assert ctx == CommandContext("1-0", "key-1", "203.0.113.9", {"x-trace": "t-1"}, {"theme": "dark"},
                                 ctx.identity, {"id": "7"}, delivery=2)
    assert ctx.identity is not None
    assert (ctx.identity.subject, ctx.identity.publish) == ("ann", ("todos",))
    assert bare == CommandContext("2")


def test_a_handler_without_a_context_runs_as_before() -> None:
    async def plain(text: str) -> None: ...

    spec = CommandSpec.from_handler("/plain", plain)
    assert spec.context_param is None
    assert spec.arguments(Command("/plain", {"text": "a"}, context={"client": "x"}), "1") == {"text": "a"}


def test_delivery_counts_from_one() -> None:
    with pytest.raises(ValueError, match="starts at 1"):
        Command("/add", delivery=0)


def test_cookies_are_parsed_as_browsers_send_them() -> None:
    assert parse_cookies('theme=dark; gateway_token="abc"; theme=light, lang=en') == {
        "theme": "dark", "gateway_token": "abc", "lang": "en"}
    assert parse_cookies(None) == {}
