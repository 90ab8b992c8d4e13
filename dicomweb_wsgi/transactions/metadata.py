"""WADO-RS: Retrieve metadata of a study, series or instance (PS3.18 §10.4.1.1.2, Annex F).

Supports: ``application/dicom+json`` (default; ``application/json`` is taken as the same) as one
JSON array of every instance's data set, and ``multipart/related; type="application/dicom+xml"``
with one PS3.19 NativeDicomModel part per instance. The data sets are the ones prepared when each
instance was stored (everything but Group 0002; PixelData and binary values over the
``bulk_threshold`` setting as absolute BulkDataURIs, also inside sequences), so a request never
parses a DICOM file: the stored strings are concatenated with the public base URL put in.

Also: a weak ``ETag`` (it changes when an instance is added, replaced or removed, and with the
public base URL) and ``If-None-Match`` → 304; ``Content-Encoding: gzip`` when the request's
``Accept-Encoding`` allows it; ``Cache-Control: private, no-cache`` so browsers revalidate.

Ignores: ``includefield`` and other query parameters (PS3.18 §8.3: unsupported parameters are
ignored), ``charset`` (always UTF-8). Not supported: single-part ``application/dicom+xml`` (406).
Statuses: 200, 304, 404 (nothing stored under the URI), 406.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from typing import Iterable, Iterator

from .. import dicomjson
from ..errors import NotAcceptable, NotFound
from ..http import Request, Response
from ..mediatypes import Offer, negotiate
from ..multipart import multipart_content_type, new_boundary, write_multipart

OFFERS = (
    Offer("application/dicom+json", multipart=False),
    Offer("application/json", multipart=False),
    Offer("application/dicom+xml", multipart=True),
)
# Bumped when the way the response is built changes, so cached copies are not reused.
_ETAG_VERSION = b"metadata-1"
# Bodies up to this many characters are built at once (and sent with a Content-Length);
# larger ones are streamed so a huge study never sits in memory twice.
_WHOLE_BODY_LIMIT = 16 << 20
_CHUNK = 256 << 10
# Level 1 compresses DICOM JSON about 8:1 at a fraction of the cost of the default level 6.
_GZIP_LEVEL = 1


def retrieve_study_metadata(req: Request, study_uid: str) -> Response:
    """Metadata of every instance of a study (JSON array or multipart XML)."""
    return _metadata(req, f"study {study_uid}", study_uid)


def retrieve_series_metadata(req: Request, study_uid: str, series_uid: str) -> Response:
    """Metadata of every instance of a series (JSON array or multipart XML)."""
    return _metadata(req, f"series {series_uid}", study_uid, series_uid)


def retrieve_instance_metadata(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """Metadata of one instance (a JSON array of one data set, or one XML part)."""
    return _metadata(req, f"instance {sop_uid}", study_uid, series_uid, sop_uid)


def _metadata(req: Request, what: str, study_uid: str, series_uid: str | None = None,
              sop_uid: str | None = None) -> Response:
    selection = negotiate(req.accept, OFFERS)
    if selection is None:
        raise NotAcceptable("metadata is available as application/dicom+json or "
                            "multipart/related; type=\"application/dicom+xml\"")
    archive = req.ctx.archive
    versions = archive.versions(study_uid, series_uid, sop_uid)
    if not versions:
        raise NotFound(f"{what} not found")
    xml = selection.offer.multipart
    base = req.base_url
    etag = metadata_etag([f"{sop}:{digest}:{stored_at!r}" for sop, digest, stored_at in versions], base,
                         "xml" if xml else "json")
    headers = [("ETag", etag), ("Cache-Control", "private, no-cache"), ("Vary", "Accept, Accept-Encoding")]
    if etag_matches(req.header("If-None-Match"), etag):
        resp = Response(304)
        resp.headers.extend(headers)
        return resp
    # Read after the ETag: if an instance changes in between, the client caches newer data under
    # an older tag and simply receives it again next time.
    documents = archive.metadata(study_uid, series_uid, sop_uid)
    if not documents:
        raise NotFound(f"{what} not found")
    if xml:
        boundary = new_boundary()
        body: bytes | Iterable[bytes] = write_multipart(_xml_parts(documents, base), boundary)
        content_type = multipart_content_type("application/dicom+xml", boundary)
    else:
        body = _json_body(documents, base)
        content_type = selection.offer.media_type
    if accepts_gzip(req.header("Accept-Encoding")):
        headers.append(("Content-Encoding", "gzip"))
        if isinstance(body, bytes):
            body = zlib.compress(body, _GZIP_LEVEL, 31)
        else:
            body = _gzip(body)
    resp = Response(body=body, content_type=content_type)
    resp.headers.extend(headers)
    return resp


def metadata_etag(versions: Iterable[str], base_url: str, variant: str) -> str:
    """A weak entity tag over the instances' identities and versions, the base URL and the form."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(_ETAG_VERSION + b"\0" + variant.encode() + b"\0" + base_url.encode("utf-8") + b"\0")
    for version in versions:
        digest.update(version.encode("utf-8") + b"\n")
    return f'W/"{digest.hexdigest()}"'


def etag_matches(header: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2 If-None-Match with the weak comparison (``*`` matches any)."""
    if not header:
        return False
    wanted = etag.removeprefix("W/")
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == wanted:
            return True
    return False


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` value allows gzip (RFC 9110 §12.5.3; q=0 forbids)."""
    if not header:
        return False
    star = False
    for item in header.split(","):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name in ("gzip", "x-gzip"):
            return q > 0
        if name == "*":
            star = q > 0
    return star


def _json_body(documents: list[str], base: str) -> bytes | Iterator[bytes]:
    """The JSON array: one bytes object when small (sent with a length), else a generator."""
    # json.dumps escapes the base URL for a JSON string; the slashes need no escaping.
    base_json = json.dumps(base)[1:-1]
    placeholder = dicomjson.BASE_PLACEHOLDER
    total = sum(map(len, documents))
    if total <= _WHOLE_BODY_LIMIT:
        text = "[" + ",".join(documents) + "]"
        return text.replace(placeholder, base_json).encode("utf-8")
    return _json_chunks(documents, placeholder, base_json)


def _json_chunks(documents: list[str], placeholder: str, base_json: str) -> Iterator[bytes]:
    pending: list[str] = ["["]
    size = 1
    for number, document in enumerate(documents):
        if number:
            pending.append(",")
        pending.append(document.replace(placeholder, base_json))
        size += len(document)
        if size >= _CHUNK:
            yield "".join(pending).encode("utf-8")
            pending, size = [], 0
    pending.append("]")
    yield "".join(pending).encode("utf-8")


def _xml_parts(documents: list[str], base: str) -> Iterator[tuple[dict[str, str], list[bytes]]]:
    base_json = json.dumps(base)[1:-1]
    for document in documents:
        obj = json.loads(document.replace(dicomjson.BASE_PLACEHOLDER, base_json))
        yield {"Content-Type": "application/dicom+xml"}, [dicomjson.json_to_xml(obj)]


def _gzip(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """A gzip stream (RFC 1952) of ``chunks``, produced as they come."""
    compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
    try:
        for chunk in chunks:
            out = compressor.compress(chunk)
            if out:
                yield out
        yield compressor.flush()
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
