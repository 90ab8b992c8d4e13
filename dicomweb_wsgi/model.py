"""The DICOM information model as this server indexes it: levels, UIDs, and indexed attributes.

The ``INDEXED`` table is the one list of attributes that have their own column in the index
(keyword -> level, VR, column). Storage backends take column names only from this table.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import Enum
from typing import Any

_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(value: str) -> bool:
    """PS3.5 §9.1: 1-64 characters, digits and dots, no empty components."""
    return 0 < len(value) <= 64 and _UID_RE.match(value) is not None


class Level(str, Enum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


# PS3.18 §12: the Non-Patient Instance resources and the SOP classes each one holds.
NPI_RESOURCES: dict[str, frozenset[str]] = {
    "color-palettes": frozenset({"1.2.840.10008.5.1.4.39.1"}),
    "hanging-protocols": frozenset({"1.2.840.10008.5.1.4.38.1"}),
    "defined-procedure-protocols": frozenset({"1.2.840.10008.5.1.4.1.1.200.1"}),
    "implant-templates": frozenset({
        "1.2.840.10008.5.1.4.43.1",  # Generic Implant Template
        "1.2.840.10008.5.1.4.44.1",  # Implant Assembly Template
        "1.2.840.10008.5.1.4.45.1",  # Implant Template Group
    }),
}
NON_PATIENT_SOP_CLASSES: frozenset[str] = frozenset().union(*NPI_RESOURCES.values())


@dataclass(frozen=True)
class IndexedAttribute:
    keyword: str
    tag: str       # 8 hex digits, upper case
    level: Level
    vr: str
    column: str


def _a(keyword: str, tag: str, level: Level, vr: str, column: str) -> IndexedAttribute:
    return IndexedAttribute(keyword, tag, level, vr, column)


S, SE, I = Level.STUDY, Level.SERIES, Level.INSTANCE
INDEXED: tuple[IndexedAttribute, ...] = (
    # Patient attributes are study-level attributes in QIDO-RS (PS3.18 §10.6.1.2.3).
    _a("PatientName", "00100010", S, "PN", "patient_name"),
    _a("PatientID", "00100020", S, "LO", "patient_id"),
    _a("IssuerOfPatientID", "00100021", S, "LO", "issuer_of_patient_id"),
    _a("PatientBirthDate", "00100030", S, "DA", "patient_birth_date"),
    _a("PatientSex", "00100040", S, "CS", "patient_sex"),
    _a("StudyInstanceUID", "0020000D", S, "UI", "study_uid"),
    _a("StudyDate", "00080020", S, "DA", "study_date"),
    _a("StudyTime", "00080030", S, "TM", "study_time"),
    _a("AccessionNumber", "00080050", S, "SH", "accession_number"),
    _a("ReferringPhysicianName", "00080090", S, "PN", "referring_physician_name"),
    _a("StudyID", "00200010", S, "SH", "study_id"),
    _a("StudyDescription", "00081030", S, "LO", "study_description"),
    _a("SeriesInstanceUID", "0020000E", SE, "UI", "series_uid"),
    _a("Modality", "00080060", SE, "CS", "modality"),
    _a("SeriesNumber", "00200011", SE, "IS", "series_number"),
    _a("SeriesDescription", "0008103E", SE, "LO", "series_description"),
    _a("SeriesDate", "00080021", SE, "DA", "series_date"),
    _a("SeriesTime", "00080031", SE, "TM", "series_time"),
    _a("BodyPartExamined", "00180015", SE, "CS", "body_part_examined"),
    _a("PerformedProcedureStepStartDate", "00400244", SE, "DA", "pps_start_date"),
    _a("PerformedProcedureStepStartTime", "00400245", SE, "TM", "pps_start_time"),
    _a("SOPInstanceUID", "00080018", I, "UI", "sop_uid"),
    _a("SOPClassUID", "00080016", I, "UI", "sop_class_uid"),
    _a("InstanceNumber", "00200013", I, "IS", "instance_number"),
    _a("Rows", "00280010", I, "US", "rows"),
    _a("Columns", "00280011", I, "US", "columns"),
    _a("BitsAllocated", "00280100", I, "US", "bits_allocated"),
    _a("NumberOfFrames", "00280008", I, "IS", "number_of_frames"),
    _a("ContentDate", "00080023", I, "DA", "content_date"),
    _a("ContentTime", "00080033", I, "TM", "content_time"),
    # Every level holds a value of its own (EVERY_LEVEL_TAGS); the instance's is a column so that
    # instance results can carry it without reading the stored metadata (migration 5).
    _a("TimezoneOffsetFromUTC", "00080201", I, "SH", "timezone_offset"),
)
INDEXED_BY_TAG: dict[str, IndexedAttribute] = {a.tag: a for a in INDEXED}

# Attributes kept at study level (besides all of group 0010, the patient): PS3.4 C.6.1.1.2/C.6.2.1.2.
STUDY_LEVEL_TAGS: frozenset[str] = frozenset({
    "00080020", "00080030", "00080050", "00080051", "00080090", "00080096", "0008009C", "00081030",
    "00081032", "00081048", "00081049", "00081060", "00081062", "00081080", "00081110", "0020000D",
    "00200010", "00321032", "00321033", "00321060", "00321064", "00324000", "00401012", "00102180",
    "001021B0", "00380010", "00380014", "00380060", "00380062", "00380500", "00400031", "00400032",
    "00400033",
    # Patient module outside group 0010 (PS3.3 C.7.1.1): Referenced Patient Sequence, Patient Identity
    # Removed, De-identification Method (Code Sequence); General Study: Consulting Physician
    # Identification Sequence; Clinical Trial Subject and Clinical Trial Study modules (C.7.1.3, C.7.2.3).
    "00081120", "00120062", "00120063", "00120064", "0008009D",
    "00120010", "00120020", "00120021", "00120030", "00120031", "00120040", "00120042", "00120081",
    "00120082", "00120050", "00120051",
})
# Attributes kept at series level: general series and general equipment modules (PS3.4 C.6.1.1.4).
SERIES_LEVEL_TAGS: frozenset[str] = frozenset({
    "00080021", "00080031", "00080060", "00080064", "00080070", "00080080", "00080081", "00081010",
    "0008103E", "00081040", "00081050", "00081052", "00081070", "00081072", "00081090", "00081111",
    "00180015", "00181000", "00181020", "00185100", "0020000E", "00200011", "00200060", "00400244",
    "00400245", "00400253", "00400254", "00400260", "00400275", "00080068", "00100024",
    # General Series (PS3.3 C.7.3.1): Protocol Name, Series Description Code Sequence, Related Series
    # Sequence, Smallest/Largest Pixel Value in Series, PPS End Date/Time, Comments on the PPS;
    # Clinical Trial Series (C.7.3.2); General Equipment (C.7.5.1): Institutional Department Type Code
    # Sequence, Device UID, Gantry ID, Spatial Resolution, Date/Time of Last Calibration.
    "00181030", "0008103F", "00081250", "00280108", "00280109", "00400250", "00400251", "00400280",
    "00120060", "00120071", "00120072", "00081041", "00181002", "00181008", "00181050", "00181200",
    "00181201",
})
# Attributes each level holds a value of its own: PS3.18 Tables 10.6.3-3/-4/-5 return TimezoneOffsetFromUTC
# with studies, series and instances. Stored with the series attributes (``level_of_tag``); the index
# copies them to the study too, so each level has the value of its latest stored instance.
EVERY_LEVEL_TAGS: frozenset[str] = frozenset({"00080201"})


def level_of_tag(tag: str) -> Level:
    """The level an attribute belongs to, by its 8-hex tag (the series for ``EVERY_LEVEL_TAGS``)."""
    if tag in STUDY_LEVEL_TAGS or tag.startswith("0010"):
        return Level.STUDY
    if tag in SERIES_LEVEL_TAGS or tag in EVERY_LEVEL_TAGS:
        return Level.SERIES
    return Level.INSTANCE


def column_value(element: dict[str, Any]) -> str | None:
    """The text the index keeps for one attribute: values joined with a backslash; PN alphabetic;
    dates as YYYYMMDD (the ACR-NEMA form YYYY.MM.DD, which PS3.5 asks readers to accept, would
    otherwise never meet a date range)."""
    values = element.get("Value")
    if not values:
        return None
    parts = []
    for value in values:
        if isinstance(value, dict):  # PN
            parts.append(str(value.get("Alphabetic", "")))
        elif isinstance(value, float) and value.is_integer():
            parts.append(str(int(value)))
        else:
            parts.append(str(value))
    text = "\\".join(parts)
    return text.replace(".", "") if element.get("vr") == "DA" else text


def protect_placeholders(json_text: str) -> str:
    """JSON text in which no value can pass for one of the server's placeholders (``%%BASE%%``,
    replaced by the public base URL when stored JSON is served): every ``%%`` is written
    ``%\\u0025``, which is the same string once parsed. Apply it before inserting a placeholder."""
    return json_text.replace("%%", "%\\u0025")


def fold_text(value: str) -> str:
    """Case- and accent-insensitive form of a string, for PN and fuzzy matching."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
