"""STOW-RS of metadata and bulk data (PS3.18 §10.5): turn the parts into PS3.10 files.

Supports the two metadata forms of a ``multipart/related`` request:

* ``type="application/dicom+json"``: one part (or several) holding a JSON array of DICOM JSON
  instances (PS3.18 Annex F); a single object is taken as an array of one;
* ``type="application/dicom+xml"``: one PS3.19 NativeDicomModel part per instance (parsed with
  defusedxml, so DTDs and entities are refused).

Every other part is bulk data, found by its ``Content-Location`` (the BulkDataURI in the
metadata, compared as an exact string) or, for ``cid:`` URIs, by its ``Content-ID``. Pixel Data
may come as several parts: all with the BulkDataURI itself, or as ``{BulkDataURI}/frames/{n}``.

* ``application/octet-stream`` parts are little-endian values (PS3.18 §8.7.3); the instance is
  then stored as Explicit VR Little Endian.
* Compressed Pixel Data parts (``image/jpeg``, ``image/jls``, ``image/jp2``, ``image/jpx``,
  ``image/jphc``, ``image/dicom-rle``, or octet-stream with a compressed ``transfer-syntax``) hold
  one frame each. They are encapsulated with a Basic Offset Table (PS3.5 A.4) and the instance is
  stored in the matching transfer syntax. Without a ``transfer-syntax`` parameter the syntax is
  read from the codestream: the JPEG SOF marker (baseline, extended, lossless, selection value
  1), the JPEG-LS NEAR value, or whether the JPEG 2000 wavelet is reversible. Image Pixel
  Description attributes the metadata leaves out (Rows, Columns, Samples per Pixel, Bits
  Allocated/Stored, High Bit, Pixel Representation, Photometric Interpretation, Planar
  Configuration, Number of Frames) are derived from the JPEG, JPEG-LS or JPEG 2000 codestream
  (PS3.18 §10.5 lets the request omit them). RLE needs them in the metadata.

The file meta is rebuilt from the data set (group 0002 in the metadata is ignored). Text that
the declared Specific Character Set cannot carry makes it ``ISO_IR 192`` (UTF-8), the encoding
of DICOM JSON. An instance that cannot be built (a missing bulk data part, a bad value, no SOP
UIDs) is a failure of that instance only, in JSON and XML alike: an XML part with an attribute
that cannot be read fails its instance with 0xC000, named by its SOP Instance UID when that
attribute could be read. A metadata part that cannot be read at all is a 400 for the request:
one that is not JSON or holds something other than objects, or one that is not well-formed XML,
has a DTD or is not a NativeDicomModel document.
Not supported: media types that need pixel transformation (``image/png``, ``image/gif``, video
without a ``transfer-syntax``).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from typing import Any, Iterable

import pydicom
from pydicom.charset import convert_encodings, decode_bytes, encode_string
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .. import dicomjson
from ..archive import StoreResult
from ..errors import BadRequest, DicomStatus, PayloadTooLarge
from ..model import is_valid_uid
from ..multipart import Part
from ..transcode import (EXPLICIT_VR_LE, J2K, J2K_LOSSLESS, J2K_MC, J2K_MC_LOSSLESS, JPEG_BASELINE,
                         JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS, JPEG_LS_NEAR,
                         HTJ2K, HTJ2K_LOSSLESS, MEDIA_TYPE_SYNTAXES, RLE)

METADATA_TYPES = frozenset({"application/dicom+json", "application/dicom+xml"})
# A metadata part is parsed in memory; bulk data stays on disk until its instance is built.
MAX_METADATA_PART = 256 << 20
_NATIVE = frozenset({EXPLICIT_VR_LE, "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
_JPEG_TYPES = ("image/jpeg", "image/jls")
_J2K_TYPES = {"image/jp2": (J2K_LOSSLESS, J2K), "image/jpx": (J2K_MC_LOSSLESS, J2K_MC),
              "image/jphc": (HTJ2K_LOSSLESS, HTJ2K)}
_FRAMES_RE = re.compile(r"/frames/(\d{1,9})$")
_PN_SEPARATORS = re.compile(r"[=^]")
# PS3.5 6.1.2.5.3: after these, an ISO 2022 code extension falls back to the first character set
_TEXT_DELIMITERS = {0x09, 0x0A, 0x0C, 0x0D}


class _InstanceFailure(Exception):
    """One instance cannot be built; carries the STOW FailureReason."""

    def __init__(self, code: DicomStatus, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def build_instances(parts: Iterable[Part], part_type: str,
                    spool_dir: str) -> tuple[list[str], list[StoreResult], dict[str, str]]:
    """Read every part and write one PS3.10 file per instance into ``spool_dir``.

    Returns the spooled paths (for ``Archive.store_files``, which consumes them), the failures of
    instances that could not be built, and, by SOP Instance UID, what was coerced in the others
    (each recorded in the instance's Original Attributes Sequence; the response warns of it).
    The parts' spool files are always removed. Raises :class:`BadRequest` when there is no usable
    metadata part.
    """
    spooled: list[Part] = []
    written: list[str] = []
    try:
        metadata: list[dict[str, Any] | _Unreadable] = []
        bulk: dict[str, list[Part]] = {}
        for number, part in enumerate(parts, 1):
            spooled.append(part)
            ctype = part.content_type.type if part.content_type is not None else None
            if ctype == part_type or (ctype is None and number == 1):
                metadata.extend(_read_metadata(part, part_type, number))
                continue
            keys = [part.content_location] if part.content_location else []
            content_id = part.headers.get("content-id", "").strip().strip("<>")
            if content_id:
                keys.append("cid:" + content_id)
            if not keys:
                raise BadRequest(f"part {number}: a bulk data part needs a Content-Location")
            for key in keys:
                bulk.setdefault(key, []).append(part)
        if not metadata:
            raise BadRequest(f"the request has no {part_type} part with instance metadata")
        failures: list[StoreResult] = []
        coerced: dict[str, str] = {}
        for entry in metadata:
            obj = entry.readable if isinstance(entry, _Unreadable) else entry
            try:
                if isinstance(entry, _Unreadable):
                    raise _InstanceFailure(DicomStatus.CANNOT_UNDERSTAND, entry.reason)
                path, coercion = _write_instance(obj, _BulkParts(bulk), spool_dir)
                written.append(path)
                if coercion:
                    coerced[str(_uid(obj, "00080018"))] = coercion
            except _InstanceFailure as exc:
                failures.append(StoreResult(_uid(obj, "00080016"), _uid(obj, "00080018"), _uid(obj, "0020000D"),
                                            _uid(obj, "0020000E"), exc.code, exc.reason))
        return written, failures, coerced
    except BaseException:
        discard(written)
        raise
    finally:
        discard(part.path for part in spooled)


def discard(paths: Iterable[str]) -> None:
    """Remove spool files that are still there (``store_files`` moves the ones it stores)."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@dataclass
class _Unreadable:
    """An XML metadata part whose instance cannot be read: the attributes that could be, and why."""

    readable: dict[str, Any]
    reason: str


def _read_metadata(part: Part, part_type: str, number: int) -> list[dict[str, Any] | _Unreadable]:
    if part.size > MAX_METADATA_PART:
        raise PayloadTooLarge(f"part {number}: metadata parts are limited to {MAX_METADATA_PART} bytes")
    with open(part.path, "rb") as fh:
        data = fh.read()
    if part_type == "application/dicom+xml":
        try:
            return [dicomjson.xml_to_json(data)]
        except dicomjson.XmlDatasetError as exc:
            return [_Unreadable(exc.readable, exc.reason)]
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"part {number}: not valid DICOM JSON: {exc}") from None
    except RecursionError:
        raise BadRequest(f"part {number}: DICOM JSON nested too deeply") from None
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, dict) for item in items):
        raise BadRequest(f"part {number}: DICOM JSON must be an array of objects (PS3.18 F.2)")
    return items


