"""An instance's DICOM JSON read straight from its PS3.10 bytes: the store's fast path.

``ingest.prepare`` parses every stored instance once. The reference path is
``dicomjson.dataset_to_json(pydicom.dcmread(f, defer_size=...))``; most of its time goes into
building pydicom's ``Dataset`` element by element. :func:`parse` walks the bytes itself and gives
exactly what that path gives (the same DICOM JSON object, BulkDataURI placeholders, bulk
references with file offsets, SOP UIDs as ``prepare`` reads them) plus where the top-level Pixel
Data value lies, so the frame layout is the same too. Values are decoded by the same helpers
(``dicomjson._decode_raw``, ``_inline``, ``_private_vr``), so only the walk is new here.

It covers the common case: Explicit and Implicit VR Little Endian data sets and the encapsulated
syntaxes (whose data set is Explicit VR Little Endian); sequences and items of defined and
undefined length; private elements; Specific Character Set absent, ISO_IR 6, ISO_IR 100 or
ISO_IR 192. For anything else (big endian, deflated, other character sets, odd or overlong
lengths, out-of-order tags, unknown VRs, elements whose VR pydicom would correct or infer,
truncation, ...) it returns ``None`` and the caller parses the file with pydicom: this is an
optimisation, never a second opinion. ``tests/test_part10_json.py`` checks it against the
reference path over pydicom's test files, generated data sets and damaged inputs.

Files above ``ingest.IN_MEMORY_LIMIT`` are not read whole: the header is read in chunks and large
values (Pixel Data above all) are skipped by position, never read.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from struct import Struct
from typing import Any, NamedTuple

from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR
from pydicom.filewriter import _AMBIGUOUS_US_SS_TAGS
from pydicom.tag import _LUT_DESCRIPTOR_TAGS

from .dicomjson import _ALL_VRS, _BINARY_VRS, _DEFAULT_ENCODINGS, BulkRef, _decode_raw, _inline, _private_vr
from .model import is_valid_uid

__all__ = ["Parsed", "parse"]

logger = logging.getLogger(__name__)

_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_NATIVE_SYNTAXES = frozenset({_EXPLICIT_VR_LE, _IMPLICIT_VR_LE})
# Read with pydicom: big endian byte order, and the deflated data set (offsets are in the inflated stream).
_DECLINED_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})

_UNDEFINED = 0xFFFFFFFF
_ITEM_END = 0xFFFEE00D
# Item and Sequence Delimitation Item tags as _ITEM_HEADER reads them (element << 16 | group).
_ITEM_TAG = 0xE000FFFE
_SEQ_END_TAG = 0xE0DDFFFE
_CHARSET = 0x00080005
_SOP_CLASS = 0x00080016
_SOP_INSTANCE = 0x00080018
_NUMBER_OF_FRAMES = 0x00280008
_EXTENDED_OFFSET_TABLE = 0x7FE00001
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # always bulk data (dicomjson)
_TRAILING_PADDING = 0xFFFCFFFC
_NOTED = frozenset({0x7FE00010, 0x00080016, 0x00080018, 0x00280008, 0x7FE00001, 0x00280103})  # see _note
_PIXEL_REPRESENTATION = 0x00280103
# Implicit VR "US or SS" elements pydicom types by the data set's Pixel Representation (without the fix-up
# it applies to LUT Descriptors' first value).
_US_OR_SS = frozenset(_AMBIGUOUS_US_SS_TAGS) - frozenset(_LUT_DESCRIPTOR_TAGS)

_EXPLICIT = Struct("<HH2sH").unpack_from
_IMPLICIT = Struct("<HHL").unpack_from
_ITEM_HEADER = Struct("<LL").unpack_from  # item tags as one number: group in the low half
_LENGTH32 = Struct("<L").unpack_from

_VR_NAMES = {vr.encode("ascii"): vr for vr in _ALL_VRS}
# PS3.5 7.1.2: explicit VRs with 2 reserved bytes and a 4-byte length.
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_CHARSETS = frozenset({"ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
_CHARSET_VRS = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})  # decoded with the character set
_PLAIN_UID = re.compile(rb"[0-9.]{1,64}\x00?\Z")
_PLAIN_COUNT = re.compile(rb"[0-9]{1,9} ?\Z")
_PLAIN_CREATOR = re.compile(rb"[!-\[\]-~]+(?: [!-\[\]-~]+)* ?\Z")  # printable ASCII, no backslash

_FIRST_CHUNK = 256 << 10  # what is read of a file too large to read whole, and then per refill
_MAX_WINDOW = 64 << 20  # a header value needing more than this is left to pydicom


class _Decline(Exception):
    """The input is outside what this module handles; the caller parses it with pydicom."""


class _Short(_Decline):
    """Parsing needed the buffer to reach position ``end`` (for an undefined length, at least that far)."""

    def __init__(self, end: int) -> None:
        super().__init__()
        self.end = end


@dataclass(frozen=True)
class Parsed:
    """What ``ingest.prepare`` needs of one file, as the pydicom path would give it.

    ``pixel_offset``/``pixel_length`` locate the top-level Pixel Data value (length ``0xFFFFFFFF`` when
    undefined). ``layout_from_json`` says the frame layout computed from the DICOM JSON is the one the
    pydicom path computes: for native Pixel Data that path uses the JSON when pydicom deferred the value
    (else it reads the header again, with pydicom's values); for encapsulated Pixel Data it uses
    pydicom's Number of Frames and Extended Offset Table, which the JSON gives only when the count is a
    plain number and there is no table.
    """

    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    obj: dict[str, Any]
    bulk_refs: list[BulkRef]
    pixel_offset: int | None
    pixel_length: int | None
    layout_from_json: bool


class _Raw(NamedTuple):
    value: bytes


class _Creators(dict):
    """The Private Creator values of one data set, shaped as ``dicomjson._private_vr`` reads them."""

    def get_item(self, tag: int, *, keep_deferred: bool = True) -> _Raw | None:
        value = self.get(tag)
        return None if value is None else _Raw(value)


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int, default: str = "UN") -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return default


@lru_cache(maxsize=64)
def _encodings(value: bytes) -> list[str]:
    """Python encodings for a Specific Character Set value, as ``dicomjson._encodings_of`` derives them."""
    terms = [t.strip(" \x00") for t in value.decode("latin-1").split("\\")]
    if not any(terms):
        return _DEFAULT_ENCODINGS
    if len(terms) != 1 or terms[0] not in _CHARSETS:
        raise _Decline
    return convert_encodings(terms)


def parse(source: bytes | str, size: int, *, bulk_prefix: str, threshold: int) -> Parsed | None:
    """Parse a PS3.10 file (its bytes, or its path when too large to hold) into what ``prepare`` stores.

    ``size`` is the file's size; ``bulk_prefix`` and ``threshold`` are ``dataset_to_json``'s (values longer
    than ``threshold`` become BulkDataURIs under the prefix). Returns ``None`` for anything outside the
    common case (see the module docstring).
    """
    try:
        if isinstance(source, str):
            fd = os.open(source, os.O_RDONLY)
            try:
                return _Parser(os.pread(fd, min(size, _FIRST_CHUNK), 0), size, bulk_prefix, threshold, fd).run()
            finally:
                os.close(fd)
        return _Parser(source, size, bulk_prefix, threshold, None).run()
    except (_Decline, ValueError, UnicodeError, LookupError, OverflowError):
        # ValueError and friends: a value _decode_raw refuses (the pydicom path writes it as UN).
        return None
    except Exception:  # a bug here must not fail a store: pydicom reads the file instead
        logger.warning("part10_json could not read an upload; using pydicom", exc_info=True)
        return None


def _sop_uid_text(vr_code: bytes | None, data: bytes) -> str:
    """A SOP UID as ``ingest`` reads it from a raw UI element (one value, padding stripped)."""
    if (vr_code is not None and vr_code != b"UI") or b"\\" in data:
        raise _Decline  # ingest has pydicom convert it
    return data.decode("latin-1").rstrip(" \x00").strip()


class _Level:
    """Per data set state: its Specific Character Set and its Private Creators."""

    __slots__ = ("encodings", "creators")

    def __init__(self, encodings: list[str]) -> None:
        self.encodings = encodings
        self.creators = _Creators()


class _Parser:
    """One file. ``buf`` holds the file's bytes from offset ``base`` on (all of them for an in-memory
    upload); positions are positions in ``buf``, and ``base`` is added for the offsets recorded. Only
    the top-level loop reloads ``buf`` (a file read in parts), between elements."""

    def __init__(self, buf: bytes, size: int, bulk_prefix: str, threshold: int, fd: int | None) -> None:
        self.buf = buf
        self.prefix = bulk_prefix + "/"
        self.base = 0
        self.size = size
        self.fd = fd
        self.threshold = threshold
        self.defer_size = max(threshold, 256)  # what ingest passes to dcmread: deferred values differ
        self.refs: list[BulkRef] = []
        self.implicit = False
        self.pixel_representation: int | None = None  # the top level's, once read
        self.ts = ""
        self.sop = {_SOP_CLASS: "", _SOP_INSTANCE: ""}
        self.pixel: tuple[int | None, int | None, bool] = (None, None, False)
        self.plain_frames = True  # Number of Frames as pydicom reads it, and no Extended Offset Table

    def run(self) -> Parsed:
        buf = self.buf
        if len(buf) < 132 or buf[128:132] != b"DICM":
            raise _Decline
        ts, p = self._file_meta(132)
        if ts in _DECLINED_SYNTAXES or not is_valid_uid(ts):
            raise _Decline
        # PS3.5 A.4: the encapsulated syntaxes (and pydicom: any other) encode the data set Explicit VR LE.
        self.implicit = ts == _IMPLICIT_VR_LE
        return self._top(p, ts)

    def _file_meta(self, p: int) -> tuple[str, int]:
        """Walk the File Meta group (Explicit VR Little Endian, PS3.10 7.1); the syntax and where it ends."""
        buf = self.buf
        ts = None
        previous = -1
        while p < self.size:
            if p + 12 > len(buf):
                raise _Decline  # a File Meta group beyond the first chunk, or a truncated one
            group, element, vr, length = _EXPLICIT(buf, p)
            if group != 2:
                break
            tag = group << 16 | element
            if vr not in _VR_NAMES or tag <= previous:
                raise _Decline
            previous = tag
            if vr in _LONG_VRS:
                length = _LENGTH32(buf, p + 8)[0]
                p += 12
            else:
                p += 8
            if length == _UNDEFINED or length & 1 or p + length > len(buf):
                raise _Decline
            if tag == 0x00020010:
                value = buf[p:p + length]
                if vr != b"UI" or not _PLAIN_UID.match(value):
                    raise _Decline
                ts = value.rstrip(b"\x00").decode("ascii")
            p += length
        if ts is None:
            raise _Decline
        return ts, p

    # ------------------------------------------------------------------ data sets

    def _top(self, p: int, ts: str) -> Parsed:
        """The data set after the File Meta, and what only the top level records."""
        buf = self.buf
        if self.implicit and p + 6 <= len(buf) and all(0x40 < b < 0x5B for b in buf[p + 4:p + 6]):
            raise _Decline  # an explicit VR data set under an implicit syntax: pydicom switches
        self.ts = ts
        out, _ = self._elements(p, None, "", _Level(_DEFAULT_ENCODINGS), True)
        return Parsed(ts, self.sop[_SOP_CLASS], self.sop[_SOP_INSTANCE], out, self.refs, *self.pixel)

    def _elements(self, p: int, end: int | None, prefix: str, level: _Level,
                  top: bool) -> tuple[dict[str, Any], int]:
        """A data set's DICOM JSON and where it ends: from ``p`` to ``end``, to its Item Delimitation Item
        (an item of undefined length), or to the end of the file (``top``: the buffer is reloaded between
        elements there when a file is read in parts)."""
        buf = self.buf
        n = len(buf)
        implicit = self.implicit
        refs = self.refs
        out: dict[str, Any] = {}
        previous = count = -1
        while True:
            if top:
                if self.base + p >= self.size:
                    return out, p
            elif end is not None and p >= end:
                if p != end:
                    raise _Decline
                return out, p
            start = p
            if top:
                count = len(refs)
            try:
                if p + 8 > n:
                    raise _Short(p + 8 if end is None else end)
                if implicit:
                    group, element, length = _IMPLICIT(buf, p)
                    vr_code = None
                    p += 8
                else:
                    group, element, vr_code, length = _EXPLICIT(buf, p)
                    if vr_code in _LONG_VRS:
                        if p + 12 > n:
                            raise _Short(p + 12 if end is None else end)
                        length = _LENGTH32(buf, p + 8)[0]
                        p += 12
                    else:
                        p += 8
                tag = group << 16 | element
                if tag <= previous or group < 8 or group == 0xFFFE:
                    if tag == _ITEM_END and end is None and not top and not length and vr_code in (None, b"\0\0"):
                        return out, p
                    raise _Decline
                key = "%08X" % tag
                value, value_end = self._element(buf, p, tag, vr_code, length, level, prefix + key, top)
            except _Short as short:
                if not top:
                    raise
                del refs[count:]
                self._refill(self.base + start, short.end - start)
                buf, n, p = self.buf, len(self.buf), 0
                continue
            if tag & 0x10000:
                if 0x10 <= element <= 0xFF:
                    level.creators[tag] = buf[p:value_end]
            elif tag == _CHARSET:
                if value is None or value["vr"] != "CS":
                    raise _Decline  # pydicom decodes such a value as its VR says, then fails to use it
                if any(element["vr"] in _CHARSET_VRS for element in out.values()):
                    raise _Decline  # dicomjson decodes every text of the data set with its character set
                level.encodings = _encodings(buf[p:value_end])
            if top and tag in _NOTED:
                self._note(tag, vr_code, length, value, buf, p, value_end)
            if value is not None:
                out[key] = value
            previous, p = tag, value_end

    def _note(self, tag: int, vr_code: bytes | None, length: int, value: dict[str, Any], buf: bytes, p: int,
              end: int) -> None:
        """Keep what the store needs of a top-level element besides its JSON."""
        if tag == _PIXEL_DATA:
            if "BulkDataURI" not in value:
                raise _Decline  # empty, or not binary: the store reads such files again
            if self.ts in _NATIVE_SYNTAXES:
                from_json = length == _UNDEFINED or length > self.defer_size
            else:
                from_json = self.plain_frames
            self.pixel = (self.base + p, length, from_json)
        elif tag == _SOP_CLASS or tag == _SOP_INSTANCE:
            self.sop[tag] = _sop_uid_text(vr_code, buf[p:end])
        elif tag == _NUMBER_OF_FRAMES:
            self.plain_frames = self.plain_frames and value["vr"] == "IS" and (
                end == p or _PLAIN_COUNT.match(buf[p:end]) is not None)
        elif tag == _EXTENDED_OFFSET_TABLE:
            self.plain_frames = False
        elif tag == _PIXEL_REPRESENTATION:
            values = value.get("Value")
            if values and len(values) == 1 and value["vr"] == "US":
                self.pixel_representation = values[0]

    def _refill(self, offset: int, need: int) -> None:
        """Load the file from ``offset`` (an element's start) on: at least ``need`` bytes, and at least twice
        what was loaded of the element (``need`` is only a lower bound for undefined lengths)."""
        have = self.base + len(self.buf) - offset
        if self.fd is None or have >= self.size - offset:
            raise _Decline  # all of the file was there: it is truncated
        want = max(_FIRST_CHUNK, need, 2 * have)
        if want > _MAX_WINDOW:
            raise _Decline
        self.buf = os.pread(self.fd, min(want, self.size - offset), offset)
        self.base = offset

    def _element(self, buf: bytes, p: int, tag: int, vr_code: bytes | None, length: int, level: _Level,
                 path: str, top: bool) -> tuple[dict[str, Any] | None, int]:
        """One element's JSON (None for what dicomjson leaves out) and where its value ends."""
        if not tag & 0xFFFF or tag == _TRAILING_PADDING:  # group lengths, padding: stepped over
            # An unknown explicit VR: pydicom reads such an element as implicit VR (another length).
            if (vr_code is not None and vr_code not in _VR_NAMES) or length == _UNDEFINED or length & 1 \
                    or self.base + p + length > self.size:
                raise _Decline
            return None, p + length
        vr = _VR_NAMES.get(vr_code) if vr_code is not None else None  # type: ignore[arg-type]
        if vr is None or vr == "UN":
            vr = self._vr(buf, p, tag, vr_code, length, level, top)
        if vr == "SQ":
            return self._sequence(buf, p, length, path, level.encodings)
        if vr in _BINARY_VRS:
            return self._binary(buf, p, length, tag, vr, path)
        if length == _UNDEFINED or length & 1 or (top and length > self.defer_size):
            raise _Decline  # odd, or a value pydicom defers and then converts itself
        end = p + length
        if end > len(buf):
            raise _Short(end)
        if not length:
            return {"vr": vr}, p
        values = _decode_raw(vr, buf[p:end], True, level.encodings)
        return ({"vr": vr} if values is None else {"vr": vr, "Value": values}), end

    def _vr(self, buf: bytes, p: int, tag: int, vr_code: bytes | None, length: int, level: _Level,
            top: bool) -> str:
        """The VR the reference path uses (pydicom's reader, then ``dicomjson._raw_vr``); declines where
        pydicom would convert or correct the element itself."""
        if vr_code is not None:
            vr = _VR_NAMES.get(vr_code)
            if vr is None:
                raise _Decline
            if vr == "UN":
                if length == _UNDEFINED:
                    raise _Decline  # pydicom reads it as a sequence
                if tag & 0x10000:
                    better = _private_vr(level.creators, tag)  # type: ignore[arg-type]
                elif length < 0xFFFF or (top and length > self.defer_size):
                    better = _dictionary_vr(tag)
                else:
                    better = "UN"
                if better != "UN":
                    raise _Decline
            return vr
        if length == _UNDEFINED:
            vr = "?" if tag & 0x10000 else _dictionary_vr(tag, "?")
            if vr == "?":
                # pydicom looks ahead: a value of items is a sequence
                if p + 4 > len(buf):
                    raise _Short(p + 4)
                if buf[p:p + 4] != b"\xfe\xff\x00\xe0":
                    raise _Decline
                return "SQ"
            if vr == "SQ":
                return vr
            if vr == "OB or OW":
                return "OB"  # PS3.5 A.4: encapsulated
            raise _Decline
        vr = _private_vr(level.creators, tag) if tag & 0x10000 else _dictionary_vr(tag)  # type: ignore[arg-type]
        if vr == "OB or OW":
            return "OW"  # PS3.5 A.1: OW in Implicit VR Little Endian
        if vr == "US or SS" and top and tag in _US_OR_SS and length and self.pixel_representation is not None:
            return "US" if self.pixel_representation == 0 else "SS"  # as pydicom corrects it
        if " or " in vr:
            raise _Decline  # pydicom decides these itself
        if vr == "SQ" and tag & 0x10000:
            # pydicom converts it, finding the creator its own way: the same when the creator is plain text
            creator = level.creators.get((tag & 0xFFFF0000) | (tag & 0xFFFF) >> 8)
            if creator is None or not _PLAIN_CREATOR.match(creator):
                raise _Decline
        return vr

    # ------------------------------------------------------------------ values

    def _binary(self, buf: bytes, p: int, length: int, tag: int, vr: str, path: str) -> tuple[dict[str, Any], int]:
        """InlineBinary up to the threshold, else a BulkDataURI, its place recorded (dicomjson._raw_json)."""
        offset = self.base + p
        if length == _UNDEFINED:
            end = self._fragments(offset)
            self.refs.append(BulkRef(path, vr, offset, None))
            return {"vr": vr, "BulkDataURI": self.prefix + path}, end - self.base
        if length & 1 or offset + length > self.size:
            raise _Decline
        if not length:
            return {"vr": vr}, p
        if length > self.threshold or tag in _PIXEL_TAGS:
            self.refs.append(BulkRef(path, vr, offset, length))
            return {"vr": vr, "BulkDataURI": self.prefix + path}, p + length
        if p + length > len(buf):
            raise _Short(p + length)
        return _inline(vr, buf[p:p + length], True), p + length

    def _fragments(self, offset: int) -> int:
        """Walk the items of an undefined-length binary value (PS3.5 A.4) from file ``offset`` to its
        Sequence Delimitation Item; returns the file offset after it. pydicom reads well-formed items the
        same way; anything else it scans for the delimiter, and that is left to it."""
        while True:
            tag, length = _ITEM_HEADER(self._at(offset, 8), 0)
            if tag == _SEQ_END_TAG:
                if length:
                    raise _Decline
                return offset + 8
            if tag != _ITEM_TAG or length == _UNDEFINED or offset + 8 + length > self.size:
                raise _Decline
            offset += 8 + length

    def _at(self, offset: int, n: int) -> bytes:
        """``n`` file bytes at ``offset``: from the buffer, else read from the file."""
        local = offset - self.base
        if 0 <= local and local + n <= len(self.buf):
            return self.buf[local:local + n]
        if self.fd is None or offset + n > self.size:
            raise _Decline
        return os.pread(self.fd, n, offset)

    def _sequence(self, buf: bytes, p: int, length: int, path: str,
                  encodings: list[str]) -> tuple[dict[str, Any], int]:
        """A sequence's items (defined or undefined length, each item too), as dicomjson writes them."""
        end = None
        if length != _UNDEFINED:
            if length & 1:
                raise _Decline
            end = p + length
            if self.base + end > self.size:
                raise _Decline
            if end > len(buf):
                raise _Short(end)
        items: list[dict[str, Any]] = []
        while end is None or p < end:
            if p + 8 > len(buf):
                raise _Short(p + 8 if end is None else end)
            tag, item_length = _ITEM_HEADER(buf, p)
            p += 8
            if tag == _SEQ_END_TAG and end is None and not item_length:
                break
            if tag != _ITEM_TAG:
                raise _Decline
            prefix = f"{path}/{len(items)}/"
            if item_length == _UNDEFINED:
                item, p = self._elements(p, None, prefix, _Level(encodings), False)
            else:
                item_end = p + item_length
                if item_length & 1 or (end is not None and item_end > end):
                    raise _Decline
                if item_end > len(buf):
                    raise _Short(item_end)
                item, p = self._elements(p, item_end, prefix, _Level(encodings), False)
            items.append(item)
        if end is not None and p != end:
            raise _Decline
        return ({"vr": "SQ", "Value": items} if items else {"vr": "SQ"}), p
