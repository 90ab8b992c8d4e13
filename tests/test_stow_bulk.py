"""STOW-RS of metadata + bulk data (JSON and XML) through HTTP, checked against the PS3.10 originals.

The metadata is made by pydicom's own ``Dataset.to_json_dict`` (an encoder independent of the
server's), the bodies by hand, and the stored result is read back through WADO-RS.
"""
from __future__ import annotations

import io
import json
import os
import struct
import sys
import tempfile

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames

from dicomweb_wsgi import dicomjson
from dicomweb_wsgi.transactions import stow_bulk
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, read_dataset

BOUNDARY = "stow-bulk-7c1e"
JSON_TYPE = f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}'
XML_TYPE = f'multipart/related; type="application/dicom+xml"; boundary={BOUNDARY}'
PIXEL_DESCRIPTION = ("00280002", "00280004", "00280006", "00280008", "00280010", "00280011", "00280100",
                     "00280101", "00280102", "00280103")


def _body(parts: list[tuple[dict[str, str], bytes]]) -> bytes:
    out = b""
    for headers, data in parts:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        out += f"--{BOUNDARY}\r\n{head}\r\n".encode() + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def _metadata(ds: Dataset, bulk: dict[str, bytes], threshold: int = 256) -> dict:
    """pydicom's DICOM JSON of ``ds`` with every value over ``threshold`` bytes as a BulkDataURI."""
    def handler(elem) -> str:
        uri = f"https://client.example/bulk/{ds.SOPInstanceUID}/{len(bulk)}"
        bulk[uri] = elem.value if isinstance(elem.value, bytes) else str(elem.value).encode()
        return uri
    return ds.to_json_dict(bulk_data_threshold=threshold, bulk_data_element_handler=handler)


def _octet_parts(bulk: dict[str, bytes]) -> list[tuple[dict[str, str], bytes]]:
    return [({"Content-Type": "application/octet-stream", "Content-Location": uri}, data)
            for uri, data in bulk.items()]


def _post(client, body: bytes, content_type: str = JSON_TYPE, status: int = 200, url: str = "/studies"):
    return client.post(url, body, headers={"Content-Type": content_type}, status=status)


def _retrieve(client, ds: Dataset, syntax: str = "*") -> Dataset:
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    resp = client.get(url, headers={"Accept": f"application/dicom; transfer-syntax={syntax}"}, status=200)
    return pydicom.dcmread(io.BytesIO(resp.body))


def _without_meta(ds: Dataset) -> dict:
    return {k: v for k, v in ds.to_json_dict(bulk_data_threshold=1 << 30).items() if not k.startswith("0002")}


def _assert_same(got: Dataset, original: Dataset) -> None:
    """Every data element (group 0002 aside) and the pixels equal the original."""
    assert _without_meta(got) == _without_meta(original)
    if "PixelData" in original:
        assert np.array_equal(got.pixel_array, original.pixel_array)


def _original(name: str) -> Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def _spool_is_empty(app) -> bool:
    return os.listdir(app.archive.blobs.spool_dir) == []


# -- JSON + octet-stream ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "examples_overlay.dcm"])
def test_stow_json_bulk_round_trip_equals_ps310_original(dicomweb_client, dicomweb_app, name):
    original = _original(name)
    bulk: dict[str, bytes] = {}
    meta = _metadata(original, bulk)
    assert meta["7FE00010"]["BulkDataURI"] in bulk
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode())] + _octet_parts(bulk))
    resp = _post(dicomweb_client, body)
    assert resp.json["00081199"]["Value"][0]["00081155"]["Value"] == [original.SOPInstanceUID]
    got = _retrieve(dicomweb_client, original)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    _assert_same(got, original)
    assert _spool_is_empty(dicomweb_app)


