"""Transfer syntax conversion on retrieval (PS3.18 §8.7.3).

WADO-RS may never send Implicit VR Little Endian or Explicit VR Big Endian; ``application/dicom``
defaults to Explicit VR Little Endian, and ``transfer-syntax=*`` means "as stored". This module
decides what this machine's codecs can produce (``can_transcode`` / ``producible_syntaxes``) and
does the conversion, for whole PS3.10 files (``transcode_file``) and single frames (``frame_as``).

Decisions callers rely on:

* Native <-> native conversions (implicit, big endian, deflated -> Explicit VR LE) re-encode the
  data set only; pixel values are never decoded (big endian OW/OF/OL/OD/OV values are byte-swapped).
* Decoding compressed colour data yields RGB with Planar Configuration 0 (YCbCr JPEG, YBR_RCT/ICT
  JPEG 2000 are converted), and the Photometric Interpretation is updated to match.
* ``JPEG 2000`` (…4.91) output is encoded reversibly (lossless), which that syntax allows; only
  ``JPEG Baseline`` output (Pillow, 8-bit, quality 90) loses information, and it is recorded in
  Lossy Image Compression / Ratio / Method.
* SOP Instance UIDs are never changed.
* A data set without Pixel Data can be labelled with any syntax we could produce: its encoding is
  Explicit VR Little Endian either way.
* ``can_transcode`` answers per syntax pair; constraints of the image itself (JPEG Baseline
  needs unsigned 8-bit MONOCHROME/RGB, RLE at most 16 bits, OpenJPEG refuses tiny images and
  more than 24 bits, nothing encodes Bits Allocated 1) surface as :class:`NotAcceptable` during
  the conversion, as does every codec failure.
"""
from __future__ import annotations

import functools
import io
import shutil
from typing import Any, BinaryIO, Iterable, Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, encapsulate_extended, get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import as_pixel_options, get_decoder, get_encoder, pack_bits
from pydicom.uid import UID

from .errors import DicomWebError, NotAcceptable, NotFound
from .frames import FrameLayout, read_frame, scan_layout

__all__ = [
    "EXPLICIT_VR_LE", "IMPLICIT_VR_LE", "EXPLICIT_VR_BE", "DEFLATED", "MEDIA_TYPE_SYNTAXES",
    "can_transcode", "producible_syntaxes", "transcode_file", "frame_as", "media_type_for",
    "resolve_syntax", "dataset_syntax", "decoded_photometric",
]

EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEG_LS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
J2K_MC_LOSSLESS = "1.2.840.10008.1.2.4.92"
J2K_MC = "1.2.840.10008.1.2.4.93"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"

_NATIVE = frozenset({EXPLICIT_VR_LE, IMPLICIT_VR_LE, EXPLICIT_VR_BE, DEFLATED})
# PS3.18 §8.7.3: these two shall not be used by web services.
_NEVER_SENT = frozenset({IMPLICIT_VR_LE, EXPLICIT_VR_BE})
# Syntaxes whose pixel data is always lossy; others (J2K, JPEG-LS near-lossless, HTJ2K) may be
# lossless, so for them the stored Lossy Image Compression value is kept as it is.
_ALWAYS_LOSSY = frozenset({JPEG_BASELINE, JPEG_EXTENDED})
_LOSSY_METHOD = {  # PS3.3 C.7.6.1.1.5.1 defined terms
    JPEG_BASELINE: "ISO_10918_1", JPEG_EXTENDED: "ISO_10918_1", JPEG_LS_NEAR: "ISO_14495_1",
    J2K: "ISO_15444_1", J2K_MC: "ISO_15444_2", HTJ2K: "ISO_15444_15",
}
_ENCODE_CANDIDATES = (RLE, J2K_LOSSLESS, J2K, JPEG_LS_LOSSLESS, JPEG_LS_NEAR, JPEG_BASELINE)
_JPEG_QUALITY = 90

