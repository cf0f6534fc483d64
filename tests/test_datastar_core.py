"""Datastar framing (checked against Datastar's own Python SDK), reading patches back, and their conflation in a
slow client's mailbox."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from datastar_py.sse import ServerSentEventGenerator as SDK
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.datastar import (
    ExecuteScript,
    PatchElements,
    PatchInfo,
    PatchSignals,
    describe,
    encode_rendered,
)
from gateway.core.encoders import create_encoder
from gateway.core.mailbox import BoundedMailbox, Limits, PutResult
from gateway.core.mergepatch import apply
from gateway.core.sse import SSEParser
from gateway.core.stream import Frame, SSEStream, Timing
from gateway.core.versions import version_key

pytestmark = pytest.mark.unit

LINE = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0\x0b\x0c\x1c\x1d\x1e\x85"
                             "\u2028\u2029"), max_size=20)
HTML = st.lists(LINE, min_size=1, max_size=4).map("\n".join).filter(bool)
MODES = st.sampled_from(["outer", "inner", "replace", "prepend", "append", "before", "after"])


@settings(max_examples=300, deadline=None)
@given(HTML, st.none() | LINE.filter(bool), MODES, st.booleans(), st.none() | LINE.filter(bool),
       st.none() | st.text("0123456789abc-", min_size=1, max_size=8))
def test_patch_elements_bytes_equal_the_sdk(elements: str, selector: str | None, mode: Any, transition: bool,
                                            transition_selector: str | None, event_id: str | None) -> None:
    ours = PatchElements(elements, selector=selector, mode=mode, use_view_transition=transition,
                         view_transition_selector=transition_selector).encode(event_id)
    theirs = SDK.patch_elements(elements, selector=selector, mode=mode, use_view_transition=transition,
                                view_transition_selector=transition_selector, event_id=event_id)
    assert ours == theirs.encode()


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text("abcxyz_", min_size=1, max_size=5),
                       st.none() | st.integers(-(2**53), 2**53) | st.booleans() | st.text("ab c", max_size=5),
                       max_size=4),
       st.booleans())
def test_patch_signals_bytes_equal_the_sdk(signals: dict[str, Any], only_if_missing: bool) -> None:
    ours = PatchSignals(signals, only_if_missing=only_if_missing).encode("7")
    theirs = SDK.patch_signals(signals, event_id="7", only_if_missing=only_if_missing)
    assert ours == theirs.encode()


def test_execute_script_and_remove_equal_the_sdk() -> None:
    assert ExecuteScript("console.log(1)").encode() == SDK.execute_script("console.log(1)").encode()
    assert (ExecuteScript("go()", auto_remove=False, attributes=['type="module"']).encode()
            == SDK.execute_script("go()", auto_remove=False, attributes=['type="module"']).encode())
    assert (PatchElements(selector="#gone", mode="remove").encode()
            == SDK.remove_elements("#gone").encode())


@pytest.mark.parametrize("bad", [{"selector": "#a\ndata: elements <b>"}, {"selector": "#a\r"},
                                 {"view_transition_selector": "x\ny"}, {"mode": "sideways"},
                                 {"namespace": "xml"}])
def test_single_line_fields_refuse_line_breaks_and_unknown_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"one line|must be one of"):
        PatchElements("<p id=a></p>", **bad)


def test_a_patch_needs_something_to_patch() -> None:
    with pytest.raises(ValueError, match="needs elements"):
        PatchElements("")
    with pytest.raises(ValueError, match="remove needs"):
        PatchElements(mode="remove")
    with pytest.raises(ValueError, match="one line"):
        PatchSignals({"a": 1}).encode("1\n2")


def test_a_view_result_carries_the_version_on_its_last_event_only() -> None:
    data = encode_rendered([PatchElements('<ul id="list"></ul>'), PatchSignals({"n": 1})], "v7")
    events = SSEParser().feed(data)
    assert [e.event for e in events] == ["datastar-patch-elements", "datastar-patch-signals"]
    assert data.count(b"id: ") == 1
    assert data.index(b"id: v7") > data.index(b"datastar-patch-signals")
    assert encode_rendered("<p>hi</p>", "3") == b"id: 3\ndata: <p>hi</p>\n\n"
    assert encode_rendered([], "4") == b"id: 4\n\n"
    with pytest.raises(TypeError, match="only Datastar patches"):
        encode_rendered(["<p>"], "5")  # type: ignore[list-item]


# -- reading patches back -------------------------------------------------------------------------------------

def hub(patch: PatchElements | PatchSignals, event_id: str) -> bytes:
    """A hub frame as fan-out makes it: the id line, then the publisher's event."""
    return f"id: {event_id}\n".encode() + patch.encode()


