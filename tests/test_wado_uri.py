"""WADO-URI (PS3.18 §9) through HTTP: every parameter, outputs decoded and checked against an
independent computation in the test."""
from __future__ import annotations

import io
import os
import urllib.request
from urllib.parse import urlencode

import numpy as np
import pydicom
import pytest
import webtest
from defusedxml import ElementTree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, features
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, store, stow_body

from .serverproc import ServerProcess
from .test_wado import _store_file

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
ROWS, COLUMNS = 16, 24


def wado_url(ds: Dataset, path: str = "/wado", **params: object) -> str:
    """A WADO-URI URL for ``ds`` with extra query parameters (None values left out)."""
    query = {"requestType": "WADO", "studyUID": ds.StudyInstanceUID,
             "seriesUID": ds.SeriesInstanceUID, "objectUID": ds.SOPInstanceUID}
    query.update({k: v for k, v in params.items() if v is not None})
    return f"{path}?{urlencode(query)}"


def decode(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 linear VOI onto 0..255, computed independently of the server."""
    x = np.asarray(x, dtype=np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    y = np.where(x <= center - 0.5 - (width - 1) / 2, 0, y)
    y = np.where(x > center - 0.5 + (width - 1) / 2, 255, y)
    return np.rint(y).astype(np.uint8)


def image(**attributes: object) -> Dataset:
    """A 16 x 24 16-bit CT image with a known window (values 0..4095)."""
    attributes.setdefault("WindowCenter", 2000)
    attributes.setdefault("WindowWidth", 3000)
    return make_dataset(rows=ROWS, columns=COLUMNS, **attributes)


PIXEL_MODULE = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                "SamplesPerPixel", "PhotometricInterpretation", "PixelData")


def non_image(**kwargs: object) -> Dataset:
    """``make_dataset`` without the Image Pixel module (reports, documents, presentation states)."""
    ds = make_dataset(**kwargs)
    for keyword in PIXEL_MODULE:
        del ds[keyword]
    return ds


@pytest.fixture
def ct(dicomweb_client):
    ds = image()
    store(dicomweb_client, [ds])
    return ds


def _stored_bytes(app, ds: Dataset) -> bytes:
    inst = app.archive.instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)[0]
    with open(app.archive.path(inst), "rb") as fh:
        return fh.read()


# -- required parameters ---------------------------------------------------------------------


def test_wado_uri_default_is_jpeg_with_jpeg_content_type(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct), status=200)
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.body[:3] == b"\xff\xd8\xff"  # really JPEG (Orthanc labels this image/png)
    assert decode(resp.body).shape == (ROWS, COLUMNS)


@pytest.mark.parametrize("drop", ["requestType", "studyUID", "seriesUID", "objectUID"])
def test_wado_uri_missing_required_parameter_is_400(dicomweb_client, ct, drop):
    url = wado_url(ct).replace(f"{drop}=", "x=")
    assert drop in dicomweb_client.get(url, status=400).text


@pytest.mark.parametrize("name,value", [("requestType", "WADO-RS"), ("studyUID", "1..2"),
                                        ("seriesUID", "abc"), ("objectUID", "1." + "2" * 70),
                                        ("objectUID", "")])
def test_wado_uri_malformed_parameter_is_400_naming_it(dicomweb_client, ct, name, value):
    url = wado_url(ct) + "&" + urlencode({name: value})
    resp = dicomweb_client.get(url.replace(f"{name}=", "_x=", 1), status=400)
    assert name in resp.text


def test_wado_uri_repeated_parameter_is_400(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, rows=8) + "&rows=9", status=400)
    assert "rows" in resp.text


@pytest.mark.parametrize("which", ["studyUID", "seriesUID", "objectUID"])
def test_wado_uri_unknown_uid_is_404(dicomweb_client, ct, which):
    url = wado_url(ct).replace(getattr(ct, {"studyUID": "StudyInstanceUID", "seriesUID": "SeriesInstanceUID",
                                             "objectUID": "SOPInstanceUID"}[which]), new_uid())
    dicomweb_client.get(url, status=404)


def test_wado_uri_path_is_configurable(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "data"), "fsync": "false", "wado_uri_path": "/pacs/wado"})
    try:
        client = webtest.TestApp(app, lint=True)
        ds = image()
        store(client, [ds])
        client.get(wado_url(ds, path="/pacs/wado"), status=200)
        client.get(wado_url(ds), status=404)
    finally:
        app.close()


# -- content type negotiation ------------------------------------------------------------------


@pytest.mark.parametrize("content_type,expected,magic", [
    ("image/png", "image/png", b"\x89PNG"),
    ("image/gif", "image/gif", b"GIF8"),
    ("image/jpeg", "image/jpeg", b"\xff\xd8\xff"),
    ("image/bmp, image/png", "image/png", b"\x89PNG"),
    ("image/png;q=0.4, image/gif;q=0.8", "image/gif", b"GIF8"),
    ("image/*", "image/jpeg", b"\xff\xd8\xff"),
    ("video/mpeg", "image/jpeg", b"\xff\xd8\xff"),  # PS3.18 §8.3.3.1: the category's default
])
def test_wado_uri_content_type_selects_real_type(dicomweb_client, ct, content_type, expected, magic):
    resp = dicomweb_client.get(wado_url(ct, contentType=content_type), status=200)
    assert resp.headers["Content-Type"] == expected
    assert resp.body.startswith(magic)


def test_wado_uri_jp2_is_jpeg_2000(dicomweb_client, ct):
    if not features.check("jpg_2000"):
        pytest.skip("no JPEG 2000 encoder")
    resp = dicomweb_client.get(wado_url(ct, contentType="image/jp2"), status=200)
    assert resp.headers["Content-Type"] == "image/jp2"
    assert resp.body[4:8] == b"jP  "
    assert decode(resp.body).shape == (ROWS, COLUMNS)


@pytest.mark.parametrize("accept,expected", [
    ("image/png", "image/png"), ("*/*", "image/jpeg"), ("application/dicom", "application/dicom"),
    ("image/gif;q=0.5, image/png;q=0.9", "image/png"), ("image/*, image/jpeg;q=0", "image/png"),
    ("*/*, application/dicom;q=0.5", "image/jpeg"),
])
def test_wado_uri_accept_header_negotiates_without_content_type(dicomweb_client, ct, accept, expected):
    resp = dicomweb_client.get(wado_url(ct), headers={"Accept": accept}, status=200)
    assert resp.headers["Content-Type"].split(";")[0] == expected


@pytest.mark.parametrize("where", ["contentType", "Accept"])
def test_wado_uri_dicom_and_rendered_media_types_together_are_400(dicomweb_client, ct, where):
    # PS3.18 §8.7.5: Acceptable Media Types are DICOM or rendered, never both.
    mixed = "application/dicom,image/jpeg"
    if where == "contentType":
        resp = dicomweb_client.get(wado_url(ct, contentType=mixed), status=400)
    else:
        resp = dicomweb_client.get(wado_url(ct), headers={"Accept": mixed}, status=400)
    assert "8.7.5" in resp.text


def test_wado_uri_content_type_outside_accept_header_is_406(dicomweb_client, ct):
    dicomweb_client.get(wado_url(ct, contentType="image/png"), headers={"Accept": "image/jpeg"}, status=406)


def test_wado_uri_accept_header_excluding_every_offer_is_406(dicomweb_client, ct):
    dicomweb_client.get(wado_url(ct), headers={"Accept": "video/mpeg"}, status=406)


def test_wado_uri_content_type_filtered_by_accept_wildcard(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, contentType="application/dicom, image/png"),
                               headers={"Accept": "image/*"}, status=200)
    assert resp.headers["Content-Type"] == "image/png"


def test_wado_uri_unparseable_content_type_is_400(dicomweb_client, ct):
    assert "contentType" in dicomweb_client.get(wado_url(ct, contentType="jpeg"), status=400).text


# -- Retrieve DICOM Instance -------------------------------------------------------------------


def test_wado_uri_ohif_request_is_byte_identical_to_stored_file(dicomweb_app, dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, contentType="application/dicom", transferSyntax="*"), status=200)
    assert resp.headers["Content-Type"] == "application/dicom"  # PS3.18 §8.7.3.5.2: no transfer-syntax parameter
    assert resp.body == _stored_bytes(dicomweb_app, ct)
    assert resp.body == dataset_bytes(ct)


def test_wado_uri_dicom_of_bundled_file_is_byte_identical(dicomweb_app, dicomweb_client):
    ds, data = _store_file(dicomweb_client, "CT_small.dcm")
    resp = dicomweb_client.get(wado_url(ds, contentType="application/dicom", transferSyntax="*"), status=200)
    assert resp.body == data == _stored_bytes(dicomweb_app, ds)


@pytest.mark.parametrize("transfer_syntax", [None, "*", EXPLICIT_LE])
def test_wado_uri_dicom_never_sends_implicit_vr(dicomweb_client, transfer_syntax):
    original, _ = _store_file(dicomweb_client, "MR_small_implicit.dcm")
    resp = dicomweb_client.get(wado_url(original, contentType="application/dicom",
                                        transferSyntax=transfer_syntax), status=200)
    got = pydicom.dcmread(io.BytesIO(resp.body))
    assert got.file_meta.TransferSyntaxUID == EXPLICIT_LE
    assert resp.headers["Content-Type"] == "application/dicom"
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_wado_uri_dicom_explicit_implicit_request_is_406(dicomweb_client, ct):
    dicomweb_client.get(wado_url(ct, contentType="application/dicom", transferSyntax=IMPLICIT_LE), status=406)


def test_wado_uri_dicom_transcodes_to_requested_syntax(dicomweb_client, ct):
    rle = "1.2.840.10008.1.2.5"
    resp = dicomweb_client.get(wado_url(ct, contentType="application/dicom", transferSyntax=rle),
                               status=200)
    got = pydicom.dcmread(io.BytesIO(resp.body))
    assert got.file_meta.TransferSyntaxUID == rle
    assert resp.headers["Content-Type"] == "application/dicom"  # the syntax is in the file meta only
    assert np.array_equal(got.pixel_array, ct.pixel_array)


@pytest.mark.parametrize("value", ["abc", "1.2.", "**"])
def test_wado_uri_malformed_transfer_syntax_is_400(dicomweb_client, ct, value):
    resp = dicomweb_client.get(wado_url(ct, contentType="application/dicom", transferSyntax=value), status=400)
    assert "transferSyntax" in resp.text


def test_wado_uri_unproducible_transfer_syntax_is_406(dicomweb_client, ct):
    dicomweb_client.get(wado_url(ct, contentType="application/dicom", transferSyntax="1.2.3.4"), status=406)


@pytest.mark.parametrize("param,value", [("rows", "10"), ("windowCenter", "1"), ("annotation", "patient"),
                                         ("frameNumber", "1"), ("presentationUID", "1.2")])
def test_wado_uri_rendering_parameter_with_dicom_is_400(dicomweb_client, ct, param, value):
    url = wado_url(ct, contentType="application/dicom", **{param: value})
    assert param in dicomweb_client.get(url, status=400).text


@pytest.mark.parametrize("param,value", [("anonymize", "yes"), ("transferSyntax", "*")])
def test_wado_uri_dicom_parameter_with_rendered_type_is_400(dicomweb_client, ct, param, value):
    assert param in dicomweb_client.get(wado_url(ct, **{param: value}), status=400).text


# -- Retrieve Rendered Instance: size, region, window, frame, quality, annotation ----------------


@pytest.mark.parametrize("rows,columns,expected", [
    (32, None, (32, 48)), (None, 12, (8, 12)), (10, 40, (10, 15)), (64, 24, (16, 24)),
])
def test_wado_uri_rows_columns_fit_keeping_aspect(dicomweb_client, ct, rows, columns, expected):
    resp = dicomweb_client.get(wado_url(ct, contentType="image/png", rows=rows, columns=columns), status=200)
    assert decode(resp.body).shape == expected


def test_wado_uri_window_matches_independent_computation(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, contentType="image/png", windowCenter=1500, windowWidth=1000),
                               status=200)
    assert np.array_equal(decode(resp.body), linear_window(ct.pixel_array, 1500, 1000))


def test_wado_uri_default_uses_file_window(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, contentType="image/png"), status=200)
    assert np.array_equal(decode(resp.body), linear_window(ct.pixel_array, 2000, 3000))


def test_wado_uri_region_crops_normalised_rectangle(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, contentType="image/png", region="0.25,0.5,0.75,1",
                                        windowCenter=1500, windowWidth=1000), status=200)
    expected = linear_window(ct.pixel_array, 1500, 1000)[8:16, 6:18]
    assert np.array_equal(decode(resp.body), expected)


def test_wado_uri_region_then_rows_scales_the_region(dicomweb_client, ct):
    resp = dicomweb_client.get(wado_url(ct, contentType="image/png", region="0,0,0.5,0.5", rows=16), status=200)
    assert decode(resp.body).shape == (16, 24)


@pytest.mark.parametrize("params,name", [
    ({"windowCenter": "10"}, "windowWidth"), ({"windowWidth": "10"}, "windowCenter"),
    ({"windowCenter": "a", "windowWidth": "10"}, "windowCenter"),
    ({"windowCenter": "10", "windowWidth": "0"}, "windowWidth"),
    ({"rows": "0"}, "rows"), ({"rows": "x"}, "rows"), ({"columns": "-3"}, "columns"),
    ({"region": "0,0,1"}, "region"), ({"region": "0.5,0,0.2,1"}, "region"),
    ({"imageQuality": "0"}, "imageQuality"), ({"imageQuality": "101"}, "imageQuality"),
    ({"frameNumber": "1"}, "frameNumber"),  # PS3.18 §9.5.2: a single-frame image
])
def test_wado_uri_bad_rendering_parameter_is_400_naming_it(dicomweb_client, ct, params, name):
    assert name in dicomweb_client.get(wado_url(ct, **params), status=400).text


@pytest.fixture
def multiframe(dicomweb_client):
    ds = make_dataset(rows=ROWS, columns=COLUMNS, frames=3, pixel_seed=7)
    store(dicomweb_client, [ds])
    return ds


@pytest.mark.parametrize("frame", [1, 2, 3])
def test_wado_uri_frame_number_selects_frame(dicomweb_client, multiframe, frame):
    resp = dicomweb_client.get(wado_url(multiframe, contentType="image/png", frameNumber=frame,
                                        windowCenter=2048, windowWidth=4096), status=200)
    assert np.array_equal(decode(resp.body), linear_window(multiframe.pixel_array[frame - 1], 2048, 4096))


@pytest.mark.parametrize("frame", ["0", "4", "two", "1.5"])
def test_wado_uri_frame_number_out_of_range_is_400(dicomweb_client, multiframe, frame):
    assert "frameNumber" in dicomweb_client.get(wado_url(multiframe, frameNumber=frame), status=400).text


@pytest.mark.parametrize("params", [{"rows": 65535}, {"columns": 65535}, {"rows": 65535, "columns": 65535}])
def test_wado_uri_huge_output_is_400(dicomweb_client, ct, params):
    assert "rows/columns" in dicomweb_client.get(wado_url(ct, **params), status=400).text


def test_wado_uri_image_quality_changes_jpeg(dicomweb_client):
    ds = make_dataset(rows=128, columns=128, WindowCenter=2000, WindowWidth=4000)
    store(dicomweb_client, [ds])
    low = dicomweb_client.get(wado_url(ds, imageQuality=5), status=200).body
    high = dicomweb_client.get(wado_url(ds, imageQuality=100), status=200).body
    assert len(low) < len(high)
    truth = linear_window(ds.pixel_array, 2000, 4000).astype(float)
    assert np.abs(decode(high) - truth).mean() < np.abs(decode(low) - truth).mean()


def _changed_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.nonzero((a != b).any(axis=1))[0]


def test_wado_uri_annotation_burns_patient_text_top_and_technique_bottom(dicomweb_client):
    ds = make_dataset(rows=200, columns=200, WindowCenter=2000, WindowWidth=100000, PatientName="Doe^Jane")
    store(dicomweb_client, [ds])
    plain = decode(dicomweb_client.get(wado_url(ds, contentType="image/png"), status=200).body)
    patient = decode(dicomweb_client.get(wado_url(ds, contentType="image/png", annotation="patient"),
                                         status=200).body)
    technique = decode(dicomweb_client.get(wado_url(ds, contentType="image/png", annotation="technique"),
                                           status=200).body)
    both = decode(dicomweb_client.get(wado_url(ds, contentType="image/png", annotation="patient,technique"),
                                      status=200).body)
    top, bottom = _changed_rows(plain, patient), _changed_rows(plain, technique)
    assert top.size and top.max() < 100
    assert bottom.size and bottom.min() >= 100
    assert set(_changed_rows(plain, both)) == set(top) | set(bottom)
    assert (patient == 255).sum() > (plain == 255).sum()  # white text was drawn


def test_wado_uri_unknown_annotation_keyword_is_ignored(dicomweb_client, ct):
    plain = dicomweb_client.get(wado_url(ct, contentType="image/png"), status=200).body
    assert dicomweb_client.get(wado_url(ct, contentType="image/png", annotation="weather"), status=200).body == plain


def test_wado_uri_color_image_renders_rgb(dicomweb_client):
    original, _ = _store_file(dicomweb_client, "SC_rgb_small_odd.dcm")
    resp = dicomweb_client.get(wado_url(original, contentType="image/png"), status=200)
    assert np.array_equal(decode(resp.body), original.pixel_array)


# -- non-image objects ---------------------------------------------------------------------------


@pytest.fixture
def report(dicomweb_client):
    ds, _ = _store_file(dicomweb_client, "test-SR.dcm")
    return ds


def _texts(ds: Dataset) -> list[str]:
    found = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            found.append(str(item.TextValue))
        found += _texts(item)
    return found


def test_wado_uri_report_default_is_html_with_content(dicomweb_client, report):
    resp = dicomweb_client.get(wado_url(report), status=200)
    assert resp.headers["Content-Type"] == "text/html; charset=utf-8"
    body = resp.body.decode("utf-8")
    assert body.startswith("<!DOCTYPE html>")
    assert report.ConceptNameCodeSequence[0].CodeMeaning in body
    texts = _texts(report)
    assert texts and all(t.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")[:30] in body
                         for t in texts)


def test_wado_uri_report_plain_text_indents_tree(dicomweb_client, report):
    resp = dicomweb_client.get(wado_url(report, contentType="text/plain"), status=200)
    assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
    lines = resp.body.decode("utf-8").splitlines()
    assert lines[0] == report.ConceptNameCodeSequence[0].CodeMeaning
    assert any(line.startswith("    ") for line in lines)  # nested content items
    assert all(t.splitlines()[0] in resp.body.decode() for t in _texts(report))


def test_wado_uri_report_xml_is_native_dicom_model(dicomweb_client, report):
    resp = dicomweb_client.get(wado_url(report, contentType="text/xml"), status=200)
    assert resp.headers["Content-Type"] == "text/xml; charset=utf-8"
    root = ElementTree.fromstring(resp.body)
    assert root.tag.endswith("NativeDicomModel")
    sop = [a for a in root if a.get("keyword") == "SOPInstanceUID"][0]
    assert sop[0].text == report.SOPInstanceUID


def test_wado_uri_report_charset_encodes_text(dicomweb_client):
    ds = non_image(sop_class_uid="1.2.840.10008.5.1.4.1.1.88.11", modality="SR")
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Befund"
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "Größe normal"
    ds.ValueType, ds.ConceptNameCodeSequence, ds.ContentSequence = "CONTAINER", [title], [item]
    store(dicomweb_client, [ds])
    resp = dicomweb_client.get(wado_url(ds, contentType="text/plain", charset="iso-8859-1"), status=200)
    assert resp.headers["Content-Type"] == "text/plain; charset=iso-8859-1"
    assert "Größe normal".encode("latin-1") in resp.body
    resp = dicomweb_client.get(wado_url(ds, contentType="text/html"),
                               headers={"Accept-Charset": "x-unknown, utf-8;q=0.5"}, status=200)
    assert "Größe normal".encode("utf-8") in resp.body


@pytest.mark.parametrize("charset", ["base64", "hex", "rot13", "idna", "utf\r\n8", "utf-8\"; x=\"y"])
def test_wado_uri_report_charset_that_is_no_text_encoding_or_no_token_is_ignored(dicomweb_client, report, charset):
    # PS3.18 §8.3.3.2: a charset the server does not support is ignored; the value never reaches a header.
    for content_type in ("text/plain", "text/html"):
        resp = dicomweb_client.get(wado_url(report, contentType=content_type, charset=charset), status=200)
        assert resp.headers["Content-Type"] == f"{content_type}; charset=utf-8"


def test_wado_uri_rendering_parameter_with_report_is_400(dicomweb_client, report):
    assert "rows" in dicomweb_client.get(wado_url(report, rows=10), status=400).text


def test_wado_uri_report_as_dicom(dicomweb_client, report):
    resp = dicomweb_client.get(wado_url(report, contentType="application/dicom"), status=200)
    assert pydicom.dcmread(io.BytesIO(resp.body)).SOPInstanceUID == report.SOPInstanceUID


def _document(mime: str, payload: bytes) -> Dataset:
    ds = non_image(sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1", modality="DOC")
    ds.MIMETypeOfEncapsulatedDocument = mime
    ds.EncapsulatedDocumentLength = len(payload)
    ds.EncapsulatedDocument = payload + (b"\x00" if len(payload) % 2 else b"")
    return ds


def test_wado_uri_encapsulated_pdf_is_application_pdf(dicomweb_client):
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"  # odd length: padded when stored
    ds = _document("application/pdf", pdf)
    store(dicomweb_client, [ds])
    for params in ({}, {"contentType": "application/pdf"}, {"contentType": "image/jpeg"}):
        resp = dicomweb_client.get(wado_url(ds, **params), status=200)
        assert resp.headers["Content-Type"] == "application/pdf"
        assert resp.body == pdf


def test_wado_uri_object_without_pixels_defaults_to_dicom(dicomweb_app, dicomweb_client):
    ds, data = _store_file(dicomweb_client, "rtplan.dcm")
    resp = dicomweb_client.get(wado_url(ds, contentType="image/jpeg"), status=200)
    assert resp.headers["Content-Type"].startswith("application/dicom")
    assert pydicom.dcmread(io.BytesIO(resp.body)).SOPInstanceUID == ds.SOPInstanceUID


def test_wado_uri_video_is_sent_as_stored_stream(dicomweb_client):
    stream = os.urandom(1000)
    ds = make_dataset(rows=ROWS, columns=COLUMNS, bits=8, transfer_syntax="1.2.840.10008.1.2.4.102")
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds.NumberOfFrames = 1
    store(dicomweb_client, [ds])
    resp = dicomweb_client.get(wado_url(ds), status=200)
    assert resp.headers["Content-Type"] == "video/mp4"
    assert resp.body == stream
    assert "rows" in dicomweb_client.get(wado_url(ds, rows=10), status=400).text


def test_wado_uri_ohif_request_over_live_server_is_byte_identical(tmp_path):
    ds = image()
    content_type, body = stow_body([ds])
    with ServerProcess(str(tmp_path / "data")) as server:
        request = urllib.request.Request(server.url + "/studies", data=body, method="POST",
                                         headers={"Content-Type": content_type})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 200
        url = server.url + wado_url(ds, contentType="application/dicom", transferSyntax="*")
        with urllib.request.urlopen(url, timeout=30) as resp:
            assert resp.headers["Content-Type"].startswith("application/dicom")
            assert int(resp.headers["Content-Length"]) == len(dataset_bytes(ds))
            assert resp.read() == dataset_bytes(ds)


# -- robustness -----------------------------------------------------------------------------------

_VALUES = st.one_of(st.text(max_size=12), st.integers(-5, 300).map(str),
                    st.sampled_from(["65535", "70000", "0,0,1,1", "0.1,0.1,0.2,0.2", "image/png", "*"]),
                    st.floats(allow_nan=True, allow_infinity=True).map(str))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.sampled_from(["rows", "columns", "region", "windowCenter", "windowWidth",
                                                "frameNumber", "imageQuality", "annotation", "contentType",
                                                "charset", "transferSyntax", "anonymize", "presentationUID",
                                                "presentationSeriesUID"]), _VALUES, max_size=4))
def test_wado_uri_any_parameter_values_never_500(dicomweb_client, ct, params):
    resp = dicomweb_client.get(wado_url(ct, **params), status="*")
    assert resp.status_int in (200, 400, 404, 406), (params, resp.status, resp.text[:200])


@pytest.mark.parametrize("content_type,accept,expected", [
    ("video/mpeg", "video/mpeg, image/png", "image/png"),
    ("image/bmp", "image/bmp, image/gif;q=0.5", "image/gif"),
])
def test_wado_uri_content_type_not_producible_falls_back_to_accept_header(dicomweb_client, ct, content_type,
                                                                          accept, expected):
    # PS3.18 §8.7.8.1: no contentType type can be produced, so the Accept header's best one is sent,
    # not a 406 for the default (image/jpeg) that the header leaves out.
    resp = dicomweb_client.get(wado_url(ct, contentType=content_type), headers={"Accept": accept}, status=200)
    assert resp.headers["Content-Type"] == expected
    assert Image.open(io.BytesIO(resp.body)).size == (ct.Columns, ct.Rows)


def test_wado_uri_report_content_type_not_producible_falls_back_to_accept_header(dicomweb_client, report):
    resp = dicomweb_client.get(wado_url(report, contentType="application/pdf"),
                               headers={"Accept": "application/pdf, text/plain"}, status=200)
    assert resp.headers["Content-Type"].split(";")[0] == "text/plain"


def test_wado_uri_fallback_to_accept_header_still_refuses_dicom_mixed_with_images(dicomweb_client, ct):
    dicomweb_client.get(wado_url(ct, contentType="video/mpeg"), status=400,
                        headers={"Accept": "video/mpeg, application/dicom, image/png"})
    dicomweb_client.get(wado_url(ct, contentType="video/mpeg"), headers={"Accept": "video/mpeg"}, status=406)

