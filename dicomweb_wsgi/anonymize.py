"""De-identification per the Basic Application Level Confidentiality Profile (PS3.15 Annex E).

Used by WADO-URI ``anonymize=yes`` (PS3.18 §9.4.1.2.1). ``deidentify`` applies the profile's
action codes (PS3.15 Table E.1-1, Basic Profile column) to a data set, in the main data set and
in every sequence item:

* ``X`` removes, ``Z`` empties, ``D`` puts a dummy value of the element's VR, ``U`` replaces a
  UID with a new one — the same original UID always gives the same new UID within one call
  (so references inside the object stay consistent), and different calls give unrelated UIDs;
* the conditional codes are resolved so that common IODs stay valid without keeping values:
  ``Z/D``, ``X/Z`` and ``X/Z/D`` empty the value (a Type 2 or 3 attribute may be empty) except
  the Type 1 Content Date/Time of SR documents, which get a dummy; ``X/D`` gets a dummy;
  ``X/Z/U*`` sequences keep their items with every contained attribute treated by the profile;
* private attributes, curve data and overlay data and comments are removed (the Retain Safe
  Private Option is not offered);
* attributes not in the table are kept; sequences are cleaned recursively ("K").

Then Patient Identity Removed is YES, De-identification Method and its Code Sequence (CID 7050
``113100``) say what was done, and Longitudinal Temporal Information Modified is REMOVED.
``write_deidentified`` writes a new PS3.10 file whose File Meta Information is rebuilt (the
original preamble and meta are not carried over, PS3.15 E.1.1 item 7). Pixel data is never
touched: burned-in text is not cleaned, so callers refuse images marked Burned In Annotation YES.
"""
from __future__ import annotations

import os
import uuid
from typing import Any, BinaryIO, Callable

import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import UID

__all__ = ["BASIC_PROFILE", "IMPLEMENTATION_CLASS_UID", "deidentify", "write_deidentified",
           "has_burned_in_annotation"]


def _derived_uid(name: str) -> str:
    """A UID under 2.25 (PS3.5 B.2) from a name-based UUID: the same name, the same UID."""
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


IMPLEMENTATION_CLASS_UID = _derived_uid("dicomweb_wsgi implementation")
IMPLEMENTATION_VERSION_NAME = "DICOMWEB_WSGI"
METHOD_TEXT = "PS3.15 Basic Profile; pixel data not cleaned"

