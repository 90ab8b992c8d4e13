"""STOW-RS: Store Instances (PS3.18 §10.5).

Supports: ``POST /studies`` and ``POST /studies/{study}`` with ``multipart/related;
type="application/dicom"`` (quoted or unquoted parameters, Content-Length or chunked bodies), and a
single-part ``application/dicom`` body. Each part is streamed to disk, parsed, and stored durably
before the response is sent. The response is the Store Instances Response Module (PS3.18 Annex I)
as ``application/dicom+json`` (default) or ``application/dicom+xml``.

Status (PS3.18 Table 10.5.3-1): 200 all stored; 202 some stored, some failed; 409 none stored
(conflicts or unreadable instances); 503 none stored for lack of resources; 400 the request itself
cannot be read (malformed multipart); 413 too large; 415 other media types.

Also ``type="application/dicom+json"`` and ``type="application/dicom+xml"``: metadata plus bulk
data parts, turned into PS3.10 files by ``stow_bulk`` and then stored like any other upload.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator

from .. import dicomjson
from ..archive import StoreResult
from ..errors import BadRequest, DicomStatus, DicomWebError, NotAcceptable, UnsupportedMediaType, note_stored
from ..http import Request, Response, warning_value
from ..mediatypes import MediaType, Offer, negotiate, parse_media_type
from ..multipart import Part, read_multipart, spool_file
from . import stow_bulk

RESPONSE_OFFERS = (
    Offer("application/dicom+json", multipart=False),
    Offer("application/dicom+xml", multipart=False),
    Offer("application/json", multipart=False),
    Offer("application/dicom+xml", multipart=True),
)


def store_instances(req: Request, study_uid: str | None = None) -> Response:
    """Store the instances in the request body; answer with the Store Instances Response Module."""
    selection = negotiate(req.accept, RESPONSE_OFFERS)
    if selection is None:
        raise NotAcceptable("STOW-RS responses are application/dicom+json or application/dicom+xml")
    content_type = _content_type(req)
    spool_dir = req.ctx.archive.blobs.spool_dir
    built: list[str] = []
    early: list[StoreResult] = []
    coerced: dict[str, str] = {}
    part_type = _related_type(content_type)
    if content_type.type == "multipart/related" and part_type in stow_bulk.METADATA_TYPES:
        built, early, coerced = stow_bulk.build_instances(_read_parts(req, content_type, spool_dir), part_type,
                                                          spool_dir)
        paths: Iterator[str] = iter(built)
    else:
        paths = uploaded_files(req, spool_dir, content_type)
    archive = req.ctx.archive
    results: list[StoreResult] = list(early)
    try:
        for result in archive.store_files(paths, expected_study=study_uid):
            if result.failure is None and result.sop_uid in coerced:
                result = replace(result, warning=DicomStatus.COERCION_OF_DATA_ELEMENTS,
                                 reason=coerced[result.sop_uid])
            results.append(result)
    except DicomWebError as exc:  # the body broke off (400), went over a limit (413), or the disk (503)
        raise note_stored(exc, sum(1 for r in results if r.failure is None))
    finally:
        stow_bulk.discard(built)
    if not results:
        raise BadRequest("the request contains no parts")
    return _response(req, results, study_uid, selection.offer.media_type, selection.offer.multipart)


def uploaded_files(req: Request, spool_dir: str, content_type: MediaType | None = None) -> Iterator[str]:
    """The spooled files of a PS3.10 Store body: each part of ``multipart/related;
    type="application/dicom"``, or a single ``application/dicom`` body; 415 for anything else."""
    content_type = content_type or _content_type(req)
    if content_type.type == "application/dicom":
        stream, length = req.body_stream(req.ctx.settings.max_request_body)
        return iter([_spool_body(stream, length, spool_dir)])
    if content_type.type != "multipart/related":
        raise UnsupportedMediaType(f"{content_type.type} is not supported; expected "
                                   "multipart/related; type=\"application/dicom\"")
    part_type = _related_type(content_type)
    if part_type != "application/dicom":
        raise UnsupportedMediaType(f"multipart/related type {part_type!r} is not supported here; "
                                   "use type=\"application/dicom\"")
    return (part.path for part in _read_parts(req, content_type, spool_dir))


def _content_type(req: Request) -> MediaType:
    raw_type = req.header("Content-Type")
    if not raw_type:
        raise UnsupportedMediaType("missing Content-Type; expected multipart/related; type=\"application/dicom\"")
    return parse_media_type(raw_type)


def _related_type(content_type: MediaType) -> str:
    """The ``type`` parameter of a multipart/related body (``application/dicom`` when absent)."""
    return (content_type.get("type") or "application/dicom").split(";")[0].strip().lower()


def _read_parts(req: Request, content_type: MediaType, spool_dir: str) -> Iterator[Part]:
    settings = req.ctx.settings
    stream, length = req.body_stream(settings.max_request_body)
    return read_multipart(stream, content_type, spool_dir=spool_dir, content_length=length,
                          max_parts=settings.max_parts, max_part_size=settings.max_part_size)


def _spool_body(stream, length: int | None, spool_dir: str) -> str:
    """Write a single-part body to a spool file, in chunks."""
    left, written = length, 0
    with spool_file(spool_dir) as (out, path):
        while left is None or left > 0:
            data = stream.read(1 << 20 if left is None else min(1 << 20, left))
            if not data:
                break
            out.write(data)
            written += len(data)
            if left is not None:
                left -= len(data)
        if left:
            raise BadRequest("request body shorter than its Content-Length")
        if not written:
            raise BadRequest("empty request body: expected one application/dicom instance")
    return path


def _uid_element(value: str | None) -> dict:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _status(results: list[StoreResult]) -> int:
    failed = [r for r in results if r.failure is not None]
    if not failed:
        # PS3.18 §10.5.3: 202 when the instances were stored with warnings.
        return 202 if any(r.warning is not None for r in results) else 200
    if len(failed) < len(results):
        return 202  # PS3.18 §10.5.3: some stored, some not
    if all(r.failure == DicomStatus.OUT_OF_RESOURCES for r in failed):
        return 503
    return 409


def _response(req: Request, results: list[StoreResult], study_uid: str | None, media_type: str,
              multipart: bool) -> Response:
    base = req.base_url
    referenced, failed = [], []
    for r in results:
        item = {"00081150": _uid_element(r.sop_class_uid), "00081155": _uid_element(r.sop_uid)}
        if r.failure is not None:
            item["00081197"] = {"vr": "US", "Value": [int(r.failure)]}
            failed.append(item)
        else:
            item["00081190"] = {"vr": "UR", "Value": [
                f"{base}/studies/{r.study_uid}/series/{r.series_uid}/instances/{r.sop_uid}"]}
            if r.warning is not None:
                item["00081196"] = {"vr": "US", "Value": [int(r.warning)]}
            referenced.append(item)
    body: dict = {}
    studies = {r.study_uid for r in results if r.failure is None}
    target = study_uid or (next(iter(studies)) if len(studies) == 1 else None)
    # PS3.18 Table I.1-1: Retrieve URL is Type 2, present (empty) even when no one study was stored.
    body["00081190"] = {"vr": "UR", "Value": [f"{base}/studies/{target}"]} if target else {"vr": "UR"}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    resp = Response(_status(results))
    reasons = sorted({r.reason for r in results if r.failure is not None or r.warning is not None})
    if reasons:
        # The machine-readable reasons are in FailedSOPSequence (Failure Reason) and ReferencedSOPSequence
        # (Warning Reason); the Warning header says it in words.
        # warning_value keeps it one line of printable ASCII: the reasons quote client text
        resp.add_header("Warning", warning_value(base, "; ".join(reasons)))
    if media_type == "application/dicom+xml":
        xml = dicomjson.json_to_xml(body)
        if multipart:
            from ..multipart import multipart_content_type, new_boundary, write_multipart

            boundary = new_boundary()
            resp.body = b"".join(write_multipart([({"Content-Type": "application/dicom+xml"}, [xml])], boundary))
            resp.content_type = multipart_content_type("application/dicom+xml", boundary)
        else:
            resp.body = xml
            resp.content_type = "application/dicom+xml"
    else:
        # dicomweb-client compares this string exactly: no charset parameter.
        resp.body = dicomjson.dumps(body).encode("utf-8")
        resp.content_type = "application/json" if media_type == "application/json" else "application/dicom+json"
    return resp
