"""QIDO-RS through HTTP: the six resources, matching per rule and level, includefield, paging,
media types, character sets, and the query strings real clients send."""
from __future__ import annotations

import io
from urllib.parse import quote

import pydicom
import pytest
from defusedxml.ElementTree import fromstring as parse_xml
from pydicom.data import get_charset_files
from pydicom.dataset import Dataset

from dicomweb_wsgi.testing import dataset_bytes, make_client, make_dataset, new_uid, parse_multipart, store

from .serverproc import ServerProcess

XML_NS = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
JSON_ACCEPT = {"Accept": "application/dicom+json"}
XML_ACCEPT = {"Accept": 'multipart/related; type="application/dicom+xml"'}
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def _item(**attributes) -> Dataset:
    ds = Dataset()
    for key, value in attributes.items():
        setattr(ds, key, value)
    return ds


def _private(ds: Dataset) -> Dataset:
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "secret")
    return ds


class Archive:
    """Three studies with known attributes; ``uids`` maps labels (A, A1, A1-2, ...) to UIDs."""

    def __init__(self, client) -> None:
        self.client = client
        self.uids: dict[str, str] = {}
        self.labels: dict[str, str] = {}
        for label in ("A", "A1", "A2", "B", "B1", "C", "C1", "A1-1", "A1-2", "A2-1", "B1-1", "C1-1", "C1-2", "C1-3"):
            self.uids[label] = new_uid()
            self.labels[self.uids[label]] = label
        study_a = dict(PatientName="DOE^JOHN^^^", PatientID="PID-A", StudyDate="20200115", StudyTime="101500",
                       AccessionNumber="ACC-A", ReferringPhysicianName="Ref^One", StudyID="SA",
                       StudyDescription="CT CHEST", OtherPatientNames="Johnny^Doe")
        study_b = dict(PatientName="Müller^Hans", PatientID="PID-B", StudyDate="20211231", StudyTime="0800",
                       AccessionNumber="ACC-B", ReferringPhysicianName="Ref^Two", StudyID="SB",
                       StudyDescription="MR BRAIN")
        study_c = dict(PatientName="Smith^Anna", PatientID="PID-C", StudyDate="", StudyTime="", AccessionNumber="",
                       ReferringPhysicianName="", StudyID="SC", StudyDescription="CT ABDOMEN")
        requests = [_item(ScheduledProcedureStepID="SPS1", RequestedProcedureID="RP1"),
                    _item(ScheduledProcedureStepID="SPS2", RequestedProcedureID="RP2")]
        u = self.uids
        datasets = [
            _private(make_dataset(study_uid=u["A"], series_uid=u["A1"], sop_uid=u["A1-1"], InstanceNumber=1,
                                  SeriesNumber=1, RequestAttributesSequence=requests, OperatorsName="Tech^Alice",
                                  PerformedProcedureStepStartDate="20200115",
                                  ImageType=["ORIGINAL", "PRIMARY", "AXIAL"], **study_a)),
            _private(make_dataset(study_uid=u["A"], series_uid=u["A1"], sop_uid=u["A1-2"], InstanceNumber=2,
                                  SeriesNumber=1, RequestAttributesSequence=requests, OperatorsName="Tech^Alice",
                                  PerformedProcedureStepStartDate="20200115", ImageType=["ORIGINAL", "PRIMARY"],
                                  **study_a)),
            make_dataset(study_uid=u["A"], series_uid=u["A2"], sop_uid=u["A2-1"], SeriesNumber=2, modality="MR",
                         sop_class_uid=MR_STORAGE, SliceThickness="1.5", **study_a),
            make_dataset(study_uid=u["B"], series_uid=u["B1"], sop_uid=u["B1-1"], SeriesNumber=1, modality="MR",
                         sop_class_uid=MR_STORAGE, ImageType=["DERIVED", "SECONDARY"],
                         AcquisitionDateTime="20211231080000.5+0100", **study_b),
        ]
        for n, label in enumerate(("C1-3", "C1-1", "C1-2")):  # stored out of order on purpose
            datasets.append(make_dataset(study_uid=u["C"], series_uid=u["C1"], sop_uid=u[label], SeriesNumber=3,
                                         InstanceNumber=int(label[-1]), rows=32, columns=32, **study_c))
        store(client, datasets)

    def get(self, url: str, status: int = 200, headers: dict | None = None):
        return self.client.get(url, headers=headers or JSON_ACCEPT, status=status)

    def found(self, url: str, tag: str) -> list[str]:
        """The labels of the results' ``tag`` UIDs, in response order."""
        return [self.labels[r[tag]["Value"][0]] for r in self.get(url).json]


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    client = make_client(tmp_path_factory.mktemp("qido") / "data")
    try:
        yield Archive(client)
    finally:
        client.app.close()


def _value(result: dict, tag: str):
    values = result.get(tag, {}).get("Value")
    return values[0] if values else None