def test_describe_reads_targets_modes_and_signals() -> None:
    info = describe(hub(PatchElements('<div id="cpu">1</div>'), "1"))
    assert info is not None
    assert info.target == "#cpu"
    assert info.mode == "outer"
    assert not info.barrier
    info = describe(hub(PatchElements("<b>x</b>", selector="#list", mode="inner"), "1"))
    assert info is not None
    assert info.target == "#list"
    assert info.supersedes == {"inner"}
    info = describe(hub(PatchElements('<li id="x" data-on:click="@post(\'/a\')">x</li>'), "1"))
    assert info is not None
    assert info.target == "#x"
    assert info.barrier
    assert describe(hub(PatchElements("<b>x</b>", selector="#list", mode="append"), "1")) == PatchInfo()
    assert describe(hub(PatchElements("<p>no id</p>"), "1")) == PatchInfo()  # nothing to key it on
    info = describe(hub(PatchSignals({"a": {"b": 1}}), "1"))
    assert info is not None
    assert info.signals is not None
    assert info.signals.patch == {"a": {"b": 1}}
    assert describe(hub(PatchSignals({"a": 1}, only_if_missing=True), "1")) == PatchInfo(barrier=True)
    assert describe(b"id: 1\nevent: tick\ndata: 1\n\n") is None
    assert describe(b"id: 1\ndata: datastar-patch-elements\n\n") is None


# -- conflation in the mailbox --------------------------------------------------------------------------------

def frame(patch: PatchElements | PatchSignals, n: int) -> Frame:
    data = hub(patch, str(n))
    return Frame(version_key(str(n)), str(n), data, str(n), describe(data))


def stream(limits: Limits) -> SSEStream:
    return SSEStream(BoundedMailbox(limits), create_encoder("identity"), Timing(grace=60), now=0.0)


def feed_all(s: SSEStream, frames: list[Frame]) -> None:
    for f in frames:
        s.feed(f, len(f.data or b""), now=0.0)


def queued(s: SSEStream) -> list[Frame]:
    assert isinstance(s.mailbox, BoundedMailbox)
    return s.mailbox.take_all()


def test_a_newer_patch_of_the_same_element_replaces_the_queued_one() -> None:
    s = stream(Limits(max_items=100))
    s.start(b"", 0.0)  # the stream is writing: everything fed now waits in the mailbox
    feed_all(s, [frame(PatchElements(f'<div id="cpu">{i}</div>'), i) for i in range(1, 6)]
             + [frame(PatchElements(f'<div id="mem">{i}</div>'), i) for i in range(6, 9)])
    left = queued(s)
    assert [f.id for f in left] == ["5", "8"]
    assert s.counts.patches_superseded == 6


def test_inner_does_not_replace_an_outer_and_nothing_replaces_a_remove() -> None:
    s = stream(Limits(max_items=100))
    s.start(b"", 0.0)
    feed_all(s, [frame(PatchElements('<div id="x" class="a">1</div>'), 1),
                 frame(PatchElements("2", selector="#x", mode="inner"), 2),
                 frame(PatchElements("3", selector="#x", mode="inner"), 3),
                 frame(PatchElements(selector="#y", mode="remove"), 4),
                 frame(PatchElements("<p>5</p>", selector="#y"), 5)])
    assert [f.id for f in queued(s)] == ["1", "3", "4", "5"]


