"""Links that open: the embedded archive's share urls are pages of `syncd serve`, in `syncd
status` and in `syncd open`, through the real CLI over a state written by a real `syncd sync`."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
from pathlib import Path

import pytest
import structlog

from syncd.cli import main
from tests.support import FIXTURES
from tests.support.env import free_port

NEWEST = "ses_ded413068ffeOCawi5CN2IRmB7"  # the sample session updated last


@pytest.fixture(autouse=True)
def default_logging():
    """The CLI configures logging onto this test's captured stderr, closed after the test."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int) -> list[str]:
    """The files of a state and an archive `syncd sync` fills from the sample database, with
    `syncd serve` set to listen on `port`."""
    config = tmp_path / "config" / "syncd" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f"serve_port = {port}\n")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    for source in (FIXTURES / "opencode").glob("sample-1.18.33.db*"):
        shutil.copy(source, tmp_path / source.name)
    paths = {"--db": "sample-1.18.33.db", "--state": "state.db", "--archive": "archive.db"}
    return [part for flag, name in paths.items() for part in (flag, str(tmp_path / name))]


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_status_and_open_give_pages_of_syncd_serve(
    capsys: pytest.CaptureFixture[str], flags: list[str], port: int
) -> None:
    assert (await cli(capsys, "sync", *flags))[0] == 0
    page = f"http://127.0.0.1:{port}/share/{NEWEST[-8:]}"
    code, out, _ = await cli(capsys, "status", *flags)
    assert code == 0 and f"{page}  " in out
    assert "archive:" not in out

    with socket.socket() as listening:  # where `syncd serve` answers
        listening.bind(("127.0.0.1", port))
        listening.listen()
        assert await cli(capsys, "open", *flags) == (0, page + "\n", "")
        by_start = await cli(capsys, "open", *flags, "ses_ded4144e")
        assert by_start == (0, f"http://127.0.0.1:{port}/share/P7fHpmOB\n", "")
        assert await cli(capsys, "open", *flags, "P7fHpmOB") == by_start  # by share id

    code, out, err = await cli(capsys, "open", *flags, "--print")
    assert (code, out) == (0, page + "\n")
    nobody = f"syncd: nothing answers at http://127.0.0.1:{port}: start `syncd serve`"
    assert err == f"{nobody} to read this page\n"


async def test_open_says_what_to_do_when_there_is_nothing_to_open(
    capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    code, out, err = await cli(capsys, "open", *flags)
    assert (code, out) == (2, "")
    assert err.startswith("syncd: no state database at ") and err.count("\n") == 1
    assert (await cli(capsys, "sync", *flags))[0] == 0
    code, _, err = await cli(capsys, "open", *flags, "ses_nothing")
    assert (code, err) == (
        2,
        "syncd: no session 'ses_nothing' in the state: `syncd status` lists the sessions\n",
    )
    code, _, err = await cli(capsys, "open", *flags, "ses_ded41")
    assert code == 2 and err.startswith("syncd: 5 sessions start with 'ses_ded41'")


async def test_legacy_archive_urls_show_as_pages(
    capsys: pytest.CaptureFixture[str], flags: list[str], tmp_path: Path, port: int
) -> None:
    """A state written before the archive had pages holds `archive:/share/ID` urls."""
    assert (await cli(capsys, "sync", *flags))[0] == 0
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE share SET url = 'archive:/share/' || share_id")
    code, out, _ = await cli(capsys, "status", *flags)
    page = f"http://127.0.0.1:{port}/share/{NEWEST[-8:]}"
    assert code == 0 and "archive:" not in out and page in out
    assert (await cli(capsys, "open", *flags, "--print"))[1] == f"{page}\n"