# PS3.15 Table E.1-1, Basic Profile column, for the attributes found in common IODs.
_ACTIONS: dict[str, tuple[str, ...]] = {
    "Z": (
        "AccessionNumber", "ContentCreatorName", "FillerOrderNumberImagingServiceRequest",
        "PatientBirthDate", "PatientID", "PatientName", "PatientSex",
        "PlacerOrderNumberImagingServiceRequest", "ReferringPhysicianName", "StudyDate",
        "StudyID", "StudyTime", "VerifyingObserverIdentificationCodeSequence",
        "ClinicalTrialProtocolName", "ClinicalTrialSiteID", "ClinicalTrialSiteName",
        "ClinicalTrialTimePointID", "ClinicalTrialCoordinatingCenterName",
    ),
    "Z/D": ("ContentDate", "ContentTime", "ContrastBolusAgent"),
    "X/Z": ("AcquisitionDate", "AcquisitionTime", "ReferencedStudySequence",
            "RequestedProcedureDescription", "PatientSexNeutered", "ReviewerName"),
    "X/D": ("AcquisitionDateTime", "SeriesDate", "SeriesTime", "InstanceCreationDate",
            "ProtocolName", "AcquisitionDeviceProcessingDescription", "OperatorIdentificationSequence"),
    "X/Z/D": ("InstitutionName", "InstitutionCodeSequence", "StationName", "OperatorsName",
              "DeviceSerialNumber", "InstanceCreationTime",
              "ReferencedPerformedProcedureStepSequence"),
    "X/Z/U*": ("ReferencedImageSequence", "SourceImageSequence"),
    "D": (
        "PersonName", "VerifyingObserverName", "VerifyingObserverSequence",
        "ClinicalTrialSponsorName", "ClinicalTrialProtocolID", "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID", "ClinicalTrialProtocolEthicsCommitteeName",
    ),
    "U": (
        "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "MediaStorageSOPInstanceUID",
        "FrameOfReferenceUID", "SynchronizationFrameOfReferenceUID", "InstanceCreatorUID",
        "ReferencedSOPInstanceUID", "ReferencedFrameOfReferenceUID", "RelatedFrameOfReferenceUID",
        "IrradiationEventUID", "ConcatenationUID", "DimensionOrganizationUID", "DeviceUID",
        "StorageMediaFileSetUID", "TargetUID", "TransactionUID", "FiducialUID",
        "DoseReferenceUID", "PaletteColorLookupTableUID", "LargePaletteColorLookupTableUID",
        "ObservationUID", "UID", "SpecimenUID", "TrackingUID", "CreatorVersionUID",
        "ContextGroupExtensionCreatorUID", "TemplateExtensionCreatorUID",
        "TemplateExtensionOrganizationUID", "FailedSOPInstanceUIDList",
        "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID",
        "PresentationDisplayCollectionUID", "PresentationSequenceCollectionUID",
    ),
    "X": (
        # Patient
        "IssuerOfPatientID", "PatientBirthTime", "OtherPatientIDs", "OtherPatientIDsSequence",
        "OtherPatientNames", "PatientBirthName", "PatientAge", "PatientSize", "PatientWeight",
        "PatientAddress", "PatientMotherBirthName", "MilitaryRank", "BranchOfService",
        "MedicalRecordLocator", "MedicalAlerts", "Allergies", "CountryOfResidence",
        "RegionOfResidence", "PatientTelephoneNumbers", "PatientTelecomInformation",
        "EthnicGroup", "Occupation", "SmokingStatus", "AdditionalPatientHistory",
        "PregnancyStatus", "LastMenstrualDate", "PatientReligiousPreference", "PatientComments",
        "PatientInsurancePlanCodeSequence", "PatientPrimaryLanguageCodeSequence",
        "PatientPrimaryLanguageModifierCodeSequence", "ResponsiblePerson",
        "ResponsibleOrganization", "ReferencedPatientSequence", "ReferencedPatientPhotoSequence",
        "PatientTransportArrangements", "PatientState", "SpecialNeeds", "PatientInstitutionResidence",
        "CurrentPatientLocation", "VisitComments",
        # Visit and admission
        "AdmissionID", "IssuerOfAdmissionIDSequence", "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence", "AdmittingDate", "AdmittingTime",
        "DischargeDiagnosisDescription", "ServiceEpisodeID", "ServiceEpisodeDescription",
        "IssuerOfServiceEpisodeIDSequence",
        # People and organisations
        "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence",
        "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
        "ReferringPhysicianIdentificationSequence", "ConsultingPhysicianName",
        "ConsultingPhysicianIdentificationSequence", "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence", "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence", "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence", "RequestingPhysician",
        "RequestingService", "ScheduledPerformingPhysicianName", "VerifyingOrganization",
        "ContentCreatorIdentificationCodeSequence",
        # Study, request and procedure step
        "StudyDescription", "SeriesDescription", "ReasonForStudy", "StudyComments",
        "RequestAttributesSequence", "RequestedProcedureID", "RequestedProcedureLocation",
        "RequestedProcedureComments", "ReasonForTheRequestedProcedure",
        "ImagingServiceRequestComments", "RequestedContrastAgent",
        "PerformedProcedureStepID", "PerformedProcedureStepDescription",
        "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
        "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime", "PerformedLocation",
        "PerformedStationAETitle", "PerformedStationName", "PerformedStationNameCodeSequence",
        "CommentsOnThePerformedProcedureStep", "ScheduledProcedureStepID",
        "ScheduledProcedureStepDescription", "ScheduledProcedureStepStartDate",
        "ScheduledProcedureStepEndDate", "ScheduledStationAETitle", "ScheduledStationName",
        "ScheduledProcedureStepLocation",
        "ClinicalTrialTimePointDescription", "ClinicalTrialSeriesDescription",
        "ClinicalTrialSeriesID", "ClinicalTrialProtocolEthicsCommitteeApprovalNumber",
        # Equipment
        "PlateID", "DetectorID", "GantryID", "CassetteID", "GeneratorID",
        # Free text and content
        "ImageComments", "AcquisitionComments", "DerivationDescription", "FrameComments",
        "TextValue", "DateTime", "Date", "Time", "ContentSequence", "TimezoneOffsetFromUTC",
        "StorageMediaFileSetID",
        # Security and history
        "DigitalSignaturesSequence", "MACParametersSequence", "EncryptedAttributesSequence",
        "OriginalAttributesSequence", "DataSetTrailingPadding",
    ),
}


def _table() -> dict[int, str]:
    table: dict[int, str] = {}
    for action, keywords in _ACTIONS.items():
        for keyword in keywords:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise RuntimeError(f"unknown DICOM keyword in the profile table: {keyword}")
            table[tag] = action
    return table