# Keys are lower-case: compare media types case-insensitively.
MEDIA_TYPE_SYNTAXES: Mapping[str, frozenset[str]] = {
    "image/jpeg": frozenset({JPEG_BASELINE, JPEG_EXTENDED, JPEG_LOSSLESS, JPEG_LOSSLESS_SV1}),
    "image/jls": frozenset({JPEG_LS_LOSSLESS, JPEG_LS_NEAR}),
    "image/jp2": frozenset({J2K_LOSSLESS, J2K}),
    "image/jpx": frozenset({J2K_MC_LOSSLESS, J2K_MC}),
    "image/jphc": frozenset({HTJ2K_LOSSLESS, HTJ2K_LOSSLESS_RPCL, HTJ2K}),
    "image/jxl": frozenset({"1.2.840.10008.1.2.4.110", "1.2.840.10008.1.2.4.111",
                            "1.2.840.10008.1.2.4.112"}),
    "image/dicom-rle": frozenset({RLE}),
    "video/mpeg": frozenset({"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"}),
    "video/mp4": frozenset({"1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103",
                            "1.2.840.10008.1.2.4.104", "1.2.840.10008.1.2.4.105",
                            "1.2.840.10008.1.2.4.106", "1.2.840.10008.1.2.4.107",
                            "1.2.840.10008.1.2.4.108"}),
    "video/h265": frozenset({"1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"}),
    # Uncompressed bulk data is always little endian; the native syntaxes share its byte layout.
    "application/octet-stream": frozenset({EXPLICIT_VR_LE}),
}


def media_type_for(transfer_syntax: str) -> str:
    """The bulk-data media type of frames in ``transfer_syntax`` (octet-stream for native)."""
    if transfer_syntax in _NATIVE:
        return "application/octet-stream"
    for media_type, syntaxes in MEDIA_TYPE_SYNTAXES.items():
        if transfer_syntax in syntaxes and media_type != "application/octet-stream":
            return media_type
    return "application/octet-stream"


