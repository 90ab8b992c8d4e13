"""Streaming ``multipart/related`` reader and writer (RFC 2046 §5.1, RFC 2387).

STOW-RS request bodies can be gigabytes, so ``read_multipart`` never holds a body in memory: it reads the
input in fixed-size chunks, searches a small buffer for the delimiter and spools each part to its own file.
WADO-RS responses are produced by ``write_multipart`` as a generator that passes body chunks straight through.
"""
from __future__ import annotations

import functools
import os
import re
import secrets
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import BinaryIO

from .errors import BadRequest, PayloadTooLarge, ServiceUnavailable
from .mediatypes import MediaType, parse_media_type

__all__ = [
    "Part",
    "multipart_content_type",
    "multipart_segments",
    "new_boundary",
    "read_multipart",
    "spool_error",
    "spool_file",
    "write_multipart",
]

# RFC 2046 §5.1.1 caps boundaries at 70 characters; a little slack is allowed on input, and the cap keeps the
# look-behind kept between chunk reads small.
_MAX_BOUNDARY_LEN = 200
# Transport padding is unbounded in RFC 2046 §5.1.1; a cap stops a body of spaces from being read forever.
_MAX_PADDING = 1024
_PADDING_RE = re.compile(rb"[ \t]*")
_HEADER_NAME_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_BOUNDARY_RE = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")


@dataclass(frozen=True)
class Part:
    """One body part of a multipart request, its body spooled to ``path`` (the caller deletes the file)."""

    headers: Mapping[str, str]
    content_type: MediaType | None
    content_location: str | None
    path: str
    size: int


class _Input:
    """A byte buffer over the request stream that never reads past ``content_length``."""

    def __init__(self, stream: BinaryIO, content_length: int | None, chunk_size: int) -> None:
        self._stream = stream
        self._remaining = content_length
        self._chunk_size = chunk_size
        self.buf = bytearray()
        self.total = 0
        self.eof = False

    def fill(self) -> bool:
        """Append one chunk to the buffer; return False (and set ``eof``) when the input is exhausted."""
        if self.eof:
            return False
        size = self._chunk_size
        if self._remaining is not None:
            if self._remaining <= 0:
                self.eof = True
                return False
            size = min(size, self._remaining)
        try:
            data = self._stream.read(size)
        except OSError as exc:  # the client went away or the server's body buffer failed
            raise BadRequest(f"cannot read the request body: {exc.strerror or exc}") from exc
        if not data:
            self.eof = True
            return False
        if len(data) > size:  # a misbehaving stream; never use bytes past Content-Length
            data = data[:size]
        if self._remaining is not None:
            self._remaining -= len(data)
        self.total += len(data)
        self.buf += data
        return True

    def ensure(self, n: int) -> bool:
        """Read until the buffer holds at least ``n`` bytes; False if the input ends first."""
        while len(self.buf) < n:
            if not self.fill():
                return False
        return True

    def drop(self, n: int) -> None:
        del self.buf[:n]

    def write_to(self, out: BinaryIO, n: int) -> None:
        """Write the first ``n`` buffered bytes to ``out`` without copying them, then drop them."""
        with memoryview(self.buf) as view:
            out.write(view[:n])
        del self.buf[:n]


def _truncated() -> BadRequest:
    return BadRequest("truncated multipart body: the input ended before the close delimiter")


