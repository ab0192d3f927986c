"""Rows opencode would never write (or writes in an unlucky order): syncd must not crash, must
dead-letter exactly the row it cannot process with its reason, and deliver everything else."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.commands.sync import sync_once
from syncd.errors import UserError
from syncd.pipeline.deliver import RetryPolicy
from syncd.pipeline.pipeline import Pipeline
from syncd.state.store import StateStore
from tests.support.archive_check import archived, make_config
from tests.support.fake_opencode import FakeOpencode

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
# Row ids are the receiver's keys; what data says about them is covered elsewhere.
json_objects = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("id", "sessionID", "messageID")),
    json_values,
    max_size=5,
)
INVALID_UTF8 = b'{"text": "\xff\xfe"}'


def hostile_rows() -> st.SearchStrategy[tuple[str, Any]]:
    """(kind, content) of one part row: ok = any JSON object, the others unprocessable."""
    return st.one_of(
        st.tuples(st.just("ok"), json_objects),
        st.tuples(st.just("not an object"), json_values.filter(lambda v: not isinstance(v, dict))),
        st.tuples(st.just("not JSON"), st.text(min_size=1).filter(_not_json)),
        st.tuples(st.just("invalid UTF-8 blob"), st.just(INVALID_UTF8)),
        st.tuples(st.just("invalid UTF-8 text"), st.just(INVALID_UTF8)),
    )


def _not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


def write_row(writer: FakeOpencode, sid: str, mid: str, kind: str, content: Any) -> str:
    if kind == "ok" or kind == "not an object":
        return writer.part(sid, mid, json.dumps(content))
    if kind == "not JSON":
        return writer.part(sid, mid, content)
    part_id = writer.part(sid, mid, {"type": "text"})
    cast = "CAST(? AS TEXT)" if kind == "invalid UTF-8 text" else "?"
    writer.conn.execute(f"UPDATE part SET data = {cast} WHERE id = ?", (content, part_id))
    return part_id


async def dead_letters(config: Any) -> dict[str, str]:
    state = await StateStore.open(config.state)
    try:
        return {letter["item_id"]: letter["reason"] for letter in await state.dead_letters()}
    finally:
        await state.close()


async def sync_expecting(config: Any, dead: int) -> None:
    if dead:
        with pytest.raises(UserError, match=f"{dead} item"):
            await sync_once(config)
    else:
        assert await sync_once(config) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(hostile_rows(), min_size=1, max_size=6))
def test_any_row_is_delivered_or_dead_lettered_with_its_reason(
    fixtures_dir: Path, rows: list[tuple[str, Any]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_deliver_or_dead_letter(Path(tmp), fixtures_dir, rows))


async def _deliver_or_dead_letter(
    tmp: Path, fixtures_dir: Path, rows: list[tuple[str, Any]]
) -> None:
    writer = FakeOpencode(tmp / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user", "time": {"created": 1}})
    written = [(write_row(writer, sid, mid, kind, content), kind, content)
               for kind, content in rows]  # fmt: skip
    writer.close()
    config = make_config(tmp, tmp / "opencode.db")
    bad = [part_id for part_id, kind, _ in written if kind != "ok"]
    await sync_expecting(config, len(bad))
    got = (await archived(config))[sid]
    letters = await dead_letters(config)
    assert set(letters) == set(bad)
    for part_id, kind, content in written:
        if kind == "ok":
            assert got["parts"][part_id] == {**content, "id": part_id, "sessionID": sid,
                                             "messageID": mid}  # fmt: skip
        else:
            assert part_id not in got["parts"]
            assert part_id in letters[part_id]
            reason = {"not an object": "not a JSON object", "not JSON": "not valid JSON",
                      "invalid UTF-8 blob": "not valid UTF-8",
                      "invalid UTF-8 text": "not valid UTF-8"}[kind]  # fmt: skip
            assert reason in letters[part_id]
    assert got["messages"][mid]["role"] == "user"


async def test_invalid_utf8_text_in_a_row_blocks_only_that_row(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """SQLite stores what it is given; a TEXT value that is not UTF-8 once made every read of
    the batch fail, so the whole session stayed pending for ever."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    good = writer.part(sid, mid, {"type": "text", "text": "fine"})
    bad = write_row(writer, sid, mid, "invalid UTF-8 text", INVALID_UTF8)
    other = writer.session(title="other session")
    other_message = writer.message(other, {"role": "user"})
    writer.conn.execute("UPDATE session SET title = CAST(? AS TEXT) WHERE id = ?",
                        (b"bad \xff title", other))  # fmt: skip
    config = make_config(tmp_path, writer.path)
    await sync_expecting(config, 2)
    got = await archived(config)
    assert good in got[sid]["parts"] and bad not in got[sid]["parts"]
    letters = await dead_letters(config)
    assert "data is not valid UTF-8" in letters[bad]
    assert "title is not valid UTF-8" in letters[other]
    assert other_message in got[other]["messages"]
    writer.close()


