"""The UPS rules of PS3.4 Annex CC on their own: state machine, Transaction UID ownership, attribute
requirements for create, update and the final states, and the events each change causes."""
from __future__ import annotations

import json

import pytest
from pydicom.dataset import Dataset

from dicomweb_wsgi import workflow
from dicomweb_wsgi.storage.base import WorkitemRecord
from dicomweb_wsgi.workflow import EventType, State, UPSError, UPSStatus
from tests.test_ups import code, completion_dataset, minimal_workitem

NOW = "20240102120000"
OWNER = "1.2.826.0.1.3680043.10.1255.99"
OTHER = "1.2.826.0.1.3680043.10.1255.98"


def scheduled_attrs(**extra: object) -> dict:
    return minimal_workitem(**extra).to_json_dict()


def created(**extra: object) -> dict:
    change, _ = workflow.prepare_create(scheduled_attrs(**extra), "1.2.3.4", NOW)
    return json.loads(change.attrs_json)


def record(attrs: dict, subscribers: tuple[str, ...] = ()) -> WorkitemRecord:
    return WorkitemRecord("1.2.3.4", workflow.first(attrs, workflow.STATE), json.dumps(attrs), subscribers)


def performed_item() -> dict:
    """A complete performed procedure item without output (allowed: "may have no items")."""
    item = completion_dataset().UnifiedProcedureStepPerformedProcedureSequence[0]
    item.OutputInformationSequence = []
    return item.to_json_dict()


def in_state(state: str, **extra: object) -> dict:
    attrs = created(**extra)
    if state != State.SCHEDULED.value:
        attrs[workflow.TRANSACTION_UID] = {"vr": "UI", "Value": [OWNER]}
        attrs[workflow.STATE] = {"vr": "CS", "Value": [state]}
    return attrs


def status_of(call) -> int:
    try:
        return call().status
    except UPSError as exc:
        return exc.status


# -- Table CC.1.1-2 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("start, requested, tuid, expected", [
    ("SCHEDULED", "IN PROGRESS", OWNER, UPSStatus.SUCCESS),
    ("IN PROGRESS", "IN PROGRESS", OWNER, UPSStatus.ALREADY_IN_PROGRESS),
    ("IN PROGRESS", "IN PROGRESS", OTHER, UPSStatus.WRONG_TRANSACTION_UID),
    ("COMPLETED", "IN PROGRESS", OWNER, UPSStatus.MAY_NO_LONGER_BE_UPDATED),
    ("COMPLETED", "IN PROGRESS", OTHER, UPSStatus.WRONG_TRANSACTION_UID),
    ("CANCELED", "IN PROGRESS", OTHER, UPSStatus.WRONG_TRANSACTION_UID),
    ("SCHEDULED", "SCHEDULED", OWNER, UPSStatus.MAY_ONLY_BECOME_SCHEDULED_ON_CREATE),
    ("IN PROGRESS", "SCHEDULED", OWNER, UPSStatus.MAY_ONLY_BECOME_SCHEDULED_ON_CREATE),
    ("IN PROGRESS", "SCHEDULED", None, UPSStatus.MAY_ONLY_BECOME_SCHEDULED_ON_CREATE),
    ("COMPLETED", "SCHEDULED", OTHER, UPSStatus.MAY_ONLY_BECOME_SCHEDULED_ON_CREATE),
    ("SCHEDULED", "COMPLETED", OWNER, UPSStatus.NOT_IN_PROGRESS),
    ("SCHEDULED", "CANCELED", OWNER, UPSStatus.NOT_IN_PROGRESS),
    ("IN PROGRESS", "COMPLETED", OTHER, UPSStatus.WRONG_TRANSACTION_UID),
    ("IN PROGRESS", "CANCELED", OTHER, UPSStatus.WRONG_TRANSACTION_UID),
    ("COMPLETED", "COMPLETED", OWNER, UPSStatus.ALREADY_COMPLETED),
    ("CANCELED", "CANCELED", OWNER, UPSStatus.ALREADY_CANCELED),
    ("COMPLETED", "CANCELED", OWNER, UPSStatus.MAY_NO_LONGER_BE_UPDATED),
    ("CANCELED", "COMPLETED", OWNER, UPSStatus.MAY_NO_LONGER_BE_UPDATED),
    ("COMPLETED", "COMPLETED", OTHER, UPSStatus.WRONG_TRANSACTION_UID),
])
def test_state_change_follows_table_cc_1_1_2(start, requested, tuid, expected):
    current = record(in_state(start))
    assert status_of(lambda: workflow.apply_state_change(current, requested, tuid, NOW)) == expected


