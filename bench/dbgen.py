"""Generated opencode databases with the real schema, shaped like the sample's rows (user turns
with one text part, assistant turns with step/text/tool parts, a journal with the growth events
opencode writes), cached by shape under the temp dir."""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.support.fake_opencode import FakeOpencode

# Bump when the generated content changes, so stale caches are not reused.
GENERATOR_VERSION = 2
PARTS_PER_TURN = 20
CACHE_DIR = Path(tempfile.gettempdir()) / "syncd-bench-cache"
WORDS = " ".join(f"word{i}" for i in range(60))
FILE_CONTENT = "".join(f"line {i}\n" for i in range(20))
Rows = dict[str, list[tuple[Any, ...]]]
Journal = Callable[[str, dict[str, Any]], None]  # appends one event to the session's journal


# The usage opencode records for one fake-model step (as in the sample database).
TOKENS = {"total": 19, "input": 12, "output": 7, "reasoning": 0, "cache": {"write": 0, "read": 0}}


def cached_database(fixtures_dir: Path, sessions: int, parts: int) -> Path:
    """A database of `sessions` sessions with `parts` parts each (plus messages and journal),
    generated once and reused by later runs."""
    path = CACHE_DIR / f"opencode-{sessions}x{parts}-v{GENERATOR_VERSION}.db"
    if not path.exists():
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        building = path.with_suffix(".building")
        for stale in CACHE_DIR.glob(building.name + "*"):
            stale.unlink()
        generate(building, fixtures_dir, sessions, parts)
        building.rename(path)
    return path


