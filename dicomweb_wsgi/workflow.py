"""The Unified Procedure Step rules of PS3.4 Annex CC, on DICOM JSON datasets; no HTTP in here.

Workitems are plain DICOM JSON objects (tag -> {"vr", "Value"}). Each rule is a function that takes
the stored workitem and a request and either returns a ``WorkitemChange`` (the new dataset, the event
reports it causes, a warning status) or raises ``UPSError`` with the DICOM status of Annex CC. The
store runs these functions inside its write transaction, so a decision is always made on the current
state of the workitem.

* ``prepare_create``: N-CREATE rules (CC.2.5, Table CC.2.5-3 "Req. Type N-CREATE").
* ``apply_update``: N-SET rules (CC.2.6), Transaction UID ownership.
* ``apply_state_change``: the state machine (Table CC.1.1-2) and the final state requirements
  (CC.2.5.1.1, the "Final State" column of Table CC.2.5-3).
* ``apply_cancel_request``: Request UPS Cancel (CC.2.2).
* event builders (CC.2.4) and ``event_report`` (the DICOM JSON of a PS3.18 §8.10.5 event report).
"""
from __future__ import annotations

import copy
import json
import uuid
from enum import Enum, IntEnum
from typing import Any, Iterable, Mapping

from .model import is_valid_uid
from .storage.base import NewEvent, WorkitemChange, WorkitemRecord

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"
UPS_SOP_CLASSES = {
    "UPS Push": UPS_PUSH_SOP_CLASS,
    "UPS Watch": "1.2.840.10008.5.1.4.34.6.2",
    "UPS Pull": "1.2.840.10008.5.1.4.34.6.3",
    "UPS Event": "1.2.840.10008.5.1.4.34.6.4",
    "UPS Query": "1.2.840.10008.5.1.4.34.6.5",
}
GLOBAL_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5"
FILTERED_SUBSCRIPTION_UID = "1.2.840.10008.5.1.4.34.5.1"
DEFAULT_WORKLIST_LABEL = "DEFAULT"
# DCM 110513 "Discontinued for unspecified reason" (CID 9300): used when the SCP itself cancels a
# SCHEDULED workitem on request and the request gives no reason code.
UNSPECIFIED_DISCONTINUATION = {"00080100": {"vr": "SH", "Value": ["110513"]},
                               "00080102": {"vr": "SH", "Value": ["DCM"]},
                               "00080104": {"vr": "LO", "Value": ["Discontinued for unspecified reason"]}}

TRANSACTION_UID = "00081195"
SOP_CLASS_UID = "00080016"
SOP_INSTANCE_UID = "00080018"
STATE = "00741000"
INPUT_READINESS = "00404041"
MODIFICATION_DATETIME = "00404010"
PROGRESS_SEQUENCE = "00741002"
PERFORMED_SEQUENCE = "00741216"
STATION_NAME_SEQUENCE = "00404025"
HUMAN_PERFORMERS_SEQUENCE = "00404034"
CANCEL_REQUEST_TAGS = ("00741236", "00741238", "0074100E", "0074100A", "0074100C")


class State(str, Enum):
    SCHEDULED = "SCHEDULED"
    IN_PROGRESS = "IN PROGRESS"
    COMPLETED = "COMPLETED"
    CANCELED = "CANCELED"


FINAL_STATES = frozenset({State.COMPLETED.value, State.CANCELED.value})


class EventType(IntEnum):
    """Event Type ID (0000,1002) of UPS event reports (PS3.4 Table CC.2.4-1)."""

    STATE_REPORT = 1
    CANCEL_REQUESTED = 2
    PROGRESS_REPORT = 3
    SCP_STATUS_CHANGE = 4
    ASSIGNED = 5


