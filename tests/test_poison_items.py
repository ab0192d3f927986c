"""Any value opencode's `JSON.stringify` can write, in any field of a part, over every
transport: delivered exactly as opencode wrote it, or dead-lettered alone with its reason; the
items written after it in the same session arrive either way.

What JSON.stringify writes: any string (lone UTF-16 surrogates as `\\udXXX` escapes, control
characters escaped), numbers as doubles print (an integral double below 1e21 as its digits,
however many past 2**53, others in exponent form; never NaN or Infinity), and nesting as deep
as the object was. Text opencode never writes (integers of thousands of digits) is here too:
it must be dead-lettered alone.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd import jsontext
from syncd.archive.sqlite import SqliteArchive
from syncd.commands.sync import sync_once
from syncd.errors import UserError
from syncd.state.store import StateStore
from tests.support.archive_check import make_config
from tests.support.fake_opencode import FakeOpencode
from tests.support.receiver import Receiver, receiver_in_thread

# Any character, lone surrogates and control characters included.
js_characters = st.characters(codec=None) | st.characters(categories=["Cs"])
js_strings = st.text(js_characters, max_size=8)


def as_javascript_prints(number: float) -> int | float:
    """The value Python reads from the text JSON.stringify writes for `number`."""
    return int(number) if number.is_integer() and abs(number) < 1e21 else number


js_numbers = st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False).map(
    as_javascript_prints
)
js_values = st.recursive(
    st.none() | st.booleans() | js_numbers | js_strings,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(js_strings, inner, max_size=3),
    max_leaves=8,
)


def nested(depth: int, leaf: str = "0") -> str:
    """JSON text of `depth` arrays and objects, alternately, around `leaf`."""
    opening = "".join("[" if level % 2 else '{"k":' for level in range(depth))
    closing = "".join("]" if level % 2 else "}" for level in reversed(range(depth)))
    return opening + leaf + closing


# JSON text for one field's value: anything JSON.stringify writes, deep nesting (within
# syncd's limit and far past it), and integers longer than any JavaScript number prints.
value_texts = st.one_of(
    js_values.map(lambda value: json.dumps(value, ensure_ascii=True)),
    st.integers(1, 3000).map(nested),
    st.integers(16, 6000).map(lambda digits: "9" * digits),
)
# (field name, JSON text of its value) for one part.
IDS = ("id", "sessionID", "messageID")
hostile_fields = st.tuples(js_strings.filter(lambda key: key not in (*IDS, "type")), value_texts)


def part_text(field: str, value_text: str) -> str:
    return '{"type":"text","' + json.dumps(field, ensure_ascii=True)[1:-1] + '":' + value_text + "}"


def readable(text: str) -> Any | None:
    """What syncd reads from a part's text (None: it cannot, so it must be dead-lettered)."""
    try:
        return jsontext.loads(text)
    except jsontext.JsonTextError:
        return None


def depth_of(text: str) -> int:
    """The deepest nesting in JSON text (the text of a readable value)."""
    deepest = level = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            escaped, in_string = (False, True) if escaped else (char == "\\", char != '"')
        elif char == '"':
            in_string = True
        elif char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


def javascript_wrote(value: Any) -> bool:
    """Whether JSON.stringify could have written `value`: every integer is a double that
    prints as its digits (beyond 2**53 only exact doubles, below 1e21)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif (
            isinstance(node, int)
            and not isinstance(node, bool)
            and abs(node) > 2**53
            and (abs(node) >= 10**21 or int(float(node)) != node)
        ):
            return False
    return True


def canonical(value: Any) -> str:
    """JSON text that tells apart what JSON tells apart (1 and 1.0, a surrogate's escape)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def write_session(db: Path, fixtures_dir: Path, fields: list[tuple[str, str]]) -> dict[str, Any]:
    writer = FakeOpencode(db, fixtures_dir)
    try:
        sid = writer.session()
        first = writer.message(sid, {"role": "user", "time": {"created": 1}})
        hostile = {writer.part(sid, first, part_text(*field)): field for field in fields}
        # Written after the hostile parts: must arrive whatever became of them.
        later_message = writer.message(sid, {"role": "assistant", "time": {"created": 2}})
        later_part = writer.part(sid, later_message, {"type": "text", "text": "after"})
    finally:
        writer.close()
    return {"sid": sid, "hostile": hostile, "messages": {first, later_message},
            "later_part": later_part}  # fmt: skip


async def deliver_and_check(
    tmp: Path, fixtures_dir: Path, fields: list[tuple[str, str]], transport: str, url: str | None
) -> dict[str, Any]:
    written = write_session(tmp / "opencode.db", fixtures_dir, fields)
    flags: dict[str, Any] = {"transport": transport, "sessions": "all"}
    if url is not None:
        flags["url"] = url
    config = make_config(tmp, tmp / "opencode.db", **flags)
    try:
        await sync_once(config, give_up_after=20)
    except UserError as refused:
        assert "dead-lettered" in str(refused), refused  # never "not delivered"
    state = await StateStore.open(config.state)
    try:
        letters = await state.dead_letters()
        assert await state.pending_sessions() == {}
    finally:
        await state.close()
    return {**written, "letters": {letter["item_id"]: letter["reason"] for letter in letters}}


async def archived_parts(archive: Path, sid: str) -> tuple[dict[str, Any], set[str]]:
    """The parts of the session's share, and the message ids, read from the archive file."""
    store = await SqliteArchive.open(archive)
    try:
        [share] = [s for s in await store.list_shares() if s["session_id"] == sid]
        document = await store.read_share(share["id"])
    finally:
        await store.close()
    parts = {part["id"]: part for part in document["parts"]}
    return parts, {message["id"] for message in document["messages"]}


def check(
    result: dict[str, Any], parts: dict[str, Any], messages: set[str], transport: str
) -> None:
    letters = result["letters"]
    assert set(letters) <= set(result["hostile"]), "only hostile parts may be dead-lettered"
    assert parts[result["later_part"]]["text"] == "after"
    assert result["messages"] <= messages
    for part_id, (field, value_text) in result["hostile"].items():
        wrote = readable(part_text(field, value_text))
        if part_id in letters:
            assert letters[part_id], "a dead letter names its reason"
            assert part_id not in parts
            # Only what syncd cannot read, what opencode would never write, or what the
            # transport cannot carry, is refused.
            deep_for_capnweb = transport.startswith("capnweb") and depth_of(value_text) > 200
            assert wrote is None or deep_for_capnweb or not javascript_wrote(wrote), (
                part_id,
                letters[part_id],
            )
            continue
        assert wrote is not None, f"{part_id} cannot be read, yet was not dead-lettered"
        got = {key: value for key, value in parts[part_id].items() if key not in IDS}
        assert canonical(got) == canonical(wrote)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=st.lists(hostile_fields, min_size=1, max_size=4))
