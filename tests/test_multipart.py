"""Tests for dicomweb_wsgi.multipart: the streaming multipart/related reader and writer."""
from __future__ import annotations

import email.policy
import io
import os
import re
import resource
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dicomweb_wsgi.errors import BadRequest, PayloadTooLarge
from dicomweb_wsgi.mediatypes import MediaType, parse_media_type
from dicomweb_wsgi.multipart import (
    Part,
    multipart_content_type,
    new_boundary,
    read_multipart,
    write_multipart,
)

DICOMWEB_CLIENT_BOUNDARY = "0f3cf5c0-70e0-41ef-baef-c6f9f65ec3e1"
DICOMWEB_CLIENT_STOW = f'multipart/related; type="application/dicom"; boundary="{DICOMWEB_CLIENT_BOUNDARY}"'
STOW_CT = parse_media_type(DICOMWEB_CLIENT_STOW)
SIMPLE_CT = parse_media_type('multipart/related; type="application/dicom"; boundary=bnd')
CHUNK_SIZES = [1, 7, 13, 64, 256 * 1024]


@dataclass(frozen=True)
class ReadPart:
    headers: dict[str, str]
    content_type: MediaType | None
    content_location: str | None
    body: bytes
    size: int
    name: str


@pytest.fixture
def spool(tmp_path):
    """A spool directory that must be empty after the test: every file is either deleted by the test or
    removed by the reader on error."""
    path = tmp_path / "spool"
    path.mkdir()
    yield str(path)
    assert os.listdir(path) == []


def _consume(parts: Iterator[Part]) -> list[ReadPart]:
    out = []
    for part in parts:
        with open(part.path, "rb") as f:
            body = f.read()
        os.unlink(part.path)
        out.append(
            ReadPart(dict(part.headers), part.content_type, part.content_location, body, part.size,
                     os.path.basename(part.path))
        )
    return out


def read_all(body: bytes, spool: str, content_type: MediaType = SIMPLE_CT, *,
             content_length: int | None | str = "len", **kwargs) -> list[ReadPart]:
    """Read ``body`` completely, deleting each spooled part after loading it."""
    length = len(body) if content_length == "len" else content_length
    stream = io.BytesIO(body)
    return _consume(read_multipart(stream, content_type, spool_dir=spool, content_length=length, **kwargs))


def bodies(parts: list[ReadPart]) -> list[bytes]:
    return [p.body for p in parts]


class GuardedStream(io.RawIOBase):
    """A stream that fails the test if asked for more than ``limit`` bytes in total or for an unbounded read."""

    def __init__(self, data: bytes, limit: int) -> None:
        self._data = data
        self._limit = limit
        self.pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        assert n is not None and n >= 0, "unbounded read"
        assert self.pos + n <= self._limit, "read past Content-Length"
        out = self._data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


