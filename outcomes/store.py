"""OutcomeStore: decisions and outcomes in SQLite (WAL, the embedded default) or PostgreSQL (by DSN, the
store that replicas share), behind one class and one schema (lmroute.outcomes.schema).

    store = open_store("sqlite:var/outcomes.sqlite3")          # or "postgresql://user@host/db"
    verdicts = store.write(decisions, outcomes)                 # one transaction, durable on return
    rows = store.labeled_prompts(since_ms=..., reporters=...)   # what adaptation trains on

A store is used from one thread at a time (the serving process gives it to its writer thread,
lmroute.outcomes.writer). `write` commits before it returns: SQLite runs in WAL mode with
synchronous=FULL (the commit is on disk when it returns) and secure_delete (deleted rows are overwritten
with zeros, whatever the SQLite build's default), PostgreSQL with its default synchronous commit. With
`store_prompts=False` (the privacy switch) no prompt text is ever written: a decision keeps the prompt's
SHA-256 and embedding, an outcome by prompt its SHA-256.

Opening a store migrates it to the current schema version (in one transaction per step; on PostgreSQL
under an advisory lock, so replicas starting together migrate once) and refuses a store that a newer
version of lmroute migrated further. Opened only to read (`writable=False`: the commands that only read
a store), it is left as it is: nothing is migrated or written (SQLite: opened read-only), and a store at
an older schema version is refused as well as a newer one. Every database error (opening, a statement) is
raised as StoreError naming the store, its password redacted; one that lost a PostgreSQL connection during
COMMIT, when the transaction may or may not have been committed, as its subclass CommitUnknown.

A SQLite store commits only while its path still names the file it opened: a transaction that finds
the file removed or replaced (an operator's `rm`, a restore copied over it) is rolled back and fails,
instead of committing into a file no later open can read (the writer then reopens the path).
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
import urllib.parse
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from lmroute.outcomes.records import (
    SIDES,
    Decision,
    LabeledPrompt,
    Outcome,
    OutcomeKind,
    TargetChange,
    Verdict,
    prompt_sha256,
    report_json,
)
from lmroute.outcomes.schema import COPIED, MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "NOT_YET_MS",
    "CommitUnknown",
    "Erased",
    "OutcomeStore",
    "StoreError",
    "failure_cause",
    "open_store",
    "redact_dsn",
]

NOT_YET_MS = 10_000
"""An unknown decision id younger than this is NOT_YET, not NOT_FOUND: the replica that made it may
not have written it yet (decisions are written behind the answer). An id that says it will be made more
than this later is NOT_FOUND (within it: another replica's clock may be ahead)."""

_MIGRATION_LOCK = 7_260_315_001  # PostgreSQL advisory lock key held while migrating
_CHUNK = 500  # ids per IN (...) query
_PG_MAX_PARAMS = 65_535  # parameters one PostgreSQL statement takes
_MAX_ROWS = 1_000  # rows one INSERT statement writes at most
_READ_PAGE = 500  # rows one read statement takes at most (`OutcomeStore._page`)
MAX_ERASE_NAMES = 10_000  # ids, hashes and tenants one erase names (a statement's parameters are bounded)


class Erased(NamedTuple):
    """What `OutcomeStore.erase` deleted (or would delete), and whether SQLite's log was emptied after."""

    decisions: int
    outcomes: int
    log_emptied: bool


class StoreError(RuntimeError):
    """The store cannot be opened or used; the message names the store (password redacted)."""


class CommitUnknown(StoreError):
    """The connection to the store (PostgreSQL) was lost during COMMIT: the transaction may have been
    committed or not, and nobody can tell which until the store is read again. What it wrote may be
    stored: writing it again is safe (an outcome stored answers DUPLICATE, a decision is kept as it was)."""


@dataclass(frozen=True)
class _Dialect:
    name: str
    types: Mapping[str, str]
    param: str  # the driver's placeholder
    one_writer: bool  # a transaction keeps other writers out from its BEGIN (SQLite's BEGIN IMMEDIATE)
    decision_tie: str  # what orders decisions of one millisecond: SQLite's rowid is the order written

    def sql(self, text: str) -> str:
        """`text` with `?` placeholders in this driver's style."""
        return text if self.param == "?" else text.replace("?", self.param)


_SQLITE = _Dialect(
    "sqlite",
    {"id": "INTEGER PRIMARY KEY", "blob": "BLOB", "bigint": "INTEGER", "real": "REAL"},
    "?",
    True,
    "rowid",
)
_POSTGRES = _Dialect(
    "postgresql",
    {
        "id": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
        "blob": "BYTEA",
        "bigint": "BIGINT",
        "real": "DOUBLE PRECISION",
    },
    "%s",
    False,
    "decision_id",
)


_CAUSES: tuple[tuple[str, frozenset[str], tuple[str, ...]], ...] = (
    # (the cause told, driver exception classes that say it, lowercase message fragments that say it);
    # the first that matches wins. SQLite raises OperationalError for nearly everything: its messages decide
    ("its file was removed or replaced while open", frozenset(), ("removed or replaced while open",)),
    ("its disk is full", frozenset({"DiskFull"}), ("database or disk is full", "no space left")),
    ("it is read-only", frozenset({"ReadOnlySqlTransaction"}), ("readonly database", "read-only")),
    ("another process holds its lock", frozenset(), ("database is locked", "database table is locked")),
    ("a disk I/O error", frozenset(), ("disk i/o error",)),
    ("a statement timed out", frozenset({"QueryCanceled"}), ("statement timeout",)),
    ("a table is missing (changed under the server)", frozenset({"UndefinedTable"}), ("no such table",)),
    (
        "its server cannot be reached or closed the connection",
        frozenset({"AdminShutdown"}),
        ("connection", "could not connect", "server closed"),
    ),
)


def failure_cause(exc: BaseException) -> str:
    """Why a store operation failed, in words a caller may be told: the kind of failure (a full disk, a
    read-only or locked database, a server out of reach, a file removed or replaced), never a path, host
    or statement (the server's log has the whole error); the driver's exception type otherwise."""
    inner = exc.__cause__ if isinstance(exc, StoreError) and exc.__cause__ is not None else exc
    text = f"{exc}".lower()
    names = {c.__name__ for c in type(inner).__mro__}
    for cause, classes, fragments in _CAUSES:
        if names & classes or any(f in text for f in fragments):
            return cause
    return type(inner).__name__


def redact_dsn(dsn: str) -> str:
    """`dsn` with any password replaced by ***, for messages and logs: in the user part
    (`postgresql://user:PASSWORD@host`), as a query parameter (`?password=PASSWORD`, which libpq
    takes too) and as a libpq keyword (`host=h password=PASSWORD`, quoted or not: not a DSN this
    store takes, but one a user may give, and the refusal repeats it)."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    dsn = re.sub(r"([?&](?:ssl)?password=)[^&]*", r"\1***", dsn, flags=re.IGNORECASE)
    return re.sub(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)", r"\1***", dsn, flags=re.IGNORECASE)


def _now_ms() -> int:
    return int(time.time() * 1000)


PG_LIVENESS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}
"""libpq settings a PostgreSQL store's connection gets unless its URI sets them: a server that stopped
answering (a host gone, a network cut) is found out in about a minute, and the writer reopens the store,
instead of a commit waiting on a half-open connection for the operating system's two hours. A server
process that hangs on a live host (SIGSTOP) is not found this way (its kernel acknowledges the packets):
the writer's `writing_s` (metric lmroute_store_write_seconds) shows it."""


def open_store(
    dsn: str,
    *,
    store_prompts: bool = True,
    must_exist: bool = False,
    writable: bool = True,
    busy_timeout_s: float = 30.0,
) -> OutcomeStore:
    """Open (creating and migrating as needed) the store named by `dsn`:

    ``sqlite:PATH`` (relative or absolute; ``sqlite:///abs/path`` too) or ``postgresql://...`` /
    ``postgres://...`` (a libpq URI; needs the `postgres` extra, psycopg). StoreError naming the store
    when it cannot be opened, is not a store of ours, or was migrated by a newer lmroute; with
    `must_exist` (the commands that read a store), when a SQLite file is missing, instead of making an
    empty store of a mistyped path; with `writable` (all but the commands that only read), when this
    process cannot write a SQLite file (SQLite opens such a file read-only without a word when it has a
    -wal file beside it, and every write failed later), or another process holds its lock for
    `busy_timeout_s` (how long a SQLite statement waits for another connection's lock).

    With `writable=False` (the commands that only read) the store is left as it is: a SQLite file is
    opened read-only (`mode=ro`; cleanly closed, with no -wal beside it, in a folder where SQLite cannot
    make its -shm file: `immutable=1`), nothing is created or migrated, and a store at an older schema
    version is refused too (`_check_readable`): a newer lmroute reads the columns the migrations add, and
    migrating from a command that only reads upgraded a store an older server still used."""
    if dsn.startswith("sqlite:"):
        path = Path(dsn.removeprefix("sqlite:").removeprefix("//"))
        if not str(path) or str(path) == ".":
            raise StoreError(f"store {dsn!r}: no path after sqlite:")
        if (must_exist or not writable) and not path.is_file():
            raise StoreError(f"store {dsn!r}: {path} does not exist (this command reads a store; it makes none)")
        if writable:
            conn = _open_sqlite_for_writing(dsn, path, busy_timeout_s)
        else:
            conn = _open_sqlite_for_reading(dsn, path, busy_timeout_s)
        store = OutcomeStore(conn, _SQLITE, dsn, store_prompts=store_prompts, path=path)
    elif dsn.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError(
                f"store {redact_dsn(dsn)}: PostgreSQL needs psycopg (pip install 'lmroute[postgres]')"
            ) from exc
        try:
            given = psycopg.conninfo.conninfo_to_dict(dsn)
            liveness = {k: v for k, v in PG_LIVENESS.items() if k not in given}
            pg = psycopg.connect(psycopg.conninfo.make_conninfo(dsn, **liveness), autocommit=True, connect_timeout=10)
        except psycopg.Error as exc:
            raise StoreError(f"store {redact_dsn(dsn)}: cannot connect: {exc}") from exc
        store = OutcomeStore(pg, _POSTGRES, dsn, store_prompts=store_prompts, db_errors=(psycopg.Error,))
    else:
        raise StoreError(f"store {redact_dsn(dsn)!r}: expected sqlite:PATH or postgresql://...")
    try:
        if writable:
            store.migrate()
        else:
            store._check_readable()
    except BaseException:
        store.close()
        raise
    return store


def _open_sqlite_for_writing(dsn: str, path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection that writes the SQLite store at `path` (made, with its folder, when missing)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
    except OSError as exc:  # a folder above it is a file, no permission
        above = next((p for p in path.parents if p.exists()), path.parent)
        why = exc.strerror or str(exc) if above.is_dir() else f"{above} is not a directory"
        raise StoreError(f"store {dsn!r}: cannot create {path}: {why}") from exc
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")  # what retention deletes is zeroed, not left in free pages
    except sqlite3.Error as exc:
        raise StoreError(f"store {dsn!r}: cannot open {path}: {_sqlite_why(exc, busy_timeout_s)}") from exc
    _check_writable(conn, dsn, path, busy_timeout_s)
    return conn


def _open_sqlite_for_reading(dsn: str, path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A read-only connection to the SQLite store at `path`, which it leaves as it is (no journal-mode
    pragma, which writes the header). A WAL store's reader needs the -shm file beside it: where SQLite
    cannot make one (a read-only folder) and the store was closed cleanly (no -wal file: everything is in
    the file), the file is opened as immutable (no locks, no -shm) instead."""
    uri = f"file:{urllib.parse.quote(str(path.absolute()))}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s)
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # SQLite opens the file at the first read
        except sqlite3.Error:
            conn.close()
            if Path(f"{path}-wal").exists():
                raise
            conn = sqlite3.connect(f"{uri}&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise StoreError(f"store {dsn!r}: cannot read {path}: {_sqlite_why(exc, busy_timeout_s)}") from exc
    return conn


def _sqlite_why(exc: sqlite3.Error, busy_timeout_s: float) -> str:
    """Why SQLite refused, in words: a lock another connection holds is not a missing permission."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "database is locked" in f"{exc}":
        return (
            f"another process or transaction holds its lock (waited {busy_timeout_s:g} s: {exc}); stop what "
            "holds it (another server on this store, an erase or import-outcomes in progress) or try again when "
            "it is done"
        )
    return f"{exc}"


def _check_writable(conn: sqlite3.Connection, dsn: str, path: Path, busy_timeout_s: float) -> None:
    """StoreError unless this connection can write: one write (the header's user_version, to the value it
    has) in a transaction that is rolled back, so nothing changes."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            conn.execute(f"PRAGMA user_version = {int(version)}")
        finally:
            conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        conn.close()
        why = _sqlite_why(exc, busy_timeout_s)
        if why.startswith("another process"):
            raise StoreError(f"store {dsn!r}: cannot write {path}: {why}") from exc
        raise StoreError(
            f"store {dsn!r}: cannot write {path} (or its -wal / -shm files, or its folder): {exc}"
        ) from exc


def _create_private(path: Path) -> None:
    """A new SQLite store's file made readable by its owner only (it holds prompts; SQLite gives its -wal
    and -shm files the same mode); an existing file keeps the mode it has."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StoreError(f"store sqlite:{path}: cannot create {path}: {exc.strerror or exc}") from None


class OutcomeStore:
    """Decisions and outcomes over one database connection (see the module docstring)."""

    def __init__(
        self,
        conn: Any,
        dialect: _Dialect,
        dsn: str,
        *,
        store_prompts: bool = True,
        db_errors: tuple[type[Exception], ...] = (sqlite3.Error,),
        path: Path | None = None,
    ) -> None:
        self._conn = conn
        self._dialect = dialect
        self.name = redact_dsn(dsn)
        self.store_prompts = store_prompts
        self._db_errors = db_errors  # the driver's errors, raised as StoreError naming the store
        self._path = path  # a SQLite store's file and its identity (_check_file)
        self._file_id: tuple[int, int] | None = None
        # parameters one statement takes: SQLite's build says (32,766 since 3.32, 999 before)
        self._max_params = (
            conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
            if isinstance(conn, sqlite3.Connection)
            else _PG_MAX_PARAMS
        )
        if path is not None:
            try:
                st = os.stat(path)  # the connection has made the file (journal_mode=WAL wrote its header)
                self._file_id = (st.st_dev, st.st_ino)
            except OSError:
                pass

    @property
    def dialect(self) -> str:
        """ "sqlite" or "postgresql"."""
        return self._dialect.name

    # ---- plumbing -------------------------------------------------------------------------------------

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self._conn.execute(self._dialect.sql(sql), self._params(params))
        except self._db_errors as exc:
            raise StoreError(f"store {self.name}: {type(exc).__name__}: {exc}") from exc

    def _params(self, params: Sequence[Any]) -> tuple[Any, ...]:
        """`params` as this database stores them (PostgreSQL: text without NUL)."""
        return tuple(params) if self._dialect is _SQLITE else tuple(_without_nul(p) for p in params)

    def _insert_rows(self, head: str, rows: Sequence[tuple[Any, ...]], tail: str = "") -> int:
        """`head VALUES (...), (...) tail` for `rows`, as many rows per statement as the database takes
        parameters (a statement per row costs a hand-back of the interpreter lock per row: see
        `_page`). The rows written (an ON CONFLICT ... DO NOTHING in `tail` skips some)."""
        if not rows:
            return 0
        width = len(rows[0])
        marks = "(" + ", ".join("?" * width) + ")"
        per = max(1, min(_MAX_ROWS, self._max_params // width))
        written = 0
        for i in range(0, len(rows), per):
            chunk = rows[i : i + per]
            cur = self._exec(f"{head} VALUES {', '.join([marks] * len(chunk))} {tail}", [v for r in chunk for v in r])
            written += cur.rowcount
        return written

    def _page(
        self,
        columns: Sequence[str],
        rest: str,
        params: Sequence[Any],
        *,
        reals: Collection[str] = (),
        blobs: Collection[str] = (),
    ) -> list[Sequence[Any]]:
        """The rows of `SELECT columns rest`, where `rest` (FROM ... WHERE ...) names a page of rows (at
        most _READ_PAGE, or a bounded IN list), in no particular order; a column may be `expr AS name`.

        SQLite's driver lets go of the interpreter lock around each statement it prepares or runs and each
        row it reads, and takes it back from a busy thread (a loaded server's event loop) only when that
        thread's switch interval (5 ms) runs out: beside one busy thread a write of 1,024 outcomes a
        statement per row took 6.6 s (0.09 s in a few statements), a read of 10,000 decisions a row at a
        time 44 s (0.51 s in pages; benchmarks/results/store_write_busy). So SQLite's page is read as one
        JSON value: BLOBs come as hex and the `reals` as text of 17 digits (its JSON numbers keep 15),
        which readers take as they take the driver's values. A page longer than one value holds (SQLite's
        1 GB) is read row by row. PostgreSQL's driver takes a result whole: read as it is."""
        names = ", ".join(columns)
        if self._dialect is not _SQLITE:
            return list(self._exec(f"SELECT {names} {rest}", params).fetchall())
        inner = ", ".join(
            f"iif({c} IS NULL, NULL, printf('%!.17g', {c})) AS {c}"
            if c in reals
            else f"iif({c} IS NULL, NULL, hex({c})) AS {c}"
            if c in blobs
            else c
            for c in columns
        )
        outer = ", ".join(c.rsplit(" AS ", 1)[-1] for c in columns)  # "expr AS name": its name
        try:
            (text,) = self._exec(
                f"SELECT json_group_array(json_array({outer})) FROM (SELECT {inner} {rest}) AS page", params
            ).fetchone()
        except StoreError as exc:
            if not isinstance(exc.__cause__, sqlite3.DataError):  # SQLITE_TOOBIG: "string or blob too big"
                raise
            return list(self._exec(f"SELECT {names} {rest}", params).fetchall())
        rows: list[Sequence[Any]] = json.loads(text) if text else []
        return rows

    def keeps_no_prompt_text(self) -> bool:
        """Whether the store holds decisions and none of them a prompt's text: its server runs with the
        privacy switch (`--store-prompts false`), which the store itself does not record."""
        row = self._exec(
            "SELECT COUNT(*), COUNT(prompt_text) FROM "
            "(SELECT prompt_text FROM decisions ORDER BY time_ms DESC LIMIT 1000) AS d"
        ).fetchone()
        return bool(row[0]) and not row[1]

    def answers(self) -> bool:
        """Whether the database answers a trivial query now (after a failed write: was it the data?)."""
        try:
            self._exec("SELECT 1").fetchone()
        except Exception:
            return False
        return True

    def _begin(self) -> None:
        self._exec("BEGIN IMMEDIATE" if self._dialect is _SQLITE else "BEGIN")

    def _check_file(self) -> None:
        """A SQLite store: StoreError when its path no longer names the file this connection opened."""
        if self._path is None:
            return
        try:
            st = os.stat(self._path)
            found: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except OSError:
            found = None
        if self._file_id is None and found is not None:
            self._file_id = found
        if found is None or found != self._file_id:
            raise StoreError(
                f"store {self.name}: its file {self._path} was removed or replaced while open: nothing is "
                "committed to the file that was opened (reopen the store)"
            )

    def _connection_lost(self) -> bool:
        """PostgreSQL: whether the connection is gone (the server closed it, the network failed), after a
        statement failed; SQLite, in process, loses none."""
        if self._dialect is _SQLITE:
            return False
        return bool(getattr(self._conn, "broken", False) or getattr(self._conn, "closed", False))

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def close(self) -> None:
        """Close the connection (idempotent)."""
        try:
            self._conn.close()
        except Exception:  # closing a broken connection must not raise
            pass

    # ---- schema ---------------------------------------------------------------------------------------

    def schema_version(self) -> int:
        """The schema version the store is at (0 for an empty database)."""
        if not self._has_table("lmroute_schema"):
            return 0
        row = self._exec("SELECT version FROM lmroute_schema").fetchone()
        return 0 if row is None else int(row[0])

    def _has_table(self, name: str) -> bool:
        if self._dialect is _SQLITE:
            q = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        else:
            q = "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = ?"
        return self._exec(q, (name,)).fetchone() is not None

    def _check_readable(self) -> None:
        """StoreError unless this store is at this lmroute's schema version, read in one read-only
        transaction (SQLite: a deferred one, which waits for no writer): what a command that only reads
        does instead of `migrate`. An older store is refused rather than migrated: migrating it would
        break an older server still using it, and reading it as it is would need every column the
        migrations since added."""
        self._exec("BEGIN" if self._dialect is _SQLITE else "BEGIN READ ONLY")
        try:
            known = self._has_table("lmroute_schema")
            version = self.schema_version() if known else 0
        except BaseException:
            _Transaction(self)._rollback()
            raise
        self._exec("COMMIT")
        if not known:
            raise StoreError(
                f"store {self.name}: holds no lmroute store (no lmroute_schema table); this command only reads a "
                "store: make it with lmroute-serve --store or lmroute-export import-outcomes"
            )
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"store {self.name}: schema version {version} is newer than this lmroute's "
                f"({SCHEMA_VERSION}); upgrade lmroute to use it"
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"store {self.name}: schema version {version}, older than this lmroute's ({SCHEMA_VERSION}); this "
                "command only reads a store and leaves it as it is: open it with lmroute-serve or lmroute-export "
                "import-outcomes of this lmroute, which migrate it"
            )

    def migrate(self, until: int = SCHEMA_VERSION) -> int:
        """Bring the store to version `until` (SCHEMA_VERSION: this code's; a lower one builds a store as
        an older lmroute left it, for migration tests), one transaction per step; the version it is at."""
        while True:
            with self._transaction():
                if self._dialect is _POSTGRES:
                    self._exec("SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
                if not self._has_table("lmroute_schema"):
                    if self._has_table("decisions") or self._has_table("outcomes"):
                        raise StoreError(f"store {self.name}: has decisions/outcomes tables but no lmroute_schema")
                    self._exec("CREATE TABLE lmroute_schema (version INTEGER NOT NULL)")
                    self._exec("INSERT INTO lmroute_schema (version) VALUES (0)")
                version = self.schema_version()
                if version > SCHEMA_VERSION:
                    raise StoreError(
                        f"store {self.name}: schema version {version} is newer than this lmroute's "
                        f"({SCHEMA_VERSION}); upgrade lmroute to use it"
                    )
                if version >= until:
                    return version
                for statement in MIGRATIONS[version]:
                    if statement.startswith("LOCK TABLE") and self._dialect is not _POSTGRES:
                        continue  # SQLite: the transaction holds the database's write lock
                    self._exec(statement.format(**self._dialect.types))
                self._exec("UPDATE lmroute_schema SET version = ?", (version + 1,))

    # ---- writing --------------------------------------------------------------------------------------

    def write(
        self,
        decisions: Sequence[Decision] = (),
        outcomes: Sequence[Outcome] = (),
        *,
        now_ms: int | None = None,
        own_decisions_only: bool = False,
    ) -> list[Verdict]:
        """Record `decisions` (a decision id already stored is kept as it was) and then `outcomes`, in one
        transaction committed before this returns; one Verdict per outcome, in order. Outcomes must be
        valid (`Outcome.check`). With `own_decisions_only`, an outcome a tenant reports on a decision
        another caller made (its `caller`, "" included) is refused (OTHER_TENANT); a reporter naming no
        tenant may report on any. Raises the driver's error when the transaction fails: then nothing of
        this call is stored. The rows go in a few statements, not one per row (see `_page`)."""
        now = _now_ms() if now_ms is None else now_ms
        with self._transaction():
            self._insert_rows(_INSERT_DECISION, [self._decision_row(d) for d in decisions], _DECISION_KEPT)
            known = self._decision_prompts([o.decision_id for o in outcomes if o.decision_id is not None])
            rows = [self._outcome_row(o, known, now, own_decisions_only) for o in outcomes]
            return self._insert_outcomes(rows)

    def _decision_row(self, d: Decision) -> tuple[Any, ...]:
        emb = None if d.embedding is None else np.asarray(d.embedding, dtype="<f4").tobytes()
        return self._params(
            (
                d.decision_id,
                d.time_ms,
                d.kind,
                d.bundle_version,
                d.router,
                json.dumps(dict(d.scores), sort_keys=True),
                d.threshold,
                d.chosen_model,
                d.propensity,
                d.strong_model,
                d.weak_model,
                d.prompt_sha256,
                d.prompt_text if self.store_prompts else None,
                d.n_tokens,
                d.encoder_id,
                emb,
                d.prompt_chars if d.prompt_chars is not None else (len(d.prompt_text) if d.prompt_text else None),
                d.tenant or None,
                d.policy or None,
                d.choice or None,
                d.caller or None,
            )
        )

    def _decision_prompts(self, ids: Sequence[str]) -> dict[str, tuple[str, str, str, tuple[str, str]]]:
        """decision id -> (prompt sha256, chosen model or "", caller or "", its (strong, weak) pair), for
        the ids that are stored."""
        out: dict[str, tuple[str, str, str, tuple[str, str]]] = {}
        for chunk in _chunks(list(dict.fromkeys(ids))):
            marks = ", ".join("?" * len(chunk))
            for did, sha, chosen, caller, strong, weak in self._page(
                ("decision_id", "prompt_sha256", "chosen_model", "caller", "strong_model", "weak_model"),
                f"FROM decisions WHERE decision_id IN ({marks})",
                chunk,
            ):
                out[str(did)] = (str(sha), "" if chosen is None else str(chosen), caller or "", (strong, weak))
        return out

    def _outcome_row(
        self,
        o: Outcome,
        known: Mapping[str, tuple[str, str, str, tuple[str, str]]],
        now: int,
        own_decisions_only: bool,
    ) -> Verdict | tuple[Any, ...]:
        """The row `o` stores (the columns of _INSERT_OUTCOME), or the verdict that refuses it."""
        model = o.model
        if o.decision_id is not None:
            found = known.get(o.decision_id)
            if found is None:
                made = int(o.decision_id[:12], 16)
                # an id from the future past the same margin (clocks of replicas differ a little) was never made
                return Verdict.NOT_YET if abs(now - made) < NOT_YET_MS else Verdict.NOT_FOUND
            sha, chosen, caller, pair = found
            if own_decisions_only and o.reporter and o.reporter != caller:
                return Verdict.OTHER_TENANT
            if o.side in SIDES:  # the side of the pair this decision was made between
                model = pair[SIDES.index(o.side)] or model
            model = model or chosen
            if not model:
                return Verdict.NO_MODEL
            text = None
        else:
            sha = o.prompt_hash or prompt_sha256(o.prompt_text or "")
            text = o.prompt_text if self.store_prompts else None
        return self._params(
            (
                o.target,
                o.decision_id,
                sha,
                text,
                o.kind.value,
                model,
                float(o.quality),
                o.source,
                o.reporter,
                now if o.observed_ms is None else o.observed_ms,
                now,
            )
        )

    def _insert_outcomes(self, rows: Sequence[Verdict | tuple[Any, ...]]) -> list[Verdict]:
        """Store the rows (refusals pass through as they are): STORED for a new key (target, kind, model,
        source, reporter), DUPLICATE for a key stored, or earlier in `rows`, with the same quality,
        CONFLICT for one with another. Keys are looked up first and the new rows inserted together, in
        the order given on SQLite (a transaction there keeps other writers out from its start). On
        PostgreSQL they go in key order, so that two transactions inserting keys they share (replicas on
        one store) take their locks in the same order and cannot deadlock; when the insert writes fewer
        (another transaction stored one of the keys since the lookup), it is undone and the rows go in one
        at a time, in key order too."""
        verdicts = [r if isinstance(r, Verdict) else Verdict.STORED for r in rows]
        candidates = [(i, r) for i, r in enumerate(rows) if not isinstance(r, Verdict)]
        if not self._dialect.one_writer:  # a stable sort: a key's reports stay in call order
            candidates.sort(key=lambda ir: _outcome_key(ir[1]))
        if len(candidates) <= 1:  # one row: inserted at once and looked up only if not written, a statement fewer
            return self._insert_one_at_a_time(candidates, verdicts)
        held = self._stored_qualities({r[0] for _, r in candidates})
        new: list[tuple[Any, ...]] = []
        for i, r in candidates:
            key, quality = _outcome_key(r), float(r[6])
            stored = held.get(key)
            if stored is None:
                held[key] = quality
                new.append(r)
            else:
                verdicts[i] = Verdict.DUPLICATE if abs(stored - quality) < 1e-9 else Verdict.CONFLICT
        if self._dialect.one_writer:  # nothing was stored since the lookup: every new row goes in
            if (written := self._insert_rows(_INSERT_OUTCOME, new, _OUTCOME_KEPT)) != len(new):
                raise StoreError(f"store {self.name}: {len(new) - written} of {len(new)} new outcomes were not written")
            return verdicts
        self._exec("SAVEPOINT outcomes_together")
        if self._insert_rows(_INSERT_OUTCOME, new, _OUTCOME_KEPT) == len(new):
            self._exec("RELEASE SAVEPOINT outcomes_together")
            return verdicts
        self._exec("ROLLBACK TO SAVEPOINT outcomes_together")
        return self._insert_one_at_a_time(candidates, verdicts)

    def _insert_one_at_a_time(
        self, candidates: Sequence[tuple[int, tuple[Any, ...]]], verdicts: list[Verdict]
    ) -> list[Verdict]:
        """`verdicts` with the verdict of each (index, row) of `candidates`, inserted in the order given."""
        for i, row in candidates:
            if self._insert_rows(_INSERT_OUTCOME, [row], _OUTCOME_KEPT) == 1:
                verdicts[i] = Verdict.STORED
                continue
            found = self._exec(
                "SELECT quality FROM outcomes WHERE target = ? AND kind = ? AND model = ? AND source = ? "
                "AND reporter = ?",
                _outcome_key(row),
            ).fetchone()
            same = found is not None and abs(float(found[0]) - row[6]) < 1e-9
            verdicts[i] = Verdict.DUPLICATE if same else Verdict.CONFLICT
        return verdicts

    def _stored_qualities(self, targets: Collection[str]) -> dict[tuple[Any, ...], float]:
        """key (target, kind, model, source, reporter) -> quality, for the outcomes stored on `targets`."""
        out: dict[tuple[Any, ...], float] = {}
        for chunk in _chunks(sorted(targets)):
            for target, kind, model, source, reporter, quality in self._page(
                ("target", "kind", "model", "source", "reporter", "quality"),
                f"FROM outcomes WHERE target IN ({', '.join('?' * len(chunk))})",
                chunk,
                reals=("quality",),
            ):
                out[(target, kind, model, source, reporter)] = float(quality)
        return out

    def prune(self, before_ms: int, *, limit: int | None = None) -> tuple[int, int]:
        """Delete decisions and outcomes older than `before_ms` (decision time; outcome receipt time), at
        most `limit` of each table, oldest first (None: all); (decisions deleted, outcomes deleted). The
        retention limit of the serving process calls this with a limit, so that no one transaction holds
        the writer for long (one of 100,000 decisions took 1.2 s on SQLite)."""
        if limit is None:
            outcomes, decisions = "received_ms < ?", "time_ms < ?"
            params: tuple[int, ...] = (before_ms,)
        else:
            outcomes = "id IN (SELECT id FROM outcomes WHERE received_ms < ? ORDER BY received_ms LIMIT ?)"
            decisions = "decision_id IN (SELECT decision_id FROM decisions WHERE time_ms < ? ORDER BY time_ms LIMIT ?)"
            params = (before_ms, limit)
        with self._transaction():
            n_out = self._exec(f"DELETE FROM outcomes WHERE {outcomes}", params).rowcount
            n_dec = self._exec(f"DELETE FROM decisions WHERE {decisions}", params).rowcount
        return int(n_dec), int(n_out)

    def newest_cutoff(self, keep: int) -> int | None:
        """The decision time that keeps the newest `keep` decisions: that of the keep-th newest, so that
        `prune(cutoff)` deletes every older one (decisions made in the same millisecond as it stay too);
        None when the store holds fewer than `keep`."""
        if keep < 1:
            raise ValueError(f"newest_cutoff: keep must be >= 1 (got {keep})")
        row = self._exec("SELECT time_ms FROM decisions ORDER BY time_ms DESC LIMIT 1 OFFSET ?", (keep - 1,)).fetchone()
        return None if row is None else int(row[0])

    def erase(
        self,
        *,
        decision_ids: Collection[str] = (),
        prompt_sha256s: Collection[str] = (),
        callers: Collection[str] = (),
        dry_run: bool = False,
        batch: int = 5000,
    ) -> Erased:
        """Delete what the store holds about these, on request (a user's data, a prompt sent by mistake):
        the decisions with these ids; every decision and outcome of a prompt, by the SHA-256 of its text
        (`prompt_sha256`); the decisions each of these tenants' calls made ("" names calls naming no
        tenant) and the outcomes it reported. The outcomes of a deleted decision go with it. The counts
        deleted, or with `dry_run` those that would be. Deleted in transactions of at most `batch`
        decisions with their outcomes, then of `batch` outcomes, so a serving writer sharing the store
        waits for one batch, not for the whole erasure. SQLite overwrites what it deletes (secure_delete),
        and the write-ahead log, which still holds recently written rows, is emptied after (`checkpoint`;
        `log_emptied` False when a reader kept it from that: run it again)."""
        names = len(set(decision_ids)) + len(set(prompt_sha256s)) + len(set(callers))
        if names > MAX_ERASE_NAMES:
            raise ValueError(f"erase: {names} ids, hashes and tenants in one call; at most {MAX_ERASE_NAMES}")
        decided: list[str] = []  # the decisions to delete: any of these
        direct: list[str] = []  # the outcomes to delete by their own columns: any of these
        params: list[str] = []
        direct_params: list[str] = []
        for column, values, outcome_column, outcome_values in (
            ("decision_id", decision_ids, "target", [f"d:{i}" for i in decision_ids]),
            ("prompt_sha256", prompt_sha256s, "prompt_sha256", prompt_sha256s),
            ("COALESCE(caller, '')", callers, "reporter", callers),
        ):
            if values:
                clause, ordered = _in(column, values)
                decided.append(clause)
                params += ordered
                clause, ordered = _in(outcome_column, outcome_values)
                direct.append(clause)
                direct_params += ordered
        if not decided:
            return Erased(0, 0, True)
        where_decisions, where_outcomes = " OR ".join(decided), " OR ".join(direct)
        if dry_run:
            n_dec = self._exec(f"SELECT COUNT(*) FROM decisions WHERE {where_decisions}", params).fetchone()[0]
            n_out = self._exec(
                f"SELECT COUNT(*) FROM outcomes WHERE {where_outcomes} OR target IN "
                f"(SELECT 'd:' || decision_id FROM decisions WHERE {where_decisions})",
                [*direct_params, *params],
            ).fetchone()[0]
            return Erased(int(n_dec), int(n_out), True)
        n_dec = n_out = 0
        while True:  # decisions with their outcomes, a batch a transaction
            with self._transaction():
                ids = [
                    str(r[0])
                    for r in self._exec(
                        f"SELECT decision_id FROM decisions WHERE {where_decisions} LIMIT ?", [*params, batch]
                    ).fetchall()
                ]
                if ids:
                    clause, ordered = _in("target", [f"d:{i}" for i in ids])
                    n_out += self._exec(f"DELETE FROM outcomes WHERE {clause}", ordered).rowcount
                    clause, ordered = _in("decision_id", ids)
                    n_dec += self._exec(f"DELETE FROM decisions WHERE {clause}", ordered).rowcount
            if len(ids) < batch:
                break
        while True:  # outcomes by prompt or reporter, on no deleted decision
            with self._transaction():
                done = self._exec(
                    f"DELETE FROM outcomes WHERE id IN (SELECT id FROM outcomes WHERE {where_outcomes} LIMIT ?)",
                    [*direct_params, batch],
                ).rowcount
            n_out += done
            if done < batch:
                break
        return Erased(n_dec, n_out, self.checkpoint())

    def unmatched(
        self, *, decision_ids: Collection[str] = (), prompt_sha256s: Collection[str] = (), callers: Collection[str] = ()
    ) -> dict[str, list[str]]:
        """The names `erase` would find nothing for, per kind ("decision_ids", "prompt_sha256s",
        "callers"; sorted): what a request to erase named that the store does not hold."""
        out: dict[str, list[str]] = {}
        for key, values, tables in (
            ("decision_ids", decision_ids, (("decisions", "decision_id"),)),
            ("prompt_sha256s", prompt_sha256s, (("decisions", "prompt_sha256"), ("outcomes", "prompt_sha256"))),
            ("callers", callers, (("decisions", "COALESCE(caller, '')"), ("outcomes", "reporter"))),
        ):
            found: set[str] = set()
            for chunk in _chunks(sorted(set(values))):
                for table, column in tables:
                    clause, ordered = _in(column, chunk)
                    found.update(
                        str(r[0]) for r in self._exec(f"SELECT DISTINCT {column} FROM {table} WHERE {clause}", ordered)
                    )
            out[key] = sorted(set(values) - found)
        return out

    def checkpoint(self, *, wait: bool = True) -> bool:
        """SQLite: copy the write-ahead log into the database and empty it (rows deleted from the database
        stay readable in the log's older frames until then); False when a reader's open snapshot kept it
        from finishing. With `wait` it waits for such readers (and another writer's lock) up to the
        connection's busy timeout (30 s); without, it does what it can at once and leaves the rest (the
        serving writer, which must not hold Feedback's acknowledgments for a reader: it tries again
        later). PostgreSQL: True (its log is the server's)."""
        if self._dialect is not _SQLITE:
            return True
        if wait:
            busy, _, _ = self._exec("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return not busy
        (timeout_ms,) = self._exec("PRAGMA busy_timeout").fetchone()
        self._exec("PRAGMA busy_timeout = 0")
        try:
            busy, _, _ = self._exec("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._exec(f"PRAGMA busy_timeout = {int(timeout_ms)}")
        return not busy

    def record_adaptation(
        self,
        *,
        parent_version: str,
        candidate_version: str | None,
        kind: str,
        n_outcomes: int,
        accepted: bool,
        report: Mapping[str, Any],
        now_ms: int | None = None,
    ) -> None:
        """Record one adaptation run and the gate's verdict with every number behind it."""
        with self._transaction():
            self._exec(
                "INSERT INTO adaptations (time_ms, parent_version, candidate_version, kind, n_outcomes, accepted, "
                "report) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    _now_ms() if now_ms is None else now_ms,
                    parent_version,
                    candidate_version,
                    kind,
                    n_outcomes,
                    int(accepted),
                    report_json(dict(report), sort_keys=True),
                ),
            )

    def record_target_changes(self, changes: Sequence[TargetChange], *, now_ms: int | None = None) -> list[int]:
        """Record live target changes in one transaction, committed before this returns; their ids, in
        order (the order every server applies them in)."""
        now = _now_ms() if now_ms is None else now_ms
        ids: list[int] = []
        with self._transaction():
            for c in changes:
                if c.target not in TargetChange.TARGETS:
                    raise ValueError(f"target: must be one of {', '.join(TargetChange.TARGETS)} (got {c.target!r})")
                row = self._exec(
                    "INSERT INTO target_changes (time_ms, tenant, target, value) VALUES (?, ?, ?, ?) RETURNING id",
                    (c.time_ms or now, c.tenant, c.target, c.value),
                ).fetchone()
                ids.append(int(row[0]))
        return ids

    def target_changes(self, *, after_id: int = 0) -> list[tuple[int, TargetChange]]:
        """The recorded target changes with id > `after_id`, in id order, as (id, change)."""
        rows = self._exec(
            "SELECT id, time_ms, tenant, target, value FROM target_changes WHERE id > ? ORDER BY id", (after_id,)
        ).fetchall()
        return [
            (int(i), TargetChange(str(tenant), str(target), None if value is None else float(value), int(t)))
            for i, t, tenant, target, value in rows
        ]

    def adaptations(self) -> list[dict[str, Any]]:
        """Every recorded adaptation run, oldest first."""
        rows = self._exec(
            "SELECT time_ms, parent_version, candidate_version, kind, n_outcomes, accepted, report FROM adaptations "
            "ORDER BY id"
        ).fetchall()
        keys = ("time_ms", "parent_version", "candidate_version", "kind", "n_outcomes", "accepted")
        return [{**dict(zip(keys, r[:6])), "accepted": bool(r[5]), "report": json.loads(r[6])} for r in rows]

    def copy_to(self, other: OutcomeStore, *, chunk: int = 1000) -> dict[str, int]:
        """Copy every row of this store into `other`, an empty store (another backend too: SQLite to
        PostgreSQL when a deployment grows replicas), in one transaction: all or nothing; rows per table.
        Auto-numbered ids are numbered again in the same order. StoreError when `other` holds any row."""
        held = {table: other._count(table) for table, _, _ in COPIED}
        if any(held.values()):
            raise StoreError(
                f"store {other.name}: not empty ({', '.join(f'{n} {t}' for t, n in held.items() if n)}); "
                "copy into a new store"
            )
        copied: dict[str, int] = {}
        with other._transaction():
            for table, columns, order in COPIED:
                marks = ", ".join("?" * len(columns.split(", ")))
                insert = other._dialect.sql(f"INSERT INTO {table} ({columns}) VALUES ({marks})")
                rows = self._conn.cursor()
                rows.execute(f"SELECT {columns} FROM {table} ORDER BY {order}")
                n = 0
                while batch := rows.fetchmany(chunk):
                    writer = other._conn.cursor()
                    to_pg = other._dialect is not _SQLITE
                    writer.executemany(
                        insert, [tuple(_without_nul(_portable(v)) if to_pg else _portable(v) for v in r) for r in batch]
                    )
                    n += len(batch)
                copied[table] = n
        return copied

    def _count(self, table: str) -> int:
        return int(self._exec(f"SELECT COUNT(*) FROM {table}").fetchone()[0])

    # ---- reading --------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows per table: {"decisions": n, "outcomes": n}."""
        return {t: self._count(t) for t in ("decisions", "outcomes")}

    def decision(self, decision_id: str) -> Decision | None:
        """The stored decision with this id, or None."""
        rows = self._decisions_where("decision_id IN (?)", (decision_id,))
        return rows[0] if rows else None

    def recent_decisions(
        self,
        *,
        since_ms: int = 0,
        until_ms: int | None = None,
        limit: int = 100_000,
        callers: Collection[str] | None = None,
    ) -> list[Decision]:
        """Decisions made in [since_ms, until_ms), newest first, at most `limit` (what recalibration reads);
        with `callers`, only those made for these tenants' calls ("" names calls naming no tenant)."""
        until = (1 << 62) if until_ms is None else until_ms
        where, params = "time_ms >= ? AND time_ms < ?", list[Any]([since_ms, until])
        if callers is not None:
            if not callers:
                return []
            clause, names = _in("COALESCE(caller, '')", callers)
            where, params = f"{where} AND {clause}", [*params, *names]
        tie = self._dialect.decision_tie
        out: list[Decision] = []
        after, after_params = "", list[Any]()
        while len(out) < limit:  # a page at a time, newest first by (time, tie)
            n = min(_READ_PAGE, limit - len(out))
            rows = self._page(
                [*self._DECISION_COLUMNS, f"{tie} AS tie"],
                f"FROM decisions WHERE ({where}){after} ORDER BY time_ms DESC, {tie} DESC LIMIT ?",
                [*params, *after_params, n],
                **self._DECISION_READ,
            )
            rows = sorted(rows, key=lambda r: (int(r[1]), r[-1]), reverse=True)
            out += [_decision_of(r) for r in rows]
            if len(rows) < n:
                break
            after = f" AND (time_ms < ? OR (time_ms = ? AND {tie} < ?))"
            after_params = [int(rows[-1][1]), int(rows[-1][1]), rows[-1][-1]]
        return out

    def target_decisions(self, tenant: str, router: str, limit: int) -> list[tuple[str, float, bool, float | None]]:
        """The latest `limit` decisions made under `tenant`'s share target with `router`, oldest first, as
        (bundle version, score, went strong, the target share it was made at: None where not recorded):
        what a share controller replays after a restart."""
        rows = self._exec(
            "SELECT bundle_version, scores, chosen_model = strong_model, choice FROM decisions "
            "WHERE tenant = ? AND router = ? AND policy = 'target' ORDER BY time_ms DESC LIMIT ?",
            (tenant, router, limit),
        ).fetchall()
        return [
            (str(v), float(json.loads(sc)[router]), bool(strong), _made_at(choice, "target"))
            for v, sc, strong, choice in reversed(rows)
        ]

    def spend_decisions(self, tenant: str, router: str, limit: int) -> list[str]:
        """The `choice` JSON of the latest `limit` decisions made under `tenant`'s spend target with
        `router`, oldest first: what a spend controller replays after a restart."""
        rows = self._exec(
            "SELECT choice FROM decisions WHERE tenant = ? AND router = ? AND policy = 'spend_target' "
            "AND choice IS NOT NULL ORDER BY time_ms DESC LIMIT ?",
            (tenant, router, limit),
        ).fetchall()
        return [str(r[0]) for r in reversed(rows)]

    _DECISION_COLUMNS = (
        "decision_id, time_ms, kind, bundle_version, scores, strong_model, weak_model, prompt_sha256, n_tokens, "
        "encoder_id, router, threshold, chosen_model, propensity, prompt_text, embedding, prompt_chars, tenant, "
        "policy, choice, caller"
    ).split(", ")

    _DECISION_READ: dict[str, Any] = {"reals": ("threshold", "propensity"), "blobs": ("embedding",)}
    # an outcome's row as labeled_prompts reads it
    _LABELED_COLUMNS = tuple("target decision_id prompt_sha256 prompt_text kind model quality observed_ms id".split())

    def _decisions_where(self, where: str, params: Sequence[Any]) -> list[Decision]:
        """The decisions `WHERE where` (a page: see `_page`), in no particular order."""
        rows = self._page(self._DECISION_COLUMNS, f"FROM decisions WHERE {where}", params, **self._DECISION_READ)
        return [_decision_of(r) for r in rows]

    def labeled_prompts(
        self,
        *,
        since_ms: int = 0,
        until_ms: int | None = None,
        reporters: Collection[str] | None = None,
        callers: Collection[str] | None = None,
    ) -> list[LabeledPrompt]:
        """Every judged prompt whose outcomes were received in [since_ms, until_ms), in the order it was judged,
        with its outcomes by model and its decision (by id; for an outcome by prompt, the latest decision
        recorded for the same prompt, when there is one). With `reporters`, only the outcomes those
        reporters sent ("" names the caller that named no tenant); None = every reporter's. With `callers`,
        only the outcomes of decisions made for those tenants' calls (joined by decision id: an outcome
        by prompt text judges no call; "" names calls naming no tenant): one tenant's traffic."""
        until = (1 << 62) if until_ms is None else until_ms
        where = "received_ms >= ? AND received_ms < ?"
        params: list[Any] = [since_ms, until]
        if reporters is not None:
            if not reporters:
                return []
            clause, names = _in("reporter", reporters)
            where, params = f"{where} AND {clause}", [*params, *names]
        if callers is not None:  # only outcomes joined by id to a decision of these callers
            if not callers:
                return []
            clause, names = _in("COALESCE(caller, '')", callers)
            where, params = (
                f"{where} AND decision_id IN (SELECT decision_id FROM decisions WHERE {clause})",
                [*params, *names],
            )
        rows: list[Sequence[Any]] = []
        last = 0  # ids count from 1
        while True:  # a page at a time, in id order (as received)
            page = self._page(
                self._LABELED_COLUMNS,
                f"FROM outcomes WHERE ({where}) AND id > ? ORDER BY id LIMIT ?",
                [*params, last, _READ_PAGE],
                reals=("quality",),
            )
            page = sorted(page, key=lambda r: int(r[8]))
            rows += page
            if len(page) < _READ_PAGE:
                break
            last = int(page[-1][8])
        groups: dict[str, list[Any]] = {}
        for r in rows:
            groups.setdefault(str(r[0]), []).append(r)
        by_id = {
            d.decision_id: d
            for chunk in _chunks([str(g[0][1]) for g in groups.values() if g[0][1] is not None])
            for d in self._decisions_where(f"decision_id IN ({', '.join('?' * len(chunk))})", chunk)
        }
        by_prompt: dict[str, Decision] = {}
        for chunk in _chunks([str(g[0][2]) for g in groups.values() if g[0][1] is None]):
            marks = ", ".join("?" * len(chunk))
            for d in self._decisions_where(  # the latest of each prompt's decisions (not all of them: a page)
                f"(prompt_sha256, time_ms) IN (SELECT prompt_sha256, MAX(time_ms) FROM decisions "
                f"WHERE prompt_sha256 IN ({marks}) GROUP BY prompt_sha256)",
                chunk,
            ):
                held = by_prompt.get(d.prompt_sha256)  # two in its last millisecond: the greater id
                if held is None or d.decision_id > held.decision_id:
                    by_prompt[d.prompt_sha256] = d
        out = [_labeled(target, g, by_id, by_prompt) for target, g in groups.items()]
        out.sort(key=lambda p: p.time_ms)
        return out


class _Transaction:
    """BEGIN ... COMMIT, ROLLBACK on an exception (the connections run in autocommit mode otherwise)."""

    def __init__(self, store: OutcomeStore) -> None:
        self._store = store

    def __enter__(self) -> None:
        self._store._begin()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._store._check_file()
            except StoreError:
                self._rollback()
                raise
            try:
                self._store._exec("COMMIT")
            except StoreError as exc:
                if self._store._connection_lost():  # sent, never answered: committed or not, nobody knows
                    raise CommitUnknown(
                        f"{exc}; the connection was lost during COMMIT: the transaction may have been committed or not"
                    ) from exc.__cause__
                raise
        else:
            self._rollback()

    def _rollback(self) -> None:
        """ROLLBACK after a failure, which stays the error raised: where the database has rolled back
        already (SQLite after SQLITE_FULL, I/O errors; a lost connection) ROLLBACK fails too, and its
        error ("cannot rollback - no transaction is active") hid why the write failed."""
        try:
            self._store._exec("ROLLBACK")
        except StoreError:
            pass


_INSERT_DECISION = (
    "INSERT INTO decisions (decision_id, time_ms, kind, bundle_version, router, scores, threshold, chosen_model, "
    "propensity, strong_model, weak_model, prompt_sha256, prompt_text, n_tokens, encoder_id, embedding, "
    "prompt_chars, tenant, policy, choice, caller)"
)
_DECISION_KEPT = "ON CONFLICT (decision_id) DO NOTHING"
_INSERT_OUTCOME = (
    "INSERT INTO outcomes (target, decision_id, prompt_sha256, prompt_text, kind, model, quality, source, reporter, "
    "observed_ms, received_ms)"
)
_OUTCOME_KEPT = "ON CONFLICT (target, kind, model, source, reporter) DO NOTHING"


def _outcome_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """The key of an _INSERT_OUTCOME row: target, kind, model, source, reporter."""
    return (row[0], row[4], row[5], row[7], row[8])


def _without_nul(value: Any) -> Any:
    """A text PostgreSQL takes: its text type holds no NUL character, which becomes U+FFFD (a prompt holding
    one failed its decision's write, and the writer retried it before every later one: the store took
    nothing more). The prompt's hash is of the text as sent."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) and "\x00" in value else value


def _bytes(value: Any) -> bytes:
    """A BLOB as `_page` reads it: bytes (or a memoryview) from the driver, or hex text."""
    return bytes.fromhex(value) if isinstance(value, str) else bytes(value)


def _portable(value: Any) -> Any:
    """A value read from one backend as the other takes it (PostgreSQL reads BYTEA as a memoryview)."""
    return bytes(value) if isinstance(value, memoryview) else value


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


def _in(column: str, names: Collection[str]) -> tuple[str, list[str]]:
    """`column IN (?, ...)` for `names` (sorted, once each) and its parameters."""
    ordered = sorted(set(names))
    return f"{column} IN ({', '.join('?' * len(ordered))})", ordered


def _decision_of(r: Sequence[Any]) -> Decision:
    """A decision from its row of `_DECISION_COLUMNS` as `_page` reads it (the embedding as bytes or hex)."""
    raw = r[15]
    emb = None if raw is None else np.frombuffer(_bytes(raw), dtype="<f4").astype(np.float32)
    return Decision(
        decision_id=str(r[0]),
        time_ms=int(r[1]),
        kind=str(r[2]),
        bundle_version=str(r[3]),
        scores={str(k): float(v) for k, v in json.loads(r[4]).items()},
        strong_model=str(r[5]),
        weak_model=str(r[6]),
        prompt_sha256=str(r[7]),
        n_tokens=int(r[8]),
        encoder_id=str(r[9]),
        router=str(r[10]),
        threshold=None if r[11] is None else float(r[11]),
        chosen_model=None if r[12] is None else str(r[12]),
        propensity=None if r[13] is None else float(r[13]),
        prompt_text=None if r[14] is None else str(r[14]),
        embedding=emb,
        prompt_chars=None if r[16] is None else int(r[16]),
        tenant=r[17] or "",
        policy=r[18] or "",
        choice=r[19] or "",
        caller=r[20] or "",
    )


def _labeled(
    target: str, rows: Iterable[Sequence[Any]], by_id: Mapping[str, Decision], by_prompt: Mapping[str, Decision]
) -> LabeledPrompt:
    rows = list(rows)
    sums: dict[str, list[float]] = {}
    for r in rows:
        sums.setdefault(str(r[5]), []).append(float(r[6]))
    qualities = {m: math.fsum(v) / len(v) for m, v in sums.items()}  # np.mean costs ~7 us a list
    kinds = frozenset(OutcomeKind(str(r[4])) for r in rows)
    first = rows[0]
    sha = str(first[2])
    # joined by id: the decision the outcome judges; by prompt: only what it says about the prompt
    # (its embedding and text), not its choice, which the outcome did not follow
    own = by_id.get(str(first[1])) if first[1] is not None else None
    d = own if own is not None else by_prompt.get(sha)
    text = first[3] if first[3] is not None else (d.prompt_text if d is not None else None)
    return LabeledPrompt(
        target=target,
        time_ms=max(int(r[7]) for r in rows),
        first_ms=min(int(r[7]) for r in rows),
        decided_ms=own.time_ms if own is not None else None,
        prompt_sha256=sha,
        kinds=kinds,
        qualities=qualities,
        prompt_text=None if text is None else str(text),
        encoder_id=d.encoder_id if d is not None else "",
        n_tokens=d.n_tokens if d is not None else None,
        prompt_chars=len(text) if text is not None else (d.prompt_chars if d is not None else None),
        decision_id=own.decision_id if own is not None else None,
        bundle_version=own.bundle_version if own is not None else "",
        chosen_model=own.chosen_model if own is not None else None,
        propensity=own.propensity if own is not None else None,
        scores=dict(own.scores) if own is not None else {},
        threshold=own.threshold if own is not None else None,
        embedding=d.embedding if d is not None else None,
        choice=own.choice if own is not None else "",
        caller=own.caller if own is not None else "",
    )


def _made_at(choice: str | None, key: str) -> float | None:
    """The target a decision's `choice` JSON says it was made at (`key`), None where it says none."""
    try:
        value = json.loads(choice)[key] if choice else None
    except (ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
