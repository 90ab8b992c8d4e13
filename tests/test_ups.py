"""UPS-RS through HTTP: the workitem lifecycle, refusals with their statuses and Warning reasons,
search matching, subscriptions, JSON and XML bodies, and persistence."""
from __future__ import annotations

import json
import threading

import pytest
import webtest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomweb_wsgi import dicomjson, workflow
from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.storage.base import AttributeMatch
from dicomweb_wsgi.storage.sqlite_workitems import SqliteWorkitemStore
from dicomweb_wsgi.testing import parse_multipart

JSON = {"Content-Type": "application/dicom+json"}
GLOBAL = workflow.GLOBAL_SUBSCRIPTION_UID
FILTERED = workflow.FILTERED_SUBSCRIPTION_UID


def code(value: str, meaning: str, scheme: str = "99LOCAL") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def minimal_workitem(**attributes: object) -> Dataset:
    """Only what Create requires a value for (PS3.4 Table CC.2.5-3 N-CREATE Type 1)."""
    ds = Dataset()
    ds.ScheduledProcedureStepPriority = "MEDIUM"
    ds.ProcedureStepLabel = "Lung nodule CAD"
    ds.ScheduledProcedureStepStartDateTime = "20240102101500"
    ds.InputReadinessState = "READY"
    ds.ProcedureStepState = "SCHEDULED"
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def workitem_dataset(station: str = "CT1", accession: str = "ACC-1", **attributes: object) -> Dataset:
    """A complete UPS for a CAD step on a CT study (every N-CREATE Type 1 and 2 attribute)."""
    ds = minimal_workitem(WorklistLabel="AI")
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-7"
    request = Dataset()
    request.StudyInstanceUID = generate_uid()
    request.AccessionNumber = accession
    request.RequestedProcedureID = "RP-1"
    ds.ReferencedRequestSequence = [request]
    ds.ScheduledStationNameCodeSequence = [code(station, f"scanner {station}")]
    ds.ScheduledWorkitemCodeSequence = [code("CAD", "Computer aided detection", "DCM")]
    for tag, vr in workflow.CREATE_TYPE2.items():
        if int(tag, 16) not in ds:
            ds.add_new(int(tag, 16), vr, None)
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def body(ds: Dataset) -> str:
    return json.dumps(ds.to_json_dict())


def create(client, ds: Dataset | None = None, uid: str | None = None, status: int = 201):
    uid = uid or generate_uid()
    return uid, client.post(f"/workitems?{uid}", body(ds or workitem_dataset()), headers=JSON, status=status)


def state_body(state: str, tuid: str | None) -> str:
    ds = Dataset()
    ds.ProcedureStepState = state
    if tuid:
        ds.TransactionUID = tuid
    return json.dumps(ds.to_json_dict())


def put_state(client, uid: str, state: str, tuid: str | None, status: int = 200):
    return client.put(f"/workitems/{uid}/state", state_body(state, tuid), headers=JSON, status=status)


def completion_dataset() -> Dataset:
    performed = Dataset()
    performed.PerformedStationNameCodeSequence = [code("AI1", "inference server")]
    performed.PerformedWorkitemCodeSequence = [code("CAD", "Computer aided detection", "DCM")]
    performed.PerformedProcedureStepStartDateTime = "20240102110000"
    performed.PerformedProcedureStepEndDateTime = "20240102110500"
    output = Dataset()
    output.TypeOfInstances = "DICOM"
    output.StudyInstanceUID = generate_uid()
    output.SeriesInstanceUID = generate_uid()
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"
    ref.ReferencedSOPInstanceUID = generate_uid()
    output.ReferencedSOPSequence = [ref]
    performed.OutputInformationSequence = [output]
    ds = Dataset()
    ds.UnifiedProcedureStepPerformedProcedureSequence = [performed]
    return ds


def warning(resp) -> str:
    return resp.headers.get("Warning", "")


def pending(app, ae: str) -> list:
    return app.ctx.workitems.pending_events(ae, 1000)


# -- lifecycle ----------------------------------------------------------------------------------------

def test_ups_lifecycle_create_claim_update_complete_succeeds(dicomweb_client):
    uid, resp = create(dicomweb_client)
    assert resp.headers["Location"] == f"http://localhost:80/workitems/{uid}"
    got = dicomweb_client.get(f"/workitems/{uid}", status=200)
    assert got.headers["Content-Type"] == "application/dicom+json"
    [item] = got.json
    assert item["00741000"]["Value"] == ["SCHEDULED"] and item["00080018"]["Value"] == [uid]
    tuid = generate_uid()
    put_state(dicomweb_client, uid, "IN PROGRESS", tuid)
    assert "00081195" not in dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]
    progress = Dataset()
    item_ = Dataset()
    item_.ProcedureStepProgress = 40
    item_.ProcedureStepProgressDescription = "segmenting"
    progress.ProcedureStepProgressInformationSequence = [item_]
    dicomweb_client.post(f"/workitems/{uid}?{tuid}", body(progress), headers=JSON, status=200)
    dicomweb_client.post(f"/workitems/{uid}?transaction-uid={tuid}", body(completion_dataset()), headers=JSON,
                         status=200)
    put_state(dicomweb_client, uid, "COMPLETED", tuid)
    final = dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]
    assert final["00741000"]["Value"] == ["COMPLETED"]
    assert final["00741002"]["Value"][0]["00741004"]["Value"] == [40]
    assert final["00741216"]["Value"][0]["00404051"]["Value"] == ["20240102110500"]
    resp = dicomweb_client.post(f"/workitems/{uid}?{tuid}", body(progress), headers=JSON, status=400)
    assert "C300H" in warning(resp)


