"""Path templates: ``/todos/{id}/toggle`` names the values a command or a view takes from its path.

The rules, small on purpose:
- a template is split on ``/``; a segment is either literal text or a whole ``{name}`` (``name`` a Python
  identifier, each name once); ``/a{b}`` or ``/{a}{b}`` are refused when registered;
- ``{name}`` matches exactly one non-empty segment of the request's path (so a value never contains ``/``);
  literal segments match themselves exactly, and the segment counts must agree;
- exact paths are looked up first; templates are tried in registration order, the first that matches wins. Two
  templates of the same shape (the same literals in the same places) would always shadow each other and are
  refused when registered.
The values are the path's segments as the server decoded them (strings); typing them is the caller's job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PathTemplate:
    """A parsed path: its literal segments and, where a segment is ``{name}``, the name (``None`` elsewhere)."""

    path: str
    segments: tuple[str, ...]
    names: tuple[str | None, ...]

    @classmethod
    def parse(cls, path: str) -> PathTemplate:
        """Parse ``path``; raises ``ValueError`` naming the segment that is not literal text or one ``{name}``."""
        segments = tuple(path.split("/"))
        names: list[str | None] = []
        for segment in segments:
            if segment.startswith("{") and segment.endswith("}") and segment[1:-1].isidentifier():
                if segment[1:-1] in names:
                    raise ValueError(f"path {path!r}: {segment} appears twice")
                names.append(segment[1:-1])
            elif "{" in segment or "}" in segment:
                raise ValueError(f"path {path!r}: segment {segment!r} must be literal text or one {{name}}")
            else:
                names.append(None)
        return cls(path, segments, tuple(names))

    @property
    def params(self) -> tuple[str, ...]:
        """The names of the path's values, in order."""
        return tuple(name for name in self.names if name is not None)

    @property
    def shape(self) -> tuple[str | None, ...]:
        """The literals with every ``{name}`` as None: two templates of one shape match the same paths."""
        return tuple(None if name is not None else segment for segment, name in zip(self.segments, self.names,
                                                                                   strict=True))

    def match(self, path: str) -> dict[str, str] | None:
        """The values of ``path`` by name, or None when it does not match."""
        segments = path.split("/")
        if len(segments) != len(self.segments):
            return None
        values: dict[str, str] = {}
        for given, literal, name in zip(segments, self.segments, self.names, strict=True):
            if name is None:
                if given != literal:
                    return None
            elif not given:
                return None
            else:
                values[name] = given
        return values


def is_template(path: str) -> bool:
    return "{" in path


def first_match(templates: Iterable[PathTemplate], path: str) -> tuple[PathTemplate, dict[str, str]] | None:
    """The first template that matches ``path``, with its values."""
    for template in templates:
        values = template.match(path)
        if values is not None:
            return template, values
    return None
