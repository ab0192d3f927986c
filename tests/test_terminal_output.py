"""What people see on an 80-column terminal: `syncd status`, `syncd dead-letters list` and the
backfill's live display, rendered by rich into a terminal emulator (pyte) and compared with
the expected screens."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pyte
import pytest
import structlog
from rich.console import Console

from syncd.commands.dead_letters import render_letters
from syncd.commands.progress import BackfillCount, BackfillDisplay, BackfillPlan
from syncd.commands.screen import short_ids
from syncd.commands.status import render, render_session
from syncd.config import load_config
from syncd.log import configure_logging
from syncd.model import Cursor

NOW = 1_780_000_000.0  # seconds; the reports' "now"


class Terminal:
    """An 80x24 terminal: what rich writes, as the screen shows it."""

    def __init__(self, columns: int = 80, lines: int = 24) -> None:
        self.screen = pyte.Screen(columns, lines)
        self.screen.set_mode(pyte.modes.LNM)  # "\n" returns the carriage, as a tty's onlcr
        self.stream = pyte.Stream(self.screen)
        self.console = Console(file=self, width=columns, height=lines, force_terminal=True,
                               color_system="standard", legacy_windows=False)  # fmt: skip

    def write(self, text: str) -> int:
        self.stream.feed(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True

    def text(self) -> str:
        lines = [line.rstrip() for line in self.screen.display]
        while lines and not lines[-1]:
            lines.pop()
        return "\n".join(lines) + "\n"


def ms(seconds_ago: float) -> int:
    return int((NOW - seconds_ago) * 1000)


SESSIONS = [
    {"session_id": "ses_ded413068ffeOCawi5CN2IRmB7", "share_url": "https://opncd.ai/share/CN2IRmB7",
     "time_last_delivery": ms(180), "last_error": None, "attempts": 0, "pending": 0,
     "oldest_pending": None, "dead_letters": 0, "state": "delivered", "lag_seconds": 0.0},
    {"session_id": "ses_ded4144e9ffeVbRG7kP7fHpmOB", "share_url": "https://opncd.ai/share/P7fHpmOB",
     "time_last_delivery": ms(3 * 3600), "attempts": 4, "pending": 12,
     "last_error": "HTTP 503 from https://opncd.ai/api/share/P7fHpmOB/sync: Service Unavailable",
     "oldest_pending": ms(320), "dead_letters": 0, "state": "retrying", "lag_seconds": 320.0},
    {"session_id": "ses_ded415944ffeGOoXNaDAG46UWU", "share_url": None, "time_last_delivery": None,
     "last_error": "HTTP 401 from https://opncd.ai/api/share: missing or wrong share key "
     "(x-opencode-share-key)", "attempts": 0, "pending": 0, "oldest_pending": None,
     "dead_letters": 57, "state": "dead-lettered", "lag_seconds": 0.0},
]  # fmt: skip
REPORT: dict[str, Any] = {
    "healthy": False,
    "problems": ["57 dead letter(s): see `syncd dead-letters list`",
                 "oldest pending item is 320s old (limit 300s)"],
    "warnings": [],
    "notices": [],
    "daemon": {"running": True, "pid": 4242},
    "max_lag_seconds": 300.0,
    "totals": {"sessions": 3, "delivered": 1, "pending": 0, "retrying": 1,
               "dead_lettered_sessions": 1, "pending_items": 12, "dead_letters": 57,
               "max_lag_seconds": 320.0},
    "sessions": SESSIONS,
    "dead_letters": [],
    "time": NOW,
    "opencode": {"db": "/home/u/.local/share/opencode/opencode.db", "db_exists": True,
                 "json_session_files": 0, "storage": "/home/u/.local/share/opencode/storage"},
}  # fmt: skip


def test_status_fits_80_columns() -> None:
    terminal = Terminal()
    render(REPORT, terminal, console=terminal.console)
    assert (
        terminal.text()
        == """\
SESSION   STATE          PENDING  LAG  DELIVERED  LAST ERROR
────────────────────────────────────────────────────────────────────────────────
CN2IRmB7  delivered            0  -    3m ago     -
P7fHpmOB  retrying            12  5m   3h ago     HTTP 503 from https://opncd.a…
DAG46UWU  dead-lettered        0  -    -          HTTP 401 from https://opncd.a…