def test_stow_json_nested_bulk_data_in_sequence_items_resolved(dicomweb_client):
    ds = read_dataset(dataset_bytes(make_dataset()))
    item = Dataset()
    item.EncapsulatedDocument = bytes(range(256)) * 8
    item.MIMETypeOfEncapsulatedDocument = "application/octet-stream"
    ds.ContentSequence = [item]
    original = read_dataset(dataset_bytes(ds))
    bulk: dict[str, bytes] = {}
    meta = _metadata(original, bulk)
    assert "BulkDataURI" in meta["0040A730"]["Value"][0]["00420011"]
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps(meta).encode())] + _octet_parts(bulk))
    _post(dicomweb_client, body)
    _assert_same(_retrieve(dicomweb_client, original), original)


def test_stow_json_array_of_several_instances_with_one_missing_bulk_part_is_202(dicomweb_client, dicomweb_app):
    study = new_uid()
    good, bad = (read_dataset(dataset_bytes(make_dataset(study_uid=study, pixel_seed=n))) for n in (1, 2))
    bulk: dict[str, bytes] = {}
    metas = [_metadata(good, bulk), _metadata(bad, {})]  # bad's Pixel Data part is never sent
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps(metas).encode())] + _octet_parts(bulk))
    resp = _post(dicomweb_client, body, status=202)
    failed = resp.json["00081198"]["Value"]
    assert [f["00081155"]["Value"] for f in failed] == [[bad.SOPInstanceUID]]
    assert failed[0]["00081197"]["Value"] == [0xC000]
    assert "BulkDataURI" in resp.headers["Warning"]
    _assert_same(_retrieve(dicomweb_client, good), good)
    assert _spool_is_empty(dicomweb_app)


def test_stow_json_to_other_study_is_409(dicomweb_client):
    ds = read_dataset(dataset_bytes(make_dataset()))
    bulk: dict[str, bytes] = {}
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([_metadata(ds, bulk)]).encode())]
                 + _octet_parts(bulk))
    resp = _post(dicomweb_client, body, status=409, url=f"/studies/{new_uid()}")
    assert resp.json["00081198"]["Value"][0]["00081155"]["Value"] == [ds.SOPInstanceUID]


def _post_one_coerced(client, metas: list[dict], coerced: str, plain: str):
    """POST the metadata; only ``coerced`` carries Warning Reason 0xB000 and the answer is 202."""
    resp = _post(client, _body([({"Content-Type": "application/dicom+json"}, json.dumps(metas).encode())]),
                 status=202)  # PS3.18 §10.5.3: stored, with a warning
    items = {i["00081155"]["Value"][0]: i for i in resp.json["00081199"]["Value"]}
    assert items[coerced]["00081196"]["Value"] == [0xB000]  # Coercion of Data Elements
    assert "00081196" not in items[plain]
    return resp


def test_stow_json_non_latin_text_stored_as_utf8_with_the_coercion_recorded_and_reported(dicomweb_client):
    ds = read_dataset(dataset_bytes(make_dataset(SpecificCharacterSet="ISO_IR 100")))
    ds.PatientName = "Wang^XiaoDong=王^小東"  # not in the declared ISO_IR 100
    plain = read_dataset(dataset_bytes(make_dataset(SpecificCharacterSet="ISO_IR 100")))
    metas = [d.to_json_dict(bulk_data_threshold=1 << 30) for d in (ds, plain)]
    resp = _post_one_coerced(dicomweb_client, metas, ds.SOPInstanceUID, plain.SOPInstanceUID)
    assert "ISO_IR 100" in resp.headers["Warning"]
    got = _retrieve(dicomweb_client, ds)
    assert got.SpecificCharacterSet == "ISO_IR 192"
    assert str(got.PatientName) == "Wang^XiaoDong=王^小東"
    assert np.array_equal(got.pixel_array, ds.pixel_array)
    (record,) = got.OriginalAttributesSequence  # the value it replaced (PS3.3 C.12.1.1.9)
    assert record.ModifiedAttributesSequence[0].SpecificCharacterSet == "ISO_IR 100"
    assert record.ReasonForTheAttributeModification == "COERCE" and record.ModifyingSystem == "dicomweb_wsgi"
    assert "OriginalAttributesSequence" not in _retrieve(dicomweb_client, plain)