# -- matching, per rule and level ------------------------------------------------------------------

STUDY_MATCHES = [
    # single value, by keyword and by tag; case-sensitive except PN
    ("PatientID=PID-A", {"A"}),
    ("00100020=PID-B", {"B"}),
    ("PatientID=pid-a", set()),
    ("AccessionNumber=ACC-A", {"A"}),
    ("StudyID=SB", {"B"}),
    ("StudyDate=20200115", {"A"}),
    # wildcards
    ("PatientID=PID-%2A", {"A", "B", "C"}),
    ("PatientID=PID-%3F", {"A", "B", "C"}),
    ("PatientID=P%3FD-A", {"A"}),
    ("StudyDescription=%2ABRAIN", {"B"}),
    # PN: case- and accent-insensitive, trailing empty components ignored
    ("PatientName=Doe%5EJohn", {"A"}),
    ("PatientName=doe%5Ejohn%5E", {"A"}),
    ("PatientName=DOE", set()),
    ("PatientName=doe*", {"A"}),
    ("PatientName=*smi*", {"C"}),
    ("PatientName=M%C3%BCller*", {"B"}),
    ("PatientName=muller%5Ehans", {"B"}),
    ("ReferringPhysicianName=REF%5EONE", {"A"}),
    ("OtherPatientNames=johnny*", {"A"}),                 # a PN without a column
    # fuzzy matching
    ("PatientName=anna", set()),
    ("PatientName=anna&fuzzymatching=true", {"C"}),
    ("PatientName=Doe%5EJo&fuzzymatching=true", {"A"}),
    ("PatientName=mul&fuzzymatching=true", {"B"}),
    ("PatientName=Doe%5EJohn&fuzzymatching=false", {"A"}),
    # UID lists: comma (dicomweb-client, Orthanc) and backslash (OHIF)
    ("StudyInstanceUID={A},{B}", {"A", "B"}),
    ("StudyInstanceUID={A}%5C{C}", {"A", "C"}),
    ("0020000D={B}", {"B"}),
    # ranges, open ends; empty stored values never match
    ("StudyDate=20200101-20201231", {"A"}),
    ("StudyDate=20210101-", {"B"}),
    ("StudyDate=-20201231", {"A"}),
    ("StudyTime=0700-0900", {"B"}),
    ("StudyTime=1015", {"A"}),
    ("AccessionNumber=%3F*", {"A", "B"}),
    # universal
    ("PatientName=", {"A", "B", "C"}),
    ("AccessionNumber=*", {"A", "B", "C"}),
    # multi-valued attribute: any value
    ("ModalitiesInStudy=MR", {"A", "B"}),
    ("ModalitiesInStudy=CT%2CMR", {"A", "B", "C"}),
    ("ModalitiesInStudy=US%5CMR", {"A", "B"}),
    ("ModalitiesInStudy=C%2A", {"A", "C"}),
    ("NumberOfStudyRelatedInstances=3", {"A", "C"}),
    ("NumberOfStudyRelatedSeries=2", {"A"}),
    # keys of lower levels: a study with a matching series / instance
    ("Modality=MR", {"A", "B"}),
    ("ImageType=DERIVED", {"B"}),
    ("SOPClassUID=1.2.840.10008.5.1.4.1.1.4", {"A", "B"}),
    ("00400275.00400009=SPS2", {"A"}),
    # several keys: all must hold
    ("PatientID=PID-%2A&ModalitiesInStudy=MR&StudyDate=20210101-", {"B"}),
]


@pytest.mark.parametrize("query, expected", STUDY_MATCHES)
def test_search_studies_matching(archive, query, expected):
    query = query.format(**archive.uids)
    assert set(archive.found(f"/studies?{query}", "0020000D")) == expected


SERIES_MATCHES = [
    ("/series?Modality=CT", {"A1", "C1"}),
    ("/series?Modality=ct", set()),
    ("/series?SeriesNumber=2", {"A2"}),
    ("/series?SeriesNumber=02", {"A2"}),
    ("/series?SeriesInstanceUID={A1}%5C{B1}", {"A1", "B1"}),
    ("/series?PerformedProcedureStepStartDate=20200101-", {"A1"}),
    ("/series?OperatorsName=TECH*", {"A1"}),
    ("/series?NumberOfSeriesRelatedInstances=3", {"C1"}),
    # sequence matching: keys hold within one item
    ("/series?00400275.00400009=SPS1", {"A1"}),
    ("/series?RequestAttributesSequence.RequestedProcedureID=RP%2A", {"A1"}),
    ("/series?00400275.00400009=SPS1&00400275.00401001=RP1", {"A1"}),
    ("/series?00400275.00400009=SPS1&00400275.00401001=RP2", set()),
    # relational: study keys on /series
    ("/series?PatientID=PID-B", {"B1"}),
    ("/series?StudyDate=-20201231&Modality=MR", {"A2"}),
    # keys of a lower level
    ("/series?ImageType=AXIAL", {"A1"}),
    # the study in the path
    ("/studies/{A}/series", {"A1", "A2"}),
    ("/studies/{A}/series?Modality=MR", {"A2"}),
    ("/studies/{B}/series?Modality=CT", set()),
    ("/studies/{A}/series?PatientID=PID-B", set()),
]