class UPSStatus(IntEnum):
    """DICOM status codes of the UPS service (PS3.4 CC.2.1.4-CC.2.7.4, PS3.7 Annex C)."""

    SUCCESS = 0x0000
    DUPLICATE_SOP_INSTANCE = 0x0111
    INVALID_ATTRIBUTE_VALUE = 0x0106
    MISSING_ATTRIBUTE_VALUE = 0x0121
    CREATED_WITH_MODIFICATIONS = 0xB300
    DELETION_LOCK_NOT_GRANTED = 0xB301
    ALREADY_CANCELED = 0xB304
    ALREADY_COMPLETED = 0xB306
    MAY_NO_LONGER_BE_UPDATED = 0xC300
    WRONG_TRANSACTION_UID = 0xC301
    ALREADY_IN_PROGRESS = 0xC302
    MAY_ONLY_BECOME_SCHEDULED_ON_CREATE = 0xC303
    FINAL_STATE_NOT_MET = 0xC304
    NO_SUCH_WORKITEM = 0xC307
    NOT_SCHEDULED_ON_CREATE = 0xC309
    NOT_IN_PROGRESS = 0xC310
    COMPLETED_CANNOT_CANCEL = 0xC311
    PERFORMER_CANNOT_BE_CONTACTED = 0xC312
    NOT_APPROPRIATE = 0xC314


MEANINGS: dict[UPSStatus, str] = {
    UPSStatus.SUCCESS: "Success",
    UPSStatus.DUPLICATE_SOP_INSTANCE: "The workitem already exists",
    UPSStatus.INVALID_ATTRIBUTE_VALUE: "Invalid attribute value",
    UPSStatus.MISSING_ATTRIBUTE_VALUE: "Missing attribute value",
    UPSStatus.CREATED_WITH_MODIFICATIONS: "The UPS was created with modifications",
    UPSStatus.DELETION_LOCK_NOT_GRANTED: "Deletion Lock not granted",
    UPSStatus.ALREADY_CANCELED: "The UPS is already in the requested state of CANCELED",
    UPSStatus.ALREADY_COMPLETED: "The UPS is already in the requested state of COMPLETED",
    UPSStatus.MAY_NO_LONGER_BE_UPDATED: "The UPS may no longer be updated",
    UPSStatus.WRONG_TRANSACTION_UID: "The correct Transaction UID was not provided",
    UPSStatus.ALREADY_IN_PROGRESS: "The UPS is already IN PROGRESS",
    UPSStatus.MAY_ONLY_BECOME_SCHEDULED_ON_CREATE: "The UPS may only become SCHEDULED when it is created",
    UPSStatus.FINAL_STATE_NOT_MET: "The UPS has not met final state requirements for the requested state change",
    UPSStatus.NO_SUCH_WORKITEM: "Specified SOP Instance UID does not exist or is not a UPS Instance managed "
                                "by this SCP",
    UPSStatus.NOT_SCHEDULED_ON_CREATE: "The provided value of UPS State was not SCHEDULED",
    UPSStatus.NOT_IN_PROGRESS: "The UPS is not yet in the IN PROGRESS state",
    UPSStatus.COMPLETED_CANNOT_CANCEL: "The UPS is already COMPLETED",
    UPSStatus.PERFORMER_CANNOT_BE_CONTACTED: "The performer cannot be contacted",
    UPSStatus.NOT_APPROPRIATE: "Specified action not appropriate for specified instance",
}


def describe(status: UPSStatus, detail: str = "") -> str:
    """``C301H: The correct Transaction UID was not provided (detail)``: the text of a Warning header."""
    text = f"{int(status):04X}H: {MEANINGS[status]}"
    return f"{text} ({detail})" if detail else text


class UPSError(Exception):
    """A UPS request refused with a DICOM status (the caller maps it to an HTTP status)."""

    def __init__(self, status: UPSStatus, detail: str = "") -> None:
        super().__init__(describe(status, detail))
        self.status = status
        self.detail = detail


# -- attribute requirements (PS3.4 Table CC.2.5-3) ------------------------------------------------