@pytest.mark.parametrize("declared", [None, "ISO_IR 6"])
def test_stow_json_non_ascii_text_without_a_character_set_is_stored_as_utf8(dicomweb_client, declared):
    # PS3.5 6.1.2.1: the default repertoire is ASCII; an 'é' there needs a declared character set.
    ds, plain = (read_dataset(dataset_bytes(make_dataset())) for _ in range(2))
    metas = [d.to_json_dict(bulk_data_threshold=1 << 30) for d in (ds, plain)]
    for meta in metas:
        meta.pop("00080005", None)
        if declared:
            meta["00080005"] = {"vr": "CS", "Value": [declared]}
    metas[0]["00100010"] = {"vr": "PN", "Value": [{"Alphabetic": "Müller^José"}]}
    _post_one_coerced(dicomweb_client, metas, ds.SOPInstanceUID, plain.SOPInstanceUID)
    got = _retrieve(dicomweb_client, ds)
    assert got.SpecificCharacterSet == "ISO_IR 192" and str(got.PatientName) == "Müller^José"
    assert _retrieve(dicomweb_client, plain).get("SpecificCharacterSet", "") in ("", "ISO_IR 6")  # ASCII: kept


@pytest.mark.parametrize("charset, tag, attr", [
    (["ISO 2022 IR 100"], "00100020", {"vr": "LO", "Value": ["\u03a9mega"]}),  # Greek is not in Latin-1
    ([None, "ISO 2022 IR 87"], "00100010", {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Taro",
                                                                    "Ideographic": "\u5c71\u7530^\U0001F600"}]}),
])
def test_stow_json_iso2022_text_the_set_cannot_carry_stored_as_utf8_with_the_coercion_reported(
        dicomweb_client, charset, tag, attr):
    study = new_uid()
    coerced, plain = (read_dataset(dataset_bytes(make_dataset(study_uid=study))) for _ in range(2))
    metas = [d.to_json_dict(bulk_data_threshold=1 << 30) for d in (coerced, plain)]
    metas[0].update({"00080005": {"vr": "CS", "Value": charset}, tag: attr})
    carried = {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou", "Ideographic": "\u5c71\u7530^\u592a\u90ce"}]}
    metas[1].update({"00080005": {"vr": "CS", "Value": [None, "ISO 2022 IR 87"]}, "00100010": carried})
    resp = _post_one_coerced(dicomweb_client, metas, coerced.SOPInstanceUID, plain.SOPInstanceUID)
    assert "ISO 2022 IR" in resp.headers["Warning"]
    got = _retrieve(dicomweb_client, coerced)
    assert got.SpecificCharacterSet == "ISO_IR 192"
    assert dicomjson.dataset_to_json(got, bulk_prefix=None)[0][tag] == attr  # not "?"
    (record,) = got.OriginalAttributesSequence  # the value it replaced (PS3.3 C.12.1.1.9)
    original = record.ModifiedAttributesSequence[0].SpecificCharacterSet
    assert "\\".join([original] if isinstance(original, str) else original) == "\\".join(c or "" for c in charset)
    kept = _retrieve(dicomweb_client, plain)  # ISO 2022 IR 87 carries these kanji: left as sent
    assert kept.SpecificCharacterSet == ["", "ISO 2022 IR 87"] and "OriginalAttributesSequence" not in kept
    assert dicomjson.dataset_to_json(kept, bulk_prefix=None)[0]["00100010"] == carried


def test_stow_json_content_id_reference_resolved(dicomweb_client):
    original = read_dataset(dataset_bytes(make_dataset()))
    meta = original.to_json_dict(bulk_data_threshold=1 << 30)
    meta["7FE00010"] = {"vr": "OW", "BulkDataURI": "cid:pixels@client"}
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode()),
                  ({"Content-Type": "application/octet-stream", "Content-ID": "<pixels@client>"},
                   original.PixelData)])
    _post(dicomweb_client, body)
    _assert_same(_retrieve(dicomweb_client, original), original)


