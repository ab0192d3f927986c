"""A writer that changes an opencode database the way opencode 1.18.33 does: the real schema,
rows upserted as they grow, and (optionally) the journal written in the same transaction.

For unit tests, fault tests and benchmarks that need more control or volume than driving the
real opencode allows; the end-to-end tests drive the real one.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

SCHEMA = "opencode/schema-1.18.33.sql"
_ids = itertools.count()


def new_id(prefix: str) -> str:
    return f"{prefix}_{time.time_ns():x}{next(_ids):06d}"


class FakeOpencode:
    def __init__(self, path: Path, fixtures_dir: Path, *, journal: bool = True) -> None:
        self.path = path
        self.journal = journal
        fresh = not path.exists()
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA busy_timeout = 30000")
        if fresh:
            self.conn.executescript((fixtures_dir / SCHEMA).read_text())
            self.conn.execute(
                "INSERT INTO project (id, worktree, time_created, time_updated, sandboxes) "
                "VALUES ('global', '/', 0, 0, '[]')"
            )

    def close(self) -> None:
        self.conn.close()

    def _event(self, session_id: str, event_type: str, data: dict[str, Any]) -> None:
        if not self.journal:
            return
        row = self.conn.execute(
            "SELECT seq FROM event_sequence WHERE aggregate_id = ?", (session_id,)
        ).fetchone()
        seq = 0 if row is None else row[0] + 1
        self.conn.execute(
            "INSERT INTO event_sequence (aggregate_id, seq) VALUES (?, ?) "
            "ON CONFLICT (aggregate_id) DO UPDATE SET seq = excluded.seq",
            (session_id, seq),
        )
        self.conn.execute(
            "INSERT INTO event (id, aggregate_id, seq, type, data) VALUES (?, ?, ?, ?, ?)",
            (new_id("evt"), session_id, seq, event_type, json.dumps(data)),
        )

    def session(
        self, title: str = "a session", session_id: str | None = None, **columns: Any
    ) -> str:
        session_id = session_id or new_id("ses")
        now = _now()
        values = {
            "id": session_id, "project_id": "global", "slug": "quiet-fox",
            "directory": "/home/dev/proj", "title": title, "version": "1.18.33",
            "time_created": now, "time_updated": now, **columns,
        }  # fmt: skip
        with self._tx():
            names = ", ".join(values)
            marks = ", ".join("?" * len(values))
            updates = ", ".join(f"{k} = excluded.{k}" for k in values if k != "id")
            self.conn.execute(
                f"INSERT INTO session ({names}) VALUES ({marks}) "
                f"ON CONFLICT (id) DO UPDATE SET {updates}",
                list(values.values()),
            )
            self._event(
                session_id,
                "session.updated.1",
                {"sessionID": session_id, "info": {"id": session_id}},
            )
        return session_id

    def message(self, session_id: str, data: dict[str, Any], message_id: str | None = None) -> str:
        message_id = message_id or new_id("msg")
        with self._tx():
            self._upsert("message", message_id, session_id, data)
            self._event(
                session_id,
                "message.updated.1",
                {"sessionID": session_id, "info": {"id": message_id, **data}},
            )
        return message_id

    def part(
        self,
        session_id: str,
        message_id: str,
        data: dict[str, Any] | str,
        part_id: str | None = None,
    ) -> str:
        """Upsert a part; `data` may be raw text to store a row opencode would never write."""
        part_id = part_id or new_id("prt")
        with self._tx():
            self._upsert("part", part_id, session_id, data, message_id=message_id)
            self._event(
                session_id,
                "message.part.updated.1",
                {"sessionID": session_id, "part": {"id": part_id}},
            )
        return part_id

    def share(self, session_id: str, share_id: str, secret: str, url: str) -> None:
        now = _now()
        with self._tx():
            self.conn.execute(
                "INSERT INTO session_share (session_id, id, secret, url, time_created, "
                "time_updated) VALUES (?, ?, ?, ?, ?, ?)",
                (session_id, share_id, secret, url, now, now),
            )
            self.conn.execute("UPDATE session SET share_url = ? WHERE id = ?", (url, session_id))
            self._event(
                session_id,
                "session.updated.1",
                {"sessionID": session_id, "info": {"id": session_id}},
            )

    def delete_session(self, session_id: str) -> None:
        """As `opencode session delete`: rows and journal go, no deletion event survives."""
        with self._tx():
            for table, column in (
                ("part", "session_id"),
                ("message", "session_id"),
                ("session_share", "session_id"),
                ("event", "aggregate_id"),
                ("event_sequence", "aggregate_id"),
                ("session", "id"),
            ):
                self.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (session_id,))

    def _upsert(self, table: str, row_id: str, session_id: str, data: Any, **extra: str) -> None:
        now = _now()
        text = data if isinstance(data, str | bytes) else json.dumps(data)
        columns = {"id": row_id, "session_id": session_id, **extra,
                   "time_created": now, "time_updated": now, "data": text}  # fmt: skip
        with self._tx():
            names = ", ".join(columns)
            marks = ", ".join("?" * len(columns))
            self.conn.execute(
                f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT (id) DO UPDATE SET "
                "data = excluded.data, time_updated = excluded.time_updated",
                list(columns.values()),
            )

    def _tx(self) -> _Transaction:
        return _Transaction(self.conn)


class _Transaction:
    """Re-entrant BEGIN IMMEDIATE ... COMMIT: opencode writes row and event together."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.conn.in_transaction
        if self.outer:
            self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        if self.outer:
            self.conn.execute("ROLLBACK" if exc_type else "COMMIT")


def one_session_db(path: Path, fixtures_dir: Path) -> Path:
    """A database at `path` holding one session with one user message."""
    writer = FakeOpencode(path, fixtures_dir)
    sid = writer.session()
    writer.part(sid, writer.message(sid, {"role": "user"}), {"type": "text", "text": "hi"})
    writer.close()
    return writer.path


def _now() -> int:
    return int(time.time() * 1000)
