"""STOW-RS through HTTP: media types, response module, status codes, failure reasons, no traces."""
from __future__ import annotations

import gzip
import json
import os
import re

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, store, stow_body

import webtest


def _seq(body: dict, tag: str) -> list[dict]:
    return body.get(tag, {}).get("Value", [])


def _blob_files(app) -> list[str]:
    root = app.archive.blobs.root
    found = []
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) == "tmp":
            continue
        found.extend(os.path.join(dirpath, f) for f in files)
    return found


def _spool_files(app) -> list[str]:
    return os.listdir(app.archive.blobs.spool_dir)


def test_stow_two_instances_returns_200_and_response_module(dicomweb_client):
    study = new_uid()
    a, b = make_dataset(study_uid=study), make_dataset(study_uid=study)
    resp = store(dicomweb_client, [a, b])
    assert resp.headers["Content-Type"] == "application/dicom+json"
    body = resp.json
    assert body["00081190"]["Value"] == [f"http://localhost:80/studies/{study}"]
    refs = _seq(body, "00081199")
    assert {r["00081155"]["Value"][0] for r in refs} == {a.SOPInstanceUID, b.SOPInstanceUID}
    for ref in refs:
        assert ref["00081150"]["Value"] == [a.SOPClassUID]
        assert ref["00081190"]["Value"][0].endswith(f"/instances/{ref['00081155']['Value'][0]}")
    assert "00081198" not in body


@pytest.mark.parametrize("content_type", [
    'multipart/related; type="application/dicom"; boundary="{b}"',
    "multipart/related; type=application/dicom; boundary={b}",
    'multipart/related; boundary={b}; type="application/dicom"',
    'Multipart/Related; Type="Application/DICOM"; Boundary={b}',
])
def test_stow_content_type_variants_are_accepted(dicomweb_client, content_type):
    ds = make_dataset()
    _, body = stow_body([ds], boundary="XyZ123")
    resp = dicomweb_client.post("/studies", body, headers={"Content-Type": content_type.format(b="XyZ123")},
                                status=200)
    assert _seq(resp.json, "00081199")[0]["00081155"]["Value"] == [ds.SOPInstanceUID]


def test_stow_single_part_application_dicom_is_stored(dicomweb_client):
    ds = make_dataset()
    resp = dicomweb_client.post("/studies", dataset_bytes(ds), headers={"Content-Type": "application/dicom"},
                                status=200)
    assert _seq(resp.json, "00081199")[0]["00081155"]["Value"] == [ds.SOPInstanceUID]


def test_stow_to_study_with_mismatching_uid_returns_409_and_stores_nothing(dicomweb_app, dicomweb_client):
    ds = make_dataset()
    other = new_uid()
    resp = store(dicomweb_client, [ds], study_uid=other, status=409)
    failed = _seq(resp.json, "00081198")
    assert failed[0]["00081197"]["Value"] == [0xA901]
    assert failed[0]["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert resp.json["00081190"]["Value"][0].endswith(f"/studies/{other}")
    assert _blob_files(dicomweb_app) == []
    dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}", status=404)


def test_stow_mixed_good_and_bad_parts_returns_202_with_both_sequences(dicomweb_app, dicomweb_client):
    good = make_dataset()
    no_sop = make_dataset()
    del no_sop.SOPInstanceUID
    resp = store(dicomweb_client, [good, b"this is not DICOM at all", no_sop], status=202)
    refs = _seq(resp.json, "00081199")
    failed = _seq(resp.json, "00081198")
    assert [r["00081155"]["Value"][0] for r in refs] == [good.SOPInstanceUID]
    codes = sorted(f["00081197"]["Value"][0] for f in failed)
    assert codes == [0xA900, 0xC000]
    assert "Warning" in resp.headers
    assert len(_blob_files(dicomweb_app)) == 1
    assert _spool_files(dicomweb_app) == []


def test_stow_only_non_dicom_parts_returns_409_with_c000(dicomweb_app, dicomweb_client):
    resp = store(dicomweb_client, [b"\x00" * 300, b"GIF89a"], status=409)
    assert [f["00081197"]["Value"][0] for f in _seq(resp.json, "00081198")] == [0xC000, 0xC000]
    assert _blob_files(dicomweb_app) == []


