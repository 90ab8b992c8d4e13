"""WADO-RS frames and pixel data through HTTP: stored bytes, decoded pixels, transcoding, OHIF's request.

Oracles: pydicom's ``generate_frames`` for the stored codestreams, pydicom's ``pixel_array`` for
decoded pixels, and pylibjpeg / Pillow / pydicom's RLE decoder for what the server encodes.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import UID, generate_uid

from dicomweb_wsgi import transcode
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, parse_multipart, store

from .serverproc import ServerProcess
from .test_metadata import instance_url

EXPLICIT_LE = "1.2.840.10008.1.2.1"
OHIF_ACCEPT = ["multipart/related; type=application/octet-stream; transfer-syntax=*",
               'multipart/related; type="application/octet-stream"; transfer-syntax=*']
# One bundled file per transfer syntax pydicom's examples have (plus multi-frame ones).
SYNTAX_FILES = [
    "MR_small_implicit.dcm", "CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm",
    "SC_rgb_jpeg_dcmtk.dcm", "JPGExtended.dcm", "JPEG-lossy.dcm", "SC_rgb_jpeg_gdcm.dcm",
    "MR_small_jpeg_ls_lossless.dcm", "JPEGLSNearLossless_16.dcm", "MR_small_jp2klossless.dcm",
    "JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_rle_2frame.dcm", "rtdose.dcm", "rtdose_expb.dcm",
    "rtdose_rle.dcm", "examples_ybr_color.dcm",
]


def load(name: str) -> Dataset:
    """A bundled file, with the UIDs a few of them lack added (their pixel data untouched)."""
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not bundled with pydicom")
    ds = pydicom.dcmread(path)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        if keyword not in ds:
            setattr(ds, keyword, generate_uid())
    if "SOPClassUID" not in ds:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    return ds


def stored_frames(ds: Dataset) -> list[bytes]:
    """What ``transfer-syntax=*`` must send: codestreams, or native frames as little endian."""
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        return list(generate_frames(ds.PixelData, number_of_frames=count))
    raw = ds.PixelData
    bits = int(ds.BitsAllocated)
    if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2" and bits > 8:
        raw = np.frombuffer(raw, dtype=f">u{bits // 8}").astype(f"<u{bits // 8}").tobytes()
    size = int(ds.Rows) * int(ds.Columns) * int(ds.SamplesPerPixel) * bits // 8
    return [raw[i * size:(i + 1) * size] for i in range(count)]


def decoded_frames(ds: Dataset) -> list[np.ndarray] | None:
    """pydicom's decoded frames (colour as RGB), or None when pydicom cannot decode them."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except Exception:
        return None
    count = int(ds.get("NumberOfFrames", 1) or 1)
    return list(arr) if count > 1 else [arr]


def get_frames(client, ds: Dataset, numbers: str, accept: str | None = None, status: int = 200):
    headers = {"Accept": accept} if accept else {}
    resp = client.get(f"{instance_url(ds)}/frames/{numbers}", headers=headers, status=status)
    if status != 200:
        return resp, []
    return resp, parse_multipart(resp.headers["Content-Type"], resp.body)


@pytest.mark.parametrize("name", SYNTAX_FILES)
def test_frames_with_any_transfer_syntax_are_the_stored_bytes(dicomweb_client, name):
    ds = load(name)
    store(dicomweb_client, [dataset_bytes(ds)])
    expected = stored_frames(ds)
    numbers = ",".join(str(n) for n in range(1, len(expected) + 1))
    resp, parts = get_frames(dicomweb_client, ds, numbers, OHIF_ACCEPT[1])
    stored_ts = str(ds.file_meta.TransferSyntaxUID)
    sent_ts = stored_ts if UID(stored_ts).is_compressed else EXPLICIT_LE
    assert [body for _, body in parts] == expected
    for number, (headers, _) in enumerate(parts, 1):
        assert headers["Content-Type"] == f"{transcode.media_type_for(sent_ts)}; transfer-syntax={sent_ts}"
        assert headers["Content-Location"].endswith(f"{instance_url(ds)}/frames/{number}")


