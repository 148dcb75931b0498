"""The outcome store: one suite, run against SQLite (a file in a temporary directory) and a real
PostgreSQL server that the test session starts (tests/conftest.py: postgres_server)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import random
import re
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from lmroute.outcomes.records import (
    UNNAMED_REPORTER,
    Decision,
    Outcome,
    OutcomeError,
    OutcomeKind,
    TargetChange,
    Verdict,
    prompt_sha256,
    reporters_named,
)
from lmroute.outcomes.schema import SCHEMA_VERSION
from lmroute.outcomes.store import (
    NOT_YET_MS,
    PG_LIVENESS,
    CommitUnknown,
    OutcomeStore,
    StoreError,
    failure_cause,
    open_store,
)
from lmroute.outcomes.writer import CHECKPOINT_RETRY_S, TRIM_AFTER_BYTES, StoreWriter, WriterFull, release_free_heap
from lmroute.service.decisions import new_decision_id

DAY_MS = 86_400_000


@pytest.fixture(params=["sqlite", "postgresql"])
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:{tmp_path / 'store' / 'outcomes.sqlite3'}"
    return str(request.getfixturevalue("fresh_postgres_db"))


@pytest.fixture()
def store(dsn: str) -> Iterator[OutcomeStore]:
    s = open_store(dsn)
    yield s
    s.close()


def _decision(text: str, *, at_ms: int | None = None, chosen: str | None = "weak-m", dim: int = 4) -> Decision:
    now = int(time.time() * 1000) if at_ms is None else at_ms
    did = new_decision_id(now)
    return Decision(
        decision_id=did,
        time_ms=now,
        kind="route" if chosen else "score",
        bundle_version="20261203-aaaaaaaa",
        scores={"mf": 0.25},
        strong_model="strong-m",
        weak_model="weak-m",
        prompt_sha256=prompt_sha256(text),
        n_tokens=7,
        encoder_id="0123456789abcdef",
        router="mf" if chosen else "",
        threshold=0.5 if chosen else None,
        chosen_model=chosen,
        propensity=1.0 if chosen else None,
        prompt_text=text,
        prompt_chars=len(text),
        embedding=np.arange(dim, dtype=np.float32) / dim,
    )


def test_a_new_store_is_migrated_and_reopening_keeps_its_rows(dsn: str) -> None:
    s = open_store(dsn)
    assert s.schema_version() == SCHEMA_VERSION
    d = _decision("hello")
    s.write([d])
    s.close()
    again = open_store(dsn)
    assert again.schema_version() == SCHEMA_VERSION
    got = again.decision(d.decision_id)
    assert got == d
    assert got is not None and got.embedding is not None
    np.testing.assert_array_equal(got.embedding, d.embedding)
    again.close()


def test_a_new_sqlite_store_is_readable_by_its_owner_only_and_an_existing_one_keeps_its_mode(tmp_path: Path) -> None:
    """It holds prompts: the file, and the -wal and -shm SQLite makes beside it, are 0600 when the store
    makes them (whatever the umask), while a file the operator made keeps the mode they gave it."""
    path = tmp_path / "new.sqlite3"
    s = open_store(f"sqlite:{path}")
    s.write([_decision("hello")])
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert name.stat().st_mode & 0o777 == 0o600, name
    s.close()
    mine = tmp_path / "mine.sqlite3"
    mine.touch(mode=0o640)
    mine.chmod(0o640)
    open_store(f"sqlite:{mine}").close()
    assert mine.stat().st_mode & 0o777 == 0o640


def test_a_store_migrated_by_a_newer_lmroute_is_refused(store: OutcomeStore, dsn: str) -> None:
    store._exec("UPDATE lmroute_schema SET version = ?", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1} is newer than this lmroute's"):
        open_store(dsn)


_OPEN_AS_CHILD = """
import os, sys
from lmroute.outcomes.store import StoreError, open_store
if os.getuid() == 0:  # root writes any file: open it as nobody, as a server under its own user would
    os.setgid(65534)
    os.setuid(65534)
try:
    store = open_store(sys.argv[1], writable=sys.argv[2] == "yes")
    print("opened", len(store.labeled_prompts()))
except StoreError as exc:
    print("refused", exc)
"""


def test_a_sqlite_store_this_process_cannot_write_is_refused_at_open_and_read_by_readers() -> None:
    """A store left by another user (its file, -wal and -shm read-only to us): SQLite opened it read-only
    without a word, the server reported SERVING, and every decision and Feedback failed after."""
    folder = Path(tempfile.mkdtemp(prefix="lmroute-ro-"))
    try:
        folder.chmod(0o755)
        path = folder / "outcomes.sqlite3"
        keeper = open_store(f"sqlite:{path}")  # open: its -wal and -shm stay beside it, as a killed server's do
        for name in folder.iterdir():
            name.chmod(0o444)
        folder.chmod(0o555)
        out = {}
        for writable in ("yes", "no"):
            done = subprocess.run(
                [sys.executable, "-c", _OPEN_AS_CHILD, f"sqlite:{path}", writable],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert done.returncode == 0, done.stderr
            out[writable] = done.stdout.strip()
        assert out["yes"].startswith(f"refused store 'sqlite:{path}': cannot write {path}"), out
        assert "readonly" in out["yes"], out
        assert out["no"] == "opened 0", out  # a command that only reads still reads it
        keeper.close()
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_a_cleanly_closed_sqlite_store_in_a_read_only_folder_is_read_by_the_commands_that_only_read() -> None:
    """A store closed cleanly (no -wal, no -shm beside it) in a folder this user cannot write (a backup,
    another user's store): a reader of a WAL file needs a -shm file, which SQLite cannot make there, and
    `PRAGMA journal_mode=WAL` wrote the header: "attempt to write a readonly database". It is read as it is."""
    folder = Path(tempfile.mkdtemp(prefix="lmroute-ro-"))
    try:
        folder.chmod(0o755)
        path = folder / "outcomes.sqlite3"
        made = open_store(f"sqlite:{path}")
        made.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="judged before the backup")])
        made.close()
        assert sorted(p.name for p in folder.iterdir()) == ["outcomes.sqlite3"]
        path.chmod(0o444)
        folder.chmod(0o555)
        before = (path.stat().st_mtime_ns, path.read_bytes())
        done = subprocess.run(
            [sys.executable, "-c", _OPEN_AS_CHILD, f"sqlite:{path}", "no"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "opened 1"
        assert (path.stat().st_mtime_ns, path.read_bytes()) == before
        assert sorted(p.name for p in folder.iterdir()) == ["outcomes.sqlite3"]
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)


def test_a_store_opened_only_to_read_is_neither_written_nor_migrated(
    dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands that only read a store (adaptations, to-judge, copy-store --from) migrated an older
    one in place, which broke an older server still writing to it: now they refuse it, naming what
    migrates it, and leave it at its version; a store at this version is read without writing it."""
    from lmroute.export.cli import main

    _store_at_version(dsn, 4).close()
    copy = tmp_path / "copy.sqlite3"
    for cmd in (["adaptations", "--store", dsn], ["copy-store", "--from", dsn, "--to", f"sqlite:{copy}"]):
        assert main(cmd) == 1, cmd
        err = capsys.readouterr().err
        assert (
            f"schema version 4, older than this lmroute's ({SCHEMA_VERSION}); this command only reads a store and "
            "leaves it as it is: open it with lmroute-serve or lmroute-export import-outcomes of this lmroute, "
            "which migrate it"
        ) in err, err
    assert not copy.exists()  # the source was refused before the target was made
    with pytest.raises(StoreError, match=r"schema version 4, older than"):
        open_store(dsn, must_exist=True, writable=False)
    check = open_store(dsn, writable=True)  # the store still at 4 until a writer opens it: then migrated
    assert check.schema_version() == SCHEMA_VERSION
    check.close()
    reader = open_store(dsn, must_exist=True, writable=False)
    assert reader.adaptations() == [] and reader.schema_version() == SCHEMA_VERSION
    reader.close()
    if dsn.startswith("sqlite:"):
        path = Path(dsn.removeprefix("sqlite:"))
        before = (path.stat().st_mtime_ns, path.read_bytes())
        open_store(dsn, must_exist=True, writable=False).close()
        assert (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_a_store_opened_only_to_read_waits_for_no_writer(tmp_path: Path) -> None:
    """Opening a store to read took SQLite's write lock (migrate's BEGIN IMMEDIATE, with nothing to
    migrate), so an export command waited behind the serving writer's transaction, up to 30 s."""
    path = tmp_path / "outcomes.sqlite3"
    open_store(f"sqlite:{path}").close()
    blocker = _held_lock(path)
    try:
        t0 = time.monotonic()
        reader = open_store(f"sqlite:{path}", must_exist=True, writable=False)
        assert reader.counts() == {"decisions": 0, "outcomes": 0}
        reader.close()
        assert time.monotonic() - t0 < 5
    finally:
        blocker.rollback()
        blocker.close()


def test_a_sqlite_store_another_process_holds_locked_is_refused_saying_so(tmp_path: Path) -> None:
    """A server started while another holds the store's lock was refused after 30 s as if it could not
    write the file ("cannot write ... (or its -wal / -shm files, or its folder): database is locked")."""
    path = tmp_path / "outcomes.sqlite3"
    open_store(f"sqlite:{path}").close()
    blocker = _held_lock(path)
    try:
        with pytest.raises(StoreError) as locked:
            open_store(f"sqlite:{path}", busy_timeout_s=0.2)
    finally:
        blocker.rollback()
        blocker.close()
    assert str(locked.value).startswith(
        f"store 'sqlite:{path}': cannot write {path}: another process or transaction holds its lock (waited 0.2 s: "
        "database is locked); stop what holds it"
    ), locked.value
    assert "-wal / -shm" not in str(locked.value)
    open_store(f"sqlite:{path}").close()


def test_a_statement_that_fails_is_a_store_error_naming_the_store(
    store: OutcomeStore, dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database error after the store opened (a table gone) is a StoreError naming the store, which the
    commands print as one line."""
    from lmroute.export.cli import main

    store._exec("ALTER TABLE adaptations RENAME TO adaptations_away")
    with pytest.raises(StoreError, match=rf"^store {re.escape(store.name)}: \w+: .*adaptations"):
        store.adaptations()
    assert main(["adaptations", "--store", dsn]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"lmroute-export adaptations: store {store.name}: ") and "Traceback" not in err


def test_outcomes_by_decision_stored_duplicate_conflict_not_found_not_yet(store: OutcomeStore) -> None:
    d = _decision("what is 2 + 2?")
    score_d = _decision("scored only", chosen=None)
    now = int(time.time() * 1000)
    old_unknown = new_decision_id(now - 10 * NOT_YET_MS)
    fresh_unknown = new_decision_id(now)
    ahead_unknown = new_decision_id(now + NOT_YET_MS // 2)  # another replica's clock ahead
    future_unknown = "f" * 32  # made in the year 10889: never
    verdicts = store.write(
        [d, score_d],
        [
            Outcome(OutcomeKind.SINGLE, "", 0.75, decision_id=d.decision_id, source="thumbs"),
            Outcome(OutcomeKind.SINGLE, "weak-m", 0.75, decision_id=d.decision_id, source="thumbs"),
            Outcome(OutcomeKind.SINGLE, "", 0.5, decision_id=d.decision_id, source="thumbs"),
            Outcome(OutcomeKind.SINGLE, "", 0.5, decision_id=d.decision_id, source="judge"),
            Outcome(OutcomeKind.SINGLE, "", 1.0, decision_id=old_unknown),
            Outcome(OutcomeKind.SINGLE, "", 1.0, decision_id=fresh_unknown),
            Outcome(OutcomeKind.SINGLE, "", 1.0, decision_id=ahead_unknown),
            Outcome(OutcomeKind.SINGLE, "", 1.0, decision_id=future_unknown),
            Outcome(OutcomeKind.SINGLE, "", 1.0, decision_id=score_d.decision_id),
        ],
        now_ms=now,
    )
    assert verdicts == [
        Verdict.STORED,  # the model is the decision's chosen one
        Verdict.DUPLICATE,  # naming it is the same outcome
        Verdict.CONFLICT,  # another value for the same decision, kind, model and source
        Verdict.STORED,  # another source is another outcome
        Verdict.NOT_FOUND,
        Verdict.NOT_YET,
        Verdict.NOT_YET,
        Verdict.NOT_FOUND,  # not "retry shortly" forever
        Verdict.NO_MODEL,  # a Score decision chose no model
    ]
    assert store.counts() == {"decisions": 2, "outcomes": 2}
    [row] = store.labeled_prompts()
    assert row.decision_id == d.decision_id and row.chosen_model == "weak-m" and row.propensity == 1.0
    assert row.qualities == {"weak-m": pytest.approx(0.625)}  # two sources, averaged
    assert row.prompt_text == "what is 2 + 2?" and row.encoder_id == "0123456789abcdef"
    assert row.embedding is not None and row.embedding.shape == (4,)


def test_a_call_bigger_than_one_statement_gets_the_verdicts_of_one_row_at_a_time(store: OutcomeStore) -> None:
    """Rows go in a few statements, not one per row; the verdicts are those of rows stored in order: a
    key stored before, or earlier in the same call, is a DUPLICATE with the same quality and a CONFLICT
    with another, across the statements' bounds (1,000 rows a statement at most)."""
    decisions = [_decision(f"decided {i}") for i in range(2_000)]
    store.write(decisions[:10])
    before = store.write(
        [], [Outcome(OutcomeKind.SINGLE, "m", 0.5, prompt_text=f"prompt {i}") for i in range(0, 6_000, 1_000)]
    )
    assert before == [Verdict.STORED] * 6
    outcomes = [
        Outcome(OutcomeKind.SINGLE, "m", 1.0 if i % 7 else 0.5, prompt_text=f"prompt {i}") for i in range(6_000)
    ]
    outcomes += [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=f"prompt {i}") for i in (1, 5_998, 0, 3_000)]
    outcomes += [Outcome(OutcomeKind.SINGLE, "", 0.25, decision_id=d.decision_id) for d in decisions[::100]]
    statements: list[str] = []
    if store.dialect == "sqlite":  # SQLite says what it runs
        store._conn.set_trace_callback(statements.append)
    verdicts = store.write(decisions, outcomes)
    if statements:  # a statement per row would be 8,024
        assert len(statements) <= 40, statements[:3]
    stored_before = {f"prompt {i}" for i in range(0, 6_000, 1_000)}
    expected = [
        (Verdict.DUPLICATE if o.quality == 0.5 else Verdict.CONFLICT)
        if o.prompt_text in stored_before
        else Verdict.STORED
        for o in outcomes[:6_000]
    ]
    expected += [Verdict.DUPLICATE, Verdict.DUPLICATE, Verdict.CONFLICT, Verdict.CONFLICT]
    expected += [Verdict.STORED] * 20
    assert verdicts == expected
    assert store.counts() == {"decisions": 2_000, "outcomes": 6_000 + 20}
    again = store.write(decisions[:3], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="prompt 1")])
    assert again == [Verdict.DUPLICATE] and store.counts()["decisions"] == 2_000