@pytest.mark.parametrize("body,content_type,status", [
    (b"", 'multipart/related; type="application/dicom"; boundary=abc', 400),
    (b"--other\r\nContent-Type: application/dicom\r\n\r\nxx\r\n--other--\r\n",
     'multipart/related; type="application/dicom"; boundary=abc', 400),
    (b"--abc\r\n\r\nxx", 'multipart/related; type="application/dicom"', 400),
    (b"{}", "application/json", 415),
    (b"--abc--", 'multipart/related; type="image/jpeg"; boundary=abc', 415),
])
def test_stow_malformed_requests_are_rejected_without_traces(dicomweb_app, dicomweb_client, body,
                                                              content_type, status):
    resp = dicomweb_client.post("/studies", body, headers={"Content-Type": content_type}, status=status)
    assert resp.content_type == "text/plain"
    assert resp.text.strip()
    assert _blob_files(dicomweb_app) == []
    assert _spool_files(dicomweb_app) == []


def test_stow_warning_header_is_one_line_of_printable_ascii(dicomweb_client):
    """The reasons quote client text (here BulkDataURIs with non-ASCII, a backslash and a quote); a header
    value cannot carry it (PEP 3333: Latin-1; RFC 9110 §5.5: no CR/LF), so it is replaced."""
    study = new_uid()
    metas = [{**make_dataset(study_uid=study).to_json_dict(bulk_data_threshold=1 << 30),
              "7FE00010": {"vr": "OW", "BulkDataURI": uri}}
             for uri in ("https://client.example/\u03a9mega\u2028x", 'cid:a\\b"c\\')]
    body = (b"--b0\r\nContent-Type: application/dicom+json\r\n\r\n" + json.dumps(metas).encode()
            + b"\r\n--b0--\r\n")
    resp = dicomweb_client.post("/studies", body, status=409, headers={
        "Content-Type": 'multipart/related; type="application/dicom+json"; boundary=b0'})
    assert [f["00081197"]["Value"][0] for f in _seq(resp.json, "00081198")] == [0xC000, 0xC000]
    warning = resp.headers["Warning"]
    assert warning.isascii() and warning.isprintable(), warning
    match = re.fullmatch(r'299 \S+ "((?:[^"\\]|\\.)*)"', warning)  # one quoted-string (RFC 9110 §5.6.4)
    assert match, warning
    assert "no bulk data part" in match.group(1) and "client.example/?mega" in match.group(1)


def test_stow_missing_content_type_returns_415(dicomweb_client):
    dicomweb_client.post("/studies", b"abc", headers={"Content-Type": ""}, status=415)


def test_stow_truncated_part_leaves_no_trace(dicomweb_app, dicomweb_client):
    good = make_dataset()
    content_type, body = stow_body([good, make_dataset()])
    truncated = body[: len(body) - 400]
    resp = dicomweb_client.post("/studies", truncated, headers={"Content-Type": content_type}, status=400)
    assert "truncated" in resp.text
    assert _blob_files(dicomweb_app) == []
    assert _spool_files(dicomweb_app) == []
    dicomweb_client.get(f"/studies/{good.StudyInstanceUID}", status=404)


def test_stow_truncated_dicom_file_fails_that_instance(dicomweb_app, dicomweb_client):
    data = dataset_bytes(make_dataset(rows=64, columns=64))
    resp = store(dicomweb_client, [data[:1000]], status=409)
    assert _seq(resp.json, "00081198")[0]["00081197"]["Value"] == [0xC000]
    assert _blob_files(dicomweb_app) == []


def test_stow_non_patient_sop_class_fails_with_0122(dicomweb_client):
    ds = make_dataset(sop_class_uid="1.2.840.10008.5.1.4.39.1")
    resp = store(dicomweb_client, [ds], status=409)
    assert _seq(resp.json, "00081198")[0]["00081197"]["Value"] == [0x0122]


