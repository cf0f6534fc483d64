"""Two kinds of topic, two namespaces on the bus: a view change never reaches a hub subscriber, nor the reverse.

A *view topic* is announced by the application (``gw.publish("todos")``: "state changed, re-render"); its
notifications carry no payload. A *hub topic* carries events published through ``POST /hub/publish`` or
``gw.hub.publish``; its notifications carry an encoded ``HubEvent``. Both are named by users, and a hub client may
ask for any name, so the two are kept apart on the bus by a prefix: the bus key of view topic ``todos`` is
``view:todos``, of hub topic ``todos`` it is ``hub:todos``. Only this module builds and reads those keys.
"""

from __future__ import annotations

import re
from enum import Enum


class Namespace(Enum):
    VIEW = "view"
    HUB = "hub"


_PREFIX = {Namespace.VIEW: "view:", Namespace.HUB: "hub:"}


_TOPIC = re.compile(r"[\x21-\x7e]{1,256}")  # one pass in C: a topic is checked on every publish


def check_topic(topic: str) -> str:
    """Topics are 1-256 visible ASCII characters: they become bus keys and must never inject anything."""
    if _TOPIC.fullmatch(topic) is None:
        raise ValueError(f"invalid topic {topic!r}: use 1-256 visible ASCII characters")
    return topic


def view_key(topic: str) -> str:
    """The bus key of a view topic."""
    return "view:" + topic


def hub_key(topic: str) -> str:
    """The bus key of a hub topic."""
    return "hub:" + topic


def bus_key(namespace: Namespace, topic: str) -> str:
    return _PREFIX[namespace] + topic


def parse_key(key: str) -> tuple[Namespace, str] | None:
    """``"hub:prices"`` -> ``(Namespace.HUB, "prices")``; None for a key of neither namespace."""
    if key.startswith("view:"):
        return Namespace.VIEW, key[5:]
    if key.startswith("hub:"):
        return Namespace.HUB, key[4:]
    return None
