"""Media types: parsing ``Content-Type`` and ``Accept`` values, and content negotiation.

DICOMweb clients disagree about how to spell the same media type: OHIF sends
``multipart/related; type=application/octet-stream; transfer-syntax=*`` unquoted, dicomweb-client quotes
``type``, Orthanc once put ``transfer-syntax`` inside the quoted ``type``, and some send comma lists with q-values.
PS3.18 §8.7.3.5 says quoted and unquoted parameter values are equivalent and names are case-insensitive, so this
module turns all of them into one ``MediaType`` form and picks a response representation (``negotiate``) from a
resource's ``Offer`` list. Parsing follows RFC 9110 §5.6 (tokens, quoted-strings, parameters), §8.3.1
(media types) and §12.5.1 (``Accept``).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote_plus

from .errors import BadRequest

__all__ = [
    "MediaType",
    "Offer",
    "Selection",
    "accept_from_environ",
    "negotiate",
    "parse_accept",
    "parse_media_type",
    "refuse_dicom_with_rendered",
    "without_syntaxes",
]

# RFC 9110 §5.6.2 tchar.
_TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_TOKEN_RE = re.compile(_TCHAR + "+")
_TYPE_RE = re.compile(f"({_TCHAR}+)/({_TCHAR}+)")
_OWS_RE = re.compile(r"[ \t]*")
# RFC 9110 §5.6.4: qdtext / quoted-pair, obs-text (0x80-0xFF) included.
_QUOTED_RE = re.compile(r'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*)"')
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
# Unquoted parameter values are token in RFC 9110, but real clients send ``type=application/dicom`` unquoted
# ("/" is not a tchar), so any visible character (or obs-text) except '"', ',', ';' and backslash is taken.
_BARE_VALUE_RE = re.compile(r'[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e\x80-\xff]+')
_QDTEXT_OK_RE = re.compile(r"[\t \x21-\x7e\x80-\xff]*")
_QVALUE_RE = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")


class _Malformed(ValueError):
    """Internal: the text is not a media type; carries a human-readable reason."""


@dataclass(frozen=True)
class MediaType:
    """A parsed media type or ``Accept`` media range.

    ``type`` is ``"type/subtype"`` lowercased without parameters; ``params`` has lowercased names and unquoted
    values whose case is preserved (except ``type``, see ``parse_media_type``); ``q`` is the ``Accept`` weight
    (always 1.0 for a ``Content-Type``). ``params`` is stored read-only so the record stays immutable.
    """

    type: str
    params: Mapping[str, str] = field(default_factory=dict)
    q: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "type", self.type.lower())
        object.__setattr__(self, "params", MappingProxyType({k.lower(): v for k, v in self.params.items()}))

    def __hash__(self) -> int:
        return hash((self.type, tuple(sorted(self.params.items())), self.q))

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the value of parameter ``name`` (case-insensitive), or ``default``."""
        return self.params.get(name.lower(), default)

    @property
    def main_type(self) -> str:
        """The part before the slash: ``"image"`` for ``image/jpeg``."""
        return self.type.partition("/")[0]

    def __str__(self) -> str:
        """Serialise as ``type/subtype; name=value`` (values quoted when they are not tokens; ``q`` if not 1).

        Raises ``ValueError`` for a value that cannot be written in a header (control characters), so a
        ``MediaType`` built by hand can never smuggle a line break into a response.
        """
        out = [self.type]
        for name, value in self.params.items():
            out.append(f"{name}={_quote(value)}")
        if self.q != 1.0:
            out.append("q=" + (f"{self.q:.3f}".rstrip("0").rstrip(".") or "0"))
        return "; ".join(out)