def test_stow_accept_xml_returns_native_dicom_model(dicomweb_client):
    import xml.etree.ElementTree as ET

    ds = make_dataset()
    content_type, body = stow_body([ds])
    resp = dicomweb_client.post("/studies", body, headers={"Content-Type": content_type,
                                                           "Accept": "application/dicom+xml"}, status=200)
    assert resp.content_type == "application/dicom+xml"
    root = ET.fromstring(resp.body)
    assert root.tag.rpartition("}")[2] == "NativeDicomModel"
    tags = {el.get("tag") for el in root}
    assert "00081199" in tags


def test_stow_unacceptable_accept_returns_406_before_storing(dicomweb_app, dicomweb_client):
    content_type, body = stow_body([make_dataset()])
    dicomweb_client.post("/studies", body, headers={"Content-Type": content_type, "Accept": "image/png"},
                         status=406)
    assert _blob_files(dicomweb_app) == []


def test_stow_body_over_limit_returns_413(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "d"), "max_request_body": "1K", "fsync": "false"})
    client = webtest.TestApp(app)
    content_type, body = stow_body([make_dataset(rows=64, columns=64)])
    client.post("/studies", body, headers={"Content-Type": content_type}, status=413)
    app.close()


def test_stow_part_over_limit_returns_413_and_no_trace(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "d"), "max_part_size": "2K", "fsync": "false"})
    client = webtest.TestApp(app)
    content_type, body = stow_body([make_dataset(rows=64, columns=64)])
    client.post("/studies", body, headers={"Content-Type": content_type}, status=413)
    assert _blob_files(app) == [] and _spool_files(app) == []
    app.close()


@pytest.mark.parametrize("policy,status,code", [("ignore", 200, None), ("replace", 200, None),
                                                ("reject", 409, 0x0111)])
def test_stow_duplicate_policy(tmp_path, policy, status, code):
    app = make_app({"data_dir": str(tmp_path / "d"), "duplicate_policy": policy, "fsync": "false"})
    client = webtest.TestApp(app)
    first = make_dataset(PatientID="FIRST")
    store(client, [first])
    second = make_dataset(study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                          sop_uid=first.SOPInstanceUID, PatientID="SECOND")
    resp = store(client, [second], status=status)
    if code is not None:
        assert _seq(resp.json, "00081198")[0]["00081197"]["Value"] == [code]
    got = client.get(f"/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}/instances/"
                     f"{first.SOPInstanceUID}", headers={"Accept": "application/dicom"}, status=200)
    stored = pydicom.dcmread(__import__("io").BytesIO(got.body))
    assert stored.PatientID == ("SECOND" if policy == "replace" else "FIRST")
    assert len(_blob_files(app)) == 1
    assert app.archive.index.counts()["instances"] == 1
    app.close()


@pytest.mark.parametrize("policy,status", [("ignore", 409), ("reject", 409), ("replace", 200)])
def test_stow_sop_instance_uid_stored_in_another_study_is_never_acknowledged_there(tmp_path, policy, status):
    # A duplicate is "ignored" only where it already is: acknowledged elsewhere, its RetrieveURL would
    # name a study that does not hold it (PS3.18 Table I.1-1).
    app = make_app({"data_dir": str(tmp_path / "d"), "duplicate_policy": policy, "fsync": "false"})
    client = webtest.TestApp(app)
    first = make_dataset(PatientID="FIRST")
    store(client, [first])
    moved = make_dataset(sop_uid=first.SOPInstanceUID, PatientID="SECOND")
    resp = store(client, [moved], status=status)
    if status == 409:
        assert _seq(resp.json, "00081198")[0]["00081197"]["Value"] == [0x0111]
        assert "another study" in resp.headers["Warning"]
    kept = first if policy != "replace" else moved
    for ds, present in ((kept, 200), (moved if kept is first else first, 404)):
        client.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}",
                   headers={"Accept": "application/dicom"}, status=present)
    assert app.archive.index.counts()["instances"] == 1 and len(_blob_files(app)) == 1
    app.close()


