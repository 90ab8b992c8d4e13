"""WADO-RS retrieve of studies, series and instances through HTTP."""
from __future__ import annotations

import http.client
import io
import os
import socket
import zipfile

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian

from dicomweb_wsgi.archive import Archive
from dicomweb_wsgi.config import load_settings
from dicomweb_wsgi.testing import make_dataset, new_uid, parse_multipart, stow_body, store

from .serverproc import ServerProcess

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _instance_url(ds) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _read(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


@pytest.fixture
def study(dicomweb_client):
    study_uid, s1, s2 = new_uid(), new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study_uid, series_uid=s1, SeriesNumber=1, InstanceNumber=i, pixel_seed=i)
                for i in (2, 1)]
    datasets.append(make_dataset(study_uid=study_uid, series_uid=s2, SeriesNumber=2, InstanceNumber=1,
                                 modality="MR"))
    store(dicomweb_client, datasets)
    return study_uid, s1, s2, datasets


def test_retrieve_study_returns_all_instances_in_order(dicomweb_client, study):
    study_uid, s1, s2, datasets = study
    resp = dicomweb_client.get(f"/studies/{study_uid}", status=200)
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/dicom"; boundary=')
    assert resp.body.startswith(b"--")  # no preamble (cornerstone's parser needs this)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    uids = [pydicom.dcmread(io.BytesIO(body)).SOPInstanceUID for _, body in parts]
    assert uids == [datasets[1].SOPInstanceUID, datasets[0].SOPInstanceUID, datasets[2].SOPInstanceUID]
    for headers, _ in parts:
        assert headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"


def test_retrieve_series_returns_only_that_series(dicomweb_client, study):
    study_uid, s1, s2, datasets = study
    resp = dicomweb_client.get(f"/studies/{study_uid}/series/{s2}", status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert [pydicom.dcmread(io.BytesIO(b)).SOPInstanceUID for _, b in parts] == [datasets[2].SOPInstanceUID]


def test_retrieve_instance_single_part_is_byte_identical(dicomweb_app, dicomweb_client, study):
    ds = study[3][0]
    resp = dicomweb_client.get(_instance_url(ds), headers={"Accept": "application/dicom"}, status=200)
    assert resp.headers["Content-Type"] == f"application/dicom; transfer-syntax={EXPLICIT_LE}"
    inst = dicomweb_app.archive.instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)[0]
    assert resp.body == _read(dicomweb_app.archive.path(inst))
    assert np.array_equal(pydicom.dcmread(io.BytesIO(resp.body)).pixel_array, ds.pixel_array)


