"""Hostile input: whatever arrives, the answer is never a 500, never a hang, and a rejected request
changes nothing (no index row, no blob, no spool file).

Property-based (hypothesis) over the multipart reader, the Accept / Content-Type parsers, the QIDO query
parser, DICOM JSON and XML input, and DICOM parsing of uploaded parts (mutated PS3.10 files through
STOW); and specific cases: path traversal in every path and query value, over-large bodies (413 before
reading them), huge header lines (through waitress too), thousands of tiny parts, a deflate bomb,
XML entities, and pixel data whose declared size lies. ``HOSTILE_EXAMPLES`` sets the examples per
property (``benchmarks/reliability_report.py`` runs thousands).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import struct
import tracemalloc
import zlib
from typing import Any, Iterator

import pytest
import webtest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian

from dicomweb_wsgi import dicomjson, ingest, query
from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.config import load_settings
from dicomweb_wsgi.errors import BadRequest, PayloadTooLarge
from dicomweb_wsgi.mediatypes import Offer, negotiate, parse_accept, parse_media_type
from dicomweb_wsgi.multipart import read_multipart
from dicomweb_wsgi.routes import build_routes
from dicomweb_wsgi.testing import STOW_BOUNDARY, dataset_bytes, make_dataset, new_uid, store, stow_body

from .serverproc import ServerProcess

EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "40"))
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, database=None,
                    derandomize=not os.environ.get("HOSTILE_RANDOM"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                           HealthCheck.data_too_large])
HANG_SECONDS = 60  # generous: one request, one parse; a loop that never ends trips it
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary="{STOW_BOUNDARY}"'


class Hang(Exception):
    """An operation ran past HANG_SECONDS."""


@contextlib.contextmanager
def no_hang(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Fail (instead of hanging the suite) if the block runs longer than ``seconds``."""
    def expire(signum: int, frame: Any) -> None:
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def state(app: Any) -> tuple:
    """What a request may change: index counts, the blob keys, the spool folder."""
    archive = app.archive
    return (archive.index.counts(), sorted(b.key for b in archive.blobs.iter_blobs()),
            sorted(os.listdir(archive.blobs.spool_dir)))


def client_for(app: Any) -> webtest.TestApp:
    # lint off: hostile requests (NUL in paths, odd headers) are exactly what lint refuses to send
    return webtest.TestApp(app, lint=False)


def post_checked(app: Any, url: str, body: bytes, content_type: str, **headers: str) -> webtest.TestResponse:
    """POST through the app: never a 5xx; when nothing was accepted, nothing changed."""
    before = state(app)
    with no_hang():
        resp = client_for(app).post(url, body, headers={"Content-Type": content_type, **headers}, status="*",
                                    expect_errors=True)
    assert resp.status_int < 500, resp.text[:500]
    if resp.status_int not in (200, 202):
        assert state(app) == before, f"{resp.status_int} changed the state"
    return resp


def post_metadata(app: Any, part_type: str, payload: bytes) -> webtest.TestResponse:
    """STOW one DICOM JSON or XML metadata part (PS3.18 §10.5.1.2) through ``post_checked``."""
    body = (f"--{STOW_BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + payload
            + f"\r\n--{STOW_BOUNDARY}--\r\n".encode())
    return post_checked(app, "/studies", body, f'multipart/related; type="{part_type}"; boundary="{STOW_BOUNDARY}"')


def get_checked(app: Any, url: str, **headers: str) -> webtest.TestResponse:
    with no_hang():
        resp = client_for(app).get(url, headers=headers, status="*", expect_errors=True)
    assert resp.status_int < 500, f"GET {url[:200]}: {resp.status_int} {resp.text[:300]}"
    return resp


# -- the multipart reader --------------------------------------------------------------------------------
def _read_all(body: bytes, boundary: str, spool: str, length: int | None, chunk: int) -> int:
    """Read every part, deleting each spooled file; returns the count. Only 400/413 may escape."""
    count = 0
    try:
        for part in read_multipart(io.BytesIO(body), parse_media_type(f"multipart/related; boundary=\"{boundary}\""),
                                   spool_dir=spool, content_length=length, max_parts=50, max_part_size=4096,
                                   max_header_bytes=512, chunk_size=chunk):
            os.unlink(part.path)
            count += 1
    except (BadRequest, PayloadTooLarge):
        pass
    return count


@PROPERTY
@given(body=st.binary(max_size=3000), boundary=st.sampled_from(["b", "XyZ", "a" * 70, STOW_BOUNDARY]),
       chunk=st.integers(1, 97), truncate=st.booleans())
