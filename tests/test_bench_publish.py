"""The figures on README.md and docs/transports.md are the benchmark's (bench/publish.py): each
marked block is exactly what the results on disk render to, so a number typed by hand, or
left behind by a newer run, fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import publish

RESULTS = {
    "meta": {
        "command": "python -m bench ",
        "commit": "abc1234",
        "date": "2026-12-01 10:00 UTC",
        "cores": 2,
        "load_average_at_start": 0.25,
        "scale": {"backfill_sessions": 2, "backfill_parts": 3, "idle_seconds": 5},
    },
    "raw_read": {"rows_per_s": 1000.0},
    "archive": {"items": 6, "items_per_s": 500.0, "syncd_cpu_s": 0.01, "syncd_max_rss_mb": 40},
    "transports": {"http": {"backfill": {"items": 6, "items_per_s": 250.0}}},
    "headline": {
        "transport": "http",
        "latency_p50_beyond_window_ms": -100.0,
        "latency_p99_beyond_window_ms": 60.0,
        "archive_backfill_items_per_s": 500.0,
        "raw_read_rows_per_s": 1000.0,
        "archive_share_of_raw": 0.5,
        "receiver_cpu_us_per_item": 12.5,
        "idle_cpu_percent": 0.2,
        "idle_rss_mb": 45.0,
    },
}


def test_a_block_is_rewritten_from_the_results_and_the_rest_kept() -> None:
    text = "intro\n<!-- bench:targets -->\nstale 12,345 items/s\n<!-- /bench:targets -->\nend\n"
    rendered = publish.render(text, {publish.RESULTS_DIR: RESULTS})
    assert rendered.startswith("intro\n<!-- bench:targets -->\n| figure |")
    assert rendered.endswith("<!-- /bench:targets -->\nend\n")
    assert "stale" not in rendered
    assert "500 items/s = 50.0% of raw read+parse" in rendered
    assert "| 12.5 µs | <= 10 µs | **no** |" in rendered
    assert "`python -m bench` at abc1234" in rendered
    assert publish.render(rendered, {publish.RESULTS_DIR: RESULTS}) == rendered  # stable


def test_a_block_without_results_is_left_alone_and_an_unknown_one_is_an_error() -> None:
    text = "<!-- bench:replay -->\nold\n<!-- /bench:replay -->\n"
    assert publish.render(text, {publish.RESULTS_DIR: RESULTS}) == text
    with pytest.raises(publish.PublishError, match="unknown figure block 'nosuch'"):
        publish.render("<!-- bench:nosuch -->\n<!-- /bench:nosuch -->\n", {})


@pytest.mark.parametrize("page", publish.PAGES, ids=lambda page: page.name)
def test_the_pages_hold_the_figures_of_the_results_on_disk(page: Path) -> None:
    text = page.read_text()
    assert "<!-- bench:" in text
    assert publish.render(text, publish.load_results()) == text, "run `python -m bench.publish`"