@pytest.mark.parametrize("content_type", [JSON_TYPE, XML_TYPE])
@pytest.mark.parametrize("tag, attr, reason", [
    ("00189089", {"vr": "FL", "Value": [1e300]}, "out of range"),  # beyond the 32-bit float range
    ("00200013", {"vr": "IS", "Value": [2 ** 31]}, "out of range"),  # PS3.5 Table 6.2-1: -2^31 .. 2^31-1
    ("00100020", {"vr": "LO", "Value": ["a\\b"]}, "delimiter"),  # one value would become two
    ("00100010", {"vr": "PN", "Value": [{"Alphabetic": "A=B^C"}]}, "delimiter"),  # ... or two groups
])
def test_stow_value_dicom_cannot_encode_fails_only_that_instance_with_c000(dicomweb_client, dicomweb_app,
                                                                          content_type, tag, attr, reason):
    study = new_uid()
    good, bad = (read_dataset(dataset_bytes(make_dataset(study_uid=study))) for _ in range(2))
    metas = [d.to_json_dict(bulk_data_threshold=1 << 30) for d in (good, bad)]
    metas[1][tag] = attr
    if content_type == JSON_TYPE:
        parts = [({"Content-Type": "application/dicom+json"}, json.dumps(metas).encode())]
    else:
        parts = [({"Content-Type": "application/dicom+xml"}, dicomjson.json_to_xml(m)) for m in metas]
    resp = _post(dicomweb_client, _body(parts), content_type=content_type, status=202)
    (failed,) = resp.json["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [bad.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xC000]  # not 0xA700 Out of Resources: the client's value is bad
    warning = resp.headers["Warning"]
    assert f"attribute {tag}" in warning and reason in warning
    assert [i["00081155"]["Value"] for i in resp.json["00081199"]["Value"]] == [[good.SOPInstanceUID]]
    _assert_same(_retrieve(dicomweb_client, good), good)
    assert _spool_is_empty(dicomweb_app)


def test_stow_json_ds_integer_number_longer_than_16_characters_stored_within_16_bytes(dicomweb_client):
    ds = read_dataset(dataset_bytes(make_dataset()))
    meta = ds.to_json_dict(bulk_data_threshold=1 << 30)
    meta["00101030"] = {"vr": "DS", "Value": [12345678901234567]}
    _post(dicomweb_client, _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode())]))
    value = _retrieve(dicomweb_client, ds).get_item(0x00101030).value  # the bytes as stored
    assert len(value.strip()) <= 16  # PS3.5 Table 6.2-1
    assert float(value) == pytest.approx(12345678901234567)


def _full_disk_for_built_instances(real_mkstemp):
    """mkstemp whose files for the instances stow_bulk builds (not the request's parts) write to
    /dev/full: every write fails with ENOSPC."""
    def mkstemp(*args, **kwargs):
        fd, path = real_mkstemp(*args, **kwargs)
        if sys._getframe(1).f_code is stow_bulk._write_instance.__code__:
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path
    return mkstemp


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_stow_json_encoding_error_is_c000_and_only_a_failing_write_is_a700(dicomweb_client, dicomweb_app,
                                                                          monkeypatch):
    # a JPEG frame header with 0 bits per sample: High Bit becomes -1, which pydicom cannot write as US
    ds = read_dataset(dataset_bytes(make_dataset()))
    meta = ds.to_json_dict(bulk_data_threshold=1 << 30)
    for tag in PIXEL_DESCRIPTION:
        meta.pop(tag, None)
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://client.example/p"}
    jpeg = b"\xff\xd8\xff\xc0" + struct.pack(">HBHHB", 11, 0, 8, 8, 1) + b"\x01\x11\x00\xff\xd9"
    pixels = {"Content-Type": "image/jpeg", "Content-Location": "https://client.example/p"}
    resp = _post(dicomweb_client, _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode()),
                                         (pixels, jpeg)]), status=409)
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert "cannot encode the instance" in resp.headers["Warning"] and "Traceback" not in resp.headers["Warning"]
    # a full disk while the instance is written is Out of Resources (PS3.18 §10.5.3)
    monkeypatch.setattr(tempfile, "mkstemp", _full_disk_for_built_instances(tempfile.mkstemp))
    good = read_dataset(dataset_bytes(make_dataset(rows=128, columns=128)))  # larger than the write buffer
    bulk: dict[str, bytes] = {}
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([_metadata(good, bulk)]).encode())]
                 + _octet_parts(bulk))
    resp = _post(dicomweb_client, body, status=503)
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    assert "no space left on device" in resp.headers["Warning"].lower()
    assert _spool_is_empty(dicomweb_app)


