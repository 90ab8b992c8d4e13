"""Non-Patient Instance service through HTTP: Store, Retrieve and Search on the four resources."""
from __future__ import annotations

import io
import os
from contextlib import contextmanager

import pydicom
import pytest
import webtest
from defusedxml.ElementTree import fromstring
from pydicom.data import get_palette_files
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dicomweb_wsgi.app import make_app
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, parse_multipart, store, stow_body

HANGING_PROTOCOL = "1.2.840.10008.5.1.4.38.1"
CT_PROTOCOL = "1.2.840.10008.5.1.4.1.1.200.1"
GENERIC_IMPLANT = "1.2.840.10008.5.1.4.43.1"
IMPLANT_GROUP = "1.2.840.10008.5.1.4.45.1"
COLOR_PALETTE = "1.2.840.10008.5.1.4.39.1"
FAILED, REFERENCED, FAILURE_REASON = "00081198", "00081199", "00081197"


def npi_dataset(sop_class: str, transfer_syntax: str = ExplicitVRLittleEndian, **attributes) -> Dataset:
    """A small non-patient instance: SOP common plus the attributes given (keywords)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _item(**attributes) -> Dataset:
    item = Dataset()
    for keyword, value in attributes.items():
        setattr(item, keyword, value)
    return item


def hanging_protocol(name: str, modality: str, created: str = "20240102101500") -> Dataset:
    return npi_dataset(HANGING_PROTOCOL, HangingProtocolName=name, HangingProtocolDescription=f"{name} layout",
                       HangingProtocolLevel="SITE", HangingProtocolCreator="Radiology",
                       HangingProtocolCreationDateTime=created, NumberOfPriorsReferenced=0, NumberOfScreens=1,
                       HangingProtocolDefinitionSequence=[_item(Modality=modality, Laterality="L")])


# One instance builder per resource, the matching key it sets, and the value that tells two apart.
RESOURCES = {
    "color-palettes": (lambda v: npi_dataset(COLOR_PALETTE, ContentLabel=v, ContentDescription="x"),
                       "ContentLabel"),
    "hanging-protocols": (lambda v: hanging_protocol(v, "CT"), "HangingProtocolName"),
    "defined-procedure-protocols": (lambda v: npi_dataset(CT_PROTOCOL, ProtocolName=v, EquipmentModality="CT"),
                                    "ProtocolName"),
    "implant-templates": (lambda v: npi_dataset(GENERIC_IMPLANT, Manufacturer="ACME", ImplantName=v,
                                                ImplantPartNumber="P-1"), "ImplantName"),
}


def post(client, url: str, datasets, status):
    content_type, body = stow_body(datasets)
    return client.post(url, body, headers={"Content-Type": content_type}, status=status)


def _values(obj: dict, tag: str) -> list:
    return obj.get(tag, {}).get("Value", [])


def _uids(results: list[dict]) -> list[str]:
    return [r["00080018"]["Value"][0] for r in results]


def _ref_uids(items: list[dict]) -> list[str]:
    return [r["00081155"]["Value"][0] for r in items]


@pytest.mark.parametrize("resource", sorted(RESOURCES))
def test_npi_store_retrieve_search_each_resource_round_trips(dicomweb_client, resource):
    build, keyword = RESOURCES[resource]
    first, second = build("ALPHA"), build("BETA")
    resp = post(dicomweb_client, f"/{resource}", [first, second], 200)
    refs = _values(resp.json, REFERENCED)
    assert _ref_uids(refs) == [first.SOPInstanceUID, second.SOPInstanceUID]
    assert refs[0]["00081190"]["Value"] == [f"http://localhost:80/{resource}/{first.SOPInstanceUID}"]

    got = dicomweb_client.get(f"/{resource}/{first.SOPInstanceUID}", status=200)
    assert got.headers["Content-Type"] == f"application/dicom; transfer-syntax={ExplicitVRLittleEndian}"
    back = pydicom.dcmread(io.BytesIO(got.body))
    assert back.SOPInstanceUID == first.SOPInstanceUID and getattr(back, keyword) == "ALPHA"

    meta = dicomweb_client.get(f"/{resource}/{second.SOPInstanceUID}",
                               headers={"Accept": "application/dicom+json"}, status=200).json
    assert len(meta) == 1 and _values(meta[0], "00080016") == [second.SOPClassUID]

    found = dicomweb_client.get(f"/{resource}", {keyword: "BETA"}, status=200).json
    assert _uids(found) == [second.SOPInstanceUID]
    assert found[0]["00081190"]["Value"] == [f"http://localhost:80/{resource}/{second.SOPInstanceUID}"]
    assert _uids(dicomweb_client.get(f"/{resource}", status=200).json) == [first.SOPInstanceUID,
                                                                             second.SOPInstanceUID]


@pytest.mark.parametrize("resource", sorted(RESOURCES))
def test_npi_store_patient_instance_is_refused_with_0122(dicomweb_client, resource):
    ct = make_dataset()
    resp = post(dicomweb_client, f"/{resource}", [ct], 409)
    failed = _values(resp.json, FAILED)
    assert _values(failed[0], FAILURE_REASON) == [0x0122]
    assert _values(failed[0], "00081155") == [ct.SOPInstanceUID]
    assert "patient instances go to /studies" in resp.headers["Warning"]
    assert dicomweb_client.get(f"/{resource}", status=200).json == []


def test_npi_store_other_resource_class_names_its_resource(dicomweb_client):
    protocol = hanging_protocol("CHEST", "CR")
    resp = post(dicomweb_client, "/color-palettes", [protocol], 409)
    assert _values(_values(resp.json, FAILED)[0], FAILURE_REASON) == [0x0122]
    assert "/hanging-protocols" in resp.headers["Warning"]
    dicomweb_client.get(f"/color-palettes/{protocol.SOPInstanceUID}", status=404)
    dicomweb_client.get(f"/hanging-protocols/{protocol.SOPInstanceUID}", status=404)


def test_npi_store_mixed_request_returns_202(dicomweb_client):
    palette = pydicom.dcmread(get_palette_files("hotiron.dcm")[0])
    resp = post(dicomweb_client, "/color-palettes", [palette, make_dataset()], 202)
    assert _ref_uids(_values(resp.json, REFERENCED)) == [palette.SOPInstanceUID]
    assert len(_values(resp.json, FAILED)) == 1


def test_npi_store_bundled_palettes_searchable_by_label_wildcard(dicomweb_client):
    palettes = [pydicom.dcmread(path) for path in get_palette_files("*.dcm")]
    post(dicomweb_client, "/color-palettes", palettes, 200)
    labels = {p.ContentLabel: p.SOPInstanceUID for p in palettes}
    hot = sorted(uid for label, uid in labels.items() if label.startswith("HOT"))
    found = dicomweb_client.get("/color-palettes", {"ContentLabel": "HOT*"}, status=200).json
    assert sorted(_uids(found)) == hot and hot
    assert dicomweb_client.get("/color-palettes", {"ContentLabel": "hot*"}, status=200).json == []  # CS: case


def test_npi_patient_endpoints_never_see_npi_instances(dicomweb_client):
    palette = pydicom.dcmread(get_palette_files("spring.dcm")[0])
    post(dicomweb_client, "/color-palettes", [palette], 200)
    refused = post(dicomweb_client, "/studies", [palette], 409)
    assert _ref_uids(_values(refused.json, FAILED)) == [palette.SOPInstanceUID]
    studies = dicomweb_client.get("/studies", status="*")
    assert palette.SOPInstanceUID not in studies.text


def test_npi_store_to_instance_uri_checks_the_uid(dicomweb_client):
    ds = RESOURCES["implant-templates"][0]("KNEE")
    resp = post(dicomweb_client, f"/implant-templates/{generate_uid()}", [ds], 409)
    assert _values(_values(resp.json, FAILED)[0], FAILURE_REASON) == [0x0110]
    post(dicomweb_client, f"/implant-templates/{ds.SOPInstanceUID}", [ds], 200)
    dicomweb_client.get(f"/implant-templates/{ds.SOPInstanceUID}", status=200)


def test_npi_store_single_part_body_is_accepted(dicomweb_client):
    ds = RESOURCES["defined-procedure-protocols"][0]("HEAD ROUTINE")
    resp = dicomweb_client.post("/defined-procedure-protocols", dataset_bytes(ds),
                                headers={"Content-Type": "application/dicom"}, status=200)
    assert _ref_uids(_values(resp.json, REFERENCED)) == [ds.SOPInstanceUID]


def test_npi_store_unreadable_part_fails_with_c000_and_leaves_nothing(dicomweb_app, dicomweb_client):
    content_type, body = stow_body([b"not a dicom file at all" * 10])
    resp = dicomweb_client.post("/color-palettes", body, headers={"Content-Type": content_type}, status=409)
    assert _values(_values(resp.json, FAILED)[0], FAILURE_REASON) == [0xC000]
    blobs = dicomweb_app.archive.npi_blobs
    assert list(blobs.iter_blobs()) == [] and os.listdir(blobs.spool_dir) == []


def test_npi_store_wrong_content_type_is_415(dicomweb_client):
    dicomweb_client.post("/color-palettes", b"{}", headers={"Content-Type": "application/json"}, status=415)
    content_type, body = stow_body([npi_dataset(COLOR_PALETTE)])
    dicomweb_client.post("/color-palettes", body, headers={"Content-Type": content_type.replace(
        "application/dicom", "application/dicom+json")}, status=415)


def test_npi_store_xml_response_when_asked(dicomweb_client):
    content_type, body = stow_body([npi_dataset(COLOR_PALETTE, ContentLabel="X")])
    resp = dicomweb_client.post("/color-palettes", body, headers={"Content-Type": content_type,
                                                                   "Accept": "application/dicom+xml"}, status=200)
    assert resp.headers["Content-Type"] == "application/dicom+xml"
    assert fromstring(resp.body).tag.endswith("NativeDicomModel")


@contextmanager
def app_with(tmp_path, **settings):
    """An app on its own data folder with extra settings, closed (NPI index too) afterwards."""
    app = make_app({"data_dir": str(tmp_path / "d"), "fsync": "false", **settings})
    try:
        yield app, webtest.TestApp(app, lint=True)
    finally:
        app.archive.close_npi()
        app.close()


def test_npi_duplicate_under_reject_policy_is_0111(tmp_path):
    with app_with(tmp_path, duplicate_policy="reject") as (app, client):
        ds = npi_dataset(COLOR_PALETTE, ContentLabel="ONE")
        post(client, "/color-palettes", [ds], 200)
        resp = post(client, "/color-palettes", [ds], 409)
        assert _values(_values(resp.json, FAILED)[0], FAILURE_REASON) == [0x0111]
        assert len(list(app.archive.npi_blobs.iter_blobs())) == 1


def test_npi_duplicate_under_replace_policy_keeps_the_new_one(tmp_path):
    with app_with(tmp_path, duplicate_policy="replace") as (app, client):
        ds = npi_dataset(COLOR_PALETTE, ContentLabel="OLD")
        post(client, "/color-palettes", [ds], 200)
        ds.ContentLabel = "NEW"
        post(client, "/color-palettes", [ds], 200)
        assert _uids(client.get("/color-palettes", {"ContentLabel": "NEW"}, status=200).json) == [ds.SOPInstanceUID]
        assert client.get("/color-palettes", {"ContentLabel": "OLD"}, status=200).json == []
        assert len(list(app.archive.npi_blobs.iter_blobs())) == 1  # the replaced blob is gone


def test_npi_instances_survive_a_restart_and_gc_keeps_them(tmp_path):
    ds = npi_dataset(COLOR_PALETTE, ContentLabel="KEEP")
    with app_with(tmp_path) as (first, client):
        post(client, "/color-palettes", [ds], 200)
        with open(os.path.join(first.archive.npi_blobs.spool_dir, "orphan.part"), "wb") as fh:
            fh.write(b"x")
    with app_with(tmp_path) as (second, client):
        assert second.archive.gc(grace_seconds=-60) == 0 and second.archive.npi_gc(grace_seconds=-60) == 1
        assert _uids(client.get("/color-palettes", status=200).json) == [ds.SOPInstanceUID]
        client.get(f"/color-palettes/{ds.SOPInstanceUID}", status=200)


# -- retrieve ---------------------------------------------------------------------------------

def test_npi_retrieve_media_types(dicomweb_client):
    palette = pydicom.dcmread(get_palette_files("pet.dcm")[0])
    post(dicomweb_client, "/color-palettes", [palette], 200)
    url = f"/color-palettes/{palette.SOPInstanceUID}"
    multi = dicomweb_client.get(url, headers={"Accept": 'multipart/related; type="application/dicom"'}, status=200)
    parts = parse_multipart(multi.headers["Content-Type"], multi.body)
    assert len(parts) == 1 and parts[0][0]["Content-Location"] == f"http://localhost:80{url}"
    assert pydicom.dcmread(io.BytesIO(parts[0][1])).ContentLabel == palette.ContentLabel
    xml = dicomweb_client.get(url, headers={"Accept": "application/dicom+xml"}, status=200)
    assert xml.headers["Content-Type"] == "application/dicom+xml" and b"PET" in xml.body
    meta = dicomweb_client.get(url, {"accept": "application/dicom+json"}, status=200).json[0]
    assert "InlineBinary" in meta["00282000"] and "BulkDataURI" not in meta["00282000"]  # ICC profile
    dicomweb_client.get(url, headers={"Accept": "image/jpeg"}, status=406)


def test_npi_retrieve_implicit_little_endian_is_sent_explicit(dicomweb_client):
    ds = npi_dataset(COLOR_PALETTE, ImplicitVRLittleEndian, ContentLabel="IMPLICIT")
    post(dicomweb_client, "/color-palettes", [ds], 200)
    for accept in ("application/dicom", "application/dicom; transfer-syntax=*"):
        got = dicomweb_client.get(f"/color-palettes/{ds.SOPInstanceUID}", headers={"Accept": accept}, status=200)
        assert pydicom.dcmread(io.BytesIO(got.body)).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


def test_npi_retrieve_unknown_instance_or_resource(dicomweb_client):
    dicomweb_client.get(f"/color-palettes/{generate_uid()}", status=404)
    dicomweb_client.get("/color-palettes/not-a-uid", status=400)
    dicomweb_client.get(f"/palettes/{generate_uid()}", status=404)
    dicomweb_client.get("/palettes", status=404)


# -- search -----------------------------------------------------------------------------------

@pytest.fixture
def protocols(dicomweb_client):
    stored = [hanging_protocol("CHEST PA", "CR", "20230105080000"), hanging_protocol("CHEST LAT", "CR",
                                                                                   "20240210093000"),
              hanging_protocol("BRAIN", "MR", "20240630170000")]
    post(dicomweb_client, "/hanging-protocols", stored, 200)
    return [ds.SOPInstanceUID for ds in stored]


@pytest.mark.parametrize("query, expected", [
    ({"HangingProtocolName": "CHEST*"}, [0, 1]),
    ({"HangingProtocolName": "CHEST ?A"}, [0]),
    ({"00720002": "BRAIN"}, [2]),
    ({"HangingProtocolDefinitionSequence.Modality": "CR"}, [0, 1]),
    ({"0072000C.00080060": "MR"}, [2]),
    ({"HangingProtocolCreationDateTime": "2024-"}, [1, 2]),
    ({"HangingProtocolCreationDateTime": "20240101-20240301"}, [1]),
    ({"HangingProtocolCreationDateTime": "-2023"}, [0]),
    ({"HangingProtocolCreationDateTime": "202402"}, [1]),
    ({"HangingProtocolName": "CHEST*", "HangingProtocolDefinitionSequence.Modality": "MR"}, []),
    ({"HangingProtocolName": ""}, [0, 1, 2]),
    ({"HangingProtocolName": "chest*"}, []),
    ({"unknownparameter": "x", "charset": "utf-8"}, [0, 1, 2]),
])
def test_npi_search_matching(dicomweb_client, protocols, query, expected):
    found = dicomweb_client.get("/hanging-protocols", query, status=200).json
    assert _uids(found) == [protocols[i] for i in expected]


def test_npi_search_uid_lists(dicomweb_client, protocols):
    found = dicomweb_client.get("/hanging-protocols", {"SOPInstanceUID": f"{protocols[2]},{protocols[0]}"},
                                status=200).json
    assert _uids(found) == [protocols[0], protocols[2]]
    found = dicomweb_client.get("/hanging-protocols", {"SOPInstanceUID": f"{protocols[1]}\\{protocols[2]}"},
                                status=200).json
    assert _uids(found) == protocols[1:]
    dicomweb_client.get("/hanging-protocols", {"SOPInstanceUID": "1.2.x"}, status=400)


def test_npi_search_paging_announces_more(dicomweb_client, protocols):
    page = dicomweb_client.get("/hanging-protocols", {"limit": "2"}, status=200)
    assert _uids(page.json) == protocols[:2]
    assert "There are 1 additional results" in page.headers["Warning"]
    rest = dicomweb_client.get("/hanging-protocols", {"limit": "2", "offset": "2"}, status=200)
    assert _uids(rest.json) == protocols[2:] and "Warning" not in rest.headers
    assert dicomweb_client.get("/hanging-protocols", {"offset": "5"}, status=200).json == []
    for bad in ({"limit": "abc"}, {"offset": "-1"}):
        dicomweb_client.get("/hanging-protocols", bad, status=400)


def test_npi_search_paging_warning_is_the_qido_warning(dicomweb_client, protocols):
    # conformance.md §3.7: paging as QIDO-RS, with the same Warning (RFC 9111 §5.5: a quoted warn-text).
    for patient in ("A", "B"):
        store(dicomweb_client, [make_dataset(PatientID=patient)])
    qido = dicomweb_client.get("/studies", {"limit": "1"}, status=200).headers.getall("Warning")
    npi = dicomweb_client.get("/hanging-protocols", {"limit": "2"}, status=200).headers.getall("Warning")
    assert npi == qido == ['299 localhost:80 "There are 1 additional results that can be requested"']


def test_npi_search_return_keys_and_includefield(dicomweb_client, protocols):
    default = dicomweb_client.get("/hanging-protocols", status=200).json[0]
    assert {"00080016", "00080018", "00720002", "0072000C", "00081190"} <= set(default)
    assert "00720004" in default  # HangingProtocolDescription: a return key of the model
    assert list(default) == sorted(default)
    one = dicomweb_client.get("/hanging-protocols", {"includefield": "SpecificCharacterSet,00720014"},
                              status=200).json[0]
    assert "00720014" in one
    every = dicomweb_client.get("/hanging-protocols", {"includefield": "all"}, status=200).json[0]
    assert set(default) <= set(every)


def test_npi_search_non_matching_key_is_returned_with_a_warning(dicomweb_client, protocols):
    resp = dicomweb_client.get("/hanging-protocols", {"ContentLabel": "X"}, status=200)
    assert len(resp.json) == 3 and "not matching keys of /hanging-protocols" in resp.headers["Warning"]
    assert all("00700080" not in result for result in resp.json)  # asked for, but none has it


def test_npi_search_key_inside_a_matching_sequence_is_matched_only_if_a_matching_key(dicomweb_client, protocols):
    # StudyDescription in HangingProtocolDefinitionSequence is no matching key; Modality there is.
    resp = dicomweb_client.get("/hanging-protocols", {"HangingProtocolDefinitionSequence.StudyDescription": "zzz"},
                               status=200)
    assert _uids(resp.json) == protocols
    assert "returned but not matched: 0072000C.00081030" in resp.headers["Warning"]
    resp = dicomweb_client.get("/hanging-protocols", {"HangingProtocolDefinitionSequence.StudyDescription": "zzz",
                                                      "HangingProtocolDefinitionSequence.Modality": "CR"}, status=200)
    assert _uids(resp.json) == protocols[:2] and "0072000C.00081030" in resp.headers["Warning"]


def test_npi_search_xml_multipart(dicomweb_client, protocols):
    resp = dicomweb_client.get("/hanging-protocols", headers={
        "Accept": 'multipart/related; type="application/dicom+xml"'}, status=200)
    parts = parse_multipart(resp.headers["Content-Type"], resp.body)
    assert len(parts) == 3 and all(fromstring(body).tag.endswith("NativeDicomModel") for _, body in parts)
    dicomweb_client.get("/hanging-protocols", headers={"Accept": "image/png"}, status=406)
    dicomweb_client.get("/color-palettes", headers={"Accept": 'multipart/related; type="application/dicom+xml"'},
                        status=204)


def test_npi_search_implant_group_and_nested_anatomy(dicomweb_client):
    group = npi_dataset(IMPLANT_GROUP, ImplantTemplateGroupName="HIP SET", ImplantTemplateGroupIssuer="ACME")
    stem = npi_dataset(GENERIC_IMPLANT, ImplantName="STEM", ImplantTargetAnatomySequence=[
        _item(AnatomicRegionSequence=[_item(CodeValue="T-15710", CodingSchemeDesignator="SRT",
                                            CodeMeaning="Hip joint")])])
    post(dicomweb_client, "/implant-templates", [group, stem], 200)
    found = dicomweb_client.get("/implant-templates", {"ImplantTemplateGroupName": "HIP*"}, status=200).json
    assert _uids(found) == [group.SOPInstanceUID]
    found = dicomweb_client.get("/implant-templates", {
        "ImplantTargetAnatomySequence.AnatomicRegionSequence.CodeValue": "T-15710"}, status=200).json
    assert _uids(found) == [stem.SOPInstanceUID]
    found = dicomweb_client.get("/implant-templates", {"SOPClassUID": IMPLANT_GROUP}, status=200).json
    assert _uids(found) == [group.SOPInstanceUID]