def test_a_key_another_transaction_stores_meanwhile_gets_its_verdict(fresh_postgres_db: str) -> None:
    """Replicas share a PostgreSQL store: a key another transaction stores after this call looked its
    keys up, and commits while this call's insert waits on it, is not counted STORED (the insert skips
    it): the call's rows go in again one at a time."""
    import psycopg

    store = open_store(fresh_postgres_db)
    sha = prompt_sha256("raced")
    other = psycopg.connect(fresh_postgres_db)  # a transaction open until commit()
    other.execute(
        "INSERT INTO outcomes (target, prompt_sha256, kind, model, quality, source, reporter, observed_ms, "
        "received_ms) VALUES (%s, %s, 'single', 'm', 0.5, 'judge', '', 1, 1)",
        ("p:" + sha, sha),
    )
    result: list[list[Verdict]] = []
    writing = threading.Thread(
        target=lambda: result.append(
            store.write(
                [],
                [
                    Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="raced", source="judge"),
                    Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="not raced", source="judge"),
                ],
            )
        )
    )
    writing.start()
    with psycopg.connect(fresh_postgres_db, autocommit=True) as watch:
        deadline = time.monotonic() + 10
        while not watch.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ).fetchone():
            assert time.monotonic() < deadline, "the insert never waited on the other transaction"
            time.sleep(0.02)
    other.commit()
    other.close()
    writing.join(10)
    assert result == [[Verdict.CONFLICT, Verdict.STORED]]
    assert store.counts()["outcomes"] == 2
    [row] = [r for r in store.labeled_prompts() if r.prompt_sha256 == sha]
    assert row.qualities == {"m": 0.5}
    store.close()


def test_writers_on_one_store_at_once_store_each_key_once(dsn: str) -> None:
    """Four connections (replicas) write overlapping calls at once: each key is STORED by exactly one
    call, with the quality the store keeps; every other report of it is DUPLICATE with that quality and
    CONFLICT with another."""
    rng = random.Random(7)
    calls = [
        [
            Outcome(OutcomeKind.SINGLE, "m", float(rng.randint(0, 1)), prompt_text=f"p{rng.randrange(150)}")
            for _ in range(40)
        ]
        for _ in range(48)
    ]
    stores = [open_store(dsn) for _ in range(4)]
    results: dict[int, list[Verdict]] = {}

    def run(k: int) -> None:
        for i in range(k, len(calls), len(stores)):
            results[i] = stores[k].write([], calls[i])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == len(calls)
    kept = {r.prompt_text: r.qualities["m"] for r in stores[0].labeled_prompts()}
    stored: collections.Counter[str] = collections.Counter()
    for i, call in enumerate(calls):
        for o, v in zip(call, results[i], strict=True):
            assert o.prompt_text is not None
            if v is Verdict.STORED:
                stored[o.prompt_text] += 1
                assert o.quality == kept[o.prompt_text]
            else:
                assert v is (Verdict.DUPLICATE if o.quality == kept[o.prompt_text] else Verdict.CONFLICT)
    assert set(stored.values()) == {1} and set(stored) == set(kept)
    for s in stores:
        s.close()


def test_what_is_read_back_is_what_was_written_to_the_last_bit(store: OutcomeStore) -> None:
    """Reads come in one value on SQLite (JSON: its numbers keep 15 digits, so REAL columns come as text
    of 17, BLOBs as hex): thresholds, propensities, qualities and embeddings read back bit for bit, newest
    decision first."""
    now = int(time.time() * 1000)
    made = [
        dataclasses.replace(
            _decision(f"exact {i}", at_ms=now + i, dim=256),
            threshold=1 / 3 + i,
            propensity=0.1 + 0.2,
            embedding=np.random.default_rng(i).standard_normal(256).astype(np.float32) * 1e-30,
        )
        for i in range(3)
    ]
    store.write(made, [Outcome(OutcomeKind.SINGLE, "", 1 / 3, decision_id=made[0].decision_id)])
    read = store.recent_decisions()
    assert [d.decision_id for d in read] == [d.decision_id for d in reversed(made)]
    for d in read:
        want = next(m for m in made if m.decision_id == d.decision_id)
        assert d.threshold == want.threshold and d.propensity == want.propensity == 0.1 + 0.2
        assert d.embedding is not None and want.embedding is not None
        assert d.embedding.tobytes() == want.embedding.tobytes()
    [row] = store.labeled_prompts()
    assert row.qualities == {"weak-m": 1 / 3} and row.threshold == 1 / 3


def test_reads_of_many_pages_come_whole_and_newest_first(store: OutcomeStore) -> None:
    """Reads go a page (500 rows) at a time: 1,234 decisions, many of them made in the same millisecond,
    come back whole and newest first (on SQLite in the order written within a millisecond), a limit cuts
    within a millisecond, and 1,300 outcomes come back whole."""
    now = int(time.time() * 1000)
    made = [_decision(f"paged {i}", at_ms=now + i // 7) for i in range(1_234)]  # 7 to a millisecond
    for i in range(0, len(made), 100):
        store.write(made[i : i + 100])
    read = store.recent_decisions()
    assert len(read) == 1_234 and len({d.decision_id for d in read}) == 1_234
    assert [d.time_ms for d in read] == sorted((d.time_ms for d in made), reverse=True)
    if store.dialect == "sqlite":
        assert [d.decision_id for d in read] == [d.decision_id for d in reversed(made)]
    cut = store.recent_decisions(limit=503)
    assert [d.decision_id for d in cut] == [d.decision_id for d in read[:503]]
    store.write([], [Outcome(OutcomeKind.SINGLE, "m", i / 1_300, prompt_text=f"judged {i}") for i in range(1_300)])
    labeled = store.labeled_prompts()
    assert len(labeled) == 1_300 and {r.qualities["m"] for r in labeled} == {i / 1_300 for i in range(1_300)}


def test_an_outcome_by_prompt_takes_the_latest_decision_on_it(store: OutcomeStore) -> None:
    """An outcome by prompt borrows the embedding of the latest decision on the same prompt, found in SQL
    among however many there are (a prompt routed 600 times)."""
    now = int(time.time() * 1000)
    made = [
        dataclasses.replace(_decision("asked often", at_ms=now - 600 + i), embedding=np.full(4, i, dtype=np.float32))
        for i in range(600)
    ]
    store.write(made[::-1])  # written newest first: the latest is not the last written
    store.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="asked often")])
    [row] = store.labeled_prompts()
    assert row.embedding is not None and row.embedding.tolist() == [599.0] * 4


def test_a_page_longer_than_sqlite_holds_in_one_value_is_read_row_by_row(tmp_path: Path) -> None:
    """A page is read as one value on SQLite; a page longer than a value may be (1 GB by default, 200,000
    bytes here) is read row by row instead of failing."""
    store = open_store(f"sqlite:{tmp_path / 'outcomes.sqlite3'}")
    store._conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 200_000)
    long = [_decision("x" * 50_000 + str(i)) for i in range(8)]
    store.write(long)
    read = store.recent_decisions()
    assert sorted(d.prompt_text or "" for d in read) == sorted(d.prompt_text or "" for d in long)
    store.close()


