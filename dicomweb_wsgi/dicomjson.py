"""DICOM JSON (PS3.18 Annex F) and Native DICOM Model XML (PS3.19 Annex A) for dicomweb_wsgi.

The server builds each instance's DICOM JSON once, when the instance is stored, and keeps it
in the index as a string; a metadata request is then string concatenation. So the writer here
(:func:`dataset_to_json`) has to be both correct and fast. It reads pydicom's *raw* elements
directly (the undecoded bytes plus the file offset of the value) instead of letting pydicom
convert every element first, which is where most of the time of ``Dataset.to_json_dict`` goes.

Public API
----------
``dataset_to_json(ds, bulk_prefix=..., threshold=...)``
    one instance -> (DICOM JSON object, list of :class:`BulkRef` for the values that were
    replaced by a BulkDataURI).
``json_to_dataset(obj, bulk_loader)``
    the inverse, for STOW-RS of JSON metadata + bulk data (PS3.18 §10.5).
``json_to_xml(obj)`` / ``xml_to_json(data)``
    one PS3.19 NativeDicomModel document <-> the JSON object form; the parser is defusedxml.
    A well-formed document with an attribute that cannot be read raises
    :class:`XmlDatasetError`, which says which top-level attributes could be read.
``select_attributes(obj, tags)``
    keep only some top-level attributes (``includefield``).
``dumps(obj)`` / ``loads(text)``
    compact JSON text for storage and responses, and back.

Decisions callers must know
---------------------------
* **BulkDataURI.** Only the binary VRs OB, OD, OF, OL, OV, OW and UN are ever replaced by a
  BulkDataURI: Pixel Data, Float Pixel Data and Double Float Pixel Data (7FE00010, 7FE00008,
  7FE00009, at any depth) always, any other one when its value length is undefined or greater
  than ``threshold`` bytes. The URI is ``bulk_prefix + "/" + path`` where ``path`` is the
  :attr:`BulkRef.path`. The prefix is opaque here; callers normally build it from
  :data:`BASE_PLACEHOLDER` (e.g. ``"%%BASE%%/studies/…/instances/…/bulkdata"``) and replace the
  placeholder with the public base URL at serve time. The base URL substituted must be safe
  inside a JSON string and an XML attribute (no ``"``, ``\\``, ``<``, ``&``).
  With ``bulk_prefix=None`` nothing is bulked: every binary value, Pixel Data included, is
  InlineBinary.
* **InlineBinary byte order.** InlineBinary is always little endian: OW/OF/OL/OD/OV values from
  a big-endian file are byte-swapped. BulkRef offsets point into the file as stored, so a
  caller serving bulk data of a big-endian file must swap it itself.
* **DS and IS** become JSON numbers (an ``int`` when the text is an integer literal, else a
  ``float``). The stored text is kept as a JSON *string* when it is not a valid DS/IS (e.g.
  ``"abc"``, ``"1,5"``, an IS of ``"1.0"``) or is not a finite number; PS3.18 (2024c and later,
  Table F.2.3-1) allows "Number or String" for DS and IS. :func:`json_to_dataset` accepts both.
* **FL/FD NaN and infinities** cannot be JSON numbers; they are written as the strings
  ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` and read back by :func:`json_to_dataset`.
* **Empty values**: an empty attribute has no ``Value``; an empty value inside a multi-valued
  attribute is ``null`` (PS3.18 F.2.5); an empty sequence item is ``{}``.
* **Person names** are ``{"Alphabetic", "Ideographic", "Phonetic"}`` objects with empty groups
  omitted, decoded with the dataset's (or the enclosing item's) Specific Character Set,
  ISO 2022 code extensions included. Specific Character Set itself is kept as stored
  (PS3.18 F.2.2 note 3); the JSON text is Unicode.
* **Excluded**: Group 0000, Group 0002 (PS3.18 §10.4.1.1.2), group lengths (F.2.2) and Data
  Set Trailing Padding (FFFC,FFFC).
* **Never raises on a bad element.** An element that cannot be decoded is logged and written as
  ``{"vr": "UN", "InlineBinary": ...}`` of its raw bytes (or a BulkDataURI if large), the way
  pydicom turns undecodable values into UN; undecodable text uses U+FFFD replacement
  characters.
* **XML** documents carry the PS3.19 default namespace and ``xml:space="preserve"``; characters
  XML 1.0 cannot carry (C0 controls other than TAB/LF/CR) are replaced by U+FFFD. Person name
  components are FamilyName..NameSuffix elements; empty components before the last one are
  written as empty elements so that the JSON -> XML -> JSON round trip is exact.
* **Speed**: about 0.45 ms for pydicom's CT_small.dcm (258 elements) against 3.9 ms for
  ``to_json_dict`` on the same freshly read dataset. Sequences are still parsed by pydicom,
  which dominates for enhanced multi-frame objects (about 0.1 ms per functional-group item).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import re
import struct
from array import array
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import ParseError

import orjson
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring as _safe_fromstring
from pydicom import config as _pydicom_config
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import dictionary_VR, keyword_for_tag, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import PersonName, format_number_as_ds

from .errors import BadRequest

__all__ = [
    "BASE_PLACEHOLDER",
    "BulkRef",
    "MAX_DEPTH",
    "XML_NAMESPACE",
    "XmlDatasetError",
    "dataset_to_json",
    "dumps",
    "json_to_dataset",
    "json_to_xml",
    "select_attributes",
    "xml_to_json",
]

logger = logging.getLogger(__name__)

BASE_PLACEHOLDER: str = "%%BASE%%"
"""Stands for the public base URL inside stored JSON/XML; the caller replaces it at serve time."""

XML_NAMESPACE = "http://dicom.nema.org/PS3.19/models/NativeDICOM"
"""The default namespace of the PS3.19 A.1.6 schema."""

MAX_DEPTH = 64
"""Deepest sequence nesting accepted from clients (JSON/XML input); guards the recursion."""


@dataclass(frozen=True)
class BulkRef:
    """One value that :func:`dataset_to_json` replaced by a BulkDataURI.

    ``path`` names the element: ``"7FE00010"`` at the top level,
    ``"00400275/0/0040A170/2/00420011"`` (tag/item index/tag..., item index 0-based) when
    nested; the BulkDataURI is ``bulk_prefix + "/" + path``. ``vr`` is the element's VR.
    ``offset`` is the absolute byte offset of the value in the file the dataset was read
    from, when known (None for datasets built in memory and for deflated files, whose offsets
    are positions in the inflated stream). ``length`` is the value length in bytes, None for
    undefined length (encapsulated Pixel Data: ``offset`` is then the start of the
    encapsulated value, i.e. of its Basic Offset Table item). The bytes at ``offset`` are in
    the file's byte order.
    """

    path: str
    vr: str
    offset: int | None
    length: int | None


class XmlDatasetError(BadRequest):
    """A well-formed NativeDicomModel document holds an attribute that cannot be read.

    Raised by :func:`xml_to_json` instead of a plain :class:`BadRequest` (it still is one) so that
    STOW-RS can fail just that instance, as it does for a bad value in DICOM JSON. ``readable``
    holds the top-level attributes that could be read on their own, in the DICOM JSON form, so
    that the caller can still name the instance (its SOP Instance UID, when that was readable);
    an attribute whose tag appears more than once is left out.
    """

    def __init__(self, reason: str, readable: dict[str, Any]) -> None:
        super().__init__(reason)
        self.readable = readable


# --------------------------------------------------------------------------- VR tables

_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_SWAP_TYPECODE = {"OW": "H", "OF": "I", "OL": "I", "OD": "Q", "OV": "Q"}
# VR -> (struct code, size) for binary numbers
_NUMBER_VRS = {
    "US": ("H", 2), "SS": ("h", 2), "UL": ("L", 4), "SL": ("l", 4),
    "FL": ("f", 4), "FD": ("d", 8), "SV": ("q", 8), "UV": ("Q", 8),
}
_INT_RANGES = {
    "US": (0, 0xFFFF), "SS": (-0x8000, 0x7FFF), "UL": (0, 0xFFFFFFFF),
    "SL": (-0x80000000, 0x7FFFFFFF), "SV": (-(1 << 63), (1 << 63) - 1), "UV": (0, (1 << 64) - 1),
}
_IS_RANGE = (-0x80000000, 0x7FFFFFFF)  # PS3.5 Table 6.2-1
_INTEGER_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "SV", "UV"})
# ASCII-only string VRs (PS3.5 6.1.2.3: default repertoire); leading/trailing spaces are padding
_LATIN_MULTI_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "TM", "UI"})
# charset-affected, multi-valued; SH and LO may be padded on both sides (PS3.5 Table 6.2-1)
_CHARSET_MULTI_VRS = frozenset({"SH", "LO", "UC"})
_STRIP_BOTH_VRS = frozenset({"SH", "LO"})
# single-valued texts: backslash is an ordinary character
_CHARSET_SINGLE_VRS = frozenset({"ST", "LT", "UT"})
_TEXT_VRS = _LATIN_MULTI_VRS | _CHARSET_MULTI_VRS | _CHARSET_SINGLE_VRS | {"UR", "PN", "DS", "IS"}
_ALL_VRS = _TEXT_VRS | _BINARY_VRS | set(_NUMBER_VRS) | {"AT", "SQ"}

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_TRAILING_PADDING = 0xFFFCFFFC
_CHARSET_TAG = 0x00080005
_DEFAULT_ENCODINGS = ["iso8859"]

# delimiters after which ISO 2022 single-byte code extensions fall back to the default set
# (PS3.5 6.1.2.5.3); pydicom's decode_bytes applies them
_TEXT_DELIMS = {0x0D, 0x0A, 0x09, 0x0C}
_MULTI_DELIMS = _TEXT_DELIMS | {0x5C}
_PN_DELIMS = _MULTI_DELIMS | {0x3D, 0x5E}

_PN_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")

_DS_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\Z")
_INT_RE = re.compile(r"[+-]?\d+\Z")
_TAG_RE = re.compile(r"[0-9A-Fa-f]{8}\Z")
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _Ctx:
    """Per-call state of :func:`dataset_to_json`."""

    __slots__ = ("prefix", "threshold", "refs")

    def __init__(self, prefix: str | None, threshold: int) -> None:
        self.prefix = prefix
        self.threshold = threshold
        self.refs: list[BulkRef] = []


# --------------------------------------------------------------------------- dataset -> JSON


def dataset_to_json(
    ds: Dataset, *, bulk_prefix: str | None, threshold: int = 1024
) -> tuple[dict[str, Any], list[BulkRef]]:
    """Return the DICOM JSON object of one instance and the values replaced by BulkDataURIs.

    ``ds`` is typically ``pydicom.dcmread(path, defer_size=threshold)`` of the stored file:
    deferred values are never loaded when they become bulk data, and raw (not yet converted)
    elements are decoded here directly, which is several times faster than pydicom's own
    conversion. The result follows PS3.18 Annex F (see the module docstring for the choices).
    This function does not raise for bad element values; see the module docstring.
    """
    ctx = _Ctx(bulk_prefix, threshold)
    base: int | None = 0
    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
        base = None  # value positions are in the inflated stream, not in the file
    obj = _dataset(ds, ctx, "", base, _DEFAULT_ENCODINGS, _little_endian(ds, True))
    return obj, ctx.refs


def _little_endian(ds: Dataset, default: bool) -> bool:
    """The byte order the dataset was read with; ``default`` for datasets built in memory."""
    try:
        little = ds.original_encoding[1]
    except Exception:  # pragma: no cover - defensive: odd Dataset subclasses
        return default
    return default if little is None else bool(little)


def _dataset(
    ds: Dataset, ctx: _Ctx, path: str, base: int | None, encodings: list[str], little: bool
) -> dict[str, Any]:
    # Plain-int keys: sorting pydicom's BaseTag keys would call its Python-level __lt__.
    elements = sorted(zip(map(int, ds.keys()), ds.values()))
    if elements and _CHARSET_TAG in ds:
        encodings = _encodings_of(ds, encodings)
    out: dict[str, Any] = {}
    for tag, elem in elements:
        group = tag >> 16
        # PS3.18 F.2.2 / §10.4.1.1.2: no group lengths, no File Meta (0002), no command set
        if not tag & 0xFFFF or group == 2 or group == 0 or tag == _TRAILING_PADDING:
            continue
        key = "%08X" % tag
        try:
            if type(elem) is RawDataElement:
                out[key] = _raw_json(ds, tag, elem, ctx, path + key, base, encodings)
            else:
                out[key] = _elem_json(ds, tag, elem, ctx, path + key, base, encodings, little)
        except Exception:
            logger.warning("could not convert element %s to DICOM JSON; written as UN", key,
                           exc_info=True)
            out[key] = _fallback_json(elem, ctx, path + key, base)
    return out


def _encodings_of(ds: Dataset, inherited: list[str]) -> list[str]:
    """Python encodings for the dataset's own Specific Character Set (else the inherited ones)."""
    try:
        elem = ds.get_item(_CHARSET_TAG, keep_deferred=True)
        value = elem.value
        if isinstance(value, bytes):
            terms = [t.strip(" \x00") for t in value.decode("latin-1").split("\\")]
        elif isinstance(value, str):
            terms = [value]
        elif value is None:
            terms = []
        else:
            terms = [str(t) for t in value]
        if not terms or not any(terms):
            return _DEFAULT_ENCODINGS
        return convert_encodings(terms)
    except Exception:
        logger.warning("unusable Specific Character Set; using the default repertoire",
                       exc_info=True)
        return inherited


