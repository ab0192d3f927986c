"""`syncd serve` under arbitrary request bodies: every answer is 200 or a 4xx naming the
problem, never a 500, and a share changes only when the answer was 200. (The fixed cases,
the key, the body limit and the address are in test_serve_rest.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.archive import ArchiveStore
from syncd.config import load_config
from syncd.receiver.app import build_app

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=10,
)  # fmt: skip
sync_items = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {"type": st.sampled_from(["session", "message", "part", "session_diff", "model", "x"])},
        optional={"data": json_values},
    ),
)
bodies = st.one_of(
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {}, optional={"secret": st.sampled_from(["SECRET", "wrong"]) | json_values,
                      "data": st.lists(sync_items, max_size=4) | json_values,
                      "sessionID": st.text(max_size=4) | json_values},
    ).map(json.dumps),
    st.binary(max_size=40).map(lambda raw: raw.decode("latin-1")),
)  # fmt: skip


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(target=st.sampled_from(["sync", "create", "delete"]), body=bodies)
async def test_any_body_gets_an_answer_and_changes_nothing_unless_200(
    store: ArchiveStore, target: str, body: str
) -> None:
    share = await store.create_share("ses_fuzz", "http://receiver")
    before = await _contents(store)
    body = body.replace('"SECRET"', json.dumps(share.secret))
    method, path = {"sync": ("POST", f"/api/share/{share.id}/sync"),
                    "create": ("POST", "/api/share"),
                    "delete": ("DELETE", f"/api/share/{share.id}")}[target]  # fmt: skip
    transport = httpx.ASGITransport(app=build_app(store))
    async with httpx.AsyncClient(transport=transport, base_url="http://receiver") as client:
        answer = await client.request(method, path, content=body.encode("utf-8", "replace"))
    assert answer.status_code in (200, 400, 403, 404), answer.text
    if answer.status_code != 200:
        assert answer.json()["error"]
        assert await _contents(store) == before


async def _contents(store: ArchiveStore) -> list[Any]:
    shares = await store.list_shares()
    return [(s["id"], await store.read_items(s["id"])) for s in shares]


def test_serve_binds_to_loopback_by_default(tmp_path: Path) -> None:
    config = load_config({"state": str(tmp_path / "s.db")}, {"HOME": str(tmp_path)})
    assert config.serve_host == "127.0.0.1"
