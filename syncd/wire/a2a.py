"""SyncData in A2A messages, as the `a2a` transport sends them and `syncd serve` reads them.

Mapping: a session is an A2A `contextId`; each batch is one `SendMessage` whose `messageId` is
the batch key, carrying one part per SyncData item.

Numbers: an A2A data part is a `google.protobuf.Value`, where every number is a double, so the
SDK sends `1790000000000` as `1790000000000.0` and a receiver reads a float. The rule both ends
follow (`item_part` / `part_item`): in a data part a whole number is an integer, as in the
JSON opencode (JavaScript) writes. An item a data part cannot carry exactly (an integer beyond
2**53, a float with no fraction, NaN, a lone surrogate, which protobuf strings cannot hold,
nesting deeper than protobuf parses) travels as a text part holding its JSON text (lone
surrogates as escapes), media type `application/json`.

Shares and their credentials, as over REST: a message with metadata
`{"syncd.operation": "create"}` creates a new share of its context and is answered with its id
and secret (`{"shareId", "secret", "shareUrl"}`); every other message names the share it writes
to and proves it holds it, with metadata `{"syncd.shareId", "syncd.secret"}`. A `contextId`
alone authorizes nothing. A2A has no operation that removes a context: delete is a message with
metadata `{"syncd.operation": "delete"}` and the share's credentials.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from .. import jsontext
from ..model import SyncItem

if TYPE_CHECKING:
    from a2a.types.a2a_pb2 import Message, Part

JSON_MEDIA_TYPE = "application/json"
OPERATION_FIELD = "syncd.operation"
CREATE_OPERATION = "create"
DELETE_OPERATION = "delete"
SHARE_ID_FIELD = "syncd.shareId"
SECRET_FIELD = "syncd.secret"
EXACT_INT = 2**53  # doubles hold every integer up to this exactly


def _exact_as_double(value: Any) -> bool:
    """Whether `value` comes back unchanged through a data part and `_whole_to_int`."""
    if isinstance(value, str):
        return jsontext.is_text(value)
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return abs(value) <= EXACT_INT
    if isinstance(value, float):
        return math.isfinite(value) and not value.is_integer()
    if isinstance(value, list):
        return all(_exact_as_double(element) for element in value)
    if isinstance(value, dict):
        return all(
            jsontext.is_text(key) and _exact_as_double(element) for key, element in value.items()
        )
    return False


def _whole_to_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_to_int(element) for element in value]
    if isinstance(value, dict):
        return {key: _whole_to_int(element) for key, element in value.items()}
    return value


# protobuf's parser (upb, on both ends) refuses a message nested beyond 100 levels, and in a
# data part each JSON object costs three (Value, Struct, its map entry): objects nested 33 deep
# in an item were refused when the message was read back. Deeper items go as text parts.
DATA_PART_MAX_DEPTH = 24


def item_part(item: SyncItem) -> Part:
    """The A2A part carrying one SyncData item (see the module docstring); ValueError (a
    JsonTextError) for an item no part can carry."""
    from a2a.types.a2a_pb2 import Part
    from google.protobuf import json_format, struct_pb2

    try:
        jsontext.check_depth(item, DATA_PART_MAX_DEPTH)
        if _exact_as_double(item):
            return Part(data=json_format.ParseDict(item, struct_pb2.Value()))
    except (jsontext.JsonTextError, json_format.ParseError, RecursionError):
        pass  # deeper than protobuf parses: the text part carries it
    return Part(text=jsontext.dumps(item), media_type=JSON_MEDIA_TYPE)


def part_item(part: Part) -> Any:
    """The JSON value a part carries (ValueError naming the problem when it carries none)."""
    from google.protobuf import json_format

    content = part.WhichOneof("content")
    if content == "data":
        return _whole_to_int(json_format.MessageToDict(part.data))
    if content == "text" and part.media_type == JSON_MEDIA_TYPE:
        try:
            return jsontext.loads(part.text, jsontext.MAX_DEPTH + jsontext.ENVELOPE_DEPTH)
        except jsontext.JsonTextError as exc:
            raise ValueError(f"text part {exc}") from exc
    raise ValueError(f"must be a data part or an {JSON_MEDIA_TYPE} text part, not {content}")


def metadata_text(message: Message, field: str) -> str | None:
    """The string `field` of the message's metadata; None when absent or not a string."""
    value = message.metadata.fields.get(field)
    if value is None or value.WhichOneof("kind") != "string_value":
        return None
    return value.string_value


def silence_sdk_debug() -> None:
    """a2a-sdk logs whole requests and answers at debug level, share secrets included: keep
    its loggers at info or above whatever the root logger is set to."""
    sdk = logging.getLogger("a2a")
    sdk.setLevel(max(logging.INFO, sdk.level))
