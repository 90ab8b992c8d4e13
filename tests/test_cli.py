"""The maintenance commands through the CLI on temporary archives: import, check, reindex, gc, stats."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from pydicom.data import get_testdata_file

from dicomweb_wsgi.__main__ import main
from dicomweb_wsgi.config import load_settings
from dicomweb_wsgi.routes import build_routes
from dicomweb_wsgi.testing import dataset_bytes, make_client, make_dataset, new_uid


@pytest.fixture
def source(tmp_path):
    """A folder tree of 4 instances (2 studies, one a bundled CT) mixed with files that are not instances."""
    root = tmp_path / "incoming"
    (root / "a" / "deeper").mkdir(parents=True)
    (root / "b").mkdir()
    study, series = new_uid(), new_uid()
    for i in range(1, 4):
        path = root / ("a/deeper" if i == 3 else "a") / f"img{i}.dcm"
        path.write_bytes(dataset_bytes(make_dataset(study_uid=study, series_uid=series, InstanceNumber=i,
                                                    pixel_seed=i)))
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "b" / "ct.dcm")
    shutil.copy(get_testdata_file("DICOMDIR"), root / "DICOMDIR")
    (root / "notes.txt").write_text("not an image\n")
    (root / "b" / "random.bin").write_bytes(os.urandom(300))
    (root / "b" / "empty").write_bytes(b"")
    return root


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _blob_paths(data_dir: str) -> list[str]:
    found = []
    for folder, _, files in os.walk(os.path.join(data_dir, "blobs")):
        if os.path.basename(folder) != "tmp":
            found += [os.path.join(folder, f) for f in files]
    return sorted(found)


def test_import_mixed_folder_stores_instances_and_skips_the_rest(tmp_path, source, capsys):
    data = str(tmp_path / "data")
    code, out, err = _cli(capsys, "import", "--data", data, str(source))
    assert code == 0
    assert "4 stored, 0 already stored, 4 skipped, 0 failed" in out
    assert "skipped: " + str(source / "notes.txt") + ": not a DICOM file" in err
    assert "DICOMDIR (a media directory" in err
    assert "files 100%" in err and "MB/s" in err and "ETA" in err
    assert len(_blob_paths(data)) == 4
    assert os.listdir(os.path.join(data, "blobs", "tmp")) == []


def test_import_twice_is_idempotent(tmp_path, source, capsys):
    data = str(tmp_path / "data")
    _cli(capsys, "import", "--data", data, str(source))
    blobs = _blob_paths(data)
    code, out, _ = _cli(capsys, "import", "--data", data, str(source))
    assert code == 0
    assert "0 stored, 4 already stored, 4 skipped, 0 failed" in out
    assert _blob_paths(data) == blobs


def test_import_with_workers_matches_one_process(tmp_path, source, capsys):
    code, out, _ = _cli(capsys, "import", "--jobs", "2", "--data", str(tmp_path / "data"), str(source))
    assert code == 0 and "4 stored, 0 already stored, 4 skipped, 0 failed" in out


def test_import_damaged_file_and_missing_path_fail_with_exit_1(tmp_path, source, capsys):
    good = dataset_bytes(make_dataset(rows=64, columns=64))
    (source / "cut.dcm").write_bytes(good[: len(good) // 2])
    code, out, err = _cli(capsys, "import", "--data", str(tmp_path / "data"), str(source),
                          str(tmp_path / "no-such-folder"))
    assert code == 1
    assert "4 stored, 0 already stored, 4 skipped, 2 failed" in out
    assert "failed: " + str(source / "cut.dcm") + ": 0xC000" in err
    assert "no such file or folder" in err


@pytest.fixture
def archive_dir(tmp_path, source, capsys):
    data = str(tmp_path / "data")
    assert _cli(capsys, "import", "--data", data, str(source))[0] == 0
    return data


def test_check_healthy_archive_exits_0(archive_dir, capsys):
    code, out, _ = _cli(capsys, "check", "--data", archive_dir)
    assert code == 0
    assert "index schema version" in out and "(current)" in out
    assert "4 instances checked: 0 missing, 0 mismatched, 0 orphan blobs" in out and "healthy" in out


def test_check_of_a_folder_without_an_archive_fails_and_creates_nothing(tmp_path, capsys):
    # A monitoring check with a mistyped path must not make an empty archive there and call it healthy.
    missing = tmp_path / "mistyped"
    code, out, err = _cli(capsys, "check", "--data", str(missing))
    assert code != 0 and "no archive" in err and "healthy" not in out
    assert not missing.exists()


def test_check_after_deleting_a_blob_reports_it_and_exits_1(archive_dir, capsys):
    os.unlink(_blob_paths(archive_dir)[0])
    code, out, _ = _cli(capsys, "check", "--data", archive_dir)
    assert code == 1
    assert "missing blob: instance " in out and "1 missing" in out and "NOT HEALTHY" in out


def test_check_after_adding_an_orphan_reports_it_and_gc_removes_it(archive_dir, capsys):
    orphan = os.path.join(archive_dir, "blobs", "ab", "abcd" + "0" * 28)
    os.makedirs(os.path.dirname(orphan), exist_ok=True)
    with open(orphan, "wb") as fh:
        fh.write(b"left by a crash")
    code, out, _ = _cli(capsys, "check", "--data", archive_dir)
    assert code == 1 and "orphan blob: blob abcd" in out and "1 orphan blobs" in out
    # Young orphans may be stores in flight: the grace period protects them.
    assert _cli(capsys, "gc", "--data", archive_dir)[1].strip() == "removed 0 orphan files"
    assert os.path.exists(orphan)
    assert _cli(capsys, "gc", "--data", archive_dir, "--grace", "0")[1].strip() == "removed 1 orphan files"
    assert not os.path.exists(orphan)
    assert _cli(capsys, "check", "--data", archive_dir)[0] == 0


def test_check_same_size_corruption_is_a_digest_mismatch(archive_dir, capsys):
    path = _blob_paths(archive_dir)[0]
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    open(path, "wb").write(bytes(data))
    code, out, _ = _cli(capsys, "check", "--data", archive_dir)
    assert code == 1 and "SHA-256 differs" in out
    # --quick compares sizes only and cannot see it.
    assert _cli(capsys, "check", "--quick", "--data", archive_dir)[0] == 0


def _answers(data_dir: str) -> dict:
    """What clients see: QIDO study/series/instance searches when the routes exist, and WADO listings."""
    client = make_client(data_dir)
    try:
        paths = {(r.method, r.template) for r in build_routes(load_settings({}, environ={}))}
        answers: dict = {"counts": client.app.archive.index.counts()}
        if ("GET", "/studies") in paths:
            answers["studies"] = client.get("/studies", status=200).json
            for study in answers["studies"]:
                uid = study["0020000D"]["Value"][0]
                answers[uid] = client.get(f"/studies/{uid}/instances", status=200).json
                answers[uid + "/series"] = client.get(f"/studies/{uid}/series", status=200).json
        for study_uid in sorted({i.study_uid for i in client.app.archive.index.iter_instance_files()}):
            answers["wado " + study_uid] = [(i.series_uid, i.sop_uid, i.size, i.digest)
                                            for i in client.app.archive.instances(study_uid)]
            answers["meta " + study_uid] = client.app.archive.metadata(study_uid)
        return answers
    finally:
        client.app.close()


def test_reindex_after_deleting_the_database_gives_the_same_answers(archive_dir, capsys):
    before = _answers(archive_dir)
    for name in os.listdir(archive_dir):
        if name.startswith("index.sqlite3"):
            os.unlink(os.path.join(archive_dir, name))
    assert _answers(archive_dir)["counts"]["instances"] == 0
    code, out, _ = _cli(capsys, "reindex", "--data", archive_dir)
    assert code == 0 and "reindexed 4 instances; 0 blobs could not be indexed" in out
    assert json.dumps(_answers(archive_dir), sort_keys=True) == json.dumps(before, sort_keys=True)
    assert _cli(capsys, "check", "--data", archive_dir)[0] == 0
    assert not [n for n in os.listdir(archive_dir) if ".rebuild" in n]


def test_reindex_reports_unreadable_blob_and_keeps_it(archive_dir, capsys):
    junk = os.path.join(archive_dir, "blobs", "ee", "eeee" + "1" * 28)
    os.makedirs(os.path.dirname(junk), exist_ok=True)
    with open(junk, "wb") as fh:
        fh.write(b"\0" * 200)
    code, out, _ = _cli(capsys, "reindex", "--data", archive_dir)
    assert code == 1
    assert "not indexed: blob eeee" in out and "reindexed 4 instances" in out
    assert os.path.exists(junk)


def test_stats_counts_per_level_and_modality(archive_dir, capsys):
    code, out, _ = _cli(capsys, "stats", "--json", "--data", archive_dir)
    stats = json.loads(out)
    assert code == 0
    assert (stats["studies"], stats["series"], stats["instances"]) == (2, 2, 4)
    assert stats["modalities"]["CT"]["instances"] == 4
    assert stats["bytes"] == sum(os.path.getsize(p) for p in _blob_paths(archive_dir))
    code, out, _ = _cli(capsys, "stats", "--data", archive_dir)
    assert "instances" in out and "CT" in out


def test_serve_on_network_address_without_auth_refuses_to_start(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "serve", "--data", str(tmp_path / "d"),
                           "--listen", "0.0.0.0:0", "--max-seconds", "20"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "refusing to listen on 0.0.0.0 without authentication" in proc.stderr


def _stored_sop_uids(data_dir: str) -> set[str]:
    client = make_client(data_dir)
    try:
        return {x["00080018"]["Value"][0]
                for x in client.get("/instances", headers={"Accept": "application/dicom+json"}).json}
    finally:
        client.app.close()


def test_import_skips_symbolic_links_to_files_and_folders(tmp_path, capsys):
    src, outside, data = tmp_path / "src", tmp_path / "outside", str(tmp_path / "data")
    src.mkdir()
    (outside / "folder").mkdir(parents=True)
    inside, linked_file, linked_folder = make_dataset(), make_dataset(), make_dataset()
    (src / "a.dcm").write_bytes(dataset_bytes(inside))
    (outside / "file.dcm").write_bytes(dataset_bytes(linked_file))
    (outside / "folder" / "b.dcm").write_bytes(dataset_bytes(linked_folder))
    os.symlink(outside / "file.dcm", src / "link.dcm")
    os.symlink(outside / "folder", src / "linked-folder")
    code, out, err = _cli(capsys, "import", "--data", data, str(src))
    assert code == 0
    assert "1 stored, 0 already stored, 2 skipped, 0 failed" in out
    assert f"skipped: {src / 'link.dcm'}: symbolic link, not followed" in err
    assert f"skipped: {src / 'linked-folder'}: symbolic link, not followed" in err
    assert _stored_sop_uids(data) == {inside.SOPInstanceUID}


def _with_stale_meta(ds, meta_sop_uid: str) -> bytes:
    """``ds`` as a file whose meta names another SOP Instance UID (as some anonymisers leave it);
    pydicom rewrites the meta on writing, so the data set's own UID is patched in the bytes."""
    own = ds.SOPInstanceUID
    assert len(own) == len(meta_sop_uid)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = meta_sop_uid
    raw = dataset_bytes(ds)
    at = raw.index(meta_sop_uid.encode(), raw.index(meta_sop_uid.encode()) + 1)  # the second: the data set's
    return raw[:at] + own.encode() + raw[at + len(own):]


