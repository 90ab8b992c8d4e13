"""The SQLite IndexStore: studies, series and instances with the attributes searches match on.

Durability: WAL journal with ``synchronous=FULL`` (configurable), so a committed transaction
survives a power cut. Concurrency: one connection per thread (waitress runs the app in several),
writers queue on the database's gate (``SqliteDatabase.exclusive``), and several processes may share
one database file. Concurrent stores share commits: ``add_instances`` calls that arrive while
another is committing are committed together by the next of them (group commit), so N requests
storing at once pay for about one flush of the log instead of N in a row.

Column names come only from ``model.INDEXED``; values are always bound parameters.
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ..model import (EVERY_LEVEL_TAGS, INDEXED, INDEXED_BY_TAG, Level, column_value, fold_text, level_of_tag,
                     protect_placeholders)
from .base import (AddResult, Condition, DuplicatePolicy, InstanceRecord, MatchKind, MAX_PN_COMPONENTS,
                   NUMERIC_VRS, Outcome, SearchQuery, SearchResult, SearchRow, StorageError,
                   StoredInstance)
from .sqlite_db import Migration, SqliteDatabase

STUDY_COLUMNS = [a.column for a in INDEXED if a.level is Level.STUDY and a.column != "study_uid"]
SERIES_COLUMNS = [a.column for a in INDEXED if a.level is Level.SERIES and a.column != "series_uid"]
INSTANCE_COLUMNS = [a.column for a in INDEXED if a.level is Level.INSTANCE and a.column != "sop_uid"]
# Columns a later migration adds (so migration 1, built from INDEXED, must leave them out).
_ADDED_LATER = frozenset({"timezone_offset"})  # by migration 5
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
  {_column_defs([c for c in INSTANCE_COLUMNS if c not in _ADDED_LATER])},
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
# Migration 2 (QIDO-RS): indexes for the remaining required matching keys of PS3.18 §10.6.1.2.3.
_MIGRATION_2 = """
CREATE INDEX study_study_id ON study(study_id);
CREATE INDEX study_referring_fold ON study(referring_physician_name_fold);
CREATE INDEX series_pps_start ON series(pps_start_date, pps_start_time);
CREATE INDEX study_other_name_groups ON study(pk)
  WHERE (instr(attrs_json, '"Ideographic"') > 0 OR instr(attrs_json, '"Phonetic"') > 0)