def test_ups_xml_bodies_create_retrieve_and_change_state_succeed(dicomweb_client):
    uid = generate_uid()
    xml = dicomjson.json_to_xml(workitem_dataset().to_json_dict())
    dicomweb_client.post(f"/workitems?workitem={uid}", xml, headers={"Content-Type": "application/dicom+xml"},
                         status=201)
    resp = dicomweb_client.get(f"/workitems/{uid}", headers={"Accept": "application/dicom+xml"}, status=200)
    assert resp.headers["Content-Type"] == "application/dicom+xml"
    assert dicomjson.xml_to_json(resp.body)["00741204"]["Value"] == ["Lung nodule CAD"]
    state = dicomjson.json_to_xml(json.loads(state_body("IN PROGRESS", generate_uid())))
    dicomweb_client.put(f"/workitems/{uid}/state", state, headers={"Content-Type": "application/dicom+xml"},
                        status=200)
    assert dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]["00741000"]["Value"] == ["IN PROGRESS"]


# -- create ---------------------------------------------------------------------------------------------

def test_ups_create_without_query_uid_uses_dataset_or_generates_one(dicomweb_client):
    ds = workitem_dataset()
    ds.SOPInstanceUID = uid = generate_uid()
    resp = dicomweb_client.post("/workitems", body(ds), headers=JSON, status=201)
    assert resp.headers["Location"].endswith(f"/workitems/{uid}")
    del ds.SOPInstanceUID
    resp = dicomweb_client.post("/workitems", body(ds), headers=JSON, status=201)
    generated = resp.headers["Location"].rsplit("/", 1)[1]
    dicomweb_client.get(f"/workitems/{generated}", status=200)


def test_ups_create_duplicate_uid_returns_409_with_0111(dicomweb_client):
    uid, _ = create(dicomweb_client)
    _, resp = create(dicomweb_client, uid=uid, status=409)
    assert "0111H" in warning(resp)


def test_ups_create_minimal_dataset_returns_201_with_b300_warning(dicomweb_client):
    _, resp = create(dicomweb_client, minimal_workitem(ScheduledProcedureStepPriority="LOW"))
    assert "B300H" in warning(resp) and "(0010,0010)" in warning(resp)


@pytest.mark.parametrize("change, status, reason", [
    ({"ProcedureStepState": "IN PROGRESS"}, 400, "C309H"),
    ({"ProcedureStepLabel": None}, 400, "0121H"),
    ({"ScheduledProcedureStepPriority": "ASAP"}, 400, "0106H"),
    ({"TransactionUID": "1.2.3"}, 400, "0106H"),
])
def test_ups_create_invalid_dataset_returns_400_with_reason(dicomweb_client, change, status, reason):
    _, resp = create(dicomweb_client, workitem_dataset(**change), status=status)
    assert reason in warning(resp) and reason in resp.text


def test_ups_create_malformed_request_returns_4xx(dicomweb_client):
    ds = workitem_dataset()
    ds.SOPInstanceUID = generate_uid()
    resp = dicomweb_client.post(f"/workitems?{generate_uid()}", body(ds), headers=JSON, status=400)
    assert "differs" in resp.text
    dicomweb_client.post("/workitems", body(ds), headers={"Content-Type": "application/dicom"}, status=415)
    dicomweb_client.post("/workitems", "{not json", headers=JSON, status=400)
    dicomweb_client.post("/workitems", "[1, 2]", headers=JSON, status=400)
    dicomweb_client.post("/workitems", '{"00100010": {"vr": "XX"}}', headers=JSON, status=400)
    dicomweb_client.post("/workitems", "", headers=JSON, status=400)
    dicomweb_client.post(f"/workitems?{GLOBAL}", body(workitem_dataset()), headers=JSON, status=400)


def test_ups_retrieve_unknown_or_unacceptable_returns_404_or_406(dicomweb_client):
    resp = dicomweb_client.get(f"/workitems/{generate_uid()}", status=404)
    assert "C307H" in warning(resp)
    uid, _ = create(dicomweb_client)
    dicomweb_client.get(f"/workitems/{uid}", headers={"Accept": "image/png"}, status=406)


# -- change state: every cell of PS3.4 Table CC.1.1-2 --------------------------------------------------

