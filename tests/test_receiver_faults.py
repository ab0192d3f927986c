"""The test receiver's broken-answer faults, as syncd's HTTP transport meets them: a dropped
connection, a truncated or HTML 200, a late answer. None of them may count as acknowledged,
and the receiver says which requests it applied without the sender hearing of it."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from syncd.model import Batch
from syncd.transports.base import RetryableError
from syncd.transports.http import HttpTransport
from tests.support.receiver import Receiver, running_receiver

SESSION_ID = "ses_faults0000000000000000001"


def batch(text: str) -> Batch:
    part = {"id": "prt_1", "sessionID": SESSION_ID, "messageID": "msg_1", "type": "text",
            "text": text}  # fmt: skip
    return Batch(SESSION_ID, [{"type": "part", "data": part}])


async def stored_text(receiver: Receiver, share_id: str) -> str | None:
    parts = (await receiver.store.read_share(share_id))["parts"]
    return parts[0]["text"] if parts else None


@pytest.mark.parametrize(
    ("fault", "applied", "error"),
    [
        ("drop", True, "RemoteProtocolError"),
        ("truncated", True, "not JSON"),
        ("html", False, "not JSON"),
        ("late", True, "Timeout"),
    ],
)
async def test_a_broken_answer_is_never_an_acknowledgement(
    tmp_path: Path, fault: str, applied: bool, error: str
) -> None:
    async with running_receiver(tmp_path) as receiver:
        http = HttpTransport(receiver.url, timeout=0.5, verify=True)
        try:
            share = (await http.create(SESSION_ID, None)).share
            if fault == "late":
                await receiver.faults.late(2.0)
            else:
                await getattr(receiver.faults, fault)()
            with pytest.raises(RetryableError, match=error):
                await http.sync(share, batch("hello"))
            assert receiver.faults.injected[fault] == 1
            assert receiver.faults.unanswered["sync"] == int(applied)
            assert await stored_text(receiver, share.id) == ("hello" if applied else None)

            # The sender tries again with the same batch: applied once, counted as repeated.
            await receiver.faults.ok()
            await http.sync(share, batch("hello"))
            assert receiver.repeated_batches == int(applied)
            assert await stored_text(receiver, share.id) == "hello"
        finally:
            await http.aclose()


async def test_a_lost_create_answer_is_counted(tmp_path: Path) -> None:
    async with running_receiver(tmp_path) as receiver:
        http = HttpTransport(receiver.url, timeout=5.0, verify=True)
        try:
            await receiver.faults.drop()
            with pytest.raises(RetryableError):
                await http.create(SESSION_ID, None)
            assert (receiver.create_count, receiver.faults.unanswered["create"]) == (1, 1)
        finally:
            await http.aclose()


async def test_random_mode_mixes_every_fault_and_success(tmp_path: Path) -> None:
    async with running_receiver(tmp_path) as receiver:
        http = HttpTransport(receiver.url, timeout=0.3, verify=True)
        try:
            await receiver.faults.random(random.Random(7), delay=0.5)
            outcomes = {"ok": 0, "failed": 0}
            for _ in range(60):
                try:
                    await http.create(SESSION_ID, None)
                    outcomes["ok"] += 1
                except RetryableError:
                    outcomes["failed"] += 1
        finally:
            await http.aclose()
        assert outcomes["ok"] > 0 and outcomes["failed"] > 0
        assert set(receiver.faults.injected) == {"503", "429", "late", "drop", "html", "truncated"}
        assert outcomes["failed"] == sum(receiver.faults.injected.values())