"""

# Migration 3: TimezoneOffsetFromUTC, which every level holds (model.EVERY_LEVEL_TAGS), was kept with the
# instances only; study and series rows get the value of their latest stored instance, as a store
# now gives them.
_LATEST = "(SELECT metadata_json FROM instance WHERE pk=(SELECT max(pk) FROM instance WHERE {table}_pk={table}.pk))"
_MIGRATION_3 = [
    f"UPDATE {table} SET attrs_json=json_set(attrs_json, '$.\"{tag}\"', "
    f"json(json_extract({_LATEST.format(table=table)}, '$.\"{tag}\"'))) "
    f"WHERE json_type({_LATEST.format(table=table)}, '$.\"{tag}\"')='object'"
    for table in ("series", "study") for tag in ("00080201",)
]

# Migration 4 (QIDO at 100,000+ instances): a trigram index of the folded PatientName, so that a
# leading wildcard (OHIF sends PatientName=*smi*) reads the few candidate studies instead of every
# name; kept by triggers, contentless (only rowids are needed: the folded column gives the exact
# answer).
_MIGRATION_4 = [
    "CREATE VIRTUAL TABLE study_name_trigram USING fts5(name, content='', tokenize='trigram')",
    "INSERT INTO study_name_trigram(rowid, name) SELECT pk, patient_name_fold FROM study WHERE patient_name_fold > ''",
    "CREATE TRIGGER study_name_trigram_insert AFTER INSERT ON study WHEN NEW.patient_name_fold > '' BEGIN "
    "INSERT INTO study_name_trigram(rowid, name) VALUES (NEW.pk, NEW.patient_name_fold); END",
    "CREATE TRIGGER study_name_trigram_delete AFTER DELETE ON study WHEN OLD.patient_name_fold > '' BEGIN "
    "INSERT INTO study_name_trigram(study_name_trigram, rowid, name) VALUES ('delete', OLD.pk, OLD.patient_name_fold); "
    "END",
    "CREATE TRIGGER study_name_trigram_update AFTER UPDATE OF patient_name_fold ON study "
    "WHEN OLD.patient_name_fold IS NOT NEW.patient_name_fold BEGIN "
    "INSERT INTO study_name_trigram(study_name_trigram, rowid, name) "
    "SELECT 'delete', OLD.pk, OLD.patient_name_fold WHERE OLD.patient_name_fold > ''; "
    "INSERT INTO study_name_trigram(rowid, name) SELECT NEW.pk, NEW.patient_name_fold "
    "WHERE NEW.patient_name_fold > ''; END",
]

# Migration 5: the instance's own TimezoneOffsetFromUTC as a column, so that instance search results
# carry it (PS3.18 Table 10.6.3-5) without parsing each instance's metadata.
_MIGRATION_5 = [
    "ALTER TABLE instance ADD COLUMN timezone_offset TEXT",
    "UPDATE instance SET timezone_offset=json_extract(metadata_json, '$.\"00080201\".Value[0]') "
    "WHERE json_type(metadata_json, '$.\"00080201\".Value[0]')='text'",
]

# Migration 6: date columns as YYYYMMDD; rows stored before kept the ACR-NEMA form YYYY.MM.DD as it
# came, which no range (nor the same date asked as YYYYMMDD) could match.
_MIGRATION_6 = [
    f"UPDATE {table} SET {column}=replace({column}, '.', '') WHERE instr({column}, '.') > 0"
    for table, column in (("study", "patient_birth_date"), ("study", "study_date"), ("series", "series_date"),
                          ("series", "pps_start_date"), ("instance", "content_date"))
]

# Migration 7: attributes of the Patient, Study, Series and Equipment modules that were kept with the
# instance only (model.level_of_tag did not list them), so series and study results never returned
# them; their rows get the values of their latest stored instance, as a store now gives them. The tags
# are spelt out, not read from model, so that the migration stays what it was when model changes.
_MIGRATION_7 = [
    f"UPDATE {table} SET attrs_json=json_set(attrs_json, '$.\"{tag}\"', "
    f"json(json_extract({_LATEST.format(table=table)}, '$.\"{tag}\"'))) "
    f"WHERE json_type({_LATEST.format(table=table)}, '$.\"{tag}\"')='object'"
    for table, tags in (
        ("study", ("00081120", "00120062", "00120063", "00120064", "0008009D", "00120010", "00120020",
                   "00120021", "00120030", "00120031", "00120040", "00120042", "00120081", "00120082",
                   "00120050", "00120051")),
        ("series", ("00181030", "0008103F", "00081250", "00280108", "00280109", "00400250", "00400251",
                    "00400280", "00120060", "00120071", "00120072", "00081041", "00181002", "00181008",
                    "00181050", "00181200", "00181201")))
    for tag in tags
]

MIGRATIONS: list[Migration] = [_migration_1(), _MIGRATION_2, _MIGRATION_3, _MIGRATION_4, _MIGRATION_5,
                               _MIGRATION_6, _MIGRATION_7]


def _study_json(rec: InstanceRecord) -> str:
    """The study's attributes with the series' copies of those every level holds (ingest keeps them
    with the series, model.EVERY_LEVEL_TAGS): both levels then show the latest instance's value."""
    shared = [tag for tag in EVERY_LEVEL_TAGS if f'"{tag}"' in rec.series_json]
    if not shared:
        return rec.study_json
    series = json.loads(rec.series_json)
    study = json.loads(rec.study_json)
    study.update({tag: series[tag] for tag in shared if tag in series})
    return _attrs_text(study)


def _attrs_text(attrs: dict[str, Any]) -> str:
    """A study's or series' attributes as stored JSON text (tags in order, placeholders protected)."""
    return protect_placeholders(json.dumps(dict(sorted(attrs.items())), ensure_ascii=False, separators=(",", ":"),
                                           allow_nan=False))


def _dw_match(element_json: str | None, key: str) -> int:
    """SQL function ``dw_match(element JSON, condition key)``: the reference matcher, for attributes
    that have no column of their own (and for sequences, fuzzy and non-Alphabetic person names)."""
    if not element_json:
        return 0
    try:
        return int(Condition.from_key(key).matches(json.loads(element_json)))
    except (ValueError, TypeError):
        return 0


def _trigram_query(pieces: list[str]) -> str | None:
    """An FTS5 trigram query for rows containing every piece; None when no piece is long enough."""
    long = [p for p in pieces if len(p) >= _TRIGRAM_MIN]
    return " AND ".join('"' + p.replace('"', '""') + '"' for p in long) or None


def _glob(pattern: str) -> str:
    """A DICOM wildcard pattern as a GLOB pattern: "*" and "?" keep their meaning, "[" is literal."""
    return pattern.replace("[", "[[]")


# QIDO: tables and documents per level; counts and ModalitiesInStudy are derived columns.
_ALIAS = {"study": "st", "series": "s", "instance": "i"}
_DOCUMENT = {"study": "st.attrs_json", "series": "s.attrs_json", "instance": "i.metadata_json"}
_RANK = {"study": 0, "series": 1, "instance": 2}
_FROM = {
    "study": "study st",
    "series": "series s JOIN study st ON st.pk=s.study_pk",
    "instance": "instance i JOIN series s ON s.pk=i.series_pk JOIN study st ON st.pk=i.study_pk",
}
_COUNT_COLUMNS = {("study", "00201206"): "st.num_series", ("study", "00201208"): "st.num_instances",
                  ("series", "00201209"): "s.num_instances"}