# N-CREATE Type 1: present with a value.
CREATE_TYPE1 = {
    "00741200": "Scheduled Procedure Step Priority",
    "00741204": "Procedure Step Label",
    "00404005": "Scheduled Procedure Step Start DateTime",
    INPUT_READINESS: "Input Readiness State",
}
# N-CREATE Type 2 (present, may be empty): tag -> VR. Missing ones are added empty (B300).
CREATE_TYPE2 = {
    "00741210": "SQ", STATION_NAME_SEQUENCE: "SQ", "00404026": "SQ", "00404027": "SQ", "00404018": "SQ",
    "00400400": "LT", "00404021": "SQ", "00100010": "PN", "00100020": "LO", "00100021": "LO", "00100024": "SQ",
    "00101002": "SQ", "00100030": "DA", "00100040": "CS", "00380010": "LO", "00380014": "SQ", "00081080": "LO",
    "00081084": "SQ", "0040A370": "SQ", PROGRESS_SEQUENCE: "SQ", PERFORMED_SEQUENCE: "SQ",
}
# Created empty: these sequences describe progress and performance, which has not started.
CREATED_EMPTY = {PROGRESS_SEQUENCE: "Procedure Step Progress Information Sequence",
                 PERFORMED_SEQUENCE: "Unified Procedure Step Performed Procedure Sequence"}
# N-SET "Not allowed" (the patient and request are fixed once the workitem exists).
SET_NOT_ALLOWED = {
    STATE: "Procedure Step State (change it with the Change State transaction)",
    SOP_CLASS_UID: "SOP Class UID", "00100010": "Patient's Name", "00100020": "Patient ID",
    "00100021": "Issuer of Patient ID", "00100024": "Issuer of Patient ID Qualifiers Sequence",
    "00100030": "Patient's Birth Date", "00100040": "Patient's Sex", "00380010": "Admission ID",
    "00380014": "Issuer of Admission ID Sequence", "00081080": "Admitting Diagnoses Description",
    "00081084": "Admitting Diagnoses Code Sequence", "0040A370": "Referenced Request Sequence",
}
# N-SET 3/1: may be left out, but not emptied.
SET_TYPE1 = {**CREATE_TYPE1, "00741202": "Worklist Label"}
ENUMERATED = {
    "00741200": ("HIGH", "MEDIUM", "LOW"),
    INPUT_READINESS: ("READY", "UNAVAILABLE", "INCOMPLETE"),
}

# Final state requirements: (path, code, name, an empty sequence is enough). Codes (Table CC.2.5-1):
# R both final states, P only COMPLETED, X only CANCELED. A nested path is checked in the first item
# of its sequence once it has one (a sequence without items is named by its own rule). "RC" rows
# whose condition the SCP cannot know (human performers) are not enforced.
FINAL_STATE_RULES: tuple[tuple[tuple[str, ...], str, str, bool], ...] = (
    ((SOP_CLASS_UID,), "R", "SOP Class UID", False),
    ((SOP_INSTANCE_UID,), "R", "SOP Instance UID", False),
    (("00741200",), "R", "Scheduled Procedure Step Priority", False),
    ((MODIFICATION_DATETIME,), "R", "Scheduled Procedure Step Modification DateTime", False),
    (("00404005",), "R", "Scheduled Procedure Step Start DateTime", False),
    ((INPUT_READINESS,), "R", "Input Readiness State", False),
    ((STATE,), "R", "Procedure Step State", False),
    ((PROGRESS_SEQUENCE,), "X", "Procedure Step Progress Information Sequence", False),
    ((PROGRESS_SEQUENCE, "00404052"), "X", "Procedure Step Cancellation DateTime", False),
    ((PROGRESS_SEQUENCE, "0074100E"), "X", "Procedure Step Discontinuation Reason Code Sequence", False),
    ((PERFORMED_SEQUENCE,), "P", "Unified Procedure Step Performed Procedure Sequence", False),
    ((PERFORMED_SEQUENCE, "00404028"), "P", "Performed Station Name Code Sequence", False),
    ((PERFORMED_SEQUENCE, "00404050"), "P", "Performed Procedure Step Start DateTime", False),
    ((PERFORMED_SEQUENCE, "00404019"), "P", "Performed Workitem Code Sequence", False),
    ((PERFORMED_SEQUENCE, "00404051"), "P", "Performed Procedure Step End DateTime", False),
    # "If there are no relevant output objects, then this sequence may have no items."
    ((PERFORMED_SEQUENCE, "00404033"), "P", "Output Information Sequence", True),
)