def _quote(value: str) -> str:
    """Return ``value`` as a token if it is one, else as a quoted-string (RFC 9110 §5.6.4)."""
    if _TOKEN_RE.fullmatch(value):
        return value
    if not _QDTEXT_OK_RE.fullmatch(value):
        raise ValueError(f"media type parameter value {value!r} contains characters not allowed in a header")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parse_one(text: str) -> tuple[str, dict[str, str]]:
    """Parse one media type / media range into (lowercased type, params in order given); raise ``_Malformed``."""
    pos = _OWS_RE.match(text).end()
    end = len(text.rstrip(" \t"))
    if pos >= end:
        raise _Malformed("empty media type")
    m = _TYPE_RE.match(text, pos)
    if m:
        mtype, subtype = m.group(1).lower(), m.group(2).lower()
        pos = m.end()
    elif text.startswith("*", pos) and (pos + 1 == end or text[pos + 1] in " \t;"):
        # A bare "*" is not RFC syntax but old Java clients send "*; q=.2"; read it as "*/*".
        mtype, subtype = "*", "*"
        pos += 1
    else:
        raise _Malformed("expected type/subtype")
    if mtype == "*" and subtype != "*":
        raise _Malformed("'*/subtype' is not a valid media range")
    params: dict[str, str] = {}
    while True:
        pos = _OWS_RE.match(text, pos).end()
        if pos >= end:
            break
        if text[pos] != ";":
            raise _Malformed(f"expected ';' at offset {pos}")
        pos = _OWS_RE.match(text, pos + 1).end()
        if pos >= end or text[pos] == ";":
            continue  # RFC 9110 §5.6.6 allows empty parameters ("a/b;;c=d", trailing ";").
        m = _TOKEN_RE.match(text, pos)
        if not m:
            raise _Malformed(f"expected a parameter name at offset {pos}")
        name = m.group().lower()
        pos = _OWS_RE.match(text, m.end()).end()
        if not text.startswith("=", pos):
            raise _Malformed(f"parameter {name!r} has no value")
        pos = _OWS_RE.match(text, pos + 1).end()
        if text.startswith('"', pos):
            m = _QUOTED_RE.match(text, pos)
            if not m:
                raise _Malformed(f"unterminated or invalid quoted value for parameter {name!r}")
            value = _QUOTED_PAIR_RE.sub(r"\1", m.group(1))
        else:
            m = _BARE_VALUE_RE.match(text, pos)
            if not m:
                raise _Malformed(f"parameter {name!r} has an empty or invalid value")
            value = m.group()
        pos = m.end()
        if name in params:
            raise _Malformed(f"parameter {name!r} given twice")
        params[name] = value
    return f"{mtype}/{subtype}", _normalise_type_param(params)


def _normalise_type_param(params: dict[str, str]) -> dict[str, str]:
    """Lowercase the multipart ``type`` parameter and lift parameters that were put inside it.

    Orthanc 1.7 wrote ``type="application/octet-stream; transfer-syntax=*"``; RFC 2387 §3.1 defines ``type`` as a
    bare media type, so the inner parameters are moved out (an explicit outer parameter wins).
    """
    inner = params.get("type")
    if inner is None:
        return params
    if ";" in inner:
        inner_type, inner_params = _parse_one(inner)
        out = {"type": inner_type}
        for name, value in params.items():
            if name != "type":
                out[name] = value
        for name, value in inner_params.items():
            out.setdefault(name, value)
        return out
    params["type"] = inner.strip().lower()
    return params


def _shorten(text: str, limit: int = 100) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_media_type(value: str) -> MediaType:
    """Parse one ``Content-Type`` value; raise ``BadRequest`` naming the problem if it is not a media type.

    Wildcards are rejected (a body has a concrete type); ``q`` is an ordinary parameter here. The value of a
    ``type`` parameter is lowercased because it names a media type, and parameters placed inside a quoted
    ``type`` are lifted out (see ``parse_accept``). Duplicate parameter names are an error: a doubled
    ``boundary`` is ambiguous.
    """
    try:
        mtype, params = _parse_one(value)
    except _Malformed as exc:
        raise BadRequest(f"malformed media type {_shorten(value)}: {exc}") from None
    if "*" in mtype.split("/"):
        raise BadRequest(f"malformed media type {_shorten(value)}: wildcards are not allowed in a Content-Type")
    return MediaType(mtype, params)


def _split_list(text: str) -> list[str]:
    """Split a header list at commas that are outside quoted-strings (RFC 9110 §5.6.1)."""
    items: list[str] = []
    start = 0
    in_quotes = False
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == ",":
            items.append(text[start:i])
            start = i + 1
        i += 1
    items.append(text[start:])
    return items


def _parse_range(item: str) -> MediaType | None:
    """Parse one ``Accept`` member into a ``MediaType`` with ``q``; ``None`` when it is unusable."""
    try:
        mtype, params = _parse_one(item)
    except _Malformed:
        return None
    q = 1.0
    if "q" in params:
        # PS3.18 examples and real clients put media-type parameters both before and after q, so q is
        # removed from wherever it is and every other parameter is kept.
        raw = params.pop("q").strip()
        if not _QVALUE_RE.fullmatch(raw):
            return None
        q = float(raw)
        if not 0.0 <= q <= 1.0:
            return None
    return MediaType(mtype, params, q)


