"""Cap'n Web values <-> JSON ("devaluate" / "evaluate" in the reference implementation).

Every array is escaped as `[[...]]`, at every depth, so that a user array such as
`["date", 5]` never reads as a type code. Values JSON cannot hold travel as tagged arrays:

| Python                               | wire                          |
|--------------------------------------|-------------------------------|
| `UNDEFINED`                          | `["undefined"]`               |
| `nan`, `inf`, `-inf`                 | `["nan"]`, `["inf"]`, `["-inf"]` |
| `BigInt(n)`                          | `["bigint", "n"]`             |
| aware `datetime` (whole milliseconds) | `["date", ms]`               |
| `bytes` (also bytearray, memoryview) | `["bytes", base64 unpadded]`  |
| `JsError(name, message, ...)`        | `["error", name, message, ...]` |

What the reference receiver would change silently is refused with a CodecError naming it: a
plain int no JavaScript number holds exactly (beyond 2**53 and not a double: a number would
round it; wrap it in BigInt to send a bigint; the integers opencode writes are doubles, so
they travel), a naive or sub-millisecond datetime, an object key the receiver drops (`__proto__`,
`toString`, ... `toJSON`), a non-string key, nesting deeper than the receiver accepts.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from ... import jsontext

MAX_SAFE_INTEGER = 2**53 - 1
# The reference evaluator refuses messages nested 256 deep; a call argument starts two levels
# down (message, call), so this is the deepest value it accepts.
MAX_DEPTH = 250
MAX_BIGINT_DIGITS = 16384
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
# Keys the reference evaluator deletes from every object it receives (Object.prototype's own
# properties, plus toJSON).
DROPPED_KEYS = frozenset(
    {
        "constructor", "__defineGetter__", "__defineSetter__", "hasOwnProperty",
        "__lookupGetter__", "__lookupSetter__", "isPrototypeOf", "propertyIsEnumerable",
        "toString", "valueOf", "__proto__", "toLocaleString", "toJSON",
    }
)  # fmt: skip


class CodecError(ValueError):
    """A value that cannot travel (encode) or an expression that is not one (decode)."""


class _Undefined:
    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False


UNDEFINED = _Undefined()
"""JavaScript's `undefined` (a void result, or an absent value inside an object)."""


class BigInt(int):
    """An int sent as a JavaScript bigint rather than a number."""

    def __repr__(self) -> str:
        return f"BigInt({int(self)})"


@dataclass(frozen=True)
class JsError:
    """A JavaScript Error value (thrown by a remote method, or sent as data)."""

    name: str
    message: str
    stack: str | None = None
    props: dict[str, Any] | None = None


@dataclass(frozen=True)
class Pipeline:
    """A property of an earlier call's result in the same session (promise pipelining):
    the receiver substitutes the value before delivering the call."""

    import_id: int
    path: tuple[str | int, ...] = ()

    def __getitem__(self, key: str | int) -> Pipeline:
        return Pipeline(self.import_id, (*self.path, key))


# -- encode ------------------------------------------------------------------------------------


def encode(value: Any) -> Any:
    """The JSON-ready expression for `value`; raises CodecError for what cannot travel."""
    return _encode(value, 0, "value")


def _encode(value: Any, depth: int, where: str) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError(f"{where}: nested deeper than {MAX_DEPTH} levels (capnweb's limit)")
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, BigInt):
        return ["bigint", str(int(value))]
    if isinstance(value, int):
        if abs(value) > MAX_SAFE_INTEGER and not _is_double(value):
            raise CodecError(
                f"{where}: integer {value} is beyond 2**53 and no double, so the receiver "
                "would round it (wrap it in BigInt to send a bigint)"
            )
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return ["nan"]
        if math.isinf(value):
            return ["inf"] if value > 0 else ["-inf"]
        return value
    if isinstance(value, dict):
        encoded = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise CodecError(f"{where}: object key {key!r} is not a string")
            if key in DROPPED_KEYS:
                raise CodecError(
                    f"{where}: object key {key!r} would be dropped by a JavaScript receiver"
                )
            encoded[key] = _encode(item, depth + 1, f"{where}.{key}")
        return encoded
    if isinstance(value, (list, tuple)):
        return [[_encode(item, depth + 1, f"{where}[{i}]") for i, item in enumerate(value)]]
    if value is UNDEFINED:
        return ["undefined"]
    if isinstance(value, datetime):
        return ["date", _milliseconds(value, where)]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ["bytes", base64.b64encode(bytes(value)).decode("ascii").rstrip("=")]
    if isinstance(value, JsError):
        return _encode_error(value, depth, where)
    if isinstance(value, Pipeline):
        return ["pipeline", value.import_id, list(value.path)]
    raise CodecError(f"{where}: cannot send a value of type {type(value).__name__}")