def _offset(base: int | None, tell: int | None) -> int | None:
    return None if base is None or tell is None else base + tell


def _bulk(ctx: _Ctx, path: str, vr: str, offset: int | None, length: int | None) -> dict[str, Any]:
    ctx.refs.append(BulkRef(path, vr, offset, length))
    return {"vr": vr, "BulkDataURI": ctx.prefix + "/" + path}  # type: ignore[operator]


def _inline(vr: str, data: bytes, little: bool) -> dict[str, Any]:
    if not little and vr in _SWAP_TYPECODE:
        data = _swap(data, _SWAP_TYPECODE[vr])
    return {"vr": vr, "InlineBinary": base64.b64encode(data).decode("ascii")}


def _swap(data: bytes, typecode: str) -> bytes:
    arr = array(typecode)
    if len(data) % arr.itemsize:
        return data
    arr.frombytes(data)
    arr.byteswap()
    return arr.tobytes()


def _raw_vr(ds: Dataset, tag: int, raw: RawDataElement) -> tuple[str, bool]:
    """The VR to use for a raw element, and whether pydicom must convert it instead of us."""
    vr = raw.VR
    if vr is None:  # implicit VR
        if tag & 0x10000:  # odd group: private
            vr = _private_vr(ds, tag)
        else:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                vr = "UN"
        if vr == "OB or OW":
            # PS3.5 A.1: OW in Implicit VR Little Endian; A.4: OB for encapsulated Pixel Data
            return ("OB" if raw.length == 0xFFFFFFFF else "OW"), False
    elif vr == "UN":
        # pydicom (config.replace_un_with_known_vr) decodes UN elements of known tags with
        # their dictionary VR; follow it so that both readers agree
        if tag & 0x10000:
            better = _private_vr(ds, tag)
        elif raw.value is None or raw.length < 0xFFFF:
            try:
                better = dictionary_VR(tag)
            except KeyError:
                better = "UN"
        else:
            better = "UN"
        if better != "UN":
            return better, True
    return vr, vr == "SQ" or " or " in vr


