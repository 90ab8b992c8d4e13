"""Rendered images and thumbnails (PS3.18 §8.3.5, Table 8.7.4-1; WADO-URI §9).

A frame is decoded alone (pydicom decoders with ``index=``), then taken through the grayscale
pipeline of PS3.4 N.2 — Modality LUT, VOI LUT, MONOCHROME1 inversion — or converted to RGB, and
finally cropped (``region`` / viewport source rectangle), scaled into the viewport keeping the
aspect ratio, and encoded as 8-bit JPEG (baseline), PNG, GIF or JPEG 2000 with Pillow.

VOI precedence: the ``window`` parameter, else the file's first Window Center/Width (per-frame
functional groups first), else the first VOI LUT Sequence item, else the frame's min..max.
Windowing does not apply to colour images. ICC profiles and annotations are not applied.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space
from pydicom.pixels import get_decoder
from pydicom.multival import MultiValue
from pydicom.uid import UID

from .errors import BadRequest, DicomWebError, NotAcceptable, NotFound
from .transcode import dataset_syntax

__all__ = ["RenderParams", "RENDERED_MEDIA_TYPES", "parse_rendered_query",
           "parse_wado_uri_rendering", "render_frame", "thumbnail", "frame_pixels", "encode_image"]

_FUNCTIONS = {"linear": "LINEAR", "linear-exact": "LINEAR_EXACT", "linear_exact": "LINEAR_EXACT",
              "sigmoid": "SIGMOID"}
_DEFAULT_QUALITY = 90
# Scaling up never produces more pixels than this (a 65535-row request would need gigabytes).
MAX_OUTPUT_PIXELS = 64 << 20
RENDERED_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/jp2")


@dataclass(frozen=True)
class RenderParams:
    """Rendering options.

    ``window`` = (center, width, function) with function LINEAR, LINEAR_EXACT or SIGMOID.
    ``viewport`` = (vw, vh): the output fits in vw x vh, aspect ratio kept (scaled up or down).
    ``viewport_source`` = (sx, sy, sw, sh) in source pixels from ``viewport=vw,vh,sx,sy,sw,sh``;
    sw/sh may be None (to the image edge) or negative (the rectangle extends left/up of sx/sy
    and the output is flipped). ``region`` = normalised (x1, y1, x2, y2) from WADO-URI;
    ``rows``/``columns`` are WADO-URI maxima.
    """

    window: tuple[float, float, str] | None = None
    viewport: tuple[int, int] | None = None
    region: tuple[float, float, float, float] | None = None
    rows: int | None = None
    columns: int | None = None
    quality: int | None = None
    media_type: str = "image/jpeg"
    viewport_source: tuple[float, float, float | None, float | None] | None = None


# --------------------------------------------------------------------------------------------
# Query parsing


def _first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    if not values:
        return None
    return values[0] if isinstance(values, (list, tuple)) else str(values)


def _number(text: str, name: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name}: {text!r} is not a finite number")
    return value


def _positive_int(text: str, name: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not an integer") from None
    if value < 1 or value > 65535:
        raise BadRequest(f"{name}: {value} is out of range 1..65535")
    return value


def _quality(text: str, name: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise BadRequest(f"{name}: {text!r} is not an integer") from None
    if not 1 <= value <= 100:
        raise BadRequest(f"{name}: {value} is not within 1..100")
    return value


def _window(center: float, width: float, function: str, name: str) -> tuple[float, float, str]:
    # PS3.3 C.11.2.1.2: Window Width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    if function == "LINEAR" and width < 1:
        raise BadRequest(f"{name}: width must be >= 1 for a linear window")
    if width <= 0:
        raise BadRequest(f"{name}: width must be > 0")
    return center, width, function


def parse_rendered_query(query: Mapping[str, list[str]]) -> RenderParams:
    """Parse the WADO-RS rendering parameters ``window``, ``viewport`` and ``quality``.

    ``query`` maps names to value lists (as ``urllib.parse.parse_qs`` gives); the first value is
    used. ``annotation``, ``iccprofile``, ``charset`` and unknown names are ignored (§8.3.5
    leaves support optional; unsupported parameters are ignored). Raises :class:`BadRequest`
    naming the parameter for malformed values. ``media_type`` stays the default: the caller
    sets it from content negotiation (``dataclasses.replace``).
    """
    window = viewport = source = quality = None
    text = _first(query, "window")
    if text is not None:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 3):
            raise BadRequest("window: expected center,width[,function]")
        function = "LINEAR"
        if len(parts) == 3 and parts[2]:
            try:
                function = _FUNCTIONS[parts[2].lower()]
            except KeyError:
                raise BadRequest(f"window: unknown function {parts[2]!r}; use linear, "
                                 "linear-exact or sigmoid") from None
        window = _window(_number(parts[0], "window"), _number(parts[1], "window"), function,
                         "window")
    text = _first(query, "viewport")
    if text is not None:
        parts = [p.strip() for p in text.split(",")]
        if len(parts) not in (2, 6):
            raise BadRequest("viewport: expected vw,vh[,sx,sy,sw,sh]")
        viewport = (_positive_int(parts[0], "viewport"), _positive_int(parts[1], "viewport"))
        if len(parts) == 6:
            sx = _number(parts[2], "viewport") if parts[2] else 0.0
            sy = _number(parts[3], "viewport") if parts[3] else 0.0
            sw = _number(parts[4], "viewport") if parts[4] else None
            sh = _number(parts[5], "viewport") if parts[5] else None
            if sx < 0 or sy < 0:
                raise BadRequest("viewport: sx and sy must not be negative")
            if sw == 0 or sh == 0:
                raise BadRequest("viewport: sw and sh must not be zero")
            source = (sx, sy, sw, sh)
    text = _first(query, "quality")
    if text is not None:
        quality = _quality(text, "quality")
    return RenderParams(window=window, viewport=viewport, quality=quality,
                        viewport_source=source)


def parse_wado_uri_rendering(query: Mapping[str, list[str]]) -> RenderParams:
    """Parse the WADO-URI rendering parameters (PS3.18 §9): ``rows``, ``columns``, ``region``,
    ``windowCenter`` + ``windowWidth`` (both or neither) and ``imageQuality``.
    ``frameNumber`` and ``contentType`` are left to the caller."""
    rows = columns = quality = None
    region = window = None
    text = _first(query, "rows")
    if text is not None:
        rows = _positive_int(text, "rows")
    text = _first(query, "columns")
    if text is not None:
        columns = _positive_int(text, "columns")
    text = _first(query, "region")
    if text is not None:
        parts = text.split(",")
        if len(parts) != 4:
            raise BadRequest("region: expected x1,y1,x2,y2")
        x1, y1, x2, y2 = (_number(p, "region") for p in parts)
        if not (0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1):
            raise BadRequest("region: need 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1")
        region = (x1, y1, x2, y2)
    center, width = _first(query, "windowCenter"), _first(query, "windowWidth")
    if (center is None) != (width is None):
        raise BadRequest("windowCenter and windowWidth must be given together")
    if center is not None and width is not None:
        window = _window(_number(center, "windowCenter"), _number(width, "windowWidth"),
                         "LINEAR", "windowWidth")
    text = _first(query, "imageQuality")
    if text is not None:
        quality = _quality(text, "imageQuality")
    return RenderParams(window=window, region=region, rows=rows, columns=columns,
                        quality=quality)


# --------------------------------------------------------------------------------------------
# Pixel pipeline


def _number_of_frames(ds: Dataset) -> int:
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1


def _frame_item(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The first item of a functional group macro for frame ``index`` (per-frame, then shared)."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    groups = []
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    if shared:
        groups.append(shared[0])
    for group in groups:
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def _first_value(value: Any) -> float | None:
    """First value of a possibly multi-valued DS element, as a float (None if unusable)."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        if not len(value):
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _modality(arr: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    """Apply the Modality LUT: a Modality LUT Sequence, else Rescale Slope/Intercept (per frame
    for enhanced objects); PS3.3 C.11.1."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
    source: Dataset = _frame_item(ds, index, "PixelValueTransformationSequence") or ds
    slope = _first_value(source.get("RescaleSlope"))
    intercept = _first_value(source.get("RescaleIntercept"))
    out = arr.astype(np.float64)
    if slope is not None and slope != 1:
        out *= slope
    if intercept:
        out += intercept
    return out


def _apply_window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """VOI LUT Function (PS3.3 C.11.2.1.2 / C.11.2.1.3) onto 0..255."""
    y_min, y_max = 0.0, 255.0
    if function == "SIGMOID":
        return (y_max - y_min) / (1.0 + np.exp(-4.0 * (x - center) / width)) + y_min
    if function == "LINEAR_EXACT":
        y = ((x - center) / width + 0.5) * (y_max - y_min) + y_min
        y = np.where(x <= center - width / 2.0, y_min, y)
        return np.where(x > center + width / 2.0, y_max, y)
    low = center - 0.5 - (width - 1.0) / 2.0
    high = center - 0.5 + (width - 1.0) / 2.0
    if width <= 1.0:
        return np.where(x <= low, y_min, y_max)
    y = ((x - (center - 0.5)) / (width - 1.0) + 0.5) * (y_max - y_min) + y_min
    y = np.where(x <= low, y_min, y)
    return np.where(x > high, y_max, y)


def _voi_from_file(ds: Dataset, index: int) -> tuple[float, float, str] | None:
    source: Dataset = _frame_item(ds, index, "FrameVOILUTSequence") or ds
    center = _first_value(source.get("WindowCenter"))
    width = _first_value(source.get("WindowWidth"))
    if center is None or width is None:
        return None
    function = str(source.get("VOILUTFunction", "") or ds.get("VOILUTFunction", "") or "LINEAR")
    function = function.strip().upper() or "LINEAR"
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if width < (1 if function == "LINEAR" else 1e-12):
        return None
    return center, width, function


def _voi_lut_sequence(x: np.ndarray, ds: Dataset) -> np.ndarray | None:
    items = ds.get("VOILUTSequence")
    if not items:
        return None
    try:
        descriptor = items[0].LUTDescriptor
        entries, first, bits = int(descriptor[0]) or 65536, int(descriptor[1]), int(descriptor[2])
        table = _lut_entries(items[0], ds, entries)
        # PS3.3 C.11.2.1.1: inputs below the first mapped value take the first entry, above the
        # table the last. (pydicom's apply_voi indexes an 8-bit table with 8-bit integers, which
        # wrap past entry 255.)
        out = table[np.clip(np.rint(x).astype(np.int64) - first, 0, entries - 1)].astype(np.float64)
    except Exception:
        return None
    top = max(float(2 ** bits - 1), float(out.max()) if out.size else 1.0, 1.0)
    return out * (255.0 / top)


def _lut_entries(item: Dataset, ds: Dataset, entries: int) -> np.ndarray:
    """The entries of a LUT Data value (US or SS values, or OW words in the data set's byte order)."""
    element = item["LUTData"]
    if element.VR == "OW" and isinstance(element.value, (bytes, bytearray)):
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        return np.frombuffer(element.value, dtype="<u2" if little else ">u2", count=entries).astype(np.int64)
    values = list(element.value) if hasattr(element.value, "__iter__") else [element.value]
    return np.asarray(values[:entries], dtype=np.int64)


def _grayscale_values(raw: np.ndarray, ds: Dataset, index: int, params: RenderParams,
                      monochrome1: bool, present: np.ndarray | None = None) -> np.ndarray:
    """Modality LUT -> VOI -> inversion for the stored values ``raw``; ``present`` masks the
    values that actually occur (for the min/max fallback when ``raw`` is a value domain)."""
    x = _modality(raw, ds, index)
    window = params.window or _voi_from_file(ds, index)
    if window is not None:
        y = _apply_window(x, *window)
    else:
        y = _voi_lut_sequence(x, ds)
        if y is None:
            occurring = x if present is None else x[present]
            low, high = float(occurring.min()), float(occurring.max())
            y = (x - low) * (255.0 / (high - low)) if high > low else np.zeros_like(x)
    out = np.clip(np.rint(y), 0, 255).astype(np.uint8)
    if monochrome1:
        # MONOCHROME1: minimum value is displayed white (PS3.3 C.7.6.3.1.2).
        out = 255 - out
    return out


def _grayscale(arr: np.ndarray, ds: Dataset, index: int, params: RenderParams,
               monochrome1: bool) -> np.ndarray:
    """8-bit grayscale for a monochrome frame.

    Integer frames larger than their value range go through a lookup table built over
    min..max, which keeps memory at one byte per pixel for large images.
    """
    if arr.dtype.kind in "ui" and arr.size:
        low, high = int(arr.min()), int(arr.max())
        if high - low < min(arr.size, 1 << 20):
            if arr.dtype.itemsize <= 2:
                # Modular subtraction on the unsigned view: exact because high - low fits.
                unsigned = arr.view(np.uint8 if arr.dtype.itemsize == 1 else np.uint16)
                offsets = unsigned - unsigned.dtype.type(low % (1 << (8 * arr.dtype.itemsize)))
            else:
                offsets = arr.astype(np.int64) - low
            domain = np.arange(low, high + 1, dtype=np.int64)
            present = None
            if "ModalityLUTSequence" in ds:
                # A LUT need not be monotonic, so min/max must come from values that occur.
                present = np.bincount(offsets.ravel(), minlength=domain.size) > 0
            lut = _grayscale_values(domain, ds, index, params, monochrome1, present)
            return lut[offsets]
    return _grayscale_values(arr, ds, index, params, monochrome1)


def _to_8bit(arr: np.ndarray, bits: int) -> np.ndarray:
    if bits > 8:
        arr = np.right_shift(arr.astype(np.uint32), bits - 8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _decode(ds: Dataset, index: int) -> tuple[np.ndarray, dict[str, Any]]:
    ts = dataset_syntax(ds)
    try:
        return get_decoder(UID(ts)).as_array(ds, index=index, as_rgb=True)
    except DicomWebError:
        raise
    except Exception as exc:
        raise NotAcceptable(f"cannot decode the pixel data for rendering: {exc}") from exc


def _pixels(ds: Dataset, frame: int, params: RenderParams) -> np.ndarray:
    """Frame ``frame`` (1-based) as 8-bit grayscale (H, W) or RGB (H, W, 3)."""
    if "PixelData" not in ds:
        raise NotAcceptable("the instance has no pixel data to render")
    count = _number_of_frames(ds)
    if frame < 1 or frame > count:
        raise NotFound(f"frame {frame} does not exist; the instance has {count} frame(s)")
    arr, info = _decode(ds, frame - 1)
    pi = str(getattr(info.get("photometric_interpretation"), "value",
                     info.get("photometric_interpretation")) or "").strip()
    spp = int(info.get("samples_per_pixel", ds.get("SamplesPerPixel", 1)) or 1)
    bits = int(info.get("bits_stored", ds.get("BitsStored", 8)) or 8)
    try:
        if pi in ("MONOCHROME1", "MONOCHROME2") or (spp == 1 and pi != "PALETTE COLOR"):
            return _grayscale(arr, ds, frame - 1, params, pi == "MONOCHROME1")
        if pi == "PALETTE COLOR":
            rgb = np.asarray(apply_color_lut(arr, ds))
            lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
            return _to_8bit(rgb, lut_bits)
        if spp == 3:
            if pi in ("YBR_FULL", "YBR_FULL_422"):
                arr = convert_color_space(arr, pi, "RGB")
            return _to_8bit(arr, bits)
    except DicomWebError:
        raise
    except Exception as exc:
        raise NotAcceptable(f"cannot render {pi} pixel data: {exc}") from exc
    raise NotAcceptable(f"cannot render pixel data with photometric interpretation {pi!r}")


def _crop(img: np.ndarray, params: RenderParams) -> np.ndarray:
    rows, cols = img.shape[:2]
    if params.region is not None:
        x1, y1, x2, y2 = params.region
        c0, c1 = int(math.floor(x1 * cols)), int(math.ceil(x2 * cols))
        r0, r1 = int(math.floor(y1 * rows)), int(math.ceil(y2 * rows))
        c1, r1 = max(c1, c0 + 1), max(r1, r0 + 1)
        img = img[max(0, r0):min(rows, r1), max(0, c0):min(cols, c1)]
    if params.viewport_source is not None:
        rows, cols = img.shape[:2]
        sx, sy, sw, sh = params.viewport_source
        flip_x = sw is not None and sw < 0
        flip_y = sh is not None and sh < 0
        x0, x1 = (sx, cols) if sw is None else sorted((sx, sx + sw))
        y0, y1 = (sy, rows) if sh is None else sorted((sy, sy + sh))
        c0, c1 = max(0, int(round(x0))), min(cols, int(round(x1)))
        r0, r1 = max(0, int(round(y0))), min(rows, int(round(y1)))
        if c1 <= c0 or r1 <= r0:
            raise BadRequest("viewport: the source rectangle lies outside the image")
        img = img[r0:r1, c0:c1]
        if flip_x:
            img = img[:, ::-1]
        if flip_y:
            img = img[::-1]
    if img.size == 0:
        raise BadRequest("region: the selected region is empty")
    return np.ascontiguousarray(img)


def _target_size(width: int, height: int, params: RenderParams) -> tuple[int, int]:
    if params.viewport is not None:
        vw, vh = params.viewport
        scale = min(vw / width, vh / height)
    elif params.rows is not None and params.columns is not None:
        scale = min(params.columns / width, params.rows / height)
    elif params.rows is not None:
        scale = params.rows / height
    elif params.columns is not None:
        scale = params.columns / width
    else:
        return width, height
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _encode(img: np.ndarray, params: RenderParams,
            decorate: Callable[[Any], Any] | None = None) -> bytes:
    from PIL import Image

    media_type = params.media_type.split(";")[0].strip().lower()
    image = Image.fromarray(img, "RGB" if img.ndim == 3 else "L")
    size = _target_size(image.width, image.height, params)
    if size[0] * size[1] > max(MAX_OUTPUT_PIXELS, image.width * image.height):
        # PS3.18 8.2.2 / 8.3.5.1.3: viewport dimensions that are not supported are a 400.
        raise BadRequest(f"rows/columns/viewport: an output of {size[0]} x {size[1]} pixels is larger "
                         f"than this server renders ({MAX_OUTPUT_PIXELS} pixels)")
    if size != image.size:
        enlarging = size[0] > image.width
        image = image.resize(size, Image.Resampling.BICUBIC if enlarging
                             else Image.Resampling.LANCZOS)
    if decorate is not None:
        image = decorate(image)
    buf = io.BytesIO()
    try:
        if media_type in ("image/jpeg", "image/jpg"):
            # Pillow writes baseline (non-progressive) 8-bit JPEG, as Table 8.7.4-1 requires.
            image.save(buf, "JPEG", quality=params.quality or _DEFAULT_QUALITY)
        elif media_type == "image/png":
            image.save(buf, "PNG")
        elif media_type == "image/gif":
            if image.mode == "RGB":
                image = image.quantize(colors=256)
            image.save(buf, "GIF")
        elif media_type == "image/jp2":
            from PIL import features

            if not features.check("jpg_2000"):
                raise NotAcceptable("image/jp2 output is not available on this server")
            image.save(buf, "JPEG2000", no_jp2=False)
        else:
            raise NotAcceptable(f"cannot render to {params.media_type!r}; supported: "
                                + ", ".join(RENDERED_MEDIA_TYPES))
    except DicomWebError:
        raise
    except Exception as exc:
        raise NotAcceptable(f"cannot encode the rendered image as {media_type}: {exc}") from exc
    return buf.getvalue()


def render_frame(ds: Dataset, frame: int, params: RenderParams) -> bytes:
    """Render frame ``frame`` (1-based) of ``ds`` as ``params.media_type`` bytes.

    Raises :class:`NotFound` for a frame out of range, :class:`NotAcceptable` when the pixel
    data cannot be decoded or the media type produced, :class:`BadRequest` for an empty crop.
    """
    return _encode(_crop(_pixels(ds, frame, params), params), params)


def frame_pixels(ds: Dataset, frame: int, params: RenderParams) -> np.ndarray:
    """Frame ``frame`` (1-based) after the Modality LUT, VOI (``params.window`` first) and
    MONOCHROME1 inversion: 8-bit (H, W) grayscale or (H, W, 3) RGB, uncropped.

    For callers that transform the pixels further (presentation states) before
    :func:`encode_image`; raises like :func:`render_frame`.
    """
    return _pixels(ds, frame, params)


def encode_image(img: np.ndarray, params: RenderParams,
                 decorate: Callable[[Any], Any] | None = None) -> bytes:
    """Crop (``region`` / viewport source), scale and encode an 8-bit image as
    ``params.media_type``. ``decorate`` receives the scaled ``PIL.Image`` and returns the image
    to encode (WADO-URI ``annotation`` burns text in at output resolution)."""
    return _encode(_crop(img, params), params, decorate)


def thumbnail(ds: Dataset, size: int = 128) -> bytes:
    """A JPEG fitting in ``size`` x ``size`` (aspect kept); the centre frame of a multi-frame."""
    if size < 1:
        raise BadRequest("thumbnail size must be positive")
    frame = (_number_of_frames(ds) + 1) // 2
    return render_frame(ds, frame, RenderParams(viewport=(size, size), quality=85))