def read_multipart(
    stream: BinaryIO,
    content_type: MediaType,
    *,
    spool_dir: str,
    content_length: int | None,
    max_parts: int = 10_000,
    max_part_size: int | None = None,
    max_header_bytes: int = 16384,
    chunk_size: int = 256 * 1024,
) -> Iterator[Part]:
    """Read a multipart body from ``stream``, yielding each part once its closing delimiter has been read.

    Each part body goes to a new ``tempfile.mkstemp(dir=spool_dir, suffix=".part")`` file that belongs to the
    caller once yielded; on any error the file of the part being read is removed. At most ``content_length``
    bytes are read (to EOF when ``None``), in ``chunk_size`` reads; the epilogue after the close delimiter is
    left unread. The ``boundary`` is checked here, eagerly; everything else is checked while iterating and
    raises ``BadRequest`` (malformed or truncated body) or ``PayloadTooLarge`` (``max_parts``,
    ``max_part_size``). A body holding only the close delimiter yields no parts.
    """
    boundary = content_type.get("boundary")
    if not boundary:
        raise BadRequest(f"multipart Content-Type has no boundary parameter: {content_type}")
    if len(boundary) > _MAX_BOUNDARY_LEN or "\r" in boundary or "\n" in boundary:
        raise BadRequest(f"invalid multipart boundary {boundary[:80]!r}")
    try:
        boundary_bytes = boundary.encode("ascii")
    except UnicodeEncodeError:
        raise BadRequest(f"multipart boundary {boundary[:80]!r} is not ASCII") from None
    if chunk_size < 1 or max_parts < 1 or max_header_bytes < 1:
        raise ValueError("chunk_size, max_parts and max_header_bytes must be positive")
    if content_length is not None and content_length < 0:
        raise ValueError("content_length must not be negative")
    return _iter_parts(
        _Input(stream, content_length, chunk_size),
        boundary_bytes,
        spool_dir=spool_dir,
        max_parts=max_parts,
        max_part_size=max_part_size,
        max_header_bytes=max_header_bytes,
    )


def _iter_parts(
    src: _Input,
    boundary: bytes,
    *,
    spool_dir: str,
    max_parts: int,
    max_part_size: int | None,
    max_header_bytes: int,
) -> Iterator[Part]:
    closed = _skip_preamble(src, boundary)
    count = 0
    while not closed:
        if count >= max_parts:
            raise PayloadTooLarge(f"multipart body has more than {max_parts} parts")
        count += 1
        headers = _read_headers(src, max_header_bytes, count)
        content_type = None
        if "content-type" in headers:
            content_type = _part_media_type(headers["content-type"], count)
        path, size = _spool_body(src, boundary, spool_dir, max_part_size, count)
        try:
            closed = _read_delimiter_rest(src)
        except BaseException:
            os.unlink(path)
            raise
        yield Part(MappingProxyType(headers), content_type, headers.get("content-location"), path, size)


# Parsed part Content-Types by header value: the parts of a request (and of most requests) repeat one
# or two values, and MediaType is immutable. Bounded, since the values come from the client.
_cached_media_type = functools.lru_cache(maxsize=64)(parse_media_type)


def _part_media_type(value: str, number: int) -> MediaType:
    try:
        return _cached_media_type(value)
    except BadRequest as exc:
        raise BadRequest(f"part {number}: {exc.reason}") from None


def _skip_preamble(src: _Input, boundary: bytes) -> bool:
    """Discard everything up to and including the first delimiter line; return True if it is the close one.

    RFC 2046 §5.1.1: the first dash-boundary starts the body or follows a line break ending the preamble.
    """
    dash = b"--" + boundary
    if not src.fill():
        raise BadRequest("empty multipart body")
    at_body_start = True
    start = 0
    while True:
        i = src.buf.find(dash, start)
        if i == 0 and at_body_start or i > 0 and src.buf[i - 1] == 0x0A:
            src.drop(i + len(dash))
            return _read_delimiter_rest(src)
        if i >= 0:
            start = i + 1
            continue
        # Keep enough to recognise a dash-boundary split across reads, and the byte before it.
        excess = len(src.buf) - len(dash)
        if excess > 0:
            src.drop(excess)
            at_body_start = False
        start = 0
        if not src.fill():
            raise BadRequest(f"no opening multipart boundary '--{boundary.decode('latin-1')}' found in the body")


