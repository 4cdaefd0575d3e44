"""Faults a shared PostgreSQL store must survive without losing or repeating an alert: text
PostgreSQL cannot hold, claims that strand or spin a dispatcher, a COMMIT whose answer never
comes, the server away and back. Where SQLite meets the same input, the same body runs on it."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RecordingServer, read_jsonl, wait_until
from tests.postgres import Cluster
from watchkeeper import Keeper
from watchkeeper.alerts import Alert, Severity
from watchkeeper.build import build_notifier
from watchkeeper.dispatch import Dispatcher
from watchkeeper.store import Delivery, Route, Store, StoreError


def test_nul_in_a_checks_output_or_error_neither_wedges_it_nor_loses_the_alert(
    state: str | Path, tmp_path: Path
) -> None:
    """PostgreSQL refuses NUL in text: the commit failed on every redo, for ever."""
    jsonl = tmp_path / "alerts.jsonl"
    keeper = Keeper(state=state, notify=[{"kind": "jsonl", "path": str(jsonl)}])

    def broken() -> None:
        raise RuntimeError("command printed \x00\x00")

    keeper.every(0.05, lambda: "backup failed: tar: \x00 in name", name="said")
    keeper.every(0.05, broken, name="broken", fail_after=1)
    with keeper:

        def checked(name: str) -> int:
            record = keeper.store.watcher(name)
            return 0 if record is None else record.checks

        wait_until(lambda: checked("said") >= 3 and checked("broken") >= 3)
        wait_until(lambda: {r["watcher"] for r in read_jsonl(jsonl)} == {"said", "broken"})
        assert keeper.store.fault is None
    by_watcher = {r["watcher"]: r["title"] for r in read_jsonl(jsonl)}
    assert "in name" in by_watcher["said"]
    assert "command printed" in by_watcher["broken"]
    assert len(read_jsonl(jsonl)) == 2  # each once


def five_alerts(store: Store, notifier: str) -> None:
    """Five alerts, each with a delivery to ``notifier`` due now."""
    store.register_watchers([("w", "custom")])
    store.commit_check(
        "w",
        checkpoint={"n": 1},
        rule_state={},
        alerts=[
            Alert(watcher="w", kind="custom", severity=Severity.ERROR, key=f"k{i}", title=f"a{i}")
            for i in range(5)
        ],
        routes=[Route(notifier)],
        now=time.time(),
        next_check=None,
    )


def stop(dispatcher: Dispatcher) -> None:
    dispatcher.flush(time.time() + 5)
    dispatcher.join(10)


def test_a_batch_cut_short_by_a_notifier_that_is_down_goes_out_when_it_is_back(
    postgres_url: str, http_receiver: RecordingServer
) -> None:
    """Only the first of a batch is tried while the notifier is down; the rest stayed claimed
    by this very agent, skipped by its own next pass, for the whole 5-minute claim."""
    with Store(postgres_url) as store:
        store.claim("a")
        five_alerts(store, "hook")
        http_receiver.status = 503
        hook = {"kind": "webhook", "name": "hook", "url": http_receiver.url, "group_wait": 0}
        dispatcher = Dispatcher(build_notifier({**hook, "group_interval": 0}), store)
        dispatcher.start()
        try:
            wait_until(lambda: "hook" in store.last_delivery_errors())  # one tried: 503
            http_receiver.status = 200
            wait_until(lambda: store.delivery_counts()["hook"] == {"sent": 5}, timeout=20)
        finally:
            stop(dispatcher)
    titles = [r.json()["title"] for r in http_receiver.requests[1:]]
    assert sorted(titles) == [f"a{i}" for i in range(5)]  # each once after the failed try


def test_a_dispatcher_waits_out_another_agents_claims_without_spinning(
    postgres_url: str, tmp_path: Path
) -> None:
    """Every due row claimed by another agent (sending slowly, or killed holding them): the
    outbox said "due now" while due() gave nothing, so the dispatcher asked again at once,
    thousands of times a second, until the claims ran out."""
    jsonl = tmp_path / "out.jsonl"
    with Store(postgres_url) as holder, Store(postgres_url) as store:
        store.claim("b")
        five_alerts(store, "out")
        assert len(holder.due("out", time.time(), agent="a", claim_for=1.5)) == 5
        asked: list[float] = []
        due = store.due

        def counted(*args: Any, **kwargs: Any) -> list[Delivery]:
            asked.append(time.monotonic())
            return due(*args, **kwargs)

        store.due = counted  # type: ignore[method-assign]
        notifier = build_notifier({"kind": "jsonl", "name": "out", "path": str(jsonl)})
        dispatcher = Dispatcher(notifier, store)
        dispatcher.start()
        try:
            wait_until(lambda: len(read_jsonl(jsonl)) == 5)  # once the claims ran out
        finally:
            stop(dispatcher)
    assert len(asked) < 10, f"due() asked {len(asked)} times in {asked[-1] - asked[0]:.1f} s"


class CommitCutter:
    """A TCP proxy to the PostgreSQL server that, once armed, loses one COMMIT's answer: it
    forwards the COMMIT and drops the connection instead of the server's answer (the commit
    happened), or drops the connection instead of forwarding the COMMIT (it did not)."""

    def __init__(self, server_port: int, forward_commit: bool) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.server_port = server_port
        self.forward_commit = forward_commit
        self.armed = threading.Event()
        self.cut = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, name="cutter", daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed by stop()
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            self.sockets += [client, server]
            pump = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            self.threads.append(pump)
            pump.start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        committing = False
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, server)
            selector.register(server, selectors.EVENT_READ, client)
            while True:
                for key, _ in selector.select():
                    source, target = key.fileobj, key.data
                    assert isinstance(source, socket.socket)
                    try:
                        data = source.recv(65536)
                    except OSError:
                        data = b""
                    if source is client and self.armed.is_set() and b"COMMIT\x00" in data:
                        self.armed.clear()
                        committing = True
                        if not self.forward_commit:
                            data = b""
                    elif source is server and committing:  # the server's answer to COMMIT
                        data = b""
                    try:
                        if not data:
                            raise ConnectionResetError
                        target.sendall(data)
                    except OSError:  # either side gone, or cut here: both ends closed
                        if committing:
                            self.cut.set()
                        client.close()
                        server.close()
                        return

    def __enter__(self) -> CommitCutter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sock in [self.listener, *self.sockets]:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the threads blocked on them
        for thread in self.threads:
            thread.join(5)
        self.listener.close()


@pytest.mark.parametrize("cut", ["after", "before"])
def test_a_commit_whose_answer_is_lost_is_neither_lost_nor_repeated(
    postgres_cluster: Cluster, postgres_url: str, cut: str
) -> None:
    """The connection drops once COMMIT is sent (a network blip, a proxy restarting): the
    store said "nothing committed, redo" even when the server had committed, and the redone
    check committed its alert a second time."""
    port = postgres_cluster.port
    with (
        CommitCutter(port, forward_commit=cut == "after") as proxy,
        Store(postgres_url.replace(f":{port}/", f":{proxy.port}/")) as store,
    ):
        store.register_watchers([("disk", "custom")])

        def check() -> None:  # the same observation each time, like a redone check
            alert = Alert(
                watcher="disk", kind="custom", severity=Severity.CRITICAL, key="d", title="full"
            )
            store.commit_check(
                "disk",
                checkpoint={"n": 1},
                rule_state={"firing": True},
                alerts=[alert],
                routes=[Route("mail")],
                now=time.time(),
                next_check=None,
            )

        proxy.armed.set()
        if cut == "before":  # nothing committed: a transient error, and the runtime redoes it
            with pytest.raises(StoreError) as failed:
                check()
            assert failed.value.transient
        check()
        assert proxy.cut.is_set()
        assert len(store.alerts()) == 1
        assert store.delivery_counts() == {"mail": {"pending": 1}}


def test_the_store_commits_again_soon_after_the_database_is_back(
    postgres_cluster: Cluster, postgres_url: str
) -> None:
    """The pool's reconnection attempts back off (1, 2, 4, 8 s...): after an outage the store
    kept failing for seconds, up to minutes, after the server was back."""
    with Store(postgres_url) as store:
        store.register_watchers([("w", "custom")])
        committed: list[float] = []
        stopping = threading.Event()

        def watcher() -> None:  # commits as a watcher's runtime does: redone until it works
            while not stopping.is_set():
                try:
                    store.commit_check(
                        "w",
                        checkpoint={},
                        rule_state={},
                        alerts=[],
                        routes=[],
                        now=1.0,
                        next_check=None,
                    )
                except StoreError:
                    stopping.wait(0.2)  # the runtime's STORE_RETRY
                    continue
                committed.append(time.monotonic())
                return

        postgres_cluster.psql("CHECKPOINT")  # the schema survives the crash stop (fsync off)
        postgres_cluster.stop()
        since = time.monotonic()
        thread = threading.Thread(target=watcher, name="watcher")
        thread.start()
        try:  # an outage of 8 s, long enough for the pool's backoff to grow
            wait_until(lambda: store.fault and time.monotonic() - since > 8, timeout=30)
        finally:
            postgres_cluster.start()
        back = time.monotonic()
        try:
            wait_until(lambda: committed, timeout=30)
        finally:
            stopping.set()
            thread.join(30)
        assert committed[0] - back < 3.5
