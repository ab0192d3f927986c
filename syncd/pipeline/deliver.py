"""Delivers one session's pending items: share lifecycle, retries, acknowledgements.

Retryable failures (transport errors, timeouts, 5xx, 429, a dropped socket) are retried with
full-jitter exponential backoff, honouring `Retry-After`; the concurrency slot is held only
during a call, never while backing off. Every call has a whole-call deadline (request_timeout,
and never past `--give-up-after`). A refused key is the whole receiver's condition: the items
stay pending and are retried, with backoff, until the key is fixed (a reload wakes them).

A batch the receiver refuses, or that cannot travel (a value the transport cannot carry, a body
too large, anything a call raises unexpectedly), is sent again in halves, so that only the
items refused alone are dead-lettered, each with its reason, and the rest of the session goes
on. A refused create dead-letters the batch. A lost share is re-created once and the whole
session sent again.

opencode's own share server answers a lost share, a refused secret, an existing share and a
failing storage with the same bare 500. The evidence that tells them apart: the same call
failing with it at least AMBIGUOUS_LIMIT times over `RetryPolicy.ambiguous_after` seconds while
the receiver answers reads the way opencode's server does. Then the share is probed by creating
it again: a new share means the old one was lost (it gets the whole session); a refusal means
the share exists and keeps refusing syncd's calls, most likely under a secret syncd does not
hold, which opencode's own `session_share` row may have. Otherwise the batch is dead-lettered
with a reason a person can act on; the credentials syncd holds are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_random_exponential,
)

from ..metrics import Metrics
from ..model import Batch, Created, PendingItem, Share
from ..source.loader import load
from ..source.models import ModelCatalogue
from ..source.opencode_db import OpencodeDb
from ..state.store import StateStore
from ..transports.base import (
    DeliveryError,
    KeyRefusedError,
    OversizeSuspectedError,
    ReceiverProbe,
    RejectedError,
    RetryableError,
    ShareExistsError,
    ShareNotFoundError,
    ShareProblem,
    ThrownError,
    Transport,
    UnsendableError,
)
from ..urls import same_server
from .conditions import RECEIVER, Conditions
from .planner import PlannedBatch, plan_batches

log = structlog.get_logger("syncd.deliver")
T = TypeVar("T")
# Bare 500s in a row on one call, at the least, before the receiver is probed; also the
# connections dropped in a row under one item alone before it counts as too large.
AMBIGUOUS_LIMIT = 3
# Errors a remote method threw that syncd does not know, in a row, before the batch is refused.
THROWN_LIMIT = 5
# A call's deadline grows with the body it sends, at this rate: an upload on a slow link is
# not a receiver that stalls.
UPLOAD_BYTES_PER_SECOND = 256 * 1024
# Sessions read ahead of the calls, per call slot: enough to keep every slot busy.
READ_AHEAD_PER_CALL = 4


@dataclass(frozen=True)
class RetryPolicy:
    backoff_max: float = 300.0
    # None: retry for ever (the daemon). `sync` gives up this many seconds after it started,
    # across all its sessions and calls, so that it answers in bounded time.
    give_up_after: float | None = None
    # Every call's deadline: connect, send and the whole answer.
    request_timeout: float = 30.0
    # How long the same call must keep failing with a bare 500 before it counts as evidence
    # about the share rather than a passing failure of the server.
    ambiguous_after: float = 120.0
    started: float = field(default_factory=time.monotonic)

    def wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        asked = error.retry_after if isinstance(error, RetryableError) else None
        if asked is not None and math.isfinite(asked):
            wait = min(max(asked, 0.0), self.backoff_max)
        else:
            wait = wait_random_exponential(multiplier=1, max=self.backoff_max)(state)
        return min(wait, self.left()) if self.give_up_after is not None else wait

    def left(self) -> float:
        assert self.give_up_after is not None
        return max(self.started + self.give_up_after - time.monotonic(), 0.0)

    def stop(self, state: RetryCallState) -> bool:
        # Reached once the wait before the next attempt takes what time is left.
        return self.give_up_after is not None and self.left() - state.upcoming_sleep <= 0

    def deadline(self, sent: int = 0) -> float:
        """Seconds one call may take, `sent` bytes of body included; 0 once given up."""
        seconds = self.request_timeout + sent / UPLOAD_BYTES_PER_SECOND
        return min(seconds, self.left()) if self.give_up_after is not None else seconds


class GivenUp(RetryableError):
    """The policy's time to give up ended a call in flight, or left none for it."""