BASIC_PROFILE: dict[int, str] = _table()

_SR_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
# PS3.3 C.17.2: Content Date and Time are Type 1 in SR documents, so "Z/D" is a dummy there.
_SR_TYPE1 = frozenset({tag_for_keyword("ContentDate"), tag_for_keyword("ContentTime")})
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_DUMMY_TEXT = "ANONYMIZED"
_DUMMIES: dict[str, Any] = {
    "DA": "19000101", "TM": "000000", "DT": "19000101000000", "AS": "000Y",
    "DS": "0", "IS": "0", "US": 0, "SS": 0, "UL": 0, "SL": 0, "UV": 0, "SV": 0,
    "FL": 0.0, "FD": 0.0, "OB": b"\x00\x00", "OW": b"\x00\x00", "UN": b"\x00\x00",
}


class _Deidentifier:
    """One de-identification: holds the UID mapping so replacements are consistent."""

    def __init__(self, salt: bytes, sr_document: bool) -> None:
        self.salt = salt.hex()
        self.sr_document = sr_document
        self.uids: dict[str, str] = {}

    def new_uid(self, uid: str) -> str:
        uid = uid.strip().rstrip("\x00")
        if uid not in self.uids:
            self.uids[uid] = _derived_uid(f"{self.salt}:{uid}")
        return self.uids[uid]

    def clean(self, ds: Dataset) -> None:
        for tag in list(ds.keys()):
            tag = int(tag)
            group, element = tag >> 16, tag & 0xFFFF
            if group % 2 == 1 or 0x5000 <= group <= 0x50FF or (
                    0x6000 <= group <= 0x60FF and element in (0x3000, 0x4000)):
                del ds[tag]
                continue
            if tag in _PIXEL_TAGS:
                continue
            action = BASIC_PROFILE.get(tag)
            if action is None:
                elem = ds[tag]
                if elem.VR == "SQ":
                    self.clean_items(elem)
                continue
            self.apply(ds, tag, self.resolve(tag, action))

    def clean_items(self, elem: DataElement) -> None:
        for item in elem.value or ():
            self.clean(item)

    def resolve(self, tag: int, action: str) -> str:
        if action in ("Z/D", "X/Z/D"):
            return "D" if self.sr_document and tag in _SR_TYPE1 else "Z"
        if action == "X/Z":
            return "Z"
        if action == "X/D":
            return "D"
        if action == "X/Z/U*":
            return "K"
        return action

    def apply(self, ds: Dataset, tag: int, action: str) -> None:
        elem = ds[tag]
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = Sequence() if elem.VR == "SQ" else None
        elif action == "U":
            values = elem.value
            if isinstance(values, (list, tuple, MultiValue)):
                elem.value = [self.new_uid(str(v)) for v in values]
            elif values:
                elem.value = self.new_uid(str(values))
        elif action == "D":
            if elem.VR == "SQ":
                self.clean_items(elem)
            elif elem.VR == "UI":
                elem.value = self.new_uid(str(elem.value or ""))
            else:
                elem.value = _DUMMIES.get(elem.VR, _DUMMY_TEXT)
        elif elem.VR == "SQ":  # "K": keep, cleaning the items
            self.clean_items(elem)


def has_burned_in_annotation(ds: Dataset) -> bool:
    """True when the image says identifying text may be burned into its pixels."""
    return str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"


def deidentify(ds: Dataset, salt: bytes | None = None) -> dict[str, str]:
    """De-identify ``ds`` in place; returns the UID mapping used (original -> new).

    ``salt`` seeds the UID replacements: the same salt and UID give the same new UID; by default
    a fresh random salt, so two calls cannot be linked through their UIDs.
    """
    worker = _Deidentifier(salt if salt is not None else os.urandom(16),
                           str(ds.get("SOPClassUID", "")).startswith(_SR_PREFIX))
    worker.clean(ds)
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = METHOD_TEXT
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    ds.DeidentificationMethodCodeSequence = Sequence([code])
    ds.LongitudinalTemporalInformationModified = "REMOVED"
    return dict(worker.uids)


def write_deidentified(read: Callable[[], Dataset], transfer_syntax: str, out: BinaryIO,
                       salt: bytes | None = None) -> None:
    """Read a data set (already in ``transfer_syntax``), de-identify it and write it to ``out``
    as a PS3.10 file with new File Meta Information and a zero preamble."""
    ds = read()
    deidentify(ds, salt)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "")
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    ds.preamble = None
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