_MODALITIES_IN_STUDY = "00080061"
# Folded PN columns with a trigram index (migration 4), and the shortest piece it can find.
_TRIGRAM = {("study", "patient_name"): "study_name_trigram"}
_TRIGRAM_MIN = 3
# Rows holding a person name with more than an Alphabetic group; written exactly as the partial index
# of migration 2 so that SQLite can use it.
_OTHER_NAME_GROUPS = "(instr({doc}, '\"Ideographic\"') > 0 OR instr({doc}, '\"Phonetic\"') > 0)"
_TAG_RE = re.compile(r"^[0-9A-F]{8}$")
# Stable paging order (PS3.18 §8.3.4.4): newest study first, then series and instance numbers.
_ORDER_STUDY = "st.study_date DESC, st.study_time DESC, st.pk DESC"
_ORDER_SERIES = "CAST(s.series_number AS INTEGER), s.pk"
_ORDER_INSTANCE = "CAST(i.instance_number AS INTEGER), i.pk"


_INSTANCE_INSERT_COLUMNS = ["study_pk", "series_pk", "sop_uid", *INSTANCE_COLUMNS, "transfer_syntax", "blob_key",
                            "size", "digest", "metadata_json", "frames_json", "bulk_json", "stored_at"]
_INSERT_INSTANCE = (f"INSERT INTO instance ({', '.join(_INSTANCE_INSERT_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(_INSTANCE_INSERT_COLUMNS))})")


@dataclass(eq=False)
class _AddCall:
    """One waiting ``add_instances`` call: its records, and its results once a commit has included it."""

    records: Sequence[InstanceRecord]
    policy: DuplicatePolicy
    results: list[AddResult] | None = None
    error: BaseException | None = None
    done: bool = False
    finished: threading.Event = field(default_factory=threading.Event)


# A group commit takes the waiting calls up to about this many records (a call is never split).
GROUP_RECORDS = 1000