def _read_delimiter_rest(src: _Input) -> bool:
    """Consume what follows ``--boundary``: ``--`` (close, return True) or transport padding and a line end."""
    if not src.ensure(2):
        raise _truncated()
    if src.buf[:2] == b"--":
        return True
    padding = 0
    while True:
        n = _PADDING_RE.match(src.buf).end()
        padding += n
        src.drop(n)
        if padding > _MAX_PADDING:
            raise BadRequest("malformed multipart body: too much whitespace after a boundary")
        if src.buf:
            break
        if not src.fill():
            raise _truncated()
    if src.buf[0] == 0x0A:  # bare LF: tolerated
        src.drop(1)
        return False
    if src.buf[0] == 0x0D:
        if not src.ensure(2):
            raise _truncated()
        if src.buf[1] == 0x0A:
            src.drop(2)
            return False
    raise BadRequest("malformed multipart body: unexpected data after a boundary on the delimiter line")


def _read_headers(src: _Input, max_header_bytes: int, number: int) -> dict[str, str]:
    """Read a part's header block up to the empty line; return headers with lowercased names."""
    if not src.ensure(1):
        raise _truncated()
    if src.buf[0] == 0x0A:
        src.drop(1)
        return {}
    if src.buf[0] == 0x0D:
        if not src.ensure(2):
            raise _truncated()
        if src.buf[1] == 0x0A:
            src.drop(2)
            return {}
    start = 0
    while True:
        crlf = src.buf.find(b"\n\r\n", start)
        lf = src.buf.find(b"\n\n", start)
        ends = [(i, width) for i, width in ((crlf, 3), (lf, 2)) if i >= 0]
        if ends:
            i, width = min(ends)
            end = i + width
            if end > max_header_bytes:
                break
            block = bytes(src.buf[: i + 1])
            src.drop(end)
            return _parse_header_block(block, number)
        if len(src.buf) >= max_header_bytes:
            break
        start = max(0, len(src.buf) - 2)
        if not src.fill():
            raise _truncated()
    raise BadRequest(f"part {number}: headers are longer than {max_header_bytes} bytes")


def _parse_header_block(block: bytes, number: int) -> dict[str, str]:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        text = block.decode("latin-1")
    lines: list[str] = []
    for line in text.split("\n"):
        line = line.removesuffix("\r")
        if not line:
            continue
        if line[0] in " \t":
            # RFC 5322 §2.2.3 folded line: continues the previous header.
            if not lines:
                raise BadRequest(f"part {number}: malformed header line {line[:80]!r}")
            lines[-1] += " " + line.strip(" \t")
        else:
            lines.append(line)
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _HEADER_NAME_RE.fullmatch(name) or _CONTROL_RE.search(value):
            raise BadRequest(f"part {number}: malformed header line {line[:80]!r}")
        name = name.lower()
        value = value.strip(" \t")
        if name in headers:
            if name in ("content-type", "content-location"):
                raise BadRequest(f"part {number}: duplicate {name} header")
            headers[name] += ", " + value
        else:
            headers[name] = value
    return headers


def _spool_body(
    src: _Input, boundary: bytes, spool_dir: str, max_part_size: int | None, number: int
) -> tuple[str, int]:
    """Copy the part body up to CRLF--boundary into a new spool file; return (path, size)."""
    delimiter = b"\r\n--" + boundary
    keep = len(delimiter) - 1
    size = 0
    with spool_file(spool_dir) as (out, path):
        src.ensure(len(delimiter) - 2)
        if src.buf.startswith(delimiter[2:]):
            # RFC 2046 §5.1.1 body-part := MIME-part-headers [CRLF *OCTET]: with no body, the CRLF ending
            # the headers is the delimiter's own CRLF, so "--boundary" right here ends an empty part.
            src.drop(len(delimiter) - 2)
            return path, 0
        while True:
            i = src.buf.find(delimiter)
            n = i if i >= 0 else len(src.buf) - keep
            if n > 0:
                size += n
                if max_part_size is not None and size > max_part_size:
                    raise PayloadTooLarge(f"part {number} is larger than {max_part_size} bytes")
                src.write_to(out, n)
            if i >= 0:
                src.drop(len(delimiter))
                return path, size
            if not src.fill():
                raise _truncated()