# -- compressed pixel data parts -------------------------------------------------------------------

@pytest.mark.parametrize("name, media_type, syntax, keep", [
    ("SC_rgb_jpeg_dcmtk.dcm", "image/jpeg", "1.2.840.10008.1.2.4.50", ()),
    ("JPGExtended.dcm", "image/jpeg", "1.2.840.10008.1.2.4.51", ("00280004",)),
    ("SC_rgb_jpeg_gdcm.dcm", "image/jpeg", "1.2.840.10008.1.2.4.70", ()),
    ("MR_small_jpeg_ls_lossless.dcm", "image/jls", "1.2.840.10008.1.2.4.80", ("00280103",)),
    ("JPEGLSNearLossless_16.dcm", "image/jls", "1.2.840.10008.1.2.4.81", ()),
    ("MR_small_jp2klossless.dcm", "image/jp2", "1.2.840.10008.1.2.4.90", ()),
    ("JPEG2000.dcm", "image/jp2", "1.2.840.10008.1.2.4.91", ()),
])
def test_stow_compressed_pixel_part_encapsulated_with_derived_description(dicomweb_client, name, media_type,
                                                                         syntax, keep):
    original = _original(name)
    original.StudyInstanceUID, original.SeriesInstanceUID = new_uid(), new_uid()  # some files have bad UIDs
    frame = next(generate_frames(original.PixelData, number_of_frames=1))
    meta = original.to_json_dict(bulk_data_threshold=1 << 30)
    for tag in PIXEL_DESCRIPTION:
        if tag not in keep:
            meta.pop(tag, None)
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://client.example/pixels"}
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode()),
                  ({"Content-Type": media_type, "Content-Location": "https://client.example/pixels"}, frame)])
    _post(dicomweb_client, body)
    got = _retrieve(dicomweb_client, original)
    assert got.file_meta.TransferSyntaxUID == syntax
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "BitsAllocated", "BitsStored", "PixelRepresentation",
                    "PhotometricInterpretation"):
        assert got[keyword].value == original[keyword].value, keyword
    assert next(generate_frames(got.PixelData, number_of_frames=1)) == frame
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_stow_compressed_multiframe_parts_by_frame_location(dicomweb_client):
    original = _original("examples_ybr_color.dcm")
    frames = list(generate_frames(original.PixelData, number_of_frames=30))
    meta = original.to_json_dict(bulk_data_threshold=1 << 30)
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://client.example/px"}
    bulk = [({"Content-Type": "image/jpeg", "Content-Location": f"https://client.example/px/frames/{n}"},
             frames[n - 1]) for n in reversed(range(1, 31))]
    _post(dicomweb_client, _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode())]
                                 + bulk))
    got = _retrieve(dicomweb_client, original)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert list(generate_frames(got.PixelData, number_of_frames=30)) == frames
    _assert_same(got, original)


