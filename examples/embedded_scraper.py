"""A scraping script that embeds a Keeper: email me whenever a new item is inserted.

Run it: ``python examples/embedded_scraper.py``. With no arguments it is self-contained: it starts
watchkeeper's demo shop and a local SMTP sink on 127.0.0.1, so the emails land in a folder you can
open. Point it at your own page and mail server with ``--url``, ``--items``, ``--smtp-host``,
``--smtp-port`` and ``--to``.

The script's own work (here: computing the average price from the JSON API every second) runs in
the main thread; the Keeper's page watcher runs beside it on a daemon thread and emails each new
item once. When the script ends, pending emails are flushed (or kept for the next run).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import urllib.request
from pathlib import Path

from watchkeeper import Keeper
from watchkeeper.demo.smtpsink import SmtpSink
from watchkeeper.demo.world import Shop


def average_price(api_url: str) -> float:
    """The script's real job: scrape the shop's prices."""
    with urllib.request.urlopen(api_url, timeout=5) as response:
        items = json.load(response)["items"]
    return sum(i["price"] for i in items) / len(items)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="the page to watch (default: a local demo shop)")
    parser.add_argument("--items", default="li.product", help="CSS selector of one item")
    parser.add_argument("--smtp-host", default="127.0.0.1")
    parser.add_argument("--smtp-port", type=int, help="default: a local SMTP sink")
    parser.add_argument("--to", default="you@example.com")
    parser.add_argument("--seconds", type=float, default=6.0, help="how long the script works")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="wk-scraper-"))
    shop = sink = None
    if args.url is None:
        shop = Shop(every=1.0).start()
        args.url = f"{shop.url}/new"
    if args.smtp_port is None:
        sink = SmtpSink(folder / "inbox").start()
        args.smtp_port = sink.port

    keeper = Keeper(
        state=folder / "scraper.db",
        notify=[
            {
                "kind": "smtp",
                "host": args.smtp_host,
                "port": args.smtp_port,
                "sender": "scraper@example.com",
                "to": [args.to],
                "subject": "New: {{ data.item_title }}",
                "body": "{{ data.item_title }}\n{{ data.item_url }}\n",
            }
        ],
    )
    keeper.page(args.url, items=args.items, title="h2", every="500ms", stagger="0s", name="new")
    with keeper:
        ends = time.monotonic() + args.seconds
        while time.monotonic() < ends:
            if shop is not None:
                print(f"average price: {average_price(f'{shop.url}/api/items'):.2f} €")
            time.sleep(1.0)

    if sink is not None:
        print(f"emails in {folder / 'inbox'}:")
        for message in sink.messages:
            print(f"  {message['Subject']}")
        sink.stop()
    if shop is not None:
        shop.stop()


if __name__ == "__main__":
    main()