daemon: running (pid 4242)
3 session(s): 1 delivered, 0 pending, 1 retrying, 1 dead-lettered; 12 item(s)
pending, 57 dead letter(s), max lag 5m: UNHEALTHY
  - 57 dead letter(s): see `syncd dead-letters list`
  - oldest pending item is 320s old (limit 300s)
details: syncd status SESSION, or --wide
"""
    )


def test_status_lists_what_needs_attention_and_the_latest_delivered() -> None:
    """Years of sessions: every one not delivered is listed, with the 20 delivered last;
    `--all` lists all of them."""
    delivered = [
        {**SESSIONS[0], "session_id": f"ses_delivered{n:04}", "time_last_delivery": ms(60 * n)}
        for n in range(25)
    ]
    sessions = [*delivered[:12], SESSIONS[1], *delivered[12:]]
    report = {**REPORT, "sessions": sessions}
    terminal = Terminal(columns=200, lines=60)
    render(report, terminal, wide=True, console=terminal.console)
    listed = re.findall(r"^ses_\w+", terminal.text(), re.MULTILINE)
    # In their order; the five delivered longest ago are left out, and said so.
    assert listed == [s["session_id"] for s in sessions if s not in delivered[20:]]
    assert "5 more delivered session(s): syncd status --all lists every one" in terminal.text()
    terminal = Terminal(columns=200, lines=60)
    render(report, terminal, wide=True, every=True, console=terminal.console)
    assert re.findall(r"^ses_\w+", terminal.text(), re.MULTILINE) == [
        s["session_id"] for s in sessions
    ]
    assert "more delivered" not in terminal.text()


def test_status_of_one_session_gives_every_detail() -> None:
    terminal = Terminal()
    report = {**REPORT, "sessions": [SESSIONS[1]], "problems": REPORT["problems"][1:]}
    render_session(report, terminal, console=terminal.console)
    assert (
        terminal.text()
        == f"""\
session        ses_ded4144e9ffeVbRG7kP7fHpmOB
state          retrying
pending        12 item(s), the oldest captured 5m ago ({local_time(ms(320))})
attempts       4
last delivery  {local_time(ms(3 * 3600))} (3h ago)
share          https://opncd.ai/share/P7fHpmOB
last error     HTTP 503 from https://opncd.ai/api/share/P7fHpmOB/sync: Service
               Unavailable
dead letters   0
  - oldest pending item is 320s old (limit 300s)
"""
    )


def test_status_wide_keeps_every_column() -> None:
    terminal = Terminal(columns=200)
    render(REPORT, terminal, wide=True, console=terminal.console)
    lines = terminal.text().splitlines()
    assert lines[0].split() == ["SESSION", "STATE", "PENDING", "LAG(s)", "LAST", "DELIVERY",
                                "SHARE", "URL", "LAST", "ERROR"]  # fmt: skip
    assert lines[3].startswith("ses_ded4144e9ffeVbRG7kP7fHpmOB  retrying")
    assert lines[3].endswith("https://opncd.ai/api/share/P7fHpmOB/sync: Service Unavailable")


def test_dead_letters_of_one_refused_batch_are_one_row() -> None:
    refused, unreadable = SESSIONS[2], SESSIONS[0]
    letters = [
        {"id": n, "session_id": refused["session_id"], "kind": "part", "item_id": f"prt_{n}",
         "reason": refused["last_error"], "time_created": ms(600)}
        for n in range(1, 58)
    ] + [{"id": 58, "session_id": unreadable["session_id"], "kind": "part", "item_id": "prt_x",
          "reason": "unreadable row: data is not JSON", "time_created": ms(60)}]  # fmt: skip
    terminal = Terminal()
    render_letters(letters, terminal, now=NOW, console=terminal.console)
    assert (
        terminal.text()
        == """\
IDS   SESSION   WHEN     ITEMS  REASON
────────────────────────────────────────────────────────────────────────────────
1-57  DAG46UWU  10m ago     57  HTTP 401 from https://opncd.ai/api/share: missi…
58    CN2IRmB7  1m ago       1  unreadable row: data is not JSON

