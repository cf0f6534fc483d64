"""Command handlers and the validation of their arguments from the handler's own signature.

``@gw.command("/todos/add")`` on ``async def add(text: str) -> None`` declares a command whose JSON body must be
``{"text": <string>}``: the annotated parameters become a pydantic model (``extra="forbid"``, strict JSON types),
so a wrong type, a missing field or an unexpected one is refused with 422 *before* anything reaches the bus, and
the error names the field. ``@gw.command(path, extra="ignore")`` ignores members the handler does not declare
instead (Datastar posts all of a page's signals); they are dropped before the command goes on the bus.
``Annotated`` constraints (``Field(max_length=500)``) and pydantic models work as parameter types.

A path template's values (``@gw.command("/todos/{id}/toggle")`` on ``async def toggle(id: int)``) are parameters
too, validated by a model of their own: from the path's text, so ``"7"`` is an ``int`` 7 there (pydantic's lax
mode; the body stays strict JSON). A path parameter is not part of the body, and one the handler does not declare
is a registration error.

A parameter annotated ``CommandContext`` (any name) is not part of the body: it is filled when the command runs
with what the gateway knows about it (``CommandContext``). The context crosses a networked bus next to the
arguments (``Command.context``, plain JSON), so a handler sees the same context whichever process runs it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_type_hints

import orjson
import pydantic
from pydantic import ConfigDict

from gateway.bus.base import Command
from gateway.core.auth import Identity
from gateway.core.errors import ValidationFailed
from gateway.core.paths import PathTemplate

Handler = Callable[..., Awaitable[None]]
Extra = Literal["forbid", "ignore"]


@dataclass(frozen=True, slots=True)
class CommandContext:
    """What a handler may know about its command besides the validated arguments.

    - ``command_id``: the bus's id of the command (the ``command-id`` response header; the in-memory bus's counter,
      the Redis Stream entry id). A command run again after a crash (Redis bus) has the same id: deduplicate on it.
    - ``idempotency_key``: the request's ``Idempotency-Key``, or None.
    - ``client``: the client's address, taken from ``X-Forwarded-For`` only when the peer is a trusted proxy
      (``limits.trusted_proxies``), as the rate limits do.
    - ``headers`` (lower-case names) and ``cookies``: the request's, *minus its credentials*: ``Authorization``,
      ``Proxy-Authorization`` and ``Cookie`` are left out of ``headers``, and the token cookie (``auth.cookie``)
      out of ``cookies``. A handler never holds the raw token; it gets what the token proved: ``identity``.
    - ``identity``: the request's verified token (``gateway.core.auth.Identity``), or None without one.
    - ``path_params``: the path template's values as they came in the path (strings); the handler's typed
      parameters of the same names hold the validated values.
    - ``delivery``: 1 for the first run; more when the Redis bus runs it again because the process that had it
      died before acknowledging it (the in-memory bus never redelivers).
    - ``accepted_at``: when the gateway accepted it (``time.time()`` of the process that answered 204), or None.
    """

    command_id: str
    idempotency_key: str | None = None
    client: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    identity: Identity | None = None
    path_params: Mapping[str, str] = field(default_factory=dict)
    delivery: int = 1
    accepted_at: float | None = None

    @classmethod
    def of(cls, command_id: str, command: Command) -> CommandContext:
        """The context of an accepted command, from what travelled with it (``Command.context``)."""
        carried = command.context
        claims = carried.get("identity")
        return cls(
            command_id=command_id,
            idempotency_key=command.idempotency_key,
            client=carried.get("client"),
            headers=dict(carried.get("headers", {})),
            cookies=dict(carried.get("cookies", {})),
            identity=Identity.from_claims(claims) if isinstance(claims, Mapping) else None,
            path_params=dict(carried.get("path", {})),
            delivery=command.delivery,
            accepted_at=accepted if isinstance(accepted := carried.get("accepted"), int | float) else None,
        )


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """A registered command: its path (also its name on the bus), handler and argument model, and the name of
    the parameter that receives the ``CommandContext`` (None when the handler takes none)."""

    path: str
    handler: Handler
    model: type[pydantic.BaseModel]
    context_param: str | None = None
    path_model: type[pydantic.BaseModel] | None = None  # the path template's values, when it has any
    extra: Extra = "forbid"

    @classmethod
    def from_handler(cls, path: str, handler: Handler, extra: Extra = "forbid") -> CommandSpec:
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"command handler for {path} must be an async function")
        hints = get_type_hints(handler, include_extras=True)
        fields: dict[str, Any] = {}
        path_fields: dict[str, Any] = {}
        path_names = PathTemplate.parse(path).params
        context_param = None
        for name, param in inspect.signature(handler).parameters.items():
            if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
                raise TypeError(f"command handler for {path}: parameter {name!r} must be a plain keyword")
            annotation = hints.get(name, Any)
            if annotation is CommandContext:
                if context_param is not None:
                    raise TypeError(f"command handler for {path}: one CommandContext parameter at most, "
                                    f"not {context_param!r} and {name!r}")
                context_param = name
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            (path_fields if name in path_names else fields)[name] = (annotation, default)
        if missing := [name for name in path_names if name not in path_fields]:
            raise TypeError(f"command handler for {path}: the path's {{{missing[0]}}} must be a parameter of the "
                            f"handler (and not its CommandContext)")
        if extra not in ("forbid", "ignore"):
            raise ValueError(f"command {path}: extra must be 'forbid' or 'ignore', not {extra!r}")
        model = pydantic.create_model(
            f"Command_{handler.__name__}",
            __config__=ConfigDict(extra=extra, strict=True),
            **fields,
        )
        path_model = path_values_model(f"Path_{handler.__name__}", path_fields) if path_fields else None
        return cls(path, handler, model, context_param, path_model, extra)

    def declared(self, args: dict[str, Any]) -> dict[str, Any]:
        """The members of a body object the handler declares: with ``extra="ignore"``, the others (a Datastar
        page's other signals) do not travel on the bus."""
        if self.extra == "forbid":
            return args
        fields = self.model.model_fields
        return {name: value for name, value in args.items() if name in fields}

    def validate_body(self, body: bytes) -> pydantic.BaseModel:
        """Strict validation of an already well-formed JSON object body; raises ``ValidationFailed``.

        The model returned is what the handler receives: one validator (pydantic's, in strict JSON mode) decides
        both whether a command is accepted and the values it runs with."""
        try:
            return self.model.model_validate_json(body or b"{}", strict=True)
        except pydantic.ValidationError as exc:
            raise as_validation_failed(exc) from exc

    def validate_path(self, values: Mapping[str, str]) -> pydantic.BaseModel | None:
        """The path template's values, typed (from text: lax); raises ``ValidationFailed`` naming the field."""
        return None if self.path_model is None else validate_path_values(self.path_model, values)

    def arguments(self, command: Command, command_id: str = "") -> dict[str, Any]:
        """The handler's keyword arguments for an accepted command: the model validated when it was accepted
        (in-process bus), or the same JSON object validated again by the same validator (a command that crossed
        a networked bus, whose JSON form is all that travels); the path's values, typed again from the text that
        was validated when it was accepted; and its context, when the handler asks for it."""
        model = command.validated
        if not isinstance(model, self.model):
            model = self.validate_body(orjson.dumps(dict(command.args)))
        arguments = {name: getattr(model, name) for name in type(model).model_fields}
        path = self.validate_path(command.context.get("path", {}))
        if path is not None:
            arguments.update((name, getattr(path, name)) for name in type(path).model_fields)
        if self.context_param is not None:
            arguments[self.context_param] = CommandContext.of(command_id, command)
        return arguments

    async def run(self, command_id: str, command: Command) -> None:
        await self.handler(**self.arguments(command, command_id))


def path_values_model(name: str, fields: Mapping[str, Any]) -> type[pydantic.BaseModel]:
    """The model of a path template's values: typed from the path's text (lax), other template names ignored."""
    return pydantic.create_model(name, __config__=ConfigDict(extra="ignore"), **fields)


def validate_path_values(model: type[pydantic.BaseModel], values: Mapping[str, str]) -> pydantic.BaseModel:
    """Typed path values; raises ``ValidationFailed`` naming the field."""
    try:
        return model.model_validate(dict(values))
    except pydantic.ValidationError as exc:
        raise as_validation_failed(exc) from exc


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