def _private_vr(ds: Dataset, tag: int) -> str:
    element = tag & 0xFFFF
    if 0x0010 <= element <= 0x00FF:
        return "LO"  # Private Creator (PS3.5 7.8.1)
    if element < 0x1000:
        return "UN"
    creator_tag = (tag & 0xFFFF0000) | (element >> 8)
    creator = ds.get_item(creator_tag, keep_deferred=True)
    if creator is None:
        return "UN"
    value = creator.value
    if isinstance(value, bytes):
        value = value.decode("latin-1").strip(" \x00")
    if not value or not isinstance(value, str):
        return "UN"
    try:
        return private_dictionary_VR(tag, value)
    except KeyError:
        return "UN"


def _raw_json(
    ds: Dataset, tag: int, raw: RawDataElement, ctx: _Ctx, path: str,
    base: int | None, encodings: list[str],
) -> dict[str, Any]:
    vr, use_pydicom = _raw_vr(ds, tag, raw)
    if use_pydicom:
        # sequences, ambiguous VRs and corrected UN: let pydicom convert (and cache) it
        return _elem_json(ds, tag, ds[tag], ctx, path, base, encodings, raw.is_little_endian)
    length = raw.length
    if vr in _BINARY_VRS:
        if not length:
            return {"vr": vr}
        undefined = length == 0xFFFFFFFF
        if ctx.prefix is not None and (undefined or length > ctx.threshold or tag in _PIXEL_TAGS):
            offset = _offset(base, raw.value_tell)
            return _bulk(ctx, path, vr, offset, None if undefined else length)
        value = raw.value
        if value is None:  # deferred
            value = ds.get_item(tag).value
        if not value:  # e.g. a truncated file
            return {"vr": vr}
        return _inline(vr, value, raw.is_little_endian)
    value = raw.value
    if value is None:
        if not length:
            return {"vr": vr}
        # a deferred non-binary value (larger than defer_size): let pydicom read it
        return _elem_json(ds, tag, ds.get_item(tag), ctx, path, base, encodings,
                          raw.is_little_endian)
    if not value:
        return {"vr": vr}
    values = _decode_raw(vr, value, raw.is_little_endian, encodings)
    if values is None:
        return {"vr": vr}
    return {"vr": vr, "Value": values}


def _decode_raw(vr: str, data: bytes, little: bool, encodings: list[str]) -> list[Any] | None:
    """Decode the value bytes of a non-binary, non-SQ element into a JSON Value list."""
    if vr in _LATIN_MULTI_VRS:
        parts = [p.strip(" \x00") or None for p in data.decode("latin-1").split("\\")]
    elif vr == "DS" or vr == "IS":
        parts = data.decode("latin-1").split("\\")
        parts = [_number_text(vr, p.strip(" \x00")) for p in parts]
    elif vr in _CHARSET_MULTI_VRS:
        text = _decode_text(data.rstrip(b" \x00"), encodings, _MULTI_DELIMS)
        if vr in _STRIP_BOTH_VRS:
            parts = [p.strip(" \x00") or None for p in text.split("\\")]
        else:
            parts = [p.rstrip(" \x00") or None for p in text.split("\\")]
    elif vr == "PN":
        text = _decode_text(data.rstrip(b" \x00"), encodings, _PN_DELIMS)
        parts = [_pn_json(p) for p in text.split("\\")]
    elif vr in _CHARSET_SINGLE_VRS:
        text = _decode_text(data, encodings, _TEXT_DELIMS).rstrip(" \x00")
        parts = [text or None]
    elif vr == "UR":
        parts = [data.decode("latin-1").strip(" \x00") or None]
    elif vr in _NUMBER_VRS:
        code, size = _NUMBER_VRS[vr]
        count, rest = divmod(len(data), size)
        if rest:
            raise ValueError(f"value length {len(data)} is not a multiple of {size} for {vr}")
        parts = list(struct.unpack(("<" if little else ">") + str(count) + code, data))
        if vr == "FL" or vr == "FD":
            parts = _finite(parts)
    elif vr == "AT":
        count, rest = divmod(len(data), 4)
        if rest:
            raise ValueError(f"value length {len(data)} is not a multiple of 4 for AT")
        pairs = struct.unpack(("<" if little else ">") + str(2 * count) + "H", data)
        parts = ["%04X%04X" % (pairs[i], pairs[i + 1]) for i in range(0, len(pairs), 2)]
    else:
        raise ValueError(f"unsupported VR {vr!r}")
    if len(parts) == 1 and parts[0] is None:
        return None
    return parts


