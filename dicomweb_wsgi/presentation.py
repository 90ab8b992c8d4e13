"""Apply a Grayscale Softcopy Presentation State to one image frame (PS3.4 N.2, PS3.3 A.33.1).

WADO-URI ``presentationUID`` + ``presentationSeriesUID`` name a GSPS in the image's study; the
image is rendered through the presentation state's pipeline before the request's own ``region``
and ``rows``/``columns`` (PS3.18 §9.5.2). Applied, in the order of PS3.4 N.2:

* Modality LUT of the presentation state (Rescale Slope/Intercept or Modality LUT Sequence),
  replacing the image's own;
* Softcopy VOI LUT (window centre/width with VOI LUT Function, or a VOI LUT Sequence) selected
  for this image — an explicit ``windowCenter``/``windowWidth`` in the request wins;
* Softcopy Presentation LUT (shape IDENTITY / INVERSE, or a Presentation LUT Sequence), which
  replaces the MONOCHROME1 inversion;
* Display Shutter: rectangular, circular and polygonal shapes combined, filled with the Shutter
  Presentation Value;
* Displayed Area selected for this image (pixels outside the image are black; MAGNIFY uses the
  magnification ratio, SCALE TO FIT and TRUE SIZE keep one pixel per pixel);
* Spatial Transformation: Image Rotation, then Image Horizontal Flip (PS3.3 C.10.6).

Not applied: graphic and text annotations, graphic layers, overlays and bitmap shutters,
Presentation Pixel Aspect Ratio other than 1:1, and (without a VOI in the presentation state) the
identity VOI — the image's own VOI, else its min..max, is used instead.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from .errors import BadRequest
from .render import MAX_OUTPUT_PIXELS, RenderParams, frame_pixels

GSPS_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"

__all__ = ["GSPS_SOP_CLASS", "check_presentation", "render_with_presentation"]


def check_presentation(ps: Dataset, sop_uid: str, frame: int) -> None:
    """Raise :class:`BadRequest` unless ``ps`` is a GSPS that applies to frame ``frame`` of the
    image ``sop_uid`` (Presentation State Relationship Module, PS3.3 C.11.11)."""
    if str(ps.get("SOPClassUID", "")) != GSPS_SOP_CLASS:
        raise BadRequest("presentationUID: the instance is not a Grayscale Softcopy Presentation "
                         "State; only those are supported")
    for series in ps.get("ReferencedSeriesSequence", None) or ():
        for item in series.get("ReferencedImageSequence", None) or ():
            if _refers_to(item, sop_uid, frame):
                return
    raise BadRequest("presentationUID: the presentation state does not apply to this image")


def render_with_presentation(ds: Dataset, ps: Dataset, sop_uid: str, frame: int,
                             params: RenderParams) -> tuple[np.ndarray, RenderParams]:
    """Frame ``frame`` (1-based) of ``ds`` through the presentation state ``ps``, as an 8-bit
    array ready for :func:`dicomweb_wsgi.render.encode_image`, and the parameters it was rendered
    with (their ``window`` is the one applied, e.g. the state's, for an annotation to name).

    ``ds`` is changed in place (its Modality LUT and VOI are replaced by the presentation
    state's), so pass a data set read for this request only.
    """
    grayscale = str(ds.get("PhotometricInterpretation", "")).strip() in ("MONOCHROME1", "MONOCHROME2")
    if grayscale:
        _use_modality_lut(ds, ps)
        params = _use_voi(ds, ps, sop_uid, frame, params)
    img = frame_pixels(ds, frame, params)
    if grayscale and img.ndim == 2:
        img = _presentation_lut(img, ps, ds)
    img = _shutters(img, ps)
    img = _displayed_area(img, ps, sop_uid, frame)
    return _spatial(img, ps), params


# --------------------------------------------------------------------------------------------
# Selection of the items that apply to one image


def _refers_to(item: Dataset, sop_uid: str, frame: int) -> bool:
    if str(item.get("ReferencedSOPInstanceUID", "")) != sop_uid:
        return False
    frames = item.get("ReferencedFrameNumber")
    if frames in (None, ""):
        return True
    values = frames if isinstance(frames, (list, tuple, MultiValue)) else [frames]
    try:
        return frame in {int(v) for v in values}
    except (TypeError, ValueError):
        return True


def _applicable(items: Iterable[Dataset] | None, sop_uid: str, frame: int) -> Dataset | None:
    """The first item whose Referenced Image Sequence names this image (absent: all images)."""
    for item in items or ():
        refs = item.get("ReferencedImageSequence", None)
        if not refs or any(_refers_to(ref, sop_uid, frame) for ref in refs):
            return item
    return None


# --------------------------------------------------------------------------------------------
# Grayscale pipeline


def _use_modality_lut(ds: Dataset, ps: Dataset) -> None:
    if "ModalityLUTSequence" in ps:
        ds.ModalityLUTSequence = ps.ModalityLUTSequence
    elif "RescaleSlope" in ps or "RescaleIntercept" in ps:
        ds.pop("ModalityLUTSequence", None)
        ds.RescaleSlope = ps.get("RescaleSlope", 1)
        ds.RescaleIntercept = ps.get("RescaleIntercept", 0)
    else:
        return
    _drop_frame_groups(ds, "PixelValueTransformationSequence")


def _use_voi(ds: Dataset, ps: Dataset, sop_uid: str, frame: int,
             params: RenderParams) -> RenderParams:
    if params.window is not None:
        return params
    item = _applicable(ps.get("SoftcopyVOILUTSequence", None), sop_uid, frame)
    if item is None:
        return params
    center, width = _first_number(item.get("WindowCenter")), _first_number(item.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(item.get("VOILUTFunction", "") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID") or (function == "LINEAR" and width < 1):
            function = "LINEAR_EXACT"
        return dataclasses.replace(params, window=(center, width, function))
    if item.get("VOILUTSequence"):
        for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction"):
            ds.pop(keyword, None)
        ds.VOILUTSequence = item.VOILUTSequence
        _drop_frame_groups(ds, "FrameVOILUTSequence")
    return params


def _presentation_lut(img: np.ndarray, ps: Dataset, ds: Dataset) -> np.ndarray:
    """Apply the Softcopy Presentation LUT to the VOI output (0..255).

    With a presentation state the polarity comes from the Presentation LUT, not from
    MONOCHROME1 (PS3.4 N.2.1), so the renderer's inversion is undone first.
    """
    shape = str(ps.get("PresentationLUTShape", "") or "").strip().upper()
    lut_items = ps.get("PresentationLUTSequence", None)
    if not shape and not lut_items:
        return img
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        img = 255 - img
    if lut_items:
        table = _lut_table(lut_items[0])
        if table is not None:
            index = np.rint(np.arange(256) * ((table.size - 1) / 255.0)).astype(np.int64)
            return table[index][img]
    if shape == "INVERSE":
        return 255 - img
    return img


def _lut_table(item: Dataset) -> np.ndarray | None:
    """LUT Data scaled onto 0..255 (its bit depth from LUT Descriptor[2])."""
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        data = item.LUTData
        if isinstance(data, (bytes, bytearray)):  # OW: 16-bit words
            values = np.frombuffer(data[:len(data) // 2 * 2], dtype="<u2").astype(np.float64)
        else:
            values = np.asarray(data if isinstance(data, (list, tuple, MultiValue)) else [data],
                                dtype=np.float64)
        top = float(2 ** descriptor[2] - 1)
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if values.size == 0 or top <= 0:
        return None
    return np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Shutters, displayed area, spatial transformation


def _shutters(img: np.ndarray, ps: Dataset) -> np.ndarray:
    """Occlude everything outside the combined shutter shapes (PS3.3 C.7.6.11): the least
    image remains visible. Coordinates are 1-based rows and columns of the image."""
    shapes = _strings(ps.get("ShutterShape"))
    if not shapes:
        return img
    rows, cols = img.shape[:2]
    r = np.arange(1, rows + 1, dtype=np.float64)[:, None]
    c = np.arange(1, cols + 1, dtype=np.float64)[None, :]
    visible = np.ones((rows, cols), dtype=bool)
    if "RECTANGULAR" in shapes:
        left = _first_number(ps.get("ShutterLeftVerticalEdge"))
        right = _first_number(ps.get("ShutterRightVerticalEdge"))
        upper = _first_number(ps.get("ShutterUpperHorizontalEdge"))
        lower = _first_number(ps.get("ShutterLowerHorizontalEdge"))
        if None not in (left, right, upper, lower):
            visible &= (c >= left) & (c <= right) & (r >= upper) & (r <= lower)
    if "CIRCULAR" in shapes:
        center = _numbers(ps.get("CenterOfCircularShutter"))
        radius = _first_number(ps.get("RadiusOfCircularShutter"))
        if len(center) == 2 and radius is not None:
            # Centre is given as row\column.
            visible &= (r - center[0]) ** 2 + (c - center[1]) ** 2 <= radius ** 2
    if "POLYGONAL" in shapes:
        vertices = _numbers(ps.get("VerticesOfThePolygonalShutter"))
        if len(vertices) >= 6 and len(vertices) % 2 == 0:
            visible &= _polygon_mask(vertices, rows, cols)
    value = _first_number(ps.get("ShutterPresentationValue"))
    fill = 0 if value is None else int(round(min(max(value, 0.0), 65535.0) * 255.0 / 65535.0))
    out = img.copy()
    out[~visible] = fill
    return out


def _polygon_mask(vertices: list[float], rows: int, cols: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    # Vertices are row\column pairs (1-based); Pillow wants (x, y) from 0.
    points = [(vertices[i + 1] - 1, vertices[i] - 1) for i in range(0, len(vertices), 2)]
    mask = Image.new("1", (cols, rows), 0)
    ImageDraw.Draw(mask).polygon(points, fill=1, outline=1)
    return np.asarray(mask, dtype=bool)


def _displayed_area(img: np.ndarray, ps: Dataset, sop_uid: str, frame: int) -> np.ndarray:
    """Cut out the Displayed Area (PS3.3 C.10.4): corners are column\\row, 1-based, in the image
    before spatial transformation, and may lie outside it (that part is black)."""
    item = _applicable(ps.get("DisplayedAreaSelectionSequence", None), sop_uid, frame)
    if item is None:
        return img
    tlhc = _numbers(item.get("DisplayedAreaTopLeftHandCorner"))
    brhc = _numbers(item.get("DisplayedAreaBottomRightHandCorner"))
    if len(tlhc) != 2 or len(brhc) != 2:
        return img
    c0, c1 = sorted((int(round(tlhc[0])), int(round(brhc[0]))))
    r0, r1 = sorted((int(round(tlhc[1])), int(round(brhc[1]))))
    rows, cols = img.shape[:2]
    _check_size(r1 - r0 + 1, c1 - c0 + 1)
    out = np.zeros((r1 - r0 + 1, c1 - c0 + 1) + img.shape[2:], dtype=img.dtype)
    src_r0, src_r1 = max(r0, 1), min(r1, rows)
    src_c0, src_c1 = max(c0, 1), min(c1, cols)
    if src_r0 <= src_r1 and src_c0 <= src_c1:
        out[src_r0 - r0:src_r1 - r0 + 1, src_c0 - c0:src_c1 - c0 + 1] = \
            img[src_r0 - 1:src_r1, src_c0 - 1:src_c1]
    mode = str(item.get("PresentationSizeMode", "") or "").strip().upper()
    ratio = _first_number(item.get("PresentationPixelMagnificationRatio"))
    if mode == "MAGNIFY" and ratio is not None and ratio > 0 and ratio != 1:
        out = _magnify(out, ratio)
    return out


def _magnify(img: np.ndarray, ratio: float) -> np.ndarray:
    from PIL import Image

    image = Image.fromarray(img)
    size = (max(1, int(round(image.width * ratio))), max(1, int(round(image.height * ratio))))
    _check_size(size[1], size[0])
    return np.asarray(image.resize(size, Image.Resampling.BICUBIC))


def _check_size(rows: int, cols: int) -> None:
    if rows * cols > MAX_OUTPUT_PIXELS:
        raise BadRequest(f"presentationUID: the displayed area would be {cols} x {rows} pixels, more "
                         f"than this server renders ({MAX_OUTPUT_PIXELS} pixels)")


def _spatial(img: np.ndarray, ps: Dataset) -> np.ndarray:
    """Image Rotation (clockwise), then Image Horizontal Flip (PS3.3 C.10.6)."""
    rotation = _first_number(ps.get("ImageRotation")) or 0
    turns = int(rotation) // 90 % 4
    if turns:
        img = np.rot90(img, k=-turns)  # negative k: clockwise
    if str(ps.get("ImageHorizontalFlip", "") or "").strip().upper() == "Y":
        img = img[:, ::-1]
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------------------------
# Value helpers


def _strings(value: Any) -> set[str]:
    if value in (None, ""):
        return set()
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    return {str(v).strip().upper() for v in values}


def _numbers(value: Any) -> list[float]:
    if value in (None, ""):
        return []
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return []


def _first_number(value: Any) -> float | None:
    numbers = _numbers(value)
    return numbers[0] if numbers else None


def _drop_frame_groups(ds: Dataset, sequence: str) -> None:
    """Remove a functional group macro from shared and per-frame groups, so that the values set
    from the presentation state are the ones the renderer finds."""
    for groups in (ds.get("SharedFunctionalGroupsSequence", None),
                   ds.get("PerFrameFunctionalGroupsSequence", None)):
        for group in groups or ():
            group.pop(sequence, None)
