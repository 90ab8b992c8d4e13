"""QIDO-RS query parameters -> a storage-neutral ``SearchQuery`` (PS3.18 §8.3.4, PS3.4 C.2.2.2).

Keys are keywords (``PatientName``) or tags (``00100010``); sequence keys are dotted paths
(``00400275.00400009``) whose keys must hold within one item. Values arrive percent-decoded.
What each value means:

* empty, or only ``*``: universal matching (no filter; the attribute is returned);
* UI and CS: a list separated by commas or backslashes (OHIF joins UIDs with ``\\``, modalities with
  ``,``); other VRs: backslash-separated alternatives (LT, ST, UT, UR: never split); any one may match;
* ``*`` / ``?`` in AE, CS, LO, LT, PN, SH, ST, UC, UR, UT (and private attributes): wildcard matching;
  a wildcard in another VR is a 400;
* DA, TM, DT: ``a-b``, ``a-``, ``-b`` ranges (inclusive); a single TM or DT stands for the range it
  covers (``1015`` is 10:15:00-10:15:59); malformed dates and times are a 400;
* numbers (IS, DS, US, ...) compare numerically;
* PN: case- and accent-insensitive, each component group of the stored name (Alphabetic,
  Ideographic, Phonetic) separately; a query with ``=`` groups matches a name having any of them;
  ``fuzzymatching=true`` makes each query component a prefix match (see ``base.fuzzy_name_matches``).

Ignored, as PS3.18 §8.3 requires: unknown parameters, keys that name no attribute, includefield
values that name no attribute, and keys that are results, not matches (SpecificCharacterSet,
InstanceAvailability, RetrieveURL). Malformed values of known parameters are a 400 naming the
parameter.
"""
from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence

from pydicom.datadict import dictionary_VR, tag_for_keyword

from .errors import BadRequest
from .model import EVERY_LEVEL_TAGS, INDEXED, Level, fold_text, is_valid_uid, level_of_tag
from .storage.base import RANGE_VRS, Condition, MatchKind, SearchQuery, Term, range_key

__all__ = ["attribute_level", "attribute_vr", "parse_search", "resolve_tag"]

# Parameters with their own meaning; ``accept`` and ``charset`` are read by content negotiation.
CONTROL_PARAMETERS = frozenset({"includefield", "fuzzymatching", "limit", "offset", "accept", "charset"})
# Derived attributes: the level that holds them, and their VR.
DERIVED = {"00080061": ("study", "CS"), "00201206": ("study", "IS"), "00201208": ("study", "IS"),
           "00201209": ("series", "IS")}
