"""WADO-RS rendered resources and thumbnails through HTTP, pixels checked against an independent
computation (pydicom's pixel_array, Rescale Slope/Intercept and the PS3.3 C.11.2.1.2 window formula)."""
from __future__ import annotations

import io
import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_color_lut
from pydicom.uid import JPEGBaseline8Bit

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, parse_multipart, read_dataset, store

from .serverproc import ServerProcess

PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


# -- independent reference computations ---------------------------------------------------------

def _linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 (LINEAR) onto 0..255."""
    y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    y = np.where(x <= c - 0.5 - (w - 1) / 2, 0, y)
    y = np.where(x > c - 0.5 + (w - 1) / 2, 255, y)
    return np.rint(y)


def _sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.3.1 (SIGMOID) onto 0..255."""
    return np.rint(255 / (1 + np.exp(-4 * (x - c) / w)))


def _minmax(x: np.ndarray) -> np.ndarray:
    return np.rint((x - x.min()) / (x.max() - x.min()) * 255)


def _image(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)))


def _close(got: np.ndarray, expected: np.ndarray, tol: float = 1) -> None:
    assert got.shape == expected.shape
    assert np.abs(got.astype(float) - expected.astype(float)).max() <= tol


def _url(ds: Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _png(client, url: str, **params) -> np.ndarray:
    resp = client.get(url, params=params, headers={"Accept": "image/png"}, status=200)
    assert resp.headers["Content-Type"] == "image/png"
    return _image(resp.body)


def _parts(resp) -> list[tuple[dict[str, str], bytes]]:
    return parse_multipart(resp.headers["Content-Type"], resp.body)


def _stored(client, ds: Dataset) -> Dataset:
    """Store ``ds`` and return it as read back from its PS3.10 bytes (the reference)."""
    store(client, [ds])
    return read_dataset(dataset_bytes(ds))


def _gray(arr: np.ndarray, **attrs) -> Dataset:
    ds = make_dataset(rows=arr.shape[-2], columns=arr.shape[-1], frames=arr.shape[0] if arr.ndim == 3 else 1,
                      bits=arr.dtype.itemsize * 8, **attrs)
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return ds


# -- grayscale pipeline through HTTP ---------------------------------------------------------------

def test_rendered_instance_window_parameter_applies_rescale_and_linear_formula(dicomweb_client):
    arr = np.random.default_rng(1).integers(0, 4096, size=(24, 20), dtype=np.uint16)
    ref = _stored(dicomweb_client, _gray(arr, RescaleSlope="2", RescaleIntercept="-1024",
                                        WindowCenter="0", WindowWidth="10"))
    got = _png(dicomweb_client, _url(ref) + "/rendered", window="40,400,linear")
    x = ref.pixel_array * 2.0 - 1024
    _close(got, _linear(x, 40, 400))


def test_rendered_instance_without_window_uses_file_window(dicomweb_client):
    arr = np.random.default_rng(2).integers(0, 2000, size=(16, 16), dtype=np.uint16)
    ref = _stored(dicomweb_client, _gray(arr, WindowCenter="800", WindowWidth="600"))
    _close(_png(dicomweb_client, _url(ref) + "/rendered"), _linear(ref.pixel_array.astype(float), 800, 600))


def test_rendered_instance_sigmoid_window_function_applied(dicomweb_client):
    arr = np.random.default_rng(3).integers(0, 2000, size=(16, 16), dtype=np.uint16)
    ref = _stored(dicomweb_client, _gray(arr))
    got = _png(dicomweb_client, _url(ref) + "/rendered", window="1000,500,sigmoid")
    _close(got, _sigmoid(ref.pixel_array.astype(float), 1000, 500))


def test_rendered_instance_monochrome1_is_inverted(dicomweb_client):
    arr = np.random.default_rng(4).integers(0, 1000, size=(16, 16), dtype=np.uint16)
    ref = _stored(dicomweb_client, _gray(arr, PhotometricInterpretation="MONOCHROME1",
                                        WindowCenter="500", WindowWidth="1000"))
    _close(_png(dicomweb_client, _url(ref) + "/rendered"), 255 - _linear(ref.pixel_array.astype(float), 500, 1000))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int16])
def test_rendered_instance_signed_and_unsigned_without_window_uses_min_max(dicomweb_client, dtype):
    info = np.iinfo(dtype)
    arr = np.linspace(info.min, info.max, 12 * 10).astype(dtype).reshape(12, 10)
    ref = _stored(dicomweb_client, _gray(arr))
    _close(_png(dicomweb_client, _url(ref) + "/rendered"), _minmax(ref.pixel_array.astype(float)))


