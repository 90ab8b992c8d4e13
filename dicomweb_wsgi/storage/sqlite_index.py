"""The SQLite IndexStore: studies, series and instances with the attributes searches match on.

Durability: WAL journal with ``synchronous=FULL`` (configurable), so a committed transaction
survives a power cut. Concurrency: one connection per thread (waitress runs the app in several),
``BEGIN IMMEDIATE`` for writes so writers queue on the busy timeout instead of failing mid-way,
and several processes may share one database file.

Column names come only from ``model.INDEXED``; values are always bound parameters.
"""
from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

from ..model import INDEXED, Level, fold_text
from .base import AddResult, DuplicatePolicy, InstanceRecord, Outcome, StorageError, StorageFull, StoredInstance

STUDY_COLUMNS = [a.column for a in INDEXED if a.level is Level.STUDY and a.column != "study_uid"]
SERIES_COLUMNS = [a.column for a in INDEXED if a.level is Level.SERIES and a.column != "series_uid"]
INSTANCE_COLUMNS = [a.column for a in INDEXED if a.level is Level.INSTANCE and a.column != "sop_uid"]
# PN columns get a case- and accent-folded twin for case-insensitive and fuzzy matching.
FOLDED_COLUMNS = {a.column for a in INDEXED if a.vr == "PN"}


def _column_defs(columns: list[str]) -> str:
    defs = []
    for col in columns:
        defs.append(f"{col} TEXT")
        if col in FOLDED_COLUMNS:
            defs.append(f"{col}_fold TEXT")
    return ",\n  ".join(defs)


def _migration_1() -> str:
    # Numeric attributes (SeriesNumber, Rows...) are stored as TEXT like every DICOM string value
    # and matched as text; ordering uses CAST where it matters.
    return f"""
CREATE TABLE study (
  pk INTEGER PRIMARY KEY,
  study_uid TEXT NOT NULL UNIQUE,
  {_column_defs(STUDY_COLUMNS)},
  modalities TEXT NOT NULL DEFAULT '',
  num_series INTEGER NOT NULL DEFAULT 0,
  num_instances INTEGER NOT NULL DEFAULT 0,
  attrs_json TEXT NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE series (
  pk INTEGER PRIMARY KEY,
  study_pk INTEGER NOT NULL REFERENCES study(pk),
  series_uid TEXT NOT NULL UNIQUE,
  {_column_defs(SERIES_COLUMNS)},
  num_instances INTEGER NOT NULL DEFAULT 0,
  attrs_json TEXT NOT NULL,
  updated_at REAL NOT NULL
);
CREATE TABLE instance (
  pk INTEGER PRIMARY KEY,
  study_pk INTEGER NOT NULL REFERENCES study(pk),
  series_pk INTEGER NOT NULL REFERENCES series(pk),
  sop_uid TEXT NOT NULL UNIQUE,
  {_column_defs(INSTANCE_COLUMNS)},
  transfer_syntax TEXT NOT NULL,
  blob_key TEXT NOT NULL UNIQUE,
  size INTEGER NOT NULL,
  digest TEXT NOT NULL,
  metadata_json TEXT NOT NULL,
  frames_json TEXT,
  bulk_json TEXT,
  stored_at REAL NOT NULL
);
CREATE INDEX study_patient_id ON study(patient_id);
CREATE INDEX study_patient_name_fold ON study(patient_name_fold);
CREATE INDEX study_date_time ON study(study_date, study_time);
CREATE INDEX study_accession ON study(accession_number);
CREATE INDEX series_study ON series(study_pk, series_number);
CREATE INDEX series_modality ON series(modality);
CREATE INDEX instance_series ON instance(series_pk, instance_number);
CREATE INDEX instance_study ON instance(study_pk);
CREATE INDEX instance_sop_class ON instance(sop_class_uid);
"""


# Numbered migrations: migration N brings PRAGMA user_version from N-1 to N. Append, never edit.
MIGRATIONS: list[str] = [_migration_1()]


def _is_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()


