"""Contract tests for the storage backends (a new backend must pass these too)."""
from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from dicomweb_wsgi.storage.base import DuplicatePolicy, InstanceRecord, Outcome, StorageError, StorageFull
from dicomweb_wsgi.storage.file_blobs import FileBlobStore
from dicomweb_wsgi.storage.sqlite_index import MIGRATIONS, SqliteIndex


def record(sop: str, series: str = "1.2.3.1", study: str = "1.2.3", key: str | None = None,
           modality: str = "CT", number: str = "1") -> InstanceRecord:
    return InstanceRecord(
        study_uid=study, series_uid=series, sop_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1", blob_key=key or hashlib.md5(sop.encode()).hexdigest(),
        size=10, digest="d", study_columns={"patient_name": "Müller^Hans", "patient_id": "P1"},
        series_columns={"modality": modality, "series_number": "1"}, instance_columns={"instance_number": number},
        study_json="{}", series_json="{}", metadata_json=f'{{"sop":"{sop}"}}')


@pytest.fixture
def index(tmp_path):
    idx = SqliteIndex(str(tmp_path / "index.sqlite3"), synchronous="NORMAL")
    yield idx
    idx.close()


def test_index_add_and_list_in_instance_number_order(index):
    index.add_instances([record("1.1", number="2"), record("1.2", number="10"), record("1.3", number="1")],
                        DuplicatePolicy.IGNORE)
    assert [i.sop_uid for i in index.list_instances("1.2.3")] == ["1.3", "1.1", "1.2"]
    assert index.list_metadata("1.2.3", "1.2.3.1", "1.2") == ['{"sop":"1.2"}']
    versions = index.list_versions("1.2.3")
    assert versions == [(i.sop_uid, i.digest, i.stored_at) for i in index.list_instances("1.2.3")]
    assert [v[0] for v in versions] == ["1.3", "1.1", "1.2"]
    assert index.list_instances("9.9") == [] and index.list_versions("9.9") == []


def test_index_counts_and_modalities_follow_adds_and_deletes(index):
    index.add_instances([record("1.1"), record("1.2", series="1.2.3.2", modality="MR")], DuplicatePolicy.IGNORE)
    row = index.read("SELECT num_series, num_instances, modalities, patient_name_fold FROM study")[0]
    assert tuple(row) == (2, 2, "CT\\MR", "muller^hans")
    keys = index.delete("1.2.3", "1.2.3.2")
    assert len(keys) == 1
    row = index.read("SELECT num_series, num_instances, modalities FROM study")[0]
    assert tuple(row) == (1, 1, "CT")
    index.delete("1.2.3")
    assert index.counts() == {"studies": 0, "series": 0, "instances": 0, "bytes": 0}


@pytest.mark.parametrize("policy,outcome,kept", [
    (DuplicatePolicy.IGNORE, Outcome.IGNORED, "a"), (DuplicatePolicy.REPLACE, Outcome.REPLACED, "b"),
    (DuplicatePolicy.REJECT, Outcome.REJECTED_DUPLICATE, "a")])
def test_index_duplicate_policies(index, policy, outcome, kept):
    index.add_instances([record("1.1", key="a" * 32)], policy)
    result = index.add_instances([record("1.1", key="b" * 32)], policy)[0]
    assert result.outcome is outcome
    assert index.list_instances("1.2.3")[0].blob_key == kept * 32
    if outcome is Outcome.REPLACED:
        assert result.obsolete_blob_key == "a" * 32


@pytest.mark.parametrize("policy", [DuplicatePolicy.IGNORE, DuplicatePolicy.REJECT])
@pytest.mark.parametrize("elsewhere", [{"series": "1.2.3.2"}, {"study": "1.2.4", "series": "1.2.4.1"}])
def test_index_duplicate_in_another_series_or_study_is_rejected_elsewhere(index, policy, elsewhere):
    index.add_instances([record("1.1", key="a" * 32)], policy)
    result = index.add_instances([record("1.1", key="b" * 32, **elsewhere)], policy)[0]
    assert result.outcome is Outcome.REJECTED_ELSEWHERE
    assert [i.blob_key for i in index.list_instances("1.2.3")] == ["a" * 32]


def test_index_batch_is_all_or_nothing(index):
    good = record("1.1", key="a" * 32)
    clash = record("1.2", key="a" * 32)  # same blob key violates a constraint
    with pytest.raises(StorageError):
        index.add_instances([good, clash], DuplicatePolicy.IGNORE)
    assert index.counts()["instances"] == 0


