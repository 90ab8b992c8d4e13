"""storage/sqlite_db.py: several processes opening one new database at the same moment.

`serve --workers N` and two servers on one data folder both do this (the NPI index, for example, is
created by whichever worker gets the first NPI request). Every opener must get a working database,
never a raw "database is locked".
"""
from __future__ import annotations

import multiprocessing
import os

import pytest

from dicomweb_wsgi.storage.sqlite_index import SqliteIndex

OPENERS = 6


def _open_and_read(path: str, barrier, results) -> None:
    barrier.wait()
    try:
        index = SqliteIndex(path)
        index.connection().execute("SELECT count(*) FROM study").fetchone()
        index.close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.parametrize("round_", range(8))
def test_processes_creating_one_new_database_at_once_all_succeed(tmp_path, round_):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(OPENERS), ctx.Queue()
    path = os.path.join(tmp_path, "index.sqlite3")
    procs = [ctx.Process(target=_open_and_read, args=(path, barrier, results)) for _ in range(OPENERS)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
    assert outcomes == ["ok"] * OPENERS


def test_opening_waits_for_another_process_lock_instead_of_failing(tmp_path):
    import sqlite3
    import threading

    path = os.path.join(tmp_path, "index.sqlite3")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN EXCLUSIVE")  # what another process creating the database holds for a moment
    release = threading.Timer(0.3, holder.execute, args=("COMMIT",))
    release.start()
    try:
        index = SqliteIndex(path, busy_timeout_ms=10000)
        assert index.connection().execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        index.close()
    finally:
        release.join()
        holder.close()


def test_a_lock_held_past_the_busy_timeout_is_a_storage_error(tmp_path):
    import sqlite3

    from dicomweb_wsgi.storage.base import StorageError

    path = os.path.join(tmp_path, "index.sqlite3")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError, match="index unavailable"):
            SqliteIndex(path, busy_timeout_ms=200)
    finally:
        holder.close()


def _hold_gate(path: str, held, release) -> None:
    index = SqliteIndex(path)
    with index.exclusive():  # no SQLite transaction: only the writer gate
        held.set()
        release.wait(30)
    index.close()


def test_a_writer_in_another_process_holds_the_gate_until_it_lets_go(tmp_path):
    import threading
    import time

    from dicomweb_wsgi.storage.base import StorageError

    path = os.path.join(tmp_path, "index.sqlite3")
    SqliteIndex(path).close()
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_gate, args=(path, held, release))
    proc.start()
    try:
        assert held.wait(30)
        with pytest.raises(StorageError, match="another process holds it"):
            with SqliteIndex(path, busy_timeout_ms=200).write() as conn:
                conn.execute("DELETE FROM study")
        released_at = []
        timer = threading.Timer(0.3, lambda: (released_at.append(time.monotonic()), release.set()))
        timer.start()
        index = SqliteIndex(path, busy_timeout_ms=10000)  # opening runs the migration check, a write
        assert released_at and time.monotonic() >= released_at[0]  # it waited for the other to let go
        index.close()
    finally:
        release.set()
        proc.join(30)


def _write_in_child(index, results) -> None:
    from dicomweb_wsgi.storage.base import StorageError

    try:
        with index.write():
            results.put("wrote")
    except StorageError as exc:
        results.put(str(exc))


def test_the_gate_is_not_shared_with_a_forked_child(tmp_path):
    # An flock belongs to the open file, which a fork shares: the child must open its own.
    path = os.path.join(tmp_path, "index.sqlite3")
    index = SqliteIndex(path, busy_timeout_ms=300)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    with index.exclusive():
        proc = ctx.Process(target=_write_in_child, args=(index, results))
        proc.start()
        outcome = results.get(timeout=30)
        proc.join(30)
    assert "another process holds it" in outcome
    index.close()


def test_a_file_that_is_not_a_database_is_a_storage_error_naming_it(tmp_path, capsys):
    # A damaged index must reach the operator as one line (exit 2), not as a sqlite3 traceback.
    from dicomweb_wsgi.__main__ import main
    from dicomweb_wsgi.storage.base import StorageError

    path = tmp_path / "index.sqlite3"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StorageError, match="index.sqlite3"):
        SqliteIndex(str(path))
    assert main(["stats", "--data", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("dicomweb-wsgi: storage error:")
