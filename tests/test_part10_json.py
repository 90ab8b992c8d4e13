"""The store's fast reader (``part10_json``) against the pydicom reader it replaces: for every input,
``prepare`` gives the same ``Prepared`` record field by field (DICOM JSON, bulk data references and
offsets, frame layout, columns, digest) or the same refusal, whichever reader ran. Inputs: pydicom's
bundled test files, ``make_dataset`` variants, hypothesis-generated data sets, and truncated or
corrupted files (where the fast reader must decline, never crash or accept what pydicom refuses)."""
from __future__ import annotations

import base64
import logging
import os
import random
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, RLELossless,
                         generate_uid)

from dicomweb_wsgi import part10_json
from dicomweb_wsgi.errors import DicomStatus
from dicomweb_wsgi.model import NON_PATIENT_SOP_CLASSES
from dicomweb_wsgi.ingest import IN_MEMORY_LIMIT, IngestError, Prepared, add_missing_preamble, prepare
from dicomweb_wsgi.testing import dataset_bytes, make_dataset, new_uid, store

_FAST_LOGGER = "dicomweb_wsgi.part10_json"


def _outcome(path: Path, data: bytes, fast: bool, threshold: int) -> Prepared | tuple:
    path.write_bytes(data)
    try:
        return prepare(str(path), bulk_threshold=threshold, fast=fast)
    except IngestError as exc:
        return ("refused", exc.code, exc.reason, exc.sop_class_uid, exc.sop_uid)


def _taken(path: Path, data: bytes, threshold: int) -> bool:
    """Whether the fast reader handles the upload (after the preamble ``prepare`` would add)."""
    path.write_bytes(data)
    add_missing_preamble(str(path))
    size = path.stat().st_size
    source = path.read_bytes() if size <= IN_MEMORY_LIMIT else str(path)
    return part10_json.parse(source, size, bulk_prefix="%%PREFIX%%", threshold=threshold) is not None


def _same(tmp_path: Path, data: bytes, threshold: int = 1024) -> bool:
    """Assert both readers give the same outcome for ``data``; return whether the fast one took it."""
    path = tmp_path / "upload.dcm"
    slow = _outcome(path, data, False, threshold)
    fast = _outcome(path, data, True, threshold)
    if isinstance(fast, Prepared) and isinstance(slow, Prepared):
        for field in Prepared.__dataclass_fields__:
            assert getattr(fast, field) == getattr(slow, field), field
    assert fast == slow
    return _taken(path, data, threshold)