class TrickleStream(io.RawIOBase):
    """A stream whose reads return at most ``step`` bytes, as a socket may."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = data
        self._step = step
        self.pos = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = min(n, self._step)
        out = self._data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def email_build(payloads: list[bytes], boundary: str, *, part_type: str = "application/dicom",
                locations: bool = True) -> tuple[str, bytes]:
    """Build a multipart body with the standard library (an independent implementation); return (CT, body)."""
    msg = EmailMessage(policy=email.policy.HTTP)
    msg["Content-Type"] = f'multipart/related; type="{part_type}"; boundary="{boundary}"'
    maintype, subtype = part_type.split("/")
    for i, payload in enumerate(payloads):
        part = EmailMessage(policy=email.policy.HTTP)
        part.set_content(payload, maintype=maintype, subtype=subtype, cte="binary")
        if locations:
            part["Content-Location"] = f"/studies/1.2/series/3.4/instances/5.{i}"
        msg.attach(part)
    out = io.BytesIO()
    BytesGenerator(out, policy=email.policy.HTTP).flatten(msg)
    header, _, body = out.getvalue().partition(b"\r\n\r\n")
    return header.decode().partition(": ")[2], body


def email_parse(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """Parse a multipart body with the standard library; return (headers, payload) per part."""
    msg = BytesParser(policy=email.policy.HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    assert msg.is_multipart()
    assert not msg.defects, msg.defects
    out = []
    for part in msg.iter_parts():
        assert not part.defects, part.defects
        out.append(({k: str(v) for k, v in part.items()}, part.get_payload(decode=True)))
    return out


# --- reader: well-formed bodies -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_read_multipart_dicomweb_client_stow_body_parsed(spool, chunk_size):
    # Byte-for-byte what dicomweb-client's _encode_multipart_message writes: a leading CRLF (empty preamble)
    # and no CRLF after the close delimiter.
    b = DICOMWEB_CLIENT_BOUNDARY
    body = (
        f"\r\n--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"DICM\x00\x01first"
        + f"\r\n--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode() + b"second\r\n"
        + f"\r\n--{b}--".encode()
    )
    parts = read_all(body, spool, STOW_CT, chunk_size=chunk_size)
    assert bodies(parts) == [b"DICM\x00\x01first", b"second\r\n"]
    assert [p.content_type for p in parts] == [MediaType("application/dicom")] * 2
    assert [p.size for p in parts] == [len(b"DICM\x00\x01first"), len(b"second\r\n")]


def test_read_multipart_real_dicomweb_client_encoder_parsed(spool):
    web = pytest.importorskip("dicomweb_client.web")
    payloads = [b"\x00" * 300 + b"DICM", b"x--" + DICOMWEB_CLIENT_BOUNDARY.encode() + b"x", b""]
    body = web.DICOMwebClient._encode_multipart_message(payloads, DICOMWEB_CLIENT_STOW)
    assert bodies(read_all(body, spool, STOW_CT, chunk_size=16)) == payloads


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_read_multipart_email_built_body_matches_email_parser(spool, chunk_size):
    payloads = [b"\x00\xff\r\nabc--x\r\n", b"plain", b"", b"\r\n\r\n", b"--bnd-not-it", b"x" * 5000]
    ct, body = email_build(payloads, "simple boundary:1")
    expected = email_parse(ct, body)
    parts = read_all(body, spool, parse_media_type(ct), chunk_size=chunk_size)
    assert bodies(parts) == [payload for _, payload in expected]
    for part, (headers, _) in zip(parts, expected):
        assert part.headers == {k.lower(): v for k, v in headers.items()}
        assert part.content_location == headers["Content-Location"]
        assert part.headers["content-transfer-encoding"] == "binary"


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_read_multipart_preamble_and_epilogue_ignored(spool, chunk_size):
    body = (
        b"This is a preamble --bnd that mentions the boundary mid-line.\r\n"
        b"--bnd\r\nContent-Type: application/dicom\r\n\r\nONE\r\n--bnd--\r\nepilogue --bnd\r\n--bnd\r\n"
    )
    assert bodies(read_all(body, spool, chunk_size=chunk_size)) == [b"ONE"]


def test_read_multipart_preamble_with_bare_lf_accepted(spool):
    assert bodies(read_all(b"preamble\n--bnd\r\n\r\nX\r\n--bnd--", spool)) == [b"X"]


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_read_multipart_transport_padding_after_boundary_skipped(spool, chunk_size):
    body = b"--bnd \t \r\nContent-Type: application/dicom\r\n\r\nA\r\n--bnd\t\r\n\r\nB\r\n--bnd--  \r\n"
    assert bodies(read_all(body, spool, chunk_size=chunk_size)) == [b"A", b"B"]


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_read_multipart_bare_lf_part_headers_tolerated(spool, chunk_size):
    body = (
        b"--bnd\nContent-Type: application/dicom\nContent-Location: /x\n\nA"
        b"\r\n--bnd\r\nX-A: 1\n\r\nB\r\n--bnd--"
    )
    parts = read_all(body, spool, chunk_size=chunk_size)
    assert bodies(parts) == [b"A", b"B"]
    assert parts[0].content_location == "/x"
    assert parts[1].headers == {"x-a": "1"}


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_read_multipart_boundary_lookalikes_in_body_kept(spool, chunk_size):
    payload = (
        b"--bnd at start-of-line would not be a delimiter without CRLF; "
        b"xx--bnd\r\n; \n--bnd\r\n (bare LF); \r--bnd; \r\n--bn; \r\n-bnd; \r\n--BND; trailing \r\n--b"
    )
    body = b"--bnd\r\n\r\nx" + payload + b"\r\n--bnd--"
    assert bodies(read_all(body, spool, chunk_size=chunk_size)) == [b"x" + payload]


@pytest.mark.parametrize("payload", [b"\r", b"\r\n", b"\n", b"\r\n\r", b"-", b"--", b"\r\n--"])
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1024])
def test_read_multipart_body_ending_like_delimiter_prefix_kept(spool, payload, chunk_size):
    body = b"--bnd\r\n\r\n" + payload + b"\r\n--bnd\r\n\r\n" + payload + b"\r\n--bnd--"
    assert bodies(read_all(body, spool, chunk_size=chunk_size)) == [payload, payload]


def test_read_multipart_part_without_headers_has_no_content_type(spool):
    [part] = read_all(b"--bnd\r\n\r\nbody\r\n--bnd--\r\n", spool)
    assert part.headers == {}
    assert part.content_type is None
    assert part.content_location is None
    assert part.body == b"body"


@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_read_multipart_empty_parts_with_and_without_blank_line(spool, chunk_size):
    # "--bnd CRLF CRLF --bnd": no headers and no body (RFC 2046 body-part := headers [CRLF *OCTET]).
    body = b"--bnd\r\n\r\n--bnd\r\nA: 1\r\n\r\n--bnd\r\n\r\n\r\n--bnd\r\nB: 2\r\n\r\n\r\n--bnd--"
    parts = read_all(body, spool, chunk_size=chunk_size)
    assert bodies(parts) == [b"", b"", b"", b""]
    assert [p.headers for p in parts] == [{}, {"a": "1"}, {}, {"b": "2"}]


def test_read_multipart_only_close_delimiter_yields_no_parts(spool):
    assert read_all(b"--bnd--\r\n", spool) == []


def test_read_multipart_headers_lowercased_and_parsed(spool):
    body = (
        b"--bnd\r\nCONTENT-TYPE: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50\r\n"
        b"content-location:  http://host/studies/1/frames/1  \r\nX-Custom: a\r\nX-Custom: b\r\n"
        b"X-Folded: first\r\n  second\r\n\tthird\r\n\r\nF\r\n--bnd--"
    )
    [part] = read_all(body, spool)
    assert part.headers == {
        "content-type": "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.50",
        "content-location": "http://host/studies/1/frames/1",
        "x-custom": "a, b",
        "x-folded": "first second third",
    }
    assert part.content_type == MediaType(
        "application/octet-stream", {"transfer-syntax": "1.2.840.10008.1.2.4.50"}
    )


def test_read_multipart_part_record_is_frozen_with_read_only_headers(spool):
    stream = io.BytesIO(b"--bnd\r\nA: 1\r\n\r\nX\r\n--bnd--")
    [part] = list(read_multipart(stream, SIMPLE_CT, spool_dir=spool, content_length=None))
    try:
        assert os.path.dirname(part.path) == spool
        assert part.path.endswith(".part")
        with pytest.raises(TypeError):
            part.headers["b"] = "2"  # type: ignore[index]
        with pytest.raises(AttributeError):
            part.size = 3  # type: ignore[misc]
    finally:
        os.unlink(part.path)


@pytest.mark.parametrize(
    "header",
    [
        'multipart/related; type="application/dicom"; boundary="a b:c(1)"',
        "multipart/related; type=application/dicom; boundary=Ab-_.+9",
        "Multipart/Related; BOUNDARY=\"quoted\"; TYPE=application/dicom",
    ],
)
def test_read_multipart_quoted_and_unquoted_boundary(spool, header):
    ct = parse_media_type(header)
    b = ct.get("boundary").encode()
    body = b"--" + b + b"\r\n\r\nX\r\n--" + b + b"--"
    assert bodies(read_all(body, spool, ct, chunk_size=3)) == [b"X"]


def test_read_multipart_content_length_none_reads_to_eof(spool):
    body = b"--bnd\r\n\r\nA\r\n--bnd--"
    assert bodies(read_all(body, spool, content_length=None, chunk_size=4)) == [b"A"]


@pytest.mark.parametrize("chunk_size", [1, 5, 4096])
def test_read_multipart_never_reads_past_content_length(spool, chunk_size):
    body = b"--bnd\r\n\r\nA\r\n--bnd\r\n\r\nB\r\n--bnd--"
    stream = GuardedStream(body + b"NEXT REQUEST ON THE CONNECTION", len(body))
    parts = _consume(read_multipart(stream, SIMPLE_CT, spool_dir=spool, content_length=len(body),
                                    chunk_size=chunk_size))
    assert bodies(parts) == [b"A", b"B"]


def test_read_multipart_short_reads_handled(spool):
    payload = bytes(range(256)) * 40
    body = b"--bnd\r\n\r\n" + payload + b"\r\n--bnd--"
    stream = TrickleStream(body, 3)
    parts = _consume(read_multipart(stream, SIMPLE_CT, spool_dir=spool, content_length=len(body), chunk_size=1000))
    assert bodies(parts) == [payload]


def test_read_multipart_close_delimiter_stops_reading(spool):
    body = b"--bnd\r\n\r\nA\r\n--bnd--" + b"E" * 100_000
    stream = io.BytesIO(body)
    parts = _consume(read_multipart(stream, SIMPLE_CT, spool_dir=spool, content_length=len(body), chunk_size=64))
    assert bodies(parts) == [b"A"]
    assert stream.tell() < 200


def test_read_multipart_yields_each_part_before_reading_the_next(spool):
    big = b"\xab" * 1_000_000
    body = b"--bnd\r\n\r\nfirst\r\n--bnd\r\n\r\n" + big + b"\r\n--bnd--"
    stream = io.BytesIO(body)
    parts = read_multipart(stream, SIMPLE_CT, spool_dir=spool, content_length=len(body), chunk_size=4096)
    first = next(parts)
    assert stream.tell() <= 3 * 4096
    assert os.listdir(spool) == [os.path.basename(first.path)]
    os.unlink(first.path)
    second = next(parts)
    assert second.size == len(big)
    os.unlink(second.path)
    assert list(parts) == []


def test_read_multipart_closing_generator_early_leaves_only_yielded_file(spool):
    body = b"--bnd\r\n\r\nA\r\n--bnd\r\n\r\nB\r\n--bnd--"
    parts = read_multipart(io.BytesIO(body), SIMPLE_CT, spool_dir=spool, content_length=len(body))
    first = next(parts)
    parts.close()
    assert os.listdir(spool) == [os.path.basename(first.path)]
    os.unlink(first.path)


# --- reader: errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ['multipart/related; type="application/dicom"', 'multipart/related; boundary=""', "multipart/related"],
)
def test_read_multipart_missing_boundary_raises_bad_request_eagerly(spool, header):
    with pytest.raises(BadRequest, match="boundary"):
        read_multipart(io.BytesIO(b"--x--"), parse_media_type(header), spool_dir=spool, content_length=5)


@pytest.mark.parametrize("boundary", ["x" * 201, "caf\u00e9\u0101", "a\r\nb"])
def test_read_multipart_invalid_boundary_raises_bad_request(spool, boundary):
    ct = MediaType("multipart/related", {"boundary": boundary})
    with pytest.raises(BadRequest, match="boundary"):
        read_multipart(io.BytesIO(b""), ct, spool_dir=spool, content_length=0)


@pytest.mark.parametrize("content_length", [0, None])
def test_read_multipart_empty_body_raises_bad_request(spool, content_length):
    with pytest.raises(BadRequest, match="empty multipart body"):
        read_all(b"", spool, content_length=content_length)


@pytest.mark.parametrize(
    "body",
    [b"no boundary here at all", b"--other\r\n\r\nX\r\n--other--", b"--bn", b"x--bnd\r\n\r\nX\r\nx--bnd--"],
)
@pytest.mark.parametrize("chunk_size", [1, 4096])
def test_read_multipart_no_opening_boundary_raises_bad_request(spool, body, chunk_size):
    with pytest.raises(BadRequest, match="no opening multipart boundary"):
        read_all(body, spool, chunk_size=chunk_size)


@pytest.mark.parametrize(
    "body",
    [
        b"--bnd",
        b"--bnd-",
        b"--bnd\r",
        b"--bnd   ",
        b"--bnd\r\n",
        b"--bnd\r\nContent-Type: application/dicom",
        b"--bnd\r\nContent-Type: application/dicom\r\n",
        b"--bnd\r\nContent-Type: application/dicom\r\n\r\npart body without end",
        b"--bnd\r\n\r\nA\r\n--bnd",
        b"--bnd\r\n\r\nA\r\n--bnd\r\n\r\nB\r\n--bn",
    ],
)
@pytest.mark.parametrize("chunk_size", [1, 4096])
def test_read_multipart_truncated_body_raises_bad_request(spool, body, chunk_size):
    with pytest.raises(BadRequest, match="truncated multipart body"):
        read_all(body, spool, chunk_size=chunk_size)


def test_read_multipart_content_length_shorter_than_body_is_truncated(spool):
    body = b"--bnd\r\n\r\nAAAA\r\n--bnd--"
    with pytest.raises(BadRequest, match="truncated"):
        read_all(body, spool, content_length=len(body) - 3)


def test_read_multipart_stream_shorter_than_content_length_is_truncated(spool):
    body = b"--bnd\r\n\r\nAAAA"
    with pytest.raises(BadRequest, match="truncated"):
        read_all(body, spool, content_length=len(body) + 1000)


def test_read_multipart_error_after_first_part_removes_only_unyielded_files(spool):
    body = b"--bnd\r\n\r\nA\r\n--bnd\r\n\r\n" + b"B" * 10_000
    parts = read_multipart(io.BytesIO(body), SIMPLE_CT, spool_dir=spool, content_length=len(body), chunk_size=100)
    first = next(parts)
    with pytest.raises(BadRequest, match="truncated"):
        next(parts)
    assert os.listdir(spool) == [os.path.basename(first.path)]
    os.unlink(first.path)


def test_read_multipart_header_block_over_limit_raises_bad_request(spool):
    header = b"X-Long: " + b"a" * 200 + b"\r\n\r\n"
    body = b"--bnd\r\n" + header + b"X\r\n--bnd--"
    assert bodies(read_all(body, spool, max_header_bytes=len(header))) == [b"X"]
    with pytest.raises(BadRequest, match="headers are longer than"):
        read_all(body, spool, max_header_bytes=len(header) - 1)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_read_multipart_endless_header_stops_at_limit(spool, chunk_size):
    body = b"--bnd\r\nX-Long: " + b"a" * 100_000
    stream = io.BytesIO(body)
    with pytest.raises(BadRequest, match="headers are longer than 1000 bytes"):
        _consume(read_multipart(stream, SIMPLE_CT, spool_dir=spool, content_length=len(body),
                                max_header_bytes=1000, chunk_size=chunk_size))
    assert stream.tell() < 1000 + 2 * chunk_size + 20


@pytest.mark.parametrize(
    "headers",
    [
        b"no colon here\r\n",
        b"Bad Name: x\r\n",
        b": empty name\r\n",
        b" leading continuation\r\n",
        b"X-Ctl: a\x00b\r\n",
        b"X-Cr: a\rb\r\n",
        b"Content-Type: application/dicom\r\nContent-Type: application/dicom\r\n",
        b"Content-Location: a\r\nContent-Location: b\r\n",
    ],
)
def test_read_multipart_malformed_header_raises_bad_request(spool, headers):
    body = b"--bnd\r\n" + headers + b"\r\nX\r\n--bnd--"
    with pytest.raises(BadRequest, match="part 1"):
        read_all(body, spool)


def test_read_multipart_malformed_part_content_type_names_part(spool):
    body = b"--bnd\r\n\r\nA\r\n--bnd\r\nContent-Type: garbage\r\n\r\nB\r\n--bnd--"
    with pytest.raises(BadRequest, match=r"part 2: malformed media type 'garbage'"):
        read_all(body, spool)


@pytest.mark.parametrize("line", [b"--bndX\r\n", b"--bnd x\r\n", b"--bnd\rX", b"--bnd-\r\n"])
def test_read_multipart_garbage_after_boundary_raises_bad_request(spool, line):
    body = b"--bnd\r\n\r\nA\r\n" + line + b"\r\nB\r\n--bnd--"
    with pytest.raises(BadRequest, match="unexpected data after a boundary"):
        read_all(body, spool)


def test_read_multipart_excessive_transport_padding_raises_bad_request(spool):
    body = b"--bnd" + b" " * 5000 + b"\r\n\r\nA\r\n--bnd--"
    with pytest.raises(BadRequest, match="whitespace"):
        read_all(body, spool, chunk_size=100)


def test_read_multipart_too_many_parts_raises_payload_too_large(spool):
    body = b"--bnd\r\n\r\nA\r\n--bnd\r\n\r\nB\r\n--bnd\r\n\r\nC\r\n--bnd--"
    assert bodies(read_all(body, spool, max_parts=3)) == [b"A", b"B", b"C"]
    with pytest.raises(PayloadTooLarge, match="more than 2 parts"):
        read_all(body, spool, max_parts=2)


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
def test_read_multipart_part_over_max_size_raises_payload_too_large(spool, chunk_size):
    body = b"--bnd\r\n\r\nsmall\r\n--bnd\r\n\r\n" + b"x" * 1000 + b"\r\n--bnd--"
    assert [p.size for p in read_all(body, spool, max_part_size=1000, chunk_size=chunk_size)] == [5, 1000]
    with pytest.raises(PayloadTooLarge, match="part 2 is larger than 999 bytes"):
        read_all(body, spool, max_part_size=999, chunk_size=chunk_size)


def test_read_multipart_invalid_arguments_raise_value_error(spool):
    with pytest.raises(ValueError):
        read_multipart(io.BytesIO(b""), SIMPLE_CT, spool_dir=spool, content_length=None, chunk_size=0)
    with pytest.raises(ValueError):
        read_multipart(io.BytesIO(b""), SIMPLE_CT, spool_dir=spool, content_length=-1)


def test_read_multipart_errors_are_http_statuses(spool):
    with pytest.raises(BadRequest) as bad:
        read_all(b"--bnd\r\n", spool)
    with pytest.raises(PayloadTooLarge) as large:
        read_all(b"--bnd\r\n\r\nAB\r\n--bnd--", spool, max_part_size=1)
    assert (bad.value.status, large.value.status) == (400, 413)


# --- writer -------------------------------------------------------------------------------------------------


def test_write_multipart_exact_bytes_without_preamble():
    out = b"".join(
        write_multipart(
            [
                ({"Content-Type": "application/dicom", "Content-Location": "/a"}, [b"AB", b"C"]),
                ({"Content-Type": "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"}, [b""]),
            ],
            "bnd",
        )
    )
    assert out == (
        b"--bnd\r\nContent-Type: application/dicom\r\nContent-Location: /a\r\n\r\nABC"
        b"\r\n--bnd\r\nContent-Type: application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1\r\n\r\n"
        b"\r\n--bnd--\r\n"
    )


def test_write_multipart_first_bytes_are_dash_boundary():
    boundary = new_boundary()
    first = next(write_multipart([({"Content-Type": "application/dicom"}, [b"x"])], boundary))
    assert first.startswith(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n")


def test_write_multipart_header_names_written_as_given():
    out = b"".join(write_multipart([({"Content-Type": "a/b", "content-location": "/x", "MIME-Version": "1.0"},
                                     [])], "bnd"))
    assert b"\r\nContent-Type: a/b\r\ncontent-location: /x\r\nMIME-Version: 1.0\r\n\r\n" in out


def test_write_multipart_body_chunks_passed_through_uncopied():
    chunk1 = b"x" * 1000
    chunk2 = memoryview(bytearray(b"y" * 1000))
    out = list(write_multipart([({"Content-Type": "application/dicom"}, [chunk1, b"", chunk2])], "bnd"))
    assert out[1] is chunk1
    assert out[2] is chunk2
    assert len(out) == 4


def test_write_multipart_zero_parts_only_close_delimiter():
    assert b"".join(write_multipart([], "bnd")) == b"--bnd--\r\n"


def test_write_multipart_is_lazy_part_by_part():
    events: list[str] = []

    def body(i: int) -> Iterator[bytes]:
        events.append(f"body {i} started")
        yield b"data"
        events.append(f"body {i} done")

    def parts() -> Iterator[tuple[dict[str, str], Iterator[bytes]]]:
        for i in range(2):
            events.append(f"part {i} requested")
            yield {"Content-Type": "application/dicom"}, body(i)

    gen = write_multipart(parts(), "bnd")
    assert events == []
    assert next(gen).startswith(b"--bnd\r\n")
    assert events == ["part 0 requested"]
    assert next(gen) == b"data"
    assert events == ["part 0 requested", "body 0 started"]
    assert next(gen).startswith(b"\r\n--bnd\r\n")
    assert events == ["part 0 requested", "body 0 started", "body 0 done", "part 1 requested"]
    assert list(gen)[-1] == b"\r\n--bnd--\r\n"


@pytest.mark.parametrize("boundary", ["", "x" * 71, "ends with space ", "a\r\nb", "semi;colon", 'q"uote'])
def test_write_multipart_invalid_boundary_raises_value_error(boundary):
    with pytest.raises(ValueError):
        list(write_multipart([], boundary))


@pytest.mark.parametrize(
    "headers",
    [{"Content-Type": "a/b\r\nX-Injected: 1"}, {"Bad Name": "x"}, {"X": "line\nbreak"}, {"X": "\u0101"}],
)
def test_write_multipart_invalid_header_raises_value_error(headers):
    with pytest.raises(ValueError):
        list(write_multipart([(headers, [b"x"])], "bnd"))


def test_write_multipart_output_parsed_by_email_package():
    boundary = new_boundary()
    payloads = [b"\x00\xff\r\nabc--x\r\n", b"a\nb\rc", b"", b"\r\n--" + boundary.encode()[:-1], b"ends with CR\r"]
    parts = [
        ({"Content-Type": "application/dicom", "Content-Location": f"/i/{i}"}, [p[:3], p[3:]])
        for i, p in enumerate(payloads)
    ]
    ct = multipart_content_type("application/dicom", boundary)
    parsed = email_parse(ct, b"".join(write_multipart(parts, boundary)))
    assert [payload for _, payload in parsed] == payloads
    assert [headers for headers, _ in parsed] == [
        {"Content-Type": "application/dicom", "Content-Location": f"/i/{i}"} for i in range(len(payloads))
    ]


def test_write_multipart_output_parsed_by_dicomweb_client():
    web = pytest.importorskip("dicomweb_client.web")
    boundary = new_boundary()
    payloads = [b"DICM" + bytes(range(256)), b"\r\n\r\n", b"last"]
    body = b"".join(write_multipart([({"Content-Type": "application/dicom"}, [p]) for p in payloads], boundary))
    client = web.DICOMwebClient("http://localhost")
    decoded = client._decode_multipart_message(
        _FakeResponse(body, multipart_content_type("application/dicom", boundary)), stream=False
    )
    assert list(decoded) == payloads


class _FakeResponse:
    """The parts of a requests.Response that dicomweb-client's decoder uses."""

    def __init__(self, content: bytes, content_type: str) -> None:
        self.content = content
        self.headers = {"content-type": content_type}

    def __enter__(self) -> _FakeResponse:
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None


