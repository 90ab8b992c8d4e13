"""Online backup of the embedded archive (SQLite + files) into a folder, while the server runs.

Copying a data folder file by file while the server writes is not a backup: the SQLite files
change between reads (a WAL database copied that way can be corrupt), and blobs come and go. Here
each SQLite database is copied with SQLite's backup API, which reads one consistent snapshot, and
then exactly the blobs that snapshot names are copied, each flushed to disk. A blob deleted after
the snapshot (a DELETE, or a replace under the ``replace`` policy) is looked up again in the live
index: a replaced instance is copied in its new version and its snapshot row rebuilt from those
bytes, a deleted one is dropped from the copy. So the result is an archive whose index and files
agree (``dicomweb-wsgi check`` passes on it) as of about the end of the backup; stores that land
while the backup runs may or may not be in it. An instance whose blob the live archive has lost
(indexed, file gone) is left out and reported as lost.

A backup is marked incomplete (``INCOMPLETE-BACKUP`` in its folder, which ``check`` reports) until
everything in it is flushed. A new folder is built as ``<dest>.partial`` and renamed when complete;
an existing empty folder (a mounted disk, a link to one) is filled in place. A leftover of an
interrupted backup (the marker present) is cleared by the next run. Copies keep the permissions
of the archive's files and folders. Serving the result (``--data <dest>``) is the restore. The
thumbnail cache is not copied (it is rebuilt on demand), nor is anything outside the data folder
(the ini, the credentials files). A PostgreSQL + object storage backend would back up with its own
tools; this module is for the embedded backend.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .config import Settings
from .ingest import IngestError, prepare
from .storage.base import DuplicatePolicy, Outcome, StorageError, StoredInstance
from .storage.file_blobs import fsync_dir, fsync_file
from .storage.sqlite_db import settle_copy, snapshot_database
from .storage.sqlite_index import SqliteIndex
from .storage.sqlite_npi import NpiIndex, NpiInstance

DATABASES = ("index.sqlite3", "npi.sqlite3", "workitems.sqlite3")
MANIFEST = "backup.json"
INCOMPLETE = "INCOMPLETE-BACKUP"
# How often a blob that keeps being replaced under the backup is chased before its instance is left out.
CHASE_LIMIT = 5
DELETED, LOST = "deleted during the backup", "lost from the archive: indexed there, its file missing (run check)"


@dataclass
class BackupReport:
    """What the backup holds, and what changed under it."""

    dest: str = ""
    instances: int = 0
    npi_instances: int = 0
    bytes: int = 0
    replaced: list[str] = field(default_factory=list)   # copied in the version stored during the backup
    dropped: list[str] = field(default_factory=list)    # left out, with the reason

    @property
    def lost(self) -> list[str]:
        """Instances left out because the live archive itself has lost their file."""
        return [item for item in self.dropped if item.endswith(LOST)]


def backup(settings: Settings, dest: str, progress: Callable[[int], None] | None = None) -> BackupReport:
    """Copy the archive of ``settings`` into ``dest`` (see the module docstring).

    ``dest`` must not exist, or be an empty folder (or hold an interrupted backup). ``progress`` is
    called with the bytes copied so far. A ``StorageError`` says why the backup could not be made.
    """
    source = os.path.realpath(settings.data_dir)
    if not os.path.exists(os.path.join(source, "index.sqlite3")):
        raise StorageError(f"no archive in {source} (no index.sqlite3 there)")
    dest = os.path.abspath(dest)
    target, in_place = _target(dest, source)
    try:
        _start(target, source)
        report = BackupReport(dest)
        copier = _Copier(source, target, progress)
        for name in DATABASES:
            if os.path.exists(os.path.join(source, name)):
                snapshot_database(os.path.join(source, name), os.path.join(target, name))
                copier.copy_mode(name)
        report.instances = _copy_patient_blobs(settings, source, target, copier, report)
        if os.path.exists(os.path.join(target, "npi.sqlite3")):
            report.npi_instances = _copy_npi_blobs(source, target, copier, report)
        report.bytes = copier.done
        for name in DATABASES:
            if os.path.exists(os.path.join(target, name)):
                settle_copy(os.path.join(target, name))
        copier.flush_folders()
        _write_manifest(target, source, report)
        os.unlink(os.path.join(target, INCOMPLETE))
        fsync_dir(target)
        if not in_place:
            os.rename(target, dest)
            fsync_dir(os.path.dirname(dest))
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        raise StorageError(f"backup to {dest} failed: {exc.strerror or exc}{where}") from exc
    return report


def _target(dest: str, source: str) -> tuple[str, bool]:
    """Where to build the backup, and whether that is ``dest`` itself (an existing empty folder)."""
    real = os.path.realpath(dest)
    if real == source or real.startswith(source + os.sep):
        raise StorageError("the backup cannot go inside the data folder it copies")
    if os.path.lexists(dest):
        if not os.path.isdir(dest):
            raise StorageError(f"{dest} exists and is not a folder")
        if os.listdir(dest) and not os.path.exists(os.path.join(dest, INCOMPLETE)):
            raise StorageError(f"{dest} is not empty")
        return real, True
    partial = dest + ".partial"
    if os.path.lexists(partial) and not os.path.exists(os.path.join(partial, INCOMPLETE)):
        raise StorageError(f"{partial} exists and is not an interrupted backup; remove it first")
    return partial, False


def _start(target: str, source: str) -> None:
    """An empty ``target`` with the data folder's permissions, marked incomplete (and that flushed)."""
    if os.path.exists(os.path.join(target, INCOMPLETE)):  # what an interrupted backup left
        for name in os.listdir(target):
            if name != INCOMPLETE:
                path = os.path.join(target, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    os.makedirs(target, exist_ok=True)
    os.chmod(target, stat.S_IMODE(os.stat(source).st_mode))
    with open(os.path.join(target, INCOMPLETE), "w", encoding="ascii") as fh:
        fh.write("this backup is not complete: do not restore from it\n")
        fh.flush()
        os.fsync(fh.fileno())
    fsync_dir(target)
    fsync_dir(os.path.dirname(target))


class _Copier:
    """Copies files of the data folder into the backup with their permissions, each flushed, and
    keeps the byte count. A backup always flushes, whatever the server's ``fsync`` setting."""

    def __init__(self, source: str, target: str, progress: Callable[[int], None] | None) -> None:
        self.source = source
        self.target = target
        self.progress = progress
        self.done = 0
        self.folders: set[str] = set()

    def copy_mode(self, relative: str) -> None:
        os.chmod(os.path.join(self.target, relative), stat.S_IMODE(os.stat(os.path.join(self.source, relative)).st_mode))

    def copy(self, relative: str) -> bool:
        """Copy one blob; False when the source is gone (deleted since the snapshot)."""
        source_path = os.path.join(self.source, relative)
        target_path = os.path.join(self.target, relative)
        folder = os.path.dirname(relative)
        if folder not in self.folders:
            self._make_folders(folder)
        try:
            shutil.copyfile(source_path, target_path)
            os.chmod(target_path, stat.S_IMODE(os.stat(source_path).st_mode))
        except FileNotFoundError:
            if not os.path.exists(source_path):
                if os.path.exists(target_path):
                    os.unlink(target_path)
                return False
            raise
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, target_path) from exc  # name the backup, not the archive
        fsync_file(target_path)
        self.done += os.path.getsize(target_path)
        if self.progress is not None:
            self.progress(self.done)
        return True

    def _make_folders(self, relative: str) -> None:
        parts = relative.split(os.sep)
        for depth in range(1, len(parts) + 1):
            folder = os.path.join(*parts[:depth])
            if folder not in self.folders:
                path = os.path.join(self.target, folder)
                os.makedirs(path, exist_ok=True)
                os.chmod(path, stat.S_IMODE(os.stat(os.path.join(self.source, folder)).st_mode))
                self.folders.add(folder)

    def flush_folders(self) -> None:
        for folder in sorted(self.folders, key=len, reverse=True):
            fsync_dir(os.path.join(self.target, folder))