# Return keys of Type 1 and 2 (Table CC.2.5-3 "Return Key"), returned by every search: tag -> VR.
RETURN_KEYS = {
    "00080005": "CS", SOP_CLASS_UID: "UI", SOP_INSTANCE_UID: "UI", "00741200": "CS", "00741204": "LO",
    "00741202": "LO", "00404005": "DT", INPUT_READINESS: "CS", STATE: "CS", **CREATE_TYPE2,
    "0020000D": "UI", "00404034": "SQ",
}
del RETURN_KEYS[PERFORMED_SEQUENCE]  # only returned through sequence matching or includefield


# -- small helpers on DICOM JSON --------------------------------------------------------------------

def values(attrs: Mapping[str, Any], tag: str) -> list[Any]:
    """The Value list of an attribute (empty when absent or empty)."""
    attr = attrs.get(tag)
    return list(attr.get("Value") or []) if isinstance(attr, dict) else []


def first(attrs: Mapping[str, Any], tag: str) -> Any:
    """The first value of an attribute, or None; blank strings count as no value."""
    found = values(attrs, tag)
    value = found[0] if found else None
    return value.strip() or None if isinstance(value, str) else value


def _text(vr: str, value: str) -> dict[str, Any]:
    return {"vr": vr, "Value": [value]}


def _sorted(attrs: Mapping[str, Any]) -> dict[str, Any]:
    return {tag: attrs[tag] for tag in sorted(attrs)}


def dumps(attrs: Mapping[str, Any]) -> str:
    """Compact JSON text of a dataset, attributes in tag order (PS3.18 F.2)."""
    return json.dumps(_sorted(attrs), ensure_ascii=False, separators=(",", ":"))


def new_transaction_uid() -> str:
    """A UID the SCP uses when it claims a workitem itself (PS3.5 B.2: 2.25 + a UUID)."""
    return f"2.25.{uuid.uuid4().int}"


def _check_values(attrs: Mapping[str, Any], required: Mapping[str, str]) -> None:
    missing = [name for tag, name in required.items() if tag in attrs and first(attrs, tag) is None]
    if missing:
        raise UPSError(UPSStatus.MISSING_ATTRIBUTE_VALUE, "empty: " + ", ".join(missing))
    for tag, allowed in ENUMERATED.items():
        value = first(attrs, tag)
        if value is not None and value not in allowed:
            raise UPSError(UPSStatus.INVALID_ATTRIBUTE_VALUE,
                           f"({tag[:4]},{tag[4:]}) is {value!r}; allowed: {', '.join(allowed)}")


# -- N-CREATE ---------------------------------------------------------------------------------------