def _is_double(value: int) -> bool:
    """Whether a JavaScript number holds `value` exactly (as JSON.stringify wrote it)."""
    try:
        return int(float(value)) == value
    except OverflowError:
        return False


def _milliseconds(value: datetime, where: str) -> int:
    if value.tzinfo is None or value.utcoffset() is None:
        raise CodecError(f"{where}: a naive datetime has no instant; give it a timezone")
    whole, rest = divmod(value - EPOCH, ONE_MS)
    if rest:
        raise CodecError(f"{where}: a JavaScript Date holds whole milliseconds, not {value}")
    return whole


def _encode_error(error: JsError, depth: int, where: str) -> list[Any]:
    encoded: list[Any] = ["error", error.name, error.message]
    if error.props:
        props = _encode(error.props, depth, f"{where}.props")
        encoded += [error.stack, props]
    elif error.stack is not None:
        encoded.append(error.stack)
    return encoded


# -- decode ------------------------------------------------------------------------------------

Reference = Callable[[list[Any]], Any]
"""Turns an `import`/`pipeline` expression into a value (a server resolving pipelined
arguments); without one such expressions are refused."""


def decode(expr: Any, reference: Reference | None = None) -> Any:
    """The value `expr` stands for; raises CodecError for what is not a valid expression."""
    return _decode(expr, reference, 0)


def _decode(expr: Any, reference: Reference | None, depth: int) -> Any:
    if depth > MAX_DEPTH + 4:
        raise CodecError(f"expression nested deeper than {MAX_DEPTH} levels")
    if isinstance(expr, dict):
        return {key: _decode(item, reference, depth + 1) for key, item in expr.items()}
    if not isinstance(expr, list):
        return expr
    if len(expr) == 1 and isinstance(expr[0], list):
        return [_decode(item, reference, depth + 1) for item in expr[0]]
    tag = expr[0] if expr and isinstance(expr[0], str) else None
    args = expr[1:]
    match tag:
        case "undefined" if not args:
            return UNDEFINED
        case "nan":
            return math.nan
        case "inf":
            return math.inf
        case "-inf":
            return -math.inf
        case "bigint" if len(args) == 1 and isinstance(args[0], str):
            return _bigint(args[0])
        case "date" if len(args) == 1 and _is_number(args[0]):
            return _date(args[0])
        case "bytes" if args and isinstance(args[0], str):
            return _bytes(args[0])
        case "error" if len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
            stack = args[2] if len(args) > 2 and isinstance(args[2], str) else None
            props = args[3] if len(args) > 3 and isinstance(args[3], dict) else None
            decoded = _decode(props, reference, depth + 1) if props else None
            return JsError(args[0], args[1], stack, decoded)
        case "import" | "pipeline" if reference is not None:
            return reference(expr)
    raise CodecError(f"unsupported expression: {_excerpt(expr)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bigint(digits: str) -> BigInt:
    if len(digits.lstrip("-")) > MAX_BIGINT_DIGITS:
        raise CodecError(f"bigint longer than {MAX_BIGINT_DIGITS} digits")
    try:
        return BigInt(int(digits, 10))
    except ValueError:
        raise CodecError(f"bigint {_excerpt(digits)} is not a decimal integer") from None


def _date(ms: float) -> datetime:
    try:
        return EPOCH + timedelta(milliseconds=ms)
    except OverflowError:
        raise CodecError(f"date {ms} ms is outside the years Python can hold") from None


def _bytes(text: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise CodecError(f"bytes {_excerpt(text)} are not base64") from None


def _excerpt(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=repr)
    return text if len(text) <= 120 else text[:117] + "..."


# -- message text ------------------------------------------------------------------------------


def dumps(message: Any) -> str:
    """One message as one line of JSON (no NaN/Infinity: encode() tagged them), always valid
    UTF-8: a string holding a lone surrogate travels as an escape."""
    try:
        return jsontext.dumps(message)
    except jsontext.JsonTextError as exc:
        raise CodecError(f"message {exc}") from None


def _refuse_constant(name: str) -> Any:
    raise CodecError(f"{name} is not valid JSON")


def loads(text: str | bytes) -> Any:
    """One message parsed; bare NaN/Infinity (not JSON) are refused."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise CodecError("message is nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"message is not JSON: {exc}") from None
