"""The SQLite WorkitemStore: UPS workitems, their subscriptions, and the event outbox (``workitems.sqlite3``).

Each change to a workitem and the event reports it causes commit in ONE transaction, so an event is
queued if and only if its change happened, and it survives a crash or restart until a subscriber's
WebSocket has taken it (``ack_events``). Durability and concurrency follow ``sqlite_index.py``: WAL,
``synchronous=FULL`` by default, one connection per thread, ``BEGIN IMMEDIATE`` for every write (so
two clients claiming the same workitem are serialised and the second sees the first's claim).

Search matching is done here, on the stored DICOM JSON (``dataset_matches``): a few attributes have
their own columns (``COLUMNS``, the only column names SQL is built from) to narrow the scan, and
every key, sequence keys included, is then checked in Python. ``dataset_matches`` works on plain
DICOM JSON and could serve other searches as well.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import time
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence

from ..model import fold_text
from .base import (RANGE_VRS, AttributeMatch, Condition, MatchKind, NewEvent, OutboxEvent, Term, WorkitemChange,
                   WorkitemRecord, range_key)
from .sqlite_db import SqliteDatabase

# Attributes with their own column: tag -> column. Column names in SQL come only from here.
COLUMNS: dict[str, str] = {
    "00741000": "state",
    "00741200": "priority",
    "00741204": "label",
    "00741202": "worklist_label",
    "00404005": "start_datetime",
    "00404041": "input_readiness",
    "00100010": "patient_name",
    "00100020": "patient_id",
}
FINAL_STATES = ("COMPLETED", "CANCELED")


def _migration_1() -> str:
    columns = ",\n  ".join(f"{col} TEXT" for col in COLUMNS.values() if col != "state")
    return f"""
