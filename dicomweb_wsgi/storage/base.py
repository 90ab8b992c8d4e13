"""The storage contracts: what an index and a blob store must do, and the plain records they exchange.

Backends implement these Protocols and never import pydicom, HTTP code or ``errors``; they raise
``StorageError`` (or its subclasses) which the archive turns into the right HTTP answer. A new
backend (PostgreSQL, object storage) is one module implementing one Protocol, checked by the same
contract tests.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any, BinaryIO, Callable, Iterator, Mapping, Protocol, Sequence

from ..model import fold_text


class StorageError(Exception):
    """The store could not do what was asked (disk full, I/O error, database locked or read-only)."""


class StorageFull(StorageError):
    """No space left for new data."""


class DuplicatePolicy(str, Enum):
    """What storing an already-stored SOP Instance UID does."""

    IGNORE = "ignore"    # keep the stored instance, report success
    REPLACE = "replace"  # the new instance replaces the stored one
    REJECT = "reject"    # refuse the new instance (FailureReason 0x0111)


class Outcome(str, Enum):
    STORED = "stored"
    REPLACED = "replaced"
    IGNORED = "ignored"
    REJECTED_DUPLICATE = "rejected-duplicate"
    # The SOP Instance UID is stored under another study or series (unless the policy replaces):
    # ignoring it would acknowledge the instance at a URL where it is not.
    REJECTED_ELSEWHERE = "rejected-elsewhere"
    REJECTED_SERIES_CONFLICT = "rejected-series-conflict"


@dataclass(frozen=True)
class InstanceRecord:
    """Everything the index keeps about one instance, prepared at store time."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    digest: str
    study_columns: Mapping[str, Any]     # column -> value, columns from model.INDEXED (study level)
    series_columns: Mapping[str, Any]
    instance_columns: Mapping[str, Any]
    study_json: str                      # DICOM JSON object of the study-level attributes
    series_json: str                     # DICOM JSON object of the series-level attributes
    metadata_json: str                   # the instance's full DICOM JSON (BulkDataURIs use a placeholder base)
    frames_json: str | None = None       # frames.FrameLayout as JSON
    bulk_json: str | None = None         # the bulk data references (path, vr, offset, length) as JSON


@dataclass(frozen=True)
class AddResult:
    sop_uid: str
    outcome: Outcome
    obsolete_blob_key: str | None = None  # a blob no index row points at any more: the caller deletes it