def parse_accept(values: Iterable[str]) -> list[MediaType]:
    """Parse ``Accept`` header / ``accept`` query values into media ranges, best first.

    Each value is a comma list. Members that cannot be parsed are skipped, not rejected, because one odd member
    should not fail a request that also names something we can serve. ``q=0`` members ("not acceptable") are
    kept, last: ``negotiate`` uses them to exclude what a wildcard would otherwise allow. The result is sorted
    by ``q`` descending, keeping the given order among equal weights.
    """
    ranges: list[MediaType] = []
    for value in values:
        ranges.extend(_parse_list_cached(value) if len(value) <= _CACHED_LENGTH else _parse_list(value))
    ranges.sort(key=lambda r: -r.q)
    return ranges


def _parse_list(value: str) -> tuple[MediaType, ...]:
    """The usable media ranges of one comma list, in the order given."""
    ranges = []
    for item in _split_list(value):
        if not item.strip(" \t"):
            continue
        media_range = _parse_range(item)
        if media_range is not None:
            ranges.append(media_range)
    return tuple(ranges)


# A client sends the same Accept header with every request, and parsing a multipart one costs about as
# much as looking the instance up; the results are immutable. Only short values are kept, so that
# the cache stays small whatever clients send.
_CACHED_LENGTH = 1024
_parse_list_cached = lru_cache(maxsize=256)(_parse_list)


@dataclass(frozen=True)
class Offer:
    """A representation a resource can produce; a resource lists its offers in server preference order.

    ``multipart`` means the body is ``multipart/related; type=<media_type>``. ``transfer_syntaxes`` lists the
    syntaxes the server can produce for this offer; ``None`` means the offer has no transfer syntax and a
    requested one is ignored. ``by_name_only``: a wildcard range (``*/*``, ``application/*``) never
    selects it (a ZIP download is something a client asks for by name).
    """

    media_type: str
    multipart: bool
    transfer_syntaxes: frozenset[str] | None = None
    by_name_only: bool = False


@dataclass(frozen=True)
class Selection:
    """The outcome of ``negotiate``.

    ``transfer_syntax`` is the requested UID, ``"*"`` (send as stored) or ``None`` (not requested, or the
    offer takes none): the caller applies the resource's default (PS3.18 §8.7.3.5.2). ``media_range`` is the
    ``Accept`` member that matched (a synthetic ``*/*`` when the request had no ``Accept``).
    """

    offer: Offer
    transfer_syntax: str | None
    media_range: MediaType


def _type_matches(pattern: str, concrete: str) -> bool:
    """``*/*``, ``type/*`` or an exact type (case-insensitive) against a concrete media type."""
    pattern = pattern.lower()
    concrete = concrete.lower()
    if pattern == "*/*":
        return True
    if pattern.endswith("/*"):
        return concrete.partition("/")[0] == pattern[:-2]
    return pattern == concrete


def _range_matches_offer(media_range: MediaType, offer: Offer) -> bool:
    if offer.by_name_only:
        return not offer.multipart and media_range.type.lower() == offer.media_type
    if media_range.type == "*/*":
        return True
    if media_range.type in ("multipart/related", "multipart/*"):
        if not offer.multipart:
            return False
        wanted = media_range.get("type")
        return wanted is None or _type_matches(wanted, offer.media_type)
    if offer.multipart:
        return False
    return _type_matches(media_range.type, offer.media_type)


def without_syntaxes(offers: Sequence[Offer], refused: frozenset[str]) -> tuple[Offer, ...]:
    """``offers`` less the transfer syntaxes found impossible for this request; an offer left with no
    syntax it can produce is no offer (offers that take no syntax are kept)."""
    if not refused:
        return tuple(offers)
    return tuple(Offer(o.media_type, o.multipart, o.transfer_syntaxes - refused, o.by_name_only)
                 if o.transfer_syntaxes else o
                 for o in offers if not o.transfer_syntaxes or o.transfer_syntaxes - refused)


def _specificity(media_range: MediaType) -> int:
    """How specific a range is (RFC 9110 §12.5.1: ``*/*`` < ``type/*`` < ``type/subtype`` < with parameters)."""
    if media_range.type == "*/*":
        return 0
    if media_range.type.endswith("/*"):
        return 1
    return 2 + len(media_range.params)