def _in_progress(client) -> tuple[str, str]:
    uid, _ = create(client)
    tuid = generate_uid()
    put_state(client, uid, "IN PROGRESS", tuid)
    return uid, tuid


def discontinuation() -> Dataset:
    """An update giving the reason a CANCELED workitem needs (PS3.4 Table CC.2.5-3, Final State X)."""
    item = Dataset()
    item.ProcedureStepDiscontinuationReasonCodeSequence = [code("110514", "Incorrect worklist entry", "DCM")]
    ds = Dataset()
    ds.ProcedureStepProgressInformationSequence = [item]
    return ds


def _cancel_in_progress(client, uid: str, tuid: str) -> None:
    client.post(f"/workitems/{uid}?{tuid}", body(discontinuation()), headers=JSON, status=200)
    put_state(client, uid, "CANCELED", tuid)


def workitem_in(client, column: str) -> tuple[str, str | None]:
    """A workitem made through HTTP in the state of ``column`` and the Transaction UID it was claimed
    with (None while SCHEDULED). ``READY`` is IN PROGRESS holding what both final states require."""
    uid, _ = create(client)
    if column == "SCHEDULED":
        return uid, None
    tuid = generate_uid()
    put_state(client, uid, "IN PROGRESS", tuid)
    if column in ("READY", "COMPLETED"):
        client.post(f"/workitems/{uid}?{tuid}", body(completion_dataset()), headers=JSON, status=200)
    if column in ("READY", "CANCELED"):
        client.post(f"/workitems/{uid}?{tuid}", body(discontinuation()), headers=JSON, status=200)
    if column in workflow.FINAL_STATES:
        put_state(client, uid, column, tuid)
    return uid, tuid


def state_of(client, uid: str) -> str:
    return client.get(f"/workitems/{uid}", status=200).json[0]["00741000"]["Value"][0]


# Table CC.1.1-2: the status of each event (row) in each state (column). READY is IN PROGRESS with
# the final state requirements met, so that the "If Final State Requirements met" cells can succeed.
# "0000" means the change is made. The column for a workitem that does not exist (C307) is tested apart.
CC_COLUMNS = ("SCHEDULED", "IN PROGRESS", "READY", "COMPLETED", "CANCELED")
CC_1_1_2 = {
    ("IN PROGRESS", "correct"): ("0000", "C302", "C302", "C300", "C300"),
    ("IN PROGRESS", "incorrect"): ("C301",) * 5,
    ("SCHEDULED", "correct"): ("C303",) * 5,
    ("SCHEDULED", "incorrect"): ("C303",) * 5,
    ("COMPLETED", "correct"): ("C310", "C304", "0000", "B306", "C300"),
    ("COMPLETED", "incorrect"): ("C301",) * 5,
    ("CANCELED", "correct"): ("C310", "C304", "0000", "C300", "B304"),
    ("CANCELED", "incorrect"): ("C301",) * 5,
}
# PS3.18 Table 11.7.3-1: the HTTP status of each; Table 11.7.3-2: the Warning message of each.
HTTP_OF = {"0000": 200, "B304": 200, "B306": 200, "C301": 400, "C300": 409, "C302": 409, "C303": 409,
           "C304": 409, "C310": 409, "C307": 404}
INCONSISTENT = "The submitted request is inconsistent with the state of the UPS Instance."
TUID_KINDS = {"correct": ("owner",), "incorrect": ("other", "missing", "malformed")}


def _cells() -> list:
    cells = []
    for (requested, correctness), row in CC_1_1_2.items():
        for column, status in zip(CC_COLUMNS, row):
            for kind in TUID_KINDS[correctness]:
                if column == "SCHEDULED" and kind == "other":
                    continue  # nothing is recorded yet, so any valid UID is the correct one
                cells.append(pytest.param(column, requested, kind, status, id=f"{column}-{requested}-{kind}"))
    return cells


def state_json(state: str, tuid: str | None) -> str:
    ds = {"00741000": {"vr": "CS", "Value": [state]}}
    if tuid is not None:
        ds["00081195"] = {"vr": "UI", "Value": [tuid]}
    return json.dumps(ds)


def _warning_expected(status: str, requested: str, kind: str) -> str:
    if status in ("B304", "B306"):
        return f"{status}H: The UPS is already in the requested state of {requested}"
    if status == "C301":
        return f"C301H: The Transaction UID is {'missing' if kind == 'missing' else 'incorrect'}."
    return f"{status}H: {INCONSISTENT}"


@pytest.mark.parametrize("column, requested, kind, status", _cells())
def test_ups_change_state_follows_every_cell_of_table_cc_1_1_2(dicomweb_client, column, requested, kind, status):
    uid, owner = workitem_in(dicomweb_client, column)
    tuid = {"owner": owner or generate_uid(), "other": generate_uid(), "missing": None, "malformed": "not-a-uid"}[kind]
    resp = dicomweb_client.put(f"/workitems/{uid}/state", state_json(requested, tuid), headers=JSON,
                               status=HTTP_OF[status])
    before = "IN PROGRESS" if column == "READY" else column
    assert state_of(dicomweb_client, uid) == (requested if status == "0000" else before)
    if status == "0000":
        assert not warning(resp)
    else:
        assert _warning_expected(status, requested, kind) in warning(resp)
    if status.startswith("C"):
        assert resp.text.startswith(f"{status}H")


