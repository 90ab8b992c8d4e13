"""Frame byte layout of a stored PS3.10 file, computed once at store time.

WADO-RS ``/frames/{n}`` must be cheap even for a 1000-frame instance, so the store records where
every frame's bytes live in the file (a :class:`FrameLayout`, saved as JSON in the index). Reading
a frame is then one ``seek`` + ``read`` per fragment, without parsing the data set or touching the
other frames.

* Native (uncompressed) Pixel Data: frames are contiguous, ``frame_length`` bytes each, starting at
  ``pixel_offset``.
* Encapsulated Pixel Data (PS3.5 A.4): ``fragments`` lists, per frame, the ``(offset, length)`` of
  each fragment's value in the file, so item tags are never returned.

``scan_layout`` returns ``None`` when no layout can be computed (no Pixel Data, a deflated file, or
an encapsulated stream whose fragments cannot be assigned to frames); callers then parse the file.
"""
from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.uid import UID

from .errors import NotFound

__all__ = ["FrameLayout", "scan_layout", "layout_at", "image_from_json", "read_frame", "iter_frames"]

_IMPLICIT_VR_LE = "1.2.840.10008.1.2"
_EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
_EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_NATIVE = frozenset({_IMPLICIT_VR_LE, _EXPLICIT_VR_LE, _EXPLICIT_VR_BE})
_RLE = "1.2.840.10008.1.2.5"

_PIXEL_DATA = 0x7FE00010
_UNDEFINED = 0xFFFFFFFF
# Explicit VR elements with these VRs have 2 reserved bytes and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
             b"UV"}
_ITEM = b"\xfe\xff\x00\xe0"
_SEQ_DELIM = b"\xfe\xff\xdd\xe0"


@dataclass(frozen=True)
class FrameLayout:
    """Where each frame of an instance's Pixel Data lives in its file.

    ``bits_per_frame`` is set only for native data with Bits Allocated = 1, whose frames are packed
    back to back at bit granularity (PS3.5 8.1.1) and so need not start on a byte boundary.
    """

    transfer_syntax: str
    encapsulated: bool
    number_of_frames: int
    frame_length: int | None = None
    pixel_offset: int | None = None
    fragments: tuple[tuple[tuple[int, int], ...], ...] | None = None
    bits_per_frame: int | None = None

    def to_json(self) -> str:
        """Serialise for the SQLite index (compact JSON)."""
        d: dict[str, object] = {
            "ts": self.transfer_syntax,
            "enc": self.encapsulated,
            "n": self.number_of_frames,
        }
        if self.frame_length is not None:
            d["len"] = self.frame_length
        if self.pixel_offset is not None:
            d["off"] = self.pixel_offset
        if self.fragments is not None:
            d["frag"] = [[[o, n] for o, n in frame] for frame in self.fragments]
        if self.bits_per_frame is not None:
            d["bits"] = self.bits_per_frame
        return json.dumps(d, separators=(",", ":"))

    @staticmethod
    def from_json(s: str) -> FrameLayout:
        """Inverse of :meth:`to_json`."""
        d = json.loads(s)
        frag = d.get("frag")
        return FrameLayout(
            transfer_syntax=d["ts"],
            encapsulated=bool(d["enc"]),
            number_of_frames=int(d["n"]),
            frame_length=d.get("len"),
            pixel_offset=d.get("off"),
            fragments=None if frag is None else tuple(
                tuple((int(o), int(n)) for o, n in frame) for frame in frag),
            bits_per_frame=d.get("bits"),
        )


def _int(image: Callable[[str], Any], keyword: str, default: int) -> int:
    try:
        value = image(keyword)
        return default if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return default


# The image attributes a layout needs, by keyword, as DICOM JSON keys. The Extended Offset Table is binary
# (InlineBinary or a BulkDataURI in the JSON, never a Value), so it always reads as absent from the JSON.
_IMAGE_TAGS = {"Rows": "00280010", "Columns": "00280011", "SamplesPerPixel": "00280002",
               "BitsAllocated": "00280100", "NumberOfFrames": "00280008", "PhotometricInterpretation": "00280004",
               "ExtendedOffsetTable": "7FE00001"}


