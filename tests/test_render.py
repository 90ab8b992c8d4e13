"""Tests for dicomweb_wsgi.render, checked against an independent computation in the test."""
from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicomweb_wsgi.errors import BadRequest, NotAcceptable, NotFound
from dicomweb_wsgi.render import (RenderParams, parse_rendered_query, parse_wado_uri_rendering,
                                  render_frame, thumbnail)

PNG = RenderParams(media_type="image/png")


def _td(name: str) -> str:
    path = os.path.join(DATA_ROOT, "test_files", name)
    if not os.path.exists(path):
        pytest.skip(f"pydicom test file {name} not available")
    return path


def _read(name: str) -> Dataset:
    return pydicom.dcmread(_td(name))


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _png(ds: Dataset, frame: int = 1, **kwargs) -> np.ndarray:
    return _decode(render_frame(ds, frame, dataclasses.replace(PNG, **kwargs)))


# Independent reference computations (PS3.3 C.11.1 and C.11.2.1.2 / C.11.2.1.3).

def _rescale(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    return arr * float(ds.get("RescaleSlope", 1) or 1) + float(ds.get("RescaleIntercept", 0) or 0)


def _linear(x: np.ndarray, c: float, w: float) -> np.ndarray:
    out = np.empty(x.shape)
    for idx, v in np.ndenumerate(x):
        if v <= c - 0.5 - (w - 1) / 2:
            out[idx] = 0
        elif v > c - 0.5 + (w - 1) / 2:
            out[idx] = 255
        else:
            out[idx] = ((v - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.rint(out)


def _linear_exact(x: np.ndarray, c: float, w: float) -> np.ndarray:
    y = np.clip(((x - c) / w + 0.5) * 255, 0, 255)
    y[x <= c - w / 2] = 0
    y[x > c + w / 2] = 255
    return np.rint(y)


def _sigmoid(x: np.ndarray, c: float, w: float) -> np.ndarray:
    return np.rint(255 / (1 + np.exp(-4 * (x - c) / w)))


def _minmax(x: np.ndarray) -> np.ndarray:
    return np.rint((x - x.min()) / (x.max() - x.min()) * 255)


def _assert_close(got: np.ndarray, expected: np.ndarray, tol: float = 1) -> None:
    assert got.shape == expected.shape
    assert np.abs(got.astype(float) - expected.astype(float)).max() <= tol


def _make(arr: np.ndarray, photometric: str = "MONOCHROME2", signed: bool = False,
          bits_stored: int | None = None, frames: int | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    shape = arr.shape[1:] if frames else arr.shape
    ds.Rows, ds.Columns = shape[0], shape[1]
    ds.SamplesPerPixel = 3 if len(shape) == 3 else 1
    ds.PhotometricInterpretation = photometric
    if ds.SamplesPerPixel == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if frames:
        ds.NumberOfFrames = frames
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return ds


# --------------------------------------------------------------------------------------------
# grayscale pipeline


def test_render_ct_without_window_uses_rescaled_min_max():
    ds = _read("CT_small.dcm")
    expected = _minmax(_rescale(ds, ds.pixel_array.astype(float)))
    _assert_close(_png(ds), expected)


def test_render_mr_file_window_applies_linear_formula():
    ds = _read("MR_small.dcm")
    expected = _linear(ds.pixel_array.astype(float), 600, 1600)
    _assert_close(_png(ds), expected)


@pytest.mark.parametrize("function, reference", [("LINEAR", _linear),
                                                 ("LINEAR_EXACT", _linear_exact),
                                                 ("SIGMOID", _sigmoid)])
def test_render_window_parameter_overrides_file_window(function, reference):
    ds = _read("CT_small.dcm")
    x = _rescale(ds, ds.pixel_array.astype(float))
    _assert_close(_png(ds, window=(40.0, 400.0, function)), reference(x, 40, 400))


def test_render_file_voi_lut_function_sigmoid_is_used():
    ds = _read("MR_small.dcm")
    ds.VOILUTFunction = "SIGMOID"
    _assert_close(_png(ds), _sigmoid(ds.pixel_array.astype(float), 600, 1600))


def test_render_multi_valued_window_uses_first_values():
    ds = _read("CT_small.dcm")
    ds.WindowCenter = [40, 300]
    ds.WindowWidth = [400, 1500]
    x = _rescale(ds, ds.pixel_array.astype(float))
    _assert_close(_png(ds), _linear(x, 40, 400))


def test_render_monochrome1_is_inverted():
    ds = _read("MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    expected = 255 - _linear(ds.pixel_array.astype(float), 600, 1600)
    _assert_close(_png(ds), expected)


@pytest.mark.parametrize("dtype, signed", [(np.uint8, False), (np.int8, True),
                                           (np.uint16, False), (np.int16, True)])
def test_render_8_and_16_bit_signed_unsigned_min_max(dtype, signed):
    info = np.iinfo(dtype)
    arr = np.linspace(info.min, info.max, 24 * 32).astype(dtype).reshape(24, 32)
    ds = _make(arr, signed=signed)
    _assert_close(_png(ds), _minmax(arr.astype(float)))


def test_render_12_bit_signed_with_rescale_and_window():
    rng = np.random.default_rng(0)
    arr = rng.integers(-2048, 2047, size=(20, 30), dtype=np.int16)
    ds = _make(arr, signed=True, bits_stored=12)
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    ds.WindowCenter, ds.WindowWidth = "0", "3000"
    _assert_close(_png(ds), _linear(arr * 2.0 - 100, 0, 3000))


def test_render_modality_lut_sequence_applied_before_window():
    arr = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16)
    ds = _make(arr)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.ModalityLUTType = "HU"
    lut = (np.arange(256, dtype=np.uint16) * 10)[::-1].copy()
    item.LUTData = lut.tolist()
    ds.ModalityLUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = "1275", "2551"
    _assert_close(_png(ds), _linear(lut[arr].astype(float), 1275, 2551))


def test_render_voi_lut_sequence_used_without_window():
    arr = np.arange(64, dtype=np.uint16).reshape(8, 8)
    ds = _make(arr)
    item = Dataset()
    item.LUTDescriptor = [64, 0, 8]
    lut = (np.arange(64) * 4).astype(np.uint16)
    item.LUTData = lut.tolist()
    ds.VOILUTSequence = [item]
    _assert_close(_png(ds), lut[arr].astype(float))


def test_render_voi_lut_with_8_bit_entries_maps_inputs_past_the_256th_entry():
    # PS3.3 C.11.2.1.1: the number of entries and the bits per entry are independent (pydicom's
    # apply_voi indexed this table with 8-bit integers, so input 256 read entry 0).
    arr = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)
    ds = _make(arr)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 8]
    lut = np.arange(4096) // 16  # 0..255
    item.LUTData = lut.tolist()
    ds.VOILUTSequence = [item]
    _assert_close(_png(ds), lut[arr].astype(float))


def test_render_voi_lut_as_ow_words_with_a_first_mapped_value():
    arr = np.arange(100, 164, dtype=np.uint16).reshape(8, 8)
    ds = _make(arr)
    item = Dataset()
    item.LUTDescriptor = [32, 116, 8]  # inputs below 116 take entry 0, above 147 the last
    lut = (np.arange(32) * 8).astype("<u2")
    item.add_new("LUTData", "OW", lut.tobytes())
    ds.VOILUTSequence = [item]
    expected = lut[np.clip(arr.astype(int) - 116, 0, 31)].astype(float)
    _assert_close(_png(ds), expected * 255.0 / 255.0)


def test_render_enhanced_per_frame_window_and_rescale_used():
    arr = np.stack([np.arange(100, dtype=np.uint16).reshape(10, 10) * (i + 1) for i in range(3)])
    ds = _make(arr, frames=3)
    shared, per_frame = Dataset(), []
    pvt = Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = "1", "-50", "US"
    shared.PixelValueTransformationSequence = [pvt]
    for i in range(3):
        item, voi = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = str(50 * (i + 1)), str(100 * (i + 1))
        item.FrameVOILUTSequence = [voi]
        per_frame.append(item)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = per_frame
    for i in range(3):
        expected = _linear(arr[i] - 50.0, 50 * (i + 1), 100 * (i + 1))
        _assert_close(_png(ds, frame=i + 1), expected)


def test_render_multiframe_frame_selects_that_frame():
    ds = _read("rtdose.dcm")
    arr = ds.pixel_array
    _assert_close(_png(ds, frame=7), _minmax(arr[6].astype(float)))


def test_render_bits_allocated_1_renders_black_and_white():
    ds = _read("liver_1frame.dcm")
    assert set(np.unique(_png(ds))) <= {0, 255}
    _assert_close(_png(ds), ds.pixel_array * 255.0, 0)


def test_render_compressed_frame_equals_decoded_pixels():
    ds = _read("MR_small_jp2klossless.dcm")
    _assert_close(_png(ds), _linear(ds.pixel_array.astype(float), 600, 1600))


def test_render_jpeg_output_is_close_to_expected():
    ds = _read("CT_small.dcm")
    data = render_frame(ds, 1, RenderParams(quality=95))
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.mode == "L"
    assert not image.info.get("progressive")
    expected = _minmax(_rescale(ds, ds.pixel_array.astype(float)))
    assert np.abs(np.asarray(image, float) - expected).mean() < 3


def test_render_gif_grayscale_is_exact():
    ds = _read("MR_small.dcm")
    data = render_frame(ds, 1, RenderParams(media_type="image/gif"))
    image = Image.open(io.BytesIO(data))
    assert image.format == "GIF"
    _assert_close(np.asarray(image.convert("L")), _linear(ds.pixel_array.astype(float), 600, 1600),
                  0)


def test_render_jp2_output_decodes():
    ds = _read("MR_small.dcm")
    image = Image.open(io.BytesIO(render_frame(ds, 1, RenderParams(media_type="image/jp2"))))
    assert image.format == "JPEG2000" and image.size == (64, 64)


# --------------------------------------------------------------------------------------------
# colour


@pytest.mark.parametrize("name, frame", [("examples_rgb_color.dcm", 1),
                                         ("SC_rgb_rle_2frame.dcm", 2),
                                         ("examples_ybr_color.dcm", 5),
                                         ("SC_ybr_full_422_uncompressed.dcm", 1),
                                         ("GDCMJ2K_TextGBR.dcm", 1)])
def test_render_colour_png_equals_pydicom_rgb(name, frame):
    ds = _read(name)
    arr = ds.pixel_array
    expected = arr[frame - 1] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else arr
    got = _png(ds, frame=frame)
    assert got.shape == expected.shape
    _assert_close(got, expected, 0)


def test_render_16bit_rgb_scaled_to_8_bits():
    ds = _read("SC_rgb_rle_16bit_2frame.dcm")
    expected = ds.pixel_array[0] >> 8
    _assert_close(_png(ds), expected, 0)


def test_render_palette_colour_goes_through_lut():
    ds = _read("examples_palette.dcm")
    red = np.frombuffer(ds.RedPaletteColorLookupTableData, "<u2")
    green = np.frombuffer(ds.GreenPaletteColorLookupTableData, "<u2")
    blue = np.frombuffer(ds.BluePaletteColorLookupTableData, "<u2")
    idx = ds.pixel_array.astype(int)
    expected = np.stack([red[idx], green[idx], blue[idx]], axis=-1) >> 8
    got = _png(ds)
    assert got.shape == expected.shape
    _assert_close(got, expected, 0)


def test_render_window_ignored_for_colour():
    ds = _read("examples_rgb_color.dcm")
    _assert_close(_png(ds, window=(10.0, 20.0, "LINEAR")), ds.pixel_array, 0)


# --------------------------------------------------------------------------------------------
# geometry


def test_render_viewport_fits_keeping_aspect_ratio():
    ds = _read("JPEG2000.dcm")  # 1024 rows x 256 columns
    image = Image.open(io.BytesIO(render_frame(ds, 1, RenderParams(viewport=(100, 100)))))
    assert image.size == (25, 100)
    image = Image.open(io.BytesIO(render_frame(ds, 1, RenderParams(viewport=(512, 4096)))))
    assert image.size == (512, 2048)


def test_render_viewport_source_rectangle_crops_in_pixels():
    ds = _read("MR_small.dcm")
    full = _png(ds)
    got = _png(ds, viewport=(20, 10), viewport_source=(10.0, 5.0, 20.0, 10.0))
    _assert_close(got, full[5:15, 10:30], 0)


def test_render_viewport_negative_width_flips_horizontally():
    ds = _read("MR_small.dcm")
    full = _png(ds)
    got = _png(ds, viewport=(20, 10), viewport_source=(30.0, 5.0, -20.0, 10.0))
    _assert_close(got, full[5:15, 10:30][:, ::-1], 0)


def test_render_viewport_source_outside_image_raises_bad_request():
    with pytest.raises(BadRequest):
        render_frame(_read("MR_small.dcm"), 1,
                     RenderParams(viewport=(10, 10), viewport_source=(100.0, 0.0, 5.0, 5.0)))


def test_render_region_crops_normalised_coordinates():
    ds = _read("CT_small.dcm")  # 128 x 128
    full = _png(ds)
    got = _png(ds, region=(0.25, 0.5, 0.75, 1.0))
    _assert_close(got, full[64:128, 32:96], 0)


def test_render_rows_columns_are_maxima_keeping_aspect():
    ds = _read("JPEG2000.dcm")
    image = Image.open(io.BytesIO(render_frame(ds, 1, RenderParams(rows=512, columns=512))))
    assert image.size == (128, 512)
    image = Image.open(io.BytesIO(render_frame(ds, 1, RenderParams(columns=64))))
    assert image.size == (64, 256)


def test_thumbnail_multiframe_uses_centre_frame_and_fits_size():
    ds = _read("rtdose.dcm")  # 15 frames of 10 x 10
    data = thumbnail(ds, 64)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG" and image.size == (64, 64)
    assert data == render_frame(ds, 8, RenderParams(viewport=(64, 64), quality=85))


def test_thumbnail_default_size_keeps_aspect():
    image = Image.open(io.BytesIO(thumbnail(_read("examples_palette.dcm"))))
    assert image.size == (128, 56) and image.mode == "RGB"


# --------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("frame", [0, 2])
def test_render_frame_out_of_range_raises_not_found(frame):
    with pytest.raises(NotFound):
        render_frame(_read("CT_small.dcm"), frame, PNG)


def test_render_unsupported_media_type_raises_not_acceptable():
    with pytest.raises(NotAcceptable):
        render_frame(_read("CT_small.dcm"), 1, RenderParams(media_type="video/mp4"))


def test_render_no_pixel_data_raises_not_acceptable():
    with pytest.raises(NotAcceptable):
        render_frame(_read("rtplan.dcm"), 1, PNG)


def test_render_undecodable_pixels_raise_not_acceptable():
    ds = _read("JPEG-lossy.dcm")  # 12-bit JPEG these plugins cannot decode
    try:
        ds.pixel_array
    except Exception:
        with pytest.raises(NotAcceptable):
            render_frame(ds, 1, PNG)
    else:
        pytest.skip("a decoder for this file is installed")


# --------------------------------------------------------------------------------------------
# query parsing


def test_parse_rendered_query_all_parameters():
    params = parse_rendered_query({"window": ["40,400,linear-exact"],
                                   "viewport": ["512,256,10,20,-100,"],
                                   "quality": ["80"], "annotation": ["patient"],
                                   "unknown": ["x"]})
    assert params.window == (40.0, 400.0, "LINEAR_EXACT")
    assert params.viewport == (512, 256)
    assert params.viewport_source == (10.0, 20.0, -100.0, None)
    assert params.quality == 80
    assert params.media_type == "image/jpeg"


def test_parse_rendered_query_window_without_function_defaults_to_linear():
    assert parse_rendered_query({"window": ["-600,1500"]}).window == (-600.0, 1500.0, "LINEAR")
    assert parse_rendered_query({"window": ["1,2,SIGMOID"]}).window == (1.0, 2.0, "SIGMOID")


def test_parse_rendered_query_empty_gives_defaults():
    assert parse_rendered_query({}) == RenderParams()


@pytest.mark.parametrize("key, value", [
    ("window", "40"), ("window", "a,400"), ("window", "40,400,cubic"), ("window", "40,0.5"),
    ("window", "40,0,sigmoid"), ("window", "40,nan"), ("window", "1,2,3,4"),
    ("viewport", "512"), ("viewport", "0,512"), ("viewport", "512,abc"),
    ("viewport", "512,512,1,2,3"), ("viewport", "512,512,-1,0,10,10"),
    ("viewport", "512,512,0,0,0,10"), ("quality", "0"), ("quality", "101"), ("quality", "hi"),
])
def test_parse_rendered_query_malformed_value_raises_bad_request_naming_parameter(key, value):
    with pytest.raises(BadRequest) as info:
        parse_rendered_query({key: [value]})
    assert key in info.value.reason


def test_parse_wado_uri_rendering_parameters():
    params = parse_wado_uri_rendering({"rows": ["256"], "columns": ["128"],
                                       "region": ["0.1,0.2,0.6,0.9"], "windowCenter": ["40"],
                                       "windowWidth": ["400"], "imageQuality": ["70"]})
    assert (params.rows, params.columns, params.quality) == (256, 128, 70)
    assert params.region == (0.1, 0.2, 0.6, 0.9)
    assert params.window == (40.0, 400.0, "LINEAR")


@pytest.mark.parametrize("query, name", [
    ({"windowCenter": ["40"]}, "window"), ({"rows": ["-5"]}, "rows"),
    ({"columns": ["x"]}, "columns"), ({"region": ["0.5,0,0.2,1"]}, "region"),
    ({"region": ["0,0,1"]}, "region"), ({"imageQuality": ["0"]}, "imageQuality"),
])
def test_parse_wado_uri_rendering_malformed_raises_bad_request(query, name):
    with pytest.raises(BadRequest) as info:
        parse_wado_uri_rendering(query)
    assert name in info.value.reason


def test_render_non_monotonic_modality_lut_min_max_uses_occurring_values():
    arr = np.where(np.indices((8, 8)).sum(axis=0) % 2 == 0, 0, 2).astype(np.uint16)
    ds = _make(arr)
    item = Dataset()
    item.LUTDescriptor = [3, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [100, 60000, 300]  # value 1 never occurs, so 60000 must not set the range
    ds.ModalityLUTSequence = [item]
    _assert_close(_png(ds), np.where(arr == 0, 0, 255).astype(float), 0)
