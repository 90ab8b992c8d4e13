"""WADO-RS metadata (study, series, instance) through HTTP, checked against the stored files.

The oracle is pydicom: each JSON response is turned back into a data set by pydicom's own
``Dataset.from_json`` (fetching every BulkDataURI through HTTP, nested ones included) and compared
attribute by attribute with pydicom's reading of the file the server stored.
"""
from __future__ import annotations

import gzip
import json
import math
import warnings
import xml.etree.ElementTree as ET
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.testing import make_dataset, new_uid, parse_multipart, store

from .serverproc import ServerProcess

XML_NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
SWAP = {"OW": "u2", "OF": "u4", "OL": "u4", "OD": "u8", "OV": "u8"}
ATTRIBUTE_FILES = ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "rtplan.dcm",
                   "waveform_ecg.dcm", "examples_overlay.dcm", "image_dfl.dcm", "test-SR.dcm",
                   "rtdose_expb.dcm", "JPEG2000.dcm"]


def instance_url(ds: Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def store_file(client: Any, name: str) -> Dataset:
    """Store one of pydicom's bundled files; returns it as pydicom reads it."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not bundled with pydicom")
    with open(path, "rb") as fh:
        store(client, [fh.read()])
    return pydicom.dcmread(path)


def stored_dataset(app: Any, ds: Dataset) -> Dataset:
    """pydicom's reading of the file the server keeps for ``ds``."""
    inst = app.archive.instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)[0]
    return pydicom.dcmread(app.archive.path(inst))


def local(uri: str) -> str:
    """The path of an absolute URI the server emitted (webtest takes paths)."""
    parts = urlsplit(uri)
    assert parts.scheme == "http" and parts.netloc == "localhost:80", uri
    return parts.path


def live_uri(server_url: str, uri: str) -> str:
    """A URI the live server emitted, with its port: dicomweb-client sends ``Host`` without the port
    (``Host: 127.0.0.1``), and the server builds absolute URIs from the Host it is given."""
    host = urlsplit(server_url).hostname
    assert uri.startswith((f"http://{host}/", server_url + "/")), uri
    return server_url + "/" + uri.split("/", 3)[3]


def fetch_bulk(client: Any, uri: str) -> bytes:
    """A BulkDataURI's value, as a single part."""
    return client.get(local(uri), headers={"Accept": "application/octet-stream"}, status=200).body


def le_bytes(value: bytes, vr: str, big_endian: bool, bits: int | None = None) -> bytes:
    """A binary value as little-endian bytes (what uncompressed bulk data must be)."""
    if not big_endian or vr not in SWAP:
        return value
    dtype = f"u{bits // 8}" if bits in (32, 64) else SWAP[vr]
    usable = len(value) - len(value) % int(dtype[1:])
    return np.frombuffer(value[:usable], dtype=">" + dtype).astype("<" + dtype).tobytes() + value[usable:]


def _same_value(a: Any, b: Any) -> bool:
    if a in (None, "", b"") and b in (None, "", b""):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(float(a), float(b), rel_tol=1e-12)
    return str(a).strip(" \x00") == str(b).strip(" \x00")


def assert_equivalent(got: Dataset, original: Dataset, big_endian: bool, where: str = "") -> None:
    """Every attribute of ``original`` is in ``got`` with the same value (binary ones little endian)."""
    for elem in original:
        if elem.tag.element == 0 or elem.tag == 0xFFFCFFFC:
            continue
        name = f"{where}{elem.tag}"
        assert elem.tag in got, f"{name} {elem.keyword} missing"
        other = got[elem.tag]
        if elem.VR == "SQ":
            assert len(other.value) == len(elem.value), name
            for index, (x, y) in enumerate(zip(other.value, elem.value)):
                assert_equivalent(x, y, big_endian, f"{name}/{index}/")
            continue
        if elem.VR in BINARY_VRS or " or " in elem.VR:
            if elem.tag == 0x7FE00010 and elem.is_undefined_length:
                continue  # encapsulated frames: test_pixeldata / test_bulkdata compare them
            if isinstance(elem.value, (bytes, bytearray)):
                bits = original.get("BitsAllocated") if elem.tag == 0x7FE00010 else None
                assert bytes(other.value) == le_bytes(bytes(elem.value), str(other.VR), big_endian, bits), name
                continue
        values = list(elem.value) if elem.VM > 1 else [elem.value]
        others = list(other.value) if other.VM > 1 else [other.value]
        assert len(values) == len(others), name
        for x, y in zip(others, values):
            assert _same_value(x, y), f"{name} {elem.keyword}: {x!r} != {y!r}"


def from_json(client: Any, obj: dict) -> Dataset:
    """pydicom's reading of a DICOM JSON object, every BulkDataURI fetched through HTTP."""
    return Dataset.from_json(obj, bulk_data_uri_handler=lambda tag, vr, uri: _bulk_or_empty(client, tag, uri))