def _decode_text(data: bytes, encodings: list[str], delimiters: set[int]) -> str:
    """Decode charset-affected text; never raises (U+FFFD replaces undecodable bytes)."""
    if b"\x1b" not in data:
        encoding = encodings[0]
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            return data.decode(encoding, errors="replace")
        except LookupError:
            return data.decode("latin-1")
    try:
        return decode_bytes(data, encodings, delimiters)
    except Exception:
        return data.decode("latin-1")


def _pn_json(text: str) -> dict[str, str] | None:
    """One PN value -> {"Alphabetic", "Ideographic", "Phonetic"}, empty groups omitted."""
    text = text.rstrip(" \x00")
    if not text:
        return None
    groups = text.split("=")
    out = {name: group for name, group in zip(_PN_GROUPS, groups) if group}
    if len(groups) > 3:  # invalid; keep the surplus rather than dropping it silently
        out["Phonetic"] = "=".join(groups[2:])
    return out or None


def _number_text(vr: str, text: str) -> int | float | str | None:
    """DS/IS text -> int or float; the text itself when it is not a valid finite number."""
    if not text:
        return None
    if _INT_RE.match(text):
        return int(text)
    if vr == "DS" and _DS_RE.match(text):
        number = float(text)
        if math.isfinite(number):
            return number
    return text


def _finite(values: list[Any]) -> list[Any]:
    for i, v in enumerate(values):
        if v != v or v in (math.inf, -math.inf):
            values[i] = "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")
    return values


def _elem_json(
    ds: Dataset, tag: int, elem: DataElement, ctx: _Ctx, path: str,
    base: int | None, encodings: list[str], little: bool,
) -> dict[str, Any]:
    """JSON for an already-converted (or in-memory) pydicom DataElement."""
    vr = str(elem.VR)  # pydicom may hand out its VR enum; keep the output plain
    value = elem.value
    if " or " in vr:
        vr = _resolve_ambiguous(vr, tag, value, ds)
    if vr == "SQ":
        if not value:
            return {"vr": "SQ"}
        seq_base = None
        if base is not None and elem.file_tell is not None:
            # An undefined-length sequence was parsed from the same stream as its parent; a
            # defined-length one was parsed from a copy of its value (positions restart at 0).
            seq_base = base if elem.is_undefined_length else base + elem.file_tell
        items = []
        for index, item in enumerate(value):
            items.append(_dataset(item, ctx, f"{path}/{index}/", seq_base, encodings,
                                  _little_endian(item, little)))
        return {"vr": "SQ", "Value": items}
    if vr in _BINARY_VRS:
        if elem.is_buffered:
            value.seek(0)
            value = value.read()
        if not value:
            return {"vr": vr}
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"binary VR {vr} holds a {type(value).__name__}")
        length = len(value)
        undefined = bool(elem.is_undefined_length)
        if ctx.prefix is not None and (undefined or length > ctx.threshold or tag in _PIXEL_TAGS):
            offset = _offset(base, elem.file_tell)
            return _bulk(ctx, path, vr, offset, None if undefined else length)
        return _inline(vr, bytes(value), little)
    if hasattr(value, "tolist") and not isinstance(value, (bytes, bytearray)):
        value = value.tolist()  # numpy arrays and scalars set by in-memory code
    is_list = isinstance(value, (list, tuple, MultiValue))
    if value is None or value == "" or (is_list and not value):
        return {"vr": vr}
    if isinstance(value, (bytes, bytearray)):
        # pydicom leaves bytes when it could not decode the value: keep them as UN
        raise TypeError(f"{vr} value could not be decoded")
    values = value if is_list else [value]
    parts = [_python_value(vr, v) for v in values]
    if vr in ("FL", "FD"):
        parts = _finite(parts)
    if len(parts) == 1 and parts[0] is None:
        return {"vr": vr}
    return {"vr": vr, "Value": parts}


def _python_value(vr: str, v: Any) -> Any:
    if v is None:
        return None
    if vr == "PN":
        if isinstance(v, PersonName):
            groups = list(v.components)
            out = {name: g for name, g in zip(_PN_GROUPS, groups) if g}
            return out or None
        return _pn_json(str(v))
    if vr == "DS" or vr == "IS":
        return _number_text(vr, str(v).strip(" \x00"))
    if vr in _NUMBER_VRS:
        return float(v) if vr in ("FL", "FD") else int(v)
    if vr == "AT":
        return "%08X" % int(v)
    text = str(v)
    if vr in _LATIN_MULTI_VRS or vr in _STRIP_BOTH_VRS or vr == "UR":
        text = text.strip(" \x00")
    else:
        text = text.rstrip(" \x00")
    return text or None


def _resolve_ambiguous(vr: str, tag: int, value: Any, ds: Dataset) -> str:
    """Pick one VR for an element still carrying an ambiguous one (in-memory datasets)."""
    if isinstance(value, (bytes, bytearray)) or vr == "OB or OW":
        if vr == "OB or OW" and tag in _PIXEL_TAGS:
            bits = ds.get("BitsAllocated")
            return "OB" if isinstance(bits, int) and bits <= 8 else "OW"
        return "OW"
    pixel_rep = ds.get("PixelRepresentation")
    if pixel_rep == 1:
        return "SS"
    return "US"


def _fallback_json(elem: Any, ctx: _Ctx, path: str, base: int | None) -> dict[str, Any]:
    """Last resort for an element that failed to convert: its raw bytes as UN."""
    try:
        if type(elem) is RawDataElement:
            data, tell, undefined = elem.value, elem.value_tell, elem.length == 0xFFFFFFFF
            length = elem.length
        else:
            data, tell, undefined = elem.value, elem.file_tell, bool(elem.is_undefined_length)
            if not isinstance(data, (bytes, bytearray)):
                vr = str(elem.VR)
                return {"vr": vr if vr in _ALL_VRS else "UN"}
            length = len(data)
        if not length:
            return {"vr": "UN"}
        if ctx.prefix is not None and (undefined or length > ctx.threshold or data is None):
            return _bulk(ctx, path, "UN", _offset(base, tell), None if undefined else length)
        if data is None:
            return {"vr": "UN"}
        return {"vr": "UN", "InlineBinary": base64.b64encode(data).decode("ascii")}
    except Exception:  # pragma: no cover - truly nothing usable
        return {"vr": "UN"}


# One encoder for every call: json.dumps with non-default options builds a new one each time.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(obj: Any) -> str:
    """Compact JSON text (UTF-8 friendly, no NaN) for storing a DICOM JSON object or array.

    orjson writes the same JSON as ``json`` with these options (a float's exponent may be spelled
    differently: ``1e-7`` for ``1e-07``) about 10x faster (a QIDO page of
    studies, the three documents of every stored instance). What it refuses (integers beyond 64
    bits, float subclasses, lone surrogates, non-string keys) goes to ``json``, and so does any
    text holding ``null``: orjson writes NaN and infinities as null where ``json`` refuses them
    (``ValueError``), and that refusal is kept (``dataset_to_json`` writes them as strings, Annex
    F.2.3.1 having no JSON number for them; a real null is rare and just takes the slower path).
    """
    try:
        text = orjson.dumps(obj)
    except TypeError:  # orjson.JSONEncodeError
        return _ENCODER.encode(obj)
    return _ENCODER.encode(obj) if b"null" in text else text.decode("utf-8")


