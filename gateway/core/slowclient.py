"""How far behind its client a stream may fall before it is cut off: per hub topic and per view, sans-IO.

The global settings (``hub.overflow_policy``, ``hub.max_buffered_events``, ``hub.max_buffered_bytes``,
``sse.slow_client_grace``) suit most routes; a ``SlowClientPolicy`` names any of them for one route, and leaves the
rest (None) to the level below. The levels, lowest first:

- hub streams: the globals < the first rule of ``hub.slow_clients`` whose ``topic`` selector matches the topic;
- views: the global grace < the view's own ``@gw.view(..., slow_client=...)`` < the first rule of
  ``sse.view_slow_clients`` whose ``path`` selector matches the view's path. The operator's settings come last
  because they are the deployment's word on a route the application only gave a default for.

Rules are ordered: the first whose selector matches applies, alone (its unset fields fall through to the level
below, never to a later rule). Selectors are those of ``hub.public_topics`` (``gateway.core.auth.matches``):
an exact name, ``prefix*``, or ``*``.

**A subscription naming several topics takes the strictest of their limits**: the smallest grace, event count and
byte count, and ``disconnect`` when any of its topics asks for it. One stream has one mailbox, so one policy must
serve every topic in it: a topic configured ``disconnect`` wants its events complete (the client resumes and the
history replays them), which it would not get if a lossy neighbour made the shared mailbox drop them; and a
smaller bound is a memory promise an operator made for that topic, whoever else shares the stream.

What the fields mean:

- ``grace``: seconds a stream may keep news undelivered while more arrives before it is cut off as too slow;
- ``overflow`` (hub only): what a full mailbox does, ``disconnect`` (the client resumes with Last-Event-ID) or
  ``drop-oldest`` (the stream stays and carries a ``gap`` event naming the first lost id);
- ``max_events`` (hub only): events a hub stream's mailbox holds;
- ``max_bytes``: for a hub stream, the bytes its mailbox holds (its socket's buffer holds at most one write more);
  for a view, the bytes it may be behind, its mailbox (one render, views conflate) plus what its socket's buffer
  holds, past which it is cut off at once (None, the default: no cap, the grace alone decides).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Self, TypeVar

from gateway.core.auth import matches
from gateway.core.mailbox import Limits

T = TypeVar("T")
Overflow = Literal["disconnect", "drop-oldest"]
OVERFLOWS: tuple[Overflow, ...] = ("disconnect", "drop-oldest")

# What a rule and the global setting of the same meaning (gateway.config declares them with these) may be.
GRACE = (0.1, 3600.0)
MAX_EVENTS = (1, 1_000_000)
MAX_BYTES = (1024, 1024**3)


class PolicyError(ValueError):
    """A field that is not allowed, with what is: settings name the key and the source around it."""

    def __init__(self, field: str, value: object, allowed: str) -> None:
        super().__init__(f"{field}={value!r}: {allowed}")
        self.field = field
        self.value = value
        self.allowed = allowed


def _number(field: str, value: object, low: float, high: float, unit: str, integer: bool) -> None:
    kind = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        noun, shown = ("an integer", f"{low:.0f} to {high:.0f}") if integer else ("a number", f"{low:g} to {high:g}")
        raise PolicyError(field, value, f"must be {noun} from {shown}{unit}")


@dataclass(frozen=True, slots=True)
class SlowClientPolicy:
    """What one route allows a slow client; a field left None takes the level below (see the module)."""

    grace: float | None = None
    max_bytes: int | None = None
    max_events: int | None = None
    overflow: Overflow | None = None

    def __post_init__(self) -> None:
        if self.grace is not None:
            _number("grace", self.grace, *GRACE, " s", integer=False)
        if self.max_bytes is not None:
            _number("max_bytes", self.max_bytes, *MAX_BYTES, " bytes", integer=True)
        if self.max_events is not None:
            _number("max_events", self.max_events, *MAX_EVENTS, "", integer=True)
        if self.overflow is not None and self.overflow not in OVERFLOWS:
            raise PolicyError("overflow", self.overflow, f"must be one of {', '.join(OVERFLOWS)}")

    def check_view(self) -> None:
        """Views conflate (their mailbox holds the newest render only): an event bound or an overflow policy
        would mean nothing for them, so naming one is a mistake worth refusing."""
        for name in ("max_events", "overflow"):
            if getattr(self, name) is not None:
                raise PolicyError(name, getattr(self, name), "does not apply to a view (views conflate): "
                                  "give grace and max_bytes only")

    def over_hub(self, base: HubLimits) -> HubLimits:
        """This policy's fields where set, ``base``'s elsewhere."""
        mailbox = base.mailbox
        return HubLimits(Limits(_pick(self.max_events, mailbox.max_items), _pick(self.max_bytes, mailbox.max_bytes),
                                _pick(self.overflow, mailbox.policy)), _pick(self.grace, base.grace))

    def over_view(self, base: ViewLimits) -> ViewLimits:
        return ViewLimits(_pick(self.grace, base.grace), _pick(self.max_bytes, base.max_bytes))


def _pick(mine: T | None, base: T) -> T:
    return base if mine is None else mine


NO_POLICY = SlowClientPolicy()


@dataclass(frozen=True, slots=True)
class HubLimits:
    """What one hub stream allows, every field decided: its mailbox's bounds and policy, and the grace."""

    mailbox: Limits
    grace: float

    def strictest(self, other: HubLimits) -> HubLimits:
        """The limits a stream shared by two topics keeps (the module says why)."""
        a, b = self.mailbox, other.mailbox
        policy: Overflow = "disconnect" if "disconnect" in (a.policy, b.policy) else "drop-oldest"
        return HubLimits(Limits(min(a.max_items, b.max_items), min(a.max_bytes, b.max_bytes), policy),
                         min(self.grace, other.grace))