def test_stow_rle_part_with_description_in_metadata(dicomweb_client):
    original = _original("MR_small_RLE.dcm")
    frame = next(generate_frames(original.PixelData, number_of_frames=1))
    meta = original.to_json_dict(bulk_data_threshold=1 << 30)
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://client.example/rle"}
    pixels = {"Content-Type": "image/dicom-rle", "Content-Location": "https://client.example/rle"}
    _post(dicomweb_client, _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode()),
                                  (pixels, frame)]))
    got = _retrieve(dicomweb_client, original)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.5"
    _assert_same(got, original)


@pytest.mark.parametrize("media_type, reason", [("image/png", "image/png"),
                                                ("image/jpeg; transfer-syntax=1.2.840.10008.1.2.5", "does not match")])
def test_stow_unusable_pixel_part_fails_that_instance(dicomweb_client, media_type, reason):
    original = _original("SC_rgb_jpeg_dcmtk.dcm")
    meta = original.to_json_dict(bulk_data_threshold=1 << 30)
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://client.example/p"}
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode()),
                  ({"Content-Type": media_type, "Content-Location": "https://client.example/p"}, b"\x89PNG....")])
    resp = _post(dicomweb_client, body, status=409)
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert reason in resp.headers["Warning"]


def test_stow_frame_count_mismatch_fails_that_instance(dicomweb_client):
    original = _original("examples_ybr_color.dcm")
    frames = list(generate_frames(original.PixelData, number_of_frames=30))
    meta = original.to_json_dict(bulk_data_threshold=1 << 30)
    meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://client.example/px"}
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode()),
                  ({"Content-Type": "image/jpeg", "Content-Location": "https://client.example/px"}, frames[0])])
    resp = _post(dicomweb_client, body, status=409)
    assert "NumberOfFrames is 30" in resp.headers["Warning"]


# -- XML -------------------------------------------------------------------------------------------

def test_stow_xml_parts_with_bulk_round_trip(dicomweb_client):
    study = new_uid()
    originals = [read_dataset(dataset_bytes(make_dataset(study_uid=study, pixel_seed=n, InstanceNumber=n)))
                 for n in (1, 2)]
    bulk: dict[str, bytes] = {}
    parts = [({"Content-Type": "application/dicom+xml"}, dicomjson.json_to_xml(_metadata(ds, bulk)))
             for ds in originals]
    assert b"<BulkData uri=" in parts[0][1]
    resp = _post(dicomweb_client, _body(parts + _octet_parts(bulk)), content_type=XML_TYPE)
    assert len(resp.json["00081199"]["Value"]) == 2
    for original in originals:
        _assert_same(_retrieve(dicomweb_client, original, "1.2.840.10008.1.2.1"), original)


def test_stow_xml_with_entity_declaration_is_400(dicomweb_client, dicomweb_app):
    xml = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]>'
           b'<NativeDicomModel xmlns="http://dicom.nema.org/PS3.19/models/NativeDICOM">&a;</NativeDicomModel>')
    resp = _post(dicomweb_client, _body([({"Content-Type": "application/dicom+xml"}, xml)]),
                 content_type=XML_TYPE, status=400)
    assert "DTD" in resp.text
    assert _spool_is_empty(dicomweb_app)


def _xml_with(ds: Dataset, attribute: bytes) -> bytes:
    """The PS3.19 XML of ``ds`` with one more DicomAttribute (given as XML text) at its end."""
    xml = dicomjson.json_to_xml(ds.to_json_dict(bulk_data_threshold=1 << 30))
    return xml.replace(b"</NativeDicomModel>", attribute + b"</NativeDicomModel>")


