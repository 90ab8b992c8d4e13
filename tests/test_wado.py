"""WADO-RS retrieve of studies, series and instances through HTTP."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from dicomweb_wsgi.testing import make_dataset, new_uid, parse_multipart, store

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
