"""WADO-RS: Retrieve bulk data (PS3.18 §10.4.1.1.5, payload §10.4.3.3.5, media types §8.7.3.3).

Resources: every BulkDataURI the metadata emits,
``.../instances/{sop}/bulkdata/{tag}[/{item}/{tag}...]`` (item numbers 0-based, so values nested
in sequences resolve too), and the study, series and instance ``/bulkdata`` resources (all bulk
data of those instances, each part with the ``Content-Location`` that the metadata gives it).

A value is read by byte range from the stored file, at the offset recorded when the instance was
stored; only files without recorded offsets (deflated ones) are parsed. Uncompressed bulk data
is little endian (PS3.18 §8.7.3.3.1): OW/OF/OL/OD/OV values of big-endian files are swapped
(Pixel Data with Bits Allocated 32 or 64 by whole pixel cells).

Media types: ``multipart/related; type="application/octet-stream"`` (default) and single-part
``application/octet-stream`` for one value; an Encapsulated Document (0042,0011) is also offered
as its MIME Type of Encapsulated Document (e.g. ``application/pdf``). HTTP ``Range`` (one
``bytes`` range) is honoured for a single value: 206 with ``Content-Range`` (for multipart in the
part's headers); 416 when it starts past the end; several ranges or other units are ignored.
Encapsulated Pixel Data (the BulkDataURI of a compressed image, or inside ``/bulkdata``) is sent
as the stored codestreams, one part a frame, when asked with ``transfer-syntax=*`` or a compressed
media type, and otherwise decoded into one part holding every frame (the value a native Pixel Data
element would hold); every part is labelled with the BulkDataURI (Range ignored). Other
encapsulated values (rare, nested) are sent as their fragments joined. Statuses: 200, 206, 404,
406, 416.
"""
from __future__ import annotations

import itertools

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import pydicom
from pydicom.encaps import generate_fragments

from .. import transcode
from ..errors import NotAcceptable, NotFound, RangeNotSatisfiable
from ..http import CHUNK_SIZE, Request, Response
from ..mediatypes import Offer, negotiate
from ..multipart import multipart_content_type, new_boundary, write_multipart
from ..storage.base import StoredInstance
from .pixeldata import OCTET_STREAM, PIXEL_DATA_PATH, frame_parts, pixel_source, serve_frames

_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
_UNCOMPRESSED = frozenset({transcode.EXPLICIT_VR_LE})
_ENCAPSULATED_DOCUMENT = "00420011"
_DOCUMENT_MIME_TYPE = "00420012"
_DOCUMENT_LENGTH = "00420015"
# What the /bulkdata resources, and the study, series and instance resources, send as bulk data.
BULK_OFFER = Offer(OCTET_STREAM, True, _UNCOMPRESSED)


@dataclass(frozen=True)
class BulkValue:
    """One bulk data value: its length and a reader of byte ranges of its little-endian bytes."""

    length: int
    read: Callable[[int, int], Iterator[bytes]]


def retrieve_bulkdata(req: Request, study_uid: str, series_uid: str, sop_uid: str, path: str) -> Response:
    """The value behind one BulkDataURI (multipart by default, single part when asked)."""
    found = req.ctx.archive.instances(study_uid, series_uid, sop_uid)
    if not found:
        raise NotFound(f"instance {sop_uid} not found")
    inst = found[0]
    ref = next((r for r in bulk_refs(inst) if r["path"] == path), None)
    if ref is None:
        raise NotFound(f"instance {sop_uid} has no bulk data at {path}")
    if path == PIXEL_DATA_PATH and ref["length"] is None:
        source = pixel_source(req, inst)
        if source is not None:
            return serve_frames(req, [(source, list(range(1, source.frames + 1)))],
                                bulk_location=bulk_uri(req.base_url, inst, path))
    offers = [BULK_OFFER, Offer(OCTET_STREAM, False, _UNCOMPRESSED)]
    mime, document_length = _document_description(req, inst, path) if path.endswith(_ENCAPSULATED_DOCUMENT) \
        else (None, None)
    if mime:
        offers += [Offer(mime, True), Offer(mime, False)]
    selection = negotiate(req.accept, offers)
    if selection is None:
        raise NotAcceptable("bulk data is available as multipart/related; type=\"application/octet-stream\" "
                            "or application/octet-stream" + (f" (or {offers[-1].media_type})" if len(offers) > 2
                                                             else ""))
    value = locate(req, inst, ref)
    media_type = selection.offer.media_type
    if media_type == mime and document_length is not None and document_length < value.length:
        # PS3.3 C.24.2.1: the value is padded to even length; as its own MIME type the document
        # is sent at its real length (a trailing NUL breaks XML parsers).
        value = BulkValue(document_length, value.read)
    byte_range = parse_range(req.header("Range"), value.length)
    start, stop = byte_range or (0, value.length)
    content_range = {"Content-Range": f"bytes {start}-{stop - 1}/{value.length}"} if byte_range else {}
    status = 206 if byte_range else 200
    if not selection.offer.multipart:
        resp = Response(status=status, body=value.read(start, stop), content_type=media_type)
        resp.headers.extend(content_range.items())
        resp.add_header("Content-Length", str(stop - start))
        resp.add_header("Accept-Ranges", "bytes")
        return resp
    headers = {"Content-Type": media_type, "Content-Location": bulk_uri(req.base_url, inst, path),
               **content_range}
    boundary = new_boundary()
    resp = Response(status=status, body=write_multipart([(headers, value.read(start, stop))], boundary),
                    content_type=multipart_content_type(media_type, boundary))
    resp.add_header("Accept-Ranges", "bytes")
    return resp


