"""JSON merge patches (RFC 7386) and their folding: folding any sequence equals applying it in order."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.mergepatch import Fold, apply, fold

pytestmark = pytest.mark.unit

KEYS = st.sampled_from(["a", "b", "c"])  # few keys, so that patches collide often
SCALARS = st.none() | st.booleans() | st.integers(-3, 3) | st.sampled_from(["x", "y"])
VALUES = st.recursive(SCALARS | st.lists(st.integers(0, 2), max_size=2),
                      lambda inner: st.dictionaries(KEYS, inner, max_size=3), max_leaves=8)
PATCHES = st.dictionaries(KEYS, VALUES, max_size=3)
DOCUMENTS = st.dictionaries(KEYS, VALUES.filter(lambda v: v is not None), max_size=3)


def in_order(document: Any, patches: list[dict[str, Any]]) -> Any:
    for patch in patches:
        document = apply(document, patch)
    return document


def folded(patches: list[dict[str, Any]]) -> Fold:
    result = Fold()
    for patch in patches:
        result = fold(result, patch)
    return result


@settings(max_examples=800, deadline=None)
@given(DOCUMENTS, st.lists(PATCHES, max_size=6))
def test_folding_any_sequence_equals_applying_it_in_order(document: dict[str, Any],
                                                          patches: list[dict[str, Any]]) -> None:
    assert folded(patches).apply(document) == in_order(document, patches)


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS, st.lists(PATCHES, max_size=4), st.lists(PATCHES, max_size=4))
def test_folds_fold_again(document: dict[str, Any], first: list[dict[str, Any]], then: list[dict[str, Any]]) -> None:
    """A fold folded further (a queue that keeps growing) is still the sequence applied in order."""
    done = folded(first)
    for patch in then:
        done = fold(done, patch)
    assert done.apply(document) == in_order(document, first + then)


@given(DOCUMENTS, st.lists(PATCHES, max_size=5))
def test_folding_changes_none_of_its_inputs(document: dict[str, Any], patches: list[dict[str, Any]]) -> None:
    import copy

    before = copy.deepcopy(patches)
    folded(patches).apply(document)
    assert patches == before


def test_rfc7386_examples() -> None:
    """The examples of RFC 7386, appendix A."""
    cases = [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        (["a", "b"], ["c", "d"], ["c", "d"]),
        ({"a": "b"}, ["c"], ["c"]),
        ({"a": "foo"}, None, None),
        ({"a": "foo"}, "bar", "bar"),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ]
    for target, patch, expected in cases:
        assert apply(target, patch) == expected


def test_an_object_after_a_scalar_needs_the_reset() -> None:
    """The case one merge patch cannot say: the fold clears the member first."""
    result = folded([{"a": 1}, {"a": {"b": 1}}])
    assert result.reset == {"a": None}
    assert result.patch == {"a": {"b": 1}}
    assert result.apply({"a": {"c": 2}}) == {"a": {"b": 1}}


def test_plain_merges_need_no_reset() -> None:
    result = folded([{"count": 1, "user": {"name": "x"}}, {"count": 2, "user": {"seen": True}}])
    assert result.reset == {}
    assert result.patch == {"count": 2, "user": {"name": "x", "seen": True}}
