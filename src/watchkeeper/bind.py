"""``HOST:PORT`` for the dashboard, and the rule that only loopback may go without a good token.

Kept free of web imports: the config loader validates ``[keeper] dashboard`` with it, so that
``watchkeeper check`` reports a non-loopback bind without a token before anything starts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_BIND = "127.0.0.1:8470"
MIN_TOKEN = 16
"""Characters a token needs off loopback (``watchkeeper token`` prints a 32-character one)."""


@dataclass(frozen=True)
class Bind:
    """Where the dashboard listens."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def url(self, port: int | None = None, tls: bool = False) -> str:
        """``http://host:port`` (IPv6 hosts in brackets); ``port`` overrides, e.g. after port 0."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if tls else 'http'}://{host}:{self.port if port is None else port}"


def parse_bind(value: str) -> Bind:
    """``127.0.0.1:8470``, ``[::1]:8470``, ``0.0.0.0:0`` (port 0: any free port)."""
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT (for example 127.0.0.1:8470)")
    host = host.removeprefix("[").removesuffix("]")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is not between 0 and 65535")
    return Bind(host, port)


def check_exposure(bind: Bind, token: str | None) -> None:
    """Refuse a dashboard reachable from other machines without a token that resists guessing."""
    if bind.loopback:
        return
    where = f"dashboard = '{bind.host}:{bind.port}' is reachable beyond this machine, so it needs"
    if not token:
        raise ValueError(
            f"{where} a token: set [keeper] token (for example token = "
            '"${WATCHKEEPER_TOKEN}"; `watchkeeper token` makes one), or bind to 127.0.0.1'
        )
    if len(token.strip()) < MIN_TOKEN:
        raise ValueError(
            f"{where} a token of at least {MIN_TOKEN} characters, not {len(token.strip())}: "
            "`watchkeeper token` makes one"
        )