@dataclass
class _Entry:
    """One instance of a snapshot, with what the copy needs if its blob went after the snapshot."""

    label: str
    key: str
    current_key: Callable[[], str | None]   # its blob key in the live index now (None: deleted)
    adopt: Callable[[str], str | None]      # point the snapshot row at that blob; a problem, or None
    drop: Callable[[], None]                # take it out of the snapshot


def _copy_entries(entries: Iterable[_Entry], copy: Callable[[str], bool], report: BackupReport) -> int:
    """Copy each entry's blob, following the ones replaced since the snapshot. The snapshot is
    changed only once ``entries`` is exhausted (it may be a cursor over that snapshot); only the
    entries that changed are held meanwhile. The number of instances the copy holds."""
    held = 0
    changed: list[tuple[_Entry, str | None, str]] = []
    for entry in entries:
        if copy(entry.key):
            held += 1
            continue
        key, why = _chase(entry.current_key, entry.key, copy)
        changed.append((entry, key, why))
    for entry, key, why in changed:
        problem = why if key is None else entry.adopt(key)
        if problem is None:
            held += 1
            report.replaced.append(entry.label)
        else:
            entry.drop()
            report.dropped.append(f"{entry.label}: {problem}")
    return held


def _chase(current_key: Callable[[], str | None], old_key: str, copy: Callable[[str], bool]) -> tuple[str | None, str]:
    """(the key of the instance's current blob, copied; or None and why it is left out)."""
    key = old_key
    for _ in range(CHASE_LIMIT):
        current = current_key()
        if current is None:
            return None, DELETED
        if current == key:
            return None, LOST
        key = current
        if copy(key):
            return key, ""
    return None, f"replaced more than {CHASE_LIMIT} times during the backup"