@pytest.mark.parametrize("url, expected", SERIES_MATCHES)
def test_search_series_matching(archive, url, expected):
    assert set(archive.found(url.format(**archive.uids), "0020000E")) == expected


INSTANCE_MATCHES = [
    ("/instances?SOPInstanceUID={A1-2}", {"A1-2"}),
    ("/instances?00080018={A1-1},{B1-1}", {"A1-1", "B1-1"}),
    ("/instances?InstanceNumber=2", {"A1-2", "C1-2"}),
    ("/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.4", {"A2-1", "B1-1"}),
    ("/instances?Rows=32", {"C1-1", "C1-2", "C1-3"}),
    ("/instances?ImageType=AXIAL", {"A1-1"}),
    ("/instances?ImageType=ORIGINAL%5CDERIVED", {"A1-1", "A1-2", "B1-1"}),
    ("/instances?SliceThickness=1.50", {"A2-1"}),
    ("/instances?00091001=secret", {"A1-1", "A1-2"}),                    # a private attribute
    ("/instances?AcquisitionDateTime=20211231-20211231", {"B1-1"}),
    ("/instances?AcquisitionDateTime=2022-", set()),
    ("/instances?Modality=MR", {"A2-1", "B1-1"}),                        # a parent key
    ("/instances?PatientName=smith*", {"C1-1", "C1-2", "C1-3"}),
    ("/studies/{A}/instances", {"A1-1", "A1-2", "A2-1"}),
    ("/studies/{A}/instances?Modality=CT", {"A1-1", "A1-2"}),
    ("/studies/{A}/series/{A1}/instances", {"A1-1", "A1-2"}),
    ("/studies/{A}/series/{A1}/instances?InstanceNumber=1", {"A1-1"}),
    ("/studies/{B}/series/{A1}/instances", set()),                       # series of another study
]


@pytest.mark.parametrize("url, expected", INSTANCE_MATCHES)
def test_search_instances_matching(archive, url, expected):
    url = url.replace("{A1-1}", "{A1_1}").replace("{A1-2}", "{A1_2}").replace("{B1-1}", "{B1_1}")
    uids = {k.replace("-", "_"): v for k, v in archive.uids.items()}
    assert set(archive.found(url.format(**uids), "00080018")) == expected


# -- what results hold -----------------------------------------------------------------------------


def test_search_studies_returns_required_keys_and_derived_values(archive):
    (result,) = archive.get(f"/studies?StudyInstanceUID={archive.uids['A']}").json
    required = {"00080005", "00080020", "00080030", "00080050", "00080056", "00080061", "00080090", "00081190",
                "00100010", "00100020", "00100030", "00100040", "0020000D", "00200010", "00201206", "00201208"}
    assert required <= set(result)
    assert list(result) == sorted(result)
    assert result["00080061"]["Value"] == ["CT", "MR"]
    assert (_value(result, "00201206"), _value(result, "00201208")) == (2, 3)
    assert _value(result, "00081190").endswith(f"/studies/{archive.uids['A']}")
    assert _value(result, "00080005") == "ISO_IR 192"
    assert result["00100010"]["Value"] == [{"Alphabetic": "DOE^JOHN^^^"}]
    assert "0008103E" not in result and "00080060" not in result  # nothing of lower levels


def test_search_studies_required_keys_are_returned_empty_when_unknown(archive):
    (result,) = archive.get("/studies?PatientID=PID-C").json
    assert result["00080020"] == {"vr": "DA"}
    assert result["00080050"] == {"vr": "SH"}


def test_search_series_of_study_returns_series_keys_without_patient(archive):
    results = archive.get(f"/studies/{archive.uids['A']}/series").json
    assert [_value(r, "00200011") for r in results] == [1, 2]
    first = results[0]
    assert {"00080060", "0020000E", "00200011", "00201209", "00081190", "0008103E", "00400275", "0020000D"} \
        <= set(first)
    assert _value(first, "00201209") == 2
    assert _value(first, "00081190").endswith(f"/studies/{archive.uids['A']}/series/{archive.uids['A1']}")
    assert "00100010" not in first


def test_search_relational_series_carry_study_attributes(archive):
    (result,) = archive.get(f"/series?SeriesInstanceUID={archive.uids['B1']}").json
    assert result["00100010"]["Value"] == [{"Alphabetic": "Müller^Hans"}]
    assert _value(result, "00080020") == "20211231"
    assert _value(result, "00201208") == 1
    assert _value(result, "00081190").endswith(f"/series/{archive.uids['B1']}")  # the series' own URL


