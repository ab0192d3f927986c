"""What the daemon counts, in one place: Prometheus metrics and the health verdict.

Each daemon owns one `Metrics` (its own registry, so several pipelines in one process, as in
tests, never collide). The pipeline calls the `record_*`/`observe_*` methods; the loopback
endpoint (`syncd.metrics_server`) renders them for Prometheus and answers `/health`.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import jsontext
from .redact import scrub

# Receivers answer in milliseconds on a LAN and in seconds across the internet or when slow.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self, transport: str, *, max_failures: int = 5, period: float = 300.0) -> None:
        self.transport = transport
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.items_sent = Counter(
            "syncd_items_sent", "Items acknowledged by the receiver", ["transport"], registry=r
        )
        self.batches_sent = Counter(
            "syncd_batches_sent", "Batches acknowledged by the receiver", ["transport"], registry=r
        )
        self.bytes_sent = Counter(
            "syncd_bytes_sent", "JSON bytes of acknowledged batches", ["transport"], registry=r
        )
        self.retries = Counter(
            "syncd_batches_retried",
            "Calls that failed and will be retried (errors, timeouts, 5xx, 429)",
            ["transport"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "syncd_items_dead_lettered",
            "Items refused by the receiver or unreadable, moved to the dead letters",
            registry=r,
        )
        self.latency = Histogram(
            "syncd_request_duration_seconds",
            "Duration of one call to the receiver, by transport and operation",
            ["transport", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.wakeups = Counter(
            "syncd_source_wakeups",
            "Wake-ups of the source watcher, by cause",
            ["cause"],
            registry=r,
        )
        self.reads = Counter(
            "syncd_source_reads", "Change detections run on the opencode database", registry=r
        )
        self.rows_read = Counter(
            "syncd_source_rows_read", "Rows read from the opencode database to detect changes",
            registry=r,
        )  # fmt: skip
        self.pending_items = Gauge(
            "syncd_pending_items", "Items captured and not yet acknowledged", registry=r
        )
        self.oldest_pending_age = Gauge(
            "syncd_oldest_pending_age_seconds",
            "Age of the oldest pending item (0 when nothing is pending)",
            registry=r,
        )
        self.health = Health(max_failures, period)

    def observe_call(self, operation: str, seconds: float, *, ok: bool) -> None:
        self.latency.labels(self.transport, operation).observe(seconds)
        if ok:
            self.health.success()

    def record_retry(self, error: str, retry_in: float) -> None:
        """A failed call, tried again in `retry_in` seconds."""
        self.retries.labels(self.transport).inc()
        self.health.failure(error, retry_in)

    def record_delivered(self, items: int, size: int) -> None:
        self.items_sent.labels(self.transport).inc(items)
        self.batches_sent.labels(self.transport).inc()
        self.bytes_sent.labels(self.transport).inc(size)

    def record_dead_letters(self, items: int, *, refused: str | None = None) -> None:
        """`refused`: the receiver's reason, a failed call; None for rows syncd could not read."""
        self.dead_lettered.inc(items)
        if refused is not None:
            self.health.failure(refused)

    def record_wakeup(self, cause: str) -> None:
        self.wakeups.labels(cause).inc()

    def record_read(self, rows: int) -> None:
        self.reads.inc()
        self.rows_read.inc(rows)

    def set_pending(self, items: int, oldest_ms: int | None) -> None:
        self.pending_items.set(items)
        self.oldest_pending_age.set(max(time.time() - oldest_ms / 1000, 0.0) if oldest_ms else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Health:
    """Unhealthy after `max_failures` consecutive failed calls while the failing goes on: until
    the next successful call, or until `period` passes after the last retry that was due with
    none since (nothing left to retry). Measured from the retry a delivery waits for, not from
    each failure: once its backoff reaches backoff_max (as long as the period by default)
    failures come too seldom for `max_failures` of them to fit in any one period, and a long
    outage would read as healthy. Also unhealthy while a condition lasts (the receiver
    refusing the key, the opencode database unreadable: `conditions`, by name)."""

    def __init__(self, max_failures: int, period: float) -> None:
        self.max_failures = max_failures
        self.period = period
        self._failures = 0
        self._retry_due = 0.0  # when the last retry of the failures counted is due (monotonic)
        self.last_error: str | None = None
        self.conditions: dict[str, str] = {}

    def success(self) -> None:
        self._failures = 0
        self.last_error = None

    def failure(self, error: str, retry_in: float = 0.0) -> None:
        """A failed call; `retry_in`: seconds until it is tried again (0: it is not)."""
        now = time.monotonic()
        self._failures = self.consecutive_failures() + 1
        self._retry_due = max(self._retry_due, now + retry_in)
        self.last_error = jsontext.readable_text(scrub(error))  # shown on /health, as JSON

    def consecutive_failures(self) -> int:
        if time.monotonic() > self._retry_due + self.period:
            self._failures = 0
        return self._failures

    @property
    def healthy(self) -> bool:
        return not self.conditions and self.consecutive_failures() < self.max_failures