def _uid(obj: dict[str, Any], tag: str) -> str | None:
    attr = obj.get(tag)
    values = attr.get("Value") if isinstance(attr, dict) else None
    if isinstance(values, list) and values and isinstance(values[0], str):
        value = values[0].strip()
        return value if is_valid_uid(value) else None
    return None


# --------------------------------------------------------------------------------------------
# Bulk data


class _BulkParts:
    """Bulk data parts by URI; remembers which parts went into Pixel Data."""

    def __init__(self, parts: dict[str, list[Part]]) -> None:
        self.parts = parts

    def find(self, uri: str) -> list[Part]:
        found = list(self.parts.get(uri, []))
        numbered = []
        for key, parts in self.parts.items():
            if key.startswith(uri) and (m := _FRAMES_RE.fullmatch(key[len(uri):])):
                numbered += [(int(m.group(1)), i, p) for i, p in enumerate(parts)]
        found += [p for _, _, p in sorted(numbered, key=lambda t: (t[0], t[1]))]
        if not found:
            raise LookupError(uri)
        return found

    @staticmethod
    def read(part: Part) -> bytes:
        with open(part.path, "rb") as fh:
            return fh.read()


@dataclass
class _Pixels:
    """Compressed Pixel Data taken from bulk parts: the syntax and the frames' codestreams."""

    syntax: str
    frames: list[bytes]


