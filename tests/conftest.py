"""Shared fixtures (integration and e2e tiers): the real all-MiniLM-L6-v2 exported to ONNX once per test session.

`encoder_export` gives the `EncoderExport` record (min cosine, fused ops, ...); `exported_encoder_dir`
gives the directory holding `model.onnx` and `tokenizer.json` (max_tokens 256, fp32), for any test that
needs the real encoder. `postgres_server` starts one real PostgreSQL server for the session (the
outcome store's suite runs against it); `fresh_postgres_db` gives each test a new empty database on it.
A SIGTERM to the test run (a CI timeout, `timeout`) ends it as a Ctrl-C does: the session's fixtures are
torn down, its PostgreSQL server stopped (it was left running).

Property tests (Hypothesis) run derandomized by default: the same examples on every run, so CI cannot
flake on a case nobody saw locally. `HYPOTHESIS_PROFILE=explore ./scripts/test.sh tests/unit` searches
with fresh random examples to look for new failures (a test that sets derandomize itself keeps it).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings

from lmroute.export.encoder_export import EncoderExport, export_encoder
from lmroute.outcomes.testing import TemporaryPostgres, TemporaryPostgresError
from lmroute.service.testing import ServerThread, fake_server


def pytest_configure(config: pytest.Config) -> None:
    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # pytest then tears the session's fixtures down

    signal.signal(signal.SIGTERM, interrupt)


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


def _long_texts(seed: int, n: int) -> list[str]:
    """Texts of 50-6,000 characters made of words, numbers, code, punctuation, non-ASCII letters, CJK,
    emoji, control characters, tabs and line breaks, literal special tokens and runs without a space
    (some longer than a word may be), every third with no space at all: the shapes a cut long text can
    meet at its head, tail and seams."""
    rng = np.random.default_rng(seed)
    pieces = [
        "the",
        "Question:",
        "answer",
        "x=3*(y+2);",
        "1234567",
        "naïve",
        "Straße",
        "日本語",
        "🚀",
        "café",
        "[MASK]",
        "[CLS]",
        "a\x07b",
        "\t",
        "\n\n",
        "  ",
        "co-operate",
        "e.g.",
        "'quoted'",
        "#include",
        "z" * 120,
        "A" * 40,
        "\u0301",
        "résumé",
        "Ωmega",
        "€5",
        "...",
    ]
    spaceless = [p for p in pieces if not any(c.isspace() for c in p)]
    out = []
    for i in range(n):
        # every third text has no space at all: its tail starts after punctuation or an ideograph
        kinds, seps_from = (spaceless, [""]) if i % 3 == 2 else (pieces, [" ", " ", " ", "", "\n"])
        target = int(rng.integers(50, 6000))
        words: list[str] = []
        size = 0
        while size < target:
            w = kinds[int(rng.integers(len(kinds)))]
            words.append(w)
            size += len(w) + 1
        seps = rng.choice(seps_from, size=len(words))
        out.append("".join(w + str(sep) for w, sep in zip(words, seps, strict=True)))
    return out


@pytest.fixture(scope="session")
def long_texts() -> Callable[[int, int], list[str]]:
    """`long_texts(seed, n)`: n texts of 50-6,000 characters of mixed kinds (`_long_texts`), for the
    tokenizer's cut-as-you-read path."""
    return _long_texts