def test_local_archive_takes_any_value_or_dead_letters_it_alone(
    fixtures_dir: Path, fields: list[tuple[str, str]]
) -> None:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        result = asyncio.run(deliver_and_check(tmp, fixtures_dir, fields, "local", None))
        parts, messages = asyncio.run(archived_parts(tmp / "archive.db", result["sid"]))
        check(result, parts, messages, "local")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Receiver]:
    with receiver_in_thread(tmp_path_factory.mktemp("receiver")) as running:
        yield running


@pytest.mark.parametrize("transport", ["http", "capnweb-batch", "capnweb-ws", "a2a"])
def test_every_transport_carries_any_value_or_dead_letters_it_alone(
    fixtures_dir: Path, receiver: Receiver, transport: str
) -> None:
    archive = receiver.store.path

    @settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(fields=st.lists(hostile_fields, min_size=1, max_size=4))
    def one(fields: list[tuple[str, str]]) -> None:
        with tempfile.TemporaryDirectory() as name:
            tmp = Path(name)
            result = asyncio.run(
                deliver_and_check(tmp, fixtures_dir, fields, transport, receiver.url)
            )
            parts, messages = asyncio.run(archived_parts(archive, result["sid"]))
            check(result, parts, messages, transport)

    one()


def test_a_lone_surrogate_travels_as_opencode_wrote_it(tmp_path: Path, fixtures_dir: Path) -> None:
    """The case that stalled a session for ever: an output cut in the middle of an emoji."""
    cut = '{"type":"text","text":"cut \\ud83d"}'
    result = asyncio.run(deliver_and_check(tmp_path, fixtures_dir, [("text", '"cut \\ud83d"')],
                                           "local", None))  # fmt: skip
    assert result["letters"] == {}
    parts, _ = asyncio.run(archived_parts(tmp_path / "archive.db", result["sid"]))
    [part_id] = result["hostile"]
    assert parts[part_id]["text"] == "cut \ud83d" == json.loads(cut)["text"]
    # Stored as the escape opencode wrote, not as text no UTF-8 reader could take.
    with sqlite3.connect(tmp_path / "archive.db") as conn:
        [stored] = conn.execute(
            "SELECT data FROM share_item WHERE item_key LIKE '%/' || ?", (part_id,)
        )
    assert "\\ud83d" in stored[0]


def test_a_reason_quoting_a_lone_surrogate_is_stored_and_shown(
    tmp_path: Path, fixtures_dir: Path, receiver: Receiver
) -> None:
    """capnweb refuses an integer no double holds and names where it is, a key holding a lone
    surrogate here: the dead letter, `syncd status` and `syncd dead-letters show` take it."""
    field, value = "\ud800", "9999999999999999"
    result = asyncio.run(
        deliver_and_check(tmp_path, fixtures_dir, [(field, value)], "capnweb-batch", receiver.url)
    )
    [(part_id, reason)] = result["letters"].items()
    assert "\\ud800" in reason and "beyond 2**53" in reason
    flags = ["--db", str(tmp_path / "opencode.db"), "--state", str(tmp_path / "state.db"),
             "--url", receiver.url, "--transport", "capnweb-batch"]  # fmt: skip
    for command, names in ((["status"], result["sid"]), (["status", "--json"], result["sid"]),
                           (["dead-letters", "show", "1"], part_id)):  # fmt: skip
        shown = subprocess.run([sys.executable, "-m", "syncd", *command, *flags],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "Traceback" not in shown.stderr and names in shown.stdout, (command, shown)
