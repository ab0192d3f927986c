"""Every opencode release in tests/fixtures/opencode/<release>/ (real homes, made by
scripts/opencode_fixtures.py): `syncd sync` into the embedded archive delivers complete copies,
field by field, diffs included, equal to what that release's own share sent
(`share-sync.json`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.opencode_releases import (
    READ_RELEASES,
    RELEASES,
    SQLITE_RELEASES,
    archived_copies,
    compatibility_table,
    install_home,
    mismatches,
    readme_table,
)

README = Path(__file__).parent.parent / "README.md"


def sync(tmp_path: Path, db: Path) -> subprocess.CompletedProcess[str]:
    args = ["sync", "--db", str(db), "--state", str(tmp_path / "state.db"),
            "--archive", str(tmp_path / "archive.db"), "--give-up-after", "30"]  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={"HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )


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
