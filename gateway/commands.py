"""Command handlers and the validation of their arguments from the handler's own signature.

``@gw.command("/todos/add")`` on ``async def add(text: str) -> None`` declares a command whose JSON body must be
``{"text": <string>}``: the annotated parameters become a pydantic model (``extra="forbid"``, strict JSON types),
so a wrong type, a missing field or an unexpected one is refused with 422 *before* anything reaches the bus, and
the error names the field. ``Annotated`` constraints (``Field(max_length=500)``) and pydantic models work as
parameter types.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import orjson
import pydantic
from pydantic import ConfigDict

from gateway.bus.base import Command
from gateway.core.errors import ValidationFailed

Handler = Callable[..., Awaitable[None]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A registered command: its path (also its name on the bus), handler and argument model."""

    path: str
    handler: Handler
    model: type[pydantic.BaseModel]

    @classmethod
    def from_handler(cls, path: str, handler: Handler) -> CommandSpec:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"command handler for {path} must be an async function")
        hints = get_type_hints(handler, include_extras=True)
        fields: dict[str, Any] = {}
        for name, param in inspect.signature(handler).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise TypeError(f"command handler for {path}: parameter {name!r} must be a plain keyword")
            annotation = hints.get(name, Any)
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[name] = (annotation, default)
        model = pydantic.create_model(
            f"Command_{handler.__name__}",
            __config__=ConfigDict(extra="forbid", strict=True),
            **fields,
        )
        return cls(path, handler, model)

    def validate_body(self, body: bytes) -> pydantic.BaseModel:
        """Strict validation of an already well-formed JSON object body; raises ``ValidationFailed``.

        The model returned is what the handler receives: one validator (pydantic's, in strict JSON mode) decides
        both whether a command is accepted and the values it runs with."""
        try:
            return self.model.model_validate_json(body or b"{}", strict=True)
        except pydantic.ValidationError as exc:
            raise as_validation_failed(exc) from exc

    def arguments(self, command: Command) -> dict[str, Any]:
        """The handler's keyword arguments for an accepted command: the model validated when it was accepted
        (in-process bus), or the same JSON object validated again by the same validator (a command that crossed
        a networked bus, whose JSON form is all that travels)."""
        model = command.validated
        if not isinstance(model, self.model):
            model = self.validate_body(orjson.dumps(dict(command.args)))
        return {name: getattr(model, name) for name in type(model).model_fields}

    async def run(self, command: Command) -> None:
        await self.handler(**self.arguments(command))


def as_validation_failed(exc: pydantic.ValidationError) -> ValidationFailed:
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in err["loc"]) or "(body)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unexpected field"
        errors.append({"field": field, "message": message, "type": err["type"]})
    first = errors[0]
    return ValidationFailed(f"{first['field']}: {first['message']}", field=first["field"], errors=errors)
