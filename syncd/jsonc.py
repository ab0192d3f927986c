"""JSON with comments and trailing commas, the format of opencode's `opencode.jsonc`.

Comments and trailing commas are blanked out (not removed) so that the positions in a
`json.JSONDecodeError` still point at the user's line and column.
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: str) -> Any:
    """Parse JSONC text; raises `json.JSONDecodeError` (a ValueError) on malformed input."""
    out = list(text)
    comma = None  # a comma followed so far only by blanks and comments
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            i, comma = _string_end(text, i), None
            continue
        if text.startswith(("//", "/*"), i):
            end = _comment_end(text, i)
            for j in range(i, end):
                if out[j] not in "\r\n":
                    out[j] = " "
            i = end
            continue
        if char in "}]" and comma is not None:
            out[comma] = " "
        if char == ",":
            comma = i
        elif char not in " \t\r\n":
            comma = None
        i += 1
    return json.loads("".join(out))


def _comment_end(text: str, start: int) -> int:
    if text.startswith("//", start):
        end = text.find("\n", start)
        return len(text) if end == -1 else end
    close = text.find("*/", start + 2)
    if close == -1:
        raise json.JSONDecodeError("unterminated /* comment", text, start)
    return close + 2


def _string_end(text: str, start: int) -> int:
    """Index just past the string literal opening at `start` (or the end of an unterminated
    one, which json.loads then reports)."""
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    return len(text)