def test_rendered_instance_rgb_planar_configuration_1_is_interleaved(dicomweb_client):
    rgb = np.random.default_rng(5).integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    ds = make_dataset(rows=10, columns=12, bits=8, SamplesPerPixel=3, PhotometricInterpretation="RGB",
                      PlanarConfiguration=1)
    ds.PixelData = rgb.transpose(2, 0, 1).tobytes()
    ref = _stored(dicomweb_client, ds)
    got = _png(dicomweb_client, _url(ref) + "/rendered")
    assert np.array_equal(ref.pixel_array, rgb)
    _close(got, rgb, tol=0)


def test_rendered_instance_palette_colour_uses_the_lookup_tables(dicomweb_client):
    ref = _stored(dicomweb_client, pydicom.dcmread(get_testdata_file("examples_palette.dcm")))
    expected = apply_color_lut(ref.pixel_array, ref)
    bits = int(ref.RedPaletteColorLookupTableDescriptor[2])
    expected = expected >> (bits - 8) if bits > 8 else expected
    _close(_png(dicomweb_client, _url(ref) + "/rendered"), expected)


def test_rendered_instance_ybr_full_422_is_converted_to_rgb(dicomweb_client):
    ref = _stored(dicomweb_client, pydicom.dcmread(get_testdata_file("SC_ybr_full_422_uncompressed.dcm")))
    _close(_png(dicomweb_client, _url(ref) + "/rendered"), ref.pixel_array, tol=1)


def test_rendered_instance_default_is_baseline_jpeg_close_to_reference(dicomweb_client):
    arr = np.tile(np.linspace(0, 4000, 64), (64, 1)).astype(np.uint16)
    ref = _stored(dicomweb_client, _gray(arr, WindowCenter="2000", WindowWidth="4000"))
    resp = dicomweb_client.get(_url(ref) + "/rendered", status=200)
    assert resp.headers["Content-Type"] == "image/jpeg"
    image = Image.open(io.BytesIO(resp.body))
    assert image.format == "JPEG" and image.mode == "L" and "progressive" not in image.info
    diff = np.abs(np.asarray(image).astype(float) - _linear(arr.astype(float), 2000, 4000))
    assert diff.mean() < 2


def test_rendered_instance_quality_changes_jpeg_size(dicomweb_client):
    arr = np.random.default_rng(6).integers(0, 4096, size=(64, 64), dtype=np.uint16)
    ref = _stored(dicomweb_client, _gray(arr))
    low = dicomweb_client.get(_url(ref) + "/rendered", params={"quality": "5"}, status=200)
    high = dicomweb_client.get(_url(ref) + "/rendered", params={"quality": "95"}, status=200)
    assert len(low.body) < len(high.body)


def test_rendered_instance_viewport_scales_keeping_aspect(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset(rows=20, columns=40))
    assert _png(dicomweb_client, _url(ref) + "/rendered", viewport="20,20").shape == (10, 20)


