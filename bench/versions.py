"""Which version of a message or part is which: the writer and the receiver both reduce an
item's content to the same short hash, so an arrival names the write it carries."""

from __future__ import annotations

import hashlib
import json
from typing import Any

# Ids travel beside the row's data in opencode's tables and inside it on the wire.
ID_FIELDS = frozenset({"id", "sessionID", "messageID"})


def content_hash(data: dict[str, Any]) -> str:
    content = {key: value for key, value in data.items() if key not in ID_FIELDS}
    text = json.dumps(_whole_numbers_as_ints(content), sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def _whole_numbers_as_ints(value: Any) -> Any:
    # A2A's data parts turn whole numbers into floats; the content is the same.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers_as_ints(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_ints(item) for item in value]
    return value
