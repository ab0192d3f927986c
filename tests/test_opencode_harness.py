"""The harness itself: the real opencode, headless, against the fake model, leaves in its
database what the end-to-end tests later expect a receiver to hold."""

from __future__ import annotations

import pytest

from tests.support.expected import database_snapshot
from tests.support.fake_llm import FakeLlm, Turn
from tests.support.opencode_driver import Opencode

pytestmark = pytest.mark.e2e

RUNS = 3


def test_three_headless_runs_leave_complete_sessions(opencode: Opencode, fake_llm: FakeLlm) -> None:
    turns = [
        Turn(
            file_name=f"f{n}.txt",
            file_text=f"file {n}\n" + "".join(f"line {i}\n" for i in range(20)),
            reply=" ".join(f"run{n}-word{i}" for i in range(60)),
        )
        for n in range(RUNS)
    ]
    for turn in turns:
        fake_llm.turn = turn
        opencode.run(f"please write the file {turn.file_name}")

    assert fake_llm.requests == {"title": RUNS, "tool_call": RUNS, "reply": RUNS}
    for turn in turns:
        assert (opencode.project_dir / turn.file_name).read_text() == turn.file_text

    snapshot = database_snapshot(opencode.db_path)
    assert len(snapshot) == RUNS
    replies_seen = set()
    for session in snapshot.values():
        messages = list(session["messages"].values())
        parts = list(session["parts"].values())
        assert sorted(m["role"] for m in messages) == ["assistant", "assistant", "user"]
        assert all(m["sessionID"] == session["session"]["id"] for m in messages)
        assert {p["messageID"] for p in parts} <= set(session["messages"])

        [tool] = [p for p in parts if p["type"] == "tool"]
        assert tool["tool"] == "write"
        assert tool["state"]["status"] == "completed"
        turn = next(t for t in turns if t.file_name == tool["state"]["input"]["filePath"])
        assert tool["state"]["input"]["content"] == turn.file_text

        texts = [p["text"] for p in parts if p["type"] == "text"]
        assert f"please write the file {turn.file_name}" in texts[0]
        # The whole streamed reply is there, not the state of some intermediate rewrite.
        assert any(text.strip() == turn.reply for text in texts), texts
        replies_seen.add(turn.reply)

        finished = [m for m in messages if m["role"] == "assistant" and m.get("finish") == "stop"]
        assert (
            len(finished) == 1
            and finished[0]["time"]["completed"] >= finished[0]["time"]["created"]
        )
    assert replies_seen == {turn.reply for turn in turns}
