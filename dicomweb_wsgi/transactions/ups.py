"""Worklist service: UPS-RS (PS3.18 §11), the HTTP side of the Unified Procedure Step rules in ``workflow``.

Supports: Create (``POST /workitems``, the Workitem UID as ``?{uid}``, ``?workitem={uid}`` or the
dataset's SOP Instance UID; one is generated when none is given), Retrieve (``GET
/workitems/{uid}``, never with the Transaction UID), Update (``POST /workitems/{uid}`` with the
Transaction UID as ``?{uid}``, ``?transaction-uid=`` or in the dataset), Change State (``PUT
/workitems/{uid}/state``), Request Cancellation (``POST /workitems/{uid}/cancelrequest``), Search
(``GET /workitems`` with single value, UID list, wildcard, range and sequence matching, includefield,
limit and offset), Subscribe / Unsubscribe (``POST`` / ``DELETE /workitems/{uid}/subscribers/{ae}``
for one workitem, the worklist ``1.2.840.10008.5.1.4.34.5`` and the filtered worklist
``1.2.840.10008.5.1.4.34.5.1``, ``?deletionlock=true|false``; the filter as ``filter=key=value,…``
or as plain ``key=value`` parameters) and Suspend Global Subscription (``POST …/suspend``).
Request payloads: ``application/dicom+json`` (an object or an array of one) and
``application/dicom+xml``; responses in the same two (search results in XML as
``multipart/related``). Event reports go out on the WebSocket channel (``events.py``).

A refused request carries its UPS status in ``Warning: 299 <host> "C301H: …"`` (PS3.4 CC.2.x.4),
for Update and Change State followed by the message PS3.18 §11.6.3.2 / §11.7.3.2 prescribes, and an
HTTP status from the transaction's table in PS3.18 §11.x.3.

Ignores: ``fuzzymatching`` (person names always match case- and accent-insensitively), unknown
query parameters (named in a Warning). Deletion locks are always granted.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Callable, Iterable, Mapping
from urllib.parse import quote

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import generate_uid

from .. import dicomjson, workflow
from ..errors import BadRequest, Conflict, DicomWebError, NotAcceptable, NotFound, UnsupportedMediaType
from ..http import Request, Response, more_results_warning, warning_value
from ..mediatypes import Offer, Selection, negotiate, parse_media_type
from ..model import is_valid_uid
from ..multipart import multipart_content_type, new_boundary, write_multipart
from ..query import parse_terms
from ..storage.base import AttributeMatch, MatchKind, NewEvent, WorkitemRecord, WorkitemStore
from ..workflow import UPSError, UPSStatus

MAX_DATASET_BYTES = 16 << 20
WELL_KNOWN = (workflow.GLOBAL_SUBSCRIPTION_UID, workflow.FILTERED_SUBSCRIPTION_UID)
JSON_TYPES = ("application/dicom+json", "application/json")
NOT_MATCH_KEYS = frozenset({"includefield", "fuzzymatching", "limit", "offset", "accept", "charset",
                            "deletionlock", "filter"})
RETRIEVE_OFFERS = (Offer("application/dicom+json", multipart=False), Offer("application/json", multipart=False),
                   Offer("application/dicom+xml", multipart=False), Offer("application/dicom+xml", multipart=True))
SEARCH_OFFERS = RETRIEVE_OFFERS

# UPS status -> HTTP error class, per transaction (PS3.18 Tables 11.4.3-1 … 11.8.3-1); others are 400.
CREATE_ERRORS: dict[UPSStatus, type[DicomWebError]] = {UPSStatus.DUPLICATE_SOP_INSTANCE: Conflict}
UPDATE_ERRORS: dict[UPSStatus, type[DicomWebError]] = {UPSStatus.NO_SUCH_WORKITEM: NotFound,
                                                       UPSStatus.NOT_IN_PROGRESS: Conflict}
STATE_ERRORS: dict[UPSStatus, type[DicomWebError]] = {
    UPSStatus.NO_SUCH_WORKITEM: NotFound,
    **{status: Conflict for status in (UPSStatus.MAY_NO_LONGER_BE_UPDATED, UPSStatus.ALREADY_IN_PROGRESS,
                                       UPSStatus.MAY_ONLY_BECOME_SCHEDULED_ON_CREATE, UPSStatus.FINAL_STATE_NOT_MET,
                                       UPSStatus.NOT_IN_PROGRESS)},
}
CANCEL_ERRORS: dict[UPSStatus, type[DicomWebError]] = {
    UPSStatus.NO_SUCH_WORKITEM: NotFound, UPSStatus.COMPLETED_CANNOT_CANCEL: Conflict,
    UPSStatus.PERFORMER_CANNOT_BE_CONTACTED: Conflict,
}
SUBSCRIBE_ERRORS: dict[UPSStatus, type[DicomWebError]] = {UPSStatus.NO_SUCH_WORKITEM: NotFound}

# The Warning messages PS3.18 prescribes for a refusal (§11.6.3.2 Update, §11.7.3.2 Change State);
# those of Request Cancellation (§11.8.3.2) are the PS3.4 meanings themselves.
TUID_MISSING = "The Transaction UID is missing."
TUID_INCORRECT = "The Transaction UID is incorrect."
STATE_INCONSISTENT = "The submitted request is inconsistent with the state of the UPS Instance."
UNCLAIMED = "The target URI did not reference a claimed Workitem."
UPDATE_PHRASES: dict[UPSStatus, str] = {
    UPSStatus.WRONG_TRANSACTION_UID: UNCLAIMED, UPSStatus.NOT_IN_PROGRESS: UNCLAIMED,
    UPSStatus.MAY_NO_LONGER_BE_UPDATED: "The submitted request is inconsistent with the current state of the Workitem.",
}


# -- helpers ------------------------------------------------------------------------------------------

def _store(req: Request) -> WorkitemStore:
    return req.ctx.workitems


def _now() -> str:
    return datetime.now().strftime("%Y%m%d%H%M%S")


def _refuse(req: Request, exc: UPSError, errors: Mapping[UPSStatus, type[DicomWebError]],
            phrases: Mapping[UPSStatus, str] | None = None) -> DicomWebError:
    """The HTTP error for a refused UPS request, with its DICOM status in a Warning header.

    Where PS3.18 prescribes the Warning's message (``phrases``), the header carries it after the
    status code, with the PS3.4 meaning or the detail in parentheses.
    """
    cls = errors.get(exc.status, BadRequest)
    phrase = (phrases or {}).get(exc.status)
    text = str(exc) if phrase is None else \
        f"{int(exc.status):04X}H: {phrase} ({exc.detail or workflow.MEANINGS[exc.status]})"
    return cls(str(exc), headers={"Warning": warning_value(req.base_url, text)})


def _reply(req: Request, http_status: int, ups_status: int, detail: str = "") -> Response:
    """A success response; a UPS warning status (B3xxH) goes in a Warning header."""
    resp = Response(http_status)
    if ups_status:
        resp.add_header("Warning", warning_value(req.base_url, workflow.describe(UPSStatus(ups_status), detail)))
    return resp


def _missing(req: Request, uid: str) -> DicomWebError:
    return _refuse(req, UPSError(UPSStatus.NO_SUCH_WORKITEM, f"no workitem {uid}"), {UPSStatus.NO_SUCH_WORKITEM: NotFound})


def _decide(req: Request, uid: str, decide: Callable[[WorkitemRecord], Any],
            errors: Mapping[UPSStatus, type[DicomWebError]], phrases: Mapping[UPSStatus, str] | None = None) -> Any:
    """Run a workflow rule on the stored workitem in one transaction; 404 when unknown."""
    try:
        outcome = _store(req).change(uid, decide)
    except UPSError as exc:
        raise _refuse(req, exc, errors, phrases) from exc
    if outcome is None:
        raise _missing(req, uid)
    return outcome


def _read_dataset(req: Request, required: bool = True) -> dict[str, Any]:
    """The request's dataset (DICOM JSON or XML), checked and put in canonical DICOM JSON form."""
    data = req.read_body(min(req.ctx.settings.max_request_body, MAX_DATASET_BYTES))
    if not data.strip():
        if required:
            raise BadRequest("the request needs a dataset (application/dicom+json or application/dicom+xml)")
        return {}
    raw_type = req.header("Content-Type")
    media = parse_media_type(raw_type).type if raw_type else ""
    if media in JSON_TYPES:
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from exc
        if isinstance(obj, list) and len(obj) == 1:
            obj = obj[0]
    elif media == "application/dicom+xml":
        obj = dicomjson.xml_to_json(data)
    else:
        raise UnsupportedMediaType("UPS-RS payloads are application/dicom+json or application/dicom+xml")
    if not isinstance(obj, dict):
        raise BadRequest("the payload must be one DICOM JSON dataset (an object)")
    # Building a pydicom dataset checks every tag, VR and value; writing it back normalises the JSON.
    return dicomjson.dataset_to_json(dicomjson.json_to_dataset(obj), bulk_prefix=None)[0]