def test_signal_patches_fold_into_the_newest_and_a_barrier_keeps_them_apart() -> None:
    s = stream(Limits(max_items=100))
    s.start(b"", 0.0)
    feed_all(s, [frame(PatchSignals({"a": 1, "b": {"c": 1}}), 1),
                 frame(PatchElements('<div id="static">2</div>'), 2),  # no data-*: signals may pass it
                 frame(PatchSignals({"a": {"x": 1}, "b": {"d": 2}}), 3),
                 frame(PatchSignals({"b": {"c": None}}), 4)])
    left = queued(s)
    assert [f.id for f in left] == ["2", "4"]
    assert s.counts.patches_merged == 2
    signals: dict[str, Any] = {"a": {"old": 1}, "b": {"e": 5}}
    expected = signals
    for patch in ({"a": 1, "b": {"c": 1}}, {"a": {"x": 1}, "b": {"d": 2}}, {"b": {"c": None}}):
        expected = apply(expected, patch)
    for event in SSEParser().feed(left[1].data or b""):
        assert event.event == "datastar-patch-signals"
        signals = apply(signals, orjson.loads(event.data.removeprefix("signals ")))
    assert signals == expected
    assert left[1].data is not None
    assert left[1].data.count(b"id: 4") == 1

    s = stream(Limits(max_items=100))
    s.start(b"", 0.0)
    feed_all(s, [frame(PatchSignals({"a": 1}), 1),
                 frame(PatchElements('<div id="d" data-signals:a="5"></div>'), 2),  # may write $a
                 frame(PatchSignals({"a": 2}), 3)])
    assert [f.id for f in queued(s)] == ["1", "2", "3"]


def test_folding_keeps_a_stalled_subscriber_within_its_limits() -> None:
    """Patches of a few targets never fill the queue, however long the stall (the cut-off is for real
    backlogs), and the folded-away entries do not pile up either."""
    s = stream(Limits(max_items=10, policy="disconnect"))
    s.start(b"", 0.0)
    for i in range(1, 5001):
        f = frame(PatchElements(f'<div id="t{i % 3}">{i}</div>') if i % 2 else PatchSignals({"n": i}), i)
        result = s.feed(f, len(f.data or b""), now=0.0)
        assert s.reason is None, result
    box = s.mailbox
    assert isinstance(box, BoundedMailbox)
    assert len(box) == 4
    assert box._items is not None  # created by the first put
    assert len(box._items) <= 2 * 64 + 10
    assert [f.id for f in box.take_all()] == ["4995", "4997", "4999", "5000"]


def test_drop_oldest_forgets_what_it_dropped() -> None:
    box: BoundedMailbox[Frame] = BoundedMailbox(Limits(max_items=3, policy="drop-oldest"))
    for i in range(1, 1001):
        f = frame(PatchElements(f'<div id="t{i}">{i}</div>'), i)
        result = box.put(f, 10, f.patch)
        assert result in (PutResult.QUEUED, PutResult.DROPPED_OLDEST)
    assert len(box._targets or {}) <= 3
    assert len(box) == 3


# -- commands that Datastar posts -----------------------------------------------------------------------------

async def add_todo(text: str) -> None: ...


def test_a_datastar_command_ignores_the_signals_it_does_not_declare() -> None:
    from gateway.commands import CommandSpec
    from gateway.core.errors import ValidationFailed

    strict = CommandSpec.from_handler("/todos/add", add_todo)
    with pytest.raises(ValidationFailed, match="unexpected field"):
        strict.validate_body(b'{"text": "milk", "id": 0, "filter": "all"}')
    lenient = CommandSpec.from_handler("/todos/add", add_todo, extra="ignore")
    model = lenient.validate_body(b'{"text": "milk", "id": 0, "filter": "all"}')
    assert model.model_dump() == {"text": "milk"}
    with pytest.raises(ValidationFailed, match="text"):
        lenient.validate_body(b'{"id": 0}')  # what it declares is still required and typed
    with pytest.raises(ValidationFailed):
        lenient.validate_body(b'{"text": 5}')
    assert lenient.declared({"text": "milk", "id": 0, "_local": True}) == {"text": "milk"}  # what travels
    assert strict.declared({"text": "milk"}) == {"text": "milk"}
    with pytest.raises(ValueError, match="extra must be"):
        CommandSpec.from_handler("/x", add_todo, extra="allow")  # type: ignore[arg-type]


def test_read_signals_and_is_datastar() -> None:
    from gateway.core.errors import BadRequest
    from gateway.datastar import is_datastar, read_signals
    from gateway.web.asgi_util import StreamRequest

    def request(query: str) -> StreamRequest:
        return StreamRequest.from_scope({"query_string": query.encode(), "headers": []})

    assert read_signals(request("datastar=%7B%22a%22%3A1%7D")) == {"a": 1}
    assert read_signals(request("")) == {}
    with pytest.raises(BadRequest, match="not JSON"):
        read_signals(request("datastar=%7B"))
    with pytest.raises(BadRequest, match="JSON object"):
        read_signals(request("datastar=%5B1%5D"))
    assert is_datastar({"datastar-request": "true"})
    assert not is_datastar({})
