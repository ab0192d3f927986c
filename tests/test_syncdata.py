"""Row -> SyncData conversion, checked against what opencode itself published for the same
entities: the last journal event of each carries the SDK object opencode built."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from syncd.source import syncdata


def last_event_objects(db: sqlite3.Connection) -> dict[tuple[str, str], dict]:
    """(kind, id) -> the SDK object in the newest journal event about it."""
    newest: dict[tuple[str, str], dict] = {}
    for event_type, data in db.execute("SELECT type, data FROM event ORDER BY aggregate_id, seq"):
        payload = json.loads(data)
        if event_type.startswith("session."):
            newest[("session", payload["info"]["id"])] = payload["info"]
        elif event_type.startswith("message.updated"):
            newest[("message", payload["info"]["id"])] = payload["info"]
        elif event_type.startswith("message.part.updated"):
            newest[("part", payload["part"]["id"])] = payload["part"]
    return newest


@pytest.fixture
def db(sample_db: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(sample_db)
    conn.row_factory = sqlite3.Row
    return conn


def test_every_row_converts_to_what_opencode_published(db: sqlite3.Connection) -> None:
    published = last_event_objects(db)
    converters = {
        "session": syncdata.session_item,
        "message": syncdata.message_item,
        "part": syncdata.part_item,
    }
    compared = 0
    for kind, convert in converters.items():
        for row in db.execute(f"SELECT * FROM {kind}"):
            item = convert(row)
            assert item["type"] == kind
            assert item["data"] == published[(kind, row["id"])], f"{kind} {row['id']}"
            compared += 1
    assert compared == len(published) == 5 + 15 + 35


def test_json_types_survive(db: sqlite3.Connection) -> None:
    row = db.execute("SELECT * FROM session LIMIT 1").fetchone()
    data = syncdata.session_item(row)["data"]
    # `cost` is a REAL column holding 0.0; JavaScript (and opencode's share) sends 0.
    assert data["cost"] == 0 and type(data["cost"]) is int
    assert type(data["time"]["created"]) is int


def test_session_matches_the_captured_share_example(
    db: sqlite3.Connection, fixtures_dir: Path
) -> None:
    example = json.loads(
        (fixtures_dir / "opencode" / "share-sync-examples-1.18.33.json").read_text()
    )
    expected = example["session"]["data"]
    # The example is the session right after creation; rebuild that row state.
    row = dict(db.execute("SELECT * FROM session LIMIT 1").fetchone())
    row.update(
        id=expected["id"], slug=expected["slug"], directory=expected["directory"],
        path=expected["path"], title=expected["title"], share_url=expected["share"]["url"],
        tokens_input=0, tokens_output=0, summary_additions=None, summary_deletions=None,
        summary_files=None, time_created=expected["time"]["created"],
        time_updated=expected["time"]["updated"],
    )  # fmt: skip
    assert syncdata.session_item(row)["data"] == expected


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        (b"\xff\xfe", "is not valid UTF-8"),
        (None, "is not JSON text"),
    ],
)
def test_unreadable_rows_are_named(data: object, reason: str) -> None:
    row = {"id": "prt_1", "session_id": "ses_1", "message_id": "msg_1", "data": data}
    with pytest.raises(syncdata.BadRow, match=reason) as caught:
        syncdata.part_item(row)
    assert "prt_1" in str(caught.value)


def test_user_model_ref_only_for_user_messages() -> None:
    user = {
        "type": "message",
        "data": {"role": "user", "model": {"providerID": "p", "modelID": "m"}},
    }
    assistant = {
        "type": "message",
        "data": {"role": "assistant", "providerID": "p", "modelID": "m"},
    }
    assert syncdata.user_model_ref(user) == ("p", "m")
    assert syncdata.user_model_ref(assistant) is None
