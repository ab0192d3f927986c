"""The one rule that keeps text from elsewhere (a receiver's refusal, a share url it answered,
an error quoting either) from driving the terminal that shows it, wherever output goes: a
pipe ends in a terminal too (`syncd dead-letters list | less -R`).

Every control character is written out as an escape (`\\x1b`), the C0 set but tab and newline,
DEL and the C1 set: ESC and C1 start sequences that retitle the window, clear or rewrite the
screen, or make the terminal answer as if typed; CR and BS move back over what is shown, to
write something else there. Tab and newline only move on; a table folds them into spaces
itself, so that a row stays one line."""

from __future__ import annotations

import re

_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """`text` with every control character but tab and newline written as its escape."""
    return _CONTROL.sub(lambda found: f"\\x{ord(found[0]):02x}", text)


def printable_json(text: str) -> str:
    """JSON text (from `json.dumps` or `jsontext.dumps`) with no control character either:
    JSON escapes C0 itself but leaves DEL and C1 as they are, unless everything non-ASCII is
    escaped. Outside strings JSON text is printable ASCII, so `\\u009b` is the same value."""
    return _CONTROL.sub(lambda found: f"\\u{ord(found[0]):04x}", text)
