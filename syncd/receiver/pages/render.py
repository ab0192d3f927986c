"""The pages' Jinja2 environment: templates shipped with the package, autoescaped, and the
filters they format numbers, times and content with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from . import markup


def _when(ms: int | None) -> Markup:
    """A millisecond stamp as a <time> element, in UTC (the server cannot know the reader's
    time zone and pages render without JavaScript)."""
    if not ms:
        return Markup("")
    try:
        moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return Markup("")
    return Markup('<time datetime="{}">{}</time>').format(
        moment.isoformat(timespec="seconds"), moment.strftime("%Y-%m-%d %H:%M UTC")
    )


def _duration(ms: int) -> str:
    seconds = max(ms, 0) / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def _number(value: int | float) -> str:
    return f"{value:,}"


def _money(value: float) -> str:
    return f"${value:,.4f}" if 0 < value < 1 else f"${value:,.2f}"


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("syncd.receiver.pages", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        markdown=markup.markdown,
        code=markup.code,
        when=_when,
        duration=_duration,
        number=_number,
        money=_money,
    )
    return env


env = _environment()


def page(name: str, **context: Any) -> str:
    return env.get_template(name).render(**context)


def fragment(macro: str, *args: Any) -> str:
    """One macro of macros.html rendered alone (a live update of one piece of a page)."""
    return str(getattr(env.get_template("macros.html").module, macro)(*args))