def test_hostile_multipart_random_bytes_give_parts_or_client_error(tmp_path_factory, body, boundary, chunk,
                                                                   truncate):
    spool = str(tmp_path_factory.mktemp("spool"))
    with no_hang():
        _read_all(body, boundary, spool, len(body) // 2 if truncate else None, chunk)
    assert os.listdir(spool) == []


def _mutate(data: bytes, ops: list[tuple[int, int, bytes]]) -> bytes:
    """Apply (kind, position, bytes) edits: 0 overwrite, 1 insert, 2 delete len(bytes), 3 truncate."""
    buf = bytearray(data)
    for kind, position, chunk in ops:
        position %= max(len(buf), 1)
        if kind == 0:
            buf[position:position + len(chunk)] = chunk
        elif kind == 1:
            buf[position:position] = chunk
        elif kind == 2:
            del buf[position:position + len(chunk)]
        else:
            del buf[position:]
    return bytes(buf)


# Length fields are where parsers get hurt: lie with these values as often as with random bytes.
LIES = st.sampled_from([b"\xff\xff\xff\xff", b"\xfe\xff\xff\x7f", b"\x00\x00\x00\x00", b"\x01\x00\x00\x00",
                        b"\xff\xff", b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"--", b"\r\n"])
EDITS = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 1 << 16), LIES | st.binary(min_size=1, max_size=8)),
                 min_size=1, max_size=4)


@pytest.fixture(scope="module")
def valid_body() -> bytes:
    study = new_uid()
    return stow_body([make_dataset(study_uid=study, rows=8, columns=8), make_dataset(study_uid=study, rows=8,
                                                                                      columns=8)])[1]


@PROPERTY
@given(ops=EDITS)
def test_hostile_mutated_stow_body_never_500_and_rejection_changes_nothing(dicomweb_app, valid_body, ops):
    post_checked(dicomweb_app, "/studies", _mutate(valid_body, ops), STOW_TYPE)


# -- DICOM parsing of uploaded parts -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def valid_files() -> list[bytes]:
    ds = make_dataset(rows=8, columns=8)
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.ReferencedImageSequence = [make_dataset(rows=1, columns=1)]  # a nested item to damage
    jpeg = make_dataset(rows=8, columns=8, bits=8, transfer_syntax="1.2.840.10008.1.2.4.50")
    jpeg.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(60) + b"\xff\xd9", b"\xff\xd8\xff\xd9"])
    jpeg.NumberOfFrames = 2
    return [dataset_bytes(ds), dataset_bytes(jpeg), open(get_testdata_file("CT_small.dcm"), "rb").read()]


@PROPERTY
@given(which=st.integers(0, 2), ops=EDITS)
def test_hostile_mutated_dicom_part_is_stored_or_refused_never_500(dicomweb_app, valid_files, which, ops):
    data = _mutate(valid_files[which], [(k, 132 + p, c) for k, p, c in ops])  # keep the preamble: reach the parser
    resp = post_checked(dicomweb_app, "/studies", data, "application/dicom")
    assert resp.status_int in ((400,) if not data else (200, 409)), resp.text[:300]  # no body at all: 400
    if resp.status_int == 200:
        # What was accepted is served without a 5xx by every resource that reads it.
        url = resp.json["00081199"]["Value"][0]["00081190"]["Value"][0].replace("http://localhost:80", "")
        for suffix in ("", "/metadata", "/frames/1", "/rendered", "/thumbnail"):
            get_checked(dicomweb_app, url + suffix)
        get_checked(dicomweb_app, url, Accept="application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50")


def test_hostile_pixel_data_longer_than_the_file_is_refused_with_c000(dicomweb_app):
    data = bytearray(dataset_bytes(make_dataset(rows=8, columns=8)))
    at = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00") + 8
    data[at:at + 4] = struct.pack("<I", 1 << 30)  # Pixel Data says 1 GB; the file holds 128 bytes
    resp = post_checked(dicomweb_app, "/studies", bytes(data), "application/dicom")
    assert resp.status_int == 409
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]


def test_hostile_encapsulated_fragment_longer_than_the_file_is_refused_with_c000(dicomweb_app):
    ds = make_dataset(rows=8, columns=8, bits=8, transfer_syntax="1.2.840.10008.1.2.4.50")
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xdb" + bytes(60) + b"\xff\xd9"])
    data = bytearray(dataset_bytes(ds))
    at = data.rfind(b"\xfe\xff\x00\xe0")  # the last item: the fragment
    data[at + 4:at + 8] = struct.pack("<I", 0x7FFFFFF0)  # says 2 GB; a frame request would read past the end
    resp = post_checked(dicomweb_app, "/studies", bytes(data), "application/dicom")
    assert resp.status_int == 409
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]


