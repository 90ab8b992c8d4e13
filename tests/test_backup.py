"""backup.py: an online backup is a consistent archive, whatever happens under it while it runs."""
from __future__ import annotations

import io
import json
import os
import shutil
import stat
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
    assert err.startswith("dicomweb-wsgi: storage error:") and "is not empty" in err


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
            if partial.exists():
                # What it left is marked incomplete, check says so, and the next run clears it.
                _check_fails_as_incomplete(partial)
                assert backup(_settings(source), str(dest)).instances == 60
                _check(dest)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    assert "interrupted" in outcomes  # some kills landed while the backup was being written


def _check_fails_as_incomplete(folder) -> None:
    from dicomweb_wsgi.backup import INCOMPLETE

    assert (folder / INCOMPLETE).exists()
    if not (folder / "index.sqlite3").exists():
        return
    archive = Archive.open(_settings(folder))
    try:
        report = archive.check(verify_digests=False)
    finally:
        archive.close()
    assert not report.healthy and any(INCOMPLETE in item for item in report.integrity)


def test_an_interrupted_backup_into_an_existing_folder_is_cleared_by_the_next_run(tmp_path):
    from dicomweb_wsgi.backup import INCOMPLETE

    source, _, study_uid = _archive(tmp_path)
    disk = tmp_path / "disk"
    disk.mkdir()
    (disk / INCOMPLETE).write_text("left by a backup killed part way\n")
    (disk / "index.sqlite3").write_bytes(b"half a database")
    report = backup(_settings(source), str(disk))
    assert report.instances == 2 and not (disk / INCOMPLETE).exists()
    _check(disk)
    # A folder that is not a backup of ours is never cleared.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    with pytest.raises(StorageError, match="not empty"):
        backup(_settings(source), str(mine))
    (tmp_path / "other.partial").mkdir()
    (tmp_path / "other.partial" / "notes").write_text("keep me")
    with pytest.raises(StorageError, match="not an interrupted backup"):
        backup(_settings(source), str(tmp_path / "other"))
    assert (mine / "thesis.tex").read_text() == "keep me" and (tmp_path / "other.partial" / "notes").exists()


def _study_uids(client) -> list[str]:
    return [s["0020000D"]["Value"][0] for s in client.get("/studies", status=200).json]

def _archive(tmp_path, **settings):
    source = tmp_path / "data"
    client = make_client(source, **settings)
    study_uid = new_uid()
    store(client, [make_dataset(study_uid=study_uid, InstanceNumber=i, pixel_seed=i) for i in range(2)])
    return source, client, study_uid


def test_replaced_instance_is_reindexed_with_the_servers_bulk_threshold(tmp_path):
    # An instance replaced during the backup is indexed in the copy as the server indexes it (its
    # bulk_threshold).
    settings = {"duplicate_policy": "replace", "bulk_threshold": "256"}
    source = tmp_path / "data"
    live = make_client(source, **settings)
    study_uid, series_uid, sop_uid = new_uid(), new_uid(), new_uid()
    lut = bytes(range(256)) * 2  # 512 bytes: over the server's threshold, under the default
    first = make_dataset(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                         RedPaletteColorLookupTableData=lut)
    store(live, [make_dataset(study_uid=study_uid, series_uid=series_uid), first])  # copied second
    url = f"/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/metadata"
    assert "BulkDataURI" in live.get(url).json[0]["00281201"]

    def progress(done: int) -> None:
        if not progress.done:
            progress.done = True
            store(live, [make_dataset(study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid,
                                      InstanceNumber=9, RedPaletteColorLookupTableData=lut)])
    progress.done = False

    report = backup(_settings(source, **settings), str(tmp_path / "copy"), progress=progress)
    assert progress.done and len(report.replaced) == 1
    restored = make_client(tmp_path / "copy", **settings)
    assert restored.get(url).json[0]["00281201"] == live.get(url).json[0]["00281201"]
    assert restored.get(url).json == live.get(url).json


def test_copied_blobs_keep_the_sources_permissions(tmp_path):
    # The copy of patient data is no more readable than the archive (blobs 0600, a 0700 data folder).
    old = os.umask(0o022)
    try:
        source, _, _ = _archive(tmp_path)
        os.chmod(source, 0o700)
        backup(_settings(source), str(tmp_path / "copy"))
    finally:
        os.umask(old)
    copy = tmp_path / "copy"
    blobs = [os.path.join(folder, name) for folder, _, files in os.walk(copy / "blobs") for name in files]
    assert blobs
    for path in blobs:
        src = os.path.join(source, os.path.relpath(path, copy))
        assert oct(stat.S_IMODE(os.stat(path).st_mode)) == oct(stat.S_IMODE(os.stat(src).st_mode)), path
    assert stat.S_IMODE(os.stat(copy).st_mode) & 0o077 == 0, oct(os.stat(copy).st_mode)


