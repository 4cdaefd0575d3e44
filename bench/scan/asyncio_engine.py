"""The alternative engine design, kept for the benchmark: asyncio with a fixed set of worker
coroutines, each doing ``loop.sock_connect`` under a timeout, with the same retry and self-connect
rules as watchkeeper.scan. It only reports open ports; the benchmark checks them."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections import deque
from collections.abc import Iterable


async def _scan(host: str, ports: Iterable[int], concurrency: int, timeout: float) -> list[int]:
    loop = asyncio.get_running_loop()
    queue: deque[tuple[int, int]] = deque((p, 0) for p in ports)
    found: list[int] = []

    async def worker() -> None:
        while queue:
            port, attempt = queue.popleft()
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                async with asyncio.timeout(timeout):
                    await loop.sock_connect(sock, (host, port))
            except TimeoutError:
                if attempt < 1:
                    queue.append((port, attempt + 1))
            except OSError as exc:
                if exc.errno != errno.ECONNREFUSED:
                    raise
            else:
                if sock.getsockname() != sock.getpeername():
                    found.append(port)
            finally:
                sock.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sorted(found)


def scan_open(host: str, ports: Iterable[int], concurrency: int, timeout: float) -> list[int]:
    """The open ports of ``host`` among ``ports``."""
    return asyncio.run(_scan(host, ports, concurrency, timeout))
