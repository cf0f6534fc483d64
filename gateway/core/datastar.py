"""Datastar's events, sans-IO: typed patches framed as Datastar's SDK specification says, and read back.

A view may return typed patches instead of a string (``gateway.datastar`` re-exports them for applications):

- ``PatchElements``: ``event: datastar-patch-elements`` with ``data:`` lines ``mode``, ``selector``,
  ``useViewTransition``, ``viewTransitionSelector``, ``namespace`` (each only when not the default) and one
  ``elements`` line per line of HTML;
- ``PatchSignals``: ``event: datastar-patch-signals`` with ``onlyIfMissing`` (when true) and ``signals <json>``;
- ``ExecuteScript``: a ``PatchElements`` appending a ``<script>`` to ``body`` that removes itself.

The framing is written here rather than taken from datastar-py because the gateway needs the structured patch
(conflation reads the target and the signals), bytes with the view's version as the id of the *last* event only
(a client that reconnects half-way through a version gets all of it again), a refusal of CR/LF in single-line
fields (SSE field injection) and orjson. ``tests/test_datastar_core.py`` checks the bytes against datastar-py's
own ``ServerSentEventGenerator``.

``describe`` reads a hub event's frame back into a ``PatchInfo``, once per notification, for the conflation of a
slow client's queue (``gateway.core.mailbox``): which elements it replaces, or which signals it merges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape
from html.parser import HTMLParser
from typing import Any, Literal

import orjson

from gateway.core.mergepatch import Fold
from gateway.core.sse import encode_message, split_lines

__all__ = ["ELEMENTS", "MODES", "SIGNALS", "ExecuteScript", "Patch", "PatchElements", "PatchInfo", "PatchSignals",
           "Rendered", "describe", "encode_rendered", "encode_signals_fold"]

ELEMENTS = "datastar-patch-elements"
SIGNALS = "datastar-patch-signals"
Mode = Literal["outer", "inner", "replace", "prepend", "append", "before", "after", "remove"]
MODES: tuple[str, ...] = ("outer", "inner", "replace", "prepend", "append", "before", "after", "remove")
NAMESPACES = ("html", "svg", "mathml")


def _single_line(name: str, value: str | None) -> None:
    if value is not None and ("\r" in value or "\n" in value or "\0" in value):
        raise ValueError(f"Datastar {name} must be one line (no CR, LF or NUL): {value!r}")


@dataclass(frozen=True, slots=True)
class PatchElements:
    """Patch the page's DOM with ``elements`` (HTML): morph the element(s) with the same id (``mode="outer"``,
    the default), or place them relative to ``selector`` as ``mode`` says; ``mode="remove"`` removes
    ``selector``'s elements."""

    elements: str = ""
    selector: str | None = None
    mode: Mode = "outer"
    use_view_transition: bool = False
    view_transition_selector: str | None = None
    namespace: Literal["html", "svg", "mathml"] = "html"

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Datastar mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.namespace not in NAMESPACES:
            raise ValueError(f"Datastar namespace must be one of {', '.join(NAMESPACES)}, not {self.namespace!r}")
        _single_line("selector", self.selector)
        _single_line("view_transition_selector", self.view_transition_selector)
        if self.mode == "remove" and not (self.selector or self.elements):
            raise ValueError("a Datastar remove needs a selector or elements with ids")
        if self.mode != "remove" and not self.elements:
            raise ValueError(f"a Datastar {self.mode} patch needs elements")

    def data_lines(self) -> list[str]:
        lines = []
        if self.mode != "outer":
            lines.append(f"mode {self.mode}")
        if self.selector:
            lines.append(f"selector {self.selector}")
        if self.use_view_transition:
            lines.append("useViewTransition true")
        if self.view_transition_selector:
            lines.append(f"viewTransitionSelector {self.view_transition_selector}")
        if self.namespace != "html":
            lines.append(f"namespace {self.namespace}")
        if self.elements:
            html = split_lines(self.elements)
            if len(html) > 1 and not html[-1]:
                html.pop()  # a final line break ends the last line, it does not start another (as the SDK)
            lines.extend(f"elements {line}" for line in html)
        return lines

    def encode(self, id: str | None = None) -> bytes:
        return _event(ELEMENTS, self.data_lines(), id)