def test_index_migrations_set_user_version(index):
    assert index.schema_version() == len(MIGRATIONS)


def test_index_concurrent_writers_do_not_fail(tmp_path):
    idx = SqliteIndex(str(tmp_path / "c.sqlite3"), synchronous="NORMAL")
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                idx.add_instances([record(f"{n}.{i}", series=f"1.2.3.{n}")], DuplicatePolicy.IGNORE)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert idx.counts()["instances"] == 160
    assert idx.read("SELECT num_instances FROM study")[0][0] == 160
    idx.close()


def test_blobs_put_open_delete(tmp_path):
    blobs = FileBlobStore(str(tmp_path / "blobs"))
    spooled = os.path.join(blobs.spool_dir, "x.part")
    with open(spooled, "wb") as fh:
        fh.write(b"hello")
    key = blobs.put(spooled)
    assert not os.path.exists(spooled)
    with blobs.open(key) as fh:
        assert fh.read() == b"hello"
    assert [b.key for b in blobs.iter_blobs()] == [key]
    blobs.delete(key)
    blobs.delete(key)  # idempotent
    assert list(blobs.iter_blobs()) == []


@pytest.mark.parametrize("key", ["../../etc/passwd", "1.2.3", "", "A" * 32])
def test_blobs_reject_keys_that_are_not_ours(tmp_path, key):
    blobs = FileBlobStore(str(tmp_path / "blobs"))
    with pytest.raises(StorageError):
        blobs.local_path(key)


def test_blobs_disk_full_is_storage_full(tmp_path, monkeypatch):
    blobs = FileBlobStore(str(tmp_path / "blobs"))
    spooled = os.path.join(blobs.spool_dir, "x.part")
    open(spooled, "wb").close()

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "rename", no_space)
    with pytest.raises(StorageFull):
        blobs.put(spooled)


def _queued_behind_the_gate(index, calls):
    """Run each call's add_instances on its own thread while the test holds the writer gate, so they
    all queue; returns (threads, results, errors) once every call is waiting."""
    import time

    results, errors = {}, {}

    def run(name, records, policy):
        try:
            results[name] = index.add_instances(records, policy)
        except Exception as exc:
            errors[name] = exc

    threads = []
    with index.exclusive():
        for name, records, policy in calls:
            threads.append(threading.Thread(target=run, args=(name, records, policy)))
            threads[-1].start()
            deadline = time.monotonic() + 10
            while len(index._waiting) < len(threads):  # queued in this order
                assert time.monotonic() < deadline, "a call never queued"
                time.sleep(0.001)
    for t in threads:
        t.join(30)
    return results, errors


def test_index_calls_waiting_together_share_one_transaction_in_queue_order(index, monkeypatch):
    transactions = []
    real = SqliteIndex._add_in_one_transaction

    def counting(self, calls):
        transactions.append(len(calls))
        return real(self, calls)

    monkeypatch.setattr(SqliteIndex, "_add_in_one_transaction", counting)
    results, errors = _queued_behind_the_gate(index, [
        ("a", [record("1.1"), record("1.2")], DuplicatePolicy.REJECT),
        ("b", [record("1.3", series="1.2.3.2", modality="MR")], DuplicatePolicy.REJECT),
        ("c", [record("1.1", key="c" * 32)], DuplicatePolicy.REJECT),  # same SOP as a's first
    ])
    assert errors == {}
    assert transactions == [3]  # one commit for the three calls
    assert [r.outcome for r in results["a"]] == [Outcome.STORED, Outcome.STORED]
    assert [r.outcome for r in results["b"]] == [Outcome.STORED]
    assert [r.outcome for r in results["c"]] == [Outcome.REJECTED_DUPLICATE]  # a was first in the queue
    assert index.list_instances("1.2.3", "1.2.3.1", "1.1")[0].blob_key != "c" * 32
    row = index.read("SELECT num_series, num_instances, modalities FROM study")[0]
    assert tuple(row) == (2, 3, "CT\\MR")