def loads(text: str | bytes) -> Any:
    """Parse stored JSON text (``dumps``' output); orjson, or ``json`` for what orjson refuses."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def select_attributes(obj: dict[str, Any], tags: Collection[str] | None) -> dict[str, Any]:
    """Keep only the top-level attributes whose 8-hex keys are in ``tags`` (None keeps all).

    Used for ``includefield``; keys are compared case-insensitively, order is preserved.
    """
    if tags is None:
        return dict(obj)
    wanted = {t.upper() for t in tags}
    return {key: attr for key, attr in obj.items() if key in wanted}


# --------------------------------------------------------------------------- JSON -> dataset


def json_to_dataset(
    obj: dict[str, Any], bulk_loader: Callable[[str], bytes] | None = None
) -> Dataset:
    """Build a pydicom Dataset from one DICOM JSON object (STOW-RS metadata, PS3.18 §10.5).

    ``BulkDataURI`` values are resolved through ``bulk_loader(uri)``, which returns the value
    bytes (numbers little endian; text in UTF-8 per PS3.18 F.2.2 note 4). Group 0002 attributes,
    if present, go to ``ds.file_meta``. DS/IS values may be numbers or strings; strings that are
    not valid DS/IS are kept verbatim, a DS number is written in at most 16 characters. Malformed
    input raises :class:`BadRequest`, and so does a value DICOM cannot encode as sent: a number
    outside the range of its VR (FL, US, SS, UL, SL, UV, SV; IS numbers), or one value holding a
    delimiter (a backslash in a multi-valued string VR, ``=`` in a PN component group), which
    would otherwise become several values or groups.
    """
    if not isinstance(obj, dict):
        raise BadRequest("a DICOM JSON dataset must be a JSON object")
    return _build_dataset(obj, bulk_loader, "", 0)


def _build_dataset(
    obj: dict[str, Any], loader: Callable[[str], bytes] | None, where: str, depth: int
) -> Dataset:
    ds = Dataset()
    meta: FileMetaDataset | None = None
    for tag, vr, attr, name in _attributes(obj, where, depth):
        elem = _build_element(tag, vr, attr, loader, name, depth)
        if tag >> 16 == 2:
            if meta is None:
                meta = FileMetaDataset()
            meta[tag] = elem
        elif tag & 0xFFFF:  # group lengths are dropped (PS3.18 F.2.2)
            ds[tag] = elem
    if meta is not None:
        ds.file_meta = meta
    return ds


def _attributes(obj: dict[str, Any], where: str, depth: int) -> Iterator[tuple[int, str, dict[str, Any], str]]:
    """The attributes of a DICOM JSON object in tag order as (tag, vr, attribute, name for messages),
    each checked to be an object with a known VR; too deep a nesting, a bad key or attribute is a 400."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"sequences nested deeper than {MAX_DEPTH} levels")
    for key in sorted(obj, key=_tag_sort_key):
        tag = _parse_tag(key, where)
        attr = obj[key]
        name = where + key.upper()
        if not isinstance(attr, dict):
            raise BadRequest(f"attribute {name}: must be a JSON object")
        vr = attr.get("vr")
        if not isinstance(vr, str) or vr not in _ALL_VRS:
            raise BadRequest(f"attribute {name}: missing or unknown vr {vr!r}")
        yield tag, vr, attr, name


def _tag_sort_key(key: Any) -> str:
    return key.upper() if isinstance(key, str) else ""


def _parse_tag(key: Any, where: str) -> int:
    if not isinstance(key, str) or not _TAG_RE.match(key):
        raise BadRequest(f"{where or 'dataset'}: {key!r} is not an 8-hex-digit tag")
    return int(key, 16)


def _build_element(
    tag: int, vr: str, attr: dict[str, Any], loader: Callable[[str], bytes] | None,
    name: str, depth: int,
) -> DataElement | RawDataElement:
    present = [k for k in ("Value", "BulkDataURI", "InlineBinary") if k in attr]
    if len(present) > 1:
        raise BadRequest(f"attribute {name}: only one of {', '.join(present)} is allowed")
    ignore = _pydicom_config.IGNORE
    if not present:
        return DataElement(tag, vr, empty_value_for_VR(vr), validation_mode=ignore)
    kind = present[0]
    if kind == "InlineBinary":
        if vr not in _BINARY_VRS:
            raise BadRequest(f"attribute {name}: InlineBinary is not allowed for VR {vr}")
        data = _b64decode(_single_string(attr[kind], name, kind), name)
        return DataElement(tag, vr, data, validation_mode=ignore)
    if kind == "BulkDataURI":
        uri = _single_string(attr[kind], name, kind)
        return _element_from_bulk(tag, vr, _load_bulk(loader, uri, name), name)
    values = attr["Value"]
    if not isinstance(values, list):
        raise BadRequest(f"attribute {name}: Value must be an array")
    if not values:
        return DataElement(tag, vr, empty_value_for_VR(vr), validation_mode=ignore)
    if vr == "SQ":
        items = []
        for index, item in enumerate(values):
            if item is None:
                item = {}
            if not isinstance(item, dict):
                raise BadRequest(f"attribute {name}: sequence item {index} is not an object")
            items.append(_build_dataset(item, loader, f"{name}/{index}/", depth + 1))
        return DataElement(tag, vr, Sequence(items), validation_mode=ignore)
    if vr in _BINARY_VRS:
        raise BadRequest(f"attribute {name}: VR {vr} needs InlineBinary or BulkDataURI, not Value")
    if vr == "DS" or vr == "IS":
        texts = [_number_to_text(vr, v, name) for v in values]
        if all(t == "" or (_INT_RE.match(t) if vr == "IS" else _DS_RE.match(t)) for t in texts):
            return DataElement(tag, vr, _one_or_list(texts), validation_mode=ignore)
        # PS3.18 F.2.3 (2024c+): a string DS/IS keeps its original text, valid or not
        return _raw_text_element(tag, vr, "\\".join(texts))
    if vr in _NUMBER_VRS:
        numbers = [_binary_number(vr, v, name) for v in values]
        return DataElement(tag, vr, _one_or_list(numbers), validation_mode=ignore)
    if vr == "AT":
        tags = []
        for v in values:
            if not isinstance(v, str) or not _TAG_RE.match(v):
                raise BadRequest(f"attribute {name}: AT value {v!r} is not an 8-hex-digit tag")
            tags.append(int(v, 16))
        return DataElement(tag, vr, _one_or_list(tags), validation_mode=ignore)
    if vr == "PN":
        names = [_pn_from_json(v, name) for v in values]
        return DataElement(tag, vr, _one_or_list(names), validation_mode=ignore)
    texts = []
    for v in values:
        if v is None:
            texts.append("")
        elif isinstance(v, str):
            texts.append(v)
        else:
            raise BadRequest(f"attribute {name}: VR {vr} needs string values, got {v!r}")
    if vr in _CHARSET_SINGLE_VRS or vr == "UR":
        if len(texts) > 1:
            raise BadRequest(f"attribute {name}: VR {vr} is single-valued")
    else:
        for text in texts:
            _refuse_delimiter(text, "\\", vr, name)
    return DataElement(tag, vr, _one_or_list(texts), validation_mode=ignore)


