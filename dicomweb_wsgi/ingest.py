"""Turn an uploaded PS3.10 file into an index record: validate, build DICOM JSON, find the frames.

All the work a retrieval would otherwise repeat is done here, once: the instance's DICOM JSON
(so metadata requests never parse files), the study- and series-level attribute sets (for QIDO),
the indexed column values, and the byte layout of frames and bulk data.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError

from . import dicomjson, frames, part10_json
from .errors import DicomStatus
from .model import (INDEXED, Level, NON_PATIENT_SOP_CLASSES, column_value, is_valid_uid, level_of_tag,
                    protect_placeholders)
from .storage.base import InstanceRecord


class IngestError(Exception):
    """An uploaded part cannot be stored; carries the STOW FailureReason."""

    def __init__(self, code: DicomStatus, reason: str, *, sop_class_uid: str | None = None,
                 sop_uid: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_uid = sop_uid


@dataclass(frozen=True)
class Prepared:
    """A parsed upload, not yet stored: the record minus its blob key."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax: str
    size: int
    digest: str
    study_columns: dict
    series_columns: dict
    instance_columns: dict
    study_json: str
    series_json: str
    metadata_json: str
    frames_json: str | None
    bulk_json: str | None

    def record(self, blob_key: str) -> InstanceRecord:
        return InstanceRecord(
            self.study_uid, self.series_uid, self.sop_uid, self.sop_class_uid, self.transfer_syntax, blob_key,
            self.size, self.digest, self.study_columns, self.series_columns, self.instance_columns,
            self.study_json, self.series_json, self.metadata_json, self.frames_json, self.bulk_json)


