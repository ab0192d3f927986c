"""What syncd compares urls by."""

from __future__ import annotations

from urllib.parse import urlsplit


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of `url` (the unit a key or a share belongs to), None for a url
    without both."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None