@pytest.mark.parametrize("requested", ["IN PROGRESS", "SCHEDULED", "COMPLETED", "CANCELED"])
def test_ups_change_state_of_unknown_workitem_returns_404_c307(dicomweb_client, requested):
    resp = dicomweb_client.put(f"/workitems/{generate_uid()}/state", state_json(requested, generate_uid()),
                               headers=JSON, status=404)
    assert "C307H" in warning(resp)


def test_ups_change_state_to_current_final_state_returns_200_with_warning(dicomweb_client):
    uid, tuid = _in_progress(dicomweb_client)
    _cancel_in_progress(dicomweb_client, uid, tuid)
    resp = put_state(dicomweb_client, uid, "CANCELED", tuid)
    assert "B304H" in warning(resp)
    state = dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]
    assert state["00741002"]["Value"][0]["00404052"]["vr"] == "DT"  # filled by the server


def test_ups_change_state_malformed_request_returns_400_or_404(dicomweb_client):
    uid, _ = create(dicomweb_client)
    put_state(dicomweb_client, uid, "IN PROGRESS", None, status=400)
    put_state(dicomweb_client, uid, "PAUSED", generate_uid(), status=400)
    resp = put_state(dicomweb_client, generate_uid(), "IN PROGRESS", generate_uid(), status=404)
    assert "C307H" in warning(resp)
    dicomweb_client.put(f"/workitems/{uid}/state", "", headers=JSON, status=400)


def test_ups_change_state_concurrent_claims_exactly_one_succeeds(dicomweb_app):
    client = webtest.TestApp(dicomweb_app)
    uid, _ = create(client)
    results: list[int] = []

    def claim() -> None:
        resp = webtest.TestApp(dicomweb_app).put(f"/workitems/{uid}/state", state_body("IN PROGRESS", generate_uid()),
                                                 headers=JSON, expect_errors=True)
        results.append(resp.status_int)

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # The first claim records its Transaction UID; the others bring an incorrect one (PS3.4 CC.2.1.2).
    assert sorted(results) == [200] + [400] * 5


# -- update ------------------------------------------------------------------------------------------

def test_ups_update_without_ownership_or_patient_change_is_refused(dicomweb_client):
    uid, _ = create(dicomweb_client)
    change = Dataset()
    change.ProcedureStepLabel = "renamed"
    dicomweb_client.post(f"/workitems/{uid}", body(change), headers=JSON, status=200)
    resp = dicomweb_client.post(f"/workitems/{uid}?{generate_uid()}", body(change), headers=JSON, status=409)
    assert "C310H" in warning(resp)
    tuid = generate_uid()
    put_state(dicomweb_client, uid, "IN PROGRESS", tuid)
    dicomweb_client.post(f"/workitems/{uid}", body(change), headers=JSON, status=400)
    change.TransactionUID = tuid
    dicomweb_client.post(f"/workitems/{uid}", body(change), headers=JSON, status=200)
    patient = Dataset()
    patient.PatientName = "Roe^Rick"
    resp = dicomweb_client.post(f"/workitems/{uid}?{tuid}", body(patient), headers=JSON, status=400)
    assert "Patient's Name" in resp.text
    dicomweb_client.post(f"/workitems/{generate_uid()}", body(change), headers=JSON, status=404)
    assert dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]["00741204"]["Value"] == ["renamed"]


# PS3.4 CC.2.6.3 and Table CC.2.6-1: a SCHEDULED workitem is updated without a Transaction UID (one
# given names a claim that does not exist: C310), an IN PROGRESS one only with its owner's (C301), a
# final one never, whatever it brings (C300). HTTP status per PS3.18 Table 11.6.3-1, Warning message
# per Table 11.6.3-2.
UNCLAIMED = "The target URI did not reference a claimed Workitem."
FINAL = "The submitted request is inconsistent with the current state of the Workitem."
UPDATE_CELLS = {
    ("SCHEDULED", "missing"): (200, None, None), ("SCHEDULED", "other"): (409, "C310", UNCLAIMED),
    ("IN PROGRESS", "owner"): (200, None, None), ("IN PROGRESS", "other"): (400, "C301", UNCLAIMED),
    ("IN PROGRESS", "missing"): (400, "C301", UNCLAIMED),
    **{(state, kind): (400, "C300", FINAL)
       for state in workflow.FINAL_STATES for kind in ("owner", "other", "missing")},
}
UPDATE_REQUESTS = [(state, kind, where) for state, kind in UPDATE_CELLS for where in ("query", "dataset")
                   if kind != "missing" or where == "query"]