@dataclass(frozen=True, slots=True)
class ViewLimits:
    """What one view stream allows, every field decided: the grace, and the cap on bytes behind (None: none)."""

    grace: float
    max_bytes: int | None = None


@dataclass(frozen=True, slots=True, repr=False)
class Rule:
    """One entry of an ordered rule list: a selector and the policy of what it matches.

    Written as a TOML table in a file (``[[hub.slow_clients]]``) or a JSON object in the environment; ``repr`` is
    the TOML inline table, so ``gateway check`` prints the setting as it could be written."""

    selector: str
    policy: SlowClientPolicy

    SELECTOR: ClassVar[str] = ""  # the table key holding the selector
    FIELDS: ClassVar[tuple[str, ...]] = ()  # the policy fields a table may set

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> Self:
        """A rule from its table; ``PolicyError`` names the first field that is wrong."""
        allowed = (cls.SELECTOR, *cls.FIELDS)
        for key, value in table.items():
            if key not in allowed:
                raise PolicyError(key, value, f"not a field of this rule; allowed: {', '.join(allowed)}")
        selector = table.get(cls.SELECTOR)
        if selector is None:
            raise PolicyError(cls.SELECTOR, None, f"every rule needs one: {cls._selector_help()}")
        cls.check_selector(selector)
        return cls(selector, SlowClientPolicy(**{name: table[name] for name in cls.FIELDS if name in table}))

    @classmethod
    def _selector_help(cls) -> str:
        return "an exact name, prefix* or *, 1-256 visible ASCII characters"

    @classmethod
    def check_selector(cls, selector: object) -> None:
        if not (isinstance(selector, str) and 1 <= len(selector) <= 256
                and all(33 <= ord(ch) <= 126 for ch in selector) and cls._fits(selector)):
            raise PolicyError(cls.SELECTOR, selector, f"must be a selector: {cls._selector_help()}")

    @classmethod
    def _fits(cls, selector: str) -> bool:
        return True

    def __repr__(self) -> str:
        shown = [(self.SELECTOR, self.selector)] + [
            (name, value) for name in self.FIELDS if (value := getattr(self.policy, name)) is not None]
        return "{" + ", ".join(f"{key} = {json.dumps(value)}" for key, value in shown) + "}"


@dataclass(frozen=True, slots=True, repr=False)
class TopicRule(Rule):
    """A rule of ``hub.slow_clients``: which hub topics it covers, and every knob of a hub stream."""

    SELECTOR: ClassVar[str] = "topic"
    FIELDS: ClassVar[tuple[str, ...]] = ("overflow", "max_events", "max_bytes", "grace")


@dataclass(frozen=True, slots=True, repr=False)
class ViewRule(Rule):
    """A rule of ``sse.view_slow_clients``: which view paths (as registered, templates included) it covers."""

    SELECTOR: ClassVar[str] = "path"
    FIELDS: ClassVar[tuple[str, ...]] = ("grace", "max_bytes")

    @classmethod
    def _selector_help(cls) -> str:
        return "a view path as registered (/rooms/{room}/updates), a /prefix* or *"

    @classmethod
    def _fits(cls, selector: str) -> bool:
        return selector == "*" or selector.startswith("/")


def first_match(rules: Sequence[Rule], name: str) -> SlowClientPolicy:
    """The policy of the first rule that covers ``name``; none at all when no rule does."""
    for rule in rules:
        if matches((rule.selector,), name):
            return rule.policy
    return NO_POLICY


def hub_limits(topics: Iterable[str], rules: Sequence[TopicRule], base: HubLimits) -> HubLimits:
    """The limits of a subscription to ``topics``: each topic's first matching rule over ``base``, then the
    strictest of them."""
    if not rules:
        return base
    found: HubLimits | None = None
    for topic in topics:
        limits = first_match(rules, topic).over_hub(base)
        found = limits if found is None else found.strictest(limits)
    return base if found is None else found


def view_limits(path: str, declared: SlowClientPolicy | None, rules: Sequence[ViewRule],
                base: ViewLimits) -> ViewLimits:
    """The limits of view ``path``: the global ones, under the view's declared policy, under the first rule."""
    return first_match(rules, path).over_view((declared or NO_POLICY).over_view(base))
