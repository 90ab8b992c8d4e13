"""WADO-RS: Retrieve study, series and instance (PS3.18 §10.4).

Supports: ``multipart/related; type="application/dicom"`` (default) for study, series and instance,
single-part ``application/dicom`` for an instance, and ``application/zip`` (Supplement 211: the
PS3.10 files in one ZIP archive, for browsers and bulk downloads) for all three, and
``multipart/related; type="application/octet-stream"`` (the instances' bulk data, sent by
``bulkdata.py``); the ``transfer-syntax`` parameter (a UID or ``*``); Accept lists with q-values and
the ``accept`` query parameter. Responses are streamed from the stored files. When no instance
needs transcoding, the whole body (one file, or the stored files between multipart framing bytes)
is known before the status goes out and is sent with a
Content-Length through ``wsgi.file_wrapper`` (so the connection stays alive); a response that
transcodes is a chunked generator.

Transfer syntaxes (PS3.18 §8.7.3): with no ``transfer-syntax``, Explicit VR Little Endian is sent,
transcoding when needed. ``*`` sends the stored syntax, except that Implicit VR Little Endian and
Explicit VR Big Endian (which shall not be used with Web Services) go out as Explicit VR Little
Endian. A syntax that cannot be produced for every instance asked for is a 406.
"""
from __future__ import annotations

import functools
import itertools
import os
import tempfile
from typing import TYPE_CHECKING, BinaryIO, Callable, Iterator

from .. import transcode, zipstream
from ..errors import NotAcceptable, NotFound
from ..http import ClosingBody, Request, Response, SplicedFile, iter_file
from ..mediatypes import Offer, Selection, negotiate, without_syntaxes
from ..multipart import multipart_content_type, multipart_segments, new_boundary, write_multipart
from ..storage.base import StoredInstance
from .bulkdata import BULK_OFFER, all_bulkdata

if TYPE_CHECKING:
    from ..archive import Archive

NEVER_SENT = frozenset({transcode.IMPLICIT_VR_LE, transcode.EXPLICIT_VR_BE})
ZIP = "application/zip"


def retrieve_study(req: Request, study_uid: str) -> Response:
    """All instances of a study, multipart (default) or ``application/zip``."""
    return _retrieve(req, req.ctx.archive.instances(study_uid), f"study {study_uid}", study_uid,
                     single_ok=False)


def retrieve_series(req: Request, study_uid: str, series_uid: str) -> Response:
    """All instances of a series, multipart (default) or ``application/zip``."""
    return _retrieve(req, req.ctx.archive.instances(study_uid, series_uid), f"series {series_uid}",
                     series_uid, single_ok=False)


