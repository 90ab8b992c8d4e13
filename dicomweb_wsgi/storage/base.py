"""The storage contracts: what an index and a blob store must do, and the plain records they exchange.

Backends implement these Protocols and never import pydicom, HTTP code or ``errors``; they raise
``StorageError`` (or its subclasses) which the archive turns into the right HTTP answer. A new
backend (PostgreSQL, object storage) is one module implementing one Protocol, checked by the same
contract tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, BinaryIO, Iterator, Mapping, Protocol, Sequence


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


@dataclass
class SearchQuery:
    """A storage-neutral QIDO search (built by ``query.py``)."""

    level: str                                   # "study" | "series" | "instance"
    study_uid: str | None = None                 # from the resource path
    series_uid: str | None = None
    conditions: list[Any] = field(default_factory=list)
    limit: int | None = None
    offset: int = 0


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