def test_stow_response_always_carries_the_top_level_retrieve_url(dicomweb_client):
    # PS3.18 Table I.1-1: Retrieve URL (0008,1190) is Type 2.
    one, other = make_dataset(), make_dataset()
    resp = store(dicomweb_client, [one, other])
    assert resp.json["00081190"] == {"vr": "UR"}  # two studies: no one URL
    bad = make_dataset()
    del bad.SOPClassUID
    resp = store(dicomweb_client, [bad], status=409)
    assert resp.json["00081190"] == {"vr": "UR"}


def test_stow_series_reused_in_other_study_fails_that_instance(dicomweb_client):
    first = make_dataset()
    store(dicomweb_client, [first])
    clash = make_dataset(series_uid=first.SeriesInstanceUID)
    resp = store(dicomweb_client, [clash], status=409)
    assert _seq(resp.json, "00081198")[0]["00081197"]["Value"] == [0x0110]


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm",
                                  "image_dfl.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "SC_rgb_jpeg_dcmtk.dcm", "rtplan.dcm"])
def test_stow_pydicom_example_files_are_stored(dicomweb_client, name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    with open(path, "rb") as fh:
        data = fh.read()
    resp = store(dicomweb_client, [data])
    ds = pydicom.dcmread(path)
    assert _seq(resp.json, "00081199")[0]["00081155"]["Value"] == [ds.SOPInstanceUID]


def test_stow_many_small_parts_in_one_request(dicomweb_app, dicomweb_client):
    study = new_uid()
    series = new_uid()
    datasets = [make_dataset(study_uid=study, series_uid=series, rows=4, columns=4, InstanceNumber=i)
                for i in range(250)]  # crosses the 200-record commit batch
    resp = store(dicomweb_client, datasets)
    assert len(_seq(resp.json, "00081199")) == 250
    counts = dicomweb_app.archive.index.counts()
    assert counts["instances"] == 250 and counts["studies"] == 1 and counts["series"] == 1
    row = dicomweb_app.archive.index.read("SELECT num_series, num_instances, modalities FROM study")[0]
    assert tuple(row) == (1, 250, "CT")


def test_stow_study_and_series_attributes_follow_the_latest_instance_of_a_request(dicomweb_client):
    # One transaction writes the study and series rows once per distinct set of values: A, B, A
    # must end on A (the third write is not skipped as a repeat of the first).
    study, series = new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study, series_uid=series, StudyDescription=d, SeriesDescription=d)
                for d in ("CHEST A", "CHEST B", "CHEST A", "CHEST A")]
    store(dicomweb_client, datasets)
    studies = dicomweb_client.get("/studies", params={"StudyInstanceUID": study,
                                                      "includefield": "StudyDescription"}).json
    assert [s["00081030"]["Value"] for s in studies] == [["CHEST A"]]
    found = dicomweb_client.get(f"/studies/{study}/series", params={"includefield": "SeriesDescription"}).json
    assert [s["0008103E"]["Value"] for s in found] == [["CHEST A"]]
    store(dicomweb_client, [make_dataset(study_uid=study, series_uid=series, StudyDescription="CHEST B",
                                         SeriesDescription="CHEST B")])
    studies = dicomweb_client.get("/studies", params={"StudyInstanceUID": study,
                                                      "includefield": "StudyDescription"}).json
    assert studies[0]["00081030"]["Value"] == ["CHEST B"]
    assert studies[0]["00201208"]["Value"] == [5]


def test_stow_response_json_is_sorted_and_valid(dicomweb_client):
    resp = store(dicomweb_client, [make_dataset()])
    body = json.loads(resp.body)
    assert list(body) == sorted(body)


def test_stow_file_without_preamble_is_stored_as_ps310(dicomweb_app, dicomweb_client):
    import io as _io

    ds = make_dataset()
    buf = _io.BytesIO()
    pydicom.dcmwrite(buf, ds)  # pydicom 3 (and so dicomweb-client) writes no preamble by default
    assert buf.getvalue()[128:132] != b"DICM"
    store(dicomweb_client, [buf.getvalue()])
    got = dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/"
                              f"{ds.SOPInstanceUID}", headers={"Accept": "application/dicom"}, status=200)
    assert got.body[128:132] == b"DICM"
    assert pydicom.dcmread(_io.BytesIO(got.body)).SOPInstanceUID == ds.SOPInstanceUID


