"""The workload: a separate process that changes an opencode database the way opencode does
(tests/fake_opencode.py: the real schema, one transaction per row version, journal included)
and logs when each message/part version was committed.

    python -m bench.writer SPEC.json WRITES.jsonl

SPEC names the database and one workload:
- `lifecycle`: `sessions` sessions are created (session, user message and part, assistant
  message and part), then each gets `updates` rewrites of its assistant part, `gap` s apart;
- `steady`: `sessions` sessions stream assistant turns (step-start, a text part growing over
  several writes, a tool call pending -> running -> completed, step-finish, the message
  completed) at `rate` writes/s in total, round robin, for `seconds`;
- `replay`: the journal of a real opencode database (`source`) re-enacted event by event in
  its order: every session, message and part version, paced by the events' own timestamps
  (gaps capped at `max_gap` s).
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.support.fake_opencode import FakeOpencode, new_id

from .versions import ID_FIELDS, content_hash

Write = tuple[str, str, str, float]  # kind, id, content hash, commit time


class LoggedWriter:
    def __init__(self, db: Path, fixtures_dir: Path) -> None:
        self.opencode = FakeOpencode(db, fixtures_dir)
        self.log: list[Write] = []

    def session(self, title: str, **columns: Any) -> str:
        session_id = self.opencode.session(title, **columns)
        # A new session's row: when its first data could start on its way.
        self.log.append(("session", session_id, "", time.time()))
        return session_id

    def message(self, session_id: str, data: dict[str, Any], message_id: str) -> None:
        self.opencode.message(session_id, data, message_id)
        self.log.append(("message", message_id, content_hash(data), time.time()))

    def part(self, session_id: str, message_id: str, data: dict[str, Any], part_id: str) -> None:
        self.opencode.part(session_id, message_id, data, part_id)
        self.log.append(("part", part_id, content_hash(data), time.time()))


def user_turn(writer: LoggedWriter, session_id: str, text: str) -> str:
    message_id = new_id("msg")
    writer.message(
        session_id,
        {
            "role": "user",
            "time": {"created": _ms()},
            "agent": "build",
            "model": {"providerID": "fake", "modelID": "fake-model"},
        },
        message_id,
    )
    writer.part(session_id, message_id, {"type": "text", "text": text}, new_id("prt"))
    return message_id


def assistant_message(parent_id: str, completed: bool = False) -> dict[str, Any]:
    now = _ms()
    return {
        "parentID": parent_id,
        "role": "assistant",
        "mode": "build",
        "agent": "build",
        "path": {"cwd": "/home/dev/proj", "root": "/"},
        "cost": 0,
        "modelID": "fake-model",
        "providerID": "fake",
        "time": {"created": now, **({"completed": now} if completed else {})},
    }


def lifecycle(writer: LoggedWriter, sessions: int, updates: int, gap: float) -> None:
    replies = []
    for index in range(sessions):
        session_id = writer.session(f"lifecycle {index}")
        user_id = user_turn(writer, session_id, "please write the file f0.txt")
        reply_id, part_id = new_id("msg"), new_id("prt")
        writer.message(session_id, assistant_message(user_id), reply_id)
        writer.part(session_id, reply_id, {"type": "text", "text": "word0"}, part_id)
        replies.append((session_id, reply_id, part_id))
    for update in range(1, updates + 1):
        time.sleep(gap)
        text = " ".join(f"word{i}" for i in range(update * 20))
        for session_id, reply_id, part_id in replies:
            writer.part(session_id, reply_id, {"type": "text", "text": text}, part_id)


def steady(writer: LoggedWriter, sessions: int, rate: float, seconds: float) -> None:
    streams = [_turns(writer, writer.session(f"steady {index}")) for index in range(sessions)]
    began = time.monotonic()
    for number in range(int(rate * seconds)):
        delay = began + number / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        next(streams[number % sessions])


def _turns(writer: LoggedWriter, session_id: str) -> Iterator[None]:
    """One write per step, as opencode streams an assistant turn."""
    turn = 0
    while True:
        user_id = user_turn(writer, session_id, f"please write the file f{turn}.txt")
        yield
        reply_id = new_id("msg")
        writer.message(session_id, assistant_message(user_id), reply_id)
        yield
        writer.part(session_id, reply_id, {"type": "step-start"}, new_id("prt"))
        yield
        text_id, started = new_id("prt"), _ms()
        for growth in range(1, 9):
            words = " ".join(f"word{i}" for i in range(growth * 10))
            writer.part(
                session_id,
                reply_id,
                {"type": "text", "text": words, "time": {"start": started}},
                text_id,
            )
            yield
        tool_id, call = new_id("prt"), f"call_{turn}"
        content = "".join(f"line {i}\n" for i in range(20))
        tool_input = {"filePath": f"f{turn}.txt", "content": content}
        for state in (
            {"status": "pending", "input": {}, "raw": ""},
            {"status": "running", "input": tool_input, "time": {"start": _ms()}},
            {
                "status": "completed",
                "input": tool_input,
                "output": "Wrote file successfully.",
                "title": f"f{turn}.txt",
                "metadata": {},
                "time": {"start": started, "end": _ms()},
            },
        ):
            writer.part(
                session_id,
                reply_id,
                {"type": "tool", "tool": "write", "callID": call, "state": state},
                tool_id,
            )
            yield
        writer.part(
            session_id,
            reply_id,
            {"type": "step-finish", "reason": "stop", "cost": 0},
            new_id("prt"),
        )
        yield
        writer.message(session_id, assistant_message(user_id, completed=True), reply_id)
        yield
        turn += 1


def replay(writer: LoggedWriter, source: Path, max_gap: float) -> None:
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        sessions = {row["id"]: dict(row) for row in conn.execute("SELECT * FROM session")}
        events = conn.execute("SELECT type, data FROM event ORDER BY id").fetchall()
    finally:
        conn.close()
    apply: dict[str, Callable[[dict[str, Any]], None]] = {
        "session": lambda payload: _replay_session(writer, sessions, payload["info"]),
        "message.updated": lambda payload: writer.message(
            payload["sessionID"], _without_ids(payload["info"]), payload["info"]["id"]
        ),
        "message.part.updated": lambda payload: writer.part(
            payload["sessionID"],
            payload["part"]["messageID"],
            _without_ids(payload["part"]),
            payload["part"]["id"],
        ),
    }
    last_stamp: int | None = None
    for event_type, data in events:
        payload = json.loads(data)
        stamp = _event_time(payload)
        if stamp is not None:
            if last_stamp is not None and stamp > last_stamp:
                time.sleep(min((stamp - last_stamp) / 1000, max_gap))
            last_stamp = max(stamp, last_stamp or stamp)
        name = event_type.rsplit(".", 1)[0]
        handler = apply.get("session" if name.startswith("session.") else name)
        if handler is not None:
            handler(payload)


def _replay_session(writer: LoggedWriter, sessions: dict[str, dict], info: dict) -> None:
    row = sessions.get(info["id"])
    if row is None:
        return  # deleted since: its journal outlived it
    skip = {"id", "project_id", "share_url", "time_created", "time_updated"}
    columns = {name: value for name, value in row.items() if name not in skip}
    title = info.get("title", columns.pop("title"))
    columns.pop("title", None)
    writer.session(title, session_id=info["id"], **columns)


def _event_time(payload: dict[str, Any]) -> int | None:
    if isinstance(payload.get("time"), int):
        return payload["time"]
    entity = payload.get("info") or payload.get("part") or {}
    times = entity.get("time") if isinstance(entity.get("time"), dict) else {}
    stamps = [value for value in times.values() if isinstance(value, int)]
    return max(stamps) if stamps else None


def _without_ids(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if key not in ID_FIELDS}


def _ms() -> int:
    return int(time.time() * 1000)


def main(spec_path: str, out_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    writer = LoggedWriter(Path(spec["db"]), Path(spec["fixtures_dir"]))
    try:
        match spec["workload"]:
            case "lifecycle":
                lifecycle(writer, spec["sessions"], spec["updates"], spec["gap"])
            case "steady":
                steady(writer, spec["sessions"], spec["rate"], spec["seconds"])
            case "replay":
                replay(writer, Path(spec["source"]), spec["max_gap"])
    finally:
        writer.opencode.close()
        Path(out_path).write_text("".join(json.dumps(write) + "\n" for write in writer.log))


if __name__ == "__main__":
    main(*sys.argv[1:3])