def test_state_change_claim_records_transaction_uid_and_reports_state():
    change = workflow.apply_state_change(record(in_state("SCHEDULED")), "IN PROGRESS", OWNER, NOW)
    attrs = json.loads(change.attrs_json)
    assert workflow.first(attrs, workflow.TRANSACTION_UID) == OWNER
    assert workflow.first(attrs, workflow.STATE) == "IN PROGRESS"
    [event] = change.events
    assert event.event_type == EventType.STATE_REPORT and event.to is None
    assert json.loads(event.attrs_json)["00741000"]["Value"] == ["IN PROGRESS"]


@pytest.mark.parametrize("state, tuid", [("IN PROGRESS", None), ("IN PROGRESS", ""), ("SCHEDULED", "not-a-uid"),
                                         ("SCHEDULED", None), ("COMPLETED", "not-a-uid")])
def test_state_change_without_valid_transaction_uid_is_c301(state, tuid):
    with pytest.raises(UPSError) as err:
        workflow.apply_state_change(record(in_state(state)), "IN PROGRESS", tuid, NOW)
    assert err.value.status == UPSStatus.WRONG_TRANSACTION_UID


def test_state_change_to_unknown_state_is_invalid():
    with pytest.raises(UPSError) as err:
        workflow.apply_state_change(record(in_state("IN PROGRESS")), "DONE", OWNER, NOW)
    assert err.value.status == UPSStatus.INVALID_ATTRIBUTE_VALUE


# -- final state requirements (CC.2.5.1.1) -----------------------------------------------------------

def test_complete_without_performed_procedure_is_c304_naming_what_is_missing():
    with pytest.raises(UPSError) as err:
        workflow.apply_state_change(record(in_state("IN PROGRESS")), "COMPLETED", OWNER, NOW)
    assert err.value.status == UPSStatus.FINAL_STATE_NOT_MET
    assert "Unified Procedure Step Performed Procedure Sequence" in err.value.detail


def test_complete_with_partial_performed_item_names_each_missing_attribute():
    attrs = in_state("IN PROGRESS")
    item = performed_item()
    del item["00404051"], item["00404019"]
    attrs[workflow.PERFORMED_SEQUENCE] = {"vr": "SQ", "Value": [item]}
    assert workflow.final_state_missing(attrs, "COMPLETED") == [
        "Performed Workitem Code Sequence", "Performed Procedure Step End DateTime"]


def test_complete_with_an_empty_performed_item_is_c304_naming_its_attributes():
    attrs = in_state("IN PROGRESS")
    attrs[workflow.PERFORMED_SEQUENCE] = {"vr": "SQ", "Value": [{}]}
    with pytest.raises(UPSError) as err:
        workflow.apply_state_change(record(attrs), "COMPLETED", OWNER, NOW)
    assert err.value.status == UPSStatus.FINAL_STATE_NOT_MET
    assert workflow.final_state_missing(attrs, "COMPLETED") == [
        "Performed Station Name Code Sequence", "Performed Procedure Step Start DateTime",
        "Performed Workitem Code Sequence", "Performed Procedure Step End DateTime", "Output Information Sequence"]


