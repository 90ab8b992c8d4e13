"""The archive: the only code that touches both the index and the blobs.

Store order (so a crash at any moment leaves at worst an orphan blob, never an index row that
points at a missing or partial file): write the blob under a fresh key and make it durable, then
commit the index rows in one transaction, then delete blobs that no row points at any more. If the
commit fails, the new blobs are deleted. ``gc`` removes orphans left by a crash; ``reindex``
rebuilds the index from the blobs.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

from .config import Settings
from .errors import DicomStatus
from .ingest import IngestError, Prepared, prepare
from .storage.base import AddResult, BlobStore, IndexStore, Outcome, StorageError, StorageFull, StoredInstance
from .storage.file_blobs import FileBlobStore
from .storage.sqlite_index import SqliteIndex

log = logging.getLogger("dicomweb_wsgi.archive")

# Index rows are committed in batches so a request of thousands of instances holds bounded memory.
COMMIT_BATCH = 200


@dataclass(frozen=True)
class StoreResult:
    """What happened to one uploaded part, for the STOW response."""

    sop_class_uid: str | None
    sop_uid: str | None
    study_uid: str | None
    series_uid: str | None
    failure: DicomStatus | None = None
    reason: str = ""
    outcome: Outcome | None = None


class Archive:
    """Index + blob store behind one interface for the transaction handlers."""

    def __init__(self, index: IndexStore, blobs: BlobStore, settings: Settings) -> None:
        self.index = index
        self.blobs = blobs
        self.settings = settings

    @classmethod
    def open(cls, settings: Settings) -> Archive:
        """The embedded default: SQLite index and file blobs in ``settings.data_dir``."""
        root = os.path.abspath(settings.data_dir)
        os.makedirs(root, exist_ok=True)
        blobs = FileBlobStore(os.path.join(root, "blobs"), fsync=settings.fsync)
        index = SqliteIndex(os.path.join(root, "index.sqlite3"), synchronous=settings.sqlite_synchronous)
        return cls(index, blobs, settings)

    def close(self) -> None:
        self.index.close()

    # -- store -------------------------------------------------------------------------------
    def store_files(self, paths: Iterable[str], expected_study: str | None = None) -> Iterator[StoreResult]:
        """Store spooled files (consumed: moved into the blob store or deleted); one result each.

        Results are yielded as their batch commits, so everything yielded is durable.
        """
        pending: list[tuple[Prepared, str]] = []
        try:
            yield from self._store_all(paths, expected_study, pending)
        except BaseException:
            # The request broke off (malformed or truncated body, client gone): instances not yet
            # committed leave no trace.
            for _, key in pending:
                self._delete_blob(key)
            raise

    def _store_all(self, paths: Iterable[str], expected_study: str | None,
                   pending: list[tuple[Prepared, str]]) -> Iterator[StoreResult]:
        for path in paths:
            try:
                prepared = prepare(path, bulk_threshold=self.settings.bulk_threshold)
            except IngestError as exc:
                _unlink(path)
                yield StoreResult(exc.sop_class_uid, exc.sop_uid, None, None, exc.code, exc.reason)
                continue
            if expected_study is not None and prepared.study_uid != expected_study:
                _unlink(path)
                yield StoreResult(prepared.sop_class_uid, prepared.sop_uid, prepared.study_uid, prepared.series_uid,
                                  DicomStatus.STUDY_UID_MISMATCH,
                                  f"StudyInstanceUID {prepared.study_uid} does not match the target study "
                                  f"{expected_study}")
                continue
            try:
                key = self.blobs.put(path)
            except StorageError as exc:
                _unlink(path)
                log.error("blob write failed: %s", exc)
                yield _failed(prepared, DicomStatus.OUT_OF_RESOURCES, f"cannot write the instance: {exc}")
                continue
            pending.append((prepared, key))
            if len(pending) >= COMMIT_BATCH:
                batch = pending[:]
                pending.clear()
                yield from self._commit(batch)
        if pending:
            batch = pending[:]
            pending.clear()
            yield from self._commit(batch)

    def _commit(self, pending: list[tuple[Prepared, str]]) -> Iterator[StoreResult]:
        records = [p.record(key) for p, key in pending]
        try:
            results: list[AddResult] = self.index.add_instances(records, self.settings.policy)
        except StorageError as exc:
            log.error("index commit failed, removing %d new blobs: %s", len(pending), exc)
            for _, key in pending:
                self._delete_blob(key)
            for prepared, _ in pending:
                yield _failed(prepared, DicomStatus.OUT_OF_RESOURCES, f"cannot index the instance: {exc}")
            return
        for (prepared, key), result in zip(pending, results):
            if result.outcome in (Outcome.STORED, Outcome.REPLACED):
                if result.obsolete_blob_key:
                    self._delete_blob(result.obsolete_blob_key)
                yield _ok(prepared, result.outcome)
                continue
            self._delete_blob(key)
            if result.outcome is Outcome.IGNORED:
                yield _ok(prepared, result.outcome)
            elif result.outcome is Outcome.REJECTED_DUPLICATE:
                yield _failed(prepared, DicomStatus.DUPLICATE_SOP_INSTANCE,
                              "an instance with this SOP Instance UID is already stored")
            else:
                yield _failed(prepared, DicomStatus.PROCESSING_FAILURE,
                              "the SeriesInstanceUID already belongs to another study")

    def _delete_blob(self, key: str) -> None:
        try:
            self.blobs.delete(key)
        except StorageError as exc:  # an orphan blob is harmless: gc removes it later
            log.warning("could not delete blob %s: %s", key, exc)

    # -- retrieve ----------------------------------------------------------------------------
    def instances(self, study_uid: str, series_uid: str | None = None,
                  sop_uid: str | None = None) -> list[StoredInstance]:
        return self.index.list_instances(study_uid, series_uid, sop_uid)

    def metadata(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> list[str]:
        return self.index.list_metadata(study_uid, series_uid, sop_uid)

    def path(self, inst: StoredInstance) -> str:
        return self.blobs.local_path(inst.blob_key)

    # -- maintenance -------------------------------------------------------------------------
    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> int:
        """Remove index rows first (one transaction), then their blobs; returns the count."""
        keys = self.index.delete(study_uid, series_uid, sop_uid)
        for key in keys:
            self._delete_blob(key)
        return len(keys)

    def gc(self, grace_seconds: float = 3600.0) -> int:
        """Delete blobs no index row points at, older than the grace period (a store may be in flight)."""
        cutoff = time.time() - grace_seconds
        known = self.index.blob_keys()
        removed = 0
        for blob in self.blobs.iter_blobs():
            if blob.key not in known and blob.mtime < cutoff:
                self._delete_blob(blob.key)
                removed += 1
        if isinstance(self.blobs, FileBlobStore):
            removed += self.blobs.clean_spool(cutoff)
        return removed


def _ok(p: Prepared, outcome: Outcome) -> StoreResult:
    return StoreResult(p.sop_class_uid, p.sop_uid, p.study_uid, p.series_uid, outcome=outcome)


def _failed(p: Prepared, code: DicomStatus, reason: str) -> StoreResult:
    return StoreResult(p.sop_class_uid, p.sop_uid, p.study_uid, p.series_uid, code, reason)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["Archive", "StoreResult", "StorageFull"]