def test_hostile_undecodable_compressed_pixel_data_bulkdata_is_an_error_status(dicomweb_app):
    ds = make_dataset(rows=8, columns=8, bits=8, transfer_syntax="1.2.840.10008.1.2.4.50")
    ds.PixelData = encapsulate([b"\xff\xd8garbage\xff\xd9"])
    assert post_checked(dicomweb_app, "/studies", dataset_bytes(ds), "application/dicom").status_int == 200
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/bulkdata"
    assert get_checked(dicomweb_app, url).status_int in (200, 406)


@pytest.mark.parametrize("lie", [
    {"Rows": 4096, "Columns": 4096},
    {"NumberOfFrames": 1000},
    {"NumberOfFrames": 2 ** 31 - 1},
    {"Rows": 0},
    {"BitsAllocated": 13},
    {"SamplesPerPixel": 3, "PhotometricInterpretation": "RGB"},
])
def test_hostile_pixel_data_shorter_than_declared_is_served_without_500(dicomweb_app, lie):
    ds = make_dataset(rows=8, columns=8)
    for keyword, value in lie.items():
        setattr(ds, keyword, value)
    resp = post_checked(dicomweb_app, "/studies", dataset_bytes(ds), "application/dicom")
    assert resp.status_int == 200  # stored as sent: the bytes are the sender's; reading them must not break
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    for suffix in ("/metadata", "/frames/1", "/frames/2", "/rendered", "/thumbnail", "/pixeldata"):
        get_checked(dicomweb_app, url + suffix)
    assert get_checked(dicomweb_app, url, Accept="application/dicom; transfer-syntax=1.2.840.10008.1.2.4.50"
                       ).status_int == 406
    same = get_checked(dicomweb_app, url, Accept="application/dicom; transfer-syntax=*")
    assert same.body == dataset_bytes(ds)


# -- decompression bomb --------------------------------------------------------------------------------------
def deflate_bomb(inflated_mb: int) -> bytes:
    """A Deflated Explicit VR Little Endian file of ~inflated_mb/1000 MB whose data set inflates to
    ``inflated_mb`` MB: a valid header, then a Pixel Data element of zeros (PS3.5 A.5)."""
    ds = make_dataset(transfer_syntax=DeflatedExplicitVRLittleEndian)
    del ds.PixelData
    raw = dataset_bytes(ds)
    meta_end = 144 + struct.unpack("<I", raw[140:144])[0]  # after (0002,0000) File Meta Group Length
    header = zlib.decompress(raw[meta_end:], -zlib.MAX_WBITS)
    size = inflated_mb << 20
    start = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    first = start.compress(header + b"\xe0\x7f\x10\x00OB\x00\x00" + struct.pack("<I", size))
    first += start.flush(zlib.Z_FULL_FLUSH)
    zeros = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    megabyte = zeros.compress(bytes(1 << 20)) + zeros.flush(zlib.Z_FULL_FLUSH)  # history-free: repeatable
    return raw[:meta_end] + first + megabyte * inflated_mb + start.flush(zlib.Z_FINISH)


def test_hostile_deflate_bomb_is_refused_without_inflating_it(dicomweb_app):
    bomb = deflate_bomb(1024)  # 1 MB on the wire, 1 GB inflated
    assert len(bomb) < 2 << 20
    tracemalloc.start()
    try:
        resp = post_checked(dicomweb_app, "/studies", bomb, "application/dicom")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert resp.status_int == 409
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]
    assert "inflates to more than" in resp.headers["Warning"]
    assert peak < 64 << 20, f"peak {peak >> 20} MB of Python memory while refusing a bomb"


def test_hostile_deflated_file_under_the_bound_is_stored_byte_identical(dicomweb_app):
    small = deflate_bomb(2)  # inflates to 2 MB: an ordinary deflated file, however sparse
    resp = post_checked(dicomweb_app, "/studies", small, "application/dicom")
    assert resp.status_int == 200
    data = open(get_testdata_file("image_dfl.dcm"), "rb").read()
    resp = post_checked(dicomweb_app, "/studies", data, "application/dicom")
    assert resp.status_int == 200
    url = resp.json["00081199"]["Value"][0]["00081190"]["Value"][0].replace("http://localhost:80", "")
    assert get_checked(dicomweb_app, url, Accept="application/dicom; transfer-syntax=*").body == data