def _query_uid(req: Request, names: Iterable[str]) -> str | None:
    """A UID given as ``?name=uid`` or as the bare query ``?uid`` (PS3.18 §11.4.1 ``/workitems?{workitem}``)."""
    found = [v for name in names for v in req.query.get(name, []) if v]
    found += [key for key, vals in req.query.items() if vals == [""] and is_valid_uid(key)]
    if len(set(found)) > 1:
        raise BadRequest(f"conflicting UIDs in the query: {', '.join(sorted(set(found)))}")
    if found and not is_valid_uid(found[0]):
        raise BadRequest(f"invalid UID {found[0][:80]!r}")
    return found[0] if found else None


def _negotiate(req: Request, offers: tuple[Offer, ...]) -> Selection:
    selection = negotiate(req.accept, offers)
    if selection is None:
        raise NotAcceptable("UPS-RS responses are application/dicom+json or application/dicom+xml")
    return selection


def _datasets_response(selection: Selection, datasets: list[dict[str, Any]], single: bool) -> Response:
    """JSON array, one XML document (``single``), or multipart XML documents."""
    media = selection.offer.media_type
    if media == "application/dicom+xml":
        if single and not selection.offer.multipart:
            return Response(200, dicomjson.json_to_xml(datasets[0]), "application/dicom+xml")
        boundary = new_boundary()
        parts = [({"Content-Type": "application/dicom+xml"}, [dicomjson.json_to_xml(d)]) for d in datasets]
        return Response(200, b"".join(write_multipart(parts, boundary)),
                        multipart_content_type("application/dicom+xml", boundary))
    return Response(200, dicomjson.dumps(datasets).encode("utf-8"), media)