def test_paired_by_prompt_borrows_the_embedding_of_a_decision_on_the_same_prompt(store: OutcomeStore) -> None:
    d = _decision("translate 'cat' to French")
    store.write([d])
    verdicts = store.write(
        [],
        [
            Outcome(OutcomeKind.PAIRED, "strong-m", 1.0, prompt_text="translate 'cat' to French", source="judge"),
            Outcome(OutcomeKind.PAIRED, "weak-m", 0.0, prompt_text="translate 'cat' to French", source="judge"),
            Outcome(OutcomeKind.PAIRED, "strong-m", 1.0, prompt_text="never decided", source="judge"),
        ],
    )
    assert verdicts == [Verdict.STORED] * 3
    rows = {r.prompt_sha256: r for r in store.labeled_prompts()}
    seen = rows[d.prompt_sha256]
    assert seen.qualities == {"strong-m": 1.0, "weak-m": 0.0}
    assert seen.kinds == frozenset({OutcomeKind.PAIRED})
    assert seen.embedding is not None and seen.decision_id is None and seen.chosen_model is None
    alone = rows[prompt_sha256("never decided")]
    assert alone.embedding is None and alone.prompt_text == "never decided"


def test_text_holding_a_nul_character_is_stored_on_both_backends(store: OutcomeStore) -> None:
    """PostgreSQL's text holds no NUL: a prompt, source or model holding one failed its write (and the
    writer retried it before every later write, so the store took nothing more). It is stored with
    U+FFFD there, as it is on SQLite; its hash is of the text as sent."""
    text = "route with nul \x00 inside"
    d = _decision(text)
    store.write([d])
    verdicts = store.write(
        [],
        [
            Outcome(OutcomeKind.PAIRED, "strong-m", 1.0, prompt_text=text, source="judge\x00x"),
            Outcome(OutcomeKind.PAIRED, "weak-m", 0.0, prompt_text=text, source="judge\x00x"),
        ],
    )
    assert verdicts == [Verdict.STORED] * 2
    [row] = store.labeled_prompts()
    assert row.prompt_sha256 == prompt_sha256(text) and row.qualities == {"strong-m": 1.0, "weak-m": 0.0}
    stored = store.decision(d.decision_id)
    assert stored is not None and stored.prompt_text in (text, text.replace("\x00", "\ufffd"))


def test_the_privacy_switch_keeps_no_prompt_text(dsn: str) -> None:
    s = open_store(dsn, store_prompts=False)
    d = _decision("my secret medical question")
    s.write([d], [Outcome(OutcomeKind.SINGLE, "weak-m", 0.5, prompt_text="another secret prompt")])
    texts = s._exec("SELECT prompt_text FROM decisions UNION ALL SELECT prompt_text FROM outcomes").fetchall()
    assert [t[0] for t in texts] == [None, None]
    got = s.decision(d.decision_id)
    assert got is not None and got.prompt_sha256 == prompt_sha256("my secret medical question")
    assert got.embedding is not None
    s.close()


def test_retention_prunes_what_is_older(store: OutcomeStore) -> None:
    now = int(time.time() * 1000)
    old, new = _decision("old", at_ms=now - 40 * DAY_MS), _decision("new", at_ms=now)
    store.write([old, new], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="x")], now_ms=now - 40 * DAY_MS)
    store.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="y")], now_ms=now)
    assert store.prune(now - 30 * DAY_MS) == (1, 1)
    assert store.decision(old.decision_id) is None and store.decision(new.decision_id) is not None
    assert store.counts() == {"decisions": 1, "outcomes": 1}


def test_what_retention_deletes_leaves_no_prompt_text_in_the_sqlite_file(tmp_path: Path) -> None:
    """SQLite keeps deleted rows' bytes in its free pages unless secure_delete is on (it is off in many
    builds): the store turns it on, so a pruned prompt is gone from the database file, not only from its
    tables (the log is emptied here; an expired row's log frames are long overwritten in a server)."""
    path = tmp_path / "outcomes.sqlite3"
    s = open_store(f"sqlite:{path}")
    now = int(time.time() * 1000)
    s.write([_decision(f"expired secret question {i:04d}", at_ms=now - 40 * DAY_MS, dim=64) for i in range(500)], [])
    s.write([_decision("a recent question", at_ms=now)], [])
    assert s.prune(now - 30 * DAY_MS) == (500, 0)
    s._exec("PRAGMA wal_checkpoint(TRUNCATE)")
    s.close()
    data = path.read_bytes()
    assert b"a recent question" in data and b"expired secret question" not in data


def test_the_writers_prune_leaves_no_prompt_text_in_the_sqlite_file_while_it_serves(tmp_path: Path) -> None:
    """The serving writer's retention prune copies the log back into the database when it has deleted
    rows: the pruned text was in the file's pages until some later checkpoint (hours on a quiet server)."""
    path = tmp_path / "outcomes.sqlite3"
    seed = open_store(f"sqlite:{path}")
    now = int(time.time() * 1000)
    seed.write([_decision(f"expired secret question {i:04d}", at_ms=now - 40 * DAY_MS) for i in range(50)], [])
    seed.close()
    writer = StoreWriter(lambda: open_store(f"sqlite:{path}"), retention_ms=30 * DAY_MS)
    writer.start()
    try:
        writer.record([_decision("a recent question")])  # wakes the writer: it writes, then prunes
        deadline = time.monotonic() + 20
        while writer.stats.pruned_decisions < 50:
            assert time.monotonic() < deadline, "not pruned"
            time.sleep(0.02)
        deadline = time.monotonic() + 5  # the checkpoint follows the prune's last batch
        while b"expired secret question" in b"".join(p.read_bytes() for p in tmp_path.glob("outcomes.sqlite3*")):
            assert time.monotonic() < deadline, "the pruned text is still in the database file"
            time.sleep(0.02)
    finally:
        writer.close()


def test_the_writers_log_copy_after_a_prune_waits_for_no_reader(tmp_path: Path) -> None:
    """Another process's read transaction (an export command, a backup) open through a prune: the
    writer's checkpoint after it waited for that reader, holding every Feedback acknowledgment behind it
    up to the 30 s busy timeout. It no longer waits: it tries again between rounds, and once the reader
    is done the log is emptied (the pruned text gone from the file and its log)."""
    path = tmp_path / "outcomes.sqlite3"
    seed = open_store(f"sqlite:{path}")
    now = int(time.time() * 1000)
    seed.write([_decision(f"expired secret question {i:04d}", at_ms=now - 40 * DAY_MS) for i in range(50)], [])
    seed.close()
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM decisions").fetchone() == (50,)  # its snapshot holds them
    writer = StoreWriter(lambda: open_store(f"sqlite:{path}"), retention_ms=30 * DAY_MS)
    writer.start()  # a prune is due at once
    try:
        deadline = time.monotonic() + 20
        while writer.stats.pruned_decisions < 50:
            assert time.monotonic() < deadline, "not pruned"
            time.sleep(0.02)
        t0 = time.monotonic()
        ack = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="right after the prune")])
        assert ack.result(30) == [Verdict.STORED]
        assert time.monotonic() - t0 < 5, "the acknowledgment waited for the reader"
        assert reader.execute("SELECT COUNT(*) FROM decisions").fetchone() == (50,)  # still reading
        reader.execute("COMMIT")
        reader.close()
        deadline = time.monotonic() + 10 * CHECKPOINT_RETRY_S
        while (
            (wal := Path(f"{path}-wal")).exists()
            and wal.stat().st_size > 0
            or b"expired secret question" in (path.read_bytes())
        ):
            assert time.monotonic() < deadline, "the log was not emptied after the reader ended"
            time.sleep(0.02)
    finally:
        writer.close()
    assert b"expired secret question" not in b"".join(p.read_bytes() for p in tmp_path.glob("outcomes.sqlite3*"))


def test_a_limited_prune_deletes_the_oldest_first(store: OutcomeStore) -> None:
    now = int(time.time() * 1000)
    old = [_decision(f"old {i}", at_ms=now - (40 + i) * DAY_MS) for i in range(5)]
    store.write([*old, _decision("new", at_ms=now)], [])
    for i in range(3):
        outcome = Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=f"old {i}")
        store.write([], [outcome], now_ms=now - (40 + i) * DAY_MS)
    store.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="new")], now_ms=now)
    cutoff = now - 30 * DAY_MS
    assert store.prune(cutoff, limit=2) == (2, 2)
    assert [store.decision(d.decision_id) is None for d in old] == [False, False, False, True, True]  # oldest first
    assert [store.prune(cutoff, limit=2) for _ in range(3)] == [(2, 1), (1, 0), (0, 0)]
    assert store.counts() == {"decisions": 1, "outcomes": 1}


def test_newest_cutoff_keeps_the_newest_decisions(store: OutcomeStore) -> None:
    now = int(time.time() * 1000)
    store.write([_decision(f"q {i}", at_ms=now - 1000 * i) for i in range(10)], [])  # q 0 newest
    assert store.newest_cutoff(11) is None and store.newest_cutoff(10) == now - 9000
    assert store.newest_cutoff(4) == now - 3000
    assert store.prune(now - 3000) == (6, 0)
    assert sorted(d.prompt_text or "" for d in store.recent_decisions(limit=100)) == ["q 0", "q 1", "q 2", "q 3"]
    with pytest.raises(ValueError, match=r"keep must be >= 1"):
        store.newest_cutoff(0)


def test_the_writer_keeps_at_most_max_decisions(dsn: str) -> None:
    """With max_decisions the serving writer prunes, every prune_interval_s, down to the newest decisions
    (and the outcomes received since the oldest of them), while it goes on writing."""
    now = int(time.time() * 1000)
    seed = open_store(dsn)
    seed.write([_decision(f"old {i}", at_ms=now - 10_000 + i) for i in range(500)], [])
    seed.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="old 0")], now_ms=now - 10_000)
    seed.close()
    writer = StoreWriter(lambda: open_store(dsn), max_decisions=120, prune_interval_s=1.0, prune_batch=50)
    writer.start()  # a prune is due at once
    try:
        writer.record([_decision(f"new {i}", at_ms=now + i) for i in range(100)])
        deadline = time.monotonic() + 20
        while writer.stats.pruned_decisions < 480:  # 600 written, 120 kept
            assert time.monotonic() < deadline, f"pruned {writer.stats.pruned_decisions}"
            time.sleep(0.02)
    finally:
        writer.close()
    check = open_store(dsn)
    try:
        kept = check.recent_decisions(limit=1000)
        assert len(kept) == 120 and check.counts()["outcomes"] == 0
        assert {d.prompt_text for d in kept} == {f"new {i}" for i in range(100)} | {f"old {i}" for i in range(480, 500)}
    finally:
        check.close()


def test_the_decision_cap_waits_when_the_clock_was_set_back(dsn: str) -> None:
    """Decisions stamped an hour ahead of this clock (made before it was set back): the cap's cutoff was
    theirs, and every decision made since, stamped earlier, was deleted with its acknowledged outcomes."""
    now = int(time.time() * 1000)
    seed = open_store(dsn)
    seed.write([_decision(f"before {i}", at_ms=now + 3_600_000 + i) for i in range(200)], [])
    seed.close()
    writer = StoreWriter(lambda: open_store(dsn), max_decisions=100, prune_interval_s=0.2, prune_batch=50)
    writer.start()
    try:
        after = [_decision(f"after {i}") for i in range(50)]
        writer.record(after)
        acked = writer.submit([Outcome(OutcomeKind.SINGLE, "weak-m", 1.0, decision_id=d.decision_id) for d in after])
        assert [v.name for v in acked.result(20)] == ["STORED"] * 50
        time.sleep(1.0)  # five prune rounds
        assert writer.stats.pruned_decisions == 0 and writer.stats.pruned_outcomes == 0
    finally:
        writer.close()
    check = open_store(dsn)
    try:
        assert check.counts() == {"decisions": 250, "outcomes": 50}
    finally:
        check.close()


