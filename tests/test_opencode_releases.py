"""Every opencode release in tests/fixtures/opencode/<release>/ (real homes, made by
scripts/opencode_fixtures.py): `syncd sync` into the embedded archive delivers complete copies,
field by field, diffs included, equal to what that release's own share sent
(`share-sync.json`)."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.archive_check import archived_copies
from tests.support.opencode_releases import (
    FIXTURES,
    READ_RELEASES,
    RELEASES,
    SQLITE_RELEASES,
    compatibility_table,
    install_home,
    mismatches,
    own_share,
    readme_table,
)

README = Path(__file__).parent.parent / "README.md"


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`syncd ARGS` on the test's state and archive."""
    common = ["--state", str(tmp_path / "state.db"), "--archive", str(tmp_path / "archive.db")]
    if "--db" not in args:
        common += ["--db", str(tmp_path / "home/.local/share/opencode/opencode.db")]
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args, *common],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )


def sync(tmp_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    return cli(tmp_path, "sync", "--db", str(db), "--give-up-after", "30")


def test_fixtures_cover_the_range() -> None:
    assert RELEASES[0].startswith("1.1.") and RELEASES[-1].startswith("1.18.")
    assert len(SQLITE_RELEASES) >= 6


@pytest.mark.parametrize("release", READ_RELEASES)
async def test_sync_delivers_a_complete_copy(release: str, tmp_path: Path) -> None:
    db = install_home(release, tmp_path / "home")
    run = sync(tmp_path, db)
    assert run.returncode == 0, run.stderr
    got = await archived_copies(tmp_path / "archive.db")
    assert mismatches(release, got, db.parent / "storage") == []


def test_the_readme_table_is_what_the_fixtures_show() -> None:
    """README.md's table of releases, from the fixtures and from what the sync test above
    proves; `python scripts/opencode_fixtures.py --readme` rewrites it."""
    assert readme_table(README.read_text()) == compatibility_table()


def test_json_sessions_left_by_an_upgrade_are_delivered_with_the_database(
    tmp_path: Path,
) -> None:
    """opencode 1.1.65's JSON sessions beside a 1.18.33 database (1.17 and later do not import
    them): both releases' sessions delivered completely, and `status` says where they are."""
    db = install_home("1.18.33", tmp_path / "home")
    shutil.copytree(FIXTURES / "1.1.65" / "storage", db.parent / "storage")
    run = sync(tmp_path, db)
    assert run.returncode == 0, run.stderr
    got = asyncio.run(archived_copies(tmp_path / "archive.db"))
    for release in ("1.18.33", "1.1.65"):
        mine = {sid: copy for sid, copy in got.items() if sid in own_share(release)}
        assert mismatches(release, mine, db.parent / "storage") == []
    assert len(got) == len(own_share("1.18.33")) + len(own_share("1.1.65"))
    status = cli(tmp_path, "status", "--json")
    report = json.loads(status.stdout)
    assert report["opencode"]["json_session_files"] == len(own_share("1.1.65"))
    text = cli(tmp_path, "status").stdout
    assert "2 JSON session file(s) under" in text and "opencode <= 1.1" in text


def test_the_database_wins_over_a_json_file_of_the_same_session(tmp_path: Path) -> None:
    """A session opencode imported into its database (1.2 to 1.15 do) but whose JSON file is
    still there is delivered once, from the database."""
    db = install_home("1.3.2", tmp_path / "home")
    json_session = next((FIXTURES / "1.1.65" / "storage" / "session").glob("*/*.json"))
    imported = next(iter(own_share("1.3.2")))
    stale = {**json.loads(json_session.read_text()), "id": imported, "title": "stale JSON"}
    target = db.parent / "storage" / "session" / json_session.parent.name / f"{imported}.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps(stale))
    assert sync(tmp_path, db).returncode == 0
    got = asyncio.run(archived_copies(tmp_path / "archive.db"))
    assert mismatches("1.3.2", got, db.parent / "storage") == []


def test_no_database_and_no_json_sessions_is_one_line(tmp_path: Path) -> None:
    run = sync(tmp_path, tmp_path / "home" / ".local" / "share" / "opencode" / "opencode.db")
    assert run.returncode != 0 and "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert "opencode database not found at" in last and "no JSON sessions under" in last