def test_hostile_corrupt_deflate_stream_is_refused_with_c000(dicomweb_app):
    bomb = deflate_bomb(1)
    resp = post_checked(dicomweb_app, "/studies", bomb[:-2000] + b"\xff" * 64, "application/dicom")
    assert resp.status_int == 409
    assert resp.json["00081198"]["Value"][0]["00081197"]["Value"] == [0xC000]


def test_hostile_inflated_size_check_counts_inflated_bytes(tmp_path):
    path = tmp_path / "sparse.dcm"
    path.write_bytes(deflate_bomb(3))
    with pytest.raises(ingest.IngestError, match="inflates to more than"):
        ingest.check_inflated_size(str(path), limit=2 << 20)
    ingest.check_inflated_size(str(path), limit=4 << 20)  # within the bound: accepted


# -- media types --------------------------------------------------------------------------------------------
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=300)
MEDIA_TEXT = st.one_of(HEADER_TEXT, st.lists(st.sampled_from([
    "multipart/related", "application/dicom", "application/dicom+json", "image/jpeg", "*/*", ";", ",", "=",
    '"', "\\", " ", "type=", "transfer-syntax=", "boundary=", "q=", "0.5", "1.2.840.10008.1.2.1", "*",
    "charset=utf-8", "q=2", "q=-1", "application/*", "multipart/*", "\t"]), max_size=20).map("".join))


@PROPERTY
@given(text=MEDIA_TEXT)
def test_hostile_media_type_parsers_raise_only_bad_request(text):
    with no_hang():
        try:
            parsed = parse_media_type(text)
            assert parse_media_type(str(parsed)).type == parsed.type
        except BadRequest:
            pass
        ranges = parse_accept([text])
        negotiate(ranges, [Offer("application/dicom", multipart=True, transfer_syntaxes=frozenset({"1.2.3"})),
                           Offer("application/dicom+json", multipart=False)])


@PROPERTY
@given(accept=MEDIA_TEXT, content_type=MEDIA_TEXT, which=st.integers(0, 3))
def test_hostile_accept_and_content_type_headers_never_500(dicomweb_app, accept, content_type, which):
    study = new_uid()
    if which == 0:
        post_checked(dicomweb_app, "/studies", b"--x\r\n\r\n--x--", content_type or "x/y", Accept=accept)
    else:
        url = ["/studies", f"/studies/{study}", f"/studies/{study}/metadata"][which - 1]
        get_checked(dicomweb_app, url, Accept=accept)


# -- the query parser ------------------------------------------------------------------------------------------
QUERY_KEYS = st.one_of(st.sampled_from([
    "PatientName", "PatientID", "StudyDate", "StudyTime", "00100010", "0020000D", "ModalitiesInStudy",
    "00400275.00400009", "ReferencedSeriesSequence.SeriesInstanceUID", "includefield", "fuzzymatching", "limit",
    "offset", "StudyInstanceUID", "SeriesNumber", "NumberOfStudyRelatedInstances", "00081190", "7FE00010",
    "AcquisitionDateTime", "0009xx10", "00091010"]), HEADER_TEXT)
QUERY_VALUES = st.one_of(st.sampled_from([
    "", "*", "?", "Doe*", "2024-", "-2024", "20240101-20231231", "1015", "1.2.3,1.2.4", "1.2.3\\4", "all",
    "true", "-1", "99999999999999999999", "abc", "0", "%", "_", "[a-z]", "*?*?*?*", "=", "^^^^", "\\",
    "19700101120000.000000+0100"]), HEADER_TEXT)


@PROPERTY
@given(params=st.dictionaries(QUERY_KEYS, st.lists(QUERY_VALUES, min_size=1, max_size=3), max_size=6),
       level=st.sampled_from(["study", "series", "instance"]))
def test_hostile_query_parser_raises_only_bad_request(params, level):
    with no_hang():
        try:
            query.parse_search(params, level)
        except BadRequest:
            pass


@PROPERTY
@given(params=st.lists(st.tuples(QUERY_KEYS, QUERY_VALUES), max_size=6),
       path=st.sampled_from(["/studies", "/series", "/instances", "/studies/1.2.3/series", "/workitems"]))
def test_hostile_qido_search_never_500(dicomweb_app, dicomweb_client, params, path):
    if not state(dicomweb_app)[0]["instances"]:
        store(dicomweb_client, [make_dataset()])
    from urllib.parse import urlencode

    get_checked(dicomweb_app, f"{path}?{urlencode(params)}")


# -- DICOM JSON and XML input ---------------------------------------------------------------------------------
VRS = ["AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF", "OL", "OV", "OW",
       "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN", "UR", "US", "UT", "UV", "XX", ""]
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(), HEADER_TEXT)
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(HEADER_TEXT, inner,
                                                                                                   max_size=4),
                        max_leaves=20)