# --- new_boundary / multipart_content_type --------------------------------------------------------------------


def test_new_boundary_random_token_within_rfc_length():
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for b in boundaries:
        assert re.fullmatch(r"[A-Za-z0-9\-]{1,70}", b)


def test_multipart_content_type_dicom_exact():
    assert (
        multipart_content_type("application/dicom", "XYZ")
        == 'multipart/related; type="application/dicom"; boundary=XYZ'
    )


def test_multipart_content_type_extra_params_appended_underscore_to_hyphen():
    value = multipart_content_type("application/octet-stream", "XYZ", transfer_syntax="1.2.840.10008.1.2.1")
    assert value == (
        'multipart/related; type="application/octet-stream"; boundary=XYZ; transfer-syntax=1.2.840.10008.1.2.1'
    )
    assert parse_media_type(value) == MediaType(
        "multipart/related",
        {"type": "application/octet-stream", "boundary": "XYZ", "transfer-syntax": "1.2.840.10008.1.2.1"},
    )


def test_multipart_content_type_boundary_needing_quotes_quoted():
    value = multipart_content_type("application/dicom", "a b:c")
    assert value == 'multipart/related; type="application/dicom"; boundary="a b:c"'
    assert parse_media_type(value).get("boundary") == "a b:c"


def test_multipart_content_type_new_boundary_never_quoted():
    boundary = new_boundary()
    assert multipart_content_type("application/dicom", boundary).endswith(f"; boundary={boundary}")


