"""Shared fixtures (integration and e2e tiers): the real all-MiniLM-L6-v2 exported to ONNX once per test session.

`encoder_export` gives the `EncoderExport` record (min cosine, fused ops, ...); `exported_encoder_dir`
gives the directory holding `model.onnx` and `tokenizer.json` (max_tokens 256, fp32), for any test that
needs the real encoder. `postgres_server` starts one real PostgreSQL server for the session (the
outcome store's suite runs against it); `fresh_postgres_db` gives each test a new empty database on it.

Property tests (Hypothesis) run derandomized by default: the same examples on every run, so CI cannot
flake on a case nobody saw locally. `HYPOTHESIS_PROFILE=explore ./scripts/test.sh tests/unit` searches
with fresh random examples to look for new failures (a test that sets derandomize itself keeps it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from lmroute.export.encoder_export import EncoderExport, export_encoder
from lmroute.outcomes.testing import TemporaryPostgres, TemporaryPostgresError
from lmroute.service.testing import ServerThread, fake_server

settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def encoder_export(tmp_path_factory: pytest.TempPathFactory) -> EncoderExport:
    """Export the packaged all-MiniLM-L6-v2 (about 15 s on 2 cores)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    try:
        return export_encoder(None, tmp_path_factory.mktemp("encoder"), max_tokens=256)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def exported_encoder_dir(encoder_export: EncoderExport) -> Path:
    """Directory with the real encoder's model.onnx and tokenizer.json."""
    return encoder_export.model_path.parent


# ---------------------------------------------------------------- a real PostgreSQL server (outcome store)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TemporaryPostgres]:
    """One real PostgreSQL server for the whole test session (lmroute.outcomes.testing.TemporaryPostgres).

    It fails, never skips, when the server binaries are missing or the server does not start: a skipped
    PostgreSQL store suite would pass silently."""
    server = TemporaryPostgres()
    try:
        server.start()
    except TemporaryPostgresError as e:
        pytest.fail(f"the test PostgreSQL server did not start: {e}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: TemporaryPostgres) -> str:
    """libpq URI of the session server's database (shared by every test of the session)."""
    return postgres_server.dsn


@pytest.fixture
def fresh_postgres_db(postgres_server: TemporaryPostgres) -> Iterator[str]:
    """libpq URI of a new, empty database on the session server, dropped (clients disconnected) afterwards."""
    dsn = postgres_server.create_database()
    try:
        yield dsn
    finally:
        postgres_server.drop_database(dsn.rsplit("/", 1)[1])


@pytest.fixture
def fake_servers() -> Iterator[Callable[..., ServerThread]]:
    """fake_servers(**settings) -> a started server over FakeScorer (`lmroute.service.testing.fake_server`);
    every one started is stopped after the test."""
    started: list[ServerThread] = []

    def make(**settings: Any) -> ServerThread:
        srv = fake_server(**settings)
        started.append(srv)
        return srv

    yield make
    for srv in started:
        srv.stop()
