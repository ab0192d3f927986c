"""Session content turned into safe HTML: Markdown, highlighted code and unified diffs.

Everything here escapes what it is given. Markdown is rendered by markdown-it-py with raw HTML
disabled (a `<script>` in a message is text), links with a dangerous scheme are dropped by its
link validator, and code is coloured by Pygments, which escapes every token it emits.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup, escape
from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexer import Lexer
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.util import ClassNotFound

# Code larger than this is shown plain: colouring a huge tool output costs more than it helps.
HIGHLIGHT_LIMIT = 200_000
CODE_CSS_CLASS = "code"

_formatter = HtmlFormatter(nowrap=True)


def code_css() -> str:
    """The stylesheet for highlighted code (Pygments' default style, light and dark)."""
    light = HtmlFormatter(style="default").get_style_defs(f".{CODE_CSS_CLASS}")
    dark = HtmlFormatter(style="monokai").get_style_defs(f".{CODE_CSS_CLASS}")
    return f"{light}\n@media (prefers-color-scheme: dark) {{\n{dark}\n}}\n"


@functools.lru_cache(maxsize=256)
def _lexer(language: str | None = None, filename: str | None = None) -> Lexer | None:
    """The lexer for a language name or a file's name; kept, since finding one costs more
    than colouring a short block with it."""
    try:
        if language:
            return get_lexer_by_name(language, stripnl=False, ensurenl=False)
        if filename:
            return get_lexer_for_filename(filename, stripnl=False, ensurenl=False)
    except ClassNotFound:
        pass
    return None


def code(text: str, language: str | None = None, filename: str | None = None) -> Markup:
    """`text` as the inside of a `<pre>`: coloured when its language (or file name) is known."""
    name = PurePosixPath(filename).name if filename else None
    lexer = _lexer(language, name) if len(text) <= HIGHLIGHT_LIMIT else None
    if lexer is None:
        return escape(text)
    return Markup(highlight(text, lexer, _formatter))


def _fence(content: str, language: str, _attrs: str) -> str:
    # A whole <pre> (markdown-it keeps one that starts so), in the class the colours apply to.
    return f'<pre class="{CODE_CSS_CLASS}"><code>{code(content, language or None)}</code></pre>'


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "highlight": _fence})
    md.enable(["table", "strikethrough"])

    def link_open(self: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        # Links leave the page without telling the other site which share they came from.
        tokens[idx].attrSet("rel", "noopener noreferrer nofollow")
        return str(self.renderToken(tokens, idx, options, env))

    md.add_render_rule("link_open", link_open)
    return md


_md = _markdown()


def markdown(text: str) -> Markup:
    """CommonMark (with tables and strikethrough) as HTML; raw HTML in `text` stays text."""
    return Markup(_md.render(text))


@dataclass(frozen=True)
class DiffLine:
    kind: str  # "add", "del", "hunk", "meta" or "context"
    text: str


@dataclass(frozen=True)
class FileDiff:
    """One file's change as a page shows it."""

    file: str
    lines: list[DiffLine]
    additions: int
    deletions: int
    status: str | None = None


HUNK_HEADER = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")


def _diff_lines(patch: str) -> list[DiffLine]:
    """The lines of a unified diff with their kinds. Inside a hunk its header's line counts
    decide, so a removed `-- comment` is not taken for a `---` file header."""
    lines: list[DiffLine] = []
    old = new = 0  # lines of the current hunk still to come, on each side
    for line in patch.splitlines():
        if line.startswith(("Index:", "====")) and not old and not new:
            continue  # opencode's patches open with these; they repeat the file name
        hunk = HUNK_HEADER.match(line)
        if old > 0 or new > 0:
            if line.startswith("+"):
                kind, new = "add", new - 1
            elif line.startswith("-"):
                kind, old = "del", old - 1
            elif line.startswith("\\"):
                kind = "meta"  # "\ No newline at end of file"
            else:
                kind, old, new = "context", old - 1, new - 1
        elif hunk:
            kind = "hunk"
            old, new = int(hunk[1] or 1), int(hunk[2] or 1)
        else:
            kind = "meta"
        lines.append(DiffLine(kind, line))
    return lines


def _count(value: Any, fallback: int) -> int:
    valid = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if valid else fallback


def file_diff(data: Any, file: str | None = None) -> FileDiff | None:
    """A page's view of one of opencode's file diffs: `{file, patch, additions, deletions,
    status}`, or the older `{file, before, after, ...}`, or a bare unified diff text (an edit
    tool's `metadata.diff`). None when there is nothing to show."""
    if isinstance(data, str):
        data = {"patch": data}
    if not isinstance(data, dict):
        return None
    given = data.get("file")
    name = given if isinstance(given, str) else file or ""
    patch = data.get("patch")
    if not isinstance(patch, str):
        before, after = data.get("before"), data.get("after")
        if not isinstance(before, str) and not isinstance(after, str):
            return None
        patch = "".join(
            difflib.unified_diff(
                (before if isinstance(before, str) else "").splitlines(keepends=True),
                (after if isinstance(after, str) else "").splitlines(keepends=True),
                name,
                name,
            )
        )
    lines = _diff_lines(patch)
    status = data.get("status") if isinstance(data.get("status"), str) else None
    return FileDiff(
        file=name,
        lines=lines,
        additions=_count(data.get("additions"), sum(line.kind == "add" for line in lines)),
        deletions=_count(data.get("deletions"), sum(line.kind == "del" for line in lines)),
        status=status,
    )


def file_diffs(items: Iterable[Any]) -> list[FileDiff]:
    return [diff for diff in map(file_diff, items) if diff is not None]