def test_dest_a_symlink_to_an_empty_folder(tmp_path):
    # A link to an empty folder is filled in place, or refused before anything is copied.
    source, _, _ = _archive(tmp_path)
    (tmp_path / "disk").mkdir()
    os.symlink(tmp_path / "disk", tmp_path / "dest")
    try:
        backup(_settings(source), str(tmp_path / "dest"))
    except StorageError:
        # Refusing is acceptable only before anything is copied.
        assert not (tmp_path / "dest.partial").exists(), "refused after copying everything"
        return
    assert os.path.exists(tmp_path / "dest" / "index.sqlite3")


def test_dest_an_empty_mount_point(tmp_path):
    # An empty mounted disk is filled in place (the copy lands on that disk, not its parent's).
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    source, _, _ = _archive(tmp_path)
    disk = tmp_path / "usb"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "none", str(disk)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        try:
            backup(_settings(source), str(disk))
        except StorageError:
            assert not (tmp_path / "usb.partial").exists(), "refused after copying everything"
            return
        assert os.stat(disk / "index.sqlite3").st_dev == os.stat(disk).st_dev
    finally:
        subprocess.run(["umount", str(disk)])


def test_dest_inside_the_data_folder_through_a_symlink_is_refused(tmp_path):
    # The backup cannot go inside the data folder, not even through a link.
    source, _, _ = _archive(tmp_path)
    os.symlink(source, tmp_path / "alias")
    with pytest.raises(StorageError):
        backup(_settings(source), str(tmp_path / "alias" / "backup"))


def test_adopt_ignores_a_refused_replace_and_leaves_a_row_without_its_blob(tmp_path):
    # A new version the copy's index refuses (its series now under another study) is left out, never a row
    # without its blob. Sequence (policy replace, deletes allowed): the snapshot holds X in study A and
    # series S2 in study C; then study C is deleted and X is stored again into S2 under study B.
    from dicomweb_wsgi.archive import Archive

    settings = {"duplicate_policy": "replace", "allow_delete": "true"}
    source = tmp_path / "data"
    live = make_client(source, **settings)
    study_a, study_b, study_c, s1, s2 = (new_uid() for _ in range(5))
    w = make_dataset(study_uid=study_a, series_uid=s1)
    x = make_dataset(study_uid=study_a, series_uid=s1)
    y = make_dataset(study_uid=study_c, series_uid=s2)
    store(live, [w])
    store(live, [x])
    store(live, [y])

    def progress(done: int) -> None:
        if not progress.done:  # after W is copied, before X and Y are
            progress.done = True
            live.delete(f"/studies/{study_c}", status=204)
            store(live, [make_dataset(study_uid=study_b, series_uid=s2, sop_uid=x.SOPInstanceUID)])
    progress.done = False

    report = backup(_settings(source, **settings), str(tmp_path / "copy"), progress=progress)
    assert progress.done
    archive = Archive.open(_settings(tmp_path / "copy"))
    try:
        result = archive.check()
    finally:
        archive.close()
    assert result.healthy, (report.replaced, report.dropped, result.missing, result.orphans)


def test_a_full_destination_is_reported_as_the_destination_not_the_live_archive(tmp_path):
    # A full backup disk is named in the error, not the archive's file that was being copied.
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs")
    from dicomweb_wsgi.__main__ import main

    source = tmp_path / "data"
    store(make_client(source), [make_dataset(rows=256, columns=256, pixel_seed=i) for i in range(30)])
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "none", str(small)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        import contextlib
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            assert main(["backup", "--data", str(source), str(small / "bk")]) == 2
        message = err.getvalue().strip().splitlines()[-1]
    finally:
        subprocess.run(["umount", str(small)])
    assert "No space left" in message
    assert str(source) not in message.split("failed:", 1)[1], message


def test_an_instance_lost_from_the_live_archive_is_not_reported_as_deleted_during_the_backup(tmp_path, capsys):
    # An instance the live archive has lost (indexed, file gone) is reported as lost, and the command
    # exits 1.
    from dicomweb_wsgi.__main__ import main
    from dicomweb_wsgi.archive import Archive

    source, client, study_uid = _archive(tmp_path)
    client.app.close()
    archive = Archive.open(_settings(source))
    try:
        lost = archive.instances(study_uid)[0]
        os.unlink(archive.path(lost))
    finally:
        archive.close()
    status = main(["backup", "--data", str(source), str(tmp_path / "copy")])
    out = capsys.readouterr().out
    assert "deleted during the backup" not in out and status != 0, (status, out)