def _bulk_or_empty(client: Any, tag: str, uri: str) -> bytes:
    if tag.upper() == "7FE00010":
        resp = client.get(local(uri), status=200)
        parts = parse_multipart(resp.headers["Content-Type"], resp.body)
        if len(parts) > 1 or not parts[0][0]["Content-Type"].startswith("application/octet-stream"):
            return b""  # frames of encapsulated data: compared in test_bulkdata
        return parts[0][1]
    return fetch_bulk(client, uri)


@pytest.mark.parametrize("name", ATTRIBUTE_FILES)
def test_metadata_instance_matches_stored_file_attribute_by_attribute(dicomweb_app, dicomweb_client, name):
    ds = store_file(dicomweb_client, name)
    resp = dicomweb_client.get(instance_url(ds) + "/metadata", status=200)
    assert resp.headers["Content-Type"] == "application/dicom+json"
    objects = resp.json
    assert len(objects) == 1
    assert not [key for key in objects[0] if key.startswith("0002")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = from_json(dicomweb_client, objects[0])
        original = stored_dataset(dicomweb_app, ds)
        assert_equivalent(got, original, ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2")


def test_metadata_nested_bulkdata_uri_resolves_to_the_nested_value(dicomweb_client):
    ds = store_file(dicomweb_client, "waveform_ecg.dcm")
    obj = dicomweb_client.get(instance_url(ds) + "/metadata", status=200).json[0]
    uri = obj["54000100"]["Value"][0]["54001010"]["BulkDataURI"]
    assert uri.endswith("/bulkdata/54000100/0/54001010")
    assert fetch_bulk(dicomweb_client, uri) == ds.WaveformSequence[0].WaveformData


def test_metadata_study_is_the_stored_json_concatenated_byte_for_byte(dicomweb_app, dicomweb_client):
    study, series = new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study, series_uid=series, InstanceNumber=i) for i in (3, 1, 2)]
    store(dicomweb_client, datasets)
    resp = dicomweb_client.get(f"/studies/{study}/metadata", status=200)
    stored = dicomweb_app.archive.metadata(study)
    expected = "[" + ",".join(stored) + "]"
    assert resp.body == expected.replace("%%BASE%%", "http://localhost:80").encode()
    assert [o["00200013"]["Value"][0] for o in resp.json] == [1, 2, 3]
    assert int(resp.headers["Content-Length"]) == len(resp.body)


def test_metadata_series_returns_only_that_series(dicomweb_client):
    study, s1, s2 = new_uid(), new_uid(), new_uid()
    store(dicomweb_client, [make_dataset(study_uid=study, series_uid=s1),
                            make_dataset(study_uid=study, series_uid=s2, SeriesNumber=2)])
    got = dicomweb_client.get(f"/studies/{study}/series/{s2}/metadata", status=200).json
    assert [o["0020000E"]["Value"][0] for o in got] == [s2]
    assert len(dicomweb_client.get(f"/studies/{study}/metadata", status=200).json) == 2


def test_metadata_person_name_has_alphabetic_ideographic_phonetic_groups(dicomweb_client):
    ds = make_dataset(SpecificCharacterSet="ISO_IR 192", PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう")
    store(dicomweb_client, [ds])
    obj = dicomweb_client.get(instance_url(ds) + "/metadata", status=200).json[0]
    assert obj["00100010"] == {"vr": "PN", "Value": [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}]}
    assert obj["00280010"] == {"vr": "US", "Value": [16]}


def test_metadata_bulkdata_uri_follows_host_and_public_url(tmp_path):
    import webtest

    public = {"public_url": "https://web.example/dicomweb/"}
    for settings, host, base in (({}, "pacs.example:8042", "http://pacs.example:8042"),
                                 (public, "ignored", "https://web.example/dicomweb")):
        app = make_app({"data_dir": str(tmp_path / base.split(":")[0]), "fsync": "false", **settings})
        try:
            client = webtest.TestApp(app, lint=True)
            ds = make_dataset()
            store(client, [ds])
            obj = client.get(instance_url(ds) + "/metadata", headers={"Host": host}, status=200).json[0]
            assert obj["7FE00010"]["BulkDataURI"] == base + instance_url(ds) + "/bulkdata/7FE00010"
        finally:
            app.close()


def test_metadata_etag_if_none_match_returns_304_until_the_study_changes(dicomweb_client):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    url = f"/studies/{ds.StudyInstanceUID}/metadata"
    first = dicomweb_client.get(url, status=200)
    etag = first.headers["ETag"]
    assert etag.startswith('W/"')
    not_modified = dicomweb_client.get(url, headers={"If-None-Match": etag}, status=304)
    assert not_modified.body == b"" and not_modified.headers["ETag"] == etag
    dicomweb_client.get(url, headers={"If-None-Match": '"other", ' + etag.removeprefix("W/")}, status=304)
    store(dicomweb_client, [make_dataset(study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID)])
    changed = dicomweb_client.get(url, headers={"If-None-Match": etag}, status=200)
    assert changed.headers["ETag"] != etag and len(changed.json) == 2
    xml = dicomweb_client.get(url, headers={"Accept": "multipart/related; type=application/dicom+xml"}, status=200)
    assert xml.headers["ETag"] != changed.headers["ETag"]


