"""The sd_notify protocol: readiness, status and watchdog pings for `Type=notify` units.

One datagram per message to the AF_UNIX socket in $NOTIFY_SOCKET ('@' = abstract namespace).
Outside systemd the variable is unset and every call does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping


def notify(msg: str, env: Mapping[str, str] = os.environ) -> None:
    """Send `msg` (e.g. "READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1") to systemd."""
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(msg.encode(), address)
        except OSError:
            # A notification must never take the daemon down; systemd's watchdog notices a
            # daemon whose pings stop arriving.
            return


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """The watchdog timeout in seconds (WatchdogSec=), as sd_watchdog_enabled reports it, or
    None when no watchdog is armed for this process. Ping at least twice per timeout."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
