"""The request and response objects handlers see; the only code that reads the WSGI environ.

Handlers take a ``Request`` and return a ``Response``; they never call ``start_response``.
"""
from __future__ import annotations

import bisect
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import TYPE_CHECKING, Any, BinaryIO, Iterable, Iterator, Sequence, Tuple, Union
from urllib.parse import parse_qs, quote, urlsplit

from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

if TYPE_CHECKING:
    from .app import AppContext
    from .mediatypes import MediaType

CHUNK_SIZE = 1024 * 1024


class Request:
    """One HTTP request: method, path, query, headers, bounded body, public base URL."""

    def __init__(self, environ: dict[str, Any], ctx: AppContext) -> None:
        self.environ = environ
        self.ctx = ctx
        self.method: str = environ.get("REQUEST_METHOD", "GET").upper()
        self.path: str = environ.get("PATH_INFO", "") or "/"
        self.route_kwargs: dict[str, Any] = {}
        self.user: str | None = None

    @cached_property
    def query(self) -> dict[str, list[str]]:
        """Query parameters, percent-decoded, blank values kept (PS3.18 universal matching needs them)."""
        qs = self.environ.get("QUERY_STRING", "")
        try:
            return parse_qs(qs, keep_blank_values=True, strict_parsing=False, errors="strict")
        except UnicodeDecodeError as exc:
            raise BadRequest("query string is not valid UTF-8") from exc

    def query_one(self, name: str, default: str | None = None) -> str | None:
        """The last value of a query parameter (case-sensitive name), or ``default``."""
        values = self.query.get(name)
        return values[-1] if values else default

    def header(self, name: str, default: str | None = None) -> str | None:
        """A request header by its HTTP name, e.g. ``header("Content-Type")``."""
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            value = self.environ.get(key)
        else:
            value = self.environ.get("HTTP_" + key)
        return value if value not in (None, "") else default

    @cached_property
    def accept(self) -> list[MediaType]:
        """Acceptable media types: the ``accept`` query parameter wins over the header (PS3.18 §8.3.3.1)."""
        from .mediatypes import accept_from_environ

        query = self.environ.get("QUERY_STRING") or ""
        if "accept" in query or "%" in query:
            return accept_from_environ(self.environ)
        # No accept query parameter (not even percent-encoded): the header alone decides, and a
        # client sends the same few Accept values again and again, so their parse is remembered.
        return list(_header_accept(self.environ.get("HTTP_ACCEPT") or ""))

    @cached_property
    def content_length(self) -> int | None:
        raw = self.environ.get("CONTENT_LENGTH")
        if raw in (None, ""):
            return None
        if not (raw.isascii() and raw.isdigit()):  # RFC 9110 §8.6: 1*DIGIT (int() also takes "+1_0 ")
            raise BadRequest("invalid Content-Length")
        return int(raw)

    def read_body(self, limit: int) -> bytes:
        """The whole (small) request body; 413 over ``limit``, 400 when it ends before its Content-Length."""
        stream, length = self.body_stream(limit)
        data = stream.read(length) if length is not None else stream.read()
        if length is not None and len(data) < length:
            raise BadRequest("request body shorter than its Content-Length")
        return data

    def body_stream(self, limit: int) -> tuple[BinaryIO, int | None]:
        """The request body stream and its length; 413 before reading anything if it is too large, 415
        if it is content-coded (we decode none, and must not parse coded bytes as the body)."""
        coding = self.environ.get("HTTP_CONTENT_ENCODING", "").strip().lower()
        if coding not in ("", "identity"):
            raise UnsupportedMediaType(f"Content-Encoding {coding!r} is not supported: send the body unencoded")
        length = self.content_length
        if length is not None and length > limit:
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of {limit} bytes")
        stream = self.environ["wsgi.input"]
        if length is None and not self.environ.get("wsgi.input_terminated"):
            # Without a length or a terminated stream we cannot tell where the body ends.
            length = 0
        return _LimitedReader(stream, limit), length

    @cached_property
    def base_url(self) -> str:
        """The public URL of the service root, for RetrieveURL and BulkDataURI values.

        The ``public_url`` setting wins; otherwise scheme, host and SCRIPT_NAME as the WSGI server
        reports them (waitress rewrites these from trusted proxy headers and ``url_prefix``).
        """
        configured = self.ctx.settings.public_url
        if configured:
            return configured.rstrip("/")
        env = self.environ
        scheme = env.get("wsgi.url_scheme", "http")
        host = env.get("HTTP_HOST")
        port = env.get("SERVER_PORT", "")
        if host and port and ":" not in host.rpartition("]")[2] \
                and (scheme, port) not in (("http", "80"), ("https", "443")):
            # dicomweb-client sends its Host header without the port; a URL built from it would
            # point at the default port. The connection's own port is the better guess.
            host = f"{host}:{port}"
        if not host:
            host = env.get("SERVER_NAME", "localhost")
            if port and (scheme, port) not in (("http", "80"), ("https", "443")):
                host = f"{host}:{port}"
        return f"{scheme}://{host}{_quote_environ_path(env.get('SCRIPT_NAME', ''))}".rstrip("/")


