"""WADO-URI: Retrieve DICOM Instance and Retrieve Rendered Instance (PS3.18 §9).

One resource, ``GET {wado_uri_path}?requestType=WADO&studyUID=&seriesUID=&objectUID=``. The two
transactions are told apart by the selected media type (§9.3).

Supports:

* ``contentType`` (a comma list with q-values; each member must be compatible with the
  ``Accept`` header, which alone negotiates when there is no ``contentType``). Without either,
  images are rendered as ``image/jpeg`` (§9.3). What can be produced depends on the object:
  images: ``image/jpeg``, ``image/png``, ``image/gif``, ``image/jp2`` (when the JPEG 2000
  encoder is installed); Structured Reports: ``text/html`` (default), ``text/plain`` and
  ``text/xml`` (the PS3.19 Native DICOM Model); encapsulated documents (PDF, CDA, STL, ...):
  their own MIME type (default); MPEG-2 / MPEG-4 / HEVC video: ``video/mpeg`` or ``video/mp4``
  (the stream as stored); every object: ``application/dicom``. When nothing acceptable can be
  produced, the object's default is sent (PS3.18 §8.3.3.1) unless the ``Accept`` header
  excludes it (406). The Content-Type is always what the body really is.
* ``application/dicom`` with ``transferSyntax`` (a UID or ``*``): as in WADO-RS, Implicit VR
  Little Endian and Explicit VR Big Endian are never sent; without ``transferSyntax`` Explicit
  VR Little Endian; ``*`` sends the stored file byte for byte. ``anonymize=yes`` de-identifies
  per the PS3.15 Basic Application Level Confidentiality Profile (see ``anonymize.py``); an image
  marked Burned In Annotation YES is refused (406) because pixel data is not cleaned.
* Rendering: ``rows``, ``columns`` (fit inside, aspect kept), ``region``, ``windowCenter`` +
  ``windowWidth`` (linear VOI), ``frameNumber`` (multi-frame images only, §9.5.2),
  ``imageQuality``, ``annotation=patient,technique`` (burned in, ``annotate.py``) and
  ``presentationUID`` + ``presentationSeriesUID`` (a GSPS of the same study, ``presentation.py``;
  an explicit window overrides its VOI; ``region`` applies after it).
* ``charset`` (or ``Accept-Charset``) for the text media types; DICOM XML is always UTF-8.

Errors: a missing or malformed parameter, a parameter that does not apply to the selected media
type or object (rendering parameters with ``application/dicom`` or a non-image, ``anonymize`` or
``transferSyntax`` with a rendered type), ``windowCenter`` without ``windowWidth`` or the other way
round, and a parameter given twice are 400 naming the parameter; unknown UIDs are 404; a
representation that cannot be produced is 406.

Ignores: unknown parameters and unknown ``annotation`` keywords (§8.3), ``charset`` for
``application/dicom`` (Specific Character Set is not converted) and for images, ``imageQuality``
for lossless types. Does not support: ``iccprofile``, rendering of video frames, animated
multi-frame GIF (a multi-frame image renders one frame, the first by default).
"""
from __future__ import annotations

import codecs
import dataclasses
import html
import io
import re
import tempfile
from functools import cached_property
from typing import BinaryIO, Callable, Iterable

import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, parse_basic_offsets

from .. import annotate, anonymize, presentation, render, transcode
from ..dicomjson import dataset_to_json, json_to_xml
from ..errors import BadRequest, DicomWebError, NotAcceptable, NotFound
from ..http import Request, Response
from ..mediatypes import MediaType, Offer, negotiate, parse_accept, refuse_dicom_with_rendered
from ..model import is_valid_uid
from ..storage.base import StoredInstance
from .wado import NEVER_SENT, target_syntax

DICOM = "application/dicom"
RENDERING_PARAMS = ("rows", "columns", "region", "windowCenter", "windowWidth", "frameNumber",
                    "imageQuality", "annotation", "presentationUID", "presentationSeriesUID")
