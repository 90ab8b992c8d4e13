"""archive.py: when blobs and index rows meet (batch commits, gc's grace) and opening a data folder."""
from __future__ import annotations

import os
import tempfile
import time

import pytest

from dicomweb_wsgi import archive as archive_module
from dicomweb_wsgi.archive import Archive
from dicomweb_wsgi.config import load_settings
from dicomweb_wsgi.storage.base import StorageError
from dicomweb_wsgi.testing import TEST_SETTINGS, dataset_bytes, make_dataset


@pytest.fixture
def archive(tmp_path):
    opened = Archive.open(load_settings({**TEST_SETTINGS, "data_dir": str(tmp_path / "data")}))
    yield opened
    opened.close()


def _spool(archive: Archive, data: bytes, age_seconds: float = 0.0) -> str:
    fd, path = tempfile.mkstemp(dir=archive.blobs.spool_dir, suffix=".part")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    if age_seconds:
        then = time.time() - age_seconds
        os.utime(path, (then, then))
    return path


def test_gc_counts_a_blobs_age_from_when_it_was_put_not_from_its_spool_file(archive):
    # A part spooled two hours ago and put just now is a blob of a store in flight until its row
    # commits: gc with the default grace must leave it alone.
    key = archive.blobs.put(_spool(archive, b"part of a slow request", age_seconds=7200))
    assert key not in archive.index.blob_keys()
    assert archive.gc(grace_seconds=3600) == 0
    assert os.path.exists(archive.blobs.local_path(key))


def test_gc_removes_an_orphan_older_than_the_grace(archive):
    key = archive.blobs.put(_spool(archive, b"left by a crash"))
    assert archive.gc(grace_seconds=-1) == 1
    assert not os.path.exists(archive.blobs.local_path(key))


def test_store_commits_at_least_every_commit_seconds_not_only_every_batch(archive, monkeypatch):
    # A blob must not wait long for its index row (gc's grace is measured against that wait).
    monkeypatch.setattr(archive_module, "COMMIT_SECONDS", 0.0)
    consumed: list[int] = []

    def parts():
        for n in range(3):
            consumed.append(n)
            yield _spool(archive, dataset_bytes(make_dataset()))

    seen_when_committed = [len(consumed) for result in archive.store_files(parts()) if result.failure is None]
    assert seen_when_committed == [1, 2, 3]  # each instance committed before the next part was read
    assert archive.index.counts()["instances"] == 3


def test_store_batches_while_commit_seconds_have_not_passed(archive):
    consumed: list[int] = []

    def parts():
        for n in range(3):
            consumed.append(n)
            yield _spool(archive, dataset_bytes(make_dataset()))

    assert [len(consumed) for _ in archive.store_files(parts())] == [3, 3, 3]  # one commit at the end


@pytest.mark.parametrize("where", ["under a file", "under /proc"])
def test_open_an_unusable_data_folder_is_a_storage_error_naming_it(tmp_path, where):
    if where == "under a file":
        (tmp_path / "file").write_text("not a folder")
        data_dir = str(tmp_path / "file" / "data")
    else:
        data_dir = "/proc/dicomweb-data"
    with pytest.raises(StorageError, match="cannot use the data folder"):
        Archive.open(load_settings({**TEST_SETTINGS, "data_dir": data_dir}))
