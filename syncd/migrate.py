"""Schema migrations for syncd's own SQLite databases (the state and the receiver store).

Layout, as in opencode's database guide: `migration/<timestamp>_<slug>/migration.sql`
beside the module that owns the database. Each folder is applied once, in name order, inside
one transaction together with its row in the `migration` table, so an interrupted upgrade
leaves the database as it was and pending items survive every upgrade.
"""

from __future__ import annotations

import re
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
    """Apply the migrations under `root` that `db` has not seen; returns their names."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS migration"
        " (id TEXT PRIMARY KEY, time_completed INTEGER NOT NULL)"
    )
    async with db.execute("SELECT id FROM migration") as cursor:
        done = {row[0] async for row in cursor}
    applied: list[str] = []
    for folder in migration_folders(root):
        if folder.name in done:
            continue
        script = (folder / "migration.sql").read_text()
        # executescript would commit on its own; one explicit transaction keeps the step atomic.
        await db.executescript(
            "BEGIN IMMEDIATE;\n"
            + script
            + f"\nINSERT INTO migration (id, time_completed) VALUES ('{folder.name}', "
            f"{int(time.time() * 1000)});\nCOMMIT;"
        )
        applied.append(folder.name)
    return applied
