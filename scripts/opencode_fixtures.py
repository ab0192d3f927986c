"""Regenerate tests/fixtures/opencode/<release>/ from real opencode releases.

    python scripts/opencode_fixtures.py [--releases 1.15.13,1.3.2] [--install-dir DIR]
    python scripts/opencode_fixtures.py --readme   # only rewrite README.md's table of releases

For each release: `npm install opencode-ai@<release>` into a scratch directory (kept there, so a
second run installs nothing), two sessions driven headless against tests/support/fake_llm.py in a
git project (three `opencode run`s: each writes a file with the `write` tool and streams its reply;
the second session is continued once), then:
- opencode.db, checkpointed into one file (releases before 1.2 have none);
- storage/, where the release writes JSON (per-session diffs from 1.2; the whole store before);
- share-sync.json: what the release's own share sent, session by session: `opencode serve` on
  the same home, `POST /session/<id>/share` against a loopback recorder, and the last item per
  key from its full sync, as opencode's share server keeps them.
Temporary paths are scrubbed to stable ones (/home/user/project, ...), every file is written
sorted and indented, so a regeneration changes only what the release changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.fake_llm import FakeLlm, Turn, running_fake_llm
from tests.support.opencode_driver import Opencode, opencode_config
from tests.support.opencode_releases import with_table

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "opencode"
RELEASES = ("1.18.33", "1.17.19", "1.15.13", "1.14.41", "1.3.2", "1.2.27", "1.1.65")
# Where the scrubbed fixture says each temporary directory was.
STABLE_HOME = "/home/user"
SHARE_URL = "https://share.example"
# (prompt's file, continue the previous session?)
RUNS = (("f0.txt", False), ("f1.txt", False), ("f2.txt", True))


def install(release: str, install_dir: Path) -> Path:
    """The release's binary, installed from the npm registry when not there yet."""
    prefix = install_dir / release
    binary = prefix / "node_modules" / "opencode-linux-x64" / "bin" / "opencode"
    if not binary.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
             f"opencode-ai@{release}"],
            check=True, timeout=600,
        )  # fmt: skip
    return binary


def produce(release: str, binary: Path, cache_dir: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory(prefix=f"oc-{release}-") as tmp, running_fake_llm() as llm:
        # opencode snapshots the worktree when a step starts; a tool that runs first would be
        # missing from the session's diffs.
        llm.tool_call_delay = 1.0
        opencode = Opencode(Path(tmp), llm.url, cache_dir=cache_dir, binary=binary)
        opencode.init_git_project()
        drive(opencode, llm)
        scrub = _scrubber(opencode)
        target = out / release
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        data = opencode.data_dir / "opencode"
        if (data / "opencode.db").exists():
            copy_database(data / "opencode.db", target / "opencode.db", scrub)
        if (data / "storage").is_dir():
            copy_storage(data / "storage", target / "storage", scrub)
        shared = record_own_share(opencode)
        _write_json(target / "share-sync.json", json.loads(scrub(json.dumps(shared))))
    print(f"{release}: {_describe(target)}")


def drive(opencode: Opencode, llm: FakeLlm) -> None:
    for file_name, resume in RUNS:
        llm.turn = Turn(file_name=file_name)
        opencode.run(f"please write the file {file_name}", *(["--continue"] if resume else []))


Scrub = Callable[[str], str]


def _scrubber(opencode: Opencode) -> Scrub:
    """Temporary paths -> stable ones, longest first (the root's children before the root)."""
    stable = {
        opencode.project_dir: f"{STABLE_HOME}/project",
        opencode.home: STABLE_HOME,
        opencode.data_dir: f"{STABLE_HOME}/.local/share",
        opencode.config_dir: f"{STABLE_HOME}/.config",
        opencode.cache_dir: f"{STABLE_HOME}/.cache",
        opencode.state_dir: f"{STABLE_HOME}/.local/state",
        opencode.root: STABLE_HOME,
    }
    pairs = sorted(
        ((str(path.resolve()), new) for path, new in stable.items()),
        key=lambda pair: -len(pair[0]),
    )
    pairs += [(str(path), new) for path, new in stable.items() if str(path) != str(path.resolve())]

    def scrub(text: str) -> str:
        for old, new in pairs:
            text = text.replace(old, new)
        return text

    return scrub


def copy_database(source: Path, target: Path, scrub: Scrub) -> None:
    """One file (the WAL checkpointed into it), every text value scrubbed, then compacted."""
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)
    with contextlib.closing(sqlite3.connect(target)) as db:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            columns = [row[1] for row in db.execute(f"PRAGMA table_info(`{table}`)")]
            rows = db.execute(f"SELECT rowid, * FROM `{table}`").fetchall()
            for rowid, *values in rows:
                changed = {
                    column: scrub(value)
                    for column, value in zip(columns, values, strict=True)
                    if isinstance(value, str) and scrub(value) != value
                }
                if changed:
                    assignments = ", ".join(f"`{column}` = ?" for column in changed)
                    db.execute(
                        f"UPDATE `{table}` SET {assignments} WHERE rowid = ?",
                        (*changed.values(), rowid),
                    )
        db.commit()
        db.execute("VACUUM")
        # As opencode leaves it: a WAL database, here with nothing left in the WAL.
        db.execute("PRAGMA journal_mode = WAL")
    for suffix in ("-wal", "-shm"):
        Path(f"{target}{suffix}").unlink(missing_ok=True)