def test_search_relational_instances_carry_series_and_study_attributes(archive):
    (result,) = archive.get(f"/instances?SOPInstanceUID={archive.uids['C1-2']}").json
    assert (_value(result, "00100020"), _value(result, "00080060"), _value(result, "00200011")) == ("PID-C", "CT", 3)
    assert (_value(result, "00280010"), _value(result, "00280011"), _value(result, "00280100")) == (32, 32, 16)
    assert _value(result, "00200013") == 2
    assert _value(result, "00080016") == "1.2.840.10008.5.1.4.1.1.2"
    assert _value(result, "00081190").endswith(f"/instances/{archive.uids['C1-2']}")
    within = archive.get(f"/studies/{archive.uids['C']}/series/{archive.uids['C1']}/instances").json
    assert "00100020" not in within[0] and "00080060" not in within[0]
    assert _value(within[0], "0020000E") == archive.uids["C1"]


def test_search_relational_results_each_carry_their_own_study_and_series_counts(archive):
    results = archive.get("/instances?includefield=00201206,00201208,00201209,00080061").json
    got = {archive.labels[_value(r, "00080018")]: (_value(r, "00201206"), _value(r, "00201208"),
                                                    _value(r, "00201209"), r["00080061"]["Value"])
           for r in results}
    a1, a2, c1 = (2, 3, 2, ["CT", "MR"]), (2, 3, 1, ["CT", "MR"]), (1, 3, 3, ["CT"])
    assert got == {"A1-1": a1, "A1-2": a1, "A2-1": a2, "B1-1": (1, 1, 1, ["MR"]), "C1-1": c1, "C1-2": c1, "C1-3": c1}


def test_search_instance_columns_come_back_as_numbers_or_kept_text():
    from dicomweb_wsgi.transactions.qido import _column_element

    assert _column_element("IS", "7") == {"vr": "IS", "Value": [7]}
    assert _column_element("US", "512\\-3\\ 4 ") == {"vr": "US", "Value": [512, -3, 4]}
    assert _column_element("IS", "1.0") == {"vr": "IS", "Value": ["1.0"]}  # not an integer literal: kept
    assert _column_element("CS", "7") == {"vr": "CS", "Value": ["7"]}


def test_search_instances_order_is_series_then_instance_number(archive):
    assert archive.found(f"/studies/{archive.uids['A']}/instances", "00080018") == ["A1-1", "A1-2", "A2-1"]
    assert archive.found(f"/studies/{archive.uids['C']}/series/{archive.uids['C1']}/instances", "00080018") == \
        ["C1-1", "C1-2", "C1-3"]


def test_search_studies_order_is_newest_first_with_empty_dates_last(archive):
    assert archive.found("/studies", "0020000D") == ["B", "A", "C"]


def test_search_acr_nema_dates_match_like_any_other_date(dicomweb_app, dicomweb_client):
    # PS3.5 asks readers to accept the ACR-NEMA form YYYY.MM.DD; an indexed date kept in it never met
    # a range, nor the same date asked as YYYYMMDD. New stores index YYYYMMDD; migration 6 fixes old rows.
    old, new = make_dataset(StudyDate="2020.01.05", ContentDate="2020.01.05"), make_dataset(StudyDate="20200105")
    store(dicomweb_client, [old, new])

    def found(query: str, level: str = "studies") -> set[str]:
        tag = "0020000D" if level == "studies" else "00080018"
        return {r[tag]["Value"][0] for r in dicomweb_client.get(f"/{level}?{query}", status=200).json}

    both = {old.StudyInstanceUID, new.StudyInstanceUID}
    assert found("StudyDate=20200101-20200131") == found("StudyDate=20200105") == both
    assert found("ContentDate=20200105", "instances") == {old.SOPInstanceUID}
    with dicomweb_app.archive.index.write() as conn:  # an index written before migration 6
        conn.execute("UPDATE study SET study_date='2020.01.05' WHERE study_uid=?", (old.StudyInstanceUID,))
        conn.execute("PRAGMA user_version=5")
    assert found("StudyDate=20200101-20200131") == {new.StudyInstanceUID}
    reopened = make_client(dicomweb_app.archive.settings.data_dir)
    try:
        got = reopened.get("/studies?StudyDate=20200101-20200131", status=200).json
        assert {r["0020000D"]["Value"][0] for r in got} == both
    finally:
        reopened.app.close()


def test_search_match_keys_are_returned(archive):
    (result,) = archive.get("/studies?PatientID=PID-A&StudyDescription=CT*&OtherPatientNames=").json
    assert _value(result, "00081030") == "CT CHEST"
    assert result["00101001"]["Value"] == [{"Alphabetic": "Johnny^Doe"}]
    (series,) = archive.get("/series?00400275.00400009=SPS1&PatientComments=").json
    assert len(series["00400275"]["Value"]) == 2      # the whole sequence
    assert series["00104000"] == {"vr": "LT"}       # universal matching on an absent attribute