def _quote_environ_path(path: str) -> str:
    """Percent-encode a SCRIPT_NAME or PATH_INFO value for a URL.

    PEP 3333 hands these over as the request's bytes decoded as ISO-8859-1, so they are encoded back
    to those bytes before quoting; quoting the text itself would encode UTF-8 paths twice. A server
    that breaks the rule with characters beyond ISO-8859-1 gets them quoted as UTF-8.
    """
    try:
        raw = path.encode("latin-1")
    except UnicodeEncodeError:
        raw = path.encode("utf-8")
    return quote(raw)


# RFC 9111 §5.5: warn-agent is a host[:port] or a token; the host is the one the client used.
_AGENT_UNSAFE = re.compile(r"[^A-Za-z0-9.:\-\[\]]")
# warn-text is a quoted-string; quotes, backslashes and control characters are replaced, not escaped.
_WARN_TEXT_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def warning_value(base_url: str, text: str) -> str:
    """A ``Warning`` header value ``299 <host> "<text>"`` (RFC 9111 §5.5; 299 = miscellaneous
    persistent warning), with the service's host as warn-agent and ``text`` as a quoted-string.

    One builder for the transactions' Warnings, so that they all parse the same way.
    """
    agent = _AGENT_UNSAFE.sub("", urlsplit(base_url).netloc) or "dicomweb_wsgi"
    cleaned = _WARN_TEXT_UNSAFE.sub(lambda m: {'"': "'", "\\": "/"}.get(m.group(), "?"), text[:500])
    return f'299 {agent} "{cleaned}"'


def more_results_warning(base_url: str, remaining: int) -> str:
    """The Warning of a search page with more results (PS3.18 §8.3.4.4), as QIDO-RS sends it."""
    return warning_value(base_url, f"There are {remaining} additional results that can be requested")


WRITE_METHODS = frozenset({"POST", "PUT", "DELETE"})


def supported_methods(methods: Iterable[str], read_only: bool) -> list[str]:
    """The methods a resource currently supports, for ``Allow`` (RFC 9110 §10.2.1, §15.5.6): its
    route's ``methods``, less the writes on a read-only server, which refuses them everywhere."""
    return [m for m in methods if not (read_only and m in WRITE_METHODS)]


@lru_cache(maxsize=256)
def _header_accept(header: str) -> tuple[MediaType, ...]:
    from .mediatypes import accept_from_environ

    return tuple(accept_from_environ({"HTTP_ACCEPT": header}))


class _LimitedReader:
    """A body stream that raises 413 once more than ``limit`` bytes have been read (chunked bodies)."""

    def __init__(self, stream: BinaryIO, limit: int) -> None:
        self._stream = stream
        self._left = limit

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._left + 1
        try:
            data = self._stream.read(min(size, self._left + 1))
        except OSError as exc:  # the client went away (servers that stream the body): not our disk
            raise BadRequest(f"cannot read the request body: {exc.strerror or exc}") from exc
        self._left -= len(data)
        if self._left < 0:
            raise PayloadTooLarge("request body exceeds the configured limit")
        return data


@dataclass
class Response:
    """What a handler returns: a status, headers and a body.

    The body is bytes, an iterable of bytes (streamed), or an open file (``file``) which the
    app hands to ``wsgi.file_wrapper`` so the server can send it without copying through Python.
    """

    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    file: BinaryIO | None = None
    file_length: int | None = None

    def add_header(self, name: str, value: str) -> None:
        self.headers.append((name, value))

    def get_header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    @classmethod
    def for_file(cls, path: str, content_type: str, status: int = 200) -> Response:
        """A response that streams a whole file (through ``wsgi.file_wrapper`` when available)."""
        fh = open(path, "rb")
        return cls(status=status, content_type=content_type, file=fh, file_length=os.fstat(fh.fileno()).st_size)


Segment = Union[bytes, Tuple[str, int, int]]


