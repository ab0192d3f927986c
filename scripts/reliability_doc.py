"""docs/reliability.md, produced from the figures the reliability scripts measured.

Each script (scripts/soak.py, scripts/interference.py, bench/scale.py) stores its figures as
one section of docs/reliability.json and re-renders the page, so the page never holds a
number nobody measured.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"
FIGURES = DOCS / "reliability.json"
PAGE = DOCS / "reliability.md"

INTRO = """\
# Reliability figures

syncd's promise: the remote copy of every session ends equal to the local one, whatever
happens, without getting in opencode's way and without leaking the credentials it holds.
The figures below are written by the scripts named in each section (the CI versions of the
same checks are in `tests/`: `test_soak.py`, `test_interference.py`, `test_scale.py`,
`test_hostile_rows.py`, `test_hostile_receivers.py`, `test_secrets.py`, `test_one_daemon.py`,
`test_attacks.py`).
Raw figures: `docs/reliability.json`.
"""

SECTIONS: dict[str, tuple[str, str]] = {
    "soak": (
        "Soak with faults (`python scripts/soak.py --minutes N`)",
        "An opencode-like writer (real schema, upserted growing parts, completing messages, "
        "session updates, deletions) across 20 sessions, while the receiver misbehaves at random "
        "(refused connections, 503, 429 with Retry-After, answers later than the timeout, "
        "connections dropped mid-answer, 200 with HTML or truncated JSON) and `syncd run` is "
        "SIGKILLed at random and restarted. Checked at the end: the receiver equals the "
        "database field by field; shares syncd never heard of (created, answer lost) are at "
        "most the create answers that could have been lost (kills plus unanswered creates), "
        "and every other share is the one syncd holds or one it deleted with its session; "
        "batches applied twice (same batch key) are at most the unanswered syncs plus 8 (the "
        "concurrency) per kill; no dead letters; syncd's RSS stays under 150 MB.",
    ),
    "interference": (
        "No interference with opencode (`python scripts/interference.py`)",
        "The same write workload, with the writer's busy timeout at 0 so that any lock held "
        "by syncd would surface as SQLITE_BUSY, once without syncd and once with `syncd run` "
        "tailing the database; the -wal file's largest size is sampled throughout.",
    ),
    "scale": (
        "Scale (`python -m bench.scale --parts N`)",
        "A generated database of N parts (real schema, journal included). Startup is the "
        "first capture of the whole database and a restart's capture with every cursor "
        "current; a wake-up is one capture after a single part changed. Rows read are "
        "counted by the change detector (`ChangeSet.rows_read`).",
    ),
    "slow_clients": (
        "Slow clients against `syncd serve` (`python scripts/slow_clients.py`)",
        "`syncd serve` with its default read deadlines (`serve_header_timeout`, "
        "`serve_body_timeout`) and connection limit (`serve_max_connections`). Slow clients "
        "open connections and send their request head (or, after a whole head, their body) "
        "a few bytes every 0.2 s, for ever; an ordinary client asks for the share listing "
        "every 0.25 s meanwhile. First fewer slow connections than the limit: the ordinary "
        "client is served throughout. Then more than the limit: requests beyond it are "
        "answered 503 until the deadline drops the slow ones. uvicorn alone bounds neither: "
        "its keep-alive timeout does not run during a request's first head and is reset by "
        "every byte, so a trickling connection is held as long as its client likes. "
        "`tests/test_attacks.py` checks the same with short deadlines.",
    ),
}


LIMITS = """\
## Known limits (measured, not fixed here)

- A lost answer to the REST API's create call leaves an orphan share on the receiver: the API
  has no idempotency for creation. The soak counts them ("shares unknown to syncd").
- A wake-up reads two rows per session (the session list and the journal heads), whatever the
  number of parts: about 2,000 rows at 1,000 sessions. It grows with sessions, not with parts.
- Without opencode's journal (table mode), changes are found by `time_updated`, the writer's
  clock when it built the row. syncd reads a session from a minute below the newest stamp it
  saw, or below its last read of the session when that is lower (the clock went back since:
  when that read was, by the clock as it is now, is measured on the boot's clock, which no
  correction moves), and captures the rows new or restamped since that read. When the last
  read began and the stamps it saw are kept in the state with the cursor, in the transaction
  of the capture it found, so a restart re-sends none of them and still delivers rows written
  while syncd was stopped across a clock correction; `syncd sync` beside a daemon starts from
  what the daemon recorded and its first look reads every session, idle ones too, so it waits
  for a row committed late below the cursor (`tests/test_hostile_clock.py`). The messages and
  parts below that floor are counted, not read: how many, and their stamps added up, are kept
  with the read. A row written or rewritten with a stamp further below (a writer whose clock
  is behind syncd's, a clock stepped back while syncd was stopped across a reboot) changes
  them, and the session is read whole and sent again, once (`tests/test_hostile_rows.py`). Not
  seen, until written again: a row rewritten with the stamp it had, and one rewritten below
  the floor between two reads that also saw a row they only counted rewritten above it or
  deleted (fewer rows below: the old stamps of those that left are unknown, so the rest are
  not compared). Counting costs each table-mode read one more pass over the session's stamps:
  about 80 µs per session of 220 rows (a deep poll of 1,000 such sessions, CPU 630 → 720 ms
  with every row within the margin, 170 → 250 ms with the rows spread over an hour). With the
  journal (opencode 1.17 and later) every change is delivered.
- `syncd serve` bounds how long a request takes to arrive, not how long its answer takes to be
  read: a client that reads a large answer slowly holds its connection, and a place under
  `serve_max_connections`, until it has read it.
"""


def load() -> dict[str, Any]:
    return json.loads(FIGURES.read_text()) if FIGURES.exists() else {}


def update_section(name: str, figures: dict[str, Any]) -> None:
    data = load()
    data[name] = {
        "measured": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
        **figures,
    }
    DOCS.mkdir(exist_ok=True)
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    PAGE.write_text(render(data))


def render(data: dict[str, Any]) -> str:
    out = [INTRO]
    for name, (title, description) in SECTIONS.items():
        out.append(f"## {title}\n\n{description}\n")
        figures = data.get(name)
        if not figures:
            out.append("_Not measured yet._\n")
            continue
        out.append("| figure | value |\n|---|---|")
        for key, value in figures.items():
            out.append(f"| {key.replace('_', ' ')} | {_cell(value)} |")
        out.append("")
    out.append(LIMITS)
    return "\n".join(out)


def _cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_cell(v)}" for k, v in sorted(value.items())) or "-"
    if isinstance(value, float):
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
