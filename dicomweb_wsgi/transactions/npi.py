"""Non-Patient Instance service: Store, Retrieve and Search (PS3.18 §12).

Resources: ``/color-palettes``, ``/hanging-protocols``, ``/defined-procedure-protocols`` and
``/implant-templates`` (PS3.18 Table 12.1.1-1), each holding only its own SOP classes
(``model.NPI_RESOURCES``). Instances are kept apart from patient data, in their own index
(``npi.sqlite3``) and blob folder, with the same store order as the patient archive: the blob is made
durable first, then one index transaction commits the request's rows, and the new blobs are deleted
if that commit fails. QIDO-RS on ``/studies`` never returns them; STOW-RS refuses their SOP classes.

Supports:

* Store (§12.5): ``POST /{npi-name}`` and ``POST /{npi-name}/{uid}`` with ``multipart/related;
  type="application/dicom"`` or a single ``application/dicom`` body. The answer is the Store
  Instances Response Module (Annex I) in ``application/dicom+json`` (default) or
  ``application/dicom+xml``; 200 all stored, 202 some, 409 none, 503 none for lack of resources.
  FailureReason 0x0122 for a SOP class that does not belong to the resource, 0xC000 for a part that
  is not a readable PS3.10 file, 0xA900 for missing or invalid SOP Class/Instance UIDs, 0x0111 for
  a duplicate under the ``reject`` policy (or an instance already stored under another resource),
  0x0110 when the SOP Instance UID differs from the ``{uid}`` of the target URI, 0xA700 when it
  cannot be written.
* Retrieve (§12.4): ``GET /{npi-name}/{uid}``: the instance as ``application/dicom`` (default,
  single part) or ``multipart/related; type="application/dicom"`` with the ``transfer-syntax``
  parameter as in WADO-RS (Explicit VR Little Endian by default, ``*`` as stored); or its metadata
  as ``application/dicom+json`` (a one-element array) or ``application/dicom+xml`` (single or
  multipart). Binary values are InlineBinary (no bulk data resources for non-patient instances).
* Search (§12.6): ``GET /{npi-name}?{attribute}={value}&includefield=&limit=&offset=`` with the
  matching keys of the resource's PS3.4 information model (``MODELS``), parsed and matched exactly
  as QIDO-RS does (``query.py``: single value, UID lists, wildcards, DA/TM/DT ranges, sequence keys
  within one item, universal matching). ``includefield`` takes keywords, tags or ``all`` (all but
  binary values). ``limit`` defaults to ``qido_default_limit`` and is capped at ``qido_max_limit``;
  more results are announced with ``Warning: 299``. Results are in storage order, ``application/dicom+json`` (default) or
  ``multipart/related; type="application/dicom+xml"``; no match is 200 with an empty JSON list, or
  204 for XML (as QIDO-RS: a multipart body needs a part).

Does not support: the ``inventories`` resource (PS3.18 2025), DELETE, metadata + bulk data Store
requests (415). Ignores: unknown query parameters, ``charset`` (responses are UTF-8),
``fuzzymatching`` (no NPI matching key is a PN), and matching on attributes that are not matching
keys of the resource (they are returned, with a ``Warning``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, replace
from typing import Any, BinaryIO, Sequence

import pydicom

from .. import dicomjson, transcode
from ..errors import BadRequest, DicomStatus, DicomWebError, NotAcceptable, NotFound, note_stored
from ..http import Request, Response, iter_file, more_results_warning, warning_value
from ..ingest import add_missing_preamble
from ..mediatypes import Offer, negotiate
from ..model import NPI_RESOURCES, is_valid_uid
from ..multipart import multipart_content_type, new_boundary, write_multipart
from ..query import parse_search, resolve_tag
from ..storage.base import Condition, Outcome, StorageError
from ..storage.sqlite_npi import NpiInstance, NpiRecord
from .stow import uploaded_files
from .wado import transcoded

log = logging.getLogger("dicomweb_wsgi.npi")

COMMIT_BATCH = 200


@dataclass(frozen=True)
class NpiModel:
    """The search model of one resource: its matching keys and its default return keys."""

    source: str                  # where PS3.4 defines the information model
    matching: tuple[str, ...]    # keyword paths, dotted for attributes inside sequences
    returned: tuple[str, ...]    # further top-level attributes returned by default


# Every resource also matches and returns SOPClassUID and SOPInstanceUID (the unique key) and
# returns SpecificCharacterSet and RetrieveURL.
COMMON_MATCHING = ("SOPClassUID", "SOPInstanceUID")
COMMON_RETURNED = ("SpecificCharacterSet",)
MODELS: dict[str, NpiModel] = {
    "color-palettes": NpiModel(
        "PS3.4 Table X.6-1", ("ContentLabel",),
        ("ContentDescription", "ContentCreatorName", "AlternateContentDescriptionSequence")),
    "hanging-protocols": NpiModel(
        "PS3.4 Annex U (Hanging Protocol Information Model)",
        ("HangingProtocolName", "HangingProtocolDescription", "HangingProtocolLevel", "HangingProtocolCreator",
         "HangingProtocolCreationDateTime", "HangingProtocolDefinitionSequence.Modality",
         "HangingProtocolDefinitionSequence.Laterality",
         "HangingProtocolDefinitionSequence.AnatomicRegionSequence.CodeValue",
         "HangingProtocolDefinitionSequence.ProcedureCodeSequence.CodeValue",
         "HangingProtocolDefinitionSequence.ReasonForRequestedProcedureCodeSequence.CodeValue",
         "NumberOfPriorsReferenced", "HangingProtocolUserIdentificationCodeSequence.CodeValue",
         "HangingProtocolUserGroupName", "NumberOfScreens"),
        ("NominalScreenDefinitionSequence",)),
    "defined-procedure-protocols": NpiModel(
        "PS3.4 Table HH.6-1",
        ("CustodialOrganizationSequence.InstitutionName",
         "CustodialOrganizationSequence.InstitutionCodeSequence.CodeValue", "ResponsibleGroupCodeSequence.CodeValue",
         "ProtocolName", "PotentialScheduledProtocolCodeSequence.CodeValue",
         "PotentialRequestedProcedureCodeSequence.CodeValue", "PotentialReasonsForProcedure",
         "PotentialReasonsForProcedureCodeSequence.CodeValue", "PotentialDiagnosticTasks", "EquipmentModality",
         "ModelSpecificationSequence.Manufacturer", "ModelSpecificationSequence.ManufacturerModelName"),
        ()),
    "implant-templates": NpiModel(
        "PS3.4 Annex BB (Implant Template, Implant Assembly Template and Implant Template Group models)",
        ("Manufacturer", "ImplantName", "ImplantPartNumber", "ImplantSize", "ImplantTemplateVersion", "ImplantType",
         "EffectiveDateTime", "ImplantTargetAnatomySequence.AnatomicRegionSequence.CodeValue",
         "ImplantAssemblyTemplateName", "ImplantAssemblyTemplateIssuer", "ImplantAssemblyTemplateVersion",
         "ImplantAssemblyTemplateType", "ImplantTemplateGroupName", "ImplantTemplateGroupIssuer",
         "ImplantTemplateGroupVersion"),
        ("ImplantTemplateGroupDescription",)),
}
SEARCH_PARAMETERS = ("includefield", "limit", "offset")
RETRIEVE_URL = "00081190"
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})


def _tag_path(keyword_path: str) -> tuple[str, ...]:
    tags = []
    for name in keyword_path.split("."):
        tag = resolve_tag(name)
        assert tag is not None, f"unknown attribute {keyword_path}"
        tags.append(tag)
    return tuple(tags)


def _top_tag(keyword_path: str) -> str:
    return _tag_path(keyword_path)[0]


# The tag path of each matching key: what a search condition may name, down to the attribute
# inside a sequence (a sequence condition carries its item keys inside, matched by ``Condition.matches``).
MATCHING_PATHS: dict[str, frozenset[tuple[str, ...]]] = {
    resource: frozenset(_tag_path(name) for name in COMMON_MATCHING + model.matching)
    for resource, model in MODELS.items()}
# The top-level attribute of each matching key: returned by default.
MATCHING_TAGS: dict[str, frozenset[str]] = {
    resource: frozenset(path[0] for path in paths) for resource, paths in MATCHING_PATHS.items()}
assert set(MODELS) == set(NPI_RESOURCES), "every NPI resource needs a search model"


def default_return_tags(resource: str) -> frozenset[str]:
    """The top-level tags a search returns without includefield."""
    return MATCHING_TAGS[resource] | {_top_tag(name) for name in COMMON_RETURNED + MODELS[resource].returned}


# ---------------------------------------------------------------------------------------- store

STORE_RESPONSE_OFFERS = (
    Offer("application/dicom+json", multipart=False),
    Offer("application/dicom+xml", multipart=False),
    Offer("application/json", multipart=False),
    Offer("application/dicom+xml", multipart=True),
)


class _Refused(Exception):
    """One uploaded part cannot be stored: the FailureReason and why."""

    def __init__(self, code: DicomStatus, reason: str, sop_class_uid: str | None = None,
                 sop_uid: str | None = None) -> None:
        super().__init__(reason)
        self.code, self.reason, self.sop_class_uid, self.sop_uid = code, reason, sop_class_uid, sop_uid


@dataclass(frozen=True)
class _Outcome:
    """What happened to one uploaded part."""

    sop_class_uid: str | None
    sop_uid: str | None
    failure: DicomStatus | None = None
    reason: str = ""


def store_npi_instances(req: Request, resource: str, sop_uid: str | None = None) -> Response:
    """Store the non-patient instances in the body (PS3.18 §12.5); answer with the Store Instances
    Response Module: 200 all stored, 202 some, 409 none, 503 none for lack of resources."""
    selection = negotiate(req.accept, STORE_RESPONSE_OFFERS)
    if selection is None:
        raise NotAcceptable("Store responses are application/dicom+json or application/dicom+xml")
    archive = req.ctx.archive
    blobs = archive.npi_blobs
    outcomes: list[_Outcome] = []
    pending: list[NpiRecord] = []
    try:
        for path in uploaded_files(req, blobs.spool_dir):
            try:
                record = _prepare(path, resource, sop_uid)
            except _Refused as exc:
                _unlink(path)
                outcomes.append(_Outcome(exc.sop_class_uid, exc.sop_uid, exc.code, exc.reason))
                continue
            try:
                key = blobs.put(path)
            except StorageError as exc:
                _unlink(path)
                outcomes.append(_Outcome(record.sop_class_uid, record.sop_uid, DicomStatus.OUT_OF_RESOURCES,
                                         f"cannot write the instance: {exc}"))
                continue
            pending.append(replace(record, blob_key=key))
            if len(pending) >= COMMIT_BATCH:
                outcomes += _commit(req, pending)
                pending.clear()
        if pending:
            outcomes += _commit(req, pending)
            pending.clear()
    except BaseException as exc:
        # The body broke off: instances not yet committed leave no trace; those committed are named.
        for record in pending:
            _delete_blob(req, record.blob_key)
        if isinstance(exc, DicomWebError):
            raise note_stored(exc, sum(1 for o in outcomes if o.failure is None))
        raise
    if not outcomes:
        raise BadRequest("the request contains no parts")
    return _store_response(req, resource, outcomes, selection.offer.media_type, selection.offer.multipart)


def _prepare(path: str, resource: str, target_uid: str | None) -> NpiRecord:
    """Parse and check one uploaded file for ``resource``; raises _Refused with the FailureReason."""
    try:
        add_missing_preamble(path)
        ds = pydicom.dcmread(path)
        ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "").strip()
        sop_class = str(ds.get("SOPClassUID", "") or "").strip()
        sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    except Exception as exc:  # pydicom raises many types on damaged input
        raise _Refused(DicomStatus.CANNOT_UNDERSTAND, f"not a readable DICOM PS3.10 file: {exc}") from exc
    if not is_valid_uid(sop_class) or not is_valid_uid(sop_uid):
        raise _Refused(DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                       "SOPClassUID or SOPInstanceUID is missing or not a valid UID",
                       sop_class or None, sop_uid or None)
    if not is_valid_uid(ts):
        raise _Refused(DicomStatus.CANNOT_UNDERSTAND, "missing or invalid TransferSyntaxUID in the file meta",
                       sop_class, sop_uid)
    if sop_class not in NPI_RESOURCES[resource]:
        home = next((name for name, classes in NPI_RESOURCES.items() if sop_class in classes), None)
        where = f"; store it at /{home}" if home else "; patient instances go to /studies"
        raise _Refused(DicomStatus.SOP_CLASS_NOT_SUPPORTED,
                       f"SOP class {sop_class} does not belong to /{resource}{where}", sop_class, sop_uid)
    if target_uid is not None and sop_uid != target_uid:
        raise _Refused(DicomStatus.PROCESSING_FAILURE,
                       f"SOPInstanceUID {sop_uid} differs from the target URI's {target_uid}", sop_class, sop_uid)
    try:
        obj, _ = dicomjson.dataset_to_json(ds, bulk_prefix=None)
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
            size = fh.tell()
    except Exception as exc:
        raise _Refused(DicomStatus.CANNOT_UNDERSTAND, f"cannot read the data set: {exc}", sop_class, sop_uid) from exc
    return NpiRecord(resource, sop_uid, sop_class, ts, "", size, digest, dicomjson.dumps(obj))


def _commit(req: Request, records: list[NpiRecord]) -> list[_Outcome]:
    """One index transaction for the batch; blobs no row points at afterwards are deleted."""
    archive = req.ctx.archive
    try:
        results = archive.npi_index.add(records, req.ctx.settings.policy)
    except StorageError as exc:
        log.error("NPI index commit failed, removing %d new blobs: %s", len(records), exc)
        for record in records:
            _delete_blob(req, record.blob_key)
        return [_Outcome(r.sop_class_uid, r.sop_uid, DicomStatus.OUT_OF_RESOURCES, f"cannot index the instance: {exc}")
                for r in records]
    outcomes = []
    for record, result in zip(records, results):
        if result.obsolete_blob_key:
            _delete_blob(req, result.obsolete_blob_key)
        if result.outcome in (Outcome.STORED, Outcome.REPLACED):
            outcomes.append(_Outcome(record.sop_class_uid, record.sop_uid))
            continue
        _delete_blob(req, record.blob_key)
        if result.outcome is Outcome.IGNORED:
            outcomes.append(_Outcome(record.sop_class_uid, record.sop_uid))
        else:
            outcomes.append(_Outcome(record.sop_class_uid, record.sop_uid, DicomStatus.DUPLICATE_SOP_INSTANCE,
                                     "an instance with this SOP Instance UID is already stored"))
    return outcomes


def _delete_blob(req: Request, key: str) -> None:
    try:
        req.ctx.archive.npi_blobs.delete(key)
    except StorageError as exc:  # an orphan blob is harmless: npi_gc removes it
        log.warning("could not delete NPI blob %s: %s", key, exc)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _store_response(req: Request, resource: str, outcomes: list[_Outcome], media_type: str,
                    multipart: bool) -> Response:
    referenced, failed = [], []
    for o in outcomes:
        item: dict[str, Any] = {"00081150": _ui(o.sop_class_uid), "00081155": _ui(o.sop_uid)}
        if o.failure is None:
            item[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{req.base_url}/{resource}/{o.sop_uid}"]}
            referenced.append(item)
        else:
            item["00081197"] = {"vr": "US", "Value": [int(o.failure)]}
            failed.append(item)
    body: dict[str, Any] = {}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if not failed:
        status = 200
    elif referenced:
        status = 202  # PS3.18 §12.5.3 (as §10.5.3): some stored, some not
    elif all(o.failure == DicomStatus.OUT_OF_RESOURCES for o in outcomes):
        status = 503
    else:
        status = 409
    resp = _dataset_response([body], media_type, multipart, status, array=False)
    reasons = sorted({o.reason for o in outcomes if o.failure is not None})
    if reasons:
        resp.add_header("Warning", warning_value(req.base_url, "; ".join(reasons)))
    return resp


def _ui(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def _dataset_response(objects: list[dict[str, Any]], media_type: str, multipart: bool,
                      status: int = 200, array: bool = True) -> Response:
    """DICOM JSON (an array, or with ``array=False`` the one object of a Store response) or PS3.19
    XML (one document per object, multipart when asked)."""
    if media_type == "application/dicom+xml":
        if multipart:
            boundary = new_boundary()
            parts = [({"Content-Type": "application/dicom+xml"}, [dicomjson.json_to_xml(o)]) for o in objects]
            return Response(status, b"".join(write_multipart(parts, boundary)),
                            multipart_content_type("application/dicom+xml", boundary))
        if len(objects) != 1:  # never for Retrieve and Store: they answer one data set
            raise NotAcceptable("several data sets need multipart/related; type=\"application/dicom+xml\"")
        return Response(status, dicomjson.json_to_xml(objects[0]), "application/dicom+xml")
    text = "[" + ",".join(dicomjson.dumps(o) for o in objects) + "]" if array else dicomjson.dumps(objects[0])
    return Response(status, text.encode("utf-8"), media_type)


# ------------------------------------------------------------------------------------- retrieve

def _instance(req: Request, resource: str, sop_uid: str) -> NpiInstance:
    inst = req.ctx.archive.npi_index.get(resource, sop_uid)
    if inst is None:
        raise NotFound(f"no instance {sop_uid} in /{resource}")
    return inst


def retrieve_npi_instance(req: Request, resource: str, sop_uid: str) -> Response:
    """One non-patient instance (PS3.18 §12.4): ``application/dicom`` (default) or multipart, with
    ``transfer-syntax``; or its metadata in ``application/dicom+json`` / ``application/dicom+xml``."""
    inst = _instance(req, resource, sop_uid)
    syntaxes = transcode.producible_syntaxes(inst.transfer_syntax) - {transcode.IMPLICIT_VR_LE,
                                                                         transcode.EXPLICIT_VR_BE}
    offers = (
        Offer("application/dicom", multipart=False, transfer_syntaxes=syntaxes),
        Offer("application/dicom", multipart=True, transfer_syntaxes=syntaxes),
        Offer("application/dicom+json", multipart=False),
        Offer("application/json", multipart=False),
        Offer("application/dicom+xml", multipart=False),
        Offer("application/dicom+xml", multipart=True),
    )
    selection = negotiate(req.accept, offers)
    if selection is None:
        raise NotAcceptable("this resource is application/dicom (single or multipart, in the transfer syntaxes "
                            f"{', '.join(sorted(syntaxes))}), application/dicom+json or application/dicom+xml")
    offer = selection.offer
    if offer.media_type != "application/dicom":
        return _dataset_response([json.loads(inst.metadata_json)], offer.media_type, offer.multipart)
    ts = transcode.resolve_syntax(inst.transfer_syntax, selection.transfer_syntax)
    if ts not in syntaxes:
        raise NotAcceptable("the instance cannot be sent in the default Explicit VR Little Endian; "
                            "ask for transfer-syntax=* to receive it as stored")
    path = req.ctx.archive.npi_blobs.local_path(inst.blob_key)
    part_type = f"application/dicom; transfer-syntax={ts}"
    if ts == inst.transfer_syntax:
        fh: BinaryIO = open(path, "rb")
        length = os.fstat(fh.fileno()).st_size
    else:
        fh, length = transcoded(path, ts)  # before the status goes out, so a failure is still a 406
    if not offer.multipart:
        return Response(content_type=part_type, file=fh, file_length=length)
    boundary = new_boundary()
    headers = {"Content-Type": part_type, "Content-Location": f"{req.base_url}/{resource}/{sop_uid}"}
    params = {"transfer-syntax": selection.transfer_syntax} if selection.transfer_syntax else {}
    return Response(body=write_multipart([(headers, iter_file(fh, length))], boundary),
                    content_type=multipart_content_type("application/dicom", boundary, **params))


# --------------------------------------------------------------------------------------- search

SEARCH_OFFERS = (
    Offer("application/dicom+json", multipart=False),
    Offer("application/json", multipart=False),
    Offer("application/dicom+xml", multipart=True),
)


def search_npi_instances(req: Request, resource: str) -> Response:
    """Search one resource (PS3.18 §12.6): DICOM JSON array (default) or multipart XML; an empty
    result is 200 ``[]`` in JSON, 204 in XML."""
    selection = negotiate(req.accept, SEARCH_OFFERS)
    if selection is None:
        raise NotAcceptable("search results are application/dicom+json or "
                            "multipart/related; type=\"application/dicom+xml\"")
    settings = req.ctx.settings
    # The same parsing and PS3.4 C.2.2.2 matching as QIDO-RS; the model's keys decide what may match.
    query = parse_search(req.query, "instance", default_limit=settings.qido_default_limit,
                         max_limit=settings.qido_max_limit)
    conditions, ignored = _matching_conditions(query.conditions, MATCHING_PATHS[resource])
    found, total = req.ctx.archive.npi_index.search(resource, conditions, query.limit, query.offset)
    returned = default_return_tags(resource) | query.return_tags | query.include
    results = []
    for inst in found:
        obj = json.loads(inst.metadata_json)
        if query.include_all:
            chosen = {tag: a for tag, a in obj.items() if a.get("vr") not in _BINARY_VRS}
        else:
            chosen = dicomjson.select_attributes(obj, returned)
        chosen[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{req.base_url}/{resource}/{inst.sop_uid}"]}
        results.append(dict(sorted(chosen.items())))
    if not results and selection.offer.multipart:
        resp = Response(204)  # as QIDO-RS: a multipart body needs at least one part (RFC 2046 §5.1.1)
    else:
        resp = _dataset_response(results, selection.offer.media_type, selection.offer.multipart)
    remaining = total - query.offset - len(results)
    if remaining > 0:
        resp.add_header("Warning", more_results_warning(req.base_url, remaining))
    if ignored:
        resp.add_header("Warning", warning_value(
            req.base_url, f"not matching keys of /{resource}, returned but not matched: {', '.join(ignored)}"))
    return resp


def _matching_conditions(conditions: Sequence[Condition], matching: frozenset[tuple[str, ...]],
                         prefix: tuple[str, ...] = ()) -> tuple[list[Condition], list[str]]:
    """The conditions on the resource's matching keys, and the dotted tag paths of the others.

    A key is compared by its whole path, so a key inside a matching sequence that is no matching
    key itself (``HangingProtocolDefinitionSequence.StudyDescription``) is left out too; a sequence
    condition left with no item keys is dropped.
    """
    kept: list[Condition] = []
    ignored: list[str] = []
    for condition in conditions:
        path = prefix + (condition.tag,)
        if condition.items:
            items, dropped = _matching_conditions(condition.items, matching, path)
            ignored += dropped
            if items:
                kept.append(replace(condition, items=tuple(items)))
        elif path in matching:
            kept.append(condition)
        else:
            ignored.append(".".join(path))
    return kept, sorted(ignored)
