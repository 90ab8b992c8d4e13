"""Storage faults: a disk that is full or failing, and an index that is locked, read-only or full.

Each fault is injected where it would really happen (the blob store's rename and folder fsync, the spool
files, the index connection) and each test checks three things: the answer is a clear 503 (for STOW,
FailureReason 0xA700 for every affected instance, PS3.18 §10.5.3 / PS3.4 C.4.2.1.4); nothing is left
half-written (no blob, no spool file, no index row); and the next request succeeds once the fault is gone.
"""
from __future__ import annotations

import errno
import os
import tempfile

import pytest

from dicomweb_wsgi import archive as archive_module
from dicomweb_wsgi import ingest, multipart
from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.storage import file_blobs
from dicomweb_wsgi.storage.sqlite_index import SqliteIndex
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, store

import webtest

from .test_crash import audit_archive

OUT_OF_RESOURCES = 0xA700


def _failure_reasons(body: dict) -> list[int]:
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


def _stored(body: dict) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]


def _assert_untouched(app) -> None:
    """Nothing half-written: no row, no blob, no spool file."""
    found = audit_archive(app.archive)
    assert found.clean and found.instances == 0, found


def _assert_recovers(client, app) -> None:
    """The fault is gone: a store succeeds and the instance can be retrieved."""
    ds = make_dataset()
    assert _stored(store(client, [ds], status=200).json) == [ds.SOPInstanceUID]
    client.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
               headers={"Accept": "application/dicom; transfer-syntax=*"}, status=200)
    assert audit_archive(app.archive).clean


def _os_error(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))
    return fail


@pytest.fixture
def durable_app(tmp_path):
    """An app with fsync on (the default), so the folder fsync after a blob rename really runs."""
    app = make_app({"data_dir": str(tmp_path / "data"), "min_free_space": "0"})
    try:
        yield app
    finally:
        app.close()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
@pytest.mark.parametrize("step", ["rename", "fsync_dir", "fsync_file"])
def test_faults_blob_write_failure_returns_503_a700_and_leaves_nothing(durable_app, monkeypatch, code, step):
    client = webtest.TestApp(durable_app)
    study = new_uid()
    datasets = [make_dataset(study_uid=study), make_dataset(study_uid=study)]
    if step == "rename":
        monkeypatch.setattr(file_blobs.os, "rename", _os_error(code))
    else:  # the rename happened (it comes first), but the file or its folder cannot be flushed:
        # the blob must not stay behind under its key, and no index row may name it
        monkeypatch.setattr(file_blobs, step, _os_error(code))
    resp = store(client, datasets, status=503)
    assert _failure_reasons(resp.json) == [OUT_OF_RESOURCES, OUT_OF_RESOURCES]
    assert "cannot write the instance" in resp.headers["Warning"]
    _assert_untouched(durable_app)
    monkeypatch.undo()
    _assert_recovers(client, durable_app)


def test_faults_blob_failure_on_second_instance_returns_202_and_keeps_the_first(dicomweb_app, dicomweb_client,
                                                                            monkeypatch):
    study = new_uid()
    first, second = make_dataset(study_uid=study), make_dataset(study_uid=study)
    real_rename, calls = os.rename, []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(file_blobs.os, "rename", rename)
    resp = store(dicomweb_client, [first, second], status=202)
    assert _stored(resp.json) == [first.SOPInstanceUID]
    assert _failure_reasons(resp.json) == [OUT_OF_RESOURCES]
    found = audit_archive(dicomweb_app.archive)
    assert found.clean and found.instances == 1, found


def _full_spool_file(real_mkstemp):
    """mkstemp whose file descriptor writes to /dev/full: every write fails with ENOSPC."""
    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        os.close(fd)
        return os.open("/dev/full", os.O_WRONLY), path
    return mkstemp


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize("single_part", [False, True])
def test_faults_spool_disk_full_returns_503_and_no_spool_file(dicomweb_app, dicomweb_client, monkeypatch,
                                                              single_part):
    monkeypatch.setattr(tempfile, "mkstemp", _full_spool_file(tempfile.mkstemp))
    if single_part:
        resp = dicomweb_client.post("/studies", dataset_bytes(make_dataset()),
                                    headers={"Content-Type": "application/dicom"}, status=503)
    else:
        resp = store(dicomweb_client, [make_dataset()], status=503)
    assert "no space left on device" in resp.text.lower()
    _assert_untouched(dicomweb_app)
    monkeypatch.undo()
    _assert_recovers(dicomweb_client, dicomweb_app)


@pytest.mark.parametrize("single_part", [False, True])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_faults_spool_creation_failure_returns_503(dicomweb_app, dicomweb_client, monkeypatch, code, single_part):
    monkeypatch.setattr(multipart.tempfile, "mkstemp", _os_error(code))
    if single_part:
        resp = dicomweb_client.post("/studies", dataset_bytes(make_dataset()),
                                    headers={"Content-Type": "application/dicom"}, status=503)
    else:
        resp = store(dicomweb_client, [make_dataset()], status=503)
    assert os.strerror(code).lower() in resp.text.lower()
    _assert_untouched(dicomweb_app)
    monkeypatch.undo()
    _assert_recovers(dicomweb_client, dicomweb_app)


