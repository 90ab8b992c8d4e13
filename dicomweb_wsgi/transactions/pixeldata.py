"""WADO-RS: Retrieve frames and pixel data (PS3.18 §10.4.1.1.5-6, media types §8.7.3.3).

Resources: ``.../instances/{sop}/frames/{list}`` (1-based, comma list, repeats allowed) and the
study, series and instance ``/pixeldata`` resources (every frame of every instance with Pixel
Data, in order). Each part holds one frame, with ``Content-Location`` (the frame's URI) and a
``Content-Type`` that always carries ``transfer-syntax=``; there is no preamble and the header
name is spelled exactly ``Content-Type:`` (cornerstone's parser needs both).

Media types: ``multipart/related; type="application/octet-stream"`` (default) gives
uncompressed little-endian pixels, decoding compressed frames (colour as RGB); with
``transfer-syntax=*`` each frame goes out as stored (compressed codestreams without item tags;
native frames as little-endian bytes) and its part is labelled with its real media type, e.g.
``image/jpeg; transfer-syntax=1.2.840.10008.1.2.4.50`` (so OHIF's
``multipart/related; type=application/octet-stream; transfer-syntax=*``, quoted or not, gets
the stored bytes). ``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``, ``image/jphc``,
``image/dicom-rle`` and the video types are offered when the frames are stored so or can be
transcoded (``transcode.frame_as``); without a ``transfer-syntax`` the stored syntax is kept if
it fits the media type, else the first producible lossless one (a lossy one only by name). Single-part responses
(``application/octet-stream``, ``image/jpeg``, ...) are offered when exactly one frame is asked for.

Frame offsets come from the layout computed at store time, so frame N of a multi-frame instance
is one seek and one read; frames sent exactly as stored go out straight from those file ranges,
with a Content-Length, through ``wsgi.file_wrapper``. Statuses: 200; 400 (malformed frame list);
404 (no such instance, no Pixel Data, or a frame number beyond Number of Frames, which is checked
for every number before anything is sent); 406 (no acceptable media type, or the frames cannot
be decoded / encoded as asked: never a 500). Only Pixel Data (7FE0,0010) is framed; Float and
Double Float Pixel Data are served through their BulkDataURIs.
"""
from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import pydicom

from .. import transcode
from ..errors import DicomWebError, NotAcceptable, NotFound
from ..frames import FrameLayout
from ..http import Request, Response, SplicedFile
from ..mediatypes import Offer, Selection, negotiate, without_syntaxes
from ..multipart import multipart_content_type, multipart_segments, new_boundary, write_multipart
from ..storage.base import StoredInstance

PIXEL_DATA_PATH = "7FE00010"
# Frame responses estimated (first frame size x frames) up to this size are built whole and sent
# with a Content-Length; larger ones are streamed frame by frame.
_WHOLE_BODY_LIMIT = 16 << 20
OCTET_STREAM = "application/octet-stream"
_NOT_FRAME_SYNTAXES = frozenset({transcode.DEFLATED, transcode.IMPLICIT_VR_LE, transcode.EXPLICIT_VR_BE})
FRAME_MEDIA_TYPES = tuple(m for m in transcode.MEDIA_TYPE_SYNTAXES if m != OCTET_STREAM)
# PS3.18 Table 8.7.3-5: without a transfer-syntax parameter an image media type means its default
# (lossless) syntax; the stored syntax is sent when it fits the media type, else the first of these
# the server can produce. A lossy one is sent only when asked for by name.
_LOSSLESS_DEFAULTS = {
    "image/jpeg": ("1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57"),
    "image/jls": ("1.2.840.10008.1.2.4.80",),
    "image/jp2": ("1.2.840.10008.1.2.4.90",),
    "image/jpx": ("1.2.840.10008.1.2.4.92",),
    "image/jphc": ("1.2.840.10008.1.2.4.201",),
}


@dataclass(frozen=True)
class PixelSource:
    """An instance with Pixel Data: where its file is, its stored frame layout and frame count."""

    inst: StoredInstance
    path: str
    layout: FrameLayout | None
    frames: int

    @property
    def syntax(self) -> str:
        return self.layout.transfer_syntax if self.layout is not None else self.inst.transfer_syntax

    def frame_url(self, base: str, number: int) -> str:
        inst = self.inst
        return (f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_uid}"
                f"/frames/{number}")


def retrieve_instance_frames(req: Request, study_uid: str, series_uid: str, sop_uid: str,
                             frames: list[int]) -> Response:
    """Frames of one instance, one per part (or one frame as a single part)."""
    source = _one_source(req, study_uid, series_uid, sop_uid)
    beyond = sorted({n for n in frames if n > source.frames})
    if beyond:
        raise NotFound(f"frame(s) {', '.join(map(str, beyond[:20]))} do not exist; the instance has "
                       f"{source.frames} frame(s)")
    return serve_frames(req, [(source, list(frames))])


