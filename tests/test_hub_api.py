"""Hub events from Python: ``gw.hub.publish`` validates once and puts the encoded event on the hub namespace."""

from __future__ import annotations

import orjson
import pytest

from gateway import Gateway, Settings
from gateway.core import hub, stamps
from gateway.core.hub import HubEvent, UnknownPayload
from gateway.core.sse import SSEParser
from gateway.core.topics import hub_key, view_key

pytestmark = pytest.mark.unit


@pytest.mark.asyncio
async def test_gw_hub_publish_puts_one_encoded_event_in_the_hub_namespace() -> None:
    gw = Gateway(Settings.load(environ={}))
    version = await gw.hub.publish("prices", {"eur": 1.08}, event="tick")
    own = await gw.hub.publish("prices", "text\nwith two lines", id="p-7")
    await gw.publish("prices")  # a view change of the same name: another namespace
    found, gaps = await gw.runtime.bus.history([hub_key("prices")], None)
    assert not gaps
    assert [n.version for n in found] == [version, own]
    frames = [hub.decode(n.payload, n.version) for n in found]
    events = [e for f in frames for e in SSEParser().feed(f.data)]
    assert [(e.event, e.id) for e in events] == [("tick", version), ("message", "p-7")]
    assert orjson.loads(events[0].data) == {"eur": 1.08}
    assert events[1].data == "text\nwith two lines"
    views, _ = await gw.runtime.bus.history([view_key("prices")], None)
    assert [stamps.read(n.payload)[0] for n in views] == [None]  # a view change: only its stamp, no origin
    assert all(stamps.read(n.payload)[1] for n in views)


@pytest.mark.parametrize(("topic", "kw"), [("", {}), ("a b", {}), ("t", {"event": "a\nb"}), ("t", {"id": "x\r"}),
                                           ("t", {"id": ""}), ("t", {"event": "e" * 257})])
def test_an_invalid_event_is_refused_where_it_is_built(topic: str, kw: dict[str, str]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message names the field; any of them will do here
        HubEvent.of(topic, "data", **kw)


def test_a_payload_that_is_not_an_encoded_event_is_refused() -> None:
    for payload in (b"", b'{"data": "x"}', b"sse1 id-without-fields", b"sse1 \ndata: cut"):
        with pytest.raises(UnknownPayload):
            hub.decode(payload, "3")
    assert hub.event_id(b'{"id": "x"}', "3") == "3"
