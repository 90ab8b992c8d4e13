"""The non-standard DELETE on studies, series and instances: off by default, rows before blobs."""
from __future__ import annotations

import pytest

from dicomweb_wsgi.testing import make_client, make_dataset, new_uid, retrieve_datasets, store


def _blob_count(client) -> int:
    return sum(1 for _ in client.app.archive.blobs.iter_blobs())


@pytest.fixture
def client(dicomweb_client_factory):
    return dicomweb_client_factory(allow_delete="true")


@pytest.fixture
def study(client):
    """One study: series A with instances 1 and 2, series B with instance 3 (a different modality)."""
    study_uid, series_a, series_b = new_uid(), new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study_uid, series_uid=series_a, InstanceNumber=1),
                make_dataset(study_uid=study_uid, series_uid=series_a, InstanceNumber=2),
                make_dataset(study_uid=study_uid, series_uid=series_b, modality="MR", SeriesNumber=2)]
    store(client, datasets)
    return datasets


def test_delete_disabled_by_default_returns_405_without_delete_in_allow(dicomweb_client):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    resp = dicomweb_client.delete(f"/studies/{ds.StudyInstanceUID}", status=405)
    assert "DELETE" not in resp.headers["Allow"] and "GET" in resp.headers["Allow"]
    dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}", status=200)


def test_delete_instance_returns_204_and_keeps_the_rest(client, study):
    one, two, three = study
    url = f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}/instances/{one.SOPInstanceUID}"
    resp = client.delete(url, status=204)
    assert resp.body == b""
    client.get(url, status=404)
    left = retrieve_datasets(client, f"/studies/{one.StudyInstanceUID}")
    assert sorted(d.SOPInstanceUID for d in left) == sorted([two.SOPInstanceUID, three.SOPInstanceUID])
    assert _blob_count(client) == 2
    counts = client.app.archive.index.counts()
    assert (counts["studies"], counts["series"], counts["instances"]) == (1, 2, 2)


def test_delete_series_updates_counts_and_modalities(client, study):
    one, _, three = study
    client.delete(f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}", status=204)
    client.get(f"/studies/{one.StudyInstanceUID}/series/{one.SeriesInstanceUID}", status=404)
    index = client.app.archive.index
    row = index.read("SELECT num_series, num_instances, modalities FROM study WHERE study_uid=?",
                     (one.StudyInstanceUID,))[0]
    assert (row[0], row[1], row[2]) == (1, 1, "MR")
    assert [d.SOPInstanceUID for d in retrieve_datasets(client, f"/studies/{one.StudyInstanceUID}")] == \
        [three.SOPInstanceUID]


def test_delete_study_removes_rows_and_blobs(client, study):
    other = make_dataset()
    store(client, [other])
    client.delete(f"/studies/{study[0].StudyInstanceUID}", status=204)
    client.get(f"/studies/{study[0].StudyInstanceUID}", status=404)
    client.get(f"/studies/{other.StudyInstanceUID}", status=200)
    assert _blob_count(client) == 1
    assert client.app.archive.index.counts()["instances"] == 1


def test_delete_unknown_returns_404(client, study):
    client.delete(f"/studies/{new_uid()}", status=404)
    client.delete(f"/studies/{study[0].StudyInstanceUID}/series/{new_uid()}", status=404)
    # A real series under the wrong study is not found either.
    client.delete(f"/studies/{new_uid()}/series/{study[0].SeriesInstanceUID}", status=404)
    assert _blob_count(client) == 3


def test_delete_invalid_uid_returns_400(client):
    client.delete("/studies/not-a-uid", status=400)


class _Crash(BaseException):
    """Stands for the process dying."""


def test_delete_crash_after_index_commit_leaves_only_orphans(client, study, monkeypatch):
    archive = client.app.archive

    def die(key):
        raise _Crash()

    monkeypatch.setattr(archive.blobs, "delete", die)
    with pytest.raises(_Crash):
        archive.delete(study[0].StudyInstanceUID)
    monkeypatch.undo()
    report = archive.check()
    assert report.missing == [] and report.mismatched == []
    assert len(report.orphans) == 3
    assert archive.gc(grace_seconds=0) == 3
    assert archive.check().healthy


def test_delete_read_only_returns_405(dicomweb_client_factory):
    ds = make_dataset()
    writer = dicomweb_client_factory(allow_delete="true")
    store(writer, [ds])
    reader = make_client(writer.app.settings.data_dir, allow_delete="true", read_only="true")
    try:
        resp = reader.delete(f"/studies/{ds.StudyInstanceUID}", status=405)
        assert resp.headers["Allow"] == "GET, HEAD, OPTIONS"
        assert "read-only" in resp.text
        store(reader, [make_dataset()], status=405)
        reader.get(f"/studies/{ds.StudyInstanceUID}", status=200)
    finally:
        reader.app.close()


def test_delete_of_the_latest_instance_gives_study_and_series_the_remaining_ones_attributes(client):
    # A store gives a study and a series the attributes of their latest instance; a delete of that
    # instance must give them those of the latest remaining one (as a reindex would), in the results
    # and in the matching columns.
    study_uid, series_uid = new_uid(), new_uid()
    first = make_dataset(study_uid=study_uid, series_uid=series_uid, InstanceNumber=1, StudyDescription="first",
                         SeriesDescription="first series", TimezoneOffsetFromUTC="+0100")
    latest = make_dataset(study_uid=study_uid, series_uid=series_uid, InstanceNumber=2, StudyDescription="latest",
                          SeriesDescription="latest series", TimezoneOffsetFromUTC="+0200")
    store(client, [first, latest])
    json_accept = {"Accept": "application/dicom+json"}
    (study,) = client.get(f"/studies?StudyInstanceUID={study_uid}&includefield=all", headers=json_accept).json
    assert study["00081030"]["Value"] == ["latest"]
    client.delete(f"/studies/{study_uid}/series/{series_uid}/instances/{latest.SOPInstanceUID}", status=204)
    (study,) = client.get(f"/studies?StudyInstanceUID={study_uid}&includefield=all", headers=json_accept).json
    (series,) = client.get(f"/studies/{study_uid}/series?includefield=all", headers=json_accept).json
    assert study["00081030"]["Value"] == ["first"] and study["00080201"]["Value"] == ["+0100"]
    assert series["0008103E"]["Value"] == ["first series"] and series["00080201"]["Value"] == ["+0100"]
    assert client.get("/studies?StudyDescription=latest", headers=json_accept, status=200).json == []
    assert len(client.get("/studies?StudyDescription=first", headers=json_accept, status=200).json) == 1
    assert len(client.get("/series?SeriesDescription=first*", headers=json_accept, status=200).json) == 1