@dataclass(frozen=True)
class StoredInstance:
    """Where an instance's bytes are and what is needed to serve them."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    blob_key: str
    size: int
    digest: str
    number_of_frames: int | None
    frames_json: str | None
    bulk_json: str | None
    stored_at: float


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    mtime: float


class MatchKind(str, Enum):
    """The PS3.4 C.2.2.2 matching a ``Term`` asks for (universal matching needs no term at all)."""

    SINGLE = "single"      # C.2.2.2.1 single value (also each UID of a C.2.2.2.2 list)
    WILDCARD = "wildcard"  # C.2.2.2.4: "*" any run of characters, "?" one character
    RANGE = "range"        # C.2.2.2.5: inclusive, either end may be open


# VRs whose values are compared as numbers (CP-2305 leaves IS/DS matching to the implementation).
NUMERIC_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
RANGE_VRS = frozenset({"DA", "TM", "DT"})
# Trailing empty components ("DOE^JOHN^^^") are equivalent to omitting them (PS3.5 6.2.1.1).
MAX_PN_COMPONENTS = 5


@dataclass(frozen=True)
class Term:
    """One value a key may match. For PN, ``value`` is already folded (``model.fold_text``) with
    trailing ``^`` removed; for ranges, ``low``/``high`` are ``range_key`` forms ("" = open end)."""

    kind: MatchKind
    value: str = ""
    low: str = ""
    high: str = ""


@dataclass(frozen=True)
class Condition:
    """A matching key: the attribute ``tag`` (8 hex digits) held at ``level``, matching any of ``terms``.

    A sequence key has ``items`` instead: sub-conditions that must all hold within one item
    (PS3.4 C.2.2.2.6). ``fuzzy`` asks for fuzzy person-name matching (PS3.18 §8.3.4.2).
    """

    tag: str
    vr: str
    level: str
    terms: tuple[Term, ...] = ()
    items: tuple[Condition, ...] = ()
    fuzzy: bool = False

    def key(self) -> str:
        """A canonical text form (for caches and SQL parameters); ``from_key`` reverses it."""
        return json.dumps(_condition_to_obj(self), separators=(",", ":"), ensure_ascii=False)

    @staticmethod
    def from_key(text: str) -> Condition:
        return _condition_from_key(text)

    def matches(self, element: Mapping[str, Any] | None) -> bool:
        """Whether a stored DICOM JSON element satisfies the key.

        An absent or zero-length element never matches (as PS3.4 K.2.2.1.1.1 says for worklists);
        a multi-valued element matches when any of its values does.
        """
        values = element.get("Value") if isinstance(element, Mapping) else None
        if not values:
            return False
        if self.items:
            return any(isinstance(item, Mapping) and all(c.matches(item.get(c.tag)) for c in self.items)
                       for item in values)
        if self.vr == "PN":
            names = [fold_text(group) for v in values for group in _pn_groups(v) if group]
            return any(_pn_term_matches(term, name, self.fuzzy) for term in self.terms for name in names)
        texts = [v for v in values if v is not None and not isinstance(v, (dict, list))]
        return any(_term_matches(self.vr, term, text) for term in self.terms for text in texts)


def _condition_to_obj(c: Condition) -> list[Any]:
    return [c.tag, c.vr, c.level, [[t.kind.value, t.value, t.low, t.high] for t in c.terms],
            [_condition_to_obj(i) for i in c.items], c.fuzzy]


def _condition_from_obj(obj: list[Any]) -> Condition:
    tag, vr, level, terms, items, fuzzy = obj
    return Condition(tag, vr, level, tuple(Term(MatchKind(k), v, lo, hi) for k, v, lo, hi in terms),
                     tuple(_condition_from_obj(i) for i in items), bool(fuzzy))


@lru_cache(maxsize=256)
def _condition_from_key(text: str) -> Condition:
    return _condition_from_obj(json.loads(text))


def _pn_groups(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [str(value.get(g) or "") for g in ("Alphabetic", "Ideographic", "Phonetic")]
    if isinstance(value, str):  # not Annex F, but tolerated: "Alphabetic=Ideographic=Phonetic"
        return value.split("=")
    return []


def wildcard_match(pattern: str, text: str) -> bool:
    """DICOM wildcard matching of the whole ``text``: "*" any run of characters, "?" exactly one.

    Greedy with one backtrack point, so at worst len(pattern) x len(text) steps (a regex would
    backtrack exponentially on patterns like "*a*a*a*b").
    """
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, mark, p = p, t, p + 1
        elif p < len(pattern) and pattern[p] in ("?", text[t]):
            p, t = p + 1, t + 1
        elif star >= 0:
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    return pattern[p:].strip("*") == ""


def range_key(vr: str, text: str, pad: str = "0") -> str:
    """The comparable form of a DA/TM/DT value: digits only, padded on the right with ``pad``.

    DA is YYYYMMDD; TM becomes HHMMSS and DT YYYYMMDDHHMMSS (fractions of a second and the UTC
    offset are ignored), so "1015" is 10:15:00 as a stored value and runs to 10:15:59 as an upper bound.
    """
    text = text.strip().replace(":", "")
    if vr == "DT":
        text = re.sub(r"(?<=\d{4})[+-]\d{4}$", "", text)  # the UTC offset
    text = text.replace(".", "") if vr == "DA" else text.split(".")[0]  # ACR-NEMA dates; fractions
    width = {"DA": 8, "TM": 6, "DT": 14}.get(vr, len(text))
    return (text + pad * width)[:width]


def _term_matches(vr: str, term: Term, value: Any) -> bool:
    if term.kind is MatchKind.RANGE:
        key = range_key(vr, str(value))
        return bool(str(value).strip()) and (not term.low or key >= term.low) and (not term.high or key <= term.high)
    if vr in NUMERIC_VRS and term.kind is MatchKind.SINGLE:
        try:
            return float(value) == float(term.value)
        except (TypeError, ValueError):
            return False
    text = str(value)
    if term.kind is MatchKind.WILDCARD:
        return wildcard_match(term.value, text)
    return text == term.value


def _pn_term_matches(term: Term, name: str, fuzzy: bool) -> bool:
    """PN matching: case- and accent-insensitive (both sides folded); trailing empty components ignored."""
    if fuzzy:
        return fuzzy_name_matches(name, term.value)
    if term.kind is MatchKind.WILDCARD:
        stem = name.rstrip("^")
        return any(wildcard_match(term.value, name[:n]) for n in range(len(stem), len(name) + 1))
    return name.rstrip("^") == term.value


def fuzzy_name_matches(name: str, query: str) -> bool:
    """Fuzzy PN matching on folded text: each query component is a prefix of the same component of the
    name (or of a word in it); a query of one component may match any component. Wildcards still work."""
    stored = name.split("^")
    wanted = query.rstrip("^").split("^")

    def component(have: str, want: str) -> bool:
        return any(wildcard_match(want + "*", word) for word in [have, *have.split(" ")[1:]])

    if len(wanted) == 1:
        return any(component(have, wanted[0]) for have in stored)
    return all(not want or component(stored[i] if i < len(stored) else "", want) for i, want in enumerate(wanted))


@dataclass(frozen=True)
class SearchQuery:
    """A storage-neutral QIDO search (built by ``query.py`` from the request).

    ``conditions`` all have to hold (a key at a level below ``level`` holds when any child entity
    matches it). ``include``/``include_all``/``return_tags`` say what the result shows, not what
    matches; ``with_metadata`` tells an index to hand back each instance's stored DICOM JSON.
    """

    level: str                                   # "study" | "series" | "instance"
    study_uid: str | None = None                 # from the resource path
    series_uid: str | None = None
    conditions: tuple[Condition, ...] = ()
    limit: int = 1000
    offset: int = 0
    include: frozenset[str] = frozenset()        # includefield tags (8 hex digits)
    include_all: bool = False                    # includefield=all
    return_tags: frozenset[str] = frozenset()    # match keys, returned with the results
    with_metadata: bool = False


@dataclass(frozen=True)
class SearchRow:
    """One search result as the index holds it; the transaction builds the DICOM JSON from it."""

    study_uid: str
    study_json: str                              # the study-level attributes (DICOM JSON object)
    num_series: int
    num_study_instances: int
    modalities: str                              # ModalitiesInStudy, backslash-separated
    series_uid: str | None = None
    series_json: str | None = None
    num_series_instances: int | None = None
    sop_uid: str | None = None
    instance_columns: Mapping[str, Any] = field(default_factory=dict)  # model.INDEXED instance columns
    metadata_json: str | None = None             # the instance's DICOM JSON, when asked for


@dataclass(frozen=True)
class SearchResult:
    rows: list[SearchRow]
    remaining: int                               # matches after this page (for the Warning header)


class IndexStore(Protocol):
    """The index: what is stored where, and everything a search or metadata request needs."""

    def add_instances(self, records: Sequence[InstanceRecord], policy: DuplicatePolicy) -> list[AddResult]:
        """Add records in ONE transaction (all or nothing); one result per record, in order."""

    def list_instances(self, study_uid: str, series_uid: str | None = None,
                       sop_uid: str | None = None) -> list[StoredInstance]:
        """Instances of a study/series (or one instance), ordered by series then instance number."""

    def list_metadata(self, study_uid: str, series_uid: str | None = None,
                      sop_uid: str | None = None) -> list[str]:
        """The stored DICOM JSON of the same instances, in the same order."""

    def list_versions(self, study_uid: str, series_uid: str | None = None,
                      sop_uid: str | None = None) -> list[tuple[str, str, float]]:
        """(SOP Instance UID, digest, stored_at) of the same instances, in the same order: what a
        metadata ETag is made of, without the rest of each row."""

    def search(self, query: SearchQuery) -> SearchResult:
        """QIDO: one page of matching studies, series or instances in a stable order (study date and
        time newest first, then series number, then instance number; ties by insertion order)."""

    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[str]:
        """Remove the index rows of a study/series/instance in one transaction; returns their blob keys."""

    def blob_keys(self) -> set[str]:
        """Every blob key the index points at."""

    def close(self) -> None:
        """Release connections."""


class BlobStore(Protocol):
    """The bytes of stored instances, named by opaque keys (never by UIDs)."""

    spool_dir: str  # a local folder for temporary files on their way in

    def put(self, spooled_path: str) -> str:
        """Durably take over a spooled file; returns its new key. The spooled file is consumed."""

    def open(self, key: str) -> BinaryIO:
        """Open a blob for reading; ``FileNotFoundError`` if missing."""

    def local_path(self, key: str) -> str:
        """A local file path for the blob (for zero-copy sending and byte-range reads)."""

    def delete(self, key: str) -> None:
        """Remove a blob durably; missing blobs are ignored."""

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every blob present (for check and gc)."""