@pytest.mark.parametrize("accept", [
    'multipart/related; type="application/dicom"',
    "multipart/related; type=application/dicom",
    'multipart/related; type="application/dicom"; transfer-syntax=*',
    "multipart/related; type=application/dicom; transfer-syntax=1.2.840.10008.1.2.1",
    "*/*",
    "multipart/related",
    "image/png;q=0.9, multipart/related; type=application/dicom;q=0.5",
    "",
])
def test_retrieve_instance_accept_variants(dicomweb_client, study, accept):
    ds = study[3][0]
    resp = dicomweb_client.get(_instance_url(ds), headers={"Accept": accept} if accept else {}, status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert len(parts) == 1
    assert pydicom.dcmread(io.BytesIO(parts[0][1])).SOPInstanceUID == ds.SOPInstanceUID


def test_retrieve_accept_query_parameter_wins_over_header(dicomweb_client, study):
    ds = study[3][0]
    resp = dicomweb_client.get(_instance_url(ds) + "?accept=application/dicom",
                               headers={"Accept": "image/png"}, status=200)
    assert resp.headers["Content-Type"].startswith("application/dicom")


@pytest.mark.parametrize("accept", ["image/png", "application/dicom+json",
                                    "multipart/related; type=application/dicom; transfer-syntax=1.2.3.4"])
def test_retrieve_unacceptable_returns_406(dicomweb_client, study, accept):
    dicomweb_client.get(f"/studies/{study[0]}", headers={"Accept": accept}, status=406)


@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_retrieve_instance_resources_send_bulk_data_as_octet_stream(dicomweb_client, level):
    # PS3.18 Table 10.4.4-1: the instance resources also offer their instances' bulk data.
    ds, _ = _store_file(dicomweb_client, "CT_small.dcm")
    url = {"study": f"/studies/{ds.StudyInstanceUID}",
           "series": f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}",
           "instance": _instance_url(ds)}[level]
    resp = dicomweb_client.get(url, headers={"Accept": 'multipart/related; type="application/octet-stream"'},
                               status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    pixel_uri = dicomweb_client.get(_instance_url(ds) + "/metadata").json[0]["7FE00010"]["BulkDataURI"]
    assert [body for headers, body in parts if headers["Content-Location"] == pixel_uri] == [ds.PixelData]
    both = 'multipart/related; type="application/dicom", multipart/related; type="application/octet-stream"'
    resp = dicomweb_client.get(url, headers={"Accept": both}, status=200)
    assert 'type="application/dicom"' in resp.headers["Content-Type"]


def test_retrieve_study_single_part_is_406(dicomweb_client, study):
    dicomweb_client.get(f"/studies/{study[0]}", headers={"Accept": "application/dicom"}, status=406)


@pytest.mark.parametrize("path", ["/studies/1.2.3", "/studies/1.2.3/series/4.5", "/studies/1.2.3/series/4.5/instances/6"])
def test_retrieve_unknown_returns_404(dicomweb_client, path):
    dicomweb_client.get(path, status=404)


def test_retrieve_wrong_parent_returns_404(dicomweb_client, study):
    ds = study[3][0]
    dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/series/{study[2]}/instances/{ds.SOPInstanceUID}",
                        status=404)


def test_retrieve_head_sends_headers_only(dicomweb_client, study):
    ds = study[3][0]
    resp = dicomweb_client.head(_instance_url(ds), headers={"Accept": "application/dicom"}, status=200)
    assert resp.body == b""
    assert int(resp.headers["Content-Length"]) > 0


def _store_file(client, name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} not bundled")
    with open(path, "rb") as fh:
        data = fh.read()
    store(client, [data])
    return pydicom.dcmread(path), data


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "waveform_ecg.dcm", "test-SR.dcm"])
def test_retrieve_explicit_le_file_with_any_syntax_is_byte_identical(dicomweb_client, name):
    ds, data = _store_file(dicomweb_client, name)
    assert ds.file_meta.TransferSyntaxUID == EXPLICIT_LE
    resp = dicomweb_client.get(_instance_url(ds), headers={
        "Accept": "multipart/related; type=application/dicom; transfer-syntax=*"}, status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert parts[0][1] == data


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"])
@pytest.mark.parametrize("accept", ['multipart/related; type="application/dicom"',
                                    'multipart/related; type="application/dicom"; transfer-syntax=*'])
def test_retrieve_never_sends_implicit_or_big_endian(dicomweb_client, name, accept):
    ds, _ = _store_file(dicomweb_client, name)
    resp = dicomweb_client.get(_instance_url(ds), headers={"Accept": accept}, status=200)
    headers, body = parse_multipart(resp.headers["Content-Type"], resp.body)[0]
    got = pydicom.dcmread(io.BytesIO(body))
    ts = got.file_meta.TransferSyntaxUID
    assert ts not in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.2")
    if "transfer-syntax=*" not in accept or name != "image_dfl.dcm":
        assert ts == EXPLICIT_LE
    assert headers["Content-Type"] == f"application/dicom; transfer-syntax={ts}"
    original = pydicom.dcmread(get_testdata_file(name))
    for elem in original:
        if elem.tag == 0x7FE00010:
            continue
        assert got[elem.tag].value == elem.value, elem.keyword
    if "PixelData" in original:
        assert np.array_equal(got.pixel_array, original.pixel_array)


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-lossy.dcm"])
def test_retrieve_compressed_file(dicomweb_client, name):
    ds, data = _store_file(dicomweb_client, name)
    stored_ts = ds.file_meta.TransferSyntaxUID
    # as stored
    resp = dicomweb_client.get(_instance_url(ds), headers={
        "Accept": f"multipart/related; type=application/dicom; transfer-syntax={stored_ts}"}, status=200)
    assert parse_multipart(resp.headers["Content-Type"], resp.body)[0][1] == data
    # default: decompressed to explicit VR LE, pixels as pydicom decodes them
    if name == "JPEG-lossy.dcm":  # a known-damaged JPEG no installed decoder reads: 406, never a 500
        assert "cannot decode" in dicomweb_client.get(_instance_url(ds), status=406).text
        return
    resp = dicomweb_client.get(_instance_url(ds), status=200)
    got = pydicom.dcmread(io.BytesIO(parse_multipart(resp.headers["Content-Type"], resp.body)[0][1]))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, pydicom.dcmread(get_testdata_file(name)).pixel_array)


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5"])
def test_retrieve_native_instance_transcoded_to_lossless_syntax_round_trips(dicomweb_client, ts):
    ds, _ = _store_file(dicomweb_client, "MR_small.dcm")
    resp = dicomweb_client.get(_instance_url(ds), headers={
        "Accept": f"multipart/related; type=application/dicom; transfer-syntax={ts}"}, status=200)
    headers, body = parse_multipart(resp.headers["Content-Type"], resp.body)[0]
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == ts and headers["Content-Type"].endswith(ts)
    assert np.array_equal(got.pixel_array, pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array)