# Attributes every result carries, computed by the server: never matching keys.
RESULT_ONLY = frozenset({"00080005", "00080056", "00081190"})
WILDCARD_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT", "UN"})
LIST_BY_COMMA_VRS = frozenset({"UI", "CS"})
UNSPLIT_VRS = frozenset({"LT", "ST", "UT", "UR"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW"})
NUMBER_VRS = frozenset({"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"})
# Instance attributes a result can show without reading the stored instance JSON.
INSTANCE_COLUMN_TAGS = frozenset(a.tag for a in INDEXED if a.level is Level.INSTANCE) | RESULT_ONLY
# Bounds that keep one request's SQL and matching work small (a URL can hold thousands of values).
MAX_TERMS = 1000
MAX_PATH_DEPTH = 8
MAX_VALUE_LENGTH = 10240  # the longest LT; SQLite refuses GLOB patterns past 50,000 bytes
_RANK = {"study": 0, "series": 1, "instance": 2}
_HEX_TAG = re.compile(r"^[0-9A-Fa-f]{8}$")
_TM = re.compile(r"^(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?$")
_DT = re.compile(r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?$")


def resolve_tag(name: str) -> str | None:
    """``PatientName`` or ``00100010`` -> ``"00100010"``; None when it names no attribute."""
    if _HEX_TAG.match(name):
        return name.upper()
    tag = tag_for_keyword(name)
    return None if tag is None else f"{tag:08X}"


def attribute_vr(tag: str) -> str:
    """The dictionary VR (the first of ambiguous ones); ``UN`` for private and unknown attributes."""
    if tag in DERIVED:
        return DERIVED[tag][1]
    number = int(tag, 16)
    if number >> 16 & 1 and 0x10 <= number & 0xFFFF <= 0xFF:
        return "LO"  # Private Creator
    try:
        return dictionary_VR(number).split(" or ")[0]
    except KeyError:
        return "UN"


def attribute_level(tag: str, level: str | None = None) -> str:
    """The QIDO level that holds an attribute: patient and study -> study, and so on. An attribute
    every level holds (TimezoneOffsetFromUTC) is matched and returned at the query's ``level``."""
    if tag in DERIVED:
        return DERIVED[tag][0]
    if level is not None and tag in EVERY_LEVEL_TAGS:
        return level
    return level_of_tag(tag).value


def parse_search(params: Mapping[str, Sequence[str]], level: str, *, study_uid: str | None = None,
                 series_uid: str | None = None, default_limit: int = 1000, max_limit: int = 10000) -> SearchQuery:
    """Turn the request's query parameters into a ``SearchQuery`` at ``level``; 400 on malformed values.

    Without a ``limit`` (or with ``limit=0``), a page holds ``default_limit`` results, except
    instances of one series, which are not paged by default (Weasis never pages them) up to
    ``max_limit``; a larger ``limit`` is capped at ``max_limit``.
    """
    if level not in _RANK:
        raise ValueError(f"unknown search level {level!r}")
    fuzzy = _boolean("fuzzymatching", _last(params, "fuzzymatching"))
    keys: dict[tuple[str, ...], list[str]] = {}
    names: dict[tuple[str, ...], str] = {}
    for name, values in params.items():
        if name in CONTROL_PARAMETERS:
            continue
        path = _path(name)
        if path is None or path[0] in RESULT_ONLY:
            continue  # PS3.18 §8.3: parameters the server does not support are ignored
        keys.setdefault(path, []).extend(values)
        names[path] = name
    entries: list[tuple[tuple[str, ...], str, tuple[Term, ...]]] = []
    return_tags: set[str] = set()
    for path, values in keys.items():
        vr = _check_path(names[path], path)
        top_level = attribute_level(path[0], level)
        if _RANK[top_level] <= _RANK[level]:
            return_tags.add(path[0])  # PS3.18 §10.6.3.3: match keys come back with the results
        terms = parse_terms(names[path], vr, values)
        if terms is not None:
            entries.append((path, vr, terms))
            if sum(len(entry[2]) for entry in entries) > MAX_TERMS:
                raise BadRequest(f"{names[path]}: more than {MAX_TERMS} matching values in one request")
    conditions = tuple(_conditions(entries, 0, fuzzy, level))
    include, include_all = _includefield(params.get("includefield", ()), level)
    limit = _uint("limit", _last(params, "limit"))
    offset = _uint("offset", _last(params, "offset")) or 0
    if not limit:
        limit = max_limit if level == "instance" and series_uid is not None else default_limit
    if max_limit:
        limit = min(limit, max_limit)
    with_metadata = level == "instance" and (include_all or any(
        attribute_level(t, level) == "instance" and t not in INSTANCE_COLUMN_TAGS for t in include | return_tags))
    return SearchQuery(level=level, study_uid=study_uid, series_uid=series_uid, conditions=conditions,
                       limit=max(limit, 1), offset=offset, include=frozenset(include), include_all=include_all,
                       return_tags=frozenset(return_tags), with_metadata=with_metadata)


def _last(params: Mapping[str, Sequence[str]], name: str) -> str | None:
    values = params.get(name)
    return values[-1] if values else None


def _boolean(name: str, raw: str | None) -> bool:
    text = (raw or "").strip().lower()
    if text in ("", "false"):
        return False
    if text == "true":
        return True
    raise BadRequest(f"{name}: expected true or false, not {raw!r}")


def _uint(name: str, raw: str | None) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    if not re.fullmatch(r"\d{1,18}", raw.strip()):
        raise BadRequest(f"{name}: expected a non-negative integer, not {raw[:40]!r}")
    return int(raw)


def _path(name: str) -> tuple[str, ...] | None:
    tags = []
    for part in name.split("."):
        tag = resolve_tag(part.strip())
        if tag is None:
            return None
        tags.append(tag)
    return tuple(tags)


def _check_path(name: str, path: tuple[str, ...]) -> str:
    """The VR of the attribute a key names; every element of a dotted path but the last is a sequence."""
    if len(path) > MAX_PATH_DEPTH:
        raise BadRequest(f"{name[:80]}: sequence paths may be at most {MAX_PATH_DEPTH} attributes deep")
    for tag in path[:-1]:
        if attribute_vr(tag) not in ("SQ", "UN"):
            raise BadRequest(f"{name}: {tag} is not a sequence, so it cannot start a dotted key")
    return attribute_vr(path[-1])


def _includefield(values: Sequence[str], level: str) -> tuple[set[str], bool]:
    """includefield: repeated and/or comma-separated; ``all``; keywords, tags or dotted paths (the
    whole top-level sequence is returned). Attributes below the query level are not returned
    (PS3.18 §10.6.3.3)."""
    tags: set[str] = set()
    include_all = False
    for value in values:
        for item in value.split(","):
            item = item.strip()
            if item.lower() == "all":
                include_all = True
                continue
            path = _path(item) if item else None
            if path is not None and _RANK[attribute_level(path[0], level)] <= _RANK[level]:
                tags.add(path[0])
    return tags, include_all


def _split(vr: str, raw: str) -> list[str]:
    if vr in UNSPLIT_VRS:
        return [raw]
    if vr in LIST_BY_COMMA_VRS:
        return re.split(r"[,\\]", raw)
    return raw.split("\\")


def parse_terms(name: str, vr: str, values: list[str]) -> tuple[Term, ...] | None:
    """The terms of one key (any may match), or None for universal matching; 400 (naming ``name``)
    for a malformed value. QIDO and the UPS search read matching keys alike through this."""
    pieces = [p.strip() if vr != "PN" else p.strip(" ") for raw in values for p in _split(vr, raw)]
    pieces = [p for p in pieces if p]
    if not pieces or any(set(p) == {"*"} for p in pieces):
        return None  # PS3.4 C.2.2.2.3 universal; C.2.2.2.4: "*" alone is universal too
    if vr == "SQ":
        raise BadRequest(f"{name}: a sequence matches through its attributes, e.g. {name}.00080100=...")
    if vr in BINARY_VRS:
        raise BadRequest(f"{name}: attributes of VR {vr} cannot be matched")
    terms: list[Term] = []
    for piece in pieces:
        if len(piece) > MAX_VALUE_LENGTH:
            raise BadRequest(f"{name}: a value longer than {MAX_VALUE_LENGTH} characters")
        if vr == "PN":
            terms.extend(_pn_terms(piece))
        elif vr in RANGE_VRS:
            terms.append(_range_term(name, vr, piece))
        elif "*" in piece or "?" in piece:
            if vr not in WILDCARD_VRS:
                raise BadRequest(f"{name}: wildcards are not allowed for VR {vr}")
            terms.append(Term(MatchKind.WILDCARD, piece))
        elif vr == "UI" and not is_valid_uid(piece):
            raise BadRequest(f"{name}: {piece[:70]!r} is not a valid UID")
        elif vr in NUMBER_VRS:
            terms.append(Term(MatchKind.SINGLE, _number(name, vr, piece)))
        else:
            terms.append(Term(MatchKind.SINGLE, piece))
    return tuple(terms) if terms else None


def _pn_terms(piece: str) -> list[Term]:
    terms = []
    for group in piece.split("="):
        folded = fold_text(group)
        if not folded.endswith("*"):
            folded = folded.rstrip("^")
        if folded:
            kind = MatchKind.WILDCARD if "*" in folded or "?" in folded else MatchKind.SINGLE
            terms.append(Term(kind, folded))
    return terms


def _number(name: str, vr: str, text: str) -> str:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name}: {text[:40]!r} is not a number (VR {vr})") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise BadRequest(f"{name}: {text[:40]!r} is not a finite number")
    return text


def _range_term(name: str, vr: str, text: str) -> Term:
    """A DA/TM/DT value or range as a Term; a single TM/DT value covers its own precision."""
    if vr == "DA" and "-" not in text:
        _check_temporal(name, vr, text)
        return Term(MatchKind.SINGLE, text.replace(".", ""))
    if vr != "DA" and _valid_temporal(vr, text):
        return Term(MatchKind.RANGE, low=range_key(vr, text, "0"), high=range_key(vr, text, "9"))
    for at in [m.start() for m in re.finditer("-", text)]:
        low, high = text[:at].strip(), text[at + 1:].strip()
        if all(not part or _valid_temporal(vr, part) for part in (low, high)):
            return Term(MatchKind.RANGE, low=range_key(vr, low, "0") if low else "",
                        high=range_key(vr, high, "9") if high else "")
    _check_temporal(name, vr, text)  # raises with a precise reason
    raise BadRequest(f"{name}: {text[:40]!r} is not a valid {vr} value or range")


def _valid_temporal(vr: str, text: str) -> bool:
    try:
        _check_temporal("", vr, text)
    except BadRequest:
        return False
    return True


def _check_temporal(name: str, vr: str, text: str) -> None:
    reason = f"{name}: {text[:40]!r} is not a valid {vr} value (expected " + \
        {"DA": "YYYYMMDD", "TM": "HHMMSS.FFFFFF", "DT": "YYYYMMDDHHMMSS.FFFFFF&ZZXX"}[vr] + ")"
    if any(c in text for c in "*?"):
        raise BadRequest(f"{name}: wildcards are not allowed for VR {vr}; use a range")
    if vr == "DA":
        digits = text.replace(".", "") if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", text) else text
        try:
            if not re.fullmatch(r"\d{8}", digits):
                raise ValueError
            datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
        except ValueError:
            raise BadRequest(reason) from None
        return
    m = (_TM if vr == "TM" else _DT).match(text.replace(":", "") if vr == "TM" else text)
    if m is None:
        raise BadRequest(reason)
    parts = [int(g) if g and g[0] not in "+-" else None for g in m.groups()]
    if vr == "TM":
        limits = [(0, 23), (0, 59), (0, 60)]
    else:
        limits = [(1, 9999), (1, 12), (1, 31), (0, 23), (0, 59), (0, 60)]
    for value, (low, high) in zip(parts, limits):
        if value is not None and not low <= value <= high:
            raise BadRequest(reason)
    offset = m.groups()[-1] if vr == "DT" else None
    if offset and not (int(offset[1:3]) <= 14 and int(offset[3:]) <= 59):  # UTC offsets: -1200 to +1400
        raise BadRequest(reason)


def _conditions(entries: list[tuple[tuple[str, ...], str, tuple[Term, ...]]], depth: int,
                fuzzy: bool, level: str) -> list[Condition]:
    """Keys sharing a sequence become one sequence condition whose items must match together."""
    out: list[Condition] = []
    nested: dict[str, list[tuple[tuple[str, ...], str, tuple[Term, ...]]]] = {}
    for path, vr, terms in entries:
        if len(path) == depth + 1:
            out.append(Condition(path[depth], vr, attribute_level(path[0], level), terms,
                                 fuzzy=fuzzy and vr == "PN"))
        else:
            nested.setdefault(path[depth], []).append((path, vr, terms))
    for tag, group in nested.items():
        items = tuple(_conditions(group, depth + 1, fuzzy, level))
        out.append(Condition(tag, "SQ", attribute_level(group[0][0][0], level), items=items))
    return out