def _transfer_syntax(media_range: MediaType) -> str | None:
    requested = media_range.get("transfer-syntax")
    return requested.strip() if requested is not None else None


def _refused(refusals: Sequence[MediaType], chosen: MediaType, offer: Offer, syntax: str | None) -> bool:
    """A ``q=0`` range at least as specific as ``chosen`` matches the offer (and the syntax, if it names one)."""
    for refusal in refusals:
        if _specificity(refusal) < _specificity(chosen) or not _range_matches_offer(refusal, offer):
            continue
        refused_syntax = _transfer_syntax(refusal)
        if refused_syntax is None or refused_syntax == syntax:
            return True
    return False


def negotiate(accept: Sequence[MediaType], offers: Sequence[Offer]) -> Selection | None:
    """Choose the offer for a request's ``Accept`` ranges, or ``None`` when nothing fits (the caller sends 406).

    Ranges are tried by ``q`` (ties in the given order) and, for each, offers in server preference order; the
    first offer whose media type matches and that can produce a requested ``transfer-syntax`` wins, unless a
    ``q=0`` range at least as specific refuses it (``image/*, image/jpeg;q=0`` never selects JPEG). An empty
    ``accept`` selects the first offer. ``multipart/*`` is treated like ``multipart/related``.
    """
    if not offers:
        return None
    if not accept:
        return Selection(offers[0], None, MediaType("*/*"))
    refusals = [r for r in accept if r.q <= 0]
    for media_range in sorted(accept, key=lambda r: -r.q):
        if media_range.q <= 0:
            continue
        requested = _transfer_syntax(media_range)
        for offer in offers:
            if not _range_matches_offer(media_range, offer):
                continue
            if offer.transfer_syntaxes is None or requested is None:
                selection = Selection(offer, None, media_range)
            elif requested == "*" or requested in offer.transfer_syntaxes:
                selection = Selection(offer, requested, media_range)
            else:
                continue
            if not refusals or not _refused(refusals, media_range, offer, selection.transfer_syntax):
                return selection
    return None


# PS3.18 §8.7.3: the DICOM media types (bulk data types like image/jpeg count as rendered where this is asked).
_DICOM_TYPES = frozenset({"application/dicom", "application/dicom+json", "application/dicom+xml",
                          "application/octet-stream"})


def refuse_dicom_with_rendered(accept: Sequence[MediaType]) -> None:
    """400 when the acceptable media types of a rendered resource name both DICOM and rendered types.

    PS3.18 §8.7.5 (and §8.3.3.1 for the ``accept`` parameter) makes this a Bad Request. Wildcards name
    neither; a multipart range counts as the type it wraps."""
    kinds = set()
    for media_range in accept:
        media_type = media_range.type
        if media_range.q <= 0:
            continue
        if media_type == "multipart/related":
            media_type = (media_range.get("type") or "*/*").lower()
        if "*" not in media_type:
            kinds.add(media_type in _DICOM_TYPES)
    if len(kinds) == 2:
        raise BadRequest("the acceptable media types mix DICOM and rendered types; ask for one kind "
                         "(PS3.18 §8.7.5)")


# A '+' in a query string means a space (HTML form encoding), but people type "?accept=application/dicom+json"
# by hand. No media type has a space between two name characters, so such a space is turned back into '+'.
_LOST_PLUS_RE = re.compile(r"(?<=[A-Za-z0-9.\-]) (?=[A-Za-z0-9.\-])")


def accept_from_environ(environ: Mapping[str, Any]) -> list[MediaType]:
    """The request's acceptable media ranges: non-empty ``accept`` query parameters, else the ``Accept`` header.

    The query parameter wins over the header (PS3.18 §8.3.3.1); several ``accept`` parameters are combined.
    Without either, the result is ``[]`` (anything is acceptable).
    """
    query = environ.get("QUERY_STRING") or ""
    from_query: list[str] = []
    # Only a query that spells "accept", plainly or percent-encoded, can carry the parameter.
    pieces = query.split("&") if "accept" in query or "%" in query else ()
    for piece in pieces:
        name, sep, raw = piece.partition("=")
        if not sep or unquote_plus(name) != "accept":
            continue
        value = _LOST_PLUS_RE.sub("+", unquote_plus(raw))
        if value.strip():
            from_query.append(value)
    if from_query:
        return parse_accept(from_query)
    header = environ.get("HTTP_ACCEPT")
    if not header:
        return []
    return parse_accept([header])