def copy_storage(source: Path, target: Path, scrub: Scrub) -> None:
    for path in sorted(source.rglob("*")):
        if path.is_file():
            destination = target / path.relative_to(source)
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_text(scrub(path.read_text()))


def record_own_share(opencode: Opencode) -> dict[str, list[dict[str, Any]]]:
    """Every session shared by the release itself to a loopback recorder: its own SyncData."""
    with _share_recorder() as (share_url, received):
        config = opencode_config(_llm_url(opencode), share_url)
        config["share"] = "manual"
        opencode.config_file.write_text(json.dumps(config, indent=2))
        with _serve(opencode) as api:
            sessions = json.load(urllib.request.urlopen(f"{api}/session", timeout=30))
            for session in sessions:
                request = urllib.request.Request(
                    f"{api}/session/{session['id']}/share", method="POST", data=b"{}",
                    headers={"content-type": "application/json"},
                )  # fmt: skip
                urllib.request.urlopen(request, timeout=60).close()
            # The share sends after a one-second debounce; wait until every session has sent
            # its diff (the last item of a full sync).
            _wait_for(
                lambda: all(
                    any(item["type"] == "session_diff" for item in received.get(s["id"], []))
                    for s in sessions
                ),
                timeout=30,
            )
    return {session_id: _last_per_key(items) for session_id, items in sorted(received.items())}


def _llm_url(opencode: Opencode) -> str:
    return json.loads(opencode.config_file.read_text())["provider"]["fake"]["options"]["baseURL"]


def _last_per_key(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What opencode's share server keeps: the newest item per session/message/part, the
    newest diff and model lists."""
    kept: dict[tuple[str, ...], dict[str, Any]] = {}
    for item in items:
        data = item["data"]
        if item["type"] == "part":
            key: tuple[str, ...] = ("part", data["messageID"], data["id"])
        elif item["type"] in ("session", "message"):
            key = (item["type"], data["id"])
        else:
            key = (item["type"],)
        kept.pop(key, None)
        kept[key] = item
    order = {"session": 0, "message": 1, "part": 2, "session_diff": 3, "model": 4}
    return sorted(kept.values(), key=lambda item: order[item["type"]])


@contextlib.contextmanager
def _share_recorder() -> Iterator[tuple[str, dict[str, list[dict[str, Any]]]]]:
    """The share REST API (CONTRACTS.md section 2), recording what each share sent."""
    received: dict[str, list[dict[str, Any]]] = {}
    share_ids: dict[str, str] = {}

    async def create(request: Request) -> JSONResponse:
        session_id = (await request.json())["sessionID"]
        share_id = session_id[-8:]
        share_ids[share_id] = session_id
        return JSONResponse(
            {"id": share_id, "secret": "secret", "url": f"{SHARE_URL}/share/{share_id}"}
        )

    async def sync(request: Request) -> JSONResponse:
        body = await request.json()
        received.setdefault(share_ids[request.path_params["id"]], []).extend(body["data"])
        return JSONResponse({})

    app = Starlette(
        routes=[
            Route("/api/share", create, methods=["POST"]),
            Route("/api/share/{id}/sync", sync, methods=["POST"]),
        ]
    )
    with _served(app) as url:
        yield url, received


@contextlib.contextmanager
def _served(app: Starlette) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        _wait_for(lambda: server.started, timeout=10)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextlib.contextmanager
def _serve(opencode: Opencode) -> Iterator[str]:
    """`opencode serve` on the home, until the block ends."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [str(opencode.binary), "serve", "--hostname", "127.0.0.1", "--port", str(port)],
        cwd=opencode.project_dir, env=opencode.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    try:
        _wait_for(lambda: _answers(f"{api}/session") or process.poll() is not None, timeout=60)
        if process.poll() is not None:
            raise RuntimeError(f"opencode serve exited with {process.returncode}")
        yield api
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).close()
    except OSError:
        return False
    return True


def _wait_for(condition: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n")


def _describe(target: Path) -> str:
    files = [path for path in target.rglob("*") if path.is_file()]
    return f"{len(files)} files, {sum(path.stat().st_size for path in files) // 1024} KiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--releases", default=",".join(RELEASES))
    parser.add_argument(
        "--install-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "opencode-releases",
        help="where the npm packages are installed (outside the repository)",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--readme", action="store_true", help="only rewrite README.md's table from the fixtures"
    )
    args = parser.parse_args()
    if args.readme:
        readme = ROOT / "README.md"
        readme.write_text(with_table(readme.read_text()))
        return
    cache_dir = args.install_dir / "cache"  # opencode's provider package, fetched once
    cache_dir.mkdir(parents=True, exist_ok=True)
    for release in args.releases.split(","):
        produce(release, install(release, args.install_dir), cache_dir, args.out)
    print("then: python scripts/opencode_fixtures.py --readme")


if __name__ == "__main__":
    main()