# --- round trip and properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", CHUNK_SIZES)
def test_write_then_read_round_trip(spool, chunk_size):
    boundary = new_boundary()
    payloads = [os.urandom(3000), b"", b"\r\n", b" --" + boundary.encode(), b"\r\n--" + boundary.encode()[:10]]
    parts = [({"Content-Type": "application/dicom", "Content-Location": f"/i/{i}"}, [p]) for i, p in
             enumerate(payloads)]
    body = b"".join(write_multipart(parts, boundary))
    ct = parse_media_type(multipart_content_type("application/dicom", boundary))
    read = read_all(body, spool, ct, chunk_size=chunk_size)
    assert bodies(read) == payloads
    assert [p.content_location for p in read] == [f"/i/{i}" for i in range(len(payloads))]


_BOUNDARIES = st.one_of(
    st.builds(new_boundary),
    st.from_regex(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]", fullmatch=True),
)


@st.composite
def _round_trip_case(draw):
    boundary = draw(_BOUNDARIES)
    dash = b"--" + boundary.encode()
    delimiter = b"\r\n" + dash
    fragments = st.sampled_from(
        [b"\r\n", b"\n", b"\r", b"-", b"--", b"\r\n--", b" ", b"\t", dash, b"x" + dash]
        + [delimiter[:k] for k in range(1, len(delimiter))]
    )
    payload = st.lists(st.one_of(st.binary(max_size=30), fragments), max_size=10).map(b"".join)
    # RFC 2046 §5.1.1: the delimiter must not occur in a body, and neither may a body start with the
    # dash-boundary (it would directly follow the CRLF that ends the part headers).
    payload = payload.filter(lambda p: delimiter not in p and not p.startswith(dash))
    payloads = draw(st.lists(payload, min_size=1, max_size=5))
    chunk_size = draw(st.one_of(st.integers(1, 80), st.sampled_from([256, 4096, 256 * 1024])))
    return boundary, payloads, chunk_size