@dataclass(frozen=True, slots=True)
class PatchSignals:
    """Merge ``signals`` into the page's signals (an RFC 7386 merge patch: ``None`` removes one);
    ``only_if_missing`` sets only those the page does not have yet."""

    signals: Mapping[str, Any] = field(default_factory=dict)
    only_if_missing: bool = False

    def data_lines(self) -> list[str]:
        lines = ["onlyIfMissing true"] if self.only_if_missing else []
        text = orjson.dumps(self.signals).decode()  # compact: one line, whatever the values hold
        lines.append(f"signals {text}")
        return lines

    def encode(self, id: str | None = None) -> bytes:
        return _event(SIGNALS, self.data_lines(), id)


@dataclass(frozen=True, slots=True)
class ExecuteScript:
    """Run ``script`` in the page: a ``<script>`` appended to ``body`` that removes itself (``auto_remove``).
    ``attributes`` are added to the tag as they are (``name`` or ``name="value"``, escaped by the caller)."""

    script: str
    auto_remove: bool = True
    attributes: Sequence[str] = ()

    def as_patch(self) -> PatchElements:
        attributes = ' data-effect="el.remove()"' if self.auto_remove else ""
        if self.attributes:
            attributes += " " + " ".join(self.attributes)
        return PatchElements(f"<script{attributes}>{self.script}</script>", selector="body", mode="append")

    def encode(self, id: str | None = None) -> bytes:
        return self.as_patch().encode(id)


Patch = PatchElements | PatchSignals | ExecuteScript
Rendered = str | PatchElements | PatchSignals | ExecuteScript | Sequence[PatchElements | PatchSignals | ExecuteScript]
"""What a view may return: the data of one plain SSE event, one patch, or a list of them."""