def test_search_series_and_patient_module_attributes_are_held_at_their_level(dicomweb_client):
    # Protocol Name is General Series (PS3.3 C.7.3.1) and Patient Identity Removed the Patient module
    # (C.7.1.1): series and study keys of the Study Root levels (PS3.4 C.6.1.1), returned as match keys
    # and includefields (PS3.18 §8.3.4.3) even outside the common attribute lists.
    ds = make_dataset(ProtocolName="CHEST ROUTINE", PatientIdentityRemoved="YES", GantryID="G7")
    store(dicomweb_client, [ds])
    get = lambda path: dicomweb_client.get(path, headers=JSON_ACCEPT, status=200).json  # noqa: E731
    (by_include,) = get("/series?includefield=ProtocolName,GantryID")
    assert (_value(by_include, "00181030"), _value(by_include, "00181008")) == ("CHEST ROUTINE", "G7")
    (by_key,) = get("/series?ProtocolName=CHEST*")
    assert _value(by_key, "00181030") == "CHEST ROUTINE"
    assert get("/series?ProtocolName=HEAD*") == []
    (by_all,) = get(f"/studies/{ds.StudyInstanceUID}/series?includefield=all")
    assert _value(by_all, "00181030") == "CHEST ROUTINE"
    (instance,) = get("/instances?includefield=ProtocolName")
    assert _value(instance, "00181030") == "CHEST ROUTINE"
    (study,) = get("/studies?PatientIdentityRemoved=YES")
    assert _value(study, "00120062") == "YES"
    (study,) = get("/studies?includefield=00120062")
    assert _value(study, "00120062") == "YES"


def test_search_module_attributes_of_an_index_written_before_migration_7(dicomweb_app, dicomweb_client):
    ds = make_dataset(ProtocolName="CHEST ROUTINE", PatientIdentityRemoved="YES")
    store(dicomweb_client, [ds])
    with dicomweb_app.archive.index.write() as conn:  # as schema 6 kept them: with the instance only
        conn.execute("""UPDATE series SET attrs_json=json_remove(attrs_json, '$."00181030"')""")
        conn.execute("""UPDATE study SET attrs_json=json_remove(attrs_json, '$."00120062"')""")
        conn.execute("PRAGMA user_version=6")
    assert dicomweb_client.get("/series?ProtocolName=CHEST*", status=200).json == []
    reopened = make_client(dicomweb_app.archive.settings.data_dir)
    try:
        (series,) = reopened.get("/series?ProtocolName=CHEST*", status=200).json
        assert _value(series, "00181030") == "CHEST ROUTINE"
        (study,) = reopened.get("/studies?includefield=PatientIdentityRemoved", status=200).json
        assert _value(study, "00120062") == "YES"
    finally:
        reopened.app.close()


# -- includefield ----------------------------------------------------------------------------------


@pytest.mark.parametrize("query", [
    "includefield=StudyDescription&includefield=00101001",
    "includefield=StudyDescription%2C00101001",
    "includefield=00081030,OtherPatientNames&includefield=00080060",
])
def test_includefield_repeated_comma_keywords_tags(archive, query):
    (result,) = archive.get(f"/studies?PatientID=PID-A&{query}").json
    assert _value(result, "00081030") == "CT CHEST"
    assert result["00101001"]["Value"] == [{"Alphabetic": "Johnny^Doe"}]
    assert "00080060" not in result  # a series attribute is not returned at study level


