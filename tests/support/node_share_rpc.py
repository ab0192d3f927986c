"""Runs the reference share server (npm capnweb, tests/node/share_rpc_server.mjs) and the
npm capnweb client script (tests/node/share_rpc_client.mjs) for tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

NODE_DIR = Path(__file__).resolve().parent.parent / "node"


@contextlib.contextmanager
def node_share_server(key: str | None = None) -> Iterator[str]:
    """The server's base url (127.0.0.1, ephemeral port); the process is killed on exit."""
    env = {**os.environ, "SHARE_RPC_KEY": key or ""}
    process = subprocess.Popen(
        ["node", "--expose-gc", "share_rpc_server.mjs"],
        cwd=NODE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"share_rpc_server.mjs did not start (exit {process.wait()})")
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