def _blob_path(folder: str, key: str) -> str:
    return os.path.join(folder, key[:2], key)


def _copy_patient_blobs(settings: Settings, source: str, target: str, copier: _Copier,
                        report: BackupReport) -> int:
    snapshot = SqliteIndex(os.path.join(target, "index.sqlite3"), synchronous="OFF")
    live = SqliteIndex(os.path.join(source, "index.sqlite3"))

    def adopt(key: str) -> str | None:
        path = os.path.join(target, _blob_path("blobs", key))
        try:
            record = prepare(path, bulk_threshold=settings.bulk_threshold).record(key)
        except IngestError as exc:  # it was stored, so it parses; unless the file was damaged since
            os.unlink(path)
            return f"its new version does not parse: {exc.reason}"
        [result] = snapshot.add_instances([record], DuplicatePolicy.REPLACE)
        if result.outcome not in (Outcome.STORED, Outcome.REPLACED):
            os.unlink(path)
            return f"its new version could not be indexed in the copy ({result.outcome.name})"
        return None

    def entry(row: StoredInstance) -> _Entry:
        def drop() -> None:
            snapshot.delete(row.study_uid, row.series_uid, row.sop_uid)

        return _Entry(f"instance {row.sop_uid} (study {row.study_uid})", row.blob_key,
                      lambda: live.blob_key_of(row.sop_uid), adopt, drop)

    try:
        return _copy_entries(map(entry, snapshot.iter_instance_files()),
                             lambda key: copier.copy(_blob_path("blobs", key)), report)
    finally:
        live.close()
        snapshot.close()


def _copy_npi_blobs(source: str, target: str, copier: _Copier, report: BackupReport) -> int:
    snapshot = NpiIndex(os.path.join(target, "npi.sqlite3"), synchronous="OFF")
    live = NpiIndex(os.path.join(source, "npi.sqlite3"))

    def entry(inst: NpiInstance) -> _Entry:
        def current_key() -> str | None:
            current = live.get(inst.resource, inst.sop_uid)
            return current.blob_key if current is not None else None

        def adopt(key: str) -> str | None:
            current = live.get(inst.resource, inst.sop_uid)
            if current is None or current.blob_key != key:
                os.unlink(os.path.join(target, _blob_path("npi-blobs", key)))
                return "changed again during the backup"
            snapshot.add([current], DuplicatePolicy.REPLACE)
            return None

        return _Entry(f"{inst.resource} {inst.sop_uid}", inst.blob_key, current_key, adopt,
                      lambda: snapshot.remove(inst.sop_uid))

    try:
        return _copy_entries(map(entry, snapshot.all_instances()),
                             lambda key: copier.copy(_blob_path("npi-blobs", key)), report)
    finally:
        live.close()
        snapshot.close()


def _write_manifest(target: str, source: str, report: BackupReport) -> None:
    path = os.path.join(target, MANIFEST)
    with open(path, "w", encoding="utf-8") as fh:
        json.dump({"source": source, "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   "instances": report.instances, "npi_instances": report.npi_instances,
                   "bytes": report.bytes, "replaced": report.replaced, "dropped": report.dropped}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