def _json_value(attrs: Mapping[str, Any], keyword: str) -> Any:
    """An image attribute from DICOM JSON, shaped as ``Dataset.get`` returns it: one value, a list
    for several (which ``_int`` refuses, as it refuses pydicom's MultiValue), None when empty."""
    values = attrs.get(_IMAGE_TAGS[keyword], {}).get("Value")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def image_from_json(attrs: Mapping[str, Any]) -> Callable[[str], Any]:
    """``image(keyword)`` for :func:`layout_at`: an image attribute read from an instance's DICOM JSON."""
    return partial(_json_value, attrs)


def _transfer_syntax(ds: Dataset) -> str | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    enc = getattr(ds, "original_encoding", None)
    if not enc or enc[0] is None:
        return None
    implicit, little = enc
    if implicit:
        return _IMPLICIT_VR_LE
    return _EXPLICIT_VR_LE if little else _EXPLICIT_VR_BE


def _read_element_header(fp: BinaryIO, implicit: bool, little: bool) -> tuple[int, int] | None:
    """Read the element header at the current position; return (tag, value length)."""
    e = "<" if little else ">"
    head = fp.read(8)
    if len(head) < 8:
        return None
    group, elem = struct.unpack(e + "HH", head[:4])
    tag = (group << 16) | elem
    vr = head[4:6]
    if implicit or not (vr.isalpha() and vr.isupper()):
        # Some files are implicit VR despite their meta; pydicom reads them, so do we.
        return tag, struct.unpack(e + "L", head[4:])[0]
    if vr in _LONG_VRS:
        more = fp.read(4)
        if len(more) < 4:
            return None
        return tag, struct.unpack(e + "L", more)[0]
    return tag, struct.unpack(e + "H", head[6:])[0]