class SqliteIndex(SqliteDatabase):
    """IndexStore on one SQLite file, safe for many threads and processes."""

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30000) -> None:
        # QIDO matching of attributes without a column runs the reference matcher (base.Condition).
        super().__init__(path, migrations=MIGRATIONS, name="index", synchronous=synchronous,
                         busy_timeout_ms=busy_timeout_ms, functions={"dw_match": (2, _dw_match)},
                         pragmas=("foreign_keys=ON", "cache_size=-16000"))
        self._waiting: list[_AddCall] = []
        self._waiting_lock = threading.Lock()

    # -- writes ------------------------------------------------------------------------------
    def add_instances(self, records: Sequence[InstanceRecord], policy: DuplicatePolicy) -> list[AddResult]:
        """Commit the records (group commit: see the module docstring); returns once they are durable.

        The call queues itself, then waits for the writer gate. Whoever holds the gate next commits
        every call queued by then in one transaction; a call that finds itself done on getting
        the gate just returns. Calls in one group see each other's rows in queue order, exactly as
        if committed one after the other. If a group's transaction fails, each of its calls is
        retried alone, so one call's failure is never another's.
        """
        call = _AddCall(records, policy)
        with self._waiting_lock:
            self._waiting.append(call)
        try:
            with self.exclusive():
                if not call.done:
                    with self._waiting_lock:
                        group, total = [], 0
                        while self._waiting and (not group or total + len(self._waiting[0].records) <= GROUP_RECORDS):
                            group.append(self._waiting.pop(0))
                            total += len(group[-1].records)
                    self._commit_group(group)
        except StorageError:
            # The gate was not ours in time. Still queued: withdrawn, so no later group commits
            # what the caller was told failed. Already taken by a group in progress: its outcome
            # is this call's.
            with self._waiting_lock:
                if call in self._waiting:
                    self._waiting.remove(call)
                    raise
            call.finished.wait()
        if call.error is not None:
            raise call.error
        assert call.results is not None
        return call.results

    def _commit_group(self, group: list[_AddCall]) -> None:
        try:
            if len(group) > 1:
                try:
                    outcomes = self._add_in_one_transaction([(c.records, c.policy) for c in group])
                except Exception:
                    outcomes = None  # each call alone below, to keep its failure its own
                if outcomes is not None:
                    for c, results in zip(group, outcomes):
                        c.results, c.done = results, True
                    return
            for c in group:
                try:
                    c.results = self._add_in_one_transaction([(c.records, c.policy)])[0]
                except Exception as exc:
                    c.error = exc
                c.done = True
        finally:
            for c in group:  # the committing thread died (BaseException): no caller waits forever
                if not c.done:
                    c.error, c.done = StorageError("index write interrupted"), True
                c.finished.set()

    def _add_in_one_transaction(
            self, calls: list[tuple[Sequence[InstanceRecord], DuplicatePolicy]]) -> list[list[AddResult]]:
        now = time.time()
        outcomes: list[list[AddResult]] = []
        with self.write() as conn:
            touched_series: dict[int, int] = {}
            touched_studies: set[int] = set()
            upserted: dict[tuple[str, str], tuple[list[Any], int]] = {}
            for records, policy in calls:
                outcomes.append([self._add_one(conn, rec, policy, now, touched_series, touched_studies, upserted)
                                 for rec in records])
            self._recount(conn, touched_series, touched_studies)
        return outcomes

    def _add_one(self, conn: sqlite3.Connection, rec: InstanceRecord, policy: DuplicatePolicy, now: float,
                 touched_series: dict[int, int], touched_studies: set[int],
                 upserted: dict[tuple[str, str], tuple[list[Any], int]]) -> AddResult:
        existing = conn.execute(
            "SELECT i.pk, i.blob_key, i.series_pk, i.study_pk, s.series_uid, st.study_uid FROM instance i "
            "JOIN series s ON s.pk=i.series_pk JOIN study st ON st.pk=i.study_pk WHERE i.sop_uid=?",
            (rec.sop_uid,)).fetchone()
        if existing is not None and policy is not DuplicatePolicy.REPLACE:
            if (existing["study_uid"], existing["series_uid"]) != (rec.study_uid, rec.series_uid):
                return AddResult(rec.sop_uid, Outcome.REJECTED_ELSEWHERE)
            outcome = Outcome.IGNORED if policy is DuplicatePolicy.IGNORE else Outcome.REJECTED_DUPLICATE
            return AddResult(rec.sop_uid, outcome)
        series_row = conn.execute("SELECT s.pk, st.study_uid FROM series s JOIN study st ON st.pk=s.study_pk "
                                  "WHERE s.series_uid=?", (rec.series_uid,)).fetchone()
        if series_row is not None and series_row["study_uid"] != rec.study_uid:
            return AddResult(rec.sop_uid, Outcome.REJECTED_SERIES_CONFLICT)
        obsolete = None
        if existing is not None:
            conn.execute("DELETE FROM instance WHERE pk=?", (existing["pk"],))
            touched_series[existing["series_pk"]] = touched_series.get(existing["series_pk"], 0) - 1
            touched_studies.add(existing["study_pk"])
            obsolete = existing["blob_key"]
        study_pk = self._upsert(conn, "study", "study_uid", rec.study_uid, STUDY_COLUMNS, rec.study_columns,
                                _study_json(rec), now, upserted=upserted)
        series_pk = self._upsert(conn, "series", "series_uid", rec.series_uid, SERIES_COLUMNS,
                                 rec.series_columns, rec.series_json, now, study_pk=study_pk, upserted=upserted)
        values: list[Any] = [study_pk, series_pk, rec.sop_uid, *(rec.instance_columns.get(c) for c in INSTANCE_COLUMNS)]
        values += [rec.transfer_syntax, rec.blob_key, rec.size, rec.digest, rec.metadata_json, rec.frames_json,
                   rec.bulk_json, now]
        conn.execute(_INSERT_INSTANCE, values)
        touched_series[series_pk] = touched_series.get(series_pk, 0) + 1
        touched_studies.add(study_pk)
        return AddResult(rec.sop_uid, Outcome.REPLACED if existing is not None else Outcome.STORED, obsolete)

    @staticmethod
    def _upsert(conn: sqlite3.Connection, table: str, uid_column: str, uid: str, columns: list[str],
                values: Any, attrs_json: str, now: float, study_pk: int | None = None,
                upserted: dict[tuple[str, str], tuple[list[Any], int]] | None = None) -> int:
        """Insert the study/series row, or update its attributes (the latest instance wins).

        A row is written only when a value differs (``updated_at`` is when one last did): rewriting
        equal values would still rewrite the entry of every index on them, which doubled the pages a
        one-instance store puts in the WAL. ``upserted`` remembers what this transaction already
        wrote or read, since the instances of one request mostly share their study and series.
        """
        names = list(columns)
        vals = [values.get(c) for c in columns]
        for col in columns:
            if col in FOLDED_COLUMNS:
                names.append(col + "_fold")
                raw = values.get(col)
                vals.append(fold_text(raw) if raw else raw)
        names.append("attrs_json")
        vals.append(attrs_json)
        if study_pk is not None:
            names.append("study_pk")
            vals.append(study_pk)
        written = upserted.get((table, uid)) if upserted is not None else None
        if written is not None and written[0] == vals:
            return written[1]
        row = conn.execute(f"SELECT pk, {', '.join(names)} FROM {table} WHERE {uid_column}=?", (uid,)).fetchone()
        if row is None:
            pk = conn.execute(
                f"INSERT INTO {table} ({uid_column}, {', '.join(names)}, updated_at) "
                f"VALUES (?{', ?' * len(names)}, ?) RETURNING pk", [uid, *vals, now]).fetchone()[0]
        else:
            pk = row[0]
            # A series keeps the study it was first stored under (a different one is refused before this).
            changed = [(n, v) for n, v, old in zip(names, vals, tuple(row)[1:]) if v != old and n != "study_pk"]
            if changed:
                conn.execute(f"UPDATE {table} SET {', '.join(n + '=?' for n, _ in changed)}, updated_at=? WHERE pk=?",
                             [*(v for _, v in changed), now, pk])
        if upserted is not None:
            upserted[(table, uid)] = (vals, int(pk))
        return int(pk)

    @staticmethod
    def _recount(conn: sqlite3.Connection, series_deltas: dict[int, int], study_pks: set[int]) -> None:
        """Keep the derived counts and ModalitiesInStudy right; drop emptied series and studies.

        ``series_deltas`` holds the instances each series gained (or lost) in this transaction: a series'
        count is kept by adding them, since counting its rows would cost a step per instance it holds
        (thousands in a thin-slice CT series) on every store into it.
        """
        for pk, delta in series_deltas.items():
            if not delta:
                continue
            n = conn.execute("UPDATE series SET num_instances=num_instances+? WHERE pk=? RETURNING num_instances",
                             (delta, pk)).fetchone()[0]
            if n <= 0:
                conn.execute("DELETE FROM series WHERE pk=?", (pk,))
        for pk in study_pks:
            series = conn.execute("SELECT modality, num_instances FROM series WHERE study_pk=?", (pk,)).fetchall()
            if not series:
                conn.execute("DELETE FROM study WHERE pk=?", (pk,))
                continue
            mods = sorted({r[0] for r in series if r[0]})
            conn.execute("UPDATE study SET num_series=?, num_instances=?, modalities=? WHERE pk=?",
                         (len(series), sum(r[1] for r in series), "\\".join(mods), pk))

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[str]:
        where, params = self._where(study_uid, series_uid, sop_uid)
        with self.write() as conn:
            rows = conn.execute(
                f"SELECT i.pk, i.blob_key, i.series_pk, i.study_pk FROM instance i JOIN series s ON s.pk=i.series_pk "
                f"JOIN study st ON st.pk=i.study_pk WHERE {where}", params).fetchall()
            lost: dict[int, int] = {}
            for row in rows:
                conn.execute("DELETE FROM instance WHERE pk=?", (row["pk"],))
                lost[row["series_pk"]] = lost.get(row["series_pk"], 0) - 1
            studies = {r["study_pk"] for r in rows}
            self._recount(conn, lost, studies)
            self._refresh_attributes(conn, set(lost), studies)
        return [r["blob_key"] for r in rows]

    def _refresh_attributes(self, conn: sqlite3.Connection, series_pks: set[int], study_pks: set[int]) -> None:
        """After a delete, give the surviving series and studies the attributes of their latest
        remaining instance, as a store gives them the latest stored one's (and as a reindex would)."""
        now = time.time()
        for table, pks in (("series", series_pks), ("study", study_pks)):
            for pk in pks:
                row = conn.execute(f"SELECT i.metadata_json, s.series_uid, st.study_uid, st.pk AS study_pk "
                                   f"FROM instance i JOIN series s ON s.pk=i.series_pk JOIN study st ON st.pk=i.study_pk "
                                   f"WHERE i.{table}_pk=? ORDER BY i.pk DESC LIMIT 1", (pk,)).fetchone()
                if row is None:  # emptied: _recount removed it
                    continue
                obj = json.loads(row["metadata_json"])
                level = Level.SERIES if table == "series" else Level.STUDY
                attrs = {t: e for t, e in obj.items() if level_of_tag(t) is level
                         or (level is Level.STUDY and t in EVERY_LEVEL_TAGS)}
                columns = {a.column: column_value(obj[a.tag]) for a in INDEXED if a.level is level and a.tag in obj}
                text = _attrs_text(attrs)
                if table == "series":
                    self._upsert(conn, "series", "series_uid", row["series_uid"], SERIES_COLUMNS, columns, text, now,
                                 study_pk=row["study_pk"])
                else:
                    self._upsert(conn, "study", "study_uid", row["study_uid"], STUDY_COLUMNS, columns, text, now)

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

    def list_versions(self, study_uid: str, series_uid: str | None = None,
                      sop_uid: str | None = None) -> list[tuple[str, str, float]]:
        where, params = self._where(study_uid, series_uid, sop_uid)
        rows = self.read(
            "SELECT i.sop_uid, i.digest, i.stored_at FROM instance i JOIN series s ON s.pk=i.series_pk "
            f"JOIN study st ON st.pk=i.study_pk WHERE {where} {self._ORDER}", params)
        return [(r[0], r[1], r[2]) for r in rows]

    def blob_keys(self) -> set[str]:
        return {r[0] for r in self.read("SELECT blob_key FROM instance")}

    def blob_key_of(self, sop_uid: str) -> str | None:
        """The blob key of the instance with this SOP Instance UID now (wherever it is), or None."""
        rows = self.read("SELECT blob_key FROM instance WHERE sop_uid=?", (sop_uid,))
        return rows[0][0] if rows else None

    # -- search (QIDO-RS) --------------------------------------------------------------------
    def search(self, query: SearchQuery) -> SearchResult:
        level = query.level
        if level not in _RANK:
            raise ValueError(f"unknown search level {level!r}")
        where: list[str] = []
        params: list[Any] = []
        if query.study_uid is not None:
            where.append("st.study_uid=?")
            params.append(query.study_uid)
        if query.series_uid is not None:
            where.append("s.series_uid=?")
            params.append(query.series_uid)
        below = [c for c in query.conditions if _RANK[c.level] > _RANK[level]]
        for cond in query.conditions:
            if _RANK[cond.level] <= _RANK[level]:
                where.append(self._condition_sql(cond, params))
        if below:
            where.append(self._below_sql(level, below, params))
        where_sql = " AND ".join(where) or "1"
        columns = ["st.study_uid", "st.attrs_json", "st.num_series", "st.num_instances", "st.modalities"]
        if level != "study":
            columns += ["s.series_uid", "s.attrs_json", "s.num_instances"]
        if level == "instance":
            columns += ["i.sop_uid", *(f"i.{c}" for c in INSTANCE_COLUMNS)]
            if query.with_metadata:
                columns.append("i.metadata_json")
        rows = self.read(f"SELECT {', '.join(columns)} FROM {_FROM[level]} WHERE {where_sql} "
                         f"ORDER BY {self._search_order(query)} LIMIT ? OFFSET ?",
                         [*params, max(query.limit, 1), max(query.offset, 0)])
        remaining = 0
        if rows and len(rows) >= query.limit:
            total = self.read(f"SELECT count(*) FROM {_FROM[level]} WHERE {where_sql}", params)[0][0]
            remaining = max(0, total - query.offset - len(rows))
        return SearchResult([self._search_row(level, r) for r in rows], remaining)

    @staticmethod
    def _search_order(query: SearchQuery) -> str:
        order = [_ORDER_STUDY] if query.study_uid is None else []
        if query.level != "study" and query.series_uid is None:
            order.append(_ORDER_SERIES)
        if query.level == "instance":
            order.append(_ORDER_INSTANCE)
        return ", ".join(order)

    @staticmethod
    def _search_row(level: str, r: sqlite3.Row) -> SearchRow:
        if level == "study":
            return SearchRow(r[0], r[1], r[2], r[3], r[4])
        if level == "series":
            return SearchRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7])
        columns = {c: r[9 + n] for n, c in enumerate(INSTANCE_COLUMNS)}
        metadata = r[9 + len(INSTANCE_COLUMNS)] if len(r) > 9 + len(INSTANCE_COLUMNS) else None
        return SearchRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], columns, metadata)

    def _condition_sql(self, cond: Condition, params: list[Any]) -> str:
        """One matching key as SQL over the tables aliased st/s/i; values are appended to ``params``."""
        if not _TAG_RE.match(cond.tag) or cond.level not in _RANK:
            raise ValueError(f"invalid search condition {cond.tag!r} at {cond.level!r}")
        count_column = _COUNT_COLUMNS.get((cond.level, cond.tag))
        if count_column is not None and not cond.items:
            return self._terms_sql(count_column, cond, params, numeric=True)
        if cond.level == "study" and cond.tag == _MODALITIES_IN_STUDY and not cond.items:
            # A study matches when one of its series' Modality does (any value of a multi-valued key).
            if all(term.kind is MatchKind.SINGLE for term in cond.terms):
                # The study row's list of them answers without a subquery per candidate study.
                params += [f"\\{term.value}\\" for term in cond.terms]
                return "(" + " OR ".join("instr('\\' || st.modalities || '\\', ?) > 0" for _ in cond.terms) + ")"
            # The unary + keeps SQLite on the per-study index instead of scanning a whole modality.
            return (f"EXISTS (SELECT 1 FROM series sx WHERE sx.study_pk=st.pk AND "
                    f"{self._terms_sql('+sx.modality', cond, params)})")
        attr = INDEXED_BY_TAG.get(cond.tag)
        document = _DOCUMENT[cond.level]
        if cond.items or attr is None or attr.level.value != cond.level:
            params += [f'$."{cond.tag}"', cond.key()]
            return f"dw_match(json_extract({document}, ?), ?)"
        if cond.vr != "PN":
            return self._terms_sql(f"{_ALIAS[cond.level]}.{attr.column}", cond, params)
        # PN: the folded Alphabetic column answers through its index; the few names with Ideographic
        # or Phonetic groups (found through a partial index) go to the reference matcher group by group.
        fold, table = f"pn.{attr.column}_fold", cond.level  # the level names are the table names
        others = f"SELECT pn.pk FROM {table} pn WHERE {_OTHER_NAME_GROUPS.format(doc='pn.attrs_json')}"
        trigram = _TRIGRAM.get((table, attr.column))
        if cond.fuzzy:
            fast = self._fuzzy_prefilter(fold, cond, params, trigram)
            params += [f'$."{cond.tag}"', cond.key()]
            return (f"{_ALIAS[cond.level]}.pk IN (SELECT pn.pk FROM {table} pn WHERE {fast} UNION {others}) "
                    f"AND dw_match(json_extract({document}, ?), ?)")
        fast = self._pn_sql(fold, cond, params, trigram)
        params += [f'$."{cond.tag}"', cond.key()]
        return (f"{_ALIAS[cond.level]}.pk IN (SELECT pn.pk FROM {table} pn WHERE {fast} UNION "
                f"{others} AND dw_match(json_extract(pn.attrs_json, ?), ?))")

    @staticmethod
    def _pn_sql(column: str, cond: Condition, params: list[Any], trigram: str | None = None) -> str:
        """Folded PN column against folded terms; trailing empty components are ignored. A pattern
        starting with a wildcard cannot use the column's index: its trigram index, when it has one,
        narrows the rows to those holding the pattern's literal pieces."""
        parts = []
        for term in cond.terms:
            if term.kind is MatchKind.SINGLE:
                variants = [term.value + "^" * k for k in range(MAX_PN_COMPONENTS)]
                parts.append(f"{column} IN ({', '.join('?' * len(variants))})")
            else:
                pattern = _glob(term.value)
                variants = [pattern] if pattern.endswith("*") else \
                    [pattern + "^" * k for k in range(MAX_PN_COMPONENTS)]
                globs = "(" + " OR ".join(f"{column} GLOB ?" for _ in variants) + ")"
                phrase = _trigram_query(re.split(r"[*?]", term.value)) if term.value[0] in "*?" else None
                if trigram and phrase:
                    globs = f"(pn.pk IN (SELECT rowid FROM {trigram} WHERE {trigram} MATCH ?) AND {globs})"
                    params.append(phrase)
                parts.append(globs)
            params += variants
        return "(" + " OR ".join(parts) + ")"

    @staticmethod
    def _fuzzy_prefilter(column: str, cond: Condition, params: list[Any], trigram: str | None = None) -> str:
        """A necessary condition for a fuzzy PN match: every literal piece of the query is in the name
        (pieces of three characters or more found through the trigram index, when there is one)."""
        parts = []
        for term in cond.terms:
            pieces = [p for p in re.split(r"[*?^]", term.value) if p]
            phrase = _trigram_query(pieces) if trigram else None
            checks = [f"pn.pk IN (SELECT rowid FROM {trigram} WHERE {trigram} MATCH ?)"] if phrase else []
            params += [phrase] if phrase else []
            pieces = [p for p in pieces if not phrase or len(p) < _TRIGRAM_MIN]
            checks += [f"instr({column}, ?) > 0" for _ in pieces]
            parts.append(" AND ".join(checks) or f"{column} IS NOT NULL")
            params += pieces
        return " OR ".join(f"({p})" for p in parts)

    @staticmethod
    def _terms_sql(column: str, cond: Condition, params: list[Any], numeric: bool = False) -> str:
        parts = []
        for term in cond.terms:
            if term.kind is MatchKind.RANGE:
                value = f"substr(replace({column}, ':', '') || '000000', 1, 6)" if cond.vr == "TM" else column
                # "> ''" leaves out empty values; a lower bound on the column itself does that already,
                # and both would hide that bound from SQLite's planner (which then scans from '' up).
                bounds = [] if term.low and value == column else [f"{column} > ''"]
                if term.low:
                    bounds.append(f"{value} >= ?")
                    params.append(term.low)
                if term.high:
                    bounds.append(f"{value} <= ?")
                    params.append(term.high)
                parts.append("(" + " AND ".join(bounds) + ")")
            elif term.kind is MatchKind.WILDCARD:
                parts.append(f"{column} GLOB ?")
                params.append(_glob(term.value))
            elif numeric or cond.vr in NUMERIC_VRS:
                parts.append(f"CAST({column} AS REAL) = ?")
                params.append(float(term.value))
            else:
                parts.append(f"{column} = ?")
                params.append(term.value)
        return "(" + " OR ".join(parts) + ")" if parts else "0"

    def _below_sql(self, level: str, conditions: list[Condition], params: list[Any]) -> str:
        """Keys of a lower level: the entity matches when one of its series/instances matches them all."""
        if level == "study" and any(c.level == "instance" for c in conditions):
            head = "SELECT 1 FROM instance i JOIN series s ON s.pk=i.series_pk WHERE i.study_pk=st.pk"
        elif level == "study":
            head = "SELECT 1 FROM series s WHERE s.study_pk=st.pk"
        else:
            head = "SELECT 1 FROM instance i WHERE i.series_pk=s.pk"
        inner = [self._condition_sql(c, params) for c in conditions]
        return f"EXISTS ({head} AND {' AND '.join(inner)})"

    def counts(self) -> dict[str, int]:
        row = self.read("SELECT (SELECT count(*) FROM study), (SELECT count(*) FROM series), "
                        "(SELECT count(*) FROM instance), (SELECT coalesce(sum(size),0) FROM instance)")[0]
        return {"studies": row[0], "series": row[1], "instances": row[2], "bytes": row[3]}

    # -- maintenance (check, reindex, stats, import) ------------------------------------------------
    def iter_instance_files(self) -> Iterator[StoredInstance]:
        """Every instance's blob key, size and digest, streamed (for ``check``)."""
        try:
            cursor = self.connection().execute(
                "SELECT st.study_uid, s.series_uid, i.sop_uid, i.sop_class_uid, i.transfer_syntax, i.blob_key, "
                "i.size, i.digest, i.stored_at FROM instance i JOIN series s ON s.pk=i.series_pk "
                "JOIN study st ON st.pk=i.study_pk ORDER BY i.pk")
            for r in cursor:
                yield StoredInstance(r["study_uid"], r["series_uid"], r["sop_uid"], r["sop_class_uid"],
                                     r["transfer_syntax"], r["blob_key"], r["size"], r["digest"], None, None, None,
                                     r["stored_at"])
        except sqlite3.Error as exc:
            raise StorageError(f"index read failed: {exc}") from exc

    def integrity_problems(self) -> list[str]:
        """SQLite's own consistency check of the file (empty when sound)."""
        rows = [r[0] for r in self.read("PRAGMA quick_check")]
        return [] if rows == ["ok"] else rows

    def stats(self) -> dict[str, Any]:
        """Counts and bytes per level, and per modality (a study counts under each of its modalities)."""
        totals = self.counts()
        by_modality = {}
        for r in self.read(
                "SELECT coalesce(nullif(s.modality, ''), '(none)') AS m, count(DISTINCT s.study_pk), "
                "count(DISTINCT s.pk), count(i.pk), coalesce(sum(i.size), 0) FROM series s "
                "JOIN instance i ON i.series_pk=s.pk GROUP BY m ORDER BY m"):
            by_modality[r[0]] = {"studies": r[1], "series": r[2], "instances": r[3], "bytes": r[4]}
        return {**totals, "modalities": by_modality}

    def replace_instances_from(self, other_path: str) -> None:
        """Replace every instance-derived row with those of another index file, in one transaction.

        Tables holding other data (anything not hanging off ``study`` by foreign keys) are kept.
        """
        conn = self.connection()
        try:
            conn.execute("ATTACH DATABASE ? AS rebuilt", (other_path,))
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the rebuilt index: {exc}") from exc
        try:
            tables = self._instance_tables(conn)
            with self.write() as w:
                for table in reversed(tables):
                    w.execute(f'DELETE FROM main."{table}"')
                for table in tables:
                    cols = ", ".join(f'"{r[1]}"' for r in w.execute(f'PRAGMA main.table_info("{table}")'))
                    w.execute(f'INSERT INTO main."{table}" ({cols}) SELECT {cols} FROM rebuilt."{table}"')
        finally:
            conn.execute("DETACH DATABASE rebuilt")

    @staticmethod
    def _instance_tables(conn: sqlite3.Connection) -> list[str]:
        """``study`` and the tables that depend on it through foreign keys, parents first."""
        names = [r[0] for r in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        parents = {n: {r[2] for r in conn.execute(f'PRAGMA main.foreign_key_list("{n}")')} for n in names}
        ordered = ["study"]
        grew = True
        while grew:
            grew = False
            for name in names:
                if name not in ordered and parents[name] and parents[name] <= set(ordered) | {name}:
                    ordered.append(name)
                    grew = True
        return ordered