TAGS = st.one_of(st.sampled_from(["00100010", "0020000D", "00080016", "00080018", "7FE00010", "00280010",
                                  "00081115", "00020010", "00090010", "00091001", "00000000", "FFFEE000"]),
                 st.text("0123456789ABCDEFabcdefx", min_size=7, max_size=9))


def _element(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.fixed_dictionaries({"vr": st.sampled_from(VRS)}, optional={
        "Value": st.lists(st.one_of(JSON_LEAF, children, st.fixed_dictionaries(
            {}, optional={"Alphabetic": HEADER_TEXT, "Ideographic": JSON_LEAF}))),
        "InlineBinary": st.one_of(HEADER_TEXT, st.binary(max_size=40).map(
            lambda b: __import__("base64").b64encode(b).decode())),
        "BulkDataURI": st.sampled_from(["file:///etc/passwd", "http://127.0.0.1:1/x", "../../index.sqlite3",
                                        "cid:x", ""])})


DICOM_JSON = st.recursive(st.dictionaries(TAGS, _element(st.nothing()), max_size=4),
                          lambda inner: st.dictionaries(TAGS, _element(inner), max_size=4), max_leaves=12)


def _bulk(uri: str) -> bytes:
    raise BadRequest(f"no bulk data part for {uri[:40]}")


@PROPERTY
@given(obj=st.one_of(DICOM_JSON, JSON_ANY))
def test_hostile_dicom_json_gives_dataset_or_bad_request(obj):
    with no_hang():
        try:
            dicomjson.json_to_dataset(obj, _bulk)
        except BadRequest:
            pass


@PROPERTY
@given(obj=DICOM_JSON, as_xml=st.booleans())
def test_hostile_stow_of_dicom_json_and_xml_never_500(dicomweb_app, obj, as_xml):
    base, _ = dicomjson.dataset_to_json(make_dataset(rows=2, columns=2), bulk_prefix=None)
    doc = {**base, **obj}
    part_type = "application/dicom+xml" if as_xml else "application/dicom+json"
    try:
        payload = dicomjson.json_to_xml(doc) if as_xml else json.dumps([doc]).encode()
    except (BadRequest, ValueError, TypeError):
        return  # not expressible in XML: nothing to send
    post_metadata(dicomweb_app, part_type, payload)


@PROPERTY
@given(data=st.one_of(st.binary(max_size=500), HEADER_TEXT.map(str.encode), st.just(b"")),
       ops=EDITS)
def test_hostile_xml_input_gives_json_or_bad_request(data, ops):
    valid = dicomjson.json_to_xml(dicomjson.dataset_to_json(make_dataset(rows=2, columns=2), bulk_prefix=None)[0])
    for doc in (data, _mutate(valid, ops)):
        with no_hang():
            try:
                dicomjson.xml_to_json(doc)
            except BadRequest:
                pass


LAUGHS = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
          + b"".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'.encode() for i in range(9))
          + b']><NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Value number="1">&j;</Value>'
          b"</DicomAttribute></NativeDicomModel>")
XXE = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><NativeDicomModel>'
       b'<DicomAttribute tag="00100020" vr="LO"><Value number="1">&x;</Value></DicomAttribute></NativeDicomModel>')
EXTERNAL_DTD = (b'<?xml version="1.0"?><!DOCTYPE NativeDicomModel SYSTEM "http://127.0.0.1:1/evil.dtd">'
                b"<NativeDicomModel/>")
PARAMETER_ENTITY = (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY % p SYSTEM "file:///etc/passwd"> %p;]>'
                    b"<NativeDicomModel/>")


@pytest.mark.parametrize("doc", [LAUGHS, XXE, EXTERNAL_DTD, PARAMETER_ENTITY])
def test_hostile_xml_entities_are_refused_through_stow(dicomweb_app, doc):
    with pytest.raises(BadRequest, match="DTD"):
        dicomjson.xml_to_json(doc)
    resp = post_metadata(dicomweb_app, "application/dicom+xml", doc)
    assert resp.status_int == 400
    assert b"root:" not in resp.body


@pytest.mark.parametrize("encoding", ["ATF-8", "UTF-7", "UTF-16", "x-unknown"])
def test_hostile_xml_declaring_an_unusable_encoding_is_a_400(dicomweb_app, encoding):
    doc = f'<?xml version="1.0" encoding="{encoding}"?><NativeDicomModel/>'.encode()
    with pytest.raises(BadRequest, match="encoding"):
        dicomjson.xml_to_json(doc)
    resp = post_metadata(dicomweb_app, "application/dicom+xml", doc)
    assert resp.status_int == 400