class KeepsFailing(Exception):
    """The same call failed AMBIGUOUS_LIMIT times with a bare 500 while the receiver answers
    other calls: the failure is about this share, not a receiver that is down."""


class TargetChanged(Exception):
    """The receiver was reconfigured while a batch was on its way: the batch stays pending
    and goes to the new receiver, so that a share is never recorded under the wrong one."""


class SessionDelivery:
    """Everything needed to bring one session's remote copy up to date."""

    def __init__(
        self,
        *,
        db: OpencodeDb,
        only_shared: bool,
        state: StateStore,
        transport: Transport,
        target: str,
        origin: str | None,
        catalogue: ModelCatalogue,
        whole_session: Callable[[str], Awaitable[set[tuple[str, str]]]],
        policy: RetryPolicy,
        concurrency: int,
        max_items: int,
        max_bytes: int,
        metrics: Metrics,
        conditions: Conditions,
    ) -> None:
        self.db = db
        self.only_shared = only_shared
        self._state = state
        self._transport = transport
        self._target = target
        self._origin = origin
        self._catalogue = catalogue
        self._whole_session = whole_session
        self._policy = policy
        self._slots = asyncio.Semaphore(concurrency)
        # Sessions whose rows are read and not yet sent: bounded, so that a capture far ahead
        # of delivery (a backfill) does not hold every session's rows in memory. A session
        # that backs off gives its place up: a failing session must not hold up the others.
        self._read_ahead = asyncio.Semaphore(concurrency * READ_AHEAD_PER_CALL)
        self._reading: dict[str, asyncio.Semaphore] = {}
        self._concurrency = concurrency
        self._max_items = max_items
        self._max_bytes = max_bytes
        self._metrics = metrics
        self._conditions = conditions
        # Calls in flight per transport, so that a replaced transport is closed only when idle.
        self._calls: Counter[Transport] = Counter()
        self._idle = asyncio.Condition()
        # Set (and replaced) when the transport is: retries waiting on the old one wake up.
        self._replaced = asyncio.Event()

    def reconfigure(
        self, *, policy: RetryPolicy, concurrency: int, max_items: int, max_bytes: int
    ) -> None:
        """New settings (SIGHUP) for the batches planned and the calls started from now on."""
        self._policy = policy
        self._max_items = max_items
        self._max_bytes = max_bytes
        if concurrency != self._concurrency:
            # Calls holding a slot of the old semaphore release it; new calls take new slots.
            self._slots = asyncio.Semaphore(concurrency)
            self._read_ahead = asyncio.Semaphore(concurrency * READ_AHEAD_PER_CALL)
            self._concurrency = concurrency

    async def replace_transport(
        self, transport: Transport, target: str, origin: str | None
    ) -> Transport:
        """Send from now on through `transport` (retries included) and wait until the calls
        still running on the old one have ended; returns the old one, for the caller to close.
        A batch whose call to the old receiver succeeded is acknowledged as usual."""
        old = self._transport
        self._transport, self._target, self._origin = transport, target, origin
        self._replaced.set()
        self._replaced = asyncio.Event()
        async with self._idle:
            await self._idle.wait_for(lambda: self._calls[old] == 0)
        del self._calls[old]
        return old

    async def deliver(self, session_id: str) -> None:
        """Send batches until nothing is pending for the session. Raises RetryableError only
        when the policy gives up (`sync`); the items then stay pending."""
        try:
            await self._deliver_pending(session_id)
        except TargetChanged:
            log.info("receiver reconfigured; batch stays pending for it", session=session_id)

    async def _deliver_pending(self, session_id: str) -> None:
        if self.only_shared and not await self.db.is_shared(session_id):
            # Unshared in opencode while items waited: publishing them now would share again
            # what the user took back. A new share in opencode captures the session anew.
            log.info("session no longer shared in opencode; not sent", session=session_id)
            await self._state.forget_session(session_id)
            return
        while True:
            pending, delivered_diff = await self._state.next_batch(session_id, self._max_items)
            if not pending:
                return
            read_ahead = self._read_ahead
            await read_ahead.acquire()
            self._reading[session_id] = read_ahead
            try:
                await self._deliver_read(session_id, pending, delivered_diff)
            finally:
                self._stop_reading(session_id)

    def _stop_reading(self, session_id: str) -> None:
        """The session's rows are sent (or it backs off): its read-ahead place is free."""
        read_ahead = self._reading.pop(session_id, None)
        if read_ahead is not None:
            read_ahead.release()

    async def _deliver_read(
        self, session_id: str, pending: list[PendingItem], delivered_diff: str | None
    ) -> None:
        """Read `pending` and send it (`delivered_diff`: the diff hash the receiver has)."""
        loaded = await load(self.db, pending, self._catalogue)
        if loaded.bad:
            for item, reason, raw in loaded.bad:
                log.warning("unreadable row dead-lettered", session=session_id, reason=reason)
                await self._state.dead_letter(session_id, [(item, raw)], reason)
            self._metrics.record_dead_letters(len(loaded.bad))
        if loaded.gone:  # deleted in opencode: nothing left to deliver
            await self._state.ack(session_id, loaded.gone)
        batches = plan_batches(
            session_id,
            loaded,
            delivered_diff,
            max_items=self._max_items,
            max_bytes=self._max_bytes,
        )
        for planned in batches:
            if not await self._send(session_id, planned):
                break  # the share changed: pending now holds the whole session

    async def delete(self, session_id: str) -> None:
        """Remove the remote copy of a session deleted in opencode."""
        known = await self._state.share(session_id, self._target)
        if known is not None:
            share, _ = known
            try:
                await self._retrying(session_id, "delete", lambda t: t.delete(share))
            except (ShareProblem, KeepsFailing, RejectedError) as error:
                log.warning("remote delete refused", session=session_id, error=str(error))
        await self._state.forget_session(session_id)

    async def _send(self, session_id: str, planned: PlannedBatch) -> bool:
        """Deliver one batch; False when the share changed and pending now holds the whole
        session."""
        batch = planned.batch
        target = self._target
        known = None
        creating = False
        try:
            known = await self._share(session_id)
            if known is None:
                creating = True
                created = await self._create_recorded(session_id, batch, target, planned)
                creating = False
                log.info("share created", session=session_id, url=created.share.url)
                if not created.synced:
                    await self._sync(session_id, created.share, planned, target)
            else:
                await self._sync(session_id, known[0], planned, target)
        except ShareNotFoundError as error:
            return await self._recreate(session_id, planned, str(error))
        except KeepsFailing as error:
            if known is None:  # create itself keeps failing: a share of the session exists
                return await self._reclaim(session_id, planned, None, str(error))
            return await self._probe(session_id, planned, known[0], str(error))
        except ShareProblem as error:  # a refused secret, or an existing share
            return await self._reclaim(session_id, planned, known and known[0], str(error))
        except RejectedError as error:
            if creating and not isinstance(error, UnsendableError):
                # The receiver refuses to share the session at all: no half would fare better.
                await self._reject(session_id, planned, str(error))
                return True
            return await self._refused(session_id, planned, error)
        await self._state.ack(session_id, planned.acknowledges, planned.diff_hash)
        if known is not None and known[1]:
            # Delivered to the re-created share: a later loss is a new loss, not the same one.
            await self._state.save_share(session_id, target, known[0])
        self._metrics.record_delivered(len(batch.items), planned.size)
        log.debug("batch delivered", session=session_id, items=len(batch.items))
        return True

    async def _refused(self, session_id: str, planned: PlannedBatch, error: Exception) -> bool:
        """The receiver refused the batch, or it cannot travel: its halves go one after the
        other, so that only what is refused alone is dead-lettered."""
        halves = planned.halves()
        if not halves:
            await self._reject(session_id, planned, str(error))
            return True
        log.info(
            "batch refused; sending it in halves to find the items refused",
            session=session_id,
            items=len(planned.batch.items),
            error=str(error),
        )
        for half in halves:
            if not await self._send(session_id, half):
                return False
        return True

    async def _create(
        self,
        session_id: str,
        batch: Batch | None,
        target: str,
        planned: PlannedBatch | None = None,
        *,
        probing: bool = False,
    ) -> Created:
        """Create the share (with `planned`'s batch, when the transport carries one along).
        `probing`: a bare 500 is the answer (the share exists), not a failure to wait out."""
        return await self._retrying(
            session_id,
            "create",
            lambda t: t.create(session_id, batch),
            target,
            planned,
            probing=probing,
        )

    async def _create_recorded(
        self, session_id: str, batch: Batch, target: str, planned: PlannedBatch
    ) -> Created:
        """Create the share and record it in the state, even when the delivery is cancelled
        meanwhile (Ctrl-C, a stop whose flush ran out): the receiver makes a share it was
        asked for, answered or not, and one the state never learnt of would be made a second
        time by the next run. A create out when the delivery is cancelled is waited for (up
        to one call's deadline) and its share recorded; a retry's wait, or one for a free
        call, ends at once: no share is in the making then."""
        sent: asyncio.Future[Created] | None = None  # the create last sent to the receiver

        async def send(transport: Transport) -> Created:
            nonlocal sent
            sent = asyncio.ensure_future(transport.create(session_id, batch))
            return await sent

        async def create_and_record() -> Created:
            created = await self._retrying(session_id, "create", send, target, planned)
            await self._state.save_share(session_id, target, created.share)
            return created

        creating = asyncio.ensure_future(create_and_record())
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:
            if sent is not None:
                deadline = self._policy.deadline(planned.size)
                await asyncio.wait({sent}, timeout=deadline)
                if sent.done() and not sent.cancelled() and sent.exception() is None:
                    await asyncio.wait({creating}, timeout=deadline)  # recording its share
            creating.cancel()
            with contextlib.suppress(BaseException):
                await creating
            raise

    async def _sync(
        self, session_id: str, share: Share, planned: PlannedBatch, target: str
    ) -> None:
        batch = planned.batch
        await self._retrying(session_id, "sync", lambda t: t.sync(share, batch), target, planned)

    async def _share(self, session_id: str) -> tuple[Share, bool] | None:
        known = await self._state.share(session_id, self._target)
        if known is not None:
            return known
        # opencode shared it on this same server: continue its share rather than make another.
        share = await self._opencode_share(session_id)
        if share is None:
            return None
        await self._state.save_share(session_id, self._target, share)
        return share, False

    async def _opencode_share(self, session_id: str) -> Share | None:
        """opencode's own share of the session, when it is on the server syncd delivers to."""
        if not self._transport.reuses_opencode_shares or not self._origin:
            return None
        share = await self.db.share_of(session_id)
        if share is None or not same_server(share.url, self._origin):
            return None
        return share

    async def _recreate(
        self, session_id: str, planned: PlannedBatch, message: str, created: Created | None = None
    ) -> bool:
        """The receiver lost the share: a new one (`created`, or made now) gets the whole
        session. Lost again before anything reached the new one, the batch is dead-lettered."""
        known = await self._state.share(session_id, self._target)
        if created is not None:
            # Made by the probe: recorded before anything else, so it is never orphaned.
            await self._state.save_share(session_id, self._target, created.share, recreated=True)
        if created is None and known is not None and known[1]:
            await self._reject(
                session_id, planned, f"share lost again after re-creating it: {message}"
            )
            return True
        log.warning("share lost on the receiver; re-creating it", session=session_id)
        if created is None:
            created = await self._create(session_id, None, self._target)
            await self._state.save_share(session_id, self._target, created.share, recreated=True)
        await self._resend_whole(session_id)
        return False

    async def _probe(self, session_id: str, planned: PlannedBatch, share: Share, why: str) -> bool:
        """Calls on `share` keep failing while the receiver answers: create the share again.
        A new share means the old one was lost; a refusal, that the share exists and refuses
        syncd's calls."""
        log.warning("share keeps failing; probing it by creating it again", session=session_id)
        try:
            created = await self._create(session_id, None, self._target, probing=True)
        except (ShareProblem, RejectedError):
            return await self._reclaim(session_id, planned, share, why)
        return await self._recreate(session_id, planned, why, created)

    async def _reclaim(
        self, session_id: str, planned: PlannedBatch, refused: Share | None, why: str
    ) -> bool:
        """A share of the session exists on the receiver and refuses syncd's calls (or its
        creation). opencode's own credentials for it are the one way back; without them the
        batch is dead-lettered, explained, instead of retried for ever. The credentials syncd
        holds are kept: the server may only be failing to write."""
        share = await self._opencode_share(session_id)
        if share is not None and (refused is None or share.secret != refused.secret):
            log.warning("continuing the share opencode made of this session", session=session_id)
            await self._state.save_share(session_id, self._target, share)
            await self._resend_whole(session_id)  # opencode's own share is rarely complete
            return False
        await self._reject(
            session_id,
            planned,
            "shared on the server by someone else: the receiver keeps refusing this session's "
            "share and refuses to create it again, so it exists under a secret syncd does not "
            "hold (made by opencode's own share, or by syncd before its state was lost), or "
            "the server fails to write it; delete that share on the server or fix the server, "
            f"then run `syncd dead-letters retry --all` (last error: {why})",
        )
        return True

    async def _resend_whole(self, session_id: str) -> None:
        # The share is new to syncd: everything the session has must go, diffs included.
        await self._state.capture(session_id, await self._whole_session(session_id))
        await self._state.reset_diff_hash(session_id)

    async def _reject(self, session_id: str, planned: PlannedBatch, reason: str) -> None:
        log.error("batch refused; dead-lettered", session=session_id, reason=reason)
        letters = planned.refused()
        await self._state.dead_letter(session_id, letters, reason)
        self._metrics.record_dead_letters(len(letters), refused=reason)

    async def _retrying(
        self,
        session_id: str,
        operation: str,
        call: Callable[[Transport], Awaitable[T]],
        target: str | None = None,
        carries: PlannedBatch | None = None,
        *,
        probing: bool = False,
    ) -> T:
        """`call` on the current transport until it succeeds, is refused, or the policy gives
        up; raises TargetChanged when the receiver is reconfigured away from `target`, and
        KeepsFailing when the evidence says the share, not the server, is the problem.
        `carries`: the batch the call sends (its size stretches the deadline; a connection
        that drops under it may be refusing its size)."""
        ambiguous_since: float | None = None
        ambiguous = thrown = dropped = 0
        items = len(carries.batch.items) if carries is not None else 0
        sent = carries.size if carries is not None else 0
        failed: RetryableError | None = None  # the last failure, what giving up reports

        async def attempt() -> T:
            nonlocal ambiguous_since, ambiguous, thrown, dropped, failed
            try:
                return await call_once()
            except GivenUp as given_up:
                # What failed before tells more than the attempt there was no time left for.
                raise (failed or given_up) from None
            except OversizeSuspectedError as error:
                dropped += 1
                if items > 1:
                    raise UnsendableError(str(error)) from error
                if dropped >= AMBIGUOUS_LIMIT:
                    raise UnsendableError(
                        f"{error}: dropped {dropped} times in a row under this item alone, "
                        "which is larger than the receiver accepts"
                    ) from error
                failed = error
                raise
            except ThrownError as error:
                thrown += 1
                if thrown >= THROWN_LIMIT:
                    raise RejectedError(f"{error} ({thrown} times in a row)") from error
                failed = error
                raise
            except RetryableError as error:
                failed = error
                if not error.ambiguous:
                    ambiguous_since, ambiguous = None, 0
                    raise
                if probing:
                    raise ShareExistsError(str(error)) from error
                now = time.monotonic()
                ambiguous_since = ambiguous_since or now
                ambiguous += 1
                if (
                    ambiguous >= AMBIGUOUS_LIMIT
                    and now - ambiguous_since >= self._policy.ambiguous_after
                    and await self._probe_receiver() is ReceiverProbe.AMBIGUOUS
                ):
                    raise KeepsFailing(str(error)) from error
                raise

        async def call_once() -> T:
            async with self._slots:
                if target is not None and target != self._target:
                    raise TargetChanged(target)
                transport = self._transport
                self._calls[transport] += 1
                started = time.monotonic()
                ok = False
                try:
                    result = await self._bounded(operation, call(transport), sent)
                    ok = True
                    return result
                finally:
                    self._metrics.observe_call(operation, time.monotonic() - started, ok=ok)
                    self._calls[transport] -= 1
                    async with self._idle:
                        self._idle.notify_all()

        async def note(state: RetryCallState) -> None:
            self._stop_reading(session_id)  # backing off: others may read meanwhile
            error = state.outcome.exception() if state.outcome else None
            self._metrics.record_retry(str(error), state.upcoming_sleep)
            await self._state.record_error(session_id, str(error))
            if isinstance(error, KeyRefusedError):
                await self._conditions.set(RECEIVER, f"the receiver refuses the key: {error}")
            log.warning(
                "delivery failed; retrying",
                session=session_id,
                error=str(error),
                attempt=state.attempt_number,
                wait=round(state.upcoming_sleep, 2),
            )

        try:
            result: T = await attempt()
        except RetryableError as error:
            result = await self._retry_after(error, attempt, note)
        await self._conditions.clear(RECEIVER)
        return result

    async def _retry_after(
        self,
        failure: RetryableError,
        attempt: Callable[[], Awaitable[T]],
        note: Callable[[RetryCallState], Awaitable[None]],
    ) -> T:
        """`attempt` again, with backoff, after its first `failure`. Most calls succeed at
        once, so only a failed one pays for tenacity's machinery (which cost more per call than
        a backfill's batch bookkeeping): the failure is its attempt 1, so the waits, the stop
        and the notes are those of a loop that had made that attempt itself."""
        first: RetryableError | None = failure

        async def replayed_then_attempt() -> T:
            nonlocal first
            if first is not None:
                error, first = first, None
                raise error
            return await attempt()

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RetryableError),
            wait=self._policy.wait,
            stop=self._policy.stop,
            sleep=self._sleep,
            before_sleep=note,
            reraise=True,
        )
        return await retrying(replayed_then_attempt)

    async def _bounded(self, operation: str, call: Awaitable[T], sent: int = 0) -> T:
        """One call within its deadline, its failure in the delivery loop's terms: what the
        transport did not classify is a connection problem (OSError) or the batch's own."""
        deadline = self._policy.deadline(sent)
        if deadline <= 0:
            if asyncio.iscoroutine(call):
                call.close()
            raise GivenUp(f"{operation}: not tried: the time to give up has passed")
        try:
            async with asyncio.timeout(deadline):
                return await call
        except TimeoutError:
            if deadline < self._policy.request_timeout:
                raise GivenUp(f"{operation}: given up while the call was in flight") from None
            raise RetryableError(
                f"{operation}: no complete answer within {deadline:.3g}s (request_timeout)"
            ) from None
        except DeliveryError:
            raise
        except OSError as error:
            raise RetryableError(f"{operation}: {type(error).__name__}: {error}") from None
        except Exception as error:
            raise UnsendableError(
                f"{operation}: cannot be sent: {type(error).__name__}: {error}"
            ) from error

    async def _probe_receiver(self) -> ReceiverProbe:
        try:
            return await self._bounded("probe", self._transport.probe())
        except DeliveryError:
            return ReceiverProbe.DOWN

    async def _sleep(self, seconds: float) -> None:
        """A retry's wait, cut short when the transport is replaced (a reload with a fixed key
        or url takes effect now, not after the longest backoff)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._replaced.wait(), seconds)
