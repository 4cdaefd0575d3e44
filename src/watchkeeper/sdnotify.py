"""systemd's service notification protocol (sd_notify), without a dependency.

Under ``Type=notify`` systemd passes a datagram socket in ``$NOTIFY_SOCKET`` (a path, or an
abstract name written with a leading ``@``) and waits for ``READY=1`` before it calls the service
started; ``RELOADING=1`` and ``STOPPING=1`` report the other transitions; with ``WatchdogSec=``
it sets ``$WATCHDOG_USEC`` and restarts the service when ``WATCHDOG=1`` does not arrive in time.
The protocol is one ``KEY=VALUE`` line per field in a datagram; libsystemd adds nothing else.
Outside systemd every call does nothing, so the agent needs no switch for it.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("watchkeeper")


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to systemd; False when not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(fields).encode(), target)
    except OSError as exc:
        log.warning("cannot notify systemd at %s: %s", address, exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """How often to send ``WATCHDOG=1`` (half of ``WatchdogSec=``), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        interval = int(usec) / 2_000_000
    except ValueError:
        return None
    return interval if interval > 0 else None
