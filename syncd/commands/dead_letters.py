"""`syncd dead-letters`: list, show, retry and discard what the receiver refused for good (or
what could not be read from opencode).

Retry puts the entities behind a letter back as pending, to be read again from opencode at
send time (the stored payload is only for inspection), and deletes the letter. A letter for
an item derived from the whole session (`session_diff`, `model`; its item id is the session
id) re-captures the whole session from opencode. A running daemon picks retried items up at
its next look at the database (at most `poll_interval` seconds); `syncd sync` sends them now.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn, TextIO

from rich.console import Console
from rich.text import Text

from .. import jsontext
from ..config import Config
from ..errors import UserError
from ..source.changes import ChangeDetector
from ..source.opencode_db import OpencodeDb
from ..state.store import StateStore, merged_spans
from ..terminal import printable_json
from . import Subcommands
from .screen import ago, clipped, fitted, screen, short_ids, table_for, timestamp

# Entities read from opencode by id; everything else is derived from the whole session.
ENTITY_KINDS = ("session", "message", "part")
LARGEST_ID = 2**63 - 1  # a letter's id is a SQLite integer


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    help = "list, show, retry or discard dead letters"
    letters = commands.add_parser("dead-letters", help=help, description=help)
    letters.set_defaults(command=_command, reads_state=True)
    # The common flags go on each action (`syncd dead-letters list --state FILE`): argparse
    # would let an action's defaults overwrite flags given before it.
    actions = letters.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, help: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, parents=[common], help=help, description=help)

    action("list", "every dead letter").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    action("show", "one dead letter with its payload").add_argument("id", type=_letter_id)
    for name, text in (
        ("retry", "send again (read afresh from opencode) once the receiver accepts them"),
        ("discard", "drop for good"),
    ):
        sub = action(name, text)
        sub.add_argument(
            "ids", type=_id_range, nargs="*", metavar="ID", help="an id, or a range: 12-68"
        )
        sub.add_argument("--all", action="store_true", help="every dead letter")


def _command(config: Config, args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    match args.action:
        case "list":
            return list_letters(config, as_json=args.json)
        case "show":
            return show_letter(config, args.id)
        case "retry":
            return retry(config, args.ids, args.all)
        case _:
            return discard(config, args.ids, args.all)


def _letter_id(text: str) -> int:
    ids = _id_range(text)
    if ids.stop - ids.start != 1:
        _not_an_id(text)
    return ids.start


def _id_range(text: str) -> range:
    """An id or a range of ids, never expanded: `1-2000000000` costs what `1` does."""
    first, _, last = text.partition("-")
    try:
        ids = range(int(first), int(last or first) + 1)
    except ValueError:
        _not_an_id(text)
    if not ids:
        raise argparse.ArgumentTypeError(f"{text!r} is an empty range")
    if ids[-1] > LARGEST_ID:
        _not_an_id(text)
    return ids


def _not_an_id(text: str) -> NoReturn:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not an id or a range of ids (from 0 to {LARGEST_ID})"
    ) from None


async def list_letters(config: Config, as_json: bool = False) -> int:
    state = await StateStore.open_readonly(config.state)
    try:
        letters = await state.dead_letters()
    finally:
        await state.close()
    if as_json:
        json.dump(letters, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not letters:
        print("no dead letters")
        return 0
    render_letters(letters, sys.stdout)
    return 0


def render_letters(
    letters: list[dict[str, Any]],
    out: TextIO,
    *,
    now: float | None = None,
    console: Console | None = None,
) -> None:
    """On a terminal, one row per refused batch (its letters share the session, the moment
    and the reason): what one missing key did to 57 items is one line. In a pipe, one row
    per letter, every detail."""
    with screen(out, console) as shown:
        if shown.is_terminal:
            groups = _batches(letters)
            table = fitted(table_for(shown, "IDS", "SESSION", "WHEN", "ITEMS", "REASON"))
            table.columns[3].justify = "right"
            short = short_ids(letter["session_id"] for letter in letters)
            moment = time.time() if now is None else now
            for group in groups:
                first = group[0]
                table.add_row(
                    _ranges([letter["id"] for letter in group]),
                    Text(short[first["session_id"]]),
                    ago(first["time_created"], moment),
                    str(len(group)),
                    clipped(first["reason"]),
                )
            counted = f"{len(letters)} dead letter(s) in {len(groups)} batch(es)"
        else:
            table = table_for(shown, "ID", "SESSION", "KIND", "ITEM", "WHEN", "REASON")
            for letter in letters:
                table.add_row(
                    str(letter["id"]),
                    Text(letter["session_id"]),
                    letter["kind"],
                    Text(letter["item_id"]),
                    timestamp(letter["time_created"]),
                    Text(" ".join(letter["reason"].split())),
                )
            counted = f"{len(letters)} dead letter(s)"
        shown.print(table)
        shown.print("")
        shown.print(
            Text(
                f"{counted}. `syncd dead-letters show ID`: the full reason and what was refused; "
                "`retry ID...` (or a range: 12-68, or --all) once the receiver accepts them "
                "again, `discard ID...` to drop them."
            )
        )


def _batches(letters: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Letters written together (one refused batch: same session, moment and reason)."""
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for letter in letters:
        key = (letter["session_id"], letter["time_created"], letter["reason"])
        groups.setdefault(key, []).append(letter)
    return list(groups.values())