def test_erase_by_prompt_deletes_its_decisions_and_every_outcome_of_it(store: OutcomeStore) -> None:
    a, b, other = _decision("my secret"), _decision("my secret"), _decision("something else")
    store.write(
        [a, b, other],
        [
            Outcome(OutcomeKind.SINGLE, "weak-m", 0.5, decision_id=a.decision_id),
            Outcome(OutcomeKind.PAIRED, "strong-m", 1.0, prompt_text="my secret", source="judge", reporter="acme"),
            Outcome(OutcomeKind.SINGLE, "weak-m", 0.25, decision_id=other.decision_id),
        ],
    )
    sha = prompt_sha256("my secret")
    assert store.erase(prompt_sha256s=[sha], dry_run=True)[:2] == (2, 2)
    assert store.counts() == {"decisions": 3, "outcomes": 3}  # a dry run deletes nothing
    assert store.erase(prompt_sha256s=[sha])[:2] == (2, 2)
    assert store.decision(a.decision_id) is None and store.decision(b.decision_id) is None
    assert [r.prompt_sha256 for r in store.labeled_prompts()] == [other.prompt_sha256]
    assert store.erase(prompt_sha256s=[sha])[:2] == (0, 0)
    assert store.counts() == {"decisions": 1, "outcomes": 1}


def test_an_erased_prompt_is_gone_from_the_sqlite_file_and_its_log(tmp_path: Path) -> None:
    """A prompt erased minutes after it was written is still in SQLite's write-ahead log (the frames that
    wrote it), beside the serving writer's open connection: erase empties the log after deleting."""
    path = tmp_path / "outcomes.sqlite3"
    serving = open_store(f"sqlite:{path}")  # the server's writer, left open
    serving.write([_decision(f"ordinary question {i}") for i in range(50)] + [_decision("MY-SECRET-PASTED-KEY")], [])
    other = open_store(f"sqlite:{path}", must_exist=True)  # lmroute-export erase, beside it
    erased = other.erase(prompt_sha256s=[prompt_sha256("MY-SECRET-PASTED-KEY")])
    other.close()
    assert erased == (1, 0, True)
    for f in (path, tmp_path / "outcomes.sqlite3-wal"):
        if f.exists():
            assert b"MY-SECRET-PASTED-KEY" not in f.read_bytes(), f.name
    assert serving.counts()["decisions"] == 50
    serving.close()


def test_erase_by_tenant_deletes_its_calls_decisions_and_what_it_reported(store: OutcomeStore) -> None:
    mine = [dataclasses.replace(_decision(f"acme asks {i}"), caller="acme") for i in range(5)]
    theirs = dataclasses.replace(_decision("beta asks"), caller="beta")
    unnamed = _decision("nobody asks")
    store.write([*mine, theirs, unnamed], [])
    store.write(
        [],
        [
            *(Outcome(OutcomeKind.SINGLE, "weak-m", 1.0, decision_id=d.decision_id, source="judge") for d in mine),
            Outcome(OutcomeKind.SINGLE, "weak-m", 0.0, decision_id=theirs.decision_id, reporter="acme"),
            Outcome(OutcomeKind.SINGLE, "weak-m", 0.5, decision_id=theirs.decision_id, reporter="beta"),
            Outcome(OutcomeKind.SINGLE, "weak-m", 0.5, prompt_text="acme asks 0", reporter="beta"),
        ],
    )
    assert store.unmatched(
        callers=["acme", "beta", "nobody"], prompt_sha256s=[prompt_sha256("acme asks 1"), "0" * 64]
    ) == {
        "decision_ids": [],
        "prompt_sha256s": ["0" * 64],
        "callers": ["nobody"],
    }
    assert store.erase(callers=["acme"], dry_run=True)[:2] == (5, 6)
    assert store.erase(callers=["acme"], batch=2)[:2] == (5, 6)  # three batches of decisions
    assert all(store.decision(d.decision_id) is None for d in mine)
    left = {(r.decision_id, r.qualities["weak-m"]) for r in store.labeled_prompts()}
    assert left == {(theirs.decision_id, 0.5), (None, 0.5)}  # beta's own outcomes stay
    assert store.erase(callers=[""])[:2] == (1, 0)  # calls naming no tenant
    assert store.counts() == {"decisions": 1, "outcomes": 2}


def test_erase_by_decision_id_and_its_bounds(store: OutcomeStore) -> None:
    d, kept = _decision("one decision"), _decision("one decision")
    store.write([d, kept], [Outcome(OutcomeKind.SINGLE, "weak-m", 1.0, decision_id=d.decision_id)])
    assert store.erase()[:2] == (0, 0)
    assert store.erase(decision_ids=[d.decision_id, "0" * 32])[:2] == (1, 1)
    assert store.decision(kept.decision_id) is not None
    with pytest.raises(ValueError, match="at most 10000"):
        store.erase(decision_ids=[f"{i:032x}" for i in range(10_001)])


def test_the_erase_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmroute.export.cli import main

    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    s = open_store(dsn)
    texts = ["first secret\nover two lines", "second secret", "kept"]
    decisions = [_decision(t) for t in texts]
    s.write(decisions, [Outcome(OutcomeKind.SINGLE, "weak-m", 1.0, decision_id=d.decision_id) for d in decisions])
    s.close()
    (tmp_path / "erase.jsonl").write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts[:1]))
    cmd = ["erase", "--store", dsn, "--prompts-file", str(tmp_path / "erase.jsonl")]
    cmd += ["--prompt-sha256", prompt_sha256("second secret").upper()]
    nothing = {"decision_ids": [], "prompt_sha256s": [], "callers": []}
    assert main([*cmd, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "decisions": 2,
        "outcomes": 2,
        "dry_run": True,
        "found_nothing_for": nothing,
    }
    assert main(cmd) == 0
    assert json.loads(capsys.readouterr().out) == {
        "decisions": 2,
        "outcomes": 2,
        "dry_run": False,
        "found_nothing_for": nothing,
    }
    # what the store does not hold is named back: an erasure request's unmatched names are not silent
    named = [*cmd, "--decision-id", "0" * 32, "--callers", "acme", "--dry-run"]
    assert main(named) == 0  # the two prompts are gone by now; no tenant acme; no such decision
    assert json.loads(capsys.readouterr().out)["found_nothing_for"] == {
        "decision_ids": ["0" * 32],
        "prompt_sha256s": sorted([prompt_sha256(texts[0]), prompt_sha256("second secret")]),
        "callers": ["acme"],
    }
    s = open_store(dsn)
    assert [r.prompt_sha256 for r in s.labeled_prompts()] == [prompt_sha256("kept")]
    s.close()
    for bad, says in (
        (["--prompt-sha256", "abc"], "--prompt-sha256: 'abc' is not 64 hex digits"),
        (["--decision-id", "NOTHEX"], "--decision-id: 'NOTHEX' is not a decision id (32 lowercase hex digits)"),
        (["--callers", "no such name!"], "callers"),
        ([], "name what to erase"),
    ):
        assert main(["erase", "--store", dsn, *bad]) == 2
        assert says in capsys.readouterr().err


def test_commands_that_read_a_store_refuse_a_missing_sqlite_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped path is an error, not an empty store made there and read as one (exit 0, no rows)."""
    from lmroute.export.cli import main

    missing = tmp_path / "typo" / "outcomes.sqlite3"
    dsn = f"sqlite:{missing}"
    for cmd in (
        ["copy-store", "--from", dsn, "--to", f"sqlite:{tmp_path / 'copy.sqlite3'}"],
        ["adaptations", "--store", dsn],
        ["to-judge", "--bundle", str(tmp_path), "--store", dsn, "--budget", "3"],
        ["erase", "--store", dsn, "--callers", "acme"],
        ["adapt", "--bundle", str(tmp_path / "bundle"), "--store", dsn, "--out", str(tmp_path / "out")],
    ):
        assert main(cmd) == 1, cmd
        assert f"{missing} does not exist (this command reads a store; it makes none)" in capsys.readouterr().err
    assert not missing.exists() and not missing.parent.exists() and not (tmp_path / "copy.sqlite3").exists()


def test_since_ms_out_of_range_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A --since-ms past any time a report can say (or negative) is refused by the parser (exit 2), before
    the store is read, instead of an OverflowError traceback."""
    from lmroute.export.cli import main

    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    for value in ("99999999999999999999", "-1", "253402300800000"):
        for cmd in (
            ["to-judge", "--bundle", str(tmp_path), "--store", dsn, "--budget", "3"],
            ["adapt", "--bundle", str(tmp_path / "bundle"), "--store", dsn, "--out", str(tmp_path / "out")],
        ):
            with pytest.raises(SystemExit) as exit_:
                main([*cmd, "--since-ms", value])
            assert exit_.value.code == 2, (cmd, value)
            said = f"--since-ms: {value} is not a time in ms since the epoch (0 to 253402300799999)"
            assert said in capsys.readouterr().err
    assert not (tmp_path / "o.sqlite3").exists()


def test_the_adaptations_summary_says_a_candidate_that_could_not_be_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An accepted candidate whose write failed is recorded as not adapted; its summary line says why, not
    only the gate's "accepted"."""
    from lmroute.export.cli import main

    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    s = open_store(dsn)
    error = "the accepted candidate could not be written to /full/disk: No space left on device"
    report = {"gate": {"accepted": True, "reason": "accepted: +0.03 APGR"}, "error": error}
    s.record_adaptation(
        parent_version="p", candidate_version=None, kind="paired", n_outcomes=9, accepted=False, report=report
    )
    s.close()
    assert main(["adaptations", "--store", dsn]) == 0
    [run] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert run["accepted"] is False and run["reason"] == f"{error} (the gate: accepted: +0.03 APGR)"


def test_adaptations_into_a_reader_that_closes_early_gets_no_traceback(tmp_path: Path) -> None:
    """`lmroute-export adaptations | head -1`: the reader is gone before the lines are written."""
    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    s = open_store(dsn)
    for i in range(200):
        s.record_adaptation(
            parent_version=f"p{i}", candidate_version=None, kind="paired", n_outcomes=i, accepted=False, report={}
        )
    s.close()
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmroute.export.cli", "adaptations", "--store", dsn, "--last", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the process has imported its modules and read the store
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_an_adaptation_report_is_stored_as_standard_json(store: OutcomeStore) -> None:
    """A gate that measured nothing reports NaN; the store keeps standard JSON (null), which any reader
    of the column (PostgreSQL's json functions, another language) parses."""
    report = {"gate": {"candidate_apgr": float("nan"), "p_value": float("inf"), "n": [1, float("-inf")]}}
    store.record_adaptation(
        parent_version="p", candidate_version=None, kind="paired", n_outcomes=0, accepted=False, report=report
    )
    [text] = [r[0] for r in store._exec("SELECT report FROM adaptations").fetchall()]
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the stored report")) == {
        "gate": {"candidate_apgr": None, "p_value": None, "n": [1, None]}
    }
    assert store.adaptations()[0]["report"]["gate"]["candidate_apgr"] is None


