"""The archive: the only code that touches both the index and the blobs.

Store order (so a crash at any moment leaves at worst an orphan blob, never an index row that
points at a missing or partial file): write the blob under a fresh key and make it durable, then
commit the index rows in one transaction, then delete blobs that no row points at any more. If the
commit fails, the new blobs are deleted. ``gc`` removes orphans left by a crash; ``reindex``
rebuilds the index from the blobs.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from .audit import audit
from .config import Settings
from .errors import DicomStatus
from .ingest import IngestError, Prepared, prepare
from .storage.base import (AddResult, BlobStore, DuplicatePolicy, IndexStore, InstanceRecord, Outcome, StorageError,
                           StorageFull, StoredInstance)
from .storage.file_blobs import FileBlobStore
from .storage.sqlite_db import WRITER_LOCK_SUFFIX
from .storage.sqlite_index import MIGRATIONS, SqliteIndex

if TYPE_CHECKING:
    from .storage.sqlite_npi import NpiIndex

log = logging.getLogger("dicomweb_wsgi.archive")

# Index rows are committed in batches so a request of thousands of instances holds bounded memory,
# and at least this often, so a blob waits for its row far less than the shortest sensible gc grace.
COMMIT_BATCH = 200
COMMIT_SECONDS = 30.0


@dataclass(frozen=True)
class StoreResult:
    """What happened to one uploaded part, for the STOW response."""

    sop_class_uid: str | None
    sop_uid: str | None
    study_uid: str | None
    series_uid: str | None
    failure: DicomStatus | None = None
    reason: str = ""           # the failure's or the warning's, in words
    outcome: Outcome | None = None
    warning: DicomStatus | None = None  # stored, but changed on the way (Warning Reason)


class Archive:
    """Index + blob store behind one interface for the transaction handlers."""

    def __init__(self, index: IndexStore, blobs: BlobStore, settings: Settings) -> None:
        self.index = index
        self.blobs = blobs
        self.settings = settings
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def open(cls, settings: Settings) -> Archive:
        """The embedded default: SQLite index and file blobs in ``settings.data_dir``."""
        root = os.path.abspath(settings.data_dir)
        try:
            os.makedirs(root, exist_ok=True)
            blobs = FileBlobStore(os.path.join(root, "blobs"), fsync=settings.fsync)
        except OSError as exc:
            raise StorageError(f"cannot use the data folder {root}: {exc.strerror or exc}") from exc
        index = SqliteIndex(os.path.join(root, "index.sqlite3"), synchronous=settings.sqlite_synchronous)
        return cls(index, blobs, settings)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.index.close()
        self.close_npi()

    # -- store -------------------------------------------------------------------------------
    def store_files(self, paths: Iterable[str], expected_study: str | None = None) -> Iterator[StoreResult]:
        """Store spooled files (consumed: moved into the blob store or deleted); one result each.

        Results are yielded as their batch commits, so everything yielded is durable.
        """
        pending: list[tuple[Prepared, Future[str] | str]] = []
        try:
            for result in self._store_all(paths, expected_study, pending):
                _audit_store(result)
                yield result
        except BaseException:
            # The request broke off (malformed or truncated body, client gone): instances not yet
            # committed leave no trace.
            for _, put in pending:
                if isinstance(put, str):
                    _unlink(put)
                    continue
                try:
                    self._delete_blob(put.result())
                except StorageError:
                    pass
            raise

    def _put(self, path: str) -> str:
        try:
            return self.blobs.put(path)
        except StorageError:
            _unlink(path)
            raise

    def _put_soon(self, path: str) -> Future[str]:
        """Make a blob durable on a worker thread, so its fsyncs overlap the parsing of the next part.

        Only a part that another part follows goes to the pool (when that part arrives); the last
        part of a batch is put by the committing thread itself, which would otherwise just wait
        for the worker (one instance per request: no thread hand-over at all). The index commit of
        a batch waits for every one of its blobs: the order (blob durable, then index) is the same
        as storing them one by one.
        """
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dicomweb-blob")
        return self._pool.submit(self._put, path)

    def _store_all(self, paths: Iterable[str], expected_study: str | None,
                   pending: list[tuple[Prepared, Future[str] | str]]) -> Iterator[StoreResult]:
        batch_started = time.monotonic()
        for path in paths:
            if pending and isinstance(pending[-1][1], str):  # another part follows: its blob goes to the pool
                pending[-1] = (pending[-1][0], self._put_soon(pending[-1][1]))
            try:
                prepared = prepare(path, bulk_threshold=self.settings.bulk_threshold)
            except IngestError as exc:
                _unlink(path)
                yield StoreResult(exc.sop_class_uid, exc.sop_uid, None, None, exc.code, exc.reason)
                continue
            except OSError as exc:  # the spool disk failed (full, I/O error) while preparing the file
                _unlink(path)
                log.error("preparing an upload failed: %s", exc)
                yield StoreResult(None, None, None, None, DicomStatus.OUT_OF_RESOURCES,
                                  f"cannot read the spooled instance: {exc.strerror or exc}")
                continue
            if expected_study is not None and prepared.study_uid != expected_study:
                _unlink(path)
                yield StoreResult(prepared.sop_class_uid, prepared.sop_uid, prepared.study_uid, prepared.series_uid,
                                  DicomStatus.STUDY_UID_MISMATCH,
                                  f"StudyInstanceUID {prepared.study_uid} does not match the target study "
                                  f"{expected_study}")
                continue
            if not pending:
                batch_started = time.monotonic()
            pending.append((prepared, path))
            if len(pending) >= COMMIT_BATCH or time.monotonic() - batch_started >= COMMIT_SECONDS:
                batch = pending[:]
                pending.clear()
                yield from self._commit(batch)
        if pending:
            batch = pending[:]
            pending.clear()
            yield from self._commit(batch)

    def _commit(self, batch: list[tuple[Prepared, Future[str] | str]]) -> Iterator[StoreResult]:
        pending: list[tuple[Prepared, str]] = []
        for prepared, put in batch:
            try:
                pending.append((prepared, self._put(put) if isinstance(put, str) else put.result()))
            except StorageError as exc:
                log.error("blob write failed: %s", exc)
                yield _failed(prepared, DicomStatus.OUT_OF_RESOURCES, f"cannot write the instance: {exc}")
        if not pending:
            return
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
            elif result.outcome is Outcome.REJECTED_ELSEWHERE:
                yield _failed(prepared, DicomStatus.DUPLICATE_SOP_INSTANCE,
                              "an instance with this SOP Instance UID is already stored in another study or series")
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

    def versions(self, study_uid: str, series_uid: str | None = None,
                 sop_uid: str | None = None) -> list[tuple[str, str, float]]:
        return self.index.list_versions(study_uid, series_uid, sop_uid)

    def path(self, inst: StoredInstance) -> str:
        return self.blobs.local_path(inst.blob_key)

    # -- maintenance -------------------------------------------------------------------------
    def delete(self, study_uid: str, series_uid: str | None = None, sop_uid: str | None = None) -> int:
        """Remove index rows first (one transaction), then their blobs; returns the count.

        A crash between the two leaves orphan blobs (removed by ``gc``), never a row without its file.
        """
        keys = self.index.delete(study_uid, series_uid, sop_uid)
        if keys:
            audit("delete", study=study_uid, series=series_uid, sop=sop_uid, instances=len(keys))
        for key in keys:
            self._delete_blob(key)
        return len(keys)

    def gc(self, grace_seconds: float = 3600.0) -> int:
        """Delete blobs no index row points at, older than the grace period (a store may be in flight:
        its blobs wait at most about ``COMMIT_SECONDS`` for their rows, so the grace must be longer)."""
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

    def check(self, *, verify_digests: bool = True, progress: Callable[[int], None] | None = None) -> CheckReport:
        """Compare the index with the blobs: missing files, size or SHA-256 mismatches, orphans, schema.

        ``progress`` is called with the bytes read so far (for a progress bar); digests read every byte.
        """
        from .backup import INCOMPLETE

        index = self._sqlite("check")
        report = CheckReport(index.schema_version(), len(MIGRATIONS), integrity=index.integrity_problems())
        if os.path.exists(os.path.join(self.settings.data_dir, INCOMPLETE)):
            report.integrity.append(f"this folder holds an interrupted backup ({INCOMPLETE} is there): "
                                    "do not serve it; run the backup again")
        present = {b.key: b for b in self.blobs.iter_blobs()}
        known: set[str] = set()
        done = 0
        for row in index.iter_instance_files():
            known.add(row.blob_key)
            blob = present.get(row.blob_key)
            label = f"instance {row.sop_uid} (study {row.study_uid}, blob {row.blob_key})"
            if blob is None:
                report.missing.append(label)
                continue
            if blob.size != row.size:
                report.mismatched.append(f"{label}: {blob.size} bytes on disk, {row.size} indexed")
            elif verify_digests:
                with self.blobs.open(row.blob_key) as fh:
                    digest = hashlib.file_digest(fh, "sha256").hexdigest()
                if digest != row.digest:
                    report.mismatched.append(f"{label}: SHA-256 differs from the indexed digest")
            done += blob.size
            if progress is not None:
                progress(done)
        now = time.time()
        report.orphans = [f"blob {k} ({present[k].size} bytes, {(now - present[k].mtime) / 60:.0f} min old)"
                          for k in sorted(set(present) - known)]
        report.instances = len(known)
        return report

    def reindex(self, *, progress: Callable[[int], None] | None = None) -> ReindexReport:
        """Rebuild the index from the blobs alone, then swap it in atomically (stop the server first).

        Each blob is parsed as at store time into a fresh index file; one transaction then replaces
        the live index rows with the rebuilt ones. Blobs that do not parse are reported, never deleted.
        Two blobs of one SOP Instance UID (a crash mid-replace) resolve as the duplicate policy would
        have: ``replace`` keeps the newest, the others the oldest; the loser is left for ``gc``.
        """
        live = self._sqlite("reindex")
        rebuilt_path = live.path + ".rebuild"
        _remove_sqlite_files(rebuilt_path)
        rebuilt = SqliteIndex(rebuilt_path, synchronous="OFF")
        policy = DuplicatePolicy.REPLACE if self.settings.policy is DuplicatePolicy.REPLACE else DuplicatePolicy.IGNORE
        report = ReindexReport()
        batch: list[InstanceRecord] = []
        done = 0
        try:
            for blob in sorted(self.blobs.iter_blobs(), key=lambda b: (b.mtime, b.key)):
                path = self.blobs.local_path(blob.key)
                try:
                    # prepare() would add a missing preamble by rewriting the file; blobs are never rewritten.
                    with open(path, "rb") as fh:
                        if fh.read(132)[128:] != b"DICM":
                            raise IngestError(DicomStatus.CANNOT_UNDERSTAND, "no PS3.10 preamble")
                    batch.append(prepare(path, bulk_threshold=self.settings.bulk_threshold).record(blob.key))
                except IngestError as exc:
                    report.unreadable.append(f"blob {blob.key}: {exc.reason}")
                except OSError as exc:
                    report.unreadable.append(f"blob {blob.key}: cannot read: {exc.strerror or exc}")
                if len(batch) >= COMMIT_BATCH:
                    self._reindex_batch(rebuilt, batch, policy, report)
                done += blob.size
                if progress is not None:
                    progress(done)
            self._reindex_batch(rebuilt, batch, policy, report)
            rebuilt.close()
            live.replace_instances_from(rebuilt_path)
        finally:
            rebuilt.close()
            _remove_sqlite_files(rebuilt_path)
        return report

    @staticmethod
    def _reindex_batch(rebuilt: SqliteIndex, batch: list[InstanceRecord], policy: DuplicatePolicy,
                       report: ReindexReport) -> None:
        for record, result in zip(batch, rebuilt.add_instances(batch, policy)):
            if result.outcome is Outcome.STORED:
                report.indexed += 1
            elif result.outcome is Outcome.REPLACED:
                report.duplicates.append(f"blob {result.obsolete_blob_key}: older copy of {record.sop_uid}")
            elif result.outcome is Outcome.IGNORED:
                report.duplicates.append(f"blob {record.blob_key}: newer copy of {record.sop_uid}")
            elif result.outcome is Outcome.REJECTED_SERIES_CONFLICT:
                report.unreadable.append(f"blob {record.blob_key}: series {record.series_uid} already belongs "
                                         "to another study")
        batch.clear()

    def stats(self) -> dict[str, Any]:
        """Counts and bytes per level and per modality, from the index."""
        return self._sqlite("stats").stats()

    def _sqlite(self, what: str) -> SqliteIndex:
        if not isinstance(self.index, SqliteIndex):
            raise StorageError(f"{what} needs the SQLite index")
        return self.index

    # -- Non-Patient Instances (PS3.18 §12) ------------------------------------------------------
    # Their own index file and blob folder: QIDO-RS never sees them, and gc of the patient blobs
    # (which deletes every blob the patient index does not know) never deletes them.
    @cached_property
    def npi_index(self) -> NpiIndex:
        """The NPI index (``npi.sqlite3`` in the data folder), opened on first use."""
        from .storage.sqlite_npi import NpiIndex

        return NpiIndex(os.path.join(os.path.abspath(self.settings.data_dir), "npi.sqlite3"),
                        synchronous=self.settings.sqlite_synchronous)

    @cached_property
    def npi_blobs(self) -> FileBlobStore:
        """The NPI blob store (``npi-blobs/`` in the data folder), same durability as the patient blobs."""
        return FileBlobStore(os.path.join(os.path.abspath(self.settings.data_dir), "npi-blobs"),
                             fsync=self.settings.fsync)

    def npi_gc(self, grace_seconds: float = 3600.0) -> int:
        """``gc`` for the NPI blobs: the same rules, applied to the NPI index and blob folder."""
        return Archive(self.npi_index, self.npi_blobs, self.settings).gc(grace_seconds)  # type: ignore[arg-type]

    def close_npi(self) -> None:
        """Close the NPI index if it was opened (``close`` closes only the patient index)."""
        if "npi_index" in self.__dict__:
            self.npi_index.close()


@dataclass
class CheckReport:
    """What ``Archive.check`` found; ``healthy`` is what the ``check`` command's exit code says."""

    schema_version: int
    schema_expected: int
    integrity: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    instances: int = 0

    @property
    def healthy(self) -> bool:
        return (self.schema_version == self.schema_expected
                and not (self.integrity or self.missing or self.mismatched or self.orphans))


@dataclass
class ReindexReport:
    """What ``Archive.reindex`` did: instances indexed, blobs it could not index, duplicate copies."""

    indexed: int = 0
    unreadable: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)


def _audit_store(result: StoreResult) -> None:
    if result.failure is None:
        audit("store", outcome=result.outcome.value if result.outcome else "stored", study=result.study_uid,
              series=result.series_uid, sop=result.sop_uid)
    else:
        audit("store-failed", reason=f"0x{int(result.failure):04X}", study=result.study_uid,
              series=result.series_uid, sop=result.sop_uid, detail=result.reason[:200])


def _remove_sqlite_files(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal", WRITER_LOCK_SUFFIX):
        _unlink(path + suffix)


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
