"""WADO-RS Retrieve Rendered and thumbnails (PS3.18 §10.4, rendering parameters §8.3.5,
rendered media types Table 8.7.4-1).

Supports ``/rendered`` on a study, series, instance and frame list, and ``/thumbnail`` on the same
four resources.

* Images: ``image/jpeg`` (default, baseline 8-bit), ``image/png``, ``image/gif``, and
  ``image/jp2`` when Pillow has OpenJPEG. One image is sent as a single part. Several images
  (a multi-frame instance, a frame list, a series, a study) are sent as ``multipart/related;
  type=<the rendered media type>``, one part per frame, even when the Accept header names only
  the bare image type. This is how clients such as dicomweb-client ask for a rendered series.
* Encapsulated PDF renders as ``application/pdf`` and Encapsulated CDA as ``text/xml``
  (the stored document). Structured reports render as ``text/html`` (default) or
  ``text/plain``: a header and the indented content tree.
* A series or study contains only the instances that can produce the chosen media type. An
  image that cannot be decoded is left out of a multipart response and the failure is logged
  (after the first part the status line has gone); when no image can be rendered the answer
  is a 406, and so is a single image that cannot be rendered.
* Parameters: ``window=center,width[,linear|linear-exact|sigmoid]``,
  ``viewport=vw,vh[,sx,sy,sw,sh]`` and ``quality`` (JPEG). The rendering pipeline itself is in
  ``render.py``: Modality LUT, VOI, MONOCHROME1, colour, planar configuration.
* Ignored, with a ``Warning: 299`` header: ``annotation`` and ``iccprofile`` (except
  ``iccprofile=no``, which is what we do). ``charset`` is ignored without a warning; text is
  UTF-8.
* Frame numbers out of range give a 404 naming the instance's frame count.
* Thumbnails are ``image/jpeg`` only, 128x128 by default (``viewport=vw,vh`` up to 1024). The
  representative image is: for an instance, its centre frame; for a frame list, the first listed
  frame; for a series, the middle image instance; for a study, the first series that has images.
  Thumbnails are cached under ``<data_dir>/thumbnails``, named after the blob key, so a replaced
  instance gets a new one. They carry an ``ETag``, and ``If-None-Match`` gives a 304.

Multi-frame instances with a stored frame layout are rendered one frame at a time: the header and
that frame's bytes are read, never the whole file.
"""
from __future__ import annotations

import functools
import hashlib
import html
import itertools
import logging
import os
import re
import tempfile
from dataclasses import dataclass, replace
from typing import Iterator

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence

from .. import render, transcode
from ..errors import BadRequest, NotAcceptable, NotFound
from ..frames import FrameLayout, read_frame
from ..http import Request, Response, warning_value
from ..mediatypes import Offer, negotiate, refuse_dicom_with_rendered
from ..multipart import multipart_content_type, new_boundary, write_multipart
from ..storage.base import StoredInstance

log = logging.getLogger("dicomweb_wsgi.rendered")

PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
CDA_STORAGE = "1.2.840.10008.5.1.4.1.1.104.2"
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
DOCUMENT_TYPES = {PDF_STORAGE: "application/pdf", CDA_STORAGE: "text/xml"}
SR_TYPES = ("text/html", "text/plain")
IGNORED_WITH_WARNING = ("annotation", "iccprofile")
THUMBNAIL_SIZE = 128
THUMBNAIL_MAX = 1024
THUMBNAIL_QUALITY = 85
_KEY_RE = re.compile(r"^[0-9A-Za-z_-]{1,128}$")


@functools.lru_cache(maxsize=1)
def image_types() -> tuple[str, ...]:
    """The rendered image media types this machine can produce, in server preference order."""
    from PIL import features

    return tuple(t for t in render.RENDERED_MEDIA_TYPES
                 if t != "image/jp2" or features.check("jpg_2000"))


# --------------------------------------------------------------------------------------------
# Handlers


def retrieve_study_rendered(req: Request, study_uid: str) -> Response:
    """Every renderable instance of a study (multipart when more than one image).

    200; 404 no such study; 406 nothing in it renders as an acceptable media type; 400 bad
    rendering parameters."""
    return _rendered(req, _instances(req, f"study {study_uid}", study_uid))


def retrieve_series_rendered(req: Request, study_uid: str, series_uid: str) -> Response:
    """Every renderable instance of a series (multipart when more than one image); statuses as
    for the study."""
    return _rendered(req, _instances(req, f"series {series_uid}", study_uid, series_uid))