def test_the_writer_acknowledges_feedback_between_a_prunes_batches(tmp_path: Path) -> None:
    """A prune deletes `prune_batch` rows a transaction and writes the rounds that come meanwhile between
    them: an outcome submitted while a large prune runs is acknowledged long before it ends."""
    dsn = f"sqlite:{tmp_path / 's.sqlite3'}"
    seed = open_store(dsn)
    old_ms = int(time.time() * 1000) - 40 * DAY_MS
    n_old = 30_000
    for i in range(0, n_old, 5000):
        seed.write([_decision(f"old {j}", at_ms=old_ms + j) for j in range(i, i + 5000)], [])
    seed.close()
    writer = StoreWriter(lambda: open_store(dsn), retention_ms=30 * DAY_MS, prune_batch=100)
    writer.start()  # a prune is due at once
    time.sleep(0.02)
    ack = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="during the prune")])
    assert ack.result(30) == [Verdict.STORED]
    assert writer.stats.pruned_decisions < n_old  # acknowledged while older decisions were still being deleted
    t_end = time.monotonic() + 60
    while writer.stats.pruned_decisions < n_old:
        assert time.monotonic() < t_end, f"pruned {writer.stats.pruned_decisions} of {n_old}"
        time.sleep(0.02)
    writer.close()
    check = open_store(dsn)
    assert check.counts() == {"decisions": 0, "outcomes": 1}
    check.close()


def test_a_postgresql_store_finds_out_a_silent_server(fresh_postgres_db: str) -> None:
    """The connection has TCP keepalives and a user timeout unless the URI sets its own."""
    s = open_store(fresh_postgres_db)
    try:
        effective = psycopg.conninfo.conninfo_to_dict(s._conn.info.dsn)
        assert {k: effective.get(k) for k in PG_LIVENESS} == {k: str(v) for k, v in PG_LIVENESS.items()}
    finally:
        s.close()
    own = open_store(fresh_postgres_db + ("&" if "?" in fresh_postgres_db else "?") + "keepalives_idle=7")
    try:
        assert psycopg.conninfo.conninfo_to_dict(own._conn.info.dsn)["keepalives_idle"] == "7"
    finally:
        own.close()


def _held_lock(path: Path) -> sqlite3.Connection:
    """Another connection holding the SQLite store's write lock: the writer's next commit waits for it."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def test_a_call_that_gives_up_does_not_stop_the_writer(tmp_path: Path) -> None:
    """A Feedback call past its deadline cancels its Future while the writer is in its commit: the writer
    goes on (resolving the cancelled Future raised InvalidStateError in its thread, which died: every later
    call waited for nothing), and the given-up call's outcome is written all the same."""
    path = tmp_path / "s.sqlite3"
    open_store(f"sqlite:{path}").close()
    writer = StoreWriter(lambda: open_store(f"sqlite:{path}"))
    writer.start()
    try:
        blocker = _held_lock(path)
        gone = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="given up on")])
        time.sleep(0.1)  # the writer is in its commit, waiting for the lock
        assert gone.cancel()
        blocker.rollback()
        blocker.close()
        ack = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="the next call")])
        assert ack.result(10) == [Verdict.STORED]
    finally:
        writer.close()
    check = open_store(f"sqlite:{path}")
    assert check.counts() == {"decisions": 0, "outcomes": 2}
    check.close()


def test_an_outcome_finds_its_decision_behind_a_backlog(tmp_path: Path) -> None:
    """Decisions queued while the store could not commit (50, rounds of 10 at most), then an outcome on
    the newest: its round takes every queued decision, so it is stored (it was NOT_YET or, for a decision
    older than NOT_YET_MS, NOT_FOUND: refused for good, though the decision was written a moment later)."""
    path = tmp_path / "s.sqlite3"
    open_store(f"sqlite:{path}").close()
    writer = StoreWriter(lambda: open_store(f"sqlite:{path}"), max_batch=10, decision_linger_s=0.0)
    writer.start()
    try:
        blocker = _held_lock(path)
        backlog = [_decision(f"q {i}") for i in range(50)]
        writer.record(backlog)
        time.sleep(0.1)  # the first round of 10 waits for the lock
        ack = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, decision_id=backlog[-1].decision_id)])
        blocker.rollback()
        blocker.close()
        assert ack.result(10) == [Verdict.STORED]
    finally:
        writer.close()


def test_decisions_a_closing_writer_cannot_write_are_counted_dropped(tmp_path: Path) -> None:
    """The store gone (its directory replaced by a file, so it cannot be opened again) with 40 decisions
    queued, then the writer closed while it waits to reopen: the 40 are counted as dropped (they were
    cleared uncounted: the stop line said nothing was lost)."""
    where = tmp_path / "store"
    writer = StoreWriter(lambda: open_store(f"sqlite:{where / 's.sqlite3'}"), decision_linger_s=0.0, retry_pause_s=5.0)
    writer.start()
    shutil.rmtree(where)
    where.write_text("not a directory")
    writer.record([_decision(f"q {i}") for i in range(40)])
    deadline = time.monotonic() + 10
    while writer.stats.failed_commits == 0:  # the round failed; the writer waits to reopen the store
        assert time.monotonic() < deadline
        time.sleep(0.01)
    writer.close()
    assert writer.stats.decisions_dropped == 40 and writer.stats.decisions_written == 0


def test_invalid_outcomes_name_the_field() -> None:
    with pytest.raises(OutcomeError, match=r"outcomes\[2\]\.quality: must be in \[0, 1\] \(got 1\.5\)"):
        Outcome(OutcomeKind.SINGLE, "m", 1.5, prompt_text="p").check("outcomes[2]")
    with pytest.raises(OutcomeError, match=r"exactly one of decision_id and prompt"):
        Outcome(OutcomeKind.SINGLE, "m", 0.5).check()
    with pytest.raises(OutcomeError, match=r"decision_id: not a decision id"):
        Outcome(OutcomeKind.SINGLE, "m", 0.5, decision_id="xyz").check()
    with pytest.raises(OutcomeError, match=r"\.model: required"):
        Outcome(OutcomeKind.PAIRED, "", 0.5, prompt_text="p").check()
    for bad in (" ", "gpt-4-1106-preview ", "m\n", "x" * 257):  # a name adaptation would take as another model
        with pytest.raises(OutcomeError, match=r"\.model: a model name is 1-256 printable characters"):
            Outcome(OutcomeKind.SINGLE, bad, 0.5, prompt_text="p").check()
    Outcome(OutcomeKind.SINGLE, "Meta Llama 3.1 (8B)", 0.5, prompt_text="p").check()
    with pytest.raises(OutcomeError, match=r"outcome\.reporter: must be 1-64 of"):
        Outcome(OutcomeKind.SINGLE, "m", 0.5, prompt_text="p", reporter="a b").check()


def test_reporters_are_named_on_a_command_line_with_commas_and_none() -> None:
    assert reporters_named(None) is None and reporters_named([]) is None
    assert reporters_named(["ops,eval", " ops", UNNAMED_REPORTER]) == frozenset({"ops", "eval", ""})
    with pytest.raises(OutcomeError, match=r"reporters: 'a b' is not a tenant name"):
        reporters_named(["ops,a b"])


def test_outcomes_are_keyed_per_reporter_and_read_per_reporter(store: OutcomeStore) -> None:
    base = Outcome(OutcomeKind.SINGLE, "weak-m", 1.0, prompt_text="how do magnets work?", source="thumbs")
    other = Outcome(OutcomeKind.SINGLE, "weak-m", 1.0, prompt_text="what is a quark?", source="thumbs")
    verdicts = store.write(
        [],
        [
            base,
            dataclasses.replace(base, quality=0.0, reporter="mallory"),  # its own row, not a conflict
            dataclasses.replace(base, quality=0.5, reporter="mallory"),  # a conflict with itself
            dataclasses.replace(base, reporter="ops"),
            dataclasses.replace(other, quality=0.0, reporter="mallory"),
        ],
    )
    assert verdicts == [Verdict.STORED, Verdict.STORED, Verdict.CONFLICT, Verdict.STORED, Verdict.STORED]

    def read(reporters: set[str] | None) -> dict[str | None, float]:
        return {r.prompt_text: r.qualities["weak-m"] for r in store.labeled_prompts(reporters=reporters)}

    assert read(None) == {"how do magnets work?": pytest.approx(2 / 3), "what is a quark?": 0.0}
    assert read({"", "ops"}) == {"how do magnets work?": 1.0}
    assert read({"mallory"}) == {"how do magnets work?": 0.0, "what is a quark?": 0.0}
    assert read(set()) == {}


def test_writer_acknowledges_after_commit_and_groups_rounds(dsn: str) -> None:
    writer = StoreWriter(lambda: open_store(dsn))
    writer.start()
    decisions = [_decision(f"prompt {i}") for i in range(300)]
    for d in decisions:
        writer.record([d])
    futures = [
        writer.submit([Outcome(OutcomeKind.SINGLE, "", i / 300, decision_id=d.decision_id)])
        for i, d in enumerate(decisions)
    ]
    assert [f.result(30)[0] for f in futures] == [Verdict.STORED] * 300  # each decision was written first
    writer.close()
    assert writer.stats.commits < 300  # rounds group what is pending
    check = open_store(dsn)
    assert check.counts() == {"decisions": 300, "outcomes": 300}
    check.close()


def _wait_written(writer: StoreWriter, n: int, timeout_s: float = 10.0) -> None:
    t_end = time.monotonic() + timeout_s
    while writer.stats.decisions_written < n and time.monotonic() < t_end:
        time.sleep(0.01)


def test_writer_lets_decisions_wait_for_one_commit(tmp_path: Path) -> None:
    """Decisions alone wait for the oldest one's linger and share its commit; a full batch does not wait."""
    writer = StoreWriter(lambda: open_store(f"sqlite:{tmp_path / 's.sqlite3'}"), decision_linger_s=1.0)
    writer.start()
    for i in range(50):
        writer.record([_decision(f"prompt {i}")])
    _wait_written(writer, 50)
    assert (writer.stats.commits, writer.stats.decisions_written) == (1, 50)
    writer.close()

    full = StoreWriter(lambda: open_store(f"sqlite:{tmp_path / 'f.sqlite3'}"), decision_linger_s=60.0, max_batch=4)
    full.start()
    full.record([_decision(f"batch {i}") for i in range(4)])
    _wait_written(full, 4)
    assert (full.stats.commits, full.stats.decisions_written) == (1, 4)
    full.close()


def test_an_outcome_or_close_does_not_wait_for_the_decisions_linger(tmp_path: Path) -> None:
    dsn = f"sqlite:{tmp_path / 's.sqlite3'}"
    writer = StoreWriter(lambda: open_store(dsn), decision_linger_s=60.0)
    writer.start()
    first = [_decision(f"before feedback {i}") for i in range(3)]
    writer.record(first)
    outcome = Outcome(OutcomeKind.SINGLE, "", 1.0, decision_id=first[0].decision_id)
    assert writer.submit([outcome]).result(10) == [Verdict.STORED]  # with the decisions, in one commit
    assert (writer.stats.commits, writer.stats.decisions_written) == (1, 3)
    writer.record([_decision("at close")])
    t0 = time.monotonic()
    writer.close()
    assert time.monotonic() - t0 < 10
    check = open_store(dsn)
    assert check.counts() == {"decisions": 4, "outcomes": 1}
    check.close()


