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
    try:
        ports = _non_default_port(first), _non_default_port(second)
    except ValueError:  # `https://host:99999` is no server: not the one on host's 443
        return False
    return (first.hostname.lower(), ports[0]) == (second.hostname.lower(), ports[1])


def _non_default_port(parts: SplitResult) -> int | None:
    port = port_of(parts)
    return port if port not in ({"http": 80, "https": 443}.get(parts.scheme), None) else None


def port_of(parts: SplitResult) -> int | None:
    """The port a url names, None when it names none (the scheme's default); ValueError when
    what follows the host's colon is not a port: 1 to 65535, in ASCII digits. The one rule
    for every url syncd is given: `parts.port` takes 0 (which nothing answers), httpx takes
    99999 and -1."""
    port = port_text(parts.netloc)
    if port is None:
        return None
    if not (is_port_number(port) and 1 <= int(port) <= 65535):
        raise ValueError(f"{port!r} is not a port")
    return int(port)


def port_text(netloc: str) -> str | None:
    """What follows the host in `netloc` after its colon, as urlsplit reads it (an IPv6
    address in brackets holds colons of its own), None when nothing does."""
    host = netloc.rpartition("@")[2]
    if "[" in host:
        host = host.partition("]")[2]
    port = host.partition(":")[2]
    return port or None


def is_port_number(text: str) -> bool:
    """Whether `text` looks like a port, right or wrong (`8080`, `99999`), not like anything
    else that lands there: a token whose `user:` lost its `@host` (`https://robot:TOKEN`)."""
    return text.isascii() and text.isdigit() and len(text) <= 5


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