@pytest.mark.parametrize("payload", [b"[" * 100000 + b"]" * 100000,
                                     b'[{"00081115":{"vr":"SQ","Value":[' * 3000 + b"{}" + b"]}}" * 3000 + b"]"],
                         ids=["arrays", "sequences"])
def test_hostile_deeply_nested_json_is_a_400(dicomweb_app, payload):
    resp = post_metadata(dicomweb_app, "application/dicom+json", payload)
    assert resp.status_int == 400


# -- path traversal --------------------------------------------------------------------------------------------
TRAVERSALS = ["..", ".", "%2e%2e", "%2E%2E%2F%2E%2E", "..%2f..%2f..%2fetc%2fpasswd", "..%5c..%5cindex.sqlite3",
              "%00", "1.2.3%00", "1.2.3%00.dcm", "%252e%252e%252f", "....%2f%2f", "%c0%ae%c0%ae", "~", "1.2.3;x=1",
              "1" * 65, "1." * 40 + "1", "1.2.3/../../../../etc/passwd", "%2fetc%2fpasswd", "blobs", "index.sqlite3",
              "%ef%bc%8e%ef%bc%8e", "1.2.3%0d%0aX-Injected:%20yes"]
PLACEHOLDER_VALUES = {"uid": "1.2.3", "frames": "1", "npi": "defined-procedure-protocols", "aetitle": "AE1",
                      "bulkpath": "7FE00010", "path": "7FE00010", "resource": "defined-procedure-protocols"}


def hostile_paths() -> list[str]:
    """Every route template with each placeholder in turn replaced by each traversal."""
    import re

    paths = set()
    for route in build_routes(load_settings({"allow_delete": "true"})):
        holes = list(re.finditer(r"\{(\w+)(?::(\w+))?\}", route.template))
        for index in range(len(holes)):
            for bad in TRAVERSALS:
                out, pos = "", 0
                for n, hole in enumerate(holes):
                    kind = hole.group(2) or "uid"
                    out += route.template[pos:hole.start()] + (bad if n == index else PLACEHOLDER_VALUES[kind])
                    pos = hole.end()
                paths.add((route.method, out + route.template[pos:]))
        if not holes:
            for bad in TRAVERSALS:
                paths.add((route.method, route.template.rstrip("/") + "/" + bad))
    return sorted(paths)


def test_hostile_path_traversal_in_every_path_value_is_refused(dicomweb_app, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("root:x:0:0 secret")
    client = client_for(dicomweb_app)
    before = state(dicomweb_app)
    paths = hostile_paths()
    assert len(paths) > 500
    for method, path in paths:
        with no_hang():
            resp = client.request(path, method=method, status="*", expect_errors=True,
                                  headers={"Content-Type": "application/dicom+json"}, body=b"{}")
        assert resp.status_int in (400, 404, 405, 406, 409, 415), f"{method} {path}: {resp.status_int}"
        assert b"root:x" not in resp.body and b"SQLite format" not in resp.body, f"{method} {path}"
        assert "X-Injected" not in resp.headers
    assert state(dicomweb_app) == before


def test_hostile_path_and_query_values_never_500_and_leak_nothing(dicomweb_app, dicomweb_client):
    ds = make_dataset()
    store(dicomweb_client, [ds])
    url = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    names = ["accept", "includefield", "charset", "transfer-syntax", "quality", "viewport", "window", "annotation",
             "region", "limit", "offset", "PatientName", "StudyInstanceUID", "requestType", "studyUID", "seriesUID",
             "objectUID", "contentType", "frameNumber", "anonymize", "iccprofile"]
    targets = [url, url + "/metadata", url + "/rendered", url + "/frames/1", url + "/bulkdata",
               f"/studies/{ds.StudyInstanceUID}", "/studies", "/series", "/instances", "/wado", "/workitems"]
    for target in targets:
        for bad in TRAVERSALS:
            query_string = "&".join(f"{name}={bad}" for name in names)
            if target == "/wado":
                query_string = f"requestType=WADO&studyUID={bad}&seriesUID={bad}&objectUID={bad}"
            resp = get_checked(dicomweb_app, f"{target}?{query_string}")
            assert b"root:x" not in resp.body and b"SQLite format" not in resp.body


def _raw_http(url: str, request: bytes) -> bytes:
    """Send raw bytes to a live server; return its answer: the head and the Content-Length body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may answer and close before taking everything
        data = b""
        while True:
            head, sep, rest = data.partition(b"\r\n\r\n")
            if sep:
                lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")]
                if len(rest) >= (int(lengths[0]) if lengths else 0):
                    return data
            try:
                chunk = sock.recv(65536)
            except OSError:
                return data
            if not chunk:
                return data
            data += chunk


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[ServerProcess]:
    """A live server with small limits: 1 MB bodies, 200 parts."""
    folder = tmp_path_factory.mktemp("live")
    config = folder / "live.ini"
    config.write_text("[app:main]\ndicomweb.max_request_body = 1M\ndicomweb.max_parts = 200\n"
                      "dicomweb.min_free_space = 0\n")
    with ServerProcess(str(folder / "data"), config=str(config)) as server:
        yield server


def test_hostile_raw_traversal_through_waitress_is_refused(live):
    for raw in [b"/studies/..%2f..%2f..%2fetc%2fpasswd", b"/studies/../../../etc/passwd", b"/../index.sqlite3",
                b"/studies/1.2.3/series/%2e%2e/instances/%2e%2e", b"/studies/1.2.3%00/metadata",
                b"/%2e%2e/%2e%2e/etc/passwd", b"/wado?requestType=WADO&studyUID=..&seriesUID=..&objectUID=..",
                b"/studies/1.2.3\\..\\..\\index.sqlite3", b"//etc/passwd", b"/studies/" + b"1" * 5000]:
        answer = _raw_http(live.url, b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = answer.split(b" ", 2)[1] if answer.startswith(b"HTTP/") else b""
        assert status in (b"400", b"404"), (raw, answer[:200])
        assert b"root:x" not in answer and b"SQLite format" not in answer


# -- sizes: bodies, headers, parts ------------------------------------------------------------------------------
class EndlessInput:
    """A request body that never ends; counts what the app read."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size is None or size < 0 else min(size, 65536)
        self.read_bytes += size
        return b"x" * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


def _call(app: Any, environ: dict) -> tuple[str, bytes]:
    from wsgiref.util import setup_testing_defaults

    setup_testing_defaults(environ)
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: seen.append(status)))
    return seen[0], body