# -- refused part way: the instances of batches already committed are named ---------------------------

@pytest.fixture(scope="module")
def many_instances() -> list[bytes]:
    return [dataset_bytes(make_dataset(rows=64, columns=64)) for _ in range(240)]  # more than one batch of 200


def _post_raw(app, body: bytes, content_type: str, chunked: bool = False):
    from .test_hostile import _call

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/studies", "CONTENT_TYPE": content_type,
               "HTTP_ACCEPT": "application/dicom+json", "wsgi.input": __import__("io").BytesIO(body)}
    if chunked:
        environ["wsgi.input_terminated"] = True
    else:
        environ["CONTENT_LENGTH"] = str(len(body))
    return _call(app, environ)


@pytest.mark.parametrize("limit", ["max_parts", "max_request_body", "spool"])
def test_stow_refused_after_a_committed_batch_says_how_many_were_stored(tmp_path, many_instances, monkeypatch,
                                                                         limit):
    # A 413 or 503 raised while the body is read, after the first 200 were committed: those stay
    # stored (they are durable and were not refused), so the answer must say so.
    content_type, body = stow_body(many_instances)
    settings = {"data_dir": str(tmp_path / "d"), "fsync": "false"}
    if limit == "max_parts":
        settings["max_parts"] = "205"
    elif limit == "max_request_body":
        settings["max_request_body"] = str(len(body) - 3000)  # crossed within the last parts
    app = make_app(settings)
    if limit == "spool":
        from dicomweb_wsgi import multipart

        real, made = multipart.tempfile.mkstemp, []

        def mkstemp(*args, **kwargs):
            made.append(1)
            if len(made) > 205:
                raise OSError(28, "No space left on device")
            return real(*args, **kwargs)

        monkeypatch.setattr(multipart.tempfile, "mkstemp", mkstemp)
    try:
        status, text = _post_raw(app, body, content_type, chunked=limit == "max_request_body")
        assert status.startswith("503" if limit == "spool" else "413"), (status, text)
        assert b"(200 complete instances before the error were stored)" in text, text
        assert app.archive.index.counts()["instances"] == 200
    finally:
        app.close()


@pytest.mark.parametrize("tag", [0x0020000D, 0x0020000E])
def test_stow_multi_valued_study_or_series_uid_fails_with_a900(dicomweb_client, tag):
    # Study and Series Instance UID have VM 1 (PS3.3 C.7.2.1, C.7.3.1): not stored under the first value.
    ds = make_dataset()
    value = b"1.2.840.99.1\\1.2.840.99.2"
    ds[tag] = RawDataElement(Tag(tag), "UI", len(value), value, 0, False, True)
    content_type, body = stow_body([ds])
    resp = dicomweb_client.post("/studies", body, headers={"Content-Type": content_type}, status=409)
    assert [f["00081197"]["Value"] for f in _seq(resp.json, "00081198")] == [[0xA900]]
    assert dicomweb_client.app.archive.index.counts()["instances"] == 0


@pytest.mark.parametrize("single_part", [False, True])
@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_stow_content_coded_body_is_415_not_parsed(dicomweb_client, single_part, coding):
    # RFC 9110 §8.4.1: a content coding the server does not decode is refused, not parsed as the body.
    ds = make_dataset()
    content_type, raw = ("application/dicom", dataset_bytes(ds)) if single_part else stow_body([ds])
    resp = dicomweb_client.post("/studies", gzip.compress(raw) if coding == "gzip" else raw, status=415,
                                headers={"Content-Type": content_type, "Content-Encoding": coding})
    assert "Content-Encoding" in resp.text
    assert dicomweb_client.app.archive.index.counts()["instances"] == 0
    dicomweb_client.post("/studies", raw, headers={"Content-Type": content_type, "Content-Encoding": "identity"},
                         status=200)
