"""One error type carrying an HTTP status and a reason, plus the DICOM status codes we use.

Handlers raise a ``DicomWebError`` subclass; ``app.py`` is the one place that turns it into a
response (plain-text reason, the status, and any extra headers such as ``Allow``).
"""
from __future__ import annotations

from enum import IntEnum


class DicomWebError(Exception):
    """An error that becomes an HTTP response with ``status`` and ``reason`` as the body."""

    status: int = 500
    title: str = "Internal Server Error"

    def __init__(self, reason: str = "", *, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason or self.title)
        self.reason = reason or self.title
        self.headers: dict[str, str] = dict(headers or {})

    @property
    def status_line(self) -> str:
        return f"{self.status} {self.title}"


def note_stored(exc: DicomWebError, stored: int) -> DicomWebError:
    """A store request refused part way: say how many of its instances were stored before (they
    stay stored and durable; the client must not assume that nothing was)."""
    if stored:
        exc.reason = f"{exc.reason} ({stored} complete instances before the error were stored)"
    return exc


class BadRequest(DicomWebError):
    status, title = 400, "Bad Request"


class Unauthorized(DicomWebError):
    status, title = 401, "Unauthorized"


class Forbidden(DicomWebError):
    status, title = 403, "Forbidden"


class NotFound(DicomWebError):
    status, title = 404, "Not Found"


class MethodNotAllowed(DicomWebError):
    status, title = 405, "Method Not Allowed"

    def __init__(self, allowed: list[str], reason: str = "") -> None:
        super().__init__(reason or "method not allowed; allowed: " + ", ".join(allowed),
                         headers={"Allow": ", ".join(allowed)})


class NotAcceptable(DicomWebError):
    status, title = 406, "Not Acceptable"


class Conflict(DicomWebError):
    status, title = 409, "Conflict"


class Gone(DicomWebError):
    status, title = 410, "Gone"


class PayloadTooLarge(DicomWebError):
    status, title = 413, "Payload Too Large"


class UnsupportedMediaType(DicomWebError):
    status, title = 415, "Unsupported Media Type"


class RangeNotSatisfiable(DicomWebError):
    status, title = 416, "Range Not Satisfiable"


class ServiceUnavailable(DicomWebError):
    status, title = 503, "Service Unavailable"


class DicomStatus(IntEnum):
    """DICOM status codes used in Failure/Warning Reason attributes (PS3.4 Annex C, PS3.18 Annex I)."""

    # PS3.18 Table I.2-2 / PS3.4 C.4.2.1.4 (C-STORE)
    PROCESSING_FAILURE = 0x0110
    DUPLICATE_SOP_INSTANCE = 0x0111
    NO_SUCH_SOP_CLASS = 0x0118
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    # Implementation-specific (documented in docs/conformance.md): the instance's Study Instance
    # UID differs from the one in the STOW target URI.
    STUDY_UID_MISMATCH = 0xA901
    CANNOT_UNDERSTAND = 0xC000
    # Warnings (PS3.4 C.4.2.1.4)
    COERCION_OF_DATA_ELEMENTS = 0xB000
    ELEMENTS_DISCARDED = 0xB006
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007