@pytest.mark.parametrize("state, kind, where", UPDATE_REQUESTS)
def test_ups_update_follows_state_and_transaction_uid(dicomweb_client, state, kind, where):
    http, status, phrase = UPDATE_CELLS[(state, kind)]
    uid, owner = workitem_in(dicomweb_client, state)
    tuid = {"owner": owner, "other": generate_uid(), "missing": None}[kind]
    change = Dataset()
    change.ProcedureStepLabel = "renamed"
    if tuid and where == "dataset":
        change.TransactionUID = tuid
    url = f"/workitems/{uid}?transaction-uid={tuid}" if tuid and where == "query" else f"/workitems/{uid}"
    resp = dicomweb_client.post(url, body(change), headers=JSON, status=http)
    label = dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]["00741204"]["Value"][0]
    assert label == ("renamed" if status is None else "Lung nodule CAD")
    if status:
        assert f"{status}H: {phrase}" in warning(resp) and resp.text.startswith(f"{status}H")


# -- request cancellation -------------------------------------------------------------------------------

# Table CC.1.1-2, row "N-ACTION to Request Cancel", and CC.2.2.3: the request carries no Transaction UID
# (Table CC.2.2-1), so one in the dataset changes nothing; an IN PROGRESS workitem nobody subscribed to
# cannot reach its performer (C312). PS3.18 Table 11.8.3-1 for the HTTP status.
CANCEL_CELLS = {  # state: (HTTP, UPS status, state afterwards)
    "SCHEDULED": (202, None, "CANCELED"), "IN PROGRESS": (202, None, "IN PROGRESS"),
    "UNREACHABLE": (409, "C312", "IN PROGRESS"), "COMPLETED": (409, "C311", "COMPLETED"),
    "CANCELED": (202, "B304", "CANCELED"),
}


@pytest.mark.parametrize("state", list(CANCEL_CELLS))
@pytest.mark.parametrize("kind", ["missing", "owner", "other"])
def test_ups_cancel_request_follows_state_whatever_transaction_uid(dicomweb_client, state, kind):
    http, status, after = CANCEL_CELLS[state]
    uid, owner = workitem_in(dicomweb_client, "IN PROGRESS" if state == "UNREACHABLE" else state)
    if state == "IN PROGRESS":
        dicomweb_client.post(f"/workitems/{uid}/subscribers/PERFORMER", status=201)
    request = Dataset()
    request.ReasonForCancellation = "ordered twice"
    tuid = {"owner": owner or generate_uid(), "other": generate_uid(), "missing": None}[kind]
    if tuid:
        request.TransactionUID = tuid
    resp = dicomweb_client.post(f"/workitems/{uid}/cancelrequest", body(request), headers=JSON, status=http)
    assert state_of(dicomweb_client, uid) == after
    assert (f"{status}H" in warning(resp)) if status else not warning(resp)


def test_ups_update_and_cancel_request_of_unknown_workitem_return_404_c307(dicomweb_client):
    change = Dataset()
    change.ProcedureStepLabel = "renamed"
    assert "C307H" in warning(dicomweb_client.post(f"/workitems/{generate_uid()}", body(change), headers=JSON,
                                                   status=404))
    assert "C307H" in warning(dicomweb_client.post(f"/workitems/{generate_uid()}/cancelrequest", status=404))


def test_ups_cancel_request_scheduled_workitem_is_canceled(dicomweb_client):
    uid, _ = create(dicomweb_client)
    reason = Dataset()
    reason.ReasonForCancellation = "ordered twice"
    dicomweb_client.post(f"/workitems/{uid}/cancelrequest", body(reason), headers=JSON, status=202)
    item = dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]
    assert item["00741000"]["Value"] == ["CANCELED"]
    assert item["00741002"]["Value"][0]["00741238"]["Value"] == ["ordered twice"]
    resp = dicomweb_client.post(f"/workitems/{uid}/cancelrequest", status=202)
    assert "B304H" in warning(resp)


def test_ups_cancel_request_unreachable_or_completed_returns_409(dicomweb_client):
    uid, tuid = _in_progress(dicomweb_client)
    resp = dicomweb_client.post(f"/workitems/{uid}/cancelrequest", status=409)
    assert "C312H" in warning(resp)
    dicomweb_client.post(f"/workitems/{uid}/subscribers/PERFORMER", status=201)
    dicomweb_client.post(f"/workitems/{uid}/cancelrequest", status=202)
    assert dicomweb_client.get(f"/workitems/{uid}", status=200).json[0]["00741000"]["Value"] == ["IN PROGRESS"]
    dicomweb_client.post(f"/workitems/{uid}?{tuid}", body(completion_dataset()), headers=JSON, status=200)
    put_state(dicomweb_client, uid, "COMPLETED", tuid)
    resp = dicomweb_client.post(f"/workitems/{uid}/cancelrequest", status=409)
    assert "C311H" in warning(resp)
    dicomweb_client.post(f"/workitems/{generate_uid()}/cancelrequest", status=404)


