"""Structured logging to stderr: console lines on a terminal, JSON lines otherwise (journald,
files, pipes), with share secrets and keys masked wherever they appear (`syncd.redact`) and
no control character from elsewhere reaching a console (`syncd.terminal`)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, TextIO, cast

import structlog

from syncd.redact import MASK, register, scrub
from syncd.terminal import printable

if TYPE_CHECKING:
    from syncd.config import Config

# Event keys whose value is always a credential. Exact names: `Batch.key` style hashes are
# named differently (e.g. `batch_key`) and stay readable.
SECRET_KEYS = frozenset(
    {"secret", "key", "authorization", "x-opencode-share-key", "password", "token", "api_key"}
)


def configure_logging(config: Config | None = None) -> None:
    """Set up structlog from `config` (None: defaults, used before the config is loaded so
    that config warnings are already rendered the right way, on stderr)."""
    log_format = config.log_format if config else "auto"
    level = config.log_level if config else "info"
    if config is not None:
        register(config.key)
    if log_format == "auto":
        log_format = "console" if sys.stderr.isatty() else "json"
    # JSON lines escape control characters themselves; console lines are made printable.
    renderers: list[structlog.typing.Processor] = (
        [printable_values, structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
        if log_format == "console"
        else [structlog.processors.JSONRenderer()]
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            # Exceptions become text before masking, so a secret in a traceback is masked too.
            structlog.processors.format_exc_info,
            mask_secrets,
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=cast(TextIO, _CurrentStderr())),
        # Loggers are created at import time and reconfigured once the config is known.
        cache_logger_on_first_use=False,
    )


class _CurrentStderr:
    """sys.stderr as it is at each line: a live display (the backfill's bars) puts its own
    there while shown, which prints the line above itself instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def mask_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: hide credential-named keys, and scrub every text."""
    return _mask(event)


def printable_values(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: every text in a console line `printable` (a receiver's message
    is quoted in many). Other values are shown by repr(), which escapes them itself."""
    return {name: printable(v) if isinstance(v, str) else v for name, v in event.items()}


def _mask(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {
            name: MASK
            if isinstance(name, str) and name.lower() in SECRET_KEYS and item is not None
            else _mask(item)
            for name, item in value.items()
        }
    if isinstance(value, list | tuple | set):
        return [_mask(item) for item in value]
    if not isinstance(value, int | float | bool | type(None)):
        # Objects (exceptions, paths...) are logged through str(); mask what they would show.
        return _mask(str(value))
    return value