def bulk_prefix(study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Where an instance's BulkDataURIs point, relative to the placeholder for the public base URL."""
    return f"{dicomjson.BASE_PLACEHOLDER}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}/bulkdata"


def _uid_value(obj: dict, tag: str) -> str | None:
    """The single UID value of ``tag``; None when absent or multi-valued (these UIDs have VM 1)."""
    values = obj.get(tag, {}).get("Value")
    if values and len(values) == 1 and isinstance(values[0], str):
        return values[0].strip()
    return None


def _check_not_truncated(ds: pydicom.Dataset, size: int, ts: str) -> None:
    """Deferred values are not read at parse time: make sure each one lies within the file."""
    if ts == "1.2.840.10008.1.2.1.99":  # deflated: offsets are in the inflated stream
        return
    for elem in ds.values():  # the stored elements as read: raw ones are not converted
        if isinstance(elem, RawDataElement) and elem.value is None and elem.length != 0xFFFFFFFF:
            if elem.value_tell + elem.length > size:
                raise IngestError(DicomStatus.CANNOT_UNDERSTAND,
                                  f"truncated file: element {elem.tag} declares {elem.length} bytes past the end")


def _lacks_preamble(head: bytes) -> bool:
    """Whether a file's first 132 bytes show it starting directly with its File Meta group."""
    return head[128:132] != b"DICM" and head.startswith(b"\x02\x00")


def add_missing_preamble(path: str) -> None:
    """Give a file that starts directly with its File Meta group the PS3.10 preamble and prefix.

    pydicom 3 writes data sets without a preamble unless asked, and dicomweb-client sends what it
    writes; we store and serve PS3.10 files, so the 132 bytes are added once, at store time.
    """
    with open(path, "rb") as fh:
        if not _lacks_preamble(fh.read(132)):
            return
        tmp = path + ".pre"
        try:
            with open(tmp, "wb") as out:
                out.write(b"\x00" * 128 + b"DICM")
                fh.seek(0)
                shutil.copyfileobj(fh, out, 1 << 20)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    os.replace(tmp, path)


# pydicom inflates a deflated data set whole, in memory; about 1 MB of deflate stream can inflate to
# 1 GB, so the inflated size is measured (streaming, in bounded memory) before pydicom sees the file.
MAX_INFLATED_SIZE = 128 << 20
DEFLATED = "1.2.840.10008.1.2.1.99"
# PS3.5 7.1.2: explicit VR elements whose length is 4 bytes after 2 reserved bytes.
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def _deflated_data_start(fh: BinaryIO) -> int | None:
    """Where the deflate stream starts if the file's File Meta names the Deflated syntax, else None.

    Walks the File Meta group (always Explicit VR Little Endian, PS3.10 7.1) after the preamble.
    """
    fh.seek(0)
    if fh.read(132)[128:132] != b"DICM":
        return None
    syntax = None
    while True:
        header = fh.read(8)
        if len(header) < 8 or fh.tell() > 132 + 65536:  # no data set, or no sane File Meta
            return None
        group, element = struct.unpack("<HH", header[:4])
        if group != 2:
            break
        vr = header[4:6]
        length = struct.unpack("<H", header[6:8])[0]
        if vr in _LONG_VRS:
            extra = fh.read(4)
            if len(extra) < 4:
                return None
            length = struct.unpack("<I", extra)[0]
        value = fh.read(min(length, 65536))
        if element == 0x0010:
            syntax = value.rstrip(b"\x00 ").decode("ascii", "replace")
    return fh.tell() - 8 if syntax == DEFLATED else None


def check_inflated_size(source: str | BinaryIO, limit: int = MAX_INFLATED_SIZE) -> None:
    """Refuse a deflated file whose data set inflates beyond ``limit`` bytes (a decompression bomb).

    ``source`` is the file's path or the file itself (seekable, e.g. its bytes in a ``BytesIO``).
    """
    if isinstance(source, str):
        with open(source, "rb") as fh:
            _check_inflated_size(fh, limit)
    else:
        _check_inflated_size(source, limit)


def _check_inflated_size(fh: BinaryIO, limit: int) -> None:
    start = _deflated_data_start(fh)
    if start is None:
        return
    fh.seek(start)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            data = fh.read(1 << 16)
            if not data:
                break
            while data:
                total += len(inflater.decompress(data, 1 << 20))
                if total > limit:
                    raise IngestError(DicomStatus.CANNOT_UNDERSTAND,
                                      f"the deflated data set inflates to more than {limit} bytes")
                data = inflater.unconsumed_tail
    except zlib.error as exc:
        raise IngestError(DicomStatus.CANNOT_UNDERSTAND, f"corrupt deflated data set: {exc}") from exc


# Uploads up to this size are read into memory once and parsed from there: pydicom asks its file for
# the position at every element, and on a real file each ask is a system call (lseek) during which
# the thread lets go of the GIL. Larger files are parsed from disk, so memory per request stays bounded.
IN_MEMORY_LIMIT = 2 << 20


def _read_upload(path: str) -> tuple[bytes | None, int]:
    """The upload's bytes (None above ``IN_MEMORY_LIMIT``) and size, after adding a missing preamble."""
    for _ in range(2):
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            data = fh.readall() if size <= IN_MEMORY_LIMIT else fh.read(132)
        if not _lacks_preamble(data[:132]):
            break
        add_missing_preamble(path)
    return (data if size <= IN_MEMORY_LIMIT else None), size


def _sop_uid_text(ds: pydicom.Dataset, keyword: str, tag: int) -> str:
    """A SOP UID as text: what ``str(ds.get(keyword))`` gives, decoded straight from the raw bytes
    when that is the same (one UI value), without pydicom's conversion and validation."""
    elem = ds.get_item(tag, keep_deferred=True)
    if elem is None:
        return ""
    if type(elem) is RawDataElement and elem.VR in ("UI", None) and isinstance(elem.value, bytes) \
            and b"\\" not in elem.value:
        return elem.value.decode("latin-1").rstrip(" \x00").strip()
    return str(ds.get(keyword, "") or "").strip()


# Where BulkDataURIs point while the instance's UIDs are not yet checked; replaced by bulk_prefix().
_PREFIX = "%%PREFIX%%"


@dataclass(frozen=True)
class _Parse:
    """One upload parsed, by either reader: what the store builds its record from."""

    transfer_syntax: str
    sop_class_uid: str
    sop_uid: str
    obj: dict[str, Any]
    bulk_refs: list[dicomjson.BulkRef]
    layout: Callable[[], frames.FrameLayout | None]


def _parse_with_pydicom(path: str, data: bytes | None, size: int, bulk_threshold: int) -> _Parse:
    """The reference reader: pydicom's ``Dataset`` (deferred values left unread), then ``dataset_to_json``."""
    source: str | BinaryIO = path if data is None else io.BytesIO(data)
    check_inflated_size(source)
    if data is not None:
        source.seek(0)  # type: ignore[union-attr]
    try:
        ds = pydicom.dcmread(source, defer_size=max(bulk_threshold, 256))
        ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    except (InvalidDicomError, EOFError) as exc:
        raise IngestError(DicomStatus.CANNOT_UNDERSTAND, f"not a DICOM PS3.10 file: {exc}") from exc
    except Exception as exc:  # pydicom raises many types on damaged input
        raise IngestError(DicomStatus.CANNOT_UNDERSTAND, f"cannot parse the DICOM file: {exc}") from exc
    try:
        sop_class = _sop_uid_text(ds, "SOPClassUID", 0x00080016)
        sop_uid = _sop_uid_text(ds, "SOPInstanceUID", 0x00080018)
    except Exception as exc:
        raise IngestError(DicomStatus.CANNOT_UNDERSTAND, f"cannot read the SOP identification: {exc}") from exc
    _check_not_truncated(ds, size, ts)
    if not ts or not is_valid_uid(ts):
        raise IngestError(DicomStatus.CANNOT_UNDERSTAND, "missing or invalid TransferSyntaxUID in the file meta",
                          sop_class_uid=sop_class or None, sop_uid=sop_uid or None)
    try:
        obj, bulk_refs = dicomjson.dataset_to_json(ds, bulk_prefix=_PREFIX, threshold=bulk_threshold)
    except Exception as exc:
        raise IngestError(DicomStatus.CANNOT_UNDERSTAND, f"cannot read the data set: {exc}",
                          sop_class_uid=sop_class or None, sop_uid=sop_uid or None) from exc
    return _Parse(ts, sop_class, sop_uid, obj, bulk_refs, lambda: frames.scan_layout(path, ds, obj, size))


def _parse_fast(path: str, data: bytes | None, size: int, bulk_threshold: int) -> _Parse | None:
    """``part10_json``'s reader, or None when the upload is outside what it handles."""
    parsed = part10_json.parse(path if data is None else data, size, bulk_prefix=_PREFIX, threshold=bulk_threshold)
    if parsed is None:
        return None

    def layout() -> frames.FrameLayout | None:
        # What scan_layout gives with the pydicom reader's data set; where that reads values of pydicom's
        # own (see Parsed.layout_from_json), it is asked to, from the file.
        if parsed.pixel_offset is None or parsed.pixel_length is None:
            return None
        if not parsed.layout_from_json:
            return frames.scan_layout(path)
        return frames.layout_at(path if data is None else data, parsed.transfer_syntax, parsed.pixel_offset,
                                parsed.pixel_length, frames.image_from_json(parsed.obj), size)

    return _Parse(parsed.transfer_syntax, parsed.sop_class_uid, parsed.sop_instance_uid, parsed.obj,
                  parsed.bulk_refs, layout)


def _stored_json(obj: dict[str, Any], bulk_uri_prefix: str | None = None) -> str:
    """DICOM JSON text for the index, whose BulkDataURIs start with ``bulk_uri_prefix``: values
    keep no ``%%`` (``protect_placeholders``), so serving replaces only the server's own placeholders."""
    text = dicomjson.dumps(obj)
    if bulk_uri_prefix is None:
        return protect_placeholders(text)
    # A raw NUL never occurs in JSON text (strings escape it): a safe mark for our own prefixes.
    mark = '"BulkDataURI":"'
    text = protect_placeholders(text.replace(mark + _PREFIX, mark + "\0"))
    return text.replace("\0", bulk_uri_prefix)


def prepare(path: str, *, bulk_threshold: int = 1024, fast: bool = True) -> Prepared:
    """Parse and validate one uploaded file; raises IngestError with the FailureReason to report.

    Uploads in the common syntaxes and character sets are read by ``part10_json`` (no pydicom
    ``Dataset``); anything else, and everything with ``fast=False``, by pydicom. Both give the same record.
    """
    data, size = _read_upload(path)
    parsed = _parse_fast(path, data, size, bulk_threshold) if fast else None
    if parsed is None:
        parsed = _parse_with_pydicom(path, data, size, bulk_threshold)
    ts, sop_class, sop_uid, obj = parsed.transfer_syntax, parsed.sop_class_uid, parsed.sop_uid, parsed.obj
    study_uid = _uid_value(obj, "0020000D")
    series_uid = _uid_value(obj, "0020000E")
    for name, value in (("SOPClassUID", sop_class), ("SOPInstanceUID", sop_uid),
                        ("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
        if name == "StudyInstanceUID" and sop_class in NON_PATIENT_SOP_CLASSES:
            # Before the study and series UIDs, which these IODs do not have.
            raise IngestError(DicomStatus.SOP_CLASS_NOT_SUPPORTED,
                              "non-patient SOP class: store it through its Non-Patient Instance resource",
                              sop_class_uid=sop_class, sop_uid=sop_uid)
        if not value or not is_valid_uid(value):
            raise IngestError(DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                              f"{name} is missing or not a valid UID",
                              sop_class_uid=sop_class or None, sop_uid=sop_uid or None)
    assert study_uid and series_uid
    metadata = _stored_json(obj, bulk_prefix(study_uid, series_uid, sop_uid))
    levels: dict[Level, dict] = {Level.STUDY: {}, Level.SERIES: {}}
    for tag, element in obj.items():
        level = level_of_tag(tag)
        if level is not Level.INSTANCE:
            levels[level][tag] = element
    columns: dict[Level, dict] = {Level.STUDY: {}, Level.SERIES: {}, Level.INSTANCE: {}}
    for attr in INDEXED:
        element = obj.get(attr.tag)
        if element is not None:
            columns[attr.level][attr.column] = column_value(element)
    try:
        layout = parsed.layout()
    except Exception:  # a damaged pixel data element is served by parsing the file instead
        layout = None
    if data is not None:
        digest = hashlib.sha256(data).hexdigest()
    else:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
            size = fh.tell()
    if layout is not None and layout.fragments is not None and any(
            offset + length > size for frame in layout.fragments for offset, length in frame):
        # An item length inside encapsulated Pixel Data (undefined length, so not checked above) lies.
        raise IngestError(DicomStatus.CANNOT_UNDERSTAND, "truncated file: a Pixel Data fragment ends past the end",
                          sop_class_uid=sop_class, sop_uid=sop_uid)
    bulk = [{"path": r.path, "vr": r.vr, "offset": r.offset, "length": r.length} for r in parsed.bulk_refs]
    return Prepared(
        study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, sop_class_uid=sop_class,
        transfer_syntax=ts, size=size, digest=digest,
        study_columns=columns[Level.STUDY], series_columns=columns[Level.SERIES],
        instance_columns=columns[Level.INSTANCE],
        study_json=_stored_json(levels[Level.STUDY]), series_json=_stored_json(levels[Level.SERIES]),
        metadata_json=metadata, frames_json=layout.to_json() if layout is not None else None,
        bulk_json=json.dumps(bulk, separators=(",", ":")) if bulk else None)