# -- search -------------------------------------------------------------------------------------------------

@pytest.fixture
def worklist(dicomweb_client):
    """Three workitems: CT1/ACC-1 (Doe), CT2/ACC-2 (Doe, later), MR1/ACC-3 (Müller)."""
    uids = [create(dicomweb_client, workitem_dataset("CT1", "ACC-1"))[0],
            create(dicomweb_client, workitem_dataset("CT2", "ACC-2", ScheduledProcedureStepStartDateTime="20240103080000"))[0],
            create(dicomweb_client, workitem_dataset("MR1", "ACC-3", PatientName="Müller^Hans",
                                                     ScheduledProcedureStepPriority="HIGH"))[0]]
    return uids


def _found(client, query: str, **kwargs) -> list[str]:
    return [r["00080018"]["Value"][0] for r in client.get(f"/workitems?{query}", status=200, **kwargs).json]


@pytest.mark.parametrize("query, expected", [
    ("ReferencedRequestSequence.AccessionNumber=ACC-2", [1]),
    ("0040A370.00080050=ACC-9", []),
    ("ScheduledStationNameCodeSequence.CodeValue=CT*", [0, 1]),
    ("ScheduledStationNameCodeSequence.CodeValue=CT1&ScheduledStationNameCodeSequence.CodingSchemeDesignator=99LOCAL",
     [0]),
    ("ScheduledStationNameCodeSequence.CodeValue=CT1&ScheduledStationNameCodeSequence.CodingSchemeDesignator=DCM", []),
    ("PatientName=doe*", [0, 1]),
    ("PatientName=MULLER^HANS", [2]),
    ("ScheduledProcedureStepStartDateTime=20240103-", [1]),
    ("ScheduledProcedureStepStartDateTime=-20240102", [0, 2]),
    ("ScheduledProcedureStepPriority=HIGH", [2]),
    ("ProcedureStepState=SCHEDULED", [0, 1, 2]),
    ("PatientID=PID-?", [0, 1, 2]),
    ("ScheduledProcedureStepPriority=LOW,HIGH", [2]),
    ("ProcedureStepState=COMPLETED%5CSCHEDULED", [0, 1, 2]),
    ("ScheduledStationNameCodeSequence.CodeValue=CT2%5CMR1", [1, 2]),
    ("ScheduledProcedureStepStartDateTime=20240102", [0, 2]),
    ("ScheduledProcedureStepStartDateTime=2024010308", [1]),
    ("ScheduledProcedureStepStartDateTime=20240102101500-0500", [0, 2]),
])
def test_ups_search_matching_key_returns_matching_workitems(dicomweb_client, worklist, query, expected):
    assert _found(dicomweb_client, query) == [worklist[i] for i in expected]


def test_ups_search_uid_list_and_state_return_matches(dicomweb_client, worklist):
    assert _found(dicomweb_client, f"SOPInstanceUID={worklist[0]}\\{worklist[2]}") == [worklist[0], worklist[2]]
    put_state(dicomweb_client, worklist[1], "IN PROGRESS", generate_uid())
    assert _found(dicomweb_client, "ProcedureStepState=IN%20PROGRESS") == [worklist[1]]


def test_ups_search_star_alone_is_universal_matching(dicomweb_client, worklist):
    uid, _ = create(dicomweb_client, minimal_workitem())  # Patient's Name and the station added empty
    for query in ("PatientName=*", "SOPInstanceUID=*", "ScheduledStationNameCodeSequence.CodeValue=*"):
        assert _found(dicomweb_client, query) == [*worklist, uid], query


def test_ups_search_malformed_or_wildcard_date_time_returns_400(dicomweb_client, worklist):
    for query in ("ScheduledProcedureStepStartDateTime=2024*", "ScheduledProcedureStepStartDateTime=2024x-",
                  "ScheduledProcedureStepStartDateTime=20241301", "SOPInstanceUID=1.2*"):
        dicomweb_client.get(f"/workitems?{query}", status=400)
    dicomweb_client.post(f"/workitems/{FILTERED}/subscribers/CTROOM"
                         "?filter=ScheduledProcedureStepStartDateTime=2024*", status=400)


def test_ups_search_results_have_return_keys_and_never_transaction_uid(dicomweb_client, worklist):
    put_state(dicomweb_client, worklist[0], "IN PROGRESS", generate_uid())
    [result] = dicomweb_client.get(f"/workitems?SOPInstanceUID={worklist[0]}", status=200).json
    assert {"00741000", "00741200", "00404005", "0040A370", "00100010"} <= set(result)
    assert "00404010" not in result and "00081195" not in result
    [result] = dicomweb_client.get(f"/workitems?SOPInstanceUID={worklist[0]}&includefield=00404010", status=200).json
    assert "00404010" in result
    [result] = dicomweb_client.get(f"/workitems?SOPInstanceUID={worklist[0]}&includefield=all", status=200).json
    assert "00741216" in result and "00081195" not in result