@pytest.mark.parametrize("attribute, reason", [
    (b'<DicomAttribute tag="00181310" vr="US"><Value number="1">x</Value></DicomAttribute>', "not an integer"),
    (b'<DicomAttribute tag="00189087" vr="FD"><Value number="1">abc</Value></DicomAttribute>', "not a number"),
    (b'<DicomAttribute tag="00209165" vr="AT"><Value number="1">0010</Value></DicomAttribute>', "8-hex"),
    (b'<DicomAttribute tag="0010" vr="LT"><Value number="1">x</Value></DicomAttribute>', "8-hex"),
    (b'<DicomAttribute keyword="PatientComments" vr="LT"><Value number="1">x</Value></DicomAttribute>', "8-hex"),
    (b'<DicomAttribute tag="00104000" vr="XX"/>', "unknown vr"),
    (b'<DicomAttribute tag="00081140" vr="SQ"><Value number="1">x</Value></DicomAttribute>', "not allowed"),
    (b'<DicomAttribute tag="00420011" vr="OB"><InlineBinary>!not base64!</InlineBinary></DicomAttribute>',
     "base64"),
    # PS3.19 keeps the components apart; PS3.5 6.2.1 has no way to put a caret inside one
    (b'<DicomAttribute tag="00081070" vr="PN"><PersonName number="1"><Alphabetic><FamilyName>Smith^Jr'
     b'</FamilyName></Alphabetic></PersonName></DicomAttribute>', "delimiter '^'"),
])
def test_stow_xml_unreadable_attribute_fails_only_that_instance_with_c000(dicomweb_client, dicomweb_app,
                                                                        attribute, reason):
    study = new_uid()
    good, bad = (read_dataset(dataset_bytes(make_dataset(study_uid=study))) for _ in range(2))
    parts = [({"Content-Type": "application/dicom+xml"}, dicomjson.json_to_xml(good.to_json_dict())),
             ({"Content-Type": "application/dicom+xml"}, _xml_with(bad, attribute))]
    resp = _post(dicomweb_client, _body(parts), content_type=XML_TYPE, status=202)
    (failed,) = resp.json["00081198"]["Value"]
    assert failed["00081155"]["Value"] == [bad.SOPInstanceUID]
    assert failed["00081197"]["Value"] == [0xC000]
    assert reason in resp.headers["Warning"]
    assert [i["00081155"]["Value"] for i in resp.json["00081199"]["Value"]] == [[good.SOPInstanceUID]]
    _assert_same(_retrieve(dicomweb_client, good), good)
    assert _spool_is_empty(dicomweb_app)


def test_stow_xml_part_with_unreadable_sop_instance_uid_fails_unnamed_like_json(dicomweb_client, dicomweb_app):
    good, bad = (read_dataset(dataset_bytes(make_dataset())) for _ in range(2))
    xml = dicomjson.json_to_xml(bad.to_json_dict()).replace(b'tag="00080018" vr="UI"', b'tag="00080018" vr="U1"')
    parts = [({"Content-Type": "application/dicom+xml"}, xml),
             ({"Content-Type": "application/dicom+xml"}, dicomjson.json_to_xml(good.to_json_dict()))]
    resp = _post(dicomweb_client, _body(parts), content_type=XML_TYPE, status=202)
    (failed,) = resp.json["00081198"]["Value"]
    assert "Value" not in failed["00081155"]  # empty, as for a JSON instance without a SOP Instance UID
    assert failed["00081150"]["Value"] == [bad.SOPClassUID]
    assert failed["00081197"]["Value"] == [0xC000]
    assert "unknown vr" in resp.headers["Warning"]
    _assert_same(_retrieve(dicomweb_client, good), good)
    assert _spool_is_empty(dicomweb_app)


@pytest.mark.parametrize("document, reason", [
    (b"<NativeDicomModel><DicomAttribute", "malformed XML"),  # as a part that is not JSON
    (b"<Other/>", "not NativeDicomModel"),  # as JSON that is not an array of objects
])
def test_stow_xml_part_not_a_native_dicom_model_document_is_400(dicomweb_client, dicomweb_app, document, reason):
    good = read_dataset(dataset_bytes(make_dataset()))
    parts = [({"Content-Type": "application/dicom+xml"}, dicomjson.json_to_xml(good.to_json_dict())),
             ({"Content-Type": "application/dicom+xml"}, document)]
    resp = _post(dicomweb_client, _body(parts), content_type=XML_TYPE, status=400)
    assert reason in resp.text
    assert _spool_is_empty(dicomweb_app)


