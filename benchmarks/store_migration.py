"""How long opening a store of schema version 4 takes, migrating it to this lmroute's version (5 rebuilds
the outcomes table to add the reporter to its key; 6 adds the target changes; 7 the decisions' caller),
on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/store_migration.py [--outcomes 1000000] [--backends sqlite,postgresql]

Each backend gets a fresh store migrated to version 4 by the migrations themselves, filled with
--outcomes outcome rows by prompt (as lmroute at version 4 wrote them: 1,000 rows per insert, one
transaction), then `open_store` runs the remaining migrations; its wall time is the figure, with the
store's size before and the rows found after. PostgreSQL is a server this script starts in a temporary
directory (lmroute.outcomes.testing.TemporaryPostgres, the tests' server). Replicas starting together
wait on one migration (an advisory lock), so this is also how long a rolling upgrade holds them back.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lmroute.outcomes.records import prompt_sha256
from lmroute.outcomes.schema import SCHEMA_VERSION
from lmroute.outcomes.store import OutcomeStore, open_store

_ROWS_PER_INSERT = 1000


@contextmanager
def _dsn(backend: str, root: Path) -> Iterator[str]:
    if backend == "sqlite":
        yield f"sqlite:{root / 'outcomes.sqlite3'}"
        return
    from lmroute.outcomes.testing import TemporaryPostgres

    with TemporaryPostgres() as pg:
        yield pg.create_database()


def _at_version_4(dsn: str) -> OutcomeStore:
    store = open_store(dsn)
    for table in ("outcomes", "decisions", "adaptations", "target_changes", "lmroute_schema"):
        store._exec(f"DROP TABLE {table}")
    store.migrate(until=4)
    return store


def _fill(store: OutcomeStore, n: int) -> None:
    columns = "target, prompt_sha256, prompt_text, kind, model, quality, source, observed_ms, received_ms"
    one = "(" + ", ".join("?" * 9) + ")"
    with store._transaction():
        for start in range(0, n, _ROWS_PER_INSERT):
            rows: list[object] = []
            for i in range(start, min(n, start + _ROWS_PER_INSERT)):
                text = f"prompt {i // 2}: what is {i // 2} squared?"
                sha = prompt_sha256(text)
                model = "strong-m" if i % 2 == 0 else "weak-m"
                rows += ["p:" + sha, sha, text, "paired", model, float(i % 3 == 0), "judge", 1000 + i, 2000 + i]
            values = ", ".join([one] * (len(rows) // 9))
            store._exec(f"INSERT INTO outcomes ({columns}) VALUES {values}", rows)


def _size(dsn: str, store: OutcomeStore) -> str:
    if dsn.startswith("sqlite:"):
        return f"{os.path.getsize(dsn.removeprefix('sqlite:')) / 2**20:.0f} MiB file"
    [(size,)] = store._exec("SELECT pg_database_size(current_database())").fetchall()
    return f"{int(size) / 2**20:.0f} MiB database"


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--outcomes", type=int, default=1_000_000)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print(f"# {args.outcomes:,} outcome rows at schema version 4, opened by lmroute at version {SCHEMA_VERSION}")
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as tmp, _dsn(backend, Path(tmp)) as dsn:
            store = _at_version_4(dsn)
            t0 = time.perf_counter()
            _fill(store, args.outcomes)
            fill_s = time.perf_counter() - t0
            size = _size(dsn, store)
            store.close()
            t0 = time.perf_counter()
            migrated = open_store(dsn)
            migrate_s = time.perf_counter() - t0
            version, rows = migrated.schema_version(), migrated.counts()["outcomes"]
            migrated.close()
            print(
                f"{backend}: filled in {fill_s:.1f} s ({size}); open_store migrated 4 -> {version} in "
                f"{migrate_s:.1f} s ({rows / migrate_s:,.0f} outcome rows/s); {rows:,} rows after"
            )


if __name__ == "__main__":
    main()