@pytest.mark.parametrize("kind", ["multipart", "single part"])
def test_retrieve_falls_back_when_the_preferred_syntax_cannot_be_encoded(dicomweb_client, kind):
    # JPEG Baseline refuses 16-bit pixels only when it is tried; the Accept list's next choice is then
    # sent (PS3.18 §8.7.5 allows a 406 only when nothing acceptable can be produced).
    ds = make_dataset(bits=16)
    store(dicomweb_client, [ds])
    media = 'multipart/related; type="application/dicom"' if kind == "multipart" else "application/dicom"
    accept = f"{media}; transfer-syntax=1.2.840.10008.1.2.4.50, {media}; q=0.5"
    resp = dicomweb_client.get(_instance_url(ds), headers={"Accept": accept}, status=200)
    body = parse_multipart(resp.headers["Content-Type"], resp.body)[0][1] if kind == "multipart" else resp.body
    got = pydicom.dcmread(io.BytesIO(body))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    resp = dicomweb_client.get(_instance_url(ds), headers={
        "Accept": f"{media}; transfer-syntax=1.2.840.10008.1.2.4.50"}, status=406)
    assert "JPEG Baseline" in resp.text  # with nothing to fall back on, the encoder's reason


# -- series and studies as stored: one body with a Content-Length (issue 10, proposal 7) ----------------

AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _stored_bodies(app, *uids: str) -> list[bytes]:
    return [_read(app.archive.path(inst)) for inst in app.archive.instances(*uids)]


@pytest.mark.parametrize("accept", [AS_STORED, 'multipart/related; type="application/dicom"'])
@pytest.mark.parametrize("level", ["study", "series"])
def test_retrieve_as_stored_has_content_length_and_the_stored_bytes(dicomweb_app, dicomweb_client, study,
                                                                   level, accept):
    study_uid, s1, _, _ = study
    uids = (study_uid,) if level == "study" else (study_uid, s1)
    resp = dicomweb_client.get("/studies/" + "/series/".join(uids), headers={"Accept": accept}, status=200)
    assert int(resp.headers["Content-Length"]) == len(resp.body)
    assert resp.body.startswith(b"--")
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert [body for _, body in parts] == _stored_bodies(dicomweb_app, *uids)
    assert len(parts) == (3 if level == "study" else 2)
    # HEAD announces the same length without a body.
    head = dicomweb_client.head("/studies/" + "/series/".join(uids), headers={"Accept": accept}, status=200)
    assert head.headers["Content-Length"] == resp.headers["Content-Length"] and head.body == b""