CREATE TABLE workitem (
  pk INTEGER PRIMARY KEY,
  uid TEXT NOT NULL UNIQUE,
  state TEXT NOT NULL,
  {columns},
  patient_name_fold TEXT,
  attrs_json TEXT NOT NULL,
  created_at REAL NOT NULL,
  updated_at REAL NOT NULL,
  final_at REAL
);
CREATE INDEX workitem_state ON workitem(state, start_datetime);
CREATE INDEX workitem_patient_id ON workitem(patient_id);
CREATE INDEX workitem_final_at ON workitem(final_at);
CREATE TABLE subscription (
  ae TEXT NOT NULL,
  workitem_uid TEXT NOT NULL,
  deletion_lock INTEGER NOT NULL,
  created_at REAL NOT NULL,
  PRIMARY KEY (ae, workitem_uid)
);
CREATE INDEX subscription_workitem ON subscription(workitem_uid);
CREATE TABLE global_subscription (
  ae TEXT PRIMARY KEY,
  deletion_lock INTEGER NOT NULL,
  filter_json TEXT,
  created_at REAL NOT NULL
);
CREATE TABLE event (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  ae TEXT NOT NULL,
  workitem_uid TEXT NOT NULL,
  event_type INTEGER NOT NULL,
  attrs_json TEXT NOT NULL,
  created_at REAL NOT NULL
);
CREATE INDEX event_ae ON event(ae, seq);
CREATE INDEX event_created_at ON event(created_at);
"""


# Numbered migrations: migration N brings PRAGMA user_version from N-1 to N. Append, never edit.
MIGRATIONS: list[str] = [_migration_1()]


class SqliteWorkitemStore(SqliteDatabase):
    """WorkitemStore on one SQLite file, safe for many threads and processes."""

    def __init__(self, path: str, *, synchronous: str = "FULL", busy_timeout_ms: int = 30000,
                 event_retention_s: float = 7 * 86400, max_pending: int = 10000,
                 final_retention_s: float = 7 * 86400) -> None:
        self.event_retention_s = event_retention_s
        self.max_pending = max_pending
        self.final_retention_s = final_retention_s
        self._listeners: list[Callable[[], None]] = []
        super().__init__(path, migrations=MIGRATIONS, name="workitem store", synchronous=synchronous,
                         busy_timeout_ms=busy_timeout_ms)

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        """A write transaction; listeners are told after a commit that queued events."""
        with self.write() as conn:
            tx = _Tx(conn, self)
            yield tx
        if tx.queued:
            for listener in list(self._listeners):
                listener()

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    # -- workitems ---------------------------------------------------------------------------------
    def create(self, uid: str, attrs_json: str, events: Sequence[NewEvent]) -> bool:
        attrs = json.loads(attrs_json)
        now = time.time()
        with self._tx() as tx:
            tx.purge(now)
            if tx.conn.execute("SELECT 1 FROM workitem WHERE uid=?", (uid,)).fetchone():
                return False
            values = _column_values(attrs)
            names = ["uid", *values, "attrs_json", "created_at", "updated_at"]
            tx.conn.execute(f"INSERT INTO workitem ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                            [uid, *values.values(), attrs_json, now, now])
            # PS3.4 CC.2.3.3 / Table CC.2.3-2: a new workitem gets every matching global subscriber.
            for row in tx.conn.execute("SELECT ae, deletion_lock, filter_json FROM global_subscription").fetchall():
                if row["filter_json"] is None or dataset_matches(attrs, _load_filter(row["filter_json"])):
                    tx.conn.execute("INSERT OR IGNORE INTO subscription VALUES (?, ?, ?, ?)",
                                    (row["ae"], uid, row["deletion_lock"], now))
            tx.queue(events, now)
        return True

    def get(self, uid: str) -> WorkitemRecord | None:
        rows = self.read("SELECT * FROM workitem WHERE uid=?", (uid,))
        if not rows:
            return None
        subs = self.read("SELECT ae FROM subscription WHERE workitem_uid=? ORDER BY ae", (uid,))
        return _record(rows[0], tuple(r[0] for r in subs))

    def change(self, uid: str, decide: Callable[[WorkitemRecord], WorkitemChange]) -> WorkitemChange | None:
        now = time.time()
        with self._tx() as tx:
            current = tx.record(uid)
            if current is None:
                return None
            outcome = decide(current)
            if outcome.attrs_json is not None:
                values = _column_values(json.loads(outcome.attrs_json))
                final = values.get("state") in FINAL_STATES and current.state not in FINAL_STATES
                assignments = ", ".join(f"{name}=?" for name in values)
                tx.conn.execute(f"UPDATE workitem SET {assignments}, attrs_json=?, updated_at=?, "
                                "final_at=coalesce(final_at, ?) WHERE uid=?",
                                [*values.values(), outcome.attrs_json, now, now if final else None, uid])
            tx.queue(outcome.events, now)
        return outcome

    def search(self, matches: Sequence[AttributeMatch], limit: int | None,
               offset: int) -> tuple[list[WorkitemRecord], int]:
        where, params = _prefilter(matches)
        found: list[WorkitemRecord] = []
        total = 0
        for row in self.read(f"SELECT * FROM workitem WHERE {where} ORDER BY pk", params):
            if not dataset_matches(json.loads(row["attrs_json"]), matches):
                continue
            total += 1
            if total > offset and (limit is None or len(found) < limit):
                found.append(_record(row, ()))
        return found, total

    # -- subscriptions -----------------------------------------------------------------------------
    def subscribe(self, ae: str, uid: str, deletion_lock: bool,
                  initial: Callable[[WorkitemRecord], NewEvent]) -> bool:
        now = time.time()
        with self._tx() as tx:
            current = tx.record(uid)
            if current is None:
                return False
            tx.conn.execute("INSERT INTO subscription VALUES (?, ?, ?, ?) ON CONFLICT(ae, workitem_uid) "
                            "DO UPDATE SET deletion_lock=excluded.deletion_lock", (ae, uid, int(deletion_lock), now))
            tx.queue([initial(current)], now)
        return True

    def subscribe_all(self, ae: str, deletion_lock: bool, matches: Sequence[AttributeMatch] | None,
                      initial: Callable[[WorkitemRecord], NewEvent] | None) -> int:
        now = time.time()
        filter_json = None if matches is None else json.dumps([[list(m.path), m.vr, m.value] for m in matches])
        count = 0
        with self._tx() as tx:
            tx.conn.execute("INSERT INTO global_subscription VALUES (?, ?, ?, ?) ON CONFLICT(ae) DO UPDATE SET "
                            "deletion_lock=excluded.deletion_lock, filter_json=excluded.filter_json",
                            (ae, int(deletion_lock), filter_json, now))
            rows = tx.conn.execute(
                "SELECT * FROM workitem w WHERE NOT EXISTS (SELECT 1 FROM subscription s "
                "WHERE s.ae=? AND s.workitem_uid=w.uid) ORDER BY pk", (ae,)).fetchall()
            for row in rows:
                if matches is not None and not dataset_matches(json.loads(row["attrs_json"]), matches):
                    continue
                tx.conn.execute("INSERT INTO subscription VALUES (?, ?, ?, ?)",
                                (ae, row["uid"], int(deletion_lock), now))
                count += 1
                if initial is not None:
                    tx.queue([initial(_record(row, ()))], now)
        return count

    def unsubscribe(self, ae: str, uid: str) -> bool:
        with self._tx() as tx:
            if not tx.conn.execute("SELECT 1 FROM workitem WHERE uid=?", (uid,)).fetchone():
                return False
            tx.conn.execute("DELETE FROM subscription WHERE ae=? AND workitem_uid=?", (ae, uid))
            # Reports queued before, not yet delivered, go too: an unsubscribed AE hears no more of it.
            tx.conn.execute("DELETE FROM event WHERE ae=? AND workitem_uid=?", (ae, uid))
        return True

    def unsubscribe_all(self, ae: str) -> None:
        with self._tx() as tx:
            tx.conn.execute("DELETE FROM global_subscription WHERE ae=?", (ae,))
            tx.conn.execute("DELETE FROM subscription WHERE ae=?", (ae,))
            tx.conn.execute("DELETE FROM event WHERE ae=?", (ae,))

    def suspend(self, ae: str) -> None:
        with self._tx() as tx:
            tx.conn.execute("DELETE FROM global_subscription WHERE ae=?", (ae,))

    def subscribers(self) -> set[str]:
        """Every AE with a global or workitem subscription."""
        rows = self.read("SELECT ae FROM global_subscription UNION SELECT ae FROM subscription")
        return {r[0] for r in rows}

    # -- event outbox ------------------------------------------------------------------------------
    def broadcast(self, event: NewEvent) -> int:
        now = time.time()
        with self._tx() as tx:
            aes = [r[0] for r in tx.conn.execute(
                "SELECT ae FROM global_subscription UNION SELECT ae FROM subscription ORDER BY 1")]
            tx.queue([NewEvent(event.event_type, event.workitem_uid, event.attrs_json, ae) for ae in aes], now)
        return len(aes)

    def pending_events(self, ae: str, limit: int) -> list[OutboxEvent]:
        rows = self.read("SELECT seq, ae, workitem_uid, event_type, attrs_json, created_at FROM event "
                          "WHERE ae=? ORDER BY seq LIMIT ?", (ae, limit))
        return [OutboxEvent(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    def ack_events(self, ae: str, through_seq: int) -> None:
        with self._tx() as tx:
            tx.conn.execute("DELETE FROM event WHERE ae=? AND seq<=?", (ae, through_seq))

    def purge(self) -> None:
        with self._tx() as tx:
            tx.purge(time.time())


def open_workitem_store(settings: Any) -> SqliteWorkitemStore:
    """The store for an app's settings: ``workitems.sqlite3`` in ``data_dir``, retention from the settings."""
    os.makedirs(settings.data_dir, exist_ok=True)
    return SqliteWorkitemStore(os.path.join(settings.data_dir, "workitems.sqlite3"),
                               synchronous=settings.sqlite_synchronous,
                               event_retention_s=settings.events_retention_hours * 3600,
                               max_pending=settings.events_max_pending,
                               final_retention_s=settings.ups_retention_hours * 3600)