def test_complete_with_performed_item_succeeds_and_empty_output_sequence_is_enough():
    attrs = in_state("IN PROGRESS")
    attrs[workflow.PERFORMED_SEQUENCE] = {"vr": "SQ", "Value": [performed_item()]}
    change = workflow.apply_state_change(record(attrs), "COMPLETED", OWNER, NOW)
    assert workflow.first(json.loads(change.attrs_json), workflow.STATE) == "COMPLETED"


def test_cancel_needs_a_discontinuation_reason_but_fills_the_cancellation_time():
    attrs = in_state("IN PROGRESS")
    with pytest.raises(UPSError) as err:
        workflow.apply_state_change(record(attrs), "CANCELED", OWNER, NOW)
    assert err.value.status == UPSStatus.FINAL_STATE_NOT_MET
    assert err.value.detail == "missing: Procedure Step Discontinuation Reason Code Sequence"
    item = Dataset()
    item.ProcedureStepDiscontinuationReasonCodeSequence = [code("110514", "Incorrect worklist entry", "DCM")]
    item.ReasonForCancellation = "wrong patient"
    attrs[workflow.PROGRESS_SEQUENCE] = {"vr": "SQ", "Value": [item.to_json_dict()]}
    change = workflow.apply_state_change(record(attrs), "CANCELED", OWNER, NOW)
    stored = json.loads(change.attrs_json)
    assert stored["00741002"]["Value"][0]["00404052"]["Value"] == [NOW]
    report = json.loads(change.events[0].attrs_json)
    assert report["00741000"]["Value"] == ["CANCELED"]
    assert report["00741238"]["Value"] == ["wrong patient"]
    assert report["0074100E"]["Value"][0]["00080100"]["Value"] == ["110514"]


def test_cancel_does_not_need_performed_procedure_information():
    attrs = in_state("IN PROGRESS")
    assert "Unified Procedure Step Performed Procedure Sequence" not in workflow.final_state_missing(attrs, "CANCELED")


# -- N-CREATE -----------------------------------------------------------------------------------------

def test_create_sets_scp_attributes_adds_type2_and_warns_b300():
    change, added = workflow.prepare_create(scheduled_attrs(), "1.2.3.4", NOW)
    attrs = json.loads(change.attrs_json)
    assert change.status == UPSStatus.CREATED_WITH_MODIFICATIONS
    assert "(0010,0010)" in added and "(0040,A370)" in added
    assert attrs["00100010"] == {"vr": "PN"}
    assert attrs["00080016"]["Value"] == [workflow.UPS_PUSH_SOP_CLASS]
    assert attrs["00080018"]["Value"] == ["1.2.3.4"]
    assert attrs["00404010"]["Value"] == [NOW]
    assert attrs["00741202"]["Value"] == [workflow.DEFAULT_WORKLIST_LABEL]
    assert list(attrs) == sorted(attrs)


def test_create_with_every_type2_attribute_has_no_warning():
    attrs = scheduled_attrs()
    for tag, vr in workflow.CREATE_TYPE2.items():
        attrs.setdefault(tag, {"vr": vr})
    change, added = workflow.prepare_create(attrs, "1.2.3.4", NOW)
    assert change.status == UPSStatus.SUCCESS and added == []


@pytest.mark.parametrize("change, expected", [
    ({"ProcedureStepState": "IN PROGRESS"}, UPSStatus.NOT_SCHEDULED_ON_CREATE),
    ({"TransactionUID": OWNER}, UPSStatus.INVALID_ATTRIBUTE_VALUE),
    ({"ScheduledProcedureStepPriority": "URGENT"}, UPSStatus.INVALID_ATTRIBUTE_VALUE),
    ({"InputReadinessState": "SOON"}, UPSStatus.INVALID_ATTRIBUTE_VALUE),
    ({"ProcedureStepLabel": None}, UPSStatus.MISSING_ATTRIBUTE_VALUE),
])
def test_create_refuses_invalid_datasets(change, expected):
    ds = Dataset().from_json(scheduled_attrs())
    for key, value in change.items():
        setattr(ds, key, value)
    with pytest.raises(UPSError) as err:
        workflow.prepare_create(ds.to_json_dict(), "1.2.3.4", NOW)
    assert err.value.status == expected


