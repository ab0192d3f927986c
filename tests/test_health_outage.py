"""/health through a long outage: once the delivery's backoff reaches backoff_max (300 s, as
long as health_period) failures come too seldom for `health_max_failures` of them to fall in
any one period, and /health answered ok for most of a receiver's two-hour outage. A unit test
of `Health` on a simulated clock."""

from __future__ import annotations

import pytest

from syncd import metrics
from syncd.metrics import Health


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(metrics.time, "monotonic", clock)
    return clock


def test_a_long_outage_stays_unhealthy_between_sparse_retries(clock: Clock) -> None:
    health = Health(max_failures=5, period=300.0)
    for _ in range(5):
        health.failure("POST /api/share/x/sync: ConnectError", retry_in=1.0)
        clock.now += 1.0
    assert not health.healthy
    # Backoff at its cap: a call every ~300 s, each ending 30 s later (request_timeout).
    for _ in range(6):
        health.failure("POST /api/share/x/sync: no complete answer within 30s", retry_in=300.0)
        clock.now += 320.0  # the retry is due, its call is in flight
        assert not health.healthy, clock.now
        clock.now += 10.0
    health.success()
    assert health.healthy and health.consecutive_failures() == 0


def test_failures_nothing_retries_are_forgotten_after_the_period(clock: Clock) -> None:
    """Refusals (dead-lettered: nothing is retried) are not an outage that goes on."""
    health = Health(max_failures=3, period=300.0)
    for _ in range(3):
        health.failure("refused")
    assert not health.healthy
    clock.now += 299.0
    assert not health.healthy
    clock.now += 2.0
    assert health.healthy and health.consecutive_failures() == 0
    health.failure("refused")
    assert health.healthy and health.consecutive_failures() == 1