@pytest.mark.parametrize("name", SYNTAX_FILES)
def test_frames_without_transfer_syntax_are_uncompressed_pixels(dicomweb_client, name):
    ds = load(name)
    store(dicomweb_client, [dataset_bytes(ds)])
    expected = decoded_frames(ds)
    if expected is None:  # a damaged codestream no installed decoder reads: 406, never a 500
        resp, _ = get_frames(dicomweb_client, ds, "1", 'multipart/related; type="application/octet-stream"',
                             status=406)
        assert "cannot decode" in resp.text
        return
    last = len(expected)
    resp, parts = get_frames(dicomweb_client, ds, f"{last},1", 'multipart/related; type="application/octet-stream"')
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/octet-stream"')
    for (headers, body), arr in zip(parts, [expected[last - 1], expected[0]]):
        assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
        got = np.frombuffer(body, dtype=arr.dtype.newbyteorder("<")).reshape(arr.shape)
        assert np.array_equal(got, arr)


@pytest.mark.parametrize("accept", OHIF_ACCEPT)
@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm"])
def test_frames_ohif_request_has_no_preamble_and_exact_part_header(dicomweb_client, accept, name):
    ds = load(name)
    store(dicomweb_client, [dataset_bytes(ds)])
    resp = dicomweb_client.get(f"{instance_url(ds)}/frames/1", headers={"Accept": accept}, status=200)
    boundary = resp.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    assert resp.body.startswith(b"--" + boundary.encode() + b"\r\nContent-Type: ")
    head = resp.body.split(b"\r\n\r\n", 1)[0].decode()
    ts = ds.file_meta.TransferSyntaxUID
    assert f"\r\nContent-Type: {transcode.media_type_for(ts)}; transfer-syntax={ts}" in head
    assert resp.body.endswith(b"--" + boundary.encode() + b"--\r\n")


def test_frames_list_keeps_order_and_repeats(dicomweb_client):
    ds = make_dataset(frames=5, rows=4, columns=4)
    store(dicomweb_client, [ds])
    _, parts = get_frames(dicomweb_client, ds, "3,1,3")
    assert [body for _, body in parts] == [ds.pixel_array[i].astype("<u2").tobytes() for i in (2, 0, 2)]
    assert [h["Content-Location"].rsplit("/", 1)[1] for h, _ in parts] == ["3", "1", "3"]


@pytest.mark.parametrize("frames, status, text", [
    ("4", 404, "frame(s) 4 do not exist; the instance has 3 frame(s)"),
    ("1,2,9", 404, "frame(s) 9 do not exist"),
    ("0", 400, "invalid frame list"),
    ("1,x", 400, "invalid frame list"),
])
def test_frames_bad_numbers_are_rejected_before_anything_is_sent(dicomweb_client, frames, status, text):
    ds = make_dataset(frames=3, rows=4, columns=4)
    store(dicomweb_client, [ds])
    assert text in dicomweb_client.get(f"{instance_url(ds)}/frames/{frames}", status=status).text


def test_frames_of_instance_without_pixel_data_returns_404(dicomweb_client):
    ds = load("rtplan.dcm")
    store(dicomweb_client, [dataset_bytes(ds)])
    assert "no Pixel Data" in dicomweb_client.get(f"{instance_url(ds)}/frames/1", status=404).text
    dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/1.2.3/frames/1",
                        status=404)


def test_frames_single_part_only_for_one_frame(dicomweb_client):
    ds = load("JPEG2000.dcm")
    store(dicomweb_client, [dataset_bytes(ds)])
    resp = dicomweb_client.get(f"{instance_url(ds)}/frames/1", headers={"Accept": "image/jp2"}, status=200)
    assert resp.headers["Content-Type"] == "image/jp2; transfer-syntax=1.2.840.10008.1.2.4.91"
    assert resp.body == stored_frames(ds)[0]
    native = make_dataset(frames=2, rows=4, columns=4)
    store(dicomweb_client, [native])
    one = dicomweb_client.get(f"{instance_url(native)}/frames/2", headers={"Accept": "application/octet-stream"},
                              status=200)
    assert one.body == native.pixel_array[1].astype("<u2").tobytes()
    dicomweb_client.get(f"{instance_url(native)}/frames/1,2", headers={"Accept": "application/octet-stream"},
                        status=406)