def test_ups_search_paging_warns_of_remaining_results(dicomweb_client, worklist):
    resp = dicomweb_client.get("/workitems?limit=2", status=200)
    assert len(resp.json) == 2 and "There are 1 additional results" in warning(resp)
    resp = dicomweb_client.get("/workitems?limit=2&offset=2", status=200)
    assert [r["00080018"]["Value"][0] for r in resp.json] == [worklist[2]] and not warning(resp)
    assert dicomweb_client.get("/workitems?offset=10", status=200).json == []


def test_ups_search_bad_parameters_return_400_unknown_are_ignored(dicomweb_client, worklist):
    dicomweb_client.get("/workitems?limit=ten", status=400)
    dicomweb_client.get("/workitems?TransactionUID=1.2.3", status=400)
    dicomweb_client.get("/workitems?ReferencedRequestSequence=x", status=400)
    resp = dicomweb_client.get("/workitems?NoSuchKeyword=1&fuzzymatching=true", status=200)
    assert len(resp.json) == 3 and "NoSuchKeyword" in warning(resp)


def test_ups_search_xml_accept_returns_multipart_xml(dicomweb_client, worklist):
    resp = dicomweb_client.get("/workitems?ScheduledStationNameCodeSequence.CodeValue=CT*",
                               headers={"Accept": 'multipart/related; type="application/dicom+xml"'}, status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    found = [dicomjson.xml_to_json(part)["00080018"]["Value"][0] for _, part in parts]
    assert found == worklist[:2]


# -- subscriptions --------------------------------------------------------------------------------------

def test_ups_subscribe_workitem_queues_initial_state_report(dicomweb_app, dicomweb_client):
    uid, _ = create(dicomweb_client)
    dicomweb_client.post(f"/workitems/{uid}/subscribers/WATCHER?deletionlock=true", status=201)
    [event] = pending(dicomweb_app, "WATCHER")
    assert event.event_type == workflow.EventType.STATE_REPORT and event.workitem_uid == uid
    dicomweb_client.post(f"/workitems/{generate_uid()}/subscribers/WATCHER", status=404)
    dicomweb_client.post(f"/workitems/{uid}/subscribers/WATCHER?deletionlock=maybe", status=400)
    dicomweb_client.post(f"/workitems/{uid}/subscribers/{'A' * 17}", status=400)
    dicomweb_client.delete(f"/workitems/{uid}/subscribers/WATCHER", status=200)
    put_state(dicomweb_client, uid, "IN PROGRESS", generate_uid())
    assert pending(dicomweb_app, "WATCHER") == []  # the queued report went with the subscription; nothing new


@pytest.mark.parametrize("aetitle, encoded", [("CT%231", "CT%231"), ("A%25B", "A%25B"), ("CT%20A", "CT%20A"),
                                               ("WATCHER/", "WATCHER")])
def test_ups_subscribe_content_location_is_the_subscription_uri(dicomweb_client, aetitle, encoded):
    # RFC 9110 §8.7: a URI; '#', '%' and spaces of an AE title are percent-encoded, a trailing slash dropped.
    resp = dicomweb_client.post(f"/workitems/{GLOBAL}/subscribers/{aetitle}", status=201)
    assert resp.headers["Content-Location"] == f"http://localhost:80/workitems/{GLOBAL}/subscribers/{encoded}"


def test_ups_subscribe_globally_with_lock_covers_existing_and_new(dicomweb_app, dicomweb_client):
    existing, _ = create(dicomweb_client)
    dicomweb_client.post(f"/workitems/{GLOBAL}/subscribers/MONITOR?deletionlock=true", status=201)
    created, _ = create(dicomweb_client)
    events = [(e.workitem_uid, e.event_type) for e in pending(dicomweb_app, "MONITOR")]
    assert events == [(existing, 1), (created, 1), (created, 5)]  # initial, then SCHEDULED + assigned


def test_ups_subscribe_globally_without_lock_sends_no_initial_events(dicomweb_app, dicomweb_client):
    existing, _ = create(dicomweb_client)
    dicomweb_client.post(f"/workitems/{GLOBAL}/subscribers/MONITOR", status=201)
    assert pending(dicomweb_app, "MONITOR") == []
    put_state(dicomweb_client, existing, "IN PROGRESS", generate_uid())
    assert [e.workitem_uid for e in pending(dicomweb_app, "MONITOR")] == [existing]


def test_ups_subscribe_filtered_covers_only_matching_workitems(dicomweb_app, dicomweb_client):
    dicomweb_client.post(f"/workitems/{FILTERED}/subscribers/CTROOM", status=400)  # a filter is required
    dicomweb_client.post(f"/workitems/{FILTERED}/subscribers/CTROOM"
                         "?filter=ScheduledStationNameCodeSequence.CodeValue=CT1", status=201)
    dicomweb_client.post(f"/workitems/{FILTERED}/subscribers/MRROOM"
                         "?ScheduledStationNameCodeSequence.CodeValue=MR*", status=201)  # PS3.18 2019a form
    ct, _ = create(dicomweb_client, workitem_dataset("CT1"))
    mr, _ = create(dicomweb_client, workitem_dataset("MR2"))
    assert {e.workitem_uid for e in pending(dicomweb_app, "CTROOM")} == {ct}
    assert {e.workitem_uid for e in pending(dicomweb_app, "MRROOM")} == {mr}


def test_ups_suspend_keeps_subscriptions_and_unsubscribe_drops_all(dicomweb_app, dicomweb_client):
    first_uid, _ = create(dicomweb_client)
    dicomweb_client.post(f"/workitems/{GLOBAL}/subscribers/MONITOR", status=201)
    dicomweb_client.post(f"/workitems/{GLOBAL}/subscribers/MONITOR/suspend", status=200)
    dicomweb_client.post(f"/workitems/{first_uid}/subscribers/MONITOR/suspend", status=400)
    second_uid, _ = create(dicomweb_client)
    tuid = generate_uid()
    put_state(dicomweb_client, first_uid, "IN PROGRESS", tuid)
    put_state(dicomweb_client, second_uid, "IN PROGRESS", generate_uid())
    assert [e.workitem_uid for e in pending(dicomweb_app, "MONITOR")] == [first_uid]
    dicomweb_client.delete(f"/workitems/{GLOBAL}/subscribers/MONITOR", status=200)
    dicomweb_client.post(f"/workitems/{first_uid}?{tuid}", body(completion_dataset()), headers=JSON, status=200)
    assert pending(dicomweb_app, "MONITOR") == []  # unsubscribed from all: queued reports go too


# -- persistence and retention ----------------------------------------------------------------------------

def test_ups_restart_keeps_workitems_claims_and_subscriptions(tmp_path):
    settings = {"data_dir": str(tmp_path / "data"), "fsync": "false"}
    app = make_app(settings)
    client = webtest.TestApp(app)
    uid, _ = create(client)
    tuid = generate_uid()
    put_state(client, uid, "IN PROGRESS", tuid)
    client.post(f"/workitems/{uid}/subscribers/WATCHER", status=201)
    app.close()
    app = make_app(settings)
    try:
        client = webtest.TestApp(app)
        assert client.get(f"/workitems/{uid}", status=200).json[0]["00741000"]["Value"] == ["IN PROGRESS"]
        put_state(client, uid, "IN PROGRESS", tuid, status=409)  # the claim was kept
        assert [e.event_type for e in pending(app, "WATCHER")] == [1]
    finally:
        app.close()


def test_ups_purge_final_workitem_unless_deletion_locked(tmp_path):
    store = SqliteWorkitemStore(str(tmp_path / "w.sqlite3"), synchronous="NORMAL", final_retention_s=1e-6)
    try:
        for uid, lock in (("1.2.3.1", True), ("1.2.3.2", False)):
            change, _ = workflow.prepare_create(workitem_dataset().to_json_dict(), uid, "20240101")
            assert store.create(uid, change.attrs_json, [])
            store.subscribe("KEEPER", uid, lock, lambda r: workflow.state_report(r.uid, {}, to="KEEPER"))
            store.change(uid, lambda r: workflow.apply_cancel_request(r, {}, "X", "20240101"))
        store.purge()
        assert store.get("1.2.3.1") is not None and store.get("1.2.3.2") is None
        store.unsubscribe("KEEPER", "1.2.3.1")
        store.purge()
        assert store.get("1.2.3.1") is None
    finally:
        store.close()


def test_ups_store_search_reads_star_and_value_lists_as_qido_does(tmp_path):
    store = SqliteWorkitemStore(str(tmp_path / "w.sqlite3"), synchronous="NORMAL")
    try:
        for uid, priority in (("1.2.3.1", "HIGH"), ("1.2.3.2", "LOW")):
            change, _ = workflow.prepare_create(minimal_workitem(ScheduledProcedureStepPriority=priority)
                                                .to_json_dict(), uid, "20240101")
            assert store.create(uid, change.attrs_json, [])

        def found(*keys: tuple[str, str, str]) -> list[str]:
            return [r.uid for r in store.search([AttributeMatch((tag,), vr, value) for tag, vr, value in keys],
                                                None, 0)[0]]

        assert found(("00100010", "PN", "*"), ("00741200", "CS", "*")) == ["1.2.3.1", "1.2.3.2"]
        assert found(("00741200", "CS", "LOW,HIGH")) == found(("00741200", "CS", "HIGH\\LOW")) == ["1.2.3.1", "1.2.3.2"]
    finally:
        store.close()


def test_ups_store_new_file_has_schema_version_1(tmp_path):
    store = SqliteWorkitemStore(str(tmp_path / "w.sqlite3"), synchronous="NORMAL")
    try:
        assert store.schema_version() == 1
    finally:
        store.close()
