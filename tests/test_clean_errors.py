"""Mistakes in paths end in one line naming the problem and what to do, the documented exit
code, and a process that exits (no traceback, no thread left holding it open)."""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.env import isolated_env
from tests.support.fake_opencode import FakeOpencode

# Root reads and writes everything: permission mistakes are made real by dropping the
# capabilities that let it (setpriv, util-linux).
WITHOUT_OVERRIDE = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
                    "--bounding-set=-dac_override,-dac_read_search"]  # fmt: skip


def syncd(tmp: Path, *args: str, as_a_user: bool = False) -> tuple[int, str]:
    prefix: list[str] = []
    if as_a_user and os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: permissions cannot be made to bite")
        prefix = WITHOUT_OVERRIDE
    done = subprocess.run(
        [*prefix, sys.executable, "-m", "syncd", *args],
        env=isolated_env(tmp),
        capture_output=True,
        text=True,
        timeout=60,  # a process kept alive by a thread fails here
    )
    return done.returncode, done.stderr


def one_clean_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("syncd: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture
def not_a_database(tmp_path: Path) -> Path:
    path = tmp_path / "notes.txt"
    path.write_text("these are not the sessions you are looking for\n" * 100)
    return path


@pytest.mark.parametrize("command", ["sync", "backfill"])
def test_db_that_is_not_sqlite_is_one_line_and_the_process_exits(
    tmp_path: Path, not_a_database: Path, command: str
) -> None:
    state = tmp_path / "state.db"
    code, stderr = syncd(tmp_path, command, "--db", str(not_a_database), "--state", str(state))
    assert code == 2
    line = one_clean_line(stderr)
    assert "is not an SQLite database" in line and "--db" in line


def test_status_is_unhealthy_without_a_readable_opencode_database(
    tmp_path: Path, fixtures_dir: Path, not_a_database: Path
) -> None:
    db = tmp_path / "opencode.db"
    FakeOpencode(db, fixtures_dir).close()
    state = str(tmp_path / "state.db")
    assert syncd(tmp_path, "sync", "--db", str(db), "--state", state)[0] == 0
    done = subprocess.run(
        [sys.executable, "-m", "syncd", "status", "--db", str(not_a_database), "--state", state],
        env=isolated_env(tmp_path), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    assert "UNHEALTHY" in done.stdout and "is not an SQLite database" in done.stdout
    db.unlink()
    code, _ = syncd(tmp_path, "status", "--db", str(db), "--state", state)
    assert code == 1  # no database at all is no healthier


def test_a_state_path_under_a_file_names_the_file(tmp_path: Path, fixtures_dir: Path) -> None:
    db = tmp_path / "opencode.db"
    FakeOpencode(db, fixtures_dir).close()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for command in (["sync"], ["run"], ["dead-letters", "retry", "--all"]):
        code, stderr = syncd(tmp_path, *command, "--db", str(db),
                             "--state", str(a_file / "state" / "state.db"))  # fmt: skip
        assert code == 2, command
        line = one_clean_line(stderr)
        assert f"{a_file} is a file, not a directory" in line, line
        assert "--state" in line, line


def test_an_unwritable_state_directory_is_one_line(tmp_path: Path, fixtures_dir: Path) -> None:
    db = tmp_path / "opencode.db"
    FakeOpencode(db, fixtures_dir).close()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    for command in (["sync"], ["run"], ["dead-letters", "retry", "--all"]):
        code, stderr = syncd(tmp_path, *command, "--db", str(db),
                             "--state", str(locked / "state.db"), as_a_user=True)  # fmt: skip
        assert code == 2, command
        line = one_clean_line(stderr)
        assert "Permission denied" in line and "writable state location" in line, line


def test_an_unreadable_config_directory_is_one_line(tmp_path: Path) -> None:
    config_dir = tmp_path / "home" / ".config" / "syncd"
    config_dir.mkdir(parents=True)
    config_dir.chmod(0)
    try:
        code, stderr = syncd(tmp_path, "status", as_a_user=True)
    finally:
        config_dir.chmod(0o755)
    assert code == 2
    line = one_clean_line(stderr)
    assert "cannot look for the config file" in line and "Permission denied" in line


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.mark.parametrize("flag", ["--state", "--archive"])
def test_another_programs_database_is_never_written_into(
    tmp_path: Path, fixtures_dir: Path, flag: str
) -> None:
    """`--state ~/.local/share/opencode/opencode.db` (the path meant for --db) once made syncd
    create its tables in opencode's database, its migrations in opencode's own `migration`
    table, and go on delivering from there."""
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    writer.session()
    writer.close()
    before = tables(writer.path)
    paths = {"--state": str(tmp_path / "state.db"), "--archive": str(tmp_path / "archive.db")}
    paths[flag] = str(writer.path)
    code, stderr = syncd(
        tmp_path, "sync", "--db", str(writer.path), *itertools.chain(*paths.items())
    )
    assert code == 2
    line = one_clean_line(stderr)
    assert f"{writer.path} is not a database of syncd's" in line and flag in line
    assert tables(writer.path) == before
    with sqlite3.connect(writer.path) as db:
        assert not db.execute("SELECT 1 FROM migration WHERE id LIKE '2026%'").fetchall()


def test_the_state_and_the_archive_are_not_each_other(tmp_path: Path, fixtures_dir: Path) -> None:
    writer = FakeOpencode(tmp_path / "opencode.db", fixtures_dir)
    writer.session()
    writer.close()
    state, archive = tmp_path / "state.db", tmp_path / "archive.db"
    flags = ["--db", str(writer.path), "--state", str(state), "--archive", str(archive)]
    assert syncd(tmp_path, "sync", *flags)[0] == 0
    swapped = ["--db", str(writer.path), "--state", str(archive), "--archive", str(state)]
    code, stderr = syncd(tmp_path, "sync", *swapped)
    assert code == 2 and f"{archive} is not a database of syncd's" in one_clean_line(stderr)