def _ranges(ids: list[int]) -> str:
    """1-57, or 1-3,7 when not contiguous."""
    spans: list[str] = []
    for _, run in itertools.groupby(enumerate(sorted(ids)), lambda pair: pair[1] - pair[0]):
        values = [value for _, value in run]
        spans.append(str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}")
    return ",".join(spans)


async def show_letter(config: Config, letter_id: int) -> int:
    state = await StateStore.open_readonly(config.state)
    try:
        found = await state.dead_letters([range(letter_id, letter_id + 1)])
        payload = await state.dead_letter_payload(letter_id)
    finally:
        await state.close()
    if not found:
        raise UserError(f"no dead letter {letter_id}: `syncd dead-letters list` shows them")
    shown = jsontext.dumps({**found[0], "payload": payload}, indent=2)
    sys.stdout.write(printable_json(shown) + "\n")
    return 0


async def retry(config: Config, spans: Sequence[range], every: bool) -> int:
    state = await StateStore.open(config.state)
    try:
        letters = await _chosen(state, spans, every)
        keys = await _keys_to_requeue(config, letters)
        done = await state.requeue_dead_letters(keys)
    finally:
        await state.close()
    items = sum(len(keys[letter_id]) for letter_id in done)
    print(
        f"{len(done)} dead letter(s) retried: {items} item(s) pending again. A running daemon "
        f"sends them within {config.poll_interval:g}s; otherwise run `syncd sync`."
    )
    return 0


async def discard(config: Config, spans: Sequence[range], every: bool) -> int:
    state = await StateStore.open(config.state)
    try:
        letters = await _chosen(state, spans, every)
        count = await state.discard_dead_letters(letter["id"] for letter in letters)
    finally:
        await state.close()
    print(f"{count} dead letter(s) discarded")
    return 0


async def _chosen(state: StateStore, spans: Sequence[range], every: bool) -> list[dict[str, Any]]:
    if every == bool(spans):
        raise UserError("name the dead letters by id, or pass --all (not both)")
    letters = await state.dead_letters(None if every else spans)
    if not every:
        _require_all_named(spans, {letter["id"] for letter in letters})
    return letters


def _require_all_named(spans: Sequence[range], found: set[int], shown: int = 10) -> None:
    """UserError naming the first few ids in `spans` that no dead letter has, and how many."""
    merged = merged_spans(spans)
    # Counted by subtraction: len() of a range fails past 2**63 ids (`0-9223372036854775807`).
    missing = sum(span.stop - span.start for span in merged) - len(found)
    if not missing:
        return
    # Each id looked at is either found or shown: at most len(found) + `shown` of them.
    first = list(itertools.islice((n for span in merged for n in span if n not in found), shown))
    named = ", ".join(map(str, first)) + (f", ... ({missing} in all)" if missing > shown else "")
    raise UserError(f"no dead letter {named}: `syncd dead-letters list` shows them")


async def _keys_to_requeue(
    config: Config, letters: list[dict[str, Any]]
) -> dict[int, set[tuple[str, str]]]:
    keys: dict[int, set[tuple[str, str]]] = {}
    derived = [letter for letter in letters if letter["kind"] not in ENTITY_KINDS]
    for letter in letters:
        if letter["kind"] in ENTITY_KINDS:
            keys[letter["id"]] = {(letter["kind"], letter["item_id"])}
    if derived:
        db = await OpencodeDb.open(config.db)
        try:
            detector = ChangeDetector(db, only_shared=False)
            sessions: dict[str, set[tuple[str, str]]] = {}
            for letter in derived:
                session_id = letter["session_id"]
                if session_id not in sessions:
                    sessions[session_id] = await detector.whole_session(session_id)
                keys[letter["id"]] = sessions[session_id]
        finally:
            await db.close()
    return keys
