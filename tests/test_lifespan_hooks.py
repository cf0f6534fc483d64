"""Registering the app's lifespan hooks (their runs are tested live in ``test_command_context_live.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest

from gateway import Gateway

pytestmark = pytest.mark.unit


def test_hooks_must_be_async() -> None:
    gw = Gateway()

    def blocking() -> None: ...

    with pytest.raises(TypeError, match=r"on_startup hook 'blocking' must be an async function"):
        gw.on_startup(blocking)  # type: ignore[type-var]  # a sync hook on purpose: the check under test
    with pytest.raises(TypeError, match=r"on_shutdown hook"):
        gw.on_shutdown(blocking)  # type: ignore[type-var]  # likewise


def test_decorators_return_what_they_register() -> None:
    gw = Gateway()

    async def opened() -> None: ...

    @contextlib.asynccontextmanager
    async def held() -> AsyncIterator[None]:
        yield

    assert gw.on_startup(opened) is opened
    assert gw.on_shutdown(opened) is opened
    assert gw.lifespan(held) is held