def test_writer_fails_the_round_when_the_commit_fails_and_stores_nothing_of_it(dsn: str) -> None:
    writer = StoreWriter(lambda: open_store(dsn), retry_pause_s=0.01)
    writer.start()
    admin = open_store(dsn)  # another connection, to break and mend the table under the writer
    assert writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="first")]).result(10) == [Verdict.STORED]
    admin._exec("ALTER TABLE outcomes RENAME TO outcomes_away")
    d = _decision("decision of the failed round")
    writer.record([d])
    fut = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="second")])
    with pytest.raises(Exception, match=r"outcomes"):
        fut.result(10)
    assert writer.stats.failed_commits >= 1
    admin._exec("ALTER TABLE outcomes_away RENAME TO outcomes")
    assert writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="third")]).result(10) == [Verdict.STORED]
    writer.close()
    # the failed round's outcome is not stored; its decision was kept and written by a later round
    assert admin.decision(d.decision_id) is not None
    assert {r.prompt_text for r in admin.labeled_prompts()} == {"first", "third"}
    admin.close()


@pytest.mark.parametrize("how", ["full", "read-only", "locked", "table gone"])
def test_a_failed_sqlite_write_names_its_cause_in_words_a_caller_may_see(tmp_path: Path, how: str) -> None:
    """Feedback's STORE_UNAVAILABLE said only the driver's exception type (OperationalError) whatever
    failed. `failure_cause` names the kind of failure, from real SQLite failures, and never the path."""
    path = tmp_path / "s.sqlite3"
    store = open_store(f"sqlite:{path}")
    other = sqlite3.connect(path, isolation_level=None)
    try:
        if how == "full":  # the database may grow no more: what a full disk gives
            pages = store._exec("PRAGMA page_count").fetchone()[0]
            store._exec(f"PRAGMA max_page_count = {pages}")
        elif how == "read-only":
            store._exec("PRAGMA query_only = ON")
        elif how == "locked":
            store._exec("PRAGMA busy_timeout = 0")
            other.execute("BEGIN EXCLUSIVE")
        else:
            other.execute("ALTER TABLE outcomes RENAME TO outcomes_away")
        with pytest.raises(StoreError) as failed:
            store.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="x" * 20_000)])
        cause = failure_cause(failed.value)
        assert (
            cause
            == {
                "full": "its disk is full",
                "read-only": "it is read-only",
                "locked": "another process holds its lock",
                "table gone": "a table is missing (changed under the server)",
            }[how]
        ), str(failed.value)
        assert str(tmp_path) not in cause
    finally:
        if how == "locked":
            other.execute("ROLLBACK")
        other.close()
        store.close()


def test_a_full_disk_fails_feedback_saying_so_and_loses_no_decision(tmp_path: Path) -> None:
    """A database that may grow no more (SQLite's max_page_count: what a full disk gives, SQLITE_FULL):
    Feedback fails saying the disk is full, the decisions wait in memory (none dropped as a row the store
    refuses: a full disk is the database's state, not the row's), and all of them are written once there
    is room again."""
    path = tmp_path / "s.sqlite3"
    room = {"pages": 0}  # 0: as many as the file has now

    def opened() -> OutcomeStore:
        store = open_store(f"sqlite:{path}")
        pages = room["pages"] or store._exec("PRAGMA page_count").fetchone()[0]
        store._exec(f"PRAGMA max_page_count = {pages}")
        return store

    writer = StoreWriter(opened, decision_linger_s=0.0, retry_pause_s=1.0)  # the check below within the pause
    writer.start()
    try:
        decisions = [_decision(f"{i} " + "x" * 20_000) for i in range(50)]
        writer.record(decisions)
        with pytest.raises(StoreError) as failed:
            writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="judged")]).result(10)
        assert failure_cause(failed.value) == "its disk is full"
        assert writer.stats.decisions_dropped == 0 and writer.pending[0] == 50
        room["pages"] = 1 << 30  # space again: the next reopen finds it
        deadline = time.monotonic() + 30
        while writer.pending[0]:
            assert time.monotonic() < deadline, "the decisions were not written once there was room"
            time.sleep(0.05)
        assert writer.stats.decisions_dropped == 0
    finally:
        writer.close()
    check = open_store(f"sqlite:{path}")
    try:
        assert all(check.decision(d.decision_id) is not None for d in decisions)
    finally:
        check.close()


def test_failed_postgresql_writes_and_other_failures_name_their_cause(fresh_postgres_db: str, tmp_path: Path) -> None:
    store = open_store(fresh_postgres_db)
    try:
        store._exec("SET default_transaction_read_only = on")  # a standby, or a database made read-only
        with pytest.raises(StoreError) as read_only:
            store.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="x")])
        assert failure_cause(read_only.value) == "it is read-only"
    finally:
        store.close()
    with socket.socket() as s:  # a port nothing listens on: the server out of reach
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(StoreError) as unreachable:
        open_store(f"postgresql://lmroute@127.0.0.1:{port}/none")
    assert failure_cause(unreachable.value) == "its server cannot be reached or closed the connection"
    assert str(port) not in failure_cause(unreachable.value)
    replaced = StoreError(f"store sqlite:{tmp_path}/s.sqlite3: its file was removed or replaced while open: ...")
    assert failure_cause(replaced) == "its file was removed or replaced while open"
    assert failure_cause(ValueError("an embedding of another size")) == "ValueError"


