"""JSON text every end can read back: always valid UTF-8, never nested deeper than MAX_DEPTH.

opencode (JavaScript) can store a lone UTF-16 surrogate (an output cut in the middle of an
emoji), which `JSON.stringify` writes as the escape `\\ud83d`. Python reads it into a str that
has no UTF-8 form; written again with escapes, it travels exactly as opencode wrote it.

Python reads and writes JSON recursively, so a value nested near the interpreter's recursion
limit fails or not depending on how deep the stack already is where it is parsed again (a
receiver, a dead letter, a re-send). Values nested deeper than MAX_DEPTH are refused where they
enter (the source, the receiver), which leaves every later step room to spare.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 500
# Levels a request puts around the values it carries (body, batch, item, data): a receiver
# parses bodies this much deeper than the values themselves may go.
ENVELOPE_DEPTH = 8


class JsonTextError(ValueError):
    """A value that cannot be written as JSON, or text that is not JSON syncd can read; the
    message is a predicate ("is not valid JSON (...)") for the caller to put a subject to."""


def dumps(value: Any, indent: int | None = None) -> str:
    """JSON text (compact, or indented by `indent`) whose UTF-8 encoding cannot fail:
    non-ASCII text as is, or, when a lone surrogate is in the way, everything non-ASCII as
    escapes (the same JSON value)."""
    text = _dumps(value, ensure_ascii=False, indent=indent)
    if text.isascii() or is_text(text):
        return text
    return _dumps(value, ensure_ascii=True, indent=indent)


def encode(value: Any) -> bytes:
    """`dumps` as UTF-8 bytes (a request body)."""
    try:
        return _dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return _dumps(value, ensure_ascii=True).encode("ascii")


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """The value `text` holds; JsonTextError naming why when it is not JSON syncd accepts:
    invalid JSON or UTF-8, NaN/Infinity, an integer too long for Python to convert, nesting
    deeper than `max_depth`."""
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise JsonTextError(f"is nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integer digit limit
        if isinstance(exc, JsonTextError):
            raise
        raise JsonTextError(f"is not valid JSON ({exc})") from None
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