def test_index_one_failing_call_in_a_group_fails_alone(index):
    results, errors = _queued_behind_the_gate(index, [
        ("good", [record("1.1", key="a" * 32)], DuplicatePolicy.IGNORE),
        ("bad", [record("1.2", key="a" * 32)], DuplicatePolicy.IGNORE),  # blob key clash: a constraint fails
        ("also good", [record("1.3", key="b" * 32)], DuplicatePolicy.IGNORE),
    ])
    assert set(errors) == {"bad"} and isinstance(errors["bad"], StorageError)
    assert results["good"][0].outcome is Outcome.STORED and results["also good"][0].outcome is Outcome.STORED
    assert sorted(i.sop_uid for i in index.list_instances("1.2.3")) == ["1.1", "1.3"]


def test_index_call_that_times_out_on_the_gate_is_withdrawn_not_committed_later(index):
    errors = []

    def run():
        try:
            index.add_instances([record("1.1")], DuplicatePolicy.REJECT)
        except StorageError as exc:
            errors.append(exc)

    index.busy_timeout_ms = 50
    with index.exclusive():
        t = threading.Thread(target=run)
        t.start()
        t.join(10)
    assert len(errors) == 1 and "too long" in str(errors[0])
    assert index._waiting == []
    index.add_instances([record("1.2")], DuplicatePolicy.REJECT)  # the next writer commits only its own
    assert [i.sop_uid for i in index.list_instances("1.2.3")] == ["1.2"]


def test_index_kept_counts_equal_the_rows_through_adds_replaces_moves_and_deletes(index):
    import random

    rng = random.Random(7)

    def counted():
        series = {r[0]: r[1] for r in index.read("SELECT series_uid, num_instances FROM series")}
        studies = {r[0]: (r[1], r[2]) for r in index.read("SELECT study_uid, num_series, num_instances FROM study")}
        return series, studies

    def actual():
        series = {r[0]: r[1] for r in index.read(
            "SELECT s.series_uid, count(*) FROM instance i JOIN series s ON s.pk=i.series_pk GROUP BY s.pk")}
        studies = {r[0]: (r[1], r[2]) for r in index.read(
            "SELECT st.study_uid, count(DISTINCT i.series_pk), count(*) FROM instance i "
            "JOIN study st ON st.pk=i.study_pk GROUP BY st.pk")}
        return series, studies

    for step in range(300):
        sop = f"1.{rng.randrange(40)}"
        study = f"2.{rng.randrange(3)}"
        series = f"{study}.{rng.randrange(2)}"  # a replace may move an instance to another series or study
        if rng.random() < 0.15:
            index.delete(study, series if rng.random() < 0.5 else None, sop if rng.random() < 0.5 else None)
        else:
            batch = [record(sop, series=series, study=study, key=f"{step:04d}{k}".ljust(32, "0"))
                     for k in range(rng.randrange(1, 3))]
            index.add_instances(batch, rng.choice([DuplicatePolicy.REPLACE, DuplicatePolicy.IGNORE]))
        assert counted() == actual(), step
    assert actual()[0]  # the walk left instances to count


def test_index_rewrites_study_and_series_rows_only_when_a_value_changes(index, monkeypatch):
    from types import SimpleNamespace

    from dicomweb_wsgi.storage import sqlite_index

    clock = iter(range(1000, 2000))  # the index's clock only: each transaction is a second later
    monkeypatch.setattr(sqlite_index, "time", SimpleNamespace(time=lambda: float(next(clock))))

    def rows():
        return (tuple(index.read("SELECT patient_name, updated_at FROM study")[0]),
                tuple(index.read("SELECT modality, series_number, updated_at FROM series")[0]))

    index.add_instances([record("1.1")], DuplicatePolicy.IGNORE)
    first = rows()
    index.add_instances([record("1.2")], DuplicatePolicy.IGNORE)  # same study and series values
    assert rows() == first
    changed = record("1.3")
    changed.study_columns["patient_name"] = "Meier^Anna"
    changed.series_columns["series_number"] = "2"
    index.add_instances([changed], DuplicatePolicy.IGNORE)  # the latest instance wins
    (name, study_updated), (modality, number, series_updated) = rows()
    assert (name, modality, number) == ("Meier^Anna", "CT", "2")
    assert study_updated > first[0][1] and series_updated > first[1][2]
    assert index.read("SELECT patient_name_fold FROM study")[0][0] == "meier^anna"
    assert [r[0] for r in index.read("SELECT rowid FROM study_name_trigram WHERE name MATCH 'meier'")] == [1]
    assert index.read("SELECT num_instances FROM series")[0][0] == 3