def _gradient(bits: int, rows: int = 64, columns: int = 64) -> Dataset:
    ds = make_dataset(bits=bits, rows=rows, columns=columns)
    values = np.add.outer(np.arange(rows), np.arange(columns)) * (2 if bits == 8 else 37)
    ds.PixelData = values.astype(np.uint8 if bits == 8 else np.uint16).tobytes()
    return ds


def test_frames_transcoded_to_jpeg_baseline_decode_close_to_original(dicomweb_client):
    ds = _gradient(8)
    store(dicomweb_client, [ds])
    _, parts = get_frames(dicomweb_client, ds, "1", 'multipart/related; type="image/jpeg"; '
                          'transfer-syntax=1.2.840.10008.1.2.4.50')  # lossy only when named
    headers, body = parts[0]
    assert headers["Content-Type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    from PIL import Image

    got = np.asarray(Image.open(io.BytesIO(body))).astype(int)
    assert got.shape == (64, 64)
    assert np.abs(got - ds.pixel_array.astype(int)).mean() < 2


def test_frames_transcoded_to_lossless_syntaxes_decode_to_the_original(dicomweb_client):
    ds = _gradient(16)
    store(dicomweb_client, [ds])
    options = dict(rows=64, columns=64, samples_per_pixel=1, bits_allocated=16, bits_stored=16,
                   pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1)
    for accept, syntax in (("image/jp2", "1.2.840.10008.1.2.4.90"), ("image/dicom-rle", "1.2.840.10008.1.2.5")):
        if not transcode.can_transcode(EXPLICIT_LE, syntax):
            pytest.skip(f"no encoder for {syntax}")
        _, parts = get_frames(dicomweb_client, ds, "1", f'multipart/related; type="{accept}"')
        headers, body = parts[0]
        assert headers["Content-Type"] == f"{accept}; transfer-syntax={syntax}"
        arr = get_decoder(UID(syntax)).as_array(encapsulate([body]), **options)[0]
        assert np.array_equal(arr, ds.pixel_array)


def test_frames_that_cannot_be_produced_return_406_never_500(dicomweb_client):
    ds = load("MR_small_jp2klossless.dcm")  # 16-bit: JPEG Baseline cannot carry it
    store(dicomweb_client, [dataset_bytes(ds)])
    resp, _ = get_frames(dicomweb_client, ds, "1", "multipart/related; type=image/jpeg; "
                         "transfer-syntax=1.2.840.10008.1.2.4.50", status=406)
    assert "JPEG Baseline" in resp.text
    get_frames(dicomweb_client, ds, "1", "multipart/related; type=image/jls", status=406 if not
               transcode.can_transcode("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80") else 200)
    get_frames(dicomweb_client, ds, "1", "application/dicom+json", status=406)
    get_frames(dicomweb_client, ds, "1", "multipart/related; type=application/octet-stream; "
               "transfer-syntax=1.2.840.10008.1.2", status=406)


def test_frames_fall_back_to_the_next_acceptable_type_when_the_first_cannot_be_encoded(dicomweb_client):
    # PS3.18 §8.7.5: a 406 only when nothing acceptable can be produced; JPEG Baseline refuses 16-bit
    # pixels only when it is tried.
    ds = make_dataset(bits=16)
    store(dicomweb_client, [ds])
    baseline = 'multipart/related; type="image/jpeg"; transfer-syntax=1.2.840.10008.1.2.4.50'
    accept = f'{baseline}, multipart/related; type="application/octet-stream"; q=0.5'
    resp, parts = get_frames(dicomweb_client, ds, "1", accept, status=200)
    (headers, body), = parts
    assert headers["Content-Type"] == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    assert body == ds.pixel_array.astype("<u2").tobytes()
    resp, _ = get_frames(dicomweb_client, ds, "1", baseline, status=406)
    assert "JPEG Baseline" in resp.text  # with nothing to fall back on, the encoder's reason


def _extended_offset_table_instance(arrays: list[np.ndarray]) -> Dataset:
    """JPEG Baseline frames with an Extended Offset Table (PS3.5 A.4, PS3.3 C.7.6.3.1.8)."""
    from PIL import Image
    from pydicom.encaps import encapsulate_extended

    def jpeg(arr: np.ndarray) -> bytes:
        out = io.BytesIO()
        Image.fromarray(arr).save(out, "JPEG", quality=90)
        return out.getvalue()

    ds = make_dataset(bits=8, rows=32, columns=32, frames=len(arrays), transfer_syntax="1.2.840.10008.1.2.4.50")
    ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = encapsulate_extended(
        [jpeg(a) for a in arrays])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def test_frames_of_an_instance_with_an_extended_offset_table_decode_and_transcode(dicomweb_client):
    # The instance's Extended Offset Table went along to the decoder of a single frame's buffer,
    # which then read the wrong bytes: 406 on every frame asked for decoded or transcoded.
    rng = np.random.default_rng(0)
    ds = _extended_offset_table_instance([np.full((32, 32), 100, np.uint8),
                                          rng.integers(0, 255, (32, 32), dtype=np.uint8)])
    store(dicomweb_client, [ds])
    expected = pydicom.dcmread(io.BytesIO(dataset_bytes(ds))).pixel_array
    for number in (1, 2):
        _, [(_, body)] = get_frames(dicomweb_client, ds, str(number))
        assert body == expected[number - 1].tobytes()
    _, [(headers, codestream)] = get_frames(dicomweb_client, ds, "2", "multipart/related; type=image/jls; "
                                            "transfer-syntax=1.2.840.10008.1.2.4.80")
    decoded = get_decoder(UID("1.2.840.10008.1.2.4.80")).as_array(
        encapsulate([codestream]), rows=32, columns=32, samples_per_pixel=1, bits_allocated=8, bits_stored=8,
        pixel_representation=0, photometric_interpretation="MONOCHROME2", number_of_frames=1)[0]
    assert np.array_equal(decoded, expected[1])


def test_frames_as_image_jpeg_without_a_syntax_are_never_made_lossy(dicomweb_client):
    # PS3.18 Table 8.7.3-5: image/jpeg without a transfer-syntax means JPEG Lossless (.70), which this
    # server cannot encode: lossless pixels were sent as JPEG Baseline; now the next acceptable type.
    ds = make_dataset(bits=8, rows=64, columns=64)
    store(dicomweb_client, [ds])
    resp, _ = get_frames(dicomweb_client, ds, "1", 'multipart/related; type="image/jpeg"', status=406)
    assert "lossless" in resp.text
    _, [(headers, body)] = get_frames(dicomweb_client, ds, "1", 'multipart/related; type="image/jpeg", '
                                      'multipart/related; type="application/octet-stream"; q=0.5')
    assert headers["Content-Type"].startswith("application/octet-stream") and body == ds.pixel_array.tobytes()
    _, [(headers, _)] = get_frames(dicomweb_client, ds, "1", 'multipart/related; type="image/jpeg"; '
                                   'transfer-syntax=1.2.840.10008.1.2.4.50')  # lossy by name: as asked
    assert headers["Content-Type"].endswith("1.2.840.10008.1.2.4.50")


def test_frames_any_syntax_of_an_image_type_never_sends_another_type(dicomweb_client):
    # PS3.18 §8.7.3.5.2: transfer-syntax=* frees the syntax within image/jpeg, not the media type:
    # native frames (and RLE ones) were sent as raw octets or image/dicom-rle under image/jpeg.
    native = make_dataset(bits=8, rows=64, columns=64)
    rle = pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm"))
    store(dicomweb_client, [native, dataset_bytes(rle)])
    any_jpeg = 'multipart/related; type="image/jpeg"; transfer-syntax=*'
    for ds in (native, rle):
        resp, _ = get_frames(dicomweb_client, ds, "1", any_jpeg, status=406)
        resp, [(headers, body)] = get_frames(
            dicomweb_client, ds, "1", any_jpeg + ', multipart/related; type="application/octet-stream"; q=0.5')
        assert headers["Content-Type"].startswith("application/octet-stream")
        assert body == ds.pixel_array.tobytes()
    jpeg = pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))
    store(dicomweb_client, [dataset_bytes(jpeg)])
    _, [(headers, body)] = get_frames(dicomweb_client, jpeg, "1", any_jpeg)  # stored JPEG: sent as stored
    assert headers["Content-Type"] == "image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50"
    assert body == next(generate_frames(jpeg.PixelData, number_of_frames=1))


