"""DELETE of studies, series and instances: not in PS3.18, which defines no delete (see the notes).

Sites ask for it to free disk space and to remove wrongly sent studies, and viewers and tools call it
the way Microsoft's DICOM server and dicomweb-client's ``delete_study/series/instance`` do:
``DELETE /studies/{study}[/series/{series}[/instances/{instance}]]`` answers 204 No Content, or 404
when nothing matched. The routes exist only with ``allow_delete = true`` (otherwise 405 with Allow);
the caller needs the ``delete`` role when authentication is on.

The index rows go first, in one transaction (study and series counts and ModalitiesInStudy are
recomputed in it), then the blobs: a crash in between leaves orphan blobs for ``gc``, never a row
pointing at a missing file. Every delete writes an audit line. Not supported: IOCM rejection notes
(KOS-based "reject then delete" as dcm4chee does).
"""
from __future__ import annotations

from ..errors import NotFound
from ..http import Request, Response


def delete_study(req: Request, study_uid: str) -> Response:
    """Delete every instance of a study."""
    return _delete(req, f"study {study_uid}", study_uid)


def delete_series(req: Request, study_uid: str, series_uid: str) -> Response:
    """Delete every instance of a series."""
    return _delete(req, f"series {series_uid} of study {study_uid}", study_uid, series_uid)


def delete_instance(req: Request, study_uid: str, series_uid: str, sop_uid: str) -> Response:
    """Delete one instance."""
    return _delete(req, f"instance {sop_uid}", study_uid, series_uid, sop_uid)


def _delete(req: Request, what: str, study_uid: str, series_uid: str | None = None,
            sop_uid: str | None = None) -> Response:
    if not req.ctx.archive.delete(study_uid, series_uid, sop_uid):
        raise NotFound(f"no {what}")
    return Response(204)