@pytest.mark.parametrize("content_type", [STOW_TYPE, "application/dicom"])
def test_hostile_oversized_body_is_413_before_reading_it(tmp_path, content_type):
    app = make_app({"data_dir": str(tmp_path / "data"), "max_request_body": "1M", "min_free_space": "0"})
    try:
        declared = EndlessInput()
        status, body = _call(app, {"REQUEST_METHOD": "POST", "PATH_INFO": "/studies", "CONTENT_TYPE": content_type,
                                   "CONTENT_LENGTH": str(10 ** 12), "wsgi.input": declared})
        assert status.startswith("413") and declared.read_bytes == 0, body
        chunked = EndlessInput()  # no Content-Length: cut off once past the limit, not read to the end
        with no_hang():
            status, body = _call(app, {"REQUEST_METHOD": "POST", "PATH_INFO": "/studies", "CONTENT_TYPE": content_type,
                                       "wsgi.input": chunked, "wsgi.input_terminated": True})
        assert status.startswith("413"), body
        assert chunked.read_bytes <= (1 << 20) + (1 << 20) + 65536
        assert state(app)[1:] == ([], [])
    finally:
        app.close()


class DroppedInput:
    """A request body whose client goes away after ``good`` bytes."""

    def __init__(self, good: bytes) -> None:
        self.data = io.BytesIO(good)

    def read(self, size: int = -1) -> bytes:
        chunk = self.data.read(size)
        if not chunk:
            raise ConnectionResetError(104, "Connection reset by peer")
        return chunk


def test_hostile_client_gone_mid_body_is_400_and_leaves_nothing(dicomweb_app):
    _, body = stow_body([make_dataset(), make_dataset()])
    before = state(dicomweb_app)
    status, text = _call(dicomweb_app, {"REQUEST_METHOD": "POST", "PATH_INFO": "/studies", "CONTENT_TYPE": STOW_TYPE,
                                        "CONTENT_LENGTH": str(len(body)), "wsgi.input": DroppedInput(body[:-500])})
    assert status.startswith("400") and b"cannot read the request body" in text
    assert state(dicomweb_app) == before


@pytest.mark.parametrize("path, content_type", [("/studies", "application/dicom"), ("/workitems", "application/dicom+json"),
                                                ("/color-palettes", "application/dicom")])