def test_pixeldata_resources_send_every_frame_of_every_image(dicomweb_client):
    study, series = new_uid(), new_uid()
    multi = make_dataset(study_uid=study, series_uid=series, frames=2, rows=4, columns=4, InstanceNumber=1)
    single = make_dataset(study_uid=study, series_uid=series, rows=4, columns=4, InstanceNumber=2)
    plan = load("rtplan.dcm")
    plan.StudyInstanceUID, plan.SeriesInstanceUID = study, new_uid()
    store(dicomweb_client, [multi, single, dataset_bytes(plan)])
    expected = [multi.pixel_array[0], multi.pixel_array[1], single.pixel_array]
    for url in (f"/studies/{study}/pixeldata", f"/studies/{study}/series/{series}/pixeldata"):
        resp = dicomweb_client.get(url, status=200)
        parts = parse_multipart(resp.headers["Content-Type"], resp.body)
        assert [b for _, b in parts] == [a.astype("<u2").tobytes() for a in expected]
        assert parts[2][0]["Content-Location"].endswith(instance_url(single) + "/frames/1")
    one = dicomweb_client.get(instance_url(single) + "/pixeldata", headers={"Accept": "application/octet-stream"},
                              status=200)
    assert one.body == single.pixel_array.astype("<u2").tobytes()
    dicomweb_client.get(f"/studies/{study}/series/{plan.SeriesInstanceUID}/pixeldata", status=404)
    dicomweb_client.get("/studies/1.2.3/pixeldata", status=404)


