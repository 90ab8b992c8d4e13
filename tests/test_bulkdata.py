"""WADO-RS bulk data through HTTP: every BulkDataURI the metadata emits, ranges, the /bulkdata resources.

The oracle is pydicom's reading of the stored file: each URI must return the element's value,
little endian (PS3.18 §8.7.3.3.1), whatever the file's byte order or encoding.
"""
from __future__ import annotations

from typing import Any, Iterator

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, parse_multipart, store

from .serverproc import ServerProcess
from .test_metadata import instance_url, le_bytes, live_uri, local, store_file, stored_dataset

URI_FILES = ["CT_small.dcm", "waveform_ecg.dcm", "examples_overlay.dcm", "MR_small_bigendian.dcm",
             "rtdose_expb.dcm", "image_dfl.dcm", "MR_small_implicit.dcm"]
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"
ENCAPSULATED_CDA = "1.2.840.10008.5.1.4.1.1.104.2"


def bulk_uris(obj: Any) -> Iterator[tuple[str, str]]:
    """Every (vr, BulkDataURI) in a DICOM JSON object, nested ones included."""
    if isinstance(obj, dict):
        if "BulkDataURI" in obj:
            yield obj["vr"], obj["BulkDataURI"]
        for value in obj.values():
            yield from bulk_uris(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from bulk_uris(value)


def value_at(ds: Dataset, path: str) -> Any:
    """The element a bulk data path names: tag/item/tag/..."""
    parts = path.split("/")
    node: Any = ds
    for tag, index in zip(parts[0::2], parts[1::2]):
        node = node[int(tag, 16)].value[int(index)]
    return node[int(parts[-1], 16)]


def expected_bytes(original: Dataset, path: str, vr: str) -> bytes:
    elem = value_at(original, path)
    bits = original.get("BitsAllocated") if path == "7FE00010" else None
    return le_bytes(bytes(elem.value), vr, original.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2", bits)


@pytest.mark.parametrize("name", URI_FILES)
def test_bulkdata_every_uri_in_metadata_returns_the_value(dicomweb_app, dicomweb_client, name):
    ds = store_file(dicomweb_client, name)
    original = stored_dataset(dicomweb_app, ds)
    obj = dicomweb_client.get(instance_url(ds) + "/metadata", status=200).json[0]
    uris = list(bulk_uris(obj))
    assert uris
    for vr, uri in uris:
        path = uri.split("/bulkdata/", 1)[1]
        expected = expected_bytes(original, path, vr)
        resp = dicomweb_client.get(local(uri), status=200)
        assert resp.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
        (headers, body), = parse_multipart(resp.headers["Content-Type"], resp.body)
        assert headers["Content-Location"] == uri
        assert headers["Content-Type"] == "application/octet-stream"
        assert body == expected, path
        single = dicomweb_client.get(local(uri), headers={"Accept": "application/octet-stream"}, status=200)
        assert single.body == expected and single.headers["Content-Type"] == "application/octet-stream"


def test_bulkdata_encapsulated_pixel_data_as_stored_frame_by_frame_decoded_as_one_value(dicomweb_client):
    # PS3.18 §10.4.3.3.5: every part carries the BulkDataURI asked for; decoded, the value is one
    # element, every frame in order, as native Pixel Data holds it (a client reading the first part
    # must not get frame 1 alone).
    ds = store_file(dicomweb_client, "SC_rgb_rle_2frame.dcm")
    uri = dicomweb_client.get(instance_url(ds) + "/metadata", status=200).json[0]["7FE00010"]["BulkDataURI"]
    resp = dicomweb_client.get(local(uri), headers={
        "Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}, status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert [body for _, body in parts] == list(generate_frames(ds.PixelData, number_of_frames=2))
    assert parts[0][0]["Content-Type"] == "image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5"
    assert [headers["Content-Location"] for headers, _ in parts] == [uri, uri]
    decoded = dicomweb_client.get(local(uri), status=200)
    (headers, body), = parse_multipart(decoded.headers["Content-Type"], decoded.body)
    assert body == ds.pixel_array.tobytes() and headers["Content-Location"] == uri
    everything = dicomweb_client.get(instance_url(ds) + "/bulkdata", status=200)
    (headers, body), = [part for part in parse_multipart(everything.headers["Content-Type"], everything.body)
                        if part[0]["Content-Location"] == uri]
    assert body == ds.pixel_array.tobytes()


def test_bulkdata_single_frame_jpeg_part_carries_its_bulkdata_uri(dicomweb_client):
    ds = store_file(dicomweb_client, "SC_rgb_jpeg_dcmtk.dcm")
    uri = dicomweb_client.get(instance_url(ds) + "/metadata", status=200).json[0]["7FE00010"]["BulkDataURI"]
    for accept in ('multipart/related; type="application/octet-stream"',
                   'multipart/related; type="application/octet-stream"; transfer-syntax=*'):
        resp = dicomweb_client.get(local(uri), headers={"Accept": accept}, status=200)
        (headers, _), = parse_multipart(resp.headers["Content-Type"], resp.body)
        assert headers["Content-Location"] == uri


@pytest.mark.parametrize("range_header, status, window, content_range", [
    ("bytes=0-9", 206, (0, 10), "bytes 0-9/32768"),
    ("bytes=100-", 206, (100, 32768), "bytes 100-32767/32768"),
    ("bytes=-16", 206, (32752, 32768), "bytes 32752-32767/32768"),
    ("bytes=32760-40000", 206, (32760, 32768), "bytes 32760-32767/32768"),
    ("bytes=0-1,4-5", 200, (0, 32768), None),
    ("items=0-1", 200, (0, 32768), None),
    ("bytes=5-2", 200, (0, 32768), None),
])
@pytest.mark.parametrize("accept", ["application/octet-stream", 'multipart/related; type="application/octet-stream"'])
def test_bulkdata_range(dicomweb_client, range_header, status, window, content_range, accept):
    ds = store_file(dicomweb_client, "CT_small.dcm")
    url = instance_url(ds) + "/bulkdata/7FE00010"
    resp = dicomweb_client.get(url, headers={"Range": range_header, "Accept": accept}, status=status)
    expected = ds.PixelData[window[0]:window[1]]
    if accept.startswith("multipart"):
        (headers, body), = parse_multipart(resp.headers["Content-Type"], resp.body)
        assert headers.get("Content-Range") == content_range
    else:
        body = resp.body
        assert resp.headers.get("Content-Range") == content_range
        assert resp.headers["Accept-Ranges"] == "bytes"
    assert body == expected


@pytest.mark.parametrize("range_header", ["bytes=32768-", "bytes=40000-50000", "bytes=-0"])
def test_bulkdata_range_past_the_end_returns_416(dicomweb_client, range_header):
    ds = store_file(dicomweb_client, "CT_small.dcm")
    resp = dicomweb_client.get(instance_url(ds) + "/bulkdata/7FE00010", headers={"Range": range_header}, status=416)
    assert resp.headers["Content-Range"] == "bytes */32768"


def test_bulkdata_encapsulated_document_is_offered_as_its_mime_type(dicomweb_client):
    document = b"%PDF-1.4\n" + bytes(range(256)) * 8 + b"%%EOF\n\n"
    ds = make_dataset(sop_class_uid=ENCAPSULATED_PDF, modality="DOC", MIMETypeOfEncapsulatedDocument="application/pdf",
                      EncapsulatedDocument=document)
    store(dicomweb_client, [ds])
    uri = dicomweb_client.get(instance_url(ds) + "/metadata", status=200).json[0]["00420011"]["BulkDataURI"]
    pdf = dicomweb_client.get(local(uri), headers={"Accept": "application/pdf"}, status=200)
    assert pdf.headers["Content-Type"] == "application/pdf" and pdf.body == document
    resp = dicomweb_client.get(local(uri), headers={"Accept": 'multipart/related; type="application/pdf"'}, status=200)
    (headers, body), = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert headers["Content-Type"] == "application/pdf" and body == document
    dicomweb_client.get(local(uri), headers={"Accept": "image/jpeg"}, status=406)


def test_bulkdata_document_as_its_mime_type_is_cut_to_its_real_length(dicomweb_client):
    # PS3.3 C.24.2.1: the value is padded to even length; Encapsulated Document Length is the real one.
    document = b'<?xml version="1.0"?><ClinicalDocument xmlns="urn:hl7-org:v3">' + b"a" * 2000 + b"</ClinicalDocument>"
    assert len(document) % 2 == 1
    ds = make_dataset(sop_class_uid=ENCAPSULATED_CDA, modality="DOC", MIMETypeOfEncapsulatedDocument="text/xml",
                      EncapsulatedDocument=document, EncapsulatedDocumentLength=len(document))
    store(dicomweb_client, [ds])
    uri = dicomweb_client.get(instance_url(ds) + "/metadata", status=200).json[0]["00420011"]["BulkDataURI"]
    resp = dicomweb_client.get(local(uri), headers={"Accept": "text/xml"}, status=200)
    assert resp.headers["Content-Type"] == "text/xml" and resp.body == document
    resp = dicomweb_client.get(local(uri), headers={"Accept": 'multipart/related; type="text/xml"'}, status=200)
    assert parse_multipart(resp.headers["Content-Type"], resp.body)[0][1] == document
    # As bulk data (octet-stream) it is the stored value, padding included.
    resp = dicomweb_client.get(local(uri), headers={"Accept": "application/octet-stream"}, status=200)
    assert resp.body == document + b"\0"


def test_bulkdata_resources_send_all_values_with_their_metadata_uris(dicomweb_client):
    study, series = new_uid(), new_uid()
    first = make_dataset(study_uid=study, series_uid=series, InstanceNumber=1, rows=32, columns=32)
    for tag, vr, value in ((0x60000010, "US", 128), (0x60000011, "US", 128), (0x60000040, "CS", "G"),
                           (0x60000050, "SS", [1, 1]), (0x60000100, "US", 1), (0x60000102, "US", 0),
                           (0x60003000, "OW", b"\x55" * 2048)):
        first.add_new(tag, vr, value)
    second = make_dataset(study_uid=study, series_uid=series, InstanceNumber=2, rows=32, columns=32, pixel_seed=5)
    store(dicomweb_client, [first, second])
    metadata = dicomweb_client.get(f"/studies/{study}/metadata", status=200).json
    uris = [uri for obj in metadata for _, uri in bulk_uris(obj)]
    assert len(uris) == 3
    for url in (f"/studies/{study}/bulkdata", f"/studies/{study}/series/{series}/bulkdata"):
        resp = dicomweb_client.get(url, status=200)
        parts = parse_multipart(resp.headers["Content-Type"], resp.body)
        assert sorted(h["Content-Location"] for h, _ in parts) == sorted(uris)
        by_uri = {h["Content-Location"]: body for h, body in parts}
        assert by_uri[metadata[0]["60003000"]["BulkDataURI"]] == b"\x55" * 2048
        assert by_uri[metadata[1]["7FE00010"]["BulkDataURI"]] == second.PixelData
    resp = dicomweb_client.get(instance_url(second) + "/bulkdata", status=200)
    assert [b for _, b in parse_multipart(resp.headers["Content-Type"], resp.body)] == [second.PixelData]
    dicomweb_client.get(f"/studies/{study}/bulkdata", headers={"Accept": "application/dicom"}, status=406)


def test_bulkdata_resource_with_compressed_pixels_decodes_unless_asked_as_stored(dicomweb_client):
    ds = store_file(dicomweb_client, "JPEG2000.dcm")
    url = f"/studies/{ds.StudyInstanceUID}/bulkdata"
    resp = dicomweb_client.get(url, status=200)
    (headers, body), = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert headers["Content-Type"] == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert body == ds.pixel_array.astype(ds.pixel_array.dtype.newbyteorder("<")).tobytes()
    resp = dicomweb_client.get(url, headers={"Accept": "multipart/related; type=application/octet-stream; "
                                                       "transfer-syntax=*"}, status=200)
    (headers, body), = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert headers["Content-Type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert body == next(generate_frames(ds.PixelData, number_of_frames=1))


@pytest.mark.parametrize("suffix, status", [("/bulkdata/00091010", 404), ("/bulkdata/7FE00010/0/00000000", 404),
                                            ("/bulkdata/zz", 400), ("/bulkdata/7FE00010/x/00000000", 400)])
def test_bulkdata_unknown_or_malformed_path(dicomweb_client, suffix, status):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    dicomweb_client.get(instance_url(ds) + suffix, status=status)


def test_bulkdata_of_unknown_resources_returns_404(dicomweb_client):
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("rtplan.dcm"))
    store(dicomweb_client, [dataset_bytes(ds)])
    assert "no bulk data" in dicomweb_client.get(instance_url(ds) + "/bulkdata", status=404).text
    dicomweb_client.get("/studies/1.2.3/bulkdata", status=404)
    dicomweb_client.get("/studies/1.2.3/series/4/instances/5/bulkdata/7FE00010", status=404)


def test_bulkdata_of_a_damaged_deflated_file_returns_404_never_500(dicomweb_app, dicomweb_client):
    ds = store_file(dicomweb_client, "image_dfl.dcm")
    inst = dicomweb_app.archive.instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)[0]
    with open(dicomweb_app.archive.path(inst), "r+b") as fh:  # cut the deflated stream short
        fh.truncate(fh.seek(0, 2) // 2)
    resp = dicomweb_client.get(instance_url(ds) + "/bulkdata/7FE00010", status=404)
    assert "cannot be read" in resp.text


def test_bulkdata_head_gives_length_without_body(dicomweb_client):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    resp = dicomweb_client.head(instance_url(ds) + "/bulkdata/7FE00010", headers={"Accept": "application/octet-stream"},
                                status=200)
    assert resp.body == b"" and resp.headers["Content-Length"] == str(len(ds.PixelData))


def test_bulkdata_dicomweb_client_against_live_server(tmp_path):
    dicomweb_client = pytest.importorskip("dicomweb_client")
    ds = make_dataset(rows=32, columns=32)
    with ServerProcess(str(tmp_path / "data")) as server:
        client = dicomweb_client.DICOMwebClient(server.url)
        client.store_instances([ds])
        uri = live_uri(server.url, client.retrieve_instance_metadata(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)["7FE00010"]["BulkDataURI"])
        assert client.retrieve_bulkdata(uri) == [ds.PixelData]
        assert client.retrieve_bulkdata(uri, media_types=("application/octet-stream",)) == [ds.PixelData]
        assert client.retrieve_bulkdata(uri, byte_range=(10, 29)) == [ds.PixelData[10:30]]
