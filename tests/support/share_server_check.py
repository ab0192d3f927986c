"""syncd against opencode's real share server semantics (tests/node/opencode_share_server.mjs):
a config that delivers every session to it, and what it holds."""

from __future__ import annotations

from pathlib import Path

from syncd.config import Config
from syncd.state.store import StateStore
from tests.support.archive_check import make_config
from tests.support.node_share_rpc import OpencodeShareServer

TRANSPORTS = ["http", "capnweb-batch", "capnweb-ws"]


def config_for(tmp_path: Path, db: Path, server: OpencodeShareServer, transport: str) -> Config:
    return make_config(tmp_path, db, url=server.url, transport=transport, sessions="all")


def held(server: OpencodeShareServer) -> dict[str, dict[str, dict]]:
    """session id -> {messages, parts} by id, as the server holds them."""
    out: dict[str, dict[str, dict]] = {}
    for share in server.state()["shares"].values():
        got = out.setdefault(share["sessionID"], {"messages": {}, "parts": {}})
        for item in share["items"]:
            if item["type"] in ("message", "part"):
                got[item["type"] + "s"][item["data"]["id"]] = item["data"]
    return out


async def pending_and_dead(config: Config) -> tuple[dict[str, int], list[dict]]:
    """What the state still holds: pending items per session, and the dead letters."""
    state = await StateStore.open(config.state)
    try:
        return await state.pending_sessions(), await state.dead_letters()
    finally:
        await state.close()