class _Tx:
    """The open write transaction of one store call."""

    def __init__(self, conn: sqlite3.Connection, store: SqliteWorkitemStore) -> None:
        self.conn = conn
        self.store = store
        self.queued = 0

    def record(self, uid: str) -> WorkitemRecord | None:
        row = self.conn.execute("SELECT * FROM workitem WHERE uid=?", (uid,)).fetchone()
        if row is None:
            return None
        subs = self.conn.execute("SELECT ae FROM subscription WHERE workitem_uid=? ORDER BY ae", (uid,)).fetchall()
        return _record(row, tuple(r[0] for r in subs))

    def queue(self, events: Sequence[NewEvent], now: float) -> None:
        """Insert events in order, each for its AE or for every current subscriber of its workitem."""
        touched: set[str] = set()
        for event in events:
            if event.to is not None:
                aes = [event.to]
            else:
                aes = [r[0] for r in self.conn.execute(
                    "SELECT ae FROM subscription WHERE workitem_uid=? ORDER BY ae", (event.workitem_uid,))]
            for ae in aes:
                self.conn.execute("INSERT INTO event (ae, workitem_uid, event_type, attrs_json, created_at) "
                                  "VALUES (?, ?, ?, ?, ?)",
                                  (ae, event.workitem_uid, event.event_type, event.attrs_json, now))
                touched.add(ae)
        self.queued += len(touched)
        for ae in touched if self.store.max_pending > 0 else ():
            # Keep at most max_pending undelivered events per subscriber: the oldest go first.
            self.conn.execute("DELETE FROM event WHERE ae=? AND seq <= (SELECT seq FROM event WHERE ae=? "
                              "ORDER BY seq DESC LIMIT 1 OFFSET ?)", (ae, ae, self.store.max_pending))

    def purge(self, now: float) -> None:
        store = self.store
        if store.event_retention_s > 0:
            self.conn.execute("DELETE FROM event WHERE created_at < ?", (now - store.event_retention_s,))
        if store.final_retention_s > 0:
            # PS3.4 CC.2.1.3: a final-state workitem is kept while any subscriber holds a deletion lock.
            expired = [r[0] for r in self.conn.execute(
                "SELECT uid FROM workitem w WHERE final_at IS NOT NULL AND final_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM subscription s WHERE s.workitem_uid=w.uid AND s.deletion_lock=1)",
                (now - store.final_retention_s,))]
            for uid in expired:
                self.conn.execute("DELETE FROM subscription WHERE workitem_uid=?", (uid,))
                self.conn.execute("DELETE FROM workitem WHERE uid=?", (uid,))