def retrieve_study_bulkdata(req: Request, study_uid: str) -> Response:
    """All bulk data of a study's instances, one value (or frame) a part."""
    return all_bulkdata(req, req.ctx.archive.instances(study_uid), f"study {study_uid}")


def retrieve_series_bulkdata(req: Request, study_uid: str, series_uid: str) -> Response:
    """All bulk data of a series' instances, one value (or frame) a part."""
    return all_bulkdata(req, req.ctx.archive.instances(study_uid, series_uid), f"series {series_uid}")


def retrieve_instance_bulkdata(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """All bulk data of one instance, one value (or frame) a part."""
    return all_bulkdata(req, req.ctx.archive.instances(study_uid, series_uid, sop_uid), f"instance {sop_uid}")


def all_bulkdata(req: Request, instances: list[StoredInstance], what: str) -> Response:
    """Every bulk data value of ``instances``, one value (or stored frame) a part."""
    if not instances:
        raise NotFound(f"{what} not found")
    selection = negotiate(req.accept, [BULK_OFFER])
    if selection is None:
        raise NotAcceptable("bulk data resources are multipart/related; type=\"application/octet-stream\"")
    as_stored = selection.transfer_syntax == "*"
    jobs: list[tuple[StoredInstance, dict[str, Any]]] = []
    for inst in instances:
        for ref in bulk_refs(inst):
            if _is_encapsulated_pixels(ref) and not as_stored \
                    and not transcode.can_transcode(inst.transfer_syntax, transcode.EXPLICIT_VR_LE):
                raise NotAcceptable(f"the pixel data of instance {inst.sop_uid} cannot be decompressed on this "
                                    "server; ask for transfer-syntax=* to receive it as stored")
            jobs.append((inst, ref))
    if not jobs:
        raise NotFound(f"{what} has no bulk data")
    boundary = new_boundary()
    params = {} if as_stored else {"transfer-syntax": transcode.EXPLICIT_VR_LE}
    parts = _bulk_parts(req, jobs, "*" if as_stored else None)
    # The first part is produced (a frame decoded) before the status goes out, so a value that
    # cannot be produced is a 406, not a 200 cut short.
    first = next(parts)
    return Response(body=write_multipart(itertools.chain([first], parts), boundary),
                    content_type=multipart_content_type(OCTET_STREAM, boundary, **params))


def _bulk_parts(req: Request, jobs: list[tuple[StoredInstance, dict[str, Any]]],
                target: str | None) -> Iterator[tuple[dict[str, str], Iterator[bytes] | list[bytes]]]:
    base = req.base_url
    for inst, ref in jobs:
        if _is_encapsulated_pixels(ref):
            source = pixel_source(req, inst)
            if source is not None:
                yield from frame_parts(source, bulk_uri(base, inst, ref["path"]), target)
                continue
        value = locate(req, inst, ref)
        yield ({"Content-Type": OCTET_STREAM, "Content-Location": bulk_uri(base, inst, ref["path"])},
               value.read(0, value.length))


def _is_encapsulated_pixels(ref: dict[str, Any]) -> bool:
    return ref["path"] == PIXEL_DATA_PATH and ref["length"] is None


def bulk_refs(inst: StoredInstance) -> list[dict[str, Any]]:
    """The bulk data references recorded at store time: ``{path, vr, offset, length}`` each."""
    return json.loads(inst.bulk_json) if inst.bulk_json else []


def bulk_uri(base: str, inst: StoredInstance, path: str) -> str:
    """The absolute BulkDataURI of a value, as the metadata gives it."""
    return (f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_uid}"
            f"/bulkdata/{path}")


def locate(req: Request, inst: StoredInstance, ref: dict[str, Any]) -> BulkValue:
    """Where a value's bytes are: a byte range of the stored file, or (no offset) the parsed value."""
    file_path = req.ctx.archive.path(inst)
    width = _swap_width(req, inst, ref) if inst.transfer_syntax == transcode.EXPLICIT_VR_BE else 0
    offset, length = ref["offset"], ref["length"]
    if offset is not None and length is not None:
        return BulkValue(length, lambda start, stop: _file_range(file_path, offset, length, start, stop, width))
    data = _parsed_value(file_path, ref["path"])
    if width > 1:
        data = _swap(data, width)
    return BulkValue(len(data), lambda start, stop: iter([data[start:stop]]))


