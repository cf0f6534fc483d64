"""JSON merge patches (RFC 7386): applying one, and folding a sequence of them into at most two.

Datastar applies a ``datastar-patch-signals`` event to the page's signals as a JSON merge patch. A slow client's
queue may hold several of them; conflation replaces them with one equivalent *fold*, so the client converges on
the state a fast client reaches without replaying every step.

Merge patches do not compose into one merge patch in general: ``{"a": 1}`` then ``{"a": {"b": 1}}`` leaves
``a == {"b": 1}`` whatever ``a`` held before (the scalar was replaced, then a fresh object merged), but the single
patch ``{"a": {"b": 1}}`` applied to ``{"a": {"c": 2}}`` keeps ``c``. A ``Fold`` therefore has two parts: ``reset``,
a merge patch of ``null``s (nested where needed) that clears the members a later object must build from scratch,
then ``patch``, the merged patch. Applying ``reset`` (when not empty) then ``patch`` to any document equals applying
the folded patches in order; ``tests/test_mergepatch.py`` checks that with hypothesis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Fold", "apply", "fold"]

JSON = Any


def apply(target: JSON, patch: JSON) -> JSON:
    """``MergePatch(target, patch)`` of RFC 7386, section 2; neither argument is changed."""
    if not isinstance(patch, Mapping):
        return patch
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply(result.get(key), value)
    return result


@dataclass(frozen=True, slots=True)
class Fold:
    """Two merge patches that, applied in order, do what a sequence of merge patches did."""

    reset: dict[str, JSON] = field(default_factory=dict)
    patch: dict[str, JSON] = field(default_factory=dict)

    def apply(self, target: JSON) -> JSON:
        return apply(apply(target, self.reset) if self.reset else target, self.patch)


def fold(done: Fold, patch: Mapping[str, JSON]) -> Fold:
    """``done`` followed by ``patch``, as one ``Fold`` (new objects; the arguments are not changed)."""
    reset = _copy(done.reset)
    merged = _copy(done.patch)
    _fold_into(reset, merged, patch)
    return Fold(reset, merged)


def _fold_into(reset: dict[str, JSON] | None, merged: dict[str, JSON], patch: Mapping[str, JSON]) -> None:
    """Fold ``patch`` into ``merged`` in place. ``reset`` is the part of the reset patch at this depth, or None
    when this member is reset as a whole already (everything below is built from scratch, nothing to reset)."""
    for key, value in patch.items():
        if not isinstance(value, Mapping):
            # null or a scalar/array replaces whatever came before, so earlier resets below it are moot.
            merged[key] = value
            if reset is not None and isinstance(reset.get(key), dict):
                del reset[key]
            continue
        before = merged.get(key, _ABSENT)
        if before is _ABSENT:
            merged[key] = _copy(value)
        elif isinstance(before, dict):
            if reset is None or reset.get(key, _ABSENT) is None:
                below = None  # the member was reset as a whole: below it, the merged patch is all there is
            else:
                existing = reset.get(key)
                below = existing if isinstance(existing, dict) else {}
            _fold_into(below, before, value)
            if reset is not None and below:
                reset[key] = below
        else:
            # Earlier patches left a scalar or deleted the member: the object starts from nothing.
            if reset is not None:
                reset[key] = None
            merged[key] = _strip_nulls(value)


_ABSENT = object()


def _copy(value: Mapping[str, JSON]) -> dict[str, JSON]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in value.items()}


def _strip_nulls(value: Mapping[str, JSON]) -> dict[str, JSON]:
    """An object patch applied to nothing: its members without the ``null``s (they delete nothing)."""
    return {k: _strip_nulls(v) if isinstance(v, Mapping) else v for k, v in value.items() if v is not None}