58 dead letter(s) in 2 batch(es). `syncd dead-letters show ID`: the full reason
and what was refused; `retry ID...` (or a range: 12-68, or --all) once the
receiver accepts them again, `discard ID...` to drop them.
"""
    )


def test_a_reason_from_a_hostile_receiver_stays_text_on_the_terminal() -> None:
    """rich drops BEL, BS, CR, VT and FF from text but prints ESC, C1, DEL and NUL: a reason
    retitled the window, cleared the screen (the rows above were gone) or linked elsewhere."""
    reason = (
        "POST /api/share/x/sync: 400: \x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\x00 "
        "\x1b]8;;http://evil\x1b\\go on, this reason is longer than what is left"
    )
    letters = [{"id": 1, "session_id": SESSIONS[2]["session_id"], "kind": "part",
                "item_id": "prt_1", "reason": reason, "time_created": ms(600)}]  # fmt: skip
    terminal = Terminal()
    render_letters(letters, terminal, now=NOW, console=terminal.console)
    assert terminal.screen.title == ""
    assert terminal.text().splitlines()[:3] == [
        "IDS  SESSION   WHEN     ITEMS  REASON",
        "─" * 80,
        r"1    DAG46UWU  10m ago      1  POST /api/share/x/sync: 400: \x1b]0;pwned\x07\x1…",
    ]  # cut at the 80th column, escapes counted


def test_short_ids_grow_until_they_differ() -> None:
    ids = ["ses_aaaa_x12345678", "ses_bbbb_y12345678", "ses_cccc_zz999999"]
    assert short_ids(ids) == {
        "ses_aaaa_x12345678": "x12345678",
        "ses_bbbb_y12345678": "y12345678",
        "ses_cccc_zz999999": "zz999999",
    }


@pytest.fixture
def console_log(tmp_path: Path):
    """Logging as on a terminal (console lines), what `syncd backfill` has there."""
    config = tmp_path / "config.toml"
    config.write_text('log_format = "console"\n')
    configure_logging(load_config({"config": str(config)}, {"HOME": str(tmp_path)}))
    yield structlog.get_logger("syncd")
    structlog.reset_defaults()


def test_backfill_logs_above_one_display_with_known_totals_and_eta(console_log: Any) -> None:
    # 5 sessions, 1,000 items: 100 left pending by an earlier run, 4 sessions to capture.
    plan = BackfillPlan(
        pending={"ses_a": 100}, counted={f"ses_{c}": 225 for c in "bcde"}, cursors={}
    )
    clock = [0.0]
    count = BackfillCount(plan, clock=lambda: clock[0])
    terminal = Terminal(lines=10)
    display = BackfillDisplay(terminal.console, count)
    screens = []
    display.start()
    screens.append(terminal.text())
    console_log.info("share created", session="ses_b")
    clock[0] = 10.0  # ses_a and ses_b delivered, ses_c half, ses_d and ses_e captured
    captured = {f"ses_{c}": Cursor(1, None) for c in "bcde"}
    count.update({"ses_c": 25, "ses_d": 225, "ses_e": 225}, captured)
    display.show()
    screens.append(terminal.text())
    console_log.info("share created", session="ses_c")
    clock[0] = 25.0
    count.update({}, captured)
    display.stop()
    screens.append(terminal.text())
    timestamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", re.MULTILINE)
    assert [timestamp.sub("<time>", screen) for screen in screens] == [
        """\
sessions ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━     0/5
items    ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 0/1,000 0/s  estimating
""",
        """\
<time> [info     ] share created
session=ses_b
sessions ━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━━━━━━━       2/5
items    ━━━━━━━━━━━━━━━━━━━━━━━━╸━━━━━━━━━━━━━━━━━━━━━━ 525/1,000 52/s  9s left
""",
        """\
<time> [info     ] share created
session=ses_b
<time> [info     ] share created
session=ses_c
sessions ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━         5/5
items    ━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━ 1,000/1,000 40/s  done
""",
    ]


def local_time(stamp_ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp_ms / 1000))
