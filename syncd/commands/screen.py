"""How the commands' tables and times look: on a terminal, fitted to its width (short ids,
relative times, colours); in a pipe, plain unwrapped lines with every detail, for grep and awk."""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from rich import box
from rich.cells import cell_len
from rich.console import (
    Console,
    ConsoleOptions,
    ConsoleRenderable,
    RenderableType,
    RenderHook,
    RenderResult,
)
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from ..errors import UserError
from ..terminal import printable

SHORT_ID = 8  # characters of an opencode id's random tail: what share urls use too


@contextlib.contextmanager
def screen(out: TextIO, console: Console | None = None) -> Iterator[Console]:
    """A console for `out` (or the given one, for tests) that prints no control character
    (`printable`), on a terminal or not. In a pipe, what it printed reaches `out` as plain
    lines without trailing blanks, written by plain `write` so that a closed pipe reaches the
    CLI as BrokenPipeError."""
    buffer = None
    if console is None and out.isatty():
        console = Console(file=out)
    elif console is None:
        buffer = io.StringIO()
        console = Console(file=buffer, width=100_000, no_color=True, highlight=False, emoji=False)
    console.push_render_hook(_PRINTABLE)
    try:
        yield console
    finally:
        console.pop_render_hook()
    if buffer is not None:
        out.write("".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines()))


class _Printable:
    """A renderable as it renders, its text made `printable`: every line and cell a command
    prints comes through here, whoever built it. Laid out already: a control character, 0
    cells wide to rich, widens its line as an escape (`clipped` and `_plain` cells, where
    long text from elsewhere goes, are made printable before they are measured)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for segment in console.render(self.renderable, options):
            # A control segment is rich's own (cursor moves), never text from elsewhere.
            yield segment if segment.control else segment._replace(text=printable(segment.text))


class _PrintableHook(RenderHook):
    def process_renderables(self, renderables: list[ConsoleRenderable]) -> list[ConsoleRenderable]:
        return [_Printable(renderable) for renderable in renderables]


_PRINTABLE = _PrintableHook()


def table_for(console: Console, *headers: str) -> Table:
    terminal = console.is_terminal
    return (Table if terminal else _PipeTable)(
        *headers,
        box=box.SIMPLE_HEAD if terminal else None,
        show_edge=False,
        pad_edge=False,
        collapse_padding=terminal,  # two spaces between columns, not three: room for the last
        header_style="bold" if terminal else "",
    )


class _PipeTable(Table):
    """A table for a pipe: a line per row, each column as wide as its widest cell, two spaces
    apart, whitespace in a cell folded to one space. Laid out here, not by rich, which takes
    about a millisecond a row: four minutes for the dead letters of one large refusal."""

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        columns = [[_plain(column.header), *map(_plain, column.cells)] for column in self.columns]
        widths = [max(map(cell_len, cells)) for cells in columns]
        for row in zip(*columns, strict=True):
            padded = (
                cell + " " * (width - cell_len(cell))
                for cell, width in zip(row, widths, strict=True)
            )
            yield Segment("  ".join(padded).rstrip() + "\n")


def _plain(cell: RenderableType) -> str:
    # Made printable before it is measured, so that the columns after it stay aligned.
    return printable(" ".join((cell.plain if isinstance(cell, Text) else str(cell)).split()))


def fitted(table: Table) -> Table:
    """The table on one line per row at the console's width: every column but the last keeps
    its width; the last (cells made by `clipped`) gets what is left and ends in an ellipsis."""
    for column in table.columns[:-1]:
        column.no_wrap = True
    return table


def clipped(text: str | None) -> Text:
    """One line, cut to its column's width with an ellipsis (see `fitted`); "-" for nothing.
    Text, not markup: ids, urls and server messages may hold "[...]". Made printable before
    it is cut, so that the cut falls at the column's edge."""
    shown = printable(" ".join(text.split())) if text else "-"
    return Text(shown, no_wrap=True, overflow="ellipsis")


def timestamp(ms: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def duration(seconds: float) -> str:
    """12s, 5m, 3h, 2d: the largest unit, rounded down."""
    seconds = max(int(seconds), 0)
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ago(ms: int | None, now: float) -> str:
    return f"{duration(now - ms / 1000)} ago" if ms else "-"


def short_ids(ids: Iterable[str]) -> dict[str, str]:
    """Each id's tail, SHORT_ID characters or as many more as it takes to tell it apart."""
    ids = set(ids)
    short: dict[str, str] = {}
    length = SHORT_ID
    while ids:
        tails: dict[str, list[str]] = {}
        for full in ids:
            tails.setdefault(full[-length:], []).append(full)
        for tail, owners in tails.items():
            if len(owners) == 1 or length >= len(owners[0]):
                short.update((full, tail) for full in owners)
        ids -= set(short)
        length += 1
    return short


def find_session(rows: list[dict[str, Any]], wanted: str) -> dict[str, Any]:
    """The state's row (`session_report`) for what the user typed: a session id, its share id,
    the start of the id, or its end (the short id a terminal shows); a UserError saying what
    to do when there is none or several."""
    exact = [row for row in rows if row["session_id"] == wanted]
    by_share = [row for row in rows if (row["share_url"] or "").endswith(f"/share/{wanted}")]
    by_start = [row for row in rows if row["session_id"].startswith(wanted)]
    by_end = [row for row in rows if row["session_id"].endswith(wanted)]
    for found in (exact, by_share, by_start, by_end):
        if len(found) == 1:
            return found[0]
    if by_start or by_end:
        how = "start" if by_start else "end"
        raise UserError(
            f"{len(by_start or by_end)} sessions {how} with {wanted!r}: give more of the id "
            "(`syncd status` lists them)"
        )
    raise UserError(f"no session {wanted!r} in the state: `syncd status` lists the sessions")
