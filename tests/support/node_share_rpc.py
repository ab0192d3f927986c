"""Runs the Node share servers (npm capnweb: tests/node/share_rpc_server.mjs, the reference
capnweb server; tests/node/opencode_share_server.mjs, opencode's real share server semantics
over REST and capnweb) and the npm capnweb client script (tests/node/share_rpc_client.mjs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


@contextlib.contextmanager
def node_share_server(key: str | None = None) -> Iterator[str]:
    """The reference capnweb server's base url (127.0.0.1, ephemeral port)."""
    with _node_server("share_rpc_server.mjs", {"SHARE_RPC_KEY": key or ""}) as url:
        yield url


class OpencodeShareServer:
    """opencode's real share server (tests/node/opencode_share_server.mjs) and its test hooks."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _hook(self, path: str) -> dict:
        method = "GET" if path == "state" else "POST"
        request = urllib.request.Request(f"{self.url}/test/{path}", method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    def state(self) -> dict:
        """{"shares": {id: {secret, sessionID, items}}, "creates": N}"""
        return self._hook("state")

    def remove(self, share_id: str) -> None:
        self._hook(f"remove/{share_id}")

    def fail(self, failing: bool) -> None:
        self._hook("fail/on" if failing else "fail/off")

    def fail_next_syncs(self, count: int) -> None:
        """The next `count` syncs throw (a passing storage failure); reads still answer."""
        self._hook(f"fail-sync/{count}")

    def drop_next_create_answer(self) -> None:
        self._hook("drop-create-answer")


@contextlib.contextmanager
def opencode_share_server() -> Iterator[OpencodeShareServer]:
    with _node_server("opencode_share_server.mjs", {}) as url:
        yield OpencodeShareServer(url)


@contextlib.contextmanager
def _node_server(script: str, env: dict[str, str]) -> Iterator[str]:
    """The server's base url (127.0.0.1, ephemeral port); the process is killed on exit."""
    process = subprocess.Popen(
        ["node", "--expose-gc", script],
        cwd=NODE_DIR,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{script} did not start (exit {process.wait()})")
        yield f"http://127.0.0.1:{json.loads(line)['port']}"
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def run_node_client(url: str, mode: str, session_id: str, key: str | None) -> dict:
    """The npm capnweb client's answers (share_rpc_client.mjs prints them as one object)."""
    args = [url, mode, session_id] + ([key] if key else [])
    process = await asyncio.create_subprocess_exec(
        "node", "share_rpc_client.mjs", *args, cwd=NODE_DIR, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    return json.loads(out)