def retrieve_study_pixeldata(req: Request, study_uid: str) -> Response:
    """Every frame of every instance of a study that has Pixel Data."""
    return _pixeldata(req, req.ctx.archive.instances(study_uid), f"study {study_uid}")


def retrieve_series_pixeldata(req: Request, study_uid: str, series_uid: str) -> Response:
    """Every frame of every instance of a series that has Pixel Data."""
    return _pixeldata(req, req.ctx.archive.instances(study_uid, series_uid), f"series {series_uid}")


def retrieve_instance_pixeldata(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """Every frame of one instance."""
    source = _one_source(req, study_uid, series_uid, sop_uid)
    return serve_frames(req, [(source, list(range(1, source.frames + 1)))])


def _pixeldata(req: Request, instances: list[StoredInstance], what: str) -> Response:
    if not instances:
        raise NotFound(f"{what} not found")
    sources = [s for s in (pixel_source(req, inst) for inst in instances) if s is not None]
    if not sources:
        raise NotFound(f"{what} has no instance with Pixel Data")
    return serve_frames(req, [(s, list(range(1, s.frames + 1))) for s in sources])


def _one_source(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> PixelSource:
    found = req.ctx.archive.instances(study_uid, series_uid, sop_uid)
    if not found:
        raise NotFound(f"instance {sop_uid} not found")
    source = pixel_source(req, found[0])
    if source is None:
        raise NotFound(f"instance {sop_uid} has no Pixel Data")
    return source


def pixel_source(req: Request, inst: StoredInstance) -> PixelSource | None:
    """The instance's Pixel Data source, or None when it has none (read from the index)."""
    path = req.ctx.archive.path(inst)
    if inst.frames_json:
        layout = FrameLayout.from_json(inst.frames_json)
        return PixelSource(inst, path, layout, layout.number_of_frames)
    refs = json.loads(inst.bulk_json) if inst.bulk_json else []
    if not any(ref.get("path") == PIXEL_DATA_PATH for ref in refs):
        return None
    # No stored layout (a deflated file, or fragments that could not be assigned to frames):
    # count the frames from the header; frame_as then parses the file.
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        count = max(1, int(header.get("NumberOfFrames", 1) or 1))
    except Exception:  # a damaged header: serve what pydicom can, frame by frame
        count = 1
    return PixelSource(inst, path, None, count)


def frame_syntaxes(stored: str) -> frozenset[str]:
    """The transfer syntaxes frames stored in ``stored`` can be sent in."""
    return transcode.producible_syntaxes(stored) - _NOT_FRAME_SYNTAXES


def frame_offers(stored: Iterable[str], single_ok: bool) -> tuple[Offer, ...]:
    """What frames stored in these syntaxes can be sent as, in server preference order."""
    return _frame_offers(frozenset(stored), single_ok)


@functools.lru_cache(maxsize=256)
def _frame_offers(stored: frozenset[str], single_ok: bool) -> tuple[Offer, ...]:
    # Cached: a handful of stored syntaxes occur, and every frame request asks again.
    common: frozenset[str] | None = None
    for syntax in stored:
        common = frame_syntaxes(syntax) if common is None else common & frame_syntaxes(syntax)
    common = common or frozenset()
    uncompressed = Offer(OCTET_STREAM, True, common & {transcode.EXPLICIT_VR_LE})
    images = [Offer(m, True, common & transcode.MEDIA_TYPE_SYNTAXES[m])
              for m in FRAME_MEDIA_TYPES if common & transcode.MEDIA_TYPE_SYNTAXES[m]]
    # PS3.18 §8.7.3.3: uncompressed is the default, unless the server cannot decode the frames;
    # then "*/*" gets them as stored.
    multipart = [uncompressed, *images] if uncompressed.transfer_syntaxes else [*images, uncompressed]
    if not single_ok:
        return tuple(multipart)
    return (*multipart, *(Offer(o.media_type, False, o.transfer_syntaxes) for o in multipart))


def negotiate_frames(req: Request, stored: Iterable[str], single_ok: bool,
                     refused: frozenset[str] = frozenset()) -> Selection:
    """The selected frame representation; 406 when nothing acceptable can be produced.

    ``refused`` lists syntaxes already found impossible for these frames (see ``serve_frames``)."""
    offers = without_syntaxes(frame_offers(stored, single_ok), refused)
    selection = negotiate(req.accept, offers)
    if selection is None:
        names = sorted({o.media_type for o in offers if o.transfer_syntaxes})
        raise NotAcceptable("none of the acceptable media types can be produced for these frames; offered: "
                            f"multipart/related with type {', '.join(names) or OCTET_STREAM}"
                            + (" (or single part)" if single_ok else "")
                            + "; transfer-syntax=* sends the stored bytes")
    if selection.transfer_syntax is None and not selection.offer.transfer_syntaxes:
        raise NotAcceptable("the frames cannot be decompressed on this server; "
                            "ask for transfer-syntax=* to receive them as stored")
    return selection


def frame_target(selection: Selection, stored: str) -> str | None:
    """The ``frame_as`` target for one instance: ``"*"``, a syntax UID, or None (uncompressed)."""
    requested = selection.transfer_syntax
    media_type = selection.offer.media_type
    if requested == "*" and (media_type == OCTET_STREAM or stored in (selection.offer.transfer_syntaxes or ())):
        return "*"
    if media_type == OCTET_STREAM:
        return None
    if requested and requested != "*":
        return requested
    # PS3.18 §8.7.3.5.2: "*" frees the transfer syntax within the media type, so frames stored in
    # another type's syntax are produced like frames asked for without one.
    allowed = selection.offer.transfer_syntaxes or frozenset()
    if stored in allowed:
        return stored
    defaults = _LOSSLESS_DEFAULTS.get(media_type)
    if defaults is None:
        return sorted(allowed)[0]
    for uid in defaults:
        if uid in allowed:
            return uid
    raise NotAcceptable(f"{media_type} without a transfer-syntax means a lossless syntax "
                        f"({', '.join(defaults)}; PS3.18 Table 8.7.3-5), which this server cannot produce from "
                        f"these frames; name a lossy one (transfer-syntax=...) to receive that")


def sent_as_stored(stored: str) -> str:
    """The syntax ``transfer-syntax=*`` sends frames stored in ``stored`` in (native: Explicit VR LE)."""
    return transcode.EXPLICIT_VR_LE if stored in _NOT_FRAME_SYNTAXES else stored


def frame_content_type(syntax: str) -> str:
    """A frame part's Content-Type: its media type with the transfer syntax it is encoded in."""
    return f"{transcode.media_type_for(syntax)}; transfer-syntax={syntax}"


def serve_frames(req: Request, wanted: Sequence[tuple[PixelSource, list[int]]],
                 bulk_location: str | None = None) -> Response:
    """The response for frames of one or more instances: negotiate, then one frame a part.

    ``bulk_location`` serves the Pixel Data BulkDataURI of one encapsulated instance instead: every
    part is labelled with that URI (PS3.18 §10.4.3.3.5), and decoded frames form one part, the
    value as a native Pixel Data element would hold it.

    The first frame is produced before the status is sent, so a frame that cannot be decoded or
    encoded as asked is a 406, unless the Accept list names something else that can be produced:
    then that is sent (PS3.18 §8.7.5 allows a 406 only when nothing acceptable is supported; what
    an encoder refuses, e.g. JPEG Baseline for 16-bit pixels, is known only once it is tried).
    Bodies up to 16 MiB are built whole; in a larger, streamed one a later failure can only cut the
    stream short.
    """
    total = sum(len(numbers) for _, numbers in wanted)
    syntaxes = [source.syntax for source, _ in wanted]
    refused: set[str] = set()
    first_failure: NotAcceptable | None = None
    while True:
        try:
            selection = negotiate_frames(req, syntaxes, total == 1, frozenset(refused))
        except NotAcceptable:
            if first_failure is None:
                raise
            raise first_failure from None
        try:
            targets = [frame_target(selection, source.syntax) for source, _ in wanted]
        except NotAcceptable as exc:  # no default this media type may be sent in: try the next range
            if selection.transfer_syntax not in (None, "*") or not selection.offer.transfer_syntaxes:
                raise
            refused |= selection.offer.transfer_syntaxes
            first_failure = first_failure or exc
            continue
        jobs = [(source, number, target) for (source, numbers), target in zip(wanted, targets)
                for number in numbers]
        first_source, first_number, first_target = jobs[0]
        stored = [stored_ranges(source, number, target) for source, number, target in jobs]
        if all(stored):
            # Every frame goes out byte for byte as it lies in its file: no frame is read here.
            syntax = stored[0][1]  # type: ignore[index]
            break
        try:
            data, syntax = read_frame(first_source, first_number, first_target)
            break
        except NotAcceptable as exc:
            failed = first_target or transcode.EXPLICIT_VR_LE
            if failed == "*" or failed in refused:
                raise
            refused.add(failed)
            first_failure = first_failure or exc
    base = req.base_url

    def location(source: PixelSource, number: int) -> str:
        return bulk_location or source.frame_url(base, number)

    if not selection.offer.multipart:
        if all(stored):
            spliced = SplicedFile(stored[0][0])  # type: ignore[index]
            resp = Response(content_type=frame_content_type(syntax), file=spliced,  # type: ignore[arg-type]
                            file_length=spliced.length)
        else:
            resp = Response(body=data, content_type=frame_content_type(syntax))
        resp.add_header("Content-Location", location(first_source, first_number))
        return resp
    params = {}
    if "*" not in targets or len({sent_as_stored(source.syntax) for source, _ in wanted}) == 1:
        # Every part has the first part's syntax, so the body as a whole can say so.
        params["transfer-syntax"] = syntax
    boundary = new_boundary()
    content_type = multipart_content_type(selection.offer.media_type, boundary, **params)
    if all(stored):
        spliced = SplicedFile(multipart_segments(
            (({"Content-Type": frame_content_type(ranges_syntax[1]),
               "Content-Location": location(source, number)}, ranges_syntax[0])
             for (source, number, _), ranges_syntax in zip(jobs, stored) if ranges_syntax), boundary))
        return Response(content_type=content_type, file=spliced, file_length=spliced.length)  # type: ignore[arg-type]
    body: bytes | Iterable[bytes]
    if bulk_location is not None and syntax == transcode.EXPLICIT_VR_LE:
        frames = itertools.chain([data], (read_frame(source, number, target)[0] for source, number, target in jobs[1:]))
        body = write_multipart([({"Content-Type": frame_content_type(syntax), "Content-Location": bulk_location},
                                 frames)], boundary)
    else:
        head = [_frame_part(location(first_source, first_number), data, syntax)]
        rest = (_frame_part(location(source, number), *read_frame(source, number, target))
                for source, number, target in jobs[1:])
        body = write_multipart(itertools.chain(head, rest), boundary)
    if len(data) * len(jobs) <= _WHOLE_BODY_LIMIT:
        # A body of known length keeps the connection alive (waitress closes it after a chunked
        # one) and lets a later frame that cannot be produced still be an error status.
        body = b"".join(body)
    return Response(body=body, content_type=content_type)


def stored_ranges(source: PixelSource, number: int,
                  target: str | None) -> tuple[list[tuple[str, int, int]], str] | None:
    """Where frame ``number`` lies in its file when it is sent exactly as stored, and the syntax its part
    is labelled with; None when it has to be read, decoded, converted or byte-swapped.

    As stored means: ``*`` or the stored syntax for compressed frames (their fragments, item tags left
    out), and ``*`` or uncompressed for little-endian native frames that start on a byte boundary.
    """
    layout = source.layout
    if layout is None or not 1 <= number <= layout.number_of_frames:
        return None
    if layout.encapsulated:
        if layout.fragments is None or target not in ("*", layout.transfer_syntax):
            return None
        return [(source.path, offset, length) for offset, length in layout.fragments[number - 1]], \
            layout.transfer_syntax
    if layout.transfer_syntax not in (transcode.EXPLICIT_VR_LE, transcode.IMPLICIT_VR_LE) \
            or layout.bits_per_frame is not None or layout.pixel_offset is None or layout.frame_length is None \
            or target not in ("*", None, transcode.EXPLICIT_VR_LE):
        return None
    return [(source.path, layout.pixel_offset + (number - 1) * layout.frame_length, layout.frame_length)], \
        transcode.EXPLICIT_VR_LE


def _frame_part(location: str, data: bytes, syntax: str) -> tuple[dict[str, str], list[bytes]]:
    return {"Content-Type": frame_content_type(syntax), "Content-Location": location}, [data]


def frame_parts(source: PixelSource, location: str,
                target: str | None) -> Iterator[tuple[dict[str, str], Iterable[bytes]]]:
    """The encapsulated Pixel Data of ``source`` as multipart parts labelled ``location`` (its
    BulkDataURI), produced as the body gets to them: one part a frame as stored (``target`` "*"),
    or one part of every frame decoded."""
    if target != "*":
        first = read_frame(source, 1, target)[0]  # before the status goes out: a 406, not a cut stream
        rest = (read_frame(source, number, target)[0] for number in range(2, source.frames + 1))
        yield ({"Content-Type": frame_content_type(transcode.EXPLICIT_VR_LE), "Content-Location": location},
               itertools.chain([first], rest))
        return
    for number in range(1, source.frames + 1):
        yield _frame_part(location, *read_frame(source, number, target))


def read_frame(source: PixelSource, number: int, target: str | None) -> tuple[bytes, str]:
    """``transcode.frame_as`` for one frame; a stored file pydicom cannot read is a 406, not a 500."""
    try:
        return transcode.frame_as(source.path, source.layout, number, target)
    except DicomWebError:
        raise
    except Exception as exc:
        raise NotAcceptable(f"frame {number} of instance {source.inst.sop_uid} cannot be read: {exc}") from exc