def test_create_refuses_progress_items_and_well_known_uids():
    progress = Dataset()
    progress.ProcedureStepProgress = 10
    with pytest.raises(UPSError):
        workflow.prepare_create(scheduled_attrs(ProcedureStepProgressInformationSequence=[progress]), "1.2.3", NOW)
    with pytest.raises(UPSError):
        workflow.prepare_create(scheduled_attrs(), workflow.GLOBAL_SUBSCRIPTION_UID, NOW)


def test_create_with_station_reports_state_and_assignment():
    change, _ = workflow.prepare_create(scheduled_attrs(ScheduledStationNameCodeSequence=[code("CT1", "CT 1")]),
                                        "1.2.3", NOW)
    assert [e.event_type for e in change.events] == [EventType.STATE_REPORT, EventType.ASSIGNED]
    assigned = json.loads(change.events[1].attrs_json)
    assert assigned["00404025"]["Value"][0]["00080100"]["Value"] == ["CT1"]


# -- N-SET -------------------------------------------------------------------------------------------

def test_update_scheduled_refuses_a_transaction_uid_as_not_in_progress():
    with pytest.raises(UPSError) as err:
        workflow.apply_update(record(in_state("SCHEDULED")), {}, OWNER, NOW)
    assert err.value.status == UPSStatus.NOT_IN_PROGRESS


@pytest.mark.parametrize("tuid", [None, OTHER])
def test_update_in_progress_needs_the_owners_transaction_uid(tuid):
    with pytest.raises(UPSError) as err:
        workflow.apply_update(record(in_state("IN PROGRESS")), {}, tuid, NOW)
    assert err.value.status == UPSStatus.WRONG_TRANSACTION_UID


@pytest.mark.parametrize("state", ["COMPLETED", "CANCELED"])
def test_update_final_state_is_c300(state):
    with pytest.raises(UPSError) as err:
        workflow.apply_update(record(in_state(state)), {}, OWNER, NOW)
    assert err.value.status == UPSStatus.MAY_NO_LONGER_BE_UPDATED


