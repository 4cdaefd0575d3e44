"""The scan engine against real sockets: listeners this test opened on 127.0.0.1, and full or
filtered ranges only inside a private network namespace (see tests/netns.py)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.netns import require_netns, run_in_netns
from watchkeeper.scan import (
    PortState,
    ScanError,
    ScanOptions,
    parse_ports,
    port_ranges,
    scan_host,
    service_name,
    top_ports,
)


def listener() -> socket.socket:
    """A listening socket on a free loopback port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def reserved() -> socket.socket:
    """A bound, not listening socket: its port is known closed and nobody else can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def port_of(sock: socket.socket) -> int:
    port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    made: list[socket.socket] = []
    yield made
    for sock in made:
        sock.close()


def test_port_lists_are_inclusive_and_checked() -> None:
    assert parse_ports("22,80,1000-1003") == [22, 80, 1000, 1001, 1002, 1003]
    assert parse_ports("65530-") == [65530, 65531, 65532, 65533, 65534, 65535]
    assert parse_ports("-3") == [1, 2, 3]
    assert len(parse_ports("-")) == 65535
    assert parse_ports("1-65535")[-1] == 65535
    assert parse_ports([443, 22, 22]) == [22, 443]
    for bad, says in [
        ("0-5", "outside 1-65535"),
        ("65536", "outside 1-65535"),
        ("5-3", "runs backwards"),
        ("22,,80", "empty item"),
        ("ssh", "not a port"),
    ]:
        with pytest.raises(ScanError, match=says):
            parse_ports(bad)


@given(st.sets(st.integers(1, 65535), min_size=1, max_size=200))
def test_port_ranges_round_trip(ports: set[int]) -> None:
    assert parse_ports(port_ranges(ports)) == sorted(ports)


def test_top_ports_and_service_names() -> None:
    top = top_ports(10)
    assert len(top) == 10
    assert {22, 80, 443} <= set(top)
    assert len(set(top_ports(1000))) == 1000
    assert service_name(22) == "ssh"
    assert service_name(5432) == "postgresql"
    with pytest.raises(ScanError):
        top_ports(0)


def test_open_closed_and_a_listener_that_never_accepts(sockets: list[socket.socket]) -> None:
    opened = [listener() for _ in range(3)]
    never_accepts = socket.socket()  # backlog 1, never accept(): still open, not filtered
    never_accepts.bind(("127.0.0.1", 0))
    never_accepts.listen(1)
    closed = [reserved() for _ in range(3)]
    sockets.extend([*opened, never_accepts, *closed])
    ports = [port_of(s) for s in sockets]
    report = scan_host("127.0.0.1", ports, ScanOptions(timeout=2.0))
    assert report.open_ports == sorted(port_of(s) for s in [*opened, never_accepts])
    assert report.ports(PortState.CLOSED) == sorted(port_of(s) for s in closed)
    assert {r.reason for r in report.results.values()} == {"syn-ack", "conn-refused"}
    assert report.counts() == {"open": 4, "closed": 3, "filtered": 0, "error": 0}
    assert report.elapsed < 1.0  # every port answered: no waiting out the 2 s timeout


def test_banner_is_read_bounded_in_bytes_and_time(sockets: list[socket.socket]) -> None:
    talker, chatty, silent = listener(), listener(), listener()
    sockets.extend([talker, chatty, silent])
    said = {talker: b"SSH-2.0-watchkeeper\r\n", chatty: b"x" * 10_000}

    def serve(sock: socket.socket, greeting: bytes) -> None:
        conn, _ = sock.accept()
        with conn:
            conn.sendall(greeting)
            with contextlib.suppress(OSError):
                conn.recv(1)  # hold the connection until the scanner closes it

    servers = [
        threading.Thread(target=serve, args=(s, g), name="banner-server") for s, g in said.items()
    ]
    for thread in servers:
        thread.start()
    options = ScanOptions(banner=True, banner_bytes=64, banner_timeout=0.3)
    report = scan_host("127.0.0.1", [port_of(s) for s in sockets], options)
    for thread in servers:
        thread.join(5)
    assert report.results[port_of(talker)].banner == "SSH-2.0-watchkeeper"
    assert report.results[port_of(chatty)].banner == "x" * 64
    assert report.results[port_of(silent)].banner == ""  # says nothing: open, empty banner
    assert report.elapsed < 3.0


def test_rate_limits_connection_attempts(sockets: list[socket.socket]) -> None:
    sockets.extend(reserved() for _ in range(40))
    report = scan_host("127.0.0.1", [port_of(s) for s in sockets], ScanOptions(rate=100))
    assert report.counts()["closed"] == 40
    assert 0.35 <= report.elapsed < 3.0  # 40 connects at 100/s: about 0.4 s, not instant


def test_ipv6_loopback() -> None:
    try:
        listening = socket.socket(socket.AF_INET6)
        listening.bind(("::1", 0))
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    closed = socket.socket(socket.AF_INET6)
    closed.bind(("::1", 0))
    with listening, closed:
        listening.listen()
        ports = [listening.getsockname()[1], closed.getsockname()[1]]
        report = scan_host("::1", ports)
    assert report.address == "::1"
    assert report.open_ports == [ports[0]]
    assert report.results[ports[1]].state is PortState.CLOSED


def test_bad_options_and_hosts_are_clear_errors() -> None:
    with pytest.raises(ScanError, match="concurrency"):
        ScanOptions(concurrency=0)
    with pytest.raises(ScanError, match="timeouts"):
        ScanOptions(timeout=0)
    with pytest.raises(ScanError, match=r"cannot resolve host 'no-such-host\.invalid'"):
        scan_host("no-such-host.invalid", [80])


def test_full_range_finds_every_listener_and_port_65535() -> None:
    require_netns()
    found = run_in_netns(
        """
        import json, socket
        from watchkeeper.scan import scan_host, parse_ports
        listeners = []
        for port in (1, 22, 8080, 33000, 45000, 60999, 65535):
            s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(); listeners.append(s)
        r = scan_host("127.0.0.1", parse_ports("-"))
        print(json.dumps({"open": r.open_ports, "counts": r.counts(), "n": len(r.results)}))
        """
    )
    assert found["open"] == [1, 22, 8080, 33000, 45000, 60999, 65535]
    assert found["n"] == 65535
    assert found["counts"] == {"open": 7, "closed": 65528, "filtered": 0, "error": 0}


def test_self_connect_is_reported_closed_never_open() -> None:
    require_netns()
    # With a one-port ephemeral range, connecting to that port from it is a simultaneous open
    # with itself: the classic false "open".
    found = run_in_netns(
        """
        import json
        from watchkeeper.scan import scan_host
        r = scan_host("127.0.0.1", [40000, 40001])
        print(json.dumps({p: [str(x.state), x.reason] for p, x in r.results.items()}))
        """,
        setup=["sysctl -qw net.ipv4.ip_local_port_range='40000 40000'"],
    )
    assert found["40000"] == ["closed", "self-connect"]
    assert found["40001"] == ["closed", "conn-refused"]


def test_dropped_ports_are_filtered_after_timeout_and_retry() -> None:
    require_netns(iptables=True)
    found = run_in_netns(
        """
        import json, socket
        from watchkeeper.scan import PortState, ScanOptions, parse_ports, scan_host
        listeners = []
        for port in (7100, 7105, 7106):
            s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(); listeners.append(s)
        r = scan_host("127.0.0.1", parse_ports("7090-7110"), ScanOptions(timeout=0.3, retries=1))
        print(json.dumps({
            "filtered": r.ports(PortState.FILTERED),
            "open": r.open_ports,
            "reasons": sorted({x.reason for x in r.results.values()}),
            "elapsed": r.elapsed,
        }))
        """,
        setup=[
            "iptables -A INPUT -p tcp --dport 7100:7104 -j DROP",
            # 7106 loses its first SYN: the retry must still find it open.
            "iptables -A INPUT -p tcp --dport 7106 --syn -m statistic --mode nth --every 2 "
            "--packet 0 -j DROP",
        ],
    )
    assert found["filtered"] == [7100, 7101, 7102, 7103, 7104]  # the listener behind DROP too
    assert found["open"] == [7105, 7106]
    assert found["reasons"] == ["conn-refused", "no-response", "syn-ack"]
    # The last attempt waits the full 0.3 s; no 2-minute kernel SYN timeout.
    assert 0.3 <= found["elapsed"] < 5.0


def test_no_free_descriptors_means_retry_later_not_closed() -> None:
    require_netns()
    # A tiny RLIMIT_NOFILE, and halfway through, the rest of the "program" takes every free
    # descriptor for a while. Ports must come out right, and the shortage must have happened.
    found = run_in_netns(
        """
        import contextlib, json, os, resource, socket
        from watchkeeper.scan import scan_host, parse_ports, ScanOptions
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        listeners = []
        for port in (5000, 5500, 5999):
            s = socket.socket(); s.bind(("127.0.0.1", port)); s.listen(); listeners.append(s)
        held, calls = [], []
        def hog(done, total):
            calls.append(done)
            if len(calls) == 1:
                with contextlib.suppress(OSError):  # until the descriptor limit says no
                    while True:
                        held.append(os.open("/dev/null", os.O_RDONLY))
            elif len(calls) == 4:
                for fd in held:
                    os.close(fd)
        options = ScanOptions(concurrency=1000, timeout=1.0, rate=4000)
        r = scan_host("127.0.0.1", parse_ports("5000-5999"), options, progress=hog)
        print(json.dumps({"open": r.open_ports, "counts": r.counts(), "waits": r.fd_waits,
                          "held": len(held)}))
        """
    )
    assert found["held"] > 0
    assert found["waits"] > 0
    assert found["open"] == [5000, 5500, 5999]
    assert found["counts"] == {"open": 3, "closed": 997, "filtered": 0, "error": 0}
