"""syncd/jsontext.py's orjson paths: where orjson agrees with the standard library it does the
work, elsewhere the standard library's text and errors stand, depth limits included."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd import jsontext


def standard_dumps(value: Any) -> str:
    """What jsontext wrote before orjson (for text with a UTF-8 form)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits too
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(json_values)
def test_text_reads_back_as_the_standard_library_reads_it(value: Any) -> None:
    text = jsontext.dumps(value)
    assert json.loads(text) == json.loads(standard_dumps(value))
    assert jsontext.encode(value) == text.encode()
    assert jsontext.loads(text) == json.loads(text)
    assert jsontext.loads(text.encode()) == json.loads(text)


@pytest.mark.parametrize(
    "value",
    [
        {"big": 123456789012345678901234567890, "negative": -(2**64)},  # orjson refuses them
        {"nothing": None, "text": "null"},
        {1: "a non-string key"},
        [2**63, 2**64 - 1],
    ],
    ids=["beyond-64-bits", "null", "int-key", "64-bit-edges"],
)
def test_where_orjson_differs_the_standard_library_writes(value: Any) -> None:
    assert jsontext.dumps(value) == standard_dumps(value)


def test_a_lone_surrogate_is_written_as_its_escape() -> None:
    assert jsontext.dumps(["\ud83d", "é"]) == '["\\ud83d","\\u00e9"]'


@pytest.mark.parametrize("value", [float("nan"), [float("inf")], {"x": -math.inf}])
def test_nan_and_infinity_are_refused_not_written_as_null(value: Any) -> None:
    for write in (jsontext.dumps, jsontext.encode, jsontext.dumps_within):
        with pytest.raises(jsontext.JsonTextError, match="not plain JSON"):
            write(value)


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize("depth", [jsontext.ORJSON_WRITE_DEPTH + 1, jsontext.MAX_DEPTH])
def test_values_orjson_cannot_nest_are_written_by_the_standard_library(depth: int) -> None:
    assert jsontext.dumps_within(nested(depth)) == standard_dumps(nested(depth))


def test_a_value_deeper_than_allowed_is_refused_when_written_and_when_read() -> None:
    deep = nested(jsontext.MAX_DEPTH + 1)
    with pytest.raises(jsontext.JsonTextError, match="nested deeper than 500"):
        jsontext.dumps_within(deep)
    with pytest.raises(jsontext.JsonTextError, match="nested deeper than 500"):
        jsontext.loads(standard_dumps(deep))  # orjson reads it: the depth is checked after
    assert jsontext.loads(standard_dumps(nested(jsontext.MAX_DEPTH))) == nested(500)
    wide = standard_dumps([[1]] * 600)  # more brackets than levels allowed, yet shallow
    assert jsontext.loads(wide) == [[1]] * 600


def test_without_a_depth_limit_what_can_be_read_is_read_and_the_rest_refused() -> None:
    deep = "[" * 1000 + "]" * 1000  # within orjson's own limit, past MAX_DEPTH
    value = jsontext.loads(deep, None)
    for _ in range(999):  # not ==, which would recurse 1000 levels
        (value,) = value
    assert value == []
    with pytest.raises(jsontext.JsonTextError, match="nested deeper than 500"):
        jsontext.loads(deep)
    deeper = "[" * 5000 + '"\\ud800"' + "]" * 5000  # read by the standard library
    with pytest.raises(jsontext.JsonTextError, match="nested too deep to read"):
        jsontext.loads(deeper, None)


@pytest.mark.parametrize(
    "text",
    [
        "123456789012345678901234567890",  # orjson would read a float
        '{"id": -9223372036854775809, "n": 18446744073709551616}',
        '{"in a string": "1234567890123456789012"}',
        "1e400",
        '"\\ud800"',
        '{"a": 1, "a": 2}',
    ],
)
def test_reads_what_the_standard_library_reads(text: str) -> None:
    assert repr(jsontext.loads(text)) == repr(json.loads(text))  # repr: an int is not a float


@pytest.mark.parametrize("text", ["{not json", b"\xff\xfe", "[1,]", "NaN", "[Infinity]"])
def test_errors_are_worded_by_the_standard_library(text: str | bytes) -> None:
    with pytest.raises(jsontext.JsonTextError) as raised:
        jsontext.loads(text)
    try:
        json.loads(text)
    except ValueError as expected:
        assert str(expected) in str(raised.value)
    else:
        assert "is not a JSON number" in str(raised.value)  # json reads NaN; syncd refuses it