def _location(req: Request, uid: str) -> str:
    return f"{req.base_url}/workitems/{uid}"


# -- transactions ------------------------------------------------------------------------------------

def create_workitem(req: Request) -> Response:
    """Create Workitem (PS3.18 §11.4): 201 + Location; 400 invalid dataset; 409 exists; 415."""
    attrs = _read_dataset(req)
    from_query = _query_uid(req, ("workitem", "AffectedSOPInstanceUID"))
    from_dataset = workflow.first(attrs, workflow.SOP_INSTANCE_UID)
    if from_query and from_dataset and from_query != from_dataset:
        raise BadRequest(f"the Workitem UID in the query ({from_query}) differs from the dataset's SOP Instance "
                         f"UID ({from_dataset})")
    uid = from_query or from_dataset or generate_uid()
    if not is_valid_uid(str(uid)):
        raise BadRequest(f"invalid Workitem UID {str(uid)[:80]!r}")
    try:
        change, added = workflow.prepare_create(attrs, uid, _now())
        if not _store(req).create(uid, change.attrs_json or "{}", change.events):
            raise UPSError(UPSStatus.DUPLICATE_SOP_INSTANCE, uid)
    except UPSError as exc:
        raise _refuse(req, exc, CREATE_ERRORS) from exc
    resp = _reply(req, 201, change.status, "added empty: " + " ".join(added))
    resp.add_header("Location", _location(req, uid))
    resp.add_header("Content-Location", _location(req, uid))
    return resp


def retrieve_workitem(req: Request, workitem_uid: str) -> Response:
    """Retrieve Workitem (PS3.18 §11.5): 200 with the workitem (a JSON array of one); 404; 406."""
    selection = _negotiate(req, RETRIEVE_OFFERS)
    record = _store(req).get(workitem_uid)
    if record is None:
        raise _missing(req, workitem_uid)
    resp = _datasets_response(selection, [workflow.retrieve_view(json.loads(record.attrs_json))], single=True)
    resp.add_header("Content-Location", _location(req, workitem_uid))
    return resp


def update_workitem(req: Request, workitem_uid: str) -> Response:
    """Update Workitem (PS3.18 §11.6): 200; 400 final state, wrong or missing Transaction UID, invalid
    dataset; 404; 409 a Transaction UID for a workitem nobody claimed."""
    changes = _read_dataset(req)
    given = _query_uid(req, ("transaction-uid", "Transaction-uid", "transaction", "TransactionUID"))
    in_dataset = workflow.first(changes, workflow.TRANSACTION_UID)
    if given and in_dataset and given != in_dataset:
        raise BadRequest("the Transaction UID in the query differs from the one in the dataset")
    now = _now()
    _decide(req, workitem_uid, lambda record: workflow.apply_update(record, changes, given, now), UPDATE_ERRORS,
            UPDATE_PHRASES)
    resp = Response(200)
    resp.add_header("Content-Location", _location(req, workitem_uid))
    return resp