def test_faults_disk_full_while_adding_a_preamble_returns_503_a700(dicomweb_app, dicomweb_client, monkeypatch):
    real_open = open

    def open_full(path, mode="r", *args, **kwargs):
        if isinstance(path, str) and path.endswith(".pre"):
            real_open(path, "wb").close()  # the copy is created, then the disk fills up
            return real_open("/dev/full", mode, *args, **kwargs)
        return real_open(path, mode, *args, **kwargs)

    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    monkeypatch.setattr(ingest, "open", open_full, raising=False)
    without_preamble = dataset_bytes(make_dataset())[132:]
    resp = store(dicomweb_client, [without_preamble], status=503)
    assert _failure_reasons(resp.json) == [OUT_OF_RESOURCES]
    _assert_untouched(dicomweb_app)
    monkeypatch.undo()
    _assert_recovers(dicomweb_client, dicomweb_app)


def _short_busy_timeout(app) -> None:
    """Reconnect the app's index with a 100 ms busy timeout (the default waits 30 s for a lock)."""
    app.archive.index.close()
    app.archive.index.busy_timeout_ms = 100


def test_faults_locked_database_returns_503_a700_and_recovers(dicomweb_app, dicomweb_client):
    stored = make_dataset()
    store(dicomweb_client, [stored], status=200)
    _short_busy_timeout(dicomweb_app)
    other = SqliteIndex(dicomweb_app.archive.index.path)  # another process holding the write lock
    try:
        other.connection().execute("BEGIN IMMEDIATE")
        study = new_uid()
        resp = store(dicomweb_client, [make_dataset(study_uid=study), make_dataset(study_uid=study)], status=503)
        assert _failure_reasons(resp.json) == [OUT_OF_RESOURCES, OUT_OF_RESOURCES]
        assert "database is locked" in resp.headers["Warning"]
        # Readers are not blocked by a writer (WAL): what was stored stays retrievable.
        dicomweb_client.get(f"/studies/{stored.StudyInstanceUID}", status=200)
        dicomweb_client.get(f"/studies/{study}", status=404)
        other.connection().execute("ROLLBACK")
    finally:
        other.close()
    found = audit_archive(dicomweb_app.archive)
    assert found.clean and found.instances == 1, found
    _assert_recovers(dicomweb_client, dicomweb_app)


def test_faults_read_only_database_returns_503_a700_and_recovers(dicomweb_app, dicomweb_client):
    connection = dicomweb_app.archive.index.connection()  # webtest calls the app on this thread
    connection.execute("PRAGMA query_only=ON")
    resp = store(dicomweb_client, [make_dataset()], status=503)
    assert _failure_reasons(resp.json) == [OUT_OF_RESOURCES]
    assert "readonly" in resp.headers["Warning"]
    _assert_untouched(dicomweb_app)
    connection.execute("PRAGMA query_only=OFF")
    _assert_recovers(dicomweb_client, dicomweb_app)


def test_faults_full_database_returns_503_a700_and_recovers(dicomweb_app, dicomweb_client):
    connection = dicomweb_app.archive.index.connection()
    pages = connection.execute("PRAGMA page_count").fetchone()[0]
    connection.execute(f"PRAGMA max_page_count={pages}")  # SQLITE_FULL on the next page the index needs
    resp = store(dicomweb_client, [make_dataset() for _ in range(5)], status=503)
    assert set(_failure_reasons(resp.json)) == {OUT_OF_RESOURCES}
    assert "full" in resp.headers["Warning"]
    _assert_untouched(dicomweb_app)
    connection.execute("PRAGMA max_page_count=1073741823")
    _assert_recovers(dicomweb_client, dicomweb_app)


def test_faults_commit_failure_in_a_later_batch_keeps_earlier_batches(dicomweb_app, dicomweb_client, monkeypatch):
    monkeypatch.setattr(archive_module, "COMMIT_BATCH", 2)
    index = dicomweb_app.archive.index
    real_add, calls = index.add_instances, []

    def add_instances(records, policy):
        calls.append(len(records))
        if len(calls) == 2:
            index.connection().execute("PRAGMA query_only=ON")
        try:
            return real_add(records, policy)
        finally:
            index.connection().execute("PRAGMA query_only=OFF")

    monkeypatch.setattr(index, "add_instances", add_instances)
    study = new_uid()
    datasets = [make_dataset(study_uid=study, InstanceNumber=n) for n in range(1, 6)]
    resp = store(dicomweb_client, datasets, status=202)
    assert _stored(resp.json) == [d.SOPInstanceUID for d in datasets[:2] + datasets[4:]]
    assert _failure_reasons(resp.json) == [OUT_OF_RESOURCES, OUT_OF_RESOURCES]
    found = audit_archive(dicomweb_app.archive)
    assert found.clean and found.instances == 3, found