def scan_layout(path: str, ds: Dataset | None = None, attrs: Mapping[str, Any] | None = None,
                size: int | None = None) -> FrameLayout | None:
    """Compute the frame layout of the PS3.10 file at ``path``.

    ``ds`` may be the data set already parsed by the caller (with deferred values, so pydicom
    knows where Pixel Data starts); ``attrs`` its DICOM JSON and ``size`` the file's size, if the
    caller has them, so the image attributes are not converted a second time. Offsets always come
    from the file itself. Returns ``None`` when there is no Pixel Data, when the file is deflated
    (offsets in the file are not offsets in the data set), or when the encapsulated fragments
    cannot be assigned to frames.
    """
    if ds is not None:
        if _PIXEL_DATA not in ds:
            return None
        ts = _transfer_syntax(ds)
        if ts == _DEFLATED:
            return None
        raw = ds.get_item(_PIXEL_DATA, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.value_tell is not None:
            # The caller read the file with deferred values: pydicom already knows where the Pixel
            # Data value starts, so the header need not be parsed a second time.
            return _layout_at(path, ds, ts, raw.value_tell, raw.length, attrs, size)
    with open(path, "rb") as fp:
        # stop_before_pixels leaves the file positioned on the (7FE0,0010) tag at the top level.
        try:
            hdr = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
        except Exception:
            return None  # unreadable here; the caller's own parse reports the real error
        ts = _transfer_syntax(hdr)
        if ts is None or ts == _DEFLATED:
            return None
        implicit = ts == _IMPLICIT_VR_LE
        little = ts != _EXPLICIT_VR_BE
        enc = getattr(hdr, "original_encoding", None)
        if enc and enc[0] is not None:
            # pydicom detects files whose body contradicts the meta's transfer syntax.
            implicit, little = bool(enc[0]), bool(enc[1])
        parsed = _read_element_header(fp, implicit, little)
        if parsed is None or parsed[0] != _PIXEL_DATA:
            return None
        _, length = parsed
        value_offset = fp.tell()
        if ts in _NATIVE:
            if length == _UNDEFINED:
                return None
            fp.seek(0, 2)
            present = fp.tell() - value_offset
            return _native_layout(hdr.get, ts, value_offset, min(length, present))
        if length != _UNDEFINED:
            return None
        return _encapsulated_layout(fp, hdr.get, ts)


def _layout_at(path: str, ds: Dataset, ts: str | None, value_offset: int, length: int,
               attrs: Mapping[str, Any] | None, size: int | None) -> FrameLayout | None:
    """The layout of a Pixel Data value known to start at ``value_offset`` with ``length``."""
    if ts is None:
        return None
    image = image_from_json(attrs) if attrs is not None and ts in _NATIVE else ds.get
    return layout_at(path, ts, value_offset, length, image, size)


def layout_at(source: str | bytes, ts: str, value_offset: int, length: int, image: Callable[[str], Any],
              size: int | None = None) -> FrameLayout | None:
    """The layout of a Pixel Data value that starts at ``value_offset`` with ``length`` (0xFFFFFFFF when
    undefined), for a caller that found it itself. ``source`` is the file's path or its bytes, ``size`` its
    size; ``image(keyword)`` gives an image attribute as ``Dataset.get`` does (Rows, Columns, Samples per
    Pixel, Bits Allocated, Number of Frames, Photometric Interpretation and the Extended Offset Table).
    """
    if ts in _NATIVE:
        if length == _UNDEFINED:
            return None
        present = (os.path.getsize(source) if size is None else size) - value_offset
        return _native_layout(image, ts, value_offset, min(length, present))
    if length != _UNDEFINED:
        return None
    with open(source, "rb") if isinstance(source, str) else io.BytesIO(source) as fp:
        fp.seek(value_offset)
        return _encapsulated_layout(fp, image, ts)


def _native_layout(image: Callable[[str], Any], ts: str, value_offset: int, length: int) -> FrameLayout | None:
    """``image(keyword)`` is an image attribute's value as pydicom gives it (``Dataset.get``)."""
    rows = _int(image, "Rows", 0)
    cols = _int(image, "Columns", 0)
    spp = _int(image, "SamplesPerPixel", 1)
    bits = _int(image, "BitsAllocated", 0)
    frames = max(1, _int(image, "NumberOfFrames", 1))
    if rows <= 0 or cols <= 0 or bits <= 0 or spp <= 0:
        return None
    pixels = rows * cols * spp
    if spp == 3 and str(image("PhotometricInterpretation") or "").strip() == "YBR_FULL_422":
        # Native YBR_FULL_422 stores two luma and one Cb/Cr pair per two pixels (PS3.3 C.7.6.3.1.2).
        pixels = rows * cols * 2
    bits_per_frame = pixels * bits
    frame_length = (bits_per_frame + 7) // 8
    available = (length * 8) // bits_per_frame if bits_per_frame else 0
    number = min(frames, available)
    if number <= 0:
        return None
    return FrameLayout(
        transfer_syntax=ts,
        encapsulated=False,
        number_of_frames=number,
        frame_length=frame_length,
        pixel_offset=value_offset,
        bits_per_frame=bits_per_frame if bits == 1 else None,
    )


def _encapsulated_layout(fp: BinaryIO, image: Callable[[str], Any], ts: str) -> FrameLayout | None:
    head = fp.read(8)
    if len(head) < 8 or head[:4] != _ITEM:
        return None
    bot_len = struct.unpack("<L", head[4:])[0]
    if bot_len == _UNDEFINED or bot_len % 4:
        return None
    bot_raw = fp.read(bot_len)
    if len(bot_raw) != bot_len:
        return None
    bot = list(struct.unpack(f"<{bot_len // 4}L", bot_raw))
    first = fp.tell()
    # (offset of the item tag relative to the first fragment's item tag, value offset, length)
    items: list[tuple[int, int, int]] = []
    while True:
        head = fp.read(8)
        if len(head) < 8 or head[:4] == _SEQ_DELIM:
            break
        if head[:4] != _ITEM:
            return None
        n = struct.unpack("<L", head[4:])[0]
        if n == _UNDEFINED:
            return None
        pos = fp.tell()
        items.append((pos - 8 - first, pos, n))
        fp.seek(n, 1)
    if not items:
        return None

    declared = max(1, _int(image, "NumberOfFrames", 1))
    starts: list[int] | None = None
    eot = image("ExtendedOffsetTable")
    if eot:
        raw = bytes(eot)
        starts = list(struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8]))
    elif bot:
        starts = bot
    groups = _group_by_offsets(items, starts) if starts else None
    if groups is None:
        groups = _group_without_offsets(fp, items, declared, ts)
    if groups is None:
        return None
    return FrameLayout(
        transfer_syntax=ts,
        encapsulated=True,
        number_of_frames=len(groups),
        fragments=tuple(tuple((pos, n) for _, pos, n in g) for g in groups),
    )


