"""JSON text every end can read back: always valid UTF-8, never nested deeper than MAX_DEPTH.

opencode (JavaScript) can store a lone UTF-16 surrogate (an output cut in the middle of an
emoji), which `JSON.stringify` writes as the escape `\\ud83d`. Python reads it into a str that
has no UTF-8 form; written again with escapes, it travels exactly as opencode wrote it.

Python reads and writes JSON recursively, so a value nested near the interpreter's recursion
limit fails or not depending on how deep the stack already is where it is parsed again (a
receiver, a dead letter, a re-send). Values nested deeper than MAX_DEPTH are refused where they
enter (the source, the receiver), which leaves every later step room to spare.

orjson does the work where it agrees with the standard library, several times faster where a
backfill and the receiver spend their time; where the two differ the standard library decides,
so the text and the errors are the same either way. orjson writes NaN and Infinity as null and
refuses integers beyond 64 bits, lone surrogates, non-string keys and more than
ORJSON_WRITE_DEPTH levels; it reads integers beyond 64 bits as floats and refuses NaN,
Infinity and lone surrogates.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

MAX_DEPTH = 500
# Levels a request puts around the values it carries (body, batch, item, data): a receiver
# parses bodies this much deeper than the values themselves may go.
ENVELOPE_DEPTH = 8
# The deepest value orjson writes (deeper: an error).
ORJSON_WRITE_DEPTH = 254
# An integer literal orjson would read as a float has at least 19 digits. A run that long
# anywhere (inside a string too) sends the text to the standard library; found by mapping every
# digit to "9" and everything else to " " (UTF-8 continuation bytes are never digits), in C.
_DIGITS_AS_NINES = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_INTEGER = b"9" * 19


class JsonTextError(ValueError):
    """A value that cannot be written as JSON, or text that is not JSON syncd can read; the
    message is a predicate ("is not valid JSON (...)") for the caller to put a subject to."""


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON text (compact, or indented by `indent`) whose UTF-8 encoding cannot fail:
    non-ASCII text as is, or, when a lone surrogate is in the way, everything non-ASCII as
    escapes (the same JSON value)."""
    if indent is None and (fast := _orjson_dumps(value)) is not None:
        return fast.decode()
    text = _dumps(value, ensure_ascii=False, indent=indent)
    if text.isascii() or is_text(text):
        return text
    return _dumps(value, ensure_ascii=True, indent=indent)


def dumps_within(value: Any, max_depth: int = MAX_DEPTH) -> str:
    """`dumps`, JsonTextError when `value` is nested deeper than `max_depth` (walked only when
    orjson cannot write it: it writes no more than ORJSON_WRITE_DEPTH levels)."""
    if max_depth >= ORJSON_WRITE_DEPTH and (fast := _orjson_dumps(value)) is not None:
        return fast.decode()
    check_depth(value, max_depth)
    return dumps(value)


def encode(value: Any) -> bytes:
    """`dumps` as UTF-8 bytes (a request body)."""
    if (fast := _orjson_dumps(value)) is not None:
        return fast
    try:
        return _dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return _dumps(value, ensure_ascii=True).encode("ascii")


def loads(text: str | bytes, max_depth: int | None = MAX_DEPTH) -> Any:
    """The value `text` holds; JsonTextError naming why when it is not JSON syncd accepts:
    invalid JSON or UTF-8, NaN/Infinity, an integer too long for Python to convert, nesting
    deeper than `max_depth`. `max_depth` None: not checked here, for a caller that checks
    every value it keeps before anything walks it (reading is safe at any depth: orjson stops
    at 1024 levels, the standard library's RecursionError is an error here). The check of a
    large text writes it again with orjson."""
    raw = _orjson_readable(text)
    if raw is not None:
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # the standard library words the error, or reads what orjson refuses
        else:
            if max_depth is not None and not _shallow(raw, value, max_depth):
                check_depth(value, max_depth)
            return value
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        limit = "too deep to read" if max_depth is None else f"deeper than {max_depth} levels"
        raise JsonTextError(f"is nested {limit}") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integer digit limit
        if isinstance(exc, JsonTextError):
            raise
        raise JsonTextError(f"is not valid JSON ({exc})") from None
    if max_depth is not None:
        check_depth(value, max_depth)
    return value


def check_depth(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """JsonTextError when `value` is nested deeper than `max_depth` (walked without
    recursion)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            raise JsonTextError(f"is nested deeper than {max_depth} levels")
        stack.extend((child, depth + 1) for child in children)


def readable_text(text: str) -> str:
    """`text` with each lone surrogate written as its escape (`\\ud83d`): a message that
    quotes a value (an error naming a key, say) stays storable and printable."""
    return text if is_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def is_text(text: str) -> bool:
    """Whether `text` has a UTF-8 form (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _orjson_dumps(value: Any) -> bytes | None:
    """orjson's compact text for `value` when it is the standard library's too, else None."""
    try:
        text = orjson.dumps(value)
    except orjson.JSONEncodeError:
        return None
    # NaN and Infinity come out as null. find, not `in`: CPython's bytes `in` first tries the
    # needle as an integer and clears the TypeError, a cost per call (per item, in a backfill).
    return None if text.find(b"null") != -1 else text


def _orjson_readable(text: str | bytes) -> bytes | None:
    """`text` as bytes when orjson reads it as the standard library would, else None."""
    try:
        raw = text if isinstance(text, bytes) else text.encode()
    except UnicodeEncodeError:  # a lone surrogate in the str itself
        return None
    return None if raw.translate(_DIGITS_AS_NINES).find(_LONG_INTEGER) != -1 else raw


def _shallow(raw: bytes, value: Any, max_depth: int) -> bool:
    """Whether `value` (read by orjson from `raw`) is surely no deeper than `max_depth`,
    without walking it: fewer brackets than levels allowed, or a value orjson can write
    (which it does only up to ORJSON_WRITE_DEPTH levels)."""
    # A text no longer than the levels allowed cannot open more (most of opencode's rows).
    if len(raw) <= max_depth or raw.count(b"[") + raw.count(b"{") <= max_depth:
        return True
    return max_depth >= ORJSON_WRITE_DEPTH and _orjson_written(value)


def _orjson_written(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:  # a value orjson read is refused only for its depth
        return False
    return True


def _dumps(value: Any, *, ensure_ascii: bool, indent: int | None = None) -> str:
    separators = (",", ":") if indent is None else (",", ": ")
    try:
        return json.dumps(
            value, ensure_ascii=ensure_ascii, allow_nan=False, separators=separators, indent=indent
        )
    except RecursionError:
        raise JsonTextError("is nested too deep to write as JSON") from None
    except (TypeError, ValueError) as exc:  # a non-JSON type, NaN, an over-long integer
        raise JsonTextError(f"is not plain JSON ({exc})") from None


def _refuse_constant(name: str) -> Any:
    raise JsonTextError(f"is not valid JSON ({name} is not a JSON number)")