def _record(row: sqlite3.Row, subscribers: tuple[str, ...]) -> WorkitemRecord:
    return WorkitemRecord(row["uid"], row["state"], row["attrs_json"], subscribers, row["created_at"],
                          row["updated_at"])


def _load_filter(text: str) -> list[AttributeMatch]:
    return [AttributeMatch(tuple(path), vr, value) for path, vr, value in json.loads(text)]


def _column_values(attrs: dict[str, Any]) -> dict[str, str | None]:
    """The indexed column values of a dataset (first value; PN as its alphabetic group)."""
    values: dict[str, str | None] = {}
    for tag, column in COLUMNS.items():
        found = _strings(attrs.get(tag))
        values[column] = found[0] if found else None
    values["state"] = values["state"] or ""
    name = values["patient_name"]
    values["patient_name_fold"] = fold_text(name) if name else None
    return values


def _prefilter(matches: Sequence[AttributeMatch]) -> tuple[str, list[str]]:
    """SQL narrowing the scan: top-level keys on indexed non-PN attributes whose values are single values."""
    where, params = ["1=1"], []
    for m in matches:
        column = COLUMNS.get(m.path[0]) if len(m.path) == 1 else None
        terms = match_terms(m.vr, m.value) if column is not None and m.vr != "PN" else None
        if terms is None or any(t.kind is not MatchKind.SINGLE for t in terms):
            continue
        where.append(f"{column} IN ({', '.join('?' * len(terms))})")
        params.extend(t.value for t in terms)
    return " AND ".join(where), params


# -- matching on DICOM JSON (PS3.4 C.2.2.2) -----------------------------------------------------------

WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "UN"})
LIST_BY_COMMA_VRS = frozenset({"UI", "CS"})
UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})
_WILD = re.compile(r"[*?]")


def dataset_matches(obj: dict[str, Any], matches: Sequence[AttributeMatch]) -> bool:
    """Whether one DICOM JSON dataset matches every key (sequence keys: one item matches all of them)."""
    nested: dict[str, list[AttributeMatch]] = {}
    for m in matches:
        if len(m.path) > 1:
            nested.setdefault(m.path[0], []).append(AttributeMatch(m.path[1:], m.vr, m.value))
        elif not attribute_matches(obj.get(m.path[0]), m):
            return False
    for tag, keys in nested.items():
        if all(match_terms(k.vr, k.value) is None for k in keys):
            continue  # only universal keys inside the sequence: they match anything (C.2.2.2.6)
        items = (obj.get(tag) or {}).get("Value") or []
        if not any(isinstance(item, dict) and dataset_matches(item, keys) for item in items):
            return False
    return True


def attribute_matches(attr: dict[str, Any] | None, m: AttributeMatch) -> bool:
    """Whether one attribute matches a top-level key, by the reference matcher of QIDO (``Condition``).

    An attribute without a value matches only universal matching; a multi-valued one matches if
    any value does.
    """
    terms = match_terms(m.vr, m.value)
    return terms is None or Condition(m.path[-1], m.vr, "", terms).matches(attr)


@lru_cache(maxsize=256)
def match_terms(vr: str, text: str) -> tuple[Term, ...] | None:
    """The terms of a key's query text, any of which may match; None for universal matching.

    The text means what it means to QIDO (``query.py``, which the UPS transactions use to refuse
    malformed values and to write each range as ``range_key`` digits, so its "-" is unambiguous):
    empty or ``*`` alone is universal (PS3.4 C.2.2.2.3-4); UI and CS values are split at commas or
    backslashes, other VRs at backslashes (LT, ST, UT, UR never); ``a-b`` is a DA/TM/DT range and a
    single TM or DT value stands for the range it covers; PN is folded, each ``=`` group a term.
    """
    if vr in UNSPLIT_VRS:
        pieces = [text]
    else:
        pieces = re.split(r"[,\\]", text) if vr in LIST_BY_COMMA_VRS else text.split("\\")
    pieces = [p for p in (p.strip() for p in pieces) if p]
    if not pieces or any(set(p) == {"*"} for p in pieces):
        return None
    terms: list[Term] = []
    for piece in pieces:
        if vr == "PN":
            for group in piece.split("="):
                folded = fold_text(group)
                folded = folded if folded.endswith("*") else folded.rstrip("^")
                if folded:
                    terms.append(Term(MatchKind.WILDCARD if _WILD.search(folded) else MatchKind.SINGLE, folded))
        elif vr in RANGE_VRS and "-" in piece:
            low, _, high = (p.strip() for p in piece.partition("-"))
            terms.append(Term(MatchKind.RANGE, low=range_key(vr, low, "0") if low else "",
                              high=range_key(vr, high, "9") if high else ""))
        elif vr in RANGE_VRS and vr != "DA":
            terms.append(Term(MatchKind.RANGE, low=range_key(vr, piece, "0"), high=range_key(vr, piece, "9")))
        elif vr in WILDCARD_VRS and _WILD.search(piece):
            terms.append(Term(MatchKind.WILDCARD, piece))
        else:
            terms.append(Term(MatchKind.SINGLE, piece.replace(".", "") if vr == "DA" else piece))
    return tuple(terms) or None


def _strings(attr: dict[str, Any] | None) -> list[str]:
    """The values of a DICOM JSON attribute as text (every group of a PN value)."""
    if not isinstance(attr, dict):
        return []
    out: list[str] = []
    for value in attr.get("Value") or []:
        if isinstance(value, dict):
            out.extend(str(v) for k, v in value.items() if k in ("Alphabetic", "Ideographic", "Phonetic") and v)
        elif value is not None and value != "":
            out.append(value if isinstance(value, str) else json.dumps(value))
    return out
