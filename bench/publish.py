"""Keeps the measured figures in README.md and docs/transports.md equal to the last full runs.

Each figure block on those pages sits between two markers,

    <!-- bench:NAME -->
    ...
    <!-- /bench:NAME -->

and is rewritten from bench/results.json (synthetic run) or bench/replay/results.json (replay
run) by the same table code as bench/results.md, so no page holds a number typed by hand.
`python -m bench` calls this after a full run that wrote its default place;

    python -m bench.publish

does it alone (after editing the tables' code, say).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import report

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent
REPLAY_DIR = RESULTS_DIR / "replay"

Render = Callable[[dict[str, Any]], str]
# block name -> (the results it is drawn from, how)
BLOCKS: dict[str, tuple[Path, Render]] = {
    "targets": (RESULTS_DIR, lambda results: _sourced(results, report.targets_table)),
    "backfill": (RESULTS_DIR, lambda results: _sourced(results, report.backfill_table)),
    "loopback": (RESULTS_DIR, lambda results: _sourced(results, report.loopback_table)),
    "network": (RESULTS_DIR, lambda results: _sourced(results, report.network_table)),
    "replay": (REPLAY_DIR, lambda results: _sourced(results, report.replay_table)),
}
PAGES = (REPO / "README.md", REPO / "docs" / "transports.md")
MARKED = re.compile(r"(<!-- bench:([a-z]+) -->\n)(.*?)(<!-- /bench:\2 -->)", re.DOTALL)


class PublishError(Exception):
    pass


def _sourced(results: dict[str, Any], table: Render) -> str:
    meta = results["meta"]
    return (
        f"{table(results)}\n\n"
        f"<sub>`{meta['command'].strip()}` at {meta['commit']}, {meta['date']}; "
        f"{meta['cores']} cores, load average {meta['load_average_at_start']:.1f} at start.</sub>"
    )


def render(text: str, results: dict[Path, dict[str, Any]]) -> str:
    """`text` with every known block rewritten from `results` (by results directory); a block
    whose results are missing is left as it is."""

    def block(match: re.Match[str]) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise PublishError(f"unknown figure block {name!r}; known: {', '.join(BLOCKS)}")
        source, draw = BLOCKS[name]
        if source not in results:
            return match.group(0)
        return f"{match.group(1)}{draw(results[source])}\n{match.group(4)}"

    return MARKED.sub(block, text)


def load_results() -> dict[Path, dict[str, Any]]:
    """The results on disk, by directory."""
    return {
        directory: json.loads((directory / "results.json").read_text())
        for directory in {source for source, _ in BLOCKS.values()}
        if (directory / "results.json").is_file()
    }


def publish(pages: tuple[Path, ...] = PAGES) -> list[str]:
    """Rewrite the blocks of `pages` from the results on disk; returns the pages changed."""
    results = load_results()
    changed = []
    for page in pages:
        text = page.read_text()
        updated = render(text, results)
        if updated != text:
            page.write_text(updated)
            changed.append(str(page.relative_to(REPO)))
    return changed


def main() -> int:
    try:
        changed = publish()
    except PublishError as error:
        print(f"bench.publish: {error}", file=sys.stderr)
        return 1
    print("updated: " + (", ".join(changed) or "nothing (already current)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