# -- Worklist (UPS-RS): workitems, subscriptions and the event outbox ----------------------------


@dataclass(frozen=True)
class AttributeMatch:
    """One matching key of a workitem search or filtered subscription (PS3.4 C.2.2.2, CC.2.8).

    ``path`` holds 8-hex tags: one for a top-level attribute, more for a key inside sequences
    (sequence matching). ``value`` is the query text as given: empty means universal matching.
    """

    path: tuple[str, ...]
    vr: str
    value: str


@dataclass(frozen=True)
class WorkitemRecord:
    """A stored workitem: its UID, Procedure Step State and full DICOM JSON (Transaction UID included)."""

    uid: str
    state: str
    attrs_json: str
    subscribers: tuple[str, ...] = ()    # AE titles subscribed to this workitem
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class NewEvent:
    """An event report to queue: for ``to`` (one AE title), or for every subscriber of the workitem."""

    event_type: int
    workitem_uid: str
    attrs_json: str
    to: str | None = None


@dataclass(frozen=True)
class WorkitemChange:
    """What a decision about a workitem produced: its new dataset (None: unchanged) and events.

    ``status`` is the DICOM status the decision reports (0, or a warning); the store only passes it on.
    """

    attrs_json: str | None = None
    events: Sequence[NewEvent] = ()
    status: int = 0


