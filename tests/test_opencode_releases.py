"""Every opencode release in tests/fixtures/opencode/<release>/ (real homes, made by
scripts/opencode_fixtures.py): `syncd sync` into the embedded archive delivers complete copies,
field by field, diffs included, equal to what that release's own share sent
(`share-sync.json`)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.archive_check import archived, make_config

FIXTURES = Path(__file__).parent / "fixtures" / "opencode"
RELEASES = sorted(
    (path.name for path in FIXTURES.iterdir() if (path / "share-sync.json").is_file()),
    key=lambda name: tuple(int(part) for part in name.split(".")),
)
SQLITE_RELEASES = [name for name in RELEASES if (FIXTURES / name / "opencode.db").is_file()]


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


@pytest.mark.parametrize("release", SQLITE_RELEASES)
async def test_sync_delivers_a_complete_copy(release: str, tmp_path: Path) -> None:
    db = install_home(release, tmp_path / "home")
    run = sync(tmp_path, db)
    assert run.returncode == 0, run.stderr
    got = await archived(make_config(tmp_path, db))
    shared = own_share(release)
    assert set(got) == set(shared)
    for session_id, items in shared.items():
        want = expected_copy(items)
        copy = got[session_id]
        shared_by_opencode = "share" in want["session"]
        assert unshared(copy["session"], shared_by_opencode) == unshared(
            want["session"], shared_by_opencode
        )
        assert copy["messages"] == want["messages"]
        assert copy["parts"] == want["parts"]
        assert copy["diffs"] == want["diffs"]
        # The fixture's sessions each wrote files: a release that keeps diffs per session
        # (up to 1.15) must have delivered them.
        if (db.parent / "storage" / "session_diff" / f"{session_id}.json").exists():
            assert copy["diffs"], f"{release}: no diffs delivered for {session_id}"