def test_import_decides_already_stored_by_the_data_set_not_a_stale_file_meta(tmp_path, capsys):
    src, data = tmp_path / "src", str(tmp_path / "data")
    src.mkdir()
    first = make_dataset(sop_uid="1.2.826.0.1.3680043.10.1255.77.1")
    (src / "a.dcm").write_bytes(dataset_bytes(first))
    (src / "b.dcm").write_bytes(_with_stale_meta(make_dataset(sop_uid="1.2.826.0.1.3680043.10.1255.77.2"),
                                                 first.SOPInstanceUID))
    code, out, _ = _cli(capsys, "import", "--data", data, str(src))
    assert code == 0 and "2 stored, 0 already stored, 0 skipped, 0 failed" in out
    assert _stored_sop_uids(data) == {"1.2.826.0.1.3680043.10.1255.77.1", "1.2.826.0.1.3680043.10.1255.77.2"}
    assert "0 stored, 2 already stored" in _cli(capsys, "import", "--data", data, str(src))[1]


@pytest.mark.parametrize("policy", ["ignore", "reject"])
def test_import_of_an_instance_stored_under_another_study_is_a_failure(tmp_path, capsys, policy):
    data = str(tmp_path / "data")
    ini = tmp_path / "site.ini"
    ini.write_text(f"[app:main]\ndicomweb.duplicate_policy = {policy}\n")
    first, moved = tmp_path / "first.dcm", tmp_path / "moved.dcm"
    sop = new_uid()
    first.write_bytes(dataset_bytes(make_dataset(sop_uid=sop)))
    moved.write_bytes(dataset_bytes(make_dataset(sop_uid=sop)))  # same SOP Instance UID, another study
    assert _cli(capsys, "import", "--config", str(ini), "--data", data, str(first))[0] == 0
    code, out, err = _cli(capsys, "import", "--config", str(ini), "--data", data, str(moved), str(first))
    assert code == 1
    assert "0 stored, 1 already stored, 0 skipped, 1 failed" in out
    assert f"failed: {moved}: 0x0111 " in err and "another study or series" in err


def test_import_with_workers_into_an_unusable_data_folder_is_one_clear_error(tmp_path, source):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "dicomweb_wsgi", "import", "--jobs", "2", "--data",
                           str(not_a_folder / "data"), str(source)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr, proc.stderr[-400:]
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("dicomweb-wsgi: storage error: ") and str(not_a_folder / "data") in line