def prepare_create(attrs: Mapping[str, Any], uid: str, now: str) -> tuple[WorkitemChange, list[str]]:
    """The workitem to store for a create request, with its status and events, and the attributes the
    SCP added (PS3.4 CC.2.5.3).

    Missing Type 2 attributes are added empty and reported with B300 ("created with modifications");
    the SCP sets SOP Class UID (UPS Push), SOP Instance UID, Procedure Step State (SCHEDULED), the
    modification time and, when none is given, the Worklist Label.
    """
    if uid in (GLOBAL_SUBSCRIPTION_UID, FILTERED_SUBSCRIPTION_UID):
        raise UPSError(UPSStatus.INVALID_ATTRIBUTE_VALUE, f"{uid} is a well-known subscription UID")
    state = first(attrs, STATE)
    if state is not None and state != State.SCHEDULED.value:
        raise UPSError(UPSStatus.NOT_SCHEDULED_ON_CREATE, f"Procedure Step State is {state!r}")
    if first(attrs, TRANSACTION_UID) is not None:
        raise UPSError(UPSStatus.INVALID_ATTRIBUTE_VALUE, "Transaction UID (0008,1195) shall be empty on creation")
    for tag, name in CREATED_EMPTY.items():
        if values(attrs, tag):
            raise UPSError(UPSStatus.INVALID_ATTRIBUTE_VALUE, f"{name} shall be created empty")
    missing = [name for tag, name in CREATE_TYPE1.items() if first(attrs, tag) is None]
    if missing:
        raise UPSError(UPSStatus.MISSING_ATTRIBUTE_VALUE, "required: " + ", ".join(missing))
    _check_values(attrs, CREATE_TYPE1)
    workitem = dict(attrs)
    added = [tag for tag in CREATE_TYPE2 if tag not in workitem]
    for tag in added:
        workitem[tag] = {"vr": CREATE_TYPE2[tag]}
    if state is None:
        added.append(STATE)
    if first(workitem, "00741202") is None:
        workitem["00741202"] = _text("LO", DEFAULT_WORKLIST_LABEL)
    workitem[SOP_CLASS_UID] = _text("UI", UPS_PUSH_SOP_CLASS)
    workitem[SOP_INSTANCE_UID] = _text("UI", uid)
    workitem[STATE] = _text("CS", State.SCHEDULED.value)
    workitem[MODIFICATION_DATETIME] = _text("DT", now)
    workitem[TRANSACTION_UID] = {"vr": "UI"}
    workitem = _sorted(workitem)
    # PS3.4 CC.2.4.3: global subscribers hear of a new workitem as a change to SCHEDULED, and of
    # its assignment when a station or performer is scheduled.
    events = [state_report(uid, workitem)]
    if values(workitem, STATION_NAME_SEQUENCE) or values(workitem, HUMAN_PERFORMERS_SEQUENCE):
        events.append(assigned_event(uid, workitem))
    status = UPSStatus.CREATED_WITH_MODIFICATIONS if added else UPSStatus.SUCCESS
    return WorkitemChange(dumps(workitem), events, int(status)), [f"({t[:4]},{t[4:]})" for t in added]


# -- N-SET ------------------------------------------------------------------------------------------

def apply_update(record: WorkitemRecord, changes: Mapping[str, Any], transaction_uid: str | None,
                 now: str) -> WorkitemChange:
    """Update a workitem (PS3.4 CC.2.6.3): only while not final, and only by the owner once claimed."""
    current = json.loads(record.attrs_json)
    if record.state in FINAL_STATES:
        raise UPSError(UPSStatus.MAY_NO_LONGER_BE_UPDATED, f"the workitem is {record.state}")
    given = transaction_uid or first(changes, TRANSACTION_UID)
    if record.state == State.SCHEDULED.value and given is not None:
        # CC.2.6.2: no Transaction UID is given for a SCHEDULED workitem; one that is given refers
        # to a claim that does not exist, which is what C310 of Table CC.2.6-1 reports.
        raise UPSError(UPSStatus.NOT_IN_PROGRESS, "a Transaction UID was given, but the workitem is SCHEDULED")
    if record.state == State.IN_PROGRESS.value and given != first(current, TRANSACTION_UID):
        raise UPSError(UPSStatus.WRONG_TRANSACTION_UID,
                       "missing" if given is None else "it does not match the owner's")
    # "Not allowed" means not changed: a client may send such an attribute back as it is stored.
    refused = [name for tag, name in SET_NOT_ALLOWED.items() if tag in changes and changes[tag] != current.get(tag)]
    if first(changes, SOP_INSTANCE_UID) not in (None, record.uid):
        refused.append("SOP Instance UID")
    if refused:
        raise UPSError(UPSStatus.INVALID_ATTRIBUTE_VALUE, "may not be updated: " + ", ".join(refused))
    _check_values(changes, SET_TYPE1)
    updated = dict(current)
    for tag, attr in changes.items():
        if tag not in (TRANSACTION_UID, SOP_INSTANCE_UID):
            updated[tag] = attr
    updated[MODIFICATION_DATETIME] = _text("DT", now)
    return WorkitemChange(dumps(updated), _update_events(record.uid, current, updated))


def _progress_view(attrs: Mapping[str, Any]) -> list[Any]:
    return [[item.get(tag) for tag in ("00741004", "00741006", "00741008")]
            for item in values(attrs, PROGRESS_SEQUENCE) if isinstance(item, dict)]