class SplicedFile:
    """A read-only, seekable file made of byte strings and stored file ranges laid end to end.

    Multipart responses whose parts are stored files (WADO-RS as stored, a whole study included) are
    sent as one of these, with a Content-Length, through ``wsgi.file_wrapper``: no generator, no
    chunked encoding, and no bytes copied through Python beyond the server's own reads. A segment is
    ``bytes`` or ``(path, offset, length)``; files are opened as the reading gets to them, one at a
    time (ranges of one file in a row share it), except the first, which is opened at once so a
    missing blob is an error before the status. A file that is gone or shorter when the reading
    gets to it raises ``OSError``, which makes the server cut the connection: the client sees fewer
    bytes than the Content-Length.

    Waitress reads a file wrapper in pieces of the socket's send buffer size (16 KiB), reading each
    piece, seeking back and then forward past what the socket took; a file is therefore read ahead
    up to ``READ_AHEAD`` bytes at a time (within one segment) and the pieces are served from that.
    """

    READ_AHEAD = CHUNK_SIZE

    def __init__(self, segments: Sequence[Segment]) -> None:
        self._segments = list(segments)
        self._starts: list[int] = []
        position = 0
        for segment in self._segments:
            self._starts.append(position)
            position += len(segment) if isinstance(segment, bytes) else segment[2]
        self.length = position
        self._pos = 0
        self._open: tuple[str, BinaryIO] | None = None
        self._ahead = b""  # bytes read ahead, from position self._ahead_start
        self._ahead_start = 0
        self.closed = False
        first = next((i for i, seg in enumerate(self._segments) if not isinstance(seg, bytes)), None)
        if first is not None:
            self._file(first)

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = self.length - self._pos
        within = self._pos - self._ahead_start
        if within >= 0 and within + size <= len(self._ahead):
            self._pos += size
            return self._ahead[within:within + size]
        out: list[bytes] = []
        while size > 0 and self._pos < self.length:
            within = self._pos - self._ahead_start
            if not 0 <= within < len(self._ahead):
                self._read_ahead()
                within = self._pos - self._ahead_start
            chunk = self._ahead[within:within + size]
            out.append(chunk)
            self._pos += len(chunk)
            size -= len(chunk)
        return out[0] if len(out) == 1 else b"".join(out)

    def _read_ahead(self) -> None:
        """Fill the read-ahead from the current position, up to the end of its segment."""
        index = bisect.bisect_right(self._starts, self._pos) - 1
        segment = self._segments[index]
        if isinstance(segment, bytes):
            self._ahead, self._ahead_start = segment, self._starts[index]
            return
        path, offset, length = segment
        within = self._pos - self._starts[index]
        want = min(self.READ_AHEAD, length - within)
        data = os.pread(self._file(index).fileno(), want, offset + within)
        if len(data) < want:
            raise OSError(f"{path} ended {length - within - len(data)} bytes early")
        self._ahead, self._ahead_start = data, self._pos

    def _file(self, index: int) -> BinaryIO:
        segment = self._segments[index]
        assert not isinstance(segment, bytes)
        if self._open is not None and self._open[0] == segment[0]:
            return self._open[1]
        if self._open is not None:
            self._open[1].close()
            self._open = None
        fh = open(segment[0], "rb", buffering=0)
        self._open = (segment[0], fh)
        return fh

    def close(self) -> None:
        if self._open is not None:
            self._open[1].close()
            self._open = None
        self._ahead = b""
        self.closed = True


class ClosingBody:
    """A streamed body that closes ``resources`` when the server closes it, whether it started or not.

    A generator that never ran (HEAD, a client gone before the first byte) cannot close what was
    opened for it before the status went out, such as a transcoded first instance's spool file.
    """

    def __init__(self, body: Iterable[bytes], resources: Sequence[Any]) -> None:
        self.body = body
        self.resources = list(resources)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            for resource in self.resources:
                resource.close()


def iter_file(fh: BinaryIO, length: int | None = None, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Yield a file's bytes (``length`` of them, or to EOF) in chunks, closing it at the end."""
    try:
        left = length
        while left is None or left > 0:
            data = fh.read(chunk_size if left is None else min(chunk_size, left))
            if not data:
                break
            if left is not None:
                left -= len(data)
            yield data
    finally:
        fh.close()


REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
    304: "Not Modified", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 409: "Conflict", 410: "Gone",
    413: "Payload Too Large", 415: "Unsupported Media Type", 416: "Range Not Satisfiable",
    500: "Internal Server Error", 503: "Service Unavailable",
}


def status_line(status: int) -> str:
    return f"{status} {REASONS.get(status, 'Unknown')}"
