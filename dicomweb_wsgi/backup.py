"""Online backup of the embedded archive (SQLite + files) into a new folder, while the server runs.

Copying a data folder file by file while the server writes is not a backup: the SQLite files
change between reads (a WAL database copied that way can be corrupt), and blobs come and go. Here
each SQLite database is copied with SQLite's backup API, which reads one consistent snapshot, and
then exactly the blobs that snapshot names are copied, each flushed to disk. A blob deleted after
the snapshot (a DELETE, or a replace under the ``replace`` policy) is looked up again in the live
index: a replaced instance is copied in its new version and its snapshot row rebuilt from those
bytes, a deleted one is dropped from the copy. So the result is an archive whose index and files
agree (``dicomweb-wsgi check`` passes on it) as of about the end of the backup; stores that land
while the backup runs may or may not be in it.

The backup is built in ``<dest>.partial`` and renamed to ``<dest>`` only when complete and
flushed, so a backup that was interrupted (kill, power cut, full disk) never looks like one. The
result is a data folder: serving it (``--data <dest>``) is the restore. The thumbnail cache is not
copied (it is rebuilt on demand), nor is anything outside the data folder (the ini, the
credentials file). A PostgreSQL + object storage backend would back up with its own tools; this
module is for the embedded backend.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .config import Settings
from .ingest import IngestError, prepare
from .storage.base import DuplicatePolicy, StorageError, StoredInstance
from .storage.file_blobs import FileBlobStore, fsync_dir, fsync_file
from .storage.sqlite_db import settle_copy, snapshot_database
from .storage.sqlite_index import SqliteIndex
from .storage.sqlite_npi import NpiIndex, NpiInstance

DATABASES = ("index.sqlite3", "npi.sqlite3", "workitems.sqlite3")
MANIFEST = "backup.json"
# How often a blob that keeps being replaced under the backup is chased before its instance is left out.
CHASE_LIMIT = 5


@dataclass
class BackupReport:
    """What the backup holds, and what changed under it."""

    dest: str = ""
    instances: int = 0
    npi_instances: int = 0
    bytes: int = 0
    replaced: list[str] = field(default_factory=list)   # copied in the version stored during the backup
    dropped: list[str] = field(default_factory=list)    # deleted during the backup (or lost from the archive)


def backup(settings: Settings, dest: str, progress: Callable[[int], None] | None = None) -> BackupReport:
    """Copy the archive of ``settings`` into the new folder ``dest`` (see the module docstring).

    ``dest`` must not exist, or be an empty folder. ``progress`` is called with the bytes copied so far.
    A ``StorageError`` says why the backup could not be made; ``<dest>.partial`` is then left for the
    operator to look at and remove.
    """
    source = os.path.abspath(settings.data_dir)
    dest = os.path.abspath(dest)
    partial = dest + ".partial"
    if not os.path.exists(os.path.join(source, "index.sqlite3")):
        raise StorageError(f"no archive in {source} (no index.sqlite3 there)")
    if os.path.isdir(dest) and os.listdir(dest) or os.path.exists(dest) and not os.path.isdir(dest):
        raise StorageError(f"{dest} exists and is not an empty folder")
    if os.path.exists(partial):
        raise StorageError(f"{partial} exists (an interrupted backup?); remove it first")
    if dest == source or dest.startswith(source + os.sep):
        raise StorageError("the backup cannot go inside the data folder it copies")
    try:
        os.makedirs(partial)
        report = BackupReport(dest)
        for name in DATABASES:
            if os.path.exists(os.path.join(source, name)):
                snapshot_database(os.path.join(source, name), os.path.join(partial, name))
        copier = _Copier(settings, progress)
        _copy_patient_blobs(source, partial, copier, report)
        if os.path.exists(os.path.join(partial, "npi.sqlite3")):
            _copy_npi_blobs(source, partial, copier, report)
        report.bytes = copier.done
        for name in DATABASES:
            if os.path.exists(os.path.join(partial, name)):
                settle_copy(os.path.join(partial, name))
        _write_manifest(partial, source, report)
        fsync_dir(partial)
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(partial, dest)
        fsync_dir(os.path.dirname(dest))
    except OSError as exc:
        raise StorageError(f"backup to {dest} failed: {exc.strerror or exc}"
                           + (f" ({exc.filename})" if getattr(exc, "filename", None) else "")) from exc
    return report


class _Copier:
    """Copies blobs into the backup, each flushed before it counts, and keeps the byte count."""

    def __init__(self, settings: Settings, progress: Callable[[int], None] | None) -> None:
        self.fsync = settings.fsync
        self.progress = progress
        self.done = 0
        self.folders: set[str] = set()

    def copy(self, source_path: str, target_path: str) -> bool:
        """Copy one blob; False when the source is gone (deleted since the snapshot)."""
        folder = os.path.dirname(target_path)
        if folder not in self.folders:
            os.makedirs(folder, exist_ok=True)
            self.folders.add(folder)
        try:
            shutil.copyfile(source_path, target_path)
        except FileNotFoundError:
            if not os.path.exists(source_path):
                return False
            raise
        if self.fsync:
            fsync_file(target_path)
        self.done += os.path.getsize(target_path)
        if self.progress is not None:
            self.progress(self.done)
        return True

    def flush_folders(self, root: str) -> None:
        if self.fsync:
            for folder in sorted(self.folders):
                if folder.startswith(root):
                    fsync_dir(folder)
            fsync_dir(root)


@dataclass
class _Entry:
    """One instance of a snapshot, with what the copy needs if its blob went after the snapshot."""

    label: str
    key: str
    current_key: Callable[[], str | None]   # its blob key in the live index now (None: deleted)
    adopt: Callable[[str], str | None]      # point the snapshot row at that blob; a problem, or None
    drop: Callable[[], None]                # take it out of the snapshot


def _copy_entries(entries: Iterable[_Entry], copy: Callable[[str], bool], report: BackupReport) -> int:
    """Copy each entry's blob; follow the ones replaced since the snapshot, drop the deleted ones.
    The number of instances the copy holds."""
    held = 0
    for entry in entries:
        if copy(entry.key):
            held += 1
            continue
        key = _chase(entry.current_key, entry.key, copy)
        problem = "deleted during the backup" if key is None else entry.adopt(key)
        if problem is None:
            held += 1
            report.replaced.append(entry.label)
        else:
            entry.drop()
            report.dropped.append(f"{entry.label}: {problem}")
    return held


def _chase(current_key: Callable[[], str | None], old_key: str, copy: Callable[[str], bool]) -> str | None:
    """The key of the instance's current blob, copied; None when it is deleted, or still indexed with
    its file gone (the live archive lost it: ``check`` there says so)."""
    key = old_key
    for _ in range(CHASE_LIMIT):
        current = current_key()
        if current is None or current == key:
            return None
        key = current
        if copy(key):
            return key
    return None


def _copy_patient_blobs(source: str, partial: str, copier: _Copier, report: BackupReport) -> None:
    live_blobs = FileBlobStore(os.path.join(source, "blobs"), fsync=False)
    copy_blobs = FileBlobStore(os.path.join(partial, "blobs"), fsync=False)
    snapshot = SqliteIndex(os.path.join(partial, "index.sqlite3"), synchronous="OFF")
    live = SqliteIndex(os.path.join(source, "index.sqlite3"))

    def adopt(key: str) -> str | None:
        try:
            record = prepare(copy_blobs.local_path(key)).record(key)
        except IngestError as exc:  # it was stored, so it parses; unless the file was damaged since
            os.unlink(copy_blobs.local_path(key))
            return f"its new version does not parse: {exc.reason}"
        snapshot.add_instances([record], DuplicatePolicy.REPLACE)
        return None

    def entry(row: StoredInstance) -> _Entry:
        def drop() -> None:
            snapshot.delete(row.study_uid, row.series_uid, row.sop_uid)

        return _Entry(f"instance {row.sop_uid} (study {row.study_uid})", row.blob_key,
                      lambda: live.blob_key_of(row.sop_uid), adopt, drop)

    try:
        rows = list(snapshot.iter_instance_files())
        report.instances = _copy_entries(
            map(entry, rows), lambda key: copier.copy(live_blobs.local_path(key), copy_blobs.local_path(key)),
            report)
    finally:
        live.close()
        snapshot.close()
    copier.flush_folders(os.path.join(partial, "blobs"))


def _copy_npi_blobs(source: str, partial: str, copier: _Copier, report: BackupReport) -> None:
    live_blobs = FileBlobStore(os.path.join(source, "npi-blobs"), fsync=False)
    copy_blobs = FileBlobStore(os.path.join(partial, "npi-blobs"), fsync=False)
    snapshot = NpiIndex(os.path.join(partial, "npi.sqlite3"), synchronous="OFF")
    live = NpiIndex(os.path.join(source, "npi.sqlite3"))

    def entry(inst: NpiInstance) -> _Entry:
        def current_key() -> str | None:
            current = live.get(inst.resource, inst.sop_uid)
            return current.blob_key if current is not None else None

        def adopt(key: str) -> str | None:
            current = live.get(inst.resource, inst.sop_uid)
            if current is None or current.blob_key != key:
                os.unlink(copy_blobs.local_path(key))
                return "changed again during the backup"
            snapshot.add([current], DuplicatePolicy.REPLACE)
            return None

        return _Entry(f"{inst.resource} {inst.sop_uid}", inst.blob_key, current_key, adopt,
                      lambda: snapshot.remove(inst.sop_uid))

    try:
        report.npi_instances = _copy_entries(
            map(entry, snapshot.all_instances()),
            lambda key: copier.copy(live_blobs.local_path(key), copy_blobs.local_path(key)), report)
    finally:
        live.close()
        snapshot.close()
    copier.flush_folders(os.path.join(partial, "npi-blobs"))


def _write_manifest(partial: str, source: str, report: BackupReport) -> None:
    path = os.path.join(partial, MANIFEST)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"source": source, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "instances": report.instances, "npi_instances": report.npi_instances,
                   "bytes": report.bytes, "replaced": report.replaced, "dropped": report.dropped}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
