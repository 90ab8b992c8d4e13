"""The SQLite index of Non-Patient Instances (PS3.18 §12): its own file, ``npi.sqlite3``.

Non-patient instances (color palettes, hanging protocols, defined procedure protocols, implant
templates) have no patient, study or series, so they are kept apart from the patient index: no
QIDO-RS search on ``/studies`` can ever return one, and neither index's schema depends on the other.

One row per instance: its resource, SOP class, transfer syntax, blob key and full DICOM JSON. A
search evaluates the storage-neutral ``Condition``s of ``query.py`` (the same PS3.4 C.2.2.2 matching
as QIDO-RS) on that JSON inside SQLite, through the SQL function ``npi_match``; the collections are
small (a site has tens to thousands of palettes, protocols or templates), so no per-key index is
kept. Durability and concurrency follow
``sqlite_index.py``: WAL, ``synchronous=FULL`` by default, one connection per thread, ``BEGIN
IMMEDIATE`` for writes, numbered migrations against ``PRAGMA user_version``. Values are always bound.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Sequence

from .base import AddResult, Condition, DuplicatePolicy, Outcome
from .sqlite_db import SqliteDatabase


@dataclass(frozen=True)
class NpiRecord:
    """Everything the index keeps about one non-patient instance, prepared at store time."""

    resource: str                          # the PS3.18 npi-name, e.g. "color-palettes"
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    digest: str
    metadata_json: str                     # the full DICOM JSON object (binary values inline)


@dataclass(frozen=True)
class NpiInstance(NpiRecord):
    """A stored non-patient instance: its record and when it was stored."""

    stored_at: float = 0.0


_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE npi_instance (
             pk INTEGER PRIMARY KEY,
             resource TEXT NOT NULL,
             sop_uid TEXT NOT NULL UNIQUE,
             sop_class_uid TEXT NOT NULL,
             transfer_syntax TEXT NOT NULL,
             blob_key TEXT NOT NULL UNIQUE,
             size INTEGER NOT NULL,
             digest TEXT NOT NULL,
             metadata_json TEXT NOT NULL,
             stored_at REAL NOT NULL)""",
        "CREATE INDEX npi_instance_resource ON npi_instance(resource, pk)",
    ),
)
"""Migration N (1-based) brings ``PRAGMA user_version`` from N-1 to N. Append, never edit."""

_COLUMNS = ("resource", "sop_uid", "sop_class_uid", "transfer_syntax", "blob_key", "size", "digest",
            "metadata_json", "stored_at")
_SELECT = f"SELECT {', '.join('i.' + c for c in _COLUMNS)} FROM npi_instance i"


def _npi_match(metadata_json: str, condition_key: str) -> int:
    """SQL function ``npi_match(metadata JSON, Condition.key())``: 1 when the instance matches."""
    condition = Condition.from_key(condition_key)
    try:
        return int(condition.matches(json.loads(metadata_json).get(condition.tag)))
    except (ValueError, TypeError, AttributeError):
        return 0


class NpiIndex(SqliteDatabase):
    """The NPI index on one SQLite file, safe for many threads and processes."""

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30000) -> None:
        super().__init__(path, migrations=_MIGRATIONS, name="NPI index", synchronous=synchronous,
                         busy_timeout_ms=busy_timeout_ms, functions={"npi_match": (2, _npi_match)})

    # -- writes ------------------------------------------------------------------------------
    def add(self, records: Sequence[NpiRecord], policy: DuplicatePolicy) -> list[AddResult]:
        """Add records in ONE transaction (all or nothing); one result per record, in order.

        An instance already stored under another resource is refused whatever the policy: a SOP
        Instance UID names one instance, and its SOP class decides its resource.
        """
        now = time.time()
        with self.write() as conn:
            return [self._add_one(conn, rec, policy, now) for rec in records]

    @staticmethod
    def _add_one(conn: sqlite3.Connection, rec: NpiRecord, policy: DuplicatePolicy, now: float) -> AddResult:
        existing = conn.execute("SELECT pk, resource, blob_key FROM npi_instance WHERE sop_uid=?",
                                (rec.sop_uid,)).fetchone()
        obsolete = None
        if existing is not None:
            if existing["resource"] != rec.resource or policy is DuplicatePolicy.REJECT:
                return AddResult(rec.sop_uid, Outcome.REJECTED_DUPLICATE)
            if policy is DuplicatePolicy.IGNORE:
                return AddResult(rec.sop_uid, Outcome.IGNORED)
            conn.execute("DELETE FROM npi_instance WHERE pk=?", (existing["pk"],))
            obsolete = existing["blob_key"]
        values = [getattr(rec, c) for c in _COLUMNS if c != "stored_at"] + [now]
        conn.execute(f"INSERT INTO npi_instance ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                     values)
        return AddResult(rec.sop_uid, Outcome.REPLACED if obsolete else Outcome.STORED, obsolete)

    # -- reads -------------------------------------------------------------------------------
    def get(self, resource: str, sop_uid: str) -> NpiInstance | None:
        """The instance ``sop_uid`` of ``resource``, or None."""
        rows = self.read(f"{_SELECT} WHERE i.resource=? AND i.sop_uid=?", (resource, sop_uid))
        return _instance(rows[0]) if rows else None

    def search(self, resource: str, conditions: Sequence[Condition], limit: int | None,
               offset: int = 0) -> tuple[list[NpiInstance], int]:
        """The instances of ``resource`` matching every condition, in storage order, and the total count.

        ``Condition.matches`` decides (PS3.4 C.2.2.2): any value of a multi-valued key, the keys of a
        sequence condition within one item; an instance without a value for the key does not match.
        """
        where: list[str] = ["i.resource=?"] + ["npi_match(i.metadata_json, ?)"] * len(conditions)
        params: list[Any] = [resource, *(c.key() for c in conditions)]
        clause = " AND ".join(where)
        total = int(self.read(f"SELECT count(*) FROM npi_instance i WHERE {clause}", params)[0][0])
        page = ""
        if limit is not None:
            page = " LIMIT ? OFFSET ?"
            params += [limit, offset]
        elif offset:
            page = " LIMIT -1 OFFSET ?"
            params += [offset]
        rows = self.read(f"{_SELECT} WHERE {clause} ORDER BY i.pk{page}", params)
        return [_instance(r) for r in rows], total

    def blob_keys(self) -> set[str]:
        """Every blob key the index points at (for gc)."""
        return {r[0] for r in self.read("SELECT blob_key FROM npi_instance")}

    def all_instances(self) -> list[NpiInstance]:
        """Every instance, in the order stored (for backup)."""
        return [_instance(r) for r in self.read(f"{_SELECT} ORDER BY i.pk")]

    def remove(self, sop_uid: str) -> None:
        """Forget one instance (its blob is the caller's to delete)."""
        with self.write() as conn:
            conn.execute("DELETE FROM npi_instance WHERE sop_uid=?", (sop_uid,))


def _instance(row: sqlite3.Row) -> NpiInstance:
    return NpiInstance(*(row[c] for c in _COLUMNS))
