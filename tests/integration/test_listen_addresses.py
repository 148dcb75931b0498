"""Where each listener binds: the metrics endpoint on `metrics_host` when set (a private interface only
the scraper reaches), the gRPC port on `host`; a metrics_host that is no address is named at --check."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from lmroute.service.client import RouterClient
from lmroute.service.config import ConfigError, ServiceConfig
from lmroute.service.server import check_ports_free
from lmroute.service.testing import ServerThread


def test_the_metrics_endpoint_binds_its_own_host(fake_servers: Callable[..., ServerThread]) -> None:
    srv = fake_servers(metrics_port=0, metrics_host="127.0.0.2")  # another loopback address of this host
    port = srv.server.metrics_port
    assert port
    with urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10) as answer:
        assert b"lmroute_calls_total" in answer.read()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass  # not on the gRPC port's address (it was: the endpoint always bound --host)
    with RouterClient(srv.target) as client:  # the gRPC port stays on host
        assert srv.target.startswith("127.0.0.1:") and client.health() == "SERVING"


def test_a_metrics_host_that_is_no_address_is_named() -> None:
    cfg = ServiceConfig(bundle_path=Path("b"), port=0, metrics_port=39464, metrics_host="no-such-host.invalid")
    with pytest.raises(ConfigError, match=r"metrics_host: 'no-such-host.invalid' is no address of this host"):
        check_ports_free(cfg)
