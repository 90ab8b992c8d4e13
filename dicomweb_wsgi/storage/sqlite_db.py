"""One SQLite file as every SQLite store here uses it: durable, many threads, many processes.

WAL journal with ``synchronous=FULL`` by default (a committed transaction survives a power cut);
one connection per thread (waitress runs the app in several); ``BEGIN IMMEDIATE`` for writes, so
writers never fail half-way; numbered migrations against ``PRAGMA user_version``. SQLite errors leave as
``StorageError`` / ``StorageFull``.

Writers queue on a gate before they touch SQLite: a lock shared by the threads of a process, then an
``flock`` on a file beside the database shared by the processes (``serve --workers N``, the CLI). SQLite's
own busy handler waits by sleeping 1, 2, 5, 10... ms between tries, which at a commit of about a
millisecond left concurrent stores waiting far longer than the commit they waited for; the gate hands
over as soon as the holder is done. Its wait is bounded by the same busy timeout.
"""
from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

from .base import StorageError, StorageFull

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")

# The file beside a database whose ``flock`` is the writer gate between processes (empty, never deleted
# while the database is in use).
WRITER_LOCK_SUFFIX = "-writer.lock"

# A migration is one SQL script (statements separated by ";") or a list of statements.
Migration = str | Sequence[str]


class SqliteDatabase:
    """The connection, transaction and migration machinery shared by the SQLite stores."""

    def __init__(self, path: str, *, migrations: Sequence[Migration], name: str = "index",
                 synchronous: str = "FULL", busy_timeout_ms: int = 30000,
                 functions: dict[str, tuple[int, Callable[..., Any]]] | None = None,
                 pragmas: Sequence[str] = ()) -> None:
        self.path = os.path.abspath(path)
        self.name = name
        self.synchronous = synchronous.upper()
        if self.synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        self.busy_timeout_ms = busy_timeout_ms
        self.migrations = list(migrations)
        self._functions = dict(functions or {})
        self._pragmas = tuple(pragmas)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._gate = threading.RLock()
        self._gate_depth = 0
        self._gate_fd: int | None = None
        self._inherited: list[Any] = []
        self.migrate()

    def _forget_parent(self) -> None:
        """In a forked child: start with no connection and no gate of the parent's.

        Neither may be used across a fork (SQLite's rule; an ``flock`` belongs to the open file,
        which the fork shares). They are kept referenced, never closed: closing them here could
        release locks the parent still holds.
        """
        self._inherited.append((self._local, self._all, self._gate_fd))
        self._local, self._all, self._lock = threading.local(), [], threading.Lock()
        self._gate, self._gate_depth, self._gate_fd = threading.RLock(), 0, None
        self._pid = os.getpid()

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        if self._pid != os.getpid():
            self._forget_parent()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            for fname, (nargs, func) in self._functions.items():
                conn.create_function(fname, nargs, func, deterministic=True)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def _connect(self) -> sqlite3.Connection:
        """A new connection in WAL mode with our pragmas.

        Switching a new database to WAL needs an exclusive lock, and SQLite may answer "database is
        locked" at once, without waiting on the busy timeout, when another process holds one (several
        workers or servers opening a fresh data folder together): retried here until the timeout.
        """
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.005
        while True:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000)
            try:
                for pragma in (f"busy_timeout={int(self.busy_timeout_ms)}", "journal_mode=WAL",
                               f"synchronous={self.synchronous}", *self._pragmas):
                    conn.execute("PRAGMA " + pragma)
                return conn
            except sqlite3.DatabaseError as exc:  # OperationalError, or "file is not a database"
                conn.close()
                if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                    raise StorageError(f"{self.name} unavailable ({self.path}): {exc}") from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.2)

    def close(self) -> None:
        """Close every thread's connection."""
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()
        with self._gate:
            if self._gate_fd is not None and self._gate_depth == 0:
                os.close(self._gate_fd)
                self._gate_fd = None

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Be the one writer of this database among all threads and processes (re-entrant).

        Held around every write transaction by ``write``; a caller may hold it across several.
        """
        if self._pid != os.getpid():
            self._forget_parent()
        if not self._gate.acquire(timeout=self.busy_timeout_ms / 1000):
            raise StorageError(f"{self.name} unavailable: a writer in this process holds it too long")
        try:
            if self._gate_depth == 0:
                self._lock_file()
            self._gate_depth += 1
            try:
                yield
            finally:
                self._gate_depth -= 1
                if self._gate_depth == 0 and self._gate_fd is not None:
                    fcntl.flock(self._gate_fd, fcntl.LOCK_UN)
        finally:
            self._gate.release()

    def _lock_file(self) -> None:
        """Take the cross-process ``flock``, polling (never longer than the busy timeout)."""
        if self._gate_fd is None:
            try:
                self._gate_fd = os.open(self.path + WRITER_LOCK_SUFFIX, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StorageError(f"{self.name} unavailable: cannot open its writer lock: {exc}") from exc
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        delay = 0.00002
        while True:
            try:
                fcntl.flock(self._gate_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StorageError(f"{self.name} unavailable: another process holds it too long") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.0005)
            except OSError as exc:
                raise StorageError(f"{self.name} unavailable: cannot lock it: {exc}") from exc

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        with self.exclusive():
            conn = self.connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.name} unavailable: {exc}") from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                if isinstance(exc, sqlite3.Error):
                    if "full" in str(exc).lower():
                        raise StorageFull(f"{self.name}: {exc}") from exc
                    raise StorageError(f"{self.name} write failed: {exc}") from exc
                raise

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Run a query on this thread's connection; SQLite errors become StorageError."""
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.name} read failed: {exc}") from exc

    def migrate(self) -> None:
        """Bring the schema to the newest version, in one transaction."""
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(self.migrations):
                raise StorageError(f"{self.name} schema version {version} is newer than this program "
                                   f"({len(self.migrations)}); upgrade dicomweb_wsgi")
            for number in range(version + 1, len(self.migrations) + 1):
                migration = self.migrations[number - 1]
                statements = migration.split(";") if isinstance(migration, str) else migration
                for statement in statements:
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")

    def schema_version(self) -> int:
        return int(self.read("PRAGMA user_version")[0][0])


def snapshot_database(source: str, target: str) -> None:
    """Copy a live database (its WAL included) into the new file ``target`` as one consistent
    snapshot (SQLite's online backup API, in one step), left as a plain rollback-journal file."""
    try:
        src = sqlite3.connect(source, timeout=30)
        try:
            dst = sqlite3.connect(target)
            try:
                src.backup(dst)
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot copy {source}: {exc}") from exc


def settle_copy(path: str) -> None:
    """Leave a copied database as one flushed file: back to a rollback journal, and no WAL,
    shared-memory or writer-lock file beside it (for a copy nobody has open)."""
    try:
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"cannot finish the copy {path}: {exc}") from exc
    for suffix in ("-wal", "-shm", "-journal", WRITER_LOCK_SUFFIX):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
