"""The filesystem BlobStore: instance bytes in fan-out folders under opaque random keys.

A blob is durable when ``put`` returns: the spooled file is renamed into place under a fresh key
(atomic on POSIX), then the file's data and its folder are flushed, and only then does ``put``
return, so the index row naming the key (committed after ``put``) never outlives the bytes. The
rename comes first so that the file's flush commits the rename with it (one filesystem journal
commit instead of two; the folder's flush then finds little left to do). A crash before ``put``
returns leaves a file under a key that no index row names (after a power cut, possibly an
incomplete one): an orphan, which ``gc`` removes.
Blobs are never overwritten; keys are random, so no request value ever becomes a path.
"""
from __future__ import annotations

import errno
import os
import re
import uuid
from typing import BinaryIO, Callable, Iterator

from .base import BlobInfo, StorageError, StorageFull

_KEY_RE = re.compile(r"^[0-9a-f]{32}$")


def _sync(path: str, sync: Callable[[int], None]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        sync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make a rename or unlink in ``path`` durable."""
    _sync(path, os.fsync)


def fsync_file(path: str) -> None:
    """Make a file's bytes durable (``fdatasync``: its data and size; timestamps need not be)."""
    _sync(path, os.fdatasync)


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StorageFull(f"{what}: no space left on device")
    return StorageError(f"{what}: {exc.strerror or exc}")


class FileBlobStore:
    """Blobs as files ``<root>/ab/<key>``; temporary files in ``<root>/tmp`` (same filesystem).

    The 256 fan-out folders are made (durably) when the store opens, so a store never creates a
    folder: each blob costs one file fsync and one folder fsync.
    """

    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.fsync = fsync
        self.spool_dir = os.path.join(self.root, "tmp")
        os.makedirs(self.spool_dir, exist_ok=True)
        missing = [f"{n:02x}" for n in range(256) if not os.path.isdir(os.path.join(self.root, f"{n:02x}"))]
        for name in missing:
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        if missing and fsync:
            fsync_dir(self.root)
            fsync_dir(os.path.dirname(self.root))

    def _path(self, key: str) -> str:
        if not _KEY_RE.match(key):
            raise StorageError(f"invalid blob key {key!r}")
        return os.path.join(self.root, key[:2], key)

    def put(self, spooled_path: str) -> str:
        key = uuid.uuid4().hex
        dest = self._path(key)
        folder = os.path.dirname(dest)
        try:
            os.rename(spooled_path, dest)
            if self.fsync:
                fsync_file(dest)
                fsync_dir(folder)
        except OSError as exc:
            # A rename that cannot be made durable is undone: the caller reports a failure, so no
            # blob may be left behind under a key nobody will ever index.
            try:
                os.unlink(dest)
            except OSError:
                pass
            raise _storage_error(exc, "storing a blob") from exc
        return key

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def local_path(self, key: str) -> str:
        return self._path(key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _storage_error(exc, "deleting a blob") from exc
        if self.fsync:
            fsync_dir(os.path.dirname(path))

    def iter_blobs(self) -> Iterator[BlobInfo]:
        for top in sorted(os.listdir(self.root)):
            top_path = os.path.join(self.root, top)
            if len(top) != 2 or not os.path.isdir(top_path):
                continue
            for name in sorted(os.listdir(top_path)):
                if _KEY_RE.match(name):
                    try:
                        st = os.stat(os.path.join(top_path, name))
                    except FileNotFoundError:  # deleted while we looked
                        continue
                    # put() renames a spool file written earlier: the rename sets ctime, not mtime,
                    # and gc must count a blob's age from when it was put.
                    yield BlobInfo(name, st.st_size, max(st.st_mtime, st.st_ctime))

    def clean_spool(self, older_than: float) -> int:
        """Remove temporary files left by interrupted requests (older than a timestamp)."""
        removed = 0
        for name in os.listdir(self.spool_dir):
            path = os.path.join(self.spool_dir, name)
            try:
                if os.stat(path).st_mtime < older_than:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                continue
        return removed
