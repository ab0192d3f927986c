"""Soak with faults: an opencode-like writer at a high rate across 20 sessions, a receiver that
misbehaves at random, and `syncd run` (a real subprocess) SIGKILLed at random and restarted.
At the end the receiver must hold exactly what the database holds.

    python scripts/soak.py --minutes 10 [--seed N] [--on-delete keep|delete] [--no-doc]

Writes its figures into docs/reliability.md (section "soak"); exits 1 when a check fails.
tests/test_soak.py runs the same harness for two minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.expected import database_snapshot, receiver_differences
from tests.support.fake_opencode import FakeOpencode, new_id
from tests.support.receiver import Receiver, running_receiver
from tests.support.syncd_process import SyncdProcess, state_dead_letters, state_shares

REQUEST_TIMEOUT = 1.0
# Receiver behaviours a fault phase picks from (weights); "late" answers after the timeout.
PHASES = {"ok": 3, "stopped": 1, "503": 1, "429": 1, "late": 1, "drop": 1, "html": 1,
          "truncated": 1, "random": 3}  # fmt: skip
CATCH_UP_TIMEOUT = 120.0
RSS_LIMIT_MB = 150.0


@dataclass(frozen=True)
class SoakOptions:
    minutes: float
    seed: int = 1
    sessions: int = 20
    writes_per_second: float = 150.0
    on_delete: str = "delete"
    kill_every: tuple[float, float] = (4.0, 12.0)
    phase_seconds: tuple[float, float] = (0.5, 3.0)
    delete_every: float = 6.0  # seconds between session deletions (a new session replaces it)


@dataclass
class SoakReport:
    minutes: float
    seed: int
    on_delete: str
    writes: int = 0
    sessions_created: int = 0
    sessions_deleted: int = 0
    fault_phases: dict[str, int] = field(default_factory=dict)
    faults_injected: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    starts: int = 0
    sessions_at_end: int = 0
    items_at_end: int = 0
    shares_created: int = 0
    repeated_creates: int = 0
    shares_unknown_to_syncd: int = 0
    unanswered_creates: int = 0
    unanswered_syncs: int = 0
    repeated_batches: int = 0
    duplicate_bound: int = 0
    rss_peak_mb: float = 0.0
    catch_up_seconds: float = 0.0
    exit_code: int | None = None
    dead_letters: int = 0
    problems: list[str] = field(default_factory=list)


class SoakWriter(threading.Thread):
    """Writes like opencode: turns of a user message, an assistant message whose parts are
    upserted as they grow (text rewritten longer, a tool going pending -> running ->
    completed), the message completed, the session updated; now and then a session is
    deleted (`opencode session delete`) and a new one begins."""

    def __init__(self, db: Path, fixtures_dir: Path, options: SoakOptions) -> None:
        super().__init__(name="soak-writer", daemon=True)
        self.db, self.fixtures_dir, self.options = db, fixtures_dir, options
        self.rng = random.Random(options.seed)
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.writes = 0
        self.created: list[str] = []
        self.deleted: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as error:  # reported by the harness
            self.error = error
            self.ready.set()

    def _run(self) -> None:
        writer = FakeOpencode(self.db, self.fixtures_dir)
        writer.conn.execute("PRAGMA synchronous = NORMAL")  # as opencode opens it
        streams: dict[str, Iterator[None]] = {}
        for _ in range(self.options.sessions):
            self._new_session(writer, streams)
        self.ready.set()
        began = last_delete = time.monotonic()
        for number in itertools.count():
            if self.stop.is_set():
                break
            delay = began + number / self.options.writes_per_second - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if time.monotonic() - last_delete >= self.options.delete_every:
                last_delete = time.monotonic()
                victim = self.rng.choice(sorted(streams))
                del streams[victim]
                writer.delete_session(victim)
                self.deleted.append(victim)
                self._new_session(writer, streams)
            next(streams[self.rng.choice(sorted(streams))])
            self.writes += 1
        writer.close()

    def _new_session(self, writer: FakeOpencode, streams: dict[str, Iterator[None]]) -> None:
        session_id = writer.session(f"soak {len(self.created)}")
        self.created.append(session_id)
        streams[session_id] = self._turns(writer, session_id)

    def _turns(self, writer: FakeOpencode, session_id: str) -> Iterator[None]:
        for turn in itertools.count():
            user_id = writer.message(session_id, user_message())
            writer.part(session_id, user_id, {"type": "text", "text": f"please do task {turn}"})
            yield
            reply_id = new_id("msg")
            writer.message(session_id, assistant_message(user_id), reply_id)
            yield
            writer.part(session_id, reply_id, {"type": "step-start"})
            yield
            text_id, started = new_id("prt"), now_ms()
            for growth in range(1, self.rng.randint(3, 12)):
                words = " ".join(f"turn{turn}-word{i}" for i in range(growth * 15))
                text = {"type": "text", "text": words, "time": {"start": started}}
                writer.part(session_id, reply_id, text, text_id)
                yield
            tool_id = new_id("prt")
            tool_input = {"filePath": f"f{turn}.txt", "content": "line\n" * 20}
            for state in (
                {"status": "pending", "input": {}, "raw": ""},
                {"status": "running", "input": tool_input, "time": {"start": now_ms()}},
                {"status": "completed", "input": tool_input, "output": "Wrote file.",
                 "title": f"f{turn}.txt", "metadata": {}, "time": {"start": 1, "end": 2}},
            ):  # fmt: skip
                tool = {"type": "tool", "callID": f"call_{turn}", "tool": "write", "state": state}
                writer.part(session_id, reply_id, tool, tool_id)
                yield
            writer.part(
                session_id,
                reply_id,
                {
                    "type": "step-finish",
                    "reason": "stop",
                    "cost": 0.001,
                    "tokens": {"input": 10, "output": 20},
                },
            )
            writer.message(session_id, assistant_message(user_id, completed=True), reply_id)
            yield
            writer.session(
                session_id=session_id, title=f"soak session, turn {turn}", time_created=1
            )
            yield


def user_message() -> dict[str, Any]:
    return {"role": "user", "time": {"created": now_ms()}, "agent": "build",
            "model": {"providerID": "fake", "modelID": "fake-model"}}  # fmt: skip


def assistant_message(parent_id: str, completed: bool = False) -> dict[str, Any]:
    now = now_ms()
    return {"parentID": parent_id, "role": "assistant", "mode": "build", "agent": "build",
            "path": {"cwd": "/home/dev/proj", "root": "/"}, "cost": 0.001 if completed else 0,
            "tokens": {"input": 10, "output": 20 if completed else 0, "reasoning": 0,
                       "cache": {"read": 0, "write": 0}},
            "modelID": "fake-model", "providerID": "fake",
            "time": {"created": now, **({"completed": now} if completed else {})}}  # fmt: skip


def now_ms() -> int:
    return int(time.time() * 1000)


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Soak:
    def __init__(self, workdir: Path, fixtures_dir: Path, options: SoakOptions,
                 progress: Callable[[str], None]) -> None:  # fmt: skip
        self.workdir, self.options, self.progress = workdir, options, progress
        self.rng = random.Random(options.seed + 1)
        self.db = workdir / "opencode.db"
        self.state = workdir / "state.db"
        self.writer = SoakWriter(self.db, fixtures_dir, options)
        self.report = SoakReport(options.minutes, options.seed, options.on_delete)
        self.phases: Counter[str] = Counter()
        self.created: dict[str, str] = {}  # share id -> session id, every share created
        self.deleted_shares: set[str] = set()  # shares removed by syncd's DELETE

    async def run(self) -> SoakReport:
        self.writer.start()
        await asyncio.to_thread(self.writer.ready.wait)
        if self.writer.error:
            raise self.writer.error
        async with running_receiver(self.workdir) as receiver:
            self._record_creates(receiver)
            syncd = SyncdProcess(self._args(receiver), dict(os.environ), self.workdir / "syncd.log")
            await syncd.start()
            try:
                await self._chaos(receiver, syncd)
                await self._settle(receiver, syncd)
            finally:
                self.writer.stop.set()
                if syncd.process and syncd.process.returncode is None:
                    syncd.process.kill()
                    await syncd.process.wait()
            self.report.starts = syncd.starts
            await self._check(receiver, syncd)
        return self.report

    def _args(self, receiver: Receiver) -> list[str]:
        config = self.workdir / "syncd.toml"
        config.write_text(
            f"window = 0.2\nbackoff_max = 2.0\nrequest_timeout = {REQUEST_TIMEOUT}\n"
            f'poll_interval = 5.0\non_delete = "{self.options.on_delete}"\nlog_level = "warning"\n'
        )
        return ["run", "--db", str(self.db), "--state", str(self.state), "--url", receiver.url,
                "--transport", "http", "--sessions", "all", "--config", str(config)]  # fmt: skip

    def _record_creates(self, receiver: Receiver) -> None:
        create_share, delete_share = receiver.store.create_share, receiver.store.delete_share

        async def created(session_id: str, base_url: str) -> Any:
            share = await create_share(session_id, base_url)
            self.created[share.id] = session_id
            return share

        async def deleted(share_id: str, secret: str) -> None:
            await delete_share(share_id, secret)
            self.deleted_shares.add(share_id)

        receiver.store.create_share = created  # type: ignore[method-assign]
        receiver.store.delete_share = deleted  # type: ignore[method-assign]

    async def _chaos(self, receiver: Receiver, syncd: SyncdProcess) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.options.minutes * 60
        tasks = [asyncio.create_task(self._faults(receiver, end)),
                 asyncio.create_task(self._kills(syncd, end)),
                 asyncio.create_task(self._sample_rss(syncd))]  # fmt: skip
        try:
            while loop.time() < end:
                await asyncio.sleep(min(10.0, max(0.0, end - loop.time())))
                if self.writer.error:
                    raise self.writer.error
                for task in tasks:
                    if task.done():
                        task.result()  # a harness task failed: stop here, with its error
                self.progress(
                    f"{self.writer.writes} writes, {self.report.kills} kills, "
                    f"{sum(receiver.faults.injected.values())} faulty answers, "
                    f"{receiver.create_count} shares, peak RSS {self.report.rss_peak_mb:.0f} MB"
                )
        finally:
            for task in tasks[:2]:
                task.cancel()
            await asyncio.gather(*tasks[:2], return_exceptions=True)
            self._rss_task = tasks[2]

    async def _faults(self, receiver: Receiver, end: float) -> None:
        loop = asyncio.get_running_loop()
        names, weights = list(PHASES), list(PHASES.values())
        while loop.time() < end:
            phase = self.rng.choices(names, weights)[0]
            self.phases[phase] += 1
            faults = receiver.faults
            match phase:
                case "ok":
                    await faults.ok()
                case "stopped":
                    await faults.stop()
                case "503":
                    await faults.status(503)
                case "429":
                    await faults.status(429, retry_after=round(self.rng.uniform(0.2, 2.0), 1))
                case "late":
                    await faults.late(REQUEST_TIMEOUT * 1.5)
                case "random":
                    await faults.random(self.rng, delay=REQUEST_TIMEOUT * 1.5)
                case _:
                    await getattr(faults, phase)()
            await asyncio.sleep(self.rng.uniform(*self.options.phase_seconds))
        await receiver.faults.ok()

    async def _kills(self, syncd: SyncdProcess, end: float) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.rng.uniform(*self.options.kill_every))
            if loop.time() >= end:
                return
            process = syncd.process
            assert process is not None
            if process.returncode is not None:
                raise AssertionError(
                    f"syncd exited by itself ({process.returncode}): {syncd.log()[-3000:]}"
                )
            os.kill(process.pid, signal.SIGKILL)
            await process.wait()
            self.report.kills += 1
            await asyncio.sleep(self.rng.uniform(0.0, 0.5))
            await syncd.start()

    async def _sample_rss(self, syncd: SyncdProcess) -> None:
        while True:
            process = syncd.process
            if process is not None and process.returncode is None:
                rss = rss_mb(process.pid)
                if rss is not None:
                    self.report.rss_peak_mb = max(self.report.rss_peak_mb, rss)
            await asyncio.sleep(0.5)

    async def _settle(self, receiver: Receiver, syncd: SyncdProcess) -> None:
        """Faults and kills are over: stop writing, let syncd catch up, stop it cleanly."""
        self.writer.stop.set()
        await asyncio.to_thread(self.writer.join)
        if self.writer.error:
            raise self.writer.error
        await receiver.faults.ok()
        loop = asyncio.get_running_loop()
        began = loop.time()
        differences = await self._differences(receiver)
        while differences and loop.time() - began < CATCH_UP_TIMEOUT:
            await asyncio.sleep(0.5)
            differences = await self._differences(receiver)
        self.report.catch_up_seconds = round(loop.time() - began, 1)
        self._rss_task.cancel()
        self.report.exit_code = await syncd.terminate()
        if differences:
            self.report.problems.append(
                f"receiver still differs after {CATCH_UP_TIMEOUT:g}s: {differences[:10]}"
            )

    async def _differences(self, receiver: Receiver) -> list[str]:
        snapshot = await asyncio.to_thread(database_snapshot, self.db)
        latest: dict[str, str] = {}
        for share in await receiver.store.list_shares():  # newest first
            latest.setdefault(share["session_id"], share["id"])
        differences: list[str] = []
        for session_id, expected in snapshot.items():
            if session_id not in latest:
                differences.append(f"session {session_id}: no share")
                continue
            differences += receiver_differences(
                expected, await receiver.store.read_share(latest[session_id])
            )
        return differences

    async def _check(self, receiver: Receiver, syncd: SyncdProcess) -> None:
        report, problems = self.report, self.report.problems
        snapshot = database_snapshot(self.db)
        shares = state_shares(self.state)
        report.writes = self.writer.writes
        report.sessions_created = len(self.writer.created)
        report.sessions_deleted = len(self.writer.deleted)
        report.fault_phases = dict(self.phases)
        report.faults_injected = dict(receiver.faults.injected)
        report.sessions_at_end = len(snapshot)
        report.items_at_end = sum(
            1 + len(s["messages"]) + len(s["parts"]) for s in snapshot.values()
        )
        report.shares_created = receiver.create_count
        sessions_of_creates = list(self.created.values())
        report.repeated_creates = len(sessions_of_creates) - len(set(sessions_of_creates))
        report.unanswered_creates = receiver.faults.unanswered["create"]
        report.unanswered_syncs = receiver.faults.unanswered["sync"]
        report.repeated_batches = receiver.repeated_batches
        report.dead_letters = len(state_dead_letters(self.state))
        if report.exit_code != 0:
            problems.append(f"syncd exited {report.exit_code} on SIGTERM")
        if set(shares) - set(self.writer.deleted) != set(snapshot):
            problems.append(f"state has shares for {len(shares)} sessions, db has {len(snapshot)}")
        for session_id, expected in snapshot.items():
            if session_id in shares:
                share = await receiver.store.read_share(shares[session_id])
                if differences := receiver_differences(expected, share):
                    problems.append(f"session {session_id}: {differences[:5]}")
        # A share whose create answer was lost (to a kill or a broken answer) is one syncd
        # never heard of; it stays on the receiver. Every other share is in syncd's state or
        # was deleted by syncd because its session was deleted (on_delete = delete).
        unknown = set(self.created) - set(shares.values()) - self.deleted_shares
        report.shares_unknown_to_syncd = len(unknown)
        lost_create_answers = report.kills + report.unanswered_creates
        if len(unknown) > lost_create_answers:
            problems.append(
                f"{len(unknown)} shares unknown to syncd, but only {lost_create_answers} create "
                "answers could have been lost"
            )
        deleted = set(self.writer.deleted)
        if self.options.on_delete == "keep" and self.deleted_shares:
            problems.append(f"on_delete = keep, yet {len(self.deleted_shares)} shares deleted")
        if self.options.on_delete == "delete":
            kept = {sid for sid in shares.values() if self.created.get(sid) in deleted}
            if kept:
                problems.append(f"{len(kept)} shares of deleted sessions still in the state")
        # A batch is sent again only when its acknowledgement never reached syncd's state: an
        # answer the receiver broke after applying, or one in flight when syncd was killed
        # (at most one per concurrent delivery).
        report.duplicate_bound = report.unanswered_syncs + report.kills * 8
        if report.repeated_batches > report.duplicate_bound:
            problems.append(
                f"{report.repeated_batches} batches applied twice, bound {report.duplicate_bound}"
            )
        if report.dead_letters:
            problems.append(f"{report.dead_letters} dead letters for valid rows")
        if report.rss_peak_mb > RSS_LIMIT_MB:
            problems.append(f"syncd RSS peaked at {report.rss_peak_mb:.0f} MB")
        if problems:
            problems.append("syncd log (end): " + syncd.log()[-3000:])


def _deliberate_faults_unlogged(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(
        ("ASGI callable returned without completing", "Cancel ", "Exception in ASGI")
    )


async def soak(workdir: Path, fixtures_dir: Path, options: SoakOptions,
               progress: Callable[[str], None] = lambda _: None) -> SoakReport:  # fmt: skip
    # The receiver's broken answers are deliberate; uvicorn would log each one as an error.
    # (A filter, not a level: uvicorn resets levels whenever the receiver listens again.)
    logging.getLogger("uvicorn.error").addFilter(_deliberate_faults_unlogged)
    return await Soak(workdir, fixtures_dir, options, progress).run()


def main(argv: list[str] | None = None) -> int:
    from scripts.reliability_doc import update_section
    from tests.support import FIXTURES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--on-delete", choices=("keep", "delete"), default="delete")
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/reliability.md")
    args = parser.parse_args(argv)
    options = SoakOptions(minutes=args.minutes, seed=args.seed, on_delete=args.on_delete)
    with tempfile.TemporaryDirectory(prefix="syncd-soak-") as tmp:
        report = asyncio.run(
            soak(
                Path(tmp),
                FIXTURES,
                options,
                lambda line: print(f"soak: {line}", file=sys.stderr),
            )
        )
    figures = {key: value for key, value in asdict(report).items() if key != "problems"}
    print(json.dumps(figures, indent=2))
    for problem in report.problems:
        print(f"soak: FAILED: {problem}", file=sys.stderr)
    if not args.no_doc:
        update_section("soak", {**figures, "passed": not report.problems})
    return 1 if report.problems else 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