def test_hostile_client_gone_mid_single_part_body_is_400_not_503_and_leaves_nothing(dicomweb_app, path, content_type):
    # Servers that stream wsgi.input (waitress buffers it) raise OSError when the client goes away:
    # that is the request's fault, not a lack of resources (503) and never a 500.
    data = dataset_bytes(make_dataset())
    before = state(dicomweb_app)
    status, text = _call(dicomweb_app, {"REQUEST_METHOD": "POST", "PATH_INFO": path, "CONTENT_TYPE": content_type,
                                        "CONTENT_LENGTH": str(len(data)), "wsgi.input": DroppedInput(data[:-500])})
    assert status.startswith("400"), (status, text)
    assert b"cannot read the request body" in text or b"shorter than its Content-Length" in text, text
    assert state(dicomweb_app) == before


@pytest.mark.parametrize("length", ["0", None])
def test_hostile_empty_single_part_body_is_400(dicomweb_app, length):
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/studies", "CONTENT_TYPE": "application/dicom",
               "wsgi.input": io.BytesIO(), "wsgi.input_terminated": True}
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    status, text = _call(dicomweb_app, environ)
    assert status.startswith("400") and b"empty request body" in text, (status, text)


@pytest.mark.parametrize("length", ["1_0", "+10", " 10", "10 ", "0x0a", "１０"])
def test_hostile_content_length_that_is_not_plain_digits_is_400(dicomweb_app, length):
    # RFC 9110 §8.6: Content-Length = 1*DIGIT; Python's int() takes more than that.
    status, text = _call(dicomweb_app, {"REQUEST_METHOD": "POST", "PATH_INFO": "/studies",
                                        "CONTENT_TYPE": "application/dicom", "CONTENT_LENGTH": length,
                                        "wsgi.input": io.BytesIO(b"0123456789")})
    assert status.startswith("400") and b"Content-Length" in text, (status, text)


def test_hostile_oversized_content_length_is_413_through_waitress_without_the_body(live):
    answer = _raw_http(live.url, b"POST /studies HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
                                 b"Content-Length: 1000000000000\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_hostile_huge_header_lines_are_refused_by_waitress_and_it_keeps_serving(live):
    answer = _raw_http(live.url, b"GET /studies HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n")
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
    many = b"".join(b"X-Header-%d: value\r\n" % n for n in range(30000))  # 700 KB of short lines
    answer = _raw_http(live.url, b"GET /studies HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert answer.split(b" ", 2)[1] in (b"400", b"431"), answer[:200]
    ok = _raw_http(live.url, b"GET /studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert ok.split(b" ", 2)[1] in (b"200", b"204"), ok[:200]


def test_hostile_long_headers_under_waitress_limits_are_answered_by_the_app(dicomweb_app):
    long_accept = ", ".join(f"application/x-{n}; q=0.{n % 10}" for n in range(5000))
    assert get_checked(dicomweb_app, "/studies/1.2.3", Accept=long_accept).status_int in (404, 406)
    params = "; ".join(f"p{n}=v" for n in range(5000))
    resp = post_checked(dicomweb_app, "/studies", b"x", f"multipart/related; type=application/dicom; {params}")
    assert resp.status_int == 400
    part_header = b"X-Long: " + b"a" * (1 << 20)
    body = f"--{STOW_BOUNDARY}\r\n".encode() + part_header + b"\r\n\r\nx\r\n" + f"--{STOW_BOUNDARY}--".encode()
    resp = post_checked(dicomweb_app, "/studies", body, STOW_TYPE)
    assert resp.status_int == 400 and "headers are longer" in resp.text


def _tiny_parts(count: int, content: bytes) -> bytes:
    part = f"--{STOW_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode() + content + b"\r\n"
    return part * count + f"--{STOW_BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize("content", [b"x", b""])
def test_hostile_thousands_of_tiny_parts_fail_one_by_one_and_leave_nothing(dicomweb_app, content):
    with no_hang():
        resp = post_checked(dicomweb_app, "/studies", _tiny_parts(3000, content), STOW_TYPE)
    assert resp.status_int == 409
    assert len(resp.json["00081198"]["Value"]) == 3000


def test_hostile_more_parts_than_allowed_is_413_and_stores_nothing(tmp_path):
    app = make_app({"data_dir": str(tmp_path / "data"), "max_parts": "100", "min_free_space": "0"})
    try:
        study = new_uid()
        _, body = stow_body([make_dataset(study_uid=study, rows=2, columns=2) for _ in range(101)])
        resp = post_checked(app, "/studies", body, STOW_TYPE)
        assert resp.status_int == 413
        assert state(app)[0]["instances"] == 0
    finally:
        app.close()


def test_hostile_many_tiny_parts_through_waitress_get_a_clear_answer(live):
    body = _tiny_parts(201, b"x")
    answer = _raw_http(live.url, b"POST /studies HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
                       + STOW_TYPE.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