@pytest.fixture(autouse=True)
def _quiet_pydicom(caplog):
    """pydicom warns about the damaged inputs on purpose; the fast reader must log nothing (it logs
    only an unexpected error, which would be a bug)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with caplog.at_level(logging.WARNING, logger=_FAST_LOGGER):
            yield
    assert not [r for r in caplog.records if r.name == _FAST_LOGGER]


# --------------------------------------------------------------------------- pydicom's test files

_BUNDLED = sorted(p for p in get_testdata_files() if os.path.isfile(p))


def test_bundled_files_give_the_same_record_and_most_take_the_fast_path(tmp_path):
    taken, declined = [], []
    for name in _BUNDLED:
        data = Path(name).read_bytes()
        for threshold in (1024, 64):
            (taken if _same(tmp_path, data, threshold) else declined).append((os.path.basename(name), threshold))
    print("declined by the fast reader:", sorted({name for name, _ in declined}))
    assert len(taken) >= 220, declined
    by_name = {name for name, threshold in taken if threshold == 1024}
    # Explicit and implicit VR, native and encapsulated, sequences, multi-frame, private tags, charsets.
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm", "SC_rgb_rle_2frame.dcm",
                 "emri_small.dcm", "rtplan.dcm", "color3d_jpeg_baseline.dcm", "liver.dcm", "chr_FR.dcm",
                 "SC_rgb_32bit_2frame.dcm", "rtdose.dcm",
                 "waveform_ecg.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm", "JPGExtended.dcm"):
        if get_testdata_file(name) is not None:
            assert name in by_name, name


# --------------------------------------------------------------------------- make_dataset variants


def _jpeg_dataset(frames: int, fragments_per_frame: int = 1, with_eot: bool = False, bot: bool = True,
                  **attributes) -> Dataset:
    ds = make_dataset(rows=16, columns=16, bits=8, transfer_syntax=JPEGBaseline8Bit, **attributes)
    # each fragment starts like a frame (SOI), so only an offset table can group them into frames
    half = [b"\xff\xd8\xff\xe0" + bytes([n]) * (300 + 8 * n) for n in range(frames)]
    frame_data = [h * fragments_per_frame for h in half]
    ds.PixelData = encapsulate(frame_data, fragments_per_frame=fragments_per_frame, has_bot=bot and not with_eot)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    if frames > 1:
        ds.NumberOfFrames = frames
    if with_eot:
        offsets, position = [], 0
        for fragment in half:
            offsets.append(position)
            position += fragments_per_frame * (8 + len(fragment))
        ds.ExtendedOffsetTable = b"".join(o.to_bytes(8, "little") for o in offsets)
        ds.ExtendedOffsetTableLengths = b"".join(len(f).to_bytes(8, "little") for f in frame_data)
    return ds


def _sequence(undefined: bool, items: list[Dataset], items_undefined: bool = False) -> DataElement:
    for item in items:
        item.is_undefined_length_sequence_item = items_undefined
    elem = DataElement(0x00081115, "SQ", Sequence(items))  # Referenced Series Sequence
    elem.is_undefined_length = undefined
    return elem


def _item(depth: int, big: bool = False) -> Dataset:
    item = Dataset()
    item.SeriesInstanceUID = generate_uid()
    item.PatientName = "Inner^Name=Ideo^Graphic"
    item.ReferencedFrameNumber = ["1", "2", "3"]
    if big:
        item.add_new(0x00091010, "OB", bytes(range(256)) * 8)  # bulk inside an item
        item.add_new(0x00091011, "OB", b"\x01\x02" * 10)  # inline inside an item
    if depth:
        inner = DataElement(0x0008114A, "SQ", Sequence([_item(depth - 1, big), Dataset()]))
        inner.is_undefined_length = depth % 2 == 0
        item[0x0008114A] = inner
    return item


def _with_sequences(undefined: bool, items_undefined: bool, **kwargs) -> Dataset:
    ds = make_dataset(**kwargs)
    ds[0x00081115] = _sequence(undefined, [_item(2, big=True), _item(0), Dataset()], items_undefined)
    ds.add_new(0x00091000 | 0x10, "LO", "ACME 1.0")  # a private block
    ds.add_new(0x00091000 | 0x10 << 8 | 0x01, "DS", ["1.5", "2"])
    return ds


def _private_known(ds: Dataset) -> Dataset:
    # GEMS_ACQU_01 is in pydicom's private dictionary: under implicit VR the VRs come from it
    ds.add_new(0x00190010, "LO", "GEMS_ACQU_01")
    ds.add_new(0x00191002, "SL", -5)
    ds.add_new(0x00191003, "DS", "2.5")
    ds.add_new(0x00191011, "SS", [-1, 2])
    ds.add_new(0x00191018, "LO", "hello")
    ds.add_new(0x00191006, "UN", b"\x00\x01")
    return ds


def _with_raw(ds: Dataset, *elements: tuple[int, str, bytes]) -> Dataset:
    """``ds`` with elements whose value bytes are written exactly as given."""
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    for tag, vr, value in elements:
        # pydicom converts a private element as it is set: put it in place raw
        ds._dict[BaseTag(tag)] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True)
    if not implicit and ds["PixelData"].VR == "OB or OW":
        ds["PixelData"].VR = "OW"  # what pydicom's writer would pick; _keep_raw stops it from deciding
    _keep_raw(ds, implicit)
    return ds


def _keep_raw(ds: Dataset, implicit: bool) -> None:
    """Make pydicom write raw values as they are (it re-encodes a data set read in another encoding)."""
    ds.set_original_encoding(implicit, True, ds._character_set)
    for elem in ds.values():
        if isinstance(elem, DataElement) and elem.VR == "SQ":
            for item in elem.value:
                _keep_raw(item, implicit)


def _variants() -> dict[str, bytes]:
    implicit = {"transfer_syntax": ImplicitVRLittleEndian}
    out: dict[str, Dataset] = {
        "tiny pixel data (read, not deferred)": make_dataset(),
        "64x64": make_dataset(rows=64, columns=64),
        "8-bit": make_dataset(rows=40, columns=40, bits=8),
        "1-bit, 3 frames": make_dataset(rows=9, columns=7, frames=3, bits=1),
        "multi-frame": make_dataset(rows=32, columns=32, frames=5),
        "implicit": make_dataset(rows=64, columns=64, **implicit),
        "implicit multi-frame": make_dataset(rows=32, columns=32, frames=4, **implicit),
        "implicit US or SS": make_dataset(rows=64, columns=64, SmallestImagePixelValue=0,
                                          LargestImagePixelValue=4095, **implicit),
        "no charset": make_dataset(rows=64, columns=64, SpecificCharacterSet=None),
        "ISO_IR 6": make_dataset(rows=64, columns=64, SpecificCharacterSet="ISO_IR 6"),
        "ISO_IR 100": make_dataset(rows=64, columns=64, PatientName="Müller^Jürgen", StudyDescription="Thorax é"),
        "ISO_IR 192": make_dataset(rows=64, columns=64, SpecificCharacterSet="ISO_IR 192",
                                   PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう", StudyDescription="胸部 CT"),
        "ISO 2022 (declined)": make_dataset(SpecificCharacterSet=["", "ISO 2022 IR 87"],
                                            PatientName="Yamada^Tarou=山田^太郎"),
        "ISO_IR 144 (declined)": make_dataset(SpecificCharacterSet="ISO_IR 144", PatientName="Люкceмбypг"),
        "multi-valued, numbers": make_dataset(rows=64, columns=64, ImageType=["ORIGINAL", "PRIMARY", ""],
                                              PixelSpacing=["0.5", "1e-3"], WindowCenter=["40", "-1.5E2"],
                                              ImagePositionPatient=["1", "2", "3.25"], SliceThickness="5."),
        "JPEG, 1 frame": _jpeg_dataset(1),
        "JPEG, 3 frames, 2 fragments each": _jpeg_dataset(3, fragments_per_frame=2),
        "JPEG, 3 frames, no offset table": _jpeg_dataset(3, bot=False),
        "JPEG, Extended Offset Table": _jpeg_dataset(3, fragments_per_frame=2, with_eot=True),
        "JPEG, frame count with a space": _with_raw(_jpeg_dataset(2, bot=False), (0x00280008, "IS", b"2 ")),
        # pydicom reads the IS "2.0" as 2, the DICOM JSON keeps it as the string "2.0"
        "JPEG, frame count 2.0": _with_raw(_jpeg_dataset(2, bot=False), (0x00280008, "IS", b"2.0 ")),
        "tiny native, frame count 2.0": _with_raw(make_dataset(rows=4, columns=4, frames=2),
                                                  (0x00280008, "IS", b"2.0 ")),
        "sequences, defined lengths": _with_sequences(False, False, rows=64, columns=64),
        "sequences, undefined lengths": _with_sequences(True, True, rows=64, columns=64),
        "sequences, mixed lengths": _with_sequences(True, False, rows=64, columns=64),
        "implicit sequences": _with_sequences(True, False, rows=64, columns=64, **implicit),
        "implicit sequences, defined": _with_sequences(False, False, rows=64, columns=64, **implicit),
        "private, explicit": _private_known(make_dataset(rows=64, columns=64)),
        "private, implicit": _private_known(make_dataset(rows=64, columns=64, **implicit)),
        "empty sequence": make_dataset(ReferencedSeriesSequence=Sequence([])),
        "binary VRs": make_dataset(rows=64, columns=64, RedPaletteColorLookupTableData=b"\x01\x02" * 700,
                                   FloatPixelData=b"", SelectorOBValue=b"\x00" * 1024,
                                   SelectorOLValue=b"\x01\x00\x00\x00" * 300, SelectorODValue=b"\x00" * 16,
                                   SelectorOFValue=b"\x00" * 1028, SelectorOVValue=b"\x00" * 8,
                                   SelectorSVValue=[-1, 2], SelectorUVValue=[1 << 63],
                                   SelectorFLValue=[1.5, float("nan")], SelectorFDValue=[float("inf"), -2.25],
                                   SelectorATValue=[0x00100010, 0x7FE00010], SelectorSLValue=[-7],
                                   SelectorULValue=[7], SelectorUSValue=[3, 4], SelectorSSValue=[-3]),
    }
    with_rle = make_dataset(rows=16, columns=16, bits=8, transfer_syntax=RLELossless)
    with_rle.PixelData = encapsulate([b"\x01\x00\x00\x00\x40\x00\x00\x00" + bytes(56) + b"\x00\x07" * 8])
    with_rle["PixelData"].VR = "OB"
    with_rle["PixelData"].is_undefined_length = True
    out["RLE"] = with_rle
    out["UN of a known tag (declined)"] = _with_raw(make_dataset(rows=64, columns=64),
                                                    (0x00181030, "UN", b"PROTOCOL"))
    out["private UN of a known creator (declined)"] = _with_raw(
        make_dataset(rows=64, columns=64), (0x00190010, "LO", b"GEMS_ACQU_01"), (0x00191018, "UN", b"hello "))
    out["text before the character set (declined)"] = _with_raw(
        make_dataset(rows=64, columns=64, SpecificCharacterSet="ISO_IR 192"), (0x00080002, "LO", "é".encode()))
    for name, creator in (("implicit private sequence", b"AGFA-AG_HPState "),
                          ("implicit private sequence, creator padded before (declined)", b" AGFA-AG_HPState"),
                          ("implicit private sequence, creator multi-valued (declined)", b"AGFA-AG_HPState\\X")):
        private_sequence = make_dataset(rows=64, columns=64, **implicit)
        private_sequence.add_new(0x00711018, "SQ", Sequence([_item(1), Dataset()]))  # a sequence in its dictionary
        out[name] = _with_raw(private_sequence, (0x00710010, "LO", creator))
    data = {name: dataset_bytes(ds) for name, ds in out.items()}
    uid = new_uid()
    padded = dataset_bytes(make_dataset(rows=64, columns=64, sop_uid=uid))
    value = b" " + uid.encode() + b" " * (1 + len(uid) % 2)
    at = padded.rindex(b"\x08\x00\x18\x00UI")  # the data set's, not the File Meta's
    end = at + 8 + int.from_bytes(padded[at + 6:at + 8], "little")
    data["SOP UIDs padded"] = padded[:at + 6] + len(value).to_bytes(2, "little") + value + padded[end:]
    return data


_VARIANTS = _variants()


@pytest.mark.parametrize("name", sorted(_VARIANTS))
def test_make_dataset_variants_give_the_same_record(tmp_path, name):
    data = _VARIANTS[name]
    for threshold in (1024, 0, 300, 5000):
        taken = _same(tmp_path, data, threshold)
        if threshold == 1024:
            assert taken == ("declined" not in name)


def _other_syntax_in_meta(data: bytes, old: bytes, new: bytes) -> bytes:
    """``data`` with its File Meta naming another syntax (the data set left as it is)."""
    old_elem, new_elem = b"UI" + len(old).to_bytes(2, "little") + old, b"UI" + len(new).to_bytes(2, "little") + new
    data = data.replace(old_elem, new_elem, 1)
    group_length = int.from_bytes(data[140:144], "little") + len(new) - len(old)
    return data[:140] + group_length.to_bytes(4, "little") + data[144:]


def test_a_data_set_contradicting_its_file_meta_is_left_to_pydicom(tmp_path):
    explicit, implicit = _VARIANTS["64x64"], _VARIANTS["implicit"]
    for data in (_other_syntax_in_meta(explicit, b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.1.2\0"),
                 _other_syntax_in_meta(implicit, b"1.2.840.10008.1.2\0", b"1.2.840.10008.1.2.1\0")):
        assert not _same(tmp_path, data)


def test_a_group_length_or_padding_with_an_unknown_vr_is_left_to_pydicom(tmp_path):
    # Found by benchmarks/fuzz_atheris.py ingest-same: pydicom reads an element whose explicit VR is not a
    # VR as implicit VR, so the 4 bytes after its tag are its length; stepping over it by the 2-byte
    # length gave another outcome (pydicom: truncated file).
    data = dataset_bytes(make_dataset(PatientName="Doe^Jane"))
    name = b"\x10\x00\x10\x00PN"
    group_length = b"\x10\x00\x00\x00UL\x04\x00" + (10 + len("Doe^Jane")).to_bytes(4, "little")
    padding = b"\xfc\xff\xfc\xffOB\x00\x00\x02\x00\x00\x00\x00\x00"
    for element, where in ((group_length, data.index(name)), (padding, len(data))):
        good = data[:where] + element + data[where:]
        assert _same(tmp_path, good)  # stepped over by the fast reader: the same record
        bad = data[:where] + element[:4] + b"\x00N" + element[6:] + data[where:]
        assert not _same(tmp_path, bad)


def test_a_specific_character_set_that_is_not_cs_is_left_to_pydicom(tmp_path):
    # Found by benchmarks/fuzz_atheris.py ingest-same: pydicom reads (0008,0005) as the VR it is given; as SS its
    # values are numbers, charset conversion fails, and the reference path keeps the item's sequence as UN,
    # while the fast reader took the bytes as "ISO_IR 100".
    ds = make_dataset()
    item = Dataset()
    item.SpecificCharacterSet = "ISO_IR 100"
    item.ReferencedSOPInstanceUID = new_uid()
    ds.ReferencedImageSequence = [item]
    data = dataset_bytes(ds)
    charset = b"\x08\x00\x05\x00CS"
    top, nested = data.index(charset), data.index(charset, data.index(charset) + 1)
    assert _same(tmp_path, data)
    for at in (top, nested):
        assert not _same(tmp_path, data[:at + 4] + b"SS" + data[at + 6:])


def test_the_record_is_the_same_without_a_preamble(tmp_path):
    assert _same(tmp_path, _VARIANTS["sequences, undefined lengths"][132:])


# --------------------------------------------------------------------------- files read in parts


def _large(name: str) -> Dataset:
    """Above IN_MEMORY_LIMIT: the fast reader reads the header from the file and skips the pixels."""
    if name == "native":
        return _with_sequences(True, False, rows=600, columns=600, frames=4)
    if name == "encapsulated":
        ds = _jpeg_dataset(1)
        ds.PixelData = encapsulate([b"\xff\xd8\xff" + os.urandom(150_000) + b"\xff\xd9" for _ in range(16)])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.NumberOfFrames = 16
        return ds
    # a header larger than one read (a long sequence), a large value before the pixels, padding after them
    ds = make_dataset(rows=1100, columns=1100, transfer_syntax=ImplicitVRLittleEndian if name == "long header, implicit"
                      else ExplicitVRLittleEndian)
    ds[0x00081115] = _sequence(name.endswith("undefined"), [_item(1) for _ in range(1200)])
    ds.add_new(0x00091010, "LO", "ACME 1.0")
    ds.add_new(0x00091001, "OB", os.urandom(300_000))
    ds.add_new(0xFFFCFFFC, "OB", b"\x00" * 300)
    return ds


@pytest.mark.parametrize("name", ["native", "encapsulated", "long header", "long header, undefined",
                                  "long header, implicit"])
def test_large_files_give_the_same_record_reading_only_their_header(tmp_path, name):
    data = dataset_bytes(_large(name))
    assert len(data) > IN_MEMORY_LIMIT
    assert _same(tmp_path, data)


def test_bulk_data_in_nested_items_is_served_from_the_offsets_the_fast_reader_found(dicomweb_client, tmp_path):
    ds = _with_sequences(True, False, rows=64, columns=64)
    data = dataset_bytes(ds)
    assert _taken(tmp_path / "probe.dcm", data, 1024)
    store(dicomweb_client, [data])
    base = f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    metadata = dicomweb_client.get(base + "/metadata").json[0]
    outer = metadata["00081115"]["Value"][0]
    uri = outer["0008114A"]["Value"][0]["00091010"]["BulkDataURI"]
    resp = dicomweb_client.get(uri[uri.index("/studies/"):], headers={"Accept": "multipart/related; "
                                                                      'type="application/octet-stream"'})
    expected = ds[0x00081115].value[0][0x0008114A].value[0][0x00091010].value
    assert expected in resp.body
    assert outer["00091011"]["InlineBinary"] == base64.b64encode(b"\x01\x02" * 10).decode()


# --------------------------------------------------------------------------- generated data sets

_SUPPORTED_CHARSETS = [None, "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"]
_TEXTS = {
    None: "ABCxyz019 ^=.-+\\", "ISO_IR 6": "ABCxyz019 ^=.-+\\",
    "ISO_IR 100": "ABCxyz019 ^=.-+\\éüß", "ISO_IR 192": "ABCxyz019 ^=.-+\\éü山田", "ISO_IR 144": "ABCЛюк\\",
}
_NUMBERS = ["1", "-1.5", " 2 ", "1e3", "1E-2", ".5", "5.", "+3", "nan", "inf", "-inf", "1,5", "abc", "",
            "00012", "1.0", "12345678901234567890", "-0", "1e999", "0x10"]
_NUMBER_SIZES = {"US": 2, "SS": 2, "UL": 4, "SL": 4, "FL": 4, "FD": 8, "SV": 8, "UV": 8, "AT": 4}
_BINARY = ["OB", "OW", "OF", "OD", "OL", "OV", "UN"]


def _tags_by_vr() -> dict[str, list[int]]:
    from pydicom.datadict import DicomDictionary

    avoid = {0x00080005, 0x00080016, 0x00080018, 0x0020000D, 0x0020000E}
    out: dict[str, list[int]] = {}
    for tag, entry in sorted(DicomDictionary.items()):
        vr = entry[0]
        if tag >> 16 < 8 or tag >> 16 in (0x7FE0, 0xFFFA, 0xFFFC, 0x0028) or not tag & 0xFFFF or tag in avoid:
            continue
        if vr in _BINARY or vr in _NUMBER_SIZES or vr in ("AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT",
                                                           "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"):
            out.setdefault(vr, [])
            if len(out[vr]) < 6:
                out[vr].append(tag)
    return out


_TAGS = _tags_by_vr()
_TEXT_VRS = sorted(vr for vr in _TAGS if vr not in _BINARY and vr not in _NUMBER_SIZES)


@st.composite
def _element(draw, charset: str | None, threshold: int) -> tuple[int, str, bytes, bool]:
    """(tag, VR, value bytes, well formed?)"""
    kind = draw(st.sampled_from(["text", "number", "binary", "DS/IS"]))
    if kind == "DS/IS":
        vr = draw(st.sampled_from(["DS", "IS"]))
        value = "\\".join(draw(st.lists(st.sampled_from(_NUMBERS), min_size=1, max_size=3))).encode()
    elif kind == "text":
        vr = draw(st.sampled_from(_TEXT_VRS))
        text = draw(st.text(st.sampled_from(_TEXTS[charset]), max_size=24))
        value = text.encode({"ISO_IR 100": "latin-1", "ISO_IR 192": "utf-8", "ISO_IR 144": "iso8859-5"}.get(
            charset, "ascii"))
    elif kind == "number":
        vr = draw(st.sampled_from(sorted(_NUMBER_SIZES)))
        count = draw(st.integers(0, 3))
        value = draw(st.binary(min_size=count * _NUMBER_SIZES[vr], max_size=count * _NUMBER_SIZES[vr]))
    else:
        vr = draw(st.sampled_from(_BINARY))
        length = draw(st.sampled_from([0, 2, 8, threshold - 2, threshold, threshold + 2, 3000]))
        value = draw(st.binary(min_size=max(length, 0), max_size=max(length, 0)))
    odd = draw(st.integers(0, 19)) == 0
    if len(value) % 2 and not odd:
        value += b"\x00" if vr == "UI" or vr in _BINARY else b" "
    if odd and not len(value) % 2:
        value += b"X"
    return draw(st.sampled_from(_TAGS[vr])), vr, value, len(value) % 2 == 0


@st.composite
def _data_set(draw, charset: str | None, threshold: int, implicit: bool, depth: int) -> tuple[Dataset, bool]:
    ds = Dataset()
    clean = True
    for tag, vr, value, ok in draw(st.lists(_element(charset, threshold), max_size=8)):
        ds[tag] = RawDataElement(BaseTag(tag), vr, len(value), value, 0, implicit, True)  # type: ignore[arg-type]
        clean = clean and ok
    if draw(st.booleans()):  # a private block of an unknown creator: UN under implicit VR
        ds.add_new(0x00291010, "LO", "ACME GENERATED")
        value = draw(st.binary(max_size=40))
        value += b"\x00" * (len(value) % 2)
        ds._dict[BaseTag(0x00291001)] = RawDataElement(BaseTag(0x00291001), "OB", len(value), value, 0, implicit, True)
    if depth and draw(st.booleans()):
        items = []
        for _ in range(draw(st.integers(0, 3))):
            item, ok = draw(_data_set(charset, threshold, implicit, depth - 1))
            item.is_undefined_length_sequence_item = draw(st.booleans())
            items.append(item)
            clean = clean and ok
        tag = draw(st.sampled_from([0x00081115, 0x00081140, 0x00400275]))
        ds[tag] = DataElement(tag, "SQ", Sequence(items))
        ds[tag].is_undefined_length = draw(st.booleans())
    return ds, clean


@st.composite
def _instances(draw) -> tuple[bytes, int, bool]:
    charset = draw(st.sampled_from(_SUPPORTED_CHARSETS + ["ISO_IR 144"]))
    threshold = draw(st.sampled_from([1024, 1024, 64, 4096]))
    syntax = draw(st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit]))
    implicit = syntax == ImplicitVRLittleEndian
    extra, clean = draw(_data_set(charset, threshold, implicit, 2))
    if syntax == JPEGBaseline8Bit:
        ds = _jpeg_dataset(draw(st.integers(1, 3)))
    else:
        size = draw(st.sampled_from([4, 16, 64]))
        ds = make_dataset(rows=size, columns=size, frames=draw(st.integers(1, 3)), transfer_syntax=syntax)
    ds.SpecificCharacterSet = charset
    ds.update(extra)
    return dataset_bytes(_with_raw(ds)), threshold, clean and charset in _SUPPORTED_CHARSETS


@settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.function_scoped_fixture])
@given(_instances())
def test_generated_data_sets_give_the_same_record(tmp_path, instance):
    data, threshold, clean = instance
    taken = _same(tmp_path, data, threshold)
    if clean:  # even lengths, a supported character set: the fast reader must not decline
        assert taken


# --------------------------------------------------------------------------- damaged files


def _damage_sources() -> list[bytes]:
    ct = get_testdata_file("CT_small.dcm")
    implicit = get_testdata_file("MR_small_implicit.dcm")
    return [_VARIANTS[name] for name in ("sequences, undefined lengths", "implicit sequences",
                                                        "JPEG, 3 frames, 2 fragments each", "private, implicit",
                                                        "64x64")] + \
        [Path(p).read_bytes() for p in (ct, implicit) if p is not None]


@pytest.mark.parametrize("index", range(len(_damage_sources())))
def test_truncated_and_corrupted_files_give_the_same_outcome(tmp_path, index):
    data = _damage_sources()[index]
    rng = random.Random(index)
    header_end = data.find(b"\xe0\x7f\x10\x00") if b"\xe0\x7f\x10\x00" in data else len(data)
    cuts = sorted({rng.randrange(132, len(data)) for _ in range(25)} | {len(data) - n for n in (1, 2, 8, 100)}
                  | {header_end + n for n in (0, 4, 8, 12, 20)})
    for cut in cuts:
        _same(tmp_path, data[:cut])
    for _ in range(60):
        damaged = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(132, min(len(data), header_end + 64))
            damaged[position] ^= 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256)
        _same(tmp_path, bytes(damaged))


def _refusal(tmp_path: Path, data: bytes) -> int:
    outcome = _outcome(tmp_path / "upload.dcm", data, True, 1024)
    assert isinstance(outcome, tuple)
    return outcome[1]


def test_refusals_are_the_same(tmp_path):
    ds = make_dataset(study_uid=new_uid())
    ds.SOPInstanceUID = "1.2.3\\4.5"
    assert not _same(tmp_path, dataset_bytes(ds))  # multi-valued: pydicom converts it, and refuses it
    assert _refusal(tmp_path, dataset_bytes(ds)) == DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    ds = make_dataset()
    del ds.StudyInstanceUID
    assert _same(tmp_path, dataset_bytes(ds))  # read by the fast reader, refused by the shared checks
    assert _refusal(tmp_path, dataset_bytes(ds)) == DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS
    ds = make_dataset(sop_class_uid=sorted(NON_PATIENT_SOP_CLASSES)[0])
    assert _same(tmp_path, dataset_bytes(ds))
    assert _refusal(tmp_path, dataset_bytes(ds)) == DicomStatus.SOP_CLASS_NOT_SUPPORTED
    data = b"not a DICOM file at all" * 10
    assert not _same(tmp_path, data)
    assert _refusal(tmp_path, data) == DicomStatus.CANNOT_UNDERSTAND
