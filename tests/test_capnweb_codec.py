"""The capnweb codec and message framing, without a peer (interop: test_capnweb_interop.py)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncd.wire.capnweb.codec import (
    DROPPED_KEYS,
    MAX_DEPTH,
    MAX_SAFE_INTEGER,
    UNDEFINED,
    BigInt,
    CodecError,
    JsError,
    decode,
    dumps,
    encode,
    loads,
)
from syncd.wire.capnweb.protocol import Call, Result, frame_calls, parse_answer


def wire(value: Any) -> Any:
    """Through the codec and the JSON text, as a peer would see it and send it back."""
    return decode(loads(dumps(encode(value)).encode("utf-8")))


keys = st.text(max_size=12).filter(lambda key: key not in DROPPED_KEYS)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=40,
)
# Strings and arrays that look like type codes are the values escaping exists for.
type_codes = st.sampled_from(
    ["date", "bytes", "bigint", "error", "undefined", "nan", "inf", "-inf", "import",
     "pipeline", "export", "promise", "remap"]
)  # fmt: skip
look_alikes = st.tuples(type_codes, json_values).map(list) | type_codes.map(lambda code: [code])
special = (
    st.just(UNDEFINED)
    | st.integers(-(2**80), 2**80).map(BigInt)
    | st.integers(-(10**13), 10**13).map(lambda ms: datetime(1970, 1, 1, tzinfo=UTC)
                                         + timedelta(milliseconds=ms))
    | st.binary(max_size=40)
    | st.builds(JsError, st.sampled_from(["Error", "TypeError"]), st.text(max_size=20))
)  # fmt: skip
any_values = st.recursive(
    json_values | look_alikes | special,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_every_json_value_round_trips(value: Any) -> None:
    assert wire(value) == value


@given(any_values)
def test_special_values_and_type_code_look_alikes_round_trip(value: Any) -> None:
    assert wire(value) == value


@given(json_values)
def test_every_array_on_the_wire_is_escaped(value: Any) -> None:
    def arrays_escaped(expr: Any) -> bool:
        if isinstance(expr, dict):
            return all(arrays_escaped(item) for item in expr.values())
        if isinstance(expr, list):  # a JSON value encodes no tagged arrays, only [[...]]
            return (
                len(expr) == 1 and isinstance(expr[0], list) and all(map(arrays_escaped, expr[0]))
            )
        return True

    assert arrays_escaped(encode(value))


def test_arrays_are_escaped_at_every_depth() -> None:
    assert encode([]) == [[]]
    assert encode([[]]) == [[[[]]]]
    assert encode(["date", 5]) == [["date", 5]]
    assert encode({"a": [1, [2]]}) == {"a": [[1, [[2]]]]}
    assert decode([["date", 5]]) == ["date", 5]
    assert isinstance(decode(["date", 5]), datetime)


def test_special_values_have_their_wire_forms() -> None:
    assert encode(UNDEFINED) == ["undefined"]
    assert encode(math.inf) == ["inf"] and encode(-math.inf) == ["-inf"]
    assert encode(math.nan) == ["nan"] and math.isnan(wire(math.nan))
    assert encode(BigInt(2**64)) == ["bigint", str(2**64)]
    assert encode(datetime(2025, 6, 8, tzinfo=UTC)) == ["date", 1749340800000]
    assert encode(b"\x01\x02\x03\x04") == ["bytes", "AQIDBA"]  # base64 without padding
    assert decode(["bytes", "AQIDBA=="]) == b"\x01\x02\x03\x04"
    assert encode(JsError("TypeError", "boom")) == ["error", "TypeError", "boom"]
    assert decode(["error", "Error", "x", None, {"code": [[1]]}]) == JsError(
        "Error", "x", None, {"code": [1]}
    )
    offset = datetime(2025, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))
    assert wire(offset) == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (2**53 + 1, "beyond 2**53"),
        ({"a": [-(2**60) - 1]}, "value.a[0]: integer"),
        (datetime(2025, 1, 1), "naive datetime"),
        (datetime(2025, 1, 1, microsecond=1, tzinfo=UTC), "whole milliseconds"),
        ({"toString": 1}, "'toString' would be dropped"),
        ({"__proto__": {}}, "'__proto__' would be dropped"),
        ({1: "a"}, "key 1 is not a string"),
        ({1, 2}, "type set"),
        (object(), "type object"),
    ],
)
def test_what_cannot_travel_is_refused_by_name(value: Any, problem: str) -> None:
    with pytest.raises(CodecError, match=r"cannot|beyond|naive|whole|dropped|not a string") as exc:
        encode(value)
    assert problem in str(exc.value)


@pytest.mark.parametrize("number", [2**60, -(2**60), 10**20, 2**53 + 2])
def test_integers_opencode_writes_beyond_2_53_travel_as_the_numbers_they_are(number: int) -> None:
    """JSON.stringify prints a large double as its digits; a JavaScript receiver parses those
    digits back into the same double, so they go as a number, exactly."""
    assert float(number) == number
    assert wire(number) == number and type(wire(number)) is int


def test_nesting_is_refused_beyond_the_reference_limit() -> None:
    deep: Any = []
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert wire(deep) == deep
    with pytest.raises(CodecError, match="nested deeper"):
        encode([deep])


@pytest.mark.parametrize(
    "expr",
    [["date", "soon"], ["bytes", "!!"], ["bigint", "12x"], ["stub"], [], ["export", -1]],
)
def test_decode_refuses_what_is_not_a_value(expr: Any) -> None:
    with pytest.raises(CodecError):
        decode(expr)


def test_text_is_one_utf8_line_even_with_lone_surrogates() -> None:
    value = {"a": "line\nbreak \u2028 ✓", "b": "\ud800"}
    text = dumps(encode(value))
    assert "\n" not in text
    text.encode("utf-8")  # would raise on an unescaped lone surrogate
    assert wire(value) == value
    with pytest.raises(CodecError, match="NaN"):
        loads("[NaN]")


def test_calls_push_bare_argument_lists_and_pipeline_earlier_results() -> None:
    calls = [
        Call("createShare", ("ses_1",)),
        Call("syncShare", (Result(0)["id"], Result(0)["secret"], [{"type": "x"}])),
    ]
    assert frame_calls(calls, first_id=7) == [
        ["push", ["pipeline", 0, ["createShare"], ["ses_1"]]],
        ["pull", 7],
        [
            "push",
            [
                "pipeline",
                0,
                ["syncShare"],
                [["pipeline", 7, ["id"]], ["pipeline", 7, ["secret"]], [[{"type": "x"}]]],
            ],
        ],
        ["pull", 8],
    ]


def test_answers_are_parsed_and_anything_else_refused() -> None:
    answer = parse_answer('["resolve",3,{"a":[[1,["undefined"]]]}]')
    assert (answer.kind, answer.import_id, answer.value) == ("resolve", 3, {"a": [1, UNDEFINED]})
    assert parse_answer('["reject",1,["error","Error","Invalid secret"]]').value == JsError(
        "Error", "Invalid secret"
    )
    assert parse_answer('["abort",["error","Error","bye"]]').kind == "abort"
    for text in ('["push",["pipeline",0]]', "{}", "not json"):
        with pytest.raises(CodecError):
            parse_answer(text)