class SqliteIndex:
    """IndexStore on one SQLite file, safe for many threads and processes."""

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30000) -> None:
        self.path = os.path.abspath(path)
        self.synchronous = synchronous.upper()
        if self.synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"invalid synchronous mode {synchronous!r}")
        self.busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.migrate()

    # -- connections -----------------------------------------------------------------------
    def connection(self) -> sqlite3.Connection:
        """This thread's connection (created on first use)."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=self.busy_timeout_ms / 1000)
            conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA cache_size=-16000")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
        conn = self.connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"index unavailable: {exc}") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            if isinstance(exc, sqlite3.Error):
                if _is_full(exc):
                    raise StorageFull(f"index: {exc}") from exc
                raise StorageError(f"index write failed: {exc}") from exc
            raise

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        try:
            return self.connection().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"index read failed: {exc}") from exc

    def migrate(self) -> None:
        """Bring the schema to the newest version; each migration in its own transaction."""
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StorageError(f"index schema version {version} is newer than this program "
                                   f"({len(MIGRATIONS)}); upgrade dicomweb_wsgi")
            for number in range(version + 1, len(MIGRATIONS) + 1):
                for statement in MIGRATIONS[number - 1].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={number}")

    def schema_version(self) -> int:
        return int(self.read("PRAGMA user_version")[0][0])

    # -- writes ------------------------------------------------------------------------------
    def add_instances(self, records: Sequence[InstanceRecord], policy: DuplicatePolicy) -> list[AddResult]:
        results: list[AddResult] = []
        now = time.time()
        with self.write() as conn:
            touched_series: set[int] = set()
            touched_studies: set[int] = set()
            for rec in records:
                result = self._add_one(conn, rec, policy, now, touched_series, touched_studies)
                results.append(result)
            self._recount(conn, touched_series, touched_studies)
        return results

    def _add_one(self, conn: sqlite3.Connection, rec: InstanceRecord, policy: DuplicatePolicy, now: float,
                 touched_series: set[int], touched_studies: set[int]) -> AddResult:
        existing = conn.execute(
            "SELECT i.pk, i.blob_key, i.series_pk, i.study_pk FROM instance i WHERE i.sop_uid=?",
            (rec.sop_uid,)).fetchone()
        if existing is not None and policy is not DuplicatePolicy.REPLACE:
            outcome = Outcome.IGNORED if policy is DuplicatePolicy.IGNORE else Outcome.REJECTED_DUPLICATE
            return AddResult(rec.sop_uid, outcome)
        series_row = conn.execute("SELECT s.pk, st.study_uid FROM series s JOIN study st ON st.pk=s.study_pk "
                                  "WHERE s.series_uid=?", (rec.series_uid,)).fetchone()
        if series_row is not None and series_row["study_uid"] != rec.study_uid:
            return AddResult(rec.sop_uid, Outcome.REJECTED_SERIES_CONFLICT)
        obsolete = None
        if existing is not None:
            conn.execute("DELETE FROM instance WHERE pk=?", (existing["pk"],))
            touched_series.add(existing["series_pk"])
            touched_studies.add(existing["study_pk"])
            obsolete = existing["blob_key"]
        study_pk = self._upsert(conn, "study", "study_uid", rec.study_uid, STUDY_COLUMNS, rec.study_columns,
                                rec.study_json, now)
        series_pk = self._upsert(conn, "series", "series_uid", rec.series_uid, SERIES_COLUMNS,
                                 rec.series_columns, rec.series_json, now, study_pk=study_pk)
        cols = ["study_pk", "series_pk", "sop_uid", *INSTANCE_COLUMNS]
        values: list[Any] = [study_pk, series_pk, rec.sop_uid, *(rec.instance_columns.get(c) for c in INSTANCE_COLUMNS)]
        cols += ["transfer_syntax", "blob_key", "size", "digest", "metadata_json", "frames_json", "bulk_json",
                 "stored_at"]
        values += [rec.transfer_syntax, rec.blob_key, rec.size, rec.digest, rec.metadata_json, rec.frames_json,
                   rec.bulk_json, now]
        conn.execute(f"INSERT INTO instance ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)
        touched_series.add(series_pk)
        touched_studies.add(study_pk)
        return AddResult(rec.sop_uid, Outcome.REPLACED if existing is not None else Outcome.STORED, obsolete)

    @staticmethod
    def _upsert(conn: sqlite3.Connection, table: str, uid_column: str, uid: str, columns: list[str],
                values: Any, attrs_json: str, now: float, study_pk: int | None = None) -> int:
        """Insert the study/series row, or update its attributes (the latest instance wins)."""
        names = list(columns)
        vals = [values.get(c) for c in columns]
        for col in columns:
            if col in FOLDED_COLUMNS:
                names.append(col + "_fold")
                raw = values.get(col)
                vals.append(fold_text(raw) if raw else raw)
        names += ["attrs_json", "updated_at"]
        vals += [attrs_json, now]
        if study_pk is not None:
            names.append("study_pk")
            vals.append(study_pk)
        assignments = ", ".join(f"{n}=excluded.{n}" for n in names if n != "study_pk")
        row = conn.execute(
            f"INSERT INTO {table} ({uid_column}, {', '.join(names)}) VALUES (?{', ?' * len(names)}) "
            f"ON CONFLICT({uid_column}) DO UPDATE SET {assignments} RETURNING pk",
            [uid, *vals]).fetchone()
        return int(row[0])

    @staticmethod
    def _recount(conn: sqlite3.Connection, series_pks: set[int], study_pks: set[int]) -> None:
        """Keep the derived counts and ModalitiesInStudy right; drop emptied series and studies."""
        for pk in series_pks:
            n = conn.execute("SELECT count(*) FROM instance WHERE series_pk=?", (pk,)).fetchone()[0]
            if n:
                conn.execute("UPDATE series SET num_instances=? WHERE pk=?", (n, pk))
            else:
                conn.execute("DELETE FROM series WHERE pk=?", (pk,))
        for pk in study_pks:
            row = conn.execute("SELECT count(*) FROM series WHERE study_pk=?", (pk,)).fetchone()
            if not row[0]:
                conn.execute("DELETE FROM study WHERE pk=?", (pk,))
                continue
            n_inst = conn.execute("SELECT coalesce(sum(num_instances),0) FROM series WHERE study_pk=?",
                                  (pk,)).fetchone()[0]
            mods = [r[0] for r in conn.execute(
                "SELECT DISTINCT modality FROM series WHERE study_pk=? AND modality IS NOT NULL AND modality != '' "
                "ORDER BY modality", (pk,))]
            conn.execute("UPDATE study SET num_series=?, num_instances=?, modalities=? WHERE pk=?",
                         (row[0], n_inst, "\\".join(mods), pk))

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[str]:
        where, params = self._where(study_uid, series_uid, sop_uid)
        with self.write() as conn:
            rows = conn.execute(
                f"SELECT i.pk, i.blob_key, i.series_pk, i.study_pk FROM instance i JOIN series s ON s.pk=i.series_pk "
                f"JOIN study st ON st.pk=i.study_pk WHERE {where}", params).fetchall()
            for row in rows:
                conn.execute("DELETE FROM instance WHERE pk=?", (row["pk"],))
            self._recount(conn, {r["series_pk"] for r in rows}, {r["study_pk"] for r in rows})
        return [r["blob_key"] for r in rows]

    # -- reads -------------------------------------------------------------------------------
    @staticmethod
    def _where(study_uid: str, series_uid: str | None, sop_uid: str | None) -> tuple[str, list[str]]:
        where, params = ["st.study_uid=?"], [study_uid]
        if series_uid is not None:
            where.append("s.series_uid=?")
            params.append(series_uid)
        if sop_uid is not None:
            where.append("i.sop_uid=?")
            params.append(sop_uid)
        return " AND ".join(where), params

    _ORDER = "ORDER BY CAST(s.series_number AS INTEGER), s.pk, CAST(i.instance_number AS INTEGER), i.pk"

    def list_instances(self, study_uid: str, series_uid: str | None = None,
                       sop_uid: str | None = None) -> list[StoredInstance]:
        where, params = self._where(study_uid, series_uid, sop_uid)
        rows = self.read(
            "SELECT st.study_uid, s.series_uid, i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.blob_key, i.size, "
            "i.digest, i.number_of_frames, i.frames_json, i.bulk_json, i.stored_at FROM instance i "
            f"JOIN series s ON s.pk=i.series_pk JOIN study st ON st.pk=i.study_pk WHERE {where} {self._ORDER}",
            params)
        return [StoredInstance(
            r["study_uid"], r["series_uid"], r["sop_uid"], r["sop_class_uid"], r["transfer_syntax"], r["blob_key"],
            r["size"], r["digest"], int(r["number_of_frames"]) if r["number_of_frames"] else None,
            r["frames_json"], r["bulk_json"], r["stored_at"]) for r in rows]

    def list_metadata(self, study_uid: str, series_uid: str | None = None,
                      sop_uid: str | None = None) -> list[str]:
        where, params = self._where(study_uid, series_uid, sop_uid)
        rows = self.read(
            "SELECT i.metadata_json FROM instance i JOIN series s ON s.pk=i.series_pk "
            f"JOIN study st ON st.pk=i.study_pk WHERE {where} {self._ORDER}", params)
        return [r[0] for r in rows]

    def blob_keys(self) -> set[str]:
        return {r[0] for r in self.read("SELECT blob_key FROM instance")}

    def counts(self) -> dict[str, int]:
        row = self.read("SELECT (SELECT count(*) FROM study), (SELECT count(*) FROM series), "
                        "(SELECT count(*) FROM instance), (SELECT coalesce(sum(size),0) FROM instance)")[0]
        return {"studies": row[0], "series": row[1], "instances": row[2], "bytes": row[3]}