@contextmanager
def spool_file(spool_dir: str) -> Iterator[tuple[BinaryIO, str]]:
    """A new spool file in ``spool_dir``, open for writing, and its path; removed again if the block fails.

    The file is the caller's once the block ends without an exception. A failed create or write (disk
    full, I/O error) becomes a 503 (``spool_error``).
    """
    try:
        fd, path = tempfile.mkstemp(dir=spool_dir, suffix=".part")
    except OSError as exc:
        raise spool_error(exc) from exc
    try:
        with open(fd, "wb") as out:
            yield out, path
    except OSError as exc:
        os.unlink(path)
        raise spool_error(exc) from exc
    except BaseException:
        os.unlink(path)
        raise


def spool_error(exc: OSError) -> ServiceUnavailable:
    """A failed write of a spool file (disk full, I/O error) is the server's problem: 503, not 500."""
    return ServiceUnavailable(f"out of resources: cannot spool the request body: {exc.strerror or exc}")


def new_boundary() -> str:
    """A random boundary of token characters, so it never needs quoting (and cannot occur in the parts)."""
    return "dicomweb-" + secrets.token_hex(20)


def multipart_content_type(part_type: str, boundary: str, **params: str) -> str:
    """``multipart/related; type="<part_type>"; boundary=<boundary>`` plus ``params`` in the order given.

    Python keywords cannot contain "-", so an underscore in a keyword becomes a hyphen:
    ``transfer_syntax="1.2.840.10008.1.2.1"`` gives ``transfer-syntax=1.2.840.10008.1.2.1``.
    """
    values = {"type": part_type, "boundary": boundary}
    values.update((name.replace("_", "-"), value) for name, value in params.items())
    return str(MediaType("multipart/related", values))


def _check_boundary(boundary: str) -> bytes:
    # RFC 2046 §5.1.1 bchars; 1-70 characters, not ending in a space.
    if not _BOUNDARY_RE.fullmatch(boundary):
        raise ValueError(f"invalid multipart boundary {boundary!r}")
    return boundary.encode("ascii")


def _header_bytes(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if not _HEADER_NAME_RE.fullmatch(name) or "\r" in value or "\n" in value:
            raise ValueError(f"invalid part header {name!r}: {value!r}")
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    return b"".join(lines)


def write_multipart(
    parts: Iterable[tuple[Mapping[str, str], Iterable[bytes]]], boundary: str
) -> Iterator[bytes]:
    """Generate a ``multipart/related`` body from ``(headers, body chunks)`` pairs, lazily.

    The first bytes are the dash-boundary itself, with no preamble and no leading CRLF, because cornerstone's
    parser reads the first part's headers from the start of the body. Header names are written as given
    (cornerstone matches ``Content-Type:`` case-sensitively). Body chunks are yielded unchanged, and the next
    part is not requested from ``parts`` until the previous one has been fully yielded.
    """
    dash = b"--" + _check_boundary(boundary)
    first = True
    for headers, body in parts:
        yield _part_head(dash, headers, first)
        first = False
        for chunk in body:
            if chunk:
                yield chunk
    yield _close_delimiter(dash, first)


def _part_head(dash: bytes, headers: Mapping[str, str], first: bool) -> bytes:
    return (b"" if first else b"\r\n") + dash + b"\r\n" + _header_bytes(headers) + b"\r\n"


def _close_delimiter(dash: bytes, first: bool) -> bytes:
    return (b"" if first else b"\r\n") + dash + b"--\r\n"


def multipart_segments(parts: Iterable[tuple[Mapping[str, str], Iterable[tuple[str, int, int]]]],
                       boundary: str) -> list[bytes | tuple[str, int, int]]:
    """The body ``write_multipart`` would produce for stored byte ranges, as ``http.SplicedFile`` segments.

    Each part's body is a list of ``(path, offset, length)`` ranges laid end to end; the framing bytes are
    exactly ``write_multipart``'s, so the body can be sent with a Content-Length through ``wsgi.file_wrapper``.
    """
    dash = b"--" + _check_boundary(boundary)
    segments: list[bytes | tuple[str, int, int]] = []
    first = True
    for headers, ranges in parts:
        segments.append(_part_head(dash, headers, first))
        segments.extend(ranges)
        first = False
    segments.append(_close_delimiter(dash, first))
    return segments