def _swap_width(req: Request, inst: StoredInstance, ref: dict[str, Any]) -> int:
    width = _SWAP_WIDTH.get(ref["vr"], 0)
    if ref["path"] == PIXEL_DATA_PATH and width:
        # Big-endian Pixel Data is swapped by pixel cell, as pydicom and dcmtk read it.
        bits = _top_level_value(req, inst, "00280100")
        if isinstance(bits, int) and bits in (32, 64):
            width = bits // 8
    return width


def _file_range(path: str, offset: int, length: int, start: int, stop: int, width: int) -> Iterator[bytes]:
    """Bytes ``start:stop`` of the value at ``offset``, read in chunks (swapped by ``width``)."""
    low, high = start, stop
    if width > 1:
        # Swap whole words only: widen the read to word boundaries, then trim.
        low = start - start % width
        high = min(length, -(-stop // width) * width)
    with open(path, "rb") as fh:
        fh.seek(offset + low)
        position = low
        while position < high:
            data = fh.read(min(CHUNK_SIZE, high - position))
            if not data:
                break
            if width > 1:
                data = _swap(data, width)
            begin, end = max(start, position) - position, min(stop, position + len(data)) - position
            if end > begin:
                yield data[begin:end]
            position += len(data)


def _swap(data: bytes, width: int) -> bytes:
    usable = len(data) - len(data) % width
    swapped = np.frombuffer(data, dtype=f"u{width}", count=usable // width).byteswap().tobytes()
    return swapped + data[usable:]


def _parsed_value(file_path: str, path: str) -> bytes:
    """A value found by parsing the file (files whose offsets are not known, e.g. deflated)."""
    parts = path.split("/")
    try:
        node: Any = pydicom.dcmread(file_path, force=True)
        for tag, index in zip(parts[0::2], parts[1::2]):
            node = node[int(tag, 16)].value[int(index)]
        elem = node[int(parts[-1], 16)]
    except Exception as exc:  # pydicom raises many types on a damaged file
        raise NotFound(f"bulk data {path} cannot be read from the stored file: {exc}") from exc
    value = elem.value
    if not isinstance(value, (bytes, bytearray)):
        raise NotFound(f"bulk data {path} cannot be read as bytes")
    if elem.is_undefined_length:
        return b"".join(generate_fragments(value))
    return bytes(value)


def _metadata(req: Request, inst: StoredInstance) -> dict[str, Any]:
    documents = req.ctx.archive.metadata(inst.study_uid, inst.series_uid, inst.sop_uid)
    return json.loads(documents[0]) if documents else {}


def _top_level_value(req: Request, inst: StoredInstance, tag: str) -> Any:
    values = _metadata(req, inst).get(tag, {}).get("Value") or [None]
    return values[0]


def _document_description(req: Request, inst: StoredInstance, path: str) -> tuple[str | None, int | None]:
    """The MIME Type of Encapsulated Document and the Encapsulated Document Length beside the
    document (same data set or item); None for what is missing or unusable."""
    node: Any = _metadata(req, inst)
    parts = path.split("/")
    try:
        for tag, index in zip(parts[0::2], parts[1::2]):
            node = node[tag]["Value"][int(index)]
    except (KeyError, IndexError, TypeError, ValueError):
        return None, None
    mime = _first_value(node, _DOCUMENT_MIME_TYPE)
    length = _first_value(node, _DOCUMENT_LENGTH)
    if not (isinstance(mime, str) and mime.count("/") == 1 and " " not in mime.strip()):
        mime = None
    return (mime.strip().lower() if mime else None,
            length if isinstance(length, int) and not isinstance(length, bool) and length >= 0 else None)


def _first_value(node: Any, tag: str) -> Any:
    try:
        return node[tag]["Value"][0]
    except (KeyError, IndexError, TypeError):
        return None


def parse_range(header: str | None, length: int) -> tuple[int, int] | None:
    """One ``bytes`` range of RFC 9110 §14.1.2 as (start, stop); None to send the whole value.

    Several ranges, other units and malformed values are ignored (§14.2 allows that); a range
    that starts at or past the end is a 416 with ``Content-Range: bytes */length``.
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = (p.strip() for p in spec.strip().partition("-"))
    if not dash or (first and not first.isdigit()) or (last and not last.isdigit()) or not (first or last):
        return None
    unsatisfiable = RangeNotSatisfiable(f"the range {spec.strip()!r} is outside the {length} bytes of the value",
                                        headers={"Content-Range": f"bytes */{length}"})
    if not first:
        suffix = int(last)
        if suffix == 0 or length == 0:
            raise unsatisfiable
        return max(0, length - suffix), length
    start = int(first)
    stop = length if not last else min(length, int(last) + 1)
    if last and int(last) < start:
        return None
    if start >= length:
        raise unsatisfiable
    return start, stop