def test_rendered_instance_gif_accepted(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.get(_url(ref) + "/rendered", headers={"Accept": "image/gif"}, status=200)
    assert resp.headers["Content-Type"] == "image/gif"
    assert Image.open(io.BytesIO(resp.body)).format == "GIF"


# -- parameters, negotiation, errors ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["annotation", "iccprofile"])
def test_rendered_unsupported_parameter_ignored_with_warning(dicomweb_client, name):
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.get(_url(ref) + "/rendered", params={name: "patient"}, status=200)
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert resp.headers["Warning"].startswith("299 ") and name in resp.headers["Warning"]


@pytest.mark.parametrize("query", ["window=40", "window=a,b", "window=40,0", "viewport=0,10", "quality=101",
                                   "window=40,400,cubic"])
def test_rendered_bad_parameter_is_400(dicomweb_client, query):
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.get(_url(ref) + "/rendered?" + query, status=400)
    assert query.split("=")[0] in resp.text


def test_rendered_unacceptable_media_type_is_406(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.get(_url(ref) + "/rendered", headers={"Accept": "text/html"}, status=406)
    assert "image/jpeg" in resp.text


@pytest.mark.parametrize("resource", ["/rendered", "/thumbnail"])
def test_rendered_dicom_and_rendered_media_types_together_are_400(dicomweb_client, resource):
    # PS3.18 §8.7.5: Acceptable Media Types are DICOM or rendered, never both.
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.get(_url(ref) + resource, headers={"Accept": "application/dicom, image/jpeg"},
                               status=400)
    assert "8.7.5" in resp.text


def test_rendered_q_zero_refuses_a_type_a_wildcard_allows(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.get(_url(ref) + "/rendered", headers={"Accept": "image/jpeg;q=0, image/*"}, status=200)
    assert resp.headers["Content-Type"] not in ("image/jpeg", "") and resp.headers["Content-Type"].startswith("image/")


def test_rendered_of_a_blob_removed_after_listing_is_404(dicomweb_app, dicomweb_client):
    # What a DELETE (or a replacing store) racing the request leaves behind; before, a 406 that
    # named the blob's path on disk.
    ref = _stored(dicomweb_client, make_dataset())
    os.unlink(dicomweb_app.archive.path(dicomweb_app.archive.instances(ref.StudyInstanceUID)[0]))
    for url in (_url(ref) + "/rendered",
                f"/wado?requestType=WADO&studyUID={ref.StudyInstanceUID}&seriesUID={ref.SeriesInstanceUID}"
                f"&objectUID={ref.SOPInstanceUID}"):
        resp = dicomweb_client.get(url, status=404)
        assert "removed" in resp.text and dicomweb_app.archive.blobs.root not in resp.text


def test_rendered_of_a_damaged_blob_is_406_without_its_path(dicomweb_app, dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    path = dicomweb_app.archive.path(dicomweb_app.archive.instances(ref.StudyInstanceUID)[0])
    with open(path, "r+b") as fh:
        fh.truncate(200)
    resp = dicomweb_client.get(_url(ref) + "/rendered", status=406)
    assert dicomweb_app.archive.blobs.root not in resp.text


def test_rendered_unknown_instance_is_404(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    dicomweb_client.get(f"/studies/{ref.StudyInstanceUID}/series/{ref.SeriesInstanceUID}/instances/"
                        f"{new_uid()}/rendered", status=404)


def test_rendered_instance_without_pixels_is_406(dicomweb_client):
    ds = make_dataset(sop_class_uid="1.2.840.10008.5.1.4.1.1.481.5")  # RT Plan: nothing to render
    del ds.PixelData
    ref = _stored(dicomweb_client, ds)
    dicomweb_client.get(_url(ref) + "/rendered", status=406)


def test_rendered_head_sends_headers_only(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.head(_url(ref) + "/rendered", status=200)
    assert resp.headers["Content-Type"] == "image/jpeg" and resp.body == b""


# -- frames, multi-frame, series, study ------------------------------------------------------------

def test_rendered_multiframe_instance_is_multipart_of_every_frame(dicomweb_client):
    arr = np.stack([np.full((6, 8), 100 * (i + 1), dtype=np.uint16) for i in range(4)])
    arr[:, 0, 0] = 0
    ref = _stored(dicomweb_client, _gray(arr))
    resp = dicomweb_client.get(_url(ref) + "/rendered", headers={"Accept": "image/png"}, status=200)
    assert resp.headers["Content-Type"].startswith('multipart/related; type="image/png"; boundary=')
    assert resp.body.startswith(b"--")
    parts = _parts(resp)
    assert [h["Content-Location"].rsplit("/", 3)[1:] for h, _ in parts] == [
        ["frames", str(n), "rendered"] for n in (1, 2, 3, 4)]
    for n, (headers, body) in enumerate(parts):
        assert headers["Content-Type"] == "image/png"
        _close(_image(body), _minmax(ref.pixel_array[n].astype(float)))


def _functional_group(intercept: int, center: int, width: int) -> Dataset:
    transform, voi, group = Dataset(), Dataset(), Dataset()
    transform.RescaleSlope, transform.RescaleIntercept, transform.RescaleType = "1", str(intercept), "US"
    voi.WindowCenter, voi.WindowWidth = str(center), str(width)
    group.PixelValueTransformationSequence, group.FrameVOILUTSequence = [transform], [voi]
    return group


def test_rendered_frames_in_requested_order_use_per_frame_functional_groups(dicomweb_client):
    arr = np.stack([np.arange(100, dtype=np.uint16).reshape(10, 10) * (i + 1) for i in range(3)])
    ds = _gray(arr)
    groups = {n: (-10 * n, 40 * n, 90 * n) for n in (1, 2, 3)}  # frame -> intercept, center, width
    ds.PerFrameFunctionalGroupsSequence = [_functional_group(*groups[n]) for n in (1, 2, 3)]
    ref = _stored(dicomweb_client, ds)
    resp = dicomweb_client.get(_url(ref) + "/frames/3,1/rendered", headers={"Accept": "image/png"}, status=200)
    parts = _parts(resp)
    assert len(parts) == 2
    for (_, body), frame in zip(parts, (3, 1)):
        intercept, center, width = groups[frame]
        _close(_image(body), _linear(ref.pixel_array[frame - 1] + float(intercept), center, width))


def test_rendered_single_frame_of_multiframe_is_one_image(dicomweb_client):
    arr = np.stack([np.full((4, 4), i, dtype=np.uint16) for i in range(5)])
    arr[:, 0, 0] = 10
    ref = _stored(dicomweb_client, _gray(arr))
    got = _png(dicomweb_client, _url(ref) + "/frames/4/rendered")
    _close(got, _minmax(ref.pixel_array[3].astype(float)))


def test_rendered_compressed_multiframe_frame_matches_pydicom_decode(dicomweb_client):
    ref = _stored(dicomweb_client, pydicom.dcmread(get_testdata_file("examples_ybr_color.dcm")))
    got = _png(dicomweb_client, _url(ref) + "/frames/17/rendered")
    _close(got, ref.pixel_array[16], tol=1)


def test_rendered_big_endian_multiframe_frame_matches_pixel_array(dicomweb_client):
    ref = _stored(dicomweb_client, pydicom.dcmread(get_testdata_file("rtdose_expb.dcm")))
    got = _png(dicomweb_client, _url(ref) + "/frames/7/rendered")
    _close(got, _minmax(ref.pixel_array[6].astype(float)))


def test_rendered_frame_out_of_range_is_404(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset(frames=3))
    resp = dicomweb_client.get(_url(ref) + "/frames/1,4/rendered", status=404)
    assert "3 frame(s)" in resp.text


def test_rendered_series_is_multipart_in_instance_order(dicomweb_client):
    study, series = new_uid(), new_uid()
    datasets = [_gray(np.full((4, 4), 10 * n, dtype=np.uint16), study_uid=study, series_uid=series,
                      InstanceNumber=n, WindowCenter="50", WindowWidth="101") for n in (3, 1, 2)]
    store(dicomweb_client, datasets)
    resp = dicomweb_client.get(f"/studies/{study}/series/{series}/rendered", headers={"Accept": "image/png"},
                               status=200)
    assert resp.headers["Content-Type"].startswith('multipart/related; type="image/png"')
    parts = _parts(resp)
    by_number = {ds.InstanceNumber: ds.SOPInstanceUID for ds in datasets}
    assert [h["Content-Location"].split("/")[-2] for h, _ in parts] == [by_number[n] for n in (1, 2, 3)]
    for (_, body), n in zip(parts, (1, 2, 3)):
        _close(_image(body), _linear(np.full((4, 4), 10.0 * n), 50, 101))


def test_rendered_study_bare_image_accept_still_gets_every_image_as_multipart(dicomweb_client):
    study = new_uid()
    store(dicomweb_client, [make_dataset(study_uid=study, SeriesNumber=n) for n in (1, 2)]
          + [make_dataset(study_uid=study, frames=2)])
    resp = dicomweb_client.get(f"/studies/{study}/rendered", headers={"Accept": "image/jpeg"}, status=200)
    assert resp.headers["Content-Type"].startswith('multipart/related; type="image/jpeg"')
    parts = _parts(resp)
    assert len(parts) == 4
    assert all(Image.open(io.BytesIO(body)).format == "JPEG" for _, body in parts)


def _undecodable(**attrs) -> Dataset:
    ds = make_dataset(transfer_syntax=JPEGBaseline8Bit, bits=8, **attrs)
    ds.PixelData = encapsulate([b"\xff\xd8 not a jpeg \xff\xd9"])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    return ds


def test_rendered_series_leaves_out_undecodable_image_and_single_one_is_406(dicomweb_client):
    study, series = new_uid(), new_uid()
    broken = _undecodable(study_uid=study, series_uid=series, InstanceNumber=1)
    good = make_dataset(study_uid=study, series_uid=series, InstanceNumber=2)
    store(dicomweb_client, [broken, good])
    resp = dicomweb_client.get(f"/studies/{study}/series/{series}/rendered", status=200)
    parts = _parts(resp)
    assert [h["Content-Location"].split("/")[-2] for h, _ in parts] == [good.SOPInstanceUID]
    dicomweb_client.get(_url(broken) + "/rendered", status=406)


def test_rendered_single_image_multipart_accept_gets_one_part(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    resp = dicomweb_client.get(_url(ref) + "/rendered", headers={"Accept": "multipart/related; type=image/png"},
                               status=200)
    parts = _parts(resp)
    assert len(parts) == 1 and parts[0][0]["Content-Type"] == "image/png"


# -- documents and reports -------------------------------------------------------------------------

def _pdf_dataset(study_uid: str | None = None, series_uid: str | None = None) -> tuple[Dataset, bytes]:
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"  # odd length: padded when stored
    ds = make_dataset(sop_class_uid=PDF_STORAGE, study_uid=study_uid, series_uid=series_uid, modality="DOC")
    for keyword in ("Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
                    "BitsStored", "HighBit", "PixelRepresentation", "PixelData"):
        delattr(ds, keyword)
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)
    ds.EncapsulatedDocument = pdf + b"\x00"
    return ds, pdf


def test_rendered_encapsulated_pdf_is_the_document(dicomweb_client):
    ds, pdf = _pdf_dataset()
    ref = _stored(dicomweb_client, ds)
    resp = dicomweb_client.get(_url(ref) + "/rendered", status=200)
    assert resp.headers["Content-Type"] == "application/pdf"
    assert resp.body == pdf
    dicomweb_client.get(_url(ref) + "/rendered", headers={"Accept": "image/jpeg"}, status=406)


def test_rendered_series_with_images_and_pdf_selects_by_media_type(dicomweb_client):
    study, series = new_uid(), new_uid()
    pdf_ds, pdf = _pdf_dataset(study, series)
    store(dicomweb_client, [make_dataset(study_uid=study, series_uid=series), pdf_ds])
    url = f"/studies/{study}/series/{series}/rendered"
    images = dicomweb_client.get(url, status=200)
    assert images.headers["Content-Type"] == "image/jpeg"
    document = dicomweb_client.get(url, headers={"Accept": "application/pdf"}, status=200)
    assert document.headers["Content-Type"] == "application/pdf" and document.body == pdf


def test_rendered_sr_as_html_and_plain_text(dicomweb_client):
    ref = _stored(dicomweb_client, pydicom.dcmread(get_testdata_file("test-SR.dcm")))
    page = dicomweb_client.get(_url(ref) + "/rendered", status=200)
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<h1>Diagnosis</h1>" in page.text and "Sample Code 1" in page.text
    assert "&lt;&gt;" in page.text  # text values are escaped
    text = dicomweb_client.get(_url(ref) + "/rendered", headers={"Accept": "text/plain"}, status=200)
    assert text.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert text.text.startswith("Diagnosis\n") and "Diameter: 3 cm" in text.text


# -- thumbnails ------------------------------------------------------------------------------------

def _thumb(client, url: str, status: int = 200, **kwargs):
    return client.get(url + "/thumbnail", status=status, **kwargs)


def test_thumbnail_instance_is_small_jpeg_and_cached(dicomweb_client, dicomweb_app):
    ref = _stored(dicomweb_client, make_dataset(rows=300, columns=200))
    resp = _thumb(dicomweb_client, _url(ref))
    assert resp.headers["Content-Type"] == "image/jpeg"
    assert Image.open(io.BytesIO(resp.body)).size == (85, 128)
    folder = os.path.join(dicomweb_app.settings.data_dir, "thumbnails")
    cached = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    assert len(cached) == 1 and open(cached[0], "rb").read() == resp.body
    with open(cached[0], "wb") as fh:  # the second request is served from the cache file
        fh.write(b"cached")
    assert _thumb(dicomweb_client, _url(ref)).body == b"cached"


def test_thumbnail_etag_if_none_match_is_304(dicomweb_client):
    ref = _stored(dicomweb_client, make_dataset())
    etag = _thumb(dicomweb_client, _url(ref)).headers["ETag"]
    resp = _thumb(dicomweb_client, _url(ref), status=304, headers={"If-None-Match": etag})
    assert resp.headers["ETag"] == etag and resp.body == b""


def test_thumbnail_series_uses_middle_instance_and_study_first_series(dicomweb_client):
    study, s1, s2 = new_uid(), new_uid(), new_uid()
    datasets = [_gray(np.full((8, 8), 50 * n, dtype=np.uint16), study_uid=study, series_uid=s1, SeriesNumber=1,
                      InstanceNumber=n, WindowCenter="100", WindowWidth="201") for n in (1, 2, 3)]
    datasets.append(_gray(np.full((8, 8), 0, dtype=np.uint16), study_uid=study, series_uid=s2, SeriesNumber=2,
                          WindowCenter="100", WindowWidth="201"))
    store(dicomweb_client, datasets)
    expected = _linear(np.array([100.0]), 100, 201)[0]
    series = _image(_thumb(dicomweb_client, f"/studies/{study}/series/{s1}").body)
    study_thumb = _image(_thumb(dicomweb_client, f"/studies/{study}").body)
    assert abs(series.mean() - expected) < 3 and abs(study_thumb.mean() - expected) < 3


def test_thumbnail_frame_and_viewport(dicomweb_client):
    arr = np.stack([np.full((40, 20), 100 * i, dtype=np.uint16) for i in range(3)])
    ref = _stored(dicomweb_client, _gray(arr, WindowCenter="100", WindowWidth="201"))
    resp = _thumb(dicomweb_client, _url(ref) + "/frames/3", params={"viewport": "10,10"})
    image = _image(resp.body)
    assert image.shape == (10, 5) and image.mean() > 250  # frame 3 = 200: above the window


def test_thumbnail_of_replaced_instance_is_new(tmp_path):
    import webtest

    app = make_app({"data_dir": str(tmp_path / "data"), "fsync": "false", "duplicate_policy": "replace"})
    client = webtest.TestApp(app, lint=True)
    try:
        ds = _gray(np.zeros((8, 8), dtype=np.uint16), WindowCenter="100", WindowWidth="201")
        store(client, [ds])
        dark = _image(_thumb(client, _url(ds)).body)
        ds.PixelData = np.full((8, 8), 200, dtype=np.uint16).tobytes()
        store(client, [ds])
        bright = _image(_thumb(client, _url(ds)).body)
        assert dark.mean() < 5 and bright.mean() > 250
    finally:
        app.close()


def test_thumbnail_without_image_is_404_and_non_jpeg_is_406(dicomweb_client):
    sr = _stored(dicomweb_client, pydicom.dcmread(get_testdata_file("test-SR.dcm")))
    _thumb(dicomweb_client, f"/studies/{sr.StudyInstanceUID}", status=404)
    ref = _stored(dicomweb_client, make_dataset())
    _thumb(dicomweb_client, _url(ref), status=406, headers={"Accept": "image/png"})
    _thumb(dicomweb_client, _url(ref) + "/frames/2", status=404)
    _thumb(dicomweb_client, _url(ref), status=400, params={"viewport": "5000,5000"})


# -- a live server and the real dicomweb-client --------------------------------------------------

@pytest.fixture(scope="module")
def live(tmp_path_factory):
    dicomweb_client = pytest.importorskip("dicomweb_client")
    with ServerProcess(str(tmp_path_factory.mktemp("rendered") / "data")) as proc:
        yield dicomweb_client.DICOMwebClient(proc.url)


def test_dicomweb_client_retrieve_instance_rendered_png_matches_window(live):
    arr = np.random.default_rng(7).integers(0, 3000, size=(32, 24), dtype=np.uint16)
    ds = read_dataset(dataset_bytes(_gray(arr, RescaleSlope="1", RescaleIntercept="-1000")))
    live.store_instances([ds])
    body = live.retrieve_instance_rendered(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID,
                                           media_types=("image/png",), params={"window": "0,1000"})
    _close(_image(body), _linear(ds.pixel_array - 1000.0, 0, 1000))


def test_dicomweb_client_retrieve_series_and_frames_rendered(live):
    study, series = new_uid(), new_uid()
    datasets = [make_dataset(study_uid=study, series_uid=series, InstanceNumber=n, pixel_seed=n) for n in (1, 2)]
    multi = make_dataset(study_uid=study, series_uid=series, InstanceNumber=3, frames=3)
    live.store_instances(datasets + [multi])
    body = live.retrieve_series_rendered(study, series, media_types=("image/jpeg",))
    boundary = body.split(b"\r\n", 1)[0][2:].decode()
    parts = parse_multipart(f'multipart/related; type="image/jpeg"; boundary={boundary}', body)
    assert len(parts) == 5
    assert all(_image(b).shape == (16, 16) for _, b in parts)
    one = live.retrieve_instance_frames_rendered(study, series, multi.SOPInstanceUID, [2],
                                                 media_types=("image/png",))
    ref = read_dataset(dataset_bytes(multi))
    _close(_image(one), _minmax(ref.pixel_array[1].astype(float)))