def retrieve_instance_rendered(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """One instance: an image (all frames, multipart when multi-frame), a PDF or CDA document,
    or an SR as HTML/text. 200; 404; 406; 400."""
    return _rendered(req, _instances(req, f"instance {sop_uid}", study_uid, series_uid, sop_uid))


def retrieve_instance_frames_rendered(req: Request, study_uid: str, series_uid: str, sop_uid: str,
                                      frames: list[int]) -> Response:
    """The listed frames (1-based) of an image instance, in the order given. 404 for a frame
    out of range or an instance without images."""
    insts = _instances(req, f"instance {sop_uid}", study_uid, series_uid, sop_uid)
    return _rendered(req, insts, frames)


def retrieve_study_thumbnail(req: Request, study_uid: str) -> Response:
    """A small JPEG of the study's representative image. 200; 304; 404 no image; 406."""
    insts = _instances(req, f"study {study_uid}", study_uid)
    series_order: list[str] = []
    for inst in insts:
        if inst.series_uid not in series_order:
            series_order.append(inst.series_uid)
    for series_uid in series_order:
        images = [i for i in insts if i.series_uid == series_uid and _kind(req, i) == "image"]
        if images:
            return _thumbnail(req, _middle(images), None)
    raise NotFound(f"study {study_uid} has no image to make a thumbnail of")


def retrieve_series_thumbnail(req: Request, study_uid: str, series_uid: str) -> Response:
    """A small JPEG of the series' middle image instance. 200; 304; 404 no image; 406."""
    insts = _instances(req, f"series {series_uid}", study_uid, series_uid)
    images = [i for i in insts if _kind(req, i) == "image"]
    if not images:
        raise NotFound(f"series {series_uid} has no image to make a thumbnail of")
    return _thumbnail(req, _middle(images), None)


def retrieve_instance_thumbnail(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """A small JPEG of the instance's centre frame. 200; 304; 404 not an image; 406."""
    inst = _instances(req, f"instance {sop_uid}", study_uid, series_uid, sop_uid)[0]
    return _thumbnail(req, inst, None)


def retrieve_instance_frames_thumbnail(req: Request, study_uid: str, series_uid: str, sop_uid: str,
                                       frames: list[int]) -> Response:
    """A small JPEG of the first listed frame. 200; 304; 404; 406."""
    inst = _instances(req, f"instance {sop_uid}", study_uid, series_uid, sop_uid)[0]
    return _thumbnail(req, inst, frames[0])


# --------------------------------------------------------------------------------------------
# What each instance can become


def _instances(req: Request, what: str, study_uid: str, series_uid: str | None = None,
               sop_uid: str | None = None) -> list[StoredInstance]:
    found = req.ctx.archive.instances(study_uid, series_uid, sop_uid)
    if not found:
        raise NotFound(f"{what} not found")
    return found


def _middle(items: list[StoredInstance]) -> StoredInstance:
    return items[(len(items) - 1) // 2]


def _kind(req: Request, inst: StoredInstance) -> str:
    """``image``, ``document``, ``sr`` or ``""`` (nothing to render), from the index alone."""
    if inst.sop_class_uid in DOCUMENT_TYPES:
        return "document"
    if inst.sop_class_uid.startswith(SR_PREFIX):
        return "sr"
    if inst.frames_json:
        return "image"
    # No frame layout: Pixel Data may still be there (a deflated file); the stored JSON knows.
    meta = req.ctx.archive.metadata(inst.study_uid, inst.series_uid, inst.sop_uid)
    return "image" if meta and '"7FE00010"' in meta[0] else ""


def _media_types(kind: str, inst: StoredInstance) -> tuple[str, ...]:
    if kind == "image":
        return image_types()
    if kind == "document":
        return (DOCUMENT_TYPES[inst.sop_class_uid],)
    if kind == "sr":
        return SR_TYPES
    return ()


def _frame_count(inst: StoredInstance) -> int:
    if inst.frames_json:
        return FrameLayout.from_json(inst.frames_json).number_of_frames
    return max(1, inst.number_of_frames or 1)


@dataclass(frozen=True)
class _Target:
    """One part of a rendered response: an instance and, for images, one frame."""

    inst: StoredInstance
    kind: str
    frame: int | None
    multiframe: bool


def _targets(classified: list[tuple[StoredInstance, str]], media_type: str,
             frames: list[int] | None) -> list[_Target]:
    out: list[_Target] = []
    for inst, kind in classified:
        if media_type not in _media_types(kind, inst):
            continue
        if kind != "image":
            out.append(_Target(inst, kind, None, False))
            continue
        count = _frame_count(inst)
        numbers = frames if frames is not None else range(1, count + 1)
        for number in numbers:
            if number > count:
                raise NotFound(f"frame {number} does not exist; instance {inst.sop_uid} has "
                               f"{count} frame(s)")
            out.append(_Target(inst, kind, number, count > 1))
    return out


# --------------------------------------------------------------------------------------------
# Rendered responses


def _rendered(req: Request, insts: list[StoredInstance], frames: list[int] | None = None) -> Response:
    refuse_dicom_with_rendered(req.accept)
    classified = [(inst, _kind(req, inst)) for inst in insts]
    if frames is not None:
        classified = [(inst, kind) for inst, kind in classified if kind == "image"]
        if not classified:
            raise NotFound(f"instance {insts[0].sop_uid} has no frames to render")
    available: list[str] = []
    for inst, kind in classified:
        available += [t for t in _media_types(kind, inst) if t not in available]
    if not available:
        raise NotAcceptable("nothing here can be rendered (no pixel data, document or report)")
    # Images first: they are the default representation (Table 8.7.4-1).
    available.sort(key=lambda t: not t.startswith("image/"))
    offers = [Offer(t, multipart) for t in available for multipart in (False, True)]
    selection = negotiate(req.accept, offers)
    if selection is None:
        raise NotAcceptable("rendered resources are available as " + ", ".join(available)
                            + " (several images come as multipart/related of that type)")
    media_type = selection.offer.media_type
    params = replace(render.parse_rendered_query(req.query), media_type=media_type)
    targets = _targets(classified, media_type, frames)
    # PS3.18 §8.3.5: iccprofile=no asks for what we do anyway; anything else is not honoured.
    warnings = [f"{name} is not supported and was ignored" for name in IGNORED_WITH_WARNING
                if name in req.query and not (name == "iccprofile" and req.query_one(name) == "no")]
    if len(targets) == 1 and not selection.offer.multipart:
        resp = Response(body=_render_one(req, targets[0], params, {}),
                        content_type=_part_type(media_type))
    else:
        resp = _multipart(req, targets, params, media_type)
    for text in warnings:
        resp.add_header("Warning", warning_value(req.base_url, text))
    return resp


def _part_type(media_type: str) -> str:
    return media_type + "; charset=utf-8" if media_type in SR_TYPES else media_type


def _multipart(req: Request, targets: list[_Target], params: render.RenderParams,
               media_type: str) -> Response:
    base = req.base_url
    cache: dict[str, _Source] = {}
    # The first part is rendered before the status goes out, so that when nothing can be
    # rendered the answer is a 406, not an empty multipart body.
    failure: NotAcceptable | None = None
    for index, target in enumerate(targets):
        try:
            first = (_part_headers(base, target, media_type), [_render_one(req, target, params, cache)])
            break
        except NotAcceptable as exc:
            failure = failure or exc
    else:
        assert failure is not None
        raise failure
    rest = (_lazy_part(req, base, t, params, media_type, cache) for t in targets[index + 1:])
    parts = (p for p in itertools.chain([first], rest) if p is not None)
    boundary = new_boundary()
    return Response(body=write_multipart(parts, boundary),
                    content_type=multipart_content_type(media_type, boundary))


def _part_headers(base: str, target: _Target, media_type: str) -> dict[str, str]:
    inst = target.inst
    url = f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_uid}"
    if target.multiframe:
        url += f"/frames/{target.frame}"
    return {"Content-Type": _part_type(media_type), "Content-Location": url + "/rendered"}


def _lazy_part(req: Request, base: str, target: _Target, params: render.RenderParams,
               media_type: str, cache: dict[str, _Source]) -> tuple[dict[str, str], list[bytes]] | None:
    try:
        body = _render_one(req, target, params, cache)
    except Exception as exc:  # the status is sent: leave the part out rather than cut the stream
        log.warning("rendering %s frame %s failed, left out of the response: %s",
                    target.inst.sop_uid, target.frame, exc)
        return None
    return _part_headers(base, target, media_type), [body]


def _render_one(req: Request, target: _Target, params: render.RenderParams,
                cache: dict[str, _Source]) -> bytes:
    path = req.ctx.archive.path(target.inst)
    if target.kind == "image":
        assert target.frame is not None
        source = cache.get(path)
        if source is None:
            cache.clear()  # one instance at a time: keep memory bounded
            source = cache[path] = _Source(path, target.inst)
        ds, number = source.frame(target.frame)
        return render.render_frame(ds, number, params)
    ds = _read(path)
    if target.kind == "document":
        return _document(ds)
    return _report(ds, params.media_type)


def _read(path: str, **kwargs: object) -> Dataset:
    return transcode.read_stored(path, force=True, **kwargs)


class _Source:
    """Frames of one stored image, read one at a time when the index has the frame layout."""

    def __init__(self, path: str, inst: StoredInstance) -> None:
        self.path = path
        self.layout = FrameLayout.from_json(inst.frames_json) if inst.frames_json else None
        self._header: Dataset | None = None
        self._full: Dataset | None = None
        self._per_frame: list[Dataset] | None = None

    def frame(self, number: int) -> tuple[Dataset, int]:
        """A data set holding frame ``number`` and the frame number to render within it."""
        layout = self.layout
        if layout is None or layout.number_of_frames < 2:
            if self._full is None:
                self._full = _read(self.path)
            return self._full, number
        if self._header is None:
            self._header = _read(self.path, stop_before_pixels=True)
            per_frame = self._header.get("PerFrameFunctionalGroupsSequence")
            self._per_frame = list(per_frame) if per_frame else None
        header = self._header
        data = read_frame(self.path, layout, number)
        ds = Dataset(header)
        ds.file_meta = header.file_meta
        ds.set_original_encoding(*header.original_encoding)
        ds.NumberOfFrames = 1
        for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
            if keyword in ds:
                del ds[keyword]
        if self._per_frame is not None and number <= len(self._per_frame):
            ds.PerFrameFunctionalGroupsSequence = Sequence([self._per_frame[number - 1]])
        if layout.encapsulated:
            ds.PixelData = encapsulate([data])
            ds["PixelData"].VR = "OB"
            ds["PixelData"].is_undefined_length = True
        else:
            ds.PixelData = data
            ds["PixelData"].VR = "OB" if int(header.get("BitsAllocated", 8) or 8) <= 8 else "OW"
        return ds, 1


def _document(ds: Dataset) -> bytes:
    data = ds.get("EncapsulatedDocument")
    if not data:
        raise NotAcceptable("the instance has no Encapsulated Document")
    data = bytes(data)
    length = ds.get("EncapsulatedDocumentLength")
    if isinstance(length, int) and 0 < length <= len(data):
        data = data[:length]  # drop the even-length padding byte (PS3.3 C.24.2)
    return data


# --------------------------------------------------------------------------------------------
# Structured reports as text


def _code_meaning(item: Dataset, keyword: str) -> str:
    seq = item.get(keyword)
    if not seq:
        return ""
    code = seq[0]
    return str(code.get("CodeMeaning", "") or code.get("CodeValue", "") or "")


def _content_value(item: Dataset) -> str:
    """The value of one SR content item (PS3.3 C.17.3.2.1 value types) as text."""
    kind = str(item.get("ValueType", "") or "")
    if kind == "TEXT":
        return str(item.get("TextValue", "") or "")
    if kind == "CODE":
        return _code_meaning(item, "ConceptCodeSequence")
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return ""
        value = str(measured[0].get("NumericValue", "") or "")
        units = measured[0].get("MeasurementUnitsCodeSequence")
        unit = str(units[0].get("CodeValue", "") or "") if units else ""
        return f"{value} {unit}".strip()
    if kind in ("PNAME", "DATE", "TIME", "DATETIME", "UIDREF"):
        keyword = {"PNAME": "PersonName", "DATE": "Date", "TIME": "Time", "DATETIME": "DateTime",
                   "UIDREF": "UID"}[kind]
        return str(item.get(keyword, "") or "")
    if kind in ("IMAGE", "COMPOSITE", "WAVEFORM"):
        refs = item.get("ReferencedSOPSequence")
        return f"{kind.lower()} {refs[0].get('ReferencedSOPInstanceUID', '')}" if refs else kind.lower()
    if kind in ("SCOORD", "SCOORD3D", "TCOORD"):
        return f"{kind.lower()} {item.get('GraphicType', '') or item.get('TemporalRangeType', '')}".strip()
    return ""


def _content_lines(ds: Dataset, depth: int = 0) -> Iterator[tuple[int, str, str, bool]]:
    """(depth, concept name, value, is container) for every content item, depth first."""
    for item in ds.get("ContentSequence") or []:
        container = str(item.get("ValueType", "")) == "CONTAINER"
        yield depth, _code_meaning(item, "ConceptNameCodeSequence"), _content_value(item), container
        if depth < 64:
            yield from _content_lines(item, depth + 1)


def _report_header(ds: Dataset) -> list[tuple[str, str]]:
    fields = [("Patient", "PatientName"), ("Patient ID", "PatientID"), ("Birth date", "PatientBirthDate"),
              ("Sex", "PatientSex"), ("Study date", "StudyDate"), ("Accession", "AccessionNumber"),
              ("Completion", "CompletionFlag"), ("Verification", "VerificationFlag")]
    return [(label, str(ds.get(keyword, "") or "")) for label, keyword in fields if ds.get(keyword)]


def _report(ds: Dataset, media_type: str) -> bytes:
    title = _code_meaning(ds, "ConceptNameCodeSequence") or "Structured Report"
    header = _report_header(ds)
    lines = list(_content_lines(ds))
    if media_type == "text/plain":
        out = [title, "=" * len(title)]
        out += [f"{label}: {value}" for label, value in header]
        out.append("")
        for depth, name, value, _ in lines:
            text = f"{name}: {value}" if name and value else name or value
            if text:
                out.append("  " * depth + text.replace("\n", "\n" + "  " * (depth + 1)))
        return ("\n".join(out) + "\n").encode("utf-8")
    esc = html.escape
    out = ["<!DOCTYPE html>", '<html><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
           "</head><body>", f"<h1>{esc(title)}</h1>", "<dl>"]
    out += [f"<dt>{esc(label)}</dt><dd>{esc(value)}</dd>" for label, value in header]
    out.append("</dl>")
    for depth, name, value, container in lines:
        style = f' style="margin-left:{2 * depth}em"'
        if container and not name:
            continue
        if container:
            level = min(6, depth + 2)
            out.append(f"<h{level}{style}>{esc(name)}</h{level}>")
        else:
            label = f"<b>{esc(name)}</b>: " if name and value else f"<b>{esc(name)}</b>" if name else ""
            out.append(f"<p{style}>{label}{esc(value)}</p>")
    out.append("</body></html>")
    return ("\n".join(out) + "\n").encode("utf-8")


# --------------------------------------------------------------------------------------------
# Thumbnails


def _thumbnail_size(req: Request) -> tuple[int, int]:
    text = req.query_one("viewport")
    if text is None:
        return THUMBNAIL_SIZE, THUMBNAIL_SIZE
    parts = [p.strip() for p in text.split(",")]
    try:
        vw, vh = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise BadRequest("viewport: expected vw,vh for a thumbnail") from None
    if not (1 <= vw <= THUMBNAIL_MAX and 1 <= vh <= THUMBNAIL_MAX):
        raise BadRequest(f"viewport: thumbnail sizes are 1..{THUMBNAIL_MAX}")
    return vw, vh


def _thumbnail(req: Request, inst: StoredInstance, frame: int | None) -> Response:
    refuse_dicom_with_rendered(req.accept)
    if negotiate(req.accept, [Offer("image/jpeg", False)]) is None:
        raise NotAcceptable("thumbnails are image/jpeg")
    if _kind(req, inst) != "image":
        raise NotFound(f"instance {inst.sop_uid} has no image to make a thumbnail of")
    count = _frame_count(inst)
    number = frame if frame is not None else (count + 1) // 2
    if number > count:
        raise NotFound(f"frame {number} does not exist; instance {inst.sop_uid} has {count} frame(s)")
    vw, vh = _thumbnail_size(req)
    if not _KEY_RE.match(inst.blob_key):
        raise NotFound("the stored instance has an unusable key")
    name = f"{inst.blob_key}-{number}-{vw}x{vh}.jpg"
    etag = '"' + hashlib.sha256(name.encode("ascii")).hexdigest()[:32] + '"'
    if _etag_matches(req.header("If-None-Match"), etag):
        resp = Response(304)
        resp.add_header("ETag", etag)
        return resp
    folder = os.path.join(os.path.abspath(req.ctx.settings.data_dir), "thumbnails", inst.blob_key[:2])
    path = os.path.join(folder, name)
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        ds, index = _Source(req.ctx.archive.path(inst), inst).frame(number)
        params = render.RenderParams(viewport=(vw, vh), quality=THUMBNAIL_QUALITY)
        data = render.render_frame(ds, index, params)
        _save(folder, path, data)
    resp = Response(body=data, content_type="image/jpeg")
    resp.add_header("ETag", etag)
    return resp


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _save(folder: str, path: str, data: bytes) -> None:
    """Write a cache file atomically (temp + rename); a failure only costs the cache."""
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:
        log.warning("could not cache thumbnail %s: %s", path, exc)


__all__ = [
    "retrieve_study_rendered", "retrieve_series_rendered", "retrieve_instance_rendered",
    "retrieve_instance_frames_rendered", "retrieve_study_thumbnail", "retrieve_series_thumbnail",
    "retrieve_instance_thumbnail", "retrieve_instance_frames_thumbnail", "image_types",
]