@pytest.mark.parametrize("accept_encoding, gzipped", [
    ("gzip", True), ("deflate, gzip;q=0.5", True), ("*", True), ("gzip;q=0", False), ("identity", False),
    ("", False)])
def test_metadata_gzip_only_when_accepted(dicomweb_app, dicomweb_client, accept_encoding, gzipped):
    from webob import Request as RawRequest  # webtest would decode the gzip body itself

    ds = make_dataset()
    store(dicomweb_client, [ds])
    headers = {"Accept-Encoding": accept_encoding} if accept_encoding else {}
    resp = RawRequest.blank(f"/studies/{ds.StudyInstanceUID}/metadata", headers=headers).get_response(dicomweb_app)
    assert resp.status_code == 200
    assert (resp.headers.get("Content-Encoding") == "gzip") is gzipped
    body = gzip.decompress(resp.body) if gzipped else resp.body
    assert json.loads(body)[0]["00080018"]["Value"] == [ds.SOPInstanceUID]


def test_metadata_xml_is_one_native_dicom_model_part_per_instance(dicomweb_client):
    study, series = new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study, series_uid=series, InstanceNumber=i) for i in (1, 2)]
    store(dicomweb_client, datasets)
    as_json = dicomweb_client.get(f"/studies/{study}/metadata", status=200).json
    resp = dicomweb_client.get(f"/studies/{study}/series/{series}/metadata",
                               headers={"Accept": 'multipart/related; type="application/dicom+xml"'}, status=200)
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/dicom+xml"; boundary=')
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert len(parts) == 2
    for (headers, body), obj in zip(parts, as_json):
        assert headers["Content-Type"] == "application/dicom+xml"
        root = ET.fromstring(body)
        assert root.tag == XML_NS + "NativeDicomModel"
        attrs = {a.get("tag"): a for a in root.findall(XML_NS + "DicomAttribute")}
        assert not [tag for tag in attrs if tag.startswith("0002")]
        assert attrs["00080018"].find(XML_NS + "Value").text == obj["00080018"]["Value"][0]
        name = attrs["00100010"].find(f"{XML_NS}PersonName/{XML_NS}Alphabetic")
        assert name.find(XML_NS + "FamilyName").text == "Doe" and name.find(XML_NS + "GivenName").text == "John"
        assert attrs["7FE00010"].find(XML_NS + "BulkData").get("uri") == obj["7FE00010"]["BulkDataURI"]
        assert attrs["00280010"].get("keyword") == "Rows" and attrs["00280010"].get("vr") == "US"


@pytest.mark.parametrize("path", ["/studies/1.2.3/metadata", "/studies/1.2.3/series/4.5/metadata",
                                  "/studies/1.2.3/series/4.5/instances/6.7/metadata"])
def test_metadata_unknown_resource_returns_404(dicomweb_client, path):
    assert "not found" in dicomweb_client.get(path, status=404).text


@pytest.mark.parametrize("accept", ["application/dicom", "application/dicom+xml", "image/jpeg"])
def test_metadata_unacceptable_media_type_returns_406(dicomweb_client, accept):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    dicomweb_client.get(instance_url(ds) + "/metadata", headers={"Accept": accept}, status=406)


def test_metadata_dicomweb_client_against_live_server(tmp_path):
    dicomweb_client = pytest.importorskip("dicomweb_client")
    study, series = new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study, series_uid=series, InstanceNumber=i, pixel_seed=i) for i in (1, 2)]
    with ServerProcess(str(tmp_path / "data")) as server:
        client = dicomweb_client.DICOMwebClient(server.url)
        client.store_instances(datasets)
        study_md = client.retrieve_study_metadata(study)
        series_md = client.retrieve_series_metadata(study, series)
        one = client.retrieve_instance_metadata(study, series, datasets[1].SOPInstanceUID)
        assert study_md == series_md and len(study_md) == 2
        assert one["00080018"]["Value"] == [datasets[1].SOPInstanceUID]
        uri = live_uri(server.url, one["7FE00010"]["BulkDataURI"])
        assert client.retrieve_bulkdata(uri) == [datasets[1].PixelData]
        loaded = Dataset.from_json(
            one, bulk_data_uri_handler=lambda uri: bytes(client.retrieve_bulkdata(live_uri(server.url, uri))[0]))
        assert_equivalent(loaded, datasets[1], big_endian=False)