def _event(event: str, lines: list[str], id: str | None) -> bytes:
    _single_line("id", id)
    head = f"event: {event}\n" if id is None else f"event: {event}\nid: {id}\n"
    return (head + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def encode_rendered(rendered: Rendered, id: str) -> bytes:
    """The SSE bytes of what a view returned for version ``id``: a string is one plain event (today's views);
    patches are Datastar events, the version the id of the last one only, so that a client that reconnects
    before the end of a version gets the whole of it again. An empty list still moves the client's id on."""
    if isinstance(rendered, str):
        return encode_message(rendered, id=id)
    if isinstance(rendered, PatchElements | PatchSignals | ExecuteScript):
        return rendered.encode(id)
    if not rendered:
        return f"id: {id}\n\n".encode()
    last = len(rendered) - 1
    parts = []
    for i, patch in enumerate(rendered):
        if not isinstance(patch, PatchElements | PatchSignals | ExecuteScript):
            raise TypeError(f"a view returned a list holding {type(patch).__name__}: only Datastar patches "
                            "(PatchElements, PatchSignals, ExecuteScript) may be listed")
        parts.append(patch.encode(id if i == last else None))
    return b"".join(parts)


def encode_signals_fold(folded: Fold, id: str) -> bytes:
    """The frame of folded signal patches: the reset patch (if any) then the merged one, the id on the last."""
    head = PatchSignals(folded.reset).encode() if folded.reset else b""
    return head + PatchSignals(folded.patch).encode(id)


# -- reading a hub event back, for conflation ------------------------------------------------------------------

# Which earlier patches of the same target a patch makes irrelevant: an outer morph or a replace rewrites the
# element with its attributes and children, an inner one only its children, a remove takes it away. Nothing
# supersedes an earlier remove (patching a removed element fails, keeping the earlier patch would not).
_SUPERSEDES: dict[str, frozenset[str]] = {
    "outer": frozenset({"outer", "inner", "replace"}),
    "replace": frozenset({"outer", "inner", "replace"}),
    "inner": frozenset({"inner"}),
    "remove": frozenset({"outer", "inner", "replace"}),
}


@dataclass(frozen=True, slots=True)
class PatchInfo:
    """What conflation knows of one Datastar event.

    - elements: ``target`` (``selector`` or the ids of the top-level elements) with ``mode``, when the patch
      rewrites its target (outer, inner, replace, remove); ``supersedes`` is the set of earlier modes on the
      same target it makes irrelevant.
    - signals: ``signals`` is the fold of the merge patches it carries (not ``onlyIfMissing`` ones).
    - ``barrier``: signal patches are not moved across it: an ``onlyIfMissing`` signal patch, or elements
      whose HTML holds ``data-*`` attributes (their expressions may write signals when they are patched in).
    """

    target: str | None = None
    mode: str = "outer"
    supersedes: frozenset[str] = frozenset()
    signals: Fold | None = None
    barrier: bool = False


def describe(frame: bytes) -> PatchInfo | None:
    """The ``PatchInfo`` of an SSE frame holding one Datastar event; None for anything else (a plain event,
    several events, a malformed patch) - those are never folded and never block a fold."""
    if b"event: datastar-patch-" not in frame:
        return None
    try:
        text = frame.decode()
    except UnicodeDecodeError:
        return None
    event = None
    data: list[str] = []
    for line in text.split("\n"):
        if line.startswith("event: "):
            if event is not None:
                return None  # more than one event: not ours to fold
            event = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
    if event == SIGNALS:
        return _signals_info(data)
    if event == ELEMENTS:
        return _elements_info(data)
    return None


def _signals_info(data: list[str]) -> PatchInfo:
    fields = [line.partition(" ") for line in data]
    if any(key == "onlyIfMissing" and value == "true" for key, _, value in fields):
        return PatchInfo(barrier=True)
    try:
        signals = orjson.loads("\n".join(value for key, _, value in fields if key == "signals"))
    except orjson.JSONDecodeError:
        return PatchInfo(barrier=True)
    if not isinstance(signals, dict):
        return PatchInfo(barrier=True)
    return PatchInfo(signals=Fold(patch=signals))


def _elements_info(data: list[str]) -> PatchInfo | None:
    mode, selector = "outer", ""
    html: list[str] = []
    for line in data:
        key, _, value = line.partition(" ")
        if key == "mode":
            mode = value
        elif key == "selector":
            selector = value
        elif key == "elements":
            html.append(value)
        elif key == "namespace" and value != "html":
            return PatchInfo(barrier=True)  # svg/mathml: leave them alone
    elements = "\n".join(html)
    barrier = "data-" in elements
    supersedes = _SUPERSEDES.get(mode)
    if supersedes is None:
        return PatchInfo(barrier=barrier)  # prepend, append, before, after: additive, never folded
    target = selector or _ids_target(elements)
    if not target:
        return PatchInfo(barrier=barrier)
    return PatchInfo(target=target, mode=mode, supersedes=supersedes, barrier=barrier)


_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
                   "wbr"})


class _TopLevelIds(HTMLParser):
    """The ids of the top-level elements of an HTML fragment; ``ok`` turns False when one has none."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.depth = 0
        self.ids: list[str] = []
        self.ok = True

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_startendtag(tag, attrs)
        if tag not in _VOID:
            self.depth += 1

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        """A tag that opens no content (``<br/>``); ``handle_starttag`` also notes its tags' ids here."""
        if self.depth == 0:
            element_id = dict(attrs).get("id")
            if element_id:
                self.ids.append(element_id)
            else:
                self.ok = False

    def handle_endtag(self, tag: str) -> None:
        if tag not in _VOID:
            self.depth = max(0, self.depth - 1)

    def handle_data(self, data: str) -> None:
        if self.depth == 0 and data.strip():
            self.ok = False  # top-level text: the patch is not a set of elements by id


def _ids_target(elements: str) -> str:
    """The target of a patch without selector: its top-level elements' ids (Datastar morphs each onto the
    element with the same id); empty when one of them has none."""
    parser = _TopLevelIds()
    parser.feed(elements)
    parser.close()
    if not parser.ok or not parser.ids:
        return ""
    return " ".join("#" + escape(i) for i in parser.ids)
