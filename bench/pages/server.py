"""The benchmark's site: 1,000 list pages over 50 loopback addresses, each reply 50 ms late.

Run as its own process (so its CPU is nobody's): ``python server.py PAGES HOSTS DELAY [fresh]``.
With ``fresh`` every reply also lists one item no reply listed before (bench/fleet: every check
after the first makes one alert). It binds
127.0.0.2 ... 127.0.0.(HOSTS+1) on one free port, prints ``{"port": N}`` when ready and serves
until stdin closes. Page N lives on host N % HOSTS at /page/N: a product list of 20 items with
the navigation, header and footer a real shop page has, about 6 KB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys

ITEMS = 20


def page(number: int) -> bytes:
    nav = "".join(f"<li><a href='/cat/{c}'>Category {c}</a></li>" for c in range(12))
    items = "".join(
        f"<li class='item'><a href='/product/{number}-{i}?utm_source=list'>"
        f"<h2>Product {number}-{i}</h2></a><span class='price'>{i * 3 + 9}.99</span>"
        f"<p>A fine product, number {i} on page {number}, in stock.</p></li>"
        for i in range(ITEMS)
    )
    html = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Shop page {number}</title>"
        f"<link rel='stylesheet' href='/s.css'></head><body><header><ul class='nav'>{nav}</ul>"
        f"</header><main><h1>New arrivals ({number})</h1><ul class='products'>{items}</ul></main>"
        "<footer><p>Shop Ltd. All rights reserved.</p></footer></body></html>"
    )
    return html.encode()


def fresh_item(path: str, number: int) -> bytes:
    """One more item, never listed before on this page."""
    return f"<li class='item'><a href='{path}/new/{number}'>New {number}</a></li>".encode()


async def serve(pages: int, hosts: int, delay: float, fresh: bool = False) -> None:
    bodies = {f"/page/{n}": page(n) for n in range(pages)}
    served: dict[str, int] = dict.fromkeys(bodies, 0)
    probe = socket.socket()
    probe.bind(("127.0.0.2", 0))
    port = probe.getsockname()[1]
    probe.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The client closing its connection (or sending junk) ends the exchange.
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, IndexError):
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1].decode()
                    await asyncio.sleep(delay)
                    body = bodies.get(path)
                    if body is not None and fresh:
                        served[path] += 1
                        body = body.replace(
                            b"</ul></main>", fresh_item(path, served[path]) + b"</ul></main>"
                        )
                    status = b"200 OK" if body is not None else b"404 Not Found"
                    body = body or b"not found"
                    writer.write(
                        b"HTTP/1.1 " + status + b"\r\nContent-Type: text/html; charset=utf-8\r\n"
                        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                    )
                    await writer.drain()
        finally:
            writer.close()

    servers = [
        await asyncio.start_server(handle, f"127.0.0.{h + 2}", port, backlog=1024)
        for h in range(hosts)
    ]
    print(json.dumps({"port": port}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin
    for server in servers:
        server.close()


if __name__ == "__main__":
    fresh = sys.argv[4:5] == ["fresh"]
    asyncio.run(serve(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), fresh))
