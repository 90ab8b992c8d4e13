"""Tests for dicomweb_wsgi.transcode: whole-file and per-frame transfer syntax conversion."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.uid import generate_uid

from dicomweb_wsgi import transcode as tc
from dicomweb_wsgi.errors import NotAcceptable, NotFound
from dicomweb_wsgi.frames import scan_layout
from dicomweb_wsgi.transcode import (DEFLATED, EXPLICIT_VR_BE, EXPLICIT_VR_LE, IMPLICIT_VR_LE,
                                     MEDIA_TYPE_SYNTAXES, can_transcode, frame_as,
                                     producible_syntaxes, transcode_file)

MPEG2 = "1.2.840.10008.1.2.4.100"


def _td(name: str) -> str:
    path = os.path.join(DATA_ROOT, "test_files", name)
    if not os.path.exists(path):
        pytest.skip(f"pydicom test file {name} not available")
    return path


def _transcode(path: str, target: str) -> tuple[bytes, Dataset]:
    out = io.BytesIO()
    transcode_file(path, target, out)
    data = out.getvalue()
    return data, pydicom.dcmread(io.BytesIO(data))


def _pixels(ds: Dataset) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ds.pixel_array


def _same_elements(a: Dataset, b: Dataset) -> None:
    """Every element of ``a`` is in ``b`` with the same value (pixel data excluded)."""
    for elem in a:
        if elem.tag == 0x7FE00010:
            continue
        other = b[elem.tag]
        if elem.VR == "SQ":
            assert len(other.value) == len(elem.value)
            for x, y in zip(elem.value, other.value):
                _same_elements(x, y)
        elif elem.VR not in ("UN",) and other.VR != "UN":
            assert other.value == elem.value, elem


def _make(arr: np.ndarray, photometric: str, bits_stored: int | None = None,
          signed: bool = False, frames: int | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_LE
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    spp = 3 if arr.ndim == (4 if frames else 3) else 1
    shape = arr.shape[1:] if frames else arr.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    if spp == 3:
        ds.PlanarConfiguration = 0
    bits = arr.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits_stored or bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames:
        ds.NumberOfFrames = frames
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    return ds


def _save(ds: Dataset, path) -> str:
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


# --------------------------------------------------------------------------------------------
# capability queries


def test_can_transcode_forbidden_targets_always_false():
    for source in (EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE, tc.RLE):
        assert not can_transcode(source, IMPLICIT_VR_LE)
        assert not can_transcode(source, EXPLICIT_VR_BE)


def test_can_transcode_decodable_compressed_to_native_true():
    for source in (tc.RLE, tc.J2K_LOSSLESS, tc.J2K, tc.JPEG_BASELINE, tc.JPEG_EXTENDED,
                   tc.JPEG_LOSSLESS_SV1, tc.JPEG_LS_LOSSLESS, tc.JPEG_LS_NEAR):
        assert can_transcode(source, EXPLICIT_VR_LE)
        assert can_transcode(source, DEFLATED)


def test_can_transcode_video_only_as_stored():
    assert can_transcode(MPEG2, MPEG2)
    assert not can_transcode(MPEG2, EXPLICIT_VR_LE)
    assert producible_syntaxes(MPEG2) == frozenset({MPEG2})


def test_producible_syntaxes_implicit_source_excludes_source_includes_explicit():
    syntaxes = producible_syntaxes(IMPLICIT_VR_LE)
    assert IMPLICIT_VR_LE not in syntaxes and EXPLICIT_VR_BE not in syntaxes
    assert {EXPLICIT_VR_LE, DEFLATED, tc.RLE, tc.J2K_LOSSLESS} <= syntaxes


def test_producible_syntaxes_jpeg_ls_source_includes_source_and_native():
    syntaxes = producible_syntaxes(tc.JPEG_LS_LOSSLESS)
    assert {tc.JPEG_LS_LOSSLESS, EXPLICIT_VR_LE} <= syntaxes


def test_producible_syntaxes_no_jpeg_ls_encoder_excludes_jpeg_ls_targets():
    # pyjpegls/gdcm are not installed here, so nothing can be JPEG-LS encoded.
    from pydicom.pixels import get_encoder
    if not get_encoder(tc.JPEG_LS_LOSSLESS).is_available:
        assert tc.JPEG_LS_LOSSLESS not in producible_syntaxes(EXPLICIT_VR_LE)


def test_media_type_syntaxes_cover_frame_media_types():
    assert MEDIA_TYPE_SYNTAXES["image/jpeg"] >= {tc.JPEG_BASELINE, tc.JPEG_LOSSLESS_SV1}
    assert MEDIA_TYPE_SYNTAXES["image/jls"] == {tc.JPEG_LS_LOSSLESS, tc.JPEG_LS_NEAR}
    assert MEDIA_TYPE_SYNTAXES["image/jp2"] == {tc.J2K_LOSSLESS, tc.J2K}
    assert MEDIA_TYPE_SYNTAXES["image/dicom-rle"] == {tc.RLE}
    assert EXPLICIT_VR_LE in MEDIA_TYPE_SYNTAXES["application/octet-stream"]
    assert tc.media_type_for(tc.RLE) == "image/dicom-rle"
    assert tc.media_type_for(IMPLICIT_VR_LE) == "application/octet-stream"


def test_resolve_syntax_star_maps_forbidden_stored_to_explicit():
    assert tc.resolve_syntax(IMPLICIT_VR_LE, "*") == EXPLICIT_VR_LE
    assert tc.resolve_syntax(EXPLICIT_VR_BE, "*") == EXPLICIT_VR_LE
    assert tc.resolve_syntax(tc.RLE, "*") == tc.RLE
    assert tc.resolve_syntax(tc.RLE, None) == EXPLICIT_VR_LE


# --------------------------------------------------------------------------------------------
# native -> native


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "rtdose.dcm", "MR_small_bigendian.dcm",
                                  "rtdose_expb.dcm", "liver_expb_1frame.dcm",
                                  "SC_rgb_small_odd_big_endian.dcm", "image_dfl.dcm",
                                  "MR_small_expb.dcm"])
def test_transcode_native_to_explicit_le_same_elements_and_pixels(name):
    path = _td(name)
    original = pydicom.dcmread(path)
    data, out = _transcode(path, EXPLICIT_VR_LE)
    assert data[128:132] == b"DICM"
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE
    assert out.SOPInstanceUID == original.SOPInstanceUID
    _same_elements(original, out)
    assert np.array_equal(_pixels(out), _pixels(original))


@pytest.mark.parametrize("be, le", [("MR_small_bigendian.dcm", "MR_small.dcm"),
                                    ("rtdose_expb.dcm", "rtdose.dcm"),
                                    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm")])
def test_transcode_big_endian_to_explicit_le_pixel_bytes_equal_little_endian_file(be, le):
    _, out = _transcode(_td(be), EXPLICIT_VR_LE)
    reference = pydicom.dcmread(_td(le))
    n = len(reference.PixelData)
    assert out.PixelData[:n] == reference.PixelData


def test_transcode_big_endian_nested_ow_value_swapped(tmp_path):
    ds = _make(np.arange(16, dtype=np.uint16).reshape(4, 4), "MONOCHROME2")
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.add_new(0x00283006, "OW", np.array([1, 2, 3, 0x1234], ">u2").tobytes())
    ds.VOILUTSequence = [item]
    ds.file_meta.TransferSyntaxUID = EXPLICIT_VR_BE
    ds.PixelData = np.arange(16, dtype=">u2").tobytes()
    path = str(tmp_path / "be.dcm")
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
    _, out = _transcode(path, EXPLICIT_VR_LE)
    assert out.VOILUTSequence[0][0x00283006].value == np.array([1, 2, 3, 0x1234], "<u2").tobytes()
    assert np.array_equal(out.pixel_array, np.arange(16).reshape(4, 4))


def test_transcode_native_conversion_never_decodes_pixels(monkeypatch):
    def _no_decoding(*args, **kwargs):
        raise AssertionError("pixel data must not be decoded")

    monkeypatch.setattr(tc, "get_decoder", _no_decoding)
    for name in ("MR_small_implicit.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm"):
        _, out = _transcode(_td(name), EXPLICIT_VR_LE)
        assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE


def test_transcode_explicit_to_deflated_round_trips():
    path = _td("CT_small.dcm")
    data, out = _transcode(path, DEFLATED)
    assert out.file_meta.TransferSyntaxUID == DEFLATED
    assert len(data) < os.path.getsize(path)
    assert np.array_equal(out.pixel_array, pydicom.dcmread(path).pixel_array)


def test_transcode_same_syntax_copies_file_bytes():
    path = _td("MR_small_RLE.dcm")
    data, _ = _transcode(path, tc.RLE)
    with open(path, "rb") as fp:
        assert data == fp.read()


def test_transcode_star_keeps_stored_compressed_syntax():
    path = _td("JPEG2000.dcm")
    data, out = _transcode(path, "*")
    assert out.file_meta.TransferSyntaxUID == tc.J2K
    with open(path, "rb") as fp:
        assert data == fp.read()


def test_transcode_star_implicit_source_gives_explicit_le():
    _, out = _transcode(_td("MR_small_implicit.dcm"), "*")
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE


@pytest.mark.parametrize("target", [IMPLICIT_VR_LE, EXPLICIT_VR_BE])
def test_transcode_to_forbidden_syntax_raises_not_acceptable(target):
    with pytest.raises(NotAcceptable):
        transcode_file(_td("MR_small.dcm"), target, io.BytesIO())


def test_transcode_non_image_instance_to_compressed_syntax_keeps_elements():
    path = _td("rtplan.dcm")
    _, out = _transcode(path, tc.J2K_LOSSLESS)
    assert out.file_meta.TransferSyntaxUID == tc.J2K_LOSSLESS
    _same_elements(pydicom.dcmread(path), out)


# --------------------------------------------------------------------------------------------
# compressed -> native

COMPRESSED = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
              "JPEG2000.dcm", "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm",
              "SC_rgb_rle_16bit_2frame.dcm", "GDCMJ2K_TextGBR.dcm", "SC_rgb_jpeg_gdcm.dcm",
              "JPEGLSNearLossless_16.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", "693_J2KI.dcm",
              "rtdose_rle.dcm", "SC_rgb_gdcm_KY.dcm", "SC_rgb_jpeg_dcmtk.dcm",
              "examples_jpeg2k.dcm"]


@pytest.mark.parametrize("name", COMPRESSED)
def test_transcode_compressed_to_explicit_le_pixels_equal_pydicom_decode(name):
    path = _td(name)
    original = pydicom.dcmread(path)
    expected = _pixels(original)
    _, out = _transcode(path, EXPLICIT_VR_LE)
    assert out.file_meta.TransferSyntaxUID == EXPLICIT_VR_LE
    assert not out["PixelData"].is_undefined_length
    assert "ExtendedOffsetTable" not in out
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(out.pixel_array, expected)
    if original.SamplesPerPixel == 3:
        assert out.PhotometricInterpretation == "RGB"
        assert out.PlanarConfiguration == 0
    else:
        assert out.PhotometricInterpretation == original.PhotometricInterpretation


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm"])
def test_transcode_lossy_jpeg_to_native_marks_lossy_compression(name):
    original = pydicom.dcmread(_td(name))
    assert original.PhotometricInterpretation.startswith("YBR_FULL")
    _, out = _transcode(_td(name), EXPLICIT_VR_LE)
    assert out.LossyImageCompression == "01"
    assert out.PhotometricInterpretation == "RGB"


def test_transcode_undecodable_pixels_raise_not_acceptable(tmp_path):
    ds = _make(np.zeros((32, 32), np.uint8), "MONOCHROME2")
    ds.file_meta.TransferSyntaxUID = tc.J2K_LOSSLESS
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    ds["PixelData"].is_undefined_length = True
    path = _save(ds, tmp_path / "bad.dcm")
    with pytest.raises(NotAcceptable):
        transcode_file(path, EXPLICIT_VR_LE, io.BytesIO())
    with pytest.raises(NotAcceptable):
        frame_as(path, scan_layout(path), 1, None)


def test_transcode_video_raises_not_acceptable(tmp_path):
    ds = _make(np.zeros((32, 32), np.uint8), "YBR_PARTIAL_420")
    ds.file_meta.TransferSyntaxUID = MPEG2
    ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    ds["PixelData"].is_undefined_length = True
    path = _save(ds, tmp_path / "video.dcm")
    with pytest.raises(NotAcceptable):
        transcode_file(path, EXPLICIT_VR_LE, io.BytesIO())
    data, _ = _transcode(path, "*")
    with open(path, "rb") as fp:
        assert data == fp.read()


# --------------------------------------------------------------------------------------------
# native -> compressed

ROUND_TRIP_SOURCES = ["MR_small.dcm", "CT_small.dcm", "examples_palette.dcm",
                      "examples_rgb_color.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                      "SC_ybr_full_422_uncompressed.dcm", "image_dfl.dcm"]
LOSSLESS_TARGETS = [t for t in (tc.RLE, tc.J2K_LOSSLESS, tc.J2K, tc.JPEG_LS_LOSSLESS)
                    if t in producible_syntaxes(EXPLICIT_VR_LE)]


def _rgb_reference(ds: Dataset) -> np.ndarray:
    """Decoded pixels; pydicom already returns YBR_FULL / YBR_FULL_422 colour as RGB."""
    return _pixels(ds)


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize("name", ROUND_TRIP_SOURCES)
def test_transcode_native_to_lossless_syntax_round_trips_exactly(name, target):
    path = _td(name)
    original = pydicom.dcmread(path)
    _, out = _transcode(path, target)
    assert out.file_meta.TransferSyntaxUID == target
    assert out["PixelData"].is_undefined_length
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(_rgb_reference(out), _rgb_reference(original))
    frames = list(generate_frames(out.PixelData, number_of_frames=1))
    assert len(frames) == 1
    if target in (tc.J2K_LOSSLESS, tc.J2K) and original.PhotometricInterpretation == "RGB":
        assert out.PhotometricInterpretation == "YBR_RCT"
    assert out.get("LossyImageCompression") == original.get("LossyImageCompression")


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
def test_transcode_native_multiframe_to_lossless_round_trips_every_frame(tmp_path, target):
    rng = np.random.default_rng(5)
    arr = rng.integers(-2000, 2000, size=(4, 32, 40), dtype=np.int16)
    path = _save(_make(arr, "MONOCHROME2", signed=True, frames=4), tmp_path / "mf.dcm")
    _, out = _transcode(path, target)
    assert out.NumberOfFrames == 4
    assert np.array_equal(out.pixel_array, arr)
    back, again = _transcode(_save(out, tmp_path / "c.dcm"), EXPLICIT_VR_LE)
    assert np.array_equal(again.pixel_array, arr)


@pytest.mark.skipif(tc.JPEG_BASELINE not in producible_syntaxes(EXPLICIT_VR_LE),
                    reason="no JPEG baseline encoder")
@pytest.mark.parametrize("name", ["examples_rgb_color.dcm", "image_dfl.dcm"])
def test_transcode_native_8bit_to_jpeg_baseline_is_close_and_marked_lossy(name):
    path = _td(name)
    original = pydicom.dcmread(path)
    _, out = _transcode(path, tc.JPEG_BASELINE)
    assert out.file_meta.TransferSyntaxUID == tc.JPEG_BASELINE
    assert out.LossyImageCompression == "01"
    assert "ISO_10918_1" in str(out.LossyImageCompressionMethod)
    assert float(str(out.LossyImageCompressionRatio).strip("[]").split(",")[-1]) > 1
    diff = np.abs(out.pixel_array.astype(int) - original.pixel_array.astype(int))
    assert diff.mean() < 4
    if original.SamplesPerPixel == 3:
        assert out.PhotometricInterpretation == "YBR_FULL_422"


def test_transcode_16bit_to_jpeg_baseline_raises_not_acceptable_and_writes_nothing():
    out = io.BytesIO()
    with pytest.raises(NotAcceptable):
        transcode_file(_td("MR_small.dcm"), tc.JPEG_BASELINE, out)
    assert out.getvalue() == b""


def test_transcode_lossy_source_to_lossless_target_keeps_lossy_flag():
    _, out = _transcode(_td("examples_ybr_color.dcm"), tc.RLE)
    assert out.LossyImageCompression == "01"
    assert out.PhotometricInterpretation == "RGB"
    expected = pydicom.dcmread(_td("examples_ybr_color.dcm")).pixel_array
    assert np.array_equal(out.pixel_array, expected)


# --------------------------------------------------------------------------------------------
# frames


def _decode_frame(data: bytes, ts: str, ds: Dataset, photometric: str | None = None):
    opts = as_pixel_options(ds)
    opts["number_of_frames"] = 1
    opts["pixel_keyword"] = "PixelData"
    if photometric:
        opts["photometric_interpretation"] = photometric
    src = data if ts == EXPLICIT_VR_LE else encapsulate([data])
    arr, _ = get_decoder(ts).as_array(src, **opts)
    return arr


@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                                  "rtdose.dcm", "rtdose_expb.dcm", "image_dfl.dcm",
                                  "examples_palette.dcm"])
def test_frame_as_native_default_gives_little_endian_bytes_of_last_frame(name):
    path = _td(name)
    ds = pydicom.dcmread(path)
    arr = _pixels(ds)
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    expected = arr[-1] if nf > 1 else arr
    data, ts = frame_as(path, scan_layout(path), nf, None)
    assert ts == EXPLICIT_VR_LE
    assert data == expected.astype(expected.dtype.newbyteorder("<")).tobytes()


@pytest.mark.parametrize("name", COMPRESSED)
def test_frame_as_compressed_default_decodes_to_pydicom_pixels(name):
    path = _td(name)
    ds = pydicom.dcmread(path)
    arr = _pixels(ds)
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    data, ts = frame_as(path, scan_layout(path), nf, None)
    assert ts == EXPLICIT_VR_LE
    photometric = tc.decoded_photometric(ds.file_meta.TransferSyntaxUID,
                                         ds.PhotometricInterpretation)
    got = _decode_frame(data, ts, ds, photometric)
    assert np.array_equal(got, arr[-1] if nf > 1 else arr)


@pytest.mark.parametrize("name", ["examples_ybr_color.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_frame_as_star_returns_stored_frame_bytes(name):
    path = _td(name)
    ds = pydicom.dcmread(path)
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    stored = list(generate_frames(ds.PixelData, number_of_frames=nf))
    for n in (1, nf):
        data, ts = frame_as(path, scan_layout(path), n, "*")
        assert (data, ts) == (stored[n - 1], ds.file_meta.TransferSyntaxUID)


def test_frame_as_star_implicit_labels_bytes_explicit_le():
    path = _td("MR_small_implicit.dcm")
    data, ts = frame_as(path, scan_layout(path), 1, "*")
    assert ts == EXPLICIT_VR_LE
    assert data == pydicom.dcmread(path).PixelData


def test_frame_as_star_big_endian_swaps_to_little_endian():
    data, ts = frame_as(_td("MR_small_bigendian.dcm"), None, 1, "*")
    assert ts == EXPLICIT_VR_LE
    assert data == pydicom.dcmread(_td("MR_small.dcm")).PixelData


def test_frame_as_without_layout_parses_deflated_file():
    path = _td("image_dfl.dcm")
    data, ts = frame_as(path, None, 1, "*")
    assert ts == EXPLICIT_VR_LE
    assert data == pydicom.dcmread(path).PixelData


@pytest.mark.parametrize("target", LOSSLESS_TARGETS)
@pytest.mark.parametrize("name", ["MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "SC_rgb_rle_16bit_2frame.dcm", "examples_rgb_color.dcm"])
def test_frame_as_lossless_target_round_trips_frame(name, target):
    path = _td(name)
    ds = pydicom.dcmread(path)
    arr = _pixels(ds)
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    data, ts = frame_as(path, scan_layout(path), nf, target)
    assert ts == target
    photometric = "YBR_RCT" if (ds.SamplesPerPixel == 3 and target in (tc.J2K_LOSSLESS, tc.J2K)
                                and ts != ds.file_meta.TransferSyntaxUID) else None
    got = _decode_frame(data, ts, ds, photometric)
    assert np.array_equal(got, arr[-1] if nf > 1 else arr)


def test_frame_as_same_compressed_target_returns_stored_bytes():
    path = _td("MR_small_jp2klossless.dcm")
    stored, _ = frame_as(path, scan_layout(path), 1, "*")
    assert frame_as(path, scan_layout(path), 1, tc.J2K_LOSSLESS) == (stored, tc.J2K_LOSSLESS)


@pytest.mark.parametrize("target", [IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED, MPEG2])
def test_frame_as_impossible_target_raises_not_acceptable(target):
    path = _td("MR_small.dcm")
    with pytest.raises(NotAcceptable):
        frame_as(path, scan_layout(path), 1, target)


@pytest.mark.parametrize("layout", [True, False])
def test_frame_as_out_of_range_raises_not_found(layout):
    path = _td("rtdose.dcm")
    with pytest.raises(NotFound):
        frame_as(path, scan_layout(path) if layout else None, 16, None)
    with pytest.raises(NotFound):
        frame_as(path, scan_layout(path) if layout else None, 0, "*")