def _terminate(admin: psycopg.Connection[Any], where: str) -> int:
    """Terminate the other backends of this database `where` (SQL on pg_stat_activity); how many."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() "
        f"AND pid <> pg_backend_pid() AND {where}"
    ).fetchall()
    return len(rows)


def test_a_connection_lost_during_commit_is_told_from_a_write_that_failed_before(fresh_postgres_db: str) -> None:
    """A PostgreSQL connection lost during COMMIT leaves the transaction committed or not (the server may
    have committed it and died before answering): CommitUnknown, which Feedback cannot answer with
    "nothing was stored". One lost before COMMIT was sent is a plain StoreError: nothing was stored."""
    admin = psycopg.connect(fresh_postgres_db, autocommit=True)
    store = open_store(fresh_postgres_db)
    try:
        with pytest.raises(CommitUnknown) as unknown:
            with store._transaction():
                store._exec("INSERT INTO target_changes (time_ms, tenant, target, value) VALUES (1, 't', 'spend', 1)")
                assert _terminate(admin, "state = 'idle in transaction'") == 1
        assert "the connection was lost during COMMIT: the transaction may have been committed or not" in str(
            unknown.value
        )
        assert failure_cause(unknown.value) == "its server cannot be reached or closed the connection"
        store.close()
        store = open_store(fresh_postgres_db)
        assert _terminate(admin, "state = 'idle'") == 1  # between transactions: the next one fails at its start
        with pytest.raises(StoreError) as before:
            store.write([], [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="never sent")])
        assert not isinstance(before.value, CommitUnknown)
    finally:
        store.close()
        admin.close()


def test_the_writer_fails_a_round_whose_commit_lost_its_connection_as_commit_unknown(fresh_postgres_db: str) -> None:
    """Through the writer, as Feedback sees it: the round's Future fails with CommitUnknown. A trigger run
    at COMMIT (deferred) holds the COMMIT 2 s, while which the connection is terminated."""
    admin = psycopg.connect(fresh_postgres_db, autocommit=True)
    open_store(fresh_postgres_db).close()
    admin.execute(
        "CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
    )
    admin.execute(
        "CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON outcomes DEFERRABLE INITIALLY DEFERRED "
        "FOR EACH ROW EXECUTE FUNCTION slow_commit()"
    )
    writer = StoreWriter(lambda: open_store(fresh_postgres_db), retry_pause_s=0.01)
    writer.start()
    try:
        outcome = Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="committed or not")
        ack = writer.submit([outcome])
        deadline = time.monotonic() + 10
        while not _terminate(admin, "state = 'active' AND query ILIKE 'COMMIT%'"):
            assert time.monotonic() < deadline, "no COMMIT seen"
            time.sleep(0.01)
        with pytest.raises(CommitUnknown):
            ack.result(10)
        admin.execute("DROP TRIGGER slow_commit ON outcomes")
        # sending it again is safe: STORED (it was not committed: the trigger was cut short) or DUPLICATE
        assert writer.submit([outcome]).result(10) in ([Verdict.STORED], [Verdict.DUPLICATE])
    finally:
        writer.close()
        admin.close()


def test_a_store_failing_every_round_is_logged_once_in_ten_seconds(tmp_path: Path) -> None:
    """Through an outage each Feedback call fails a round, and each failure logged two error lines (~90 a
    second a replica): now one line per LOG_EVERY_S, saying how many failures it left out."""
    import structlog

    dsn = f"sqlite:{tmp_path / 's.sqlite3'}"
    writer = StoreWriter(lambda: open_store(dsn), retry_pause_s=0.01)
    writer.start()
    admin = open_store(dsn)
    admin._exec("ALTER TABLE outcomes RENAME TO outcomes_away")
    with structlog.testing.capture_logs() as logs:
        for i in range(6):
            with pytest.raises(Exception, match=r"outcomes"):
                writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=f"lost {i}")]).result(10)
    assert writer.stats.failed_commits >= 6
    failed = [e for e in logs if e["event"] in ("store_write_failed", "store_reopen_failed")]
    assert [e["event"] for e in failed] == ["store_write_failed"] and failed[0]["failures_not_logged"] == 0
    admin._exec("ALTER TABLE outcomes_away RENAME TO outcomes")
    admin.close()
    writer.close()


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_sqlite_file_removed_or_replaced_under_the_writer_acknowledges_nothing_into_it(
    tmp_path: Path, how: str
) -> None:
    """Removed (its -wal and -shm too) or replaced by another file while the writer holds it open: the
    round fails (nothing is acknowledged into a file no later open can read), the writer reopens the path,
    and what it acknowledges after that is in the file there."""
    path = tmp_path / "s.sqlite3"
    dsn = f"sqlite:{path}"
    writer = StoreWriter(lambda: open_store(dsn), retry_pause_s=0.01)
    writer.start()
    assert writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="before")]).result(10) == [Verdict.STORED]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if how == "replaced":
        open_store(f"sqlite:{tmp_path / 'other.sqlite3'}").close()
        (tmp_path / "other.sqlite3").rename(path)
    with pytest.raises(StoreError, match=r"was removed or replaced while open"):
        writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="lost")]).result(10)
    assert writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="after")]).result(10) == [Verdict.STORED]
    writer.close()
    check = open_store(dsn)
    assert {r.prompt_text for r in check.labeled_prompts()} == {"after"}
    check.close()


def test_a_decision_the_store_cannot_hold_is_dropped_not_retried_before_every_later_write(dsn: str) -> None:
    """A round fails on a row the store refuses while it answers (PostgreSQL and a NUL in a prompt did):
    its decisions are written one by one, the refused one dropped and counted, so later rounds and
    Feedback are stored again (the writer put the row back first in line and failed every later round)."""
    writer = StoreWriter(lambda: open_store(dsn), retry_pause_s=0.01)
    writer.start()
    bad = dataclasses.replace(_decision("a row the store refuses"), embedding=object())  # type: ignore[arg-type]
    good = _decision("a decision beside it")
    writer.record([bad, good])
    first = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="in the failed round")])
    with pytest.raises(Exception):  # noqa: B017 (whatever the store raised for that round)
        first.result(10)
    later = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="after it")])
    assert later.result(10) == [Verdict.STORED]
    writer.close()
    assert writer.stats.decisions_dropped == 1
    check = open_store(dsn)
    assert check.decision(good.decision_id) is not None and check.decision(bad.decision_id) is None
    check.close()


def test_decisions_the_store_cannot_hold_are_found_among_many_in_few_commits(tmp_path: Path) -> None:
    """After a failed round the decisions are written in halves until the refused ones stand alone:
    two refused among 1,000 cost a few dozen commits, not one per decision."""
    dsn = f"sqlite:{tmp_path / 'outcomes.sqlite3'}"
    commits: list[str] = []

    def opened() -> OutcomeStore:
        store = open_store(dsn)
        store._conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
        return store

    decisions = [_decision(f"decision {i}") for i in range(1_000)]
    for i in (137, 802):
        decisions[i] = dataclasses.replace(decisions[i], embedding=object())  # type: ignore[arg-type]
    writer = StoreWriter(opened, retry_pause_s=0.01)
    writer.record(decisions)
    writer.start()
    first = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="in the failed round")])
    with contextlib.suppress(TypeError):  # when it shared the round the refused rows failed
        first.result(30)
    later = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="after them")])
    assert later.result(30) == [Verdict.STORED]
    writer.close()
    assert writer.stats.decisions_dropped == 2 and writer.stats.decisions_written == 998
    assert len(commits) <= 60, len(commits)
    check = open_store(dsn)
    assert check.counts()["decisions"] == 998
    assert check.decision(decisions[137].decision_id) is None and check.decision(decisions[138].decision_id)
    check.close()


def test_a_write_refused_for_good_is_told_from_one_refused_for_now() -> None:
    """A lock, a full disk or a lost connection pass; a value the database cannot hold, or a row that
    cannot be built, does not: only those decisions are dropped after a failed round."""
    import sqlite3

    from lmroute.outcomes.store import StoreError
    from lmroute.outcomes.writer import refused_for_good

    def wrapped(cause: BaseException) -> StoreError:
        try:
            raise StoreError("store x: failed") from cause
        except StoreError as exc:
            return exc

    assert not refused_for_good(wrapped(sqlite3.OperationalError("database is locked")))
    assert not refused_for_good(wrapped(OSError(28, "No space left on device")))
    assert refused_for_good(wrapped(sqlite3.DataError("string or blob too big")))
    assert refused_for_good(wrapped(sqlite3.IntegrityError("NOT NULL constraint failed")))
    assert refused_for_good(TypeError("float() argument must be a string or a real number"))
    assert not refused_for_good(StoreError("store x: no answer"))


def test_writer_refuses_outcomes_beyond_its_bound(tmp_path: Path) -> None:
    writer = StoreWriter(
        lambda: open_store(f"sqlite:{tmp_path / 's.sqlite3'}"), max_pending_outcomes=2, max_pending_per_reporter=2
    )
    # not started: what is submitted waits, as it would behind a slow store
    two = [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=t) for t in ("a", "b")]
    pending = writer.submit(two)
    with pytest.raises(WriterFull, match=r"2 outcomes waiting for the store \(limit 2\)"):
        writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="c")])
    writer.start()
    assert pending.result(10) == [Verdict.STORED, Verdict.STORED]
    writer.close()


def test_a_drained_backlog_hands_the_heaps_free_pages_back_once(tmp_path: Path) -> None:
    """glibc keeps freed memory in its arenas: a drained 256 MiB backlog left the process 284 MiB larger
    (115 MiB after malloc_trim: benchmarks/results/store_backlog_memory). A backlog of TRIM_AFTER_BYTES or
    more releases the heap once it has drained, once; the small rounds of a store that keeps up never do."""
    if sys.platform != "linux" or not release_free_heap():
        pytest.skip("glibc's malloc_trim only")
    dsn = f"sqlite:{tmp_path / 's.sqlite3'}"
    writer = StoreWriter(lambda: open_store(dsn), decision_linger_s=0.0)
    long = "x" * 100_000
    n = TRIM_AFTER_BYTES // 100_000 + 8
    writer.record([_decision(f"{i} {long}") for i in range(n)])  # not started: a store that fell behind
    assert writer.pending_bytes[0] >= TRIM_AFTER_BYTES
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while writer.pending[0] or writer.stats.heap_releases == 0:
            assert time.monotonic() < deadline, "the backlog did not drain and release"
            time.sleep(0.05)
        assert writer.stats.heap_releases == 1 and writer.stats.decisions_written == n
        for k in range(20):  # a store that keeps up: small rounds, no release
            writer.record([_decision(f"later {k} {long}")])
            time.sleep(0.01)
        while writer.pending[0]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert writer.stats.heap_releases == 1 and writer.stats.decisions_written == n + 20
    finally:
        writer.close()


def test_writer_bounds_the_memory_its_backlog_holds(tmp_path: Path) -> None:
    """Long prompts behind a store that falls behind: the decisions waiting hold at most max_pending_bytes
    (the rest dropped and counted; with the count bound alone 60,000 prompts of 19,900 characters took
    1.25 GB: benchmarks/results/store_backlog_memory), the outcomes waiting as much again and a tenant's
    half; all of it written once the store keeps up, and the accounting back at zero."""
    dsn = f"sqlite:{tmp_path / 's.sqlite3'}"
    writer = StoreWriter(lambda: open_store(dsn), max_pending_bytes=1 << 20)
    long = "x" * 100_000  # a long pasted prompt
    # not started: what is queued waits, as it would behind a slow store
    writer.record([_decision(f"{i} {long}") for i in range(20)])
    assert writer.pending[0] == 10 and writer.stats.decisions_dropped == 10  # 10 x ~100 KB fit in 1 MiB
    assert 0.9 * (1 << 20) < writer.pending_bytes[0] <= 1 << 20

    def call(reporter: str, n: int) -> list[Outcome]:
        return [
            Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=f"{reporter} {i} {long}", reporter=reporter)
            for i in range(n)
        ]

    first = writer.submit(call("flood", 4))  # 0.4 MB
    with pytest.raises(
        WriterFull, match=r"0\.4 MiB of this tenant's outcomes waiting for the store \(limit 0\.5 MiB a"
    ):
        writer.submit(call("flood", 2))
    second = writer.submit(call("other", 4))  # another tenant's room
    with pytest.raises(WriterFull, match=r"0\.8 MiB of outcomes waiting for the store \(limit 1\.0 MiB\)$"):
        writer.submit(call("third", 3))
    writer.start()
    assert first.result(10) == second.result(10) == [Verdict.STORED] * 4
    _wait_written(writer, 10)
    assert writer.stats.decisions_written == 10 and writer.pending == (0, 0) and writer.pending_bytes == (0, 0)
    writer.close()


def test_a_store_that_hangs_shows_in_the_writers_write_seconds(tmp_path: Path) -> None:
    """A store that neither answers nor fails (a PostgreSQL server stopped, its host up: nothing in TCP
    finds it) left no trace but the pending counts: the write in progress shows how long it has taken.
    Here an SQLite store locked by another connection holds the writer's commit."""
    path = tmp_path / "s.sqlite3"
    writer = StoreWriter(lambda: open_store(f"sqlite:{path}"))
    writer.start()
    assert writer.writing_s == 0.0
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        held = writer.submit([Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text="held")])
        deadline = time.monotonic() + 10
        while writer.writing_s < 0.5:
            assert time.monotonic() < deadline, writer.writing_s
            time.sleep(0.05)
        assert not held.done()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert held.result(10) == [Verdict.STORED]
    deadline = time.monotonic() + 10
    while writer.writing_s != 0.0:
        assert time.monotonic() < deadline, writer.writing_s
        time.sleep(0.01)
    writer.close()


def test_room_is_held_for_a_call_before_its_outcomes_are_built(tmp_path: Path) -> None:
    """Feedback reserves its call's room first: a flood's calls are refused before any outcome of theirs
    is built and checked (built in full, 10-20 refused calls per accepted one took the event loop and the
    writer's time, and another tenant's one-outcome acknowledgment took seconds). Held room counts
    against the bounds like outcomes waiting; submit takes it over, release gives it back."""
    writer = StoreWriter(
        lambda: open_store(f"sqlite:{tmp_path / 's.sqlite3'}"), max_pending_outcomes=8, max_pending_per_reporter=4
    )

    def call(reporter: str, n: int) -> list[Outcome]:
        return [
            Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=f"{reporter} {i}", reporter=reporter) for i in range(n)
        ]

    writer.reserve("flood", 3)  # its outcomes being built
    with pytest.raises(WriterFull, match=r"^3 outcomes of this tenant waiting for the store \(limit 4 a tenant\)$"):
        writer.reserve("flood", 2)
    writer.reserve("other", 4)
    with pytest.raises(WriterFull, match=r"^7 outcomes waiting for the store \(limit 8\)$"):
        writer.submit(call("third", 2))  # held room counts at submit too
    flood = writer.submit(call("flood", 3), reserved=3)  # takes its room over
    writer.release("other", 4)  # its call submitted nothing
    assert writer.pending == (0, 3)
    writer.reserve("third", 4)
    with pytest.raises(WriterFull, match=r"^7 outcomes waiting for the store \(limit 8\)$"):
        writer.reserve("fourth", 2)
    writer.release("third", 4)
    writer.start()
    assert flood.result(10) == [Verdict.STORED] * 3
    writer.reserve("fourth", 4)  # all the room back
    writer.release("fourth", 4)
    writer.close()


def test_writer_keeps_room_for_every_reporter_and_takes_their_calls_in_turn(tmp_path: Path) -> None:
    """A reporter may hold half the writer's pending outcomes (by default), so a flood leaves room for
    another's call; the rounds take the reporters' calls in turn, not in arrival order."""
    dsn = f"sqlite:{tmp_path / 's.sqlite3'}"
    writer = StoreWriter(lambda: open_store(dsn), max_pending_outcomes=8, max_batch=1)

    def call(reporter: str, text: str) -> list[Outcome]:
        return [Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=text, reporter=reporter, observed_ms=1000)]

    # not started: the calls wait, as they would behind a slow store
    flood = [writer.submit(call("flood", f"flood {i}")) for i in range(4)]
    with pytest.raises(WriterFull, match=r"4 outcomes of this tenant waiting for the store \(limit 4 a tenant\)"):
        writer.submit(call("flood", "flood 4"))
    other = writer.submit(call("", "other 0"))  # room kept for it
    writer.start()
    assert [f.result(10) for f in [*flood, other]] == [[Verdict.STORED]] * 5
    writer.close()
    store = open_store(dsn)
    order = [r.prompt_text for r in store.labeled_prompts()]  # one observed time: in commit order
    store.close()
    assert order == ["flood 0", "other 0", "flood 1", "flood 2", "flood 3"]


