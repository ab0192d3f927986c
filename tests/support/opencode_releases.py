"""The opencode release fixtures (tests/fixtures/opencode/<release>/, made by
scripts/opencode_fixtures.py): a release's home installed for a test, and the check that a
remote copy is what that release's own share sent."""

from __future__ import annotations

import contextlib
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent.parent / "fixtures" / "opencode"
RELEASES = sorted(
    (path.name for path in FIXTURES.iterdir() if (path / "share-sync.json").is_file()),
    key=lambda name: tuple(int(part) for part in name.split(".")),
)
SQLITE_RELEASES = [name for name in RELEASES if (FIXTURES / name / "opencode.db").is_file()]
# The releases syncd reads: tests/test_opencode_releases.py syncs each, and the README's table
# says "complete" for them.
READ_RELEASES = RELEASES


def install_home(release: str, home: Path) -> Path:
    """The release's opencode data directory under `home`, as opencode left it; returns the
    database path (which need not exist: the JSON era has none)."""
    data = home / ".local" / "share" / "opencode"
    data.mkdir(parents=True)
    for path in (FIXTURES / release).iterdir():
        if path.name == "share-sync.json":
            continue
        if path.is_dir():
            shutil.copytree(path, data / path.name)
        else:
            shutil.copy(path, data / path.name)
    return data / "opencode.db"


def own_share(release: str) -> dict[str, list[dict[str, Any]]]:
    """session id -> the SyncData items the release's own share sent (the last per key)."""
    return json.loads((FIXTURES / release / "share-sync.json").read_text())


def expected_copy(items: list[dict[str, Any]]) -> dict[str, Any]:
    """What a complete remote copy holds, from the release's own share."""
    copy: dict[str, Any] = {"messages": {}, "parts": {}, "diffs": []}
    for item in items:
        data = item["data"]
        if item["type"] == "session":
            copy["session"] = data
        elif item["type"] in ("message", "part"):
            copy[f"{item['type']}s"][data["id"]] = data
        elif item["type"] == "session_diff":
            copy["diffs"] = data
    return copy


def unshared(session: dict[str, Any], shared_by_opencode: bool) -> dict[str, Any]:
    """The session without what sharing through opencode changed in it (releases from 1.14
    record the share url, and so a new update time): syncd, which does not share through
    opencode, cannot and must not send those."""
    if not shared_by_opencode:
        return session
    time = {key: value for key, value in session["time"].items() if key != "updated"}
    return {**{key: value for key, value in session.items() if key != "share"}, "time": time}


def mismatches(release: str, got: dict[str, dict[str, Any]], storage: Path) -> list[str]:
    """How `got` differs from every session of the release's fixture, field by field as its
    own share sent it, diffs included; [] when complete."""
    shared = own_share(release)
    problems = (
        [f"sessions {sorted(set(got) ^ set(shared))} differ"] if set(got) != set(shared) else []
    )
    for session_id, items in shared.items():
        want, copy = expected_copy(items), got.get(session_id)
        if copy is None:
            continue
        shared_by_opencode = "share" in want["session"]
        if unshared(copy["session"], shared_by_opencode) != unshared(
            want["session"], shared_by_opencode
        ):
            problems.append(f"{session_id}: session {copy['session']} != {want['session']}")
        problems.extend(
            f"{session_id}: {kind} differ"
            for kind in ("messages", "parts", "diffs")
            if copy[kind] != want[kind]
        )
        # Each fixture session wrote files: a release that keeps diffs per session (up to
        # 1.15) must have had them delivered.
        if (storage / "session_diff" / f"{session_id}.json").exists() and not copy["diffs"]:
            problems.append(f"{session_id}: no diffs delivered")
    return problems


# Session columns of the newest release, by the field they make: a release without some of
# them leaves those fields out (docs/opencode-releases.md).
OPTIONAL_SESSION_FIELDS = {
    "workspace_id": "workspaceID", "path": "path", "agent": "agent", "model": "model",
    "cost": "cost", "tokens_input": "tokens", "metadata": "metadata",
}  # fmt: skip
README_START = "<!-- opencode releases: tests/test_opencode_releases.py checks this table -->"
README_END = "<!-- end of opencode releases -->"


def compatibility_table() -> str:
    """The README's table of opencode releases, read off the fixtures: where each keeps its
    sessions, its journal, the session fields it lacks, where its diffs are, and whether
    `syncd sync` delivers it completely."""
    lines = [
        "| opencode | sessions in | journal (syncd reads changes from) | session fields it lacks "
        "| file diffs from | `syncd sync` |",
        "|---|---|---|---|---|---|",
    ]
    for release in RELEASES:
        home = FIXTURES / release
        if (home / "storage" / "session_diff").is_dir():
            diffs = "`storage/session_diff/<session>.json`"
        else:
            diffs = "user messages (`summary.diffs`); the session's diff is empty"
        result = "complete" if release in READ_RELEASES else "not read yet"
        db = home / "opencode.db"
        if not db.is_file():
            lines.append(
                f"| {release} | JSON files under `storage/` | none (file times) | - | {diffs} "
                f"| {result} |"
            )
            continue
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            columns = {row[1] for row in conn.execute("PRAGMA table_info(session)")}
            events = None
            if "event" in tables:
                events = conn.execute("SELECT count(*) FROM event").fetchone()[0]
        journal = {None: "none (table times)", 0: "tables left empty (table times)"}.get(
            events, "written (journal)"
        )
        lacks = [
            field for column, field in OPTIONAL_SESSION_FIELDS.items() if column not in columns
        ]
        lines.append(
            f"| {release} | SQLite | {journal} | {', '.join(lacks) or '-'} | {diffs} | {result} |"
        )
    return "\n".join(lines) + "\n"


def readme_table(readme: str) -> str:
    """The table between the README's markers."""
    start = readme.index(README_START) + len(README_START)
    return readme[start : readme.index(README_END)].strip("\n") + "\n"


def with_table(readme: str) -> str:
    """The README with the table between its markers made what the fixtures show."""
    start = readme.index(README_START) + len(README_START)
    return f"{readme[:start]}\n{compatibility_table()}{readme[readme.index(README_END) :]}"