@dataclass(frozen=True)
class OutboxEvent:
    """A queued event report for one subscriber, in delivery order (``seq``)."""

    seq: int
    ae: str
    workitem_uid: str
    event_type: int
    attrs_json: str
    created_at: float


class WorkitemStore(Protocol):
    """Workitems, subscriptions and the event outbox, changed together in single transactions."""

    def create(self, uid: str, attrs_json: str, events: Sequence[NewEvent]) -> bool:
        """Add a workitem, subscribe the global subscribers whose filter matches it, queue ``events``.

        False (and nothing written) if the UID exists.
        """

    def get(self, uid: str) -> WorkitemRecord | None:
        """One workitem with its subscribers, or None."""

    def change(self, uid: str, decide: Callable[[WorkitemRecord], WorkitemChange]) -> WorkitemChange | None:
        """Run ``decide`` on the current workitem inside one write transaction and apply its result.

        An exception from ``decide`` rolls everything back and propagates. None if the UID is unknown.
        """

    def search(self, matches: Sequence[AttributeMatch], limit: int | None,
               offset: int) -> tuple[list[WorkitemRecord], int]:
        """Matching workitems in creation order (a page) and the total number of matches."""

    def subscribe(self, ae: str, uid: str, deletion_lock: bool,
                  initial: Callable[[WorkitemRecord], NewEvent]) -> bool:
        """Subscribe ``ae`` to one workitem and queue ``initial(workitem)`` for it; False if unknown."""

    def subscribe_all(self, ae: str, deletion_lock: bool, matches: Sequence[AttributeMatch] | None,
                      initial: Callable[[WorkitemRecord], NewEvent] | None) -> int:
        """Global (``matches`` None) or filtered global subscription: record it, subscribe ``ae`` to every
        matching workitem it is not subscribed to, queue ``initial`` for each of those; returns their number."""

    def unsubscribe(self, ae: str, uid: str) -> bool:
        """Remove one workitem subscription; False if the workitem is unknown."""

    def unsubscribe_all(self, ae: str) -> None:
        """Remove the global subscription and every workitem subscription of ``ae``."""

    def suspend(self, ae: str) -> None:
        """Remove the global subscription of ``ae``, keeping its workitem subscriptions."""

    def broadcast(self, event: NewEvent) -> int:
        """Queue ``event`` for every AE with any subscription; returns how many."""

    def pending_events(self, ae: str, limit: int) -> list[OutboxEvent]:
        """The oldest undelivered events of ``ae``, in order."""

    def ack_events(self, ae: str, through_seq: int) -> None:
        """Forget the events of ``ae`` up to and including ``through_seq`` (delivered)."""

    def purge(self) -> None:
        """Drop expired undelivered events and expired final-state workitems without deletion locks."""

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every commit that queued events (in-process wake-up)."""

    def close(self) -> None:
        """Release connections."""