def test_frames_dicomweb_client_against_live_server(tmp_path):
    dicomweb_client = pytest.importorskip("dicomweb_client")
    native = make_dataset(frames=3, rows=8, columns=8)
    j2k = load("JPEG2000.dcm")
    with ServerProcess(str(tmp_path / "data")) as server:
        client = dicomweb_client.DICOMwebClient(server.url)
        client.store_instances([native, j2k])
        uids = (native.StudyInstanceUID, native.SeriesInstanceUID, native.SOPInstanceUID)
        frames = client.retrieve_instance_frames(*uids, frame_numbers=[3, 1])
        assert frames == [native.pixel_array[2].astype("<u2").tobytes(), native.pixel_array[0].astype("<u2").tobytes()]
        uncompressed = client.retrieve_instance_frames(*uids, frame_numbers=[2],
                                                       media_types=(("application/octet-stream", EXPLICIT_LE),))
        assert uncompressed == [native.pixel_array[1].astype("<u2").tobytes()]
        j2k_uids = (j2k.StudyInstanceUID, j2k.SeriesInstanceUID, j2k.SOPInstanceUID)
        stored = client.retrieve_instance_frames(*j2k_uids, frame_numbers=[1],
                                                 media_types=(("image/jp2", "1.2.840.10008.1.2.4.91"),))
        assert stored == stored_frames(j2k)
        as_stored = client.retrieve_instance_frames(*j2k_uids, frame_numbers=[1],
                                                    media_types=(("application/octet-stream", "*"),))
        assert as_stored == stored_frames(j2k)
        decoded = client.retrieve_instance_frames(*j2k_uids, frame_numbers=[1])
        expected = j2k.pixel_array
        assert np.array_equal(np.frombuffer(decoded[0], dtype=expected.dtype).reshape(expected.shape), expected)


def test_frames_of_a_damaged_stored_file_return_406_never_500(dicomweb_app, dicomweb_client):
    ds = load("JPEG2000.dcm")
    store(dicomweb_client, [dataset_bytes(ds)])
    inst = dicomweb_app.archive.instances(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)[0]
    path = dicomweb_app.archive.path(inst)
    with open(path, "r+b") as fh:  # wipe the codestream behind the index's back
        size = fh.seek(0, 2)
        fh.seek(size - 200)
        fh.write(b"\x00" * 200)
    resp, _ = get_frames(dicomweb_client, ds, "1", 'multipart/related; type="application/octet-stream"', status=406)
    assert "cannot" in resp.text