async def test_a_20_mb_part_travels_alone(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "assistant"})
    big_text = "x" * (20 * 1024 * 1024)
    big = writer.part(sid, mid, {"type": "text", "text": big_text})
    small = writer.part(sid, mid, {"type": "text", "text": "small"})
    config = make_config(tmp_path, writer.path)
    await sync_expecting(config, 0)
    got = (await archived(config))[sid]
    assert got["parts"][big]["text"] == big_text and got["parts"][small]["text"] == "small"
    writer.close()


async def test_row_deleted_between_capture_and_send(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    kept = writer.part(sid, mid, {"type": "text", "text": "kept"})
    gone = writer.part(sid, mid, {"type": "text", "text": "gone"})
    config = make_config(tmp_path, writer.path)
    pipeline = await Pipeline.open(config, RetryPolicy(give_up_after=10))
    try:
        assert await pipeline.capture(deep=True) == 1
        writer.conn.execute("DELETE FROM part WHERE id = ?", (gone,))  # after capture
        await pipeline.window.cancel()  # deliver by hand, not through the window
        await pipeline.deliver(sid)
        assert await pipeline.state.pending_sessions() == {}
        assert await pipeline.state.dead_letters() == []
    finally:
        await pipeline.close()
    parts = (await archived(config))[sid]["parts"]
    assert kept in parts and gone not in parts
    writer.close()


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "tables"])
async def test_time_updated_going_backwards_still_delivers(
    tmp_path: Path, fixtures_dir: Path, journal: bool
) -> None:
    """A clock stepped back: the newer content carries an older time_updated. Without a
    journal, far below the margin table mode reads from: the rows below it are counted, and
    the count tells."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=journal)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    part = writer.part(sid, mid, {"type": "text", "text": "before"})
    config = make_config(tmp_path, writer.path)
    await sync_expecting(config, 0)
    writer.part(sid, mid, {"type": "text", "text": "after"}, part_id=part)
    writer.session(session_id=sid, title="after")
    for table in ("part", "session"):
        writer.conn.execute(f"UPDATE {table} SET time_updated = 1000")
    await sync_expecting(config, 0)
    got = (await archived(config))[sid]
    assert got["parts"][part]["text"] == "after"
    assert got["session"]["title"] == "after"
    writer.close()


@pytest.mark.parametrize("journal", [True, False], ids=["journal", "tables"])
@pytest.mark.parametrize("table", ["part", "session"])
@pytest.mark.parametrize("stamp", ["'abc'", "X'00ff'", "1e999", "-1e999", "12.5"])
async def test_a_stamp_opencode_never_writes_stops_nothing(
    tmp_path: Path, fixtures_dir: Path, journal: bool, table: str, stamp: str
) -> None:
    """A `time_updated` that is text, a blob, infinite or fractional: every capture stopped on
    it in table mode (comparing text with numbers, infinity in the kept read's JSON), and the
    daemon's scan in both modes; now the row is delivered, or dead-lettered with its reason,
    and every other session delivered."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir, journal=journal)
    sid = writer.session()
    odd = writer.part(sid, writer.message(sid, {"role": "user"}), {"type": "text", "text": "x"})
    other = writer.session()
    fine = writer.part(other, writer.message(other, {"role": "user"}), {"type": "text"})
    row = odd if table == "part" else sid
    writer.conn.execute(f"UPDATE {table} SET time_updated = {stamp} WHERE id = ?", (row,))
    config = make_config(tmp_path, writer.path)
    try:
        await sync_once(config)
    except UserError as refused:
        assert "dead-lettered" in str(refused)
    assert list(await dead_letters(config)) in ([], [row])
    assert fine in (await archived(config))[other]["parts"]
    # The daemon's wake-up: not deep, idle sessions told by their stamp.
    pipeline = await Pipeline.open(config, RetryPolicy())
    try:
        await pipeline.capture()
    finally:
        await pipeline.close()
    writer.close()


async def test_a_row_whose_id_is_not_utf8_text_is_dead_lettered_not_skipped(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """An id no query can find again (TEXT that is not UTF-8) was read back as bytes, looked
    up, not found, taken for a row deleted since, and acknowledged: `sync` said everything was
    delivered while the part was missing from the remote copy (and, dead-lettered with that
    id, `dead-letters list` and `status --json` failed on bytes)."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    sid = writer.session()
    mid = writer.message(sid, {"role": "user"})
    good = writer.part(sid, mid, {"type": "text", "text": "fine"})
    twin = writer.part(sid, mid, {"type": "text", "text": "its id goes bad"})
    writer.conn.execute("UPDATE part SET id = CAST(? AS TEXT) WHERE id = ?",
                        (b"prt_\xff" + twin.encode(), twin))  # fmt: skip
    config = make_config(tmp_path, writer.path)
    await sync_expecting(config, 1)
    assert good in (await archived(config))[sid]["parts"]
    [reason] = (await dead_letters(config)).values()
    assert "id" in reason and "not valid UTF-8" in reason
    writer.close()