def _group_by_offsets(items: list[tuple[int, int, int]],
                      starts: list[int]) -> list[list[tuple[int, int, int]]] | None:
    """Assign fragments to frames from BOT / EOT offsets; None if they don't match item tags."""
    index = {rel: i for i, (rel, _, _) in enumerate(items)}
    first_items = []
    for s in starts:
        if s not in index:
            return None
        first_items.append(index[s])
    if first_items != sorted(first_items) or len(set(first_items)) != len(first_items):
        return None
    bounds = first_items + [len(items)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(len(first_items))]


def _is_frame_start(head: bytes, ts: str) -> bool:
    if head.startswith(b"\xff\xd8\xff"):  # JPEG / JPEG-LS SOI
        return True
    if head.startswith(b"\xff\x4f\xff\x51"):  # JPEG 2000 / HTJ2K codestream SOC + SIZ
        return True
    if head.startswith(b"\x00\x00\x00\x0cjP  "):  # JP2 file signature box
        return True
    if ts == _RLE and len(head) >= 8:
        # PS3.5 G.5: RLE header = segment count (1..15) then the first segment offset, always 64.
        count, first = struct.unpack("<LL", head[:8])
        return 1 <= count <= 15 and first == 64
    return False


def _group_without_offsets(fp: BinaryIO, items: list[tuple[int, int, int]], declared: int,
                           ts: str) -> list[list[tuple[int, int, int]]] | None:
    if len(items) == declared:
        return [[it] for it in items]
    if declared == 1:
        return [list(items)]
    groups: list[list[tuple[int, int, int]]] = []
    for it in items:
        fp.seek(it[1])
        if _is_frame_start(fp.read(min(12, it[2])), ts) or not groups:
            groups.append([it])
        else:
            groups[-1].append(it)
    return groups if len(groups) == declared else None


def _check_number(layout: FrameLayout, number: int) -> None:
    if not isinstance(number, int) or number < 1 or number > layout.number_of_frames:
        raise NotFound(f"frame {number} does not exist; the instance has "
                       f"{layout.number_of_frames} frame(s)")


def _read_one(fp: BinaryIO, layout: FrameLayout, number: int) -> bytes:
    if layout.encapsulated:
        assert layout.fragments is not None
        parts = []
        for offset, length in layout.fragments[number - 1]:
            fp.seek(offset)
            parts.append(fp.read(length))
        return b"".join(parts)
    assert layout.pixel_offset is not None and layout.frame_length is not None
    if layout.bits_per_frame is None:
        fp.seek(layout.pixel_offset + (number - 1) * layout.frame_length)
        return fp.read(layout.frame_length)
    return _read_bit_frame(fp, layout, number)


def _read_bit_frame(fp: BinaryIO, layout: FrameLayout, number: int) -> bytes:
    """Bits Allocated = 1: return the frame's bits re-aligned to start at bit 0 of byte 0."""
    import numpy as np

    assert layout.pixel_offset is not None and layout.bits_per_frame is not None
    first_bit = (number - 1) * layout.bits_per_frame
    skip = first_bit % 8
    nbytes = (skip + layout.bits_per_frame + 7) // 8
    fp.seek(layout.pixel_offset + first_bit // 8)
    raw = fp.read(nbytes)
    if skip == 0 and layout.bits_per_frame % 8 == 0:
        return raw
    # PS3.5 8.1.1: 1-bit pixels are packed least significant bit first.
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")
    bits = bits[skip: skip + layout.bits_per_frame]
    return np.packbits(bits, bitorder="little").tobytes()


def read_frame(path: str, layout: FrameLayout, number: int) -> bytes:
    """Return frame ``number`` (1-based) as stored: native bytes, or the compressed frame's
    fragment values joined (no item tags). Raises :class:`NotFound` when out of range."""
    _check_number(layout, number)
    with open(path, "rb") as fp:
        return _read_one(fp, layout, number)


def iter_frames(path: str, layout: FrameLayout, numbers: Iterable[int]) -> Iterator[bytes]:
    """Yield several frames (1-based) from one open file; all numbers are checked first."""
    numbers = list(numbers)
    for n in numbers:
        _check_number(layout, n)
    with open(path, "rb") as fp:
        for n in numbers:
            yield _read_one(fp, layout, n)


def stored_syntax(path: str) -> UID | None:
    """The Transfer Syntax UID of a stored file, reading only its header."""
    with open(path, "rb") as fp:
        hdr = pydicom.dcmread(fp, stop_before_pixels=True, force=True,
                              specific_tags=["TransferSyntaxUID"])
    ts = _transfer_syntax(hdr)
    return UID(ts) if ts else None