def generate(path: Path, fixtures_dir: Path, sessions: int, parts: int) -> None:
    writer = FakeOpencode(path, fixtures_dir)
    conn = writer.conn
    rows: Rows = {"session": [], "message": [], "part": [], "event": []}
    heads: list[tuple[str, int]] = []
    start = int(time.time() * 1000) - sessions * 60_000
    for index in range(sessions):
        heads.append(_session(rows, index, start + index * 60_000, parts))
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO session (id, project_id, slug, directory, title, version, summary_additions, "
        "summary_deletions, summary_files, summary_diffs, time_created, time_updated) "
        "VALUES (?, 'global', ?, '/home/dev/proj', ?, '1.18.33', ?, 0, ?, ?, ?, ?)",
        rows["session"],
    )
    conn.executemany(
        "INSERT INTO message (id, session_id, time_created, time_updated, data) "
        "VALUES (?, ?, ?, ?, ?)",
        rows["message"],
    )
    conn.executemany(
        "INSERT INTO part (id, message_id, session_id, time_created, time_updated, data) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        rows["part"],
    )
    conn.executemany("INSERT INTO event_sequence (aggregate_id, seq) VALUES (?, ?)", heads)
    conn.executemany(
        "INSERT INTO event (id, aggregate_id, seq, type, data) VALUES (?, ?, ?, ?, ?)",
        rows["event"],
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    writer.close()


def _session(rows: Rows, index: int, now: int, parts: int) -> tuple[str, int]:
    """Appends one session's rows; returns its journal head (aggregate id, last seq)."""
    session_id = f"ses_bench{index:07d}"
    seq = -1

    def event(kind: str, payload: dict[str, Any]) -> None:
        nonlocal seq
        seq += 1
        rows["event"].append(
            (f"evt_{session_id[4:]}{seq:06d}", session_id, seq, kind, json.dumps(payload))
        )

    diffs = [
        {
            "file": "f0.txt",
            "patch": "@@ -0,0 +1,20 @@\n" + FILE_CONTENT,
            "additions": 20,
            "deletions": 0,
            "status": "added",
        }
    ]
    title = f"benchmark session {index}"
    info = {
        "id": session_id,
        "slug": "quiet-fox",
        "projectID": "global",
        "directory": "/home/dev/proj",
        "title": title,
        "version": "1.18.33",
        "time": {"created": now, "updated": now},
    }
    event("session.created.1", {"sessionID": session_id, "info": info})
    turns = max(1, -(-parts // PARTS_PER_TURN))
    made = 0
    for turn in range(turns):
        budget = min(PARTS_PER_TURN, parts - made)
        if budget <= 0:
            break
        user_id = f"msg_{index:07d}{turn:04d}a"
        user = {
            "role": "user",
            "time": {"created": now},
            "agent": "build",
            "model": {"providerID": "fake", "modelID": "fake-model"},
            "summary": {"diffs": []},
        }
        _message(rows, event, session_id, user_id, user, now)
        _part(
            rows,
            event,
            session_id,
            user_id,
            f"{user_id}000",
            {"type": "text", "text": f"please write the file f{turn}.txt"},
            now,
        )
        if budget == 1:
            made += 1
            continue
        reply_id = f"msg_{index:07d}{turn:04d}b"
        reply = {
            "parentID": user_id,
            "role": "assistant",
            "mode": "build",
            "agent": "build",
            "path": {"cwd": "/home/dev/proj", "root": "/"},
            "cost": 0,
            "tokens": TOKENS,
            "modelID": "fake-model",
            "providerID": "fake",
            "time": {"created": now, "completed": now + 2000},
            "finish": "stop",
        }
        _message(rows, event, session_id, reply_id, reply, now)
        for number, data in enumerate(_assistant_parts(budget - 1, turn)):
            _part(rows, event, session_id, reply_id, f"{reply_id}{number:03d}", data, now)
        made += budget
    rows["session"].append(
        (session_id, "quiet-fox", title, 20, 1, json.dumps(diffs), now, now + 60_000)
    )
    event(
        "session.updated.1",
        {
            "sessionID": session_id,
            "info": {
                **info,
                "summary": {"additions": 20, "deletions": 0, "files": 1, "diffs": diffs},
            },
        },
    )
    return session_id, seq


def _message(
    rows: Rows, event: Journal, session_id: str, message_id: str, data: dict, now: int
) -> None:
    rows["message"].append((message_id, session_id, now, now, json.dumps(data)))
    event(
        "message.updated.1",
        {"sessionID": session_id, "info": {"id": message_id, "sessionID": session_id, **data}},
    )


def _part(
    rows: Rows,
    event: Journal,
    session_id: str,
    message_id: str,
    part_id: str,
    data: dict,
    now: int,
) -> None:
    rows["part"].append((part_id, message_id, session_id, now, now, json.dumps(data)))
    ids = {"id": part_id, "sessionID": session_id, "messageID": message_id}
    # opencode journals a part each time it grows: a partial text, a pending tool call.
    if data["type"] == "text" and len(data["text"]) > 40:
        event(
            "message.part.updated.1",
            {"sessionID": session_id, "part": {**ids, **data, "text": data["text"][:40]}},
        )
    elif data["type"] == "tool":
        pending = {**data, "state": {"status": "pending", "input": {}, "raw": ""}}
        event("message.part.updated.1", {"sessionID": session_id, "part": {**ids, **pending}})
    event("message.part.updated.1", {"sessionID": session_id, "part": {**ids, **data}})


def _assistant_parts(count: int, turn: int) -> Iterator[dict[str, Any]]:
    cycle = ("step-start", "text", "tool", "step-finish")
    for number in range(count):
        kind = cycle[number % len(cycle)]
        if kind == "step-start":
            yield {"type": "step-start"}
        elif kind == "text":
            yield {"type": "text", "text": WORDS, "time": {"start": 1, "end": 2}}
        elif kind == "tool":
            yield {
                "type": "tool",
                "tool": "write",
                "callID": f"call_{turn}_{number}",
                "state": {
                    "status": "completed",
                    "input": {"filePath": f"f{turn}.txt", "content": FILE_CONTENT},
                    "output": "Wrote file successfully.",
                    "title": f"f{turn}.txt",
                    "metadata": {"diagnostics": {}, "exists": False, "truncated": False},
                    "time": {"start": 1, "end": 2},
                },
            }
        else:
            yield {
                "reason": "tool-calls",
                "type": "step-finish",
                "cost": 0,
                "tokens": TOKENS,
            }


def raw_read_rate(path: Path) -> dict[str, float]:
    """The floor syncd is compared against: read every message and part row with sqlite3 and
    parse its JSON, nothing else."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        began = time.perf_counter()
        count = 0
        for table in ("message", "part"):
            for row in conn.execute(f"SELECT * FROM {table}"):
                json.loads(row[-1])  # data is the last column of both tables
                count += 1
        seconds = time.perf_counter() - began
    finally:
        conn.close()
    return {"rows": count, "seconds": seconds, "rows_per_s": count / seconds}