def test_includefield_all_returns_every_attribute_of_the_level(archive):
    (study,) = archive.get("/studies?PatientID=PID-A&includefield=all").json
    assert {"00081030", "00101001", "00100010"} <= set(study)
    (series,) = archive.get(f"/studies/{archive.uids['A']}/series?SeriesNumber=1&includefield=all").json
    assert _value(series, "00081070") is not None and "00400244" in series
    (inst,) = archive.get(f"/instances?SOPInstanceUID={archive.uids['A1-1']}&includefield=all").json
    assert inst["00080008"]["Value"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert _value(inst, "00091001") == "secret" and _value(inst, "00090010") == "ACME 1.0"
    assert "7FE00010" not in inst                      # bulk data stays out
    assert _value(inst, "00080005") == "ISO_IR 192"    # the response's character set, not the stored one


def test_includefield_private_tag_brings_its_creator(archive):
    (inst,) = archive.get(f"/instances?SOPInstanceUID={archive.uids['A1-2']}&includefield=00091001").json
    assert (_value(inst, "00091001"), _value(inst, "00090010")) == ("secret", "ACME 1.0")


def test_includefield_unknown_names_are_ignored(archive):
    plain = archive.get("/studies?PatientID=PID-A").json
    assert archive.get("/studies?PatientID=PID-A&includefield=NoSuchKeyword&FooBar=1&_=123").json == plain


# -- paging ----------------------------------------------------------------------------------------


def test_paging_pages_never_overlap_and_warning_counts_the_rest(archive):
    first = archive.get("/instances?limit=3")
    assert first.headers["Warning"] == '299 localhost:80 "There are 4 additional results that can be requested"'
    second = archive.get("/instances?limit=3&offset=3")
    assert second.headers["Warning"] == '299 localhost:80 "There are 1 additional results that can be requested"'
    last = archive.get("/instances?limit=3&offset=6")
    assert "Warning" not in last.headers
    uids = [_value(r, "00080018") for r in first.json + second.json + last.json]
    assert len(uids) == 7 == len(set(uids))
    assert uids == [_value(r, "00080018") for r in archive.get("/instances").json]


def test_paging_offset_past_the_end_is_empty_200(archive):
    resp = archive.get("/studies?offset=100")
    assert resp.json == [] and resp.headers["Content-Type"] == "application/dicom+json"


def test_paging_default_and_maximum_limits_come_from_settings(tmp_path):
    client = make_client(tmp_path / "data", qido_default_limit=2, qido_max_limit=3)
    try:
        store(client, [make_dataset(PatientID=f"P{n}") for n in range(5)])
        resp = client.get("/studies", status=200)
        assert len(resp.json) == 2 and '"There are 3 additional' in resp.headers["Warning"]
        assert len(client.get("/studies?limit=100", status=200).json) == 3
        study = _value(resp.json[0], "0020000D")
        series = _value(client.get(f"/studies/{study}/series", status=200).json[0], "0020000E")
        assert len(client.get(f"/studies/{study}/series/{series}/instances", status=200).json) == 1
    finally:
        client.app.close()


# -- media types and errors -----------------------------------------------------------------------


def test_empty_result_is_200_json_array_and_204_for_xml(archive):
    resp = archive.get("/studies?PatientID=nobody")
    assert resp.body == b"[]"
    archive.get("/studies?PatientID=nobody", status=204, headers=XML_ACCEPT)


def test_xml_results_are_multipart_native_dicom_model(archive):
    resp = archive.get(f"/studies/{archive.uids['A']}/series", headers=XML_ACCEPT)
    assert resp.headers["Content-Type"].startswith('multipart/related; type="application/dicom+xml"; boundary=')
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert len(parts) == 2
    numbers = []
    for headers, body in parts:
        assert headers["Content-Type"] == "application/dicom+xml"
        root = parse_xml(body)
        assert root.tag == XML_NS + "NativeDicomModel"
        attrs = {a.get("keyword"): a for a in root.iter(XML_NS + "DicomAttribute") if a.get("keyword")}
        numbers.append(attrs["SeriesNumber"].find(XML_NS + "Value").text)
        assert attrs["SeriesInstanceUID"].get("tag") == "0020000E"
        assert attrs["NumberOfSeriesRelatedInstances"].get("vr") == "IS"
    assert numbers == ["1", "2"]
    (headers, body), = parse_multipart(*_xml(archive, "/studies?PatientID=PID-B"))
    name = parse_xml(body).find(f".//{XML_NS}DicomAttribute[@tag='00100010']/{XML_NS}PersonName/"
                                f"{XML_NS}Alphabetic/{XML_NS}FamilyName")
    assert name.text == "Müller"


def _xml(archive, url: str) -> tuple[str, bytes]:
    resp = archive.get(url, headers={"Accept": "application/dicom+xml"})
    return resp.headers["Content-Type"], resp.body


@pytest.mark.parametrize("accept, content_type", [
    ("application/dicom+json, application/json", "application/dicom+json"),
    ("application/json", "application/json"),
    ("*/*", "application/dicom+json"),
    ("", "application/dicom+json"),
])
def test_json_media_types(archive, accept, content_type):
    resp = archive.client.get("/studies?PatientID=PID-A", headers={"Accept": accept} if accept else {}, status=200)
    assert resp.headers["Content-Type"] == content_type
    assert _value(resp.json[0], "00100020") == "PID-A"


def test_unsupported_media_type_is_406(archive):
    resp = archive.get("/studies", status=406, headers={"Accept": "image/jpeg"})
    assert "application/dicom+json" in resp.text


@pytest.mark.parametrize("query, name", [
    ("limit=abc", "limit"), ("offset=-3", "offset"), ("StudyDate=2020-13-45", "StudyDate"),
    ("fuzzymatching=yes", "fuzzymatching"), ("StudyInstanceUID=1.2.x", "StudyInstanceUID"),
    ("StudyTime=25", "StudyTime"), ("SeriesNumber=%2A1", "SeriesNumber"),
])
def test_malformed_parameter_is_400_naming_it(archive, query, name):
    resp = archive.get(f"/series?{query}", status=400)
    assert resp.text.startswith(name + ":")


def test_head_answers_like_get_without_body(archive):
    resp = archive.client.head("/studies?PatientID=PID-A", status=200)
    assert resp.body == b"" and resp.headers["Content-Type"] == "application/dicom+json"


# -- real clients' query strings (ps3.18-notes §4.2-4.4) --------------------------------------------


def test_ohif_study_list_query_verbatim(archive):
    url = ("/studies?PatientName=*doe*&00100020=*PID*&AccessionNumber=*A*&StudyDescription=*CT*"
           "&ModalitiesInStudy=CT%2CMR&StudyDate=20200101-20241231"
           "&limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060%2C00080090%2C00100030")
    (result,) = archive.get(url).json
    assert _value(result, "0020000D") == archive.uids["A"]
    for tag in ("0020000D", "00080020", "00080030", "00080050", "00100020", "00100010", "00100030", "00201208",
                "00081030", "00080061", "00080090"):
        assert tag in result
    plain = archive.get("/studies?limit=101&offset=0&fuzzymatching=false"
                        "&includefield=00081030%2C00080060%2C00080090%2C00100030")
    assert len(plain.json) == 3 and "Warning" not in plain.headers


def test_ohif_viewer_study_and_prior_studies_queries(archive):
    uids = archive.uids
    url = (f"/studies?StudyInstanceUID={uids['A']}%5C{uids['C']}&limit=101&offset=0&fuzzymatching=false"
           "&includefield=00081030%2C00080060%2C00080090%2C00100030")
    assert set(archive.found(url, "0020000D")) == {"A", "C"}
    prior = "/studies?00100020=*PID-B*&limit=101&offset=0&fuzzymatching=false&includefield=00081030%2C00080060"
    assert archive.found(prior, "0020000D") == ["B"]


def test_ohif_series_expansion_query_verbatim(archive):
    results = archive.get(f"/studies/{archive.uids['A']}/series?includefield=0008103E%2C00080021").json
    for result in results:
        for tag in ("0020000D", "0020000E", "00080060", "00200011", "00080021", "00201209", "0008103E"):
            assert tag in result
    assert archive.found(f"/studies/{archive.uids['A']}/series?SeriesInstanceUID={archive.uids['A2']}",
                         "0020000E") == ["A2"]
    thumb = f"/studies/{archive.uids['A']}/series/{archive.uids['A1']}/instances?limit=1&includefield=00080018"
    assert archive.found(thumb, "00080018") == ["A1-1"]


def test_weasis_tag_keyed_queries_and_retrieve_url_navigation(archive):
    uids = archive.uids
    (study,) = archive.get(f"/studies?0020000D={uids['A']}&includefield=00080020,00080030,00080050,00080061,"
                           "00080090,00081030,00100010,00100020,00100021,00100030,00100040,0020000D,00200010").json
    assert _value(study, "00081030") == "CT CHEST" and study["00100021"] == {"vr": "LO"}
    assert archive.found(f"/series?0020000E={uids['B1']}", "0020000E") == ["B1"]
    assert archive.found(f"/instances?00080018={uids['C1-3']}", "00080018") == ["C1-3"]
    series = archive.get(f"/studies/{uids['A']}/series?includefield=0008103E,00080060,0020000E,00200011,00081190").json
    retrieve_url = _value(series[0], "00081190")
    path = retrieve_url.split("localhost:80", 1)[1]
    instances = archive.get(f"{path}/instances?includefield=00080018,00200013,00081190").json
    assert [archive.labels[_value(r, "00080018")] for r in instances] == ["A1-1", "A1-2"]
    assert all(_value(r, "00081190").endswith(_value(r, "00080018")) for r in instances)


# -- character sets (pydicom's charset test files, each found by name) ------------------------------

# file -> (query value, where the name is: "" top level, else a sequence keyword)
CHARSET_FILES = {
    "chrArab.dcm": ("قباني*", ""),
    "chrFren.dcm": ("buc^jerome", ""),
    "chrFrenMulti.dcm": ("Buc^Jérôme", ""),
    "chrGerm.dcm": ("Äneas*", ""),
    "chrGreek.dcm": ("διονυσιος", ""),
    "chrH31.dcm": ("山田^太郎", ""),
    "chrH32.dcm": ("やまだ*", ""),
    "chrHbrw.dcm": ("שרון^דבורה", ""),
    "chrI2.dcm": ("홍^길동", ""),
    "chrJapMulti.dcm": ("やまだ^たろう", ""),
    "chrJapMultiExplicitIR6.dcm": ("やまだ^たろう", ""),
    "chrKoreanMulti.dcm": ("김희중", ""),
    "chrRuss.dcm": ("Люкceмбypг", ""),
    "chrX1.dcm": ("王^小東", ""),
    "chrX2.dcm": ("wang^xiaodong", ""),
    "chrSQEncoding.dcm": ("山田*", "RequestedProcedureCodeSequence"),
    "chrSQEncoding1.dcm": ("ﾔﾏﾀﾞ*", "RequestedProcedureCodeSequence"),
}


def test_charset_files_are_all_covered():
    names = {path.replace("\\", "/").rsplit("/", 1)[1] for path in get_charset_files("*.dcm")}
    assert names == set(CHARSET_FILES)


def _expected_pn(pn) -> dict:
    groups = {"Alphabetic": pn.alphabetic, "Ideographic": pn.ideographic, "Phonetic": pn.phonetic}
    return {k: v for k, v in groups.items() if v}


@pytest.mark.parametrize("name", sorted(CHARSET_FILES))
def test_charset_file_is_found_and_returned_as_unicode(dicomweb_client, name):
    query, sequence = CHARSET_FILES[name]
    (path,) = get_charset_files(name)
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = new_uid(), new_uid(), new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    store(dicomweb_client, [dataset_bytes(ds)])
    reread = pydicom.dcmread(io.BytesIO(dataset_bytes(ds)))
    if sequence:
        key = f"{sequence}.PatientName"
        holder = reread[sequence][0]
    else:
        key = "PatientName"
        holder = reread
    url = f"/studies?{key}={quote(query)}&includefield={sequence or 'PatientName'}"
    resp = dicomweb_client.get(url, headers=JSON_ACCEPT, status=200)
    (result,) = resp.json
    assert _value(result, "0020000D") == ds.StudyInstanceUID
    element = result[f"{pydicom.datadict.tag_for_keyword(sequence):08X}"]["Value"][0]["00100010"] \
        if sequence else result["00100010"]
    assert element["Value"][0] == _expected_pn(holder.PatientName)
    assert resp.body.decode("utf-8")  # UTF-8 JSON


# -- dicomweb-client against a live waitress server ------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    dicomweb_client = pytest.importorskip("dicomweb_client")
    folder = tmp_path_factory.mktemp("qido-live")
    config = folder / "dicomweb.ini"
    config.write_text("[app:main]\ndicomweb.qido_default_limit = 2\n")
    with ServerProcess(str(folder / "data"), config=str(config)) as server:
        client = dicomweb_client.DICOMwebClient(server.url)
        study = new_uid()
        series = [new_uid(), new_uid()]
        datasets = [make_dataset(study_uid=study, series_uid=series[n % 2], SeriesNumber=n % 2 + 1,
                                 InstanceNumber=n, PatientName="Doe^Jane", PatientID="LIVE-1", pixel_seed=n)
                    for n in range(1, 6)]
        datasets += [make_dataset(PatientID=f"LIVE-{n}", PatientName=f"Other^{n}") for n in range(2, 6)]
        client.store_instances(datasets)
        yield client, study, series, datasets


def test_dicomweb_client_search_filters_fields_and_limits(live):
    client, study, series, datasets = live
    found = client.search_for_studies(search_filters={"PatientName": "doe^jane", "PatientID": "LIVE-*"},
                                      fields=["StudyDescription", "00081030"])
    assert [_value(r, "0020000D") for r in found] == [study]
    assert _value(found[0], "00081030") == "Test study"
    page = client.search_for_studies(limit=3, offset=1, search_filters={"PatientID": "LIVE-*"})
    assert len(page) == 3
    assert len(client.search_for_studies(search_filters={"PatientID": "LIVE-*"})) == 2  # the server default
    got = client.search_for_series(study, search_filters={"SeriesNumber": 2}, fields=["SeriesDescription"])
    assert [_value(r, "0020000E") for r in got] == [series[1]]
    instances = client.search_for_instances(study, series[1], fields=["Rows"])
    assert [_value(r, "00200013") for r in instances] == [1, 3, 5]  # a series' instances are not paged
    assert client.search_for_instances(study, search_filters={"InstanceNumber": 4})[0]["00200013"]["Value"] == [4]
    assert client.search_for_series(search_filters={"PatientID": "nobody"}) == []


def test_dicomweb_client_get_remaining_pages_through_everything(live):
    client, study, series, datasets = live
    studies = client.search_for_studies(get_remaining=True, search_filters={"PatientID": "LIVE-*"})
    assert len(studies) == 5 == len({_value(r, "0020000D") for r in studies})
    instances = client.search_for_instances(get_remaining=True, search_filters={"PatientID": "LIVE-1"})
    assert sorted(_value(r, "00200013") for r in instances) == [1, 2, 3, 4, 5]
    fuzzy = client.search_for_studies(fuzzymatching=True, search_filters={"PatientName": "jan"}, get_remaining=True)
    assert [_value(r, "0020000D") for r in fuzzy] == [study]


def test_slicer_offset_loop_until_an_empty_page(live):
    client = live[0]
    seen: list[str] = []
    while True:  # SlicerDICOMwebBrowser: no limit, offset += page size until a page comes back empty
        page = client.search_for_studies(offset=len(seen), search_filters={"PatientID": "LIVE-*"})
        if not page:
            break
        seen += [_value(r, "0020000D") for r in page]
        assert len(seen) <= 5
    assert len(seen) == 5 == len(set(seen))