def test_update_refuses_changing_the_patient_but_accepts_it_unchanged():
    attrs = in_state("SCHEDULED", PatientName="Doe^Jane")
    with pytest.raises(UPSError) as err:
        workflow.apply_update(record(attrs), {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Roe^Rick"}]}}, None, NOW)
    assert "Patient's Name" in err.value.detail
    change = workflow.apply_update(record(attrs), {"00100010": attrs["00100010"]}, None, NOW)
    assert change.events == []


def test_update_refuses_setting_the_state():
    with pytest.raises(UPSError) as err:
        workflow.apply_update(record(in_state("SCHEDULED")), {"00741000": {"vr": "CS", "Value": ["COMPLETED"]}},
                              None, NOW)
    assert err.value.status == UPSStatus.INVALID_ATTRIBUTE_VALUE


def test_update_events_for_readiness_assignment_and_progress():
    attrs = in_state("IN PROGRESS")
    progress = Dataset()
    progress.ProcedureStepProgress = 50
    progress.ProcedureStepProgressDescription = "half way"
    performer = Dataset()
    performer.HumanPerformerName = "Smith^Ann"
    changes = {"00404041": {"vr": "CS", "Value": ["INCOMPLETE"]},
               "00404034": {"vr": "SQ", "Value": [performer.to_json_dict()]},
               "00741002": {"vr": "SQ", "Value": [progress.to_json_dict()]}}
    change = workflow.apply_update(record(attrs), changes, OWNER, "20240102130000")
    assert [e.event_type for e in change.events] == [EventType.STATE_REPORT, EventType.ASSIGNED,
                                                    EventType.PROGRESS_REPORT]
    stored = json.loads(change.attrs_json)
    assert stored["00404010"]["Value"] == ["20240102130000"]
    assert stored["00741002"]["Value"][0]["00741004"]["Value"] == [50]


def test_update_without_relevant_change_causes_no_event():
    change = workflow.apply_update(record(in_state("SCHEDULED")),
                                   {"00741204": {"vr": "LO", "Value": ["renamed"]}}, None, NOW)
    assert change.events == []
    assert json.loads(change.attrs_json)["00741204"]["Value"] == ["renamed"]


# -- Request Cancel (CC.2.2) ------------------------------------------------------------------------

def test_cancel_request_on_scheduled_cancels_with_two_state_reports():
    change = workflow.apply_cancel_request(record(in_state("SCHEDULED")), {}, "REQUESTER", NOW)
    states = [json.loads(e.attrs_json)["00741000"]["Value"][0] for e in change.events]
    assert states == ["IN PROGRESS", "CANCELED"]
    attrs = json.loads(change.attrs_json)
    item = attrs["00741002"]["Value"][0]
    assert item["0074100E"]["Value"][0]["00080100"]["Value"] == ["110513"]
    assert workflow.first(attrs, workflow.TRANSACTION_UID).startswith("2.25.")


def test_cancel_request_on_in_progress_tells_subscribers_who_asked():
    request = {"00741238": {"vr": "LT", "Value": ["patient left"]}}
    change = workflow.apply_cancel_request(record(in_state("IN PROGRESS"), ("PERFORMER",)), request, "RIS", NOW)
    [event] = change.events
    report = json.loads(event.attrs_json)
    assert event.event_type == EventType.CANCEL_REQUESTED
    assert report["00741236"]["Value"] == ["RIS"] and report["00741238"]["Value"] == ["patient left"]
    assert change.attrs_json is None


@pytest.mark.parametrize("state, subscribers, expected", [
    ("IN PROGRESS", (), UPSStatus.PERFORMER_CANNOT_BE_CONTACTED),
    ("COMPLETED", ("X",), UPSStatus.COMPLETED_CANNOT_CANCEL),
    ("CANCELED", (), UPSStatus.ALREADY_CANCELED),
])
def test_cancel_request_refusals_and_warnings(state, subscribers, expected):
    current = record(in_state(state), subscribers)
    assert status_of(lambda: workflow.apply_cancel_request(current, {}, "RIS", NOW)) == expected


# -- event reports and views ---------------------------------------------------------------------------

def test_event_report_carries_the_n_event_report_command_elements():
    report = workflow.event_report("1.2.3.4", EventType.PROGRESS_REPORT, {"00741002": {"vr": "SQ"}}, 70000)
    assert report["00000002"]["Value"] == [workflow.UPS_PUSH_SOP_CLASS]
    assert report["00000100"]["Value"] == [0x0100]
    assert report["00000110"]["Value"] == [70000 & 0xFFFF]
    assert report["00001000"]["Value"] == ["1.2.3.4"]
    assert report["00001002"]["Value"] == [3]
    assert list(report) == sorted(report)


def test_scp_status_change_is_a_warm_restart():
    event = workflow.scp_status_event()
    report = json.loads(event.attrs_json)
    assert event.workitem_uid == workflow.GLOBAL_SUBSCRIPTION_UID
    assert report["00741242"]["Value"] == ["RESTARTED"] and report["00741244"]["Value"] == ["WARM START"]


def test_views_never_show_the_transaction_uid():
    attrs = in_state("IN PROGRESS")
    assert workflow.TRANSACTION_UID not in workflow.retrieve_view(attrs)
    assert workflow.TRANSACTION_UID not in workflow.search_view(attrs, None, [])
    assert workflow.TRANSACTION_UID not in workflow.search_view(attrs, [workflow.TRANSACTION_UID], [])


def test_describe_gives_the_status_code_in_dicom_notation():
    assert workflow.describe(UPSStatus.WRONG_TRANSACTION_UID, "x") == \
        "C301H: The correct Transaction UID was not provided (x)"