# -- malformed requests ------------------------------------------------------------------------------

@pytest.mark.parametrize("parts, reason", [
    ([({"Content-Type": "application/dicom+json"}, b"[{not json")], "not valid DICOM JSON"),
    ([({"Content-Type": "application/dicom+json"}, b"[1, 2]")], "array of objects"),
    ([({"Content-Type": "application/octet-stream", "Content-Location": "x"}, b"\x00\x00")],
     "no application/dicom+json"),
    ([({"Content-Type": "application/dicom+json"}, b"[]"), ({"Content-Type": "application/octet-stream"}, b"12")],
     "Content-Location"),
])
def test_stow_json_malformed_request_is_400(dicomweb_client, dicomweb_app, parts, reason):
    resp = _post(dicomweb_client, _body(parts), status=400)
    assert reason in resp.text
    assert _spool_is_empty(dicomweb_app)


def test_stow_json_instance_without_sop_uids_fails(dicomweb_client):
    meta = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^Jane"}]}}
    resp = _post(dicomweb_client, _body([({"Content-Type": "application/dicom+json"}, json.dumps([meta]).encode())]),
                 status=409)
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]


def _good_and_jpeg_instance(**extra) -> tuple[Dataset, dict, Dataset, dict, bytes]:
    """An uncompressed instance with inline pixels, and a JPEG Baseline one whose Pixel Data is a part."""
    good = read_dataset(dataset_bytes(make_dataset()))
    bad = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    bad.StudyInstanceUID, bad.SeriesInstanceUID, bad.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    frame = next(generate_frames(bad.PixelData, number_of_frames=1))
    bad_meta = bad.to_json_dict(bulk_data_threshold=1 << 30)
    bad_meta["7FE00010"] = {"vr": "OB", "BulkDataURI": "https://client.example/pixels"}
    bad_meta.update(extra)
    return good, good.to_json_dict(bulk_data_threshold=1 << 30), bad, bad_meta, frame


def _stored_one_failed_other(resp, good: Dataset, bad: Dataset) -> dict:
    failed = resp.json["00081198"]["Value"]
    assert [f["00081155"]["Value"] for f in failed] == [[bad.SOPInstanceUID]]
    assert [r["00081155"]["Value"] for r in resp.json["00081199"]["Value"]] == [[good.SOPInstanceUID]]
    return failed[0]


@pytest.mark.parametrize("pixel_type", ["image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50",
                                        "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50"])
def test_unreadable_jpeg_part_with_transfer_syntax_fails_only_its_instance(dicomweb_client, pixel_type):
    # A value that cannot be read fails its instance (0xC000); the others are stored (PS3.18 Table 10.5.3-1).
    good, good_meta, bad, bad_meta, _ = _good_and_jpeg_instance()
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([good_meta, bad_meta]).encode()),
                  ({"Content-Type": pixel_type, "Content-Location": "https://client.example/pixels"},
                   b"not a JPEG codestream")])
    failed = _stored_one_failed_other(_post(dicomweb_client, body, status=202), good, bad)
    assert failed["00081197"]["Value"] == [0xC000]


@pytest.mark.parametrize("frames_value", [["abc"], ["1", "2"]])
def test_number_of_frames_not_one_integer_fails_its_instance_not_a_500(dicomweb_client, frames_value):
    good, good_meta, bad, bad_meta, frame = _good_and_jpeg_instance(
        **{"00280008": {"vr": "IS", "Value": frames_value}})
    body = _body([({"Content-Type": "application/dicom+json"}, json.dumps([good_meta, bad_meta]).encode()),
                  ({"Content-Type": "image/jpeg", "Content-Location": "https://client.example/pixels"}, frame)])
    failed = _stored_one_failed_other(_post(dicomweb_client, body, status=202), good, bad)
    assert failed["00081197"]["Value"] == [0xA900]