def _refuse_delimiter(text: str, delimiters: str, vr: str, name: str) -> None:
    """Refuse one JSON value (or XML Person Name component) holding a DICOM delimiter: written as
    is, it would silently become several values (backslash), Person Name component groups (``=``)
    or components (``^``)."""
    # PS3.5 6.2 (Table 6.2-1): a backslash separates the values of the multi-valued string VRs
    # (only LT, ST, UT and UR may hold one); "=" separates PN component groups, "^" components
    for delimiter in delimiters:
        if delimiter in text:
            raise BadRequest(f"attribute {name}: {vr} value {text[:64]!r} contains the delimiter "
                             f"{delimiter!r}, which DICOM does not allow inside one value")


def _one_or_list(values: list[Any]) -> Any:
    return values[0] if len(values) == 1 else values


def _single_string(value: Any, name: str, kind: str) -> str:
    # PS3.18 Table F.3.1-1 says a string, its F.4 example shows a one-string array: take both
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if not isinstance(value, str):
        raise BadRequest(f"attribute {name}: {kind} must be a string")
    return value


def _b64decode(text: str, name: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"attribute {name}: InlineBinary is not valid base64 ({exc})") from None


def _load_bulk(loader: Callable[[str], bytes] | None, uri: str, name: str) -> bytes:
    if loader is None:
        raise BadRequest(f"attribute {name}: BulkDataURI {uri!r} but no bulk data was supplied")
    try:
        data = loader(uri)
    except LookupError:
        raise BadRequest(f"attribute {name}: no bulk data part for BulkDataURI {uri!r}") from None
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise BadRequest(f"attribute {name}: bulk data for {uri!r} is not bytes")
    return bytes(data)


def _element_from_bulk(tag: int, vr: str, data: bytes, name: str) -> DataElement | RawDataElement:
    ignore = _pydicom_config.IGNORE
    if vr in _BINARY_VRS:
        return DataElement(tag, vr, data, validation_mode=ignore)
    if vr in _NUMBER_VRS:
        size = _NUMBER_VRS[vr][1]
        if len(data) % size:
            raise BadRequest(f"attribute {name}: bulk data length {len(data)} does not fit VR {vr}")
        return RawDataElement(tag, vr, len(data), data, 0, False, True)  # type: ignore[arg-type]
    if vr in ("DS", "IS", "LT", "ST", "UC", "UT"):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRequest(f"attribute {name}: bulk text is not UTF-8") from None
        if vr in ("DS", "IS"):
            return _build_element(tag, vr, {"Value": text.split("\\")}, None, name, 0)
        if vr == "UC":
            return DataElement(tag, vr, _one_or_list(text.split("\\")), validation_mode=ignore)
        return DataElement(tag, vr, text, validation_mode=ignore)
    raise BadRequest(f"attribute {name}: BulkDataURI is not allowed for VR {vr}")


def _raw_text_element(tag: int, vr: str, text: str) -> RawDataElement:
    data = text.encode("latin-1", errors="replace")
    if len(data) % 2:
        data += b" "
    return RawDataElement(tag, vr, len(data), data, 0, False, True)  # type: ignore[arg-type]


def _number_to_text(vr: str, v: Any, name: str) -> str:
    """A DS/IS JSON value (number, string or null) -> its DICOM text."""
    if v is None:
        return ""
    if isinstance(v, bool):
        raise BadRequest(f"attribute {name}: {vr} value {v!r} is not a number")
    if isinstance(v, str):
        _refuse_delimiter(v, "\\", vr, name)
        return v.strip(" ")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadRequest(f"attribute {name}: {vr} value {v!r} is not finite")
        if vr == "IS":
            if not v.is_integer():
                raise BadRequest(f"attribute {name}: IS value {v!r} is not an integer")
            v = int(v)
    if isinstance(v, int):
        if vr == "IS":
            if not _IS_RANGE[0] <= v <= _IS_RANGE[1]:
                raise BadRequest(f"attribute {name}: IS value {v} is out of range (-2^31 to 2^31-1)")
            return str(v)
        text = str(v)
        if len(text) <= 16:  # PS3.5 Table 6.2-1: a DS is at most 16 bytes
            return text
        try:
            v = float(v)
        except OverflowError:
            raise BadRequest(f"attribute {name}: DS value {text[:32]}... is out of range") from None
    if isinstance(v, float):
        text = repr(v)
        return text if len(text) <= 16 else format_number_as_ds(v)
    raise BadRequest(f"attribute {name}: {vr} value {v!r} is not a number")


def _binary_number(vr: str, v: Any, name: str) -> int | float:
    if vr in ("FL", "FD"):
        if isinstance(v, str) and v in _NON_FINITE:
            return _NON_FINITE[v]
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise BadRequest(f"attribute {name}: {vr} value {v!r} is not a number")
        try:
            number = float(v)
            if vr == "FL":
                struct.pack("<f", number)  # raises OverflowError beyond the 32-bit float range
        except OverflowError:
            raise BadRequest(f"attribute {name}: {vr} value {str(v)[:32]} is out of range") from None
        return number
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    elif isinstance(v, str) and vr in ("SV", "UV") and _INT_RE.match(v.strip()):
        v = int(v)  # PS3.18 F.2.3 (2024c+): SV/UV may be strings to keep 64-bit precision
    if not isinstance(v, int) or isinstance(v, bool):
        raise BadRequest(f"attribute {name}: {vr} value {v!r} is not an integer")
    low, high = _INT_RANGES[vr]
    if not low <= v <= high:
        raise BadRequest(f"attribute {name}: {vr} value {v} is out of range")
    return v


