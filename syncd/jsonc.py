"""JSON with comments and trailing commas, the format of opencode's `opencode.jsonc`.

Comments and trailing commas are blanked out (not removed) so that the positions in a
`json.JSONDecodeError` still point at the user's line and column.
"""

from __future__ import annotations

import json
from typing import Any


def loads(text: str) -> Any:
    """Parse JSONC text; raises `json.JSONDecodeError` (a ValueError) on malformed input."""
    return json.loads(_blank_trailing_commas(_blank_comments(text)))


def _blank_comments(text: str) -> str:
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            i = _string_end(text, i)
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end == -1 else end
        elif text.startswith("/*", i):
            close = text.find("*/", i + 2)
            if close == -1:
                raise json.JSONDecodeError("unterminated /* comment", text, i)
            end = close + 2
        else:
            i += 1
            continue
        for j in range(i, end):
            if out[j] not in "\r\n":
                out[j] = " "
        i = end
    return "".join(out)


def _blank_trailing_commas(text: str) -> str:
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char == '"':
            i = _string_end(text, i)
            continue
        if char == ",":
            j = i + 1
            while j < n and text[j] in " \t\r\n":
                j += 1
            if j < n and text[j] in "}]":
                out[i] = " "
        i += 1
    return "".join(out)


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
