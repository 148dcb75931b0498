"""The metrics endpoint over real sockets (lmroute.service.metrics.ServiceMetrics.serve on 127.0.0.1): a
request trickled a header line at a time is cut off SCRAPE_READ_S after its connection was taken, so 16 of
them no longer lock every scrape out; concurrent scrapes share one render for SCRAPE_CACHE_S, and a lone
scrape (or one after that) sees the values as they are now."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from lmroute.service import metrics as metrics_module
from lmroute.service.metrics import SCRAPE_CACHE_S, ServiceMetrics


class SlowCollector(Collector):
    """Counts its collects, each taking `seconds` (a render of many label sets)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.collects = 0

    def collect(self) -> Iterator[Any]:
        self.collects += 1
        time.sleep(self.seconds)
        yield GaugeMetricFamily("test_slow_collects", "collects so far", value=self.collects)


@pytest.fixture()
def endpoint() -> Iterator[tuple[ServiceMetrics, int]]:
    m = ServiceMetrics(lambda: None)
    port = m.serve("127.0.0.1", 0)
    yield m, port
    m.close()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def test_a_request_trickled_a_line_at_a_time_is_cut_off_at_the_deadline(
    endpoint: tuple[ServiceMetrics, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 connections (every slot) send a request line, then a header line every 0.5 s and never the blank
    line: each receive is well within the 10 s per-receive timeout, so they held the slots for as long as
    they kept it up."""
    monkeypatch.setattr(metrics_module, "SCRAPE_READ_S", 4.0)
    _, port = endpoint
    conns = []
    for _ in range(16):  # the listen backlog is short: the last ones are taken a second or two later
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall(b"GET /metrics HTTP/1.1\r\n")
        conns.append(conn)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for conn in conns:
                try:
                    conn.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    pass

    trickling = threading.Thread(target=trickle, daemon=True)
    trickling.start()
    try:
        time.sleep(0.2)
        with pytest.raises(OSError):  # every slot held: closed at once
            scrape(port)
        t0 = time.monotonic()
        while True:  # still trickling: the deadline frees the slots
            try:
                text = scrape(port)
                break
            except OSError:
                assert time.monotonic() - t0 < 8, "the trickling connections still hold every slot"
                time.sleep(0.2)
        assert "lmroute_in_flight_calls" in text
        for conn in conns:  # closed by the server
            conn.settimeout(5)
            try:
                assert conn.recv(1) == b""
            except ConnectionResetError:
                pass
    finally:
        stop.set()
        trickling.join(5)
        for conn in conns:
            conn.close()


def test_concurrent_scrapes_share_one_render_and_a_later_scrape_sees_new_values(
    endpoint: tuple[ServiceMetrics, int],
) -> None:
    m, port = endpoint
    slow = SlowCollector(0.3)
    m.registry.register(slow)
    m.calls.labels("/x", "OK").inc()
    assert 'lmroute_calls_total{code="OK",method="/x"} 1.0' in scrape(port)  # a lone scrape renders
    assert slow.collects == 1
    m.calls.labels("/x", "OK").inc()
    assert 'lmroute_calls_total{code="OK",method="/x"} 2.0' in scrape(port)  # and again: never stale alone
    assert slow.collects == 2

    def concurrent_scrapes(n: int) -> list[str]:
        with ThreadPoolExecutor(n) as pool:
            return list(pool.map(lambda _: scrape(port), range(n)))

    m.calls.labels("/x", "OK").inc()
    time.sleep(SCRAPE_CACHE_S + 0.1)  # the lone scrapes' rendering (of 2) is too old for anyone now
    m.renderings._fresh_s = 60.0  # however slowly a loaded machine runs the 8 scrapes, one rendering serves
    renders = m.renderings.renders
    texts = concurrent_scrapes(8)
    # the first renders; those that came while it was open take its rendering (at most one more render:
    # a scrape that found no other open connection renders afresh)
    assert m.renderings.renders - renders <= 2 and slow.collects - 2 <= 2
    assert all('lmroute_calls_total{code="OK",method="/x"} 3.0' in t for t in texts)
    m.renderings._fresh_s = SCRAPE_CACHE_S
    m.calls.labels("/x", "OK").inc()
    time.sleep(SCRAPE_CACHE_S + 0.1)
    texts = concurrent_scrapes(4)
    assert all('lmroute_calls_total{code="OK",method="/x"} 4.0' in t for t in texts)  # past the cache's time
