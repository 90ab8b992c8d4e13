"""Tests for dicomweb_wsgi.frames: layouts computed from files, frames read by seek + read."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, encapsulate_extended, generate_frames
from pydicom.pixels import get_decoder, get_encoder, pack_bits, unpack_bits
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid)

from dicomweb_wsgi import frames
from dicomweb_wsgi.errors import NotFound
from dicomweb_wsgi.frames import FrameLayout, iter_frames, read_frame, scan_layout


def _td(name: str) -> str:
    """A file bundled with pydicom (never downloaded)."""
    path = os.path.join(DATA_ROOT, "test_files", name)
    if not os.path.exists(path):
        pytest.skip(f"pydicom test file {name} not available")
    return path


def _dataset(rows: int, cols: int, frames_: int, bits: int = 16, spp: int = 1,
             ts: str = ExplicitVRLittleEndian, photometric: str = "MONOCHROME2") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    uid = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = uid
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = spp
    ds.PhotometricInterpretation = photometric
    if spp > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames_
    return ds


def _save(ds: Dataset, path) -> str:
    ds.save_as(str(path), enforce_file_format=True)
    return str(path)


def _j2k_frames(n: int, rows: int = 32, cols: int = 32) -> tuple[list[bytes], np.ndarray]:
    rng = np.random.default_rng(7)
    arr = rng.integers(0, 255, size=(n, rows, cols), dtype=np.uint8)
    enc = get_encoder(JPEG2000Lossless)
    opts = dict(rows=rows, columns=cols, samples_per_pixel=1, bits_allocated=8, bits_stored=8,
                pixel_representation=0, photometric_interpretation="MONOCHROME2",
                number_of_frames=1)
    encoded = [enc.encode(arr[i], **opts) for i in range(n)]
    # Even lengths, so that encapsulation adds no padding and bytes compare exactly.
    return [e + b"\x00" if len(e) % 2 else e for e in encoded], arr


def _encapsulated_file(tmp_path, name: str, frame_bytes: list[bytes], pixel_data: bytes,
                       eot: tuple[bytes, bytes] | None = None, number_of_frames=None) -> str:
    ds = _dataset(32, 32, number_of_frames or len(frame_bytes), bits=8, ts=JPEG2000Lossless)
    ds.PixelData = pixel_data
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if eot is not None:
        ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = eot
    return _save(ds, tmp_path / name)


class _CountingFile:
    """Wraps a binary file and counts the bytes read through it."""

    total = 0

    def __init__(self, fp):
        self._fp = fp

    def read(self, n=-1):
        data = self._fp.read(n)
        _CountingFile.total += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._fp, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fp.close()


@pytest.fixture
def counting_open(monkeypatch):
    real_open = open

    def _open(path, mode="r", *args, **kwargs):
        return _CountingFile(real_open(path, mode, *args, **kwargs))

    _CountingFile.total = 0
    monkeypatch.setattr(frames, "open", _open, raising=False)
    return _CountingFile


@pytest.fixture(scope="module")
def thousand_frames(tmp_path_factory):
    ds = _dataset(8, 8, 1000)
    arr = np.arange(1000 * 64, dtype=np.uint16).reshape(1000, 8, 8)
    ds.PixelData = arr.tobytes()
    path = _save(ds, tmp_path_factory.mktemp("mf") / "mf1000.dcm")
    return path, arr


NATIVE_SAMPLES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm",
                  "MR_small_bigendian.dcm", "rtdose.dcm", "rtdose_expb.dcm",
                  "examples_palette.dcm", "examples_rgb_color.dcm", "liver_1frame.dcm",
                  "SC_rgb_small_odd.dcm", "SC_ybr_full_422_uncompressed.dcm"]
ENCAPSULATED_SAMPLES = ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
                        "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm", "JPEG-lossy.dcm",
                        "JPGExtended.dcm", "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm",
                        "SC_rgb_rle_16bit_2frame.dcm", "rtdose_rle.dcm", "examples_jpeg2k.dcm",
                        "SC_rgb_jpeg_gdcm.dcm", "GDCMJ2K_TextGBR.dcm"]


@pytest.mark.parametrize("name", NATIVE_SAMPLES)
def test_scan_layout_native_sample_frames_equal_pixel_data_slices(name):
    path = _td(name)
    layout = scan_layout(path)
    ds = pydicom.dcmread(path)
    assert layout is not None and not layout.encapsulated
    assert layout.transfer_syntax == ds.file_meta.TransferSyntaxUID
    assert layout.number_of_frames == int(ds.get("NumberOfFrames", 1) or 1)
    data = ds.PixelData
    for n in range(1, layout.number_of_frames + 1):
        start = (n - 1) * layout.frame_length
        assert read_frame(path, layout, n) == data[start:start + layout.frame_length]


@pytest.mark.parametrize("name", ["MR_small.dcm", "rtdose.dcm", "examples_rgb_color.dcm"])
def test_read_frame_native_sample_equals_decoded_pixel_array(name):
    path = _td(name)
    layout = scan_layout(path)
    arr = pydicom.dcmread(path).pixel_array
    if layout.number_of_frames == 1:
        arr = arr[None]
    for n in range(1, layout.number_of_frames + 1):
        expected = arr[n - 1].astype(arr.dtype.newbyteorder("<")).tobytes()
        assert read_frame(path, layout, n) == expected


@pytest.mark.parametrize("name", ENCAPSULATED_SAMPLES)
def test_scan_layout_encapsulated_sample_frames_equal_pydicom_frames(name):
    path = _td(name)
    layout = scan_layout(path)
    ds = pydicom.dcmread(path)
    assert layout is not None and layout.encapsulated
    nf = int(ds.get("NumberOfFrames", 1) or 1)
    assert layout.number_of_frames == nf
    expected = list(generate_frames(ds.PixelData, number_of_frames=nf))
    got = [read_frame(path, layout, n) for n in range(1, nf + 1)]
    assert got == expected


def test_read_frame_1000_frame_native_every_frame_equals_pixel_array(thousand_frames):
    path, arr = thousand_frames
    layout = scan_layout(path)
    assert layout.number_of_frames == 1000 and layout.frame_length == 128
    got = list(iter_frames(path, layout, range(1, 1001)))
    assert all(got[i] == arr[i].tobytes() for i in range(1000))
    assert np.array_equal(pydicom.dcmread(path).pixel_array, arr)


def test_read_frame_frame_500_of_1000_reads_only_that_frame(thousand_frames, counting_open):
    path, arr = thousand_frames
    layout = FrameLayout.from_json(scan_layout(path).to_json())
    counting_open.total = 0
    assert read_frame(path, layout, 500) == arr[499].tobytes()
    assert counting_open.total == layout.frame_length


def test_read_frame_encapsulated_frame_500_of_1000_reads_only_its_fragment(tmp_path,
                                                                         counting_open):
    encoded, _ = _j2k_frames(1)
    frame_list = [encoded[0] + bytes([i % 256, 0]) for i in range(1000)]
    path = _encapsulated_file(tmp_path, "enc1000.dcm", frame_list,
                              encapsulate(frame_list, has_bot=False))
    layout = scan_layout(path)
    assert layout.number_of_frames == 1000
    counting_open.total = 0
    assert read_frame(path, layout, 500) == frame_list[499]
    assert counting_open.total == len(frame_list[499])


@pytest.mark.parametrize("has_bot", [True, False])
def test_scan_layout_encapsulated_one_fragment_per_frame_frames_equal_input(tmp_path, has_bot):
    encoded, _ = _j2k_frames(5)
    path = _encapsulated_file(tmp_path, "e.dcm", encoded, encapsulate(encoded, has_bot=has_bot))
    layout = scan_layout(path)
    assert layout.number_of_frames == 5
    assert [read_frame(path, layout, n) for n in range(1, 6)] == encoded


def test_scan_layout_encapsulated_bot_with_two_fragments_per_frame_joins_fragments(tmp_path):
    encoded, _ = _j2k_frames(4)
    data = encapsulate(encoded, fragments_per_frame=2, has_bot=True)
    path = _encapsulated_file(tmp_path, "e.dcm", encoded, data)
    layout = scan_layout(path)
    assert [len(f) for f in layout.fragments] == [2, 2, 2, 2]
    # encapsulate() pads odd fragments, so compare with what pydicom reads back.
    expected = list(generate_frames(pydicom.dcmread(path).PixelData, number_of_frames=4))
    assert [read_frame(path, layout, n) for n in range(1, 5)] == expected
    for got, original in zip(expected, encoded):
        assert got.rstrip(b"\x00") == original.rstrip(b"\x00")


def test_scan_layout_encapsulated_no_bot_many_fragments_splits_on_start_markers(tmp_path):
    encoded, _ = _j2k_frames(3)
    data = encapsulate(encoded, fragments_per_frame=3, has_bot=False)
    path = _encapsulated_file(tmp_path, "e.dcm", encoded, data)
    layout = scan_layout(path)
    assert layout.number_of_frames == 3
    assert [len(f) for f in layout.fragments] == [3, 3, 3]
    for n, original in enumerate(encoded, 1):
        assert read_frame(path, layout, n).rstrip(b"\x00") == original.rstrip(b"\x00")


def test_scan_layout_encapsulated_single_frame_many_fragments_forms_one_frame(tmp_path):
    encoded, _ = _j2k_frames(1)
    data = encapsulate(encoded, fragments_per_frame=4, has_bot=False)
    path = _encapsulated_file(tmp_path, "e.dcm", encoded, data)
    layout = scan_layout(path)
    assert layout.number_of_frames == 1 and len(layout.fragments[0]) == 4
    assert read_frame(path, layout, 1).rstrip(b"\x00") == encoded[0].rstrip(b"\x00")


def test_scan_layout_extended_offset_table_maps_frames(tmp_path):
    encoded, _ = _j2k_frames(6)
    data, offsets, lengths = encapsulate_extended(encoded)
    path = _encapsulated_file(tmp_path, "e.dcm", encoded, data, eot=(offsets, lengths))
    layout = scan_layout(path)
    assert layout.number_of_frames == 6
    for n, original in enumerate(encoded, 1):
        assert read_frame(path, layout, n).rstrip(b"\x00") == original.rstrip(b"\x00")


def test_scan_layout_rle_no_bot_multi_fragment_splits_on_rle_headers(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 255, size=(3, 8, 8), dtype=np.uint8)
    enc = get_encoder(RLELossless)
    opts = dict(rows=8, columns=8, samples_per_pixel=1, bits_allocated=8, bits_stored=8,
                pixel_representation=0, photometric_interpretation="MONOCHROME2",
                number_of_frames=1)
    encoded = [enc.encode(arr[i], **opts) for i in range(3)]
    ds = _dataset(8, 8, 3, bits=8, ts=RLELossless)
    ds.PixelData = encapsulate(encoded, fragments_per_frame=2, has_bot=False)
    ds["PixelData"].is_undefined_length = True
    path = _save(ds, tmp_path / "rle.dcm")
    layout = scan_layout(path)
    assert layout.number_of_frames == 3
    assert [len(f) for f in layout.fragments] == [2, 2, 2]
    decoder = get_decoder(RLELossless)
    for n in (1, 2, 3):
        got, _ = decoder.as_array(encapsulate([read_frame(path, layout, n)]), **opts)
        assert np.array_equal(got, arr[n - 1])


def test_scan_layout_unassignable_fragments_returns_none(tmp_path):
    # Three codestreams, no offset table, but NumberOfFrames says 2: no safe mapping exists.
    three, _ = _j2k_frames(3)
    path = _encapsulated_file(tmp_path, "e.dcm", three, encapsulate(three, has_bot=False),
                              number_of_frames=2)
    assert scan_layout(path) is None


def test_scan_layout_bits_allocated_1_unaligned_frames_unpack_to_pixel_array(tmp_path):
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 2, size=(3, 5, 5), dtype=np.uint8)
    ds = _dataset(5, 5, 3, bits=1)
    ds.PixelData = pack_bits(arr)
    path = _save(ds, tmp_path / "bits.dcm")
    layout = scan_layout(path)
    assert layout.bits_per_frame == 25 and layout.frame_length == 4
    for n in range(1, 4):
        got = unpack_bits(read_frame(path, layout, n))[:25].reshape(5, 5)
        assert np.array_equal(got, arr[n - 1])
    assert np.array_equal(pydicom.dcmread(path).pixel_array, arr)


def test_scan_layout_bits_allocated_1_sample_equals_pixel_array():
    path = _td("liver_1frame.dcm")
    layout = scan_layout(path)
    arr = pydicom.dcmread(path).pixel_array
    got = unpack_bits(read_frame(path, layout, 1))[: arr.size].reshape(arr.shape)
    assert np.array_equal(got, arr)


def test_scan_layout_deflated_file_returns_none():
    assert scan_layout(_td("image_dfl.dcm")) is None


def test_scan_layout_no_pixel_data_returns_none():
    path = _td("rtplan.dcm")
    assert scan_layout(path) is None
    assert scan_layout(path, pydicom.dcmread(path)) is None


def test_scan_layout_given_dataset_gives_same_layout():
    path = _td("CT_small.dcm")
    assert scan_layout(path, pydicom.dcmread(path)) == scan_layout(path)


def test_scan_layout_truncated_native_file_counts_only_present_frames(tmp_path):
    ds = _dataset(4, 4, 3, bits=8)
    ds.PixelData = bytes(range(48))
    path = _save(ds, tmp_path / "t.dcm")
    with open(path, "rb") as fp:
        data = fp.read()
    with open(path, "wb") as fp:
        fp.write(data[:-20])
    layout = scan_layout(path)
    assert layout.number_of_frames == 1
    assert read_frame(path, layout, 1) == bytes(range(16))


@pytest.mark.parametrize("number", [0, -1, 2])
def test_read_frame_out_of_range_raises_not_found(number):
    path = _td("CT_small.dcm")
    with pytest.raises(NotFound):
        read_frame(path, scan_layout(path), number)


def test_iter_frames_out_of_range_raises_not_found_before_reading(thousand_frames):
    path, _ = thousand_frames
    with pytest.raises(NotFound):
        list(iter_frames(path, scan_layout(path), [1, 1001]))


@pytest.mark.parametrize("name", ["CT_small.dcm", "examples_ybr_color.dcm", "liver_1frame.dcm"])
def test_frame_layout_json_round_trip_is_identical(name):
    layout = scan_layout(_td(name))
    text = layout.to_json()
    assert isinstance(text, str)
    assert FrameLayout.from_json(text) == layout


def test_scan_layout_file_with_implicit_body_despite_meta_is_read():
    path = _td("SC_rgb_jpeg.dcm")  # meta says JPEG Baseline, body is implicit VR
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layout = scan_layout(path)
        ds = pydicom.dcmread(path)
    assert layout is not None
    assert read_frame(path, layout, 1) == next(generate_frames(ds.PixelData, number_of_frames=1))


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm",
                                  "SC_rgb_rle_2frame.dcm", "rtdose.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "SC_rgb_jpeg_dcmtk.dcm"])
def test_scan_layout_with_deferred_dataset_equals_reading_the_file(name):
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not bundled")
    ds = pydicom.dcmread(path, defer_size=256)  # how ingest reads an upload
    assert scan_layout(path, ds) == scan_layout(path)
