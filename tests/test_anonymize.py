"""WADO-URI anonymize=yes: the output checked attribute by attribute against the PS3.15 Table E.1-1
Basic Profile actions (written out here, independently of dicomweb_wsgi.anonymize)."""
from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dicomweb_wsgi.anonymize import deidentify
from dicomweb_wsgi.model import is_valid_uid
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, store
from .test_wado import _store_file
from .test_wado_uri import wado_url

# keyword -> (value in the test data set, Basic Profile action code from PS3.15 Table E.1-1).
PROFILE_CASES: dict[str, tuple[object, str]] = {
    "PatientName": ("Doe^John", "Z"),
    "PatientID": ("PID-1", "Z"),
    "PatientBirthDate": ("19700101", "Z"),
    "PatientSex": ("M", "Z"),
    "AccessionNumber": ("ACC-1", "Z"),
    "StudyID": ("S1", "Z"),
    "StudyDate": ("20240102", "Z"),
    "StudyTime": ("101500", "Z"),
    "ReferringPhysicianName": ("Ref^Doctor", "Z"),
    "IssuerOfPatientID": ("HOSPITAL", "X"),
    "PatientBirthTime": ("101010", "X"),
    "OtherPatientIDs": ("OTHER-9", "X"),
    "OtherPatientNames": ("Roe^Richard", "X"),
    "PatientAge": ("054Y", "X"),
    "PatientSize": ("1.80", "X"),
    "PatientWeight": ("80", "X"),
    "PatientAddress": ("1 Main Street", "X"),
    "PatientTelephoneNumbers": ("555-0100", "X"),
    "MilitaryRank": ("Captain", "X"),
    "EthnicGroup": ("GROUP", "X"),
    "Occupation": ("Engineer", "X"),
    "AdditionalPatientHistory": ("history", "X"),
    "PatientComments": ("comment", "X"),
    "MedicalAlerts": ("alert", "X"),
    "InstitutionName": ("General Hospital", "X/Z/D"),
    "InstitutionAddress": ("2 Hospital Road", "X"),
    "InstitutionalDepartmentName": ("Radiology", "X"),
    "StationName": ("CT01", "X/Z/D"),
    "OperatorsName": ("Op^Erator", "X/Z/D"),
    "PerformingPhysicianName": ("Per^Former", "X"),
    "NameOfPhysiciansReadingStudy": ("Rea^Der", "X"),
    "PhysiciansOfRecord": ("Rec^Ord", "X"),
    "RequestingPhysician": ("Req^Uester", "X"),
    "StudyDescription": ("Test study", "X"),
    "SeriesDescription": ("Test series", "X"),
    "ProtocolName": ("Head routine", "X/D"),
    "SeriesDate": ("20240102", "X/D"),
    "SeriesTime": ("101600", "X/D"),
    "AcquisitionDate": ("20240102", "X/Z"),
    "AcquisitionTime": ("101700", "X/Z"),
    "ContentDate": ("20240102", "Z/D"),
    "ContentTime": ("101800", "Z/D"),
    "InstanceCreationDate": ("20240102", "X/D"),
    "DeviceSerialNumber": ("SN-123", "X/Z/D"),
    "ImageComments": ("patient moved", "X"),
    "AcquisitionComments": ("none", "X"),
    "DerivationDescription": ("derived", "X"),
    "PerformedProcedureStepID": ("PPS-1", "X"),
    "PerformedProcedureStepDescription": ("CT head", "X"),
    "PerformedProcedureStepStartDate": ("20240102", "X"),
    "RequestedProcedureID": ("RP-1", "X"),
    "AdmissionID": ("ADM-1", "X"),
    "TimezoneOffsetFromUTC": ("+0100", "X"),
    "StudyInstanceUID": (None, "U"),
    "SeriesInstanceUID": (None, "U"),
    "SOPInstanceUID": (None, "U"),
    "FrameOfReferenceUID": ("1.2.826.0.1.3680043.8.498.1", "U"),
    "IrradiationEventUID": ("1.2.826.0.1.3680043.8.498.2", "U"),
    # Not in the table: kept.
    "SOPClassUID": (None, "K"),
    "Modality": (None, "K"),
    "Manufacturer": ("ACME", "K"),
    "BodyPartExamined": ("HEAD", "K"),
    "SliceThickness": ("1.0", "K"),
    "Rows": (None, "K"),
    "Columns": (None, "K"),
    "SpecificCharacterSet": (None, "K"),
}


def rich_dataset() -> Dataset:
    """An image carrying every attribute of PROFILE_CASES, references, private and overlay data."""
    values = {k: v for k, (v, _) in PROFILE_CASES.items() if v is not None}
    ds = make_dataset(rows=8, columns=8, **values)
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID  # a reference to itself: must stay consistent
    other = Dataset()
    other.ReferencedSOPClassUID = ds.SOPClassUID
    other.ReferencedSOPInstanceUID = new_uid()
    ds.SourceImageSequence = Sequence([ref, other])
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study_ref.ReferencedSOPInstanceUID = ds.StudyInstanceUID
    ds.ReferencedStudySequence = Sequence([study_ref])
    request = Dataset()
    request.RequestedProcedureID = "RP-1"
    request.ScheduledProcedureStepID = "SPS-1"
    ds.RequestAttributesSequence = Sequence([request])
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "T-A0100", "SRT", "Brain"
    ds.AnatomicRegionSequence = Sequence([code])
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private patient data")
    ds.add_new(0x60003000, "OW", b"\x00\x01" * 8)
    ds.add_new(0x60004000, "LT", "overlay comment")
    ds.file_meta.SourceApplicationEntityTitle = "MODALITY_AE"
    return ds


@pytest.fixture
def stored(dicomweb_client):
    ds = rich_dataset()
    store(dicomweb_client, [ds])
    return ds