def test_retrieve_series_whose_blob_vanished_after_listing_is_404(dicomweb_app, dicomweb_client, study):
    study_uid, s1, _, _ = study
    second = dicomweb_app.archive.instances(study_uid, s1)[1]
    os.unlink(dicomweb_app.archive.path(second))  # what a DELETE racing this retrieve leaves behind
    resp = dicomweb_client.get(f"/studies/{study_uid}/series/{s1}", headers={"Accept": AS_STORED}, status=404)
    assert "removed" in resp.text


def test_retrieve_mixed_series_transcodes_the_one_that_needs_it(dicomweb_app, dicomweb_client):
    study_uid, series_uid = new_uid(), new_uid()
    explicit = make_dataset(study_uid=study_uid, series_uid=series_uid, InstanceNumber=1, pixel_seed=1)
    implicit = make_dataset(study_uid=study_uid, series_uid=series_uid, InstanceNumber=2, pixel_seed=2,
                            transfer_syntax=ImplicitVRLittleEndian)
    store(dicomweb_client, [explicit, implicit])
    resp = dicomweb_client.get(f"/studies/{study_uid}/series/{series_uid}", status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert [h["Content-Type"] for h, _ in parts] == [f"application/dicom; transfer-syntax={EXPLICIT_LE}"] * 2
    stored = _stored_bodies(dicomweb_app, study_uid, series_uid)
    assert parts[0][1] == stored[0]
    got = pydicom.dcmread(io.BytesIO(parts[1][1]))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE and got.SOPInstanceUID == implicit.SOPInstanceUID
    assert np.array_equal(got.pixel_array, implicit.pixel_array)


# -- application/zip (Supplement 211) ------------------------------------------------------------------

def _zip_members(body: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(body)) as zf:
        assert zf.testzip() is None
        return {info.filename: zf.read(info) for info in zf.infolist()}


def _zip_name(inst) -> str:
    return f"{inst.study_uid}/{inst.series_uid}/{inst.sop_uid}.dcm"


@pytest.mark.parametrize("level", ["study", "series", "instance"])
@pytest.mark.parametrize("how", ["header", "query", "header with transfer-syntax=*"])
def test_retrieve_as_zip_holds_the_stored_files(dicomweb_app, dicomweb_client, study, level, how):
    study_uid, s1, _, datasets = study
    uids = {"study": (study_uid,), "series": (study_uid, s1),
            "instance": (study_uid, s1, datasets[0].SOPInstanceUID)}[level]
    path = "/studies/" + uids[0] + "".join(f"/{name}/{uid}" for name, uid in zip(("series", "instances"), uids[1:]))
    if how == "query":
        resp = dicomweb_client.get(path + "?accept=application/zip", headers={"Accept": "text/html"}, status=200)
    else:
        accept = "application/zip" + ("; transfer-syntax=*" if how.endswith("*") else "")
        resp = dicomweb_client.get(path, headers={"Accept": accept}, status=200)
    assert resp.headers["Content-Type"].startswith("application/zip")
    assert resp.headers["Content-Disposition"] == f'attachment; filename="{uids[-1]}.zip"'
    assert int(resp.headers["Content-Length"]) == len(resp.body)
    instances = dicomweb_app.archive.instances(*uids)
    assert _zip_members(resp.body) == {_zip_name(inst): _read(dicomweb_app.archive.path(inst)) for inst in instances}
    assert len(instances) == {"study": 3, "series": 2, "instance": 1}[level]
    head = dicomweb_client.head(path, headers={"Accept": "application/zip"}, status=200)
    assert head.headers["Content-Length"] == resp.headers["Content-Length"] and head.body == b""


def test_zip_is_never_chosen_by_a_wildcard(dicomweb_client, study):
    resp = dicomweb_client.get(f"/studies/{study[0]}", headers={"Accept": "*/*"}, status=200)
    assert resp.headers["Content-Type"].startswith("multipart/related")


@pytest.mark.parametrize("accept", ["application/*", "*/*; q=0.5, application/*"])
def test_zip_is_not_chosen_by_application_wildcard(dicomweb_client, study, accept):
    resp = dicomweb_client.get(f"/studies/{study[0]}", headers={"Accept": accept}, expect_errors=True)
    assert not resp.headers.get("Content-Type", "").startswith("application/zip")


@pytest.mark.parametrize("accept", ["application/zip", 'multipart/related; type="application/dicom"'])
def test_head_or_an_unread_body_closes_the_transcoded_first_instance(dicomweb_client, monkeypatch, accept):
    # The first instance is transcoded before the status; a body the server never iterates (HEAD, a
    # client gone before the first byte) must still close that spool file.
    from dicomweb_wsgi.transactions import wado

    spools = []
    real = wado.transcoded

    def recording(path, ts):
        spool, length = real(path, ts)
        spools.append(spool)
        return spool, length

    monkeypatch.setattr(wado, "transcoded", recording)
    study_uid = new_uid()
    store(dicomweb_client, [make_dataset(study_uid=study_uid, transfer_syntax=ImplicitVRLittleEndian)])
    dicomweb_client.head(f"/studies/{study_uid}", headers={"Accept": accept}, status=200)
    assert spools and all(spool.closed for spool in spools)


def test_zip_transcodes_what_cannot_go_as_stored(dicomweb_app, dicomweb_client):
    study_uid, series_uid = new_uid(), new_uid()
    implicit = [make_dataset(study_uid=study_uid, series_uid=series_uid, InstanceNumber=i, pixel_seed=i,
                             transfer_syntax=ImplicitVRLittleEndian) for i in (1, 2)]
    store(dicomweb_client, implicit)
    resp = dicomweb_client.get(f"/studies/{study_uid}", headers={"Accept": "application/zip"}, status=200)
    members = _zip_members(resp.body)
    assert len(members) == 2
    for inst, original in zip(dicomweb_app.archive.instances(study_uid), implicit):
        got = pydicom.dcmread(io.BytesIO(members[_zip_name(inst)]))
        assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE  # never Implicit VR LE (PS3.18 §8.7.3)
        assert got.SOPInstanceUID == original.SOPInstanceUID
        assert np.array_equal(got.pixel_array, original.pixel_array)


def test_zip_with_a_syntax_that_cannot_be_produced_is_406(dicomweb_client):
    ds = make_dataset(bits=16)
    store(dicomweb_client, [ds])
    resp = dicomweb_client.get(_instance_url(ds), headers={
        "Accept": "application/zip; transfer-syntax=1.2.840.10008.1.2.4.50"}, status=406)
    assert "JPEG Baseline" in resp.text
    # ... and with something to fall back on, that is sent instead.
    resp = dicomweb_client.get(_instance_url(ds), headers={
        "Accept": "application/zip; transfer-syntax=1.2.840.10008.1.2.4.50, application/zip; q=0.5"}, status=200)
    [body] = _zip_members(resp.body).values()
    assert pydicom.dcmread(io.BytesIO(body)).file_meta.TransferSyntaxUID == EXPLICIT_LE


def test_zip_of_a_series_whose_blob_vanished_after_listing_is_404(dicomweb_app, dicomweb_client, study):
    study_uid, s1, _, _ = study
    os.unlink(dicomweb_app.archive.path(dicomweb_app.archive.instances(study_uid, s1)[1]))
    resp = dicomweb_client.get(f"/studies/{study_uid}/series/{s1}", headers={"Accept": "application/zip"},
                               status=404)
    assert "removed" in resp.text


@pytest.fixture
def live(tmp_path):
    """A live server (waitress, wsgi.file_wrapper) and its archive opened beside it."""
    data_dir = str(tmp_path / "data")
    with ServerProcess(data_dir, max_seconds=300) as server:
        archive = Archive.open(load_settings({"data_dir": data_dir}))
        try:
            yield server, archive
        finally:
            archive.close()


def _connect(server: ServerProcess, receive_buffer: int | None = None) -> http.client.HTTPConnection:
    """A connected keep-alive HTTP/1.1 connection to the live server (optionally with a pinned receive buffer)."""
    host, port = server.url.rsplit("/", 1)[1].split(":")
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(60)
    sock.connect((host, int(port)))
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.sock = sock
    return conn


def _get(conn: http.client.HTTPConnection, path: str, accept: str = AS_STORED) -> http.client.HTTPResponse:
    conn.request("GET", path, headers={"Accept": accept})
    return conn.getresponse()


def _stored_series(server: ServerProcess, count: int, **kwargs) -> str:
    """Store a series of ``count`` instances on the live server; its URL path."""
    study_uid, series_uid = new_uid(), new_uid()
    content_type, body = stow_body([make_dataset(study_uid=study_uid, series_uid=series_uid, InstanceNumber=i,
                                                 pixel_seed=i, **kwargs) for i in range(1, count + 1)])
    conn = _connect(server)
    try:
        conn.request("POST", "/studies", body=body, headers={"Content-Type": content_type})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:500]
    finally:
        conn.close()
    return f"/studies/{study_uid}/series/{series_uid}"


