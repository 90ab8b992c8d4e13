"""Store-time parsing (``ingest.prepare``) gives the same index record whether an upload is parsed
from memory (up to ``IN_MEMORY_LIMIT``) or from its spool file (larger uploads): the same frame
layout, metadata, digest and refusals, through STOW-RS and the retrieve paths that use them."""
from __future__ import annotations

import hashlib

import pydicom
import pytest
from pydicom.data import get_palette_files, get_testdata_file

from dicomweb_wsgi.frames import scan_layout
from dicomweb_wsgi.ingest import IN_MEMORY_LIMIT
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, store

FRAME = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
SMALL = 64  # rows and columns: 8 KB of pixels, a deferred value (above the bulk threshold)
LARGE = 1100  # 1100 x 1100 x 16 bits = 2.4 MB: above IN_MEMORY_LIMIT, parsed from the spool file


def _instance(size: int, **attributes):
    ds = make_dataset(rows=size, columns=size, pixel_seed=size, **attributes)
    data = dataset_bytes(ds)
    assert (len(data) > IN_MEMORY_LIMIT) == (size == LARGE)
    return ds, data


def _frame(client, ds) -> bytes:
    url = (f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
           "/frames/1")
    resp = client.get(url, headers={"Accept": FRAME})
    return resp.body[resp.body.index(b"\r\n\r\n") + 4:resp.body.rindex(b"\r\n--")]


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_ingest_record_is_the_same_from_memory_and_from_the_spool_file(dicomweb_app, dicomweb_client, size):
    ds, data = _instance(size, NumberOfFrames=1)
    store(dicomweb_client, [data], status=200)
    [inst] = dicomweb_app.archive.instances(ds.StudyInstanceUID)
    assert inst.size == len(data)
    with open(dicomweb_app.archive.path(inst), "rb") as fh:
        stored = fh.read()
    assert stored == data
    # The digest the index keeps is the SHA-256 of the stored bytes (what `check` verifies).
    assert dicomweb_app.archive.check(verify_digests=True).healthy
    row = dicomweb_app.archive.index.read("SELECT digest, frames_json FROM instance")[0]
    assert row["digest"] == hashlib.sha256(data).hexdigest()
    assert '"len":%d' % (size * size * 2) in row["frames_json"]
    # The frame layout points at the pixel bytes in the file.
    assert _frame(dicomweb_client, ds) == ds.PixelData
    metadata = dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/metadata").json
    assert metadata[0]["00280010"] == {"vr": "US", "Value": [size]}
    assert metadata[0]["00080018"] == {"vr": "UI", "Value": [ds.SOPInstanceUID]}


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_ingest_adds_a_missing_preamble_in_both_paths(dicomweb_app, dicomweb_client, size):
    ds, data = _instance(size)
    store(dicomweb_client, [data[132:]], status=200)
    [inst] = dicomweb_app.archive.instances(ds.StudyInstanceUID)
    with open(dicomweb_app.archive.path(inst), "rb") as fh:
        assert fh.read() == data
    assert _frame(dicomweb_client, ds) == ds.PixelData


@pytest.mark.parametrize("size", [SMALL, LARGE])
def test_ingest_refuses_a_truncated_upload_in_both_paths(dicomweb_app, dicomweb_client, size):
    ds, data = _instance(size)
    resp = store(dicomweb_client, [data[:-100]], status=409)
    failed = resp.json["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC000]
    assert "truncated" in resp.headers["Warning"]
    assert dicomweb_app.archive.instances(ds.StudyInstanceUID) == []


@pytest.mark.parametrize("value, reported", [("1.2.3\\4.5", "['1.2.3', '4.5']"), ("", None)])
def test_ingest_multi_valued_or_empty_sop_uid_is_refused_and_reported_as_read(dicomweb_client, value, reported):
    ds = make_dataset(study_uid=new_uid())
    ds.SOPInstanceUID = value
    resp = store(dicomweb_client, [dataset_bytes(ds)], status=409)
    failed = resp.json["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xA900]
    assert failed["00081155"].get("Value") == ([reported] if reported else None)


def _bundled(name: str) -> bytes:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not bundled with this pydicom")
    with open(path, "rb") as fh:
        return fh.read()


@pytest.mark.parametrize("source", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                    "SC_ybr_full_422_uncompressed.dcm", "liver_1frame.dcm", "SC_rgb_small_odd.dcm",
                                    "3 frames", "3 frames, 1 bit"])
def test_ingest_frame_layout_from_the_stored_json_equals_the_layout_read_from_the_file(dicomweb_app, dicomweb_client,
                                                                                       source):
    # The store takes Rows, Columns, Samples per Pixel, Bits Allocated, Number of Frames and the
    # Photometric Interpretation from the instance's DICOM JSON; reading them from the file must agree.
    if source.endswith(".dcm"):
        data = _bundled(source)
    else:
        data = dataset_bytes(make_dataset(rows=9, columns=7, frames=3, bits=1 if "bit" in source else 16))
    store(dicomweb_client, [data])
    [inst] = dicomweb_app.archive.instances(dicomweb_app.archive.index.read("SELECT study_uid FROM study")[0][0])
    expected = scan_layout(dicomweb_app.archive.path(inst))
    assert expected is not None and expected.number_of_frames == (3 if "frames" in source else 1)
    rows = dicomweb_app.archive.index.read("SELECT frames_json FROM instance")
    assert [r["frames_json"] for r in rows] == [expected.to_json()]


def test_ingest_a_real_color_palette_on_studies_is_0122_not_a_missing_study_uid(dicomweb_client):
    # A Color Palette IOD has no Study or Series Instance UID: the class is what is wrong here.
    palette = pydicom.dcmread(get_palette_files("hotiron.dcm")[0])
    assert "StudyInstanceUID" not in palette
    resp = store(dicomweb_client, [dataset_bytes(palette)], status=409)
    (failed,) = resp.json["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0x0122]
    assert "Non-Patient" in resp.headers["Warning"]


def test_ingest_values_holding_placeholder_text_are_served_as_stored(dicomweb_client):
    # The server names the public base URL in stored JSON by a placeholder (%%BASE%%); a value that
    # holds the same text must come back unchanged from metadata, QIDO and XML alike.
    text = "see %%BASE%% and %%PREFIX%% here, 100%%"
    ds = make_dataset(StudyDescription=text, ImageComments=text, SeriesDescription=text,
                      TimezoneOffsetFromUTC="+0100")  # the offset takes the study-JSON merge path
    store(dicomweb_client, [ds])
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    (meta,) = dicomweb_client.get(url + "/metadata", status=200).json
    for tag in ("00081030", "00204000", "0008103E"):
        assert meta[tag]["Value"] == [text]
    assert meta["7FE00010"]["BulkDataURI"] == f"http://localhost:80{url}/bulkdata/7FE00010"
    (study,) = dicomweb_client.get(f"/studies?StudyInstanceUID={ds.StudyInstanceUID}&includefield=00081030",
                                   status=200).json
    assert study["00081030"]["Value"] == [text]
    (series,) = dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/series", status=200).json
    assert series["0008103E"]["Value"] == [text]
    (instance,) = dicomweb_client.get(f"/studies/{ds.StudyInstanceUID}/instances?includefield=all", status=200).json
    assert instance["00204000"]["Value"] == [text]
    xml = dicomweb_client.get(url + "/metadata", headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
                              status=200)
    assert text.encode() in xml.body.replace(b"&amp;", b"&")