def anonymized(client, ds: Dataset, **params: object) -> tuple[Dataset, bytes]:
    params.setdefault("contentType", "application/dicom")
    resp = client.get(wado_url(ds, anonymize="yes", **params), status=200)
    assert resp.headers["Content-Type"].startswith("application/dicom")
    return pydicom.dcmread(io.BytesIO(resp.body)), resp.body


def _empty(elem) -> bool:
    return elem.value in (None, "", b"") or (elem.VR == "SQ" and len(elem.value) == 0)


def _check(got: Dataset, original: Dataset, keyword: str, action: str) -> None:
    present = keyword in got
    elem = got[keyword] if present else None
    old = original[keyword].value
    replaced = present and not _empty(elem) and elem.value != old
    if action == "X":
        assert not present, keyword
    elif action == "Z":
        assert present and _empty(elem), keyword
    elif action == "D":
        assert replaced, keyword
    elif action == "U":
        assert replaced and is_valid_uid(str(elem.value)), keyword
    elif action == "K":
        assert present and elem.value == old, keyword
    else:  # conditional codes: any of the listed actions, never the original value
        allowed = set(action.split("/"))
        assert (not present and "X" in allowed) or (present and _empty(elem) and "Z" in allowed) \
            or (replaced and "D" in allowed), keyword


def test_anonymize_attributes_follow_basic_profile(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored, transferSyntax="*")
    for keyword, (_, action) in PROFILE_CASES.items():
        _check(got, stored, keyword, action)


def test_anonymize_marks_identity_removed_and_method(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored)
    assert got.PatientIdentityRemoved == "YES"
    assert got.DeidentificationMethod
    code = got.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")
    assert got.LongitudinalTemporalInformationModified == "REMOVED"


def test_anonymize_keeps_pixel_data_untouched(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored, transferSyntax="*")
    assert got.PixelData == stored.PixelData


def test_anonymize_removes_private_and_overlay_data(dicomweb_client, stored):
    got, body = anonymized(dicomweb_client, stored)
    assert not any(elem.tag.is_private for elem in got)
    assert 0x60003000 not in got and 0x60004000 not in got
    assert b"private patient data" not in body and b"Doe^John" not in body


def test_anonymize_cleans_sequences_and_keeps_references_consistent(dicomweb_client, stored):
    got, _ = anonymized(dicomweb_client, stored)
    refs = got.SourceImageSequence  # X/Z/U*: kept here, with the UIDs inside replaced
    assert refs[0].ReferencedSOPInstanceUID == got.SOPInstanceUID != stored.SOPInstanceUID
    assert refs[1].ReferencedSOPInstanceUID != stored.SourceImageSequence[1].ReferencedSOPInstanceUID
    assert refs[0].ReferencedSOPClassUID == stored.SOPClassUID
    assert "RequestAttributesSequence" not in got
    assert all(item.ReferencedSOPInstanceUID != stored.StudyInstanceUID
               for item in got.get("ReferencedStudySequence", []))
    assert got.AnatomicRegionSequence[0].CodeMeaning == "Brain"  # K: not in the table


def test_anonymize_replaces_file_meta_and_preamble(dicomweb_client, stored):
    got, body = anonymized(dicomweb_client, stored)
    assert body[:128] == b"\x00" * 128 and body[128:132] == b"DICM"
    assert got.file_meta.MediaStorageSOPInstanceUID == got.SOPInstanceUID
    assert "SourceApplicationEntityTitle" not in got.file_meta


def test_anonymize_uids_differ_between_requests(dicomweb_client, stored):
    first, _ = anonymized(dicomweb_client, stored)
    second, _ = anonymized(dicomweb_client, stored)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.StudyInstanceUID != second.StudyInstanceUID


def test_anonymize_with_transcoding_keeps_pixel_values(dicomweb_client):
    original, _ = _store_file(dicomweb_client, "MR_small_implicit.dcm")
    got, _ = anonymized(dicomweb_client, original)
    assert got.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert got.PatientName == "" and got.PatientIdentityRemoved == "YES"
    assert np.array_equal(got.pixel_array, original.pixel_array)


def test_anonymize_structured_report_removes_content(dicomweb_client):
    original, _ = _store_file(dicomweb_client, "test-SR.dcm")
    got, _ = anonymized(dicomweb_client, original)
    assert "ContentSequence" not in got  # X in the Basic Profile (no Clean Structured Content Option)
    assert got.ContentDate and got.ContentDate != original.get("ContentDate")  # Type 1 in SR: dummy


def test_anonymize_burned_in_annotation_is_refused(dicomweb_client):
    ds = make_dataset(BurnedInAnnotation="YES")
    store(dicomweb_client, [ds])
    resp = dicomweb_client.get(wado_url(ds, contentType="application/dicom", anonymize="yes"), status=406)
    assert "BurnedInAnnotation" in resp.text


@pytest.mark.parametrize("value", ["no", "true", ""])
def test_anonymize_other_value_is_400(dicomweb_client, stored, value):
    resp = dicomweb_client.get(wado_url(stored, contentType="application/dicom", anonymize=value), status=400)
    assert "anonymize" in resp.text


def test_deidentify_same_salt_gives_same_uids():
    a = rich_dataset()
    b = pydicom.dcmread(io.BytesIO(dataset_bytes(a)))
    deidentify(a, salt=b"fixed")
    deidentify(b, salt=b"fixed")
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.StudyInstanceUID == b.StudyInstanceUID


def test_deidentify_returns_the_uid_mapping():
    ds = rich_dataset()
    study = ds.StudyInstanceUID
    mapping = deidentify(ds)
    assert mapping[study] == ds.StudyInstanceUID
    assert len(set(mapping.values())) == len(mapping)