def test_a_small_call_is_never_committed_with_a_big_one(tmp_path: Path) -> None:
    """A big call (over SMALL_CALL outcomes) has a round to itself and gets every other round; small calls
    of the reporters in turn share theirs. So a one-outcome acknowledgment waits for the round in progress
    and its own, not for a commit of a flood's thousands of outcomes."""
    from lmroute.outcomes.writer import SMALL_CALL

    dsn = f"sqlite:{tmp_path / 's.sqlite3'}"
    writer = StoreWriter(lambda: open_store(dsn))

    def call(reporter: str, n: int, tag: str) -> list[Outcome]:
        return [
            Outcome(OutcomeKind.SINGLE, "m", 1.0, prompt_text=f"{tag} {i}", reporter=reporter, observed_ms=1000)
            for i in range(n)
        ]

    # not started: the calls wait, as they would behind a slow store
    calls = [
        writer.submit(call("flood", SMALL_CALL + 1, "flood a")),
        writer.submit(call("ops", 1, "ops a")),
        writer.submit(call("flood", SMALL_CALL + 1, "flood b")),
        writer.submit(call("ops", 1, "ops b")),
        writer.submit(call("judge", 2, "judge")),
    ]
    writer.start()
    assert all(f.result(10) for f in calls)
    writer.close()
    assert writer.stats.commits == 3  # the small calls together, then each big call alone
    store = open_store(dsn)
    order = [r.prompt_text for r in store.labeled_prompts()]  # one observed time: in commit order
    store.close()
    flood = [f"flood a {i}" for i in range(SMALL_CALL + 1)], [f"flood b {i}" for i in range(SMALL_CALL + 1)]
    assert order == ["ops a 0", "judge 0", "judge 1", "ops b 0", *flood[0], *flood[1]]


def _store_at_version(dsn: str, version: int) -> OutcomeStore:
    """An empty store as an lmroute of schema `version` left it (the migrations up to it, run by hand)."""
    s = open_store(dsn)
    for table in ("outcomes", "decisions", "adaptations", "target_changes", "lmroute_schema"):
        s._exec(f"DROP TABLE {table}")
    assert s.migrate(until=version) == version
    return s


def test_a_store_at_schema_version_1_is_migrated_keeping_its_rows(dsn: str) -> None:
    s = _store_at_version(dsn, 1)
    d = _decision("kept across the migration")
    s._exec(  # what lmroute at version 1 wrote
        "INSERT INTO decisions (decision_id, time_ms, kind, bundle_version, router, scores, threshold, chosen_model, "
        "propensity, strong_model, weak_model, prompt_sha256, prompt_text, n_tokens, prompt_chars, encoder_id, "
        "embedding) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            d.decision_id, d.time_ms, d.kind, d.bundle_version, d.router, '{"mf": 0.25}', d.threshold,
            d.chosen_model, d.propensity, d.strong_model, d.weak_model, d.prompt_sha256, d.prompt_text, d.n_tokens,
            d.prompt_chars, d.encoder_id, np.asarray(d.embedding, dtype="<f4").tobytes(),
        ),
    )  # fmt: skip
    s._exec(
        "INSERT INTO outcomes (target, decision_id, prompt_sha256, kind, model, quality, source, observed_ms, "
        "received_ms) VALUES (?, ?, ?, 'single', 'weak-m', 1.0, '', ?, ?)",
        ("d:" + d.decision_id, d.decision_id, d.prompt_sha256, d.time_ms, d.time_ms),
    )
    s.close()
    migrated = open_store(dsn)
    assert migrated.schema_version() == SCHEMA_VERSION == 7
    assert migrated.decision(d.decision_id) == d and migrated.counts() == {"decisions": 1, "outcomes": 1}
    [row] = migrated.labeled_prompts(reporters={""})  # an outcome from before reporters: the unnamed caller's
    assert row.decision_id == d.decision_id and row.qualities == {"weak-m": 1.0}
    migrated.record_adaptation(
        parent_version="p", candidate_version=None, kind="paired", n_outcomes=0, accepted=False, report={"why": "x"}
    )
    assert [r["report"] for r in migrated.adaptations()] == [{"why": "x"}]
    migrated.close()


def test_the_reporter_migration_keeps_outcomes_in_order_and_keys_them_per_reporter(dsn: str) -> None:
    s = _store_at_version(dsn, 4)
    texts = [f"prompt {i}" for i in range(5)]
    for i, text in enumerate(reversed(texts)):  # received out of observed order: ids keep arrival order
        s._exec(
            "INSERT INTO outcomes (target, prompt_sha256, prompt_text, kind, model, quality, source, observed_ms, "
            "received_ms) VALUES (?, ?, ?, 'paired', 'strong-m', ?, 'judge', ?, ?)",
            ("p:" + prompt_sha256(text), prompt_sha256(text), text, i / 4, 1000 + i, 2000 + i),
        )
    s.close()
    s = open_store(dsn)
    rows = s.labeled_prompts()
    assert [r.prompt_text for r in rows] == list(reversed(texts))
    assert [r.qualities["strong-m"] for r in rows] == [0.0, 0.25, 0.5, 0.75, 1.0]
    again = Outcome(OutcomeKind.PAIRED, "strong-m", 0.9, prompt_text=texts[4], source="judge")
    assert s.write([], [again, dataclasses.replace(again, reporter="ops")]) == [Verdict.CONFLICT, Verdict.STORED]
    s.close()


def test_the_reporter_migration_loses_no_outcome_an_older_server_writes_meanwhile(dsn: str) -> None:
    """A server still on schema 4 (its insert names no reporter) commits outcomes one at a time while a
    newer one opens the store and rebuilds the outcomes table: every outcome whose commit returned is
    there after the migration (on PostgreSQL, rows committed between the copy and the drop were lost),
    and the older server's inserts after it are stored with reporter ''."""
    s = _store_at_version(dsn, 4)
    s._exec(  # enough rows that the copy takes a while
        "INSERT INTO outcomes (target, prompt_sha256, kind, model, quality, source, observed_ms, received_ms) "
        + (
            "SELECT 'p:old' || g, 'h', 'single', 'm', 1.0, 's', 1, 1 FROM generate_series(1, 60000) g"
            if dsn.startswith("postgres")
            else "WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < 60000) "
            "SELECT 'p:old' || n, 'h', 'single', 'm', 1.0, 's', 1, 1 FROM g"
        )
    )
    s.close()
    acked: list[str] = []
    failed: list[str] = []
    stop = threading.Event()
    pg = dsn.startswith("postgres")

    def older_server() -> None:  # its own connection, as another process's: no migration on opening
        conn: Any = (
            psycopg.connect(dsn, autocommit=True)
            if pg
            else sqlite3.connect(dsn.removeprefix("sqlite:"), timeout=30, isolation_level=None)
        )
        mark = "%s" if pg else "?"
        try:
            while not stop.is_set():
                target = f"p:new{len(acked) + len(failed)}"
                try:
                    conn.execute("BEGIN" if pg else "BEGIN IMMEDIATE")
                    conn.execute(
                        "INSERT INTO outcomes (target, prompt_sha256, kind, model, quality, source, observed_ms, "
                        f"received_ms) VALUES ({mark}, 'h', 'single', 'm', 1.0, 's', 1, 1)",
                        (target,),
                    )
                    conn.execute("COMMIT")
                except (psycopg.Error, sqlite3.Error) as exc:
                    with contextlib.suppress(psycopg.Error, sqlite3.Error):
                        conn.execute("ROLLBACK")
                    failed.append(f"{type(exc).__name__}: {exc}")
                    continue
                acked.append(target)  # its commit returned: acknowledged
        finally:
            conn.close()

    writer = threading.Thread(target=older_server)
    writer.start()
    try:
        time.sleep(0.3)
        migrated = open_store(dsn)
        before = len(acked)
        time.sleep(0.3)
    finally:
        stop.set()
        writer.join()
    have = {r[0] for r in migrated._exec("SELECT target FROM outcomes WHERE reporter = ''").fetchall()}
    migrated.close()
    assert [t for t in acked if t not in have] == [] and before > 5
    assert len(acked) > before + 5, failed[-3:]  # after the migration, an older server's rows go in too


def test_target_changes_are_kept_in_order_and_read_after_an_id(store: OutcomeStore) -> None:
    changes = [
        TargetChange("batch", "strong_share", 0.2),
        TargetChange("team", "spend", 4.0),
        TargetChange("batch", "strong_share", None),
    ]
    ids = store.record_target_changes(changes, now_ms=1234)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert store.target_changes() == [(i, dataclasses.replace(c, time_ms=1234)) for i, c in zip(ids, changes)]
    assert [c for _, c in store.target_changes(after_id=ids[1])] == [dataclasses.replace(changes[2], time_ms=1234)]
    with pytest.raises(ValueError, match="target: must be one of strong_share, spend"):
        store.record_target_changes([TargetChange("ops", "spend", 1.0), TargetChange("batch", "share", 0.1)])
    assert len(store.target_changes()) == 3  # the refused call stored nothing, its good change neither


@pytest.mark.parametrize("direction", ["sqlite->postgresql", "postgresql->sqlite"])
def test_a_store_is_copied_whole_into_a_new_store_of_either_backend(
    direction: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    from lmroute.export.cli import main

    sqlite_dsn = f"sqlite:{tmp_path / 'embedded.sqlite3'}"
    pg_dsn = str(request.getfixturevalue("fresh_postgres_db"))
    source_dsn, target_dsn = (sqlite_dsn, pg_dsn) if direction.startswith("sqlite") else (pg_dsn, sqlite_dsn)
    source = open_store(source_dsn)
    decisions = [_decision(f"prompt {i}", at_ms=1_000_000 + i) for i in range(5)]
    outcomes = [
        Outcome(OutcomeKind.SINGLE, "", 0.25 * i, decision_id=d.decision_id, source="thumbs", reporter=r)
        for i, d in enumerate(decisions)
        for r in ("", "team")
    ] + [Outcome(OutcomeKind.PAIRED, "strong-m", 1.0, prompt_text="by prompt", observed_ms=5)]
    source.write(decisions, outcomes)
    source.record_adaptation(
        parent_version="p", candidate_version="c", kind="paired", n_outcomes=11, accepted=True, report={"k": [1, 2]}
    )
    source.record_target_changes([TargetChange("batch", "strong_share", 0.2), TargetChange("batch", "spend", None)])
    args = ["copy-store", "--from", source_dsn, "--to", target_dsn]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == {
        "adaptations": 1,
        "decisions": 5,
        "outcomes": 11,
        "target_changes": 2,
    }
    target = open_store(target_dsn)
    try:
        assert [target.decision(d.decision_id) for d in decisions] == decisions
        assert all(  # embeddings are compare=False in the records: check them apart
            np.array_equal(target.decision(d.decision_id).embedding, d.embedding)  # type: ignore[union-attr]
            for d in decisions
        )
        for reporters in (None, {""}, {"team"}):
            assert target.labeled_prompts(reporters=reporters) == source.labeled_prompts(reporters=reporters)
        assert target.adaptations() == source.adaptations()
        assert [c for _, c in target.target_changes()] == [c for _, c in source.target_changes()]
        # a store that holds rows is not a copy's target: nothing is added to it
        assert main(args) == 1
        assert "not empty (5 decisions, 11 outcomes, 1 adaptations, 2 target_changes)" in capsys.readouterr().err
        assert target.counts() == {"decisions": 5, "outcomes": 11}
    finally:
        target.close()
        source.close()


def test_to_judge_on_a_bad_bundle_exits_1_as_adapt_does(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lmroute.export.cli import main

    dsn = f"sqlite:{tmp_path / 'o.sqlite3'}"
    open_store(dsn).close()
    not_a_bundle = tmp_path / "nothing"
    not_a_bundle.mkdir()
    assert main(["to-judge", "--bundle", str(not_a_bundle), "--store", dsn, "--budget", "3"]) == 1  # was 2
    assert "to-judge: " in capsys.readouterr().err
