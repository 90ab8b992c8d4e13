"""backup.py: an online backup is a consistent archive, whatever happens under it while it runs."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomweb_wsgi.__main__ import main
from dicomweb_wsgi.archive import Archive
from dicomweb_wsgi.backup import backup
from dicomweb_wsgi.config import load_settings
from dicomweb_wsgi.storage.base import StorageError
from dicomweb_wsgi.testing import TEST_SETTINGS, make_client, make_dataset, new_uid, parse_multipart, store, stow_body

from .serverproc import ServerProcess
from .test_npi import COLOR_PALETTE, npi_dataset
from .test_ups import create as create_workitem, workitem_dataset


def _settings(data_dir, **extra):
    return load_settings({**TEST_SETTINGS, "data_dir": str(data_dir), **extra})


def _check(data_dir) -> None:
    archive = Archive.open(_settings(data_dir))
    try:
        report = archive.check()
        assert report.healthy, (report.missing, report.mismatched, report.orphans, report.integrity)
    finally:
        archive.close()


def _instances(client, study_uid: str) -> dict[str, bytes]:
    resp = client.get(f"/studies/{study_uid}", headers={"Accept": 'multipart/related; type="application/dicom"; '
                                                                    "transfer-syntax=*"}, status=200)
    return {pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID: b
            for _, b in parse_multipart(resp.headers["Content-Type"], resp.body)}


def test_backup_is_a_data_folder_with_everything_the_archive_serves(tmp_path):
    source = tmp_path / "data"
    live = make_client(source)
    study_uid = new_uid()
    store(live, [make_dataset(study_uid=study_uid, InstanceNumber=i, pixel_seed=i) for i in range(3)])
    palette = npi_dataset(COLOR_PALETTE, ContentLabel="HOT", ContentDescription="x")
    content_type, payload = stow_body([palette])
    live.post("/color-palettes", payload, headers={"Content-Type": content_type}, status=200)
    workitem = generate_uid()
    create_workitem(live, workitem_dataset(), uid=workitem)

    report = backup(_settings(source), str(tmp_path / "copy"))
    assert (report.instances, report.npi_instances, report.replaced, report.dropped) == (3, 1, [], [])

    copy = tmp_path / "copy"
    assert not (tmp_path / "copy.partial").exists()
    assert sorted(p for p in os.listdir(copy) if p.endswith(("-wal", "-shm", ".lock"))) == []
    manifest = json.loads((copy / "backup.json").read_text())
    assert manifest["instances"] == 3 and manifest["source"] == str(source)
    _check(copy)
    restored = make_client(copy)
    assert _instances(restored, study_uid) == _instances(live, study_uid)
    assert restored.get(f"/color-palettes/{palette.SOPInstanceUID}", status=200).body == \
        live.get(f"/color-palettes/{palette.SOPInstanceUID}", status=200).body
    assert restored.get(f"/workitems/{workitem}", status=200).json == live.get(f"/workitems/{workitem}").json
    # The copy is independent: a store into it does not reach the source.
    store(restored, [make_dataset(study_uid=study_uid)])
    assert len(_instances(restored, study_uid)) == 4 and len(_instances(live, study_uid)) == 3


def test_instances_deleted_and_replaced_while_the_backup_runs(tmp_path):
    # The live archive changes between the snapshot and the copying of the blobs: the first copied
    # blob's progress call deletes one instance and replaces another (policy replace) through HTTP.
    source = tmp_path / "data"
    live = make_client(source, allow_delete="true", duplicate_policy="replace")
    study_uid, series_uid = new_uid(), new_uid()
    first, replaced, deleted = [make_dataset(study_uid=study_uid, series_uid=series_uid, InstanceNumber=i,
                                             pixel_seed=i) for i in range(3)]
    store(live, [first, replaced, deleted])
    new_version = make_dataset(study_uid=study_uid, series_uid=series_uid, sop_uid=replaced.SOPInstanceUID,
                               InstanceNumber=7, pixel_seed=99)
    changed = []

    def progress(done: int) -> None:
        if not changed:
            changed.append(done)
            live.delete(f"/studies/{study_uid}/series/{series_uid}/instances/{deleted.SOPInstanceUID}",
                        status=204)
            store(live, [new_version])

    report = backup(_settings(source), str(tmp_path / "copy"), progress=progress)
    assert changed
    assert report.instances == 2
    assert [item.split()[1] for item in report.replaced] == [replaced.SOPInstanceUID]
    assert [item.split()[1] for item in report.dropped] == [deleted.SOPInstanceUID]
    _check(tmp_path / "copy")
    restored = make_client(tmp_path / "copy")
    assert _instances(restored, study_uid) == _instances(live, study_uid)
    got = pydicom.dcmread(io.BytesIO(_instances(restored, study_uid)[replaced.SOPInstanceUID]))
    assert got.InstanceNumber == 7
    # The copy's QIDO counts agree with what it holds (the rebuilt row went through the index).
    series = restored.get(f"/studies/{study_uid}/series", status=200).json
    assert series[0]["00201209"]["Value"] == [2]


@pytest.mark.parametrize("where", ["non-empty", "file", "partial", "inside"])
def test_backup_refuses_a_destination_it_could_damage(tmp_path, where):
    source = tmp_path / "data"
    store(make_client(source), [make_dataset()])
    dest = tmp_path / "copy"
    if where == "non-empty":
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    elif where == "file":
        dest.write_text("mine")
    elif where == "partial":
        (tmp_path / "copy.partial").mkdir()
    else:
        dest = source / "backup"
    with pytest.raises(StorageError):
        backup(_settings(source), str(dest))
    if where == "non-empty":
        assert os.listdir(dest) == ["keep.txt"]


def test_backup_into_an_empty_folder_and_without_an_archive(tmp_path):
    source = tmp_path / "data"
    store(make_client(source), [make_dataset()])
    (tmp_path / "empty").mkdir()
    assert backup(_settings(source), str(tmp_path / "empty")).instances == 1
    _check(tmp_path / "empty")
    with pytest.raises(StorageError, match="no archive"):
        backup(_settings(tmp_path / "nothing"), str(tmp_path / "copy2"))
    assert not (tmp_path / "nothing").exists()


def test_cli_backup_prints_a_summary_and_errors_in_one_line(tmp_path, capsys):
    source = tmp_path / "data"
    store(make_client(source), [make_dataset(), make_dataset()])
    assert main(["backup", "--data", str(source), str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    assert "backed up 2 instances and 0 non-patient instances" in out
    assert main(["backup", "--data", str(source), str(tmp_path / "copy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dicomweb-wsgi: storage error:") and "not an empty folder" in err


def test_backup_of_a_live_server_under_load_is_consistent(tmp_path):
    # A real server (its own process, group commit, fsync) takes stores the whole time the backup
    # runs in this process; the copy must pass check and hold at least what was stored before it began.
    data_dir = tmp_path / "data"
    with ServerProcess(str(data_dir), max_seconds=300) as server:
        import http.client

        host, port = server.url.rsplit("/", 1)[1].split(":")
        study_uid = new_uid()
        stop = threading.Event()
        stored_before: list[str] = []
        errors: list[str] = []

        def post(datasets) -> None:
            content_type, payload = stow_body(datasets)
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            try:
                conn.request("POST", "/studies", body=payload, headers={"Content-Type": content_type})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    errors.append(str(resp.status))
            finally:
                conn.close()

        first = [make_dataset(study_uid=study_uid, InstanceNumber=i, pixel_seed=i) for i in range(20)]
        post(first)
        stored_before += [ds.SOPInstanceUID for ds in first]

        def load() -> None:
            while not stop.is_set():
                post([make_dataset(study_uid=study_uid, pixel_seed=n) for n in range(5)])

        writer = threading.Thread(target=load)
        writer.start()
        try:
            proc = subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "backup", "--data", str(data_dir),
                                   str(tmp_path / "copy")], capture_output=True, text=True, timeout=300)
        finally:
            stop.set()
            writer.join()
        assert proc.returncode == 0, proc.stderr
        assert errors == []
    _check(tmp_path / "copy")
    restored = _instances(make_client(tmp_path / "copy"), study_uid)
    assert set(stored_before) <= set(restored)


def test_a_backup_killed_at_any_point_never_leaves_a_half_made_destination(tmp_path):
    # kill -9 of the backup process at increasing delays: the destination either does not exist
    # or is a complete archive that passes check (only DEST.partial may be half made).
    import shutil
    import signal
    import time

    source = tmp_path / "data"
    client = make_client(source)
    for batch in range(6):
        store(client, [make_dataset(study_uid=new_uid(), rows=128, columns=128, pixel_seed=batch * 10 + i)
                       for i in range(10)])
    outcomes = set()
    for delay in (0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 1.0):
        dest, partial = tmp_path / "copy", tmp_path / "copy.partial"
        proc = subprocess.Popen([sys.executable, "-m", "dicomweb_wsgi", "backup", "--data", str(source), str(dest)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not partial.exists() and not dest.exists() and time.monotonic() < deadline:
            time.sleep(0.001)  # kill only once the backup has begun writing
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        if dest.exists():
            outcomes.add("complete")
            _check(dest)
            assert len(_instances(make_client(dest), _study_uids(client)[0])) >= 1
        else:
            outcomes.add("interrupted" if partial.exists() else "not started")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    assert "interrupted" in outcomes  # some kills landed while the backup was being written


def _study_uids(client) -> list[str]:
    return [s["0020000D"]["Value"][0] for s in client.get("/studies", status=200).json]