def change_workitem_state(req: Request, workitem_uid: str) -> Response:
    """Change Workitem State (PS3.18 §11.7): 200 (Warning when already in that final state); 400 missing
    or wrong Transaction UID or state; 404; 409 not allowed in the current state or final state
    requirements not met."""
    body = _read_dataset(req)
    state = workflow.first(body, workflow.STATE)
    transaction_uid = workflow.first(body, workflow.TRANSACTION_UID)
    now = _now()
    phrases = {status: STATE_INCONSISTENT for status, error in STATE_ERRORS.items() if error is Conflict}
    phrases[UPSStatus.WRONG_TRANSACTION_UID] = TUID_INCORRECT if transaction_uid else TUID_MISSING
    outcome = _decide(req, workitem_uid,
                      lambda record: workflow.apply_state_change(record, state, transaction_uid, now), STATE_ERRORS,
                      phrases)
    return _reply(req, 200, outcome.status)


def request_workitem_cancellation(req: Request, workitem_uid: str) -> Response:
    """Request Cancellation (PS3.18 §11.8): 202 (Warning when already CANCELED); 404; 409 COMPLETED, or
    IN PROGRESS with nobody subscribed to tell the performer."""
    body = _read_dataset(req, required=False)
    request = {tag: body[tag] for tag in workflow.CANCEL_REQUEST_TAGS if tag in body}
    requester = str(workflow.first(body, "00741236") or req.user or "UNKNOWN")[:16]
    now = _now()
    outcome = _decide(req, workitem_uid,
                      lambda record: workflow.apply_cancel_request(record, request, requester, now), CANCEL_ERRORS)
    return _reply(req, 202, outcome.status)


def search_for_workitems(req: Request) -> Response:
    """Search for Workitems (PS3.18 §11.9): 200 with the matches (``[]`` when none, as in PS3.18 2026a);
    a Warning tells how many more a next page holds; 400 bad query."""
    selection = _negotiate(req, SEARCH_OFFERS)
    settings = req.ctx.settings
    pairs = [(name, value) for name, vals in req.query.items() if name not in NOT_MATCH_KEYS for value in vals]
    matches, ignored = _match_keys(pairs)
    include = _include_fields(req.query.get("includefield", []))
    limit = min(_count(req, "limit", 0) or settings.qido_default_limit, settings.qido_max_limit)
    offset = _count(req, "offset", 0)
    records, total = _store(req).search(matches, limit, offset)
    matched = [m.path[0] for m in matches]
    results = [workflow.search_view(json.loads(r.attrs_json), include, matched) for r in records]
    resp = _datasets_response(selection, results, single=False)
    remaining = total - offset - len(results)
    if remaining > 0:
        resp.add_header("Warning", more_results_warning(req.base_url, remaining))
    if ignored:
        resp.add_header("Warning", warning_value(req.base_url, "unsupported query parameters ignored: " + ", ".join(ignored)))
    return resp


def _count(req: Request, name: str, default: int) -> int:
    text = req.query_one(name)
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise BadRequest(f"{name} must be a non-negative integer, not {text[:40]!r}")
    return int(text)


def _attribute_path(name: str) -> tuple[str, ...] | None:
    """``PatientName``, ``00100010`` or a dotted sequence path ``0040A370.AccessionNumber`` as tags."""
    tags = []
    for part in name.split("."):
        if len(part) == 8 and all(c in "0123456789abcdefABCDEF" for c in part):
            tags.append(part.upper())
        else:
            tag = tag_for_keyword(part)
            if tag is None:
                return None
            tags.append(f"{tag:08X}")
    return tuple(tags)


def _vr(tag: str) -> str | None:
    try:
        return str(dictionary_VR(int(tag, 16)))
    except KeyError:
        return None


def _match_keys(pairs: Iterable[tuple[str, str]]) -> tuple[list[AttributeMatch], list[str]]:
    """Matching keys from ``attribute=value`` pairs; names that are no attribute are returned apart."""
    matches: list[AttributeMatch] = []
    ignored: list[str] = []
    for name, value in pairs:
        path = _attribute_path(name)
        vrs = [_vr(tag) for tag in path] if path else [None]
        if path is None or None in vrs or any(vr != "SQ" for vr in vrs[:-1]):
            ignored.append(name[:64])
            continue
        if workflow.TRANSACTION_UID in path:
            raise BadRequest("the Transaction UID (0008,1195) cannot be queried")
        if vrs[-1] == "SQ" and value:
            raise BadRequest(f"{name}: match a sequence through its attributes, e.g. {name}.CodeValue=…")
        vr = vrs[-1] or "UN"
        matches.append(AttributeMatch(path, vr, _match_text(name, vr, value)))
    return matches, ignored


