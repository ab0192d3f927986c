"""From write and arrival logs to latencies, and percentiles."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

Write = tuple[str, str, str, float]  # kind, id, content hash, time
Arrival = Write


def acknowledgement_delays(
    writes: Iterable[Write], arrivals: Iterable[Arrival]
) -> tuple[list[float], int]:
    """Seconds from each write's commit to the first acknowledged batch carrying that version
    or a newer one of the same entity (a version overwritten inside a window is delivered by
    its successor), and how many writes were never acknowledged."""
    written: dict[tuple[str, str], list[tuple[str, float]]] = defaultdict(list)
    for kind, item_id, digest, at in writes:
        written[(kind, item_id)].append((digest, at))
    arrived: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for kind, item_id, digest, at in arrivals:
        arrived[(kind, item_id)].append((at, digest))
    delays: list[float] = []
    missing = 0
    for key, versions in written.items():
        acked_at: list[float | None] = [None] * len(versions)
        newest = -1
        for at, digest in sorted(arrived.get(key, [])):
            # The newest write with this content committed before it arrived.
            carried = max(
                (index for index, (d, t) in enumerate(versions) if d == digest and t <= at),
                default=-1,
            )
            for index in range(newest + 1, carried + 1):
                acked_at[index] = at
            newest = max(newest, carried)
        for (_, at), ack in zip(versions, acked_at, strict=True):
            if ack is None:
                missing += 1
            else:
                delays.append(ack - at)
    return delays, missing


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]