def _write_instance(obj: dict[str, Any], bulk: _BulkParts, spool_dir: str) -> tuple[str, str | None]:
    """The instance as a spooled PS3.10 file, and what was coerced in it (None: nothing)."""
    sop_class, sop_uid = _uid(obj, "00080016"), _uid(obj, "00080018")
    if not sop_class or not sop_uid:
        raise _InstanceFailure(DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                               "SOPClassUID and SOPInstanceUID are required")
    pixel_attr = obj.get("7FE00010")
    pixel_uri = pixel_attr.get("BulkDataURI") if isinstance(pixel_attr, dict) else None
    if isinstance(pixel_uri, list) and len(pixel_uri) == 1:
        pixel_uri = pixel_uri[0]
    compressed: list[_Pixels] = []

    def loader(uri: str) -> bytes:
        parts = bulk.find(uri)
        if uri == pixel_uri:
            pixels = _compressed_pixels(parts)
            if pixels is not None:
                compressed.append(pixels)
                return encapsulate(pixels.frames, has_bot=True)
        return b"".join(bulk.read(p) for p in parts)

    try:
        ds = dicomjson.json_to_dataset({k: v for k, v in obj.items() if not k.startswith("0002")}, loader)
    except BadRequest as exc:
        raise _InstanceFailure(DicomStatus.CANNOT_UNDERSTAND, exc.reason) from None
    syntax = EXPLICIT_VR_LE
    if compressed:
        syntax = compressed[0].syntax
        try:
            _describe_pixels(ds, compressed[0])
        except BadRequest as exc:  # a Pixel Data part that cannot be read fails its instance only
            raise _InstanceFailure(DicomStatus.CANNOT_UNDERSTAND, exc.reason) from None
        elem = ds["PixelData"]
        elem.VR = "OB"
        elem.is_undefined_length = True
    elif "PixelData" in ds and isinstance(ds.PixelData, bytes) and len(ds.PixelData) % 2:
        ds.PixelData += b"\x00"  # PS3.5 7.1.1: values have an even length
    coercion = _choose_charset(ds, obj)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    try:
        fd, path = tempfile.mkstemp(dir=spool_dir, suffix=".part")
    except OSError as exc:
        raise _InstanceFailure(DicomStatus.OUT_OF_RESOURCES, f"cannot write the instance: {exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            sink = _WatchedFile(fh)
            try:
                pydicom.dcmwrite(sink, ds, enforce_file_format=True)
            except Exception as exc:
                if sink.error is not None:
                    raise sink.error from None
                # pydicom reports a value it cannot encode as OSError too: it is the instance's fault
                message = str(exc).strip().splitlines()
                raise _InstanceFailure(DicomStatus.CANNOT_UNDERSTAND, "cannot encode the instance: "
                                       + (message[0] if message else type(exc).__name__)) from None
    except OSError as exc:
        os.unlink(path)
        raise _InstanceFailure(DicomStatus.OUT_OF_RESOURCES, f"cannot write the instance: {exc}") from None
    except BaseException:
        os.unlink(path)
        raise
    return path, coercion


class _WatchedFile:
    """A binary file whose write failures are remembered.

    pydicom wraps every error raised while it writes a value (an unencodable number as well as a
    full disk) into a new ``OSError``; this tells the genuine I/O failures (0xA700) apart."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _choose_charset(ds: Dataset, obj: dict[str, Any]) -> str | None:
    """Switch to UTF-8 when the declared character set cannot carry the JSON text; say so."""
    declared = ds.get("SpecificCharacterSet") or ""
    terms = [str(t) for t in declared] if isinstance(declared, (list, MultiValue)) \
        else [str(declared)]
    if "ISO_IR 192" in terms:
        return None
    try:
        # The default repertoire (no value, or ISO_IR 6) is ASCII, which pydicom reads as Latin-1.
        encodings = ["ascii"] if terms in ([""], ["ISO_IR 6"]) else convert_encodings(terms)
    except Exception:
        encodings = ["ascii"]
    if all(_carries(encodings, text, vr) for text, vr in _texts(obj)):
        return None
    _record_original(ds, "SpecificCharacterSet", "COERCE")
    ds.SpecificCharacterSet = "ISO_IR 192"
    shown = "\\".join(terms) or "none (ISO_IR 6)"
    return f"Specific Character Set {shown} cannot carry the text; stored as ISO_IR 192"


def _record_original(ds: Dataset, keyword: str, reason: str) -> None:
    """Keep an attribute's value before a change in the Original Attributes Sequence.

    PS3.18 §10.5.3: a coerced element is recorded there (PS3.3 C.12.1.1.9); an attribute that was
    absent is recorded empty."""
    original = Dataset()
    setattr(original, keyword, ds.get(keyword))
    item = Dataset()
    item.ModifiedAttributesSequence = [original]
    item.AttributeModificationDateTime = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    item.ModifyingSystem = "dicomweb_wsgi"
    item.SourceOfPreviousValues = ""
    item.ReasonForTheAttributeModification = reason
    ds.OriginalAttributesSequence = [*ds.get("OriginalAttributesSequence", []), item]


def _carries(encodings: list[str], text: str, vr: str | None) -> bool:
    """Whether pydicom writes ``text`` in ``encodings`` (with ISO 2022 escapes) and reads it back
    unchanged. Its encoder never fails: it replaces what no encoding can carry with "?"."""
    # pydicom encodes each Person Name component on its own
    for part in (_PN_SEPARATORS.split(text) if vr == "PN" else [text]):
        try:
            if decode_bytes(encode_string(part, encodings), encodings, _TEXT_DELIMITERS) != part:
                return False
        except (LookupError, ValueError):  # UnicodeError is a ValueError
            return False
    return True


def _texts(value: Any, vr: str | None = None) -> Iterable[tuple[str, str | None]]:
    """Every string of a DICOM JSON object, with the VR of its attribute."""
    if isinstance(value, str):
        yield value, vr
    elif isinstance(value, list):
        for item in value:
            yield from _texts(item, vr)
    elif isinstance(value, dict):
        if isinstance(value.get("vr"), str):
            vr = value["vr"]
        for key, item in value.items():
            if key not in ("InlineBinary", "BulkDataURI", "vr"):
                yield from _texts(item, vr)


# --------------------------------------------------------------------------------------------
# Compressed pixel data parts


def _compressed_pixels(parts: list[Part]) -> _Pixels | None:
    """The frames and transfer syntax of compressed Pixel Data parts; None for native data."""
    syntaxes = set()
    frames = []
    for part in parts:
        data = _BulkParts.read(part)
        syntax = _part_syntax(part, data)
        if syntax is not None and syntax in _J2K_SYNTAXES:
            data = _j2k_codestream(data)
        syntaxes.add(syntax)
        frames.append(data)
    if syntaxes == {None}:
        return None
    if len(syntaxes) != 1:
        raise BadRequest("Pixel Data parts mix native and compressed data, or several transfer syntaxes")
    return _Pixels(syntaxes.pop(), frames)  # type: ignore[arg-type]


_J2K_SYNTAXES = frozenset({J2K_LOSSLESS, J2K, J2K_MC_LOSSLESS, J2K_MC, HTJ2K_LOSSLESS, HTJ2K,
                           "1.2.840.10008.1.2.4.202"})


def _part_syntax(part: Part, data: bytes) -> str | None:
    """The transfer syntax of one Pixel Data part, None when it is native little endian."""
    mtype = part.content_type
    requested = mtype.get("transfer-syntax") if mtype is not None else None
    if mtype is None or mtype.type == "application/octet-stream":
        if requested and requested not in _NATIVE:
            if not any(requested in s for s in MEDIA_TYPE_SYNTAXES.values()):
                raise BadRequest(f"unknown transfer-syntax {requested[:64]!r} on a bulk data part")
            return requested
        return None
    allowed = MEDIA_TYPE_SYNTAXES.get(mtype.type)
    if not allowed:
        raise BadRequest(f"Pixel Data as {mtype.type} is not supported; send it as a compressed image "
                         "media type of Table 10.5.2-1 or as application/octet-stream")
    if requested:
        if requested not in allowed:
            raise BadRequest(f"transfer-syntax {requested[:64]} does not match {mtype.type}")
        return requested
    if mtype.type in _JPEG_TYPES:
        return _jpeg_info(data)["syntax"]
    if mtype.type in _J2K_TYPES:
        lossless, lossy = _J2K_TYPES[mtype.type]
        return lossless if _j2k_info(_j2k_codestream(data)).get("reversible") else lossy
    if mtype.type == "image/dicom-rle":
        return RLE
    raise BadRequest(f"Pixel Data as {mtype.type} needs a transfer-syntax parameter")


def _describe_pixels(ds: Dataset, pixels: _Pixels) -> None:
    """Fill in the Image Pixel Description attributes the metadata left out (PS3.18 §10.5)."""
    count = len(pixels.frames)
    declared = ds.get("NumberOfFrames")
    if declared not in (None, ""):
        if not isinstance(declared, int):
            raise _InstanceFailure(DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                   f"NumberOfFrames {declared!r} is not one integer")
        if declared != count:
            raise _InstanceFailure(DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                   f"NumberOfFrames is {declared} but {count} Pixel Data frame part(s) were sent")
    if count > 1 and declared in (None, ""):
        ds.NumberOfFrames = count
    if pixels.syntax == RLE:
        info: dict[str, Any] = {}
    elif pixels.syntax in _J2K_SYNTAXES:
        info = _j2k_info(pixels.frames[0])
    else:
        info = _jpeg_info(pixels.frames[0])
    if not info.get("rows"):
        missing = [k for k in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel") if k not in ds]
        if missing:
            raise _InstanceFailure(DicomStatus.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                   f"cannot derive {', '.join(missing)} from the Pixel Data; send them")
        return
    bits, samples = int(info["bits"]), int(info["samples"])
    values = {
        "Rows": info["rows"], "Columns": info["columns"], "SamplesPerPixel": samples,
        "BitsAllocated": 8 if bits <= 8 else 16 if bits <= 16 else 32, "BitsStored": bits,
        "HighBit": bits - 1, "PixelRepresentation": 1 if info.get("signed") else 0,
        "PhotometricInterpretation": _photometric(pixels.syntax, samples, info),
    }
    if samples > 1:
        values["PlanarConfiguration"] = 0
    for keyword, value in values.items():
        if keyword not in ds or ds[keyword].value in (None, ""):
            setattr(ds, keyword, value)


def _photometric(syntax: str, samples: int, info: dict[str, Any]) -> str:
    if samples == 1:
        return "MONOCHROME2"
    if syntax in (JPEG_BASELINE, JPEG_EXTENDED):
        if info.get("rgb"):
            return "RGB"
        return "YBR_FULL_422" if info.get("subsampled") else "YBR_FULL"
    if syntax in _J2K_SYNTAXES and info.get("mct"):
        return "YBR_RCT" if info.get("reversible") else "YBR_ICT"
    return "RGB"


_SOF_SYNTAX = {0xC0: JPEG_BASELINE, 0xC1: JPEG_EXTENDED, 0xC3: JPEG_LOSSLESS,
               0xF7: JPEG_LS_LOSSLESS}


def _jpeg_info(data: bytes) -> dict[str, Any]:
    """Frame header of a JPEG (ISO 10918-1 B.2.2) or JPEG-LS (ISO 14495-1 C.2.2) codestream."""
    if data[:2] != b"\xff\xd8":
        raise BadRequest("a JPEG Pixel Data part does not start with an SOI marker")
    info: dict[str, Any] = {}
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            break
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD8 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        body = data[pos + 4:pos + 2 + length]
        if marker == 0xEE and body[:5] == b"Adobe" and len(body) >= 12:
            info["rgb"] = body[11] == 0  # APP14 colour transform 0: no YCbCr conversion
        elif marker in _SOF_SYNTAX and len(body) >= 6:
            bits, rows, columns, comps = struct.unpack(">BHHB", body[:6])
            info.update(rows=rows, columns=columns, bits=bits, samples=comps, syntax=_SOF_SYNTAX[marker])
            ids = body[6:6 + 3 * comps:3]
            if ids == b"RGB":
                info["rgb"] = True
            if comps > 1 and len(body) >= 8:
                info["subsampled"] = (body[7] >> 4) > 1 or (body[7] & 0x0F) > 1
        elif marker == 0xDA:  # SOS: the scan header holds the predictor (lossless) or NEAR (JPEG-LS)
            comps = body[0] if body else 0
            selection = body[1 + 2 * comps] if len(body) > 1 + 2 * comps else 0
            if info.get("syntax") == JPEG_LOSSLESS and selection == 1:
                info["syntax"] = JPEG_LOSSLESS_SV1
            elif info.get("syntax") == JPEG_LS_LOSSLESS and selection > 0:
                info["syntax"] = JPEG_LS_NEAR
            break
        pos += 2 + length
    if "syntax" not in info:
        raise BadRequest("no JPEG frame header (SOF) found in a Pixel Data part")
    return info


def _j2k_codestream(data: bytes) -> bytes:
    """The codestream of a JP2 file (its ``jp2c`` box), or ``data`` when it is one already."""
    if data[:2] == b"\xff\x4f" or data[4:8] != b"jP  ":
        return data
    pos = 0
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if length == 1 and pos + 16 <= len(data):
            (length,) = struct.unpack(">Q", data[pos + 8:pos + 16])
            header = 16
        end = len(data) if length == 0 else pos + length
        if kind == b"jp2c":
            return data[pos + header:end]
        if length < header:
            break
        pos = end
    raise BadRequest("a JP2 Pixel Data part has no codestream box")


def _j2k_info(data: bytes) -> dict[str, Any]:
    """Image size, components and coding style of a JPEG 2000 codestream (ISO 15444-1 A.5.1, A.6.1)."""
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 42:
        raise BadRequest("a JPEG 2000 Pixel Data part does not start with SOC and SIZ markers")
    (lsiz,) = struct.unpack(">H", data[4:6])
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
    (csiz,) = struct.unpack(">H", data[40:42])
    ssiz = data[42] if len(data) > 42 else 7
    info: dict[str, Any] = {"rows": ysiz - yosiz, "columns": xsiz - xosiz, "samples": csiz,
                            "bits": (ssiz & 0x7F) + 1, "signed": bool(ssiz & 0x80)}
    cod = data.find(b"\xff\x52", 4 + lsiz)
    if cod > 0 and len(data) >= cod + 14:
        info["mct"] = data[cod + 8] == 1
        info["reversible"] = data[cod + 13] == 1
    return info