def _pn_from_json(v: Any, name: str) -> str:
    if v is None:
        return ""
    if isinstance(v, str):  # not Annex F, but some servers send it: accept the PS3.5 form
        _refuse_delimiter(v, "\\", "PN", name)
        return v
    if not isinstance(v, dict):
        raise BadRequest(f"attribute {name}: PN value {v!r} is not an object")
    groups = []
    for group in _PN_GROUPS:
        text = v.get(group, "")
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise BadRequest(f"attribute {name}: PN {group} must be a string")
        _refuse_delimiter(text, "\\=", "PN", name)
        groups.append(text)
    return "=".join(groups).rstrip("=")


# --------------------------------------------------------------------------- JSON -> XML

_XML_TEXT_RE = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_ATTR_RE = re.compile('[&<>"\t\n\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')
_XML_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}


def _xml_escape_char(match: re.Match[str]) -> str:
    # XML 1.0 cannot carry other C0 controls or lone surrogates at all, even as references
    return _XML_ESCAPES.get(match.group(), "\ufffd")


def _xml_text(text: str) -> str:
    return _XML_TEXT_RE.sub(_xml_escape_char, text)


def _xml_attr(text: str) -> str:
    return _XML_ATTR_RE.sub(_xml_escape_char, text)


def json_to_xml(obj: dict[str, Any]) -> bytes:
    """Render one DICOM JSON object as a PS3.19 NativeDicomModel document (UTF-8 bytes).

    Each attribute becomes a DicomAttribute with tag, vr, keyword (when the tag is in the
    dictionary) and privateCreator (for private data elements, from their creator element);
    values become Value/PersonName/Item elements numbered from 1, BulkData uri=... or
    InlineBinary. Malformed input raises :class:`BadRequest`.
    """
    if not isinstance(obj, dict):
        raise BadRequest("a DICOM JSON dataset must be a JSON object")
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n',
             f'<NativeDicomModel xmlns="{XML_NAMESPACE}" xml:space="preserve">']
    _xml_dataset(obj, parts, "", 0)
    parts.append("</NativeDicomModel>\n")
    return "".join(parts).encode("utf-8")


def _xml_dataset(obj: dict[str, Any], parts: list[str], where: str, depth: int) -> None:
    for tag, vr, attr, name in _attributes(obj, where, depth):
        head = f'<DicomAttribute tag="{tag:08X}" vr="{vr}"'
        if tag & 0x10000:
            creator = _private_creator(obj, tag)
            if creator is not None:
                head += f' privateCreator="{_xml_attr(creator)}"'
        else:
            keyword = keyword_for_tag(tag)
            if keyword:
                head += f' keyword="{keyword}"'
        parts.append(head)
        if "BulkDataURI" in attr:
            uri = _single_string(attr["BulkDataURI"], name, "BulkDataURI")
            parts.append(f'><BulkData uri="{_xml_attr(uri)}"/></DicomAttribute>')
        elif "InlineBinary" in attr:
            data = _single_string(attr["InlineBinary"], name, "InlineBinary")
            parts.append(f"><InlineBinary>{_xml_text(data)}</InlineBinary></DicomAttribute>")
        elif attr.get("Value"):
            parts.append(">")
            _xml_values(vr, attr["Value"], parts, name, depth)
            parts.append("</DicomAttribute>")
        else:
            if "Value" in attr and not isinstance(attr["Value"], list):
                raise BadRequest(f"attribute {name}: Value must be an array")
            parts.append("/>")


def _private_creator(obj: dict[str, Any], tag: int) -> str | None:
    element = tag & 0xFFFF
    if element < 0x1000:
        return None
    creator = obj.get("%08X" % ((tag & 0xFFFF0000) | (element >> 8)))
    if isinstance(creator, dict):
        values = creator.get("Value")
        if isinstance(values, list) and values and isinstance(values[0], str):
            return values[0]
    return None


def _xml_values(vr: str, values: Any, parts: list[str], name: str, depth: int) -> None:
    if not isinstance(values, list):
        raise BadRequest(f"attribute {name}: Value must be an array")
    for number, v in enumerate(values, 1):
        if vr == "SQ":
            if v is None or v == {}:
                parts.append(f'<Item number="{number}"/>')
                continue
            if not isinstance(v, dict):
                raise BadRequest(f"attribute {name}: sequence item {number - 1} is not an object")
            parts.append(f'<Item number="{number}">')
            _xml_dataset(v, parts, f"{name}/{number - 1}/", depth + 1)
            parts.append("</Item>")
        elif vr == "PN":
            parts.append(_xml_person_name(number, v, name))
        elif v is None:
            parts.append(f'<Value number="{number}"/>')
        elif isinstance(v, str):
            parts.append(f'<Value number="{number}">{_xml_text(v)}</Value>')
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            if isinstance(v, float) and v.is_integer() and vr in _INTEGER_VRS:
                v = int(v)  # keep "7", not "7.0", which would no longer be a valid IS
            parts.append(f'<Value number="{number}">{v!r}</Value>')
        else:
            raise BadRequest(f"attribute {name}: unsupported value {v!r}")


def _xml_person_name(number: int, v: Any, name: str) -> str:
    if v is None:
        return f'<PersonName number="{number}"/>'
    if isinstance(v, str):
        v = dict(zip(_PN_GROUPS, v.split("=")))
    if not isinstance(v, dict):
        raise BadRequest(f"attribute {name}: PN value {v!r} is not an object")
    out = [f'<PersonName number="{number}">']
    for group in _PN_GROUPS:
        text = v.get(group)
        if not text:
            continue
        if not isinstance(text, str):
            raise BadRequest(f"attribute {name}: PN {group} must be a string")
        components = text.split("^")
        if len(components) > 5:  # invalid, but keep every component
            components[4:] = ["^".join(components[4:])]
        out.append(f"<{group}>")
        # empty components are written as empty elements so that "^Bob^^Dr." and even
        # "Doe^^^^" come back exactly (PS3.19 keeps the components apart, not the carets)
        for component, value in zip(_PN_COMPONENTS, components):
            if value:
                out.append(f"<{component}>{_xml_text(value)}</{component}>")
            else:
                out.append(f"<{component}/>")
        out.append(f"</{group}>")
    out.append("</PersonName>")
    return "".join(out)


# --------------------------------------------------------------------------- XML -> JSON