def _match_text(name: str, vr: str, value: str) -> str:
    """A key's value read by QIDO's parser (400 when malformed), written back as query text the store
    reads alike: "" for universal matching, else the terms joined by backslashes, each range as its
    ``range_key`` digits (so a UTC offset's "-" is never taken for a range)."""
    terms = parse_terms(name, vr, [value])
    if terms is None:
        return ""
    return "\\".join(f"{t.low}-{t.high}" if t.kind is MatchKind.RANGE else t.value for t in terms)


def _include_fields(values: Iterable[str]) -> list[str] | None:
    """Top-level tags to return as well; None for ``includefield=all``."""
    tags: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name == "all":
                return None
            path = _attribute_path(name) if name else None
            if path:
                tags.append(path[0])
    return tags


# -- subscriptions -----------------------------------------------------------------------------------

def _deletion_lock(req: Request) -> bool:
    value = (req.query_one("deletionlock") or "false").lower()
    if value not in ("true", "false"):
        raise BadRequest("deletionlock must be true or false")
    return value == "true"


def _filter(req: Request) -> list[AttributeMatch]:
    """The filter of a Filtered Worklist Subscription: ``filter=k=v,k=v`` (PS3.18 §11.10.1.2) and plain
    ``k=v`` parameters (PS3.18 2019a)."""
    pairs = []
    for text in req.query.get("filter", []):
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep:
                raise BadRequest(f"filter items are attribute=value, not {item[:64]!r}")
            pairs.append((name.strip(), value.strip()))
    pairs += [(name, v) for name, vals in req.query.items() if name not in NOT_MATCH_KEYS for v in vals]
    matches, ignored = _match_keys(pairs)
    if ignored:
        raise BadRequest("unknown attributes in the filter: " + ", ".join(ignored))
    if not matches:
        raise BadRequest("a Filtered Worklist Subscription needs a filter, e.g. ?filter=ScheduledStationNameCodeSequence"
                         ".CodeValue=CT1")
    return matches


def subscribe(req: Request, workitem_uid: str, aetitle: str) -> Response:
    """Subscribe (PS3.18 §11.10) to one workitem, the worklist, or the filtered worklist: 201; 400; 404."""
    lock = _deletion_lock(req)
    store = _store(req)

    def initial(record: WorkitemRecord) -> NewEvent:
        # PS3.4 CC.2.4.3: a new subscriber first hears the current state.
        return workflow.state_report(record.uid, json.loads(record.attrs_json), to=aetitle)

    if workitem_uid in WELL_KNOWN:
        matches = _filter(req) if workitem_uid == workflow.FILTERED_SUBSCRIPTION_UID else None
        # Table CC.2.3-2: only a global subscription with lock sends an initial event per workitem.
        store.subscribe_all(aetitle, lock, matches, initial if lock else None)
    elif not store.subscribe(aetitle, workitem_uid, lock, initial):
        raise _missing(req, workitem_uid)
    resp = Response(201)
    # RFC 9110 §8.7: a URI reference; AE titles may hold '#', '%', '?' and spaces.
    resp.add_header("Content-Location",
                    f"{req.base_url}/workitems/{workitem_uid}/subscribers/{quote(aetitle, safe='')}")
    return resp


def unsubscribe(req: Request, workitem_uid: str, aetitle: str) -> Response:
    """Unsubscribe (PS3.18 §11.11): from one workitem, or (well-known UIDs) from everything: 200; 404."""
    store = _store(req)
    if workitem_uid in WELL_KNOWN:
        store.unsubscribe_all(aetitle)
    elif not store.unsubscribe(aetitle, workitem_uid):
        raise _missing(req, workitem_uid)
    return Response(200)


def suspend_global_subscription(req: Request, workitem_uid: str, aetitle: str) -> Response:
    """Suspend Global Subscription (PS3.18 §11.12): no new workitems, existing subscriptions kept: 200; 400."""
    if workitem_uid not in WELL_KNOWN:
        raise _refuse(req, UPSError(UPSStatus.NOT_APPROPRIATE, "only the worklist subscriptions can be suspended"),
                      SUBSCRIBE_ERRORS)
    _store(req).suspend(aetitle)
    return Response(200)
