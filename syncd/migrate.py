"""Schema migrations for syncd's own SQLite databases (the state and the receiver store).

Layout, as in opencode's database guide: `migration/<timestamp>_<slug>/migration.sql`
beside the module that owns the database. Each folder is applied once, in name order, inside
one transaction together with its row in the `migration` table, so an interrupted upgrade
leaves the database as it was and pending items survive every upgrade.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import aiosqlite

from .errors import UserError

MIGRATION_NAME = re.compile(r"^\d{14}_[a-z0-9_]+$")


def migration_folders(root: Path) -> list[Path]:
    """The migration folders under `root`, oldest first; refuses a folder that breaks the layout."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("__"))
    for folder in folders:
        if not MIGRATION_NAME.match(folder.name) or not (folder / "migration.sql").is_file():
            raise UserError(
                f"migration folder {folder} must be named <14-digit timestamp>_<slug> "
                "and hold migration.sql"
            )
    return folders


async def migrate(db: aiosqlite.Connection, root: Path) -> list[str]:
    """Apply the migrations under `root` that `db` has not seen; returns their names.

    Each one runs in its own write transaction that first checks it is still unapplied, so
    two processes opening a new database at once (`syncd run` and `syncd serve` on the same
    archive) apply it once between them."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS migration"
        " (id TEXT PRIMARY KEY, time_completed INTEGER NOT NULL)"
    )
    applied: list[str] = []
    for folder in migration_folders(root):
        statements = _statements((folder / "migration.sql").read_text())
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute("SELECT 1 FROM migration WHERE id = ?", (folder.name,)) as c:
                done = await c.fetchone() is not None
            if not done:
                for statement in statements:
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO migration (id, time_completed) VALUES (?, ?)",
                    (folder.name, int(time.time() * 1000)),
                )
                applied.append(folder.name)
        except BaseException:
            if db.in_transaction:  # SQLite rolls back by itself on some errors (SQLITE_FULL)
                await db.execute("ROLLBACK")
            raise
        await db.execute("COMMIT")
    return applied


def _statements(script: str) -> list[str]:
    """The SQL statements of a migration script, split where SQLite says one is complete."""
    statements, pending = [], ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            if pending.strip():
                statements.append(pending.strip())
            pending = ""
    leftover = "\n".join(x for x in pending.splitlines() if not x.strip().startswith("--"))
    if leftover.strip():  # an unfinished statement: SQLite will say what is wrong with it
        statements.append(pending.strip())
    return statements
