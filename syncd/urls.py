"""What syncd compares urls by."""

from __future__ import annotations

import ipaddress
from urllib.parse import SplitResult, urlsplit


def origin_of(url: str) -> str | None:
    """scheme://host[:port] of `url` (the unit a key or a share belongs to), None for a url
    without both or one that does not parse."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else None


def same_server(a: str, b: str) -> bool:
    """Whether two urls name the same host and port. The scheme is left out: opencode's share
    server builds its share urls as https unless a proxy says otherwise, whatever the scheme
    it was reached by. A url that does not parse (`https://[oops`, as a share server may have
    answered opencode) names no server of ours."""
    try:
        first, second = urlsplit(a), urlsplit(b)
    except ValueError:
        return False
    if not first.hostname or not second.hostname:
        return False
    return (first.hostname.lower(), _port(first)) == (second.hostname.lower(), _port(second))


def _port(parts: SplitResult) -> int | None:
    try:
        port = parts.port
    except ValueError:
        return None
    return port if port not in ({"http": 80, "https": 443}.get(parts.scheme), None) else None


def is_loopback_host(host: str) -> bool:
    """Whether `host` (an address or name) stays on this machine."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() in ("localhost", "localhost.")


def cleartext_beyond_loopback(url: str) -> bool:
    """Whether credentials sent to `url` cross the network unencrypted: plain http:// to a
    host that is not this machine."""
    parts = urlsplit(url)
    return parts.scheme == "http" and not is_loopback_host(parts.hostname or "")