def retrieve_instance(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """One instance, multipart (default), single-part ``application/dicom`` or ``application/zip``."""
    return _retrieve(req, req.ctx.archive.instances(study_uid, series_uid, sop_uid), f"instance {sop_uid}",
                     sop_uid, single_ok=True)


def target_syntax(stored: str, requested: str | None) -> str:
    """The syntax an instance is sent in for a requested ``transfer-syntax`` (None: the default)."""
    if requested == "*":
        return transcode.EXPLICIT_VR_LE if stored in NEVER_SENT else stored
    return requested or transcode.EXPLICIT_VR_LE


def dicom_offers(instances: list[StoredInstance], single_ok: bool) -> tuple[Offer, ...]:
    """What we can send for these instances: the syntaxes every one of them can be produced in."""
    return _offers_for(frozenset(inst.transfer_syntax for inst in instances), single_ok)


@functools.lru_cache(maxsize=256)
def _offers_for(stored_syntaxes: frozenset[str], single_ok: bool) -> tuple[Offer, ...]:
    """``dicom_offers`` for a set of stored syntaxes (few sets occur; offers are immutable)."""
    syntaxes: frozenset[str] | None = None
    for stored in stored_syntaxes:
        reachable = transcode.producible_syntaxes(stored) - NEVER_SENT
        syntaxes = reachable if syntaxes is None else syntaxes & reachable
    syntaxes = frozenset(syntaxes or ())
    offers = [Offer("application/dicom", multipart=True, transfer_syntaxes=syntaxes)]
    if single_ok:
        offers.append(Offer("application/dicom", multipart=False, transfer_syntaxes=syntaxes))
    offers.append(Offer(ZIP, multipart=False, transfer_syntaxes=syntaxes, by_name_only=True))
    return tuple(offers)


def negotiate_dicom(req: Request, instances: list[StoredInstance], single_ok: bool,
                    refused: frozenset[str] = frozenset()) -> Selection:
    """The selected representation; 406 when nothing acceptable can be produced (``refused``: syntaxes
    already found impossible for these instances). Bulk data (``BULK_OFFER``) is offered last, so it
    is chosen only when the Accept list prefers it to every DICOM representation."""
    selection = negotiate(req.accept, (*without_syntaxes(dicom_offers(instances, single_ok), refused), BULK_OFFER))
    if selection is None:
        raise NotAcceptable("none of the acceptable media types or transfer syntaxes can be produced; "
                            "this resource offers multipart/related; type=\"application/dicom\""
                            + (", application/dicom" if single_ok else "") + " and application/zip")
    if selection.transfer_syntax is None and selection.offer.transfer_syntaxes is not None \
            and transcode.EXPLICIT_VR_LE not in selection.offer.transfer_syntaxes:
        raise NotAcceptable("the instances cannot be sent in the default Explicit VR Little Endian; "
                            "ask for transfer-syntax=* to receive them as stored")
    return selection


def _retrieve(req: Request, instances: list[StoredInstance], what: str, uid: str, single_ok: bool) -> Response:
    """Negotiate and answer. What an encoder refuses (JPEG Baseline for 16-bit pixels) is known only
    once the first instance is transcoded: then the next acceptable representation is tried, and
    only when none is left is the answer a 406 (PS3.18 §8.7.5)."""
    if not instances:
        raise NotFound(f"{what} not found")
    refused: set[str] = set()
    first_failure: NotAcceptable | None = None
    while True:
        try:
            selection = negotiate_dicom(req, instances, single_ok, frozenset(refused))
        except NotAcceptable:
            if first_failure is None:
                raise
            raise first_failure from None
        if selection.offer == BULK_OFFER:
            # PS3.18 Table 10.4.4-1: instance resources also offer their instances' bulk data.
            return all_bulkdata(req, instances, what)
        try:
            return _respond(req, instances, selection, uid)
        except NotAcceptable as exc:
            failed = target_syntax(instances[0].transfer_syntax, selection.transfer_syntax)
            if selection.transfer_syntax == "*" or failed in refused:
                raise
            refused.add(failed)
            first_failure = first_failure or exc


def _respond(req: Request, instances: list[StoredInstance], selection: Selection, uid: str) -> Response:
    archive = req.ctx.archive
    if selection.offer.media_type == ZIP:
        return _zip_response(archive, instances, selection.transfer_syntax, uid)
    if not selection.offer.multipart:
        inst = instances[0]
        ts = target_syntax(inst.transfer_syntax, selection.transfer_syntax)
        content_type = f"application/dicom; transfer-syntax={ts}"
        if ts == inst.transfer_syntax:
            return Response.for_file(archive.path(inst), content_type)
        # Transcode before the status is sent, so a failure is still an error response.
        spool, length = transcoded(archive.path(inst), ts)
        return Response(content_type=content_type, file=spool, file_length=length)
    boundary = new_boundary()
    base = req.base_url
    params = {}
    if selection.transfer_syntax:
        params["transfer-syntax"] = selection.transfer_syntax
    content_type = multipart_content_type("application/dicom", boundary, **params)
    targets = [target_syntax(inst.transfer_syntax, selection.transfer_syntax) for inst in instances]
    if all(ts == inst.transfer_syntax for ts, inst in zip(targets, instances)):
        body = stored_multipart(archive, instances, base, boundary)
        return Response(content_type=content_type, file=body, file_length=body.length)  # type: ignore[arg-type]
    # Transcode the first instance before the status goes out, so a single-instance request that
    # cannot be transcoded is a 406. A later failure can only cut the stream short (the client
    # then sees no closing boundary), which is better than silently leaving an instance out.
    first, path = instances[0], archive.path(instances[0])
    fh, length = (open(path, "rb"), None) if targets[0] == first.transfer_syntax else transcoded(path, targets[0])
    head = [(_part_headers(first, targets[0], base), iter_file(fh, length))]
    rest = (_part(archive.path(inst), inst, ts, base) for inst, ts in zip(instances[1:], targets[1:]))
    return Response(body=ClosingBody(write_multipart(itertools.chain(head, rest), boundary), [fh]),
                    content_type=content_type)


def stored_multipart(archive: Archive, instances: list[StoredInstance], base: str, boundary: str) -> SplicedFile:
    """The multipart body of these instances exactly as stored, as one file of known length.

    Every file is looked at now (one ``stat`` each, nothing opened but the first), so a blob that a
    DELETE removed after the listing is a 404 before the status; its current size is what is sent.
    One that goes after this point cuts the stream (see ``SplicedFile``).
    """
    parts = []
    for inst in instances:
        path = archive.path(inst)
        parts.append((_part_headers(inst, inst.transfer_syntax, base), [(path, 0, os.stat(path).st_size)]))
    return SplicedFile(multipart_segments(parts, boundary))


def _part_headers(inst: StoredInstance, ts: str, base: str) -> dict[str, str]:
    return {
        "Content-Type": f"application/dicom; transfer-syntax={ts}",
        "Content-Location": f"{base}/studies/{inst.study_uid}/series/{inst.series_uid}/instances/{inst.sop_uid}",
    }


def _part(path: str, inst: StoredInstance, ts: str, base: str) -> tuple[dict[str, str], Iterator[bytes]]:
    headers = _part_headers(inst, ts, base)
    if ts == inst.transfer_syntax:
        return headers, iter_file(open(path, "rb"))
    return headers, _encoded(path, ts)


def _zip_response(archive: Archive, instances: list[StoredInstance], requested: str | None, uid: str) -> Response:
    """The instances as ``<study>/<series>/<instance>.dcm`` members of one ZIP archive.

    As with multipart, every file is looked at before the status goes out (a blob removed since the
    listing is a 404), and the first instance is transcoded then if it must be (an encoder that
    refuses is a 406, or the next acceptable representation). With nothing to transcode the
    archive's length is known: Content-Length."""
    members = []
    opened: list[BinaryIO] = []
    try:
        for index, inst in enumerate(instances):
            path = archive.path(inst)
            ts = target_syntax(inst.transfer_syntax, requested)
            if ts == inst.transfer_syntax:
                st = os.stat(path)
                members.append(zipstream.Member(_zip_name(inst), st.st_size, st.st_mtime, _opener(path)))
            elif index == 0:
                spool, length = transcoded(path, ts)
                opened.append(spool)
                members.append(zipstream.Member(_zip_name(inst), length, os.stat(path).st_mtime,
                                                lambda spool=spool, length=length: (spool, length)))
            else:
                members.append(zipstream.Member(_zip_name(inst), None, os.stat(path).st_mtime,
                                                lambda path=path, ts=ts: transcoded(path, ts)))
    except BaseException:
        for fh in opened:
            fh.close()
        raise
    response = Response(body=ClosingBody(zipstream.write_zip(members), opened),
                        content_type=ZIP + (f"; transfer-syntax={requested}" if requested else ""))
    length = zipstream.zip_length(members)
    if length is not None:
        response.add_header("Content-Length", str(length))
    response.add_header("Content-Disposition", f'attachment; filename="{uid}.zip"')
    return response


def _zip_name(inst: StoredInstance) -> str:
    return f"{inst.study_uid}/{inst.series_uid}/{inst.sop_uid}.dcm"


def _opener(path: str) -> Callable[[], tuple[BinaryIO, int]]:
    def open_member() -> tuple[BinaryIO, int]:
        fh = open(path, "rb")
        return fh, os.fstat(fh.fileno()).st_size
    return open_member


def transcoded(path: str, ts: str) -> tuple[BinaryIO, int]:
    """The instance re-encoded in ``ts``, in a temporary file (in memory while small)."""
    spool = tempfile.SpooledTemporaryFile(max_size=16 << 20)
    try:
        transcode.transcode_file(path, ts, spool)
    except BaseException:
        spool.close()
        raise
    length = spool.tell()
    spool.seek(0)
    return spool, length  # type: ignore[return-value]


def _encoded(path: str, ts: str) -> Iterator[bytes]:
    """The instance re-encoded in ``ts``, produced when the multipart body gets to it."""
    spool, length = transcoded(path, ts)
    yield from iter_file(spool, length)