DICOM_PARAMS = ("anonymize", "transferSyntax")
# Parameters that take exactly one value; contentType, annotation and charset are lists.
SINGLE_PARAMS = ("requestType", "studyUID", "seriesUID", "objectUID", *DICOM_PARAMS,
                 *(p for p in RENDERING_PARAMS if p != "annotation"))
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/jp2")
REPORT_TYPES = ("text/html", "text/plain", "text/xml")
SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
ENCAPSULATED_DOCUMENT_PREFIX = "1.2.840.10008.5.1.4.1.1.104."
# PS3.18 Table 8.7.4-1: MPEG-2 as video/mpeg, MPEG-4 AVC/H.264 and HEVC/H.265 as video/mp4.
VIDEO_TYPES = {
    **dict.fromkeys(("1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.100.1",
                     "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.101.1"), "video/mpeg"),
    **dict.fromkeys(("1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.102.1",
                     "1.2.840.10008.1.2.4.103", "1.2.840.10008.1.2.4.103.1",
                     "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.104.1",
                     "1.2.840.10008.1.2.4.105", "1.2.840.10008.1.2.4.105.1",
                     "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.106.1",
                     "1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"), "video/mp4"),
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_MAX_REPORT_DEPTH = 64


def retrieve_wado_uri(req: Request) -> Response:
    """Retrieve one instance as ``application/dicom`` or a rendered/text/document media type.

    Statuses: 200; 400 for missing, malformed, repeated or inapplicable parameters; 404 for an
    unknown study/series/object or presentation state; 406 when the representation cannot be
    produced (or the ``Accept`` header excludes every one that can).
    """
    query = req.query
    for name in SINGLE_PARAMS:
        if len(query.get(name, ())) > 1:
            raise BadRequest(f"{name}: given more than once")
    request_type = _param(req, "requestType")
    if request_type is None:
        raise BadRequest("requestType: required (requestType=WADO)")
    if request_type.strip().upper() != "WADO":
        raise BadRequest(f"requestType: {request_type!r} is not supported; use WADO")
    study_uid, series_uid, sop_uid = (_uid(req, name) for name in ("studyUID", "seriesUID", "objectUID"))
    found = req.ctx.archive.instances(study_uid, series_uid, sop_uid)
    if not found:
        raise NotFound(f"object {sop_uid} of series {series_uid} in study {study_uid} not found")
    target = _Target(req.ctx.archive.path(found[0]), found[0])
    media_type = _select_media_type(req, target)
    if media_type == DICOM:
        _refuse(req, RENDERING_PARAMS, "applies to rendered images, not to application/dicom")
        return _retrieve_dicom(req, target)
    _refuse(req, DICOM_PARAMS, f"applies to application/dicom only, not to {media_type}")
    if target.kind == "image":
        return _retrieve_rendered(req, target, media_type)
    # PS3.18 §9.5.1.2: rendering parameters only for single-frame, multi-frame and video objects.
    _refuse(req, RENDERING_PARAMS, f"is not supported for {media_type}")
    if target.kind == "report":
        return _retrieve_report(req, target, media_type)
    if target.kind == "document":
        return Response(body=target.document, content_type=media_type)
    return Response(body=target.video(), content_type=media_type)


# --------------------------------------------------------------------------------------------
# Parameters


def _param(req: Request, name: str) -> str | None:
    values = req.query.get(name)
    return values[0] if values else None


def _uid(req: Request, name: str) -> str:
    value = _param(req, name)
    if value is None:
        raise BadRequest(f"{name}: required")
    if not is_valid_uid(value):
        raise BadRequest(f"{name}: {value!r} is not a valid UID")
    return value


def _refuse(req: Request, names: tuple[str, ...], why: str) -> None:
    for name in names:
        if name in req.query:
            raise BadRequest(f"{name}: {why}")


# --------------------------------------------------------------------------------------------
# The target object and what it can be sent as


class _Target:
    """The instance asked for: its file, category and (read on first use) data set."""

    def __init__(self, path: str, inst: StoredInstance) -> None:
        self.path = path
        self.inst = inst

    @cached_property
    def dataset(self) -> Dataset:
        return transcode.read_stored(self.path, defer_size="64 KB")

    @cached_property
    def kind(self) -> str:
        """``report``, ``document``, ``video``, ``image`` or ``other`` (PS3.18 §8.7.2 categories)."""
        sop_class = self.inst.sop_class_uid
        if sop_class.startswith(SR_PREFIX):
            return "report"
        if sop_class.startswith(ENCAPSULATED_DOCUMENT_PREFIX) and "EncapsulatedDocument" in self.dataset:
            return "document"
        if self.inst.transfer_syntax in VIDEO_TYPES:
            return "video"
        if any(keyword in self.dataset for keyword in _PIXEL_KEYWORDS):
            return "image"
        return "other"

    @cached_property
    def offers(self) -> tuple[str, ...]:
        """Media types this object can be sent as, its default first (PS3.18 Table 8.7.4-1)."""
        if self.kind == "image":
            return (*_image_types(), DICOM)
        if self.kind == "report":
            return (*REPORT_TYPES, DICOM)
        if self.kind == "document":
            return (self.document_type, DICOM)
        if self.kind == "video":
            return (VIDEO_TYPES[self.inst.transfer_syntax], DICOM)
        return (DICOM,)

    @property
    def document_type(self) -> str:
        mime = str(self.dataset.get("MIMETypeOfEncapsulatedDocument", "") or "").strip().lower()
        return mime if "/" in mime else "application/octet-stream"

    @property
    def document(self) -> bytes:
        data = bytes(self.dataset.EncapsulatedDocument or b"")
        # PS3.3 C.24.2.1: the value is padded to even length; the length attribute gives the real one.
        length = self.dataset.get("EncapsulatedDocumentLength")
        if isinstance(length, int) and 0 <= length <= len(data):
            data = data[:length]
        return data

    def video(self) -> bytes:
        """The video stream: the fragments of the encapsulated Pixel Data, joined."""
        try:
            buffer = io.BytesIO(self.dataset.PixelData)
            parse_basic_offsets(buffer)  # skip the Basic Offset Table item
            return b"".join(generate_fragments(buffer))
        except Exception as exc:
            raise NotAcceptable(f"the stored video stream cannot be read: {exc}") from exc


def _image_types() -> tuple[str, ...]:
    from PIL import features

    return IMAGE_TYPES if features.check("jpg_2000") else IMAGE_TYPES[:-1]


def _allows(ranges: list[MediaType], media_type: str) -> bool:
    """Some range of ``ranges`` (wildcards included) matches ``media_type``."""
    return negotiate(ranges, [Offer(media_type, multipart=False)]) is not None


def _select_media_type(req: Request, target: _Target) -> str:
    """The media type to send (PS3.18 §9.3, §8.3.3.1, §8.7.5)."""
    # An Accept header with no usable member is treated as absent (RFC 9110 §12.5.1 lets us).
    header_value = req.header("Accept")
    header = parse_accept([header_value]) if header_value else []
    values = req.query.get("contentType")
    if values:
        ranges: list[MediaType] = parse_accept(values)
        if not any(r.q > 0 for r in ranges):
            raise BadRequest(f"contentType: {', '.join(values)!r} names no acceptable media type")
        if header:
            # §8.3.3.1: query media types must be compatible with the Accept header.
            ranges = [r for r in ranges if r.q <= 0 or _allows(header, r.type)]
            if not any(r.q > 0 for r in ranges):
                raise NotAcceptable("none of the contentType media types is allowed by the Accept header")
    else:
        ranges = header
    refuse_dicom_with_rendered(ranges)
    if ranges and ranges[0].type == DICOM and ranges[0].q > 0:
        return DICOM  # decided without reading the object (OHIF's wadouri requests)
    offers = [Offer(offer, multipart=False) for offer in target.offers]
    selection = negotiate(ranges, offers) if ranges else None
    if selection is None and values and header:
        # PS3.18 §8.7.8.1: when no contentType type can be produced, the Accept header's best one.
        refuse_dicom_with_rendered(header)
        selection = negotiate(header, offers)
    if selection is not None:
        return selection.offer.media_type
    default = target.offers[0]
    if header and not _allows(header, default):
        raise NotAcceptable(f"this object can be sent as {', '.join(target.offers)}; "
                            "the Accept header allows none of them")
    return default


# --------------------------------------------------------------------------------------------
# Retrieve DICOM Instance (§9.4)


def _retrieve_dicom(req: Request, target: _Target) -> Response:
    requested = _param(req, "transferSyntax")
    if requested is not None:
        requested = requested.strip()
        if requested != "*" and not is_valid_uid(requested):
            raise BadRequest(f"transferSyntax: {requested!r} is neither a UID nor *")
    anonymized = _param(req, "anonymize")
    if anonymized is not None and anonymized.strip().lower() != "yes":
        # Ignoring a misspelt request to anonymize would hand out identified data.
        raise BadRequest(f"anonymize: {anonymized!r} is not supported; the only value is yes")
    stored = target.inst.transfer_syntax
    ts = target_syntax(stored, requested)
    if ts in NEVER_SENT:
        raise NotAcceptable(f"transferSyntax {ts} shall not be used by web services (PS3.18 §8.7.3)")
    if ts != stored and ts not in transcode.producible_syntaxes(stored):
        raise NotAcceptable(f"the instance stored in {stored} cannot be sent in {ts}")
    # PS3.18 §8.7.3.5.2: the URI service carries no transfer-syntax media type parameter; the File
    # Meta Information says which syntax was sent.
    content_type = DICOM
    if anonymized is None:
        if ts == stored:
            return Response.for_file(target.path, content_type)
        spool, length = _spooled(lambda out: transcode.transcode_file(target.path, ts, out))
        return Response(content_type=content_type, file=spool, file_length=length)
    if anonymize.has_burned_in_annotation(target.dataset):
        raise NotAcceptable("anonymize: the image has burned-in annotation (BurnedInAnnotation YES) "
                            "and pixel data is not cleaned, so it cannot be de-identified")

    def read() -> Dataset:
        if ts == stored:
            return pydicom.dcmread(target.path)
        buffer = io.BytesIO()
        transcode.transcode_file(target.path, ts, buffer)
        buffer.seek(0)
        return pydicom.dcmread(buffer)

    spool, length = _spooled(lambda out: anonymize.write_deidentified(read, ts, out))
    return Response(content_type=content_type, file=spool, file_length=length)


def _spooled(write: Callable[[BinaryIO], None]) -> tuple[BinaryIO, int]:
    """Run ``write`` into a temporary file (in memory while small), before any status is sent,
    so that a failure is still an error response."""
    spool = tempfile.SpooledTemporaryFile(max_size=16 << 20)
    try:
        write(spool)  # type: ignore[arg-type]
    except DicomWebError:
        spool.close()
        raise
    except Exception as exc:
        spool.close()
        raise NotAcceptable(f"cannot produce the instance: {exc}") from exc
    length = spool.tell()
    spool.seek(0)
    return spool, length  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Retrieve Rendered Instance (§9.5): images


def _retrieve_rendered(req: Request, target: _Target, media_type: str) -> Response:
    params = dataclasses.replace(render.parse_wado_uri_rendering(req.query), media_type=media_type)
    ds = target.dataset
    frame = _frame_number(req, ds)
    keywords = annotate.parse_annotation(req.query.get("annotation", ()))
    ps = _presentation_state(req, target.inst)
    try:
        if ps is not None:
            presentation.check_presentation(ps, target.inst.sop_uid, frame)
            img, params = presentation.render_with_presentation(ds, ps, target.inst.sop_uid, frame, params)
        else:
            img = render.frame_pixels(ds, frame, params)
        decorate = None
        if keywords:
            decorate = annotate.annotator(annotate.annotation_lines(ds, keywords, frame, params.window))
        body = render.encode_image(img, params, decorate)
    except DicomWebError:
        raise
    except Exception as exc:
        raise NotAcceptable(f"cannot render the image: {exc}") from exc
    return Response(body=body, content_type=media_type)


def _frame_number(req: Request, ds: Dataset) -> int:
    text = _param(req, "frameNumber")
    if text is None:
        return 1
    try:
        frames = max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        frames = 1
    # PS3.18 §9.5.2: 400 for a single-frame image or a number outside 1..frames.
    if frames == 1:
        raise BadRequest("frameNumber: the image is not a multi-frame image")
    try:
        number = int(text.strip())
    except ValueError:
        raise BadRequest(f"frameNumber: {text!r} is not an integer") from None
    if not 1 <= number <= frames:
        raise BadRequest(f"frameNumber: {number} is not within 1..{frames}")
    return number


def _presentation_state(req: Request, inst: StoredInstance) -> Dataset | None:
    ps_uid, ps_series = _param(req, "presentationUID"), _param(req, "presentationSeriesUID")
    if ps_uid is None and ps_series is None:
        return None
    if ps_uid is None or ps_series is None:
        raise BadRequest("presentationUID and presentationSeriesUID must be given together")
    ps_uid, ps_series = _uid(req, "presentationUID"), _uid(req, "presentationSeriesUID")
    # PS3.18 §9.5.1.2.7: the presentation state is in the same study as the image.
    found = req.ctx.archive.instances(inst.study_uid, ps_series, ps_uid)
    if not found:
        raise NotFound(f"presentation state {ps_uid} of series {ps_series} not found in study "
                       f"{inst.study_uid}")
    try:
        return pydicom.dcmread(req.ctx.archive.path(found[0]))
    except Exception as exc:
        raise NotAcceptable(f"the presentation state cannot be parsed: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Retrieve Rendered Instance (§9.5): Structured Reports as text


def _retrieve_report(req: Request, target: _Target, media_type: str) -> Response:
    ds = target.dataset
    if media_type == "text/xml":
        try:
            body = json_to_xml(dataset_to_json(ds, bulk_prefix=None)[0])
        except DicomWebError:
            raise
        except Exception as exc:
            raise NotAcceptable(f"cannot convert the report to XML: {exc}") from exc
        return Response(body=body, content_type="text/xml; charset=utf-8")
    charset = _charset(req)
    lines = _report_lines(ds)
    if media_type == "text/plain":
        text = "\n".join("  " * depth + line for depth, line in lines) + "\n"
        body = text.encode(charset, errors="replace")
    else:
        body = _report_html(ds, lines, charset).encode(charset, errors="xmlcharrefreplace")
    return Response(body=body, content_type=f"{media_type}; charset={charset}")


_CHARSET_NAME = re.compile(r"[a-z0-9][a-z0-9._:+\-]*")


def _charset(req: Request) -> str:
    """The first acceptable charset that is a text encoding Python has (``charset`` parameter, else
    ``Accept-Charset``), else UTF-8: PS3.18 §8.3.3.2 has the server ignore charsets it does not support."""
    values = req.query.get("charset") or [req.header("Accept-Charset") or ""]
    weighted: list[tuple[float, int, str]] = []
    for value in values:
        for i, item in enumerate(value.split(",")):
            name, _, params = item.partition(";")
            q = 1.0
            key, _, raw_q = params.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(raw_q)
                except ValueError:
                    continue
            if name.strip() and q > 0:
                weighted.append((-q, i, name.strip().strip('"').lower()))
    for _, _, name in sorted(weighted):
        if name == "*":
            return "utf-8"
        if not _CHARSET_NAME.fullmatch(name):
            continue  # the name goes into Content-Type: nothing but a token
        try:
            codec = codecs.lookup(name)
            # Only text encodings that can stand in for what they cannot encode (not base64, rot13, idna).
            for errors in ("replace", "xmlcharrefreplace"):
                "\u2603".encode(codec.name, errors=errors)
        except (LookupError, UnicodeError):
            continue
        if getattr(codec, "_is_text_encoding", True):
            return name
    return "utf-8"


def _code_meaning(item: Dataset, sequence: str) -> str:
    codes = item.get(sequence, None)
    if not codes:
        return ""
    return str(codes[0].get("CodeMeaning", "") or codes[0].get("CodeValue", ""))


def _content_value(item: Dataset) -> str:
    """The value of one SR content item as text (PS3.3 C.17.3.2.1 value types)."""
    value_type = str(item.get("ValueType", "")).upper()
    if value_type == "TEXT":
        return str(item.get("TextValue", ""))
    if value_type == "CODE":
        return _code_meaning(item, "ConceptCodeSequence")
    if value_type == "NUM":
        measured = item.get("MeasuredValueSequence", None)
        if not measured:
            return ""
        number = str(measured[0].get("NumericValue", ""))
        units = measured[0].get("MeasurementUnitsCodeSequence", None)
        unit = str(units[0].get("CodeValue", "")) if units else ""
        return f"{number} {unit}".strip()
    if value_type in ("DATE", "TIME", "DATETIME", "PNAME", "UIDREF"):
        keyword = {"DATE": "Date", "TIME": "Time", "DATETIME": "DateTime", "PNAME": "PersonName",
                   "UIDREF": "UID"}[value_type]
        return str(item.get(keyword, ""))
    if value_type in ("IMAGE", "COMPOSITE", "WAVEFORM"):
        refs = item.get("ReferencedSOPSequence", None)
        return f"{value_type.lower()} {refs[0].get('ReferencedSOPInstanceUID', '')}" if refs else ""
    if value_type in ("SCOORD", "SCOORD3D"):
        return f"{item.get('GraphicType', '')} {list(item.get('GraphicData', []) or [])}"
    if value_type == "TCOORD":
        return str(item.get("TemporalRangeType", ""))
    return ""


def _report_lines(ds: Dataset) -> list[tuple[int, str]]:
    """The report as (depth, "name: value") lines, document title first."""
    lines = [(0, _code_meaning(ds, "ConceptNameCodeSequence") or "Structured Report")]

    def walk(items: Iterable[Dataset] | None, depth: int) -> None:
        for item in items or ():
            name = _code_meaning(item, "ConceptNameCodeSequence")
            value = _content_value(item)
            lines.append((depth, f"{name}: {value}" if name and value else name or value or "-"))
            if depth < _MAX_REPORT_DEPTH:
                walk(item.get("ContentSequence", None), depth + 1)

    walk(ds.get("ContentSequence", None), 1)
    return lines


def _report_html(ds: Dataset, lines: list[tuple[int, str]], charset: str) -> str:
    esc = html.escape
    header = [
        ("Patient", f"{ds.get('PatientName', '')} ({ds.get('PatientID', '')})"),
        ("Born", str(ds.get("PatientBirthDate", ""))),
        ("Study", f"{ds.get('StudyDate', '')} {ds.get('StudyDescription', '')}".strip()),
        ("Completion", str(ds.get("CompletionFlag", ""))),
        ("Verification", str(ds.get("VerificationFlag", ""))),
    ]
    out = [f'<!DOCTYPE html>\n<html><head><meta charset="{esc(charset)}">',
           f"<title>{esc(lines[0][1])}</title></head><body>", f"<h1>{esc(lines[0][1])}</h1>",
           "<table>"]
    out += [f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in header if v.strip("() ")]
    out.append("</table>")
    depth = 0
    for level, text in lines[1:]:
        while depth < level:
            out.append("<ul>")
            depth += 1
        while depth > level:
            out.append("</ul>")
            depth -= 1
        out.append(f"<li>{esc(text)}</li>")
    out += ["</ul>"] * depth
    out.append("</body></html>\n")
    return "\n".join(out)