def decoded_photometric(stored_ts: str, photometric: str) -> str:
    """Photometric Interpretation of frames that ``frame_as(..., None)`` decodes from data stored
    as ``stored_ts`` with ``photometric``: colour that had to be decoded comes out RGB."""
    photometric = photometric.strip()
    if _is_compressed(stored_ts) and photometric in ("YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                                                     "YBR_RCT", "YBR_PARTIAL_420"):
        return "RGB"
    return photometric


def resolve_syntax(source_ts: str, requested: str | None) -> str:
    """The syntax a ``application/dicom`` response will use: ``None`` -> Explicit VR LE, ``*`` ->
    as stored, except that stored implicit / big endian data goes out as Explicit VR LE."""
    if requested is None or requested == "":
        return EXPLICIT_VR_LE
    if requested == "*":
        return EXPLICIT_VR_LE if source_ts in _NEVER_SENT else source_ts
    return requested


@functools.lru_cache(maxsize=None)
def _decodable(ts: str) -> bool:
    if ts in _NATIVE:
        return True
    try:
        return bool(get_decoder(UID(ts)).is_available)
    except Exception:  # NotImplementedError for syntaxes pydicom has no decoder for
        return False


@functools.lru_cache(maxsize=None)
def _encodable(ts: str) -> bool:
    if ts == JPEG_BASELINE:
        try:
            from PIL import features

            return bool(features.check("jpg"))
        except Exception:
            return False
    # J2K (.91) is written reversibly, so it only needs the lossless encoder.
    uid = J2K_LOSSLESS if ts == J2K else ts
    try:
        return bool(get_encoder(UID(uid)).is_available)
    except Exception:
        return False


def _is_compressed(ts: str) -> bool:
    return ts not in _NATIVE


def can_transcode(source_ts: str, target_ts: str) -> bool:
    """True if data stored in ``source_ts`` can be sent in ``target_ts`` by this machine.

    Implicit VR LE and Explicit VR BE are never valid targets (PS3.18 §8.7.3).
    """
    if target_ts in _NEVER_SENT:
        return False
    if source_ts == target_ts:
        return True
    if not _decodable(source_ts):
        return False
    if target_ts in (EXPLICIT_VR_LE, DEFLATED):
        return True
    return target_ts in _ENCODE_CANDIDATES and _encodable(target_ts)


@functools.lru_cache(maxsize=256)
def producible_syntaxes(source_ts: str) -> frozenset[str]:
    """Every transfer syntax data stored in ``source_ts`` can be retrieved in (the installed codecs do
    not change while the process runs, so the answer is remembered per stored syntax)."""
    candidates = {source_ts, EXPLICIT_VR_LE, DEFLATED, *_ENCODE_CANDIDATES}
    return frozenset(t for t in candidates if can_transcode(source_ts, t))


# --------------------------------------------------------------------------------------------
# Helpers shared by whole-file and frame conversion


def _pi(value: Any) -> str:
    return str(getattr(value, "value", value))


def _le_bytes(arr: np.ndarray, bits_allocated: int) -> bytes:
    """Native little-endian Pixel Data bytes for one decoded frame."""
    if bits_allocated == 1:
        return pack_bits(arr, pad=False)
    width = max(1, bits_allocated // 8)
    if arr.dtype.itemsize != width:
        kind = "i" if arr.dtype.kind == "i" else "u"
        arr = arr.astype(f"<{kind}{width}")
    elif arr.dtype.byteorder == ">" or (arr.dtype.byteorder == "=" and not np.little_endian):
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return np.ascontiguousarray(arr).tobytes()


def _image_opts(ds: Dataset) -> dict[str, Any]:
    """pydicom pixel options for ONE frame of ``ds`` (a frame's own buffer has no offset table: the
    instance's Extended Offset Table would point into the wrong bytes)."""
    opts = as_pixel_options(ds)
    opts["number_of_frames"] = 1
    opts["pixel_keyword"] = "PixelData"
    opts.pop("extended_offsets", None)
    return opts


def _values(ds: Dataset, keyword: str) -> list[Any]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    return list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]


def _lossy_update(ds: Dataset, method: str, ratio: float | None) -> None:
    """Record a lossy compression step; ratio and method values accumulate, one per step
    (PS3.3 C.7.6.1.1.5.2)."""
    ds.LossyImageCompression = "01"
    if ratio is not None:
        ratios = _values(ds, "LossyImageCompressionRatio") + [f"{ratio:.2f}"]
        ds.LossyImageCompressionRatio = ratios if len(ratios) > 1 else ratios[0]
    methods = _values(ds, "LossyImageCompressionMethod") + [method]
    ds.LossyImageCompressionMethod = methods if len(methods) > 1 else methods[0]


class _Encoded:
    """Result of encoding frames: codestreams plus the Image Pixel values that describe them."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.photometric: str | None = None
        self.lossy_ratio: float | None = None


def _encode_arrays(arrays: Iterable[np.ndarray], opts: Mapping[str, Any], target: str) -> _Encoded:
    """Encode decoded frames (planar configuration 0) into ``target`` codestreams."""
    result = _Encoded()
    pi = _pi(opts["photometric_interpretation"])
    spp = int(opts["samples_per_pixel"])
    bits_allocated = int(opts["bits_allocated"])
    raw_total = 0
    try:
        if target == JPEG_BASELINE:
            from PIL import Image

            if (bits_allocated != 8 or int(opts["bits_stored"]) != 8
                    or int(opts.get("pixel_representation", 0)) != 0
                    or pi not in ("MONOCHROME1", "MONOCHROME2", "RGB")):
                raise NotAcceptable(
                    f"JPEG Baseline needs unsigned 8-bit MONOCHROME or RGB pixels, not "
                    f"{bits_allocated}-bit {pi}")
            for arr in arrays:
                buf = io.BytesIO()
                image = Image.fromarray(np.ascontiguousarray(arr, dtype=np.uint8))
                # 4:2:2 chroma subsampling is what YBR_FULL_422 describes (PS3.5 8.2.1).
                image.save(buf, "JPEG", quality=_JPEG_QUALITY, subsampling=1)
                raw_total += arr.size
                result.frames.append(buf.getvalue())
            result.photometric = "YBR_FULL_422" if spp == 3 else pi
            compressed = sum(len(f) for f in result.frames)
            result.lossy_ratio = raw_total / compressed if compressed else None
            return result

        encoder_uid = J2K_LOSSLESS if target == J2K else target
        encoder = get_encoder(UID(encoder_uid))
        plugin = "pylibjpeg" if "pylibjpeg" in encoder.available_plugins else ""
        kwargs = dict(opts)
        kwargs["number_of_frames"] = 1
        kwargs["planar_configuration"] = 0
        kwargs.pop("pixel_keyword", None)
        out_pi = pi
        if target in (J2K_LOSSLESS, J2K) and spp == 3 and pi == "RGB":
            # The reversible colour transform; PS3.5 8.2.4 then requires YBR_RCT.
            out_pi = "YBR_RCT"
        kwargs["photometric_interpretation"] = out_pi
        for arr in arrays:
            result.frames.append(bytes(encoder.encode(arr, encoding_plugin=plugin, **kwargs)))
        result.photometric = out_pi
        return result
    except DicomWebError:
        raise
    except Exception as exc:
        raise NotAcceptable(f"cannot encode pixel data as {UID(target).name}: {exc}") from exc


def _decode_error(ts: str, exc: Exception) -> NotAcceptable:
    return NotAcceptable(f"cannot decode pixel data stored as {UID(ts).name}: {exc}")


# --------------------------------------------------------------------------------------------
# Whole files


def _swap_values(ds: Dataset) -> None:
    """Convert big endian OB/OW-like byte values to little endian, recursing into sequences."""
    widths = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}
    bits = int(ds.get("BitsAllocated", 0) or 0)
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                _swap_values(item)
            continue
        width = widths.get(str(elem.VR))
        if width is None or not isinstance(elem.value, (bytes, bytearray)) or not elem.value:
            continue
        if elem.tag == 0x7FE00010 and bits in (32, 64):
            # pydicom (and dcmtk) read 32/64-bit big endian pixel cells as whole words.
            width = bits // 8
        raw = bytes(elem.value)
        usable = len(raw) - len(raw) % width
        arr = np.frombuffer(raw[:usable], dtype=f">u{width}").astype(f"<u{width}")
        elem.value = arr.tobytes() + raw[usable:]


def _decode_dataset(ds: Dataset, source: str) -> None:
    """Replace compressed Pixel Data by native little-endian Pixel Data, in place."""
    try:
        decoder = get_decoder(UID(source))
        frames: list[bytes] = []
        info: dict[str, Any] = {}
        bits_allocated = int(ds.BitsAllocated)
        for arr, info in decoder.iter_array(ds, as_rgb=True):
            frames.append(_le_bytes(arr, bits_allocated))
    except Exception as exc:
        raise _decode_error(source, exc) from exc
    data = b"".join(frames)
    if len(data) % 2:
        data += b"\x00"
    ds.PixelData = data
    elem = ds["PixelData"]
    elem.VR = "OB" if bits_allocated <= 8 else "OW"
    elem.is_undefined_length = False
    if info:
        ds.PhotometricInterpretation = _pi(info["photometric_interpretation"])
        if int(info.get("samples_per_pixel", 1)) > 1:
            ds.PlanarConfiguration = 0
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)
    if source in _ALWAYS_LOSSY or ds.get("LossyImageCompression") == "01":
        # Decompressing does not undo the loss (PS3.3 C.7.6.1.1.5).
        ds.LossyImageCompression = "01"
        if "LossyImageCompressionMethod" not in ds and source in _LOSSY_METHOD:
            ds.LossyImageCompressionMethod = _LOSSY_METHOD[source]


def _encode_dataset(ds: Dataset, target: str) -> None:
    """Replace native little-endian Pixel Data by ``target`` encapsulated Pixel Data, in place."""
    lossless_target = target != JPEG_BASELINE
    try:
        opts = _image_opts(ds)
        decoder = get_decoder(UID(EXPLICIT_VR_LE))
        # Lossless targets keep YBR_FULL as it is; JPEG Baseline wants RGB input.
        frames = decoder.iter_array(ds, raw=lossless_target, as_rgb=not lossless_target)
        first = next(frames)
    except Exception as exc:
        raise _decode_error(EXPLICIT_VR_LE, exc) from exc
    arr0, info = first
    opts["photometric_interpretation"] = _pi(info["photometric_interpretation"])
    opts["planar_configuration"] = 0

    def arrays() -> Iterable[np.ndarray]:
        yield arr0
        try:
            for arr, _ in frames:
                yield arr
        except Exception as exc:
            raise _decode_error(EXPLICIT_VR_LE, exc) from exc

    encoded = _encode_arrays(arrays(), opts, target)
    total = sum(len(f) + 8 for f in encoded.frames)
    for keyword in ("ExtendedOffsetTable", "ExtendedOffsetTableLengths"):
        if keyword in ds:
            delattr(ds, keyword)
    if total > 2**32 - 16:
        ds.PixelData, ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths = (
            encapsulate_extended(encoded.frames))
    else:
        ds.PixelData = encapsulate(encoded.frames, has_bot=True)
    elem = ds["PixelData"]
    elem.VR = "OB"
    elem.is_undefined_length = True
    if encoded.photometric:
        ds.PhotometricInterpretation = encoded.photometric
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0
    if target == JPEG_BASELINE:
        _lossy_update(ds, _LOSSY_METHOD[JPEG_BASELINE], encoded.lossy_ratio)


def dataset_syntax(ds: Dataset) -> str:
    """The transfer syntax a parsed data set is encoded in (from its meta, else as read)."""
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    implicit, little = getattr(ds, "original_encoding", None) or (False, True)
    if implicit:
        return IMPLICIT_VR_LE
    return EXPLICIT_VR_LE if little in (True, None) else EXPLICIT_VR_BE


def _has_preamble(path: str) -> bool:
    with open(path, "rb") as fp:
        head = fp.read(132)
    return len(head) == 132 and head[128:] == b"DICM"


def read_stored(path: str, **kwargs: Any) -> Dataset:
    """``pydicom.dcmread`` of a stored blob: unreadable content is a 406 that names no path; a blob
    that is gone (deleted or replaced since it was listed) stays ``FileNotFoundError``, which the
    app answers with a 404."""
    try:
        return pydicom.dcmread(path, **kwargs)
    except FileNotFoundError:
        raise
    except Exception as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise NotAcceptable(f"the stored instance cannot be parsed: {reason}") from exc


def transcode_file(src_path: str, target_ts: str, out: BinaryIO) -> None:
    """Write the instance at ``src_path`` to ``out`` as a PS3.10 file in ``target_ts``.

    ``target_ts`` may be ``*`` (as stored, but never implicit / big endian). A file already in
    the target syntax is copied byte for byte; otherwise the result is built in memory and
    written only when complete. Raises :class:`NotAcceptable` when this machine cannot produce
    the target (``out`` is then untouched).
    """
    header = read_stored(src_path, force=True, stop_before_pixels=True)
    source = dataset_syntax(header)
    target = resolve_syntax(source, target_ts)
    if target in _NEVER_SENT:
        raise NotAcceptable(f"{UID(target).name} is not allowed by DICOMweb (PS3.18 8.7.3)")
    if target == source and _has_preamble(src_path):
        with open(src_path, "rb") as fp:
            shutil.copyfileobj(fp, out)
        return
    if not can_transcode(source, target):
        raise NotAcceptable(f"cannot convert {UID(source).name} to {UID(target).name}")
    ds = read_stored(src_path, force=True)

    try:
        if source == EXPLICIT_VR_BE:
            _swap_values(ds)
        if not hasattr(ds, "file_meta"):
            ds.file_meta = pydicom.dataset.FileMetaDataset()
        if "PixelData" in ds and target != source:
            if _is_compressed(source):
                _decode_dataset(ds, source)
            if _is_compressed(target):
                # The in-memory Pixel Data is now native little endian whatever the source was.
                ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
                _encode_dataset(ds, target)
    except DicomWebError:
        raise
    except Exception as exc:
        raise NotAcceptable(f"cannot convert {UID(source).name} to {UID(target).name}: "
                            f"{exc}") from exc
    ds.file_meta.TransferSyntaxUID = UID(target)
    if "MediaStorageSOPClassUID" not in ds.file_meta and "SOPClassUID" in ds:
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    if "MediaStorageSOPInstanceUID" not in ds.file_meta and "SOPInstanceUID" in ds:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buffer = io.BytesIO()  # so that a failure leaves ``out`` untouched
    try:
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True,
                         enforce_file_format=True)
    except Exception as exc:
        raise NotAcceptable(f"cannot encode the data set as {UID(target).name}: {exc}") from exc
    out.write(buffer.getbuffer())


# --------------------------------------------------------------------------------------------
# Single frames


class _FrameSource:
    """Lazy access to one stored instance: its header, full data set and frames."""

    def __init__(self, path: str, layout: FrameLayout | None) -> None:
        self.path = path
        self.layout = layout if layout is not None else scan_layout(path)
        self._header: Dataset | None = None
        self._full: Dataset | None = None

    @property
    def header(self) -> Dataset:
        if self._header is None:
            if self._full is not None:
                self._header = self._full
            else:
                self._header = pydicom.dcmread(self.path, stop_before_pixels=True, force=True)
        return self._header

    @property
    def full(self) -> Dataset:
        if self._full is None:
            self._full = pydicom.dcmread(self.path, force=True)
        return self._full

    @property
    def syntax(self) -> str:
        if self.layout is not None:
            return self.layout.transfer_syntax
        return dataset_syntax(self.header)

    def number_of_frames(self) -> int:
        if self.layout is not None:
            return self.layout.number_of_frames
        try:
            return max(1, int(self.header.get("NumberOfFrames", 1) or 1))
        except (TypeError, ValueError):
            return 1

    def check(self, number: int) -> None:
        if self.layout is None and "PixelData" not in self.full:
            raise NotFound("the instance has no pixel data")
        if number < 1 or number > self.number_of_frames():
            raise NotFound(f"frame {number} does not exist; the instance has "
                           f"{self.number_of_frames()} frame(s)")

    def stored(self, number: int) -> bytes:
        """Frame bytes in the stored syntax (no item tags)."""
        if self.layout is not None:
            return read_frame(self.path, self.layout, number)
        self.check(number)
        ds = self.full
        if _is_compressed(self.syntax):
            eot = None
            if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
                eot = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
            try:
                return get_frame(ds.PixelData, number - 1, extended_offsets=eot,
                                 number_of_frames=self.number_of_frames())
            except Exception as exc:
                raise NotAcceptable(f"cannot locate frame {number}: {exc}") from exc
        return self.native_le(number)

    def native_le(self, number: int) -> bytes:
        """Uncompressed little-endian frame bytes."""
        ts = self.syntax
        if self.layout is not None and ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
            return read_frame(self.path, self.layout, number)
        self.check(number)
        arr, _ = self.decoded(number, raw=True)
        return _le_bytes(arr, int(self.header.BitsAllocated))

    def decoded(self, number: int, raw: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
        """One frame as an array (colour as RGB unless ``raw``) plus its pixel description."""
        ts = self.syntax
        if not _decodable(ts):
            raise NotAcceptable(f"cannot decode pixel data stored as {UID(ts).name}")
        try:
            if _is_compressed(ts):
                data = self.stored(number)
                opts = _image_opts(self.header)
                return get_decoder(UID(ts)).as_array(
                    encapsulate([data], has_bot=False), as_rgb=not raw, raw=raw, **opts)
            if self.layout is not None and ts in (EXPLICIT_VR_LE, IMPLICIT_VR_LE):
                data = read_frame(self.path, self.layout, number)
                opts = _image_opts(self.header)
                return get_decoder(UID(EXPLICIT_VR_LE)).as_array(
                    data, as_rgb=not raw, raw=raw, **opts)
            self.check(number)
            return get_decoder(UID(ts)).as_array(self.full, index=number - 1,
                                                 as_rgb=not raw, raw=raw)
        except DicomWebError:
            raise
        except Exception as exc:
            raise _decode_error(ts, exc) from exc


def frame_as(path: str, layout: FrameLayout | None, number: int,
             target: str | None) -> tuple[bytes, str]:
    """One frame (1-based) for WADO-RS ``/frames``; returns ``(bytes, transfer syntax UID)``.

    ``target`` ``None`` (or Explicit VR LE): uncompressed little-endian pixel bytes, decoding
    compressed data (colour comes out RGB, planar configuration 0). ``"*"``: the stored bytes;
    stored implicit data is labelled Explicit VR LE (same bytes) and big endian data is swapped.
    A compressed syntax UID: that syntax's codestream, transcoding if needed. Without a
    ``layout`` the file is parsed. Raises :class:`NotFound` / :class:`NotAcceptable`.
    """
    src = _FrameSource(path, layout)
    stored = src.syntax
    if target == "*":
        if _is_compressed(stored):
            return src.stored(number), stored
        return src.native_le(number), EXPLICIT_VR_LE
    if target is None or target == EXPLICIT_VR_LE:
        if _is_compressed(stored):
            arr, _ = src.decoded(number)
            return _le_bytes(arr, int(src.header.BitsAllocated)), EXPLICIT_VR_LE
        return src.native_le(number), EXPLICIT_VR_LE
    if target in _NEVER_SENT or target == DEFLATED:
        raise NotAcceptable(f"frames cannot be sent as {UID(target).name}")
    if target == stored:
        return src.stored(number), stored
    if not can_transcode(stored, target):
        raise NotAcceptable(f"cannot convert {UID(stored).name} to {UID(target).name}")
    lossless_target = target != JPEG_BASELINE
    arr, info = src.decoded(number, raw=lossless_target and not _is_compressed(stored))
    opts = _image_opts(src.header)
    opts["photometric_interpretation"] = _pi(info["photometric_interpretation"])
    opts["samples_per_pixel"] = int(info.get("samples_per_pixel", opts["samples_per_pixel"]))
    encoded = _encode_arrays([arr], opts, target)
    return encoded.frames[0], target
