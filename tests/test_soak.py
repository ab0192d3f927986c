"""Two minutes of scripts/soak.py: an opencode-like writer across 20 sessions, a receiver
failing at random in every way the harness knows, `syncd run` SIGKILLed at random. The
receiver must end equal to the database; repeated creates and re-applied batches must stay
within what the lost answers explain; RSS must stay bounded. `python scripts/soak.py
--minutes N` runs it longer and records the figures in docs/reliability.md."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from scripts.soak import SoakOptions, soak

pytestmark = pytest.mark.slow

MINUTES = float(os.environ.get("SYNCD_SOAK_MINUTES", "2"))


async def test_soak_with_receiver_faults_and_kills(tmp_path: Path, fixtures_dir: Path) -> None:
    report = await soak(tmp_path, fixtures_dir, SoakOptions(minutes=MINUTES, seed=6))
    assert report.problems == []
    # The run really met what it claims to survive.
    assert report.kills >= 3 and report.starts == report.kills + 1
    assert report.fault_phases.get("stopped", 0) >= 1
    assert {"503", "429", "drop", "html", "truncated", "late"} <= set(report.faults_injected)
    assert report.unanswered_syncs > 0 and report.sessions_deleted > 0
    assert report.sessions_at_end == 20 and report.items_at_end > 1000