def _update_events(uid: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[NewEvent]:
    """Events an update causes (PS3.4 CC.2.4.3): readiness, assignment and progress changes."""
    events = []
    if first(before, INPUT_READINESS) != first(after, INPUT_READINESS):
        events.append(state_report(uid, after))
    if any(before.get(tag) != after.get(tag) for tag in (STATION_NAME_SEQUENCE, HUMAN_PERFORMERS_SEQUENCE)):
        events.append(assigned_event(uid, after))
    if _progress_view(before) != _progress_view(after):
        events.append(progress_event(uid, after))
    return events


# -- N-ACTION Change State (Table CC.1.1-2) -----------------------------------------------------------

def apply_state_change(record: WorkitemRecord, requested: str | None, transaction_uid: str | None,
                       now: str) -> WorkitemChange:
    """Change the Procedure Step State following Table CC.1.1-2 and the final state requirements.

    The checks run in the order of the table's rows: the requested state first, then whether the
    Transaction UID is the correct one, then what the current state allows.
    """
    states = [s.value for s in State]
    if requested not in states:
        raise UPSError(UPSStatus.INVALID_ATTRIBUTE_VALUE,
                       f"Procedure Step State (0074,1000) must be one of {', '.join(states)}, not {requested!r}")
    if requested == State.SCHEDULED.value:
        # Table CC.1.1-2: C303 in every state, whatever Transaction UID the request carries.
        raise UPSError(UPSStatus.MAY_ONLY_BECOME_SCHEDULED_ON_CREATE)
    attrs = json.loads(record.attrs_json)
    current = record.state
    _check_transaction_uid(current, transaction_uid, first(attrs, TRANSACTION_UID))
    if current == State.SCHEDULED.value:
        if requested != State.IN_PROGRESS.value:
            raise UPSError(UPSStatus.NOT_IN_PROGRESS, "claim it (IN PROGRESS) first")
        attrs[TRANSACTION_UID] = _text("UI", transaction_uid)
        attrs[STATE] = _text("CS", requested)
        return WorkitemChange(dumps(attrs), [state_report(record.uid, attrs)])
    if requested == State.IN_PROGRESS.value:
        if current == State.IN_PROGRESS.value:
            raise UPSError(UPSStatus.ALREADY_IN_PROGRESS)
        raise UPSError(UPSStatus.MAY_NO_LONGER_BE_UPDATED, f"the workitem is {current}")
    if current == requested:
        already = UPSStatus.ALREADY_COMPLETED if requested == State.COMPLETED.value else UPSStatus.ALREADY_CANCELED
        return WorkitemChange(None, (), int(already))
    if current in FINAL_STATES:
        raise UPSError(UPSStatus.MAY_NO_LONGER_BE_UPDATED, f"the workitem is {current}")
    if requested == State.CANCELED.value:
        _fill_cancellation(attrs, now)
    missing = final_state_missing(attrs, requested)
    if missing:
        raise UPSError(UPSStatus.FINAL_STATE_NOT_MET, "missing: " + ", ".join(missing))
    attrs[STATE] = _text("CS", requested)
    return WorkitemChange(dumps(attrs), [state_report(record.uid, attrs)])


def _check_transaction_uid(current: str, given: str | None, owner: str | None) -> None:
    """C301 unless the request carries the correct Transaction UID for the current state.

    A SCHEDULED workitem has none recorded, so any valid UID is correct there (the one a claim
    records); once claimed, only the recorded one is, also after the workitem reached a final state.
    """
    # Table CC.1.1-2, rows "... without correct transaction UID": C301 in every existing state,
    # before the state is considered: a claim by someone else is C301, not C302 or C300 (PS3.4
    # CC.2.1.2 Note 2 counts a second claimant's Transaction UID as the incorrect one).
    if not given:
        raise UPSError(UPSStatus.WRONG_TRANSACTION_UID, "Transaction UID (0008,1195) is missing")
    if not is_valid_uid(str(given)):
        raise UPSError(UPSStatus.WRONG_TRANSACTION_UID, f"{str(given)[:80]!r} is not a UID")
    if current != State.SCHEDULED.value and given != owner:
        raise UPSError(UPSStatus.WRONG_TRANSACTION_UID, "it is not the one the workitem was claimed with")


def _progress_item(attrs: dict[str, Any]) -> dict[str, Any]:
    """The (first) item of the Progress Information Sequence, created if missing."""
    items = values(attrs, PROGRESS_SEQUENCE)
    if not items or not isinstance(items[0], dict):
        items = [{}]
    item = copy.deepcopy(items[0])
    attrs[PROGRESS_SEQUENCE] = {"vr": "SQ", "Value": [item, *items[1:]]}
    return item


def _fill_cancellation(attrs: dict[str, Any], now: str) -> None:
    # Table CC.2.5-3: "If changing the UPS State to CANCELED and this Attribute has no value, the SCP
    # shall fill it with the current date time."
    item = _progress_item(attrs)
    if first(item, "00404052") is None:
        item["00404052"] = _text("DT", now)
    attrs[PROGRESS_SEQUENCE]["Value"][0] = _sorted(item)


def final_state_missing(attrs: Mapping[str, Any], target: str) -> list[str]:
    """Names of the attributes that keep a workitem from moving to ``target`` (PS3.4 CC.2.5.1.1)."""
    missing = []
    for path, code, name, empty_ok in FINAL_STATE_RULES:
        if code == "P" and target != State.COMPLETED.value or code == "X" and target != State.CANCELED.value:
            continue
        holder: Mapping[str, Any] | None = attrs
        for tag in path[:-1]:
            items = values(holder or {}, tag)
            holder = (items[0] if isinstance(items[0], dict) else {}) if items else None
        if holder is None:
            continue  # the sequence has no item: its own rule names it
        attr = holder.get(path[-1])
        present = isinstance(attr, dict)
        if not present or not (empty_ok or attr.get("Value") or attr.get("InlineBinary") or attr.get("BulkDataURI")):
            missing.append(name)
    return missing


# -- N-ACTION Request Cancel (CC.2.2) -------------------------------------------------------------------

def apply_cancel_request(record: WorkitemRecord, request: Mapping[str, Any], requester: str,
                         now: str) -> WorkitemChange:
    """Request cancellation: cancel a SCHEDULED workitem, tell the performer of an IN PROGRESS one."""
    if record.state == State.COMPLETED.value:
        raise UPSError(UPSStatus.COMPLETED_CANNOT_CANCEL)
    if record.state == State.CANCELED.value:
        return WorkitemChange(None, (), int(UPSStatus.ALREADY_CANCELED))
    if record.state == State.IN_PROGRESS.value:
        if not record.subscribers:
            # CC.2.2.3: nobody subscribed, so the performer cannot learn of the request.
            raise UPSError(UPSStatus.PERFORMER_CANNOT_BE_CONTACTED, "the workitem has no subscribers")
        return WorkitemChange(None, [cancel_requested_event(record.uid, request, requester)])
    # CC.2.2.3: a SCHEDULED workitem is moved by the SCP to IN PROGRESS, then to CANCELED.
    attrs = json.loads(record.attrs_json)
    attrs[TRANSACTION_UID] = _text("UI", new_transaction_uid())
    attrs[STATE] = _text("CS", State.IN_PROGRESS.value)
    events = [state_report(record.uid, attrs)]
    item = _progress_item(attrs)
    for tag in ("00741238", "0074100E", "0074100A", "0074100C"):
        if tag in request:
            item[tag] = request[tag]
    if not values(item, "0074100E"):
        item["0074100E"] = {"vr": "SQ", "Value": [UNSPECIFIED_DISCONTINUATION]}
    attrs[PROGRESS_SEQUENCE]["Value"][0] = _sorted(item)
    _fill_cancellation(attrs, now)
    missing = final_state_missing(attrs, State.CANCELED.value)
    if missing:
        raise UPSError(UPSStatus.FINAL_STATE_NOT_MET, "missing: " + ", ".join(missing))
    attrs[STATE] = _text("CS", State.CANCELED.value)
    events.append(state_report(record.uid, attrs))
    return WorkitemChange(dumps(attrs), events)


# -- event reports (CC.2.4, PS3.18 §8.10.5) -------------------------------------------------------------

def _event(event_type: EventType, uid: str, attrs: Mapping[str, Any], to: str | None = None) -> NewEvent:
    return NewEvent(int(event_type), uid, dumps(attrs), to)


def _pick(attrs: Mapping[str, Any], tags: Iterable[str]) -> dict[str, Any]:
    return {tag: attrs[tag] for tag in tags if tag in attrs}


def state_report(uid: str, attrs: Mapping[str, Any], to: str | None = None) -> NewEvent:
    """UPS State Report: state and readiness; the cancellation reason once CANCELED."""
    report = _pick(attrs, (STATE, INPUT_READINESS))
    if first(attrs, STATE) == State.CANCELED.value:
        items = values(attrs, PROGRESS_SEQUENCE)
        if items and isinstance(items[0], dict):
            report.update(_pick(items[0], ("00741238", "0074100E")))
    return _event(EventType.STATE_REPORT, uid, report, to)


def assigned_event(uid: str, attrs: Mapping[str, Any]) -> NewEvent:
    """UPS Assigned: the scheduled station and human performers."""
    return _event(EventType.ASSIGNED, uid, _pick(attrs, (STATION_NAME_SEQUENCE, HUMAN_PERFORMERS_SEQUENCE)))


def progress_event(uid: str, attrs: Mapping[str, Any]) -> NewEvent:
    """UPS Progress Report: the Progress Information Sequence."""
    return _event(EventType.PROGRESS_REPORT, uid, _pick(attrs, (PROGRESS_SEQUENCE,)))


def cancel_requested_event(uid: str, request: Mapping[str, Any], requester: str) -> NewEvent:
    """UPS Cancel Requested: who asked, and the reason and contact they gave."""
    report = _pick(request, CANCEL_REQUEST_TAGS[1:])
    report["00741236"] = _text("AE", requester)
    return _event(EventType.CANCEL_REQUESTED, uid, report)


def scp_status_event(status: str = "RESTARTED") -> NewEvent:
    """SCP Status Change: sent at start-up; subscriptions and workitems persist (warm start)."""
    report = {"00741242": _text("CS", status)}
    if status == "RESTARTED":
        report["00741244"] = _text("CS", "WARM START")
        report["00741246"] = _text("CS", "WARM START")
    return _event(EventType.SCP_STATUS_CHANGE, GLOBAL_SUBSCRIPTION_UID, report)


def event_report(workitem_uid: str, event_type: int, attrs: Mapping[str, Any], message_id: int) -> dict[str, Any]:
    """The DICOM JSON of one event report: the N-EVENT-REPORT command elements plus its attributes."""
    report = dict(attrs)
    report.update({
        "00000002": _text("UI", UPS_PUSH_SOP_CLASS),        # CC.2.4.3: Affected SOP Class is UPS Push
        "00000100": {"vr": "US", "Value": [0x0100]},       # N-EVENT-REPORT-RQ
        "00000110": {"vr": "US", "Value": [message_id & 0xFFFF]},
        "00000800": {"vr": "US", "Value": [0x0000]},       # a data set follows (PS3.7 E.1)
        "00001000": _text("UI", workitem_uid),
        "00001002": {"vr": "US", "Value": [int(event_type)]},
    })
    return _sorted(report)


# -- views --------------------------------------------------------------------------------------------

def retrieve_view(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A workitem as Retrieve returns it: never with its Transaction UID (CC.2.7.3)."""
    return {tag: attr for tag, attr in attrs.items() if tag != TRANSACTION_UID}


def search_view(attrs: Mapping[str, Any], include: Iterable[str] | None, matched: Iterable[str]) -> dict[str, Any]:
    """A search result: the Type 1/2 return keys (empty when absent), matched and included attributes.

    ``include`` None means ``includefield=all``. The Transaction UID is never returned.
    """
    if include is None:
        return retrieve_view(attrs)
    out = {tag: attrs.get(tag, {"vr": vr}) for tag, vr in RETURN_KEYS.items()}
    for tag in (*matched, *include):
        if tag in attrs:
            out[tag] = attrs[tag]
    out.pop(TRANSACTION_UID, None)
    return _sorted(out)