def xml_to_json(data: bytes) -> dict[str, Any]:
    """Parse one PS3.19 NativeDicomModel document into the DICOM JSON object form.

    Parsing uses defusedxml with DTDs forbidden, so entity expansion ("billion laughs") and
    external entities are rejected; they, malformed XML and documents that are not a
    NativeDicomModel raise :class:`BadRequest`. An attribute of a NativeDicomModel that cannot be
    read (a bad tag, VR, structure or value, a ``^`` inside one Person Name component) raises
    :class:`XmlDatasetError`. Elements may be in the PS3.19 namespace or in none. Values are
    typed by VR as :func:`dataset_to_json` would type them.
    """
    try:
        root = _safe_fromstring(data, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise BadRequest(f"XML rejected: {type(exc).__name__} (DTDs and entities are not allowed)"
                         ) from None
    except ParseError as exc:
        raise BadRequest(f"malformed XML: {exc}") from None
    except (LookupError, ValueError) as exc:  # <?xml encoding="..."?>: unknown, or multi-byte (expat)
        raise BadRequest(f"unsupported XML encoding: {exc}") from None
    if _local(root.tag) != "NativeDicomModel":
        raise BadRequest(f"XML root element is {_local(root.tag)!r}, not NativeDicomModel")
    try:
        return _xml_to_obj(root, "", 0)
    except BadRequest as exc:
        raise XmlDatasetError(exc.reason, _xml_readable(root)) from None


def _local(name: Any) -> str:
    return name.rsplit("}", 1)[-1] if isinstance(name, str) else ""


def _xml_to_obj(node: Any, where: str, depth: int) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise BadRequest(f"sequences nested deeper than {MAX_DEPTH} levels")
    out: dict[str, Any] = {}
    for child in node:
        key, attr = _xml_entry(child, where, depth, out)
        out[key] = attr
    return dict(sorted(out.items()))


def _xml_entry(node: Any, where: str, depth: int, seen: Collection[str]) -> tuple[str, dict[str, Any]]:
    """One DicomAttribute element as (8-hex key, DICOM JSON attribute); a key in ``seen`` is refused."""
    kind = _local(node.tag)
    if kind != "DicomAttribute":
        raise BadRequest(f"{where or 'dataset'}: unexpected XML element {kind!r}")
    key = "%08X" % _parse_tag(node.get("tag", ""), where)
    name = where + key
    if key in seen:
        raise BadRequest(f"attribute {name}: appears more than once")
    vr = node.get("vr")
    if vr not in _ALL_VRS:
        raise BadRequest(f"attribute {name}: missing or unknown vr {vr!r}")
    return key, _xml_attribute(node, vr, name, depth)


def _xml_readable(root: Any) -> dict[str, Any]:
    """The top-level attributes of a NativeDicomModel that can be read on their own (for
    :class:`XmlDatasetError`); a tag that appears more than once is left out as ambiguous."""
    out: dict[str, Any] = {}
    repeated: set[str] = set()
    for child in root:
        try:
            key, attr = _xml_entry(child, "", 0, ())
        except BadRequest:
            continue
        if key in out:
            repeated.add(key)
        out[key] = attr
    return {key: attr for key, attr in sorted(out.items()) if key not in repeated}


def _xml_attribute(node: Any, vr: str, name: str, depth: int) -> dict[str, Any]:
    attr: dict[str, Any] = {"vr": vr}
    children = list(node)
    if not children:
        return attr
    kinds = {_local(c.tag) for c in children}
    if len(kinds) > 1:
        raise BadRequest(f"attribute {name}: mixes {', '.join(sorted(kinds))}")
    kind = kinds.pop()
    if kind == "BulkData":
        uri = children[0].get("uri")
        if len(children) > 1 or not uri:
            raise BadRequest(f"attribute {name}: BulkData needs exactly one uri attribute")
        attr["BulkDataURI"] = uri
    elif kind == "InlineBinary":
        if len(children) > 1:
            raise BadRequest(f"attribute {name}: more than one InlineBinary")
        attr["InlineBinary"] = "".join((children[0].text or "").split())
    elif kind == "Item":
        if vr != "SQ":
            raise BadRequest(f"attribute {name}: Item in a {vr} attribute")
        items = _numbered(children, name)
        attr["Value"] = [
            {} if item is None else _xml_to_obj(item, f"{name}/{index}/", depth + 1)
            for index, item in enumerate(items)
        ]
    elif kind == "PersonName":
        if vr != "PN":
            raise BadRequest(f"attribute {name}: PersonName in a {vr} attribute")
        attr["Value"] = [_xml_pn(pn, name) for pn in _numbered(children, name)]
    elif kind == "Value":
        if vr in ("SQ", "PN") or vr in _BINARY_VRS:
            raise BadRequest(f"attribute {name}: Value elements are not allowed for VR {vr}")
        attr["Value"] = [_xml_value(vr, v, name) for v in _numbered(children, name)]
    else:
        raise BadRequest(f"attribute {name}: unexpected XML element {kind!r}")
    return attr


def _numbered(children: list[Any], name: str) -> list[Any]:
    """Order Value/Item/PersonName elements by their number= (1-based); gaps become None."""
    slots: dict[int, Any] = {}
    for position, child in enumerate(children, 1):
        number = child.get("number")
        if number is None:
            index = position
        else:
            try:
                index = int(number)
            except ValueError:
                index = 0
            if index < 1 or index > len(children) + 1024:
                raise BadRequest(f"attribute {name}: bad number={number!r}")
        if index in slots:
            raise BadRequest(f"attribute {name}: number={index} appears twice")
        slots[index] = child
    return [slots.get(i) for i in range(1, max(slots) + 1)]


def _xml_value(vr: str, node: Any, name: str) -> Any:
    text = None if node is None else node.text
    if text is None or text == "":
        return None
    if vr == "DS" or vr == "IS":
        return _number_text(vr, text.strip(" "))
    if vr in _NUMBER_VRS:
        text = text.strip()
        if vr in ("FL", "FD"):
            if text in _NON_FINITE:
                return text
            try:
                number = float(text)
            except ValueError:
                raise BadRequest(f"attribute {name}: {vr} value {text!r} is not a number") from None
            return number if math.isfinite(number) else text
        if not _INT_RE.match(text):
            raise BadRequest(f"attribute {name}: {vr} value {text!r} is not an integer")
        return int(text)
    if vr == "AT":
        text = text.strip()
        if not _TAG_RE.match(text):
            raise BadRequest(f"attribute {name}: AT value {text!r} is not an 8-hex-digit tag")
        return text.upper()
    return text


def _xml_pn(node: Any, name: str) -> dict[str, str] | None:
    """One PersonName element as a DICOM JSON PN value: each group's components joined by ``^``,
    so a component that holds a ``^`` itself is refused (PS3.5 6.2.1 cannot represent it)."""
    if node is None:
        return None
    out: dict[str, str] = {}
    for group in node:
        group_name = _local(group.tag)
        if group_name not in _PN_GROUPS:
            continue
        values = {_local(c.tag): (c.text or "") for c in group}
        for component in _PN_COMPONENTS:
            _refuse_delimiter(values.get(component, ""), "^", "PN", name)
        present = [i for i, c in enumerate(_PN_COMPONENTS) if c in values]
        if not present:
            continue
        text = "^".join(values.get(c, "") for c in _PN_COMPONENTS[: present[-1] + 1])
        if text:
            out[group_name] = text
    return out or None