@given(_round_trip_case())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_property_write_read_round_trip_random_bodies_and_chunk_sizes(case):
    boundary, payloads, chunk_size = case
    parts = [({"Content-Type": "application/dicom", "Content-Location": f"/x/{i}"}, [p]) for i, p in
             enumerate(payloads)]
    body = b"".join(write_multipart(parts, boundary))
    ct = parse_media_type(multipart_content_type("application/dicom", boundary))
    with tempfile.TemporaryDirectory() as spool:
        read = read_all(body, spool, ct, chunk_size=chunk_size)
        assert os.listdir(spool) == []
    assert bodies(read) == payloads
    assert [p.headers for p in read] == [
        {"content-type": "application/dicom", "content-location": f"/x/{i}"} for i in range(len(payloads))
    ]


_GARBAGE_PIECES = st.sampled_from(
    [b"--bnd", b"--bnd--", b"\r\n", b"\n", b"\r", b"\r\n--bnd\r\n", b"Content-Type: ", b"garbage", b": ", b" ",
     b"\r\n\r\n", b"Content-Type: application/dicom", b"X\x00", b"\r\n--bnd"]
)


@given(
    body=st.one_of(st.binary(max_size=300), st.lists(st.one_of(_GARBAGE_PIECES, st.binary(max_size=8)),
                                                     max_size=25).map(b"".join)),
    chunk_size=st.integers(1, 64),
    length_mode=st.sampled_from(["len", "none", "short", "long"]),
    max_parts=st.integers(1, 4),
    max_part_size=st.one_of(st.none(), st.integers(0, 20)),
    max_header_bytes=st.integers(1, 64),
)
@settings(max_examples=400, deadline=None)
def test_property_garbage_only_raises_bad_request_or_payload_too_large(
    body, chunk_size, length_mode, max_parts, max_part_size, max_header_bytes
):
    content_length = {"len": len(body), "none": None, "short": len(body) // 2, "long": len(body) + 10}[length_mode]
    with tempfile.TemporaryDirectory() as spool:
        try:
            for part in read_multipart(
                io.BytesIO(body), SIMPLE_CT, spool_dir=spool, content_length=content_length, chunk_size=chunk_size,
                max_parts=max_parts, max_part_size=max_part_size, max_header_bytes=max_header_bytes,
            ):
                assert os.path.getsize(part.path) == part.size
                assert max_part_size is None or part.size <= max_part_size
                os.unlink(part.path)
        except (BadRequest, PayloadTooLarge):
            pass
        assert os.listdir(spool) == []


# --- memory and speed ------------------------------------------------------------------------------------------


class LazyMultipartBody(io.RawIOBase):
    """A multipart body generated on demand from one random 1 MiB block, never held in memory as a whole."""

    def __init__(self, boundary: str, parts: int, part_size: int) -> None:
        self._pieces = self._generate(boundary.encode(), parts, part_size)
        self._current = memoryview(b"")
        self.length = 0
        for piece in self._generate(boundary.encode(), parts, part_size):
            self.length += len(piece)

    @staticmethod
    def _generate(boundary: bytes, parts: int, part_size: int) -> Iterator[memoryview]:
        block = memoryview(os.urandom(1 << 20))
        for i in range(parts):
            head = b"--" + boundary + b"\r\nContent-Type: application/dicom\r\n\r\n"
            yield memoryview((b"\r\n" if i else b"") + head)
            left = part_size
            while left:
                n = min(left, len(block))
                yield block[:n]
                left -= n
        yield memoryview(b"\r\n--" + boundary + b"--\r\n")

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while not self._current:
            try:
                self._current = next(self._pieces)
            except StopIteration:
                return b""
        out = bytes(self._current[:n])
        self._current = self._current[n:]
        return out


def test_read_multipart_200_mb_body_bounded_memory_and_fast(spool):
    parts, part_size = 4, 50 * 1024 * 1024
    boundary = new_boundary()
    stream = LazyMultipartBody(boundary, parts, part_size)
    ct = parse_media_type(multipart_content_type("application/dicom", boundary))
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    try:
        started = time.perf_counter()
        sizes = []
        for part in read_multipart(stream, ct, spool_dir=spool, content_length=stream.length):
            sizes.append(part.size)
            os.unlink(part.path)
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    rss_growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before_kib) / 1024
    assert sizes == [part_size] * parts
    assert peak < 20 * 1024 * 1024, f"tracemalloc peak {peak / 2**20:.1f} MiB"
    assert rss_growth_mib < 60, f"max RSS grew by {rss_growth_mib:.1f} MiB"
    # Loose on purpose (shared CI machines); it measures far faster than this on a quiet one.
    assert parts * part_size / elapsed > 40e6, f"{parts * part_size / elapsed / 1e6:.0f} MB/s"