@pytest.mark.parametrize("accept", [AS_STORED, "application/zip"])
def test_live_series_and_study_keep_the_connection_alive(live, accept):
    server, archive = live
    series_path = _stored_series(server, 3, rows=128, columns=128)
    study_uid = series_path.split("/")[2]
    conn = _connect(server)
    first_socket = conn.sock
    try:
        for path in (series_path, f"/studies/{study_uid}"):
            resp = _get(conn, path, accept)
            body = resp.read()
            assert resp.status == 200
            assert resp.getheader("Transfer-Encoding") is None
            assert int(resp.getheader("Content-Length")) == len(body)
            assert not resp.will_close
            stored = archive.instances(study_uid)
            if accept == AS_STORED:
                parts = parse_multipart(resp.getheader("Content-Type"), body)
                assert [b for _, b in parts] == [_read(archive.path(i)) for i in stored]
            else:
                assert _zip_members(body) == {_zip_name(i): _read(archive.path(i)) for i in stored}
        assert conn.sock is first_socket  # both answers came on the one connection
    finally:
        conn.close()


def test_live_blob_vanishing_mid_stream_cuts_the_response_short(live):
    server, archive = live
    # 4 x 8 MiB: far more than the socket buffers between server and client hold (the client's receive
    # buffer is pinned small), so the server cannot have reached the last file when it goes.
    series_path = _stored_series(server, 4, rows=512, columns=512, frames=16)
    instances = archive.instances(*series_path.split("/")[2::2])
    conn = _connect(server, receive_buffer=65536)
    try:
        resp = _get(conn, series_path)
        assert resp.status == 200
        length = int(resp.getheader("Content-Length"))
        first = resp.read(65536)
        os.unlink(archive.path(instances[-1]))
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        received = first + cut.value.partial
        assert len(received) < length  # the client can tell: fewer bytes than the Content-Length
        assert received.startswith(b"--") and _read(archive.path(instances[0])) in received
    finally:
        conn.close()
    # The server goes on serving: the series is now a clean 404, one of its instances a 200.
    for path, status in ((series_path, 404), (f"{series_path}/instances/{instances[0].sop_uid}", 200)):
        conn = _connect(server)
        try:
            assert _get(conn, path).status == status
        finally:
            conn.close()


def test_live_zip_that_transcodes_goes_out_chunked(live):
    # Transcoded instances have no size until they are encoded, so the archive has no Content-Length.
    server, _ = live
    implicit = _stored_series(server, 2, transfer_syntax=ImplicitVRLittleEndian)
    conn = _connect(server)
    try:
        conn.request("GET", implicit, headers={"Accept": "application/zip"})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        assert resp.getheader("Content-Length") is None
        members = _zip_members(body)
        assert len(members) == 2
        assert {pydicom.dcmread(io.BytesIO(b)).file_meta.TransferSyntaxUID for b in members.values()} == {EXPLICIT_LE}
    finally:
        conn.close()
