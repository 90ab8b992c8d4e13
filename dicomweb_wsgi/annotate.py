"""Burn WADO-URI ``annotation=patient,technique`` text into a rendered image (PS3.18 §9.4.1.2.2).

``patient`` writes patient identification (name, ID, birth date, sex) in the top-left corner;
``technique`` writes how the image was made (modality, study date, series, acquisition
parameters, the window used, the frame) in the bottom-left corner. Text is drawn on the scaled
output image with Pillow's default font, white with a black outline so it reads on any
background, and sized to the image height. Unknown keywords are ignored (PS3.18 §8.3: values a
server does not support are ignored).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

KEYWORDS = ("patient", "technique")

__all__ = ["KEYWORDS", "parse_annotation", "annotation_lines", "annotator"]


def parse_annotation(values: Iterable[str]) -> tuple[str, ...]:
    """The supported keywords named in ``annotation`` values (comma lists), in canonical order."""
    asked = {part.strip().lower() for value in values for part in value.split(",")}
    return tuple(k for k in KEYWORDS if k in asked)


def annotation_lines(ds: Dataset, keywords: Iterable[str], frame: int,
                     window: tuple[float, float, str] | None) -> dict[str, list[str]]:
    """The text for each keyword: ``{"patient": [...], "technique": [...]}`` (empty lines dropped)."""
    wanted = set(keywords)
    out: dict[str, list[str]] = {}
    if "patient" in wanted:
        out["patient"] = _lines([
            _text(ds, "PatientName"),
            _labelled("ID", _text(ds, "PatientID")),
            " ".join(filter(None, [_labelled("Born", _text(ds, "PatientBirthDate")),
                                   _labelled("Sex", _text(ds, "PatientSex"))])),
        ])
    if "technique" in wanted:
        frames = _int(ds.get("NumberOfFrames"))
        out["technique"] = _lines([
            " ".join(filter(None, [_text(ds, "Modality"), _text(ds, "StudyDate")])),
            _text(ds, "SeriesDescription") or _text(ds, "ProtocolName"),
            " ".join(filter(None, [_labelled("kVp", _text(ds, "KVP")),
                                   _labelled("mA", _text(ds, "XRayTubeCurrent")),
                                   _labelled("TR", _text(ds, "RepetitionTime")),
                                   _labelled("TE", _text(ds, "EchoTime")),
                                   _labelled("ST", _text(ds, "SliceThickness"))])),
            _window_text(ds, window),
            f"Frame {frame}/{frames}" if frames and frames > 1 else "",
        ])
    return out


def annotator(lines: dict[str, list[str]]) -> Callable[[Any], Any]:
    """A ``decorate`` callback for :func:`dicomweb_wsgi.render.encode_image` that draws ``lines``:
    patient text from the top-left corner down, technique text from the bottom-left corner up."""

    def draw(image: Any) -> Any:
        from PIL import ImageDraw, ImageFont

        size = max(10, min(32, image.height // 20))
        font = ImageFont.load_default(size=size)
        pen = ImageDraw.Draw(image)
        pen.fontmode = "1"  # no anti-aliasing: crisp at small sizes, exact white and black
        white = 255 if image.mode == "L" else (255, 255, 255)
        black = 0 if image.mode == "L" else (0, 0, 0)
        step = size + max(1, size // 4)
        margin = max(1, size // 4)
        for i, line in enumerate(lines.get("patient", [])):
            pen.text((margin, margin + i * step), line, font=font, fill=white,
                     stroke_width=1, stroke_fill=black)
        technique = lines.get("technique", [])
        for i, line in enumerate(technique):
            y = image.height - margin - (len(technique) - i) * step
            pen.text((margin, y), line, font=font, fill=white, stroke_width=1, stroke_fill=black)
        return image

    return draw


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None or value == "":
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        value = "\\".join(str(v) for v in value)
    # Control characters cannot be drawn and could hide other text.
    return "".join(ch for ch in str(value) if ch.isprintable()).strip()


def _window_text(ds: Dataset, window: tuple[float, float, str] | None) -> str:
    """The window applied: the request's, else the image's first Window Center/Width."""
    if window is not None:
        return f"W {window[0]:g} / {window[1]:g}"
    center, width = _text(ds, "WindowCenter").split("\\")[0], _text(ds, "WindowWidth").split("\\")[0]
    return f"W {center} / {width}" if center and width else ""


def _labelled(label: str, value: str) -> str:
    return f"{label} {value}" if value else ""


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line]
